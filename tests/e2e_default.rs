//! The embedded default configuration and the demo, which both use the default ports
//! (127.0.0.1:5000/5002 → 6000, HTTP 9000). One test, so they never overlap.

mod common;

use std::process::Command;

use common::*;

#[test]
fn default_config_serves_api_and_demo_passes() {
    let gw = Gateway::start(&["run"], "127.0.0.1:9000".parse().unwrap());
    let (code, body) = gw.get("/healthz");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"ok\""), "{body}");
    let ch = gw.channels();
    assert_eq!(ch[0]["name"], "default");
    assert_eq!(ch[0]["mode"], "smpte-2022-7");
    assert_eq!(ch[0]["sources"][0]["url"], "rtp://127.0.0.1:5000");
    assert_eq!(ch[0]["sources"][1]["role"], "non-preferred");
    assert_eq!(ch[0]["sources"][0]["state"], "waiting");
    let (code, metrics) = gw.get("/metrics");
    assert_eq!(code, 200);
    assert!(
        metrics.contains("hitless_output_packets_total{channel=\"default\"} 0"),
        "{metrics}"
    );
    let (code, _) = gw.get("/api/v1/channels/nope");
    assert_eq!(code, 404);
    gw.stop();

    let out = Command::new(bin())
        .args(["demo", "--speed", "4"])
        .output()
        .expect("run demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("verdict: PASS"), "{stdout}");
}
