//! Looped file slate, sans-IO: plays a TS file forever, paced by its own PCR, as one
//! continuous stream a decoder never sees an error in.
//!
//! Pacing reuses the PCR schedule of `hitless send` ([`crate::tools::pace`]): packet `i` of
//! loop `n` is due at `start + n × L + packet_ticks[i]` (27 MHz ticks), where `L`, the loop
//! duration, is the file's PCR-derived length (last packet time + one packet interval)
//! rounded up to a whole 90 kHz tick, so that PCR (27 MHz) and PTS/DTS (90 kHz) advance by
//! exactly the same time per loop.
//!
//! Continuity across the loop point (ISO/IEC 13818-1 2.4.3.3, 2.4.3.5, 2.4.3.7) is kept
//! rather than signalled with a discontinuity_indicator, because a discontinuity resets the
//! decoder's clock recovery and every buffer, which a viewer sees as a glitch once per loop:
//! * every PCR of loop `n` gets `n × L` added (modulo 2^33 × 300), so the PCR keeps rising at
//!   exactly 27 MHz against the send time;
//! * every PTS and DTS (in PES headers that start in a packet) gets `n × L / 300` added
//!   (modulo 2^33);
//! * every PID gets a CC offset so that the first CC of loop `n + 1` is the last CC of loop
//!   `n` plus one (per loop the offset grows by `last − first + 1`, mod 16).
//!
//! Loop 0 goes out zero copy (slices of the file). From loop 1 on, packets whose CC, PCR or
//! PTS/DTS change are rewritten into a `BytesMut` arena allocated in chunks and reused.
//! The file should start on a random access point (a closed GOP) for the loop point to
//! decode cleanly; PTS continuity is exact when the file's media duration equals its PCR
//! span plus one packet, as with a constant-rate multiplex cut on frame boundaries.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::tools::pace::{self, PCR_MODULUS, PaceError};
use crate::ts::{NULL_PID, PACKET_LEN, Pid, TsError, TsPacket, validate_payload};

/// PTS/DTS values are modulo 2^33 (90 kHz).
const PTS_MODULUS: u64 = 1 << 33;
/// Bytes allocated at a time for rewritten packets.
const ARENA_BYTES: usize = 64 * PACKET_LEN;

/// Why a file cannot be played as a slate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlateError {
    #[error("slate file is not whole TS packets: {0}")]
    Ts(#[from] TsError),
    #[error("slate file cannot be paced by PCR: {0}")]
    Pace(#[from] PaceError),
}

/// Counters of the slate player.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SlateStats {
    /// Packets emitted.
    pub packets_out: u64,
    /// Packets emitted as a rewritten copy (CC, PCR, PTS/DTS).
    pub rewritten: u64,
    /// Completed loops.
    pub loops: u64,
}

/// Sans-IO looped slate player; see the module docs.
pub struct SlatePlayer {
    file: Bytes,
    /// Due time of every packet within a loop, in 27 MHz ticks from the loop start.
    packet_ticks: Vec<u64>,
    /// Loop duration in 27 MHz ticks, a multiple of 300.
    loop_ticks: u64,
    pcr_pid: Pid,
    /// Per PID: CC advance per loop (`last − first + 1` mod 16), only for PIDs with payload.
    cc_step: Vec<u8>,
    start: Option<Instant>,
    /// Loop number and packet index of the next packet.
    loop_n: u64,
    next: usize,
    arena: BytesMut,
    pub stats: SlateStats,
}

impl SlatePlayer {
    /// Validate `file` (whole 188-byte packets with sync bytes, at least two PCRs on one PID)
    /// and build its schedule.
    pub fn new(file: Bytes) -> Result<SlatePlayer, SlateError> {
        let n = validate_payload(&file)?;
        let (pcr_pid, pcrs) = pace::collect_pcrs(&file, None)?;
        let schedule = pace::from_pcrs(n, pcr_pid, &pcrs)?;
        let mut first = vec![None::<u8>; 8192];
        let mut last = vec![0u8; 8192];
        for p in crate::ts::packets(&file) {
            if !p.has_payload() || p.pid() == NULL_PID {
                continue;
            }
            let i = usize::from(p.pid().0);
            first[i].get_or_insert(p.cc().0);
            last[i] = p.cc().0;
        }
        let cc_step = first
            .iter()
            .zip(&last)
            .map(|(f, &l)| f.map_or(0, |f| (l + 17 - f) & 0x0f))
            .collect();
        Ok(SlatePlayer {
            file,
            packet_ticks: schedule.packet_ticks,
            loop_ticks: schedule.pass_ticks.div_ceil(300) * 300,
            pcr_pid,
            cc_step,
            start: None,
            loop_n: 0,
            next: 0,
            arena: BytesMut::with_capacity(ARENA_BYTES),
            stats: SlateStats::default(),
        })
    }

    /// PID whose PCRs pace the file.
    pub fn pcr_pid(&self) -> Pid {
        self.pcr_pid
    }

    /// Loop duration (what every PCR, PTS and DTS advances by per loop).
    pub fn loop_duration(&self) -> Duration {
        ticks_to_duration(self.loop_ticks)
    }

    /// Start (or restart) playing from the first packet of the file at `now`. Continuity
    /// counters and timestamps restart from the file's own values.
    pub fn start(&mut self, now: Instant) {
        self.start = Some(now);
        self.loop_n = 0;
        self.next = 0;
    }

    /// When the next packet is due; `None` before [`SlatePlayer::start`]. Call
    /// [`SlatePlayer::poll_packets`] at that time.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let start = self.start?;
        let ticks = self.loop_n * self.loop_ticks + self.packet_ticks[self.next];
        Some(start + ticks_to_duration(ticks))
    }

    /// Append every packet due by `now` to `out` (one `Bytes` per TS packet), in order.
    pub fn poll_packets(&mut self, now: Instant, out: &mut Vec<Bytes>) {
        while self.poll_timeout().is_some_and(|t| t <= now) {
            let off = self.next * PACKET_LEN;
            let pkt = self.file.slice(off..off + PACKET_LEN);
            let pkt = if self.loop_n == 0 {
                pkt
            } else {
                self.rewrite(&pkt).unwrap_or(pkt)
            };
            out.push(pkt);
            self.stats.packets_out += 1;
            self.next += 1;
            if self.next == self.packet_ticks.len() {
                self.next = 0;
                self.loop_n += 1;
                self.stats.loops += 1;
            }
        }
    }

    /// The packet as it must go out in the current loop, or None when it is unchanged.
    fn rewrite(&mut self, src: &[u8]) -> Option<Bytes> {
        let p = TsPacket::try_new(src)?;
        let pid = p.pid();
        if pid == NULL_PID {
            return None;
        }
        let cc_add = ((self.loop_n % 16) as u8 * self.cc_step[usize::from(pid.0)]) & 0x0f;
        let pcr_at = p.pcr().is_some().then_some(6);
        let pes_at = pes_timestamps_offset(&p);
        if cc_add == 0 && pcr_at.is_none() && pes_at.is_none() {
            return None;
        }
        if self.arena.capacity() - self.arena.len() < PACKET_LEN {
            self.arena.reserve(ARENA_BYTES);
        }
        let start = self.arena.len();
        self.arena.extend_from_slice(src);
        let b = &mut self.arena[start..];
        b[3] = (b[3] & 0xf0) | (((b[3] & 0x0f) + cc_add) & 0x0f);
        let add_ticks = self.loop_n * self.loop_ticks;
        if let (Some(at), Some(pcr)) = (pcr_at, p.pcr()) {
            crate::ts::write_pcr(&mut b[at..at + 6], (pcr + add_ticks) % PCR_MODULUS);
        }
        if let Some((at, flags)) = pes_at {
            let add = add_ticks / 300;
            if flags & 0x2 != 0 {
                shift_timestamp(&mut b[at..at + 5], add);
            }
            if flags == 0x3 {
                shift_timestamp(&mut b[at + 5..at + 10], add);
            }
        }
        self.stats.rewritten += 1;
        Some(self.arena.split().freeze())
    }
}

/// 27 MHz ticks as a Duration (rounded down to the nanosecond).
fn ticks_to_duration(ticks: u64) -> Duration {
    Duration::from_nanos((u128::from(ticks) * 1000 / 27) as u64)
}

/// Offset in the packet of the PTS field of a PES header starting in this packet, and its
/// PTS_DTS_flags (2 = PTS, 3 = PTS and DTS).
fn pes_timestamps_offset(p: &TsPacket<'_>) -> Option<(usize, u8)> {
    if !p.payload_unit_start() {
        return None;
    }
    let pl = p.payload();
    let at = PACKET_LEN - pl.len();
    if pl.len() < 19 || pl[..3] != [0, 0, 1] {
        return None;
    }
    // Stream ids without the optional PES header (2.4.3.7).
    if matches!(pl[3], 0xbc | 0xbe | 0xbf | 0xf0 | 0xf1 | 0xff | 0xf2 | 0xf8) {
        return None;
    }
    let flags = pl[7] >> 6;
    (pl[6] & 0xc0 == 0x80 && flags >= 2).then_some((at + 9, flags))
}

/// Add `add` (90 kHz) to a 5-byte PTS/DTS field in place, keeping prefix and marker bits.
fn shift_timestamp(f: &mut [u8], add: u64) {
    let v = (u64::from(f[0] >> 1) & 0x07) << 30
        | u64::from(f[1]) << 22
        | (u64::from(f[2]) >> 1) << 15
        | u64::from(f[3]) << 7
        | u64::from(f[4]) >> 1;
    let v = (v + add) % PTS_MODULUS;
    f[0] = (f[0] & 0xf1) | ((v >> 29) as u8 & 0x0e);
    f[1] = (v >> 22) as u8;
    f[2] = ((v >> 14) as u8 & 0xfe) | (f[2] & 0x01);
    f[3] = (v >> 7) as u8;
    f[4] = ((v << 1) as u8 & 0xfe) | (f[4] & 0x01);
}

/// PTS (or the DTS when `dts`) of a packet starting a PES packet.
#[cfg(test)]
fn pes_timestamp(p: &TsPacket<'_>, dts: bool) -> Option<u64> {
    let (at, flags) = pes_timestamps_offset(p)?;
    let at = if dts {
        (flags == 3).then_some(at + 5)?
    } else {
        at
    };
    let f = &p.bytes()[at..at + 5];
    Some(
        (u64::from(f[0] >> 1) & 0x07) << 30
            | u64::from(f[1]) << 22
            | (u64::from(f[2]) >> 1) << 15
            | u64::from(f[3]) << 7
            | u64::from(f[4]) >> 1,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ts::{ContinuityCheck, PCR_HZ};
    use std::collections::HashMap;

    #[allow(clippy::disallowed_methods)]
    fn t0() -> Instant {
        Instant::now()
    }

    fn load(name: &str) -> Bytes {
        Bytes::from(std::fs::read(format!("testdata/{name}")).unwrap())
    }

    /// Play `loops` loops in virtual time, jumping from timeout to timeout; returns each
    /// packet with the instant it went out.
    fn play(file: &str, loops: u64) -> (SlatePlayer, Instant, Vec<(Instant, Bytes)>) {
        let mut s = SlatePlayer::new(load(file)).unwrap();
        let start = t0();
        s.start(start);
        let mut got = Vec::new();
        let mut out = Vec::new();
        while s.stats.loops < loops {
            let now = s.poll_timeout().unwrap();
            s.poll_packets(now, &mut out);
            assert!(!out.is_empty(), "a packet is due at poll_timeout");
            got.extend(out.drain(..).map(|b| (now, b)));
        }
        (s, start, got)
    }

    fn check_loops(file: &str) {
        let (s, start, got) = play(file, 3);
        let n = s.packet_ticks.len();
        assert_eq!(got.len(), 3 * n);
        let mut cc = ContinuityCheck::default();
        let mut last_pcr: Option<(u64, Instant)> = None;
        let mut first_pcr: Option<(u64, Instant)> = None;
        let mut pts: HashMap<Pid, Vec<(usize, u64)>> = HashMap::new();
        for (i, (at, b)) in got.iter().enumerate() {
            let p = TsPacket::try_new(b).unwrap();
            assert!(!p.discontinuity(), "the loop point is continuous");
            cc.push(&p);
            if p.pid() == s.pcr_pid()
                && let Some(pcr) = p.pcr()
            {
                if let Some((lp, _)) = last_pcr {
                    assert!(pcr > lp, "PCR strictly increasing at packet {i}");
                }
                let (fp, ft) = *first_pcr.get_or_insert((pcr, *at));
                // PCR advances at 27 MHz against the send time (to the nanosecond rounding).
                let dt = at.duration_since(ft).as_nanos() as i128;
                let dpcr_ns = ((pcr - fp) as i128) * 1000 / 27;
                assert!((dt - dpcr_ns).abs() <= 1, "PCR vs time at packet {i}");
                last_pcr = Some((pcr, *at));
            }
            if let Some(v) = pes_timestamp(&p, false) {
                pts.entry(p.pid()).or_default().push((i, v));
            }
        }
        assert_eq!(cc.errors, 0, "continuity across loop points");
        // For a look by hand: HITLESS_SLATE_OUT=/tmp/x cargo test slate; ffprobe /tmp/x.<file>
        if let Ok(path) = std::env::var("HITLESS_SLATE_OUT") {
            let bytes: Vec<u8> = got.iter().flat_map(|(_, b)| b.iter().copied()).collect();
            std::fs::write(format!("{path}.{file}"), bytes).unwrap();
        }
        // Rate over the whole run: PCR delta / time delta = 27 MHz.
        let ((fp, ft), (lp, lt)) = (first_pcr.unwrap(), last_pcr.unwrap());
        let rate = (lp - fp) as f64 / lt.duration_since(ft).as_secs_f64();
        assert!((rate - PCR_HZ as f64).abs() < 1.0, "{rate}");
        // Each PES stream's PTS of loop k is its loop-0 PTS plus k × the loop duration.
        let add = s.loop_ticks / 300;
        for (pid, v) in &pts {
            let per_loop = v.len() / 3;
            assert!(per_loop > 10, "{pid:?}");
            for k in 0..per_loop {
                let (i0, p0) = v[k];
                for l in 1..3u64 {
                    let (il, pl) = v[k + l as usize * per_loop];
                    assert_eq!(il, i0 + l as usize * n);
                    assert_eq!(pl, (p0 + l * add) % PTS_MODULUS, "{pid:?} PTS of loop {l}");
                }
            }
            // Across the loop point the PTS keeps rising (video may reorder within a GOP).
            let max0 = v[..per_loop].iter().map(|x| x.1).max().unwrap();
            assert!(v[per_loop].1 > max0 - 90_000 / 5, "{pid:?}");
        }
        // Pacing: every packet went out exactly at its schedule.
        for (i, (at, _)) in got.iter().enumerate() {
            let (l, k) = ((i / n) as u64, i % n);
            let due = start + ticks_to_duration(l * s.loop_ticks + s.packet_ticks[k]);
            assert_eq!(*at, due, "packet {i}");
        }
    }

    #[test]
    fn three_loops_of_mpeg2_mp2_are_continuous() {
        check_loops("mpeg2_mp2.ts");
    }

    #[test]
    fn three_loops_of_h264_aac_are_continuous() {
        check_loops("h264_aac.ts");
    }

    #[test]
    fn poll_timeout_is_exact_and_packets_due_by_now_match_pcr_time() {
        let mut s = SlatePlayer::new(load("mpeg2_mp2.ts")).unwrap();
        assert_eq!(s.poll_timeout(), None);
        let start = t0();
        let mut out = Vec::new();
        s.poll_packets(start + Duration::from_secs(1), &mut out);
        assert!(out.is_empty(), "nothing before start");
        s.start(start);
        assert_eq!(s.poll_timeout(), Some(start));
        for _ in 0..500 {
            let t = s.poll_timeout().unwrap();
            if t > start {
                s.poll_packets(t - Duration::from_nanos(1), &mut out);
                assert!(out.is_empty(), "nothing before the timeout");
            }
            s.poll_packets(t, &mut out);
            assert!(!out.is_empty());
            out.clear();
        }
        // One second of stream at 1.5 Mbit/s is 997 packets (1.5e6 / 1504 = 997.3).
        let mut s = SlatePlayer::new(load("mpeg2_mp2.ts")).unwrap();
        s.start(start);
        s.poll_packets(start + Duration::from_secs(1), &mut out);
        assert_eq!(out.len(), 998, "packets 0..=997 are due by 1 s");
        // A late poll catches up with everything due, in order.
        s.poll_packets(start + Duration::from_secs(20), &mut out);
        assert_eq!(s.stats.loops, 2);
    }

    #[test]
    fn loop_zero_is_zero_copy_and_later_loops_use_the_arena() {
        let file = load("mpeg2_mp2.ts");
        let mut s = SlatePlayer::new(file.clone()).unwrap();
        let start = t0();
        s.start(start);
        let mut out = Vec::new();
        s.poll_packets(
            start + s.loop_duration() - Duration::from_nanos(1),
            &mut out,
        );
        assert_eq!(out.len(), file.len() / PACKET_LEN);
        for (i, b) in out.iter().enumerate() {
            assert_eq!(b.as_ptr(), file[i * PACKET_LEN..].as_ptr());
        }
        assert_eq!(s.stats.rewritten, 0);
        out.clear();
        s.poll_packets(
            start + s.loop_duration() + Duration::from_millis(100),
            &mut out,
        );
        assert!(s.stats.rewritten > 0);
    }

    #[test]
    fn rejects_bad_files() {
        assert!(matches!(
            SlatePlayer::new(Bytes::from_static(&[0x47; 100])),
            Err(SlateError::Ts(TsError::BadLength))
        ));
        let no_pcr: Vec<u8> = (0..10)
            .flat_map(|i| crate::ts::tests::ts(0x100, i))
            .collect();
        assert!(matches!(
            SlatePlayer::new(Bytes::from(no_pcr)),
            Err(SlateError::Pace(PaceError::NoPcr))
        ));
    }

    #[test]
    fn timestamp_field_roundtrip() {
        // PTS with '0010' prefix and marker bits.
        let mut f = [0x21, 0x00, 0x01, 0x00, 0x01];
        shift_timestamp(&mut f, (1 << 33) - 1);
        assert_eq!(f, [0x2f, 0xff, 0xff, 0xff, 0xff]);
        shift_timestamp(&mut f, 2);
        assert_eq!(f, [0x21, 0x00, 0x01, 0x00, 0x03]);
    }
}
