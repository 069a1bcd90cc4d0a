//! Tests of the content merger, with a virtual-time simulator: a sender emits a TS stream with
//! repeated content (null stretches, repeated PAT/PMT, still-picture and silence packets that
//! differ only by CC), each leg packs it into datagrams of its own sizes, loses whole
//! datagrams and delays them (FIFO); `Sim::run` jumps from arrival to arrival or to
//! `poll_timeout()`.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::*;

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

/// A TS packet: `pid`, `cc`, payload filled from `fill` (same fill = same bytes).
fn ts(pid: u16, cc: u8, fill: u64) -> [u8; 188] {
    let mut p = [0xffu8; 188];
    p[0] = 0x47;
    p[1] = (pid >> 8) as u8 & 0x1f;
    p[2] = pid as u8;
    p[3] = 0x10 | (cc & 0x0f);
    for (i, b) in p[4..].iter_mut().enumerate() {
        *b = (fill.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> ((i % 8) * 8)) as u8 ^ i as u8;
    }
    p
}

fn null() -> [u8; 188] {
    let mut p = [0xffu8; 188];
    p[0] = 0x47;
    p[1] = 0x1f;
    p[2] = 0xff;
    p[3] = 0x10;
    p
}

/// A stream of `n` packets with the repeated content a real encoder/muxer produces, from `seed`
/// (75 µs per packet, ~20 Mbit/s):
/// - PAT and PMT every 1333 packets (100 ms): identical sections, CC advancing, so an exact
///   repeat only every 16 × 100 ms (longer than the timeline);
/// - video (PID 0x100, ~75 %): in still-picture stretches every packet has the same payload, so
///   packets repeat exactly every 16 video packets (CC wrap); a PES header / PCR packet (unique:
///   PTS/PCR) every 533 packets (40 ms, the DVB PCR interval);
/// - audio (PID 0x101, ~12 %): in silence the payload repeats (every 16 audio packets), but
///   every 3rd audio packet starts a PES with a PTS (unique);
/// - null stretches of 1..20 packets (8 % of slots) and now and then 100..400 nulls;
/// - `seed` stamped into the last 8 bytes of every non-null packet (a stream id: streams of
///   different seeds share no packet).
///
/// Not generated: stretches where *every* packet repeats exactly within the window (no PTS, no
/// PCR for hundreds of packets) — no compliant encoder emits those (see the module docs).
pub(super) fn stream(n: usize, seed: u64) -> Vec<Bytes> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut cc = [0u8; 4];
    let mut out = Vec::with_capacity(n);
    let mut i = 0u64;
    let mut still = false;
    let mut silence = false;
    let mut audio = 0u64;
    while out.len() < n {
        i += 1;
        if i % 200 == 0 {
            still = rng.bool();
            silence = rng.bool();
        }
        let r = rng.u32(0..1000);
        let p = if i % 1333 == 0 {
            cc[0] = (cc[0] + 1) & 15;
            ts(0, cc[0], 1) // PAT: same section every time
        } else if i % 1333 == 1 {
            cc[1] = (cc[1] + 1) & 15;
            ts(0x1000, cc[1], 2) // PMT
        } else if r < 2 {
            for _ in 0..rng.usize(100..400) {
                out.push(Bytes::copy_from_slice(&null()));
            }
            continue;
        } else if r < 80 {
            for _ in 0..rng.usize(1..20) {
                out.push(Bytes::copy_from_slice(&null()));
            }
            continue;
        } else if r < 200 {
            cc[3] = (cc[3] + 1) & 15;
            audio += 1;
            let pes = audio % 3 == 0;
            ts(
                0x101,
                cc[3],
                if silence && !pes { 3 } else { 1_000_000 + i },
            )
        } else {
            cc[2] = (cc[2] + 1) & 15;
            let pcr = i % 533 == 2;
            ts(0x100, cc[2], if still && !pcr { 4 } else { 2_000_000 + i })
        };
        // The encoder's identity (`seed`) in every non-null packet: two encoders never emit
        // byte-identical packets, while one encoder's repeats stay identical.
        let mut p = p;
        p[180..188].copy_from_slice(&seed.to_le_bytes());
        out.push(Bytes::copy_from_slice(&p));
    }
    out.truncate(n);
    out
}

/// What one leg does: datagram sizes, which datagrams it loses, delay.
#[derive(Clone, Debug)]
pub(super) struct LegPlan {
    pub delay: Duration,
    /// Per datagram: (packets, lost).
    pub datagrams: Vec<(usize, bool)>,
}

/// Pack `n` packets into datagrams of random sizes (1..=max) losing each with `loss`.
pub(super) fn plan(
    rng: &mut fastrand::Rng,
    n: usize,
    max: usize,
    loss: f64,
    delay: Duration,
) -> LegPlan {
    let mut datagrams = Vec::new();
    let mut done = 0;
    while done < n {
        let k = rng.usize(1..=max).min(n - done);
        datagrams.push((k, rng.f64() < loss));
        done += k;
    }
    LegPlan { delay, datagrams }
}

pub(super) struct Sim {
    pub m: ContentMerger,
    pub base: Instant,
    pub now: Instant,
    pending: BTreeMap<(Instant, u64), (usize, Bytes)>,
    order: u64,
    pub out: Vec<Bytes>,
    pub events: Vec<(Instant, ContentEvent)>,
}

impl Sim {
    pub fn new(cfg: ContentConfig) -> Sim {
        let base = Instant::now();
        Sim {
            m: ContentMerger::new(cfg),
            base,
            now: base,
            pending: BTreeMap::new(),
            order: 0,
            out: Vec::new(),
            events: Vec::new(),
        }
    }

    pub fn deliver(&mut self, at: Duration, leg: usize, d: Bytes) {
        self.order += 1;
        self.pending.insert((self.base + at, self.order), (leg, d));
    }

    /// Send `pkts` (one every `spacing` from `start`) through each leg's plan. Returns which
    /// packets reached at least one leg.
    pub fn send(
        &mut self,
        start: Duration,
        spacing: Duration,
        pkts: &[Bytes],
        legs: &[LegPlan],
    ) -> Vec<bool> {
        let mut got = vec![false; pkts.len()];
        for (l, p) in legs.iter().enumerate() {
            let mut i = 0;
            for &(k, lost) in &p.datagrams {
                if !lost {
                    let mut v = Vec::with_capacity(k * 188);
                    for j in i..i + k {
                        v.extend_from_slice(&pkts[j]);
                        got[j] = true;
                    }
                    let sent = start + spacing * (i + k) as u32;
                    self.deliver(sent + p.delay, l, Bytes::from(v));
                }
                i += k;
            }
        }
        got
    }

    pub fn step(&mut self) -> bool {
        let arrival = self.pending.first_key_value().map(|(k, _)| k.0);
        let timeout = self.m.poll_timeout();
        match (arrival, timeout) {
            (Some(a), t) if t.is_none_or(|t| a <= t) => {
                let ((at, _), (leg, d)) = self.pending.pop_first().expect("non-empty");
                self.now = at;
                self.m.push(at, LegId(leg), &d);
            }
            (_, Some(t)) => {
                assert!(t >= self.now, "poll_timeout went back in time");
                self.now = t;
                self.m.handle_timeout(t);
            }
            _ => return false,
        }
        while let Some(p) = self.m.poll_output(self.now) {
            self.out.push(p);
        }
        while let Some(e) = self.m.poll_event() {
            self.events.push((self.now, e));
        }
        true
    }

    pub fn run(&mut self) {
        let mut steps = 0u64;
        while self.step() {
            steps += 1;
            assert!(steps < 50_000_000, "simulation does not terminate");
            if self.pending.is_empty() && self.m.stats().legs.iter().all(|l| l.lost) {
                // Drain what the last timeouts released.
                while self.step() {}
                break;
            }
        }
    }
}

fn cfg(legs: usize) -> ContentConfig {
    ContentConfig {
        legs,
        window: ms(200),
        capacity: 8192,
        leg_timeout: ms(500),
    }
}

const SPACING: Duration = Duration::from_micros(75);

fn expected(pkts: &[Bytes], got: &[bool]) -> Vec<Bytes> {
    pkts.iter()
        .zip(got)
        .filter(|(_, g)| **g)
        .map(|(p, _)| p.clone())
        .collect()
}

/// First index where two packet sequences differ (for readable failures).
fn first_diff(a: &[Bytes], b: &[Bytes]) -> Option<usize> {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .or(if a.len() != b.len() {
            Some(a.len().min(b.len()))
        } else {
            None
        })
}

#[test]
fn module_never_reads_the_clock() {
    let needle = concat!("Instant", "::now");
    assert!(!include_str!("../content.rs").contains(needle));
}

#[test]
fn fingerprint_differs_on_one_bit() {
    let a = ts(0x100, 1, 7);
    let mut b = a;
    b[187] ^= 1;
    assert_ne!(fingerprint(&a), fingerprint(&b));
    assert_eq!(fingerprint(&a), fingerprint(&ts(0x100, 1, 7)));
}

#[test]
fn single_leg_passes_through_with_zero_latency() {
    let pkts = stream(700, 1);
    let mut sim = Sim::new(cfg(1));
    let mut rng = fastrand::Rng::with_seed(1);
    let p = plan(&mut rng, pkts.len(), 7, 0.0, ms(0));
    sim.send(ms(0), SPACING, &pkts, &[p]);
    while !sim.pending.is_empty() {
        sim.step();
    }
    assert_eq!(sim.out, pkts, "released at once, in order");
}

#[test]
fn two_legs_skewed_with_loss_recover_everything() {
    let pkts = stream(20_000, 2);
    let mut rng = fastrand::Rng::with_seed(2);
    let a = plan(&mut rng, pkts.len(), 7, 0.05, ms(0));
    let b = plan(&mut rng, pkts.len(), 7, 0.05, ms(30));
    let mut sim = Sim::new(cfg(2));
    let got = sim.send(ms(1), SPACING, &pkts, &[a, b]);
    sim.run();
    let want = expected(&pkts, &got);
    let v = verdict(&sim.out, &want, &pkts);
    eprintln!(
        "recovery: {v:?}, output {} of {} delivered",
        sim.out.len(),
        want.len()
    );
    assert!(matches!(v, Ok((0, _))), "{v:?}");
    let s = sim.m.stats();
    assert!(s.legs[0].recovered > 0 && s.legs[1].recovered > 0);
    let d = s.legs[1].path_differential;
    assert!(d > ms(25) && d < ms(35), "{d:?}");
    assert!(sim.m.aligned());
}

#[test]
fn different_datagram_boundaries_and_equal_delay() {
    let pkts = stream(20_000, 3);
    let mut rng = fastrand::Rng::with_seed(3);
    let a = plan(&mut rng, pkts.len(), 7, 0.03, ms(5));
    let b = plan(&mut rng, pkts.len(), 3, 0.03, ms(5));
    let mut sim = Sim::new(cfg(2));
    let got = sim.send(ms(1), SPACING, &pkts, &[a, b]);
    sim.run();
    let v = verdict(&sim.out, &expected(&pkts, &got), &pkts);
    assert!(matches!(v, Ok((0, _))), "{v:?}");
}

#[test]
fn different_streams_diverge_and_realign() {
    // Leg 0 carries stream X throughout; leg 1 carries stream Y for a while, then X again.
    let x = stream(30_000, 10);
    let y = stream(30_000, 11);
    let mut rng = fastrand::Rng::with_seed(4);
    let mut sim = Sim::new(cfg(2));
    let a = plan(&mut rng, x.len(), 7, 0.0, ms(0));
    sim.send(ms(1), SPACING, &x, &[a]);
    // Leg 1: Y for packets 0..15000, X from 15000 on (30 ms behind).
    let mut i = 0;
    while i < x.len() {
        let k = 7.min(x.len() - i);
        let src = if i < 15_000 { &y } else { &x };
        let mut v = Vec::new();
        for p in &src[i..i + k] {
            v.extend_from_slice(p);
        }
        sim.deliver(ms(1) + SPACING * (i + k) as u32 + ms(30), 1, Bytes::from(v));
        i += k;
    }
    sim.run();
    let div: Vec<_> = sim
        .events
        .iter()
        .filter(|(_, e)| matches!(e, ContentEvent::Diverged { .. }))
        .collect();
    assert_eq!(div.len(), 1, "{:?}", sim.events);
    assert_eq!(div[0].1, ContentEvent::Diverged { leg: LegId(1) });
    // Detected within the window (plus the 30 ms skew) of the first datagram.
    assert!(
        div[0].0 - sim.base <= ms(1 + 30 + 200 + 5),
        "{:?}",
        div[0].0 - sim.base
    );
    let al: Vec<_> = sim
        .events
        .iter()
        .filter(|(_, e)| *e == ContentEvent::Aligned)
        .collect();
    assert_eq!(al.len(), 1, "{:?}", sim.events);
    // Realigned soon after leg 1 carries X again (sent at 15000 × 75 µs + 30 ms), once it has
    // delivered the ANCHOR_RUN non-null packets it anchors on (X may resume with nulls).
    let back = ms(1) + SPACING * 15_000 + ms(30);
    let run = x[15_000..]
        .iter()
        .enumerate()
        .filter(|(_, p)| p[1] & 0x1f != 0x1f || p[2] != 0xff)
        .nth(ANCHOR_RUN as usize - 1)
        .map_or(0, |(j, _)| j);
    let at = al[0].0 - sim.base;
    assert!(
        at >= back && at <= back + SPACING * run as u32 + ms(5),
        "{at:?} vs {back:?} + {run} packets"
    );
    // The output is X, untouched by Y.
    assert_eq!(first_diff(&sim.out, &x), None);
}

#[test]
fn leg_jump_reanchors() {
    // Leg 1 trails by 30 ms, then skips 2000 packets (a path change): re-anchor, no harm.
    let pkts = stream(20_000, 5);
    let mut rng = fastrand::Rng::with_seed(5);
    let a = plan(&mut rng, pkts.len(), 7, 0.0, ms(0));
    let mut b = plan(&mut rng, pkts.len(), 7, 0.0, ms(30));
    let mut i = 0;
    for d in b.datagrams.iter_mut() {
        if (8_000..10_000).contains(&i) {
            d.1 = true;
        }
        i += d.0;
    }
    let mut sim = Sim::new(cfg(2));
    sim.send(ms(1), SPACING, &pkts, &[a, b]);
    sim.run();
    assert_eq!(first_diff(&sim.out, &pkts), None);
    assert!(sim.m.stats().reanchors >= 1);
    assert!(
        sim.events
            .iter()
            .any(|(_, e)| *e == ContentEvent::Reanchored { leg: LegId(1) })
    );
    assert_eq!(sim.m.stats().diverged_events, 0);
}

#[test]
fn lost_leader_is_not_waited_for() {
    let pkts = stream(10_000, 6);
    let mut rng = fastrand::Rng::with_seed(6);
    let mut a = plan(&mut rng, pkts.len(), 7, 0.0, ms(0));
    let b = plan(&mut rng, pkts.len(), 7, 0.0, ms(30));
    // Leg 0 dies for good after 3000 packets.
    let mut i = 0;
    for d in a.datagrams.iter_mut() {
        d.1 = i >= 3000;
        i += d.0;
    }
    let mut sim = Sim::new(cfg(2));
    sim.send(ms(1), SPACING, &pkts, &[a, b]);
    sim.run();
    assert_eq!(first_diff(&sim.out, &pkts), None);
    assert!(
        sim.events
            .iter()
            .any(|(_, e)| *e == ContentEvent::LegLost { leg: LegId(0) })
    );
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        // By default 64 cases from a fixed seed (the same cases every run, so CI cannot
        // fail by luck); PROPTEST_CASES=N for a longer run from a random seed (30 runs of
        // 3 000 with the final code of 2026-12-03 found no failure; the cases found before
        // are the `regression_seed_*` tests, one still ignored).
        #![proptest_config({
            let n = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok());
            ProptestConfig {
                cases: n.unwrap_or(64),
                rng_seed: match n {
                    Some(_) => ProptestConfig::default().rng_seed,
                    None => proptest::test_runner::RngSeed::Fixed(0x6869_746c_6573_7321),
                },
                ..ProptestConfig::default()
            }
        })]

        /// Random loss, skew and re-packetisation on 2–3 legs, over content with null
        /// stretches and repeated tables: the output is the original with exactly the packets
        /// lost on every leg removed, in order, without duplicates.
        #[test]
        fn output_is_original_minus_packets_lost_everywhere(
            legs in 2usize..=3,
            seed in any::<u64>(),
            n in 500usize..4000,
            loss in 0.0f64..0.15,
            delays in prop::collection::vec(0u64..60, 3),
            maxes in prop::collection::vec(1usize..=7, 3),
        ) {
            let pkts = stream(n, seed);
            let mut rng = fastrand::Rng::with_seed(seed ^ 0x5eed);
            let plans: Vec<LegPlan> = (0..legs)
                .map(|l| plan(&mut rng, n, maxes[l], loss, ms(delays[l])))
                .collect();
            let mut sim = Sim::new(cfg(legs));
            let got = sim.send(ms(1), SPACING, &pkts, &plans);
            sim.run();
            let want = expected(&pkts, &got);
            let v = verdict(&sim.out, &want, &pkts);
            prop_assert!(v.is_ok(), "{:?}", v);
            prop_assert_eq!(sim.m.stats().diverged_events, 0);
        }
    }
}

/// How `out` relates to `want`: `Err(i)` if `out` is not a subsequence of `want` (a packet
/// invented, duplicated or moved; `i` the output index), else the packets of `want` missing
/// from `out`: (unique in `all`, repeated in `all`).
pub(super) fn verdict(
    out: &[Bytes],
    want: &[Bytes],
    all: &[Bytes],
) -> Result<(usize, usize), usize> {
    let mut count: std::collections::HashMap<&[u8], usize> = std::collections::HashMap::new();
    for p in all {
        *count.entry(&p[..]).or_default() += 1;
    }
    let (mut unique, mut repeated) = (0, 0);
    let mut w = 0;
    for (i, o) in out.iter().enumerate() {
        loop {
            if w == want.len() {
                return Err(i);
            }
            if want[w] == *o {
                w += 1;
                break;
            }
            if count[&want[w][..]] == 1 {
                unique += 1;
            } else {
                repeated += 1;
            }
            w += 1;
        }
    }
    for p in &want[w..] {
        if count[&p[..]] == 1 {
            unique += 1;
        } else {
            repeated += 1;
        }
    }
    Ok((unique, repeated))
}

/// `file` (testdata) looped to `n` packets, each lap stamped into the last two bytes of every
/// non-null packet (a packet recurs only as from a real encoder: repeated PSI, nulls).
fn real(file: &str, n: usize) -> Vec<Bytes> {
    let path = format!("{}/testdata/{file}", env!("CARGO_MANIFEST_DIR"));
    let data = std::fs::read(path).expect("testdata");
    let mut out = Vec::with_capacity(n);
    let mut lap = 0u16;
    while out.len() < n {
        for p in data.chunks_exact(188) {
            let mut v = p.to_vec();
            if !(v[1] & 0x1f == 0x1f && v[2] == 0xff) {
                v[186..188].copy_from_slice(&lap.to_le_bytes());
            }
            out.push(Bytes::from(v));
        }
        lap += 1;
    }
    out.truncate(n);
    out
}

#[test]
fn real_streams_two_legs_with_loss_and_skew() {
    for (file, seed) in [("h264_aac.ts", 7u64), ("mpeg2_mp2.ts", 8)] {
        let pkts = real(file, 40_000);
        let mut rng = fastrand::Rng::with_seed(seed);
        let a = plan(&mut rng, pkts.len(), 7, 0.05, ms(0));
        let b = plan(&mut rng, pkts.len(), 7, 0.05, ms(30));
        let mut sim = Sim::new(cfg(2));
        let got = sim.send(ms(1), SPACING, &pkts, &[a, b]);
        sim.run();
        let v = verdict(&sim.out, &expected(&pkts, &got), &pkts);
        eprintln!(
            "{file}: {v:?}, conflicts {} time_placed {} ambiguous {}",
            sim.m.stats().conflicts,
            sim.m.stats().time_placed,
            sim.m.stats().ambiguous
        );
        assert!(matches!(v, Ok((0, _))), "{file}: {v:?}");
    }
}

/// Shrunk proptest case (`legs = 2, seed = 11830403946360517586, n = 500, loss ≈ 0.147`,
/// no skew, datagrams of 1..=6 and 1..=4 packets): repeated content next to a loss.
#[test]
fn regression_repeated_content_next_to_loss() {
    prop_case(
        2,
        11830403946360517586,
        500,
        0.14723068197156974,
        &[0, 0, 0],
        &[6, 4, 1],
    );
}

/// Shrunk proptest case (`legs = 2, seed = 17799962793902112221, n = 746`).
#[test]
fn regression_seed_17799962793902112221() {
    prop_case(
        2,
        17799962793902112221,
        746,
        0.10921282220972613,
        &[0, 0, 0],
        &[6, 1, 1],
    );
}

/// Shrunk proptest case (`legs = 2, seed = 1657352890511761124, n = 500`, leg 1 1 ms late
/// with one packet per datagram).
#[test]
fn regression_seed_1657352890511761124() {
    prop_case(
        2,
        1657352890511761124,
        500,
        0.06873719371052894,
        &[0, 1, 0],
        &[6, 1, 1],
    );
}

/// One case of the proptest, with a readable failure.
fn prop_case(legs: usize, seed: u64, n: usize, loss: f64, delays: &[u64], maxes: &[usize]) {
    let pkts = stream(n, seed);
    let mut rng = fastrand::Rng::with_seed(seed ^ 0x5eed);
    let plans: Vec<LegPlan> = (0..legs)
        .map(|l| plan(&mut rng, n, maxes[l], loss, ms(delays[l])))
        .collect();
    let mut sim = Sim::new(cfg(legs));
    let got = sim.send(ms(1), SPACING, &pkts, &plans);
    sim.run();
    let want = expected(&pkts, &got);
    let v = verdict(&sim.out, &want, &pkts);
    if let Err(i) = v {
        for l in &sim.m.legs {
            eprintln!("spacing {} diff {} jitter {}", l.spacing, l.diff, l.jitter);
        }
        let idx = |b: &Bytes| -> Vec<usize> {
            pkts.iter()
                .enumerate()
                .filter(|(_, p)| *p == b)
                .map(|(j, _)| j)
                .take(6)
                .collect()
        };
        for k in i.saturating_sub(6)..(i + 4).min(sim.out.len()) {
            eprintln!("out[{k}] = original {:?}", idx(&sim.out[k]));
        }
        for (j, p) in pkts.iter().enumerate().take(50) {
            let pid = u16::from(p[1] & 0x1f) << 8 | u16::from(p[2]);
            eprintln!(
                "pkt {j}: pid {pid:#x} cc {} rep {}",
                p[3] & 15,
                idx(p).len()
            );
        }
        for k in 0..sim.out.len().min(40) {
            eprint!("{:?} ", idx(&sim.out[k]).first());
        }
        eprintln!();
        for (l, p) in plans.iter().enumerate() {
            let mut s = 0;
            let mut line = String::new();
            for &(k, lost) in &p.datagrams {
                if s < 60 {
                    line += &format!("{s}..{}{} ", s + k, if lost { "X" } else { "" });
                }
                s += k;
            }
            eprintln!("leg {l}: {line}");
        }
    }
    assert!(v.is_ok(), "{v:?}");
    assert_eq!(sim.m.stats().diverged_events, 0);
}

/// Proptest case (`legs = 3, seed = 7405610682682143962, n = 2074, loss ≈ 0.149`, legs 0 and
/// 1 2 ms late): new packets of different PIDs that send-time estimates misordered.
#[test]
fn regression_seed_7405610682682143962() {
    prop_case(
        3,
        7405610682682143962,
        2074,
        0.14934774963535466,
        &[2, 2, 0],
        &[7, 1, 4],
    );
}

/// Proptest case (`legs = 2, seed = 7972805640275189663, n = 2955`, leg 0 22 ms late): the
/// late leg anchors with packets before its first match in the replayed datagram.
#[test]
fn regression_seed_7972805640275189663() {
    prop_case(
        2,
        7972805640275189663,
        2955,
        0.09066806273455696,
        &[22, 0, 0],
        &[6, 1, 1],
    );
}

/// Proptest case (`legs = 2, seed = 11690713759946156014, n = 1363`, no skew): packet 1047
/// (delivered by leg 1 only, next to still-picture repeats) comes out before 1030 (leg 0
/// only). Fails identically without held runs: not a placement-order case.
#[test]
fn regression_seed_11690713759946156014() {
    prop_case(
        2,
        11690713759946156014,
        1363,
        0.12667986550002738,
        &[0, 0, 0],
        &[5, 7, 1],
    );
}

/// Proptest case (`legs = 3, seed = 445343815965347826`, no loss, equal 44 ms delays, one or
/// two packets per datagram): a `Diverged` event is raised. Fails identically without held
/// runs.
#[test]
fn regression_seed_445343815965347826() {
    prop_case(3, 445343815965347826, 1162, 0.0, &[44, 44, 44], &[2, 1, 1]);
}

/// Proptest case (`legs = 3, seed = 16987729839618253349`, 14 % loss): a misordering that the
/// former time-ordered placement also produces (three packets earlier).
#[test]
fn regression_seed_16987729839618253349() {
    prop_case(
        3,
        16987729839618253349,
        3037,
        0.14390125833859435,
        &[6, 4, 2],
        &[6, 5, 6],
    );
}

/// Proptest case (`legs = 2`, 15 % loss, leg 1 1 ms late, one or two packets per datagram).
#[test]
fn regression_seed_1931891442261406667() {
    prop_case(
        2,
        1931891442261406667,
        774,
        0.14723881033929148,
        &[0, 1, 0],
        &[2, 2, 1],
    );
}

/// Proptest case (`legs = 2`, 13 % loss, leg 0 45 ms late).
#[test]
fn regression_seed_14945264691302576756() {
    prop_case(
        2,
        14945264691302576756,
        987,
        0.13083139408826586,
        &[45, 0, 0],
        &[1, 2, 1],
    );
}

/// Proptest case (`legs = 3`, 15 % loss, leg 0 32 ms late): the start, before the spacing is
/// known.
#[test]
fn regression_seed_11441498026082497851() {
    prop_case(
        3,
        11441498026082497851,
        1182,
        0.14897127495142462,
        &[32, 0, 1],
        &[7, 2, 2],
    );
}

/// Proptest case (`legs = 3`, 15 % loss, legs 0 and 2 28 and 21 ms late).
#[test]
fn regression_seed_11441498026082498328() {
    prop_case(
        3,
        11441498026082498328,
        1094,
        0.14897127495142462,
        &[28, 0, 21],
        &[4, 2, 3],
    );
}

/// Real timing, like the loopback test: `h264_aac.ts` at 4× speed (188 µs per packet), 7
/// packets per datagram, 2 % loss per leg, leg 1 30 ms late, and arrival jitter: 0..`jit_us`
/// per datagram, on 3 % of datagrams up to `tail_us` more (a heavy tail), plus stalls (a
/// leg's datagrams held back for 1..`stall_ms` and delivered together) now and then.
fn jittery(seed: u64, jit_us: u64, stall_ms: u64, tail_us: u64) -> (Vec<Bytes>, Vec<bool>, Sim) {
    let pkts = real("h264_aac.ts", 10_692);
    let spacing = Duration::from_nanos(188_000);
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut sim = Sim::new(ContentConfig {
        legs: 2,
        window: ms(500),
        capacity: 8192,
        leg_timeout: ms(500),
    });
    let mut got = vec![false; pkts.len()];
    for (leg, delay) in [(0usize, ms(0)), (1, ms(30))] {
        let mut last = Duration::ZERO;
        let mut stall_until = Duration::ZERO;
        for (d, chunk) in pkts.chunks(7).enumerate() {
            let first = d * 7;
            let sent = spacing * (first + chunk.len()) as u32 + ms(1);
            let mut at = sent + delay + Duration::from_micros(rng.u64(0..=jit_us));
            if tail_us > 0 && rng.f64() < 0.03 {
                at += Duration::from_micros(rng.u64(0..=tail_us));
            }
            if stall_ms > 0 && at > stall_until && rng.f64() < 0.005 {
                stall_until = at + Duration::from_micros(rng.u64(1000..=stall_ms * 1000));
            }
            if at < stall_until {
                at = stall_until;
            }
            at = at.max(last);
            last = at;
            if rng.f64() < 0.02 {
                continue;
            }
            got[first..first + chunk.len()].fill(true);
            let v: Vec<u8> = chunk.iter().flat_map(|p| p.iter().copied()).collect();
            sim.deliver(at, leg, Bytes::from(v));
        }
    }
    sim.run();
    (pkts, got, sim)
}

#[test]
fn real_timing_with_jitter() {
    for seed in 1..=5 {
        let (pkts, got, sim) = jittery(seed, 100, 0, 0);
        let v = verdict(&sim.out, &expected(&pkts, &got), &pkts);
        let s = sim.m.stats();
        eprintln!(
            "seed {seed}: {v:?}, conflicts {} time_placed {} ambiguous {}",
            s.conflicts, s.time_placed, s.ambiguous
        );
        if let Err(i) = v {
            eprintln!("{}", around(&sim.out, &pkts, i));
        }
        assert!(matches!(v, Ok((0, _))), "seed {seed}: {v:?}");
        assert_eq!(sim.out.len(), expected(&pkts, &got).len(), "seed {seed}");
    }
}

#[test]
fn real_timing_with_stalls() {
    for seed in 1..=5 {
        let (pkts, got, sim) = jittery(seed, 100, 4, 0);
        let v = verdict(&sim.out, &expected(&pkts, &got), &pkts);
        let s = sim.m.stats();
        eprintln!(
            "seed {seed}: {v:?}, out {} want {}, conflicts {} time_placed {} ambiguous {}",
            sim.out.len(),
            expected(&pkts, &got).len(),
            s.conflicts,
            s.time_placed,
            s.ambiguous
        );
        if let Err(i) = v {
            eprintln!("{}", around(&sim.out, &pkts, i));
            eprintln!("{:?}", null_diff(&sim.out, &pkts, &got));
        }
        assert!(matches!(v, Ok((0, _))), "seed {seed}: {v:?}");
        assert_eq!(sim.out.len(), expected(&pkts, &got).len(), "seed {seed}");
    }
}

/// Original indexes of the output packets around `i` (test diagnostics).
fn around(out: &[Bytes], pkts: &[Bytes], i: usize) -> String {
    let mut s = String::new();
    let lo = i.saturating_sub(8);
    for (k, o) in out.iter().enumerate().take(i + 6).skip(lo) {
        let idx: Vec<usize> = pkts
            .iter()
            .enumerate()
            .filter(|(_, p)| *p == o)
            .map(|(j, _)| j)
            .take(3)
            .collect();
        s += &format!("{k}:{idx:?} ");
    }
    s
}

/// Proptest case (`legs = 2`, 10 % loss, leg 0 16 ms late with one packet per datagram).
#[test]
fn regression_seed_17080043104328498493() {
    prop_case(
        2,
        17080043104328498493,
        3330,
        0.10382375499873056,
        &[16, 0, 0],
        &[1, 4, 1],
    );
}
/// First place where the output's nulls between two non-null packets differ from the
/// original's delivered ones (test diagnostics).
fn null_diff(out: &[Bytes], pkts: &[Bytes], got: &[bool]) -> Option<String> {
    let is_null = |p: &Bytes| p[1] & 0x1f == 0x1f && p[2] == 0xff;
    let mut idx: std::collections::HashMap<&[u8], Vec<usize>> = std::collections::HashMap::new();
    for (i, p) in pkts.iter().enumerate() {
        if !is_null(p) {
            idx.entry(&p[..]).or_default().push(i);
        }
    }
    let mut last: Option<(usize, usize)> = None; // (original index, output index)
    let mut nulls = 0;
    for (o, p) in out.iter().enumerate() {
        if is_null(p) {
            nulls += 1;
            continue;
        }
        let after = last.map_or(0, |l| l.0 + 1);
        let v = &idx[&p[..]];
        let i = v.iter().copied().find(|&j| j >= after).unwrap_or(v[0]);
        if let Some((li, lo)) = last {
            let want = (li + 1..i).filter(|&j| got[j] && is_null(&pkts[j])).count();
            if want != nulls {
                return Some(format!(
                    "between original {li} (out {lo}) and {i} (out {o}): {nulls} nulls, want {want}"
                ));
            }
        }
        last = Some((i, o));
        nulls = 0;
    }
    None
}

/// Proptest case (`legs = 2`, 15 % loss, leg 0 37 ms late, one or two packets per datagram).
#[test]
fn regression_seed_1235295167120711727() {
    prop_case(
        2,
        1235295167120711727,
        531,
        0.14821442227334994,
        &[37, 0, 0],
        &[2, 1, 1],
    );
}

/// Proptest case (`legs = 2`, 7 % loss, 52 and 47 ms late).
#[test]
fn regression_seed_4825967741353670163() {
    prop_case(
        2,
        4825967741353670163,
        3730,
        0.07281415897615857,
        &[52, 47, 0],
        &[1, 5, 1],
    );
}

/// Proptest case (`legs = 2`, 11 % loss, 20 and 23 ms late).
#[test]
fn regression_seed_6328158707270190360() {
    prop_case(
        2,
        6328158707270190360,
        1788,
        0.10694016088523947,
        &[20, 23, 0],
        &[7, 4, 1],
    );
}

/// Proptest case (`legs = 3`, 10 % loss, legs 0 and 1 32 ms late).
#[test]
fn regression_seed_6329565859690332347() {
    prop_case(
        3,
        6329565859690332347,
        2705,
        0.0962660025660108,
        &[32, 32, 3],
        &[7, 7, 5],
    );
}

/// Proptest case (`legs = 2`, 12 % loss, leg 1 6 ms late).
#[test]
fn regression_seed_7916710175284063272() {
    prop_case(
        2,
        7916710175284063272,
        3104,
        0.11856352550333302,
        &[0, 6, 0],
        &[7, 3, 1],
    );
}

/// Proptest case (`legs = 3`, 9 % loss, 7, 15 and 11 ms late).
#[test]
fn regression_seed_10973265078208306654() {
    prop_case(
        3,
        10973265078208306654,
        572,
        0.0935187131661133,
        &[7, 15, 11],
        &[6, 4, 4],
    );
}

#[test]
fn trailing_leg_restart_reanchors() {
    // Leg 1 trails by 30 ms; after packet 8000 its source restarts 1500 packets back (112 ms
    // of stream: a replay, e.g. an upstream buffer restarting) and carries on from there, now
    // trailing by ~142 ms (still inside the 200 ms window). Every replayed packet is a copy of
    // one already merged: nothing may be output twice, nothing lost.
    const RESTART_AT: usize = 8_000;
    const REPLAY: usize = 1_500;
    let pkts = stream(20_000, 11);
    let mut rng = fastrand::Rng::with_seed(11);
    let a = plan(&mut rng, pkts.len(), 7, 0.0, ms(0));
    let mut sim = Sim::new(cfg(2));
    sim.send(ms(1), SPACING, &pkts, &[a]);
    let start = ms(1) + ms(30);
    // Leg 1 before the restart: packets [0, RESTART_AT), sent at their original times.
    let before = plan(&mut rng, RESTART_AT, 7, 0.0, ms(0));
    let mut i = 0;
    for &(k, _) in &before.datagrams {
        let d: Vec<u8> = pkts[i..i + k]
            .iter()
            .flat_map(|p| p.iter().copied())
            .collect();
        sim.deliver(start + SPACING * (i + k) as u32, 1, Bytes::from(d));
        i += k;
    }
    // After: packets [RESTART_AT - REPLAY, end), the sender's clock running on.
    let from = RESTART_AT - REPLAY;
    let after = plan(&mut rng, pkts.len() - from, 7, 0.0, ms(0));
    let mut j = from;
    for &(k, _) in &after.datagrams {
        let d: Vec<u8> = pkts[j..j + k]
            .iter()
            .flat_map(|p| p.iter().copied())
            .collect();
        let sent = RESTART_AT + (j + k - from);
        sim.deliver(start + SPACING * sent as u32, 1, Bytes::from(d));
        j += k;
    }
    sim.run();
    assert_eq!(first_diff(&sim.out, &pkts), None, "output = original");
    assert_eq!(sim.out.len(), pkts.len(), "no duplicates");
    assert!(sim.m.stats().reanchors >= 1, "{:?}", sim.m.stats());
    assert!(
        sim.events
            .iter()
            .any(|(_, e)| *e == ContentEvent::Reanchored { leg: LegId(1) }),
        "{:?}",
        sim.events
    );
    assert_eq!(sim.m.stats().diverged_events, 0, "{:?}", sim.events);
}

/// Proptest case (`legs = 2`, 10 % loss, leg 1 1 ms late with one packet per datagram):
/// the trailing leg's datagrams from before the leader's first one, placed before it.
#[test]
fn regression_seed_11697367485812351829() {
    prop_case(
        2,
        11697367485812351829,
        1138,
        0.10200270593264796,
        &[0, 1, 0],
        &[2, 1, 1],
    );
}

/// Proptest case (`legs = 2`, 9 % loss, leg 0 19 ms late, 1–6 and 1–2 packets per datagram):
/// deep in still-picture repeats; a leg of mixed sizes took 16 datagrams of one size as its
/// fixed size and rounded a one-packet loss away.
#[test]
fn regression_seed_10918990570400761673() {
    prop_case(
        2,
        10918990570400761673,
        2597,
        0.08912765827535436,
        &[19, 0, 0],
        &[6, 2, 1],
    );
}

/// Proptest case (`legs = 2`, 11 % loss, leg 1 2 ms late with one packet per datagram): a
/// packet output twice among the first 20, while both legs lose many of the stream's first
/// datagrams (null stretch): the first spacing estimate was a multiple of the spacing (the
/// smallest sample is now taken when every time between datagrams is a whole multiple of
/// it).
#[test]
fn regression_seed_5387278610149197301() {
    prop_case(
        2,
        5387278610149197301,
        500,
        0.11253937178564358,
        &[0, 2, 0],
        &[3, 1, 1],
    );
}

/// Proptest case (`legs = 3`, 8 % loss, legs 0 and 1 41 and 6 ms late, 1–2 packets per
/// datagram on the leader): a leg of mixed sizes took a run of 16 two-packet datagrams as a
/// fixed size, and a one-packet loss rounded to none (a packet output twice).
#[test]
fn regression_seed_14840598299905594928() {
    prop_case(
        3,
        14840598299905594928,
        2456,
        0.08484819240028273,
        &[41, 6, 0],
        &[3, 5, 2],
    );
}

/// Measurement (`#[ignore]`d, release build advised): how many of `SEEDS` (200) seeds of
/// [`jittery`] (a real stream, 2 % loss per leg, 30 ms skew) give an output that is not
/// exactly the delivered packets, for `JIT` µs of uniform arrival jitter (250), up to `TAIL`
/// µs more on 3 % of datagrams (0: none) and stalls of 1..=`STALL` ms (0: none); fails above
/// `MAX_BAD` (2). The module Status quotes its results, e.g.
/// `JIT=500 STALL=0 MAX_BAD=200 cargo test --release --lib jitter_sweep -- --ignored --nocapture`.
#[test]
#[ignore = "measurement: a 200-seed sweep, see the doc comment"]
fn jitter_sweep() {
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let tail = env("TAIL", 0);
    let (jit, stall, seeds, max_bad) = (
        env("JIT", 250),
        env("STALL", 0),
        env("SEEDS", 200),
        env("MAX_BAD", 2),
    );
    let mut bad = Vec::new();
    for seed in 1..=seeds {
        let (pkts, got, sim) = jittery(seed, jit, stall, tail);
        let want = expected(&pkts, &got);
        if sim.out != want {
            bad.push((
                seed,
                first_diff(&sim.out, &want),
                sim.out.len() as i64 - want.len() as i64,
            ));
        }
    }
    eprintln!(
        "jitter {jit} us, tail {tail} us, stalls up to {stall} ms: {} of {seeds} seeds not identical (seed, first difference, extra packets): {bad:?}",
        bad.len()
    );
    assert!(bad.len() as u64 <= max_bad, "{} > {max_bad}", bad.len());
}

/// An in-memory capture sink the test can read back.
#[derive(Clone, Default)]
struct Sink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_replayed_capture_reproduces_the_output_and_a_cut_one_a_prefix_of_it() {
    let pkts = real("h264_aac.ts", 4000);
    let mut rng = fastrand::Rng::with_seed(5);
    let a = plan(&mut rng, pkts.len(), 7, 0.05, ms(0));
    let b = plan(&mut rng, pkts.len(), 7, 0.05, ms(30));
    let c = cfg(2);
    let sink = Sink::default();
    let mut sim = Sim::new(c.clone());
    sim.m
        .capture(capture::Capture::new(Box::new(sink.clone()), &c).expect("header"));
    let got = sim.send(ms(1), SPACING, &pkts, &[a, b]);
    sim.run();
    assert_eq!(sim.out.len(), expected(&pkts, &got).len());
    let bytes = sink.0.lock().unwrap().clone();
    let r = capture::replay(&bytes[..], Instant::now()).expect("replay");
    assert_eq!(r.output, sim.out);
    assert!(
        r.datagrams > 1000 && r.timeouts > 0,
        "{} {}",
        r.datagrams,
        r.timeouts
    );
    assert_eq!(r.config.legs, 2);
    assert_eq!(r.config.window, c.window);
    let cut = capture::replay(&bytes[..bytes.len() / 2 + 3], Instant::now()).expect("cut");
    assert!(!cut.output.is_empty() && cut.output.len() < sim.out.len());
    assert_eq!(cut.output[..], sim.out[..cut.output.len()]);
    let err = capture::replay(&b"HLCMCAP0"[..], Instant::now())
        .err()
        .expect("bad magic");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
}

/// Diagnostic (`#[ignore]`d): replay a content-merge input capture (`CAPTURE=<file.cmcap>`,
/// from a gateway run with `HITLESS_CONTENT_CAPTURE=<dir>`; the loopback test keeps one when
/// it fails) and compare the output with `FILE` (testdata, `h264_aac.ts`) cut into 7-packet
/// datagrams minus those the sender's report (`REPORT=<r.json>`) lost on all legs. Prints the
/// merger's counters and, on a difference, the original indexes of the packets around it.
#[test]
#[ignore = "diagnostic: needs CAPTURE and REPORT, see the doc comment"]
fn replay_capture() {
    let cap = std::env::var("CAPTURE").expect("CAPTURE=<file.cmcap>");
    let file = std::io::BufReader::new(std::fs::File::open(&cap).expect("open CAPTURE"));
    let r = capture::replay(file, Instant::now()).expect("replay");
    let report: serde_json::Value = serde_json::from_slice(
        &std::fs::read(std::env::var("REPORT").expect("REPORT=<r.json>")).expect("read REPORT"),
    )
    .expect("REPORT is JSON");
    let lost: Vec<u64> = report["lost_on_all_legs"]
        .as_array()
        .expect("lost_on_all_legs")
        .iter()
        .filter_map(|v| v.as_u64())
        .collect();
    let file = std::env::var("FILE").unwrap_or_else(|_| "h264_aac.ts".into());
    let path = format!("{}/testdata/{file}", env!("CARGO_MANIFEST_DIR"));
    let pkts: Vec<Bytes> = std::fs::read(path)
        .expect("testdata")
        .chunks_exact(188)
        .map(Bytes::copy_from_slice)
        .collect();
    let got: Vec<bool> = (0..pkts.len())
        .map(|i| !lost.contains(&((i / 7) as u64)))
        .collect();
    let want = expected(&pkts, &got);
    let s = &r.stats;
    eprintln!(
        "{} datagrams, {} timeouts replayed; {} packets out, {} expected; conflicts {} time_placed {} pcr_placed {} ambiguous {}",
        r.datagrams,
        r.timeouts,
        r.output.len(),
        want.len(),
        s.conflicts,
        s.time_placed,
        s.pcr_placed,
        s.ambiguous
    );
    match first_diff(&r.output, &want) {
        Some(i) => eprintln!("first difference at {i}: {}", around(&r.output, &pkts, i)),
        None => eprintln!("identical over {} packets", r.output.len().min(want.len())),
    }
}

/// Proptest case found by a random run on 2026-12-03 (`legs = 2`, 15 % loss, one leg with
/// 1–7 packets per datagram, the other with 1): a still picture's repeat held by the trailing
/// leg, found only behind its cursor, was taken for a restart (its counters continue the leg's
/// own: a repeat).
#[test]
fn regression_seed_2805281370911797893() {
    prop_case(
        2,
        2805281370911797893,
        2128,
        0.1457907938544022,
        &[5, 6, 0],
        &[7, 1, 1],
    );
}

/// Proptest case (`legs = 3`, 13 % loss, 2/1/7 packets per datagram): a flush that took a far
/// copy on the counters alone placed a still picture's repeat there.
#[test]
fn regression_seed_1725049877459484688() {
    prop_case(
        3,
        1725049877459484688,
        2564,
        0.12721393841150605,
        &[44, 19, 0],
        &[2, 1, 7],
    );
}

/// Proptest case (`legs = 3`, 8 % loss, 2/5/2 packets per datagram): a leg that once sent 16
/// datagrams of one size kept rounding its gaps to that size through later odd ones.
#[test]
fn regression_seed_16227567690851193895() {
    prop_case(
        3,
        16227567690851193895,
        1227,
        0.07629518212108642,
        &[59, 59, 0],
        &[2, 5, 2],
    );
}

/// Proptest case found by a random run on 2026-12-03 (`legs = 2`, 11 % loss, no skew, 1 and
/// 1–3 packets per datagram): the first leg's first spacing estimate was twice the spacing
/// (every other one-packet datagram lost), so its first gaps were read as none.
#[test]
fn regression_seed_16375338881491223103() {
    prop_case(
        2,
        16375338881491223103,
        500,
        0.10766296042333456,
        &[0, 0, 0],
        &[1, 3, 1],
    );
}

/// Proptest case found by a random run on 2026-12-03 (`legs = 2`, 10 % loss, leg 1 1 ms late,
/// 1–4 and 1 packets per datagram): three held packets of a still picture's repeat (the
/// stream ends in nulls) unanchored the leg as a restart, and it diverged.
#[test]
fn regression_seed_7896171339090800072() {
    prop_case(
        2,
        7896171339090800072,
        529,
        0.10387955142998816,
        &[0, 1, 0],
        &[4, 1, 1],
    );
}

/// Proptest case found by a random run on 2026-12-03 (later session; `legs = 2`, 15 % loss,
/// leg 1 1 ms late, 1–7 packets per datagram on both): a held datagram's time estimate
/// ignored the held datagrams before it that content had not placed, so a still picture's
/// earlier repeat 17 positions before it looked near (a packet output twice).
#[test]
fn regression_seed_9936741035786872546() {
    prop_case(
        2,
        9936741035786872546,
        3041,
        0.14765648340031487,
        &[0, 1, 0],
        &[7, 7, 1],
    );
}

/// Proptest case found by a random run on 2026-12-03 (later session; `legs = 3`, 12 % loss,
/// 9–10 ms skews, up to 5, 5 and 7 packets per datagram): a trailing leg's datagram of a
/// still picture's second instance took the first instance as a far copy (three packets seen
/// once), while the leg still held its own copy of that first instance.
#[test]
fn regression_seed_11786727878981292734() {
    prop_case(
        3,
        11786727878981292734,
        2870,
        0.12384084455585943,
        &[10, 9, 9],
        &[5, 5, 7],
    );
}

/// Proptest case found by a random run on 2026-12-03 (later session; `legs = 3`, 13 % loss,
/// 20–22 ms skews, up to 6, 3 and 6 packets per datagram): fixed with the one above.
#[test]
fn regression_seed_5051905507597581334() {
    prop_case(
        3,
        5051905507597581334,
        3905,
        0.12647443913756812,
        &[22, 20, 20],
        &[6, 3, 6],
    );
}

/// Proptest case found by a random run on 2026-12-03 (later session; `legs = 2`, 10 % loss,
/// leg 1 2 ms late with one packet per datagram, the other 1–3): the first leg's spacing
/// samples had no two alike, and a quarter of them shared twice the spacing (every time
/// between its datagrams is a whole multiple of the smallest sample: that one is taken).
#[test]
fn regression_seed_2608516531778667672() {
    prop_case(
        2,
        2608516531778667672,
        500,
        0.10184709025595162,
        &[0, 2, 0],
        &[3, 1, 1],
    );
}

/// Proptest case found by a random run on 2026-12-03 (later session; `legs = 2`, 13 % loss,
/// legs 10 and 12 ms late, 1–7 and 1–3 packets per datagram). Known limit, not fixed: a still
/// picture repeats every 17 packets (its PID's counter wraps once per period); the leading
/// leg lost 21 packets in a row, and the trailing leg, whose own times put its next datagram
/// right after its cursor, took the copy one period later (three packets seen once, counters
/// consistent, nothing skipped but copies of what it held): a cycle slip by one period, then a
/// restart is detected and the leg re-anchors, leaving a packet twice in the output. Tried
/// and dropped: refusing every copy beyond the leg's time estimate fixes it, but the sweep
/// with `TAIL=2500` went from 7 to 12 seeds not identical; allowing such a copy only within
/// the tolerance of the arrival line's estimate, stalls (`STALL=4`) went from 3 to 28.
#[test]
#[ignore = "known failing case, see the doc comment"]
fn regression_seed_13189515342845921442() {
    prop_case(
        2,
        13189515342845921442,
        1238,
        0.1298228147188071,
        &[10, 12, 0],
        &[7, 3, 1],
    );
}
