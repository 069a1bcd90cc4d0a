//! The task that runs one SMPTE ST 2022-7 channel: waits on every leg's socket, the merge
//! timer and the command queue; feeds datagrams to the sans-IO [`Merger`] and sends what it
//! releases to every output. The only clock reads of the packet path are here.

use std::collections::BTreeMap;
use std::io;
use std::time::Instant;

use tokio::sync::mpsc;

use super::wait::{Waiter, Wake};
use super::{ChannelSnapshot, Command, MergeSnapshot, SourceSnapshot};
use crate::config::ChannelConfig;
use crate::ingest::Leg;
use crate::merge::LegId;
use crate::merge::seq2022_7::{Event, Merger, MergerConfig};
use crate::output::Output;
use crate::rtp::RtpPacket;

/// Batches read from one socket before the task looks at the others again.
const READ_BUDGET: usize = 8;

/// Read the clock. The glue is the only place allowed to; the logic takes `now`.
#[allow(clippy::disallowed_methods)]
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

pub(super) struct MergeChannel {
    cfg: ChannelConfig,
    legs: Vec<Leg>,
    outputs: Vec<Output>,
    merger: Merger,
    capacity: usize,
    /// Released packets waiting to be sent (reused: no per-packet allocation).
    out: Vec<RtpPacket>,
    legs_lost: u64,
    muted: bool,
}

impl MergeChannel {
    pub(super) fn new(cfg: ChannelConfig, legs: Vec<Leg>, outputs: Vec<Output>) -> MergeChannel {
        let capacity = super::merge_capacity(&cfg);
        let merger = Merger::new(MergerConfig {
            legs: legs.len(),
            window: cfg.merge_window,
            capacity,
            leg_timeout: cfg.leg_timeout,
        });
        MergeChannel {
            legs,
            outputs,
            merger,
            capacity,
            out: Vec::with_capacity(1024),
            legs_lost: 0,
            muted: cfg.muted,
            cfg,
        }
    }

    pub(super) async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut waiter = Waiter::new();
        loop {
            waiter.arm(self.merger.poll_timeout());
            let legs = &self.legs;
            let wake = waiter
                .wait(&mut commands, legs.len(), |i| Some(&legs[i].socket))
                .await;
            match wake {
                Wake::Readable(i) => {
                    let now = now();
                    self.read_leg(now, i);
                    self.flush(now).await;
                }
                Wake::Timer => {
                    let now = now();
                    self.merger.handle_timeout(now);
                    self.flush(now).await;
                }
                Wake::Command(Some(Command::Snapshot(tx))) => {
                    let _ = tx.send(self.snapshot(now()));
                }
                Wake::Command(Some(Command::Mute(m))) => self.muted = m,
                Wake::Command(Some(Command::Lock(_, tx) | Command::Stage(_, tx))) => {
                    let _ = tx.send(Err("locks and stages apply to mode = \"switch\" channels; this channel merges its legs".to_owned()));
                }
                Wake::Command(Some(Command::Shutdown) | None) => break,
            }
        }
        tracing::info!(channel = %self.cfg.name, "channel stopped");
    }

    fn read_leg(&mut self, now: Instant, i: usize) {
        let merger = &mut self.merger;
        let leg = &mut self.legs[i];
        for _ in 0..READ_BUDGET {
            match leg.read_rtp_batch(|p| {
                merger.push(now, LegId(i), p);
            }) {
                Ok(n) if n < crate::net::mmsg::BATCH => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::warn!(channel = %self.cfg.name, source = %self.cfg.sources[i].name, error = %e, "receive failed");
                    break;
                }
            }
        }
    }

    /// Send everything the merger released, to every output, and handle its events.
    async fn flush(&mut self, now: Instant) {
        while let Some(p) = self.merger.poll_output(now) {
            self.out.push(p);
        }
        if !self.out.is_empty() {
            for o in &mut self.outputs {
                o.send_rtp(&self.out).await;
            }
            self.out.clear();
        }
        while let Some(ev) = self.merger.poll_event() {
            self.handle_event(ev);
        }
    }

    fn handle_event(&mut self, ev: Event) {
        let ch = &self.cfg.name;
        let src = |leg: LegId| {
            self.cfg
                .sources
                .get(leg.0)
                .map(|s| s.name.as_str())
                .unwrap_or("?")
        };
        if let Event::LegLost { .. } = ev {
            self.legs_lost += 1;
        }
        if self.muted {
            return;
        }
        match ev {
            Event::LegLost { leg } => {
                tracing::warn!(channel = %ch, source = src(leg), "source lost: no packets for leg_timeout_ms");
            }
            Event::LegBack { leg } => {
                tracing::info!(channel = %ch, source = src(leg), "source back")
            }
            Event::Resync { leg, from, to } => {
                tracing::warn!(channel = %ch, source = src(leg), from = from.0, to = to.0, "merger resynchronised (sender restart or jump)")
            }
            Event::Gap { first, count } => {
                tracing::debug!(channel = %ch, first = first.0, count, "packets lost on every leg")
            }
        }
    }

    fn snapshot(&self, now: Instant) -> ChannelSnapshot {
        let ms = self.merger.stats();
        let sources = self
            .cfg
            .sources
            .iter()
            .zip(&self.legs)
            .enumerate()
            .map(|(i, (src, leg))| {
                let st = ms.legs.get(i).cloned().unwrap_or_default();
                let up = st.last_seen.is_some() && !st.lost;
                SourceSnapshot {
                    name: src.name.clone(),
                    url: src.url.to_string(),
                    role: src.role,
                    local_addr: leg.local.to_string(),
                    state: match (st.last_seen, st.lost) {
                        (None, _) => "waiting",
                        (Some(_), true) => "lost",
                        (Some(_), false) => "receiving",
                    },
                    up,
                    active: up,
                    packets: leg.stats.packets,
                    bytes: leg.stats.bytes,
                    dropped: leg.stats.dropped_by_reason().collect(),
                    recovered: st.recovered,
                    duplicates: st.duplicates,
                    late: st.late,
                    path_differential_ms: st.path_differential.as_secs_f64() * 1000.0,
                    last_packet_age_ms: st
                        .last_seen
                        .map(|t| now.saturating_duration_since(t).as_secs_f64() * 1000.0),
                    tr101290: None,
                    rules: Vec::new(),
                    content: None,
                }
            })
            .collect();
        let (outputs, output) = super::output_snapshots(&self.outputs);
        ChannelSnapshot {
            name: self.cfg.name.clone(),
            mode: self.cfg.mode,
            state: "running",
            merge_window_ms: self.cfg.merge_window.as_millis() as u64,
            sources,
            merge: MergeSnapshot {
                released: ms.output,
                unrecovered: ms.unrecovered,
                duplicates: ms.duplicates,
                late: ms.late,
                resyncs: ms.resyncs,
                overflow: ms.overflow,
                capacity_packets: self.capacity,
                placements: None,
            },
            output,
            outputs,
            failovers: BTreeMap::from([("leg_lost", self.legs_lost)]),
            muted: self.muted,
            switch: None,
            last_switch_gap_ms: None,
            aligned: None,
            diverged: None,
            content: None,
        }
    }
}
