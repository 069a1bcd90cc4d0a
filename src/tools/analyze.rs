//! `hitless analyze FILE|URL`: ETSI TR 101 290 Priority 1 report of a TS file or a live
//! udp:// / rtp:// stream.
//!
//! A file is fed with virtual arrival times derived from its PCRs (as `hitless send` would
//! pace it), so the 0.5 s PAT / PMT checks mean what they mean on the wire. A URL is received
//! for `--duration` seconds with real arrival times. The analysis is
//! [`crate::rules::tr101290::Tr101290`]; this module is the glue.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};

use super::common::clock;
use super::pace;
use crate::net::mmsg::{Datagram, SlabPool, recv_batch};
use crate::rtp::RtpPacket;
use crate::rules::tr101290::{P1Config, P1Report, Tr101290};
use crate::ts::{PACKET_LEN, PCR_HZ};
use crate::url::{Scheme, StreamUrl};

/// Arguments of `hitless analyze`.
#[derive(clap::Args, Debug, Clone)]
#[command(after_help = "EXAMPLES\n  hitless analyze testdata/h264_aac.ts\n  \
                  hitless analyze rtp://239.1.1.1:5000 --duration 30 --json")]
pub struct AnalyzeArgs {
    /// TS file, or URL to receive from (udp:// or rtp://).
    pub input: String,
    /// Seconds to receive a URL for.
    #[arg(long, value_name = "S", default_value_t = 10.0)]
    pub duration: f64,
    /// PID_error (1.6) period: how long a PID referenced in a PMT may be absent, in seconds.
    #[arg(long, value_name = "S", default_value_t = 5.0)]
    pub pid_error_period: f64,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// What `--json` prints: where from, how long, and the P1 report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AnalyzeReport {
    pub input: String,
    /// Stream time covered (PCR time for a file, wall time for a URL), in seconds.
    pub duration_s: f64,
    /// Datagrams that were not whole TS packets (URL input).
    pub malformed_datagrams: u64,
    #[serde(flatten)]
    pub p1: P1Report,
}

pub fn run(args: AnalyzeArgs) -> anyhow::Result<()> {
    if !(args.pid_error_period > 0.0 && args.pid_error_period.is_finite()) {
        bail!("--pid-error-period must be a positive number of seconds");
    }
    let cfg = P1Config {
        pid_error_period: Duration::from_secs_f64(args.pid_error_period),
        ..P1Config::default()
    };
    let report = if args.input.contains("://") {
        let url = StreamUrl::parse(&args.input)?;
        if !url.is_network() {
            bail!("analyze needs a file, or a udp:// or rtp:// URL, not {url}");
        }
        if !(args.duration > 0.0 && args.duration.is_finite()) {
            bail!("--duration must be a positive number of seconds");
        }
        analyze_url(&url, Duration::from_secs_f64(args.duration), cfg)?
    } else {
        analyze_file(Path::new(&args.input), cfg)?
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report_text(&report));
    }
    Ok(())
}

/// Analyse a TS file with PCR-derived arrival times (constant rate from the file's mean
/// when it has too few PCRs: then the timers only approximate the wire).
pub fn analyze_file(path: &Path, cfg: P1Config) -> anyhow::Result<AnalyzeReport> {
    let data = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let n = data.len() / PACKET_LEN;
    if n == 0 {
        bail!("{}: not a single 188-byte TS packet", path.display());
    }
    let ticks = match pace::collect_pcrs(&data, None)
        .and_then(|(pid, pcrs)| pace::from_pcrs(n, pid, &pcrs))
    {
        Ok(s) => s.packet_ticks,
        Err(e) => {
            tracing::warn!("{e}; timing the file at 1 packet per ms");
            (0..n as u64).map(|i| i * PCR_HZ / 1000).collect()
        }
    };
    // Virtual time: any origin will do, the analyser only looks at differences.
    let t0 = clock();
    let mut a = Tr101290::new(cfg);
    for (p, &t) in data.chunks_exact(PACKET_LEN).zip(&ticks) {
        a.push(t0 + ticks_to_duration(t), p);
    }
    let end = ticks.last().copied().unwrap_or(0);
    Ok(AnalyzeReport {
        input: path.display().to_string(),
        duration_s: end as f64 / PCR_HZ as f64,
        malformed_datagrams: 0,
        p1: a.report(),
    })
}

fn ticks_to_duration(t: u64) -> Duration {
    Duration::from_nanos(t.saturating_mul(1000) / 27)
}

/// Receive `url` for `duration` and analyse what arrived, with real arrival times; the
/// analyser's timers run while nothing arrives, so a silent source shows PAT/PMT errors.
pub fn analyze_url(
    url: &StreamUrl,
    duration: Duration,
    cfg: P1Config,
) -> anyhow::Result<AnalyzeReport> {
    let rs = crate::net::open_recv(url, 4 << 20)?;
    let sock = rs.socket;
    sock.set_nonblocking(false).context("blocking mode")?;
    tracing::info!("analysing {url} for {:.1} s", duration.as_secs_f64());
    let start = clock();
    let deadline = start + duration;
    let mut a = Tr101290::new(cfg);
    let mut pool = SlabPool::default();
    let mut batch: Vec<Datagram> = Vec::with_capacity(crate::net::mmsg::BATCH);
    let mut malformed = 0u64;
    loop {
        let now = clock();
        a.handle_timeout(now);
        if now >= deadline {
            break;
        }
        batch.clear();
        match recv_batch(&sock, &mut pool, &mut batch) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let mut wait = deadline.saturating_duration_since(now);
                if let Some(t) = a.poll_timeout() {
                    wait = wait.min(t.saturating_duration_since(now));
                }
                sock.set_read_timeout(Some(
                    wait.clamp(Duration::from_millis(1), Duration::from_millis(100)),
                ))?;
                match sock.peek_from(&mut [0u8; 1]) {
                    Ok(_) => {}
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock
                                | std::io::ErrorKind::TimedOut
                                | std::io::ErrorKind::Interrupted
                                | std::io::ErrorKind::ConnectionRefused
                        ) => {}
                    Err(e) => return Err(e).context("receiving"),
                }
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("receiving"),
        }
        let now = clock();
        for d in batch.drain(..) {
            if url.source.is_some_and(|src| d.from.ip() != src) {
                continue;
            }
            if d.truncated {
                malformed += 1;
                continue;
            }
            let payload = if url.scheme == Scheme::Rtp {
                match RtpPacket::try_new(d.data) {
                    Ok(p) => p.payload(),
                    Err(_) => {
                        malformed += 1;
                        continue;
                    }
                }
            } else {
                d.data
            };
            if payload.is_empty() || payload.len() % PACKET_LEN != 0 {
                malformed += 1;
                continue;
            }
            // Bad sync bytes are fed too: they are what 1.1 / 1.2 measure.
            for p in payload.chunks_exact(PACKET_LEN) {
                a.push(now, p);
            }
        }
    }
    Ok(AnalyzeReport {
        input: url.to_string(),
        duration_s: clock().saturating_duration_since(start).as_secs_f64(),
        malformed_datagrams: malformed,
        p1: a.report(),
    })
}

/// Human-readable report: indicator table, then PIDs.
pub fn report_text(r: &AnalyzeReport) -> String {
    let p = &r.p1;
    let mut t = format!(
        "{}: {} TS packets over {:.3} s, sync {:?}, P1 errors {}\n\n",
        r.input, p.packets, r.duration_s, p.sync, p.errors_total
    );
    t += &format!("{:<7} {:<24} {:>10}\n", "clause", "indicator", "count");
    for c in &p.counts {
        t += &format!("{:<7} {:<24} {:>10}\n", c.clause, c.indicator, c.count);
    }
    t += &format!(
        "{:<7} {:<24} {:>10}\n",
        "2.2", "crc_error (PAT/PMT)", p.crc_errors
    );
    if r.malformed_datagrams > 0 {
        t += &format!("malformed datagrams: {}\n", r.malformed_datagrams);
    }
    t += "\nprograms:";
    if p.programs.is_empty() {
        t += " none";
    }
    t += "\n";
    for g in &p.programs {
        let streams: Vec<String> = g
            .streams
            .iter()
            .map(|s| format!("{:#06x} (type {:#04x})", s.pid, s.stream_type))
            .collect();
        t += &format!(
            "  program {} PMT {:#06x} PCR {} streams {}\n",
            g.program_number,
            g.pmt_pid,
            g.pcr_pid.map_or("-".into(), |p| format!("{p:#06x}")),
            streams.join(", ")
        );
    }
    t += &format!(
        "\n{:<8} {:<6} {:>10} {:>10} {:>10}\n",
        "pid", "kind", "packets", "cc_errors", "p1_errors"
    );
    for d in &p.pids {
        t += &format!(
            "{:#06x}   {:<6} {:>10} {:>10} {:>10}\n",
            d.pid, d.kind, d.packets, d.cc_errors, d.errors
        );
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn analyze_committed_testdata_is_clean() {
        for name in ["h264_aac.ts", "mpeg2_mp2.ts"] {
            let path = format!("{}/testdata/{name}", env!("CARGO_MANIFEST_DIR"));
            let r = analyze_file(Path::new(&path), P1Config::default()).unwrap();
            assert_eq!(r.p1.errors_total, 0);
            assert!((r.duration_s - 8.0).abs() < 0.1, "{}", r.duration_s);
            let text = report_text(&r);
            assert!(text.contains("continuity_count_error"), "{text}");
            let json = serde_json::to_value(&r).unwrap();
            assert_eq!(json["errors_total"], 0);
            assert_eq!(json["pmt_pids"][0], 0x1000);
        }
    }
}
