//! Input capture of a content merger, for replay: every datagram pushed (leg, arrival time,
//! bytes) and every `handle_timeout` time, in order. The merger is deterministic given its
//! inputs, so replaying a capture through a new merger reproduces its output exactly: a
//! misplacement seen live (on a gateway, or in the loopback test) becomes a case that can be
//! stepped through offline. Enabled per gateway with `HITLESS_CONTENT_CAPTURE=<directory>`
//! (one `<channel>.cmcap` per content-merge channel, recording stops at [`MAX_BYTES`]).
//!
//! Format (little-endian): magic `HLCMCAP1`; `legs` u32; window, leg timeout (ns) u64;
//! capacity u64; then records: kind u8 (0 datagram, 1 timeout), leg u8, time i64 (ns from
//! the first record; a datagram's kernel arrival time may precede an earlier timeout's),
//! length u32 and that many bytes (datagrams only).

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{ContentConfig, ContentMerger, ContentStats};
use crate::merge::LegId;

const MAGIC: &[u8; 8] = b"HLCMCAP1";
/// A capture stops recording at this size (about 3.5 minutes of a 20 Mbit/s channel with two
/// legs).
pub const MAX_BYTES: u64 = 1 << 30;

/// A capture being written.
pub struct Capture {
    w: Box<dyn Write + Send>,
    base: Option<Instant>,
    written: u64,
    /// Stopped: full, or a write failed.
    stopped: bool,
}

impl Capture {
    /// Start a capture of a merger made with `cfg` on `w` (writes the header).
    pub fn new(mut w: Box<dyn Write + Send>, cfg: &ContentConfig) -> io::Result<Capture> {
        w.write_all(MAGIC)?;
        w.write_all(&(cfg.legs as u32).to_le_bytes())?;
        w.write_all(&(cfg.window.as_nanos() as u64).to_le_bytes())?;
        w.write_all(&(cfg.leg_timeout.as_nanos() as u64).to_le_bytes())?;
        w.write_all(&(cfg.capacity as u64).to_le_bytes())?;
        Ok(Capture {
            w,
            base: None,
            written: 36,
            stopped: false,
        })
    }

    fn record(&mut self, kind: u8, leg: usize, now: Instant, data: &[u8]) {
        if self.stopped {
            return;
        }
        let base = *self.base.get_or_insert(now);
        let t = if now >= base {
            (now - base).as_nanos() as i64
        } else {
            -((base - now).as_nanos() as i64)
        };
        let mut head = [0u8; 14];
        head[0] = kind;
        head[1] = leg as u8;
        head[2..10].copy_from_slice(&t.to_le_bytes());
        head[10..14].copy_from_slice(&(data.len() as u32).to_le_bytes());
        let ok = self.w.write_all(&head).and_then(|_| self.w.write_all(data));
        self.written += 14 + data.len() as u64;
        if ok.is_err() || self.written >= MAX_BYTES {
            let _ = self.w.flush();
            self.stopped = true;
        }
    }

    pub(super) fn push(&mut self, now: Instant, leg: usize, payload: &[u8]) {
        self.record(0, leg, now, payload);
    }

    pub(super) fn timeout(&mut self, now: Instant) {
        self.record(1, 0, now, &[]);
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.w.flush();
    }
}

/// What a replay produced.
pub struct Replay {
    pub config: ContentConfig,
    /// The merged TS packets, in output order.
    pub output: Vec<Bytes>,
    pub stats: ContentStats,
    /// Datagrams and timeouts replayed.
    pub datagrams: u64,
    pub timeouts: u64,
}

fn read_u64(r: &mut impl Read) -> io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

/// Run a capture through a new merger, its clock starting at `start` (any instant: only
/// differences matter). A capture cut short (the gateway was killed while writing) replays
/// up to its last whole record.
pub fn replay(mut r: impl Read, start: Instant) -> io::Result<Replay> {
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_string());
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(bad("not a content-merge capture (magic HLCMCAP1 missing)"));
    }
    let mut b4 = [0u8; 4];
    r.read_exact(&mut b4)?;
    let legs = u32::from_le_bytes(b4) as usize;
    if legs == 0 || legs > 32 {
        return Err(bad("capture header: legs out of 1..=32"));
    }
    let config = ContentConfig {
        legs,
        window: Duration::from_nanos(read_u64(&mut r)?),
        leg_timeout: Duration::from_nanos(read_u64(&mut r)?),
        capacity: usize::try_from(read_u64(&mut r)?).map_err(|_| bad("capacity"))?,
    };
    let mut m = ContentMerger::new(config.clone());
    // Room below the first record for arrival times before it.
    let base = start + Duration::from_secs(3600);
    let mut out = Vec::new();
    let (mut datagrams, mut timeouts) = (0, 0);
    let mut head = [0u8; 14];
    loop {
        match r.read_exact(&mut head) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e),
        }
        let ns = i64::from_le_bytes(head[2..10].try_into().unwrap());
        let t = if ns >= 0 {
            base + Duration::from_nanos(ns as u64)
        } else {
            base.checked_sub(Duration::from_nanos(ns.unsigned_abs()))
                .ok_or_else(|| bad("capture record time out of range"))?
        };
        let len = u32::from_le_bytes(head[10..14].try_into().unwrap()) as usize;
        if len > 65_536 {
            return Err(bad("capture record longer than a datagram"));
        }
        match head[0] {
            0 => {
                let mut v = vec![0u8; len];
                match r.read_exact(&mut v) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
                    Err(e) => return Err(e),
                }
                m.push(t, LegId(usize::from(head[1])), &Bytes::from(v));
                datagrams += 1;
            }
            1 => {
                m.handle_timeout(t);
                timeouts += 1;
            }
            _ => return Err(bad("capture record of unknown kind")),
        }
        while let Some(p) = m.poll_output(t) {
            out.push(p);
        }
        while m.poll_event().is_some() {}
    }
    Ok(Replay {
        config,
        output: out,
        stats: m.stats().clone(),
        datagrams,
        timeouts,
    })
}
