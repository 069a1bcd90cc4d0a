//! The gateway at run time: one tokio task per channel, owning its sockets, its merger and
//! its counters. Nothing is shared between channels and nothing is locked on the packet
//! path; the HTTP side asks a channel for a [`ChannelSnapshot`] over a command queue.

mod channel;

use std::collections::BTreeMap;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

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

/// Handle to a running channel task.
pub struct ChannelHandle {
    pub name: String,
    tx: mpsc::Sender<Command>,
    join: JoinHandle<()>,
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
    /// Bind every socket of every channel, then start the channel tasks. Binding all
    /// sockets first means a bad port fails the start instead of half-running.
    /// Must be called inside a tokio runtime.
    pub fn start(cfg: &Config) -> Result<Gateway, RuntimeError> {
        let mut prepared = Vec::new();
        for ch in &cfg.channels {
            prepared.push(prepare(ch)?);
        }
        let channels = prepared
            .into_iter()
            .map(|task| {
                let (tx, rx) = mpsc::channel(16);
                let name = task.name().to_owned();
                let join = tokio::spawn(task.run(rx));
                ChannelHandle { name, tx, join }
            })
            .collect();
        Ok(Gateway { channels })
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
            let _ = c.join.await;
        }
        last
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
