//! Stream switch: a failover channel plays exactly one of its sources at a time, the best
//! healthy one by priority (ZEN Master failover channel: preferred > non-preferred > slate; the
//! zero bitrate / offline window; "automatically switch to preferred source"; live-event
//! stages). Unlike the 2022-7 merger the sources are treated as different streams: nothing is
//! merged, a datagram is forwarded when it comes from the active source.
//!
//! Sans-IO: no socket, no clock. Every entry point takes `now`; the glue forwards a datagram
//! when [`Switch::on_packet`] says so, feeds the rule engine's verdicts through
//! [`Switch::set_rule_state`] and arms a timer at [`Switch::poll_timeout`].
//!
//! # Semantics
//! - **Priority.** Preferred sources first, then non-preferred ones, then slates; within a role,
//!   configuration order.
//! - **Healthy** = online (a packet within `offline_window`; a source that never sent is not
//!   online) and no failing rule. **Eligible** = healthy, not held down and, after a hold-down,
//!   healthy again for `clear_time`.
//! - **Offline.** A source is offline from `last_packet + offline_window` (exactly: silent for
//!   the whole window). `handle_timeout` at that instant marks it and selects the next source,
//!   so the next datagram of the new source is forwarded: the output gap is the window plus at
//!   most one packet interval of the new source. `on_packet` also processes any timeout already
//!   due, so a late timer does not widen the gap. A datagram of the source itself arriving at
//!   the deadline, before the timer ran, keeps it online.
//! - **Selection** (Live stage, no lock), at every change of state:
//!   - the active source fails (offline, failing rule): switch at once to the best eligible
//!     source (reason: why it failed), or to nothing if none is eligible;
//!   - nothing is active: take the best eligible source at once (`startup` the first time,
//!     `recovered` afterwards). At start this is simply the first source to send: a better one
//!     that shows up later wins like any recovering source, after `clear_time`;
//!   - the active source is eligible: stay, unless a higher-priority source has been eligible
//!     for `clear_time` continuously and either `auto_switch_to_preferred` is set or the active
//!     source is a slate (the slate is the last resort: it is always left for a real source
//!     that has stayed healthy for `clear_time`, whatever the setting). Reason
//!     `auto-switch-back`. With the setting off, the channel stays on a non-preferred source
//!     until it fails.
//! - **All down.** When no source is eligible the channel forwards nothing (`active()` is
//!   `None`): a failed source is never kept on air, and the slate is the designed last resort.
//! - **Hold-down.** A source that fails `holddown.failures` times within `holddown.period` is
//!   held down for `holddown.hold` ([`Event::HeldDown`]); its failure history is then cleared.
//!   When the hold ends it must be healthy for `clear_time` before it is eligible again.
//!   `failures == 0` or a zero `period` or `hold` disables hold-down.
//! - **Manual lock** plays the locked source whatever its health and whatever the stage, until
//!   `unlock`, which selects the best eligible source at once (reason `manual`).
//! - **Stages.** Pre-live and post-live play the first slate whatever the health of the
//!   sources (nothing if there is no slate); changing stage selects at once (reason `stage`),
//!   going live takes the best eligible source without waiting for `clear_time`.
//!
//! `on_packet` is O(1) and does not allocate unless the packet changes the source's state
//! (offline → online), or a timeout is due.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::LegId;
pub use crate::config::{HoldDownConfig as HoldDown, Role, Stage};
use crate::rules::Condition;

/// Bound of the event queue; further events are counted in `SwitchStats::events_dropped`.
const EVENT_QUEUE: usize = 1024;

/// Static parameters of a switch.
#[derive(Clone, Debug)]
pub struct SwitchConfig {
    /// One role per source, in configuration order (index = [`LegId`]).
    pub roles: Vec<Role>,
    /// Silence after which a source is offline (`offline_window_ms`).
    pub offline_window: Duration,
    /// Leave a good source for a better one that has been healthy for `clear_time`.
    pub auto_switch_to_preferred: bool,
    /// How long a better source must stay healthy before the channel switches to it, and how
    /// long a source must stay healthy after a hold-down (`clear_time_ms`).
    pub clear_time: Duration,
    /// Anti-flapping.
    pub holddown: HoldDown,
    /// Live-event stage at start.
    pub stage: Stage,
}

/// Why the active source changed (or, in [`Event::SourceDown`], why a source failed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The active source was silent for the offline window.
    Offline,
    /// A failover rule of the active source failed.
    Rule(Condition),
    /// Lock or unlock by the operator.
    Manual,
    /// Live-event stage change.
    Stage,
    /// A higher-priority source has been healthy for `clear_time`.
    AutoSwitchBack,
    /// Nothing was playing (every source was down) and a source became eligible.
    Recovered,
    /// The first source selected since the switch started.
    Startup,
}

impl Reason {
    /// Number of distinct reasons (one per rule condition): the length of
    /// [`SwitchStats::switches`].
    pub const COUNT: usize = 6 + Condition::ALL.len();

    /// Position in [`SwitchStats::switches`].
    pub fn index(self) -> usize {
        match self {
            Reason::Offline => 0,
            Reason::Manual => 1,
            Reason::Stage => 2,
            Reason::AutoSwitchBack => 3,
            Reason::Recovered => 4,
            Reason::Startup => 5,
            Reason::Rule(c) => 6 + c.index(),
        }
    }

    /// Inverse of [`index`](Reason::index), to walk the counters.
    pub fn from_index(i: usize) -> Option<Reason> {
        Some(match i {
            0 => Reason::Offline,
            1 => Reason::Manual,
            2 => Reason::Stage,
            3 => Reason::AutoSwitchBack,
            4 => Reason::Recovered,
            5 => Reason::Startup,
            _ => Reason::Rule(*Condition::ALL.get(i - 6)?),
        })
    }

    /// Metric label (`hitless_failovers_total{reason}`); a rule gives its condition's label.
    pub fn label(self) -> &'static str {
        match self {
            Reason::Offline => "offline",
            Reason::Rule(c) => c.label(),
            Reason::Manual => "manual",
            Reason::Stage => "stage",
            Reason::AutoSwitchBack => "auto-switch-back",
            Reason::Recovered => "recovered",
            Reason::Startup => "startup",
        }
    }
}

impl serde::Serialize for Reason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.label())
    }
}

/// Something the glue logs, counts or measures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The active source changed at `at`; `None` = nothing on air.
    Switched {
        from: Option<LegId>,
        to: Option<LegId>,
        reason: Reason,
        at: Instant,
    },
    /// A healthy source failed (`Offline` or `Rule`).
    SourceDown { leg: LegId, reason: Reason },
    /// A source became healthy (online, no failing rule). It may still be held down.
    SourceUp { leg: LegId },
    /// The source flapped too often: not eligible before `until`.
    HeldDown { leg: LegId, until: Instant },
}

/// Per-source counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SwitchLegStats {
    /// Datagrams seen on this source.
    pub packets: u64,
    /// Datagrams forwarded (from this source while it was active).
    pub forwarded: u64,
    /// Healthy → failed transitions.
    pub failures: u64,
    /// Times held down.
    pub held_downs: u64,
}

/// Channel counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SwitchStats {
    /// Switches by reason, indexed by [`Reason::index`].
    pub switches: [u64; Reason::COUNT],
    pub legs: Vec<SwitchLegStats>,
    /// Events dropped because the queue (1024) was full.
    pub events_dropped: u64,
}

/// The switch as shown by the API.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SwitchStatus {
    /// Index of the source on air.
    pub active: Option<usize>,
    /// Why the last switch happened, and how long ago.
    pub reason: Option<Reason>,
    pub since_ms: Option<u64>,
    pub locked: Option<usize>,
    pub stage: Stage,
    pub auto_switch_to_preferred: bool,
    pub sources: Vec<SourceStatus>,
}

/// One source as shown by the API.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SourceStatus {
    pub leg: usize,
    pub role: Role,
    /// Online and no failing rule.
    pub healthy: bool,
    /// Could be selected now (healthy, not held down, cleared after a hold-down).
    pub eligible: bool,
    pub offline: bool,
    pub last_packet_ms_ago: Option<u64>,
    pub failing_rule: Option<Condition>,
    /// Remaining hold-down.
    pub held_down_for_ms: Option<u64>,
    /// Length of the current healthy run.
    pub healthy_for_ms: Option<u64>,
    pub failures: u64,
}

#[derive(Clone, Debug)]
struct Source {
    role: Role,
    /// Position in priority order (0 = best).
    rank: usize,
    last_packet: Option<Instant>,
    /// No packet for the offline window, or never one.
    offline: bool,
    rule: Option<Condition>,
    /// Start of the current healthy run.
    healthy_since: Option<Instant>,
    held_until: Option<Instant>,
    /// End of the last hold-down while the source has not yet been healthy for `clear_time`
    /// since.
    probation_from: Option<Instant>,
    /// Recent failures within the hold-down period (fewer than `holddown.failures`).
    failures: VecDeque<Instant>,
}

impl Source {
    fn healthy(&self) -> bool {
        !self.offline && self.rule.is_none()
    }

    /// When the source will have been healthy for `clear` (counting from the end of a
    /// hold-down when there was one); `None` while unhealthy or held down.
    fn cleared_at(&self, clear: Duration) -> Option<Instant> {
        if !self.healthy() || self.held_until.is_some() {
            return None;
        }
        let since = self.healthy_since?;
        Some(since.max(self.probation_from.unwrap_or(since)) + clear)
    }

    fn eligible(&self, now: Instant, clear: Duration) -> bool {
        self.healthy()
            && self.held_until.is_none()
            && (self.probation_from.is_none() || self.cleared_at(clear).is_some_and(|t| t <= now))
    }

    fn cleared(&self, now: Instant, clear: Duration) -> bool {
        self.cleared_at(clear).is_some_and(|t| t <= now)
    }

    fn down_reason(&self) -> Reason {
        match (self.offline, self.rule) {
            (false, Some(c)) => Reason::Rule(c),
            _ => Reason::Offline,
        }
    }
}

/// The stream-switch state machine. See the module docs for the rules.
///
/// Driving it: call [`on_packet`](Switch::on_packet) for every datagram and forward it when it
/// returns `true`; call [`set_rule_state`](Switch::set_rule_state) whenever a source's rule
/// verdict may have changed; (re)arm a timer at [`poll_timeout`](Switch::poll_timeout) after
/// every call and call [`handle_timeout`](Switch::handle_timeout) when it fires; drain
/// [`poll_event`](Switch::poll_event) whenever convenient. Time must not go backwards.
#[derive(Clone, Debug)]
pub struct Switch {
    sources: Vec<Source>,
    /// Source indices, best first.
    order: Vec<usize>,
    slate: Option<usize>,
    offline_window: Duration,
    clear_time: Duration,
    auto: bool,
    holddown: HoldDown,
    stage: Stage,
    locked: Option<usize>,
    active: Option<usize>,
    active_reason: Option<Reason>,
    active_since: Option<Instant>,
    /// Latest `now` seen.
    now: Instant,
    /// Earliest time a timeout may be due (≤ `poll_timeout()`); `on_packet` checks it.
    next_check: Option<Instant>,
    events: VecDeque<Event>,
    stats: SwitchStats,
}

impl Switch {
    /// A switch with every source offline (none has sent yet). In pre-live or post-live the
    /// slate is selected at once ([`Event::Switched`] with reason `stage`).
    pub fn new(now: Instant, cfg: SwitchConfig) -> Switch {
        let n = cfg.roles.len();
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&i| (role_rank(cfg.roles[i]), i));
        let mut sources: Vec<Source> = cfg
            .roles
            .iter()
            .map(|&role| Source {
                role,
                rank: 0,
                last_packet: None,
                offline: true,
                rule: None,
                healthy_since: None,
                held_until: None,
                probation_from: None,
                failures: VecDeque::with_capacity((cfg.holddown.failures as usize).min(64)),
            })
            .collect();
        for (rank, &i) in order.iter().enumerate() {
            sources[i].rank = rank;
        }
        let mut sw = Switch {
            slate: cfg.roles.iter().position(|r| *r == Role::Slate),
            sources,
            order,
            offline_window: cfg.offline_window,
            clear_time: cfg.clear_time,
            auto: cfg.auto_switch_to_preferred,
            holddown: cfg.holddown,
            stage: cfg.stage,
            locked: None,
            active: None,
            active_reason: None,
            active_since: None,
            now,
            next_check: None,
            events: VecDeque::with_capacity(EVENT_QUEUE),
            stats: SwitchStats {
                switches: [0; Reason::COUNT],
                legs: vec![SwitchLegStats::default(); n],
                events_dropped: 0,
            },
        };
        sw.reselect(now, None);
        sw.next_check = sw.poll_timeout();
        sw
    }

    /// A datagram arrived on `leg` at `now`: returns `true` when it must be forwarded (it comes
    /// from the active source). Also processes any timeout due at `now`, first marking `leg`
    /// as seen. O(1) without allocation unless the source comes back online or a timeout is
    /// due. Afterwards re-read `poll_timeout` if it may have become earlier (it only does after
    /// a state change, which `poll_event` reports).
    #[inline]
    pub fn on_packet(&mut self, now: Instant, leg: LegId) -> bool {
        let i = leg.0;
        let Some(s) = self.sources.get_mut(i) else {
            return false;
        };
        s.last_packet = Some(now);
        let came_back = s.offline;
        self.now = self.now.max(now);
        if came_back {
            self.came_online(now, i);
        } else if self.next_check.is_some_and(|t| now >= t) {
            self.expire(now);
        }
        let st = &mut self.stats.legs[i];
        st.packets += 1;
        let forward = self.active == Some(i);
        st.forwarded += u64::from(forward);
        forward
    }

    #[cold]
    fn came_online(&mut self, now: Instant, i: usize) {
        self.sources[i].offline = false;
        self.transition(now, i, false);
        self.expire(now);
    }

    /// The rule engine's verdict for `leg` (`None`: no rule failing). Processes any timeout due
    /// at `now`, then reselects if the source's health changed. Cheap when nothing changed.
    pub fn set_rule_state(&mut self, now: Instant, leg: LegId, failing: Option<Condition>) {
        self.advance(now);
        let Some(s) = self.sources.get_mut(leg.0) else {
            return;
        };
        if s.rule == failing {
            return;
        }
        let was = s.healthy();
        s.rule = failing;
        self.transition(now, leg.0, was);
        self.reselect(now, None);
        self.next_check = self.poll_timeout();
    }

    /// When `handle_timeout` must be called next: a source going offline, a hold-down ending,
    /// a source having been healthy for `clear_time`. `None` when nothing is pending. Re-read
    /// after every call that changed state.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t: Option<Instant> = None;
        let mut consider = |d: Instant| {
            if d > self.now {
                t = Some(t.map_or(d, |t| t.min(d)));
            }
        };
        for s in &self.sources {
            if !s.offline
                && let Some(d) = s
                    .last_packet
                    .and_then(|p| p.checked_add(self.offline_window))
            {
                consider(d);
            }
            if let Some(h) = s.held_until {
                consider(h);
            }
            if let Some(c) = s.cleared_at(self.clear_time) {
                consider(c);
            }
        }
        t
    }

    /// Process everything due at `now`: sources going offline, hold-downs ending, sources
    /// cleared; select the source to play. Harmless to call early or often. Afterwards drain
    /// `poll_event` and re-read `poll_timeout`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = self.now.max(now);
        self.expire(now);
    }

    /// Next event, or `None`. Events queue up (bounded) until taken.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The source on air, if any.
    pub fn active(&self) -> Option<LegId> {
        self.active.map(LegId)
    }

    /// Play `leg` whatever its health and the stage, until [`unlock`](Switch::unlock).
    /// Unknown legs are ignored.
    pub fn lock(&mut self, now: Instant, leg: LegId) {
        self.advance(now);
        if leg.0 < self.sources.len() {
            self.locked = Some(leg.0);
            self.reselect(now, Some(Reason::Manual));
            self.next_check = self.poll_timeout();
        }
    }

    /// Back to automatic selection: the best eligible source at once (reason `manual`).
    pub fn unlock(&mut self, now: Instant) {
        self.advance(now);
        if self.locked.take().is_some() {
            self.reselect(now, Some(Reason::Manual));
            self.next_check = self.poll_timeout();
        }
    }

    /// Change the live-event stage; selects at once (reason `stage`) unless locked.
    pub fn set_stage(&mut self, now: Instant, stage: Stage) {
        self.advance(now);
        if self.stage != stage {
            self.stage = stage;
            self.reselect(now, Some(Reason::Stage));
            self.next_check = self.poll_timeout();
        }
    }

    pub fn stage(&self) -> Stage {
        self.stage
    }

    pub fn stats(&self) -> &SwitchStats {
        &self.stats
    }

    /// Everything the API shows, with ages relative to `now`.
    pub fn status(&self, now: Instant) -> SwitchStatus {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let ago = |t: Instant| ms(now.saturating_duration_since(t));
        SwitchStatus {
            active: self.active,
            reason: self.active_reason,
            since_ms: self.active_since.map(ago),
            locked: self.locked,
            stage: self.stage,
            auto_switch_to_preferred: self.auto,
            sources: self
                .sources
                .iter()
                .enumerate()
                .map(|(i, s)| SourceStatus {
                    leg: i,
                    role: s.role,
                    healthy: s.healthy(),
                    eligible: s.eligible(now, self.clear_time),
                    offline: s.offline,
                    last_packet_ms_ago: s.last_packet.map(ago),
                    failing_rule: s.rule,
                    held_down_for_ms: s.held_until.map(|t| ms(t.saturating_duration_since(now))),
                    healthy_for_ms: s.healthy_since.map(ago),
                    failures: self.stats.legs[i].failures,
                })
                .collect(),
        }
    }

    /// Process timeouts if one may be due.
    fn advance(&mut self, now: Instant) {
        self.now = self.now.max(now);
        if self.next_check.is_some_and(|t| now >= t) {
            self.expire(now);
        }
    }

    fn expire(&mut self, now: Instant) {
        for i in 0..self.sources.len() {
            let s = &mut self.sources[i];
            if !s.offline
                && s.last_packet
                    .and_then(|p| p.checked_add(self.offline_window))
                    .is_some_and(|d| now >= d)
            {
                let was = s.healthy();
                s.offline = true;
                self.transition(now, i, was);
            }
            let s = &mut self.sources[i];
            if let Some(h) = s.held_until.filter(|h| now >= *h) {
                s.held_until = None;
                s.probation_from = Some(h);
            }
            if s.probation_from.is_some() && s.cleared(now, self.clear_time) {
                s.probation_from = None;
            }
        }
        self.reselect(now, None);
        self.next_check = self.poll_timeout();
    }

    /// Health bookkeeping after `offline` or `rule` changed; `was` = healthy before.
    fn transition(&mut self, now: Instant, i: usize, was: bool) {
        let s = &mut self.sources[i];
        let is = s.healthy();
        if was && !is {
            s.healthy_since = None;
            let reason = s.down_reason();
            self.stats.legs[i].failures += 1;
            self.emit(Event::SourceDown {
                leg: LegId(i),
                reason,
            });
            self.count_failure(now, i);
        } else if !was && is {
            s.healthy_since = Some(now);
            self.emit(Event::SourceUp { leg: LegId(i) });
        }
    }

    fn count_failure(&mut self, now: Instant, i: usize) {
        let hd = self.holddown;
        if hd.failures == 0 || hd.period.is_zero() || hd.hold.is_zero() {
            return;
        }
        let s = &mut self.sources[i];
        if s.held_until.is_some() {
            return;
        }
        // Keep failures within (now − period, now].
        if let Some(oldest) = now.checked_sub(hd.period) {
            while s.failures.front().is_some_and(|t| *t <= oldest) {
                s.failures.pop_front();
            }
        }
        s.failures.push_back(now);
        if s.failures.len() >= hd.failures as usize {
            let until = now + hd.hold;
            s.failures.clear();
            s.held_until = Some(until);
            s.probation_from = None;
            self.stats.legs[i].held_downs += 1;
            self.emit(Event::HeldDown {
                leg: LegId(i),
                until,
            });
        }
    }

    /// The best source (priority order) satisfying `pred`.
    fn best(&self, pred: impl Fn(&Source) -> bool) -> Option<usize> {
        self.order.iter().copied().find(|&i| pred(&self.sources[i]))
    }

    /// Which source should be on air now, and why it would be a switch. `forced`: an operator
    /// action (unlock, stage) that selects the best eligible source without hysteresis.
    fn choose(&self, now: Instant, forced: Option<Reason>) -> (Option<usize>, Reason) {
        if let Some(l) = self.locked {
            return (Some(l), Reason::Manual);
        }
        if self.stage != Stage::Live {
            return (self.slate, Reason::Stage);
        }
        let clear = self.clear_time;
        let best_eligible = || self.best(|s| s.eligible(now, clear));
        if let Some(reason) = forced {
            return (best_eligible(), reason);
        }
        match self.active {
            Some(c) if self.sources[c].eligible(now, clear) => {
                let cur = &self.sources[c];
                if (self.auto || cur.role == Role::Slate)
                    && let Some(b) = self.best(|s| s.cleared(now, clear))
                    && self.sources[b].rank < cur.rank
                {
                    return (Some(b), Reason::AutoSwitchBack);
                }
                (Some(c), self.active_reason.unwrap_or(Reason::Startup))
            }
            Some(c) => (best_eligible(), self.sources[c].down_reason()),
            None if self.active_reason.is_some() => (best_eligible(), Reason::Recovered),
            None => (best_eligible(), Reason::Startup),
        }
    }

    fn reselect(&mut self, now: Instant, forced: Option<Reason>) {
        let (to, reason) = self.choose(now, forced);
        if to == self.active {
            return;
        }
        self.emit(Event::Switched {
            from: self.active.map(LegId),
            to: to.map(LegId),
            reason,
            at: now,
        });
        self.stats.switches[reason.index()] += 1;
        self.active = to;
        self.active_reason = Some(reason);
        self.active_since = Some(now);
    }

    fn emit(&mut self, e: Event) {
        if self.events.len() >= EVENT_QUEUE {
            self.stats.events_dropped += 1;
        } else {
            self.events.push_back(e);
        }
    }
}

fn role_rank(r: Role) -> u8 {
    match r {
        Role::Preferred => 0,
        Role::NonPreferred => 1,
        Role::Slate => 2,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::merge::sim::base;

    const MS: Duration = Duration::from_millis(1);
    const US: Duration = Duration::from_micros(1);
    const P: Role = Role::Preferred;
    const NP: Role = Role::NonPreferred;
    const SLATE: Role = Role::Slate;
    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }
    const NO_HOLDDOWN: HoldDown = HoldDown {
        failures: 0,
        period: Duration::ZERO,
        hold: Duration::ZERO,
    };

    fn cfg(roles: &[Role], window_ms: u64, clear_ms: u64, auto: bool) -> SwitchConfig {
        SwitchConfig {
            roles: roles.to_vec(),
            offline_window: Duration::from_millis(window_ms),
            auto_switch_to_preferred: auto,
            clear_time: Duration::from_millis(clear_ms),
            holddown: NO_HOLDDOWN,
            stage: Stage::Live,
        }
    }

    /// Virtual-time driver after quinn's `Pair`: scripted arrivals per source; `run_until`
    /// jumps to the next arrival or `poll_timeout()`, timeouts first at equal instants (the
    /// glue's contract), and records forwarded datagrams and events.
    struct Sim {
        sw: Switch,
        t0: Instant,
        pending: BTreeSet<(Instant, usize)>,
        forwarded: Vec<(Instant, usize)>,
        events: Vec<Event>,
    }

    impl Sim {
        fn new(cfg: SwitchConfig) -> Sim {
            let t0 = base();
            let mut sim = Sim {
                sw: Switch::new(t0, cfg),
                t0,
                pending: BTreeSet::new(),
                forwarded: Vec::new(),
                events: Vec::new(),
            };
            sim.drain();
            sim
        }

        fn at(&self, d: Duration) -> Instant {
            self.t0 + d
        }

        /// Datagrams on `leg` at `from`, `from + every`, … before `to`.
        fn send(&mut self, leg: usize, from: Duration, to: Duration, every: Duration) {
            let mut t = from;
            while t < to {
                self.pending.insert((self.t0 + t, leg));
                t += every;
            }
        }

        fn run_until(&mut self, end: Duration) {
            let end = self.t0 + end;
            loop {
                let p = self.pending.first().copied().filter(|(a, _)| *a <= end);
                let d = self.sw.poll_timeout().filter(|d| *d <= end);
                match (p, d) {
                    (p, Some(d)) if p.is_none_or(|(a, _)| d <= a) => self.sw.handle_timeout(d),
                    (Some((a, leg)), _) => {
                        self.pending.pop_first();
                        if self.sw.on_packet(a, LegId(leg)) {
                            self.forwarded.push((a, leg));
                        }
                    }
                    _ => break,
                }
                self.drain();
            }
        }

        fn drain(&mut self) {
            while let Some(e) = self.sw.poll_event() {
                self.events.push(e);
            }
        }

        /// (from, to, reason, ms since t0) of every switch so far.
        fn switches(&self) -> Vec<(Option<usize>, Option<usize>, Reason, Duration)> {
            self.events
                .iter()
                .filter_map(|e| match *e {
                    Event::Switched {
                        from,
                        to,
                        reason,
                        at,
                    } => Some((from.map(|l| l.0), to.map(|l| l.0), reason, at - self.t0)),
                    _ => None,
                })
                .collect()
        }

        fn active(&self) -> Option<usize> {
            self.sw.active().map(|l| l.0)
        }
    }

    #[test]
    fn priority_order_preferred_then_non_preferred_in_config_order_then_slate() {
        // Config order deliberately not priority order.
        let mut sim = Sim::new(cfg(&[SLATE, NP, P, NP], 100, 500, true));
        sim.send(2, ms(0), ms(1000), ms(10)); // preferred until 1 s
        sim.send(1, ms(1), ms(2000), ms(10)); // first non-preferred until 2 s
        sim.send(3, ms(2), ms(3000), ms(10)); // second non-preferred until 3 s
        sim.send(0, ms(3), ms(10_000), ms(10)); // slate throughout
        sim.run_until(ms(4000));
        use Reason::*;
        assert_eq!(
            sim.switches(),
            [
                (None, Some(2), Startup, ms(0)),
                (Some(2), Some(1), Offline, ms(990 + 100)),
                (Some(1), Some(3), Offline, ms(1991 + 100)),
                (Some(3), Some(0), Offline, ms(2992 + 100)),
            ]
        );
        // Sources come back in reverse order: each better one takes over after the clear time.
        sim.send(3, ms(4000), ms(10_000), ms(10));
        sim.send(1, ms(5000), ms(10_000), ms(10));
        sim.send(2, ms(6000), ms(10_000), ms(10));
        sim.run_until(ms(8000));
        assert_eq!(
            sim.switches()[4..],
            [
                (Some(0), Some(3), AutoSwitchBack, ms(4500)),
                (Some(3), Some(1), AutoSwitchBack, ms(5500)),
                (Some(1), Some(2), AutoSwitchBack, ms(6500)),
            ]
        );
        assert_eq!(sim.sw.stats().switches[AutoSwitchBack.index()], 3);
        assert_eq!(sim.sw.stats().switches[Offline.index()], 3);
        assert_eq!(sim.sw.stats().legs[2].failures, 1);
    }

    #[test]
    fn offline_window_gap_is_the_window_plus_one_packet_interval() {
        for use_timer in [true, false] {
            let mut sim = Sim::new(cfg(&[P, NP], 50, 500, true));
            sim.send(0, Duration::ZERO, 100 * MS + US, MS); // last packet at 100 ms
            sim.send(1, 300 * US, 300 * MS, MS); // every ms, 0.3 ms after the preferred
            if use_timer {
                sim.run_until(300 * MS);
            } else {
                // A glue whose timer never fires: the packets alone drive the switch.
                while let Some((a, leg)) = sim.pending.pop_first() {
                    if sim.sw.on_packet(a, LegId(leg)) {
                        sim.forwarded.push((a, leg));
                    }
                    sim.drain();
                }
            }
            let at = if use_timer {
                sim.at(150 * MS)
            } else {
                sim.at(150 * MS + 300 * US)
            };
            assert!(sim.events.contains(&Event::Switched {
                from: Some(LegId(0)),
                to: Some(LegId(1)),
                reason: Reason::Offline,
                at,
            }));
            let first_np = sim.forwarded.iter().position(|f| f.1 == 1).unwrap();
            let (last_p, _) = sim.forwarded[first_np - 1];
            let (first, _) = sim.forwarded[first_np];
            assert_eq!(last_p, sim.at(100 * MS));
            assert_eq!(
                first,
                sim.at(150 * MS + 300 * US),
                "next packet after the window"
            );
            assert_eq!(
                first - last_p,
                50 * MS + 300 * US,
                "window + one interval, not more"
            );
            // Nothing but the active source is ever forwarded, and never twice.
            assert!(sim.forwarded[..first_np].iter().all(|f| f.1 == 0));
            assert!(sim.forwarded[first_np..].iter().all(|f| f.1 == 1));
        }
    }

    #[test]
    fn a_source_that_never_sent_is_not_healthy() {
        let mut sim = Sim::new(cfg(&[P, NP], 100, 500, true));
        sim.run_until(1000 * MS);
        assert_eq!(sim.active(), None);
        assert!(sim.events.is_empty());
        assert_eq!(sim.sw.poll_timeout(), None);
        // The non-preferred one sends first: it is taken at once, without waiting.
        sim.send(1, 1000 * MS, 5000 * MS, 10 * MS);
        sim.send(0, 1200 * MS, 5000 * MS, 10 * MS);
        sim.run_until(1000 * MS);
        assert_eq!(sim.active(), Some(1));
        sim.run_until(1700 * MS - US);
        assert_eq!(sim.active(), Some(1));
        sim.run_until(1700 * MS);
        assert_eq!(sim.active(), Some(0), "preferred after its clear time");
    }

    #[test]
    fn auto_switch_back_after_clear_time_and_not_before() {
        let mut sim = Sim::new(cfg(&[P, NP], 100, 500, true));
        sim.send(0, Duration::ZERO, 1000 * MS, 10 * MS);
        sim.send(0, 2000 * MS, 5000 * MS, 10 * MS);
        sim.send(1, 5 * MS, 5000 * MS, 10 * MS);
        sim.run_until(2500 * MS - US);
        assert_eq!(sim.active(), Some(1));
        sim.run_until(2500 * MS);
        assert_eq!(sim.active(), Some(0));
        assert_eq!(
            sim.switches()[2],
            (Some(1), Some(0), Reason::AutoSwitchBack, 2500 * MS)
        );
        // A preferred source that fails again during its clear time restarts it.
        let mut sim = Sim::new(cfg(&[P, NP], 100, 500, true));
        sim.send(0, Duration::ZERO, 1000 * MS, 10 * MS);
        sim.send(0, 2000 * MS, 2300 * MS, 10 * MS);
        sim.send(0, 2600 * MS, 5000 * MS, 10 * MS);
        sim.send(1, 5 * MS, 5000 * MS, 10 * MS);
        sim.run_until(3099 * MS);
        assert_eq!(sim.active(), Some(1));
        sim.run_until(3100 * MS);
        assert_eq!(sim.active(), Some(0));
    }

    #[test]
    fn without_auto_switch_stay_on_the_secondary_until_it_fails() {
        let mut sim = Sim::new(cfg(&[P, NP], 100, 500, false));
        sim.send(0, Duration::ZERO, 1000 * MS, 10 * MS);
        sim.send(0, 2000 * MS, 20_000 * MS, 10 * MS);
        sim.send(1, 5 * MS, 10_000 * MS, 10 * MS);
        sim.run_until(9_000 * MS);
        assert_eq!(sim.active(), Some(1));
        sim.run_until(20_000 * MS);
        assert_eq!(
            sim.switches()[2],
            (Some(1), Some(0), Reason::Offline, 9995 * MS + 100 * MS)
        );
    }

    #[test]
    fn slate_is_left_for_a_cleared_source_even_without_auto_switch() {
        let mut sim = Sim::new(cfg(&[P, SLATE], 100, 500, false));
        sim.send(1, Duration::ZERO, 5000 * MS, 10 * MS);
        sim.send(0, 1000 * MS, 5000 * MS, 10 * MS);
        sim.run_until(5000 * MS);
        assert_eq!(
            sim.switches(),
            [
                (None, Some(1), Reason::Startup, Duration::ZERO),
                (Some(1), Some(0), Reason::AutoSwitchBack, 1500 * MS),
            ]
        );
    }

    #[test]
    fn holddown_after_repeated_flaps_then_release_and_clear_time() {
        let mut c = cfg(&[P, NP], 100, 300, true);
        c.holddown = HoldDown {
            failures: 3,
            period: Duration::from_secs(10),
            hold: Duration::from_secs(5),
        };
        let mut sim = Sim::new(c);
        for (a, b) in [(0, 1000), (1500, 2000), (2500, 3000), (3500, 20_000)] {
            sim.send(0, ms(a), ms(b), ms(10)); // last packet at b − 10 ms → offline at b + 90
        }
        sim.send(1, ms(5), ms(20_000), ms(10));
        sim.run_until(ms(10_000));
        use Reason::*;
        assert_eq!(
            sim.switches(),
            [
                (None, Some(0), Startup, ms(0)),
                (Some(0), Some(1), Offline, ms(1090)),
                (Some(1), Some(0), AutoSwitchBack, ms(1800)),
                (Some(0), Some(1), Offline, ms(2090)),
                (Some(1), Some(0), AutoSwitchBack, ms(2800)),
                (Some(0), Some(1), Offline, ms(3090)),
                // Held down 3.09 s → 8.09 s although healthy again from 3.5 s; then the clear
                // time again.
                (Some(1), Some(0), AutoSwitchBack, ms(8390)),
            ]
        );
        assert!(sim.events.contains(&Event::HeldDown {
            leg: LegId(0),
            until: sim.at(ms(8090)),
        }));
        let st = sim.sw.status(sim.at(ms(5000)));
        assert_eq!(
            st.sources[0].held_down_for_ms, None,
            "status is for the current state"
        );
        assert_eq!(sim.sw.stats().legs[0].held_downs, 1);
        assert_eq!(sim.sw.stats().legs[0].failures, 3);
    }

    #[test]
    fn holddown_visible_in_status() {
        let mut c = cfg(&[P, NP], 100, 300, true);
        c.holddown = HoldDown {
            failures: 1,
            period: Duration::from_secs(10),
            hold: Duration::from_secs(5),
        };
        let mut sim = Sim::new(c);
        sim.send(0, Duration::ZERO, 20_000 * MS, 10 * MS);
        sim.send(1, 5 * MS, 20_000 * MS, 10 * MS);
        sim.run_until(1000 * MS);
        sim.sw
            .set_rule_state(sim.at(1000 * MS), LegId(0), Some(Condition::LowBitrate));
        sim.sw.set_rule_state(sim.at(1001 * MS), LegId(0), None);
        let st = sim.sw.status(sim.at(2000 * MS));
        assert!(st.sources[0].healthy);
        assert!(!st.sources[0].eligible);
        assert_eq!(st.sources[0].held_down_for_ms, Some(4000));
        assert_eq!(st.active, Some(1));
        sim.run_until(6300 * MS);
        assert_eq!(sim.active(), Some(0));
    }

    #[test]
    fn manual_lock_plays_the_locked_source_whatever_its_health() {
        let mut sim = Sim::new(cfg(&[P, NP], 100, 500, true));
        sim.send(0, Duration::ZERO, 10_000 * MS, 10 * MS);
        sim.send(1, 5 * MS, 1000 * MS, 10 * MS);
        sim.run_until(500 * MS);
        sim.sw.lock(sim.at(500 * MS), LegId(1));
        sim.drain();
        assert_eq!(sim.active(), Some(1));
        sim.run_until(3000 * MS); // the locked source went offline at 1.095 s: stays
        assert_eq!(sim.active(), Some(1));
        assert!(!sim.sw.status(sim.at(3000 * MS)).sources[1].healthy);
        assert_eq!(sim.sw.status(sim.at(3000 * MS)).locked, Some(1));
        assert!(
            sim.forwarded
                .iter()
                .all(|&(a, leg)| (leg == 1) == (a > sim.at(500 * MS)))
        );
        sim.sw.unlock(sim.at(3000 * MS));
        sim.drain();
        assert_eq!(
            sim.switches(),
            [
                (None, Some(0), Reason::Startup, Duration::ZERO),
                (Some(0), Some(1), Reason::Manual, 500 * MS),
                (Some(1), Some(0), Reason::Manual, 3000 * MS),
            ]
        );
    }

    #[test]
    fn stages_pre_live_live_post_live() {
        let mut c = cfg(&[P, NP, SLATE], 100, 500, true);
        c.stage = Stage::PreLive;
        let mut sim = Sim::new(c);
        assert_eq!(
            sim.active(),
            Some(2),
            "slate from the start, before it even sends"
        );
        sim.send(0, Duration::ZERO, 10_000 * MS, 10 * MS);
        sim.send(1, 5 * MS, 10_000 * MS, 10 * MS);
        sim.send(2, 7 * MS, 10_000 * MS, 10 * MS);
        sim.run_until(1000 * MS);
        assert_eq!(sim.active(), Some(2));
        sim.sw.set_stage(sim.at(1000 * MS), Stage::Live);
        sim.drain();
        assert_eq!(sim.active(), Some(0), "live: best healthy at once");
        sim.run_until(2000 * MS);
        sim.sw.set_stage(sim.at(2000 * MS), Stage::PostLive);
        sim.drain();
        assert_eq!(
            sim.switches(),
            [
                (None, Some(2), Reason::Stage, Duration::ZERO),
                (Some(2), Some(0), Reason::Stage, 1000 * MS),
                (Some(0), Some(2), Reason::Stage, 2000 * MS),
            ]
        );
        // The slate plays even when it fails.
        sim.run_until(20_000 * MS);
        assert_eq!(sim.active(), Some(2));
        assert_eq!(sim.sw.status(sim.at(20_000 * MS)).stage, Stage::PostLive);
        // Without a slate, pre-live plays nothing.
        let mut c = cfg(&[P, NP], 100, 500, true);
        c.stage = Stage::PreLive;
        let mut sim = Sim::new(c);
        sim.send(0, Duration::ZERO, 1000 * MS, 10 * MS);
        sim.run_until(1000 * MS);
        assert_eq!(sim.active(), None);
        assert!(sim.forwarded.is_empty());
    }

    #[test]
    fn rule_failure_forces_a_switch_and_recovery_waits_for_clear_time() {
        let mut sim = Sim::new(cfg(&[P, NP], 100, 500, true));
        sim.send(0, Duration::ZERO, 10_000 * MS, 10 * MS);
        sim.send(1, 5 * MS, 10_000 * MS, 10 * MS);
        sim.run_until(1000 * MS);
        let cond = Condition::P1TransportErrors;
        sim.sw
            .set_rule_state(sim.at(1000 * MS), LegId(0), Some(cond));
        sim.drain();
        assert_eq!(sim.active(), Some(1));
        assert!(sim.events.contains(&Event::SourceDown {
            leg: LegId(0),
            reason: Reason::Rule(cond)
        }));
        sim.run_until(3000 * MS);
        sim.sw.set_rule_state(sim.at(3000 * MS), LegId(0), None);
        sim.run_until(3500 * MS - US);
        assert_eq!(sim.active(), Some(1));
        sim.run_until(3500 * MS);
        assert_eq!(
            sim.switches()[1..],
            [
                (Some(0), Some(1), Reason::Rule(cond), 1000 * MS),
                (Some(1), Some(0), Reason::AutoSwitchBack, 3500 * MS),
            ]
        );
        assert_eq!(
            sim.sw.stats().switches[Reason::Rule(cond).index()],
            1,
            "counted under the condition"
        );
        assert_eq!(Reason::Rule(cond).label(), "p1-transport-errors");
    }

    #[test]
    fn all_down_goes_to_slate_then_nothing_then_recovers() {
        let mut sim = Sim::new(cfg(&[P, NP, SLATE], 100, 500, true));
        sim.send(0, Duration::ZERO, 1000 * MS, 10 * MS);
        sim.send(1, 5 * MS, 1000 * MS, 10 * MS);
        sim.send(2, 7 * MS, 2000 * MS, 10 * MS);
        sim.send(2, 3000 * MS, 4000 * MS, 10 * MS);
        sim.run_until(3500 * MS);
        use Reason::*;
        assert_eq!(
            sim.switches(),
            [
                (None, Some(0), Startup, Duration::ZERO),
                (Some(0), Some(1), Offline, 1090 * MS),
                (Some(1), Some(2), Offline, 1095 * MS),
                (Some(2), None, Offline, 2097 * MS),
                (None, Some(2), Recovered, 3000 * MS),
            ]
        );
        assert!(
            sim.forwarded
                .iter()
                .all(|(a, _)| *a < sim.at(2097 * MS) || *a >= sim.at(3000 * MS))
        );
    }

    #[test]
    fn status_serializes() {
        let mut sim = Sim::new(cfg(&[P, NP], 100, 500, true));
        sim.send(0, Duration::ZERO, 1000 * MS, 10 * MS);
        sim.run_until(500 * MS);
        let v = serde_json::to_value(sim.sw.status(sim.at(600 * MS))).expect("serializable");
        assert_eq!(v["active"], 0);
        assert_eq!(v["reason"], "startup");
        assert_eq!(v["since_ms"], 600);
        assert_eq!(v["stage"], "live");
        assert_eq!(v["sources"][0]["role"], "preferred");
        assert_eq!(v["sources"][1]["offline"], true);
        for i in 0..Reason::COUNT {
            assert_eq!(Reason::from_index(i).map(Reason::index), Some(i));
        }
        assert_eq!(Reason::from_index(Reason::COUNT), None);
    }

    mod prop {
        use proptest::prelude::*;

        use super::*;

        /// The selection rule restated: once `handle_timeout(now)` ran, the active source is
        /// eligible (or nothing is), no eligible source is left unused while nothing plays, and
        /// no higher-priority source has been eligible for the clear time.
        fn check_settled(sw: &Switch, now: Instant) -> Result<(), TestCaseError> {
            let clear = sw.clear_time;
            let best = sw.best(|s| s.eligible(now, clear));
            match sw.active {
                None => prop_assert_eq!(best, None),
                Some(a) => {
                    prop_assert!(sw.sources[a].eligible(now, clear), "active not eligible");
                    let cleared = sw.best(|s| s.cleared(now, clear));
                    prop_assert!(
                        cleared.is_none_or(|c| sw.sources[c].rank >= sw.sources[a].rank),
                        "a better source cleared but not selected"
                    );
                }
            }
            Ok(())
        }

        proptest! {
            #[test]
            fn active_is_the_best_eligible_source(
                // Per source: packet interval (ms) and on/off segments (ms).
                legs in proptest::collection::vec(
                    (1u64..30, proptest::collection::vec((1u64..800, 0u64..400), 1..8)),
                    4,
                ),
                holddown in proptest::bool::ANY,
            ) {
                let mut c = cfg(&[NP, P, SLATE, NP], 100, 300, true);
                if holddown {
                    c.holddown = HoldDown {
                        failures: 2,
                        period: Duration::from_secs(2),
                        hold: Duration::from_millis(700),
                    };
                }
                let mut sim = Sim::new(c);
                let mut end = Duration::ZERO;
                for (leg, (every, segs)) in legs.iter().enumerate() {
                    let mut t = Duration::from_micros(leg as u64 * 137);
                    for &(on, off) in segs {
                        sim.send(leg, t, t + ms(on), ms(*every));
                        t += ms(on + off);
                    }
                    end = end.max(t);
                }
                // Walk every event; after each timeout the state is settled for that instant.
                let stop = sim.t0 + end + 5000 * MS;
                loop {
                    let p = sim.pending.first().copied();
                    let d = sim.sw.poll_timeout().filter(|d| *d <= stop);
                    match (p, d) {
                        (p, Some(d)) if p.is_none_or(|(a, _)| d <= a) => {
                            sim.sw.handle_timeout(d);
                            check_settled(&sim.sw, d)?;
                        }
                        (Some((a, leg)), _) => {
                            sim.pending.pop_first();
                            let fwd = sim.sw.on_packet(a, LegId(leg));
                            prop_assert_eq!(fwd, sim.sw.active == Some(leg));
                            // After a packet nothing is pending at `a` any more either.
                            if sim.sw.poll_timeout().is_none_or(|t| t > a) {
                                check_settled(&sim.sw, a)?;
                            }
                        }
                        _ => break,
                    }
                }
                // Everything silent in the end: nothing plays, nothing is pending.
                prop_assert_eq!(sim.sw.active(), None);
                prop_assert_eq!(sim.sw.poll_timeout(), None);
            }

            #[test]
            fn steady_sources_settle_on_the_best_one(
                flaps in proptest::collection::vec((0usize..4, 1u64..500, 1u64..500), 0..12),
                steady in proptest::collection::vec(proptest::bool::ANY, 4),
            ) {
                let mut c = cfg(&[NP, P, SLATE, NP], 100, 300, true);
                c.holddown = HoldDown {
                    failures: 2,
                    period: Duration::from_secs(2),
                    hold: Duration::from_millis(700),
                };
                let mut sim = Sim::new(c);
                let mut t = 0u64;
                for &(leg, on, off) in &flaps {
                    sim.send(leg, ms(t), ms(t + on), 10 * MS);
                    t += on + off;
                }
                for (leg, &on) in steady.iter().enumerate() {
                    if on {
                        sim.send(leg, ms(t + leg as u64), ms(t + 10_000), 10 * MS);
                    }
                }
                sim.run_until(ms(t + 9_000));
                // Priority: leg 1 (preferred), 0, 3 (non-preferred), 2 (slate).
                let want = [1, 0, 3, 2].into_iter().find(|&l| steady[l]);
                prop_assert_eq!(sim.active(), want);
            }
        }
    }
}
