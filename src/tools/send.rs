//! `hitless send`: send an MPEG-TS file to one or more legs, paced by its PCR (or a constant
//! bitrate), with seeded per-leg impairments, and write a machine-readable report of what
//! each leg dropped.
//!
//! Every `rtp://` leg carries byte-identical RTP headers and payloads (RFC 2250 MP2T, PT 33,
//! 90 kHz timestamps from the stream's time, one SSRC): the SMPTE ST 2022-7 precondition that
//! lets a receiver merge them. The schedule ([`super::pace`]) and the impairments
//! ([`super::impair`]) are pure; this file is the glue that reads the clock and the sockets.

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use socket2::SockAddr;

use super::common::{clock, ctrl_c_flag, parse_bitrate, status_bar};
use super::impair::{self, ImpairSpec, LegImpairment};
use super::pace::{self, Schedule, Timeline};
use super::sendmmsg::{self, Msg};
use crate::rtp::{FIXED_HEADER_LEN, PT_MP2T, write_header};
use crate::ts::{PACKET_LEN, PCR_HZ, Pid, SYNC_BYTE};
use crate::url::{Scheme, StreamUrl, split_query};

const AFTER_HELP: &str = "\
DESTINATIONS
  --to rtp://IP:PORT   RTP/MP2T (RFC 2250): 12-byte header, PT 33, 90 kHz timestamp from the
                       stream time, one SSRC; identical headers and payloads on every leg
                       (SMPTE ST 2022-7).
  --to udp://IP:PORT   plain MPEG-TS, 7 TS packets per datagram.
  Multicast: ?ttl=N sets IP_MULTICAST_TTL (default 16), ?iface=IP sets IP_MULTICAST_IF.

IMPAIRMENTS (extra query keys on each --to URL, per leg, reproducible with --seed)
  loss=P              drop P % of datagrams at random
  burst=P:LEN         each datagram starts a burst of LEN lost datagrams with chance P %
  burst=P:~MEAN       same, burst lengths geometric with mean MEAN
  outage=START+DUR    drop everything in [START, START+DUR) ms of stream time since the
                      start of the send (stream time: divide by --speed for wall time);
                      repeat as outage=A+B,C+D or as several outage= keys
  delay=MS            send this leg MS ms later (wall clock, not scaled by --speed):
                      the way to create skew between legs
  reorder=P           with chance P % hold a datagram and send it right after the next one
  dup=P               send P % of datagrams twice in a row
  Each leg and each kind of impairment has its own RNG stream derived from --seed and the
  leg's position, so the same command drops the same datagrams every time.

EXAMPLES
  hitless send clip.ts --to rtp://239.1.1.1:5000?iface=10.0.0.2 --to rtp://239.2.1.1:5000?iface=10.1.0.2
  hitless send clip.ts --to 'rtp://127.0.0.1:5002?loss=2&burst=0.1:8&outage=3000+1500' \\
                       --to 'rtp://127.0.0.1:5004?delay=30&reorder=0.5&dup=0.5' --report r.json
  hitless send clip.ts --to udp://127.0.0.1:5000 --speed 4 --loop 3

REPORT (--report FILE.json)
  Datagram indices count from 0 over the whole send (all passes). For RTP the sequence
  number of index i is (first_seq + i) mod 65536. Per leg: dropped (indices), duplicated,
  reordered; lost_on_all_legs: indices dropped on every leg (what a 2022-7 merge cannot
  recover).";

/// Arguments of `hitless send`.
#[derive(clap::Args, Debug, Clone)]
#[command(after_help = AFTER_HELP)]
pub struct SendArgs {
    /// MPEG-TS file to send (188-byte packets).
    pub file: PathBuf,
    /// Destination URL with optional impairments (repeat for several legs; see below).
    #[arg(long = "to", required = true, value_name = "URL")]
    pub to: Vec<String>,
    /// Seed of the impairment RNGs and of the RTP SSRC / first sequence number.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Pace at this constant rate (bit/s, k/M/G suffixes) instead of by PCR.
    #[arg(long, value_parser = parse_bitrate, value_name = "BPS")]
    pub bitrate: Option<u64>,
    /// Pacing multiplier: 4 sends four times faster than real time; `inf` as fast as possible.
    #[arg(long, default_value_t = 1.0, value_name = "X")]
    pub speed: f64,
    /// Number of passes over the file (0: until Ctrl-C). RTP seq/timestamps keep increasing.
    #[arg(
        long = "loop",
        default_value_t = 1,
        value_name = "N",
        conflicts_with = "duration"
    )]
    pub loops: u64,
    /// Loop the file until this many seconds (of wall time at --speed) have been sent.
    #[arg(long, value_name = "S")]
    pub duration: Option<f64>,
    /// PID whose PCRs pace the file (default: the first PID that carries a PCR).
    #[arg(long, value_parser = parse_pid, value_name = "PID")]
    pub pcr_pid: Option<u16>,
    /// TS packets per datagram (1..=7).
    #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(u8).range(1..=7), value_name = "N")]
    pub ts_per_datagram: u8,
    /// RTP sequence number of the first datagram (default: derived from --seed).
    #[arg(long, value_name = "SEQ")]
    pub first_seq: Option<u16>,
    /// RTP SSRC (decimal or 0x hex; default: derived from --seed).
    #[arg(long, value_parser = parse_u32, value_name = "SSRC")]
    pub ssrc: Option<u32>,
    /// Write a JSON report of what was sent and dropped per leg to this file.
    #[arg(long, value_name = "FILE.json")]
    pub report: Option<PathBuf>,
}

fn parse_pid(s: &str) -> Result<u16, String> {
    let v = parse_u32(s)?;
    u16::try_from(v)
        .ok()
        .filter(|&p| p <= 0x1fff)
        .ok_or_else(|| format!("{s:?} is not a PID (0..=0x1fff)"))
}

fn parse_u32(s: &str) -> Result<u32, String> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u32::from_str_radix(h, 16),
        None => s.parse(),
    };
    r.map_err(|_| format!("{s:?} is not a number (decimal or 0x hex)"))
}

/// Split a `--to` URL into the stream URL and the leg's impairments.
pub fn parse_destination(s: &str) -> anyhow::Result<(StreamUrl, ImpairSpec)> {
    let (head, pairs) = split_query(s.trim());
    let mut spec = ImpairSpec::default();
    let mut rest = Vec::new();
    for (k, v) in pairs {
        if impair::KEYS.contains(&k) {
            spec.set(k, v).with_context(|| format!("--to {s}"))?;
        } else {
            rest.push(format!("{k}={v}"));
        }
    }
    let url_str = if rest.is_empty() {
        head.to_owned()
    } else {
        format!("{head}?{}", rest.join("&"))
    };
    let url = StreamUrl::parse(&url_str).with_context(|| format!("--to {s}"))?;
    if !url.is_network() {
        bail!("--to {s}: send needs a udp:// or rtp:// destination");
    }
    Ok((url, spec))
}

/// Read a TS file and check it is whole 188-byte packets with sync bytes.
pub fn load_ts(path: &Path) -> anyhow::Result<Vec<u8>> {
    let mut data =
        std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    check_ts(&mut data).with_context(|| format!("{} is not an MPEG-TS file", path.display()))?;
    Ok(data)
}

fn check_ts(data: &mut Vec<u8>) -> anyhow::Result<()> {
    if data.len() < PACKET_LEN {
        bail!("{} bytes, shorter than one 188-byte TS packet", data.len());
    }
    if data.len() >= 192 * 2
        && data[4] == SYNC_BYTE
        && data[196] == SYNC_BYTE
        && data[0] != SYNC_BYTE
    {
        bail!(
            "it looks like a 192-byte M2TS/BDAV file: remux it to plain TS (ffmpeg -i in.m2ts -c copy -f mpegts out.ts)"
        );
    }
    if let Some(off) = (0..data.len())
        .step_by(PACKET_LEN)
        .find(|&o| data[o] != SYNC_BYTE)
    {
        bail!(
            "byte {off} is {:#04x}, not the 0x47 sync byte expected every 188 bytes",
            data[off]
        );
    }
    let whole = data.len() / PACKET_LEN * PACKET_LEN;
    if whole != data.len() {
        tracing::warn!(
            bytes = data.len() - whole,
            "ignoring a partial TS packet at the end of the file"
        );
        data.truncate(whole);
    }
    Ok(())
}

/// Everything fixed before the first datagram leaves: the schedule and the RTP identity.
struct Plan<'a> {
    /// Payload of each datagram of one pass, cut once from the file (no copy).
    payloads: Vec<&'a [u8]>,
    timeline: Timeline,
    schedule: Schedule,
    /// Datagrams to send in total (`u64::MAX`: until Ctrl-C).
    total: u64,
    speed: f64,
    first_seq: u16,
    ssrc: u32,
    first_ts: u32,
}

impl Plan<'_> {
    /// Wall-clock offset of datagram `index` from the start of the send (before leg delay).
    #[inline]
    fn offset(&self, index: u64) -> Duration {
        if self.speed.is_infinite() {
            return Duration::ZERO;
        }
        Duration::from_secs_f64(self.timeline.ticks(index) as f64 / PCR_HZ as f64 / self.speed)
    }
    /// RTP header of datagram `index`: the same on every leg.
    #[inline]
    fn rtp_header(&self, index: u64) -> [u8; FIXED_HEADER_LEN] {
        let mut h = [0u8; FIXED_HEADER_LEN];
        let seq = self.first_seq.wrapping_add(index as u16);
        let ts = self
            .first_ts
            .wrapping_add((self.timeline.ticks(index) / 300) as u32);
        write_header(&mut h, PT_MP2T, seq, ts, self.ssrc);
        h
    }
}

struct Leg {
    raw: String,
    url: StreamUrl,
    sock: UdpSocket,
    dest: SockAddr,
    delay: Duration,
    imp: LegImpairment,
    /// Next datagram index to decide.
    next: u64,
    finished: bool,
    datagrams_sent: u64,
    bytes_sent: u64,
    send_errors: u64,
}

/// The JSON written by `--report`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Report {
    pub file: String,
    pub seed: u64,
    /// "pcr" or "bitrate".
    pub pacing: String,
    pub pcr_pid: Option<u16>,
    /// Mean transport rate of the file as paced (bit/s, at --speed 1).
    pub stream_bitrate_bps: f64,
    /// `null` for `inf`.
    pub speed: Option<f64>,
    pub ts_packets_per_datagram: usize,
    pub datagrams_per_pass: u64,
    /// Passes started (the last one may be partial with --duration or Ctrl-C).
    pub passes: u64,
    /// Datagram indices decided on the legs: 0..total_datagrams.
    pub total_datagrams: u64,
    /// False when interrupted by Ctrl-C.
    pub completed: bool,
    pub elapsed_s: f64,
    /// RTP identity shared by every rtp:// leg (present when any leg is rtp://).
    pub first_seq: Option<u16>,
    pub ssrc: Option<u32>,
    pub first_timestamp: Option<u32>,
    pub legs: Vec<LegReport>,
    /// Indices dropped on every leg: a 2022-7 merge cannot recover these.
    pub lost_on_all_legs: Vec<u64>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct LegReport {
    /// The `--to` argument as given (with impairments).
    pub url: String,
    /// The destination without impairments (canonical).
    pub dest: String,
    pub scheme: String,
    pub impairments: String,
    pub delay_ms: f64,
    /// Datagrams put on the wire, duplicates included.
    pub datagrams_sent: u64,
    pub bytes_sent: u64,
    pub dropped_count: u64,
    /// Indices dropped by impairment, ascending.
    pub dropped: Vec<u64>,
    pub duplicated: u64,
    pub duplicated_indices: Vec<u64>,
    pub reordered: u64,
    pub reordered_indices: Vec<u64>,
    pub send_errors: u64,
    pub first_seq: Option<u16>,
    pub ssrc: Option<u32>,
}

pub fn run(args: SendArgs) -> anyhow::Result<()> {
    let stop = ctrl_c_flag();
    let report = send(&args, &stop)?;
    eprintln!("{}", summary_line(&report));
    Ok(())
}

/// The whole send, stoppable through `stop`; returns (and writes, with --report) the report.
pub fn send(args: &SendArgs, stop: &AtomicBool) -> anyhow::Result<Report> {
    if args.speed.is_nan() || args.speed <= 0.0 {
        bail!("--speed must be greater than 0 (e.g. 1, 4, inf)");
    }
    if args.speed.is_infinite() && args.duration.is_some() {
        bail!("--duration needs a finite --speed (it counts time at that speed)");
    }
    if let Some(d) = args.duration
        && !(d > 0.0 && d.is_finite())
    {
        bail!("--duration must be a positive number of seconds");
    }
    let dests: Vec<(String, StreamUrl, ImpairSpec)> = args
        .to
        .iter()
        .map(|s| parse_destination(s).map(|(u, i)| (s.clone(), u, i)))
        .collect::<anyhow::Result<_>>()?;
    let data = load_ts(&args.file)?;
    let n_packets = data.len() / PACKET_LEN;
    let schedule = match args.bitrate {
        Some(bps) => pace::constant_bitrate(n_packets, bps)?,
        None => {
            let (pid, pcrs) = pace::collect_pcrs(&data, args.pcr_pid.map(Pid))
                .with_context(|| args.file.display().to_string())?;
            pace::from_pcrs(n_packets, pid, &pcrs)
                .with_context(|| args.file.display().to_string())?
        }
    };
    let ppd = usize::from(args.ts_per_datagram);
    let payloads: Vec<&[u8]> = data.chunks(ppd * PACKET_LEN).collect();
    let timeline = Timeline::new(&schedule, ppd);
    let total = match (args.duration, args.loops) {
        (Some(s), _) => timeline
            .count_before((s * args.speed * PCR_HZ as f64) as u64)
            .max(1),
        (None, 0) => u64::MAX,
        (None, n) => n.saturating_mul(timeline.per_pass()),
    };
    let mut ids = fastrand::Rng::with_seed(impair::stream_seed(args.seed, 0, 0));
    let plan = Plan {
        payloads,
        timeline,
        schedule,
        total,
        speed: args.speed,
        first_seq: args.first_seq.unwrap_or_else(|| ids.u16(..)),
        ssrc: args.ssrc.unwrap_or_else(|| ids.u32(..)),
        first_ts: ids.u32(..),
    };
    // Drop lists are small (8 bytes per drop) and feed the summary too: always keep them.
    let record = true;
    let mut legs = Vec::with_capacity(dests.len());
    for (i, (raw, url, spec)) in dests.into_iter().enumerate() {
        let sock = crate::net::open_send(&url, 4 << 20)?;
        sock.set_nonblocking(false)
            .with_context(|| format!("{url}: blocking mode"))?;
        legs.push(Leg {
            dest: SockAddr::from(url.addr),
            delay: Duration::from_secs_f64(spec.delay_ms / 1000.0),
            imp: LegImpairment::new(spec, args.seed, i, record),
            raw,
            url,
            sock,
            next: 0,
            finished: false,
            datagrams_sent: 0,
            bytes_sent: 0,
            send_errors: 0,
        });
    }

    let started = clock();
    let completed = pump(&plan, &mut legs, started, stop)?;
    let elapsed = started.elapsed();

    let report = build_report(args, &plan, &legs, completed, elapsed);
    if let Some(path) = &args.report {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json + "\n")
            .with_context(|| format!("cannot write report {}", path.display()))?;
    }
    Ok(report)
}

/// Gaps shorter than this are spun (with `yield_now`) rather than slept: a sleep overshoots
/// by the timer slack (~50 µs). Longer gaps sleep, and since due times are absolute the
/// overshoot is caught up by sending everything due in one batch, without drift.
const SPIN_BELOW: Duration = Duration::from_micros(200);
/// How often the live status line is refreshed.
const STATUS_EVERY: Duration = Duration::from_millis(250);

/// Send every datagram when it is due, leg by leg, in batches. Returns false when stopped.
fn pump(
    plan: &Plan<'_>,
    legs: &mut [Leg],
    start: Instant,
    stop: &AtomicBool,
) -> anyhow::Result<bool> {
    let is_rtp: Vec<bool> = legs.iter().map(|l| l.url.scheme == Scheme::Rtp).collect();
    let bar = status_bar((plan.total != u64::MAX).then_some(plan.total));
    let mut next_status = start + STATUS_EVERY;
    let mut headers = [[0u8; FIXED_HEADER_LEN]; sendmmsg::BATCH];
    let mut batch: Vec<u64> = Vec::with_capacity(sendmmsg::BATCH);
    loop {
        if stop.load(Ordering::Relaxed) {
            if let Some(b) = &bar {
                b.abandon();
            }
            return Ok(false);
        }
        let now = clock();
        let mut next_due: Option<Instant> = None;
        // One batch per leg per round, so that legs interleave even when a lot is due at
        // once (high --speed) and Ctrl-C is seen between batches.
        let mut more_due = false;
        for (leg, &rtp) in legs.iter_mut().zip(&is_rtp) {
            batch.clear();
            while leg.next < plan.total {
                if batch.len() > sendmmsg::BATCH - 4 {
                    more_due = true;
                    break;
                }
                let due = start + leg.delay + plan.offset(leg.next);
                if due > now {
                    next_due = Some(next_due.map_or(due, |d: Instant| d.min(due)));
                    break;
                }
                let e = leg.imp.push(leg.next, plan.timeline.ticks(leg.next));
                batch.extend_from_slice(e.as_slice());
                leg.next += 1;
            }
            if leg.next >= plan.total && !leg.finished {
                batch.extend_from_slice(leg.imp.finish().as_slice());
                leg.finished = true;
            }
            if !batch.is_empty() {
                transmit(plan, leg, rtp, &batch, &mut headers)?;
            }
        }
        if legs.iter().all(|l| l.finished) {
            if let Some(b) = &bar {
                b.finish_and_clear();
            }
            return Ok(true);
        }
        if let Some(b) = &bar
            && now >= next_status
        {
            next_status = now + STATUS_EVERY;
            b.set_position(
                legs.iter()
                    .map(|l| l.next)
                    .min()
                    .unwrap_or(0)
                    .min(plan.total),
            );
            b.set_message(status_message(legs, now - start));
        }
        if more_due {
            continue;
        }
        if let Some(due) = next_due {
            let now = clock();
            if due > now {
                let gap = due - now;
                if gap >= SPIN_BELOW {
                    std::thread::sleep(gap.min(STATUS_EVERY));
                } else {
                    std::thread::yield_now();
                }
            }
        }
    }
}

fn transmit(
    plan: &Plan<'_>,
    leg: &mut Leg,
    rtp: bool,
    batch: &[u64],
    headers: &mut [[u8; FIXED_HEADER_LEN]; sendmmsg::BATCH],
) -> anyhow::Result<()> {
    let per_pass = plan.timeline.per_pass();
    let mut msgs = [Msg {
        header: &[],
        payload: &[],
    }; sendmmsg::BATCH];
    if rtp {
        for (h, &i) in headers.iter_mut().zip(batch) {
            *h = plan.rtp_header(i);
        }
    }
    for (k, &i) in batch.iter().enumerate() {
        msgs[k] = Msg {
            header: if rtp { &headers[k] } else { &[] },
            payload: plan.payloads[(i % per_pass) as usize],
        };
    }
    let mut msgs = &msgs[..batch.len()];
    while !msgs.is_empty() {
        match sendmmsg::send(&leg.sock, &leg.dest, msgs) {
            Ok(n) => {
                leg.datagrams_sent += n as u64;
                leg.bytes_sent += msgs[..n]
                    .iter()
                    .map(|m| (m.header.len() + m.payload.len()) as u64)
                    .sum::<u64>();
                msgs = &msgs[n..];
            }
            // An ICMP error from an earlier datagram (nobody listening yet, a route flap):
            // count it and skip one datagram, as a network would lose it.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionRefused
                        | std::io::ErrorKind::HostUnreachable
                        | std::io::ErrorKind::NetworkUnreachable
                ) =>
            {
                leg.send_errors += 1;
                msgs = &msgs[1..];
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).with_context(|| format!("sending to {}", leg.url)),
        }
    }
    Ok(())
}

fn status_message(legs: &[Leg], elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64().max(1e-3);
    let sent = legs.first().map_or(0, |l| l.datagrams_sent);
    let mbps = legs
        .first()
        .map_or(0.0, |l| l.bytes_sent as f64 * 8.0 / secs / 1e6);
    let drops: Vec<String> = legs
        .iter()
        .map(|l| l.imp.stats.dropped.to_string())
        .collect();
    format!(
        "{sent} datagrams, {mbps:.1} Mbit/s per leg, dropped per leg {}",
        drops.join("/")
    )
}

fn build_report(
    args: &SendArgs,
    plan: &Plan<'_>,
    legs: &[Leg],
    completed: bool,
    elapsed: Duration,
) -> Report {
    let any_rtp = legs.iter().any(|l| l.url.scheme == Scheme::Rtp);
    let total = legs.iter().map(|l| l.next).max().unwrap_or(0);
    let lists: Vec<&[u64]> = legs
        .iter()
        .map(|l| l.imp.stats.dropped_indices.as_slice())
        .collect();
    Report {
        file: args.file.display().to_string(),
        seed: args.seed,
        pacing: if plan.schedule.pcr_pid.is_some() {
            "pcr"
        } else {
            "bitrate"
        }
        .into(),
        pcr_pid: plan.schedule.pcr_pid.map(|p| p.0),
        stream_bitrate_bps: plan.schedule.mean_bitrate(),
        speed: plan.speed.is_finite().then_some(plan.speed),
        ts_packets_per_datagram: usize::from(args.ts_per_datagram),
        datagrams_per_pass: plan.timeline.per_pass(),
        passes: total.div_ceil(plan.timeline.per_pass()),
        total_datagrams: total,
        completed,
        elapsed_s: elapsed.as_secs_f64(),
        first_seq: any_rtp.then_some(plan.first_seq),
        ssrc: any_rtp.then_some(plan.ssrc),
        first_timestamp: any_rtp.then_some(plan.first_ts),
        lost_on_all_legs: if !legs.is_empty() && legs.iter().all(|l| l.next == total) {
            impair::lost_on_all(&lists)
        } else {
            // Interrupted with legs at different points: only indices every leg reached.
            let reached = legs.iter().map(|l| l.next).min().unwrap_or(0);
            impair::lost_on_all(&lists)
                .into_iter()
                .filter(|&i| i < reached)
                .collect()
        },
        legs: legs
            .iter()
            .map(|l| {
                let rtp = l.url.scheme == Scheme::Rtp;
                let st = &l.imp.stats;
                LegReport {
                    url: l.raw.clone(),
                    dest: l.url.to_string(),
                    scheme: l.url.scheme.as_str().into(),
                    impairments: l.imp.spec().to_string(),
                    delay_ms: l.imp.spec().delay_ms,
                    datagrams_sent: l.datagrams_sent,
                    bytes_sent: l.bytes_sent,
                    dropped_count: st.dropped,
                    dropped: st.dropped_indices.clone(),
                    duplicated: st.duplicated,
                    duplicated_indices: st.duplicated_indices.clone(),
                    reordered: st.reordered,
                    reordered_indices: st.reordered_indices.clone(),
                    send_errors: l.send_errors,
                    first_seq: rtp.then_some(plan.first_seq),
                    ssrc: rtp.then_some(plan.ssrc),
                }
            })
            .collect(),
    }
}

/// The one line printed on stderr at the end of every send.
pub fn summary_line(r: &Report) -> String {
    let secs = r.elapsed_s.max(1e-6);
    let per_leg = r
        .legs
        .first()
        .map_or(0.0, |l| l.bytes_sent as f64 * 8.0 / secs / 1e6);
    let legs: Vec<String> = r
        .legs
        .iter()
        .map(|l| {
            format!(
                "{}: dropped {} dup {} reordered {}",
                l.dest, l.dropped_count, l.duplicated, l.reordered
            )
        })
        .collect();
    format!(
        "{}sent {} datagrams ({} pass{}) to {} leg{} in {:.2} s, {:.1} Mbit/s per leg; {}; lost on all legs {}",
        if r.completed { "" } else { "interrupted: " },
        r.total_datagrams,
        r.passes,
        if r.passes == 1 { "" } else { "es" },
        r.legs.len(),
        if r.legs.len() == 1 { "" } else { "s" },
        r.elapsed_s,
        per_leg,
        legs.join("; "),
        r.lost_on_all_legs.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};
    use std::net::{SocketAddr, UdpSocket};
    use std::sync::Arc;

    /// Ticks per 188-byte packet at 2 Mbit/s.
    const TICKS_PER_PACKET: u64 = 188 * 8 * 27_000_000 / 2_000_000;

    /// A TS packet on PID 0x100 with continuity counter `cc`, its index in the payload, and
    /// a PCR when `pcr` is given.
    fn packet(index: u32, cc: u8, pcr: Option<u64>) -> [u8; PACKET_LEN] {
        let mut p = crate::ts::tests::ts(0x100, cc);
        if let Some(pcr) = pcr {
            crate::ts::tests::set_pcr(&mut p, pcr);
        }
        p[12..16].copy_from_slice(&index.to_be_bytes());
        p
    }

    /// `n` packets at 2 Mbit/s with a PCR every 10 packets (starting near the PCR wrap).
    fn ts_file(n: u32, with_pcr: bool) -> Vec<u8> {
        let start = PCR_MODULUS_NEAR_WRAP;
        (0..n)
            .flat_map(|i| {
                let pcr = (with_pcr && i % 10 == 0)
                    .then(|| (start + u64::from(i) * TICKS_PER_PACKET) % pace::PCR_MODULUS);
                packet(i, i as u8, pcr)
            })
            .collect()
    }
    const PCR_MODULUS_NEAR_WRAP: u64 = pace::PCR_MODULUS - 27_000_000 / 2;

    fn args(file: &Path, to: Vec<String>) -> SendArgs {
        SendArgs {
            file: file.to_owned(),
            to,
            seed: 7,
            bitrate: None,
            speed: 1.0,
            loops: 1,
            duration: None,
            pcr_pid: None,
            ts_per_datagram: 7,
            first_seq: None,
            ssrc: None,
            report: None,
        }
    }

    /// A loopback receiver that collects datagrams until `stop` is raised and its queue is
    /// empty (loopback delivery is synchronous: once `send` returned, everything is queued).
    fn receiver(stop: Arc<AtomicBool>) -> (SocketAddr, std::thread::JoinHandle<Vec<Vec<u8>>>) {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let _ = socket2::SockRef::from(&s).set_recv_buffer_size(4 << 20);
        s.set_read_timeout(Some(Duration::from_millis(10))).unwrap();
        let addr = s.local_addr().unwrap();
        let h = std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut buf = [0u8; 2048];
            loop {
                match s.recv(&mut buf) {
                    Ok(n) => got.push(buf[..n].to_vec()),
                    Err(_) if stop.load(Ordering::Relaxed) => return got,
                    Err(_) => {}
                }
            }
        });
        (addr, h)
    }

    #[test]
    fn rejects_bad_input_with_clear_messages() {
        let dir = tempfile::tempdir().unwrap();
        let stop = AtomicBool::new(false);
        let to = vec!["udp://127.0.0.1:9".to_owned()];

        let missing = dir.path().join("missing.ts");
        let e = format!(
            "{:#}",
            send(&args(&missing, to.clone()), &stop).unwrap_err()
        );
        assert!(e.contains("cannot read"), "{e}");

        let junk = dir.path().join("junk.ts");
        std::fs::write(&junk, vec![0u8; 188 * 3]).unwrap();
        let e = format!("{:#}", send(&args(&junk, to.clone()), &stop).unwrap_err());
        assert!(
            e.contains("not an MPEG-TS file") && e.contains("0x47"),
            "{e}"
        );

        let no_pcr = dir.path().join("nopcr.ts");
        std::fs::write(&no_pcr, ts_file(70, false)).unwrap();
        let e = format!("{:#}", send(&args(&no_pcr, to.clone()), &stop).unwrap_err());
        assert!(e.contains("--bitrate"), "{e}");

        let e = format!(
            "{:#}",
            send(&args(&no_pcr, vec!["tcp://1.2.3.4:5".into()]), &stop).unwrap_err()
        );
        assert!(e.contains("tcp://1.2.3.4:5"), "{e}");
        let e = format!(
            "{:#}",
            send(
                &args(&no_pcr, vec!["udp://127.0.0.1:5?loss=x".into()]),
                &stop
            )
            .unwrap_err()
        );
        assert!(e.contains("loss"), "{e}");
    }

    #[test]
    fn destination_keeps_url_keys_and_strips_impairments() {
        let (u, i) = parse_destination(
            "rtp://239.1.1.1:5000?loss=2&ttl=4&outage=1+2&outage=5+1&iface=10.0.0.2",
        )
        .unwrap();
        assert_eq!(u.ttl, Some(4));
        assert_eq!(u.iface, Some("10.0.0.2".parse().unwrap()));
        assert_eq!(i.loss_pct, 2.0);
        assert_eq!(i.outages_ms, vec![(1.0, 2.0), (5.0, 1.0)]);
    }

    /// Two impaired RTP legs over loopback, two passes, sequence numbers wrapping: what each
    /// socket receives is exactly what the report says.
    #[test]
    fn loopback_legs_match_the_report() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("in.ts");
        let data = ts_file(2100, true); // 300 datagrams, 1.58 s at 2 Mbit/s
        std::fs::write(&file, &data).unwrap();
        let report_path = dir.path().join("report.json");
        let stop_rx = Arc::new(AtomicBool::new(false));
        let (a0, h0) = receiver(stop_rx.clone());
        let (a1, h1) = receiver(stop_rx.clone());
        let mut a = args(
            &file,
            vec![
                format!("rtp://{a0}?loss=10&dup=5&reorder=5"),
                format!("rtp://{a1}?burst=2:4&outage=200+100&delay=5"),
            ],
        );
        a.speed = 30.0;
        a.loops = 2;
        a.first_seq = Some(65_500);
        a.report = Some(report_path.clone());
        let r = send(&a, &AtomicBool::new(false)).unwrap();
        stop_rx.store(true, Ordering::Relaxed);
        let got = [h0.join().unwrap(), h1.join().unwrap()];

        let written: Report =
            serde_json::from_slice(&std::fs::read(&report_path).unwrap()).unwrap();
        assert_eq!(written, r);
        assert!(r.completed);
        assert_eq!(
            (r.datagrams_per_pass, r.passes, r.total_datagrams),
            (300, 2, 600)
        );
        assert_eq!(r.pcr_pid, Some(0x100));
        assert!(
            (r.stream_bitrate_bps - 2_000_000.0).abs() < 1.0,
            "{}",
            r.stream_bitrate_bps
        );
        let first_seq = r.first_seq.unwrap();
        let ssrc = r.ssrc.unwrap();
        // Outage 200..300 ms of stream time: 2 Mbit/s is 1316×8 bits every 5.264 ms.
        let outage: Vec<u64> = (0..600u64)
            .filter(|&i| {
                let t = i * 7 * TICKS_PER_PACKET;
                (5_400_000..8_100_000).contains(&t)
            })
            .collect();
        assert!(
            outage
                .iter()
                .all(|i| r.legs[1].dropped.binary_search(i).is_ok())
        );

        let mut by_index: Vec<BTreeMap<u64, Vec<u8>>> = vec![BTreeMap::new(), BTreeMap::new()];
        let mut prev_ts: Option<(u64, u32)> = None;
        for (leg, (rep, dgrams)) in r.legs.iter().zip(&got).enumerate() {
            assert_eq!(dgrams.len() as u64, rep.datagrams_sent);
            assert_eq!(rep.datagrams_sent, 600 - rep.dropped_count + rep.duplicated);
            assert_eq!(rep.dropped.len() as u64, rep.dropped_count);
            let mut arrival = Vec::new();
            let mut count: BTreeMap<u64, u32> = BTreeMap::new();
            for d in dgrams {
                let p = crate::rtp::RtpPacket::try_new(bytes::Bytes::copy_from_slice(d)).unwrap();
                assert_eq!((p.payload_type, p.ssrc), (PT_MP2T, ssrc));
                let idx = u64::from(p.seq.0.wrapping_sub(first_seq));
                assert!(idx < 600);
                // Payload is the file's datagram idx % 300, across both passes.
                let k = (idx % 300) as usize * 7 * PACKET_LEN;
                assert_eq!(
                    p.payload_slice(),
                    &data[k..(k + 7 * PACKET_LEN).min(data.len())]
                );
                *count.entry(idx).or_default() += 1;
                arrival.push(idx);
                by_index[leg].insert(idx, d.clone());
            }
            for i in 0..600u64 {
                let want = if rep.dropped.binary_search(&i).is_ok() {
                    0
                } else if rep.duplicated_indices.binary_search(&i).is_ok() {
                    2
                } else {
                    1
                };
                assert_eq!(
                    count.get(&i).copied().unwrap_or(0),
                    want,
                    "leg {leg} index {i}"
                );
            }
            // Apart from the reordered ones, datagrams arrive in index order.
            let reordered: BTreeSet<u64> = rep.reordered_indices.iter().copied().collect();
            let rest: Vec<u64> = arrival
                .iter()
                .copied()
                .filter(|i| !reordered.contains(i))
                .collect();
            assert!(rest.windows(2).all(|w| w[0] <= w[1]));
            if leg == 0 {
                assert!(rep.reordered > 0 && rep.duplicated > 0 && rep.dropped_count > 20);
            }
            // RTP timestamps grow with the index, through the loop point.
            for (&i, d) in &by_index[leg] {
                let ts = u32::from_be_bytes([d[4], d[5], d[6], d[7]]);
                if let Some((pi, pts)) = prev_ts
                    && pi < i
                {
                    assert!(
                        ts.wrapping_sub(pts) > 0 && ts.wrapping_sub(pts) < 90_000,
                        "{pi}->{i}"
                    );
                }
                prev_ts = Some((i, ts));
            }
            prev_ts = None;
        }
        // Identical RTP datagrams on both legs (SMPTE 2022-7).
        for (i, d) in &by_index[0] {
            if let Some(d1) = by_index[1].get(i) {
                assert_eq!(d, d1, "index {i}");
            }
        }
        let lost: Vec<u64> = (0..600)
            .filter(|i| !by_index[0].contains_key(i) && !by_index[1].contains_key(i))
            .collect();
        assert_eq!(r.lost_on_all_legs, lost);
    }

    #[test]
    fn udp_bitrate_pacing_and_duration() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("in.ts");
        let data = ts_file(70, false); // 10 datagrams, no PCR
        std::fs::write(&file, &data).unwrap();
        let stop_rx = Arc::new(AtomicBool::new(false));
        let (addr, h) = receiver(stop_rx.clone());
        let mut a = args(&file, vec![format!("udp://{addr}")]);
        // 100 Mbit/s: one pass is 70 × 1504 bits = 1.05 ms; 5 ms covers 4 passes and a bit.
        a.bitrate = Some(100_000_000);
        a.duration = Some(0.005);
        let r = send(&a, &AtomicBool::new(false)).unwrap();
        stop_rx.store(true, Ordering::Relaxed);
        let got = h.join().unwrap();
        assert_eq!(r.pacing, "bitrate");
        assert_eq!(r.first_seq, None);
        let per_pass_s = 70.0 * 1504.0 / 100e6;
        let want = (0..)
            .take_while(|&i: &u64| {
                (i / 10) as f64 * per_pass_s + (i % 10) as f64 * 7.0 * 1504.0 / 100e6 < 0.005
            })
            .count();
        assert_eq!(r.total_datagrams, want as u64);
        assert_eq!(got.len() as u64, r.total_datagrams);
        for (i, d) in got.iter().enumerate() {
            let k = (i % 10) * 7 * PACKET_LEN;
            assert_eq!(&d[..], &data[k..k + 7 * PACKET_LEN]);
        }
    }
}
