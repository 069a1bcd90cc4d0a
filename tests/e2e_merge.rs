//! End-to-end: the real binary on loopback, fed by `hitless send` with seeded impairments.
//! Each test uses its own 127.0.x.y address so tests can run in parallel.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::Command;

use common::*;

const TS: usize = 188;
const PER_DATAGRAM: usize = 7;

fn write_config(dir: &std::path::Path, ip: &str, window_ms: u32) -> std::path::PathBuf {
    let cfg = format!(
        r#"
[node]
name = "e2e"
http_listen = "{ip}:9000"

[[channel]]
name = "news"
mode = "smpte-2022-7"
merge_window_ms = {window_ms}
leg_timeout_ms = 100

  [[channel.source]]
  name = "a"
  url = "rtp://{ip}:5000"
  role = "preferred"

  [[channel.source]]
  name = "b"
  url = "rtp://{ip}:5002"
  role = "non-preferred"

  [[channel.output]]
  url = "rtp://{ip}:6000"
"#
    );
    let p = dir.join("gw.toml");
    std::fs::write(&p, cfg).unwrap();
    p
}

/// The datagram payloads `hitless send` makes from a file: 7 TS packets each.
fn file_payloads(name: &str) -> Vec<Vec<u8>> {
    let data = std::fs::read(testdata(name)).expect("testdata file");
    assert_eq!(data.len() % TS, 0);
    data.chunks(TS * PER_DATAGRAM).map(|c| c.to_vec()).collect()
}

fn indices(v: &serde_json::Value) -> BTreeSet<u64> {
    v.as_array()
        .expect("index list")
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

/// Check the capture against the file: in order, no duplicates, exactly the datagrams
/// that some leg delivered, each byte-identical (RTP header and payload).
fn assert_capture_matches(
    captured: &[Vec<u8>],
    payloads: &[Vec<u8>],
    report: &serde_json::Value,
    lost_all: &BTreeSet<u64>,
) {
    let first_seq = report["first_seq"].as_u64().unwrap() as u16;
    let ssrc = report["ssrc"].as_u64().unwrap() as u32;
    let expected: Vec<u64> = (0..payloads.len() as u64)
        .filter(|i| !lost_all.contains(i))
        .collect();
    assert_eq!(captured.len(), expected.len());
    for (got, &i) in captured.iter().zip(&expected) {
        let seq = u16::from_be_bytes([got[2], got[3]]);
        assert_eq!(
            seq,
            first_seq.wrapping_add(i as u16),
            "datagram {i} out of order or missing"
        );
        assert_eq!(u32::from_be_bytes([got[8], got[9], got[10], got[11]]), ssrc);
        assert_eq!(got[0], 0x80);
        assert_eq!(got[1] & 0x7f, 33);
        assert_eq!(
            &got[12..],
            &payloads[i as usize][..],
            "payload of datagram {i} differs"
        );
    }
}

#[test]
fn merge_recovers_independent_loss_skew_and_outage() {
    let _serial = serial();
    let ip = "127.0.1.1";
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), ip, 1000);
    let cap = capture_socket(format!("{ip}:6000").parse().unwrap());
    let http: SocketAddr = format!("{ip}:9000").parse().unwrap();
    let gw = Gateway::start(&["run", "--config", cfg.to_str().unwrap()], http);

    let file = "h264_aac.ts";
    let payloads = file_payloads(file);
    let report = send(
        &[
            testdata(file).to_str().unwrap(),
            "--to",
            &format!("rtp://{ip}:5000?loss=2"),
            "--to",
            &format!("rtp://{ip}:5002?loss=2&delay=30&outage=1500+700"),
            "--speed",
            "4",
            "--seed",
            "11",
        ],
        &dir.path().join("report.json"),
    );
    let legs = report["legs"].as_array().unwrap();
    let lost_all = indices(&report["lost_on_all_legs"]);
    let (drop_a, drop_b) = (indices(&legs[0]["dropped"]), indices(&legs[1]["dropped"]));
    assert!(
        drop_a.len() > 10 && drop_b.len() > 10,
        "the impairments did not bite"
    );
    assert_eq!(lost_all, drop_a.intersection(&drop_b).copied().collect());
    assert!(
        !lost_all.is_empty(),
        "the seed should lose some datagrams on both legs"
    );

    let expected = payloads.len() - lost_all.len();
    let captured = capture(&cap, expected);
    assert_capture_matches(&captured, &payloads, &report, &lost_all);

    let ch = &gw.channels()[0];
    assert_eq!(
        ch["merge"]["unrecovered"].as_u64().unwrap(),
        lost_all.len() as u64
    );
    assert_eq!(ch["output"]["packets"].as_u64().unwrap(), expected as u64);
    let n = payloads.len() as u64;
    assert_eq!(
        ch["sources"][0]["packets"].as_u64().unwrap(),
        n - drop_a.len() as u64
    );
    assert_eq!(
        ch["sources"][1]["packets"].as_u64().unwrap(),
        n - drop_b.len() as u64
    );
    // Leg b trails by 30 ms; leg a delivered what b lost (and vice versa).
    let diff_b = ch["sources"][1]["path_differential_ms"].as_f64().unwrap();
    assert!(
        (20.0..45.0).contains(&diff_b),
        "path differential of b: {diff_b} ms"
    );
    // a recovered every packet b lost that a delivered, up to b's last packet (after it b
    // never skips anything, so its losses there are not attributed).
    let last_b = (0..n).rev().find(|i| !drop_b.contains(i)).unwrap();
    let only_a = drop_b
        .iter()
        .filter(|i| !lost_all.contains(i) && **i < last_b)
        .count();
    let last_a = (0..n).rev().find(|i| !drop_a.contains(i)).unwrap();
    let only_b = drop_a
        .iter()
        .filter(|i| !lost_all.contains(i) && **i < last_a)
        .count();
    assert_eq!(
        ch["sources"][0]["recovered"].as_u64().unwrap(),
        only_a as u64
    );
    assert_eq!(
        ch["sources"][1]["recovered"].as_u64().unwrap(),
        only_b as u64
    );

    let (code, metrics) = gw.get("/metrics");
    assert_eq!(code, 200);
    let line = format!(
        "hitless_merge_unrecovered_packets_total{{channel=\"news\"}} {}",
        lost_all.len()
    );
    assert!(metrics.contains(&line), "missing {line:?} in\n{metrics}");
    gw.stop();
}

/// Malformed datagrams of every kind, at both source ports, before and during a clean
/// stream: the output is exactly the input and every drop is counted by its reason.
#[test]
fn malformed_burst_changes_nothing_in_the_output() {
    let _serial = serial();
    let ip = "127.0.1.2";
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), ip, 200);
    let cap = capture_socket(format!("{ip}:6000").parse().unwrap());
    let http: SocketAddr = format!("{ip}:9000").parse().unwrap();
    let gw = Gateway::start(&["run", "--config", cfg.to_str().unwrap()], http);

    let mut good = vec![0x80u8, 33, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1];
    good.extend(std::iter::repeat_n([0x47u8; TS], 7).flatten());
    let mut bad_version = good.clone();
    bad_version[0] = 0x40;
    let mut csrc_overrun = good[..40].to_vec();
    csrc_overrun[0] = 0x8f;
    let mut ext_overrun = good.clone();
    ext_overrun[0] = 0x90;
    ext_overrun[14] = 0xff;
    ext_overrun[15] = 0xff;
    let mut bad_padding = good.clone();
    bad_padding[0] = 0xa0;
    *bad_padding.last_mut().unwrap() = 0;
    let not_whole_ts = good[..12 + 1000].to_vec();
    let mut bad_sync = good.clone();
    bad_sync[12 + 3 * TS] = 0x00;
    let cases: [(&str, Vec<u8>); 7] = [
        ("rtp_truncated", vec![0x80, 33, 0]),
        ("rtp_bad_version", bad_version),
        ("rtp_headers_truncated", csrc_overrun),
        ("rtp_headers_truncated", ext_overrun),
        ("rtp_bad_padding", bad_padding),
        ("ts_bad_length", not_whole_ts),
        ("ts_bad_sync", bad_sync),
    ];
    let tx = std::net::UdpSocket::bind(format!("{ip}:0")).unwrap();
    let burst = |rounds: usize| {
        for _ in 0..rounds {
            for (_, d) in &cases {
                for port in [5000, 5002] {
                    tx.send_to(d, format!("{ip}:{port}")).unwrap();
                }
            }
        }
    };
    burst(50);
    let file = "mpeg2_mp2.ts";
    let payloads = file_payloads(file);
    let dir2 = dir.path().to_owned();
    let target = ip.to_string();
    let sender = std::thread::spawn(move || {
        send(
            &[
                testdata(file).to_str().unwrap(),
                "--to",
                &format!("rtp://{target}:5000"),
                "--to",
                &format!("rtp://{target}:5002"),
                "--speed",
                "8",
            ],
            &dir2.join("report.json"),
        )
    });
    burst(50);
    let report = sender.join().unwrap();
    let captured = capture(&cap, payloads.len());
    assert_capture_matches(&captured, &payloads, &report, &BTreeSet::new());

    let ch = &gw.channels()[0];
    assert_eq!(ch["merge"]["unrecovered"].as_u64().unwrap(), 0);
    for src in ch["sources"].as_array().unwrap() {
        let dropped = &src["dropped"];
        for reason in [
            "rtp_truncated",
            "rtp_bad_version",
            "rtp_bad_padding",
            "ts_bad_length",
            "ts_bad_sync",
        ] {
            assert_eq!(
                dropped[reason].as_u64().unwrap(),
                100,
                "{reason} on {}",
                src["name"]
            );
        }
        assert_eq!(dropped["rtp_headers_truncated"].as_u64().unwrap(), 200);
        assert_eq!(src["packets"].as_u64().unwrap(), payloads.len() as u64);
    }
    gw.stop();
}

#[test]
fn check_config_accepts_valid_and_names_line_of_invalid() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let good = write_config(dir.path(), "127.0.1.3", 1000);
    let out = Command::new(bin())
        .args(["check-config", good.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let bad = dir.path().join("bad.toml");
    let text = std::fs::read_to_string(&good)
        .unwrap()
        .replace("merge_window_ms = 1000", "merge_window_ms = 0");
    std::fs::write(&bad, text).unwrap();
    let out = Command::new(bin())
        .args(["check-config", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml:9:"),
        "error does not name file and line: {err}"
    );
    assert!(
        err.contains("merge_window_ms"),
        "error does not name the key: {err}"
    );
}
