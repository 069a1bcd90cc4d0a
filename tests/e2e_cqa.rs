//! End-to-end content analysis: the real binary on loopback, a switch channel whose preferred
//! source `a` plays `testdata/cqa_h264_aac.ts` (black 3–6 s, frozen 9–12 s, silent 13–16 s of
//! stream time) and whose non-preferred source `b` plays the MPEG-2/MP2 clip (video not
//! decodable by this build: its picture rules are unknown, never failing). For each
//! condition, a rule on it alone must fail the channel over to `b` while the condition lasts
//! and switch back to `a` after clear_time. Both play at double speed to keep the tests
//! short. Events are awaited on the gateway's log, never by sleeping.

mod common;

use std::net::SocketAddr;
use std::process::Child;

use common::*;

struct Senders(Vec<Child>);

impl Drop for Senders {
    fn drop(&mut self) {
        // Our own children, by handle.
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn start(ip: &str, rule: &str) -> (tempfile::TempDir, Gateway) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        r#"
[node]
name = "e2e-cqa"
http_listen = "{ip}:9000"

[[channel]]
name = "cqa"
mode = "switch"
offline_window_ms = 500
clear_time_ms = 1000

  [channel.content]
  video_interval_ms = 1000
  audio_interval_ms = 500

  [[channel.rule]]
{rule}

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
    );
    let p = dir.path().join("cqa.toml");
    std::fs::write(&p, cfg).unwrap();
    let http: SocketAddr = format!("{ip}:9000").parse().unwrap();
    let gw = Gateway::start(&["run", "--config", p.to_str().unwrap()], http);
    (dir, gw)
}

fn switched_to(line: &str, to: &str, reason: &str) -> bool {
    line.contains("switched")
        && line.contains(&format!("to=\"{to}\""))
        && line.contains(&format!("reason=\"{reason}\""))
}

/// Run the clips through a channel with one rule on `condition`; returns the gateway after
/// the switch back, for further checks.
fn failover_and_back(ip: &str, condition: &str, rule: &str) -> (tempfile::TempDir, Gateway) {
    let (dir, gw) = start(ip, rule);
    let senders = Senders(vec![
        spawn_send(&[
            testdata("mpeg2_mp2.ts").to_str().unwrap(),
            "--to",
            &format!("udp://{ip}:5002"),
            "--speed",
            "2",
            "--duration",
            "60",
        ]),
        spawn_send(&[
            testdata("cqa_h264_aac.ts").to_str().unwrap(),
            "--to",
            &format!("udp://{ip}:5000"),
            "--speed",
            "2",
            "--loop",
            "2",
        ]),
    ]);
    gw.wait_log("a on air at start", |l| {
        l.contains("switched") && l.contains("to=\"a\"")
    });
    gw.wait_log("the condition seen on a", |l| {
        l.contains("content condition")
            && l.contains("source=a")
            && l.contains(&format!("condition=\"{condition}\""))
            && l.contains("state=\"present\"")
    });
    gw.wait_log("failover to b", |l| switched_to(l, "b", condition));
    gw.wait_log("the condition gone on a", |l| {
        l.contains("content condition")
            && l.contains("source=a")
            && l.contains(&format!("condition=\"{condition}\""))
            && l.contains("state=\"absent\"")
    });
    gw.wait_log("switch back to a after clear time", |l| {
        switched_to(l, "a", "auto-switch-back")
    });
    // The clip goes on (its frozen stretch follows the black one closely, and black is frozen
    // too): later failovers may already be under way, so only what cannot race is checked.
    let ch = &gw.channels()[0];
    assert!(ch["failovers"][condition].as_u64().unwrap() >= 1, "{ch}");
    let content = &ch["sources"][0]["content"];
    assert_eq!(content["video"]["codec"], "h264", "{content}");
    assert_ne!(
        content["conditions"][condition]["state"], "unknown",
        "{content}"
    );
    // b: MPEG-2 video cannot be judged by the default build, MP2 audio can.
    let b = &ch["sources"][1];
    assert_eq!(b["content"]["video"]["codec"], "mpeg2-video", "{b}");
    let unknown = !cfg!(feature = "ffmpeg");
    assert_eq!(b["content"]["video"]["decodable"], !unknown, "{b}");
    if unknown {
        assert_eq!(
            b["content"]["conditions"]["blank-picture"]["state"], "unknown",
            "{b}"
        );
    }
    if unknown && condition != "silent-audio" {
        assert_eq!(b["rules"][0]["state"], "unknown", "{b}");
        assert_eq!(b["rules"][0]["failing"], false, "{b}");
    }
    assert_eq!(ch["content"]["dropped"], 0, "{ch}");
    let (code, metrics) = gw.get("/metrics");
    assert_eq!(code, 200);
    let state_line = |source: &str, cond: &str| {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("hitless_content_state{")
                    && l.contains(&format!("source=\"{source}\""))
                    && l.contains(&format!("condition=\"{cond}\""))
            })
            .map(|l| l.rsplit(' ').next().unwrap_or("").to_owned())
    };
    assert!(
        matches!(state_line("a", condition).as_deref(), Some("0" | "1")),
        "{metrics}"
    );
    if unknown {
        assert_eq!(
            state_line("b", "frozen-video").as_deref(),
            Some("-1"),
            "{metrics}"
        );
    }
    drop(senders);
    (dir, gw)
}

#[test]
fn blank_picture_fails_over_and_back() {
    let _serial = serial();
    let (_dir, gw) = failover_and_back(
        "127.0.5.1",
        "blank-picture",
        "  condition = \"blank-picture\"\n  sample_duration_s = 1\n  samples = 2\n  threshold = 1",
    );
    let a = &gw.channels()[0]["sources"][0]["content"]["video"];
    assert!(
        (0.0..=1.0).contains(&a["black_share"].as_f64().unwrap()),
        "{a}"
    );
    gw.stop();
}

#[test]
#[cfg_attr(
    feature = "ffmpeg",
    ignore = "with MPEG-2 decodable, b's SMPTE bars are frozen too: nowhere to fail over to"
)]
fn frozen_video_fails_over_and_back() {
    let _serial = serial();
    let (_dir, gw) = failover_and_back(
        "127.0.5.2",
        "frozen-video",
        "  condition = \"frozen-video\"\n  sample_duration_s = 1\n  samples = 2\n  threshold = 1",
    );
    let a = &gw.channels()[0]["sources"][0]["content"]["video"];
    assert!(a["difference_db"].as_f64().unwrap() <= 0.0, "{a}");
    assert!(a["pictures"].as_u64().unwrap() >= 6, "{a}");
    gw.stop();
}

#[test]
fn silent_audio_on_its_pid_fails_over_and_back() {
    let _serial = serial();
    let (_dir, gw) = failover_and_back(
        "127.0.5.3",
        "silent-audio",
        "  condition = \"silent-audio\"\n  pid = 257\n  sample_duration_s = 1\n  samples = 2\n  threshold = 1",
    );
    let a = &gw.channels()[0]["sources"][0]["content"]["audio"][0];
    assert_eq!(a["pid"], 257, "{a}");
    assert_eq!(a["peak_dbfs"].as_array().map(Vec::len), Some(2), "{a}");
    assert!(a["levels"].as_u64().unwrap() >= 10, "{a}");
    gw.stop();
}
