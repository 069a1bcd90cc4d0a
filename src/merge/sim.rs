//! Virtual-time simulator for the 2022-7 merger (tests only), after quinn's `Pair`: a sender
//! emits a stream, each leg applies a scripted loss / delay / jitter (reorder), and
//! [`Sim::step`] jumps to the next arrival or to `poll_timeout()`, whichever comes first.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::seq2022_7::{Event, Merger, MergerConfig};
use super::{LegId, Pushed};
use crate::rtp::{FIXED_HEADER_LEN, PT_MP2T, RtpPacket, write_header};

/// The one real clock reading of the merge tests: every other time is `base() + Duration`.
pub(crate) fn base() -> Instant {
    Instant::now()
}

/// A validated RTP packet with a `len`-byte TS-looking payload.
pub(crate) fn rtp_ssrc(seq: u16, ts: u32, ssrc: u32, len: usize) -> RtpPacket {
    let mut h = [0u8; FIXED_HEADER_LEN];
    write_header(&mut h, PT_MP2T, seq, ts, ssrc);
    let mut v = h.to_vec();
    v.extend((0..len).map(|i| if i % 188 == 0 { 0x47 } else { i as u8 }));
    RtpPacket::try_new(Bytes::from(v)).expect("valid RTP")
}

/// What one leg does to the sender's packet number `i`.
pub(crate) struct LegScript {
    /// Constant path delay.
    pub delay: Duration,
    /// Whether packet `i` is lost on this leg.
    pub lose: Box<dyn Fn(u64) -> bool>,
    /// Extra delay for packet `i` (reorders the leg when it varies by more than the spacing).
    pub jitter: Box<dyn Fn(u64) -> Duration>,
}

impl LegScript {
    pub fn delayed(delay: Duration) -> LegScript {
        LegScript {
            delay,
            lose: Box::new(|_| false),
            jitter: Box::new(|_| Duration::ZERO),
        }
    }
    pub fn losing(mut self, lose: impl Fn(u64) -> bool + 'static) -> LegScript {
        self.lose = Box::new(lose);
        self
    }
    pub fn jitter(mut self, jitter: impl Fn(u64) -> Duration + 'static) -> LegScript {
        self.jitter = Box::new(jitter);
        self
    }
}

pub(crate) struct Sim {
    pub merger: Merger,
    pub base: Instant,
    pub now: Instant,
    /// (arrival, scheduling order) → (leg, packet).
    pending: BTreeMap<(Instant, u64), (usize, RtpPacket)>,
    order: u64,
    /// Output packets with the time `poll_output` yielded them.
    pub out: Vec<(Instant, RtpPacket)>,
    pub events: Vec<Event>,
    pub results: Vec<(usize, u16, Pushed)>,
}

impl Sim {
    pub fn new(cfg: MergerConfig) -> Sim {
        let base = base();
        Sim {
            merger: Merger::new(cfg),
            base,
            now: base,
            pending: BTreeMap::new(),
            order: 0,
            out: Vec::new(),
            events: Vec::new(),
            results: Vec::new(),
        }
    }

    /// Schedule `pkt` to arrive on `leg` at `base + at`.
    pub fn deliver(&mut self, at: Duration, leg: usize, pkt: RtpPacket) {
        self.order += 1;
        self.pending
            .insert((self.base + at, self.order), (leg, pkt));
    }

    /// The sender emits `n` packets from sequence `seq0`, one every `spacing` from `start`
    /// (timestamps at 90 kHz from `ts0`); each leg applies its script.
    #[allow(clippy::too_many_arguments)]
    pub fn send(
        &mut self,
        start: Duration,
        spacing: Duration,
        n: u64,
        seq0: u16,
        ts0: u32,
        ssrc: u32,
        legs: &[LegScript],
    ) {
        for i in 0..n {
            let sent = start + spacing * i as u32;
            let ts = ts0.wrapping_add((sent.as_micros() as u64 * 9 / 100) as u32);
            let pkt = rtp_ssrc(seq0.wrapping_add(i as u16), ts, ssrc, 188);
            for (l, s) in legs.iter().enumerate() {
                if !(s.lose)(i) {
                    self.deliver(sent + s.delay + (s.jitter)(i), l, pkt.clone());
                }
            }
        }
    }

    /// Advance to the next arrival or timeout; `false` when nothing is left to do.
    pub fn step(&mut self) -> bool {
        let arrival = self.pending.first_key_value().map(|(k, _)| k.0);
        let timeout = self.merger.poll_timeout();
        let arrival_first = arrival.is_some_and(|a| timeout.is_none_or(|t| a <= t));
        match (arrival, timeout) {
            (Some(_), _) if arrival_first => {
                let ((at, _), (leg, pkt)) = self.pending.pop_first().expect("non-empty");
                self.now = at;
                let seq = pkt.seq.0;
                let r = self.merger.push(at, LegId(leg), pkt);
                self.results.push((leg, seq, r));
            }
            (_, Some(t)) => {
                assert!(t >= self.now, "poll_timeout went back in time");
                self.now = t;
                self.merger.handle_timeout(t);
                assert!(
                    self.merger.poll_timeout().is_none_or(|n| n > t),
                    "handle_timeout left a deadline at or before now"
                );
            }
            _ => return false,
        }
        while let Some(p) = self.merger.poll_output(self.now) {
            self.out.push((self.now, p));
        }
        while let Some(e) = self.merger.poll_event() {
            self.events.push(e);
        }
        true
    }

    /// Step until nothing is pending and no timer is armed (every leg ends up lost).
    pub fn run(&mut self) {
        let mut steps = 0u64;
        while self.step() {
            steps += 1;
            assert!(steps < 10_000_000, "simulation does not terminate");
        }
    }

    /// Sequence numbers in output order.
    pub fn out_seqs(&self) -> Vec<u16> {
        self.out.iter().map(|(_, p)| p.seq.0).collect()
    }
}
