//! The thread that runs one `mode = "switch"` channel: receives every source (so health,
//! TR 101 290 and the rules are always known), asks the sans-IO [`Switch`] which one is on
//! air, runs the active source's packets through the [`Splicer`] (clean switches) and sends
//! them to every output. The only clock reads are here.
//!
//! With `frozen-video`, `blank-picture` or `silent-audio` rules, every source's packets also
//! pass the content analyser's tap ([`ChannelContent`]); its findings arrive from the worker
//! thread and are applied whenever the channel wakes up.
//!
//! A content-merge channel runs here too: while its
//! [`ContentMerger`] has the legs aligned, the merged stream is the output; when they
//! diverge, the channel falls back to switching between them.
//!
//! # `unrecovered-packets` (content-merge only)
//! Every source's meter reads the same count: the packets missing from the merged output
//! (the merger's continuity-counter gaps, [`ContentStats::unrecovered`]) counted only while
//! the merged stream is the output. A gap counts when the merger releases the next packet of
//! its PID (once the trailing leg delivered it, or `merge_window_ms` at most: about the path
//! differential after the loss), in the window open then. Lost null packets are not knowable; a gap of 16 or more packets
//! on one PID counts modulo 16 (CC arithmetic). The API's `merge.unrecovered` and
//! `hitless_merge_unrecovered_packets_total` are the merger's own count, fallback included.
//! While the channel
//! falls back to switching the count does not grow (the output is one leg as received; its
//! continuity errors are what `p1-transport-errors` measures on that source), so the rule
//! heals as its windows age out. The rule is an alarm, not a failover: every leg sees the
//! same count, so it cannot choose between them, and it is not handed to the [`Switch`]: a
//! fallback during the windows that remember the loss would otherwise find no eligible
//! source and play nothing. Its state is in the API and `hitless_rule_failing`, and a log
//! line says when it starts and stops failing.
//!
//! [`ContentStats::unrecovered`]: crate::merge::content::ContentStats::unrecovered

use std::collections::BTreeMap;
use std::io;
use std::path::Path;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::content::ChannelContent;
use super::wait::{Waiter, Wake};
use super::{ChannelSnapshot, Command, MergeSnapshot, RuntimeError, SourceSnapshot};
use crate::config::{ChannelConfig, Mode};
use crate::ingest::Leg;
use crate::merge::LegId;
use crate::merge::content::{ContentConfig, ContentEvent, ContentMerger};
use crate::merge::switch::{Event, Reason, Switch, SwitchConfig};
use crate::output::Output;
use crate::rules::tr101290::{Indicator, P1Config, Tr101290};
use crate::rules::{Condition, SourceMeter, SourceRules};
use crate::slate::SlatePlayer;
use crate::ts::splice::Splicer;
use crate::ts::{self, PACKET_LEN, Pid};
use crate::url::Scheme;

/// How late slate packets may be collected, so that they leave in datagrams of several TS
/// packets instead of one timer wake-up per packet.
const SLATE_BATCH: std::time::Duration = std::time::Duration::from_millis(4);
/// A slate this far behind its schedule restarts instead of bursting the backlog.
const SLATE_MAX_LAG: std::time::Duration = std::time::Duration::from_secs(1);

/// Batches read from one socket before the task looks at the others again.
const READ_BUDGET: usize = 8;

#[allow(clippy::disallowed_methods)]
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Where a source's packets come from.
enum Input {
    Net(Leg),
    /// A looped file played by its PCR.
    Slate {
        player: SlatePlayer,
        packets: u64,
        bytes: u64,
    },
}

/// Everything the channel knows about one source.
struct Source {
    input: Input,
    p1: Tr101290,
    rules: SourceRules,
}

/// The rule engine reads cumulative counters at window ends: the source's input, its
/// TR 101 290 analyser, and the packets the merged output lost (content-merge; 0 otherwise).
struct Meter<'a>(&'a Input, &'a Tr101290, u64);

impl SourceMeter for Meter<'_> {
    fn bytes(&self) -> u64 {
        match self.0 {
            Input::Net(l) => l.stats.bytes,
            Input::Slate { bytes, .. } => *bytes,
        }
    }
    fn p1_errors(&self, pid: Option<Pid>) -> u64 {
        match pid {
            Some(p) => self.1.errors_for_pid(p),
            None => self.1.errors_total(),
        }
    }
    fn unrecovered(&self) -> u64 {
        self.2
    }
}

/// Record the merger's inputs to `<dir>/<channel>.cmcap` (`HITLESS_CONTENT_CAPTURE`, a
/// diagnostic: see [`crate::merge::content::capture`]). A failure is logged, not fatal.
fn start_capture(m: &mut ContentMerger, mc: &ContentConfig, dir: &Path, channel: &str) {
    let path = dir.join(format!("{channel}.cmcap"));
    let started = std::fs::File::create(&path).and_then(|f| {
        crate::merge::content::capture::Capture::new(Box::new(io::BufWriter::new(f)), mc)
    });
    match started {
        Ok(c) => {
            m.capture(c);
            tracing::info!(channel, path = %path.display(), "content-merge input capture started");
        }
        Err(e) => {
            tracing::warn!(channel, path = %path.display(), error = %e, "content-merge input capture not started")
        }
    }
}

/// What the switch is told about a source's rules: the first failing rule, except
/// `unrecovered-packets`, which only raises an alarm (see the module docs).
fn switch_verdict(rules: &SourceRules) -> Option<Condition> {
    rules.failing_except(Condition::UnrecoveredPackets)
}

pub(super) struct SwitchChannel {
    cfg: ChannelConfig,
    sources: Vec<Source>,
    outputs: Vec<Output>,
    router: Router,
    /// Packets the slate player made due (reused).
    slate_buf: Vec<Bytes>,
    muted: bool,
    /// Content-merge mode: times the legs were found to differ.
    diverged: u64,
    last_output: Option<Instant>,
    /// A switch (decided at, from, to, reason) whose first output packet is still to come:
    /// its log line carries the output gap.
    switch_pending: Option<(Instant, Option<LegId>, Option<LegId>, Reason)>,
    last_gap_ms: Option<f64>,
    /// Content analysis, when a rule needs it.
    content: Option<ChannelContent>,
    /// An `unrecovered-packets` rule of some source is failing (logged on change).
    unrecovered_failing: bool,
}

impl SwitchChannel {
    /// Bind every socket and load every slate (inside the channel's runtime).
    pub(super) fn open(
        cfg: &ChannelConfig,
        standby: &super::StandbyFlag,
    ) -> Result<SwitchChannel, RuntimeError> {
        let start = now();
        let mut sources = Vec::new();
        for src in &cfg.sources {
            let input = if src.url.scheme == Scheme::File {
                let path = src.url.path.clone().unwrap_or_default();
                let slate_err = |reason: String| RuntimeError::Slate {
                    channel: cfg.name.clone(),
                    path: path.display().to_string(),
                    reason,
                };
                let data = std::fs::read(&path).map_err(|e| slate_err(e.to_string()))?;
                let mut player =
                    SlatePlayer::new(Bytes::from(data)).map_err(|e| slate_err(e.to_string()))?;
                player.start(start);
                tracing::info!(channel = %cfg.name, source = %src.name, path = %path.display(), "slate loaded");
                Input::Slate {
                    player,
                    packets: 0,
                    bytes: 0,
                }
            } else {
                Input::Net(super::open_leg(cfg, src)?)
            };
            sources.push(Source {
                input,
                p1: Tr101290::new(P1Config {
                    pid_error_period: cfg.pid_error_period,
                    ..P1Config::default()
                }),
                rules: SourceRules::new(start, &cfg.rules),
            });
        }
        let outputs = super::open_outputs(cfg, standby)?;
        let switch = Switch::new(
            start,
            SwitchConfig {
                roles: cfg.sources.iter().map(|s| s.role).collect(),
                offline_window: cfg.offline_window,
                auto_switch_to_preferred: cfg.auto_switch_to_preferred,
                clear_time: cfg.clear_time,
                holddown: cfg.holddown,
                stage: cfg.stage,
            },
        );
        let content = ChannelContent::open(cfg).map_err(|source| RuntimeError::Thread {
            channel: cfg.name.clone(),
            source,
        })?;
        Ok(SwitchChannel {
            muted: cfg.muted,
            cfg: cfg.clone(),
            sources,
            outputs,
            router: Router {
                switch,
                splicer: Splicer::new(),
                out: Vec::with_capacity(1024),
                scratch: Vec::with_capacity(256),
                switch_on_rap: cfg.switch_on_rap,
                rap_max_wait: cfg.rap_max_wait,
                rap_wait: None,
                merge: (cfg.mode == Mode::ContentMerge).then(|| {
                    let mc = ContentConfig {
                        legs: cfg.sources.len(),
                        window: cfg.merge_window,
                        capacity: super::merge_capacity(cfg),
                        leg_timeout: cfg.leg_timeout,
                    };
                    let mut m = ContentMerger::new(mc.clone());
                    if let Some(dir) = std::env::var_os("HITLESS_CONTENT_CAPTURE") {
                        start_capture(&mut m, &mc, Path::new(&dir), &cfg.name);
                    }
                    m
                }),
                merged_loss: MergedLoss::default(),
            },
            diverged: 0,
            slate_buf: Vec::with_capacity(256),
            last_output: None,
            switch_pending: None,
            last_gap_ms: None,
            content,
            unrecovered_failing: false,
        })
    }

    fn next_deadline(&self) -> Option<Instant> {
        let mut t = self.router.switch.poll_timeout();
        let mut min = |d: Option<Instant>| {
            if let Some(d) = d {
                t = Some(t.map_or(d, |t: Instant| t.min(d)));
            }
        };
        min(self.router.merge.as_ref().and_then(|m| m.poll_timeout()));
        for s in &self.sources {
            min(s.rules.poll_timeout());
            min(s.p1.poll_timeout());
            if let Input::Slate { player, .. } = &s.input {
                // Batch the slate: wake when a few milliseconds of it are due, not per packet.
                min(player.poll_timeout().map(|t| t + SLATE_BATCH));
            }
        }
        t
    }

    pub(super) async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut waiter = Waiter::new();
        loop {
            waiter.arm(self.next_deadline());
            let sources = &self.sources;
            let wake = waiter
                .wait(&mut commands, sources.len(), |i| match &sources[i].input {
                    Input::Net(leg) => Some(&leg.socket),
                    Input::Slate { .. } => None,
                })
                .await;
            match wake {
                Wake::Readable(i) => {
                    let now = now();
                    self.read_source(now, i);
                    self.flush(now).await;
                }
                Wake::Timer => {
                    let now = now();
                    self.handle_timeout(now);
                    self.flush(now).await;
                }
                Wake::Command(Some(c)) => {
                    let now = now();
                    if !self.handle_command(now, c) {
                        break;
                    }
                    self.flush(now).await;
                }
                Wake::Command(None) => break,
            }
        }
        tracing::info!(channel = %self.cfg.name, "channel stopped");
    }

    /// Returns false on shutdown.
    fn handle_command(&mut self, now: Instant, c: Command) -> bool {
        match c {
            Command::Snapshot(tx) => {
                let _ = tx.send(self.snapshot(now));
            }
            Command::Lock(Some(i), tx) => {
                let r = if i < self.sources.len() {
                    self.router.switch.lock(now, LegId(i));
                    tracing::info!(channel = %self.cfg.name, source = %self.cfg.sources[i].name, "locked by operator");
                    Ok(())
                } else {
                    Err(format!("no source #{i}"))
                };
                let _ = tx.send(r);
            }
            Command::Lock(None, tx) => {
                self.router.switch.unlock(now);
                tracing::info!(channel = %self.cfg.name, "lock released by operator");
                let _ = tx.send(Ok(()));
            }
            Command::Stage(stage, tx) => {
                self.router.switch.set_stage(now, stage);
                tracing::info!(channel = %self.cfg.name, %stage, "stage set by operator");
                let _ = tx.send(Ok(()));
            }
            Command::Mute(m) => {
                self.muted = m;
                tracing::info!(channel = %self.cfg.name, muted = m, "notifications {}", if m { "muted" } else { "unmuted" });
            }
            Command::Shutdown => return false,
        }
        true
    }

    fn read_source(&mut self, now: Instant, i: usize) {
        let Source {
            input: Input::Net(leg),
            p1,
            ..
        } = &mut self.sources[i]
        else {
            return;
        };
        let router = &mut self.router;
        let mut content = self.content.as_mut();
        for _ in 0..READ_BUDGET {
            let res = leg.read_ts_batch(|payload, arrival| {
                for pkt in payload.chunks_exact(PACKET_LEN) {
                    p1.push(now, pkt);
                    if let Some(c) = content.as_deref_mut() {
                        c.push(now, i, pkt);
                    }
                }
                router.deliver(now, arrival, i, &payload);
            });
            match res {
                Ok(n) if n < crate::net::mmsg::BATCH => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::warn!(channel = %self.cfg.name, source = %self.cfg.sources[i].name, error = %e, "receive failed");
                    break;
                }
            }
        }
        if let Some(c) = &mut self.content {
            c.flush_source(i);
        }
        // The merger was pushed the datagrams' arrival times (most before `now`): let it do
        // what is due at `now` too.
        if let Some(m) = &mut self.router.merge {
            m.handle_timeout(now);
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        for i in 0..self.sources.len() {
            if let Input::Slate { .. } = self.sources[i].input {
                self.play_slate(now, i);
            }
            let Source { input, p1, rules } = &mut self.sources[i];
            p1.handle_timeout(now);
            let before = switch_verdict(rules);
            if let Some(c) = &mut self.content
                && rules.poll_timeout().is_some_and(|t| t <= now)
            {
                // Stale measurements make content rules unknown before their windows close.
                c.sync(now, i, rules);
            }
            let unrecovered = self.router.merged_loss.unrecovered;
            rules.handle_timeout(now, &Meter(input, p1, unrecovered));
            let after = switch_verdict(rules);
            if before != after {
                self.router.switch.set_rule_state(now, LegId(i), after);
            }
        }
        self.log_unrecovered_rule();
        self.router.switch.handle_timeout(now);
        if let Some(m) = &mut self.router.merge {
            m.handle_timeout(now);
        }
    }

    fn play_slate(&mut self, now: Instant, i: usize) {
        let Source {
            input:
                Input::Slate {
                    player,
                    packets,
                    bytes,
                },
            p1,
            ..
        } = &mut self.sources[i]
        else {
            return;
        };
        // After a stall (the thread was not scheduled, the output blocked), do not replay the
        // whole missed stretch in one burst: restart the loop now. The splicer marks the
        // discontinuity when the slate is on air.
        if player
            .poll_timeout()
            .is_some_and(|due| now.saturating_duration_since(due) > SLATE_MAX_LAG)
        {
            player.start(now);
        }
        self.slate_buf.clear();
        player.poll_packets(now, &mut self.slate_buf);
        for pkt in self.slate_buf.drain(..) {
            *packets += 1;
            *bytes += pkt.len() as u64;
            p1.push(now, &pkt);
            if let Some(c) = &mut self.content {
                c.push(now, i, &pkt);
            }
            self.router.deliver(now, now, i, &pkt);
        }
        if let Some(c) = &mut self.content {
            c.flush_source(i);
        }
    }

    /// Apply the content analyser's findings that arrived since the last wake-up.
    fn poll_content(&mut self, now: Instant) {
        let Some(c) = &mut self.content else {
            return;
        };
        if !c.poll_reports() {
            return;
        }
        for (i, s) in self.sources.iter_mut().enumerate() {
            let before = switch_verdict(&s.rules);
            c.apply(now, i, &mut s.rules);
            let after = switch_verdict(&s.rules);
            if before != after {
                self.router.switch.set_rule_state(now, LegId(i), after);
            }
        }
        c.clear();
    }

    /// Send what the splicer produced, to every output; then log the switch events.
    async fn flush(&mut self, now: Instant) {
        self.poll_content(now);
        self.router.drain_merged(now);
        while let Some(ev) = self.router.merge.as_mut().and_then(|m| m.poll_event()) {
            self.handle_content_event(ev);
        }
        while let Some(ev) = self.router.switch.poll_event() {
            self.handle_event(now, ev);
        }
        if self.router.out.is_empty() {
            return;
        }
        if let Some((since, from, to, reason)) = self.switch_pending.take() {
            let gap = self
                .last_output
                .map(|t| now.saturating_duration_since(t).as_secs_f64() * 1000.0);
            self.last_gap_ms = gap;
            let name = |i: Option<LegId>| {
                i.and_then(|l| self.cfg.sources.get(l.0))
                    .map_or("none", |s| s.name.as_str())
            };
            tracing::info!(
                channel = %self.cfg.name,
                from = name(from),
                to = name(to),
                reason = reason.label(),
                gap_ms = gap.unwrap_or(0.0),
                decided_ms_ago = now.saturating_duration_since(since).as_secs_f64() * 1000.0,
                "first packet after switch"
            );
        }
        for o in &mut self.outputs {
            o.send_ts(now, &self.router.out).await;
        }
        self.router.out.clear();
        self.last_output = Some(now);
    }

    /// One line per channel when its `unrecovered-packets` rules start or stop failing (every
    /// source reads the same count, so they change together).
    fn log_unrecovered_rule(&mut self) {
        let failing = self
            .sources
            .iter()
            .any(|s| s.rules.is_failing(Condition::UnrecoveredPackets));
        if failing == self.unrecovered_failing {
            return;
        }
        self.unrecovered_failing = failing;
        if self.muted {
            return;
        }
        let unrecovered = self.router.merged_loss.unrecovered;
        if failing {
            tracing::warn!(channel = %self.cfg.name, unrecovered, "unrecovered-packets rule failing: the merged output lost packets on every leg");
        } else {
            tracing::info!(channel = %self.cfg.name, unrecovered, "unrecovered-packets rule healthy again");
        }
    }

    fn handle_content_event(&mut self, ev: ContentEvent) {
        let name = |l: LegId| self.cfg.sources.get(l.0).map_or("?", |s| s.name.as_str());
        match ev {
            ContentEvent::Diverged { leg } => {
                self.diverged += 1;
                if !self.muted {
                    tracing::warn!(channel = %self.cfg.name, source = name(leg), "legs are not the same stream: falling back to switching");
                }
            }
            ContentEvent::Aligned if !self.muted => {
                tracing::info!(channel = %self.cfg.name, "legs aligned again: merging");
            }
            ContentEvent::Reanchored { leg } if !self.muted => {
                tracing::info!(channel = %self.cfg.name, source = name(leg), "leg re-anchored (restart or jump)")
            }
            ContentEvent::LegLost { leg } if !self.muted => {
                tracing::warn!(channel = %self.cfg.name, source = name(leg), "leg lost: no packets for leg_timeout_ms")
            }
            ContentEvent::LegBack { leg } if !self.muted => {
                tracing::info!(channel = %self.cfg.name, source = name(leg), "leg back")
            }
            _ => {}
        }
    }

    fn handle_event(&mut self, now: Instant, ev: Event) {
        let name = |i: Option<LegId>| {
            i.and_then(|l| self.cfg.sources.get(l.0))
                .map_or("none", |s| s.name.as_str())
        };
        match ev {
            Event::Switched {
                from, to, reason, ..
            } => {
                self.switch_pending = Some((now, from, to, reason));
                let merged = self.router.merge.as_ref().is_some_and(|m| m.aligned());
                let quiet =
                    merged || (self.muted && !matches!(reason, Reason::Manual | Reason::Stage));
                if !quiet {
                    tracing::warn!(channel = %self.cfg.name, from = name(from), to = name(to), reason = reason.label(), "switched");
                }
            }
            Event::SourceDown { leg, reason } if !self.muted => {
                tracing::warn!(channel = %self.cfg.name, source = name(Some(leg)), reason = reason.label(), "source unhealthy")
            }
            Event::SourceUp { leg } if !self.muted => {
                tracing::info!(channel = %self.cfg.name, source = name(Some(leg)), "source healthy")
            }
            Event::HeldDown { leg, until } if !self.muted => tracing::warn!(
                channel = %self.cfg.name,
                source = name(Some(leg)),
                hold_ms = until.saturating_duration_since(now).as_millis() as u64,
                "source flapping: held down"
            ),
            _ => {}
        }
    }

    fn snapshot(&self, now: Instant) -> ChannelSnapshot {
        let status = self.router.switch.status(now);
        let merge_stats = self.router.merge.as_ref().map(|m| m.stats());
        let merged = self.router.merge.as_ref().is_some_and(|m| m.aligned());
        let active = self.router.switch.active().map(|l| l.0);
        let sources = self
            .cfg
            .sources
            .iter()
            .zip(&self.sources)
            .enumerate()
            .map(|(i, (cfg, src))| {
                let st = status.sources.get(i);
                let leg = merge_stats.and_then(|m| m.legs.get(i));
                let (packets, bytes, dropped, local) = match &src.input {
                    Input::Net(l) => (
                        l.stats.packets,
                        l.stats.bytes,
                        l.stats.dropped_by_reason().collect(),
                        l.local.to_string(),
                    ),
                    Input::Slate { packets, bytes, .. } => {
                        (*packets, *bytes, BTreeMap::new(), String::new())
                    }
                };
                let up = st.is_some_and(|s| s.healthy);
                SourceSnapshot {
                    name: cfg.name.clone(),
                    url: cfg.url.to_string(),
                    role: cfg.role,
                    local_addr: local,
                    state: match st {
                        Some(s) if s.held_down_for_ms.is_some() => "held-down",
                        Some(s) if s.offline && s.last_packet_ms_ago.is_none() => "waiting",
                        Some(s) if s.offline => "offline",
                        Some(s) if s.failing_rule.is_some() => "failing-rule",
                        _ => "receiving",
                    },
                    up,
                    active: if merged {
                        leg.is_some_and(|l| l.aligned && !l.lost)
                    } else {
                        active == Some(i)
                    },
                    packets,
                    bytes,
                    dropped,
                    recovered: leg.map_or(0, |l| l.recovered),
                    duplicates: leg.map_or(0, |l| l.duplicates),
                    late: leg.map_or(0, |l| l.dropped),
                    path_differential_ms: leg
                        .map_or(0.0, |l| l.path_differential.as_secs_f64() * 1000.0),
                    last_packet_age_ms: st.and_then(|s| s.last_packet_ms_ago).map(|v| v as f64),
                    tr101290: Some(
                        Indicator::ALL
                            .iter()
                            .map(|ind| (ind.label(), src.p1.count(*ind)))
                            .collect(),
                    ),
                    rules: src.rules.status(),
                    content: self.content.as_ref().and_then(|c| c.status(now, i)),
                }
            })
            .collect();
        let (outputs, output) = super::output_snapshots(&self.outputs);
        let stats = self.router.switch.stats();
        let failovers = (0..Reason::COUNT)
            .filter_map(|k| Reason::from_index(k).map(|r| (r.label(), stats.switches[k])))
            .collect();
        ChannelSnapshot {
            name: self.cfg.name.clone(),
            mode: self.cfg.mode,
            state: "running",
            merge_window_ms: self.cfg.merge_window.as_millis() as u64,
            sources,
            merge: merge_stats.map_or_else(MergeSnapshot::default, |m| MergeSnapshot {
                released: m.output,
                unrecovered: m.unrecovered,
                duplicates: m.duplicates,
                late: m.legs.iter().map(|l| l.dropped).sum(),
                resyncs: m.reanchors,
                overflow: m.overflow,
                capacity_packets: super::merge_capacity(&self.cfg),
                placements: Some(BTreeMap::from([
                    ("time", m.time_placed),
                    ("pcr", m.pcr_placed),
                    ("ambiguous", m.ambiguous),
                    ("conflict", m.conflicts),
                ])),
            }),
            aligned: self.router.merge.as_ref().map(|m| m.aligned()),
            diverged: self.router.merge.as_ref().map(|_| self.diverged),
            output,
            outputs,
            failovers,
            muted: self.muted,
            switch: Some(status),
            last_switch_gap_ms: self.last_gap_ms,
            content: self.content.as_ref().map(|c| c.stats()),
        }
    }
}

/// The packet path of a switch channel: asks the [`Switch`] whether a datagram is on air and
/// runs it through the [`Splicer`] — into `out` when on air, into `scratch` otherwise (the
/// splicer reads every source's PSI so that a switch can announce the new tables at once;
/// what it emits for sources off air is discarded). With `switch_on_rap`, a switch to a new
/// source is held until that source sends a random access point (random_access_indicator)
/// or `rap_max_wait` has passed; meanwhile the old source, if it still sends, stays on air.
struct Router {
    switch: Switch,
    splicer: Splicer,
    /// Packets to send (reused: no per-packet allocation).
    out: Vec<Bytes>,
    scratch: Vec<Bytes>,
    switch_on_rap: bool,
    rap_max_wait: std::time::Duration,
    /// (new source, give up waiting at) while a switch waits for a random access point.
    rap_wait: Option<(usize, Instant)>,
    /// Content-merge mode: the merger of the legs. While it is aligned its output is the
    /// channel's output; when the legs diverge the channel falls back to switching.
    merge: Option<ContentMerger>,
    /// Content-merge mode: packets the merged output lost (the `unrecovered-packets` meter).
    merged_loss: MergedLoss,
}

/// The merger's unrecovered count, kept only for what reached the output.
#[derive(Clone, Copy, Debug, Default)]
struct MergedLoss {
    /// The merger's `unrecovered` when last looked at.
    seen: u64,
    /// Unrecovered packets counted while the merged stream was the output.
    unrecovered: u64,
}

impl MergedLoss {
    /// `total` is the merger's count now; what it gained since the last call is counted when
    /// the packets released meanwhile go to the output (`aligned`), the same decision as
    /// theirs in [`Router::drain_merged`].
    fn update(&mut self, total: u64, aligned: bool) {
        let new = total.saturating_sub(self.seen);
        self.seen = total;
        if aligned {
            self.unrecovered += new;
        }
    }
}

impl Router {
    /// Content-merge mode: move the merger's released packets to the output while the legs
    /// are aligned (and discard them while falling back to switching).
    fn drain_merged(&mut self, now: Instant) {
        if let Some(m) = &mut self.merge {
            let aligned = m.aligned();
            self.merged_loss.update(m.stats().unrecovered, aligned);
            while let Some(p) = m.poll_output(now) {
                if aligned {
                    self.out.push(p);
                }
            }
        }
    }

    /// Route one datagram of source `i`, read at about `now`. `arrival` is when it arrived
    /// (the kernel's receive timestamp, see [`crate::ingest::arrival`]): the content merger
    /// places datagrams by their arrival times, so it gets that; everything else runs at
    /// `now`.
    fn deliver(&mut self, now: Instant, arrival: Instant, i: usize, payload: &Bytes) {
        let on_air = self.switch.on_packet(now, LegId(i));
        if let Some(m) = &mut self.merge {
            m.push(arrival, LegId(i), payload);
            if m.aligned() {
                // Merged: the output comes from the merger (see `drain_merged`). The splicer
                // still reads every source's PSI so that a fallback switch is clean.
                self.splicer.push(i, payload, &mut self.scratch);
                self.scratch.clear();
                return;
            }
        }
        let playing = self.splicer.active();
        if on_air && playing == Some(i) {
            self.rap_wait = None;
        }
        if on_air && playing != Some(i) {
            if self.switch_on_rap && playing.is_some() {
                let deadline = match self.rap_wait {
                    Some((to, d)) if to == i => d,
                    _ => now + self.rap_max_wait,
                };
                self.rap_wait = Some((i, deadline));
                if now < deadline && !ts::packets(payload).any(|p| p.random_access()) {
                    self.splicer.push(i, payload, &mut self.scratch);
                    self.scratch.clear();
                    return;
                }
            }
            self.rap_wait = None;
            self.splicer.switch_to(i);
        }
        // While a switch waits for a random access point, the old source stays on air — only
        // while that switch is still the decision and its wait has not run out.
        let old_still_on = !on_air
            && playing == Some(i)
            && matches!(self.rap_wait, Some((to, d)) if self.switch.active() == Some(LegId(to)) && now < d);
        if on_air || old_still_on {
            self.splicer.push(i, payload, &mut self.out);
        } else {
            self.splicer.push(i, payload, &mut self.scratch);
            self.scratch.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::{HoldDownConfig, Role, Stage};
    use crate::merge::content::ContentConfig;
    use crate::ts::psi::{build_pat, build_pmt, packetize};
    use crate::ts::{ContinuityCounter, SYNC_BYTE};

    const VIDEO: Pid = Pid(0x100);

    /// PAT + PMT (program 1 on PID 0x1000, H.264 on 0x100) as TS packets.
    fn psi() -> Bytes {
        let mut v = Vec::new();
        packetize(
            &build_pat(1, 0, &[(1, Pid(0x1000))]),
            Pid(0),
            ContinuityCounter(0),
            &mut v,
        );
        packetize(
            &build_pmt(1, 0, VIDEO, &[(0x1b, VIDEO)]),
            Pid(0x1000),
            ContinuityCounter(0),
            &mut v,
        );
        Bytes::from(v)
    }

    /// A video packet starting a PES, with an adaptation field (random_access_indicator when
    /// `rap`), its payload filled with `mark` so the test can tell the sources apart.
    fn video(cc: u8, rap: bool, mark: u8) -> Bytes {
        let mut p = [mark; PACKET_LEN];
        p[0] = SYNC_BYTE;
        p[1] = 0x40 | (VIDEO.0 >> 8) as u8;
        p[2] = VIDEO.0 as u8;
        p[3] = 0x30 | (cc & 0x0f);
        p[4] = 1;
        p[5] = if rap { 0x40 } else { 0 };
        p[6..9].copy_from_slice(&[0, 0, 1]);
        Bytes::copy_from_slice(&p)
    }

    fn router(t0: Instant, on_rap: bool) -> Router {
        Router {
            switch: Switch::new(
                t0,
                SwitchConfig {
                    roles: vec![Role::Preferred, Role::NonPreferred],
                    offline_window: Duration::from_millis(500),
                    auto_switch_to_preferred: false,
                    clear_time: Duration::from_millis(100),
                    holddown: HoldDownConfig {
                        failures: 0,
                        period: Duration::ZERO,
                        hold: Duration::ZERO,
                    },
                    stage: Stage::Live,
                },
            ),
            splicer: Splicer::new(),
            out: Vec::new(),
            scratch: Vec::new(),
            switch_on_rap: on_rap,
            rap_max_wait: Duration::from_millis(300),
            rap_wait: None,
            merge: None,
            merged_loss: MergedLoss::default(),
        }
    }

    /// Marks of the video packets sent since the last call.
    fn sent(r: &mut Router) -> Vec<u8> {
        let v = r
            .out
            .iter()
            .filter(|p| {
                crate::ts::TsPacket::try_new(p).is_some_and(|t| t.pid() == VIDEO && t.has_payload())
            })
            .map(|p| p[187])
            .collect();
        r.out.clear();
        v
    }

    /// Both sources on the air path, source 0 playing, then an operator lock to source 1.
    fn playing_then_locked(t0: Instant, on_rap: bool) -> Router {
        let mut r = router(t0, on_rap);
        r.deliver(t0, t0, 0, &psi());
        r.deliver(t0, t0, 1, &psi());
        r.deliver(t0, t0, 0, &video(0, true, 0xa0));
        assert_eq!(sent(&mut r), vec![0xa0]);
        r.deliver(t0, t0, 1, &video(0, true, 0xb1));
        assert_eq!(sent(&mut r), Vec::<u8>::new(), "source 1 is not on air yet");
        r.switch.lock(t0, LegId(1));
        r
    }

    #[test]
    fn switch_on_rap_keeps_the_old_source_until_the_new_one_sends_a_keyframe() {
        let t0 = crate::merge::sim::base();
        let ms = Duration::from_millis;
        let mut r = playing_then_locked(t0, true);
        r.deliver(t0 + ms(10), t0 + ms(10), 1, &video(1, false, 0xb1));
        r.deliver(t0 + ms(10), t0 + ms(10), 0, &video(1, false, 0xa0));
        assert_eq!(
            sent(&mut r),
            vec![0xa0],
            "no keyframe on 1 yet: 0 stays on air"
        );
        r.deliver(t0 + ms(20), t0 + ms(20), 1, &video(2, true, 0xb1));
        r.deliver(t0 + ms(20), t0 + ms(20), 0, &video(2, false, 0xa0));
        assert_eq!(
            sent(&mut r),
            vec![0xb1],
            "switched on 1's keyframe, 0 is off air"
        );
    }

    #[test]
    fn switch_on_rap_gives_up_waiting_after_rap_max_wait() {
        let t0 = crate::merge::sim::base();
        let ms = Duration::from_millis;
        let mut r = playing_then_locked(t0, true);
        r.deliver(t0 + ms(10), t0 + ms(10), 1, &video(1, false, 0xb1));
        assert!(sent(&mut r).is_empty());
        r.deliver(t0 + ms(310), t0 + ms(310), 1, &video(2, false, 0xb1));
        assert_eq!(
            sent(&mut r),
            vec![0xb1],
            "300 ms without a keyframe: switch anyway"
        );
    }

    #[test]
    fn the_old_source_leaves_the_air_when_the_rap_wait_runs_out_or_the_decision_changes() {
        let t0 = crate::merge::sim::base();
        let ms = Duration::from_millis;
        let mut r = playing_then_locked(t0, true);
        r.deliver(t0 + ms(10), t0 + ms(10), 1, &video(1, false, 0xb1));
        r.deliver(t0 + ms(20), t0 + ms(20), 0, &video(1, false, 0xa0));
        assert_eq!(sent(&mut r), vec![0xa0]);
        r.deliver(t0 + ms(400), t0 + ms(400), 0, &video(2, false, 0xa0));
        assert!(sent(&mut r).is_empty(), "the wait ran out: 0 is off air");

        let mut r = playing_then_locked(t0, true);
        r.deliver(t0 + ms(10), t0 + ms(10), 1, &video(1, false, 0xb1));
        r.switch.unlock(t0 + ms(15));
        r.switch.lock(t0 + ms(16), LegId(0));
        r.deliver(t0 + ms(20), t0 + ms(20), 0, &video(1, false, 0xa0));
        assert_eq!(sent(&mut r), vec![0xa0]);
        assert!(
            r.rap_wait.is_none(),
            "back on 0: the stale wait for 1 is gone"
        );
    }

    /// A TS packet on `VIDEO` with CC `i mod 16` and a payload unique to (`i`, `stream`).
    fn numbered(i: u64, stream: u64) -> [u8; PACKET_LEN] {
        let mut p = [0u8; PACKET_LEN];
        p[0] = SYNC_BYTE;
        p[1] = (VIDEO.0 >> 8) as u8;
        p[2] = VIDEO.0 as u8;
        p[3] = 0x10 | (i & 0x0f) as u8;
        p[4..12].copy_from_slice(&i.to_le_bytes());
        p[12..20].copy_from_slice(&stream.to_le_bytes());
        p
    }

    /// Content-merge glue in virtual time: a two-leg [`Router`] with its merger, and one
    /// `unrecovered-packets` rule per source (100 ms windows, failing while 1 of the last 3
    /// is in error), driven the way `SwitchChannel` drives them.
    struct MergeSim {
        r: Router,
        rules: Vec<SourceRules>,
        released: usize,
    }

    struct LossMeter(u64);

    impl SourceMeter for LossMeter {
        fn bytes(&self) -> u64 {
            0
        }
        fn p1_errors(&self, _: Option<Pid>) -> u64 {
            0
        }
        fn unrecovered(&self) -> u64 {
            self.0
        }
    }

    impl MergeSim {
        fn new(t0: Instant) -> MergeSim {
            let mut r = router(t0, false);
            r.merge = Some(ContentMerger::new(ContentConfig {
                legs: 2,
                window: Duration::from_millis(50),
                capacity: 4096,
                leg_timeout: Duration::from_millis(500),
            }));
            let spec = crate::rules::RuleSpec {
                condition: Condition::UnrecoveredPackets,
                sample_duration: Duration::from_millis(100),
                samples: 3,
                threshold: 1,
                pid: None,
                min_kbps: None,
            };
            MergeSim {
                r,
                rules: vec![SourceRules::new(t0, std::slice::from_ref(&spec)); 2],
                released: 0,
            }
        }

        fn drain(&mut self, now: Instant) {
            self.r.drain_merged(now);
            self.released += self.r.out.len();
            self.r.out.clear();
        }

        /// Fire every rule and merger timeout up to `t`, rules first (as `handle_timeout`).
        fn run_to(&mut self, t: Instant) {
            loop {
                let m = self.r.merge.as_ref().and_then(|m| m.poll_timeout());
                let due = self
                    .rules
                    .iter()
                    .filter_map(|r| r.poll_timeout())
                    .chain(m)
                    .min()
                    .filter(|d| *d <= t);
                let Some(now) = due else { break };
                for rules in &mut self.rules {
                    rules.handle_timeout(now, &LossMeter(self.r.merged_loss.unrecovered));
                }
                if let Some(m) = &mut self.r.merge {
                    m.handle_timeout(now);
                }
                self.drain(now);
            }
        }

        fn arrive(&mut self, t: Instant, leg: usize, d: &Bytes) {
            self.run_to(t);
            self.r.deliver(t, t, leg, d);
            self.drain(t);
        }

        /// Datagrams `[from, to)` of 7 packets, one every 525 µs after `t0`, on leg 0 and
        /// 5 ms later on leg 1 (which carries `stream_b`); `lost` on both legs.
        fn send(&mut self, t0: Instant, from: u64, to: u64, stream_b: u64, lost: &[u64]) {
            let dgram = |d: u64, stream: u64| {
                let v: Vec<u8> = (d * 7..d * 7 + 7)
                    .flat_map(|i| numbered(i, stream))
                    .collect();
                Bytes::from(v)
            };
            let at = |d: u64| t0 + Duration::from_micros(525 * d);
            let mut arrivals: Vec<(Instant, usize, u64)> = Vec::new();
            for d in (from..to).filter(|d| !lost.contains(d)) {
                arrivals.push((at(d), 0, d));
                arrivals.push((at(d) + Duration::from_millis(5), 1, d));
            }
            arrivals.sort_by_key(|a| (a.0, a.1));
            for (t, leg, d) in arrivals {
                let stream = if leg == 1 { stream_b } else { 0 };
                self.arrive(t, leg, &dgram(d, stream));
            }
        }

        fn failing(&self) -> [bool; 2] {
            [0, 1].map(|i| self.rules[i].is_failing(Condition::UnrecoveredPackets))
        }
    }

    #[test]
    fn unrecovered_rule_counts_what_the_merged_output_lost() {
        let t0 = crate::merge::sim::base();
        let ms = |v: u64| t0 + Duration::from_millis(v);
        let mut sim = MergeSim::new(t0);
        // 0–105 ms: datagram 100 (52.5 ms, CCs 12..=2 of packets 700..707) lost on both legs.
        sim.send(t0, 0, 200, 0, &[100]);
        assert!(sim.r.merge.as_ref().unwrap().aligned());
        assert_eq!(sim.r.merged_loss.unrecovered, 7, "the CC gap of 7 packets");
        sim.run_to(ms(100));
        assert_eq!(sim.failing(), [true, true], "every source sees it");
        assert_eq!(sim.rules[0].status()[0].recent, [true]);
        assert_eq!(
            switch_verdict(&sim.rules[0]),
            None,
            "an alarm: the switch is not told"
        );
        // No loss after that: healthy once the window in error is older than the last 3.
        sim.send(t0, 200, 800, 0, &[]);
        sim.run_to(ms(400));
        assert_eq!(sim.failing(), [false, false]);
        assert_eq!(
            sim.rules[1].status()[0].recent,
            [false, false, false],
            "windows 1..=3"
        );
        assert_eq!(sim.rules[1].status()[0].failures, 1);
        assert_eq!(sim.released, 800 * 7 - 7, "sanity: the merged output");
    }

    #[test]
    fn unrecovered_rule_ignores_losses_while_falling_back_to_switching() {
        let t0 = crate::merge::sim::base();
        let mut sim = MergeSim::new(t0);
        sim.send(t0, 0, 400, 0, &[]);
        // Leg 1 turns into another stream: the merger stops merging (fallback).
        sim.send(t0, 400, 1000, 1, &[]);
        let m = sim.r.merge.as_ref().unwrap();
        assert!(!m.aligned(), "{:?}", m.stats());
        // (Before the merger gave up on leg 1, a few of its packets may have reached the
        // merged output as insertions: CC gaps that did reach the output, counted.)
        let before = sim.r.merged_loss.unrecovered;
        let merger_before = m.stats().unrecovered;
        // Leg 0 (the only leg the merger still places) loses a datagram: the merger counts a
        // gap in what it releases, but that is not the output now.
        sim.send(t0, 1000, 1400, 1, &[1200]);
        sim.run_to(t0 + Duration::from_millis(800));
        let m = sim.r.merge.as_ref().unwrap();
        assert!(!m.aligned());
        assert_eq!(
            m.stats().unrecovered,
            merger_before + 7,
            "the merger saw the gap"
        );
        assert_eq!(sim.r.merged_loss.unrecovered, before, "not in the output");
        // Windows 5..=7 (500–800 ms, the loss at 630 ms) are clean.
        assert_eq!(sim.rules[0].status()[0].recent, [false, false, false]);
        assert_eq!(sim.failing(), [false, false]);
    }

    #[test]
    fn without_switch_on_rap_the_switch_is_immediate() {
        let t0 = crate::merge::sim::base();
        let mut r = playing_then_locked(t0, false);
        r.deliver(
            t0 + Duration::from_millis(10),
            t0 + Duration::from_millis(10),
            1,
            &video(1, false, 0xb1),
        );
        r.deliver(
            t0 + Duration::from_millis(10),
            t0 + Duration::from_millis(10),
            0,
            &video(1, false, 0xa0),
        );
        assert_eq!(sent(&mut r), vec![0xb1]);
    }
}
