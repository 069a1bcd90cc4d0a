//! Content hitless merge: merge two or more legs carrying the same MPEG-TS (ISO/IEC 13818-1)
//! over plain UDP, without RTP sequence numbers, by aligning the legs on the TS packets
//! themselves ("Content Hitless Merge" in DOMAIN.md; the RTP-numbered case is
//! [`seq2022_7`](super::seq2022_7)).
//!
//! Sans-IO: no socket, no clock. Every entry point takes `now`; the glue moves the bytes.
//!
//! # Model: a timeline of packet positions
//! Each leg delivers datagrams = runs of consecutive original TS packets, in original order
//! (FIFO), with losses; packetisation may differ per leg. The merger keeps a **timeline**: a
//! ring of slots indexed by an absolute packet position (u64). A slot is empty or holds one
//! TS packet (null or not). Each anchored leg has a cursor `next`: the position right after
//! the last packet it delivered. The output is the filled slots in position order; empty
//! slots (packets no leg delivered) produce nothing, so nulls are never invented and the
//! number of nulls between two packets is whatever some leg delivered at those positions.
//!
//! # Placing a datagram of `k` packets (anchored leg)
//! 1. **Time estimate of the gap.** The transport stream is constant-bitrate (the mux pads
//!    with nulls), so a leg's arrival times measure how many packets it lost. Each leg keeps
//!    an *arrival line* (a lower envelope of its (arrival, position) points: jitter and
//!    stalls only delay, so the line is reset by any datagram at or below it and only creeps
//!    up slowly, by at most 1/16 spacing per datagram) and the packet spacing: once the leg
//!    has placed 384+ packets, the median slope between the least-delayed datagrams of
//!    128-packet blocks, over up to 16 blocks (`Slope`); before that, from its inter-datagram
//!    samples (the smallest sample if every time between its datagrams is a whole multiple
//!    of it, else the smallest value a quarter of them share exactly, else the mean of those
//!    within 10 % of the median; the smallest estimate of the legs that have 8 samples),
//!    which are a few percent off under jitter. The estimated gap is the line's position at
//!    the arrival minus the cursor `next` minus `k`; a datagram bunched behind the previous
//!    one (arrived in less than half its own time) is right after it. It is rounded with a dead band of 0.75 packet, and a
//!    leg whose last 16 datagrams had one size `K` (64 once it has changed sizes twice: a
//!    leg of mixed sizes has runs of 16) loses whole datagrams: its gaps are
//!    multiples of `K` (a loss counts from 0.6 datagram), so up to about half a datagram of
//!    jitter is harmless (a single shorter datagram, a stream's last, keeps `K`; it is timed
//!    as a full one unless its continuity counters show a loss before it, since senders pace
//!    it either way). Only a leg's own arrivals are compared: path differentials never
//!    enter a position. `q_est = next + gap`.
//!
//!    **The PCR ruler** (`content/ruler.rs`) overrides time for a datagram carrying a PCR: on a
//!    constant-bitrate mux the PCR advances by exactly `r` ticks per packet, so once `r` is
//!    learnt (from each leg's own packets between two PCRs with no continuity-counter skip,
//!    as they arrive: neither times nor placements enter) and a PCR packet is in the
//!    timeline, a PCR packet's position follows from its value alone, whatever the leg lost
//!    and however late it came (counted [`ContentStats::pcr_placed`] when content is
//!    silent). It is used when it lies at or after the leg's cursor and its held datagrams,
//!    within 64 packets of the time estimate (else the PCR jumped); a variable-rate stream
//!    never locks it.
//! 2. **Content decides when it can.** Every non-null packet has a 64-bit [`fingerprint`]; a
//!    fingerprint → highest position index (chains sorted by position for repeated content)
//!    gives candidate positions `x − i` for packet `i` of the datagram, at or after `next`
//!    (FIFO). A candidate is valid when every packet of the datagram is compatible with the
//!    timeline there (slot empty, or the same packet; a null only on an empty or null slot).
//!    The valid candidate nearest `q_est` is taken if it is within the leg's tolerance
//!    (2 packets + 4 × its measured estimation error), or if three of its packets have a
//!    fingerprint found nowhere else in the timeline (a copy, not repeated content: another
//!    leg's positions moved) and none of its packets is in a datagram the leg holds (a leg
//!    delivers a packet once: that one is another instance, and the held one comes first)
//!    *and* the leg's own continuity counters allow it (for each PID,
//!    the known and empty positions between the leg's last packet of that PID and the
//!    candidate can hold `d + 16m` packets of it, `d` the CC step; or the counter continues
//!    from the last packet of that PID the leg holds, which will be placed in front of it,
//!    and no other packet of that PID lies between the cursor and it) *and*, if it lies beyond
//!    `q_est`, the positions it skips hold no other data than copies of the leg's held
//!    packets (room a stall on another leg left, not packets this leg lost while its arrival
//!    times say it lost none). A packet with payload repeats exactly only when its PID's CC
//!    wraps, so a still picture's repeat is 16+ packets of that PID away: "seen once in the
//!    timeline" alone is no proof when the other instance was lost or not yet delivered.
//!    Several valid candidates are counted
//!    [`ContentStats::ambiguous`]. The slot at `q_est + i` is checked first (the usual case,
//!    no hash lookup).
//! 3. **A leg at the front places by time at once** when its time says it lost nothing:
//!    if nothing is known at or after `q_est` (the leading leg), the datagram goes at
//!    `q_est`: nothing can collide with it. If either time estimate (arrival line or
//!    previous datagram) says it lost packets and the PCR ruler works, it holds the datagram
//!    instead (a late arrival and a loss read alike) until its next PCR datagram; the held
//!    datagrams then go between the cursor and it, each as late as the arrival line allows
//!    and before its successor (the line errs late only: a datagram that came on time is
//!    placed exactly, a late one right before the next on-time one), if that agrees with the
//!    leg's continuity counters (below). Without the ruler it places by time (counted
//!    [`ContentStats::time_placed`] when the gap is not zero).
//! 4. **Otherwise the leg holds it** (new packets another leg lost, null-only datagrams, a
//!    copy further away than the tolerance) until a later datagram of the same leg is
//!    placed by content. The held datagrams are then placed between the cursor and that
//!    datagram: a held datagram whose packets are in that interval goes there (near its
//!    time estimate, or with a fingerprint seen once); the others between their neighbours,
//!    each gap as the leg's own times say, and at least as large as the leg's continuity
//!    counters need (a PID's counter steps by `d` from its previous packet on the leg: `d`
//!    of its packets were lost in the gaps between). If the gaps add up to more than the
//!    room, a stall delayed one datagram and bunched the next ones: the largest gaps give
//!    way entirely, first one before a datagram the next came bunched behind, last those the
//!    counters need; room left over (another leg's positions moved, or the loss hidden by
//!    the stall) goes at the place (or, for up to 8 held datagrams, the two places) where the held datagrams
//!    then coincide with the most packets already there (nulls on nulls), else before the
//!    bounding datagram. If that contradicts the timeline, the layout is tried again from
//!    the times alone, then with all the room unexplained (the layout where most packets
//!    coincide). A held null datagram placed next to room is *soft* (below). If the room is
//!    too small
//!    (another leg's estimate was short), positions are **inserted** before the bounding
//!    datagram: the held datagrams came first on a FIFO leg. Two held datagrams agreeing on a
//!    far copy while the leg's datagrams arrived bunched (its times were late) also place
//!    them there. A leg holds at most [`HELD_MAX`] datagrams for a quarter window (50 ms at
//!    most), and never past what the release needs; then they go through this placement
//!    once more (another leg may have delivered them meanwhile: one found by content bounds
//!    those before it, and a copy further than the tolerance is taken if the counters allow
//!    it), and what is still held is placed by time: at
//!    `q_est`, or at the nearest compatible place within the tolerance (counted
//!    `ambiguous`), or by inserting positions at the first conflict (counted
//!    [`ContentStats::conflicts`]); three conflicts in a row (or content found only behind
//!    the cursor) unanchor the leg.
//!
//! Nulls placed by time after a gap with no content on either side are *soft*: while another
//! leg places its held datagrams, soft nulls of a single other leg give way to its data (they
//! were that leg's copies of null datagrams misplaced by a stall), and when its own times say
//! it lost nothing in the interval and it delivered null datagrams there, the soft nulls left
//! in the interval are dropped (both counted in that leg's `dropped`).
//!
//! An orphan null datagram (only nulls, its neighbours lost on this leg) therefore lands where
//! this leg's times put it between the content around it, and duplicates nulls another leg
//! delivered where they coincide.

//! # Release
//! Position `p` is output when every live, non-diverged leg is anchored with its cursor past
//! `p` (a FIFO leg cannot deliver it any more), or when the window has passed since the first
//! filled slot at or after `p` was created. A leg still looking for its anchor is waited for
//! (up to the window); a lost or diverged leg is not. So the added latency is about the path
//! differential; a single leg adds none. Late packets (position already output) are dropped,
//! counted; late copies of output packets are duplicates.
//!
//! # Anchoring, divergence, jumps
//! A leg with no other live anchored leg anchors at the end of the timeline once its packet
//! spacing is known (8 inter-datagram samples; its first datagrams wait for it); the very
//! first anchor leaves 512 free positions below it. Otherwise
//! it buffers up to 64 datagrams and anchors on a streak of [`ANCHOR_RUN`] non-null packets
//! matching the timeline (slots created within the window) at consistent, increasing
//! positions, one of them a fingerprint that occurs once in the timeline; its buffered
//! datagrams from the streak's first are then placed; on a leg's first anchoring, the ones
//! before the streak too, backwards from it by its own arrival times, where the positions are
//! unreleased and agree with the timeline (another leg lost the stream's first datagrams). A
//! leg not anchored for a window while
//! another is live and anchored is [`ContentEvent::Diverged`] ([`ContentMerger::aligned`]
//! false; its packets are never placed) until it anchors again ([`ContentEvent::Aligned`]).
//! An anchored leg that delivers non-null packets but has not agreed with another leg (a
//! copy either way) for a window while another anchored leg has is unanchored. A gap of
//! [`JUMP_PACKETS`] or more (by time), or content found only behind the cursor (for held
//! datagrams: three packets, not counting a PID whose continuity counter continues the leg's
//! own within the loss its times allow, a still picture's repeat), unanchors the leg;
//! anchoring again after having been anchored is [`ContentEvent::Reanchored`], counted.
//!
//! # Use of time (documented approximation)
//! Content is exact; time is evidence where content is silent: the gap before a datagram
//! with no content match, the choice among several valid content candidates, and where the
//! room left by a stall goes. With a constant-rate mux and arrival jitter below half a
//! packet spacing (half a datagram for fixed-size datagrams) the estimate is exact. A larger
//! error, a sender or receiver stall that delays a datagram and bunches the next ones, next
//! to a loss, can misplace a datagram that has no content match (typically an orphan null
//! datagram) relative to another leg's packets of the same gap: a null datagram counted
//! twice or a datagram moved by one datagram. Every such decision is counted:
//! `time_placed`, `ambiguous`, `conflicts`.
//!
//! # Cost and memory
//! Per packet: one fingerprint, one slot compare at the estimated position (a hash lookup
//! and a bounded chain walk only when that misses), one slot write, one release step. A
//! held datagram costs a copy of its packet handles and, when placed, a candidate lookup;
//! insertion (rare, on a conflict) moves the unreleased slots after the conflict. Memory: a
//! ring of `2 × capacity` slots (rounded up to a power of two; released slots stay as
//! history for late copies), the fingerprint index, 64 buffered datagrams per unanchored
//! leg, [`HELD_MAX`] held datagrams per anchored leg, an output queue bounded by
//! `4 × capacity`, an 8192-entry CC table for the output and two per leg (64 KiB for
//! `ContentMerger::cc_consistent`, 8 KiB for the ruler's samples); nothing is allocated
//! per packet in steady state except held and buffered datagrams (and, while placing held
//! datagrams, their gap and counter vectors).
//!
//! # Capture
//! With [`ContentMerger::capture`] every input (datagram, leg, arrival; timeout) is recorded;
//! [`capture::replay`] runs a recording through a new merger and reproduces the output
//! exactly: a misplacement seen live becomes a case to step through offline.
//!
//! # Layout
//! This file: the model, the timeline and its primitives, the placement of a datagram
//! (`place`, `put`) and the release. `content/held.rs`: the held datagrams (step 4 above).
//! `content/anchor.rs`: anchoring, divergence and agreement. `content/ruler.rs`: the PCR
//! ruler. `content/capture.rs`: input capture and replay. `content/tests.rs`: unit tests,
//! the proptest and the virtual-time measurements.
//!
//! # Status
//! Passing: the unit tests (recovery, different boundaries, divergence and realignment,
//! jump, trailing-leg restart, lost leader, single leg, real streams, the saved regression
//! cases, real loopback timing with 100 µs jitter and with 1–4 ms stalls in virtual time,
//! capture and replay), the proptest `output_is_original_minus_packets_lost_everywhere`
//! (64 cases per run from a fixed seed, so CI runs the same cases; `PROPTEST_CASES=N`
//! explores from a random seed: 0 failures in 90 000 random cases with the final code of
//! 2026-12-03; the cases found before are kept as `regression_seed_*` tests, one ignored:
//! a cycle slip by one still-picture period, below), and the loopback test through the
//! binary
//! (`tests/e2e_content.rs`, two legs with 2 % loss and 30 ms skew at twice real time).
//! Virtual-time sweep over 200 seeds of a real stream with 2 % loss per leg and 30 ms skew
//! (`tests::jitter_sweep`), seeds not byte-identical: uniform arrival jitter of 100 µs: 0;
//! 250 µs: 0; 500 µs: 1; 100 µs with 1–4 ms stalls: 3; 300 µs plus, on 3 % of datagrams, up
//! to 2.5 ms more (`TAIL=2500`): 7 (at the start of 2026-12-03: 0, 1, 2, 20 and 93). What
//! still fails is a stall longer than the datagrams around it can pin (no datagram on its
//! arrival line between a loss and the next PCR), or the stream's first few hundred
//! packets, before the ruler locks and the long-baseline spacing is known: the limit in
//! "Use of time". Content has its own limit: a still picture whose period is exactly one
//! counter wrap of its PID, a long burst lost on the leading leg, and the trailing leg takes
//! the copy one period away (three packets seen once, counters consistent) against its own
//! times (`regression_seed_13189515342845921442`, ignored).

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::LegId;
use crate::ts::{NULL_PID, PACKET_LEN, TsPacket};

mod anchor;
pub mod capture;
mod held;
mod ruler;
use capture::Capture;
use ruler::Ruler;

/// A gap of this many packet slots or more (by time) on a leg is a jump: the leg re-anchors.
pub const JUMP_PACKETS: u64 = 1024;
/// Non-null packets matching the timeline at consistent positions that anchor a leg.
pub const ANCHOR_RUN: u32 = 3;
/// Datagrams a leg holds at most while their place is not proven (then placed by time).
pub const HELD_MAX: usize = 64;
/// Datagrams an unanchored leg keeps for replay once it anchors.
const BUFFERED_DATAGRAMS: usize = 64;
/// Packet-spacing samples (one per datagram) a leg's spacing is estimated from.
const SPACING_SAMPLES: usize = 15;
/// Datagrams of one size in a row after which a leg's gaps are taken as multiples of it.
const FIXED_SIZE_RUN: usize = 16;
/// The same for a leg that has already dropped a fixed size or changed sizes twice: a leg of
/// mixed sizes (say 1 or 2 packets) has a run of 16 every few thousand datagrams, and its
/// one-packet losses would then round away.
const VARIED_SIZE_RUN: usize = 64;
/// Own spacing samples before a leg's median is trusted.
const SPACING_WARM: usize = 8;
/// Spacing samples between content-placed datagrams the stream's spacing is the median of.
const PIN_SAMPLES: usize = 31;
/// Positions of one fingerprint looked at per lookup.
const CHAIN_LOOK: usize = 64;
/// Non-null packets of a datagram whose fingerprints are looked up for candidates.
const LOOKUPS: usize = 4;
/// How far (packets) the PCR ruler may place a datagram from its time estimate.
const RULER_REACH: u64 = 64;
/// Conflicting datagrams in a row that unanchor a leg.
const CONFLICTS_MAX: u32 = 3;
const NONE: u64 = u64::MAX;
/// First position (room below for nothing; positions only grow).
const BASE_POS: u64 = 1 << 40;
/// Positions left free below the first anchor (empty positions cost nothing on output).
const FIRST_ROOM: u64 = 512;
/// No continuity counter (null packet, or no payload).
const NO_CC: u8 = 0xff;
const EVENT_QUEUE: usize = 1024;
const MIN_CAPACITY: usize = 16;
const MAX_CAPACITY: usize = 1 << 21;
/// Static parameters of a content merger.
#[derive(Clone, Debug)]
pub struct ContentConfig {
    /// Number of legs (1..=32).
    pub legs: usize,
    /// merge_window_ms: how long a position waits for the other legs, from its creation; also
    /// how long a leg may fail to fit before it is taken for diverged.
    pub window: Duration,
    /// Max TS packets buffered unreleased (window × max bitrate / 1504 bits), clamped to
    /// 16..=2M. The slot ring holds twice this, rounded up to a power of two (released
    /// history for late copies).
    pub capacity: usize,
    /// A leg silent for this long is lost: nobody waits for it.
    pub leg_timeout: Duration,
}

/// Per-leg counters.
#[derive(Clone, Debug, Default)]
pub struct ContentLegStats {
    /// TS packets pushed from this leg.
    pub packets: u64,
    /// Output packets delivered only by this leg that another aligned leg passed (lost).
    pub recovered: u64,
    /// TS packets from this leg that matched a packet already in the timeline.
    pub duplicates: u64,
    /// TS packets dropped: could not be placed (divergence, restart) or too late to insert.
    pub dropped: u64,
    /// How far this leg trails the earliest leg (EWMA of copy arrival − first arrival).
    pub path_differential: Duration,
    /// Arrival of the last datagram.
    pub last_seen: Option<Instant>,
    /// Silent for `leg_timeout`.
    pub lost: bool,
    /// Placed consistently with the timeline.
    pub aligned: bool,
}

/// Channel counters.
#[derive(Clone, Debug, Default)]
pub struct ContentStats {
    pub legs: Vec<ContentLegStats>,
    /// TS packets returned by `poll_output`.
    pub output: u64,
    /// Duplicate copies dropped (all legs).
    pub duplicates: u64,
    /// Packets known missing from the output: continuity-counter gaps on output (non-null PIDs
    /// only, modulo 16; lost null packets are not knowable).
    pub unrecovered: u64,
    /// Re-anchors (jumps, restarts, new anchor leg).
    pub reanchors: u64,
    /// Diverged events raised.
    pub diverged_events: u64,
    /// Released packets dropped because the caller did not drain `poll_output`, or positions
    /// forced out because `capacity` packets were buffered.
    pub overflow: u64,
    /// Events dropped because the queue (1024) was full.
    pub events_dropped: u64,
    /// Places chosen by the time estimate among several that content allowed (repeated
    /// content with more than one valid position, or a datagram with no content match
    /// moved within the jitter to a compatible place).
    pub ambiguous: u64,
    /// Datagrams with no content match placed after a gap estimated from time (packets this
    /// leg lost, measured by its arrival times and packet spacing).
    pub time_placed: u64,
    /// Datagrams with no content match whose estimated place held other packets: positions
    /// were inserted (a time estimate on some leg was wrong).
    pub conflicts: u64,
    /// Datagrams with no content match placed where their PCR says (constant-rate mux).
    pub pcr_placed: u64,
}

/// Something the glue may want to act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContentEvent {
    /// Every live leg fits the timeline again (after a `Diverged`).
    Aligned,
    /// `leg` has not fitted the timeline for a window: the legs are not the same stream.
    Diverged {
        leg: LegId,
    },
    /// `leg` re-anchored: jumped, restarted, or became the anchor.
    Reanchored {
        leg: LegId,
    },
    LegLost {
        leg: LegId,
    },
    LegBack {
        leg: LegId,
    },
}

/// 64-bit fingerprint of a 188-byte TS packet: one multiply-rotate round per 8-byte word, two
/// lanes, and a murmur3 finaliser. Not cryptographic: a content collision between different
/// packets within the window is ~2^-64 per pair (non-adversarial input).
#[inline]
pub fn fingerprint(p: &[u8]) -> u64 {
    const K1: u64 = 0x9e37_79b9_7f4a_7c15;
    const K2: u64 = 0xc2b2_ae3d_27d4_eb4f;
    let mut a: u64 = 0x243f_6a88_85a3_08d3;
    let mut b: u64 = 0x1319_8a2e_0370_7344 ^ p.len() as u64;
    let mut chunks = p.chunks_exact(16);
    for c in &mut chunks {
        let w0 = u64::from_le_bytes(c[..8].try_into().unwrap_or([0; 8]));
        let w1 = u64::from_le_bytes(c[8..].try_into().unwrap_or([0; 8]));
        a = (a ^ w0).wrapping_mul(K1).rotate_left(29);
        b = (b ^ w1).wrapping_mul(K2).rotate_left(31);
    }
    let mut tail = [0u8; 16];
    let r = chunks.remainder();
    tail[..r.len()].copy_from_slice(r);
    a = (a ^ u64::from_le_bytes(tail[..8].try_into().unwrap_or([0; 8])))
        .wrapping_mul(K1)
        .rotate_left(29);
    b = (b ^ u64::from_le_bytes(tail[8..].try_into().unwrap_or([0; 8])))
        .wrapping_mul(K2)
        .rotate_left(31);
    let mut h = a ^ b.rotate_left(17);
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// A leg's packet spacing from its recent samples (time between datagrams / packets of the
/// later, `k` those packets): samples right after a loss are too large by the lost packets,
/// samples of a bunch of datagrams delivered together too small. Exact timing (no jitter):
/// the smallest sample, if every time between datagrams is a whole multiple of it, else the
/// smallest value a quarter of the samples share (within 0.1 %); otherwise the mean of the
/// samples within 10 % of the median.
fn densest(v: &[f64], k: &[u16]) -> f64 {
    // With no jitter every time between datagrams is (packets + lost) spacings: the smallest
    // sample is the spacing if all of them are whole multiples of it (a leg losing every
    // other small datagram early on has no two samples alike; under jitter they are not
    // multiples).
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    if min > 0.0
        && v.iter().zip(k).all(|(&x, &n)| {
            let m = x * f64::from(n) / min;
            (m - m.round()).abs() <= 0.001
        })
    {
        return min;
    }
    // The smallest value enough samples share: losses make multiples of it.
    let need = 3.max(v.len().div_ceil(4));
    let exact = v
        .iter()
        .copied()
        .filter(|&c| v.iter().filter(|&&x| (x - c).abs() <= 0.001 * c).count() >= need)
        .min_by(f64::total_cmp);
    if let Some(c) = exact {
        return c;
    }
    let mut s = [0.0; SPACING_SAMPLES];
    let s = &mut s[..v.len()];
    s.copy_from_slice(v);
    let (_, m, _) = s.select_nth_unstable_by(v.len() / 2, f64::total_cmp);
    let m = *m;
    let (n, sum) = v
        .iter()
        .filter(|&&x| (x - m).abs() <= 0.1 * m)
        .fold((0usize, 0.0), |(n, s), &x| (n + 1, s + x));
    if n > 0 { sum / n as f64 } else { m }
}

/// One TS packet of a datagram.
#[derive(Clone)]
struct Pk {
    bytes: Bytes,
    /// Fingerprint (0 for a null packet).
    fp: u64,
    pid: u16,
    /// Continuity counter, [`NO_CC`] without payload.
    cc: u8,
    null: bool,
    /// Program clock reference (27 MHz), [`NONE`] without one (or on a discontinuity).
    pcr: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Empty,
    Null,
    Data,
}

/// One position of the timeline (ring entry; valid for `pos` only).
struct Slot {
    pos: u64,
    kind: Kind,
    fp: u64,
    /// The packet until it is released (then only `kind` and `fp` stay, as history).
    pkt: Option<Bytes>,
    /// Its PID (kept as history with `fp`).
    pid: u16,
    /// Next lower position holding the same fingerprint (`NONE`: none known).
    same_prev: u64,
    /// Arrival of the datagram that created it (ns from `base`).
    created_ns: u64,
    /// Legs that delivered it (bit per leg).
    legs: u32,
    creator: u8,
    /// Nulls placed by a time estimate after a gap (no content on either side proved it):
    /// another leg whose own times prove the interval may find it misplaced.
    soft: bool,
}

/// Packets per block of the long-baseline spacing estimate.
const SLOPE_BLOCK: u64 = 128;
/// Blocks the long-baseline spacing spans at most.
const SLOPE_BLOCKS: usize = 16;
/// Packets the baseline must span before its spacing is used.
const SLOPE_MIN_SPAN: u64 = 384;

/// A leg's packet spacing over a long baseline: per block of [`SLOPE_BLOCK`] positions the
/// least-delayed datagram (smallest arrival − position × spacing), and the median slope
/// between consecutive such points of the last [`SLOPE_BLOCKS`] blocks. Jitter only delays,
/// so each block's earliest datagram carries about the same (smallest) delay and a slope is
/// the sender's rate with an error of that delay's spread divided by hundreds of packets;
/// the per-datagram samples (a few percent off under jitter) would misplace a datagram after
/// a few hundred packets of extrapolation. Stalls and losses do not move it, and a position
/// error moves one pair, not the median.
#[derive(Clone, Default)]
struct Slope {
    /// Earliest point of the current block: (arrival ns, position after the datagram).
    cur: Option<(f64, u64)>,
    ring: [(f64, u64); SLOPE_BLOCKS],
    n: usize,
    at: usize,
    /// Spacing (ns per packet), 0 until the baseline spans [`SLOPE_MIN_SPAN`] packets.
    s: f64,
}

impl Slope {
    /// A datagram ending at position `p` arrived at `t`; `s` is the current spacing.
    fn add(&mut self, t: f64, p: u64, s: f64) {
        if s <= 0.0 {
            return;
        }
        let key = |(t, p): (f64, u64)| t - (p - BASE_POS) as f64 * s;
        match self.cur {
            Some(c) if c.1 / SLOPE_BLOCK == p / SLOPE_BLOCK => {
                if key((t, p)) < key(c) {
                    self.cur = Some((t, p));
                }
            }
            Some(c) if p > c.1 => {
                self.ring[self.at % SLOPE_BLOCKS] = c;
                self.at += 1;
                self.n = (self.n + 1).min(SLOPE_BLOCKS);
                self.cur = Some((t, p));
                // The median of the slopes between consecutive block points: a position error
                // (a loss a leader's time estimate missed, or a gap it saw in a stall: holes
                // cost nothing on output) skews only the pair around it.
                let mut v = [0.0f64; SLOPE_BLOCKS];
                let mut m = 0;
                for j in 1..self.n {
                    let a = self.ring[(self.at - self.n + j - 1) % SLOPE_BLOCKS];
                    let b = self.ring[(self.at - self.n + j) % SLOPE_BLOCKS];
                    if b.1 > a.1 && b.0 > a.0 {
                        v[m] = (b.0 - a.0) / (b.1 - a.1) as f64;
                        m += 1;
                    }
                }
                let span = c.1 - self.ring[(self.at - self.n) % SLOPE_BLOCKS].1;
                if m >= 2 && span >= SLOPE_MIN_SPAN {
                    let v = &mut v[..m];
                    let (_, med, _) = v.select_nth_unstable_by(m / 2, f64::total_cmp);
                    self.s = *med;
                }
            }
            Some(_) => {}
            None => self.cur = Some((t, p)),
        }
    }

    /// Positions from `c` on moved up by `m` (see `insert`).
    fn shift(&mut self, c: u64, m: u64) {
        for pt in self.cur.iter_mut().chain(self.ring.iter_mut()) {
            if pt.1 > c {
                pt.1 += m;
            }
        }
    }
}

/// A datagram kept by an unanchored leg.
struct Dgram {
    seq: u64,
    t: u64,
    pk: Vec<Pk>,
}

/// A datagram an anchored leg holds until a later datagram placed by content bounds it.
struct Held {
    t: u64,
    pk: Vec<Pk>,
    /// Arrived before the time estimate of the held datagram before it allows: that one was
    /// late (a stall), so the leg's time estimates are off, not the content.
    early: bool,
}

/// Matches of an unanchored leg at consistent positions.
#[derive(Clone, Copy)]
struct Streak {
    /// Buffer sequence number and position of its first datagram.
    seq: u64,
    q_first: u64,
    /// Position after its last datagram, and that datagram's arrival.
    next: u64,
    t_last: u64,
    count: u32,
    unique: bool,
}

struct Leg {
    anchored: bool,
    /// Was anchored once (a later anchoring is a re-anchor).
    was_anchored: bool,
    /// Position right after the last packet this leg delivered.
    next: u64,
    /// Arrival (ns) of the last datagram placed.
    last_t: Option<u64>,
    /// The leg's arrival line: (arrival ns, position after the datagram) of a datagram that
    /// came early (lower envelope: jitter only delays), raised slowly to follow drift.
    line: Option<(f64, u64)>,
    /// Long-baseline packet spacing (see [`Slope`]).
    slope: Slope,
    /// Packet spacing (ns, median of recent samples), samples ring, last arrival.
    spacing: f64,
    samples: [f64; SPACING_SAMPLES],
    /// Packets of the datagram each sample ends with.
    sample_k: [u16; SPACING_SAMPLES],
    sample_at: usize,
    last_arrival: Option<u64>,
    /// Mean error of the time estimate (packets) on datagrams placed by content.
    jitter: f64,
    /// Path differential (ns): arrival of copies minus the first arrival (EWMA).
    diff: f64,
    diff_n: u32,
    /// Last time this leg agreed with another (a copy either way).
    agree_ns: u64,
    /// Last time it delivered a non-null packet.
    data_ns: u64,
    pushed: bool,
    unaligned_since: Option<u64>,
    diverged: bool,
    /// Conflicting datagrams in a row.
    conflicts: u32,
    buf: VecDeque<Dgram>,
    seq: u64,
    /// Datagrams not placed by content yet (see `place`), and the position after the last
    /// one as time estimates it.
    held: Vec<Held>,
    fwd: u64,
    /// Size of its recent datagrams (TS packets) and how many in a row had it.
    size: usize,
    size_run: usize,
    /// The one size its datagrams have (0: none): set after [`FIXED_SIZE_RUN`] of one size
    /// in a row, kept through a single datagram of another size (a stream's last one),
    /// cleared by a second one (`odd`: other sizes since it was set).
    fixed: usize,
    odd: usize,
    /// Size changes seen (up to 2): at 2 the leg has mixed sizes, [`VARIED_SIZE_RUN`] applies.
    changes: u8,
    /// Per PID: `position << 4 | CC` of the highest-placed packet with payload this leg
    /// delivered (`NONE`: none since anchoring). See [`ContentMerger::cc_consistent`].
    last_cc: Box<[u64]>,
    /// The ruler's samples from this leg's own packets (see `learn_ruler`): the last
    /// continuity counter per PID it delivered, its last PCR, the packets since, and whether
    /// a counter skipped since (a loss).
    seen_cc: Box<[u8]>,
    pcr_seen: Option<u64>,
    since_pcr: u64,
    cc_broken: bool,
    /// Its last PCR packet placed, (position, PCR): the ruler's reference for its next ones.
    pcr_ref: Option<(u64, u64)>,
}

/// The content merger. Driving it: for every datagram call [`push`](Self::push), then drain
/// [`poll_output`](Self::poll_output) until `None`; arm a timer at
/// [`poll_timeout`](Self::poll_timeout) and call [`handle_timeout`](Self::handle_timeout) when
/// it fires, then drain `poll_output` again; drain [`poll_event`](Self::poll_event) whenever
/// convenient. `poll_timeout` changes after every `push` and `handle_timeout`.
pub struct ContentMerger {
    window_ns: u64,
    leg_timeout: Duration,
    cap: usize,
    mask: u64,
    slots: Vec<Slot>,
    /// Lowest position kept (history), next position to output, one past the highest used.
    lo: u64,
    out: u64,
    hi: u64,
    base: Option<Instant>,
    legs: Vec<Leg>,
    ready: VecDeque<Bytes>,
    events: VecDeque<ContentEvent>,
    out_cc: Box<[u8]>,
    aligned: bool,
    /// Fingerprint → highest position carrying it (lower ones chained by `same_prev`).
    index: HashMap<u64, u64, BuildHasherDefault<IdHasher>>,
    scratch: Vec<Pk>,
    cands: Vec<(u64, u32, bool)>,
    /// Packet spacing samples (ns) between consecutive datagrams of a leg whose positions
    /// content proved (exact across losses), and their median.
    pin_samples: [f64; PIN_SAMPLES],
    pin_at: usize,
    pin_spacing: f64,
    /// Exact positions of PCR packets on a constant-rate mux (see [`ruler`]).
    ruler: Ruler,
    /// Held datagrams being flushed: `place` places, never holds.
    no_hold: bool,
    /// Inside `flush_held`.
    flushing: bool,
    /// Inputs recorded for replay (see [`capture`]).
    capture: Option<Capture>,
    /// Slots filled now are soft (see [`Slot::soft`]).
    soft_put: bool,
    /// While placing held datagrams of this leg: other legs' soft nulls give way to data.
    soft_ok: Option<usize>,
    stats: ContentStats,
}

/// Fingerprints are hashes already.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

impl ContentMerger {
    /// Allocate the slot ring, the index, the queues and the scratch buffers.
    pub fn new(cfg: ContentConfig) -> ContentMerger {
        let cap = cfg.capacity.clamp(MIN_CAPACITY, MAX_CAPACITY);
        let n = (2 * cap).next_power_of_two();
        let legs = cfg.legs.clamp(1, 32);
        ContentMerger {
            window_ns: cfg.window.as_nanos().min(u128::from(u64::MAX / 4)) as u64,
            leg_timeout: cfg.leg_timeout,
            cap,
            mask: n as u64 - 1,
            slots: (0..n)
                .map(|_| Slot {
                    pos: NONE,
                    kind: Kind::Empty,
                    fp: 0,
                    pkt: None,
                    pid: 0,
                    same_prev: NONE,
                    created_ns: 0,
                    legs: 0,
                    creator: 0,
                    soft: false,
                })
                .collect(),
            lo: BASE_POS,
            out: BASE_POS,
            hi: BASE_POS,
            base: None,
            legs: (0..legs)
                .map(|_| Leg {
                    anchored: false,
                    was_anchored: false,
                    next: BASE_POS,
                    last_t: None,
                    line: None,
                    slope: Slope::default(),
                    spacing: 0.0,
                    samples: [0.0; SPACING_SAMPLES],
                    sample_k: [0; SPACING_SAMPLES],
                    sample_at: 0,
                    last_arrival: None,
                    jitter: 0.0,
                    diff: 0.0,
                    diff_n: 0,
                    agree_ns: 0,
                    data_ns: 0,
                    pushed: false,
                    unaligned_since: None,
                    diverged: false,
                    conflicts: 0,
                    buf: VecDeque::with_capacity(BUFFERED_DATAGRAMS),
                    seq: 0,
                    held: Vec::new(),
                    fwd: BASE_POS,
                    size: 0,
                    size_run: 0,
                    fixed: 0,
                    odd: 0,
                    changes: 0,
                    last_cc: vec![NONE; 8192].into_boxed_slice(),
                    seen_cc: vec![NO_CC; 8192].into_boxed_slice(),
                    pcr_seen: None,
                    since_pcr: 0,
                    cc_broken: false,
                    pcr_ref: None,
                })
                .collect(),
            ready: VecDeque::with_capacity(cap),
            events: VecDeque::with_capacity(EVENT_QUEUE),
            out_cc: vec![NO_CC; 8192].into_boxed_slice(),
            aligned: true,
            index: HashMap::with_capacity_and_hasher(n, BuildHasherDefault::default()),
            scratch: Vec::with_capacity(64),
            cands: Vec::with_capacity(64),
            pin_samples: [0.0; PIN_SAMPLES],
            pin_at: 0,
            pin_spacing: 0.0,
            ruler: Ruler::default(),
            no_hold: false,
            flushing: false,
            capture: None,
            soft_put: false,
            soft_ok: None,
            stats: ContentStats {
                legs: vec![ContentLegStats::default(); legs],
                ..Default::default()
            },
        }
    }

    /// Offer one datagram of `leg`: N×188 bytes of TS (validated by the glue; a trailing
    /// partial packet or one without the sync byte is ignored). Keeps zero-copy slices of
    /// `payload`. Also processes whatever is due at `now`. Afterwards drain `poll_output` and
    /// `poll_event`, and re-read `poll_timeout`.
    pub fn push(&mut self, now: Instant, leg: LegId, payload: &Bytes) {
        let li = leg.0;
        if let Some(c) = &mut self.capture {
            c.push(now, li, payload);
        }
        if li >= self.legs.len() {
            return;
        }
        let base = *self.base.get_or_insert(now);
        let now_ns = now.saturating_duration_since(base).as_nanos() as u64;
        let st = &mut self.stats.legs[li];
        st.last_seen = Some(now);
        if st.lost {
            st.lost = false;
            self.emit(ContentEvent::LegBack { leg });
        }
        let mut run = std::mem::take(&mut self.scratch);
        run.clear();
        let mut off = 0;
        while off + PACKET_LEN <= payload.len() {
            let b = &payload[off..off + PACKET_LEN];
            if let Some(t) = TsPacket::try_new(b) {
                let null = t.pid() == NULL_PID;
                run.push(Pk {
                    fp: if null { 0 } else { fingerprint(b) },
                    bytes: payload.slice(off..off + PACKET_LEN),
                    pid: t.pid().0,
                    cc: if t.has_payload() { t.cc().0 } else { NO_CC },
                    null,
                    pcr: t.pcr().filter(|_| !t.discontinuity()).unwrap_or(NONE),
                });
            }
            off += PACKET_LEN;
        }
        self.stats.legs[li].packets += run.len() as u64;
        self.learn_ruler(li, &run);
        let count = run.len();
        {
            // Packet spacing of this leg: time between datagrams over the packets of the later.
            // Median (lower) of the recent samples: a sample spanning a lost datagram is too
            // large, one of a burst too small.
            let l = &mut self.legs[li];
            l.pushed = true;
            if count == l.size {
                l.size_run += 1;
            } else {
                if l.size != 0 {
                    l.changes = (l.changes + 1).min(2);
                }
                l.size = count;
                l.size_run = 1;
            }
            let run = if l.changes >= 2 {
                VARIED_SIZE_RUN
            } else {
                FIXED_SIZE_RUN
            };
            if l.size_run >= run {
                l.fixed = l.size;
                l.odd = 0;
            } else if count != l.fixed {
                l.odd += 1;
                if l.odd >= 2 {
                    l.fixed = 0;
                }
            }
            if let Some(last) = l.last_arrival
                && now_ns > last
                && count > 0
            {
                let s = (now_ns - last) as f64 / count as f64;
                l.samples[l.sample_at % SPACING_SAMPLES] = s;
                l.sample_k[l.sample_at % SPACING_SAMPLES] = count.min(usize::from(u16::MAX)) as u16;
                l.sample_at += 1;
                let k = l.sample_at.min(SPACING_SAMPLES);
                l.spacing = densest(&l.samples[..k], &l.sample_k[..k]);
            }
            if count > 0 {
                l.last_arrival = Some(now_ns);
            }
        }
        if !run.is_empty() {
            if run.iter().any(|p| !p.null) {
                self.legs[li].data_ns = now_ns;
            }
            if self.legs[li].anchored {
                if !self.place(now_ns, li, now_ns, &run) {
                    self.unanchored(now_ns, li, run.clone());
                }
                self.scratch = run;
            } else {
                self.unanchored(now_ns, li, run);
            }
        } else {
            self.scratch = run;
        }
        self.check_agreement(now_ns);
        self.check_divergence(now_ns);
        self.advance(now_ns);
    }

    /// Record every input from now on (see [`capture`]): a replay of the capture reproduces
    /// this merger's output.
    pub fn capture(&mut self, c: Capture) {
        self.capture = Some(c);
    }

    /// Next merged TS packet (188 bytes), in stream order, or `None`. Drain after every `push`
    /// and `handle_timeout`.
    pub fn poll_output(&mut self, _now: Instant) -> Option<Bytes> {
        self.ready.pop_front()
    }

    /// When `handle_timeout` must be called next: a waiting position's window, a divergence
    /// deadline or a leg timeout, whichever is first.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let base = self.base?;
        let mut t: Option<u64> = None;
        let mut min = |v: u64| t = Some(t.map_or(v, |t: u64| t.min(v)));
        if let Some(c) = self.first_filled_created() {
            min(c + self.window_ns);
        }
        for l in self.legs.iter().filter(|l| l.anchored) {
            if let Some(h) = l.held.first() {
                min(h.t + self.hold_ns());
            }
        }
        for (i, l) in self.legs.iter().enumerate() {
            if let Some(s) = l.unaligned_since
                && !l.diverged
                && !l.anchored
                && !self.stats.legs[i].lost
                && self.other_live_anchored(i)
            {
                min(s + self.window_ns);
            }
        }
        let mut at = t.map(|t| base + Duration::from_nanos(t));
        for st in self.stats.legs.iter().filter(|s| !s.lost) {
            if let Some(d) = st.last_seen.unwrap_or(base).checked_add(self.leg_timeout) {
                at = Some(at.map_or(d, |a| a.min(d)));
            }
        }
        at
    }

    /// Process everything due at `now`: lost legs, divergence, positions whose window passed.
    /// Harmless to call early or often.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(c) = &mut self.capture {
            c.timeout(now);
        }
        let Some(base) = self.base else {
            return;
        };
        let now_ns = now.saturating_duration_since(base).as_nanos() as u64;
        for i in 0..self.legs.len() {
            let st = &mut self.stats.legs[i];
            if st.lost {
                continue;
            }
            let due = st.last_seen.unwrap_or(base).checked_add(self.leg_timeout);
            if due.is_some_and(|d| now >= d) {
                st.lost = true;
                self.emit(ContentEvent::LegLost { leg: LegId(i) });
                // It re-anchors when it comes back.
                self.unanchor(i);
                self.legs[i].unaligned_since = None;
                self.legs[i].diverged = false;
                self.update_aligned();
            }
        }
        self.check_divergence(now_ns);
        self.advance(now_ns);
    }

    pub fn poll_event(&mut self) -> Option<ContentEvent> {
        self.events.pop_front()
    }

    /// Whether the legs carry the same stream (no live leg is diverged).
    pub fn aligned(&self) -> bool {
        self.aligned
    }

    pub fn stats(&self) -> &ContentStats {
        &self.stats
    }

    // ---- timeline primitives ----

    #[inline]
    fn slot(&self, p: u64) -> Option<&Slot> {
        if p < self.lo || p >= self.hi {
            return None;
        }
        let s = &self.slots[(p & self.mask) as usize];
        (s.pos == p && s.kind != Kind::Empty).then_some(s)
    }

    /// Whether packet `pk` may sit at `p`: `Some(true)` same packet there, `Some(false)` empty,
    /// `None` a different packet.
    #[inline]
    fn fits(&self, p: u64, pk: &Pk) -> Option<bool> {
        match self.slot(p) {
            None => Some(false),
            Some(s) => match (s.kind, pk.null) {
                (Kind::Null, true) => Some(true),
                (Kind::Data, false) if s.fp == pk.fp => Some(true),
                // A soft null of another single leg gives way (see `resolve_held`).
                (Kind::Null, false)
                    if self.soft_ok.is_some_and(|li| {
                        s.soft && s.creator as usize != li && s.legs == 1 << s.creator
                    }) =>
                {
                    Some(false)
                }
                _ => None,
            },
        }
    }

    /// Whether placing `pk` at `q` agrees with the continuity counters of leg `li`: for a
    /// packet of PID P with counter `c`, and the leg's last packet of P (counter `c0` at
    /// `p0`), the original has `d + 16m` packets of P between them (`d = c − c0 − 1 mod 16`).
    /// The timeline between `p0` and the packet holds `n` known packets of P and `u` empty
    /// positions: some `d + 16m` must lie in `n..=n + u`. This refutes a copy of repeated
    /// content (a still picture repeats only when the counter wraps) found far from where the
    /// leg's own packets say it can be. Costs a scan of the interval: only used when a far
    /// candidate is about to be taken.
    fn cc_consistent(&self, li: usize, q: u64, pk: &[Pk]) -> bool {
        let table = &self.legs[li].last_cc;
        for (i, p) in pk.iter().enumerate().filter(|(_, p)| !p.null).take(LOOKUPS) {
            if p.cc == NO_CC || TsPacket::try_new(&p.bytes).is_none_or(|t| t.discontinuity()) {
                continue; // no payload, or a discontinuity: the counter says nothing
            }
            if pk[..i].iter().any(|x| x.pid == p.pid && x.cc != NO_CC) {
                continue; // checked through the first packet of its PID in the datagram
            }
            let at = q + i as u64;
            // Held datagrams come before the candidate (FIFO) and will be placed in front
            // of it, with positions inserted if the room is short: if the counter continues
            // from the last held packet of that PID and no other packet of it lies between
            // the cursor and the candidate, the candidate is that packet's successor.
            if let Some(ch) = self.legs[li]
                .held
                .iter()
                .rev()
                .find_map(|h| h.pk.iter().rev().find(|x| x.pid == p.pid && x.cc != NO_CC))
                .map(|x| x.cc)
                && p.cc.wrapping_sub(ch).wrapping_sub(1) & 15 == 0
            {
                let held = &self.legs[li].held;
                let next = self.legs[li].next;
                let other = (next..at).any(|x| {
                    self.slot(x).is_some_and(|s| {
                        s.kind == Kind::Data
                            && s.pid == p.pid
                            && !held.iter().any(|h| h.pk.iter().any(|y| y.fp == s.fp))
                    })
                });
                if !other {
                    continue;
                }
            }
            let e = table[usize::from(p.pid)];
            if e == NONE || e >> 4 >= at {
                continue;
            }
            let (p0, c0) = (e >> 4, (e & 15) as u8);
            let d = u64::from(p.cc.wrapping_sub(c0).wrapping_sub(1) & 15);
            let (mut n, mut u) = (0u64, 0u64);
            for x in p0 + 1..at {
                match self.slot(x) {
                    None => u += 1,
                    Some(s) if s.kind == Kind::Data => {
                        if s.pid == p.pid {
                            n += 1;
                        }
                    }
                    Some(_) => {}
                }
            }
            // The least count >= n that the counter allows.
            let least = n + (d + 16 - n % 16) % 16;
            if least > n + u {
                return false;
            }
        }
        true
    }

    /// Whether leg `li` may take a copy of `pk` at `q`, away from its time estimate `q_est`,
    /// once enough of its packets are seen once in the timeline: none is in a datagram the leg
    /// holds, the leg's counters allow it, and, beyond the estimate, it skips no other data.
    fn far_copy_allowed(&self, li: usize, q: u64, q_est: u64, pk: &[Pk]) -> bool {
        !self.repeats_held(li, pk)
            && self.cc_consistent(li, q, pk)
            && (q < q_est || self.skips_nothing(li, q_est, q))
    }

    /// Whether a non-null packet of `pk` is also in a datagram leg `li` holds: a leg delivers
    /// each packet once, so the two are different instances (a still picture's repeat), and
    /// the one held, which comes first, is the better claim to a copy seen once in the
    /// timeline.
    fn repeats_held(&self, li: usize, pk: &[Pk]) -> bool {
        let held = &self.legs[li].held;
        pk.iter().filter(|p| !p.null).any(|p| {
            held.iter()
                .any(|h| h.pk.iter().any(|x| !x.null && x.fp == p.fp))
        })
    }

    /// Whether the positions `from..to` that a far copy would make leg `li` skip hold no
    /// other leg's data, except copies of the leg's held packets: room another leg's time
    /// estimate left (a stall), not packets this leg lost without its arrival times saying
    /// so.
    fn skips_nothing(&self, li: usize, from: u64, to: u64) -> bool {
        let held = &self.legs[li].held;
        (from..to).all(|x| {
            self.slot(x).is_none_or(|s| {
                s.kind == Kind::Null
                    || held
                        .iter()
                        .any(|h| h.pk.iter().any(|p| !p.null && p.fp == s.fp))
            })
        })
    }

    /// Non-null packets of `pk` equal to the timeline's at `q` whose fingerprint occurs
    /// nowhere else in the timeline (not repeated content).
    fn unique_at(&self, q: u64, pk: &[Pk]) -> usize {
        pk.iter()
            .enumerate()
            .filter(|(i, p)| {
                !p.null
                    && self.fits(q + *i as u64, p) == Some(true)
                    && self.index.get(&p.fp).is_some_and(|&h| {
                        h == q + *i as u64
                            && self
                                .slot(self.slots[(h & self.mask) as usize].same_prev)
                                .is_none_or(|s| s.kind != Kind::Data || s.fp != p.fp)
                    })
            })
            .count()
    }

    /// Packets of `pk` (nulls too) equal to the timeline's at `q`, or `None` if one
    /// conflicts.
    fn validate_overlap(&self, q: u64, pk: &[Pk]) -> Option<u32> {
        let mut m = 0;
        for (i, p) in pk.iter().enumerate() {
            if self.fits(q + i as u64, p)? {
                m += 1;
            }
        }
        Some(m)
    }

    /// Non-null packets of `pk` matching the timeline at `q`, or `None` if one conflicts.
    fn validate(&self, q: u64, pk: &[Pk]) -> Option<u32> {
        let mut m = 0;
        for (i, p) in pk.iter().enumerate() {
            if self.fits(q + i as u64, p)? && !p.null {
                m += 1;
            }
        }
        Some(m)
    }

    fn other_live_anchored(&self, li: usize) -> bool {
        (0..self.legs.len()).any(|j| j != li && self.legs[j].anchored && !self.stats.legs[j].lost)
    }

    /// Creation time of the first filled slot at or after `out`.
    fn first_filled_created(&self) -> Option<u64> {
        (self.out..self.hi).find_map(|p| self.slot(p).map(|s| s.created_ns))
    }

    /// Make sure `p` fits in the ring: drop history (and force out unreleased positions,
    /// counted) below `p − ring size`.
    fn make_room(&mut self, p: u64) {
        let n = self.mask + 1;
        while p >= self.lo + n {
            if self.lo >= self.out {
                self.stats.overflow += 1;
                self.release(self.out);
                self.out += 1;
            }
            self.evict(self.lo);
            self.lo += 1;
        }
    }

    fn evict(&mut self, p: u64) {
        let i = (p & self.mask) as usize;
        if self.slots[i].pos != p {
            return;
        }
        if self.slots[i].kind == Kind::Data {
            let fp = self.slots[i].fp;
            // Chains are sorted by position: the lowest one goes first.
            if self.index.get(&fp) == Some(&p) {
                self.index.remove(&fp);
            }
        }
        let s = &mut self.slots[i];
        s.kind = Kind::Empty;
        s.pkt = None;
        s.pos = NONE;
    }

    /// Put `pk` at the empty position `p` (>= `lo`, made room for).
    fn fill(&mut self, p: u64, pk: &Pk, li: usize, t: u64) {
        let mut same_prev = NONE;
        if !pk.null {
            // Keep the chain sorted by position (descending): usually `p` is the highest.
            match self.index.get(&pk.fp).copied() {
                Some(h) if h > p => {
                    let mut x = h;
                    let mut steps = 0;
                    loop {
                        let nx = self.slots[(x & self.mask) as usize].same_prev;
                        let valid = nx != NONE
                            && self
                                .slot(nx)
                                .is_some_and(|s| s.kind == Kind::Data && s.fp == pk.fp);
                        if !valid || nx < p || steps > CHAIN_LOOK {
                            self.slots[(x & self.mask) as usize].same_prev = p;
                            same_prev = if valid && nx < p { nx } else { NONE };
                            break;
                        }
                        x = nx;
                        steps += 1;
                    }
                }
                h => {
                    same_prev = h.unwrap_or(NONE);
                    self.index.insert(pk.fp, p);
                }
            }
        }
        let s = &mut self.slots[(p & self.mask) as usize];
        s.pos = p;
        s.kind = if pk.null { Kind::Null } else { Kind::Data };
        s.fp = pk.fp;
        s.pkt = Some(pk.bytes.clone());
        s.pid = pk.pid;
        s.same_prev = same_prev;
        s.created_ns = t;
        s.legs = 1 << li;
        s.creator = li as u8;
        s.soft = self.soft_put;
        if p >= self.hi {
            self.hi = p + 1;
        }
    }

    /// Insert `m` empty positions at `c` (>= `out`): everything at or after `c` moves up.
    fn insert(&mut self, c: u64, m: u64) {
        if self.hi > c {
            self.make_room(self.hi + m - 1);
        }
        let mut p = self.hi;
        while p > c {
            p -= 1;
            let from = (p & self.mask) as usize;
            let to = ((p + m) & self.mask) as usize;
            if self.slots[from].pos != p {
                self.slots[to].pos = NONE;
                self.slots[to].kind = Kind::Empty;
                self.slots[to].pkt = None;
                continue;
            }
            let (kind, fp, sp) = {
                let s = &self.slots[from];
                (s.kind, s.fp, s.same_prev)
            };
            if kind == Kind::Data
                && let Some(h) = self.index.get_mut(&fp)
                && *h == p
            {
                *h = p + m;
            }
            let pkt = self.slots[from].pkt.take();
            let (created, legs, creator, soft, pid) = {
                let s = &self.slots[from];
                (s.created_ns, s.legs, s.creator, s.soft, s.pid)
            };
            self.slots[from].pos = NONE;
            self.slots[from].kind = Kind::Empty;
            let d = &mut self.slots[to];
            d.pos = p + m;
            d.kind = kind;
            d.fp = fp;
            d.pkt = pkt;
            d.same_prev = if sp != NONE && sp >= c { sp + m } else { sp };
            d.created_ns = created;
            d.legs = legs;
            d.creator = creator;
            d.soft = soft;
            d.pid = pid;
        }
        if self.hi > c {
            self.hi += m;
        }
        for l in &mut self.legs {
            for e in l
                .last_cc
                .iter_mut()
                .filter(|e| **e != NONE && **e >> 4 >= c)
            {
                *e += m << 4;
            }
            if l.next > c {
                l.next += m;
            }
            if let Some((_, rp)) = &mut l.line
                && *rp > c
            {
                *rp += m;
            }
            l.slope.shift(c, m);
            if let Some((p, _)) = &mut l.pcr_ref
                && *p >= c
            {
                *p += m;
            }
        }
    }

    /// Estimated packets sent between a leg's datagram that arrived at `from` and the
    /// datagram of `k` packets arriving at `t` (raw, may be negative).
    fn gap_est(&self, li: usize, from: u64, t: u64, k: usize) -> f64 {
        let s = self.spacing(li);
        if s <= 0.0 {
            // Unknown: the first leg waits for its spacing before it places anything, so this
            // is only a replay right after anchoring; content decides there.
            return 0.0;
        }
        t.saturating_sub(from) as f64 / s - self.timed_len(li, k) as f64
    }

    /// Packets a datagram of `k` counts for in a time estimate: a short datagram on a leg of
    /// fixed-size datagrams (a stream's last one) as a full one, since a sender paced by
    /// datagram may send it a full datagram's time after the previous one (a loss of its
    /// missing packets is then not seen by time; content finds it).
    fn timed_len(&self, li: usize, k: usize) -> usize {
        k.max(self.legs[li].fixed)
    }

    /// Gap rounded, with the leg's dead band (its measured estimation error).
    /// A leg that cuts the stream into datagrams of one size loses whole datagrams: its gaps
    /// are multiples of that size (so a jitter of up to half a datagram is harmless).
    fn gap_round(&self, li: usize, g: f64) -> u64 {
        let l = &self.legs[li];
        if l.fixed > 1 {
            // The line errs late: a datagram counts as lost from 0.6 of its time on.
            let k = l.fixed as f64;
            return ((g / k + 0.4).floor().max(0.0) * k) as u64;
        }
        // The arrival line is a lower envelope: the estimate errs late, never early.
        if g <= 0.75 {
            0
        } else {
            (g - 0.25).round() as u64
        }
    }

    /// How long a leg may hold datagrams (a quarter window, at most 50 ms).
    fn hold_ns(&self) -> u64 {
        (self.window_ns / 4).min(50_000_000)
    }

    /// How far (packets) content may place a datagram from its time estimate.
    fn tolerance(&self, li: usize) -> u64 {
        2 + (4.0 * self.legs[li].jitter) as u64
    }

    /// The stream's packet spacing: from datagrams placed by content when there are enough,
    /// else the leg's own inter-datagram median (a lost datagram inflates those).
    /// 0 while unknown: no content-placed samples yet and no leg with [`SPACING_WARM`] own
    /// samples.
    fn spacing(&self, li: usize) -> f64 {
        if self.legs[li].slope.s > 0.0 {
            return self.legs[li].slope.s;
        }
        // Losses only inflate a leg's samples: the smallest warm median is the best.
        self.legs
            .iter()
            .filter(|l| l.sample_at >= SPACING_WARM && l.spacing > 0.0)
            .map(|l| l.spacing)
            .min_by(f64::total_cmp)
            .unwrap_or(0.0)
    }

    /// Valid content candidates for `pk` at positions >= `min` (and, if `fresh`, only slots
    /// created within the window): (position, matches, unique) into `self.cands`.
    fn candidates(&mut self, now_ns: u64, pk: &[Pk], min: u64, fresh: bool) {
        let mut cands = std::mem::take(&mut self.cands);
        cands.clear();
        for (i, p) in pk.iter().enumerate().filter(|(_, p)| !p.null).take(LOOKUPS) {
            let Some(&h) = self.index.get(&p.fp) else {
                continue;
            };
            let mut x = h;
            let mut seen = 0;
            let first = cands.len();
            while x != NONE && seen < CHAIN_LOOK {
                let Some(s) = self.slot(x) else { break };
                if s.kind != Kind::Data || s.fp != p.fp {
                    break;
                }
                seen += 1;
                let ok = !fresh || s.created_ns + self.window_ns >= now_ns;
                let nx = s.same_prev;
                if x < min + i as u64 {
                    break;
                }
                let q = x - i as u64;
                if ok
                    && !cands[..first].iter().any(|c| c.0 == q)
                    && let Some(m) = self.validate(q, pk)
                {
                    cands.push((q, m, false));
                }
                x = nx;
            }
            // A fingerprint seen once in the timeline (from this position down).
            if seen == 1 && cands.len() == first + 1 && h == cands[first].0 + i as u64 {
                let mut all = 0;
                let mut y = h;
                while y != NONE && all < 2 {
                    match self.slot(y) {
                        Some(s) if s.kind == Kind::Data && s.fp == p.fp => {
                            all += 1;
                            y = s.same_prev;
                        }
                        _ => break,
                    }
                }
                cands[first].2 = all == 1;
            }
        }
        // Merge duplicates found through different packets.
        cands.sort_unstable_by_key(|c| c.0);
        cands.dedup_by(|a, b| {
            if a.0 == b.0 {
                b.2 |= a.2;
                true
            } else {
                false
            }
        });
        self.cands = cands;
    }

    // ---- placing ----

    /// The ruler learns the mux rate from a leg's own packets, as they arrive: the packets
    /// between two of its PCR packets, when no continuity counter skipped between them (no
    /// loss the counters can see; a lost null-only datagram is not seen, and its sample is
    /// an outlier the ruler's agreement test drops). Neither arrival times nor placement
    /// enter: the ruler locks however the packets were paced.
    fn learn_ruler(&mut self, li: usize, pk: &[Pk]) {
        for p in pk {
            let l = &mut self.legs[li];
            l.since_pcr += 1;
            if p.null {
                continue;
            }
            if p.cc != NO_CC {
                let last = std::mem::replace(&mut l.seen_cc[usize::from(p.pid)], p.cc);
                if last != NO_CC && p.cc.wrapping_sub(last).wrapping_sub(1) & 15 != 0 {
                    l.cc_broken = true;
                }
            }
            if p.pcr != NONE && self.ruler.follows(p.pid) {
                let l = &mut self.legs[li];
                if let Some(c0) = l.pcr_seen
                    && !l.cc_broken
                {
                    self.ruler.learn((0, c0), (l.since_pcr, p.pcr));
                }
                let l = &mut self.legs[li];
                l.pcr_seen = Some(p.pcr);
                l.since_pcr = 0;
                l.cc_broken = false;
            }
        }
    }

    /// Where the PCR ruler puts a datagram of leg `li`: from its first PCR packet, against the
    /// leg's last PCR packet placed.
    fn ruler_at(&mut self, li: usize, pk: &[Pk]) -> Option<u64> {
        let (i, p) = pk
            .iter()
            .enumerate()
            .find(|(_, p)| p.pcr != NONE && self.ruler.follows(p.pid))?;
        self.ruler
            .position(self.legs[li].pcr_ref?, p.pcr)?
            .checked_sub(i as u64)
    }

    /// Time estimate of the position of datagram `pk` arriving at `t` right after position
    /// `base` on leg `li`: (raw gap, rounded gap).
    ///
    /// Both the leg's arrival line and its previous datagram (arrived at `prev_t`, ending at
    /// `base`) estimate it; a stall delays a datagram and bunches the next ones, making the
    /// line estimate too late for all of them and the previous-datagram estimate for the
    /// first only, so the smaller one is taken.
    ///
    /// A short datagram on a fixed-size leg: its time reads as a full one's (see
    /// `timed_len`) or as its own, depending on how the sender paces; where the two
    /// disagree, the leg's continuity counters say whether it lost packets before it.
    fn forward_gap(
        &self,
        li: usize,
        base: u64,
        prev_t: Option<u64>,
        t: u64,
        pk: &[Pk],
    ) -> (f64, u64) {
        let k = pk.len();
        let prev = prev_t.map(|lt| self.gap_est(li, lt, t, k));
        let g_raw = match self.line_raw(li, base, t, k) {
            Some(line) => prev.map_or(line, |p| p.min(line)),
            None => prev.unwrap_or(0.0),
        };
        let mut gap = self.gap_round(li, g_raw);
        let fixed = self.legs[li].fixed;
        if k < fixed && base == self.legs[li].next {
            let own = self.gap_round(li, g_raw + (fixed - k) as f64);
            if own != gap && !self.cc_constraints(li, 0, Some(pk)).is_empty() {
                gap = gap.max(own);
            }
        }
        (g_raw, gap)
    }

    /// The arrival line's estimate of the gap before a datagram of `k` packets arriving at `t`
    /// after position `base`, unrounded (`None` while the line or the spacing is unknown).
    fn line_raw(&self, li: usize, base: u64, t: u64, k: usize) -> Option<f64> {
        let s = self.spacing(li);
        let (rt, rp) = self.legs[li].line.filter(|_| s > 0.0)?;
        Some(rp as f64 + (t as f64 - rt) / s - self.timed_len(li, k) as f64 - base as f64)
    }

    /// The arrival line's estimate alone of that gap, rounded (0 while the line is unknown).
    fn line_gap(&self, li: usize, base: u64, t: u64, k: usize) -> u64 {
        self.line_raw(li, base, t, k)
            .map_or(0, |g| self.gap_round(li, g))
    }

    /// Place a datagram of anchored leg `li` that arrived at `t`. Returns false if the leg
    /// was unanchored instead (jump, restart, repeated conflicts): the caller hands the
    /// datagram to the anchoring.
    ///
    /// A datagram that content places near its time estimate is placed, and the datagrams
    /// the leg held before it are placed backwards from it (each ends where the time between
    /// it and its successor says: datagrams bunched by a stall are adjacent). A leg at the
    /// front of the timeline places by time at once. Any other datagram (no content near its
    /// estimate: new packets, nulls, or a copy further away than the jitter explains) is held
    /// until a later one is placed by content, or until two held datagrams agree on a far
    /// copy, or for [`HELD_MAX`] datagrams / a quarter window (then placed by time).
    fn place(&mut self, now_ns: u64, li: usize, t: u64, pk: &[Pk]) -> bool {
        let k = pk.len();
        let next = self.legs[li].next;
        let base = if self.legs[li].held.is_empty() {
            next
        } else {
            self.legs[li].fwd.max(next)
        };
        let prev_t = match self.legs[li].held.last() {
            Some(h) => Some(h.t),
            None => self.legs[li].last_t,
        };
        let (g_raw, gap) = self.forward_gap(li, base, prev_t, t, pk);
        if gap >= JUMP_PACKETS && self.other_live_anchored(li) {
            self.unanchor(li);
            return false;
        }
        // A PCR packet on a constant-rate mux says exactly where the datagram goes: after
        // the leg's cursor and what it holds (FIFO), and within reach of its time estimate
        // (else the PCR jumped).
        let held_len: u64 = self.legs[li].held.iter().map(|h| h.pk.len() as u64).sum();
        let exact = self
            .ruler_at(li, pk)
            .filter(|&x| x >= next + held_len && x.abs_diff(base + gap) <= RULER_REACH);
        let q_est = exact.unwrap_or(base + gap);
        let has_data = pk.iter().any(|p| !p.null);
        // Content: the estimated position first, then the index.
        let mut near: Option<u64> = None;
        let mut far: Option<(u64, bool)> = None;
        if let Some(i) = pk.iter().position(|p| !p.null)
            && self.fits(q_est + i as u64, &pk[i]) == Some(true)
            && self.validate(q_est, pk).is_some()
        {
            near = Some(q_est);
        }
        if near.is_none() && has_data {
            self.candidates(now_ns, pk, next, false);
            let tol = self.tolerance(li);
            let mut best: Option<(u64, u32, bool)> = None;
            let mut n = 0;
            for &c in self.cands.iter().filter(|c| c.1 > 0) {
                n += 1;
                if best.is_none_or(|b| c.0.abs_diff(q_est) < b.0.abs_diff(q_est)) {
                    best = Some(c);
                }
            }
            if let Some((q, _, unique)) = best {
                if n > 1 {
                    self.stats.ambiguous += 1;
                }
                // Near the time estimate; or further, but with three packets seen nowhere else in
                // the timeline (a copy, not repeated content: another leg's positions moved).
                if q.abs_diff(q_est) <= tol
                    || (self.unique_at(q, pk) >= 3 && self.far_copy_allowed(li, q, q_est, pk))
                {
                    near = Some(q);
                } else {
                    far = Some((q, unique));
                }
            }
        }
        // Flushing what the leg held past its time: time had its chance, a copy further
        // away than the tolerance wins if one of its packets is seen once in the timeline (not
        // a still picture's repeat) and the leg's counters allow it.
        if self.flushing
            && !self.no_hold
            && near.is_none()
            && let Some((qf, _)) = far
            && self.unique_at(qf, pk) > 0
            && self.far_copy_allowed(li, qf, q_est, pk)
        {
            near = Some(qf);
            far = None;
        }
        if near.is_none()
            && far.is_none()
            && let Some(x) = exact
            && self.validate(x, pk).is_some()
        {
            self.stats.pcr_placed += 1;
            near = Some(x);
        }
        if let Some(q) = near {
            let q = self.resolve_held(now_ns, li, q, t, pk);
            // Measure the time estimate against content.
            let next = self.legs[li].next;
            let known = self.spacing(li) > 0.0;
            let err = (q as f64 - (base as f64 + g_raw.max(0.0))).abs();
            let l = &mut self.legs[li];
            if l.last_t.is_some() && known {
                l.jitter += (err.min(64.0) - l.jitter) / 16.0;
            }
            l.conflicts = 0;
            // The positions between this datagram and the leg's previous one are proven:
            // an exact spacing sample across whatever the leg lost.
            if let Some(lt) = l.last_t
                && q + k as u64 > next
                && q >= next
                && t > lt
            {
                let s = (t - lt) as f64 / (q + k as u64 - next) as f64;
                self.pin_samples[self.pin_at % PIN_SAMPLES] = s;
                self.pin_at += 1;
                let n = self.pin_at.min(PIN_SAMPLES);
                let mut v = self.pin_samples;
                let v = &mut v[..n];
                let (_, m, _) = v.select_nth_unstable_by(n / 2, f64::total_cmp);
                self.pin_spacing = *m;
            }
            self.put(now_ns, li, t, q, pk);
            return true;
        }
        // At the front: nothing to collide with. But where the PCR ruler works, a datagram
        // that seems to follow a loss waits for the leg's next PCR packet: a late arrival
        // and a loss read alike, the PCR tells them apart.
        // (A loss by either estimate: the previous datagram's time reads short when that
        // one came late.)
        if self.no_hold
            || far.is_none()
                && self.legs[li].held.is_empty()
                && q_est >= self.hi
                && (gap == 0 && self.line_gap(li, base, t, pk.len()) == 0
                    || !self.ruler.locked()
                    || self.legs[li].pcr_ref.is_none())
        {
            return self.place_by_time(now_ns, li, t, pk);
        }
        let l = &mut self.legs[li];
        let early = !l.held.is_empty() && g_raw < -0.5;
        l.held.push(Held {
            t,
            pk: pk.to_vec(),
            early,
        });
        l.fwd = q_est + k as u64;
        // Held datagrams agreeing on a far copy: content wins if the leg's time was late
        // (two datagrams, bunched after a stall). Otherwise a far copy is repeated content (a
        // still picture), and time wins (a copy with three unique packets was taken above).
        let early = self.legs[li].held.iter().any(|h| h.early);
        if let Some((qf, _)) = far
            && self.legs[li].held.len() >= 2
            && let Some((pos, _)) = self.chain_back(now_ns, li, qf, t, k, None, true)
            && early
        {
            let mut held = std::mem::take(&mut self.legs[li].held);
            let last = held.pop();
            for (h, p) in held.iter().zip(pos) {
                self.put(now_ns, li, h.t, p, &h.pk);
            }
            if let Some(h) = last {
                self.put(now_ns, li, h.t, qf, &h.pk);
            }
            return true;
        }
        if self.legs[li].held.len() >= HELD_MAX {
            return self.flush_held(now_ns, li);
        }
        true
    }

    /// Place a datagram where time puts it (no content near): on a compatible place within
    /// the jitter, else by inserting positions at the first conflict.
    fn place_by_time(&mut self, now_ns: u64, li: usize, t: u64, pk: &[Pk]) -> bool {
        let k = pk.len();
        let next = self.legs[li].next;
        let last_t = self.legs[li].last_t;
        let (_, gap) = self.forward_gap(li, next, last_t, t, pk);
        let q_est = next + gap;
        if gap > 0 {
            self.stats.time_placed += 1;
        }
        let q = match self.validate(q_est, pk) {
            Some(_) => {
                self.legs[li].conflicts = 0;
                q_est
            }
            None => {
                let slack = self.tolerance(li);
                let near = (q_est.saturating_sub(slack).max(next)..=q_est + slack)
                    .filter(|&c| self.validate(c, pk).is_some())
                    .min_by_key(|c| c.abs_diff(q_est));
                if let Some(c) = near {
                    self.stats.ambiguous += 1;
                    c
                } else {
                    self.stats.conflicts += 1;
                    let l = &mut self.legs[li];
                    l.conflicts += 1;
                    // Its content already output behind its cursor: the leg went back
                    // (restart); or it keeps contradicting the other legs.
                    if (l.conflicts >= CONFLICTS_MAX || self.behind(pk, next))
                        && self.other_live_anchored(li)
                    {
                        self.unanchor(li);
                        return false;
                    }
                    let c = (0..k as u64)
                        .map(|i| q_est + i)
                        .find(|&p| self.fits(p, &pk[(p - q_est) as usize]).is_none())
                        .unwrap_or(q_est);
                    if c >= self.out {
                        self.insert(c, q_est + k as u64 - c);
                    }
                    q_est
                }
            }
        };
        self.soft_put = gap > 0 && pk.iter().all(|p| p.null);
        self.put(now_ns, li, t, q, pk);
        self.soft_put = false;
        true
    }

    /// Whether a non-null packet of `pk` with a fingerprint seen once is in the timeline
    /// only before `next` (restart or jump back).
    fn behind(&self, pk: &[Pk], next: u64) -> bool {
        self.behind_count(pk, next) > 0
    }

    /// Non-null packets of `pk` (the first [`LOOKUPS`]) with a fingerprint seen once in the
    /// timeline, only before `next`.
    fn behind_count(&self, pk: &[Pk], next: u64) -> usize {
        pk.iter()
            .filter(|p| !p.null)
            .take(LOOKUPS)
            .filter(|p| {
                self.index.get(&p.fp).is_some_and(|&h| {
                    h < next
                        && self.slot(h).is_some_and(|s| {
                            s.same_prev == NONE
                                || self
                                    .slot(s.same_prev)
                                    .is_none_or(|o| o.kind != Kind::Data || o.fp != p.fp)
                        })
                })
            })
            .count()
    }

    /// Write the datagram at `q` (validated, or made room for).
    fn put(&mut self, now_ns: u64, li: usize, t: u64, q: u64, pk: &[Pk]) {
        let bit = 1u32 << li;
        let mut agreed = false;
        // The datagram's PCR packet: (position, PCR).
        let mut pcr = None;
        for (i, p) in pk.iter().enumerate() {
            let pos = q + i as u64;
            let fits = self.fits(pos, p);
            if p.pcr != NONE && pcr.is_none() && fits.is_some() && self.ruler.follows(p.pid) {
                pcr = Some((pos, p.pcr));
            }
            match fits {
                Some(true) => {
                    let window = self.window_ns;
                    let out = self.out;
                    let s = &mut self.slots[(pos & self.mask) as usize];
                    s.legs |= bit;
                    s.soft = false;
                    let creator = s.creator as usize;
                    let created = s.created_ns;
                    self.stats.duplicates += 1;
                    self.stats.legs[li].duplicates += 1;
                    if creator != li && !p.null {
                        if pos >= out || created + window >= now_ns {
                            agreed = true;
                            self.legs[creator].agree_ns = now_ns;
                        }
                        // Path differential: this copy's arrival after the first one.
                        let d = t.saturating_sub(created) as f64 + self.legs[creator].diff;
                        let l = &mut self.legs[li];
                        l.diff_n = (l.diff_n + 1).min(16);
                        l.diff += (d - l.diff) / f64::from(l.diff_n);
                    }
                }
                Some(false) if pos >= self.out => {
                    if let Some(s) = self.slot(pos) {
                        // A soft null giving way (`soft_ok`): that leg's copy was misplaced.
                        let c = s.creator as usize;
                        self.stats.legs[c].dropped += 1;
                    }
                    self.make_room(pos);
                    self.fill(pos, p, li, t);
                }
                _ => {
                    // Too late (its position was output) or contradicting the timeline.
                    self.stats.legs[li].dropped += 1;
                }
            }
        }
        for (i, p) in pk.iter().enumerate() {
            if !p.null && p.cc != NO_CC {
                let pos = q + i as u64;
                let e = &mut self.legs[li].last_cc[usize::from(p.pid)];
                if *e == NONE || *e >> 4 < pos {
                    *e = pos << 4 | u64::from(p.cc);
                }
            }
        }
        // The leg's ruler reference: its last PCR packet, wherever it went (by the ruler, by
        // content, or by time after a PCR jump). Per leg: legs on either side of a PCR jump
        // without a discontinuity flag (a looped file) do not move each other's.
        if let Some((pos, c)) = pcr {
            self.legs[li].pcr_ref = Some((pos, c));
        }
        let s = self.spacing(li);
        let l = &mut self.legs[li];
        if agreed {
            l.agree_ns = now_ns;
        }
        l.next = l.next.max(q + pk.len() as u64);
        l.last_t = Some(t);
        let (end, tt) = (q + pk.len() as u64, t as f64);
        l.line = match l.line {
            Some((rt, rp)) if s > 0.0 => {
                let pred = rt + (end as f64 - rp as f64) * s;
                if tt <= pred {
                    Some((tt, end))
                } else {
                    // Follow drift slowly; a stall (a late datagram) must not lift the line.
                    Some((rt + (tt - pred).min(s) / 16.0, rp))
                }
            }
            _ => Some((tt, end)),
        };
        l.slope.add(tt, end, s);
        self.stats.legs[li].path_differential = Duration::from_nanos(l.diff.max(0.0) as u64);
    }

    // ---- release ----

    fn advance(&mut self, now_ns: u64) {
        // Held datagrams whose time is up are placed by time.
        for i in 0..self.legs.len() {
            if self.legs[i].anchored
                && self.legs[i]
                    .held
                    .first()
                    .is_some_and(|h| h.t + self.hold_ns() <= now_ns)
            {
                self.flush_held(now_ns, i);
            }
        }
        // Positions every waited-for leg is past.
        let mut lim = self.hi;
        for i in 0..self.legs.len() {
            let l = &self.legs[i];
            // A leg not heard from yet is waited for (up to the window) until it is lost.
            if self.stats.legs[i].lost || l.diverged {
                continue;
            }
            lim = lim.min(if l.anchored { l.next } else { self.out });
        }
        while self.out < self.hi {
            if self.out < lim {
                self.release(self.out);
                self.out += 1;
                continue;
            }
            // The window of the first filled position.
            let Some(f) = (self.out..self.hi).find(|&p| self.slot(p).is_some()) else {
                break;
            };
            let created = self.slot(f).map_or(0, |s| s.created_ns);
            if created + self.window_ns > now_ns {
                break;
            }
            // Never release past what a leg holds.
            let mut flushed = false;
            for i in 0..self.legs.len() {
                if self.legs[i].anchored && !self.legs[i].held.is_empty() && self.legs[i].next <= f
                {
                    self.flush_held(now_ns, i);
                    flushed = true;
                }
            }
            if flushed {
                continue;
            }
            while self.out <= f {
                self.release(self.out);
                self.out += 1;
            }
        }
    }

    fn release(&mut self, p: u64) {
        let Some(s) = self.slot(p) else {
            return;
        };
        let (legs, creator, kind, pid) = (s.legs, s.creator as usize, s.kind, usize::from(s.pid));
        // Released: the bytes leave (history keeps the kind, fingerprint and PID).
        let Some(pkt) = self.slots[(p & self.mask) as usize].pkt.take() else {
            return;
        };
        if kind == Kind::Data
            && let Some(t) = TsPacket::try_new(&pkt)
            && t.has_payload()
        {
            let cc = t.cc().0;
            let last = self.out_cc[pid];
            if last != NO_CC && !t.discontinuity() {
                let d = cc.wrapping_sub(last) & 0x0f;
                if d > 1 {
                    self.stats.unrecovered += u64::from(d - 1);
                }
            }
            self.out_cc[pid] = cc;
        }
        if legs.count_ones() == 1
            && (0..self.legs.len())
                .any(|j| j != creator && self.legs[j].anchored && !self.stats.legs[j].lost)
        {
            self.stats.legs[creator].recovered += 1;
        }
        if self.ready.len() >= 4 * self.cap {
            self.ready.pop_front();
            self.stats.overflow += 1;
        }
        self.ready.push_back(pkt);
        self.stats.output += 1;
    }

    fn emit(&mut self, ev: ContentEvent) {
        if self.events.len() < EVENT_QUEUE {
            self.events.push_back(ev);
        } else {
            self.stats.events_dropped += 1;
        }
    }
}

#[cfg(test)]
mod tests;
