//! Send-time schedule of a TS file: when each TS packet is due, in 27 MHz ticks from the
//! first packet, derived from the PCRs of one PID (ISO/IEC 13818-1 2.4.2.2) or from a
//! constant bitrate.
//!
//! Pure arithmetic: no clock, no I/O. The sender turns ticks into `Instant`s.
//!
//! PCR pacing interpolates linearly between consecutive PCRs by packet position, which is
//! exactly how a constant-rate multiplex is defined (the PCR's byte position and value fix
//! the transport rate between two PCRs). PCR wrap (33-bit base × 300 + extension) is handled
//! by modular subtraction; a discontinuity (discontinuity_indicator, a PCR going backwards, a
//! jump larger than [`MAX_PCR_GAP_TICKS`] or no progress) is bridged at the file's mean rate
//! so time keeps increasing.

use crate::ts::{PCR_HZ, Pid, packets};

/// PCR values are modulo 2^33 × 300 (33-bit base in 90 kHz, 9-bit extension < 300).
pub const PCR_MODULUS: u64 = (1u64 << 33) * 300;
/// Largest PCR step taken as continuous time (the standard wants a PCR at least every 100 ms;
/// anything beyond 1 s is a splice, a loop point or a broken file).
pub const MAX_PCR_GAP_TICKS: u64 = PCR_HZ;

/// Why a file cannot be paced by PCR.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PaceError {
    #[error("no PCR found in the file: pace it with --bitrate BPS")]
    NoPcr,
    #[error("PID {0:#x} carries no PCR: pick another --pcr-pid or use --bitrate BPS")]
    NoPcrOnPid(u16),
    #[error("fewer than two usable PCRs on PID {0:#x}: cannot derive a rate, use --bitrate BPS")]
    TooFewPcrs(u16),
    #[error("bitrate must be positive")]
    ZeroBitrate,
}

/// Per-packet due times of one pass over a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    /// Due time of every TS packet, in 27 MHz ticks from the first packet (first is 0),
    /// non-decreasing.
    pub packet_ticks: Vec<u64>,
    /// Length of one pass in ticks: the last packet's time plus one packet interval, so that
    /// the next pass of a loop starts one packet after the last one.
    pub pass_ticks: u64,
    /// PID whose PCRs paced the file (None for constant bitrate).
    pub pcr_pid: Option<Pid>,
    /// Number of PCR discontinuities bridged.
    pub discontinuities: u32,
}

impl Schedule {
    /// Mean transport rate of the schedule in bit/s.
    pub fn mean_bitrate(&self) -> f64 {
        let bits = self.packet_ticks.len() as f64 * 188.0 * 8.0;
        bits * PCR_HZ as f64 / self.pass_ticks.max(1) as f64
    }
}

/// Constant-bitrate schedule: packet `i` is due at `i × 188 × 8 / bitrate` seconds.
pub fn constant_bitrate(n_packets: usize, bitrate_bps: u64) -> Result<Schedule, PaceError> {
    if bitrate_bps == 0 {
        return Err(PaceError::ZeroBitrate);
    }
    let at = |i: u64| -> u64 {
        (u128::from(i) * 188 * 8 * u128::from(PCR_HZ) / u128::from(bitrate_bps)) as u64
    };
    Ok(Schedule {
        packet_ticks: (0..n_packets as u64).map(at).collect(),
        pass_ticks: at(n_packets as u64).max(1),
        pcr_pid: None,
        discontinuities: 0,
    })
}

/// Difference `b - a` of two PCR values, modulo the PCR wrap.
#[inline]
pub fn pcr_delta(a: u64, b: u64) -> u64 {
    (b + PCR_MODULUS - a % PCR_MODULUS) % PCR_MODULUS
}

/// One PCR sample: packet index, value, discontinuity_indicator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PcrSample {
    pub packet: usize,
    pub pcr: u64,
    pub discontinuity: bool,
}

/// Collect the PCRs of `pid` (or of the first PID that carries one) from whole TS packets.
pub fn collect_pcrs(data: &[u8], pid: Option<Pid>) -> Result<(Pid, Vec<PcrSample>), PaceError> {
    let mut chosen = pid;
    let mut out = Vec::new();
    for (i, p) in packets(data).enumerate() {
        let Some(pcr) = p.pcr() else { continue };
        let pp = p.pid();
        match chosen {
            None => chosen = Some(pp),
            Some(c) if c != pp => continue,
            Some(_) => {}
        }
        out.push(PcrSample {
            packet: i,
            pcr,
            discontinuity: p.discontinuity(),
        });
    }
    match chosen.filter(|_| !out.is_empty()) {
        Some(c) => Ok((c, out)),
        None => Err(pid.map_or(PaceError::NoPcr, |p| PaceError::NoPcrOnPid(p.0))),
    }
}

/// PCR schedule of `n_packets` packets from the PCR samples of one PID.
pub fn from_pcrs(n_packets: usize, pid: Pid, pcrs: &[PcrSample]) -> Result<Schedule, PaceError> {
    let continuous = |a: &PcrSample, b: &PcrSample| -> Option<u64> {
        let d = pcr_delta(a.pcr, b.pcr);
        (!b.discontinuity && b.packet > a.packet && d > 0 && d <= MAX_PCR_GAP_TICKS).then_some(d)
    };
    // Mean rate over the continuous segments, in ticks per packet (as a fraction), used to
    // bridge discontinuities and to extrapolate before the first / after the last PCR.
    let (mut seg_ticks, mut seg_pkts) = (0u128, 0u128);
    for w in pcrs.windows(2) {
        if let Some(d) = continuous(&w[0], &w[1]) {
            seg_ticks += u128::from(d);
            seg_pkts += (w[1].packet - w[0].packet) as u128;
        }
    }
    if seg_pkts == 0 {
        return Err(PaceError::TooFewPcrs(pid.0));
    }
    let mean = |pkts: usize| -> u64 { (pkts as u128 * seg_ticks / seg_pkts) as u64 };

    // Anchors (packet, ticks) on one increasing timeline; the first PCR sits where the
    // mean rate says packet 0 is at tick 0.
    let mut anchors: Vec<(usize, u64)> = Vec::with_capacity(pcrs.len());
    let mut discontinuities = 0;
    anchors.push((pcrs[0].packet, mean(pcrs[0].packet)));
    for w in pcrs.windows(2) {
        if w[1].packet <= w[0].packet {
            continue;
        }
        let &(_, t) = anchors.last().expect("anchors starts non-empty");
        let d = match continuous(&w[0], &w[1]) {
            Some(d) => d,
            None => {
                discontinuities += 1;
                mean(w[1].packet - w[0].packet)
            }
        };
        anchors.push((w[1].packet, t + d));
    }

    let mut packet_ticks = Vec::with_capacity(n_packets);
    let (first_pkt, first_t) = anchors[0];
    for i in 0..first_pkt.min(n_packets) {
        packet_ticks.push(first_t - mean(first_pkt - i));
    }
    for w in anchors.windows(2) {
        let ((pa, ta), (pb, tb)) = (w[0], w[1]);
        for i in pa..pb.min(n_packets) {
            let t = ta + ((tb - ta) as u128 * (i - pa) as u128 / (pb - pa) as u128) as u64;
            packet_ticks.push(t);
        }
    }
    // After the last PCR, continue at the last continuous segment's rate.
    let (last_pkt, last_t) = *anchors.last().expect("anchors is non-empty");
    let tail_rate = anchors
        .windows(2)
        .rev()
        .map(|w| ((w[1].1 - w[0].1) as u128, (w[1].0 - w[0].0) as u128))
        .next()
        .unwrap_or((seg_ticks, seg_pkts));
    let tail = |k: usize| -> u64 { (k as u128 * tail_rate.0 / tail_rate.1) as u64 };
    for i in last_pkt..n_packets {
        packet_ticks.push(last_t + tail(i - last_pkt));
    }
    let pass_ticks = if n_packets > last_pkt {
        last_t + tail(n_packets - last_pkt)
    } else {
        last_t + tail(1)
    };
    Ok(Schedule {
        packet_ticks,
        pass_ticks: pass_ticks.max(1),
        pcr_pid: Some(pid),
        discontinuities,
    })
}

/// Global datagram timeline over several passes: datagram `index` of the whole send is
/// datagram `index % per_pass` of pass `index / per_pass`, due at `pass × pass_ticks +` the
/// time of its first TS packet.
#[derive(Debug, Clone)]
pub struct Timeline {
    /// Due time of each datagram within a pass (ticks).
    pub datagram_ticks: Vec<u64>,
    pub pass_ticks: u64,
}

impl Timeline {
    pub fn new(schedule: &Schedule, packets_per_datagram: usize) -> Timeline {
        Timeline {
            datagram_ticks: schedule
                .packet_ticks
                .iter()
                .step_by(packets_per_datagram)
                .copied()
                .collect(),
            pass_ticks: schedule.pass_ticks,
        }
    }
    #[inline]
    pub fn per_pass(&self) -> u64 {
        self.datagram_ticks.len() as u64
    }
    /// Stream time of datagram `index` in 27 MHz ticks from the start of the send.
    #[inline]
    pub fn ticks(&self, index: u64) -> u64 {
        let n = self.per_pass();
        (index / n) * self.pass_ticks + self.datagram_ticks[(index % n) as usize]
    }
    /// Number of datagrams whose stream time is below `limit_ticks` (for `--duration`).
    pub fn count_before(&self, limit_ticks: u64) -> u64 {
        let full = limit_ticks / self.pass_ticks;
        let rem = limit_ticks % self.pass_ticks;
        full * self.per_pass() + self.datagram_ticks.partition_point(|&t| t < rem) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ts::tests::ts;

    fn sample(packet: usize, pcr: u64) -> PcrSample {
        PcrSample {
            packet,
            pcr,
            discontinuity: false,
        }
    }

    #[test]
    fn constant_bitrate_ticks() {
        // 188 × 8 bits at 1,504,000 bit/s = 1 ms per packet = 27,000 ticks.
        let s = constant_bitrate(4, 1_504_000).unwrap();
        assert_eq!(s.packet_ticks, vec![0, 27_000, 54_000, 81_000]);
        assert_eq!(s.pass_ticks, 108_000);
        assert!((s.mean_bitrate() - 1_504_000.0).abs() < 1e-6);
        assert_eq!(constant_bitrate(4, 0), Err(PaceError::ZeroBitrate));
    }

    #[test]
    fn interpolates_between_pcrs_and_extrapolates_ends() {
        // PCR every 10 packets, 1000 ticks per packet, first PCR on packet 3.
        let pcrs: Vec<_> = (0..4)
            .map(|k| sample(3 + 10 * k, 5_000_000 + 10_000 * k as u64))
            .collect();
        let s = from_pcrs(40, Pid(0x100), &pcrs).unwrap();
        let want: Vec<u64> = (0..40).map(|i| 1000 * i).collect();
        assert_eq!(s.packet_ticks, want);
        assert_eq!(s.pass_ticks, 40_000);
        assert_eq!(s.discontinuities, 0);
    }

    #[test]
    fn pcr_wrap_is_continuous() {
        let start = PCR_MODULUS - 15_000;
        let pcrs: Vec<_> = (0..4)
            .map(|k| sample(10 * k, (start + 10_000 * k as u64) % PCR_MODULUS))
            .collect();
        assert_eq!(pcr_delta(pcrs[1].pcr, pcrs[2].pcr), 10_000);
        let s = from_pcrs(40, Pid(0x100), &pcrs).unwrap();
        assert_eq!(
            s.packet_ticks,
            (0..40).map(|i| 1000 * i).collect::<Vec<u64>>()
        );
    }

    #[test]
    fn discontinuity_is_bridged_at_the_mean_rate() {
        let mut pcrs: Vec<_> = (0..3).map(|k| sample(10 * k, 10_000 * k as u64)).collect();
        // A jump backwards (e.g. a spliced file), then continuous again.
        pcrs.push(sample(30, 7));
        pcrs.push(sample(40, 10_007));
        let s = from_pcrs(50, Pid(0x100), &pcrs).unwrap();
        assert_eq!(s.discontinuities, 1);
        assert_eq!(
            s.packet_ticks,
            (0..50).map(|i| 1000 * i).collect::<Vec<u64>>()
        );
        // The indicator alone also counts as a break, even when the value looks continuous.
        let mut flagged: Vec<_> = (0..4).map(|k| sample(10 * k, 10_000 * k as u64)).collect();
        flagged[2].discontinuity = true;
        assert_eq!(
            from_pcrs(40, Pid(0x100), &flagged).unwrap().discontinuities,
            1
        );
    }

    #[test]
    fn too_few_pcrs_is_an_error() {
        assert_eq!(
            from_pcrs(10, Pid(0x100), &[sample(0, 0)]),
            Err(PaceError::TooFewPcrs(0x100))
        );
        let data: Vec<u8> = (0..5).flat_map(|i| ts(0x100, i)).collect();
        assert_eq!(collect_pcrs(&data, None), Err(PaceError::NoPcr));
        assert_eq!(
            collect_pcrs(&data, Some(Pid(0x44))),
            Err(PaceError::NoPcrOnPid(0x44))
        );
    }

    #[test]
    fn timeline_across_passes() {
        let s = constant_bitrate(14, 1_504_000).unwrap();
        let t = Timeline::new(&s, 7);
        assert_eq!(t.datagram_ticks, vec![0, 7 * 27_000]);
        assert_eq!(t.ticks(2), 14 * 27_000);
        assert_eq!(t.ticks(3), 21 * 27_000);
        assert_eq!(t.count_before(0), 0);
        assert_eq!(t.count_before(1), 1);
        assert_eq!(t.count_before(14 * 27_000), 2);
        assert_eq!(t.count_before(14 * 27_000 + 1), 3);
    }
}
