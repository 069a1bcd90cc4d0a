//! `hitless demo`: a newcomer's first look in one command. Runs the embedded default
//! gateway, feeds it a test file over two impaired legs with `hitless send` (random loss
//! on both, an outage of one, one leg 30 ms late), captures the output, shows live per-leg
//! counters and ends with a verdict: the output must equal the source except for the
//! packets lost on both legs.

use std::collections::BTreeSet;
use std::io::{IsTerminal, Write};
use std::net::UdpSocket;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::config::{Config, DEFAULT_CONFIG};
use crate::runtime::{ChannelSnapshot, Gateway};

/// Arguments of `hitless demo`.
#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {
    /// TS file to play (default: the H.264/AAC test clip in testdata/).
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Random loss on each leg, in percent.
    #[arg(long, default_value_t = 2.0)]
    pub loss: f64,
    /// Seed of the impairments (same seed, same losses).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Playback speed (1 = real time).
    #[arg(long, default_value_t = 1.0)]
    pub speed: f64,
}

const TS_PER_DATAGRAM: usize = 7 * 188;

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let file = args.file.clone().unwrap_or_else(|| {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/h264_aac.ts"))
    });
    let source = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
    let cfg = Config::from_str(DEFAULT_CONFIG, None)?;
    let ch = &cfg.channels[0];
    let out_addr = ch.outputs[0].url.addr;
    let (a, b) = (&ch.sources[0], &ch.sources[1]);

    // Capture the gateway's output in a thread until told to stop.
    let cap = UdpSocket::bind(out_addr)
        .with_context(|| format!("binding the capture socket {out_addr}"))?;
    cap.set_read_timeout(Some(Duration::from_millis(100)))?;
    let stop = Arc::new(AtomicBool::new(false));
    let capture = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut got: Vec<Vec<u8>> = Vec::new();
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                if let Ok(n) = cap.recv(&mut buf) {
                    got.push(buf[..n].to_vec());
                }
            }
            got
        })
    };

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let gateway = rt.block_on(async { Gateway::start(&cfg) })?;
    let report = std::env::temp_dir().join(format!("hitless-demo-{}.json", std::process::id()));
    let leg_a = format!("{}?loss={}", a.url, args.loss);
    let leg_b = format!("{}?loss={}&delay=30&outage=3000+1500", b.url, args.loss);
    println!(
        "hitless demo: gateway on {} and {}, output {}",
        a.url, b.url, ch.outputs[0].url
    );
    println!("  leg a: {leg_a}");
    println!("  leg b: {leg_b}   (30 ms late, silent 3.0-4.5 s)");
    let mut sender = Command::new(std::env::current_exe()?)
        .arg("send")
        .arg(&file)
        .args([
            "--to",
            &leg_a,
            "--to",
            &leg_b,
            "--seed",
            &args.seed.to_string(),
        ])
        .args(["--speed", &args.speed.to_string(), "--report"])
        .arg(&report)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting hitless send")?;

    let live = std::io::stdout().is_terminal();
    let snapshot = |g: &Gateway| rt.block_on(g.snapshots()).into_iter().next();
    let status = loop {
        if let Some(s) = sender.try_wait()? {
            break s;
        }
        if live && let Some(s) = snapshot(&gateway) {
            print!("\r{}", status_line(&s));
            let _ = std::io::stdout().flush();
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    if !status.success() {
        bail!("hitless send failed ({status})");
    }
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&report)?)?;
    let _ = std::fs::remove_file(
        std::env::temp_dir().join(format!("hitless-demo-{}.json", std::process::id())),
    );
    let lost_all: BTreeSet<u64> = report["lost_on_all_legs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_u64())
        .collect();
    let total = source.len().div_ceil(TS_PER_DATAGRAM) as u64;
    let expected = total - lost_all.len() as u64;
    // Let the last gap expire (merge window) and the output drain, then stop.
    for _ in 0..40 {
        match snapshot(&gateway) {
            Some(s) if s.output.packets >= expected => break,
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    let last = snapshot(&gateway);
    rt.block_on(gateway.shutdown());
    stop.store(true, Ordering::Relaxed);
    let captured = capture
        .join()
        .map_err(|_| anyhow::anyhow!("capture thread panicked"))?;
    if live {
        println!();
    }
    if let Some(s) = &last {
        println!("{}", status_line(s));
        for (i, leg) in report["legs"].as_array().into_iter().flatten().enumerate() {
            let dropped = leg["dropped"].as_array().map_or(0, |d| d.len());
            let src = &s.sources[i];
            println!(
                "  leg {}: sent {total}, lost on the way {dropped}, received {}, recovered for the other leg {}",
                src.name, src.packets, src.recovered
            );
        }
    }
    let verdict = verify(&source, &captured, &lost_all);
    match verdict {
        Ok(()) => {
            println!(
                "verdict: PASS: {} of {total} datagrams out, byte-identical to the source; the {} missing were lost on both legs",
                captured.len(),
                lost_all.len()
            );
            Ok(())
        }
        Err(e) => bail!("verdict: FAIL: {e}"),
    }
}

fn status_line(s: &ChannelSnapshot) -> String {
    let legs: Vec<String> = s
        .sources
        .iter()
        .map(|l| {
            format!(
                "{} {} rx {} rec {} Δ{:.0}ms",
                l.name, l.state, l.packets, l.recovered, l.path_differential_ms
            )
        })
        .collect();
    format!(
        "{} | out {} | unrecovered {} | dup {}   ",
        legs.join(" | "),
        s.output.packets,
        s.merge.unrecovered,
        s.merge.duplicates
    )
}

/// The capture must be the source's datagrams in order, minus `lost_all`, payload-identical.
fn verify(source: &[u8], captured: &[Vec<u8>], lost_all: &BTreeSet<u64>) -> Result<(), String> {
    let expected: Vec<&[u8]> = source
        .chunks(TS_PER_DATAGRAM)
        .enumerate()
        .filter(|(i, _)| !lost_all.contains(&(*i as u64)))
        .map(|(_, c)| c)
        .collect();
    if captured.len() != expected.len() {
        return Err(format!(
            "{} datagrams out, expected {}",
            captured.len(),
            expected.len()
        ));
    }
    for (i, (got, want)) in captured.iter().zip(&expected).enumerate() {
        if got.get(12..) != Some(*want) {
            return Err(format!("output datagram {i} differs from the source"));
        }
    }
    Ok(())
}
