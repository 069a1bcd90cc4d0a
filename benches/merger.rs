//! SMPTE ST 2022-7 merger throughput: pushed packets per second on one core.
//!
//! Two legs of 1328-byte RTP datagrams (7 × 188-byte TS packets) at ~20 Mbit/s (one packet
//! every 531 µs), leg B 30 ms behind leg A, in virtual time. Inputs are built outside `iter`;
//! inside, each push clones an `RtpPacket` (a `Bytes` refcount bump) and the output is drained
//! after every push, as the glue does.
#![allow(clippy::disallowed_methods)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hitless::merge::LegId;
use hitless::merge::seq2022_7::{Merger, MergerConfig};
use hitless::rtp::{FIXED_HEADER_LEN, PT_MP2T, RtpPacket, write_header};

const PACKETS: u64 = 100_000;
const SPACING: Duration = Duration::from_micros(531);
const SKEW: Duration = Duration::from_millis(30);

fn datagram(seq: u16, ts: u32) -> RtpPacket {
    let mut h = [0u8; FIXED_HEADER_LEN];
    write_header(&mut h, PT_MP2T, seq, ts, 0x2022_0007);
    let mut v = h.to_vec();
    v.extend((0..7 * 188).map(|i| if i % 188 == 0 { 0x47 } else { i as u8 }));
    RtpPacket::try_new(Bytes::from(v)).expect("valid RTP")
}

/// Arrivals on both legs in time order: (offset from the start, leg, packet).
fn arrivals(loss: f64) -> Vec<(Duration, LegId, RtpPacket)> {
    let mut rng = fastrand::Rng::with_seed(20_227);
    let mut ev = Vec::with_capacity(2 * PACKETS as usize);
    for i in 0..PACKETS {
        let sent = SPACING * i as u32;
        let p = datagram(i as u16, (sent.as_micros() * 9 / 100) as u32);
        for (leg, delay) in [(0, Duration::ZERO), (1, SKEW)] {
            if rng.f64() >= loss {
                ev.push((sent + delay, LegId(leg), p.clone()));
            }
        }
    }
    ev.sort_by_key(|e| e.0);
    ev
}

fn run(base: Instant, ev: &[(Duration, LegId, RtpPacket)]) -> u64 {
    let mut m = Merger::new(MergerConfig {
        legs: 2,
        window: Duration::from_millis(200),
        capacity: 4096,
        leg_timeout: Duration::from_millis(500),
    });
    for (at, leg, p) in ev {
        let now = base + *at;
        m.push(now, *leg, p.clone());
        while let Some(out) = m.poll_output(now) {
            black_box(out);
        }
    }
    while m.poll_event().is_some() {}
    m.stats().output
}

fn bench(c: &mut Criterion) {
    let base = Instant::now();
    let mut g = c.benchmark_group("merger_2022_7");
    g.measurement_time(Duration::from_secs(3)).sample_size(20);
    for (name, loss) in [
        ("two_legs_1pct_loss_30ms_skew", 0.01),
        ("two_legs_no_loss_30ms_skew", 0.0),
    ] {
        let ev = arrivals(loss);
        g.throughput(Throughput::Elements(ev.len() as u64));
        g.bench_function(name, |b| b.iter(|| run(base, black_box(&ev))));
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
