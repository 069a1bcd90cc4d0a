//! Sampled failover rules (ZEN Master "Failover Rules": condition, sample duration, samples,
//! samples threshold, optional PID). Sans-IO: time is a parameter, inputs are cumulative
//! counters read through [`SourceMeter`] when a window closes, so the packet path does nothing
//! for the rules.
//!
//! # Semantics
//! - Time is cut into consecutive windows of `sample_duration`, aligned to the instant the rule
//!   started ([`SourceRules::new`]). Window `k` is `[start + k·d, start + (k+1)·d)`: something
//!   counted exactly on a boundary belongs to the window that starts there. The glue must call
//!   [`SourceRules::handle_timeout`] at [`SourceRules::poll_timeout`] before it feeds the meter
//!   anything that arrived at or after that instant.
//! - A window is *in error* when:
//!   - `p1-transport-errors`: at least one TR 101 290 priority-1 error was counted in it (only
//!     on `pid` when the rule has one);
//!   - `low-bitrate`: its average bitrate, bytes × 8 / duration, is below `min_kbps`
//!     (1 kbit/s = 1000 bit/s; exactly `min_kbps` is not low). Zero bytes is low bitrate;
//!   - `unrecovered-packets`: at least one packet was lost on every leg in it (content-merge
//!     channels only: the count is the content merger's continuity-counter gaps in the merged
//!     output, the same for every source of the channel, and grows only while the merged
//!     stream is the output; see `runtime::switch`). So `threshold` counts windows in which
//!     the merged output lost packets, like every counter condition, not packets;
//!   - `frozen-video`, `blank-picture`, `silent-audio` (and any condition, generically): the
//!     content analyser reported it present in that window through
//!     [`SourceRules::observe_condition`].
//! - A content rule is *unknown* while the analyser cannot judge its condition (a codec this
//!   build does not decode, no stream, no recent measurement; see [`cqa`]): it neither fails
//!   nor counts as healthy in the API, and [`SourceRules::failing`] skips it.
//! - A rule is *failing* when at least `threshold` of the last `samples` completed windows were
//!   in error, and healthy again as soon as fewer are (no extra hysteresis: the switch adds its
//!   own clear time). Before `samples` windows have completed, the completed ones count.
//! - **Late evaluation.** When `handle_timeout` comes after several boundaries, the counters
//!   read then cover all the windows since the previous evaluation and cannot be split:
//!   - error counters (p1, unrecovered) and flags put everything counted into the window that
//!     was open at the previous evaluation; the windows skipped after it count as *not* in error
//!     (nothing can be attributed to them);
//!   - low bitrate uses the average bitrate over the whole span since the previous evaluation
//!     for every window it covers. A source that sent nothing is therefore low in every skipped
//!     window (zero bytes is low bitrate, consistent with the on-time case), and a source that
//!     kept sending is not flagged just because the glue was late.

pub mod cqa;
pub mod sampler;
pub mod tr101290;

use std::time::{Duration, Instant};

use crate::ts::Pid;
use sampler::{MAX_SAMPLES, Sampler};

/// What a rule watches. Labels (TOML, API, metrics) are kebab-case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Condition {
    P1TransportErrors,
    LowBitrate,
    UnrecoveredPackets,
    FrozenVideo,
    BlankPicture,
    SilentAudio,
}

impl Condition {
    pub const ALL: [Condition; 6] = [
        Condition::P1TransportErrors,
        Condition::LowBitrate,
        Condition::UnrecoveredPackets,
        Condition::FrozenVideo,
        Condition::BlankPicture,
        Condition::SilentAudio,
    ];

    /// The value as written in TOML and used as a metric label.
    pub fn label(self) -> &'static str {
        match self {
            Condition::P1TransportErrors => "p1-transport-errors",
            Condition::LowBitrate => "low-bitrate",
            Condition::UnrecoveredPackets => "unrecovered-packets",
            Condition::FrozenVideo => "frozen-video",
            Condition::BlankPicture => "blank-picture",
            Condition::SilentAudio => "silent-audio",
        }
    }

    /// Position in [`Condition::ALL`], for fixed-size counter arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// Whether this build can evaluate the condition (the content conditions through
    /// [`cqa`]).
    pub fn is_supported(self) -> bool {
        true
    }

    /// Judged by the content analyser ([`cqa`]).
    pub fn is_content(self) -> bool {
        matches!(
            self,
            Condition::FrozenVideo | Condition::BlankPicture | Condition::SilentAudio
        )
    }

    /// Whether a rule on this condition may be scoped to one PID.
    pub fn takes_pid(self) -> bool {
        !matches!(self, Condition::LowBitrate | Condition::UnrecoveredPackets)
    }
}

impl std::fmt::Display for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// One failover rule of a source, as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleSpec {
    pub condition: Condition,
    /// Length of one sample window (`sample_duration_s`).
    pub sample_duration: Duration,
    /// How many of the most recent completed windows are looked at (1..=128).
    pub samples: u32,
    /// Windows in error among the last `samples` that make the rule fail (1..=samples).
    pub threshold: u32,
    /// Only count errors on this PID (p1-transport-errors and the content conditions).
    pub pid: Option<Pid>,
    /// `low-bitrate` only, required there: windows averaging below this many kbit/s
    /// (1 kbit/s = 1000 bit/s) are in error.
    pub min_kbps: Option<u32>,
}

/// Why a [`RuleSpec`] cannot be used. The config module wraps it with the file position.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("condition `{0}` needs the content analyser, which this build does not have")]
    Unsupported(Condition),
    #[error("sample duration must be at least 1 ms")]
    SampleDuration,
    #[error("samples must be between 1 and {MAX_SAMPLES}, got {0}")]
    Samples(u32),
    #[error("threshold must be between 1 and samples ({samples}), got {threshold}")]
    Threshold { threshold: u32, samples: u32 },
    #[error("condition `{0}` cannot be scoped to a PID")]
    Pid(Condition),
    #[error("PID {0} is not a 13-bit PID")]
    PidRange(u16),
    #[error("`low-bitrate` needs min_kbps > 0")]
    MinKbpsMissing,
    #[error("min_kbps only applies to `low-bitrate`")]
    MinKbpsUnexpected,
}

impl RuleSpec {
    /// Check the spec.
    pub fn validate(&self) -> Result<(), RuleError> {
        if !self.condition.is_supported() {
            return Err(RuleError::Unsupported(self.condition));
        }
        if self.sample_duration < Duration::from_millis(1) {
            return Err(RuleError::SampleDuration);
        }
        if !(1..=MAX_SAMPLES).contains(&self.samples) {
            return Err(RuleError::Samples(self.samples));
        }
        if !(1..=self.samples).contains(&self.threshold) {
            return Err(RuleError::Threshold {
                threshold: self.threshold,
                samples: self.samples,
            });
        }
        if let Some(pid) = self.pid {
            if !self.condition.takes_pid() {
                return Err(RuleError::Pid(self.condition));
            }
            if pid.0 > 0x1fff {
                return Err(RuleError::PidRange(pid.0));
            }
        }
        match (self.condition, self.min_kbps) {
            (Condition::LowBitrate, None | Some(0)) => Err(RuleError::MinKbpsMissing),
            (Condition::LowBitrate, Some(_)) | (_, None) => Ok(()),
            (_, Some(_)) => Err(RuleError::MinKbpsUnexpected),
        }
    }
}

/// Cumulative counters of one source, read when a window closes. They only ever grow (a
/// counter that goes down is read as "nothing new").
pub trait SourceMeter {
    /// Bytes received (datagram payloads as received, headers included or not, consistently).
    fn bytes(&self) -> u64;
    /// TR 101 290 priority-1 errors, on `pid` only or on every PID when `None`.
    fn p1_errors(&self, pid: Option<Pid>) -> u64;
    /// Packets lost on every leg (not recovered by a merge).
    fn unrecovered(&self) -> u64;
}

/// One rule's state as shown by the API.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RuleStatus {
    pub condition: Condition,
    pub pid: Option<u16>,
    pub sample_duration_ms: u64,
    pub samples: u32,
    pub threshold: u32,
    /// Completed windows in error among the last `samples`.
    pub windows_in_error: u32,
    /// The last completed windows (at most `samples`), oldest first: `true` = in error.
    pub recent: Vec<bool>,
    pub failing: bool,
    /// `"healthy"`, `"failing"` or `"unknown"` (a content rule whose condition cannot be
    /// judged: it is then never failing).
    pub state: &'static str,
    /// Times the rule went from healthy to failing.
    pub failures: u64,
    /// `low-bitrate`: average bitrate of the last completed window in kbit/s.
    pub last_kbps: Option<u64>,
}

#[derive(Clone, Debug)]
struct Rule {
    spec: RuleSpec,
    sampler: Sampler,
    /// Counter value at `measured_from` (bytes, P1 errors or unrecovered packets).
    baseline: u64,
    /// When `baseline` was read: the previous evaluation (or the start).
    measured_from: Instant,
    /// The condition was observed present in the open window.
    flagged: bool,
    failing: bool,
    /// The content analyser cannot judge the condition now.
    unknown: bool,
    failures: u64,
    last_kbps: Option<u64>,
}

impl Rule {
    fn has_counter(&self) -> bool {
        matches!(
            self.spec.condition,
            Condition::P1TransportErrors | Condition::LowBitrate | Condition::UnrecoveredPackets
        )
    }

    fn read(&self, meter: &impl SourceMeter) -> Option<u64> {
        match self.spec.condition {
            Condition::P1TransportErrors => Some(meter.p1_errors(self.spec.pid)),
            Condition::LowBitrate => Some(meter.bytes()),
            Condition::UnrecoveredPackets => Some(meter.unrecovered()),
            Condition::FrozenVideo | Condition::BlankPicture | Condition::SilentAudio => None,
        }
    }

    /// Close the `n ≥ 1` windows completed by `now`; `value` is the counter read at `now`
    /// (`None` for flag-only conditions).
    fn close(&mut self, now: Instant, n: u64, value: Option<u64>) {
        let (first, rest) = match (self.spec.condition, value) {
            (Condition::LowBitrate, Some(v)) => {
                let bytes = v.saturating_sub(self.baseline);
                let span = now.saturating_duration_since(self.measured_from).as_nanos();
                let min = u128::from(self.spec.min_kbps.unwrap_or(0));
                // bits / seconds < min_kbps · 1000  ⇔  bits · 10⁹ < min_kbps · 1000 · ns
                let bits_ns = u128::from(bytes) * 8 * 1_000_000_000;
                let low = bits_ns < min * 1000 * span;
                self.last_kbps =
                    (span > 0).then(|| u64::try_from(bits_ns / span / 1000).unwrap_or(u64::MAX));
                (low || self.flagged, low)
            }
            (_, Some(v)) => (v.saturating_sub(self.baseline) > 0 || self.flagged, false),
            (_, None) => (self.flagged, false),
        };
        if let Some(v) = value {
            self.baseline = v;
        }
        self.measured_from = now;
        self.flagged = false;
        self.sampler.close(n, first, rest);
        let failing = self.sampler.failing();
        if failing && !self.failing {
            self.failures += 1;
        }
        self.failing = failing;
    }
}

/// All rules of one source. Drive it with [`handle_timeout`](SourceRules::handle_timeout) at
/// [`poll_timeout`](SourceRules::poll_timeout) (every window boundary), then read
/// [`failing`](SourceRules::failing) and hand it to the switch.
#[derive(Clone, Debug)]
pub struct SourceRules {
    rules: Vec<Rule>,
}

impl SourceRules {
    /// Start every rule's first window at `now`. Specs should have passed
    /// [`RuleSpec::validate`] (content conditions excepted); out-of-range numbers are clamped.
    /// Counter baselines are zero: the meter is expected to start counting at `now` too.
    pub fn new(now: Instant, specs: &[RuleSpec]) -> SourceRules {
        SourceRules {
            rules: specs
                .iter()
                .map(|spec| Rule {
                    spec: spec.clone(),
                    sampler: Sampler::new(now, spec.sample_duration, spec.samples, spec.threshold),
                    baseline: 0,
                    measured_from: now,
                    flagged: false,
                    failing: false,
                    unknown: false,
                    failures: 0,
                    last_kbps: None,
                })
                .collect(),
        }
    }

    /// Close every window that has ended by `now`, reading the meter once per rule that has
    /// one to close (see the module docs for a late call). Harmless to call early or often.
    /// Afterwards re-read [`failing`](SourceRules::failing) and `poll_timeout`.
    pub fn handle_timeout(&mut self, now: Instant, meter: &impl SourceMeter) {
        for r in &mut self.rules {
            let n = r.sampler.due(now);
            if n > 0 {
                let value = r.read(meter);
                r.close(now, n, value);
            }
        }
    }

    /// The content analyser's verdict for `condition` at `now`, for every rule on that
    /// condition. `present` marks the window containing `now` in error; `false` changes
    /// nothing (a window is clean unless something was seen in it). Flag-only rules (the
    /// content conditions) first close the windows that ended before `now`; counter rules close
    /// windows only in `handle_timeout`, so call that first when both are due.
    pub fn observe_condition(&mut self, now: Instant, condition: Condition, present: bool) {
        self.observe(now, condition, None, present);
    }

    /// [`observe_condition`](SourceRules::observe_condition) for one PID: only rules on
    /// `condition` scoped to `pid`, or not scoped at all, take it.
    pub fn observe_condition_on_pid(
        &mut self,
        now: Instant,
        condition: Condition,
        pid: Pid,
        present: bool,
    ) {
        self.observe(now, condition, Some(pid), present);
    }

    fn observe(&mut self, now: Instant, condition: Condition, pid: Option<Pid>, present: bool) {
        let applies = |r: &Rule| {
            r.spec.condition == condition
                && match (r.spec.pid, pid) {
                    (None, _) => true,
                    (Some(want), Some(got)) => want == got,
                    // An unscoped observation does not say which PID it was on.
                    (Some(_), None) => false,
                }
        };
        for r in self.rules.iter_mut().filter(|r| applies(r)) {
            let n = r.sampler.due(now);
            if n > 0 && !r.has_counter() {
                r.close(now, n, None);
            }
            r.flagged |= present;
        }
    }

    /// Mark content rules unknown (or known again): `unknown(condition, pid)` is asked for
    /// every content rule. An unknown rule is skipped by [`failing`](SourceRules::failing);
    /// its windows go on being sampled from what is observed.
    pub fn set_unknown(&mut self, unknown: impl Fn(Condition, Option<Pid>) -> bool) {
        for r in self
            .rules
            .iter_mut()
            .filter(|r| r.spec.condition.is_content())
        {
            r.unknown = unknown(r.spec.condition, r.spec.pid);
        }
    }

    /// Whether any rule needs the content analyser.
    pub fn has_content_rules(&self) -> bool {
        self.rules.iter().any(|r| r.spec.condition.is_content())
    }

    /// The next window boundary of any rule; `None` without rules.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.rules.iter().map(|r| r.sampler.window_end()).min()
    }

    /// The condition of the first failing rule, in configuration order.
    pub fn failing(&self) -> Option<Condition> {
        self.rules
            .iter()
            .find(|r| r.failing && !r.unknown)
            .map(|r| r.spec.condition)
    }

    /// The condition of the first failing rule other than those on `skip`, in configuration
    /// order.
    pub fn failing_except(&self, skip: Condition) -> Option<Condition> {
        self.rules
            .iter()
            .find(|r| r.failing && !r.unknown && r.spec.condition != skip)
            .map(|r| r.spec.condition)
    }

    /// Whether a rule on `condition` is failing.
    pub fn is_failing(&self, condition: Condition) -> bool {
        self.rules
            .iter()
            .any(|r| r.failing && !r.unknown && r.spec.condition == condition)
    }

    /// Every rule's state, in configuration order.
    pub fn status(&self) -> Vec<RuleStatus> {
        self.rules
            .iter()
            .map(|r| RuleStatus {
                condition: r.spec.condition,
                pid: r.spec.pid.map(|p| p.0),
                sample_duration_ms: u64::try_from(r.sampler.duration().as_millis())
                    .unwrap_or(u64::MAX),
                samples: r.sampler.samples(),
                threshold: r.sampler.threshold(),
                windows_in_error: r.sampler.in_error(),
                recent: r.sampler.recent(),
                failing: r.failing && !r.unknown,
                state: match (r.unknown, r.failing) {
                    (true, _) => "unknown",
                    (false, true) => "failing",
                    (false, false) => "healthy",
                },
                failures: r.failures,
                last_kbps: r.last_kbps,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one real clock reading of these tests: every other time is `base() + Duration`.
    #[allow(clippy::disallowed_methods)]
    fn base() -> Instant {
        Instant::now()
    }

    const S: Duration = Duration::from_secs(1);
    const MS: Duration = Duration::from_millis(1);

    #[derive(Default)]
    struct Meter {
        bytes: u64,
        p1: Vec<(Pid, u64)>,
        unrecovered: u64,
    }

    impl Meter {
        fn p1_on(&mut self, pid: u16) {
            match self.p1.iter_mut().find(|(p, _)| p.0 == pid) {
                Some((_, n)) => *n += 1,
                None => self.p1.push((Pid(pid), 1)),
            }
        }
    }

    impl SourceMeter for Meter {
        fn bytes(&self) -> u64 {
            self.bytes
        }
        fn p1_errors(&self, pid: Option<Pid>) -> u64 {
            self.p1
                .iter()
                .filter(|(p, _)| pid.is_none_or(|want| want == *p))
                .map(|(_, n)| n)
                .sum()
        }
        fn unrecovered(&self) -> u64 {
            self.unrecovered
        }
    }

    fn spec(condition: Condition, secs: u64, samples: u32, threshold: u32) -> RuleSpec {
        RuleSpec {
            condition,
            sample_duration: Duration::from_secs(secs),
            samples,
            threshold,
            pid: None,
            min_kbps: (condition == Condition::LowBitrate).then_some(1000),
        }
    }

    /// Fire every timeout up to and including `until`, as the glue's timer would.
    fn run_until(rules: &mut SourceRules, meter: &Meter, until: Instant) {
        while let Some(t) = rules.poll_timeout().filter(|t| *t <= until) {
            rules.handle_timeout(t, meter);
        }
    }

    fn recent(rules: &SourceRules) -> Vec<bool> {
        rules.status()[0].recent.clone()
    }

    #[test]
    fn reference_example_two_of_six_ten_second_windows() {
        let t0 = base();
        let mut rules = SourceRules::new(t0, &[spec(Condition::P1TransportErrors, 10, 6, 2)]);
        let mut m = Meter::default();
        assert_eq!(rules.poll_timeout(), Some(t0 + 10 * S));
        // Window 0 (0–10 s): two errors, still one window in error.
        run_until(&mut rules, &m, t0 + 3 * S);
        m.p1_on(0x100);
        m.p1_on(0x100);
        run_until(&mut rules, &m, t0 + 35 * S);
        assert_eq!(recent(&rules), [true, false, false]);
        assert_eq!(rules.failing(), None, "1 of 6 windows in error");
        // Window 3 (30–40 s): the second window in error → failing when it closes at 40 s.
        m.p1_on(0x101);
        run_until(&mut rules, &m, t0 + 40 * S - MS);
        assert_eq!(rules.failing(), None);
        run_until(&mut rules, &m, t0 + 40 * S);
        assert_eq!(rules.failing(), Some(Condition::P1TransportErrors));
        assert_eq!(rules.status()[0].windows_in_error, 2);
        assert!(rules.status()[0].failing);
        // Window 0 ages out when window 6 (60–70 s) completes: last six are windows 1..=6.
        run_until(&mut rules, &m, t0 + 70 * S - MS);
        assert_eq!(rules.failing(), Some(Condition::P1TransportErrors));
        run_until(&mut rules, &m, t0 + 70 * S);
        assert_eq!(rules.failing(), None);
        assert_eq!(recent(&rules), [false, false, true, false, false, false]);
        assert_eq!(rules.status()[0].failures, 1);
    }

    #[test]
    fn threshold_equal_to_samples_needs_every_window() {
        let t0 = base();
        let mut rules = SourceRules::new(t0, &[spec(Condition::UnrecoveredPackets, 1, 3, 3)]);
        let mut m = Meter::default();
        for k in 0..3 {
            m.unrecovered += 1;
            run_until(&mut rules, &m, t0 + (k + 1) * S);
            assert_eq!(rules.failing().is_some(), k == 2, "after window {k}");
        }
        run_until(&mut rules, &m, t0 + 4 * S); // one clean window
        assert_eq!(rules.failing(), None);
        m.unrecovered += 5;
        run_until(&mut rules, &m, t0 + 5 * S);
        assert_eq!(rules.failing(), None, "2 of the last 3");
    }

    #[test]
    fn error_on_a_boundary_belongs_to_the_next_window() {
        let t0 = base();
        let mut rules = SourceRules::new(t0, &[spec(Condition::P1TransportErrors, 10, 6, 1)]);
        let mut m = Meter::default();
        // 1 ns before the boundary: window 0.
        run_until(&mut rules, &m, t0 + 10 * S - Duration::from_nanos(1));
        m.p1_on(0);
        // Exactly on the boundary: the timer fires first, then the error is counted → window 1.
        run_until(&mut rules, &m, t0 + 10 * S);
        m.p1_on(0);
        assert_eq!(recent(&rules), [true]);
        run_until(&mut rules, &m, t0 + 20 * S);
        assert_eq!(recent(&rules), [true, true]);
        run_until(&mut rules, &m, t0 + 30 * S);
        assert_eq!(recent(&rules), [true, true, false]);
    }

    #[test]
    fn pid_scope_ignores_other_pids() {
        let t0 = base();
        let scoped = RuleSpec {
            pid: Some(Pid(0x100)),
            ..spec(Condition::P1TransportErrors, 1, 2, 1)
        };
        let mut rules = SourceRules::new(t0, &[scoped]);
        let mut m = Meter::default();
        m.p1_on(0x101);
        m.p1_on(0x0);
        run_until(&mut rules, &m, t0 + S);
        assert_eq!(rules.failing(), None, "errors on other PIDs do not count");
        m.p1_on(0x100);
        run_until(&mut rules, &m, t0 + 2 * S);
        assert_eq!(rules.failing(), Some(Condition::P1TransportErrors));
        assert_eq!(recent(&rules), [false, true]);
        assert_eq!(rules.status()[0].pid, Some(0x100));
    }

    #[test]
    fn low_bitrate_just_below_at_and_above_min_kbps() {
        let t0 = base();
        // 1 s windows, 1000 kbit/s = 125,000 bytes per window; one window decides.
        let mut rules = SourceRules::new(t0, &[spec(Condition::LowBitrate, 1, 1, 1)]);
        let mut m = Meter::default();
        let cases = [
            (125_000, false),
            (124_999, true),
            (125_001, false),
            (0, true),
            (125_000, false),
        ];
        for (k, (bytes, low)) in cases.into_iter().enumerate() {
            m.bytes += bytes;
            run_until(&mut rules, &m, t0 + (k as u32 + 1) * S);
            assert_eq!(rules.failing().is_some(), low, "{bytes} bytes in 1 s");
        }
        assert_eq!(rules.status()[0].last_kbps, Some(1000));
    }

    #[test]
    fn late_timeout_skipping_windows() {
        let t0 = base();
        let mut rules = SourceRules::new(
            t0,
            &[
                spec(Condition::P1TransportErrors, 1, 6, 6),
                spec(Condition::LowBitrate, 1, 6, 6),
            ],
        );
        let mut m = Meter::default();
        // The glue sleeps through 3.5 windows; the source kept sending 2 Mbit/s and had one
        // error. Errors go to the window open at the previous evaluation, skipped windows are
        // clean; the bitrate is averaged over the whole span.
        m.p1_on(0);
        m.bytes = 875_000; // 3.5 s × 250,000 B/s
        rules.handle_timeout(t0 + 3500 * MS, &m);
        let st = rules.status();
        assert_eq!(st[0].recent, [true, false, false]);
        assert_eq!(st[1].recent, [false, false, false]);
        assert_eq!(st[1].last_kbps, Some(2000));
        assert_eq!(
            rules.poll_timeout(),
            Some(t0 + 4 * S),
            "boundaries stay aligned to t0"
        );
        // Then the source goes silent and the glue is late again: zero bytes is low bitrate in
        // every window the evaluation covers.
        rules.handle_timeout(t0 + 7 * S, &m);
        let st = rules.status();
        // Windows 3..=6 closed: the error of window 0 has aged out of the last six.
        assert_eq!(st[0].recent, [false; 6]);
        assert_eq!(st[1].recent, [false, false, true, true, true, true]);
        rules.handle_timeout(t0 + 100 * S, &m);
        assert_eq!(rules.failing(), Some(Condition::LowBitrate));
        assert_eq!(rules.status()[1].windows_in_error, 6);
    }

    #[test]
    fn content_conditions_as_per_window_flags() {
        let t0 = base();
        let mut rules = SourceRules::new(
            t0,
            &[
                spec(Condition::FrozenVideo, 1, 3, 2),
                RuleSpec {
                    pid: Some(Pid(0x44)),
                    ..spec(Condition::SilentAudio, 1, 3, 1)
                },
            ],
        );
        rules.observe_condition(t0 + 500 * MS, Condition::FrozenVideo, true);
        rules.observe_condition(t0 + 1200 * MS, Condition::FrozenVideo, false);
        rules.observe_condition(t0 + 2200 * MS, Condition::FrozenVideo, true);
        rules.observe_condition(t0 + 2300 * MS, Condition::SilentAudio, true); // which PID?
        rules.observe_condition_on_pid(t0 + 2400 * MS, Condition::SilentAudio, Pid(0x45), true);
        let m = Meter::default();
        run_until(&mut rules, &m, t0 + 3 * S);
        let st = rules.status();
        assert_eq!(st[0].recent, [true, false, true]);
        assert_eq!(rules.failing(), Some(Condition::FrozenVideo));
        assert_eq!(st[1].recent, [false, false, false]);
        rules.observe_condition_on_pid(t0 + 3100 * MS, Condition::SilentAudio, Pid(0x44), true);
        run_until(&mut rules, &m, t0 + 4 * S);
        assert!(rules.status()[1].failing);
    }

    #[test]
    fn unknown_content_rules_never_fail() {
        let t0 = base();
        let mut rules = SourceRules::new(
            t0,
            &[
                spec(Condition::BlankPicture, 1, 1, 1),
                spec(Condition::P1TransportErrors, 1, 1, 1),
            ],
        );
        assert!(rules.has_content_rules());
        rules.observe_condition(t0, Condition::BlankPicture, true);
        run_until(&mut rules, &Meter::default(), t0 + S);
        assert_eq!(rules.failing(), Some(Condition::BlankPicture));
        rules.set_unknown(|c, _| c == Condition::BlankPicture);
        assert_eq!(
            rules.failing(),
            None,
            "unknown: neither failing nor healthy"
        );
        let st = rules.status();
        assert_eq!((st[0].state, st[0].failing), ("unknown", false));
        assert_eq!(st[1].state, "healthy", "counter rules are never unknown");
        rules.set_unknown(|_, _| false);
        assert_eq!(rules.failing(), Some(Condition::BlankPicture));
        assert_eq!(rules.status()[0].state, "failing");
    }

    #[test]
    fn validation() {
        let ok = spec(Condition::P1TransportErrors, 10, 6, 2);
        assert_eq!(ok.validate(), Ok(()));
        assert_eq!(spec(Condition::LowBitrate, 1, 1, 1).validate(), Ok(()));
        assert_eq!(spec(Condition::BlankPicture, 10, 6, 2).validate(), Ok(()));
        assert!(matches!(
            spec(Condition::P1TransportErrors, 10, 6, 7).validate(),
            Err(RuleError::Threshold { .. })
        ));
        assert!(matches!(
            spec(Condition::P1TransportErrors, 10, 6, 0).validate(),
            Err(RuleError::Threshold { .. })
        ));
        assert_eq!(
            spec(Condition::P1TransportErrors, 10, 129, 2).validate(),
            Err(RuleError::Samples(129))
        );
        assert_eq!(
            spec(Condition::P1TransportErrors, 0, 6, 2).validate(),
            Err(RuleError::SampleDuration)
        );
        let no_min = RuleSpec {
            min_kbps: None,
            ..spec(Condition::LowBitrate, 1, 1, 1)
        };
        assert_eq!(no_min.validate(), Err(RuleError::MinKbpsMissing));
        let pid = RuleSpec {
            pid: Some(Pid(1)),
            ..spec(Condition::LowBitrate, 1, 1, 1)
        };
        assert_eq!(pid.validate(), Err(RuleError::Pid(Condition::LowBitrate)));
        let min = RuleSpec {
            min_kbps: Some(5),
            ..ok
        };
        assert_eq!(min.validate(), Err(RuleError::MinKbpsUnexpected));
    }

    #[test]
    fn status_serializes_with_labels() {
        let t0 = base();
        let rules = SourceRules::new(t0, &[spec(Condition::P1TransportErrors, 10, 6, 2)]);
        let v = serde_json::to_value(rules.status()).expect("serializable");
        assert_eq!(v[0]["condition"], "p1-transport-errors");
        assert_eq!(v[0]["sample_duration_ms"], 10_000);
        assert_eq!(v[0]["failing"], false);
        for c in Condition::ALL {
            assert_eq!(serde_json::to_value(c).expect("label"), c.label());
        }
    }
}
