//! TR 101 290 Priority 1 analyser cost per TS packet over testdata/h264_aac.ts
//! (10,692 packets, PCR-derived arrival times). Target: ≤ 50 ns per TS packet.
#![allow(clippy::disallowed_methods)]
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use hitless::rules::tr101290::{P1Config, Tr101290};
use hitless::tools::pace;
use hitless::ts::PACKET_LEN;

fn bench(c: &mut Criterion) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/h264_aac.ts");
    let data = std::fs::read(path).expect("testdata/h264_aac.ts");
    let n = data.len() / PACKET_LEN;
    let (pid, pcrs) = pace::collect_pcrs(&data, None).expect("PCRs");
    let sched = pace::from_pcrs(n, pid, &pcrs).expect("schedule");
    let offsets: Vec<Duration> = sched
        .packet_ticks
        .iter()
        .map(|&t| Duration::from_nanos(t * 1000 / 27))
        .collect();
    let pass = Duration::from_nanos(sched.pass_ticks * 1000 / 27);
    let base = Instant::now();

    let mut g = c.benchmark_group("tr101290");
    g.throughput(Throughput::Elements(n as u64));
    g.measurement_time(Duration::from_secs(3));
    g.sample_size(20);

    // Steady state: one analyser fed pass after pass (the loop point costs a few CC errors
    // per pass, as a looping sender would).
    let mut a = Tr101290::new(P1Config::default());
    let mut k = 0u32;
    g.bench_function("push_h264_aac_steady", |b| {
        b.iter(|| {
            let t0 = base + pass * k;
            k += 1;
            for (p, off) in data.chunks_exact(PACKET_LEN).zip(&offsets) {
                a.push(t0 + *off, black_box(p));
            }
            while a.poll_event().is_some() {}
        })
    });
    // From a fresh analyser: first PAT / PMT parse and table set-up included (setup excluded).
    g.bench_function("push_h264_aac_fresh", |b| {
        b.iter_batched(
            || Tr101290::new(P1Config::default()),
            |mut a| {
                for (p, off) in data.chunks_exact(PACKET_LEN).zip(&offsets) {
                    a.push(base + *off, black_box(p));
                }
                a
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
