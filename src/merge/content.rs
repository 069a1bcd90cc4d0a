//! Content hitless merge: merge two or more legs carrying the same MPEG-TS (ISO/IEC 13818-1)
//! over plain UDP, without RTP sequence numbers, by aligning the legs on the TS packets
//! themselves ("Content Hitless Merge" in DOMAIN.md; the RTP-numbered case is
//! [`seq2022_7`](super::seq2022_7)).
//!
//! Sans-IO: no socket, no clock. Every entry point takes `now`; the glue moves the bytes.
//!
//! # What is aligned
//! The unit is the 188-byte TS packet. Every packet gets a 64-bit *fingerprint* (a
//! multiply-rotate hash over its 23½ eight-byte words, one pass, see [`fingerprint`]). The merger
//! keeps one **timeline**: a doubly linked list of nodes in stream order, one per distinct packet
//! position, in a slab allocated in [`ContentMerger::new`]. A node holds the fingerprint, the
//! packet (a zero-copy `Bytes` slice of the first datagram that carried it), its PID and CC, its
//! creation time, the legs that delivered it, an order *rank* (u64, so two nodes compare in O(1)
//! although nodes are inserted in the middle) and a flag `cert`: "this node certainly follows
//! its predecessor directly in the original stream".
//!
//! The only certain adjacency information is the datagram: packets that arrive together in one
//! datagram are consecutive in the original (a datagram is lost whole). Between two datagrams of
//! one leg there is an unknown gap (zero or more lost packets). So a datagram is a **run**, and
//! placing a run means choosing where its *first* packet goes; the rest follow with certainty:
//! - packet `i+1` equals the next node: a duplicate copy, the cursor advances;
//! - it differs and the link into the next node is uncertain: the timeline has a hole there (the
//!   leg that created it lost a datagram): the packet is **inserted** into the hole;
//! - it differs across a certain link: the run does not fit there.
//!
//! Each leg has a *cursor*: the last node it placed. A run is placed, in order of preference:
//! 1. at the cursor's successor, when the whole run fits there (no loss on this leg: the O(1)
//!    fast path of a trailing leg), or appended at the tail when the cursor is the tail (the
//!    leading leg);
//! 2. at the nearest node ahead of the cursor where the run fits and at least one *non-null*
//!    packet matches (this leg lost the packets in between). A run may start with packets the
//!    timeline lacks and continue with ones it has ("bridging"): the new prefix is inserted right
//!    before the matched node, which must be behind an uncertain link;
//! 3. otherwise the run is **pending**: it is new to the timeline but not at its end, so it fills
//!    a hole somewhere after the cursor or lies beyond the tail. It waits (it cannot be output
//!    before the cursor moves anyway) until a later run of the same leg is placed by rule 1 or 2
//!    at node `m`; the pending runs then go, in order, into the holes between the cursor and `m`,
//!    each into the hole whose neighbours' continuity counters it continues best (fewest packets
//!    implied missing, nearest on ties). A pending run is also retried as the timeline grows (a
//!    co-leading leg may deliver it a moment later), and appended when its leg is the only live
//!    aligned leg.
//!
//! # How ambiguity is resolved
//! Repeated content (null packets, all alike; repeated PSI; still pictures and silence whose
//! packets repeat every 16 CCs) makes single fingerprints ambiguous. Null packets and identical
//! repeats never anchor alone: a match away from the cursor needs a non-null packet matching, and
//! the whole run must fit (every packet equal, or inserted only where the timeline has an
//! uncertain link), which pins identical packets by their distinct neighbours. Among consistent
//! placements the nearest wins: it implies the fewest packets lost on this leg, the most likely
//! explanation under independent loss. An all-null run is placed only at the cursor's successor
//! or left pending. A leg that is not aligned (at start, or after it stopped fitting) aligns
//! only on a *unique* fit over the whole timeline with every packet matching.
//!
//! # Release
//! The node after the last released one is released when (a) it certainly follows it (nothing
//! can be inserted before it), or (b) every live aligned leg has placed a node at or after it (a
//! leg that passed it without delivering it lost it; FIFO legs cannot deliver it later), or
//! (c) the window has passed since the node was created. So the added latency is about the path
//! differential, as in 2022-7 with loss; a single live leg adds none.
//!
//! # Divergence, restart, jump
//! A leg whose pending runs find no place for a whole window, or that never aligned, is not
//! aligned; once it has been so for a window while another leg is live and aligned it is
//! reported [`ContentEvent::Diverged`] (different encoders: the glue falls back to stream
//! switching, [`ContentMerger::aligned`] is false). Its packets are never inserted while it is
//! not aligned; it keeps trying to align and reports [`ContentEvent::Aligned`] when it does. A
//! leg that re-aligns elsewhere after losing alignment, jumps ahead by more than
//! [`JUMP_PACKETS`], or becomes the anchor because no aligned leg is live, is
//! [`ContentEvent::Reanchored`].
//!
//! # Cost and memory
//! Per packet: one fingerprint (≈ 24 multiply-adds) and O(1) list work on the fast path (rules 1
//! and release). Rules 2–3 walk the timeline from the cursor, O(distance) — they run once per
//! datagram lost on some leg; hole choice looks at most [`CC_LOOK`] nodes each way. An unaligned
//! leg costs O(timeline) per datagram (only at start and while diverged). Memory: a slab of
//! `2 × capacity` nodes (`capacity` unreleased plus as much released history, so late copies
//! still match), per-leg pending queues bounded by `capacity`, an output queue bounded by
//! `capacity`, and a 8192-entry CC table. Nothing is allocated per packet in steady state.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::LegId;
use crate::ts::{NULL_PID, PACKET_LEN};

/// A match at least this many nodes ahead of a leg's cursor counts as a jump (re-anchor).
pub const JUMP_PACKETS: u64 = 1024;
/// How far (nodes) hole choice looks for the neighbouring packet of the same PID.
pub const CC_LOOK: usize = 256;
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
    /// Events dropped because the queue (1024) was full.
    pub events_dropped: u64,
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

/// One TS packet of a run.
#[derive(Clone)]
struct Pk {
    bytes: Bytes,
    fp: u64,
    pid: u16,
    cc: u8,
    arrival_ns: u64,
}

impl Pk {
    #[inline]
    fn is_null(&self) -> bool {
        self.pid == NULL_PID.0
    }
}

struct Node {
    fp: u64,
    pkt: Option<Bytes>,
    prev: u32,
    next: u32,
    rank: u64,
    created_ns: u64,
    pid: u16,
    cc: u8,
    /// Certainly follows `prev` directly in the original stream.
    cert: bool,
    released: bool,
    /// Linked in the timeline (false once evicted to the free list).
    in_list: bool,
    /// Legs that delivered it (bit per leg).
    legs: u32,
    creator: u8,
}

struct Leg {
    aligned: bool,
    /// Was aligned once and then lost it (a later alignment is a re-anchor).
    lost_alignment: bool,
    /// Last node placed (NIL: before the oldest node).
    cur: u32,
    /// Runs not placed yet, oldest first.
    pending: VecDeque<Vec<Pk>>,
    pending_pkts: usize,
    /// Not aligned since (ns); `None` while aligned.
    unaligned_since: Option<u64>,
    diverged: bool,
    diff_ns: Option<f64>,
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
    /// Some node was ever created (a later anchor is a re-anchor).
    started: bool,
    aligned: bool,
    scratch: Vec<Pk>,
    pool: Vec<Vec<Pk>>,
    stats: ContentStats,
}

impl ContentMerger {
    /// Allocate the timeline slab, the queues and the scratch buffers.
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
                    rank: 0,
                    created_ns: 0,
                    pid: 0,
                    cc: NO_CC,
                    cert: false,
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
                    aligned: false,
                    lost_alignment: false,
                    cur: NIL,
                    pending: VecDeque::with_capacity(64),
                    pending_pkts: 0,
                    unaligned_since: None,
                    diverged: false,
                    diff_ns: None,
                })
                .collect(),
            ready: VecDeque::with_capacity(cap),
            events: VecDeque::with_capacity(EVENT_QUEUE),
            out_cc: vec![NO_CC; 8192].into_boxed_slice(),
            started: false,
            aligned: true,
            scratch: Vec::with_capacity(64),
            pool: Vec::new(),
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
        let mut run = std::mem::take(&mut self.scratch);
        run.clear();
        let mut off = 0;
        while off + PACKET_LEN <= payload.len() {
            let b = &payload[off..off + PACKET_LEN];
            if b[0] == crate::ts::SYNC_BYTE {
                let pid = u16::from(b[1] & 0x1f) << 8 | u16::from(b[2]);
                let cc = if pid == NULL_PID.0 || b[3] & 0x10 == 0 {
                    NO_CC
                } else {
                    b[3] & 0x0f
                };
                run.push(Pk {
                    bytes: payload.slice(off..off + PACKET_LEN),
                    fp: fingerprint(b),
                    pid,
                    cc,
                    arrival_ns: now_ns,
                });
            }
            off += PACKET_LEN;
        }
        self.stats.legs[li].packets += run.len() as u64;
        if !run.is_empty() {
            let l = &self.legs[li];
            if l.aligned && l.pending.is_empty() && self.try_place_direct(now_ns, li, &run) {
                // Fast path done.
            } else {
                let mut v = self.pool.pop().unwrap_or_default();
                v.clear();
                v.extend(run.drain(..));
                self.legs[li].pending_pkts += v.len();
                self.legs[li].pending.push_back(v);
                self.process_leg(now_ns, li);
            }
        }
        run.clear();
        self.scratch = run;
        self.expire(now_ns);
        self.advance(now_ns);
    }

    /// Next merged TS packet (188 bytes), in stream order, or `None`. Drain after every `push`
    /// and `handle_timeout`.
    pub fn poll_output(&mut self, _now: Instant) -> Option<Bytes> {
        self.ready.pop_front()
    }

    /// When `handle_timeout` must be called next: a waiting position's window, a pending run's
    /// window, a divergence deadline or a leg timeout, whichever is first.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let base = self.base?;
        let mut t: Option<u64> = None;
        let mut min = |v: u64| t = Some(t.map_or(v, |t: u64| t.min(v)));
        if self.out != NIL {
            min(self.nodes[self.out as usize].created_ns + self.window_ns);
        }
        for l in &self.legs {
            if let Some(f) = l.pending.front().and_then(|r| r.first()) {
                min(f.arrival_ns + self.window_ns);
            }
            if let Some(s) = l.unaligned_since
                && !l.diverged
                && l.pending_pkts > 0
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

    /// Process everything due at `now`: lost legs, expired pending runs, divergence, positions
    /// whose window passed. Harmless to call early or often.
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
            }
        }
        // A leg left alone may now append its pending runs.
        for i in 0..self.legs.len() {
            if !self.legs[i].pending.is_empty() && !self.stats.legs[i].lost {
                self.process_leg(now_ns, i);
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

    // ---- timeline primitives ----

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

    fn live_aligned(&self, li: usize) -> bool {
        self.legs[li].aligned && !self.stats.legs[li].lost
    }

    fn alloc(&mut self, now_ns: u64) -> u32 {
        if self.unreleased >= self.cap && self.out != NIL {
            // Forced out: the caller's capacity is too small for the window.
            self.stats.overflow += 1;
            self.release_one();
        }
        if self.free.is_empty() {
            self.evict_oldest();
        }
        let _ = now_ns;
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
                // This leg is more than the whole history behind: it must re-align.
                self.legs[l].cur = NIL;
                self.unalign(l, self.nodes[x as usize].created_ns);
            }
        }
        let n = &mut self.nodes[x as usize];
        n.pkt = None;
        n.next = NIL;
        n.in_list = false;
        self.free.push(x);
    }

    /// Link a fresh node after `after` (NIL: at the front). Returns its index.
    fn link_after(&mut self, now_ns: u64, after: u32, pk: &Pk, li: usize, cert: bool) -> u32 {
        let x = self.alloc(now_ns);
        // `alloc` may have evicted `after`.
        let after = if after != NIL && !self.nodes[after as usize].in_list {
            NIL
        } else {
            after
        };
        let next = if after == NIL {
            self.oldest
        } else {
            self.nodes[after as usize].next
        };
        let lo = self.rank_of(after);
        let hi = if next == NIL {
            lo + RANK_STEP
        } else {
            self.nodes[next as usize].rank
        };
        {
            let n = &mut self.nodes[x as usize];
            n.fp = pk.fp;
            n.pkt = Some(pk.bytes.clone());
            n.prev = after;
            n.next = next;
            n.rank = lo + (hi - lo) / 2;
            n.created_ns = now_ns;
            n.pid = pk.pid;
            n.cc = pk.cc;
            n.cert = cert;
            n.released = false;
            n.in_list = true;
            n.legs = 1 << li;
            n.creator = li as u8;
        }
        if after == NIL {
            self.oldest = x;
        } else {
            self.nodes[after as usize].next = x;
        }
        if next == NIL {
            self.tail = x;
        } else {
            self.nodes[next as usize].prev = x;
        }
        if next == self.out {
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

    fn release_one(&mut self) {
        let x = self.out;
        if x == NIL {
            return;
        }
        let passed_mask = self.passed_mask(self.nodes[x as usize].rank);
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
            if legs.count_ones() == 1 && passed_mask & !legs != 0 {
                self.stats.legs[creator].recovered += 1;
            }
            if self.ready.len() >= self.cap {
                self.ready.pop_front();
                self.stats.overflow += 1;
            }
            self.ready.push_back(p);
            self.stats.output += 1;
        }
        self.out = next;
    }

    /// Live aligned legs whose cursor is strictly past `rank`.
    fn passed_mask(&self, rank: u64) -> u32 {
        let mut m = 0;
        for (i, l) in self.legs.iter().enumerate() {
            if self.live_aligned(i) && l.cur != NIL && self.nodes[l.cur as usize].rank > rank {
                m |= 1 << i;
            }
        }
        m
    }

    fn advance(&mut self, now_ns: u64) {
        while self.out != NIL {
            let n = &self.nodes[self.out as usize];
            let ok = n.cert
                || now_ns >= n.created_ns + self.window_ns
                || (0..self.legs.len())
                    .all(|i| !self.live_aligned(i) || self.rank_of(self.legs[i].cur) >= n.rank);
            if !ok {
                break;
            }
            self.release_one();
        }
    }

    fn emit(&mut self, ev: ContentEvent) {
        if self.events.len() < EVENT_QUEUE {
            self.events.push_back(ev);
        } else {
            self.stats.events_dropped += 1;
        }
    }

    fn unalign(&mut self, li: usize, since_ns: u64) {
        let l = &mut self.legs[li];
        if l.aligned {
            l.aligned = false;
            l.lost_alignment = true;
            l.unaligned_since = Some(since_ns);
            self.stats.legs[li].aligned = false;
        }
    }

    // ---- placement ----

    /// Does `run[k..]` fit with `run[k]` at node `m`? Returns (matched, non-null matched), or
    /// `None`. With `exact`, every packet must match (or extend the tail).
    fn fit(&self, run: &[Pk], k: usize, m: u32, exact: bool) -> Option<(usize, usize)> {
        let mut x = m;
        let (mut matched, mut distinct) = (0, 0);
        for (i, p) in run.iter().enumerate().skip(k) {
            if x == NIL {
                // Extends the tail: only from the tail itself.
                return Some((matched, distinct));
            }
            let n = &self.nodes[x as usize];
            if n.fp == p.fp {
                matched += 1;
                distinct += usize::from(!p.is_null());
                x = n.next;
            } else if i > k && !exact && !n.cert && !n.released {
                // Inserted before `x`.
            } else {
                return None;
            }
        }
        Some((matched, distinct))
    }

    /// Place `run[k..]` with `run[k]` at `m`, the prefix `run[..k]` inserted right before `m`.
    fn commit(&mut self, now_ns: u64, li: usize, run: &[Pk], k: usize, m: u32) {
        let mut prev_placed = false;
        let mut after = if m == NIL {
            self.tail
        } else {
            self.nodes[m as usize].prev
        };
        // Prefix: new packets right before `m`.
        for p in &run[..k] {
            if m != NIL && self.nodes[m as usize].released {
                self.stats.legs[li].dropped += 1;
                continue;
            }
            after = self.link_after(now_ns, after, p, li, prev_placed);
            prev_placed = true;
        }
        let mut x = m;
        if k > 0 && x != NIL {
            // The run proves the prefix leads into `m`.
            self.nodes[x as usize].cert |= prev_placed;
        }
        let mut cur = after;
        for p in &run[k..] {
            if x == NIL {
                cur = self.link_after(now_ns, self.tail, p, li, prev_placed && cur == self.tail);
                prev_placed = true;
                continue;
            }
            if self.nodes[x as usize].fp == p.fp {
                if prev_placed && self.nodes[x as usize].prev == cur {
                    self.nodes[x as usize].cert = true;
                }
                self.duplicate(now_ns, li, x);
                cur = x;
                x = self.nodes[x as usize].next;
                prev_placed = true;
            } else {
                cur = self.link_after(now_ns, cur, p, li, prev_placed);
                prev_placed = true;
            }
        }
        self.legs[li].cur = cur;
    }

    fn duplicate(&mut self, now_ns: u64, li: usize, x: u32) {
        self.stats.legs[li].duplicates += 1;
        self.stats.duplicates += 1;
        let n = &mut self.nodes[x as usize];
        let bit = 1u32 << li;
        if n.legs & bit == 0 {
            let first = n.legs == 1 << n.creator;
            n.legs |= bit;
            let creator = n.creator as usize;
            let sample = now_ns.saturating_sub(n.created_ns) as f64;
            if first {
                self.sample_differential(creator, 0.0);
            }
            self.sample_differential(li, sample);
        }
    }

    fn sample_differential(&mut self, li: usize, sample_ns: f64) {
        let d = &mut self.legs[li].diff_ns;
        let v = match *d {
            None => sample_ns,
            Some(prev) => prev + (sample_ns - prev) / 8.0,
        };
        *d = Some(v);
        self.stats.legs[li].path_differential = Duration::from_nanos(v.max(0.0) as u64);
    }

    /// Rule 1 (fit at the cursor's successor / append at the tail) and rule 2 (nearest
    /// distinctive fit ahead). Returns the placement `(k, m, skipped)`.
    fn find_ahead(&self, li: usize, run: &[Pk]) -> Option<(usize, u32, u64)> {
        let cur = self.legs[li].cur;
        let first = self.next_of(cur);
        if first == NIL {
            return Some((0, NIL, 0));
        }
        if self.fit(run, 0, first, false).is_some() {
            return Some((0, first, 0));
        }
        let mut x = first;
        let mut skipped = 0u64;
        let mut steps = 0usize;
        while x != NIL && steps < 2 * self.cap {
            let n = &self.nodes[x as usize];
            for (k, p) in run.iter().enumerate() {
                if p.fp != n.fp || p.is_null() {
                    continue;
                }
                if k > 0 && (n.cert || n.released) {
                    continue;
                }
                if let Some((_, d)) = self.fit(run, k, x, false)
                    && d > 0
                {
                    return Some((k, x, skipped));
                }
            }
            skipped += 1;
            steps += 1;
            x = n.next;
        }
        None
    }

    /// Whole-timeline search for an unaligned leg: a unique exact fit with a non-null match.
    fn find_unique(&self, run: &[Pk]) -> Option<u32> {
        let k = run.iter().position(|p| !p.is_null())?;
        let mut found = None;
        let mut x = self.oldest;
        while x != NIL {
            let n = &self.nodes[x as usize];
            if n.fp == run[k].fp {
                // run[..k] are nulls: they must match the nodes right before.
                let mut start = x;
                let mut ok = true;
                for _ in 0..k {
                    start = self.nodes[start as usize].prev;
                    if start == NIL {
                        ok = false;
                        break;
                    }
                }
                if ok && self.fit(run, 0, start, true).is_some() {
                    if found.is_some() {
                        return None;
                    }
                    found = Some(start);
                }
            }
            x = n.next;
        }
        found
    }

    /// Fast path: an aligned leg with nothing pending.
    fn try_place_direct(&mut self, now_ns: u64, li: usize, run: &[Pk]) -> bool {
        match self.find_ahead(li, run) {
            Some((k, m, skipped)) => {
                self.place_at(now_ns, li, run, k, m, skipped);
                true
            }
            None => false,
        }
    }

    fn place_at(&mut self, now_ns: u64, li: usize, run: &[Pk], k: usize, m: u32, skipped: u64) {
        if skipped >= JUMP_PACKETS {
            self.stats.reanchors += 1;
            self.emit(ContentEvent::Reanchored { leg: LegId(li) });
        }
        self.commit(now_ns, li, run, k, m);
    }

    fn recycle(&mut self, li: usize, v: Vec<Pk>) {
        self.legs[li].pending_pkts -= v.len();
        let mut v = v;
        v.clear();
        if self.pool.len() < 256 {
            self.pool.push(v);
        }
    }

    fn process_leg(&mut self, now_ns: u64, li: usize) {
        loop {
            if self.legs[li].pending.is_empty() {
                return;
            }
            if !self.legs[li].aligned {
                let anchor = !(0..self.legs.len()).any(|i| i != li && self.live_aligned(i));
                if anchor {
                    // Nobody to agree with: this leg carries the timeline from its tail.
                    if self.started {
                        self.stats.reanchors += 1;
                        self.emit(ContentEvent::Reanchored { leg: LegId(li) });
                    }
                    self.set_aligned(li);
                    self.legs[li].cur = self.tail;
                    continue;
                }
                let last = self.legs[li].pending.len() - 1;
                if last > 0
                    && self.find_unique(&self.legs[li].pending[0]).is_none()
                    && self.find_unique(&self.legs[li].pending[last]).is_some()
                {
                    // The newest run fits where the oldest does not: drop the older ones.
                    for _ in 0..last {
                        let v = self.legs[li].pending.pop_front().unwrap_or_default();
                        self.stats.legs[li].dropped += v.len() as u64;
                        self.recycle(li, v);
                    }
                }
                let run = self.legs[li].pending.pop_front().unwrap_or_default();
                if let Some(m) = self.find_unique(&run) {
                    let was = self.legs[li].lost_alignment;
                    self.set_aligned(li);
                    if was {
                        self.stats.reanchors += 1;
                        self.emit(ContentEvent::Reanchored { leg: LegId(li) });
                    }
                    self.legs[li].cur = self.nodes[m as usize].prev;
                    self.commit(now_ns, li, &run, 0, m);
                    self.recycle(li, run);
                    continue;
                }
                if self.legs[li].unaligned_since.is_none() {
                    self.legs[li].unaligned_since = run.first().map(|p| p.arrival_ns);
                }
                self.legs[li].pending.push_front(run);
                self.bound_pending(li);
                return;
            }
            // Aligned: try the front run, then later runs (bridging holes with the earlier).
            let n = self.legs[li].pending.len();
            let mut placed = None;
            for j in 0..n {
                let run = &self.legs[li].pending[j];
                if let Some(p) = self.find_ahead(li, run) {
                    placed = Some((j, p));
                    break;
                }
            }
            match placed {
                Some((j, (k, m, skipped))) => {
                    for _ in 0..j {
                        let h = self.legs[li].pending.pop_front().unwrap_or_default();
                        self.fill_hole(now_ns, li, &h, m);
                        self.recycle(li, h);
                    }
                    let run = self.legs[li].pending.pop_front().unwrap_or_default();
                    self.place_at(now_ns, li, &run, k, m, skipped);
                    self.recycle(li, run);
                }
                None => {
                    let alone = !(0..self.legs.len()).any(|i| i != li && self.live_aligned(i));
                    if alone {
                        let run = self.legs[li].pending.pop_front().unwrap_or_default();
                        self.legs[li].cur = self.tail;
                        self.commit(now_ns, li, &run, 0, NIL);
                        self.recycle(li, run);
                        continue;
                    }
                    self.bound_pending(li);
                    return;
                }
            }
        }
    }

    fn bound_pending(&mut self, li: usize) {
        while self.legs[li].pending_pkts > self.cap {
            if let Some(v) = self.legs[li].pending.pop_front() {
                self.stats.legs[li].dropped += v.len() as u64;
                self.recycle(li, v);
            }
        }
    }

    fn set_aligned(&mut self, li: usize) {
        let l = &mut self.legs[li];
        l.aligned = true;
        l.unaligned_since = None;
        self.stats.legs[li].aligned = true;
        if l.diverged {
            l.diverged = false;
            self.update_aligned();
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

    /// Insert the pending run `run` into the best hole between the leg's cursor and `m`.
    fn fill_hole(&mut self, now_ns: u64, li: usize, run: &[Pk], m: u32) {
        let cur = self.legs[li].cur;
        let mut x = self.next_of(cur);
        let mut best: Option<(u64, u32)> = None;
        loop {
            if x == NIL {
                break;
            }
            let n = &self.nodes[x as usize];
            if !n.cert && !n.released {
                let cost = self.cc_cost(run, n.prev, x);
                if best.is_none_or(|(c, _)| cost < c) {
                    best = Some((cost, x));
                }
            }
            if x == m {
                break;
            }
            x = n.next;
        }
        match best {
            Some((_, x)) => {
                let mut after = self.nodes[x as usize].prev;
                for (i, p) in run.iter().enumerate() {
                    after = self.link_after(now_ns, after, p, li, i > 0);
                }
                self.legs[li].cur = after;
            }
            None => {
                // No hole ahead: this leg matched null packets across the hole (identical
                // content, so the match was a guess). Re-read them as new nulls in a hole
                // behind the cursor, within the null stretch it matched.
                let mut y = cur;
                let mut c = 0usize;
                let mut hole = None;
                while y != NIL && c < CC_LOOK {
                    let n = &self.nodes[y as usize];
                    if n.pid != NULL_PID.0 || n.released {
                        break;
                    }
                    c += 1;
                    if !n.cert {
                        hole = Some((y, c));
                        break;
                    }
                    y = n.prev;
                }
                let Some((y, c)) = hole else {
                    self.stats.legs[li].dropped += run.len() as u64;
                    return;
                };
                let null = self.nodes[y as usize].pkt.clone();
                let mut after = self.nodes[y as usize].prev;
                let fp = self.nodes[y as usize].fp;
                if let Some(null) = null {
                    for i in 0..c {
                        let pk = Pk {
                            bytes: null.clone(),
                            fp,
                            pid: NULL_PID.0,
                            cc: NO_CC,
                            arrival_ns: now_ns,
                        };
                        after = self.link_after(now_ns, after, &pk, li, i > 0);
                    }
                }
                for p in run {
                    after = self.link_after(now_ns, after, p, li, true);
                }
                self.legs[li].cur = after;
            }
        }
    }

    /// Packets implied missing (by continuity counters) if `run` sat between `w` and `x`.
    fn cc_cost(&self, run: &[Pk], w: u32, x: u32) -> u64 {
        let mut cost = 0u64;
        for (i, p) in run.iter().enumerate() {
            if p.cc == NO_CC {
                continue;
            }
            if !run[..i].iter().any(|q| q.pid == p.pid) {
                let mut y = w;
                for _ in 0..CC_LOOK {
                    if y == NIL {
                        break;
                    }
                    let n = &self.nodes[y as usize];
                    if n.pid == p.pid && n.cc != NO_CC {
                        cost += u64::from(p.cc.wrapping_sub(n.cc).wrapping_sub(1) & 0x0f);
                        break;
                    }
                    y = n.prev;
                }
            }
            if !run[i + 1..].iter().any(|q| q.pid == p.pid) {
                let mut y = x;
                for _ in 0..CC_LOOK {
                    if y == NIL {
                        break;
                    }
                    let n = &self.nodes[y as usize];
                    if n.pid == p.pid && n.cc != NO_CC {
                        cost += u64::from(n.cc.wrapping_sub(p.cc).wrapping_sub(1) & 0x0f);
                        break;
                    }
                    y = n.next;
                }
            }
        }
        cost
    }

    /// Pending runs older than the window: an aligned leg loses alignment (its runs fit
    /// nowhere: restart or divergence); divergence is reported a window after it started.
    fn expire(&mut self, now_ns: u64) {
        for li in 0..self.legs.len() {
            let front_old = self.legs[li]
                .pending
                .front()
                .and_then(|r| r.first())
                .is_some_and(|p| now_ns >= p.arrival_ns + self.window_ns);
            if front_old {
                let since = self.legs[li].pending[0][0].arrival_ns;
                self.unalign(li, since);
                while let Some(v) = self.legs[li].pending.front()
                    && v.first()
                        .is_some_and(|p| now_ns >= p.arrival_ns + self.window_ns)
                {
                    let v = self.legs[li].pending.pop_front().unwrap_or_default();
                    self.stats.legs[li].dropped += v.len() as u64;
                    self.recycle(li, v);
                }
                if self.legs[li].unaligned_since.is_none() {
                    self.legs[li].unaligned_since = Some(since);
                }
            }
            let l = &self.legs[li];
            if !l.aligned
                && !l.diverged
                && !self.stats.legs[li].lost
                && l.unaligned_since
                    .is_some_and(|s| now_ns >= s + self.window_ns)
                && (0..self.legs.len()).any(|i| i != li && self.live_aligned(i))
            {
                self.legs[li].diverged = true;
                self.stats.diverged_events += 1;
                self.emit(ContentEvent::Diverged { leg: LegId(li) });
                self.aligned = false;
            }
        }
    }
}

#[cfg(test)]
mod tests;
