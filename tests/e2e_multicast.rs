//! Multicast legs and outputs on loopback (joins on 127.0.0.1), and the `source=` sender
//! filter.

mod common;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use common::*;

fn join(group: &str, port: u16) -> UdpSocket {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    s.set_reuse_address(true).unwrap();
    s.set_recv_buffer_size(8 << 20).unwrap();
    let g: Ipv4Addr = group.parse().unwrap();
    s.bind(&SocketAddr::from((g, port)).into()).unwrap();
    s.join_multicast_v4(&g, &Ipv4Addr::LOCALHOST).unwrap();
    let s: UdpSocket = s.into();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

#[test]
fn multicast_legs_in_multicast_out() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("mc.toml");
    std::fs::write(
        &cfg,
        r#"
[node]
http_listen = "127.0.3.1:9000"

[[channel]]
name = "mc"
mode = "smpte-2022-7"

  [[channel.source]]
  name = "red"
  url = "rtp://239.255.31.1:5000?iface=127.0.0.1"
  role = "preferred"

  [[channel.source]]
  name = "blue"
  url = "rtp://239.255.31.2:5000?iface=127.0.0.1&source=127.0.0.1"
  role = "non-preferred"

  [[channel.output]]
  url = "rtp://239.255.31.3:6000?iface=127.0.0.1&ttl=1"
"#,
    )
    .unwrap();
    let cap = join("239.255.31.3", 6000);
    let gw = Gateway::start(
        &["run", "--config", cfg.to_str().unwrap()],
        "127.0.3.1:9000".parse().unwrap(),
    );
    let report = send(
        &[
            testdata("mpeg2_mp2.ts").to_str().unwrap(),
            "--to",
            "rtp://239.255.31.1:5000?iface=127.0.0.1&ttl=1&loss=3",
            "--to",
            "rtp://239.255.31.2:5000?iface=127.0.0.1&ttl=1&loss=3",
            "--speed",
            "8",
            "--seed",
            "5",
        ],
        &dir.path().join("r.json"),
    );
    let total = report["total_datagrams"].as_u64().unwrap() as usize;
    let lost_all = report["lost_on_all_legs"].as_array().unwrap().len();
    let got = capture(&cap, total - lost_all);
    let data = std::fs::read(testdata("mpeg2_mp2.ts")).unwrap();
    let lost: Vec<u64> = report["lost_on_all_legs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let expected: Vec<&[u8]> = data
        .chunks(7 * 188)
        .enumerate()
        .filter(|(i, _)| !lost.contains(&(*i as u64)))
        .map(|(_, c)| c)
        .collect();
    assert_eq!(got.len(), expected.len());
    for (g, e) in got.iter().zip(expected) {
        assert_eq!(&g[12..], e);
    }
    let ch = &gw.channels()[0];
    assert_eq!(
        ch["merge"]["unrecovered"].as_u64().unwrap(),
        lost_all as u64
    );
    gw.stop();
}

#[test]
fn datagrams_from_another_sender_are_dropped_and_counted() {
    let _serial = serial();
    let ip = "127.0.3.2";
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("f.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[node]
http_listen = "{ip}:9000"

[[channel]]
name = "f"
mode = "smpte-2022-7"

  [[channel.source]]
  name = "a"
  url = "rtp://{ip}:5000?source=127.0.0.1"
  role = "preferred"

  [[channel.output]]
  url = "rtp://{ip}:6000"
"#
        ),
    )
    .unwrap();
    let cap = capture_socket(format!("{ip}:6000").parse().unwrap());
    let gw = Gateway::start(
        &["run", "--config", cfg.to_str().unwrap()],
        format!("{ip}:9000").parse().unwrap(),
    );
    // 20 well-formed datagrams from 127.0.3.9: not the configured sender.
    let intruder = UdpSocket::bind("127.0.3.9:0").unwrap();
    let mut d = vec![0x80u8, 33, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7];
    d.extend(std::iter::repeat_n([0x47u8; 188], 7).flatten());
    for seq in 0..20u16 {
        d[2..4].copy_from_slice(&seq.to_be_bytes());
        intruder.send_to(&d, format!("{ip}:5000")).unwrap();
    }
    // Then the real stream from 127.0.0.1.
    let report = send(
        &[
            testdata("mpeg2_mp2.ts").to_str().unwrap(),
            "--to",
            &format!("rtp://{ip}:5000"),
            "--speed",
            "8",
        ],
        &dir.path().join("r.json"),
    );
    let total = report["total_datagrams"].as_u64().unwrap() as usize;
    let got = capture(&cap, total);
    assert!(
        got.iter().all(|g| g[8..12] != [0, 0, 0, 7]),
        "an intruder's datagram reached the output"
    );
    let ch = &gw.channels()[0];
    assert_eq!(
        ch["sources"][0]["dropped"]["wrong_sender"]
            .as_u64()
            .unwrap(),
        20
    );
    assert_eq!(ch["sources"][0]["packets"].as_u64().unwrap(), total as u64);
    gw.stop();
}
