//! End-to-end content merge: plain-UDP legs (no RTP) merged by their TS payload.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::*;

const TS: usize = 188;

fn config(dir: &Path, ip: &str) -> std::path::PathBuf {
    let p = dir.join("cm.toml");
    std::fs::write(
        &p,
        format!(
            r#"
[node]
http_listen = "{ip}:9000"

[[channel]]
name = "cm"
mode = "content-merge"
merge_window_ms = 500
offline_window_ms = 300

  [[channel.source]]
  name = "a"
  url = "udp://{ip}:5000"
  role = "preferred"

  [[channel.source]]
  name = "b"
  url = "udp://{ip}:5002"
  role = "non-preferred"

  [[channel.output]]
  url = "udp://{ip}:6000"
"#
        ),
    )
    .unwrap();
    p
}

/// Stop the gateway (its capture is flushed) and copy the capture and the sender's report
/// out of the test's directory; say where they are and how to replay them.
fn keep_capture(gw: Gateway, dir: &Path) -> String {
    gw.stop();
    let keep = std::env::temp_dir().join(format!("hitless-e2e-content-{}", std::process::id()));
    let copied = std::fs::create_dir_all(&keep).and_then(|_| {
        std::fs::copy(dir.join("cm.cmcap"), keep.join("cm.cmcap"))?;
        std::fs::copy(dir.join("r.json"), keep.join("r.json"))
    });
    match copied {
        Ok(_) => format!(
            "merger input kept in {0}; replay: CAPTURE={0}/cm.cmcap REPORT={0}/r.json cargo test --release --lib replay_capture -- --ignored --nocapture",
            keep.display()
        ),
        Err(e) => format!("merger input not kept: {e}"),
    }
}

/// The issue's loopback test: `hitless send` over two plain-UDP legs with 2 % independent
/// loss each (seeded) and the second 30 ms late, merged by the gateway, captured and
/// compared byte for byte. At twice real time (a datagram every 2.6 ms): the merger takes
/// the sender's own scheduling jitter as evidence where content is silent, and a loaded
/// 2-core machine delays the sender by milliseconds (see src/merge/content.rs, Status, for
/// the pass rates measured).
#[test]
fn two_lossy_skewed_udp_legs_merge_to_the_original() {
    let _serial = serial();
    let ip = "127.0.4.1";
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), ip);
    let cap = capture_socket(format!("{ip}:6000").parse().unwrap());
    let http: SocketAddr = format!("{ip}:9000").parse().unwrap();
    // The merger's inputs are captured: a failing run leaves them for an offline replay.
    let gw = Gateway::start_with_env(
        &["run", "--config", cfg.to_str().unwrap()],
        http,
        &[("HITLESS_CONTENT_CAPTURE", dir.path().to_str().unwrap())],
    );
    let file = "h264_aac.ts";
    let report = send(
        &[
            testdata(file).to_str().unwrap(),
            "--to",
            &format!("udp://{ip}:5000?loss=2"),
            "--to",
            &format!("udp://{ip}:5002?loss=2&delay=30"),
            "--speed",
            "2",
            "--seed",
            "3",
        ],
        &dir.path().join("r.json"),
    );
    let lost_all: BTreeSet<u64> = report["lost_on_all_legs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let data = std::fs::read(testdata(file)).unwrap();
    // The original TS packets minus those of datagrams lost on both legs.
    let expected: Vec<&[u8]> = data
        .chunks(7 * TS)
        .enumerate()
        .filter(|(i, _)| !lost_all.contains(&(*i as u64)))
        .flat_map(|(_, d)| d.chunks(TS))
        .collect();
    let mut got: Vec<Vec<u8>> = Vec::new();
    cap.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 2048];
    while got.len() < expected.len() {
        let n = cap.recv(&mut buf).unwrap_or_else(|e| {
            panic!(
                "output stopped after {} of {} TS packets: {e}",
                got.len(),
                expected.len()
            )
        });
        got.extend(buf[..n].chunks(TS).map(|c| c.to_vec()));
    }
    if got.len() != expected.len() {
        let i = got
            .iter()
            .zip(&expected)
            .position(|(g, e)| g.as_slice() != *e)
            .unwrap_or(expected.len());
        let pid = |p: &[u8]| (u16::from(p[1] & 0x1f) << 8) | u16::from(p[2]);
        let show = |v: &[&[u8]]| {
            v.iter()
                .map(|p| format!("{:x}/{}", pid(p), p[3] & 0xf))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let g: Vec<&[u8]> = got.iter().map(|v| v.as_slice()).collect();
        let ch = gw.channels()[0].clone();
        panic!(
            "{} TS packets out, {} expected; first difference at {i}:\n got  {}\n want {}\nchannel: {ch}\n{}",
            got.len(),
            expected.len(),
            show(&g[i.saturating_sub(3)..(i + 6).min(g.len())]),
            show(&expected[i.saturating_sub(3)..(i + 6).min(expected.len())]),
            keep_capture(gw, dir.path())
        );
    }
    let first_bad = got
        .iter()
        .zip(&expected)
        .position(|(g, e)| g.as_slice() != *e);
    if first_bad.is_some() {
        let kept = keep_capture(gw, dir.path());
        panic!("merged output differs from the original at {first_bad:?}\n{kept}");
    }
    let ch = &gw.channels()[0];
    assert_eq!(ch["aligned"], true, "{ch}");
    assert!(ch["sources"][0]["recovered"].as_u64().unwrap() > 0, "{ch}");
    // The leading leg's own losses leave gaps no content fills when it delivers the packets
    // after them: some placements rest on time or the PCR.
    let placed = &ch["merge"]["placements"];
    assert!(
        placed["time"].as_u64().unwrap() + placed["pcr"].as_u64().unwrap() > 0,
        "{ch}"
    );
    let (_, metrics) = gw.get("/metrics");
    assert!(
        metrics.contains("hitless_merge_aligned{channel=\"cm\"} 1"),
        "{metrics}"
    );
    for by in ["time", "pcr", "ambiguous", "conflict"] {
        let line = format!(
            "hitless_merge_placements_total{{channel=\"cm\",by=\"{by}\"}} {}",
            placed[by]
        );
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }
    gw.stop();
}

#[test]
fn legs_that_are_different_streams_fall_back_to_switching() {
    let _serial = serial();
    let ip = "127.0.4.2";
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), ip);
    let http: SocketAddr = format!("{ip}:9000").parse().unwrap();
    let gw = Gateway::start(&["run", "--config", cfg.to_str().unwrap()], http);
    let mut a = spawn_send(&[
        testdata("h264_aac.ts").to_str().unwrap(),
        "--to",
        &format!("udp://{ip}:5000"),
        "--speed",
        "2",
    ]);
    let mut b = spawn_send(&[
        testdata("mpeg2_mp2.ts").to_str().unwrap(),
        "--to",
        &format!("udp://{ip}:5002"),
        "--speed",
        "2",
    ]);
    gw.wait_log("the divergence", |l| {
        l.contains("legs are not the same stream")
    });
    let ch = &gw.channels()[0];
    assert_eq!(ch["aligned"], false, "{ch}");
    assert!(ch["diverged"].as_u64().unwrap() >= 1);
    let (_, metrics) = gw.get("/metrics");
    assert!(
        metrics.contains("hitless_merge_aligned{channel=\"cm\"} 0"),
        "{metrics}"
    );
    let _ = (a.wait(), b.wait());
    gw.stop();
}

#[test]
fn packets_lost_on_every_leg_trip_the_unrecovered_rule() {
    let _serial = serial();
    let ip = "127.0.9.1";
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), ip);
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(
        r#"
  [[channel.rule]]
  condition = "unrecovered-packets"
  sample_duration_s = 0.5
  samples = 4
  threshold = 1
"#,
    );
    std::fs::write(&cfg, text).unwrap();
    let http: SocketAddr = format!("{ip}:9000").parse().unwrap();
    let gw = Gateway::start(&["run", "--config", cfg.to_str().unwrap()], http);
    // The same 20 ms of stream (1 s in) lost on both legs: gaps the merge cannot fill.
    let report_path = dir.path().join("r.json");
    let mut sender = spawn_send(&[
        testdata("h264_aac.ts").to_str().unwrap(),
        "--to",
        &format!("udp://{ip}:5000?outage=1000+20"),
        "--to",
        &format!("udp://{ip}:5002?outage=1000+20&delay=10"),
        "--speed",
        "2",
        "--report",
        report_path.to_str().unwrap(),
    ]);
    let line = gw.wait_log("the unrecovered-packets rule failing", |l| {
        l.contains("unrecovered-packets rule failing")
    });
    assert!(line.contains("cm"), "{line}");
    // It stays failing for 3 more 0.5 s windows at least: the snapshot sees it.
    let ch = &gw.channels()[0];
    assert_eq!(ch["aligned"], true, "{ch}");
    assert!(ch["merge"]["unrecovered"].as_u64().unwrap() > 0, "{ch}");
    for s in 0..2 {
        let src = &ch["sources"][s];
        assert_eq!(src["rules"][0]["condition"], "unrecovered-packets", "{ch}");
        assert_eq!(src["rules"][0]["failing"], true, "every leg sees it: {ch}");
        assert_eq!(src["state"], "receiving", "an alarm, not a switch: {ch}");
    }
    assert_eq!(ch["failovers"]["unrecovered-packets"], 0, "{ch}");
    let (_, metrics) = gw.get("/metrics");
    assert!(
        metrics.contains(
            "hitless_rule_failing{channel=\"cm\",source=\"a\",condition=\"unrecovered-packets\"} 1"
        ),
        "{metrics}"
    );
    assert!(sender.wait().unwrap().success());
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report_path).unwrap()).unwrap();
    assert!(
        !report["lost_on_all_legs"].as_array().unwrap().is_empty(),
        "{report}"
    );
    // The stream has ended: the windows in error age out.
    gw.wait_log("the rule healthy again", |l| {
        l.contains("unrecovered-packets rule healthy again")
    });
    gw.stop();
}
