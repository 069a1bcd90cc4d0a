//! The windowed sampler of one failover rule: time cut into consecutive windows of
//! `sample_duration` aligned to when the rule started, a bitmap of which completed windows were
//! in error, and the "`threshold` of the last `samples`" verdict (ZEN Master failover rules:
//! sample duration, samples, samples threshold).
//!
//! Sans-IO: the caller says when windows close and whether they were in error; the sampler only
//! does the window arithmetic and keeps the history. Memory is constant (a `u128` bitmap).

use std::time::{Duration, Instant};

/// Largest `samples` a rule may look back over (the history is a `u128` bitmap).
pub const MAX_SAMPLES: u32 = 128;

/// In-error history of one rule. Window `k` covers `[origin + k·d, origin + (k+1)·d)`: an
/// instant exactly on a boundary belongs to the window that starts there.
#[derive(Clone, Debug)]
pub struct Sampler {
    origin: Instant,
    duration: Duration,
    samples: u32,
    threshold: u32,
    /// Index of the open (not yet completed) window.
    open: u64,
    /// Completed windows, bit 0 the most recent; only the low `samples` bits are meaningful.
    history: u128,
    /// Completed windows so far, saturating at `samples` (how much of `history` is real).
    completed: u32,
}

impl Sampler {
    /// A sampler whose first window opens at `origin`. `duration` is raised to 1 ms, `samples`
    /// clamped to `1..=MAX_SAMPLES` and `threshold` to `1..=samples` (the config validates
    /// them first; this only keeps the arithmetic sound).
    pub fn new(origin: Instant, duration: Duration, samples: u32, threshold: u32) -> Sampler {
        let samples = samples.clamp(1, MAX_SAMPLES);
        Sampler {
            origin,
            duration: duration.max(Duration::from_millis(1)),
            samples,
            threshold: threshold.clamp(1, samples),
            open: 0,
            history: 0,
            completed: 0,
        }
    }

    /// End of the open window: the next instant at which [`due`](Sampler::due) becomes ≥ 1.
    pub fn window_end(&self) -> Instant {
        let n = self.duration.as_nanos() * (u128::from(self.open) + 1);
        self.origin + duration_from_nanos(n)
    }

    /// Start of the open window.
    pub fn window_start(&self) -> Instant {
        let n = self.duration.as_nanos() * u128::from(self.open);
        self.origin + duration_from_nanos(n)
    }

    /// Windows that have completed by `now` and not been closed yet (0 before the open window
    /// ends; more than 1 when the caller is late).
    pub fn due(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.origin).as_nanos();
        let index = u64::try_from(elapsed / self.duration.as_nanos()).unwrap_or(u64::MAX);
        index.saturating_sub(self.open)
    }

    /// Close `n` windows (`n ≥ 1`; 0 is a no-op): the open one with `first_in_error`, the
    /// `n − 1` after it (skipped by a late caller) with `rest_in_error`.
    pub fn close(&mut self, n: u64, first_in_error: bool, rest_in_error: bool) {
        if n == 0 {
            return;
        }
        self.push(first_in_error);
        let rest = n - 1;
        if rest >= u64::from(MAX_SAMPLES) {
            self.history = if rest_in_error { u128::MAX } else { 0 };
        } else if rest > 0 {
            self.history <<= rest;
            if rest_in_error {
                self.history |= (1u128 << rest) - 1;
            }
        }
        self.completed = u32::try_from(u64::from(self.completed).saturating_add(rest))
            .unwrap_or(u32::MAX)
            .min(self.samples);
        self.open = self.open.saturating_add(n);
    }

    fn push(&mut self, in_error: bool) {
        self.history = (self.history << 1) | u128::from(in_error);
        self.completed = (self.completed + 1).min(self.samples);
    }

    /// Completed windows in error among the last `samples`.
    pub fn in_error(&self) -> u32 {
        (self.history & self.mask()).count_ones()
    }

    /// At least `threshold` of the last `samples` completed windows were in error.
    pub fn failing(&self) -> bool {
        self.in_error() >= self.threshold
    }

    /// The last completed windows (at most `samples`), oldest first: `true` = in error.
    pub fn recent(&self) -> Vec<bool> {
        (0..self.completed)
            .rev()
            .map(|i| self.history >> i & 1 == 1)
            .collect()
    }

    /// Completed windows so far, saturating at `samples`.
    pub fn completed(&self) -> u32 {
        self.completed
    }

    pub fn duration(&self) -> Duration {
        self.duration
    }

    pub fn samples(&self) -> u32 {
        self.samples
    }

    pub fn threshold(&self) -> u32 {
        self.threshold
    }

    fn mask(&self) -> u128 {
        if self.samples >= 128 {
            u128::MAX
        } else {
            (1u128 << self.samples) - 1
        }
    }
}

fn duration_from_nanos(n: u128) -> Duration {
    const NS: u128 = 1_000_000_000;
    let secs = u64::try_from(n / NS).unwrap_or(u64::MAX);
    // The remainder is < 10⁹, so it fits in u32.
    Duration::new(secs, (n % NS) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::disallowed_methods)]
    fn base() -> Instant {
        Instant::now()
    }

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn windows_align_to_origin_and_boundaries_open_the_next_window() {
        let t0 = base();
        let s = Sampler::new(t0, 10 * S, 6, 2);
        assert_eq!(s.window_end(), t0 + 10 * S);
        assert_eq!(s.due(t0 + 10 * S - Duration::from_nanos(1)), 0);
        assert_eq!(s.due(t0 + 10 * S), 1);
        assert_eq!(s.due(t0 + 35 * S), 3);
    }

    #[test]
    fn threshold_of_last_samples() {
        let t0 = base();
        let mut s = Sampler::new(t0, S, 3, 2);
        s.close(1, true, false);
        assert!(!s.failing());
        s.close(1, false, false);
        s.close(1, true, false);
        assert!(s.failing());
        assert_eq!(s.recent(), vec![true, false, true]);
        s.close(1, false, false); // the first error ages out
        assert!(!s.failing());
        assert_eq!(s.window_start(), t0 + 4 * S);
    }

    #[test]
    fn skipping_many_windows() {
        let t0 = base();
        let mut s = Sampler::new(t0, S, 128, 128);
        s.close(500, false, true);
        assert_eq!(s.in_error(), 128);
        assert!(s.failing());
        s.close(3, false, false);
        assert_eq!(s.in_error(), 125);
        let mut s = Sampler::new(t0, S, 4, 1);
        s.close(3, true, false);
        assert_eq!(s.recent(), vec![true, false, false]);
        assert_eq!(s.completed(), 3);
    }
}
