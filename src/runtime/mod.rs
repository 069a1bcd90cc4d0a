//! The gateway at run time: one thread per channel, running a single-threaded tokio runtime
//! that owns the channel's sockets, its state machines and its counters. Nothing is shared
//! between channels and nothing is locked on the packet path; packets never cross a thread.
//! The HTTP side (on the main runtime) asks a channel for a [`ChannelSnapshot`] over a
//! command queue.
//!
//! A thread per channel rather than tasks on a shared work-stealing pool: the socket's
//! readiness wakes the thread that owns the socket directly, with no scheduler hop, which is
//! what keeps a busy channel from overflowing its receive buffer.

mod channel;
pub mod content;
mod switch;
mod wait;

use std::collections::BTreeMap;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::config::{ChannelConfig, Config, Mode, Role};
use crate::ingest::Leg;
use crate::net::NetError;
use crate::output::Output;

/// Shared with a channel's outputs: while set, they send nothing (cluster hot standby).
pub type StandbyFlag = std::sync::Arc<std::sync::atomic::AtomicBool>;

/// How long the API waits for a channel thread to answer a command.
pub const COMMAND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Requests from the control side to a channel task.
pub(crate) enum Command {
    Snapshot(oneshot::Sender<ChannelSnapshot>),
    /// Switch mode: play this source whatever its health (None: release the lock).
    Lock(Option<usize>, oneshot::Sender<Result<(), String>>),
    /// Switch mode: live-event stage.
    Stage(crate::config::Stage, oneshot::Sender<Result<(), String>>),
    /// No error/recovery notifications or warning logs (metrics still counted).
    Mute(bool),
    Shutdown,
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("channel {channel:?}: {source}")]
    Net { channel: String, source: NetError },
    #[error("channel {channel:?}: mode {mode:?} is not supported by this build")]
    Unsupported { channel: String, mode: Mode },
    #[error("channel {channel:?}: slate {path}: {reason}")]
    Slate {
        channel: String,
        path: String,
        reason: String,
    },
    #[error("channel {channel:?}: cannot start its thread: {source}")]
    Thread {
        channel: String,
        source: std::io::Error,
    },
}

/// Everything the API and metrics show about one channel.
#[derive(Clone, Debug, Serialize)]
pub struct ChannelSnapshot {
    pub name: String,
    pub mode: Mode,
    /// "running", "disabled" (configured, not started) or "stopped" (its thread ended).
    pub state: &'static str,
    pub merge_window_ms: u64,
    pub sources: Vec<SourceSnapshot>,
    pub merge: MergeSnapshot,
    pub output: OutputTotals,
    pub outputs: Vec<OutputSnapshot>,
    /// Failover-like events by reason (in merge mode: a leg lost).
    pub failovers: BTreeMap<&'static str, u64>,
    /// No notifications or warning logs for this channel.
    pub muted: bool,
    /// Switch mode: what is on air and why, locks, stage, hold-downs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub switch: Option<crate::merge::switch::SwitchStatus>,
    /// Switch mode: output gap of the last switch (last packet before → first after), ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_switch_gap_ms: Option<f64>,
    /// Content-merge mode: the legs are aligned and merged (false: falling back to switching).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aligned: Option<bool>,
    /// Content-merge mode: times the legs were found to differ.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diverged: Option<u64>,
    /// Switch mode with content rules: the analysis queue's counters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<content::ContentStats>,
}

#[derive(Clone, Debug, Serialize)]
pub struct SourceSnapshot {
    pub name: String,
    pub url: String,
    pub role: Role,
    pub local_addr: String,
    /// "receiving", "lost" (silent for leg_timeout_ms) or "waiting" (nothing yet).
    pub state: &'static str,
    pub up: bool,
    /// Feeding the output (in merge mode: every leg that is up).
    pub active: bool,
    pub packets: u64,
    pub bytes: u64,
    pub dropped: BTreeMap<&'static str, u64>,
    pub recovered: u64,
    pub duplicates: u64,
    pub late: u64,
    pub path_differential_ms: f64,
    pub last_packet_age_ms: Option<f64>,
    /// Switch mode: TR 101 290 priority-1 error counts by indicator.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tr101290: Option<BTreeMap<&'static str, u64>>,
    /// Switch mode: sampled failover rules and their windows.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<crate::rules::RuleStatus>,
    /// Switch mode with content rules: streams, last measured values, condition states.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<crate::rules::cqa::monitor::ContentStatus>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct MergeSnapshot {
    pub released: u64,
    pub unrecovered: u64,
    pub duplicates: u64,
    pub late: u64,
    pub resyncs: u64,
    pub overflow: u64,
    pub capacity_packets: usize,
    /// Content merge: datagrams placed on evidence other than a content match, by kind
    /// (`time`: after a gap its leg's arrival times measured; `pcr`: where its PCR says;
    /// `ambiguous`: among several places content allowed; `conflict`: positions inserted).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub placements: Option<BTreeMap<&'static str, u64>>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct OutputTotals {
    pub packets: u64,
    pub bytes: u64,
    pub errors: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct OutputSnapshot {
    pub url: String,
    pub packets: u64,
    pub bytes: u64,
    pub errors: u64,
}

impl ChannelSnapshot {
    /// Add the counters of `prev` (an earlier run of the same channel) to these.
    pub fn add_counters(&mut self, prev: &ChannelSnapshot) {
        fn add_map(to: &mut BTreeMap<&'static str, u64>, from: &BTreeMap<&'static str, u64>) {
            for (k, v) in from {
                *to.entry(k).or_default() += v;
            }
        }
        for (s, p) in self.sources.iter_mut().zip(&prev.sources) {
            s.packets += p.packets;
            s.bytes += p.bytes;
            s.recovered += p.recovered;
            s.duplicates += p.duplicates;
            s.late += p.late;
            add_map(&mut s.dropped, &p.dropped);
            match (&mut s.tr101290, &p.tr101290) {
                (Some(t), Some(f)) => add_map(t, f),
                (None, Some(f)) => s.tr101290 = Some(f.clone()),
                _ => {}
            }
        }
        let (m, p) = (&mut self.merge, &prev.merge);
        m.released += p.released;
        m.unrecovered += p.unrecovered;
        m.duplicates += p.duplicates;
        m.late += p.late;
        m.resyncs += p.resyncs;
        m.overflow += p.overflow;
        self.output.packets += prev.output.packets;
        self.output.bytes += prev.output.bytes;
        self.output.errors += prev.output.errors;
        for (o, p) in self.outputs.iter_mut().zip(&prev.outputs) {
            o.packets += p.packets;
            o.bytes += p.bytes;
            o.errors += p.errors;
        }
        add_map(&mut self.failovers, &prev.failovers);
        if let Some(p) = prev.diverged {
            *self.diverged.get_or_insert(0) += p;
        }
    }

    /// A channel that is not running: its configuration, zero counters.
    pub fn idle(cfg: &ChannelConfig, state: &'static str) -> ChannelSnapshot {
        ChannelSnapshot {
            name: cfg.name.clone(),
            mode: cfg.mode,
            state,
            merge_window_ms: cfg.merge_window.as_millis() as u64,
            sources: cfg
                .sources
                .iter()
                .map(|s| SourceSnapshot {
                    name: s.name.clone(),
                    url: s.url.to_string(),
                    role: s.role,
                    local_addr: String::new(),
                    state,
                    up: false,
                    active: false,
                    packets: 0,
                    bytes: 0,
                    dropped: BTreeMap::new(),
                    recovered: 0,
                    duplicates: 0,
                    late: 0,
                    path_differential_ms: 0.0,
                    last_packet_age_ms: None,
                    tr101290: None,
                    rules: Vec::new(),
                    content: None,
                })
                .collect(),
            merge: MergeSnapshot::default(),
            output: OutputTotals::default(),
            outputs: cfg
                .outputs
                .iter()
                .map(|o| OutputSnapshot {
                    url: o.url.to_string(),
                    packets: 0,
                    bytes: 0,
                    errors: 0,
                })
                .collect(),
            failovers: BTreeMap::new(),
            muted: cfg.muted,
            switch: None,
            last_switch_gap_ms: None,
            aligned: None,
            diverged: None,
            content: None,
        }
    }
}

/// Handle to a running channel thread.
pub struct ChannelHandle {
    pub name: String,
    /// Outputs muted (cluster hot standby).
    pub standby: StandbyFlag,
    tx: mpsc::Sender<Command>,
    join: std::thread::JoinHandle<()>,
}

impl ChannelHandle {
    /// A fresh snapshot, or `None` if the task has stopped.
    /// A fresh snapshot, or `None` if the channel has stopped or does not answer within
    /// [`COMMAND_TIMEOUT`] (a stuck channel must not stall the API or `/metrics`).
    pub async fn snapshot(&self) -> Option<ChannelSnapshot> {
        let (tx, rx) = oneshot::channel();
        self.call(Command::Snapshot(tx), rx).await.ok()
    }

    /// Send a command and wait (bounded) for its answer.
    async fn call<T>(&self, cmd: Command, rx: oneshot::Receiver<T>) -> Result<T, String> {
        tokio::time::timeout(COMMAND_TIMEOUT, async {
            self.tx
                .send(cmd)
                .await
                .map_err(|_| "channel stopped".to_owned())?;
            rx.await.map_err(|_| "channel stopped".to_owned())
        })
        .await
        .map_err(|_| format!("channel did not answer within {COMMAND_TIMEOUT:?}"))?
    }
    pub fn is_running(&self) -> bool {
        !self.join.is_finished()
    }

    /// Send a command that answers; `Err` when the channel refuses or has stopped.
    pub async fn lock(&self, source: Option<usize>) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.call(Command::Lock(source, tx), rx).await?
    }

    pub async fn set_stage(&self, stage: crate::config::Stage) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.call(Command::Stage(stage, tx), rx).await?
    }

    pub async fn mute(&self, muted: bool) -> Result<(), String> {
        tokio::time::timeout(COMMAND_TIMEOUT, self.tx.send(Command::Mute(muted)))
            .await
            .map_err(|_| "channel did not answer".to_owned())?
            .map_err(|_| "channel stopped".to_owned())
    }
}

/// One configured channel: its configuration and, while it runs, its thread.
pub struct ChannelSlot {
    pub cfg: ChannelConfig,
    pub handle: Option<ChannelHandle>,
    /// Counters of the channel's earlier runs (before a disable): added to every snapshot so
    /// that exported counters never go backwards.
    carried: Option<ChannelSnapshot>,
}

impl ChannelSlot {
    /// A fresh snapshot, or the configuration with zero counters while disabled.
    pub async fn snapshot(&self) -> ChannelSnapshot {
        let mut s = match &self.handle {
            Some(h) => match h.snapshot().await {
                Some(s) => s,
                None => ChannelSnapshot::idle(&self.cfg, "stopped"),
            },
            None => ChannelSnapshot::idle(&self.cfg, "disabled"),
        };
        if let Some(prev) = &self.carried {
            s.add_counters(prev);
        }
        s
    }
}

/// All channels of this node.
pub struct Gateway {
    pub channels: Vec<ChannelSlot>,
}

impl Gateway {
    /// Start one thread per enabled channel; each binds its sockets first and reports back,
    /// so a bad port fails the start instead of half-running (threads already started are
    /// stopped again). Disabled channels are kept, not started.
    pub fn start(cfg: &Config) -> Result<Gateway, RuntimeError> {
        let mut gw = Gateway {
            channels: Vec::new(),
        };
        for ch in &cfg.channels {
            let handle = if ch.disabled {
                tracing::info!(channel = %ch.name, "channel disabled in the configuration: not started");
                None
            } else {
                match start_channel(ch, false) {
                    Ok(h) => Some(h),
                    Err(e) => {
                        gw.stop_threads();
                        return Err(e);
                    }
                }
            };
            gw.channels.push(ChannelSlot {
                cfg: ch.clone(),
                handle,
                carried: None,
            });
        }
        Ok(gw)
    }

    fn stop_threads(&mut self) {
        for c in self.channels.drain(..).filter_map(|c| c.handle) {
            let _ = c.tx.try_send(Command::Shutdown);
            let _ = c.join.join();
        }
    }

    pub fn find(&self, name: &str) -> Option<&ChannelSlot> {
        self.channels.iter().find(|c| c.cfg.name == name)
    }

    /// Start a disabled channel (API "enable").
    pub fn enable(&mut self, name: &str) -> Result<(), String> {
        let slot = self
            .channels
            .iter_mut()
            .find(|c| c.cfg.name == name)
            .ok_or_else(|| format!("no channel named {name:?}"))?;
        if slot.handle.as_ref().is_some_and(|h| h.is_running()) {
            return Ok(());
        }
        slot.handle = Some(start_channel(&slot.cfg, false).map_err(|e| e.to_string())?);
        tracing::info!(channel = %name, "channel enabled by operator");
        Ok(())
    }

    /// Stop a channel and keep its configuration (API "disable"); its sockets are closed.
    pub async fn disable(&mut self, name: &str) -> Result<(), String> {
        let slot = self
            .channels
            .iter_mut()
            .find(|c| c.cfg.name == name)
            .ok_or_else(|| format!("no channel named {name:?}"))?;
        if let Some(h) = slot.handle.take() {
            if let Some(last) = h.snapshot().await {
                match &mut slot.carried {
                    Some(c) => c.add_counters(&last),
                    None => slot.carried = Some(last),
                }
            }
            let _ = h.tx.send(Command::Shutdown).await;
            let _ = tokio::task::spawn_blocking(move || h.join.join()).await;
            tracing::info!(channel = %name, "channel disabled by operator");
        }
        Ok(())
    }

    /// Cluster: start a channel the manager placed here (replacing a slot of the same name,
    /// whose counters are carried over). `standby`: outputs muted (hot standby).
    pub fn add(&mut self, cfg: &ChannelConfig, standby: bool) -> Result<(), RuntimeError> {
        let handle = start_channel(cfg, standby)?;
        match self.channels.iter_mut().find(|c| c.cfg.name == cfg.name) {
            Some(slot) => {
                slot.cfg = cfg.clone();
                slot.handle = Some(handle);
            }
            None => self.channels.push(ChannelSlot {
                cfg: cfg.clone(),
                handle: Some(handle),
                carried: None,
            }),
        }
        Ok(())
    }

    /// Cluster: stop a channel and forget it (counters of its runs are lost with it).
    pub async fn remove(&mut self, name: &str) {
        let _ = self.disable(name).await;
        self.channels.retain(|c| c.cfg.name != name);
    }

    /// Cluster: mute (hot standby) or unmute a running channel's outputs; returns the
    /// previous setting (`None` when the channel is not running here).
    pub fn set_standby(&self, name: &str, standby: bool) -> Option<bool> {
        let h = self.find(name)?.handle.as_ref()?;
        Some(
            h.standby
                .swap(standby, std::sync::atomic::Ordering::Relaxed),
        )
    }

    pub async fn snapshots(&self) -> Vec<ChannelSnapshot> {
        let mut out = Vec::with_capacity(self.channels.len());
        for c in &self.channels {
            out.push(c.snapshot().await);
        }
        out
    }

    /// Stop every channel and wait for the threads to end; returns their last snapshots.
    pub async fn shutdown(self) -> Vec<ChannelSnapshot> {
        let last = self.snapshots().await;
        for c in self.channels.into_iter().filter_map(|c| c.handle) {
            let _ = c.tx.send(Command::Shutdown).await;
            let _ = tokio::task::spawn_blocking(move || c.join.join()).await;
        }
        last
    }
}

/// Spawn the channel's thread and wait until it has bound its sockets (or failed to).
fn start_channel(ch: &ChannelConfig, standby: bool) -> Result<ChannelHandle, RuntimeError> {
    let (tx, rx) = mpsc::channel(16);
    let standby: StandbyFlag = std::sync::Arc::new(standby.into());
    let flag = standby.clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let cfg = ch.clone();
    let name = ch.name.clone();
    let join = std::thread::Builder::new()
        .name(format!("ch-{}", ch.name))
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(RuntimeError::Thread {
                        channel: cfg.name.clone(),
                        source: e,
                    }));
                    return;
                }
            };
            rt.block_on(async move {
                if matches!(cfg.mode, Mode::Switch | Mode::ContentMerge) {
                    match switch::SwitchChannel::open(&cfg, &flag) {
                        Ok(task) => {
                            let _ = ready_tx.send(Ok(()));
                            task.run(rx).await;
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                        }
                    }
                    return;
                }
                match prepare(&cfg, &flag) {
                    Ok(task) => {
                        let _ = ready_tx.send(Ok(()));
                        task.run(rx).await;
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            });
        })
        .map_err(|source| RuntimeError::Thread {
            channel: ch.name.clone(),
            source,
        })?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(ChannelHandle {
            name,
            standby,
            tx,
            join,
        }),
        Ok(Err(e)) => {
            let _ = join.join();
            Err(e)
        }
        Err(_) => {
            let _ = join.join();
            Err(RuntimeError::Thread {
                channel: name,
                source: std::io::Error::other("channel thread ended during start"),
            })
        }
    }
}

fn prepare(
    ch: &ChannelConfig,
    standby: &StandbyFlag,
) -> Result<channel::MergeChannel, RuntimeError> {
    if ch.mode != Mode::Smpte2022_7 {
        return Err(RuntimeError::Unsupported {
            channel: ch.name.clone(),
            mode: ch.mode,
        });
    }
    let legs = ch
        .sources
        .iter()
        .map(|src| open_leg(ch, src))
        .collect::<Result<Vec<_>, _>>()?;
    let outputs = open_outputs(ch, standby)?;
    Ok(channel::MergeChannel::new(ch.clone(), legs, outputs))
}

/// Bind a source's socket, warning when the kernel grants less buffer than asked.
fn open_leg(ch: &ChannelConfig, src: &crate::config::SourceConfig) -> Result<Leg, RuntimeError> {
    let opened = Leg::open(src).map_err(|source| RuntimeError::Net {
        channel: ch.name.clone(),
        source,
    })?;
    if opened.granted_recv_buffer < opened.requested_recv_buffer {
        tracing::warn!(
            channel = %ch.name,
            source = %src.name,
            requested = opened.requested_recv_buffer,
            granted = opened.granted_recv_buffer,
            "the kernel capped the receive buffer below recv_buffer_bytes: raise net.core.rmem_max (see deploy/99-hitless-sysctl.conf)"
        );
    }
    tracing::info!(channel = %ch.name, source = %src.name, url = %src.url, local = %opened.leg.local, "listening");
    Ok(opened.leg)
}

/// Open every output of a channel.
fn open_outputs(ch: &ChannelConfig, standby: &StandbyFlag) -> Result<Vec<Output>, RuntimeError> {
    ch.outputs
        .iter()
        .map(|o| {
            let out = Output::open(o).map_err(|source| RuntimeError::Net {
                channel: ch.name.clone(),
                source,
            })?;
            tracing::info!(channel = %ch.name, url = %o.url, "output");
            Ok(out.with_standby(standby.clone()))
        })
        .collect()
}

/// Per-output counters and their sum, for a snapshot.
fn output_snapshots(outputs: &[Output]) -> (Vec<OutputSnapshot>, OutputTotals) {
    let list: Vec<OutputSnapshot> = outputs
        .iter()
        .map(|o| OutputSnapshot {
            url: o.url.to_string(),
            packets: o.stats.packets,
            bytes: o.stats.bytes,
            errors: o.stats.errors,
        })
        .collect();
    let total = list.iter().fold(OutputTotals::default(), |mut t, o| {
        t.packets += o.packets;
        t.bytes += o.bytes;
        t.errors += o.errors;
        t
    });
    (list, total)
}

/// Merge buffer bound in packets: the window at the configured maximum bitrate, counted in
/// the smallest datagram we accept (one TS packet in RTP, 200 bytes), plus headroom.
pub fn merge_capacity(ch: &ChannelConfig) -> usize {
    const MIN_DATAGRAM_BITS: u128 = 200 * 8;
    let bits = ch.max_bitrate_bps as u128 * ch.merge_window.as_millis() / 1000;
    let pkts = (bits / MIN_DATAGRAM_BITS) as usize;
    pkts.saturating_add(pkts / 4).max(1024)
}
