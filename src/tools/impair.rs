//! Seeded, per-leg impairments for `hitless send`: random loss, burst loss, outage windows,
//! constant extra delay, reordering and duplication.
//!
//! Pure and deterministic: [`LegImpairment::push`] decides what happens to datagram `index`
//! (at stream time `ticks`) from the seed, the leg index and the datagrams before it, never
//! from the clock. The same seed gives the same drops on every run, which is what lets a test
//! compute the gateway's expected output from the sender's report. Each kind of impairment
//! draws from its own RNG stream, so adding `dup=` to a leg does not move its losses.

use crate::ts::PCR_HZ;

/// Query keys that are impairments, stripped from a `--to` URL before it is parsed.
pub const KEYS: &[&str] = &["loss", "burst", "outage", "delay", "reorder", "dup"];

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("impairment {key}={value:?}: {reason}")]
pub struct ImpairError {
    pub key: String,
    pub value: String,
    pub reason: &'static str,
}

/// Burst length: fixed, or geometric with a mean.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BurstLen {
    Fixed(u32),
    Mean(f64),
}

/// Impairments of one leg, as written in its URL query.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImpairSpec {
    /// `loss=P`: independent random loss, percent of datagrams.
    pub loss_pct: f64,
    /// `burst=P:L` / `burst=P:~L`: percent chance per datagram of starting a burst of L
    /// datagrams (fixed), or of mean length L (geometric).
    pub burst: Option<(f64, BurstLen)>,
    /// `outage=START+DUR[,START+DUR…]`: windows in ms of stream time from the start of the
    /// send where every datagram is dropped.
    pub outages_ms: Vec<(f64, f64)>,
    /// `delay=MS`: constant extra delay of this leg in wall-clock ms (not scaled by --speed).
    pub delay_ms: f64,
    /// `reorder=P`: percent chance that a datagram is held and sent after the next one.
    pub reorder_pct: f64,
    /// `dup=P`: percent chance that a datagram is sent twice.
    pub dup_pct: f64,
}

fn pct(key: &str, v: &str) -> Result<f64, ImpairError> {
    let err = |reason| ImpairError {
        key: key.into(),
        value: v.into(),
        reason,
    };
    let p: f64 = v
        .trim_end_matches('%')
        .parse()
        .map_err(|_| err("not a number"))?;
    if !(0.0..=100.0).contains(&p) {
        return Err(err("a percentage must be within 0..=100"));
    }
    Ok(p)
}

fn ms(key: &str, v: &str) -> Result<f64, ImpairError> {
    let x: f64 = v.parse().map_err(|_| ImpairError {
        key: key.into(),
        value: v.into(),
        reason: "not a number of milliseconds",
    })?;
    if !(x.is_finite() && x >= 0.0) {
        return Err(ImpairError {
            key: key.into(),
            value: v.into(),
            reason: "must be ≥ 0 ms",
        });
    }
    Ok(x)
}

impl ImpairSpec {
    /// Apply one `key=value` pair (key from [`KEYS`]). `outage` accumulates.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ImpairError> {
        let err = |reason| ImpairError {
            key: key.into(),
            value: value.into(),
            reason,
        };
        match key {
            "loss" => self.loss_pct = pct(key, value)?,
            "reorder" => self.reorder_pct = pct(key, value)?,
            "dup" => self.dup_pct = pct(key, value)?,
            "delay" => self.delay_ms = ms(key, value)?,
            "burst" => {
                let (p, l) = value
                    .split_once(':')
                    .ok_or_else(|| err("expected P:LEN or P:~MEAN"))?;
                let len = match l.strip_prefix('~') {
                    Some(m) => {
                        let m: f64 = m
                            .parse()
                            .map_err(|_| err("mean burst length is not a number"))?;
                        if !(m >= 1.0 && m.is_finite()) {
                            return Err(err("mean burst length must be ≥ 1"));
                        }
                        BurstLen::Mean(m)
                    }
                    None => BurstLen::Fixed(
                        l.parse()
                            .ok()
                            .filter(|&n| n >= 1)
                            .ok_or_else(|| err("burst length must be an integer ≥ 1"))?,
                    ),
                };
                self.burst = Some((pct(key, p)?, len));
            }
            "outage" => {
                for w in value.split(',').filter(|w| !w.is_empty()) {
                    let (s, d) = w
                        .split_once('+')
                        .ok_or_else(|| err("expected START_MS+DURATION_MS[,…]"))?;
                    self.outages_ms.push((ms(key, s)?, ms(key, d)?));
                }
            }
            _ => return Err(err("unknown impairment")),
        }
        Ok(())
    }

    pub fn is_none(&self) -> bool {
        *self == ImpairSpec::default()
    }
}

impl std::fmt::Display for ImpairSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if self.loss_pct > 0.0 {
            parts.push(format!("loss={}", self.loss_pct));
        }
        match self.burst {
            Some((p, BurstLen::Fixed(n))) => parts.push(format!("burst={p}:{n}")),
            Some((p, BurstLen::Mean(m))) => parts.push(format!("burst={p}:~{m}")),
            None => {}
        }
        if !self.outages_ms.is_empty() {
            let w: Vec<String> = self
                .outages_ms
                .iter()
                .map(|(s, d)| format!("{s}+{d}"))
                .collect();
            parts.push(format!("outage={}", w.join(",")));
        }
        if self.delay_ms > 0.0 {
            parts.push(format!("delay={}", self.delay_ms));
        }
        if self.reorder_pct > 0.0 {
            parts.push(format!("reorder={}", self.reorder_pct));
        }
        if self.dup_pct > 0.0 {
            parts.push(format!("dup={}", self.dup_pct));
        }
        f.write_str(&parts.join("&"))
    }
}

/// Seed of one leg's RNG stream for one kind of impairment (splitmix64 of the three).
pub fn stream_seed(seed: u64, leg: usize, kind: u64) -> u64 {
    let mut z = seed
        ^ (leg as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ kind.wrapping_mul(0xd1b5_4a32_d192_ed03);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Datagram indices to transmit now, in order (at most 4: a held one, the current one, and
/// their duplicates).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Emit {
    buf: [u64; 4],
    len: usize,
}

impl Emit {
    fn push(&mut self, i: u64) {
        self.buf[self.len] = i;
        self.len += 1;
    }
    pub fn as_slice(&self) -> &[u64] {
        &self.buf[..self.len]
    }
}

/// What happened on one leg. Index lists are filled only when `record` was asked for.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LegStats {
    pub dropped: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub dropped_indices: Vec<u64>,
    pub duplicated_indices: Vec<u64>,
    pub reordered_indices: Vec<u64>,
}

/// The impairment state machine of one leg.
pub struct LegImpairment {
    spec: ImpairSpec,
    outages_ticks: Vec<(u64, u64)>,
    loss: fastrand::Rng,
    burst: fastrand::Rng,
    dup: fastrand::Rng,
    reorder: fastrand::Rng,
    burst_left: u64,
    held: Option<(u64, bool)>,
    record: bool,
    pub stats: LegStats,
}

impl LegImpairment {
    /// `record`: keep the index lists (for `--report`), not just the counts.
    pub fn new(spec: ImpairSpec, seed: u64, leg: usize, record: bool) -> LegImpairment {
        let to_ticks = |ms: f64| (ms * PCR_HZ as f64 / 1000.0).round() as u64;
        let outages_ticks = spec
            .outages_ms
            .iter()
            .map(|&(s, d)| (to_ticks(s), to_ticks(s) + to_ticks(d)))
            .collect();
        LegImpairment {
            outages_ticks,
            loss: fastrand::Rng::with_seed(stream_seed(seed, leg, 1)),
            burst: fastrand::Rng::with_seed(stream_seed(seed, leg, 2)),
            dup: fastrand::Rng::with_seed(stream_seed(seed, leg, 3)),
            reorder: fastrand::Rng::with_seed(stream_seed(seed, leg, 4)),
            burst_left: 0,
            held: None,
            record,
            stats: LegStats::default(),
            spec,
        }
    }

    pub fn spec(&self) -> &ImpairSpec {
        &self.spec
    }

    fn chance(rng: &mut fastrand::Rng, pct: f64) -> bool {
        pct > 0.0 && rng.f64() * 100.0 < pct
    }

    /// Decide the fate of datagram `index` (stream time `ticks`, 27 MHz from the start of
    /// the send); indices must come in increasing order. Returns what to transmit now.
    pub fn push(&mut self, index: u64, ticks: u64) -> Emit {
        // Every RNG is drawn on every datagram so that each pattern depends only on the
        // seed and the index, never on the other impairments.
        let lost_random = Self::chance(&mut self.loss, self.spec.loss_pct);
        let mut lost_burst = false;
        if self.burst_left > 0 {
            self.burst_left -= 1;
            lost_burst = true;
        } else if let Some((p, len)) = self.spec.burst
            && Self::chance(&mut self.burst, p)
        {
            let n = match len {
                BurstLen::Fixed(n) => u64::from(n),
                BurstLen::Mean(m) => {
                    // Geometric on {1, 2, …} with mean m: P(continue) = 1 - 1/m.
                    let q = 1.0 - 1.0 / m;
                    let mut n = 1;
                    while n < 1_000_000 && self.burst.f64() < q {
                        n += 1;
                    }
                    n
                }
            };
            self.burst_left = n - 1;
            lost_burst = true;
        }
        let in_outage = self
            .outages_ticks
            .iter()
            .any(|&(s, e)| ticks >= s && ticks < e);
        let dup = Self::chance(&mut self.dup, self.spec.dup_pct);
        let reorder = Self::chance(&mut self.reorder, self.spec.reorder_pct);

        let mut out = Emit::default();
        if lost_random || lost_burst || in_outage {
            self.stats.dropped += 1;
            if self.record {
                self.stats.dropped_indices.push(index);
            }
            return out;
        }
        if dup {
            self.stats.duplicated += 1;
            if self.record {
                self.stats.duplicated_indices.push(index);
            }
        }
        if let Some((h, hdup)) = self.held.take() {
            // Send this one, then the one held back for it.
            out.push(index);
            if dup {
                out.push(index);
            }
            out.push(h);
            if hdup {
                out.push(h);
            }
        } else if reorder {
            self.stats.reordered += 1;
            if self.record {
                self.stats.reordered_indices.push(index);
            }
            self.held = Some((index, dup));
        } else {
            out.push(index);
            if dup {
                out.push(index);
            }
        }
        out
    }

    /// End of the send: release a datagram still held for reordering.
    pub fn finish(&mut self) -> Emit {
        let mut out = Emit::default();
        if let Some((h, hdup)) = self.held.take() {
            out.push(h);
            if hdup {
                out.push(h);
            }
        }
        out
    }
}

/// Indices present in every sorted list (datagrams lost on all legs).
pub fn lost_on_all(lists: &[&[u64]]) -> Vec<u64> {
    let Some((first, rest)) = lists.split_first() else {
        return Vec::new();
    };
    first
        .iter()
        .copied()
        .filter(|i| rest.iter().all(|l| l.binary_search(i).is_ok()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(q: &str) -> ImpairSpec {
        let mut s = ImpairSpec::default();
        for kv in q.split('&') {
            let (k, v) = kv.split_once('=').unwrap();
            s.set(k, v).unwrap();
        }
        s
    }

    /// Run `n` datagrams at 1 ms each; return the transmitted order.
    fn run(s: &ImpairSpec, seed: u64, leg: usize, n: u64) -> (Vec<u64>, LegStats) {
        let mut imp = LegImpairment::new(s.clone(), seed, leg, true);
        let mut sent = Vec::new();
        for i in 0..n {
            sent.extend_from_slice(imp.push(i, i * 27_000).as_slice());
        }
        sent.extend_from_slice(imp.finish().as_slice());
        (sent, imp.stats)
    }

    #[test]
    fn parses_and_prints_the_syntax() {
        let s = spec("loss=2&burst=0.1:8&outage=3000+1500,9000+10&delay=30&reorder=0.5&dup=0.5");
        assert_eq!(s.loss_pct, 2.0);
        assert_eq!(s.burst, Some((0.1, BurstLen::Fixed(8))));
        assert_eq!(s.outages_ms, vec![(3000.0, 1500.0), (9000.0, 10.0)]);
        assert_eq!(s.delay_ms, 30.0);
        assert_eq!(
            s.to_string(),
            "loss=2&burst=0.1:8&outage=3000+1500,9000+10&delay=30&reorder=0.5&dup=0.5"
        );
        assert_eq!(spec("burst=1:~4").burst, Some((1.0, BurstLen::Mean(4.0))));
        let mut e = ImpairSpec::default();
        assert!(e.set("loss", "101").is_err());
        assert!(e.set("loss", "x").is_err());
        assert!(e.set("burst", "1").is_err());
        assert!(e.set("burst", "1:0").is_err());
        assert!(e.set("outage", "100").is_err());
        assert!(e.set("delay", "-1").is_err());
        assert!(e.is_none());
    }

    #[test]
    fn same_seed_same_drops_other_seed_or_leg_differs() {
        let s = spec("loss=5&burst=0.5:~6&reorder=1&dup=1");
        assert_eq!(run(&s, 7, 0, 20_000), run(&s, 7, 0, 20_000));
        assert_ne!(
            run(&s, 7, 0, 20_000).1.dropped_indices,
            run(&s, 8, 0, 20_000).1.dropped_indices
        );
        assert_ne!(
            run(&s, 7, 0, 20_000).1.dropped_indices,
            run(&s, 7, 1, 20_000).1.dropped_indices
        );
    }

    #[test]
    fn loss_rate_is_near_the_requested_percentage() {
        let (_, st) = run(&spec("loss=2"), 1, 0, 100_000);
        let rate = st.dropped as f64 / 100_000.0;
        assert!((rate - 0.02).abs() < 0.002, "rate {rate}");
        // Burst: 0.5% chance × mean 8 ≈ 3.8% lost (bursts can't start inside a burst).
        let (_, st) = run(&spec("burst=0.5:~8"), 1, 0, 200_000);
        let rate = st.dropped as f64 / 200_000.0;
        assert!((0.03..0.046).contains(&rate), "burst rate {rate}");
    }

    #[test]
    fn fixed_bursts_are_runs_of_that_length() {
        let (_, st) = run(&spec("burst=1:8"), 3, 0, 50_000);
        assert_eq!(st.dropped % 8, 0);
        for run in st.dropped_indices.chunks(8) {
            assert_eq!(run[7] - run[0], 7);
        }
    }

    #[test]
    fn outage_window_is_exact() {
        // 1 ms per datagram: [3000, 4500) ms drops indices 3000..4500, nothing else.
        let (sent, st) = run(&spec("outage=3000+1500"), 1, 0, 6000);
        assert_eq!(st.dropped_indices, (3000..4500).collect::<Vec<u64>>());
        assert_eq!(sent.len(), 4500);
    }

    #[test]
    fn reorder_swaps_with_the_next_and_dup_repeats() {
        let (sent, st) = run(&spec("reorder=10"), 2, 0, 1000);
        assert_eq!(sent.len(), 1000);
        let mut sorted = sent.clone();
        sorted.sort();
        assert_eq!(sorted, (0..1000).collect::<Vec<u64>>());
        for &r in &st.reordered_indices {
            let p = sent.iter().position(|&x| x == r).unwrap();
            if r < 999 {
                assert_eq!(sent[p - 1], r + 1, "{r} not sent right after {}", r + 1);
            }
        }
        assert!(st.reordered > 50);
        let (sent, st) = run(&spec("dup=10"), 2, 0, 1000);
        assert_eq!(sent.len() as u64, 1000 + st.duplicated);
        for &d in &st.duplicated_indices {
            let p = sent.iter().position(|&x| x == d).unwrap();
            assert_eq!(sent[p + 1], d);
        }
    }

    #[test]
    fn loss_pattern_does_not_move_when_other_impairments_are_added() {
        let a = run(&spec("loss=3"), 5, 1, 10_000).1.dropped_indices;
        let b = run(&spec("loss=3&dup=5&reorder=5"), 5, 1, 10_000)
            .1
            .dropped_indices;
        assert_eq!(a, b);
    }

    #[test]
    fn lost_on_all_is_the_intersection() {
        assert_eq!(
            lost_on_all(&[&[1, 3, 5, 7], &[3, 4, 7], &[0, 3, 7, 9]]),
            vec![3, 7]
        );
        assert_eq!(lost_on_all(&[&[1, 2]]), vec![1, 2]);
        assert!(lost_on_all(&[]).is_empty());
    }
}
