//! Parsing cost per datagram: RTP header validation, TS payload validation, TS packet views.
use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hitless::rtp::{FIXED_HEADER_LEN, PT_MP2T, RtpPacket, write_header};
use hitless::ts::{self, TsPacket};

/// A 1328-byte RTP datagram carrying 7 TS packets; every 4th has a PCR.
fn datagram() -> Bytes {
    let mut h = [0u8; FIXED_HEADER_LEN];
    write_header(&mut h, PT_MP2T, 1, 90_000, 0x2022_0007);
    let mut v = h.to_vec();
    for k in 0..7u8 {
        let mut p = [0xffu8; 188];
        p[0] = 0x47;
        p[1] = 0x01;
        p[2] = 0x00;
        if k % 4 == 0 {
            p[3] = 0x30 | (k & 0x0f); // adaptation + payload
            p[4] = 7;
            p[5] = 0x10; // PCR flag
            p[6..12].copy_from_slice(&[0, 0, 1, 0, 0x7e, 0]);
        } else {
            p[3] = 0x10 | (k & 0x0f);
        }
        v.extend_from_slice(&p);
    }
    Bytes::from(v)
}

fn bench(c: &mut Criterion) {
    let d = datagram();
    assert_eq!(d.len(), 1328);
    let pkt = RtpPacket::try_new(d.clone()).expect("valid RTP");
    let payload = pkt.payload_slice();
    assert_eq!(ts::validate_payload(payload), Ok(7));

    let mut g = c.benchmark_group("parse");
    g.measurement_time(Duration::from_secs(3)).sample_size(20);
    g.throughput(Throughput::Elements(1));
    g.bench_function("rtp_try_new_1328", |b| {
        b.iter(|| RtpPacket::try_new(black_box(&d).clone()).map(|p| p.seq))
    });
    g.bench_function("ts_validate_payload_1316", |b| {
        b.iter(|| ts::validate_payload(black_box(payload)))
    });
    g.throughput(Throughput::Elements(7));
    g.bench_function("ts_packet_views_pid_cc_pcr_x7", |b| {
        b.iter(|| {
            let mut acc = 0u64;
            for p in ts::packets(black_box(payload)) {
                let p: TsPacket<'_> = p;
                acc += u64::from(p.pid().0) + u64::from(p.cc().0) + p.pcr().unwrap_or(0);
            }
            acc
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
