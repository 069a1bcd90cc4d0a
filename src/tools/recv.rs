//! `hitless recv`: capture a stream's TS payload to a file and report what arrived:
//! datagrams, TS packets, bitrate, RTP sequence gaps / reordering / duplicates (RFC 3550
//! A.1 style extended sequence numbers), TS continuity errors (ISO/IEC 13818-1 2.4.3.3) and
//! malformed datagrams.
//!
//! [`Capture`] is the sans-IO part (it is handed each datagram and the time it arrived);
//! [`recv`] is the socket and file glue around it.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;

use super::common::{clock, ctrl_c_flag, status_bar};
use crate::net::mmsg::{Datagram, SlabPool, recv_batch};
use crate::rtp::{ExtSeq, PT_MP2T, RtpPacket, SeqNum};
use crate::ts::{ContinuityCheck, PACKET_LEN, packets, validate_payload};
use crate::url::{Scheme, StreamUrl};

/// Arguments of `hitless recv`.
#[derive(clap::Args, Debug, Clone)]
#[command(
    after_help = "EXAMPLES\n  hitless recv rtp://127.0.0.1:7000 --out /tmp/x.ts --idle 1\n  \
                  hitless recv 'rtp://239.1.1.1:5000?iface=10.0.0.2&source=10.0.0.1' --out cap.ts --duration 10 --json"
)]
pub struct RecvArgs {
    /// URL to receive from (udp:// or rtp://).
    pub url: String,
    /// File to write the TS payload to (malformed datagrams are not written).
    #[arg(long)]
    pub out: PathBuf,
    /// Stop after this many seconds.
    #[arg(long, value_name = "S")]
    pub duration: Option<f64>,
    /// Stop after this many datagrams.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Stop after this many seconds without data, once something has arrived.
    #[arg(long, value_name = "S")]
    pub idle: Option<f64>,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Receive buffer to ask the kernel for (bytes; capped by net.core.rmem_max).
    #[arg(long, default_value_t = 16 << 20, value_name = "BYTES")]
    pub rcvbuf: usize,
}

/// RTP sequence accounting of a capture.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RtpSummary {
    pub ssrc: u32,
    pub first_seq: u16,
    /// Highest sequence number seen (wire value).
    pub last_seq: u16,
    /// Datagrams the sequence numbers say were sent (highest - lowest + 1, extended).
    pub expected: u64,
    /// Distinct sequence numbers received.
    pub received: u64,
    /// expected - received.
    pub missing: u64,
    /// Number of forward jumps (one gap may miss several datagrams).
    pub gaps: u64,
    /// Datagrams that arrived after a higher sequence number.
    pub out_of_order: u64,
    pub duplicates: u64,
    pub ssrc_changes: u64,
    /// Datagrams whose payload type is not 33 (MP2T).
    pub other_payload_type: u64,
}

/// What arrived. `--json` prints exactly this.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RecvSummary {
    pub url: String,
    pub out: String,
    pub datagrams: u64,
    /// TS packets written to the file.
    pub ts_packets: u64,
    /// TS bytes written to the file.
    pub bytes: u64,
    /// Seconds from the first to the last datagram.
    pub duration_s: f64,
    /// TS bitrate over that time (bit/s).
    pub bitrate_bps: f64,
    pub malformed: u64,
    pub malformed_reasons: BTreeMap<String, u64>,
    pub cc_errors: u64,
    pub rtp: Option<RtpSummary>,
    /// "count", "duration", "idle" or "signal".
    pub stopped_by: String,
}

/// Window of sequence numbers remembered for duplicate detection.
const SEEN_WINDOW: u64 = 1 << 15;

struct SeqTracker {
    base: ExtSeq,
    max: ExtSeq,
    seen: Vec<u64>,
    s: RtpSummary,
}

impl SeqTracker {
    fn new(seq: SeqNum, ssrc: u32) -> SeqTracker {
        // Start in the middle of the 64-bit range so that late packets from before the first
        // one extend below it without clamping at zero.
        let e = ExtSeq((1 << 32) + u64::from(seq.0));
        let mut t = SeqTracker {
            base: e,
            max: e,
            seen: vec![0; (SEEN_WINDOW / 64) as usize],
            s: RtpSummary {
                ssrc,
                first_seq: seq.0,
                last_seq: seq.0,
                ..Default::default()
            },
        };
        t.mark(e);
        t.s.received = 1;
        t
    }
    fn bit(e: ExtSeq) -> (usize, u64) {
        let i = e.0 % SEEN_WINDOW;
        ((i / 64) as usize, 1 << (i % 64))
    }
    fn mark(&mut self, e: ExtSeq) -> bool {
        let (w, b) = Self::bit(e);
        let was = self.seen[w] & b != 0;
        self.seen[w] |= b;
        was
    }
    fn push(&mut self, seq: SeqNum) {
        let e = ExtSeq::extend(self.max, seq);
        if e > self.max {
            if e.0 > self.max.0 + 1 {
                self.s.gaps += 1;
            }
            // Forget what the window held for the numbers we now move over.
            let span = (e.0 - self.max.0).min(SEEN_WINDOW);
            for k in 0..span {
                let (w, b) = Self::bit(ExtSeq(e.0 - k));
                self.seen[w] &= !b;
            }
            self.max = e;
            self.s.last_seq = seq.0;
            self.mark(e);
            self.s.received += 1;
            return;
        }
        if self.max.0 - e.0 >= SEEN_WINDOW {
            // Too old to tell a duplicate from a late packet: count it as late.
            self.s.out_of_order += 1;
            return;
        }
        if self.mark(e) {
            self.s.duplicates += 1;
            return;
        }
        self.s.out_of_order += 1;
        self.s.received += 1;
        if e < self.base {
            self.base = e;
            self.s.first_seq = seq.0;
        }
    }
    fn summary(&self) -> RtpSummary {
        let mut s = self.s.clone();
        s.expected = self.max.0 - self.base.0 + 1;
        s.missing = s.expected.saturating_sub(s.received);
        s
    }
}

/// Sans-IO capture analysis: push each datagram with its arrival time, write what it returns.
pub struct Capture {
    rtp: bool,
    seq: Option<SeqTracker>,
    cc: ContinuityCheck,
    first: Option<Instant>,
    last: Option<Instant>,
    sum: RecvSummary,
}

impl Capture {
    pub fn new(scheme: Scheme) -> Capture {
        Capture {
            rtp: scheme == Scheme::Rtp,
            seq: None,
            cc: ContinuityCheck::default(),
            first: None,
            last: None,
            sum: RecvSummary::default(),
        }
    }

    fn malformed(&mut self, reason: &str) {
        self.sum.malformed += 1;
        *self
            .sum
            .malformed_reasons
            .entry(reason.to_owned())
            .or_default() += 1;
    }

    /// Account for one datagram that arrived at `now`. Returns the TS bytes to write, or
    /// `None` for a malformed datagram (counted by reason).
    pub fn push(&mut self, now: Instant, data: Bytes) -> Option<Bytes> {
        self.sum.datagrams += 1;
        self.first.get_or_insert(now);
        self.last = Some(now);
        let payload = if self.rtp {
            let p = match RtpPacket::try_new(data) {
                Ok(p) => p,
                Err(e) => {
                    self.malformed(e.reason());
                    return None;
                }
            };
            match &mut self.seq {
                None => self.seq = Some(SeqTracker::new(p.seq, p.ssrc)),
                Some(t) => {
                    if p.ssrc != t.s.ssrc {
                        t.s.ssrc_changes += 1;
                        t.s.ssrc = p.ssrc;
                    }
                    t.push(p.seq);
                }
            }
            if p.payload_type != PT_MP2T
                && let Some(t) = &mut self.seq
            {
                t.s.other_payload_type += 1;
            }
            p.payload()
        } else {
            data
        };
        if let Err(e) = validate_payload(&payload) {
            self.malformed(e.reason());
            return None;
        }
        for p in packets(&payload) {
            self.cc.push(&p);
        }
        self.sum.ts_packets += (payload.len() / PACKET_LEN) as u64;
        self.sum.bytes += payload.len() as u64;
        Some(payload)
    }

    pub fn datagrams(&self) -> u64 {
        self.sum.datagrams
    }

    pub fn last_arrival(&self) -> Option<Instant> {
        self.last
    }

    pub fn summary(&self) -> RecvSummary {
        let mut s = self.sum.clone();
        s.cc_errors = self.cc.errors;
        s.rtp = self.seq.as_ref().map(SeqTracker::summary);
        if let (Some(a), Some(b)) = (self.first, self.last) {
            s.duration_s = (b - a).as_secs_f64();
            if s.duration_s > 0.0 {
                s.bitrate_bps = s.bytes as f64 * 8.0 / s.duration_s;
            }
        }
        s
    }
}

pub fn run(args: RecvArgs) -> anyhow::Result<()> {
    let stop = ctrl_c_flag();
    let s = recv(&args, &stop, |addr| tracing::info!("receiving on {addr}"))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        println!("{}", summary_text(&s));
    }
    Ok(())
}

/// Receive until a stop condition; `on_ready` is called with the bound address once the
/// socket is ready (tests use it to start sending).
pub fn recv(
    args: &RecvArgs,
    stop: &AtomicBool,
    on_ready: impl FnOnce(std::net::SocketAddr),
) -> anyhow::Result<RecvSummary> {
    let url = StreamUrl::parse(&args.url)?;
    recv_url(&url, args, stop, on_ready)
}

/// [`recv`] on an already parsed URL (tests use port 0, which URLs do not allow).
pub fn recv_url(
    url: &StreamUrl,
    args: &RecvArgs,
    stop: &AtomicBool,
    on_ready: impl FnOnce(std::net::SocketAddr),
) -> anyhow::Result<RecvSummary> {
    if !url.is_network() {
        bail!("recv needs a udp:// or rtp:// URL, not {url}");
    }
    for (name, v) in [("--duration", args.duration), ("--idle", args.idle)] {
        if let Some(v) = v
            && !(v > 0.0 && v.is_finite())
        {
            bail!("{name} must be a positive number of seconds");
        }
    }
    let rs = crate::net::open_recv(url, args.rcvbuf)?;
    // Linux reports twice the usable size. Only a small buffer is worth a warning: the
    // default asks for more than most kernels allow.
    let usable = rs.granted_recv_buffer / 2;
    if usable < args.rcvbuf.min(1 << 20) {
        tracing::warn!(
            asked = args.rcvbuf,
            usable,
            "receive buffer capped by the kernel: raise net.core.rmem_max to avoid drops at high rates"
        );
    }
    let sock = rs.socket;
    sock.set_nonblocking(false).context("blocking mode")?;
    let file =
        File::create(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    on_ready(sock.local_addr()?);

    let start = clock();
    let deadline = args.duration.map(|d| start + Duration::from_secs_f64(d));
    let idle = args.idle.map(Duration::from_secs_f64);
    let mut cap = Capture::new(url.scheme);
    let mut pool = SlabPool::default();
    let mut batch: Vec<Datagram> = Vec::with_capacity(crate::net::mmsg::BATCH);
    let bar = status_bar(None);
    let mut next_status = start;
    const POLL: Duration = Duration::from_millis(50);
    let stopped_by = 'outer: loop {
        let now = clock();
        if stop.load(Ordering::Relaxed) {
            break "signal";
        }
        if deadline.is_some_and(|d| now >= d) {
            break "duration";
        }
        if let (Some(idle), Some(last)) = (idle, cap.last_arrival())
            && now.duration_since(last) >= idle
        {
            break "idle";
        }
        if let Some(b) = &bar
            && now >= next_status
        {
            next_status = now + Duration::from_millis(250);
            let s = cap.summary();
            b.set_message(format!(
                "{} datagrams, {:.2} Mbit/s, missing {}, cc errors {}, malformed {}",
                s.datagrams,
                s.bitrate_bps / 1e6,
                s.rtp.as_ref().map_or(0, |r| r.missing),
                s.cc_errors,
                s.malformed
            ));
            b.tick();
        }
        batch.clear();
        match recv_batch(&sock, &mut pool, &mut batch) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                // Nothing waiting: block (bounded) until a datagram is readable.
                let mut wait = POLL;
                if let Some(d) = deadline {
                    wait = wait
                        .min(d.saturating_duration_since(now))
                        .max(Duration::from_millis(1));
                }
                sock.set_read_timeout(Some(wait))?;
                match sock.peek_from(&mut [0u8; 1]) {
                    Ok(_) => {}
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock
                                | std::io::ErrorKind::TimedOut
                                | std::io::ErrorKind::Interrupted
                        ) => {}
                    // Linux can report an ICMP error on the socket; it is not ours to handle.
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
                    Err(e) => return Err(e).context("receiving"),
                }
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("receiving"),
        }
        let now = clock();
        for d in batch.drain(..) {
            if args.count.is_some_and(|c| cap.datagrams() >= c) {
                break;
            }
            if let Some(src) = url.source
                && d.from.ip() != src
            {
                // source= means "only this sender": others are not part of the stream.
                continue;
            }
            if d.truncated {
                cap.sum.datagrams += 1;
                cap.malformed("oversize");
                continue;
            }
            if let Some(ts) = cap.push(now, d.data) {
                out.write_all(&ts)
                    .with_context(|| format!("writing {}", args.out.display()))?;
            }
        }
        if args.count.is_some_and(|c| cap.datagrams() >= c) {
            break 'outer "count";
        }
    };
    out.flush()
        .with_context(|| format!("writing {}", args.out.display()))?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let mut s = cap.summary();
    s.url = url.to_string();
    s.out = args.out.display().to_string();
    s.stopped_by = stopped_by.into();
    Ok(s)
}

/// Human-readable summary.
pub fn summary_text(s: &RecvSummary) -> String {
    let mut t = format!(
        "{}: {} datagrams, {} TS packets, {} bytes in {:.3} s ({:.3} Mbit/s) -> {}\n",
        s.url,
        s.datagrams,
        s.ts_packets,
        s.bytes,
        s.duration_s,
        s.bitrate_bps / 1e6,
        s.out
    );
    if let Some(r) = &s.rtp {
        t += &format!(
            "RTP ssrc {:#010x} seq {}..{}: expected {}, received {}, missing {} in {} gaps, out of order {}, duplicates {}",
            r.ssrc,
            r.first_seq,
            r.last_seq,
            r.expected,
            r.received,
            r.missing,
            r.gaps,
            r.out_of_order,
            r.duplicates
        );
        if r.ssrc_changes > 0 || r.other_payload_type > 0 {
            t += &format!(
                ", ssrc changes {}, payload type not 33: {}",
                r.ssrc_changes, r.other_payload_type
            );
        }
        t.push('\n');
    }
    t += &format!(
        "TS continuity errors {}, malformed datagrams {}",
        s.cc_errors, s.malformed
    );
    if !s.malformed_reasons.is_empty() {
        let r: Vec<String> = s
            .malformed_reasons
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        t += &format!(" ({})", r.join(", "));
    }
    t += &format!("; stopped by {}", s.stopped_by);
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtp::{FIXED_HEADER_LEN, write_header};
    use crate::ts::tests::ts;
    use std::net::UdpSocket;

    fn rtp(seq: u16, cc: u8) -> Vec<u8> {
        let mut h = [0u8; FIXED_HEADER_LEN];
        write_header(&mut h, PT_MP2T, seq, u32::from(seq) * 100, 0xabcd);
        let mut v = h.to_vec();
        v.extend_from_slice(&ts(0x100, cc));
        v
    }

    fn args(out: PathBuf, count: u64) -> RecvArgs {
        RecvArgs {
            url: String::new(),
            out,
            duration: None,
            count: Some(count),
            idle: None,
            json: true,
            rcvbuf: 1 << 20,
        }
    }

    fn local(scheme: Scheme) -> StreamUrl {
        StreamUrl {
            scheme,
            addr: "127.0.0.1:0".parse().unwrap(),
            iface: None,
            source: None,
            ttl: None,
            path: None,
        }
    }

    /// Run `recv` on an ephemeral port, send `dgrams` to it, return the summary and file.
    fn capture(scheme: Scheme, dgrams: &[Vec<u8>]) -> (RecvSummary, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("cap.ts");
        let a = args(out.clone(), dgrams.len() as u64);
        let (tx, rx) = std::sync::mpsc::channel();
        let h = std::thread::spawn(move || {
            recv_url(&local(scheme), &a, &AtomicBool::new(false), |addr| {
                tx.send(addr).unwrap()
            })
        });
        let addr = rx.recv().unwrap();
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        for d in dgrams {
            s.send_to(d, addr).unwrap();
        }
        let sum = h.join().unwrap().unwrap();
        (sum, std::fs::read(&out).unwrap())
    }

    #[test]
    fn rtp_gaps_reordering_duplicates_and_malformed() {
        let mut bad = rtp(99, 0);
        bad[0] = 0x40; // RTP version 1
        let dgrams = vec![
            rtp(65_534, 0),
            rtp(65_535, 1),
            rtp(1, 3),
            rtp(0, 2),
            rtp(1, 3),
            bad,
            rtp(2, 4),
        ];
        let (s, file) = capture(Scheme::Rtp, &dgrams);
        assert_eq!(s.stopped_by, "count");
        assert_eq!((s.datagrams, s.ts_packets, s.bytes), (7, 6, 6 * 188));
        assert_eq!(s.malformed, 1);
        assert_eq!(s.malformed_reasons.get("rtp_bad_version"), Some(&1));
        // CC 0 1 3 2 3 4: 1→3 and 3→2 are errors; the second 3 follows 2 and 4 follows it.
        assert_eq!(s.cc_errors, 2);
        let r = s.rtp.unwrap();
        assert_eq!((r.ssrc, r.first_seq, r.last_seq), (0xabcd, 65_534, 2));
        assert_eq!((r.expected, r.received, r.missing), (5, 5, 0));
        assert_eq!((r.gaps, r.out_of_order, r.duplicates), (1, 1, 1));
        let want: Vec<u8> = [0u8, 1, 3, 2, 3, 4]
            .iter()
            .flat_map(|&cc| ts(0x100, cc))
            .collect();
        assert_eq!(file, want);
    }

    #[test]
    fn rtp_missing_packets_are_counted() {
        let dgrams: Vec<_> = [10u16, 11, 15, 16, 20]
            .iter()
            .map(|&s| rtp(s, s as u8))
            .collect();
        let (s, _) = capture(Scheme::Rtp, &dgrams);
        let r = s.rtp.unwrap();
        assert_eq!((r.expected, r.received, r.missing, r.gaps), (11, 5, 6, 2));
    }

    #[test]
    fn udp_is_written_as_is_and_bad_lengths_are_malformed() {
        let good: Vec<u8> = (0..7).flat_map(|cc| ts(0x44, cc)).collect();
        let (s, file) = capture(
            Scheme::Udp,
            &[good.clone(), good[..300].to_vec(), good.clone()],
        );
        assert_eq!((s.datagrams, s.ts_packets, s.malformed), (3, 14, 1));
        assert_eq!(s.malformed_reasons.get("ts_bad_length"), Some(&1));
        assert!(s.rtp.is_none());
        assert_eq!(s.cc_errors, 1); // 6 → 0 at the repeat of the same datagram
        assert_eq!(file, [good.clone(), good].concat());
        let text = summary_text(&s);
        assert!(
            text.contains("3 datagrams") && text.contains("malformed datagrams 1"),
            "{text}"
        );
    }

    #[test]
    fn capture_is_sans_io() {
        let t0 = clock();
        let mut c = Capture::new(Scheme::Rtp);
        assert!(c.push(t0, Bytes::from(rtp(1, 0))).is_some());
        assert!(
            c.push(t0 + Duration::from_millis(500), Bytes::from(rtp(2, 1)))
                .is_some()
        );
        let s = c.summary();
        assert_eq!(s.duration_s, 0.5);
        assert_eq!(s.bitrate_bps, 2.0 * 188.0 * 8.0 / 0.5);
    }
}
