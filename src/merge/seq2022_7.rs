//! SMPTE ST 2022-7 merger (stub: being written).
use std::time::{Duration, Instant};

use super::{LegId, Pushed};
use crate::rtp::{ExtSeq, RtpPacket};

/// Static parameters of a merger.
#[derive(Clone, Debug)]
pub struct MergerConfig {
    /// Number of legs (≥ 1).
    pub legs: usize,
    /// How long a gap is held open waiting for another leg (merge_window_ms).
    pub window: Duration,
    /// Hard bound on packets tracked at once (derived from window × max bitrate).
    pub capacity: usize,
    /// A leg with no packet for this long is "lost": gaps stop waiting for it.
    pub leg_timeout: Duration,
}

/// Per-leg counters.
#[derive(Clone, Debug, Default)]
pub struct LegStats {
    pub packets: u64,
    pub recovered: u64,
    pub duplicates: u64,
    pub late: u64,
    /// How far this leg trails the earliest leg (smoothed).
    pub path_differential: Duration,
    pub last_seen: Option<Instant>,
    pub lost: bool,
}

/// Channel-wide counters.
#[derive(Clone, Debug, Default)]
pub struct MergeStats {
    pub legs: Vec<LegStats>,
    pub output: u64,
    pub unrecovered: u64,
    pub duplicates: u64,
    pub late: u64,
    pub resyncs: u64,
    pub overflow: u64,
}

/// Something the glue may want to log or count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The merger re-anchored (sender restart, SSRC change, jump outside the window).
    Resync { leg: LegId, from: ExtSeq, to: ExtSeq },
    /// Packets given up as unrecovered.
    Gap { first: ExtSeq, count: u64 },
    LegLost { leg: LegId },
    LegBack { leg: LegId },
}

pub struct Merger {
    stats: MergeStats,
}

impl Merger {
    pub fn new(cfg: MergerConfig) -> Merger {
        Merger { stats: MergeStats { legs: vec![LegStats::default(); cfg.legs], ..Default::default() } }
    }
    pub fn push(&mut self, _now: Instant, _leg: LegId, _pkt: RtpPacket) -> Pushed {
        todo!()
    }
    pub fn poll_output(&mut self, _now: Instant) -> Option<RtpPacket> {
        todo!()
    }
    pub fn poll_timeout(&self) -> Option<Instant> {
        todo!()
    }
    pub fn handle_timeout(&mut self, _now: Instant) {
        todo!()
    }
    pub fn poll_event(&mut self) -> Option<Event> {
        todo!()
    }
    pub fn stats(&self) -> &MergeStats {
        &self.stats
    }
}
