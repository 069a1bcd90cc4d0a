//! RTP (RFC 3550) datagram validation and sequence-number arithmetic.
//!
//! A datagram from the network is checked once with [`RtpPacket::try_new`]; the result keeps
//! the datagram as the same `Bytes` (no copy) plus the few header fields the merger needs.
//! Header validation (version, CSRC count, extension length, padding) is delegated to the
//! `rtp-rs` reader; we only map its errors onto our bounded drop reasons.

use bytes::Bytes;

/// RTP payload type for MPEG-2 transport streams (RFC 2250 / RFC 3551).
pub const PT_MP2T: u8 = 33;
/// Length of the fixed RTP header without CSRCs or extension.
pub const FIXED_HEADER_LEN: usize = 12;

/// 16-bit RTP sequence number as carried on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeqNum(pub u16);

/// Sequence number extended to 64 bits (wrap count in the upper bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExtSeq(pub u64);

impl ExtSeq {
    /// Extend `seq` to the 64-bit value closest to `reference` (RFC 3550 A.1 style):
    /// the result is within ±2^15 of `reference`, so a wrap forwards or a slightly late
    /// packet from before a wrap both land on the right cycle.
    #[inline]
    pub fn extend(reference: ExtSeq, seq: SeqNum) -> ExtSeq {
        let r = reference.0;
        let delta = seq.0.wrapping_sub(r as u16) as i16 as i64;
        let v = (r as i64).wrapping_add(delta);
        // Never go below zero: early in a stream a "negative" value is just old data.
        ExtSeq(if v < 0 { 0 } else { v as u64 })
    }

    /// Low 16 bits, as they appear on the wire.
    #[inline]
    pub fn wire(self) -> SeqNum {
        SeqNum(self.0 as u16)
    }
}

/// Why a datagram was rejected as RTP. The set is closed so that it can label metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum RtpError {
    #[error("datagram shorter than the 12-byte RTP header")]
    Truncated,
    #[error("RTP version is not 2")]
    BadVersion,
    #[error("CSRC list or header extension runs past the end of the datagram")]
    HeadersTruncated,
    #[error("padding length is zero or larger than the payload")]
    BadPadding,
}

impl RtpError {
    /// Bounded label for `hitless_source_dropped_packets_total{reason}`.
    pub fn reason(self) -> &'static str {
        match self {
            RtpError::Truncated => "rtp_truncated",
            RtpError::BadVersion => "rtp_bad_version",
            RtpError::HeadersTruncated => "rtp_headers_truncated",
            RtpError::BadPadding => "rtp_bad_padding",
        }
    }
}

/// A validated RTP datagram. `data` is the whole datagram exactly as received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RtpPacket {
    pub data: Bytes,
    pub seq: SeqNum,
    pub timestamp: u32,
    pub ssrc: u32,
    pub payload_type: u8,
    /// Payload start offset within `data` (after CSRCs and extension).
    pub payload_offset: u16,
    /// Payload end offset within `data` (before padding).
    pub payload_end: u16,
}

impl RtpPacket {
    /// Validate `data` as an RTP datagram. Never panics on any input.
    pub fn try_new(data: Bytes) -> Result<RtpPacket, RtpError> {
        let (seq, timestamp, ssrc, payload_type, off, end) = {
            let r = rtp_rs::RtpReader::new(&data).map_err(map_err)?;
            let payload = r.payload();
            // payload() is a sub-slice of data: recover its offsets without copying.
            let off = payload.as_ptr() as usize - data.as_ptr() as usize;
            (
                u16::from(r.sequence_number()),
                r.timestamp(),
                r.ssrc(),
                r.payload_type(),
                off,
                off + payload.len(),
            )
        };
        if data.len() > u16::MAX as usize {
            return Err(RtpError::HeadersTruncated);
        }
        Ok(RtpPacket {
            data,
            seq: SeqNum(seq),
            timestamp,
            ssrc,
            payload_type,
            payload_offset: off as u16,
            payload_end: end as u16,
        })
    }

    /// The RTP payload (zero-copy slice of the datagram).
    #[inline]
    pub fn payload(&self) -> Bytes {
        self.data
            .slice(self.payload_offset as usize..self.payload_end as usize)
    }

    /// The RTP payload as a borrowed slice.
    #[inline]
    pub fn payload_slice(&self) -> &[u8] {
        &self.data[self.payload_offset as usize..self.payload_end as usize]
    }
}

fn map_err(e: rtp_rs::RtpReaderError) -> RtpError {
    use rtp_rs::RtpReaderError as E;
    match e {
        E::BufferTooShort(_) => RtpError::Truncated,
        E::UnsupportedVersion(_) => RtpError::BadVersion,
        E::HeadersTruncated { .. } => RtpError::HeadersTruncated,
        E::PaddingLengthInvalid(_) => RtpError::BadPadding,
    }
}

/// Write a 12-byte RTP header (V=2, no padding/extension/CSRC) into `out`.
pub fn write_header(out: &mut [u8; FIXED_HEADER_LEN], pt: u8, seq: u16, ts: u32, ssrc: u32) {
    out[0] = 0x80;
    out[1] = pt & 0x7f;
    out[2..4].copy_from_slice(&seq.to_be_bytes());
    out[4..8].copy_from_slice(&ts.to_be_bytes());
    out[8..12].copy_from_slice(&ssrc.to_be_bytes());
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Build an RTP datagram with a `len`-byte payload of TS-looking bytes.
    pub fn rtp(seq: u16, ts: u32, len: usize) -> Bytes {
        let mut h = [0u8; FIXED_HEADER_LEN];
        write_header(&mut h, PT_MP2T, seq, ts, 0x1234_5678);
        let mut v = h.to_vec();
        v.extend((0..len).map(|i| if i % 188 == 0 { 0x47 } else { i as u8 }));
        Bytes::from(v)
    }

    #[test]
    fn parses_header_fields_and_payload_without_copy() {
        let d = rtp(0xfffe, 90_000, 1316);
        let p = RtpPacket::try_new(d.clone()).unwrap();
        assert_eq!(p.seq, SeqNum(0xfffe));
        assert_eq!(p.timestamp, 90_000);
        assert_eq!(p.ssrc, 0x1234_5678);
        assert_eq!(p.payload_type, PT_MP2T);
        assert_eq!(p.payload().len(), 1316);
        assert_eq!(p.payload().as_ptr(), d[12..].as_ptr());
    }

    #[test]
    fn rejects_malformed_headers_by_reason() {
        assert_eq!(
            RtpPacket::try_new(Bytes::from_static(&[0x80; 5])),
            Err(RtpError::Truncated)
        );
        let mut v = rtp(1, 1, 188).to_vec();
        v[0] = 0x40; // version 1
        assert_eq!(
            RtpPacket::try_new(Bytes::from(v)),
            Err(RtpError::BadVersion)
        );
        let mut v = rtp(1, 1, 4).to_vec();
        v[0] = 0x8f; // 15 CSRCs, 60 bytes, only 4 available
        assert_eq!(
            RtpPacket::try_new(Bytes::from(v)),
            Err(RtpError::HeadersTruncated)
        );
        let mut v = rtp(1, 1, 8).to_vec();
        v[0] = 0x90; // extension bit
        v[14] = 0xff; // extension length 0xff.. words
        v[15] = 0xff;
        assert_eq!(
            RtpPacket::try_new(Bytes::from(v)),
            Err(RtpError::HeadersTruncated)
        );
        let mut v = rtp(1, 1, 8).to_vec();
        v[0] = 0xa0; // padding bit
        *v.last_mut().unwrap() = 200; // more padding than payload
        assert_eq!(
            RtpPacket::try_new(Bytes::from(v)),
            Err(RtpError::BadPadding)
        );
    }

    #[test]
    fn extension_is_wrap_safe() {
        let r = ExtSeq(65_535);
        assert_eq!(ExtSeq::extend(r, SeqNum(0)), ExtSeq(65_536));
        assert_eq!(
            ExtSeq::extend(ExtSeq(65_536), SeqNum(65_535)),
            ExtSeq(65_535)
        );
        assert_eq!(ExtSeq::extend(ExtSeq(3), SeqNum(65_535)), ExtSeq(0));
        assert_eq!(
            ExtSeq::extend(ExtSeq(10 * 65_536 + 5), SeqNum(5)),
            ExtSeq(10 * 65_536 + 5)
        );
    }
}
