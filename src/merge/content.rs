//! Content hitless merge: merge two or more legs carrying the same MPEG-TS (ISO/IEC 13818-1)
//! over plain UDP, without RTP sequence numbers, by aligning the legs on the TS packets
//! themselves ("Content Hitless Merge" in DOMAIN.md; the RTP-numbered case is
//! [`seq2022_7`](super::seq2022_7)).
//!
//! Sans-IO: no socket, no clock. Every entry point takes `now`; the glue moves the bytes.
//!
//! # Model: merging FIFO subsequences by identity
//! Each leg delivers datagrams = runs of consecutive original TS packets, in original order
//! (FIFO), with losses; packetisation may differ per leg. Every non-null packet gets a 64-bit
//! [`fingerprint`]; within the window non-null packets are (nearly) unique, null packets
//! (PID 0x1FFF) are all alike. The merged stream is kept as a doubly linked **list of non-null
//! packets** (slab of `2 × capacity` nodes allocated in [`ContentMerger::new`], an order rank
//! per node for O(1) comparisons, a fingerprint → node hash index with per-fingerprint chains).
//! Null packets are not nodes: each link carries what is known of the nulls between its ends.
//!
//! Each node also has a send-time estimate: its arrival minus the creating leg's path
//! differential, refined inside the datagram by the leg's packet spacing. Legs' differentials
//! are learnt from copies (EWMA).
//!
//! Each anchored leg has a *cursor*: the last node it delivered or inserted. For every
//! non-null packet `X` of its datagram:
//! - `X` is in the list after the cursor (same fingerprint, send time within
//!   [`MATCH_TOLERANCE_NS`] or 4 × the leg's jitter; the nearest of repeated content): the
//!   cursor moves to it. If the previous non-null packet of the same datagram was the cursor
//!   and `X` is its list successor, the link is **certain** (exact null count recorded).
//! - `X` is new: if the previous non-null of the same datagram is the cursor, it goes right
//!   after it (certain); if the cursor is the last node, at the end. Otherwise its place is
//!   not proven: the leg **holds** it (with the new packets after it, up to `HELD_MAX`)
//!   until its next packet already in the list (`R`) bounds the interval. The held run and
//!   the interval's nodes (which this leg did not deliver) are then merged as two chains of
//!   blocks (a datagram's consecutive packets; nodes linked with certainty) by order
//!   evidence: certain adjacency to either bound, then per-PID continuity counters (counted
//!   from the PID's last CC at or before the cursor); only where neither decides by send-time
//!   estimates, counted [`ContentStats::ambiguous`]. Time is not ordering evidence otherwise
//!   (loopback jitter exceeds a packet spacing). Held packets another leg delivered meanwhile
//!   are copies that split the run. A held packet that would have to precede a released node
//!   is too late: dropped, counted.
//! - `X` matches a node at or before the cursor: a copy the leg cannot deliver again (FIFO):
//!   dropped, counted `unplaceable`.
//!
//! # Release
//! The first unreleased node is output (after its null run) when no live leg holds a run
//! whose interval may include it and (a) its link from the previous node is certain, or (b) every live, non-diverged leg is anchored with its cursor
//! at or past it (a FIFO leg past it cannot insert before it any more; a leg still looking for
//! its anchor is waited for), or (c) the window has passed since it was created. So the added
//! latency is about the path differential when some leg loses packets; a single leg adds none.
//! A node whose window passed while a leg holds a run that may precede it first makes that
//! leg place its run (bounded by the end of the list): release never overtakes a held run.
//!
//! # Null packets (the only approximation)
//! The null count between two released neighbours is exact when their link is certain (one
//! datagram held both). Otherwise it is the largest *lower bound* known: the nulls some leg
//! saw right after the first (datagram tail), right before the second (datagram head), or in
//! between across consecutive datagrams of one leg whose cursor stayed on the first. Nulls are
//! therefore never invented: a run split by a datagram boundary on every leg may come out
//! shorter than the original. Nulls right after a released node are output at once.
//!
//! # Anchoring, divergence, jumps
//! A leg that is not anchored (at start, after a divergence or a restart) buffers up to 64
//! datagrams and anchors on [`ANCHOR_RUN`] consecutive non-null packets matching the list in
//! order (the first with a unique fingerprint, the rest within the match tolerance of the
//! differential it implies); its buffered datagrams are then replayed from the first match's
//! datagram. A leg alone (no other live anchored leg) anchors at once at the end of the list.
//! A leg not anchored for a window while another is live and anchored is
//! [`ContentEvent::Diverged`] ([`ContentMerger::aligned`] false; its packets are never
//! inserted) until it anchors again ([`ContentEvent::Aligned`]). Two anchored legs that both
//! deliver but have not agreed (a copy either way) for a window: the one that agreed last
//! stays, the other is unanchored (and so diverged). A copy more than [`JUMP_PACKETS`] packet
//! slots ahead of the cursor is a jump ([`ContentEvent::Reanchored`]); as far behind, the leg
//! is unanchored and re-anchors. Re-anchoring after having been anchored is also reported.
//!
//! # Cost and memory
//! Per packet: one fingerprint, one hash lookup (a chain walk for repeated content, bounded),
//! O(1) list work; a new packet after a loss walks the nodes this leg lost (O(gap)). Memory:
//! the slab, the index, 64 buffered datagrams per unanchored leg, an output queue bounded by
//! `4 × capacity`, a 8192-entry CC table; nothing is allocated per packet in steady state
//! except the datagram scratch of unanchored legs.
//!
//! # Status
//! The proptest `output_is_original_minus_packets_lost_everywhere` (`#[ignore]`d) passes some
//! runs of 256 cases, not all: other runs find a misordering next to still-picture repeats
//! (`regression_seed_11690713759946156014`), a 3-leg misordering
//! (`regression_seed_16987729839618253349`) or a spurious divergence with three equally
//! delayed legs (`regression_seed_445343815965347826`); these unit tests are `#[ignore]`d, and
//! all three fail alike with the former time-ordered placement. Its passing saved cases are
//! unit tests too. Divergence, recovery, boundaries, real streams, jump, lost leader and single
//! leg pass. The loopback end-to-end test (`tests/e2e_content.rs`) still fails: both legs cut
//! the same 7-packet datagrams, and a datagram of null packets whose neighbouring datagrams
//! were lost one on each leg is seen by no leg next to a non-null packet, so its nulls are not
//! output (never invented, see "Null packets"): 7–14 packets short of the original per run (a
//! simulation of that set-up misses exactly such datagrams, and nothing else).

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::LegId;
use crate::ts::{NULL_PID, PACKET_LEN};

/// A match at least this many packet slots (in time) ahead of or behind a leg's cursor counts
/// as a jump (re-anchor).
pub const JUMP_PACKETS: u64 = 1024;
/// Consecutive non-null packets matching the list in order that anchor a leg.
pub const ANCHOR_RUN: u32 = 3;
/// A copy matches a node when their send-time estimates differ by at most this (or 4 × the
/// leg's measured jitter, if larger): repeated content (still pictures, silence) recurs
/// further apart than that.
pub const MATCH_TOLERANCE_NS: u64 = 1_000_000;
/// Datagrams an unanchored leg keeps for replay once it anchors.
const BUFFERED_DATAGRAMS: usize = 64;
/// Packet-spacing samples (one per datagram) a leg's spacing is the median of.
const SPACING_SAMPLES: usize = 15;
/// Nodes of one fingerprint looked at per lookup.
const CHAIN_LOOK: usize = 512;
/// New packets a leg holds while their place is not proven (then placed by the fallback).
const HELD_MAX: usize = 256;
/// Nodes walked back from a held run's lower bound for each PID's last continuity counter.
const CC_LOOK: usize = 256;
const NIL: u32 = u32::MAX;
/// No continuity counter (null packet, or no payload).
const NO_CC: u8 = 0xff;
const RANK_STEP: u64 = 1 << 24;
const RANK_LIMIT: u64 = 1 << 62;
const EVENT_QUEUE: usize = 1024;
const MIN_CAPACITY: usize = 16;
const MAX_CAPACITY: usize = 1 << 22;

/// Static parameters of a content merger.
#[derive(Clone, Debug)]
pub struct ContentConfig {
    /// Number of legs (1..=32).
    pub legs: usize,
    /// merge_window_ms: how long a position waits for the other legs, from its creation; also
    /// how long a leg may fail to fit before it is taken for diverged.
    pub window: Duration,
    /// Max TS packets buffered unreleased (window × max bitrate / 1504 bits), clamped to
    /// 16..=4M. The timeline slab holds twice this (released history for late copies).
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
    /// Delivered packets that could not be placed with certainty (repeated content next to a
    /// loss on the delivering leg) or contradicted the timeline.
    pub unplaceable: u64,
    /// Events dropped because the queue (1024) was full.
    pub events_dropped: u64,
    /// Held new packets ordered against other legs' packets by the fallback (send-time
    /// estimates): neither datagram adjacency nor continuity counters decided.
    pub ambiguous: u64,
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

/// One TS packet of a datagram.
#[derive(Clone)]
struct Pk {
    bytes: Bytes,
    fp: u64,
    pid: u16,
    cc: u8,
    /// Arrival of this packet's slot on its leg (ns): the datagram's arrival minus the packets
    /// after it times the leg's packet spacing.
    t: i64,
}

impl Pk {
    #[inline]
    fn is_null(&self) -> bool {
        self.pid == NULL_PID.0
    }
}

/// One non-null packet of the merged list.
struct Node {
    fp: u64,
    pkt: Option<Bytes>,
    prev: u32,
    next: u32,
    /// Older / newer node with the same fingerprint (index chain).
    same_prev: u32,
    same_next: u32,
    rank: u64,
    created_ns: u64,
    /// Send-time estimate (ns): arrival minus the creating leg's path differential.
    est: i64,
    pid: u16,
    cc: u8,
    /// Certainly follows `prev` directly (some leg delivered both in one datagram).
    cert: bool,
    /// Null packets between this node and `next`, exact when `next.cert`.
    exact: u32,
    /// Null packets seen right after / right before this node in some datagram (lower bounds).
    tail: u32,
    /// Lower bound on the null packets between this node and its current `next` (one leg
    /// delivered both with that many nulls in between, across datagrams).
    gap: u32,
    /// Null packets already output after this node (it was released last).
    emitted: u32,
    head: u32,
    released: bool,
    in_list: bool,
    /// Legs that delivered it (bit per leg).
    legs: u32,
    creator: u8,
}

struct Leg {
    anchored: bool,
    /// Was anchored once (a later anchoring is a re-anchor).
    was_anchored: bool,
    /// Last node this leg delivered or inserted (NIL: before the oldest node).
    cur: u32,
    /// Path differential (ns, relative to the node estimates), its jitter, packet spacing.
    diff: f64,
    jitter: f64,
    /// Samples in `diff` since anchoring (its averaging weight, up to 16).
    diff_n: u32,
    spacing: f64,
    last_arrival: Option<u64>,
    /// Recent packet-spacing samples (ring), how many were taken.
    samples: [f64; SPACING_SAMPLES],
    sample_at: usize,
    /// Null packets delivered since the cursor (across datagrams).
    carry: Option<u32>,
    /// Last time this leg agreed with another (a match either way).
    agree_ns: u64,
    last_push_ns: u64,
    unaligned_since: Option<u64>,
    diverged: bool,
    /// While not anchored: recent datagrams (sequence number, packets), replayed on anchoring.
    buf: VecDeque<(u64, Vec<Pk>)>,
    seq: u64,
    streak: u32,
    streak_last: u32,
    streak_first: (u64, u32),
    streak_diff: f64,
    /// New packets whose place is not proven yet (after `cur`, before the next known packet).
    held: Vec<Held>,
}

/// A new packet held by its leg until the leg's next known packet bounds its interval.
struct Held {
    pk: Pk,
    est: i64,
    /// Arrival (ns): the node's creation time once placed.
    at_ns: u64,
    /// Null packets right before / right after it in its datagram.
    head: u32,
    tail: u32,
    /// Directly follows the previous held packet (same datagram).
    joined: bool,
    /// Null packets since this leg's previous non-null packet (across datagrams), if known.
    gap: Option<u32>,
}

enum Found {
    Ahead(u32),
    Behind(u32),
    New,
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
    nodes: Vec<Node>,
    free: Vec<u32>,
    /// Oldest node kept (released history first), first unreleased node, last node.
    oldest: u32,
    out: u32,
    tail: u32,
    unreleased: usize,
    base: Option<Instant>,
    legs: Vec<Leg>,
    ready: VecDeque<Bytes>,
    events: VecDeque<ContentEvent>,
    out_cc: Box<[u8]>,
    null_pkt: Option<Bytes>,
    /// Null packets output before the first node.
    lead_emitted: u32,
    /// Some node was ever created (a later anchor is a re-anchor).
    started: bool,
    aligned: bool,
    /// Fingerprint → newest node carrying it (older ones chained by `same_prev`).
    index: HashMap<u64, u32, BuildHasherDefault<IdHasher>>,
    scratch: Vec<Pk>,
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
    /// Allocate the node slab, the index, the queues and the scratch buffers.
    pub fn new(cfg: ContentConfig) -> ContentMerger {
        let cap = cfg.capacity.clamp(MIN_CAPACITY, MAX_CAPACITY);
        let n = 2 * cap;
        let legs = cfg.legs.clamp(1, 32);
        ContentMerger {
            window_ns: cfg.window.as_nanos().min(u128::from(u64::MAX / 4)) as u64,
            leg_timeout: cfg.leg_timeout,
            cap,
            nodes: (0..n)
                .map(|_| Node {
                    fp: 0,
                    pkt: None,
                    prev: NIL,
                    next: NIL,
                    same_prev: NIL,
                    same_next: NIL,
                    rank: 0,
                    created_ns: 0,
                    est: 0,
                    pid: 0,
                    cc: NO_CC,
                    cert: false,
                    exact: 0,
                    tail: 0,
                    gap: 0,
                    emitted: 0,
                    head: 0,
                    released: true,
                    in_list: false,
                    legs: 0,
                    creator: 0,
                })
                .collect(),
            free: (0..n as u32).rev().collect(),
            oldest: NIL,
            out: NIL,
            tail: NIL,
            unreleased: 0,
            base: None,
            legs: (0..legs)
                .map(|_| Leg {
                    anchored: false,
                    was_anchored: false,
                    cur: NIL,
                    diff: 0.0,
                    jitter: 0.0,
                    diff_n: 0,
                    spacing: 0.0,
                    last_arrival: None,
                    samples: [0.0; SPACING_SAMPLES],
                    sample_at: 0,
                    carry: None,
                    agree_ns: 0,
                    last_push_ns: 0,
                    unaligned_since: None,
                    diverged: false,
                    buf: VecDeque::with_capacity(BUFFERED_DATAGRAMS),
                    seq: 0,
                    streak: 0,
                    streak_last: NIL,
                    streak_first: (0, NIL),
                    streak_diff: 0.0,
                    held: Vec::new(),
                })
                .collect(),
            ready: VecDeque::with_capacity(cap),
            events: VecDeque::with_capacity(EVENT_QUEUE),
            out_cc: vec![NO_CC; 8192].into_boxed_slice(),
            null_pkt: None,
            lead_emitted: 0,
            started: false,
            aligned: true,
            index: HashMap::with_capacity_and_hasher(2 * n, BuildHasherDefault::default()),
            scratch: Vec::with_capacity(64),
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
        let count = payload.len() / PACKET_LEN;
        // Packet spacing of this leg: time between datagrams over the packets of the later.
        {
            let l = &mut self.legs[li];
            if let Some(last) = l.last_arrival
                && now_ns > last
                && count > 0
            {
                // Median (lower) of the recent samples: a sample spanning a lost datagram is
                // too large, one of a burst too small; an EWMA seeded by either is off for long.
                let s = (now_ns - last) as f64 / count as f64;
                l.samples[l.sample_at % SPACING_SAMPLES] = s;
                l.sample_at += 1;
                let k = l.sample_at.min(SPACING_SAMPLES);
                let mut v = l.samples;
                let v = &mut v[..k];
                let (_, m, _) = v.select_nth_unstable_by((k - 1) / 2, f64::total_cmp);
                l.spacing = *m;
            }
            l.last_arrival = Some(now_ns);
            l.last_push_ns = now_ns;
        }
        let spacing = self.legs[li].spacing;
        let mut run = std::mem::take(&mut self.scratch);
        run.clear();
        let mut off = 0;
        let mut k = 0usize;
        while off + PACKET_LEN <= payload.len() {
            let b = &payload[off..off + PACKET_LEN];
            if b[0] == crate::ts::SYNC_BYTE {
                let pid = u16::from(b[1] & 0x1f) << 8 | u16::from(b[2]);
                let cc = if pid == NULL_PID.0 || b[3] & 0x10 == 0 {
                    NO_CC
                } else {
                    b[3] & 0x0f
                };
                let bytes = payload.slice(off..off + PACKET_LEN);
                if pid == NULL_PID.0 && self.null_pkt.is_none() {
                    self.null_pkt = Some(bytes.clone());
                }
                let back = (count - 1 - k) as f64 * spacing;
                run.push(Pk {
                    fp: if pid == NULL_PID.0 { 0 } else { fingerprint(b) },
                    bytes,
                    pid,
                    cc,
                    t: now_ns as i64 - back as i64,
                });
            }
            off += PACKET_LEN;
            k += 1;
        }
        self.stats.legs[li].packets += run.len() as u64;
        if !run.is_empty() {
            if self.legs[li].anchored {
                self.place(now_ns, li, &run);
                self.scratch = run;
            } else {
                self.unanchored(now_ns, li, run);
            }
        } else {
            self.scratch = run;
        }
        self.expire(now_ns);
        self.advance(now_ns);
        self.update_differentials();
    }

    /// Next merged TS packet (188 bytes), in stream order, or `None`. Drain after every `push`
    /// and `handle_timeout`.
    pub fn poll_output(&mut self, _now: Instant) -> Option<Bytes> {
        self.ready.pop_front()
    }

    /// When `handle_timeout` must be called next: a waiting node's window, a divergence
    /// deadline or a leg timeout, whichever is first.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let base = self.base?;
        let mut t: Option<u64> = None;
        let mut min = |v: u64| t = Some(t.map_or(v, |t: u64| t.min(v)));
        if self.out != NIL {
            min(self.nodes[self.out as usize].created_ns + self.window_ns);
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

    /// Process everything due at `now`: lost legs, divergence, nodes whose window passed.
    /// Harmless to call early or often.
    pub fn handle_timeout(&mut self, now: Instant) {
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
                // What it holds goes in by the fallback.
                if self.legs[i].anchored {
                    self.resolve(i, NIL, false);
                }
                // It re-anchors when it comes back.
                self.unanchor(i, now_ns);
                self.legs[i].unaligned_since = None;
                self.update_aligned();
            }
        }
        self.expire(now_ns);
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

    // ---- list primitives ----

    #[inline]
    fn next_of(&self, cur: u32) -> u32 {
        if cur == NIL {
            self.oldest
        } else {
            self.nodes[cur as usize].next
        }
    }

    #[inline]
    fn rank_of(&self, cur: u32) -> u64 {
        if cur == NIL {
            0
        } else {
            self.nodes[cur as usize].rank
        }
    }

    fn other_live_anchored(&self, li: usize) -> bool {
        (0..self.legs.len()).any(|j| j != li && self.legs[j].anchored && !self.stats.legs[j].lost)
    }

    fn tolerance(&self, li: usize) -> i64 {
        (MATCH_TOLERANCE_NS as f64).max(4.0 * self.legs[li].jitter) as i64
    }

    fn alloc(&mut self) -> u32 {
        if self.unreleased >= self.cap && self.out != NIL {
            // Forced out: the caller's capacity is too small for the window.
            self.stats.overflow += 1;
            self.release_one();
        }
        if self.free.is_empty() {
            self.evict_oldest();
        }
        self.free.pop().unwrap_or(NIL)
    }

    fn evict_oldest(&mut self) {
        let x = self.oldest;
        if x == NIL {
            return;
        }
        if !self.nodes[x as usize].released {
            self.stats.overflow += 1;
            self.release_one();
        }
        let nx = self.nodes[x as usize].next;
        self.oldest = nx;
        if nx == NIL {
            self.tail = NIL;
        } else {
            self.nodes[nx as usize].prev = NIL;
        }
        for l in 0..self.legs.len() {
            if self.legs[l].cur == x {
                // More than the whole history behind: it must re-anchor.
                let since = self.nodes[x as usize].created_ns;
                self.unanchor(l, since);
            }
        }
        self.unindex(x);
        let n = &mut self.nodes[x as usize];
        n.pkt = None;
        n.next = NIL;
        n.in_list = false;
        self.free.push(x);
    }

    fn unindex(&mut self, x: u32) {
        let (fp, sp, sn) = {
            let n = &self.nodes[x as usize];
            (n.fp, n.same_prev, n.same_next)
        };
        if sn != NIL {
            self.nodes[sn as usize].same_prev = sp;
        } else if sp != NIL {
            self.index.insert(fp, sp);
        } else {
            self.index.remove(&fp);
        }
        if sp != NIL {
            self.nodes[sp as usize].same_next = sn;
        }
    }

    /// Link a fresh node for `pk` after `after` (NIL: at the front). Returns its index.
    fn link_after(&mut self, now_ns: u64, after: u32, pk: &Pk, est: i64, li: usize) -> u32 {
        let x = self.alloc();
        // `alloc` may have evicted `after`.
        let after = if after != NIL && !self.nodes[after as usize].in_list {
            NIL
        } else {
            after
        };
        let next = self.next_of(after);
        let lo = self.rank_of(after);
        let hi = if next == NIL {
            lo + RANK_STEP
        } else {
            self.nodes[next as usize].rank
        };
        let same = self.index.insert(pk.fp, x).unwrap_or(NIL);
        if same != NIL {
            self.nodes[same as usize].same_next = x;
        }
        {
            let n = &mut self.nodes[x as usize];
            n.fp = pk.fp;
            n.pkt = Some(pk.bytes.clone());
            n.prev = after;
            n.next = next;
            n.same_prev = same;
            n.same_next = NIL;
            n.rank = lo + (hi - lo) / 2;
            n.created_ns = now_ns;
            n.est = est;
            n.pid = pk.pid;
            n.cc = pk.cc;
            n.cert = false;
            n.exact = 0;
            n.tail = 0;
            n.gap = 0;
            n.emitted = 0;
            n.head = 0;
            n.released = false;
            n.in_list = true;
            n.legs = 1 << li;
            n.creator = li as u8;
        }
        if after == NIL {
            self.oldest = x;
        } else {
            self.nodes[after as usize].next = x;
            self.nodes[after as usize].gap = 0;
        }
        if next == NIL {
            self.tail = x;
        } else {
            self.nodes[next as usize].prev = x;
            // Whatever was known about `after → next` no longer holds.
            self.nodes[next as usize].cert = false;
        }
        if next == self.out || self.out == NIL {
            self.out = x;
        }
        self.unreleased += 1;
        self.started = true;
        if hi - lo < 2 || lo + (hi - lo) / 2 > RANK_LIMIT {
            self.renumber();
        }
        x
    }

    fn renumber(&mut self) {
        let mut x = self.oldest;
        let mut r = RANK_STEP;
        while x != NIL {
            self.nodes[x as usize].rank = r;
            r += RANK_STEP;
            x = self.nodes[x as usize].next;
        }
    }

    /// The node carrying `fp` that a packet with send-time estimate `est` is a copy of: within
    /// the match tolerance, nearest in time, after `after` (`Ahead`) or not (`Behind`).
    fn find(&self, fp: u64, after: u32, est: i64, tol: i64) -> Found {
        let Some(&h) = self.index.get(&fp) else {
            return Found::New;
        };
        let after_rank = self.rank_of(after);
        let mut x = h;
        let (mut best, mut best_d) = (NIL, i64::MAX);
        let mut behind = NIL;
        let mut steps = 0;
        while x != NIL && steps < CHAIN_LOOK {
            let n = &self.nodes[x as usize];
            let d = (n.est - est).abs();
            if d <= tol {
                if n.rank > after_rank {
                    if d < best_d {
                        best = x;
                        best_d = d;
                    }
                } else if behind == NIL {
                    behind = x;
                }
            }
            x = n.same_prev;
            steps += 1;
        }
        if best != NIL {
            Found::Ahead(best)
        } else if behind != NIL {
            Found::Behind(behind)
        } else {
            Found::New
        }
    }

    // ---- placement ----

    /// Walk the datagram of an anchored leg: copies move the cursor, new packets are inserted
    /// after it (or after the nodes it is known to have lost).
    fn place(&mut self, now_ns: u64, li: usize, run: &[Pk]) {
        let tol = self.tolerance(li);
        let mut prev_nn = NIL;
        let mut nulls = 0u32;
        let mut first = true;
        // The previous non-null packet of this datagram was held.
        let mut prev_held = false;
        for p in run {
            if !self.legs[li].anchored {
                self.stats.legs[li].dropped += 1;
                continue;
            }
            if p.is_null() {
                nulls += 1;
                continue;
            }
            let diff = self.legs[li].diff;
            let est = p.t - diff as i64;
            let mut cur = self.legs[li].cur;
            let mut certain = prev_nn != NIL && prev_nn == cur;
            match self.find(p.fp, cur, est, tol) {
                Found::Ahead(m) => {
                    if !self.legs[li].held.is_empty() {
                        // The held run's interval is bounded: place it before `m`.
                        let last = self.resolve(li, m, prev_held);
                        cur = self.legs[li].cur;
                        certain = prev_held && last == Some(cur);
                        prev_held = false;
                    }
                    if certain {
                        if self.nodes[cur as usize].next == m {
                            self.nodes[m as usize].cert = true;
                            self.nodes[cur as usize].exact = nulls;
                        } else {
                            self.stats.unplaceable += 1;
                        }
                    } else {
                        let h = &mut self.nodes[m as usize].head;
                        *h = (*h).max(nulls);
                        // A jump: far ahead of the cursor.
                        if cur != NIL {
                            let gap = self.nodes[m as usize].est - self.nodes[cur as usize].est;
                            if gap as f64 > JUMP_PACKETS as f64 * self.legs[li].spacing.max(1.0) {
                                self.stats.reanchors += 1;
                                self.emit(ContentEvent::Reanchored { leg: LegId(li) });
                            }
                        }
                    }
                    self.copy(now_ns, li, m, p.t);
                    self.legs[li].cur = m;
                    prev_nn = m;
                }
                Found::Behind(m) => {
                    // Already passed: a copy this leg cannot deliver again (FIFO).
                    prev_held = false;
                    self.stats.legs[li].dropped += 1;
                    self.legs[li].carry = None;
                    first = false;
                    self.stats.unplaceable += 1;
                    if cur != NIL {
                        let gap = self.nodes[cur as usize].est - self.nodes[m as usize].est;
                        if gap as f64 > JUMP_PACKETS as f64 * self.legs[li].spacing.max(1.0) {
                            // Jumped back (restart): re-anchor from the replayed datagram on.
                            self.unanchor(li, now_ns);
                            self.legs[li].unaligned_since = Some(now_ns);
                            continue;
                        }
                    }
                    prev_nn = NIL;
                }
                Found::New => {
                    if self.legs[li].held.len() >= HELD_MAX {
                        self.resolve(li, NIL, false);
                        cur = self.legs[li].cur;
                        certain = false;
                        prev_held = false;
                    }
                    let holding = !self.legs[li].held.is_empty();
                    if holding || !certain && self.next_of(cur) != NIL {
                        // Not proven by its datagram neighbours: held until this leg's next
                        // known packet bounds the interval.
                        let gap = if first {
                            self.legs[li].carry.map(|c| c + nulls)
                        } else {
                            Some(nulls)
                        };
                        self.legs[li].held.push(Held {
                            pk: p.clone(),
                            est,
                            at_ns: now_ns,
                            head: nulls,
                            tail: 0,
                            joined: holding && prev_held,
                            gap,
                        });
                        prev_held = true;
                        self.legs[li].carry = None;
                        first = false;
                        prev_nn = NIL;
                        nulls = 0;
                        continue;
                    }
                    let at = cur;
                    let x = self.link_after(now_ns, at, p, est, li);
                    if certain && self.nodes[x as usize].prev == cur {
                        self.nodes[x as usize].cert = true;
                        self.nodes[cur as usize].exact = nulls;
                    } else {
                        self.nodes[x as usize].head = nulls;
                    }
                    self.legs[li].cur = x;
                    prev_nn = x;
                }
            }
            if first {
                // Nulls since the cursor, across this leg's earlier datagrams.
                if let Some(c) = self.legs[li].carry
                    && cur != NIL
                    && prev_nn != NIL
                    && self.nodes[cur as usize].next == prev_nn
                    && !self.nodes[prev_nn as usize].cert
                {
                    let g = &mut self.nodes[cur as usize].gap;
                    *g = (*g).max(c + nulls);
                }
                first = false;
            }
            nulls = 0;
        }
        if prev_held {
            if let Some(h) = self.legs[li].held.last_mut() {
                h.tail = nulls;
            }
            self.legs[li].carry = Some(nulls);
        } else if prev_nn != NIL && prev_nn == self.legs[li].cur {
            let t = &mut self.nodes[prev_nn as usize].tail;
            *t = (*t).max(nulls);
            let t = *t;
            self.legs[li].carry = Some(nulls);
            self.emit_after(prev_nn, t);
        } else if prev_nn == NIL && first {
            if let Some(c) = &mut self.legs[li].carry {
                *c += nulls;
            }
        } else {
            self.legs[li].carry = None;
        }
        // Alone (every other leg lost or diverged) at the end of the list: the nulls since the
        // cursor follow it directly.
        let cur = self.legs[li].cur;
        if let Some(c) = self.legs[li].carry
            && cur == self.tail
            && (0..self.legs.len())
                .all(|j| j == li || self.stats.legs[j].lost || self.legs[j].diverged)
        {
            if cur == NIL {
                if c > self.lead_emitted {
                    let extra = c - self.lead_emitted;
                    self.lead_emitted = c;
                    self.output_nulls(extra);
                }
            } else {
                self.emit_after(cur, c);
            }
        }
    }

    /// Place the run `li` holds in its interval: after the cursor, before `r` (the leg's next
    /// known packet; NIL: the end of the list, when forced out). The run and the interval's
    /// nodes are two chains of blocks (a datagram's consecutive packets; nodes linked with
    /// certainty); they are merged by the order evidence: certain adjacency to either bound
    /// (`adj`: the run's last packet directly precedes `r`), then per-PID continuity counters
    /// (counted from the PID's last counter at or before the cursor); only where neither
    /// decides, by send-time estimates (counted `ambiguous`). A held packet that would have
    /// to precede a released node is too late: dropped. Returns the last node placed.
    fn resolve(&mut self, li: usize, r: u32, adj: bool) -> Option<u32> {
        let mut held = std::mem::take(&mut self.legs[li].held);
        if held.is_empty() {
            self.legs[li].held = held;
            return None;
        }
        // Held packets another leg has delivered since are copies: they split the run.
        let tol = self.tolerance(li);
        let r_rank = if r == NIL { u64::MAX } else { self.rank_of(r) };
        let mut start = 0;
        let mut last = None;
        for k in 0..held.len() {
            let cur = self.legs[li].cur;
            let Found::Ahead(m) = self.find(held[k].pk.fp, cur, held[k].est, tol) else {
                continue;
            };
            if self.nodes[m as usize].rank >= r_rank {
                continue;
            }
            let joined = held[k].joined && k > start;
            let l = self.merge_run(li, &held[start..k], m, joined);
            let c = self.legs[li].cur;
            let h = &held[k];
            if held[k].joined
                && (k == start || l == Some(c))
                && c != NIL
                && self.nodes[c as usize].next == m
            {
                self.nodes[m as usize].cert = true;
                self.nodes[c as usize].exact = h.head;
            } else {
                let hd = &mut self.nodes[m as usize].head;
                *hd = (*hd).max(h.head);
                if let Some(g) = h.gap
                    && (k == start || l == Some(c))
                    && c != NIL
                    && self.nodes[c as usize].next == m
                {
                    let cg = &mut self.nodes[c as usize].gap;
                    *cg = (*cg).max(g);
                }
            }
            let tl = &mut self.nodes[m as usize].tail;
            *tl = (*tl).max(h.tail);
            let (at, t) = (h.at_ns, h.pk.t);
            self.copy(at, li, m, t);
            self.legs[li].cur = m;
            last = Some(m);
            start = k + 1;
        }
        let l = self.merge_run(li, &held[start..], r, adj);
        if l.is_some() {
            last = l;
        }
        held.clear();
        self.legs[li].held = held;
        last
    }

    /// [`resolve`](Self::resolve) for a run without copies: `held[0].joined` means it directly
    /// follows the cursor.
    fn merge_run(&mut self, li: usize, held: &[Held], r: u32, adj: bool) -> Option<u32> {
        if held.is_empty() {
            return None;
        }
        let l0 = self.legs[li].cur;
        // The interval's nodes.
        let mut ns: Vec<u32> = Vec::new();
        let mut x = self.next_of(l0);
        while x != NIL && x != r {
            ns.push(x);
            x = self.nodes[x as usize].next;
        }
        // Block starts: held (a new datagram), nodes (an uncertain link).
        let hs: Vec<usize> = (0..held.len())
            .filter(|&i| i == 0 || !held[i].joined)
            .collect();
        let h_after_l = held[0].joined && l0 != NIL;
        let nb: Vec<usize> = (0..ns.len())
            .filter(|&j| j == 0 || !self.nodes[ns[j] as usize].cert)
            .collect();
        let n_after_l = !ns.is_empty() && l0 != NIL && self.nodes[ns[0] as usize].cert;
        let r_after_n = !ns.is_empty() && r != NIL && self.nodes[r as usize].cert;
        // Last counter of each held PID at or before the cursor.
        let mut base: Vec<(u16, u8)> = Vec::new();
        for h in held {
            if h.pk.cc == NO_CC || base.iter().any(|b| b.0 == h.pk.pid) {
                continue;
            }
            let mut y = l0;
            let mut k = 0;
            while y != NIL && k < CC_LOOK {
                let n = &self.nodes[y as usize];
                if n.pid == h.pk.pid && n.cc != NO_CC {
                    base.push((n.pid, n.cc));
                    break;
                }
                y = n.prev;
                k += 1;
            }
        }
        // Evidence between held block `i` and node block `j`: -1 held first, 1 nodes first.
        let (hn, nn) = (hs.len(), nb.len());
        let mut rel = vec![0i8; hn * nn];
        if !ns.is_empty() {
            for (bi, &hi0) in hs.iter().enumerate() {
                let hi1 = hs.get(bi + 1).copied().unwrap_or(held.len());
                for (bj, &nj0) in nb.iter().enumerate() {
                    let nj1 = nb.get(bj + 1).copied().unwrap_or(ns.len());
                    let mut vote = 0i32;
                    for h in &held[hi0..hi1] {
                        if h.pk.cc == NO_CC {
                            continue;
                        }
                        let b = base.iter().find(|b| b.0 == h.pk.pid).map(|b| b.1);
                        for &n in &ns[nj0..nj1] {
                            let n = &self.nodes[n as usize];
                            if n.pid != h.pk.pid || n.cc == NO_CC {
                                continue;
                            }
                            vote += match b {
                                Some(b) => {
                                    let k = |c: u8| match c.wrapping_sub(b) & 0x0f {
                                        0 => 16,
                                        v => v,
                                    };
                                    (k(h.pk.cc) as i32 - k(n.cc) as i32).signum()
                                }
                                None => match h.pk.cc.wrapping_sub(n.cc) & 0x0f {
                                    1..=7 => 1,
                                    9..=15 => -1,
                                    _ => 0,
                                },
                            };
                        }
                    }
                    rel[bi * nn + bj] = vote.signum() as i8;
                }
            }
        }
        // Merge the blocks.
        enum It {
            H(usize),
            N(u32),
        }
        let mut order: Vec<It> = Vec::with_capacity(held.len() + ns.len());
        let (mut i, mut j) = (0, 0);
        while i < hn && j < nn {
            let h_first = (i..hn).any(|i2| rel[i2 * nn + j] < 0)
                || j == nn - 1 && r_after_n
                || i == 0 && h_after_l;
            let n_first =
                (j..nn).any(|j2| rel[i * nn + j2] > 0) || j == 0 && n_after_l || i == hn - 1 && adj;
            let take_h = match (h_first, n_first) {
                (true, false) => true,
                (false, true) => false,
                _ => {
                    self.stats.ambiguous += 1;
                    held[hs[i]].est < self.nodes[ns[nb[j]] as usize].est
                }
            };
            if take_h {
                let e = hs.get(i + 1).copied().unwrap_or(held.len());
                order.extend((hs[i]..e).map(It::H));
                i += 1;
            } else {
                let e = nb.get(j + 1).copied().unwrap_or(ns.len());
                order.extend(ns[nb[j]..e].iter().map(|&n| It::N(n)));
                j += 1;
            }
        }
        if i < hn {
            order.extend((hs[i]..held.len()).map(It::H));
        }
        // Trailing nodes need not be walked: nothing is placed after them.
        let mut after = l0;
        let mut last: Option<u32> = None;
        let mut prev_h: Option<usize> = None;
        for it in order {
            match it {
                It::N(n) => {
                    after = n;
                    prev_h = None;
                }
                It::H(k) => {
                    let nx = self.next_of(after);
                    if nx != NIL && self.nodes[nx as usize].released
                        || after != NIL && !self.nodes[after as usize].in_list
                    {
                        self.stats.legs[li].dropped += 1;
                        prev_h = None;
                        continue;
                    }
                    let h = &held[k];
                    let x = self.link_after(h.at_ns, after, &h.pk, h.est, li);
                    if (prev_h == Some(k.wrapping_sub(1)) || k == 0 && after == l0)
                        && h.joined
                        && self.nodes[x as usize].prev == after
                        && after != NIL
                    {
                        self.nodes[x as usize].cert = true;
                        self.nodes[after as usize].exact = h.head;
                    } else {
                        self.nodes[x as usize].head = h.head;
                        // This leg's previous packet directly before it: the nulls since.
                        if let Some(g) = h.gap
                            && after != NIL
                            && self.nodes[x as usize].prev == after
                            && (prev_h == Some(k.wrapping_sub(1)) || k == 0 && after == l0)
                        {
                            self.nodes[after as usize].gap = g;
                        }
                    }
                    self.nodes[x as usize].tail = h.tail;
                    after = x;
                    last = Some(x);
                    prev_h = Some(k);
                }
            }
        }
        if let Some(x) = last {
            self.legs[li].cur = x;
        }
        last
    }

    /// `li` delivered a copy of node `m`, its slot at `t`.
    fn copy(&mut self, now_ns: u64, li: usize, m: u32, t: i64) {
        self.stats.legs[li].duplicates += 1;
        self.stats.duplicates += 1;
        let bit = 1u32 << li;
        let (est, creator, legs) = {
            let n = &mut self.nodes[m as usize];
            let legs = n.legs;
            n.legs |= bit;
            (n.est, n.creator as usize, legs)
        };
        if legs & bit == 0 {
            let l = &mut self.legs[li];
            let sample = (t - est) as f64;
            let dev = sample - l.diff;
            // A plain average of the first samples after anchoring, then an EWMA.
            l.diff_n = (l.diff_n + 1).min(16);
            l.diff += dev / f64::from(l.diff_n);
            l.jitter += (dev.abs() - l.jitter) / 16.0;
            l.agree_ns = now_ns;
            if creator != li {
                self.legs[creator].agree_ns = now_ns;
            }
        }
    }

    /// A datagram of a leg that is not anchored: buffered while it looks for a run of
    /// [`ANCHOR_RUN`] non-null packets matching the list in order (the first one unique), then
    /// anchored and replayed. Alone (no other live anchored leg) it anchors at once.
    fn unanchored(&mut self, now_ns: u64, li: usize, run: Vec<Pk>) {
        if !self.other_live_anchored(li) {
            if self.started {
                self.stats.reanchors += 1;
                self.emit(ContentEvent::Reanchored { leg: LegId(li) });
            }
            let dropped: u64 = self.legs[li]
                .buf
                .drain(..)
                .map(|(_, r)| r.len() as u64)
                .sum();
            self.stats.legs[li].dropped += dropped;
            // Carry the list's time base on: its tail was sent a little before this datagram.
            if self.tail != NIL {
                let l = &self.legs[li];
                let t0 = run[0].t - l.spacing as i64;
                self.legs[li].diff = (t0 - self.nodes[self.tail as usize].est) as f64;
            } else if !self.legs[li].was_anchored {
                self.legs[li].diff = 0.0;
            }
            let tail = self.tail;
            self.set_anchored(now_ns, li, tail);
            self.place(now_ns, li, &run);
            self.scratch = run;
            return;
        }
        self.legs[li].unaligned_since.get_or_insert(now_ns);
        let seq = self.legs[li].seq;
        self.legs[li].seq += 1;
        let mut anchor = false;
        for p in run.iter().filter(|p| !p.is_null()) {
            let l = &self.legs[li];
            if l.streak > 0 && self.nodes[l.streak_last as usize].in_list {
                let est = p.t - l.streak_diff as i64;
                match self.find(p.fp, l.streak_last, est, self.tolerance(li)) {
                    Found::Ahead(m)
                        if m == self.nodes[l.streak_last as usize].next && self.unique(m) =>
                    {
                        let l = &mut self.legs[li];
                        l.streak += 1;
                        l.streak_last = m;
                    }
                    _ => self.legs[li].streak = 0,
                }
            } else {
                self.legs[li].streak = 0;
            }
            if self.legs[li].streak == 0
                && let Some(&m) = self.index.get(&p.fp)
            {
                let n = &self.nodes[m as usize];
                if self.unique(m) {
                    let l = &mut self.legs[li];
                    l.streak = 1;
                    l.streak_last = m;
                    l.streak_first = (seq, m);
                    l.streak_diff = (p.t - n.est) as f64;
                }
            }
            if self.legs[li].streak >= ANCHOR_RUN {
                anchor = true;
                break;
            }
        }
        let l = &mut self.legs[li];
        l.buf.push_back((seq, run));
        let mut dropped = 0;
        while l.buf.len() > BUFFERED_DATAGRAMS
            || l.buf.front().is_some_and(|(s, r)| {
                !anchor
                    && r.last()
                        .is_some_and(|p| p.t + (self.window_ns as i64) < now_ns as i64)
                    || anchor && *s < l.streak_first.0
            })
        {
            if let Some((_, r)) = l.buf.pop_front() {
                dropped += r.len() as u64;
            }
        }
        self.stats.legs[li].dropped += dropped;
        if !anchor {
            return;
        }
        let l = &mut self.legs[li];
        l.streak = 0;
        l.diff = l.streak_diff;
        l.jitter = 0.0;
        let first = l.streak_first.1;
        let was = l.was_anchored;
        if was {
            self.stats.reanchors += 1;
            self.emit(ContentEvent::Reanchored { leg: LegId(li) });
        }
        let mut cur = if self.nodes[first as usize].in_list {
            self.nodes[first as usize].prev
        } else if self.out != NIL {
            self.nodes[self.out as usize].prev
        } else {
            self.tail
        };
        // The replay starts with the first match's datagram: start it before the earliest of
        // that datagram's packets found (uniquely, at the anchored differential) before the
        // first match, so that its packets before the first match are not placed after it.
        if self.nodes[first as usize].in_list {
            let diff = self.legs[li].diff as i64;
            let tol = self.tolerance(li);
            let fr = self.nodes[first as usize].rank;
            let lead = self.legs[li].buf.front().map(|(_, r)| {
                r.iter().filter(|p| !p.is_null()).find_map(|p| {
                    let &m = self.index.get(&p.fp)?;
                    let n = &self.nodes[m as usize];
                    (self.unique(m)
                        && n.in_list
                        && n.rank < fr
                        && (n.est - (p.t - diff)).abs() <= tol)
                        .then_some(m)
                })
            });
            if let Some(Some(m)) = lead {
                cur = self.nodes[m as usize].prev;
            }
        }
        self.set_anchored(now_ns, li, cur);
        let buf = std::mem::take(&mut self.legs[li].buf);
        for (_, r) in &buf {
            self.place(now_ns, li, r);
        }
        let mut buf = buf;
        buf.clear();
        self.legs[li].buf = buf;
    }

    /// The only node carrying its fingerprint.
    fn unique(&self, m: u32) -> bool {
        let n = &self.nodes[m as usize];
        n.same_prev == NIL && n.same_next == NIL
    }

    fn set_anchored(&mut self, now_ns: u64, li: usize, cur: u32) {
        let l = &mut self.legs[li];
        l.anchored = true;
        l.was_anchored = true;
        // The anchoring estimate counts as one sample.
        l.diff_n = 1;
        l.cur = cur;
        l.carry = if cur == NIL && self.tail == NIL {
            Some(0)
        } else {
            None
        };
        l.agree_ns = now_ns;
        l.unaligned_since = None;
        l.streak = 0;
        self.stats.legs[li].aligned = true;
        if l.diverged {
            l.diverged = false;
            self.update_aligned();
        }
    }

    fn unanchor(&mut self, li: usize, since_ns: u64) {
        let l = &mut self.legs[li];
        self.stats.legs[li].dropped += l.held.len() as u64;
        l.held.clear();
        if l.anchored {
            l.anchored = false;
            l.cur = NIL;
            l.streak = 0;
            l.unaligned_since = Some(since_ns);
            self.stats.legs[li].aligned = false;
        }
    }

    fn update_aligned(&mut self) {
        let now = !self
            .legs
            .iter()
            .enumerate()
            .any(|(i, l)| l.diverged && !self.stats.legs[i].lost);
        if now && !self.aligned {
            self.emit(ContentEvent::Aligned);
        }
        self.aligned = now;
    }

    /// Divergence: an anchored leg that has not agreed with any other for a window while both
    /// deliver is unanchored; a leg unanchored for a window while another is anchored is
    /// reported diverged.
    fn expire(&mut self, now_ns: u64) {
        let w = self.window_ns;
        let active = |s: &Self, i: usize| {
            s.legs[i].anchored && !s.stats.legs[i].lost && now_ns < s.legs[i].last_push_ns + w / 2
        };
        let act: Vec<usize> = (0..self.legs.len()).filter(|&i| active(self, i)).collect();
        if act.len() >= 2 {
            let stale: Vec<usize> = act
                .iter()
                .copied()
                .filter(|&i| now_ns >= self.legs[i].agree_ns + w)
                .collect();
            let keep = if stale.len() == act.len() {
                // Nobody agrees: the leg that agreed last (lowest index on ties) stays.
                act.iter()
                    .copied()
                    .max_by_key(|&i| (self.legs[i].agree_ns, usize::MAX - i))
            } else {
                None
            };
            for i in stale {
                if Some(i) != keep {
                    let since = self.legs[i].agree_ns;
                    self.unanchor(i, since);
                }
            }
        }
        for li in 0..self.legs.len() {
            let l = &self.legs[li];
            if !l.anchored
                && !l.diverged
                && !self.stats.legs[li].lost
                && l.unaligned_since.is_some_and(|s| now_ns >= s + w)
                && self.other_live_anchored(li)
            {
                self.legs[li].diverged = true;
                self.stats.diverged_events += 1;
                self.emit(ContentEvent::Diverged { leg: LegId(li) });
                self.aligned = false;
            }
        }
    }

    fn update_differentials(&mut self) {
        let min = self
            .legs
            .iter()
            .filter(|l| l.anchored)
            .map(|l| l.diff)
            .fold(f64::INFINITY, f64::min);
        for (l, st) in self.legs.iter().zip(self.stats.legs.iter_mut()) {
            if l.anchored && min.is_finite() {
                st.path_differential = Duration::from_nanos((l.diff - min).max(0.0) as u64);
            }
        }
    }

    // ---- release ----

    /// Every leg that may still insert before `rank` has passed it (lost and diverged legs
    /// are not waited for; a leg still looking for its anchor is).
    fn all_past(&self, rank: u64) -> bool {
        (0..self.legs.len()).all(|i| {
            let l = &self.legs[i];
            self.stats.legs[i].lost || l.diverged || (l.anchored && self.rank_of(l.cur) >= rank)
        })
    }

    /// A live leg holding a run whose interval may include the node of `rank`.
    fn holder(&self, rank: u64) -> Option<usize> {
        (0..self.legs.len()).find(|&i| {
            let l = &self.legs[i];
            !l.held.is_empty()
                && l.anchored
                && !l.diverged
                && !self.stats.legs[i].lost
                && self.rank_of(l.cur) < rank
        })
    }

    fn advance(&mut self, now_ns: u64) {
        while self.out != NIL {
            let n = &self.nodes[self.out as usize];
            let expired = now_ns >= n.created_ns + self.window_ns;
            if let Some(li) = self.holder(n.rank) {
                // Release does not overtake a held run; at the window it is placed by the
                // fallback first.
                if expired {
                    self.resolve(li, NIL, false);
                    continue;
                }
                break;
            }
            let n = &self.nodes[self.out as usize];
            let ok = n.cert || expired || self.all_past(n.rank);
            if !ok {
                break;
            }
            self.release_one();
        }
    }

    fn release_one(&mut self) {
        let x = self.out;
        if x == NIL {
            return;
        }
        let rank = self.nodes[x as usize].rank;
        let passed = (0..self.legs.len()).fold(0u32, |m, i| {
            let l = &self.legs[i];
            if l.anchored && !self.stats.legs[i].lost && self.rank_of(l.cur) > rank {
                m | 1 << i
            } else {
                m
            }
        });
        let prev = self.nodes[x as usize].prev;
        let nulls = {
            let n = &self.nodes[x as usize];
            if prev == NIL {
                n.head
            } else if n.cert {
                self.nodes[prev as usize].exact
            } else {
                let p = &self.nodes[prev as usize];
                p.tail.max(p.gap).max(n.head)
            }
        };
        let nulls = nulls.saturating_sub(if prev == NIL {
            self.lead_emitted
        } else {
            self.nodes[prev as usize].emitted
        });
        self.output_nulls(nulls);
        let n = &mut self.nodes[x as usize];
        n.released = true;
        self.unreleased -= 1;
        let next = n.next;
        let legs = n.legs;
        let creator = n.creator as usize;
        let (pid, cc) = (n.pid, n.cc);
        if let Some(p) = n.pkt.take() {
            if cc != NO_CC {
                let last = self.out_cc[pid as usize];
                let disc = p.len() > 5 && p[3] & 0x20 != 0 && p[4] > 0 && p[5] & 0x80 != 0;
                if last != NO_CC && !disc {
                    let d = cc.wrapping_sub(last) & 0x0f;
                    if d != 0 {
                        self.stats.unrecovered += u64::from(d - 1);
                    }
                }
                self.out_cc[pid as usize] = cc;
            }
            if legs.count_ones() == 1 && passed & !legs != 0 {
                self.stats.legs[creator].recovered += 1;
            }
            self.output(p);
        }
        self.out = next;
        // The nulls seen right after it follow it directly: nothing can come between.
        let t = self.nodes[x as usize].tail;
        self.nodes[x as usize].emitted = t;
        self.output_nulls(t);
    }

    fn output_nulls(&mut self, k: u32) {
        if let Some(np) = self.null_pkt.clone() {
            for _ in 0..k {
                self.output(np.clone());
            }
        }
    }

    /// Nulls after the last released node `x` (which has no released successor) known to
    /// follow it directly (`k`): output what was not yet.
    fn emit_after(&mut self, x: u32, k: u32) {
        let n = &self.nodes[x as usize];
        if n.released && k > n.emitted && (n.next == NIL || !self.nodes[n.next as usize].released) {
            let extra = k - self.nodes[x as usize].emitted;
            self.nodes[x as usize].emitted = k;
            self.output_nulls(extra);
        }
    }

    fn output(&mut self, p: Bytes) {
        if self.ready.len() >= 4 * self.cap {
            self.ready.pop_front();
            self.stats.overflow += 1;
        }
        self.ready.push_back(p);
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
