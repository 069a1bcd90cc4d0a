//! The PCR ruler: exact packet positions from the program clock reference of a
//! constant-bitrate mux.
//!
//! A CBR multiplexer (the kind that pads with null packets) stamps each PCR with the time the
//! packet's byte leaves the mux at the mux rate, so between two PCR packets of the stream the
//! PCR advances by exactly `packets × r`, with `r = 188 × 8 × 27 MHz / mux rate` ticks per
//! packet (20 304 at 2 Mbit/s; ISO/IEC 13818-1 §2.4.2.2 and the TR 101 290 PCR accuracy
//! bound of ±500 ns keep a compliant mux within a fraction of a packet). The ruler learns `r`
//! from pairs of consecutive PCR packets on one leg: the packets the leg delivered between
//! them, when no continuity counter skipped (a lost null datagram still slips through: such a
//! pair is an outlier the lock ignores); it *locks* when most recent pairs agree on it within
//! 0.1 %, which a variable-rate stream never does (the ruler then stays silent and time
//! estimates alone place datagrams). Once locked, given a reference PCR packet at a known
//! position (the merger keeps one per leg: its last PCR packet placed), the position of any
//! later PCR packet follows from its PCR alone, whatever the leg lost and however late it
//! arrived.
//!
//! Cost: a division per PCR packet (one packet in ~25 at the usual 20–40 ms PCR interval).
//! Memory: a few words.

/// PCR modulus: 33-bit base × 300 + 9-bit extension.
const PCR_WRAP: u64 = (1 << 33) * 300;
/// Pair samples the ticks-per-packet estimate is taken from.
const SAMPLES: usize = 16;
/// Samples needed before the ruler may lock.
const LOCK_SAMPLES: usize = 8;
/// Relative agreement of a sample with the median.
const AGREE: f64 = 1e-3;
/// A predicted position must lie this close (packets) to a whole packet.
const INTEGRAL: f64 = 0.25;
/// Pairs further apart than this (packets) are not sampled.
const MAX_PAIR: u64 = 4096;

/// Signed difference `b − a` of two PCR values (27 MHz ticks), across the wrap.
fn pcr_delta(a: u64, b: u64) -> i64 {
    let d = (b % PCR_WRAP + PCR_WRAP - a % PCR_WRAP) % PCR_WRAP;
    if d > PCR_WRAP / 2 {
        d as i64 - PCR_WRAP as i64
    } else {
        d as i64
    }
}

#[derive(Clone, Default)]
pub(super) struct Ruler {
    /// The PCR PID followed (the first one seen).
    pid: Option<u16>,
    samples: [f64; SAMPLES],
    n: usize,
    at: usize,
    /// Ticks per packet while locked, else 0.
    r: f64,
}

impl Ruler {
    /// Whether `pid` carries the PCR this ruler follows (the first PCR PID seen is taken).
    pub(super) fn follows(&mut self, pid: u16) -> bool {
        *self.pid.get_or_insert(pid) == pid
    }

    pub(super) fn locked(&self) -> bool {
        self.r > 0.0
    }

    /// Two consecutive PCR packets of one leg, `(position, PCR)` each: a sample of the
    /// ticks per packet.
    pub(super) fn learn(&mut self, prev: (u64, u64), cur: (u64, u64)) {
        let dp = cur.0.saturating_sub(prev.0);
        let dc = pcr_delta(prev.1, cur.1);
        if dp == 0 || dp > MAX_PAIR || dc <= 0 {
            return;
        }
        self.samples[self.at % SAMPLES] = dc as f64 / dp as f64;
        self.at += 1;
        self.n = (self.n + 1).min(SAMPLES);
        if self.n < LOCK_SAMPLES {
            return;
        }
        let mut v = self.samples;
        let v = &mut v[..self.n];
        let (_, m, _) = v.select_nth_unstable_by(self.n / 2, f64::total_cmp);
        let m = *m;
        let agree = v.iter().filter(|&&x| (x - m).abs() <= AGREE * m).count();
        // A misplaced datagram spoils the pairs around it, not the median; a variable-rate
        // stream never agrees.
        self.r = if agree * 4 >= self.n * 3 { m } else { 0.0 };
    }

    /// Position of a PCR packet carrying `pcr`, given a `reference` PCR packet
    /// `(position, PCR)`, if the ruler is locked and the PCR falls on a whole packet from the
    /// reference (else a discontinuity or another stream).
    pub(super) fn position(&self, reference: (u64, u64), pcr: u64) -> Option<u64> {
        let (p0, c0) = reference;
        if !self.locked() {
            return None;
        }
        let x = pcr_delta(c0, pcr) as f64 / self.r;
        let n = x.round();
        if (x - n).abs() > INTEGRAL || n.abs() > (1u64 << 32) as f64 {
            return None;
        }
        p0.checked_add_signed(n as i64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: u64 = 20_304; // 2 Mbit/s

    fn locked() -> Ruler {
        let mut r = Ruler::default();
        assert!(r.follows(0x100));
        let mut prev = (0u64, 0u64);
        for k in 1..=LOCK_SAMPLES as u64 {
            let cur = (prev.0 + 20 + k, prev.1 + (20 + k) * R);
            r.learn(prev, cur);
            prev = cur;
        }
        r
    }

    #[test]
    fn locks_on_a_constant_rate_and_predicts_positions() {
        let mut r = locked();
        assert!(r.locked());
        let at = (1000, 5_000_000);
        assert_eq!(r.position(at, 5_000_000 + 37 * R), Some(1037));
        assert_eq!(r.position(at, 5_000_000 - 3 * R), Some(997));
        // Not on a whole packet: a discontinuity, no position.
        assert_eq!(r.position(at, 5_000_000 + 37 * R + R / 2), None);
        assert!(!r.follows(0x101));
    }

    #[test]
    fn predicts_across_the_pcr_wrap() {
        let c0 = PCR_WRAP - 5 * R;
        let r = locked();
        assert_eq!(r.position((100, c0), (c0 + 12 * R) % PCR_WRAP), Some(112));
    }

    #[test]
    fn a_variable_rate_never_locks() {
        let mut r = Ruler::default();
        let mut prev = (0u64, 0u64);
        for k in 0..40u64 {
            // Packets between PCRs vary while the PCR interval stays 20 ms.
            let cur = (prev.0 + 20 + (k * 7) % 13, prev.1 + 540_000);
            r.learn(prev, cur);
            prev = cur;
        }
        assert!(!r.locked());
        assert_eq!(r.position((0, 0), 540_000), None);
    }

    #[test]
    fn a_few_misplaced_pairs_do_not_unlock_it() {
        let mut r = locked();
        r.learn((500, 0), (507, 20 * R)); // positions 13 packets off
        assert!(r.locked());
        assert_eq!(r.position((50, 50 * R), 60 * R), Some(60));
    }
}
