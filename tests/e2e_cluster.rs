//! Several `hitless run` processes as one cluster on loopback (127.0.6.x), each with its own
//! configuration and state directory: kill -9 of the manager and of a client, the Hog 4
//! restart order, forged and replayed control messages, and the API bearer token.
//! Every wait is on the nodes' HTTP state or log lines, bounded by a failure guard.
#![allow(clippy::disallowed_methods)] // tests time the output gap with the real clock

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const KEY: &str = "e2e-cluster-shared-secret-0123456789";

fn ip(i: u8) -> String {
    format!("127.0.6.{i}")
}

fn http_addr(i: u8) -> SocketAddr {
    format!("{}:9000", ip(i)).parse().unwrap()
}

fn ctl(i: u8) -> String {
    format!("{}:7400", ip(i))
}

/// A 2022-7 channel fed by two multicast legs (every node can receive them at once), output
/// to a unicast capture address shared by every node that may run it.
fn channel(name: &str, group: u8, out_port: u16) -> String {
    format!(
        r#"
[[channel]]
name = "{name}"
mode = "smpte-2022-7"
merge_window_ms = 50
leg_timeout_ms = 50

  [[channel.source]]
  name = "a"
  url = "rtp://239.255.6.{group}:5000?iface=127.0.0.1"
  role = "preferred"

  [[channel.source]]
  name = "b"
  url = "rtp://239.255.6.{g2}:5000?iface=127.0.0.1"
  role = "non-preferred"

  [[channel.output]]
  url = "udp://127.0.6.200:{out_port}"
"#,
        g2 = group + 1
    )
}

fn placement(name: &str, home: &str, backup: &str, hot: bool) -> String {
    format!(
        "\n  [[cluster.channel]]\n  name = \"{name}\"\n  home = \"{home}\"\n  backup = \"{backup}\"\n  hot_standby = {hot}\n"
    )
}

/// Write node `id`'s configuration under `dir/id/` and return its path.
fn write_node(
    dir: &Path,
    id: &str,
    me: u8,
    peers: &[u8],
    score: u8,
    extra: &str,
    seed: &str,
) -> PathBuf {
    std::fs::write(dir.join("cluster.key"), KEY).unwrap();
    let peers: Vec<String> = peers.iter().map(|p| format!("\"{}\"", ctl(*p))).collect();
    let text = format!(
        r#"
[node]
name = "{id}"
http_listen = "{http}"

[cluster]
node_id = "{id}"
listen = "{listen}"
peers = [{peers}]
score = {score}
advert_interval_ms = 100
key_file = "../cluster.key"
{extra}
{seed}
"#,
        http = http_addr(me),
        listen = ctl(me),
        peers = peers.join(", "),
    );
    let d = dir.join(id);
    std::fs::create_dir_all(&d).unwrap();
    let p = d.join("node.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn start(cfg: &Path, me: u8) -> Gateway {
    Gateway::start(&["run", "--config", cfg.to_str().unwrap()], http_addr(me))
}

fn cluster(gw: &Gateway) -> Value {
    let (code, body) = gw.get("/api/v1/cluster");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Wait until the node's cluster status satisfies `pred`: checked after every log line the
/// node writes (state changes are logged) and at least every 20 ms; 30 s failure guard.
fn wait_for(gw: &Gateway, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = cluster(gw);
        if pred(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: never happened; last status {v:#}"
        );
        if let Ok(line) = gw.log.recv_timeout(Duration::from_millis(20)) {
            eprintln!("gateway: {line}");
        }
    }
}

fn runs(v: &Value, ch: &str, mode: &str) -> bool {
    v["running_here"][ch] == mode
}

/// Arrival times of datagrams on a capture socket, recorded by a thread until dropped.
struct Capture {
    times: Arc<Mutex<Vec<Instant>>>,
    stop: Arc<AtomicBool>,
}

impl Capture {
    fn new(port: u16) -> Capture {
        let s = capture_socket(format!("127.0.6.200:{port}").parse().unwrap());
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let times = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (t, st) = (times.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !st.load(Ordering::Relaxed) {
                if s.recv(&mut buf).is_ok() {
                    t.lock().unwrap().push(Instant::now());
                }
            }
        });
        Capture { times, stop }
    }

    fn count_after(&self, t: Instant) -> usize {
        self.times
            .lock()
            .unwrap()
            .iter()
            .filter(|&&x| x > t)
            .count()
    }

    /// First arrival after `t`.
    fn first_after(&self, t: Instant) -> Option<Instant> {
        self.times.lock().unwrap().iter().copied().find(|&x| x > t)
    }

    /// Largest gap between consecutive arrivals after `t`.
    fn max_gap_after(&self, t: Instant) -> Duration {
        let v = self.times.lock().unwrap();
        let after: Vec<Instant> = v.iter().copied().filter(|&x| x > t).collect();
        after
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or_default()
    }

    /// Wait (bounded) until `n` datagrams arrived after `t`.
    fn wait_count_after(&self, gw: &Gateway, t: Instant, n: usize, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.count_after(t) < n {
            assert!(Instant::now() < deadline, "{what}: output did not resume");
            if let Ok(line) = gw.log.recv_timeout(Duration::from_millis(20)) {
                eprintln!("gateway: {line}");
            }
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Sends on both legs of the given channel groups until killed.
struct Sender(std::process::Child);

impl Sender {
    fn start(groups: &[u8]) -> Sender {
        let file = testdata("mpeg2_mp2.ts");
        let mut args = vec![
            file.to_str().unwrap().to_owned(),
            "--duration".into(),
            "120".into(),
        ];
        for g in groups {
            for leg in [*g, g + 1] {
                args.push("--to".into());
                args.push(format!("rtp://239.255.6.{leg}:5000?iface=127.0.0.1&ttl=1"));
            }
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Sender(spawn_send(&args))
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn kill_manager_then_client_backup_takes_over() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    // gw-a: manager (score 200), runs "sports" (backup gw-c, cold).
    // gw-b: client, runs "news" (backup gw-c, hot standby).
    // gw-c: backup (score 150): the next manager.
    let seed = [
        placement("news", "gw-b", "gw-c", true),
        placement("sports", "gw-a", "gw-c", false),
        channel("news", 1, 6001),
        channel("sports", 3, 6002),
    ]
    .concat();
    let a = write_node(dir.path(), "gw-a", 1, &[2, 3], 200, "", &seed);
    let b = write_node(dir.path(), "gw-b", 2, &[1, 3], 100, "", &seed);
    let c = write_node(dir.path(), "gw-c", 3, &[1, 2], 150, "", &seed);
    let news = Capture::new(6001);
    let sports = Capture::new(6002);
    let _send = Sender::start(&[1, 3]);
    let mut ga = start(&a, 1);
    let gb = start(&b, 2);
    let gc = start(&c, 3);

    let va = wait_for(&ga, "gw-a manager running sports", |v| {
        v["role"] == "manager" && runs(v, "sports", "active")
    });
    let epoch_a = va["manager_epoch"].as_u64().unwrap();
    wait_for(&gb, "gw-b runs news", |v| runs(v, "news", "active"));
    wait_for(&gc, "gw-c hot standby for news", |v| {
        runs(v, "news", "standby") && v["manager"] == "gw-a"
    });
    let t = Instant::now();
    news.wait_count_after(&gb, t, 50, "news from gw-b");
    sports.wait_count_after(&ga, t, 50, "sports from gw-a");

    // kill -9 the manager: gw-c becomes manager with a higher epoch, takes "sports" over
    // (cold), and gw-b's "news" output keeps running.
    ga.child.kill().unwrap();
    let killed = Instant::now();
    let vc = wait_for(&gc, "gw-c manager", |v| v["role"] == "manager");
    let new_manager = killed.elapsed();
    assert!(vc["manager_epoch"].as_u64().unwrap() > epoch_a, "{vc:#}");
    wait_for(&gc, "gw-c runs sports", |v| runs(v, "sports", "active"));
    sports.wait_count_after(&gc, killed, 50, "sports from gw-c");
    let sports_gap = sports.first_after(killed).unwrap() - killed;
    let vb = wait_for(&gb, "gw-b follows gw-c", |v| v["manager"] == "gw-c");
    assert!(runs(&vb, "news", "active"), "{vb:#}");
    news.wait_count_after(&gb, killed, 200, "news keeps running on gw-b");
    let news_gap = news.max_gap_after(killed);
    eprintln!(
        "manager kill: new manager after {new_manager:?}, sports (cold) resumed after {sports_gap:?}, news max gap {news_gap:?}"
    );
    assert!(
        news_gap < Duration::from_millis(500),
        "the client's output must not stop when the manager dies: gap {news_gap:?}"
    );

    // kill -9 the client: its channel resumes on the backup, which only unmutes.
    gb.child_kill();
    let killed = Instant::now();
    wait_for(&gc, "gw-c runs news", |v| runs(v, "news", "active"));
    news.wait_count_after(&gc, killed, 50, "news from gw-c");
    let gap = news.first_after(killed).unwrap() - killed;
    eprintln!("client kill: news (hot standby) resumed after {gap:?}");
    let v = cluster(&gc);
    assert_eq!(v["takeovers"]["manager"], 1, "{v:#}");
    assert_eq!(v["takeovers"]["client"], 2, "{v:#}");
    let (_, metrics) = gc.get("/metrics");
    assert!(
        metrics.contains(r#"hitless_cluster_role{node="gw-c",role="manager"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"hitless_cluster_peer_up{peer="gw-b"} 0"#));
    assert!(metrics.contains(r#"hitless_cluster_takeovers_total{kind="client"} 2"#));
    gc.stop();
}

trait KillExt {
    fn child_kill(self);
}

impl KillExt for Gateway {
    /// kill -9, then reap.
    fn child_kill(mut self) {
        self.child.kill().unwrap();
        let _ = self.child.wait();
    }
}

fn put_channel(gw: &Gateway, name: &str, body: &str, home: &str, force: bool) -> (u16, String) {
    let req = serde_json::json!({"toml": body, "home": home, "force": force});
    request(
        gw.http,
        "PUT",
        &format!("/api/v1/cluster/channels/{name}"),
        &req.to_string(),
        None,
    )
}

/// One HTTP request with an optional bearer token.
fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    token: Option<&str>,
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let code = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (code, body)
}

/// Hog 4: servers stop one after the other; the one with the older copy starts first. The
/// newest configuration must still end up everywhere.
#[test]
fn hog4_restart_order_newest_configuration_wins() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let seed = [
        placement("news", "gw-b", "gw-a", false),
        channel("news", 11, 6011),
    ]
    .concat();
    // gw-b has the higher score but will hold the older copy.
    let a = write_node(dir.path(), "gw-a", 11, &[12], 100, "", &seed);
    let b = write_node(dir.path(), "gw-b", 12, &[11], 200, "", &seed);
    let ga = start(&a, 11);
    let gb = start(&b, 12);
    wait_for(&gb, "gw-b manager", |v| v["role"] == "manager");
    wait_for(&ga, "gw-a follows", |v| v["manager"] == "gw-b");

    // gw-b logs off; gw-a becomes manager and (forced: its peer is away) changes the show.
    gb.stop();
    wait_for(&ga, "gw-a manager", |v| v["role"] == "manager");
    let extra = channel("extra", 13, 6013);
    let (code, body) = put_channel(&ga, "extra", &extra, "gw-a", false);
    assert_eq!(code, 409, "refused while the peer is unreachable: {body}");
    assert!(body.contains("unless forced"), "{body}");
    let (code, body) = put_channel(&ga, "extra", &extra, "gw-a", true);
    assert_eq!(code, 200, "{body}");
    let va = wait_for(&ga, "unreplicated alarm", |v| v["unreplicated"] == true);
    let newest = va["config_version"].clone();
    assert_ne!(newest, serde_json::json!({"epoch": 0, "version": 0}));
    ga.stop();

    // All off. The server with the older copy starts first: it must wait, not lead.
    let gb = start(&b, 12);
    let vb = wait_for(&gb, "gw-b waits for its peer", |v| v["role"] == "waiting");
    assert!(vb["manager"].is_null(), "{vb:#}");
    assert_ne!(vb["config_version"], newest);
    assert!(vb["alarms"].to_string().contains("waiting for peers"));

    // The newer copy returns: it wins, whatever the scores.
    let ga = start(&a, 11);
    let vb = wait_for(&gb, "gw-b has the newest configuration", |v| {
        v["config_version"] == newest
    });
    assert!(vb["channels"].to_string().contains("\"extra\""), "{vb:#}");
    let va = wait_for(&ga, "one manager, same copy everywhere", |v| {
        v["manager"].is_string() && v["config_version"] == newest
    });
    assert_eq!(va["config_digest"], vb["config_digest"]);
    assert_eq!(va["unreplicated"], false);
    // Persisted on gw-b's disk.
    let state =
        std::fs::read_to_string(dir.path().join("gw-b/state-gw-b/cluster-state.json")).unwrap();
    assert!(state.contains("\"extra\""));
    ga.stop();
    gb.stop();
}

#[test]
fn forged_and_replayed_control_messages_are_rejected() {
    use hitless::control::machine::{Advert, Message, Roles, Term};
    use hitless::control::wire::Encoder;

    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let seed = [
        placement("news", "gw-a", "gw-b", false),
        channel("news", 21, 6021),
    ]
    .concat();
    std::fs::create_dir_all(dir.path().join("gw-b")).unwrap();
    std::fs::write(dir.path().join("gw-b/api.token"), "s3cret-token\n").unwrap();
    // gw-a also sends to a spy (this test) at 127.0.6.29:7400, which captures a genuine
    // datagram to replay.
    let spy = UdpSocket::bind(ctl(29)).unwrap();
    spy.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let a = write_node(dir.path(), "gw-a", 21, &[22, 29], 100, "", &seed);
    let b = write_node(dir.path(), "gw-b", 22, &[21], 200, "", &seed);
    let text = std::fs::read_to_string(&b)
        .unwrap()
        .replace("[cluster]", "api_token_file = \"api.token\"\n\n[cluster]");
    std::fs::write(&b, text).unwrap();
    let ga = start(&a, 21);
    let gb = start(&b, 22);
    let before = wait_for(&gb, "gw-b manager", |v| v["role"] == "manager");
    let epoch = before["epoch"].as_u64().unwrap();

    let target: SocketAddr = ctl(22).parse().unwrap();
    let mut buf = [0u8; 65536];
    let (n, _) = spy.recv_from(&mut buf).unwrap();
    let genuine = buf[..n].to_vec();
    // Replayed twice (the first copy may even beat the original; the second cannot).
    spy.send_to(&genuine, target).unwrap();
    spy.send_to(&genuine, target).unwrap();
    // Altered in one byte.
    let mut altered = genuine.clone();
    altered[20] ^= 0x40;
    spy.send_to(&altered, target).unwrap();
    // Forged with a wrong key: a manager advert with a huge epoch.
    let mut forger = Encoder::new(b"not-the-cluster-key!!", "gw-a").unwrap();
    let forged = Message::Advert(Advert {
        node: "gw-a".into(),
        score: 255,
        roles: Roles::ALL,
        seen: Term {
            n: 1_000_000,
            node: "gw-a".into(),
        },
        manager: Some(Term {
            n: 1_000_000,
            node: "gw-a".into(),
        }),
        version: Default::default(),
        digest: Default::default(),
        placement: None,
        failed: Default::default(),
    });
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    spy.send_to(&forger.encode(now_us, &forged).unwrap(), target)
        .unwrap();
    // Garbage: long enough to carry a MAC (fails it), and too short to be a message.
    spy.send_to(
        b"HLC1 this is not a control message at all, no.......",
        target,
    )
    .unwrap();
    spy.send_to(b"HLC1short", target).unwrap();

    let v = wait_for(&gb, "rejections counted", |v| {
        let r = &v["rejected_messages"];
        r["replayed"].as_u64() >= Some(1)
            && r["unauthenticated"].as_u64() >= Some(3)
            && r["malformed"].as_u64() >= Some(1)
    });
    assert_eq!(v["role"], "manager", "never acted on: {v:#}");
    assert_eq!(v["epoch"].as_u64(), Some(epoch), "forged epoch ignored");
    let (_, metrics) = gb.get("/metrics");
    assert!(
        metrics.contains(r#"hitless_cluster_rejected_messages_total{reason="unauthenticated"}"#),
        "{metrics}"
    );

    // Mutating API calls need the bearer token on gw-b; reads do not.
    let score = r#"{"score": 150}"#;
    let (code, _) = request(gb.http, "POST", "/api/v1/cluster/score", score, None);
    assert_eq!(code, 401);
    let (code, _) = request(
        gb.http,
        "POST",
        "/api/v1/cluster/score",
        score,
        Some("wrong"),
    );
    assert_eq!(code, 401);
    let (code, body) = request(
        gb.http,
        "POST",
        "/api/v1/cluster/score",
        score,
        Some("s3cret-token"),
    );
    assert_eq!(code, 200, "{body}");
    wait_for(&gb, "the new score", |v| v["score"] == 150);
    ga.stop();
    gb.stop();
}

/// Operator actions through the API: a configuration change replicates and starts on its
/// home, trigger-backup / take-back move a client's channels, a score change rigs an
/// election, and changes on a non-manager are refused with the manager's name.
#[test]
fn api_changes_replicate_and_operator_actions_move_channels() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let seed = [
        placement("news", "gw-b", "gw-a", false),
        channel("news", 31, 6031),
    ]
    .concat();
    let a = write_node(dir.path(), "gw-a", 31, &[32], 200, "", &seed);
    let b = write_node(dir.path(), "gw-b", 32, &[31], 100, "", &seed);
    let ga = start(&a, 31);
    let gb = start(&b, 32);
    wait_for(&ga, "gw-a manager", |v| v["role"] == "manager");
    wait_for(&gb, "gw-b runs news", |v| runs(v, "news", "active"));

    let extra = channel("extra", 33, 6033);
    let (code, body) = put_channel(&gb, "extra", &extra, "gw-a", false);
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("manager: gw-a"), "{body}");
    let (code, body) = put_channel(&ga, "extra", &extra.replace("6033", "6031"), "gw-a", false);
    assert_eq!(code, 400, "an output clash with news is refused: {body}");
    let (code, body) = put_channel(&ga, "extra", &extra, "gw-a", false);
    assert_eq!(code, 200, "{body}");
    let va = wait_for(&ga, "gw-a runs extra", |v| runs(v, "extra", "active"));
    wait_for(&gb, "gw-b has the change", |v| {
        v["config_version"] == va["config_version"]
    });

    let node_b = r#"{"node": "gw-b"}"#;
    let (code, body) = request(
        ga.http,
        "POST",
        "/api/v1/cluster/trigger-backup",
        node_b,
        None,
    );
    assert_eq!(code, 200, "{body}");
    wait_for(&ga, "news on its backup", |v| runs(v, "news", "active"));
    wait_for(&gb, "news left gw-b", |v| {
        v["running_here"].get("news").is_none()
    });
    let (code, body) = request(ga.http, "POST", "/api/v1/cluster/take-back", node_b, None);
    assert_eq!(code, 200, "{body}");
    wait_for(&gb, "news back home", |v| runs(v, "news", "active"));

    // Rig an election: the manager's score drops to 0.
    let (code, body) = request(
        ga.http,
        "POST",
        "/api/v1/cluster/score",
        r#"{"score": 0}"#,
        None,
    );
    assert_eq!(code, 200, "{body}");
    let vb = wait_for(&gb, "gw-b manager", |v| v["role"] == "manager");
    assert!(vb["manager_epoch"].as_u64() > va["manager_epoch"].as_u64());
    let (code, body) = request(
        ga.http,
        "DELETE",
        "/api/v1/cluster/channels/extra",
        "",
        None,
    );
    assert_eq!(code, 409, "gw-a is no longer manager: {body}");
    let (code, body) = request(
        gb.http,
        "DELETE",
        "/api/v1/cluster/channels/extra",
        "",
        None,
    );
    assert_eq!(code, 200, "{body}");
    wait_for(&ga, "extra stopped on gw-a", |v| {
        v["running_here"].get("extra").is_none() && v["channels"].as_array().unwrap().len() == 1
    });
    ga.stop();
    gb.stop();
}
