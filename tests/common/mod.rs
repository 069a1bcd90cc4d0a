//! Helpers shared by the integration tests: start the real `hitless` binary, wait for its
//! "ready" line (an event, not a sleep), talk HTTP to it, and stop it with SIGTERM.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_hitless")
}

pub fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(name)
}

/// A running gateway; killed on drop if the test did not stop it.
pub struct Gateway {
    pub child: Child,
    pub http: SocketAddr,
    pub log: mpsc::Receiver<String>,
    /// Lines logged before "hitless ready": channels start before the HTTP listener, so an
    /// event a test waits for (a slate going on air, say) may already be here.
    early: std::cell::RefCell<std::collections::VecDeque<String>>,
}

impl Gateway {
    /// Start `hitless run` with `args` and wait until it logs "hitless ready".
    pub fn start(args: &[&str], http: SocketAddr) -> Gateway {
        Gateway::start_with_env(args, http, &[])
    }

    /// [`Gateway::start`] with extra environment variables.
    pub fn start_with_env(args: &[&str], http: SocketAddr, env: &[(&str, &str)]) -> Gateway {
        let mut child = Command::new(bin())
            .args(args)
            .envs(env.iter().copied())
            .env("HITLESS_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn hitless");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // The bound is a failure guard, not a wait: the line normally comes in milliseconds.
        let mut early = std::collections::VecDeque::new();
        loop {
            match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(line) if line.contains("hitless ready") => break,
                Ok(line) => early.push_back(line),
                Err(e) => panic!("gateway did not become ready: {e}"),
            }
        }
        Gateway {
            child,
            http,
            log: rx,
            early: early.into(),
        }
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(self.http, path)
    }

    pub fn channels(&self) -> serde_json::Value {
        let (code, body) = self.get("/api/v1/channels");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).expect("channels JSON")
    }

    /// SIGTERM and wait: the gateway must exit cleanly (status 0).
    pub fn stop(mut self) {
        let pid = self.child.id() as i32;
        // SAFETY-free: sending a signal to our own child by PID.
        let rc = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill");
        assert!(rc.success());
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "gateway exited with {status}");
        for line in self.log.try_iter() {
            eprintln!("gateway: {line}");
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http(addr, "GET", path, "")
}

pub fn http_post(addr: SocketAddr, path: &str, body: &str) -> (u16, String) {
    http(addr, "POST", path, body)
}

/// One HTTP/1.1 request with `Connection: close`; returns the status and the (de-chunked) body.
fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect http");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("read http");
    let code = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    let body = if resp
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(&body)
    } else {
        body
    };
    (code, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n..];
        s = s.strip_prefix("\r\n").unwrap_or(s);
    }
    out
}

/// A UDP capture socket with a large receive buffer, bound before the sender starts.
pub fn capture_socket(addr: SocketAddr) -> UdpSocket {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    s.set_recv_buffer_size(16 << 20).unwrap();
    s.bind(&addr.into()).expect("bind capture");
    let s: UdpSocket = s.into();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Receive exactly `n` datagrams (fails the test if the stream stops short).
pub fn capture(s: &UdpSocket, n: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::with_capacity(n);
    let mut buf = [0u8; 2048];
    while out.len() < n {
        match s.recv(&mut buf) {
            Ok(len) => out.push(buf[..len].to_vec()),
            Err(e) => panic!("capture stopped after {} of {n} datagrams: {e}", out.len()),
        }
    }
    out
}

/// Run `hitless send` to completion and return its JSON report.
pub fn send(args: &[&str], report: &Path) -> serde_json::Value {
    let out = Command::new(bin())
        .arg("send")
        .args(args)
        .arg("--report")
        .arg(report)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("run hitless send");
    assert!(
        out.status.success(),
        "send failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&std::fs::read(report).expect("read report")).expect("report JSON")
}

impl Gateway {
    /// Wait for a log line that satisfies `pred` (an event, bounded by a failure guard);
    /// returns it. Lines before it are echoed for the test log.
    pub fn wait_log(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        loop {
            let next = match self.early.borrow_mut().pop_front() {
                Some(line) => Ok(line),
                None => self.log.recv_timeout(Duration::from_secs(30)),
            };
            match next {
                Ok(line) if pred(&line) => {
                    eprintln!("gateway: {line}");
                    return line;
                }
                Ok(line) => eprintln!("gateway: {line}"),
                Err(e) => panic!("gateway never logged {what}: {e}"),
            }
        }
    }

    pub fn post(&self, path: &str, body: &str) -> (u16, String) {
        http_post(self.http, path, body)
    }
}

/// Start `hitless send` in the background.
pub fn spawn_send(args: &[&str]) -> Child {
    Command::new(bin())
        .arg("send")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn hitless send")
}

/// Capture datagrams until `stop` says so (checked after each datagram) or the stream has
/// been silent for `idle` (the end-of-stream guard).
pub fn capture_until(s: &UdpSocket, idle: Duration, stop: impl Fn() -> bool) -> Vec<Vec<u8>> {
    s.set_read_timeout(Some(idle)).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 2048];
    while let Ok(len) = s.recv(&mut buf) {
        out.push(buf[..len].to_vec());
        if stop() {
            break;
        }
    }
    out
}

/// Tests that run a gateway and real-time senders take this lock, so that within one test
/// binary they run one at a time: on a 2-core machine, timing assertions (a failover gap,
/// a leg timeout) must not compete with another test's senders for the CPU.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}
