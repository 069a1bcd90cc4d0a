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
//!      packet. Legs are FIFO paths, so a leg that passed the gap lost the packet; with every
//!      other leg lost, a gap costs no added latency. (A leg that reorders its own packets
//!      therefore only gets reorder protection while another leg has not yet passed the gap.)
//! - **Resync.** A sender restart must not look like old data, and a lagging leg must not look
//!   like a restart. The merger re-anchors (releases what it holds, counts missing packets as
//!   unrecovered, starts a new epoch at the packet that triggered it, [`Event::Resync`]) when
//!   - the SSRC changes (at once), except for packets carrying the previous epoch's SSRC, which
//!     are old data from a lagging leg and are dropped as late;
//!   - or a packet is *suspicious* — more than `capacity` ahead of the highest position, or more
//!     than `capacity` behind it with an RTP timestamp that is not old (old = at most 60 s of
//!     90 kHz clock behind the newest packet's timestamp: a lagging leg, dropped as late) — and
//!     [`RESYNC_RUN`] suspicious packets consistent with each other (same SSRC, sequence numbers
//!     within `capacity` of each other) arrive, or every live leg (at least two) has delivered
//!     one. A normal packet from a leg that contributed to the run cancels it. Packets of the
//!     previous epoch (its SSRC, sequence within `capacity` of its last one) are late, never
//!     suspicious, so a lagging leg cannot flip the merger back. As a last resort,
//!     [`STALE_LIMIT`] consecutive rejected packets with nothing accepted in between force a
//!     resync, so the merger can never lock itself out.
//! - **Recovered.** A packet counts as recovered for leg L when L delivered the copy that is
//!   output (the first copy) while at least one *other* leg that was not lost had already
//!   delivered a later packet — that leg skipped this one, and L filled the hole.
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
/// Consecutive rejected packets (suspicious or previous epoch) that force a resync.
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
    /// Output packets whose copy came from this leg while another live leg had already skipped
    /// them (see the module docs).
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
        if self.next_check.is_some_and(|t| now >= t) {
            self.handle_timeout(now);
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
        self.stale_run = 0;
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
        let lm = &mut self.legs[li].max_q;
        *lm = (*lm).max(q);
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
            if self.passed_by_other(li, q) {
                self.stats.legs[li].recovered += 1;
            }
            self.store(now, li, q, pkt);
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
        if self.stale_run >= STALE_LIMIT {
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
        if c.count >= RESYNC_RUN || every_leg || self.stale_run >= STALE_LIMIT {
            return self.resync(now, li, pkt);
        }
        self.stats.suspect += 1;
        Pushed::Late
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
