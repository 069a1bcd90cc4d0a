//! MPEG-2 transport stream (ISO/IEC 13818-1) packet views and checks.
//!
//! Borrowed views over 188-byte packets with `#[inline]` accessors; nothing here copies
//! or allocates. Used to validate datagram payloads, pace files by PCR and check continuity.

pub mod psi;
pub mod splice;

/// TS packet size in bytes.
pub const PACKET_LEN: usize = 188;
/// Sync byte at the start of every TS packet.
pub const SYNC_BYTE: u8 = 0x47;
/// PID of null (stuffing) packets.
pub const NULL_PID: Pid = Pid(0x1fff);
/// PCR clock rate (27 MHz).
pub const PCR_HZ: u64 = 27_000_000;

/// 13-bit packet identifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pid(pub u16);

/// 4-bit continuity counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ContinuityCounter(pub u8);

impl ContinuityCounter {
    #[inline]
    pub fn next(self) -> ContinuityCounter {
        ContinuityCounter((self.0 + 1) & 0x0f)
    }
}

/// Why a datagram payload is not a whole number of TS packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum TsError {
    #[error("payload is empty or not a multiple of 188 bytes")]
    BadLength,
    #[error("a TS packet does not start with the 0x47 sync byte")]
    BadSync,
}

impl TsError {
    /// Bounded label for `hitless_source_dropped_packets_total{reason}`.
    pub fn reason(self) -> &'static str {
        match self {
            TsError::BadLength => "ts_bad_length",
            TsError::BadSync => "ts_bad_sync",
        }
    }
}

/// Check that `payload` is one or more whole 188-byte TS packets, each with a sync byte.
#[inline]
pub fn validate_payload(payload: &[u8]) -> Result<usize, TsError> {
    if payload.is_empty() || payload.len() % PACKET_LEN != 0 {
        return Err(TsError::BadLength);
    }
    if payload.iter().step_by(PACKET_LEN).any(|&b| b != SYNC_BYTE) {
        return Err(TsError::BadSync);
    }
    Ok(payload.len() / PACKET_LEN)
}

/// Borrowed view of one 188-byte TS packet.
#[derive(Clone, Copy)]
pub struct TsPacket<'a>(&'a [u8]);

impl<'a> TsPacket<'a> {
    /// `buf` must be exactly 188 bytes starting with the sync byte.
    #[inline]
    pub fn try_new(buf: &'a [u8]) -> Option<TsPacket<'a>> {
        (buf.len() == PACKET_LEN && buf[0] == SYNC_BYTE).then_some(TsPacket(buf))
    }
    #[inline]
    pub fn pid(&self) -> Pid {
        Pid(u16::from(self.0[1] & 0x1f) << 8 | u16::from(self.0[2]))
    }
    #[inline]
    pub fn transport_error(&self) -> bool {
        self.0[1] & 0x80 != 0
    }
    #[inline]
    pub fn payload_unit_start(&self) -> bool {
        self.0[1] & 0x40 != 0
    }
    #[inline]
    pub fn scrambling(&self) -> u8 {
        self.0[3] >> 6
    }
    #[inline]
    pub fn has_adaptation(&self) -> bool {
        self.0[3] & 0x20 != 0
    }
    #[inline]
    pub fn has_payload(&self) -> bool {
        self.0[3] & 0x10 != 0
    }
    #[inline]
    pub fn cc(&self) -> ContinuityCounter {
        ContinuityCounter(self.0[3] & 0x0f)
    }
    /// Adaptation field bytes after its length byte, if present and well-formed.
    #[inline]
    fn adaptation(&self) -> Option<&'a [u8]> {
        if !self.has_adaptation() {
            return None;
        }
        let len = usize::from(self.0[4]);
        if len == 0 || 5 + len > PACKET_LEN {
            return None;
        }
        Some(&self.0[5..5 + len])
    }
    #[inline]
    pub fn discontinuity(&self) -> bool {
        self.adaptation().is_some_and(|a| a[0] & 0x80 != 0)
    }
    /// random_access_indicator: the next PES of this PID starts a random access point
    /// (a keyframe for video), as muxers set it.
    #[inline]
    pub fn random_access(&self) -> bool {
        self.adaptation().is_some_and(|a| a[0] & 0x40 != 0)
    }
    /// Program clock reference in 27 MHz units, if this packet carries one.
    #[inline]
    pub fn pcr(&self) -> Option<u64> {
        let a = self.adaptation()?;
        if a[0] & 0x10 == 0 || a.len() < 7 {
            return None;
        }
        let base = (u64::from(a[1]) << 25)
            | (u64::from(a[2]) << 17)
            | (u64::from(a[3]) << 9)
            | (u64::from(a[4]) << 1)
            | (u64::from(a[5]) >> 7);
        let ext = (u64::from(a[5] & 0x01) << 8) | u64::from(a[6]);
        Some(base * 300 + ext)
    }
    /// Payload bytes after the header and adaptation field.
    #[inline]
    pub fn payload(&self) -> &'a [u8] {
        if !self.has_payload() {
            return &[];
        }
        let start = if self.has_adaptation() {
            5 + usize::from(self.0[4])
        } else {
            4
        };
        self.0.get(start..).unwrap_or(&[])
    }
    #[inline]
    pub fn bytes(&self) -> &'a [u8] {
        self.0
    }
}

/// Write a PCR (27 MHz units) into its 6-byte program_clock_reference field: 33-bit base
/// (PCR / 300), the 6 reserved bits kept as they are, 9-bit extension (PCR % 300).
pub fn write_pcr(field: &mut [u8], pcr: u64) {
    let (base, ext) = (pcr / 300, pcr % 300);
    field[0] = (base >> 25) as u8;
    field[1] = (base >> 17) as u8;
    field[2] = (base >> 9) as u8;
    field[3] = (base >> 1) as u8;
    field[4] = ((base & 1) << 7) as u8 | (field[4] & 0x7e) | (ext >> 8) as u8;
    field[5] = ext as u8;
}

/// Iterate over the TS packets of a validated payload.
#[inline]
pub fn packets(payload: &[u8]) -> impl Iterator<Item = TsPacket<'_>> {
    payload
        .chunks_exact(PACKET_LEN)
        .filter_map(TsPacket::try_new)
}

/// Continuity checker per PID (ISO/IEC 13818-1 2.4.3.3): counts lost/out-of-order packets.
/// One duplicate packet is legal; a discontinuity_indicator resets the expectation.
#[derive(Default)]
pub struct ContinuityCheck {
    last: std::collections::HashMap<Pid, (ContinuityCounter, bool)>,
    /// Number of continuity errors seen.
    pub errors: u64,
}

impl ContinuityCheck {
    pub fn push(&mut self, p: &TsPacket<'_>) {
        let pid = p.pid();
        if pid == NULL_PID {
            return;
        }
        let cc = p.cc();
        let has_payload = p.has_payload();
        if let Some(&(last, dup_seen)) = self.last.get(&pid)
            && !p.discontinuity()
        {
            let expected = if has_payload { last.next() } else { last };
            if cc == last && has_payload && !dup_seen {
                self.last.insert(pid, (cc, true));
                return;
            }
            if cc != expected {
                self.errors += 1;
            }
        }
        self.last.insert(pid, (cc, false));
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A TS packet on `pid` with continuity counter `cc` and a payload filled with `fill`.
    pub fn ts(pid: u16, cc: u8) -> [u8; PACKET_LEN] {
        let mut p = [0xffu8; PACKET_LEN];
        p[0] = SYNC_BYTE;
        p[1] = (pid >> 8) as u8 & 0x1f;
        p[2] = pid as u8;
        p[3] = 0x10 | (cc & 0x0f);
        p
    }

    #[test]
    fn header_fields() {
        let p = ts(0x1ab, 7);
        let v = TsPacket::try_new(&p).unwrap();
        assert_eq!(v.pid(), Pid(0x1ab));
        assert_eq!(v.cc(), ContinuityCounter(7));
        assert!(v.has_payload() && !v.has_adaptation());
        assert_eq!(v.payload().len(), 184);
    }

    /// Give `p` a 7-byte adaptation field carrying `pcr` (payload kept).
    pub fn set_pcr(p: &mut [u8; PACKET_LEN], pcr: u64) {
        p[3] |= 0x20;
        p[4] = 7;
        p[5] = 0x10;
        p[10] = 0x7e;
        write_pcr(&mut p[6..12], pcr);
    }

    #[test]
    fn pcr_roundtrip() {
        let mut p = ts(0x100, 0);
        let pcr: u64 = 123_456_789_012;
        set_pcr(&mut p, pcr);
        assert_eq!(TsPacket::try_new(&p).unwrap().pcr(), Some(pcr));
        assert_eq!(p[10] & 0x7e, 0x7e, "reserved bits kept");
    }

    #[test]
    fn validate_payload_rejects_bad_length_and_sync() {
        let mut v = Vec::new();
        v.extend_from_slice(&ts(1, 0));
        v.extend_from_slice(&ts(1, 1));
        assert_eq!(validate_payload(&v), Ok(2));
        assert_eq!(validate_payload(&v[..300]), Err(TsError::BadLength));
        assert_eq!(validate_payload(&[]), Err(TsError::BadLength));
        v[188] = 0x46;
        assert_eq!(validate_payload(&v), Err(TsError::BadSync));
    }

    #[test]
    fn continuity_counts_loss_and_allows_one_duplicate() {
        let mut c = ContinuityCheck::default();
        for cc in [0, 1, 1, 2, 4, 5] {
            c.push(&TsPacket::try_new(&ts(0x100, cc)).unwrap());
        }
        assert_eq!(c.errors, 1);
    }
}
