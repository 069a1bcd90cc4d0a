//! SMPTE ST 2022-7 seamless protection switching: merge two or more legs carrying the same
//! RTP stream into one, keeping the first copy of each datagram (ST 2022-7:2019 §6, receiver
//! behaviour; RFC 7198 for the IETF view of duplicated RTP streams).
//!
//! Sans-IO: no socket, no clock. Every entry point takes `now`; the glue moves the bytes.
//!
//! # Design
//! - **Positions.** Every packet gets an internal 64-bit *position* `q`: its 16-bit RTP sequence
//!   number extended against the highest position seen (wrap-aware, ±2^15). Positions only ever
//!   grow, also across a resync (a new epoch starts right after the old one's highest position),
//!   so a slot tag from an older epoch can never be mistaken for a packet of the current one.
//!   The [`ExtSeq`] values in events are per epoch: the first packet's sequence number, counting
//!   wraps from there.
//! - **Ring.** A fixed ring of `capacity.next_power_of_two()` slots, allocated in [`Merger::new`],
//!   indexed by `q & mask`. A slot keeps the packet (until output), the position it holds (its
//!   tag), the first arrival time and the leg that delivered it. The tag outlives the packet, so a
//!   copy arriving after the original was sent is still recognised as a duplicate (and gives a
//!   path-differential sample). At most `capacity` positions are tracked at once:
//!   `top - out_next < capacity`, where `top` is the highest position seen and `out_next` the
//!   next one `poll_output` looks at.
//! - **Release.** `release` is the first position not yet released. A packet at `release` is
//!   released at once (zero added latency in order). A packet beyond it waits behind the gap.
//!   The gap at `release` is given up (its missing packets counted unrecovered, [`Event::Gap`])
//!   when either
//!   1. the merge window has passed since the gap was noticed — the arrival of the earliest
//!      packet still held behind it; or
//!   2. no leg can still deliver it: every leg that is not lost has already delivered a later
//!      packet. Legs are FIFO paths, so a leg that passed the gap lost the packet. (A leg that
//!      reorders its own packets therefore only gets reorder protection while another leg has
//!      not yet passed the gap.) A lost leg costs no added latency once its absence is known:
//!      one that was not trailing is not waited for at all, and one that trailed by a measured
//!      path differential `d` is waited for `d + max(5 ms, d/2)` — the moment its copy would
//!      have arrived — never the whole window, so a gap right as that leg returns is still
//!      filled.
//! - **Resync.** A sender restart must not look like old data, and a lagging leg must not look
//!   like a restart. The merger re-anchors (releases what it holds, counts missing packets as
//!   unrecovered, starts a new epoch at the packet that triggered it, [`Event::Resync`]) when
//!   - the SSRC changes (at once), except for packets carrying the previous epoch's SSRC, which
//!     are old data from a lagging leg and are dropped as late. If the leg that brought the
//!     new SSRC then goes on with the previous stream ([`STRAY_RUN`] packets), the new SSRC
//!     was a stray datagram, not a restart: the merger flips back at once instead of
//!     discarding the real stream for a window;
//!   - or a packet is *suspicious* — more than `capacity` ahead of the highest position, or more
//!     than `capacity` behind it with an RTP timestamp that is not old (old = at most 60 s of
//!     90 kHz clock behind the newest packet's timestamp: a lagging leg, dropped as late) — and
//!     [`RESYNC_RUN`] suspicious packets consistent with each other (same SSRC, sequence numbers
//!     within `capacity` of each other) arrive, or every live leg (at least two) has delivered
//!     one. A normal packet from a leg that contributed to the run cancels it. Packets of the
//!     previous epoch (its SSRC, sequence within `capacity` of its last one) are late, never
//!     suspicious, so a lagging leg cannot flip the merger back. As a last resort,
//!     [`STALE_LIMIT`] consecutive rejected packets, with nothing accepted for a whole window,
//!     force a resync, so the merger can never lock itself out.
//! - **Recovered.** A packet counts as recovered for leg L when L's copy is the one output and
//!   some other leg skipped it: either that leg had already delivered a later packet when L's
//!   copy arrived (L filled a visible hole), or it delivers a later packet afterwards without
//!   ever delivering this one (L was ahead). Each packet is credited at most once (a flag in
//!   its slot); the skip scan is amortised O(1) per packet because a leg's highest position
//!   only grows. A leg that skips packets and never sends again is not scanned.
//! - **Path differential.** When a copy of a packet arrives on leg L after its first copy came
//!   from another leg F, L gets the sample `arrival − first arrival` and F gets the sample 0;
//!   each leg smooths its samples with an EWMA (α = 1/8). The earliest leg reads ~0.
//!
//! Memory is bounded by `capacity`, never by traffic; in steady state `push`/`poll_output` do
//! not allocate and never copy a payload (an [`RtpPacket`] holds the datagram as `Bytes`).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::{LegId, Pushed};
use crate::rtp::{ExtSeq, RtpPacket, SeqNum};

/// Suspicious packets consistent with each other that confirm a sender restart.
pub const RESYNC_RUN: u32 = 8;
/// Packets of the previous stream from the leg that brought a new SSRC that prove the new
/// SSRC was a stray datagram, not a restart.
pub const STRAY_RUN: u32 = 4;
/// Consecutive rejected packets (suspicious or previous epoch) that, with nothing accepted for
/// a whole window, force a resync.
pub const STALE_LIMIT: u32 = 64;
/// An RTP timestamp at most this far behind the newest one is "old" (60 s at 90 kHz).
const OLD_TS_TICKS: u32 = 60 * 90_000;
/// Positions tracked at most: packets further apart than 2^15 cannot be told apart by a 16-bit
/// sequence number.
const MAX_TRACKED: usize = 1 << 15;
const MIN_TRACKED: usize = 4;
/// First position: far from zero so that extension arithmetic never underflows.
const Q0: u64 = 1 << 32;
/// Bound of the event queue; further events are counted in `MergeStats::events_dropped`.
const EVENT_QUEUE: usize = 1024;

/// Static parameters of a merger.
#[derive(Clone, Debug)]
pub struct MergerConfig {
    /// Number of legs (≥ 1).
    pub legs: usize,
    /// How long a gap is held open waiting for another leg (merge_window_ms), measured from
    /// the arrival of the first packet after the gap.
    pub window: Duration,
    /// Hard bound on packets tracked at once (derived from window × max bitrate); clamped to
    /// 4..=32768 (half the 16-bit sequence space). The ring is the next power of two.
    pub capacity: usize,
    /// A leg with no packet for this long is "lost": gaps stop waiting for it.
    pub leg_timeout: Duration,
}

/// Per-leg counters.
#[derive(Clone, Debug, Default)]
pub struct LegStats {
    /// Packets pushed from this leg (every result).
    pub packets: u64,
    /// Output packets whose copy came from this leg and that another leg skipped (see the
    /// module docs).
    pub recovered: u64,
    /// Packets from this leg that another leg (or this one) had already delivered.
    pub duplicates: u64,
    /// Packets from this leg older than what was already released, or from a previous epoch.
    pub late: u64,
    /// How far this leg trails the earliest leg (EWMA of duplicate arrival − first arrival).
    pub path_differential: Duration,
    /// Arrival time of the last packet from this leg.
    pub last_seen: Option<Instant>,
    /// No packet for `leg_timeout` (a leg never seen is lost `leg_timeout` after the stream
    /// started).
    pub lost: bool,
}

/// Channel-wide counters.
#[derive(Clone, Debug, Default)]
pub struct MergeStats {
    pub legs: Vec<LegStats>,
    /// Packets returned by `poll_output`.
    pub output: u64,
    /// Packets given up: lost on every leg, or forced out by overflow or a resync flush.
    pub unrecovered: u64,
    /// Copies dropped because another copy was already delivered (all legs).
    pub duplicates: u64,
    /// Packets dropped as older than what was already released (all legs).
    pub late: u64,
    /// Times the merger re-anchored on a new epoch.
    pub resyncs: u64,
    /// Positions given up, and released packets dropped before `poll_output` took them, because
    /// a packet arrived `capacity` or more ahead of the oldest tracked position.
    pub overflow: u64,
    /// Suspicious packets (far outside the window) dropped while waiting for a confirmation.
    pub suspect: u64,
    /// Events dropped because the queue (1024) was full.
    pub events_dropped: u64,
}

/// Something the glue may want to log or count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The merger re-anchored (sender restart, SSRC change, jump outside the window).
    /// `from` is the last position of the old epoch, `to` the first of the new one.
    Resync {
        leg: LegId,
        from: ExtSeq,
        to: ExtSeq,
    },
    /// Packets given up as unrecovered: `count` consecutive sequence numbers from `first`.
    Gap {
        first: ExtSeq,
        count: u64,
    },
    LegLost {
        leg: LegId,
    },
    LegBack {
        leg: LegId,
    },
}

struct Slot {
    /// Position this slot holds (0: never used; positions start at 2^32).
    q: u64,
    /// The packet, until `poll_output` takes it.
    pkt: Option<RtpPacket>,
    /// First arrival of position `q`.
    arrival: Option<Instant>,
    /// Leg that delivered the first copy.
    leg: usize,
    /// Already counted as recovered for `leg`.
    recovered: bool,
}

#[derive(Clone, Copy, Default)]
struct LegState {
    /// Highest position this leg delivered (0: none).
    max_q: u64,
    /// Smoothed path differential in nanoseconds; `None` before the first sample.
    diff_ns: Option<f64>,
}

#[derive(Clone, Copy)]
struct Candidate {
    ssrc: u32,
    seq: u16,
    count: u32,
    legs: u64,
}

#[derive(Clone, Copy)]
struct PrevEpoch {
    ssrc: u32,
    top_seq: u16,
}

/// The SMPTE ST 2022-7 merger. See the module docs for the rules.
///
/// Driving it: for every datagram call [`push`](Merger::push); after each push (or at least
/// after every batch of fewer than `capacity` pushes) drain [`poll_output`](Merger::poll_output)
/// until `None`; then (re)arm a timer at [`poll_timeout`](Merger::poll_timeout), call
/// [`handle_timeout`](Merger::handle_timeout) when it fires and drain `poll_output` again; drain
/// [`poll_event`](Merger::poll_event) whenever convenient. `poll_timeout` changes after every
/// `push` and `handle_timeout`.
pub struct Merger {
    window: Duration,
    leg_timeout: Duration,
    /// Max positions tracked at once.
    cap: u64,
    mask: u64,
    ring: Box<[Slot]>,
    /// First push (the stream start); `None` before it.
    started_at: Option<Instant>,
    ssrc: u32,
    /// First position of the current epoch and its wire sequence number.
    epoch_q0: u64,
    seq0: u64,
    /// Highest position seen and its RTP timestamp.
    top: u64,
    top_ts: u32,
    /// First position not yet released.
    release: u64,
    /// Next position `poll_output` looks at.
    out_next: u64,
    /// Deadline of the gap at `release`, if there is one.
    gap_deadline: Option<Instant>,
    /// Earliest time something may be due (≤ `poll_timeout()`); push checks it.
    next_check: Option<Instant>,
    /// (position, arrival) of held packets in arrival order; entries below `release` are stale.
    held: VecDeque<(u64, Instant)>,
    legs: Vec<LegState>,
    cand: Option<Candidate>,
    prev: Option<PrevEpoch>,
    /// Rejected packets (suspicious or previous epoch) since the last accepted one.
    stale_run: u32,
    /// Arrival of the last packet accepted in the current epoch.
    last_accept: Option<Instant>,
    /// After a resync on a new SSRC: the leg that brought it and how many packets of the
    /// previous stream that same leg delivered since (it should deliver none).
    stray_check: Option<(usize, u32)>,
    events: VecDeque<Event>,
    stats: MergeStats,
}

impl Merger {
    /// Allocate everything the merger will ever use: the ring, the held-order queue and the
    /// event queue.
    pub fn new(cfg: MergerConfig) -> Merger {
        let cap = cfg.capacity.clamp(MIN_TRACKED, MAX_TRACKED);
        let ring_len = cap.next_power_of_two();
        let legs = cfg.legs.max(1);
        Merger {
            window: cfg.window,
            leg_timeout: cfg.leg_timeout,
            cap: cap as u64,
            mask: ring_len as u64 - 1,
            ring: (0..ring_len)
                .map(|_| Slot {
                    q: 0,
                    pkt: None,
                    arrival: None,
                    leg: 0,
                    recovered: false,
                })
                .collect(),
            started_at: None,
            ssrc: 0,
            epoch_q0: Q0,
            seq0: 0,
            top: Q0 - 1,
            top_ts: 0,
            release: Q0,
            out_next: Q0,
            gap_deadline: None,
            next_check: None,
            held: VecDeque::with_capacity(2 * ring_len),
            legs: vec![LegState::default(); legs],
            cand: None,
            prev: None,
            stale_run: 0,
            last_accept: None,
            stray_check: None,
            events: VecDeque::with_capacity(EVENT_QUEUE),
            stats: MergeStats {
                legs: vec![LegStats::default(); legs],
                ..Default::default()
            },
        }
    }

    /// Offer one datagram received on `leg` at `now`.
    ///
    /// Returns [`Pushed::Forwarded`] when the packet (and possibly packets held behind it) was
    /// released: `poll_output` yields it now. [`Pushed::Queued`]: held behind a gap.
    /// [`Pushed::Duplicate`]: another copy was already delivered. [`Pushed::Late`]: older than
    /// what was released, from a previous epoch, suspicious (far outside the window, see the
    /// module docs) or from an unknown leg. Also processes any timeout that is due at `now`.
    /// Afterwards drain `poll_output` and `poll_event`, and re-read `poll_timeout`.
    pub fn push(&mut self, now: Instant, leg: LegId, pkt: RtpPacket) -> Pushed {
        let li = leg.0;
        if li >= self.legs.len() {
            self.stats.late += 1;
            return Pushed::Late;
        }
        if self.gap_deadline.is_some_and(|t| now >= t) {
            // A gap whose window has passed is given up here too, so output keeps moving even
            // if the caller's timer is late. Legs are declared lost only by `handle_timeout`:
            // the glue runs it once every readable socket has been drained, so after a stall a
            // leg whose packets are still queued in the kernel is not taken for lost.
            self.advance(now);
        }
        let st = &mut self.stats.legs[li];
        st.packets += 1;
        st.last_seen = Some(now);
        if st.lost {
            st.lost = false;
            self.emit(Event::LegBack { leg });
        }
        if self.started_at.is_none() {
            self.started_at = Some(now);
            self.anchor(pkt.seq, pkt.ssrc);
            self.next_check = self.poll_timeout();
            return self.accept(now, li, pkt, self.epoch_q0);
        }
        if pkt.ssrc != self.ssrc {
            if self.is_prev_epoch(&pkt) {
                return self.reject_stale(now, li, pkt);
            }
            return self.resync(now, li, pkt);
        }
        let q = self.extend(pkt.seq);
        if q > self.top {
            if q - self.top > self.cap {
                return self.suspect(now, li, pkt);
            }
        } else if self.top - q >= self.cap || q < self.epoch_q0 {
            let old = self.top_ts.wrapping_sub(pkt.timestamp) <= OLD_TS_TICKS;
            if old || self.top - q < self.cap {
                // A lagging leg, or a copy of a packet from before this epoch's anchor.
                self.late(li);
                return Pushed::Late;
            }
            return self.suspect(now, li, pkt);
        }
        if let Some(c) = &self.cand
            && c.legs & leg_bit(li) != 0
        {
            self.cand = None;
        }
        self.accept(now, li, pkt, q)
    }

    /// Next released packet, in sequence order, or `None`. Call until `None` after every
    /// `push` and `handle_timeout`: packets released there stay here until taken (at most
    /// `capacity`; older ones are dropped and counted in `overflow` if the caller falls that
    /// far behind). Releases nothing by itself: time only matters to `handle_timeout`.
    pub fn poll_output(&mut self, _now: Instant) -> Option<RtpPacket> {
        while self.out_next < self.release {
            let q = self.out_next;
            self.out_next += 1;
            let slot = &mut self.ring[(q & self.mask) as usize];
            if slot.q == q
                && let Some(p) = slot.pkt.take()
            {
                self.stats.output += 1;
                return Some(p);
            }
        }
        None
    }

    /// When `handle_timeout` must be called next: the deadline of the gap being waited on, or
    /// the moment a live leg becomes lost, whichever is first. `None` before the first packet.
    /// Re-read after every `push` and `handle_timeout`.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let started = self.started_at?;
        let mut t = self.gap_deadline;
        for st in self.stats.legs.iter().filter(|s| !s.lost) {
            if let Some(d) = st
                .last_seen
                .unwrap_or(started)
                .checked_add(self.leg_timeout)
            {
                t = Some(t.map_or(d, |t| t.min(d)));
            }
        }
        t
    }

    /// Process everything due at `now`: mark silent legs lost, give up expired gaps (and gaps
    /// no live leg can fill any more). Harmless to call early or often. Afterwards drain
    /// `poll_output` and `poll_event`, and re-read `poll_timeout`.
    pub fn handle_timeout(&mut self, now: Instant) {
        let Some(started) = self.started_at else {
            return;
        };
        for i in 0..self.stats.legs.len() {
            let st = &mut self.stats.legs[i];
            if st.lost {
                continue;
            }
            let due = st
                .last_seen
                .unwrap_or(started)
                .checked_add(self.leg_timeout);
            if due.is_some_and(|d| now >= d) {
                st.lost = true;
                self.emit(Event::LegLost { leg: LegId(i) });
            }
        }
        self.advance(now);
        self.next_check = self.poll_timeout();
    }

    /// Next event, or `None`. Events queue up (bounded) until taken; drain after `push` and
    /// `handle_timeout`.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Counters. `path_differential` is updated as duplicates arrive.
    pub fn stats(&self) -> &MergeStats {
        &self.stats
    }

    /// Extended sequence number of position `q` in the current epoch.
    #[inline]
    fn ext(&self, q: u64) -> ExtSeq {
        ExtSeq(q.wrapping_sub(self.epoch_q0).wrapping_add(self.seq0))
    }

    /// Position of `seq`: the one closest to the highest position seen (RFC 3550 A.1).
    #[inline]
    fn extend(&self, seq: SeqNum) -> u64 {
        let top_wire = self.ext(self.top).0 as u16;
        let d = seq.0.wrapping_sub(top_wire) as i16 as i64;
        self.top.wrapping_add_signed(d)
    }

    /// Start a new epoch whose first position, right after everything seen so far, is `seq`.
    fn anchor(&mut self, seq: SeqNum, ssrc: u32) {
        self.epoch_q0 = self.top + 1;
        self.seq0 = u64::from(seq.0);
        self.ssrc = ssrc;
        self.release = self.epoch_q0;
        self.held.clear();
        self.gap_deadline = None;
        self.cand = None;
        self.stale_run = 0;
    }

    /// Store a packet at position `q` (within the tracked range of the current epoch).
    fn accept(&mut self, now: Instant, li: usize, pkt: RtpPacket, q: u64) -> Pushed {
        self.stale_run = 0;
        self.last_accept = Some(now);
        let prev_max = self.legs[li].max_q;
        if q > prev_max {
            self.legs[li].max_q = q;
            if prev_max >= self.epoch_q0 && q > prev_max + 1 {
                self.credit_skipped(li, prev_max + 1, q);
            }
        }
        if q > self.top {
            if q - self.out_next >= self.cap {
                self.make_room(now, q);
            }
            self.top = q;
            self.top_ts = pkt.timestamp;
            self.store(now, li, q, pkt);
            if q == self.release {
                // In order, nothing held: the fast path.
                self.release = q + 1;
                return Pushed::Forwarded;
            }
        } else {
            let idx = (q & self.mask) as usize;
            if self.ring[idx].q == q {
                self.duplicate(now, li, idx);
                if self.gap_deadline.is_some() {
                    // This leg may just have passed the gap.
                    self.advance(now);
                }
                return Pushed::Duplicate;
            }
            if q < self.release {
                self.late(li);
                return Pushed::Late;
            }
            let recovered = self.passed_by_other(li, q);
            if recovered {
                self.stats.legs[li].recovered += 1;
            }
            self.store(now, li, q, pkt);
            self.ring[(q & self.mask) as usize].recovered = recovered;
        }
        if q != self.release {
            if self.held.len() == self.held.capacity() {
                // Cannot happen (held ≤ 2 × ring); dropping the oldest only delays a deadline.
                self.held.pop_front();
            }
            self.held.push_back((q, now));
        }
        self.advance(now);
        if q < self.release {
            Pushed::Forwarded
        } else {
            Pushed::Queued
        }
    }

    #[inline]
    fn store(&mut self, now: Instant, li: usize, q: u64, pkt: RtpPacket) {
        let slot = &mut self.ring[(q & self.mask) as usize];
        slot.q = q;
        slot.pkt = Some(pkt);
        slot.arrival = Some(now);
        slot.leg = li;
        slot.recovered = false;
    }

    /// Leg `li` jumped from below `from` to `to`: it skipped positions `from..to`. Each of
    /// them that another leg delivered (and is not yet credited) was recovered by that leg.
    /// Amortised O(1) per packet: a leg's highest position only grows.
    fn credit_skipped(&mut self, li: usize, from: u64, to: u64) {
        let from = from.max(to.saturating_sub(self.cap)).max(self.epoch_q0);
        for q in from..to {
            let slot = &mut self.ring[(q & self.mask) as usize];
            if slot.q == q && slot.leg != li && !slot.recovered {
                slot.recovered = true;
                self.stats.legs[slot.leg].recovered += 1;
            }
        }
    }

    /// How long a gap that every live leg has passed may still wait for a lost leg: a lost leg
    /// that trailed by `d` would deliver its copy about `d` after the leading leg, so the gap
    /// waits `d` plus a jitter margin (`max(5 ms, d/2)`) for it — never the whole window. A
    /// lost leg that was not trailing costs nothing. `None` when no lost leg trails.
    fn lost_leg_grace(&self) -> Option<Duration> {
        self.legs
            .iter()
            .zip(&self.stats.legs)
            .filter(|(l, s)| {
                s.lost && l.max_q <= self.release && l.diff_ns.is_some_and(|d| d >= 500_000.0)
            })
            .map(|(_, s)| {
                let d = s.path_differential;
                d + (d / 2).max(Duration::from_millis(5))
            })
            .max()
    }

    /// Some other live leg already delivered a packet after `q`.
    fn passed_by_other(&self, li: usize, q: u64) -> bool {
        self.legs
            .iter()
            .zip(&self.stats.legs)
            .enumerate()
            .any(|(m, (l, s))| m != li && !s.lost && l.max_q > q)
    }

    fn duplicate(&mut self, now: Instant, li: usize, idx: usize) {
        self.stats.duplicates += 1;
        self.stats.legs[li].duplicates += 1;
        let slot = &self.ring[idx];
        let first_leg = slot.leg;
        if first_leg != li
            && let Some(first) = slot.arrival
        {
            let sample = now.saturating_duration_since(first).as_nanos() as f64;
            self.sample_differential(li, sample);
            self.sample_differential(first_leg, 0.0);
        }
    }

    fn sample_differential(&mut self, li: usize, sample_ns: f64) {
        let d = &mut self.legs[li].diff_ns;
        let v = match *d {
            None => sample_ns,
            Some(v) => v + (sample_ns - v) / 8.0,
        };
        *d = Some(v);
        self.stats.legs[li].path_differential = Duration::from_nanos(v as u64);
    }

    fn late(&mut self, li: usize) {
        self.stats.late += 1;
        self.stats.legs[li].late += 1;
    }

    /// Lowest "highest position delivered" over legs that are not lost: every live leg has
    /// passed positions below it. `u64::MAX` when every leg is lost.
    fn floor(&self) -> u64 {
        self.legs
            .iter()
            .zip(&self.stats.legs)
            .filter(|(_, s)| !s.lost)
            .map(|(l, _)| l.max_q)
            .min()
            .unwrap_or(u64::MAX)
    }

    /// Release everything contiguous from `release`, give up gaps that are due, and set the
    /// deadline of the gap left at `release`, if any.
    fn advance(&mut self, now: Instant) {
        loop {
            while self.release <= self.top
                && self.ring[(self.release & self.mask) as usize].q == self.release
            {
                self.release += 1;
            }
            if self.release > self.top {
                self.gap_deadline = None;
                return;
            }
            while self.held.front().is_some_and(|&(q, _)| q < self.release) {
                self.held.pop_front();
            }
            let noticed = self.held.front().map_or(now, |&(_, t)| t);
            let deadline = noticed.checked_add(self.window);
            let expired = deadline.is_none_or(|d| now >= d);
            let floor = self.floor();
            if !expired
                && self.release < floor
                && let Some(grace) = self.lost_leg_grace()
                && let Some(until) = noticed.checked_add(grace)
                && now < until
            {
                // Every live leg passed the gap, but a trailing lost leg may be about to return.
                let deadline = deadline.map_or(until, |d| d.min(until));
                self.gap_deadline = Some(deadline);
                self.next_check = Some(self.next_check.map_or(deadline, |a| a.min(deadline)));
                return;
            }
            if !expired && self.release >= floor {
                self.gap_deadline = deadline;
                self.next_check = match (self.next_check, deadline) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                return;
            }
            let first = self.release;
            while self.release <= self.top
                && self.ring[(self.release & self.mask) as usize].q != self.release
                && (expired || self.release < floor)
            {
                self.release += 1;
            }
            self.give_up(first, self.release - first);
        }
    }

    fn give_up(&mut self, first: u64, count: u64) {
        if count == 0 {
            return;
        }
        self.stats.unrecovered += count;
        let first = self.ext(first);
        if let Some(Event::Gap { first: f, count: c }) = self.events.back_mut()
            && f.0 + *c == first.0
        {
            *c += count;
            return;
        }
        self.emit(Event::Gap { first, count });
    }

    fn emit(&mut self, ev: Event) {
        if self.events.len() < EVENT_QUEUE {
            self.events.push_back(ev);
        } else {
            self.stats.events_dropped += 1;
        }
    }

    /// `q` is `capacity` or more ahead of `out_next`: force the oldest positions out.
    fn make_room(&mut self, now: Instant, q: u64) {
        let need = q + 1 - self.cap;
        if self.release < need {
            while self.release < need {
                if self.ring[(self.release & self.mask) as usize].q == self.release {
                    self.release += 1;
                    continue;
                }
                let first = self.release;
                while self.release < need
                    && self.ring[(self.release & self.mask) as usize].q != self.release
                {
                    self.release += 1;
                }
                self.stats.overflow += self.release - first;
                self.give_up(first, self.release - first);
            }
            self.advance(now);
        }
        while self.out_next < need {
            let slot = &mut self.ring[(self.out_next & self.mask) as usize];
            if slot.q == self.out_next && slot.pkt.take().is_some() {
                self.stats.overflow += 1;
            }
            self.out_next += 1;
        }
    }

    fn is_prev_epoch(&self, pkt: &RtpPacket) -> bool {
        self.prev.is_some_and(|p| {
            p.ssrc == pkt.ssrc
                && (p.ssrc != self.ssrc
                    || u64::from((pkt.seq.0.wrapping_sub(p.top_seq) as i16).unsigned_abs())
                        <= self.cap)
        })
    }

    /// A packet from the previous epoch: late, unless nothing else arrives for long enough.
    fn reject_stale(&mut self, now: Instant, li: usize, pkt: RtpPacket) -> Pushed {
        self.stale_run += 1;
        // A stray datagram with a foreign SSRC re-anchored us: the leg that brought it goes
        // on with the previous stream, which a restarted sender never does. Flip back after
        // a short run instead of blacking out for a window.
        let mut stray = false;
        if let Some((leg, n)) = &mut self.stray_check
            && *leg == li
        {
            *n += 1;
            stray = *n >= STRAY_RUN;
        }
        if stray || self.stale_for_long(now) {
            self.prev = None;
            return self.resync(now, li, pkt);
        }
        self.late(li);
        Pushed::Late
    }

    /// A packet far outside the window: a candidate for a sender restart.
    fn suspect(&mut self, now: Instant, li: usize, pkt: RtpPacket) -> Pushed {
        if self.is_prev_epoch(&pkt) {
            return self.reject_stale(now, li, pkt);
        }
        self.stale_run += 1;
        let cap = self.cap;
        let c = match &mut self.cand {
            Some(c)
                if c.ssrc == pkt.ssrc
                    && u64::from((pkt.seq.0.wrapping_sub(c.seq) as i16).unsigned_abs()) <= cap =>
            {
                c.count += 1;
                c.legs |= leg_bit(li);
                if (pkt.seq.0.wrapping_sub(c.seq) as i16) > 0 {
                    c.seq = pkt.seq.0;
                }
                *c
            }
            c => *c.insert(Candidate {
                ssrc: pkt.ssrc,
                seq: pkt.seq.0,
                count: 1,
                legs: leg_bit(li),
            }),
        };
        let every_leg = c.legs.count_ones() >= 2 && c.legs & self.live_mask() == self.live_mask();
        if c.count >= RESYNC_RUN || every_leg || self.stale_for_long(now) {
            return self.resync(now, li, pkt);
        }
        self.stats.suspect += 1;
        Pushed::Late
    }

    /// The last-resort valve: [`STALE_LIMIT`] rejected packets in a row and nothing accepted
    /// for a whole window (a lagging leg delivers old data for about a window at most).
    fn stale_for_long(&self, now: Instant) -> bool {
        self.stale_run >= STALE_LIMIT
            && self
                .last_accept
                .and_then(|t| t.checked_add(self.window))
                .is_none_or(|t| now >= t)
    }

    /// Legs (of the first 64) that have delivered something and are not lost.
    fn live_mask(&self) -> u64 {
        let mut m = 0;
        for (i, s) in self.stats.legs.iter().enumerate().take(64) {
            if !s.lost && s.last_seen.is_some() {
                m |= leg_bit(i);
            }
        }
        m
    }

    /// Release what is held (missing packets are unrecovered), then start a new epoch at `pkt`.
    fn resync(&mut self, now: Instant, li: usize, pkt: RtpPacket) -> Pushed {
        let from = self.ext(self.top);
        while self.release <= self.top {
            if self.ring[(self.release & self.mask) as usize].q == self.release {
                self.release += 1;
                continue;
            }
            let first = self.release;
            while self.release <= self.top
                && self.ring[(self.release & self.mask) as usize].q != self.release
            {
                self.release += 1;
            }
            self.give_up(first, self.release - first);
        }
        self.stray_check = (pkt.ssrc != self.ssrc).then_some((li, 0));
        self.prev = Some(PrevEpoch {
            ssrc: self.ssrc,
            top_seq: from.0 as u16,
        });
        self.stats.resyncs += 1;
        self.anchor(pkt.seq, pkt.ssrc);
        self.emit(Event::Resync {
            leg: LegId(li),
            from,
            to: ExtSeq(u64::from(pkt.seq.0)),
        });
        let q = self.epoch_q0;
        self.accept(now, li, pkt, q)
    }
}

#[inline]
fn leg_bit(li: usize) -> u64 {
    if li < 64 { 1 << li } else { 0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merge::sim::{LegScript, Sim, base, rtp_ssrc};

    const SSRC: u32 = 0x1234_5678;
    const A: LegId = LegId(0);
    const B: LegId = LegId(1);

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    /// RTP packet with the test SSRC, built by `crate::rtp::tests::rtp`.
    fn rtp(seq: u16, ts: u32) -> RtpPacket {
        RtpPacket::try_new(crate::rtp::tests::rtp(seq, ts, 188)).unwrap()
    }

    fn cfg(legs: usize) -> MergerConfig {
        MergerConfig {
            legs,
            window: ms(50),
            capacity: 256,
            leg_timeout: ms(200),
        }
    }

    fn drain(m: &mut Merger, now: Instant) -> Vec<u16> {
        std::iter::from_fn(|| m.poll_output(now))
            .map(|p| p.seq.0)
            .collect()
    }

    fn events(m: &mut Merger) -> Vec<Event> {
        std::iter::from_fn(|| m.poll_event()).collect()
    }

    #[test]
    fn module_never_reads_the_clock() {
        let needle = concat!("Instant", "::now");
        assert!(!include_str!("seq2022_7.rs").contains(needle));
    }

    #[test]
    fn in_order_is_forwarded_with_zero_added_latency() {
        let t0 = base();
        let mut m = Merger::new(cfg(2));
        for i in 0..100u16 {
            let now = t0 + ms(i as u64);
            assert_eq!(m.push(now, A, rtp(i, i as u32 * 90)), Pushed::Forwarded);
            assert_eq!(drain(&mut m, now), vec![i], "released at its own arrival");
            if i >= 30 {
                let j = i - 30;
                assert_eq!(m.push(now, B, rtp(j, j as u32 * 90)), Pushed::Duplicate);
                assert!(drain(&mut m, now).is_empty());
            }
            // Only leg timers are armed: nothing is being waited for.
            assert!(m.poll_timeout().unwrap() >= now + ms(170));
        }
        let s = m.stats();
        assert_eq!(
            (s.output, s.duplicates, s.unrecovered, s.late),
            (100, 70, 0, 0)
        );
        assert_eq!(s.legs[1].duplicates, 70);
    }

    #[test]
    fn first_packet_starts_the_stream_without_waiting_for_other_legs() {
        let t0 = base();
        let mut m = Merger::new(cfg(3));
        assert_eq!(m.poll_timeout(), None);
        assert_eq!(m.push(t0, B, rtp(1000, 0)), Pushed::Forwarded);
        assert_eq!(drain(&mut m, t0), vec![1000]);
        // An older packet from another leg after the start is late.
        assert_eq!(m.push(t0 + ms(5), A, rtp(999, 0)), Pushed::Late);
        assert_eq!(m.stats().legs[0].late, 1);
    }

    #[test]
    fn gap_is_filled_by_the_other_leg() {
        let t0 = base();
        let mut m = Merger::new(cfg(2));
        for (i, s) in [0u16, 1, 3, 4].into_iter().enumerate() {
            m.push(t0 + ms(i as u64), A, rtp(s, 0));
        }
        assert_eq!(drain(&mut m, t0 + ms(3)), vec![0, 1]);
        // B trails by 30 ms and has 2.
        assert_eq!(m.push(t0 + ms(30), B, rtp(0, 0)), Pushed::Duplicate);
        assert_eq!(m.push(t0 + ms(31), B, rtp(1, 0)), Pushed::Duplicate);
        assert_eq!(m.push(t0 + ms(32), B, rtp(2, 0)), Pushed::Forwarded);
        assert_eq!(drain(&mut m, t0 + ms(32)), vec![2, 3, 4]);
        assert_eq!(m.push(t0 + ms(33), B, rtp(3, 0)), Pushed::Duplicate);
        let s = m.stats();
        assert_eq!((s.output, s.unrecovered, s.duplicates), (5, 0, 3));
        assert_eq!((s.legs[1].recovered, s.legs[0].recovered), (1, 0));
        assert!(events(&mut m).is_empty());
    }

    #[test]
    fn gap_expires_after_exactly_the_window() {
        let t0 = base();
        let mut m = Merger::new(cfg(2));
        m.push(t0, A, rtp(0, 0));
        m.push(t0, B, rtp(0, 0)); // B is live and has not passed 2: worth waiting for.
        m.push(t0 + ms(1), A, rtp(1, 0));
        assert_eq!(m.push(t0 + ms(3), A, rtp(3, 0)), Pushed::Queued);
        assert_eq!(m.push(t0 + ms(4), A, rtp(4, 0)), Pushed::Queued);
        assert_eq!(drain(&mut m, t0 + ms(4)), vec![0, 1]);
        // Noticed when 3 arrived: the deadline is 3 ms + window.
        let deadline = t0 + ms(3) + ms(50);
        assert_eq!(m.poll_timeout(), Some(deadline));
        m.handle_timeout(deadline - Duration::from_nanos(1));
        assert!(drain(&mut m, deadline).is_empty());
        m.handle_timeout(deadline);
        assert_eq!(drain(&mut m, deadline), vec![3, 4]);
        assert_eq!(m.stats().unrecovered, 1);
        assert_eq!(
            events(&mut m),
            vec![Event::Gap {
                first: ExtSeq(2),
                count: 1
            }]
        );
        // The packet after its gap was given up is late.
        assert_eq!(m.push(deadline + ms(1), B, rtp(2, 0)), Pushed::Late);
        assert_eq!(m.stats().late, 1);
        assert_eq!(m.stats().legs[1].late, 1);
    }

    #[test]
    fn multi_packet_gap_waits_from_the_first_packet_after_it() {
        let t0 = base();
        let mut m = Merger::new(cfg(2));
        m.push(t0, A, rtp(10, 0));
        m.push(t0, B, rtp(10, 0));
        m.push(t0 + ms(2), A, rtp(14, 0)); // 11..=13 missing, noticed at 2 ms
        m.push(t0 + ms(20), B, rtp(11, 0)); // partly filled
        assert_eq!(drain(&mut m, t0 + ms(20)), vec![10, 11]);
        assert_eq!(m.poll_timeout(), Some(t0 + ms(52)));
        m.handle_timeout(t0 + ms(52));
        assert_eq!(drain(&mut m, t0 + ms(52)), vec![14]);
        assert_eq!(
            events(&mut m),
            vec![Event::Gap {
                first: ExtSeq(12),
                count: 2
            }]
        );
    }

    #[test]
    fn lost_leg_costs_no_added_latency() {
        let t0 = base();
        let mut m = Merger::new(cfg(2));
        m.push(t0, A, rtp(0, 0));
        m.push(t0, B, rtp(0, 0));
        // B falls silent; A keeps going. B is declared lost after leg_timeout, when the
        // caller's timer fires.
        for i in 1..=250u16 {
            m.push(t0 + ms(i as u64), A, rtp(i, 0));
        }
        assert!(
            events(&mut m).is_empty(),
            "push alone never declares a leg lost"
        );
        assert_eq!(m.poll_timeout(), Some(t0 + ms(200)));
        m.handle_timeout(t0 + ms(250));
        assert_eq!(events(&mut m), vec![Event::LegLost { leg: B }]);
        assert!(m.stats().legs[1].lost);
        // A gap now is given up at once: nobody else could fill it.
        assert_eq!(m.push(t0 + ms(252), A, rtp(252, 0)), Pushed::Forwarded);
        assert_eq!(*drain(&mut m, t0 + ms(252)).last().unwrap(), 252);
        assert_eq!(m.stats().unrecovered, 1);
        assert_eq!(
            events(&mut m),
            vec![Event::Gap {
                first: ExtSeq(251),
                count: 1
            }]
        );
        // B comes back.
        assert_eq!(m.push(t0 + ms(253), B, rtp(253, 0)), Pushed::Forwarded);
        assert_eq!(events(&mut m), vec![Event::LegBack { leg: B }]);
        assert!(!m.stats().legs[1].lost);
    }

    #[test]
    fn after_a_stall_a_leg_whose_packets_are_still_queued_is_not_lost() {
        let t0 = base();
        let mut m = Merger::new(cfg(2));
        m.push(t0, A, rtp(0, 0));
        m.push(t0, B, rtp(0, 0));
        assert_eq!(drain(&mut m, t0), vec![0]);
        // The receiver stalls for 300 ms (> leg_timeout). Then it reads A's queue first, with
        // a hole at 2, and only then B's: B must still be waited for.
        let late = t0 + ms(300);
        for i in [1u16, 3, 4] {
            m.push(late, A, rtp(i, 0));
        }
        assert_eq!(drain(&mut m, late), vec![1]);
        assert!(!m.stats().legs[1].lost);
        for i in 1..=4u16 {
            m.push(late, B, rtp(i, 0));
        }
        assert_eq!(drain(&mut m, late), vec![2, 3, 4]);
        assert_eq!(m.stats().unrecovered, 0);
    }

    #[test]
    fn leg_lost_by_timer_releases_a_waiting_gap() {
        let t0 = base();
        let mut m = Merger::new(MergerConfig {
            window: ms(500),
            ..cfg(2)
        });
        m.push(t0, A, rtp(0, 0));
        m.push(t0, B, rtp(0, 0));
        m.push(t0 + ms(150), A, rtp(2, 0));
        // B last seen at 0: lost at 200 ms, earlier than the gap deadline (650 ms).
        assert_eq!(m.poll_timeout(), Some(t0 + ms(200)));
        m.handle_timeout(t0 + ms(200));
        assert_eq!(drain(&mut m, t0 + ms(200)), vec![0, 2]);
        assert_eq!(
            events(&mut m),
            vec![
                Event::LegLost { leg: B },
                Event::Gap {
                    first: ExtSeq(1),
                    count: 1
                }
            ]
        );
    }

    #[test]
    fn gap_every_leg_has_passed_is_given_up_at_once() {
        let t0 = base();
        let mut m = Merger::new(cfg(2));
        m.push(t0, A, rtp(0, 0));
        assert_eq!(m.push(t0 + ms(1), A, rtp(2, 0)), Pushed::Queued);
        m.push(t0 + ms(20), B, rtp(0, 0));
        // B skips 1 as well: nobody can deliver it.
        assert_eq!(m.push(t0 + ms(21), B, rtp(2, 0)), Pushed::Duplicate);
        assert_eq!(drain(&mut m, t0 + ms(21)), vec![0, 2]);
        assert_eq!(m.stats().unrecovered, 1);
    }

    #[test]
    fn sequence_wrap_is_seamless() {
        let t0 = base();
        let mut m = Merger::new(cfg(2));
        let seqs: Vec<u16> = (65_530..=65_535).chain(0..6).collect();
        for (i, &s) in seqs.iter().enumerate() {
            if s != 65_535 && s != 1 {
                m.push(t0 + ms(i as u64), A, rtp(s, i as u32 * 90));
            }
        }
        for (i, &s) in seqs.iter().enumerate() {
            m.push(t0 + ms(30 + i as u64), B, rtp(s, i as u32 * 90));
        }
        assert_eq!(drain(&mut m, t0 + ms(50)), seqs);
        let s = m.stats();
        assert_eq!(
            (s.unrecovered, s.resyncs, s.late, s.legs[1].recovered),
            (0, 0, 0, 2)
        );
    }

    #[test]
    fn ssrc_change_resyncs_at_once_and_lagging_old_packets_are_late() {
        let t0 = base();
        let mut m = Merger::new(cfg(2));
        for i in 0..10u16 {
            m.push(t0 + ms(i as u64), A, rtp(100 + i, 0));
        }
        for i in 0..5u16 {
            m.push(t0 + ms(30 + i as u64), B, rtp(100 + i, 0));
        }
        // The sender restarts: new SSRC, new sequence base, new timestamps. A sees it first.
        let new = |s: u16| rtp_ssrc(40_000 + s, 7_777_777, 0xdead_beef, 188);
        assert_eq!(m.push(t0 + ms(40), A, new(0)), Pushed::Forwarded);
        assert_eq!(m.push(t0 + ms(41), A, new(1)), Pushed::Forwarded);
        // B still delivers the tail of the old stream: late, no flip back.
        for i in 5..10u16 {
            assert_eq!(
                m.push(t0 + ms(41 + i as u64), B, rtp(100 + i, 0)),
                Pushed::Late
            );
        }
        assert_eq!(m.push(t0 + ms(70), B, new(0)), Pushed::Duplicate);
        assert_eq!(m.push(t0 + ms(71), B, new(1)), Pushed::Duplicate);
        assert_eq!(m.push(t0 + ms(72), B, new(2)), Pushed::Forwarded);
        let out = drain(&mut m, t0 + ms(72));
        let want: Vec<u16> = (100..110).chain(40_000..40_003).collect();
        assert_eq!(out, want);
        let s = m.stats();
        assert_eq!((s.resyncs, s.late, s.unrecovered), (1, 5, 0));
        assert_eq!(
            events(&mut m),
            vec![Event::Resync {
                leg: A,
                from: ExtSeq(109),
                to: ExtSeq(40_000)
            }]
        );
    }

    #[test]
    fn a_stray_datagram_with_another_ssrc_costs_a_short_run_not_a_window() {
        let t0 = base();
        let mut m = Merger::new(MergerConfig {
            legs: 2,
            window: ms(1000),
            capacity: 1024,
            leg_timeout: ms(200),
        });
        let mut out = Vec::new();
        for i in 0..200u16 {
            m.push(t0 + ms(i as u64), A, rtp(i, 0));
            if i >= 30 {
                m.push(t0 + ms(i as u64), B, rtp(i - 30, 0));
            }
            if i == 100 {
                // One foreign datagram (another sender's SSRC) on leg A.
                m.push(t0 + ms(100), A, rtp_ssrc(5_000, 123, 0xbad, 188));
            }
            out.extend(drain(&mut m, t0 + ms(i as u64)));
        }
        let s = m.stats();
        assert_eq!(
            s.resyncs, 2,
            "re-anchored on the stray, then back on the real stream"
        );
        let lost = (0..200u16).filter(|q| !out.contains(q)).count();
        assert!(
            lost <= 2 * STRAY_RUN as usize,
            "{lost} packets lost to one stray datagram"
        );
        assert!(
            out.ends_with(&[197, 198, 199]),
            "the real stream is back: {:?}",
            &out[out.len() - 5..]
        );
    }

    #[test]
    fn restart_with_same_ssrc_far_jump_on_every_leg_resyncs() {
        let t0 = base();
        let mut m = Merger::new(cfg(2));
        for i in 0..10u16 {
            m.push(t0 + ms(i as u64), A, rtp(i, i as u32 * 90));
            m.push(t0 + ms(i as u64), B, rtp(i, i as u32 * 90));
        }
        // Sender restarts at seq 30000 with a fresh random timestamp (same fixed SSRC).
        let ts = 3_000_000_000u32;
        assert_eq!(m.push(t0 + ms(20), A, rtp(30_000, ts)), Pushed::Late);
        assert_eq!(m.stats().suspect, 1);
        // The other leg shows the same jump: confirmed on every leg.
        assert_eq!(m.push(t0 + ms(20), B, rtp(30_000, ts)), Pushed::Forwarded);
        assert_eq!(m.push(t0 + ms(21), A, rtp(30_001, ts)), Pushed::Forwarded);
        assert_eq!(m.push(t0 + ms(21), B, rtp(30_001, ts)), Pushed::Duplicate);
        // Old data from before the restart is late, never a flip back.
        assert_eq!(m.push(t0 + ms(22), B, rtp(9, 9 * 90)), Pushed::Late);
        let out = drain(&mut m, t0 + ms(22));
        assert_eq!(out, (0..10).chain([30_000, 30_001]).collect::<Vec<_>>());
        assert_eq!(m.stats().resyncs, 1);
    }

    #[test]
    fn restart_seen_on_one_leg_resyncs_after_a_consistent_run() {
        let t0 = base();
        let mut m = Merger::new(cfg(2));
        for i in 0..10u16 {
            m.push(t0 + ms(i as u64), A, rtp(i, i as u32 * 90));
        }
        // Only A carries the restarted stream for now (B is 30 ms behind: still old data).
        // A fresh random timestamp: not "old" relative to the current one.
        let ts = 2_000_000_000;
        for k in 0..RESYNC_RUN as u16 {
            // B's old packets do not cancel a run B has no part in.
            assert_eq!(
                m.push(t0 + ms(20 + k as u64), B, rtp(k, k as u32 * 90)),
                Pushed::Duplicate
            );
            let r = m.push(t0 + ms(20 + k as u64), A, rtp(50_000 + k, ts));
            let want = if k + 1 == RESYNC_RUN as u16 {
                Pushed::Forwarded
            } else {
                Pushed::Late
            };
            assert_eq!(r, want, "packet {k} of the run");
        }
        assert_eq!(m.stats().resyncs, 1);
        assert_eq!(m.stats().suspect, RESYNC_RUN as u64 - 1);
        // B's remaining old packets are late.
        assert_eq!(m.push(t0 + ms(40), B, rtp(9, 9 * 90)), Pushed::Late);
        assert_eq!(m.push(t0 + ms(41), A, rtp(50_008, ts)), Pushed::Forwarded);
    }

    #[test]
    fn a_stray_packet_far_outside_the_window_is_ignored() {
        let t0 = base();
        let mut m = Merger::new(cfg(2));
        for i in 0..20u16 {
            m.push(t0 + ms(i as u64), A, rtp(i, i as u32 * 90));
            if i == 10 {
                assert_eq!(m.push(t0 + ms(i as u64), B, rtp(20_000, 5)), Pushed::Late);
            }
        }
        assert_eq!(drain(&mut m, t0 + ms(20)), (0..20).collect::<Vec<_>>());
        let s = m.stats();
        assert_eq!((s.resyncs, s.suspect, s.unrecovered), (0, 1, 0));
    }

    #[test]
    fn a_leg_lagging_beyond_capacity_with_old_timestamps_is_late_not_a_restart() {
        let t0 = base();
        let mut m = Merger::new(MergerConfig {
            capacity: 64,
            ..cfg(2)
        });
        let mut out = 0;
        for i in 0..1000u16 {
            m.push(t0 + ms(i as u64), A, rtp(i, i as u32 * 90));
            out += drain(&mut m, t0 + ms(i as u64)).len();
            if i >= 500 {
                // B is 500 packets (far more than capacity) behind.
                let j = i - 500;
                assert_eq!(
                    m.push(t0 + ms(i as u64), B, rtp(j, j as u32 * 90)),
                    Pushed::Late
                );
            }
        }
        let s = m.stats();
        assert_eq!((s.resyncs, s.suspect, s.late, s.output), (0, 0, 500, 1000));
        assert_eq!(out, 1000);
    }

    #[test]
    fn duplicates_and_late_are_counted_per_leg() {
        let t0 = base();
        let mut m = Merger::new(cfg(2));
        m.push(t0, A, rtp(0, 0));
        assert_eq!(m.push(t0, A, rtp(0, 0)), Pushed::Duplicate); // same leg twice
        assert_eq!(m.push(t0, B, rtp(0, 0)), Pushed::Duplicate);
        m.push(t0 + ms(1), A, rtp(2, 0));
        assert_eq!(m.push(t0 + ms(2), B, rtp(2, 0)), Pushed::Duplicate); // held copy
        // Both legs passed 1: given up; the late copy afterwards is late.
        assert_eq!(m.push(t0 + ms(3), B, rtp(1, 0)), Pushed::Late);
        let s = m.stats();
        assert_eq!((s.duplicates, s.late, s.unrecovered), (3, 1, 1));
        assert_eq!(
            (s.legs[0].duplicates, s.legs[1].duplicates, s.legs[1].late),
            (1, 2, 1)
        );
        assert_eq!((s.legs[0].packets, s.legs[1].packets), (3, 3));
    }

    #[test]
    fn path_differential_reads_the_delay_of_the_trailing_leg() {
        let mut sim = Sim::new(MergerConfig {
            legs: 2,
            window: ms(100),
            capacity: 1024,
            leg_timeout: ms(500),
        });
        let legs = [LegScript::delayed(ms(2)), LegScript::delayed(ms(32))];
        sim.send(
            Duration::ZERO,
            Duration::from_micros(526),
            2000,
            0,
            0,
            SSRC,
            &legs,
        );
        sim.run();
        let s = sim.merger.stats();
        let b = s.legs[1].path_differential.as_secs_f64() * 1e3;
        let a = s.legs[0].path_differential.as_secs_f64() * 1e3;
        assert!((b - 30.0).abs() < 0.5, "B trails by {b} ms");
        assert!(a < 0.5, "A reads {a} ms");
        assert_eq!(s.output, 2000);
    }

    #[test]
    fn recovered_counts_packets_only_one_leg_delivered() {
        let t0 = base();
        let mut m = Merger::new(cfg(2));
        // A leads by 30 ms and loses 5; B trails and loses 7.
        for i in 0..10u16 {
            if i != 5 {
                m.push(t0 + ms(i as u64), A, rtp(i, 0));
            }
        }
        for i in 0..10u16 {
            if i != 7 {
                m.push(t0 + ms(30 + i as u64), B, rtp(i, 0));
            }
        }
        let s = m.stats();
        // B filled A's hole at 5 (after A had skipped it); A's 7 went out first and B then
        // skipped it: each leg recovered one packet for the other.
        assert_eq!((s.legs[0].recovered, s.legs[1].recovered), (1, 1));
        assert_eq!(drain(&mut m, t0 + ms(40)), (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn a_trailing_lost_leg_is_waited_for_only_its_differential() {
        let t0 = base();
        // B runs 30 ms behind A (one packet per ms), then falls silent and is declared lost;
        // A loses 200 just as B would come back.
        let setup = || {
            let mut m = Merger::new(MergerConfig {
                legs: 2,
                window: ms(1000),
                capacity: 1024,
                leg_timeout: ms(50),
            });
            for i in 0..100u16 {
                m.push(t0 + ms(i as u64), A, rtp(i, 0));
                if i >= 30 {
                    m.push(t0 + ms(i as u64), B, rtp(i - 30, 0));
                }
            }
            for i in 100..200u16 {
                m.push(t0 + ms(i as u64), A, rtp(i, 0));
            }
            m.handle_timeout(t0 + ms(200));
            assert!(m.stats().legs[1].lost);
            drain(&mut m, t0 + ms(200));
            m.push(t0 + ms(201), A, rtp(201, 0));
            assert!(
                drain(&mut m, t0 + ms(201)).is_empty(),
                "the gap at 200 must wait for B"
            );
            // B's 30 ms lag plus a 15 ms margin, not the 1 s window.
            assert_eq!(m.poll_timeout(), Some(t0 + ms(201 + 30 + 15)));
            m
        };
        // B returns and delivers 200 at its usual lag: nothing is lost.
        let mut m = setup();
        m.push(t0 + ms(230), B, rtp(170, 0));
        m.push(t0 + ms(230), B, rtp(200, 0));
        assert_eq!(drain(&mut m, t0 + ms(230)), vec![200, 201]);
        assert_eq!(m.stats().unrecovered, 0);
        // B stays away: the gap is given up at B's lag + margin.
        let mut m = setup();
        m.handle_timeout(t0 + ms(245));
        assert!(drain(&mut m, t0 + ms(245)).is_empty());
        m.handle_timeout(t0 + ms(246));
        assert_eq!(drain(&mut m, t0 + ms(246)), vec![201]);
        assert_eq!(m.stats().unrecovered, 1);
    }

    #[test]
    fn overflow_forces_the_oldest_out_and_memory_stays_bounded() {
        let t0 = base();
        let mut m = Merger::new(MergerConfig {
            capacity: 16,
            window: ms(10_000),
            ..cfg(2)
        });
        assert_eq!(m.ring.len(), 16);
        m.push(t0, A, rtp(0, 0));
        m.push(t0, B, rtp(0, 0)); // B live, never passes 1: the gap would wait 10 s
        let mut out = drain(&mut m, t0);
        for i in 2..100u16 {
            m.push(t0 + ms(i as u64), A, rtp(i, 0));
            out.extend(drain(&mut m, t0 + ms(i as u64)));
            assert!(
                m.top + 1 - m.out_next <= m.cap,
                "tracked positions stay within capacity"
            );
        }
        assert_eq!(m.ring.len(), 16, "never grows");
        let s = m.stats();
        assert_eq!((s.overflow, s.unrecovered), (1, 1));
        assert_eq!(out, [0].into_iter().chain(2..100).collect::<Vec<_>>());
    }

    #[test]
    fn unpolled_output_is_bounded_too() {
        let t0 = base();
        let mut m = Merger::new(MergerConfig {
            capacity: 16,
            ..cfg(1)
        });
        for i in 0..40u16 {
            m.push(t0, A, rtp(i, 0));
        }
        let out = drain(&mut m, t0);
        assert_eq!(out, (24..40).collect::<Vec<_>>());
        assert_eq!(m.stats().overflow, 24);
    }

    #[test]
    fn three_legs_each_losing_different_packets() {
        let mut sim = Sim::new(MergerConfig {
            legs: 3,
            window: ms(60),
            capacity: 1024,
            leg_timeout: ms(500),
        });
        let legs = [
            LegScript::delayed(ms(1)).losing(|i| i % 3 == 1),
            LegScript::delayed(ms(10)).losing(|i| i % 3 == 2),
            LegScript::delayed(ms(40)).losing(|i| i % 3 == 0),
        ];
        sim.send(Duration::ZERO, ms(1), 600, 65_000, 0, SSRC, &legs);
        sim.run();
        let want: Vec<u16> = (0..600u16).map(|i| 65_000u16.wrapping_add(i)).collect();
        assert_eq!(sim.out_seqs(), want);
        let s = sim.merger.stats();
        assert_eq!(s.unrecovered, 0);
        assert!(
            s.legs[1].recovered > 150,
            "leg 1 fills leg 0's holes: {}",
            s.legs[1].recovered
        );
    }

    #[test]
    fn sim_realistic_loss_and_skew() {
        let mut sim = Sim::new(MergerConfig {
            legs: 2,
            window: ms(100),
            capacity: 4096,
            leg_timeout: ms(500),
        });
        let lost_a = |i: u64| (i * 7919) % 100 == 3;
        let lost_b = |i: u64| (i * 104_729) % 97 == 5;
        let legs = [
            LegScript::delayed(ms(5)).losing(lost_a),
            LegScript::delayed(ms(35)).losing(lost_b),
        ];
        let n = 5000;
        sim.send(
            Duration::ZERO,
            Duration::from_micros(526),
            n,
            60_000,
            0,
            SSRC,
            &legs,
        );
        sim.run();
        let both: Vec<u64> = (0..n).filter(|&i| lost_a(i) && lost_b(i)).collect();
        let want: Vec<u16> = (0..n)
            .filter(|i| !both.contains(i))
            .map(|i| 60_000u16.wrapping_add(i as u16))
            .collect();
        assert_eq!(sim.out_seqs(), want);
        let s = sim.merger.stats();
        assert_eq!(s.unrecovered, both.len() as u64);
        assert_eq!(
            s.legs[1].recovered,
            (0..n).filter(|&i| lost_a(i) && !lost_b(i)).count() as u64
        );
        // Zero added latency in order: packets A delivered in order leave when A delivers them.
        let first = sim.out[0].0;
        assert_eq!(first, sim.base + ms(5));
    }

    #[test]
    fn sim_reorder_within_a_leg_is_covered_while_the_other_leg_trails() {
        let mut sim = Sim::new(MergerConfig {
            legs: 2,
            window: ms(50),
            capacity: 1024,
            leg_timeout: ms(500),
        });
        // A swaps every pair after the first packet (2 before 1, 4 before 3, ...); B is 20 ms
        // behind, in order.
        let legs = [
            LegScript::delayed(ms(1)).jitter(|i| if i % 2 == 1 { ms(2) } else { Duration::ZERO }),
            LegScript::delayed(ms(20)),
        ];
        sim.send(Duration::ZERO, ms(1), 300, 0, 0, SSRC, &legs);
        sim.run();
        assert_eq!(sim.out_seqs(), (0..300).collect::<Vec<_>>());
        assert_eq!(sim.merger.stats().unrecovered, 0);
    }

    #[test]
    fn events_report_lost_and_back_legs_in_the_sim() {
        let mut sim = Sim::new(MergerConfig {
            legs: 2,
            window: ms(50),
            capacity: 1024,
            leg_timeout: ms(100),
        });
        // B is down from packet 100 to 399 (300 ms at 1 ms spacing).
        let legs = [
            LegScript::delayed(ms(1)),
            LegScript::delayed(ms(5)).losing(|i| (100..400).contains(&i)),
        ];
        sim.send(Duration::ZERO, ms(1), 600, 0, 0, SSRC, &legs);
        sim.run();
        let lost_back: Vec<&Event> = sim
            .events
            .iter()
            .filter(|e| matches!(e, Event::LegLost { .. } | Event::LegBack { .. }))
            .collect();
        assert_eq!(
            lost_back[..2],
            [&Event::LegLost { leg: B }, &Event::LegBack { leg: B }],
            "then both are lost at the end: {lost_back:?}"
        );
        assert_eq!(sim.out_seqs(), (0..600).collect::<Vec<_>>());
    }

    /// Property tests: legs are FIFO paths with independent loss and delay (< window), in any
    /// interleaving; the output is checked against a model.
    mod props {
        use super::*;
        use proptest::prelude::*;

        /// Sender packet spacing (µs) and the largest path delay (µs), below the 50 ms window.
        const SPACING_US: u64 = 500;
        const MAX_DELAY_US: u32 = 40_000;

        /// Per packet, per leg: `None` = lost on that leg, `Some(delay_us)`.
        type Lanes = Vec<Vec<Option<u32>>>;

        fn prop_cfg(legs: usize) -> MergerConfig {
            MergerConfig {
                legs,
                window: ms(50),
                capacity: 1024,
                leg_timeout: ms(10_000),
            }
        }

        fn lanes(legs: usize, max_n: usize, loss: f64) -> impl Strategy<Value = Lanes> {
            let leg = prop::option::weighted(1.0 - loss, 0..MAX_DELAY_US);
            prop::collection::vec(prop::collection::vec(leg, legs), 1..max_n)
        }

        fn any_seq() -> impl Strategy<Value = u16> {
            prop_oneof![any::<u16>(), 65_200u16..=65_535]
        }

        /// The first packet must arrive first: the stream starts with it.
        fn start_first(l: &mut Lanes) {
            l[0][0] = Some(0);
        }

        /// Each packet reaches at least one leg.
        fn reach_one(l: &mut Lanes) {
            for (i, p) in l.iter_mut().enumerate() {
                if p.iter().all(Option::is_none) {
                    let n = p.len();
                    p[i % n] = Some((i as u32 * 7919) % MAX_DELAY_US);
                }
            }
        }

        /// Schedule the packets on a FIFO path per leg; returns the arrival events in the order
        /// the simulator will push them: (time µs, leg, segment, index).
        fn schedule(
            sim: &mut Sim,
            segs: &[(&Lanes, u16, u32, u64)],
        ) -> Vec<(u64, u64, usize, usize, usize)> {
            let legs = segs[0].0[0].len();
            let mut ev = Vec::new();
            let mut order = 0u64;
            for leg in 0..legs {
                let mut last = 0u64;
                for (sg, &(lanes, seq0, ssrc, t0)) in segs.iter().enumerate() {
                    for (i, p) in lanes.iter().enumerate() {
                        if let Some(d) = p[leg] {
                            let sent = (t0 + i as u64) * SPACING_US;
                            last = last.max(sent + u64::from(d));
                            let seq = seq0.wrapping_add(i as u16);
                            let pkt = rtp_ssrc(seq, (sent * 9 / 100) as u32, ssrc, 188);
                            sim.deliver(Duration::from_micros(last), leg, pkt);
                            order += 1;
                            ev.push((last, order, leg, sg, i));
                        }
                    }
                }
            }
            ev.sort();
            ev
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

            #[test]
            fn output_is_the_original_sequence_when_each_packet_reaches_a_leg(
                legs in 2usize..=3,
                seq0 in any_seq(),
                mut l in lanes(3, 400, 0.4),
            ) {
                l.iter_mut().for_each(|p| p.resize(legs, None));
                start_first(&mut l);
                reach_one(&mut l);
                let mut sim = Sim::new(prop_cfg(legs));
                schedule(&mut sim, &[(&l, seq0, SSRC, 0)]);
                sim.run();
                let want: Vec<u16> = (0..l.len()).map(|i| seq0.wrapping_add(i as u16)).collect();
                prop_assert_eq!(sim.out_seqs(), want);
                let s = sim.merger.stats();
                prop_assert_eq!(s.unrecovered, 0);
                prop_assert_eq!(s.late, 0);
                prop_assert_eq!((s.resyncs, s.overflow, s.suspect), (0, 0, 0));
                let copies = l.iter().flatten().filter(|d| d.is_some()).count() as u64;
                prop_assert_eq!(s.output + s.duplicates, copies);
            }

            #[test]
            fn unrecovered_counts_exactly_the_packets_lost_on_every_leg(
                legs in 2usize..=3,
                seq0 in any_seq(),
                mut l in lanes(3, 400, 0.5),
            ) {
                l.iter_mut().for_each(|p| p.resize(legs, None));
                start_first(&mut l);
                let mut sim = Sim::new(prop_cfg(legs));
                schedule(&mut sim, &[(&l, seq0, SSRC, 0)]);
                sim.run();
                let reached: Vec<usize> =
                    (0..l.len()).filter(|&i| l[i].iter().any(Option::is_some)).collect();
                let last = *reached.last().unwrap();
                let lost_everywhere = (0..last).filter(|i| !reached.contains(i)).count() as u64;
                let want: Vec<u16> = reached.iter().map(|&i| seq0.wrapping_add(i as u16)).collect();
                prop_assert_eq!(sim.out_seqs(), want);
                prop_assert_eq!(sim.merger.stats().unrecovered, lost_everywhere);
                let gaps: u64 = sim.events.iter().map(|e| match e {
                    Event::Gap { count, .. } => *count,
                    _ => 0,
                }).sum();
                prop_assert_eq!(gaps, lost_everywhere);
            }

            #[test]
            fn a_sender_restart_never_duplicates_or_reorders(
                legs in 2usize..=3,
                seq0 in any_seq(),
                seq1 in any::<u16>(),
                ssrc1 in any::<u32>().prop_filter("new SSRC", |s| *s != SSRC),
                mut l1 in lanes(3, 200, 0.4),
                mut l2 in lanes(3, 200, 0.4),
            ) {
                l1.iter_mut().chain(l2.iter_mut()).for_each(|p| p.resize(legs, None));
                start_first(&mut l1);
                reach_one(&mut l1);
                reach_one(&mut l2);
                let mut sim = Sim::new(prop_cfg(legs));
                let n1 = l1.len() as u64;
                let ev = schedule(&mut sim, &[(&l1, seq0, SSRC, 0), (&l2, seq1, ssrc1, n1)]);
                sim.run();
                // Model: the first packet of the new stream to arrive re-anchors the merger.
                // Everything of the old stream that arrived before it is flushed out; the new
                // stream is complete from the anchor on; nothing else comes out.
                let at = ev.iter().position(|e| e.3 == 1).unwrap();
                let anchor = ev[at].4;
                let mut old: Vec<usize> = ev[..at].iter().map(|e| e.4).collect();
                old.sort();
                old.dedup();
                let want: Vec<u16> = old
                    .iter()
                    .map(|&i| seq0.wrapping_add(i as u16))
                    .chain((anchor..l2.len()).map(|i| seq1.wrapping_add(i as u16)))
                    .collect();
                prop_assert_eq!(sim.out_seqs(), want);
                prop_assert_eq!(sim.merger.stats().resyncs, 1);
                let ssrcs: Vec<u32> = sim.out.iter().map(|(_, p)| p.ssrc).collect();
                prop_assert!(ssrcs.windows(2).all(|w| w[0] == w[1] || w[1] == ssrc1));
            }
        }
    }
}
