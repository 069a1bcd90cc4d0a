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

use std::collections::BTreeMap;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::config::{ChannelConfig, Config, Mode, Role};
use crate::ingest::Leg;
use crate::net::NetError;
use crate::output::Output;

/// Requests from the control side to a channel task.
pub(crate) enum Command {
    Snapshot(oneshot::Sender<ChannelSnapshot>),
    Shutdown,
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("channel {channel:?}: {source}")]
    Net { channel: String, source: NetError },
    #[error("channel {channel:?}: mode {mode:?} is not supported by this build")]
    Unsupported { channel: String, mode: Mode },
    #[error("channel {channel:?}: cannot start its thread: {source}")]
    Thread { channel: String, source: std::io::Error },
}

/// Everything the API and metrics show about one channel.
#[derive(Clone, Debug, Serialize)]
pub struct ChannelSnapshot {
    pub name: String,
    pub mode: Mode,
    pub merge_window_ms: u64,
    pub sources: Vec<SourceSnapshot>,
    pub merge: MergeSnapshot,
    pub output: OutputTotals,
    pub outputs: Vec<OutputSnapshot>,
    /// Failover-like events by reason (in merge mode: a leg lost).
    pub failovers: BTreeMap<&'static str, u64>,
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

/// Handle to a running channel thread.
pub struct ChannelHandle {
    pub name: String,
    tx: mpsc::Sender<Command>,
    join: std::thread::JoinHandle<()>,
}

impl ChannelHandle {
    /// A fresh snapshot, or `None` if the task has stopped.
    pub async fn snapshot(&self) -> Option<ChannelSnapshot> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Command::Snapshot(tx)).await.ok()?;
        rx.await.ok()
    }
    pub fn is_running(&self) -> bool {
        !self.join.is_finished()
    }
}

/// All channels of this node.
pub struct Gateway {
    pub channels: Vec<ChannelHandle>,
}

impl Gateway {
    /// Start one thread per enabled channel; each binds its sockets first and reports back,
    /// so a bad port fails the start instead of half-running (threads already started are
    /// stopped again).
    pub fn start(cfg: &Config) -> Result<Gateway, RuntimeError> {
        let mut gw = Gateway { channels: Vec::new() };
        for ch in cfg.channels.iter().filter(|c| !c.disabled) {
            match start_channel(ch) {
                Ok(h) => gw.channels.push(h),
                Err(e) => {
                    gw.stop_threads();
                    return Err(e);
                }
            }
        }
        for ch in cfg.channels.iter().filter(|c| c.disabled) {
            tracing::info!(channel = %ch.name, "channel disabled in the configuration: not started");
        }
        Ok(gw)
    }

    fn stop_threads(&mut self) {
        for c in self.channels.drain(..) {
            let _ = c.tx.try_send(Command::Shutdown);
            let _ = c.join.join();
        }
    }

    pub async fn snapshots(&self) -> Vec<ChannelSnapshot> {
        let mut out = Vec::with_capacity(self.channels.len());
        for c in &self.channels {
            if let Some(s) = c.snapshot().await {
                out.push(s);
            }
        }
        out
    }

    /// Stop every channel and wait for the tasks to end; returns their last snapshots.
    pub async fn shutdown(self) -> Vec<ChannelSnapshot> {
        let last = self.snapshots().await;
        for c in self.channels {
            let _ = c.tx.send(Command::Shutdown).await;
            let _ = tokio::task::spawn_blocking(move || c.join.join()).await;
        }
        last
    }
}

/// Spawn the channel's thread and wait until it has bound its sockets (or failed to).
fn start_channel(ch: &ChannelConfig) -> Result<ChannelHandle, RuntimeError> {
    let (tx, rx) = mpsc::channel(16);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let cfg = ch.clone();
    let name = ch.name.clone();
    let join = std::thread::Builder::new()
        .name(format!("ch-{}", ch.name))
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(RuntimeError::Thread { channel: cfg.name.clone(), source: e }));
                    return;
                }
            };
            rt.block_on(async move {
                match prepare(&cfg) {
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
        .map_err(|source| RuntimeError::Thread { channel: ch.name.clone(), source })?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(ChannelHandle { name, tx, join }),
        Ok(Err(e)) => {
            let _ = join.join();
            Err(e)
        }
        Err(_) => {
            let _ = join.join();
            Err(RuntimeError::Thread { channel: name, source: std::io::Error::other("channel thread ended during start") })
        }
    }
}

fn prepare(ch: &ChannelConfig) -> Result<channel::MergeChannel, RuntimeError> {
    if ch.mode != Mode::Smpte2022_7 {
        return Err(RuntimeError::Unsupported {
            channel: ch.name.clone(),
            mode: ch.mode,
        });
    }
    let net = |source| RuntimeError::Net {
        channel: ch.name.clone(),
        source,
    };
    let mut legs = Vec::new();
    for src in &ch.sources {
        let opened = Leg::open(src).map_err(net)?;
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
        legs.push(opened.leg);
    }
    let mut outputs = Vec::new();
    for o in &ch.outputs {
        outputs.push(Output::open(o).map_err(net)?);
        tracing::info!(channel = %ch.name, url = %o.url, "output");
    }
    Ok(channel::MergeChannel::new(ch.clone(), legs, outputs))
}

/// Merge buffer bound in packets: the window at the configured maximum bitrate, counted in
/// the smallest datagram we accept (one TS packet in RTP, 200 bytes), plus headroom.
pub fn merge_capacity(ch: &ChannelConfig) -> usize {
    const MIN_DATAGRAM_BITS: u128 = 200 * 8;
    let bits = ch.max_bitrate_bps as u128 * ch.merge_window.as_millis() / 1000;
    let pkts = (bits / MIN_DATAGRAM_BITS) as usize;
    pkts.saturating_add(pkts / 4).max(1024)
}
