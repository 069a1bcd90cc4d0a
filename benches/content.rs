//! Content-merge throughput: TS packets of the original stream per second on one core.
//!
//! Input: `testdata/h264_aac.ts` looped to ≥ 1M TS packets (each loop stamps its number into
//! the last two bytes of every non-null packet, so a packet recurs only as it would from a real
//! encoder), paced at 75 µs per packet (~20 Mbit/s), 7 packets per UDP datagram, two legs with
//! 2 % independent datagram loss each, leg B 30 ms behind leg A, in virtual time. Datagrams are
//! built outside `iter`; inside, each push borrows a prepared `Bytes` and the output is drained
//! after every push and timeout, as the glue does. Before measuring, one run is checked against
//! the original and its misattributed / duplicated / missing counts are printed.
#![allow(clippy::disallowed_methods)]

use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hitless::merge::LegId;
use hitless::merge::content::{ContentConfig, ContentMerger};
use hitless::ts::{NULL_PID, TsPacket};

const PACKETS: usize = 1_000_000;
const PER_DATAGRAM: usize = 7;
const SPACING: Duration = Duration::from_micros(75);
const SKEW: Duration = Duration::from_millis(30);
const LOSS: f64 = 0.02;

fn stream() -> Vec<Bytes> {
    let file = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/h264_aac.ts"))
        .expect("testdata/h264_aac.ts");
    let src: Vec<&[u8]> = file.chunks_exact(188).collect();
    let mut out = Vec::with_capacity(PACKETS);
    let mut lap = 0u16;
    while out.len() < PACKETS {
        for p in &src {
            let mut v = p.to_vec();
            let pid = u16::from(v[1] & 0x1f) << 8 | u16::from(v[2]);
            if pid != 0x1fff {
                v[186..188].copy_from_slice(&lap.to_le_bytes());
            }
            out.push(Bytes::from(v));
        }
        lap += 1;
    }
    out.truncate(PACKETS);
    out
}

/// Arrivals on both legs in time order, and which original packets reached some leg.
fn arrivals(pkts: &[Bytes]) -> (Vec<(Duration, LegId, Bytes)>, Vec<bool>) {
    let mut rng = fastrand::Rng::with_seed(20_227);
    let mut got = vec![false; pkts.len()];
    let mut ev = Vec::new();
    for (leg, delay) in [(0, Duration::ZERO), (1, SKEW)] {
        for (d, chunk) in pkts.chunks(PER_DATAGRAM).enumerate() {
            if rng.f64() < LOSS {
                continue;
            }
            let first = d * PER_DATAGRAM;
            got[first..first + chunk.len()].fill(true);
            let v: Vec<u8> = chunk.iter().flat_map(|p| p.iter().copied()).collect();
            let sent = SPACING * (first + chunk.len()) as u32;
            ev.push((sent + delay, LegId(leg), Bytes::from(v)));
        }
    }
    ev.sort_by_key(|e| e.0);
    (ev, got)
}

fn merger() -> ContentMerger {
    ContentMerger::new(ContentConfig {
        legs: 2,
        window: Duration::from_millis(200),
        capacity: 4096,
        leg_timeout: Duration::from_millis(500),
    })
}

fn run(base: Instant, ev: &[(Duration, LegId, Bytes)], mut sink: impl FnMut(Bytes)) {
    let mut m = merger();
    for (at, leg, d) in ev {
        let now = base + *at;
        while let Some(t) = m.poll_timeout().filter(|t| *t <= now) {
            m.handle_timeout(t);
            while let Some(out) = m.poll_output(t) {
                sink(out);
            }
        }
        m.push(now, *leg, d);
        while let Some(out) = m.poll_output(now) {
            sink(out);
        }
    }
    let end = base + ev.last().map_or(Duration::ZERO, |e| e.0) + Duration::from_secs(1);
    m.handle_timeout(end);
    while let Some(out) = m.poll_output(end) {
        sink(out);
    }
}

/// Compare one run with the original, matching each output packet to the next original
/// position carrying the same bytes (repeated PSI recurs legitimately): (misattributed =
/// duplicated or out of order, missing non-null packets that some leg delivered, output).
fn check(pkts: &[Bytes], got: &[bool], ev: &[(Duration, LegId, Bytes)]) {
    let mut pos: HashMap<&[u8], Vec<usize>> = HashMap::new();
    for (i, p) in pkts.iter().enumerate() {
        if p[1] & 0x1f != 0x1f || p[2] != 0xff {
            pos.entry(&p[..]).or_default().push(i);
        }
    }
    let mut seen = vec![false; pkts.len()];
    let (mut mis, mut next, mut n) = (0u64, 0usize, 0u64);
    let mut out: Vec<Bytes> = Vec::with_capacity(pkts.len());
    run(Instant::now(), ev, |p| {
        n += 1;
        out.push(p.clone());
        let Some(v) = pos.get(&p[..]) else { return };
        let k = v.partition_point(|&i| i < next);
        match v.get(k) {
            Some(&i) => {
                seen[i] = true;
                next = i + 1;
            }
            None => mis += 1,
        }
    });
    let missing = pos
        .values()
        .flatten()
        .filter(|&&i| got[i] && !seen[i])
        .count();
    // Nulls too: the output must be the delivered packets exactly, nulls included.
    let is_null = |p: &Bytes| TsPacket::try_new(p).is_some_and(|t| t.pid() == NULL_PID);
    let want: Vec<&Bytes> = pkts
        .iter()
        .zip(got)
        .filter(|(_, g)| **g)
        .map(|(p, _)| p)
        .collect();
    let nulls_out = out.iter().filter(|p| is_null(p)).count();
    let nulls_want = want.iter().filter(|p| is_null(p)).count();
    let first_diff = out
        .iter()
        .zip(&want)
        .position(|(o, w)| o != *w)
        .or((out.len() != want.len()).then_some(out.len().min(want.len())));
    eprintln!(
        "content bench check: output {n}, misattributed (duplicated or out of order) {mis}, \
         missing non-null delivered {missing}; nulls out {nulls_out} of {nulls_want} delivered; \
         output identical to the delivered packets: {} (first difference: {first_diff:?})",
        first_diff.is_none()
    );
}

fn bench(c: &mut Criterion) {
    let pkts = stream();
    let (ev, got) = arrivals(&pkts);
    check(&pkts, &got, &ev);
    let mut g = c.benchmark_group("content");
    g.sample_size(10);
    g.throughput(Throughput::Elements(PACKETS as u64));
    g.bench_function("2legs_2pct_loss_30ms_skew_1M_ts", |b| {
        b.iter(|| run(Instant::now(), &ev, |p| drop(black_box(p))));
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
