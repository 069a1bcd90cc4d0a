//! PSI sections (ISO/IEC 13818-1 2.4.4): reassembly from TS packets, CRC_32, PAT/PMT
//! fields, version rewriting and re-packetization. The one PSI module of the crate.
//!
//! - [`PayloadAssembler`] rebuilds the sections of one PID from its payloads, honouring
//!   `pointer_field` (2.4.4.2), into a fixed buffer, and reports every complete section
//!   whatever its CRC. The caller judges continuity. The TR 101 290 analyser
//!   ([`crate::rules::tr101290`]) uses it directly, so that it can count CRC_32 mismatches
//!   (indicator 2.2) apart from absent tables.
//! - [`SectionAssembler`] wraps it for a consumer that wants CRC-valid sections only and
//!   leaves continuity to the assembler (the splicer, [`super::splice`], which caches each
//!   source's PAT/PMT and emits them with a rewritten `version_number`).
//! - [`Section`] is a zero-copy view of one long-form section: [`Section::parse`] tells a
//!   bad CRC apart from a malformed section.
//!
//! No allocation in reassembly after construction; no panics on any input.

use super::{ContinuityCounter, PACKET_LEN, Pid, SYNC_BYTE, TsPacket};

/// table_id of a program_association_section.
pub const TABLE_PAT: u8 = 0x00;
/// table_id of a TS_program_map_section.
pub const TABLE_PMT: u8 = 0x02;
/// Largest PAT / PMT section: 3-byte header + section_length ≤ 1021 (2.4.4.4, 2.4.4.9).
pub const MAX_SECTION_LEN: usize = 1024;

/// CRC-32/MPEG-2 (polynomial 0x04C11DB7, init 0xFFFFFFFF, no reflection, no final xor),
/// the CRC_32 of Annex A. Over a whole section including its CRC it yields 0.
#[inline]
pub fn crc32_mpeg2(data: &[u8]) -> u32 {
    mpeg2ts_reader::mpegts_crc::sum32(data)
}

/// Why [`Section::parse`] refused a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SectionError {
    /// Not one whole long-form section: length disagrees with section_length, shorter than
    /// header + CRC, or section_syntax_indicator is 0.
    Malformed,
    /// CRC_32 mismatch (TR 101 290 indicator 2.2).
    Crc,
}

/// Borrowed view of one complete long-form section (section_syntax_indicator = 1).
#[derive(Clone, Copy, Debug)]
pub struct Section<'a>(&'a [u8]);

impl<'a> Section<'a> {
    /// `buf` must be exactly one section (3 + section_length bytes) with a valid CRC_32.
    #[inline]
    pub fn try_new(buf: &'a [u8]) -> Option<Section<'a>> {
        Section::parse(buf).ok()
    }
    /// Like [`Section::try_new`], telling a CRC mismatch apart. The CRC is checked before
    /// the long-form header, so that any whole section with a bad CRC counts as
    /// [`SectionError::Crc`].
    pub fn parse(buf: &'a [u8]) -> Result<Section<'a>, SectionError> {
        if section_len(buf) != Some(buf.len()) {
            return Err(SectionError::Malformed);
        }
        if crc32_mpeg2(buf) != 0 {
            return Err(SectionError::Crc);
        }
        if buf.len() < 12 || buf[1] & 0x80 == 0 {
            return Err(SectionError::Malformed);
        }
        Ok(Section(buf))
    }
    #[inline]
    pub fn table_id(&self) -> u8 {
        self.0[0]
    }
    /// transport_stream_id (PAT) or program_number (PMT).
    #[inline]
    pub fn table_id_extension(&self) -> u16 {
        u16::from_be_bytes([self.0[3], self.0[4]])
    }
    #[inline]
    pub fn version(&self) -> u8 {
        (self.0[5] >> 1) & 0x1f
    }
    #[inline]
    pub fn current_next(&self) -> bool {
        self.0[5] & 0x01 != 0
    }
    #[inline]
    pub fn section_number(&self) -> u8 {
        self.0[6]
    }
    #[inline]
    pub fn last_section_number(&self) -> u8 {
        self.0[7]
    }
    /// Bytes between the 8-byte header and the CRC_32.
    #[inline]
    pub fn body(&self) -> &'a [u8] {
        &self.0[8..self.0.len() - 4]
    }
    #[inline]
    pub fn bytes(&self) -> &'a [u8] {
        self.0
    }
    /// The CRC_32 field (a cheap fingerprint to tell a changed table).
    #[inline]
    pub fn crc(&self) -> u32 {
        let n = self.0.len() - 4;
        u32::from_be_bytes([self.0[n], self.0[n + 1], self.0[n + 2], self.0[n + 3]])
    }
    /// PAT entries `(program_number, PID)`; program 0 is the network PID.
    pub fn pat_entries(&self) -> impl Iterator<Item = (u16, Pid)> + use<'a> {
        self.body().chunks_exact(4).map(|e| {
            (
                u16::from_be_bytes([e[0], e[1]]),
                Pid(u16::from_be_bytes([e[2] & 0x1f, e[3]])),
            )
        })
    }
    /// PCR_PID of a PMT.
    pub fn pmt_pcr_pid(&self) -> Option<Pid> {
        let b = self.body();
        (b.len() >= 4).then(|| Pid(u16::from_be_bytes([b[0] & 0x1f, b[1]])))
    }
    /// PMT elementary streams `(stream_type, elementary_PID)`; `None` when the body is too
    /// short for PCR_PID or program_info_length runs past it.
    pub fn pmt_streams(&self) -> Option<impl Iterator<Item = (u8, Pid)> + use<'a>> {
        let b = self.body();
        let info_len = usize::from(u16::from_be_bytes([*b.get(2)? & 0x0f, *b.get(3)?]));
        let mut i = 4 + info_len;
        if i > b.len() {
            return None;
        }
        Some(std::iter::from_fn(move || {
            let e = b.get(i..i + 5)?;
            i += 5 + usize::from(u16::from_be_bytes([e[3] & 0x0f, e[4]]));
            Some((e[0], Pid(u16::from_be_bytes([e[1] & 0x1f, e[2]]))))
        }))
    }
    /// True when both sections carry the same table apart from version_number and CRC_32
    /// (a decoder needs a new version exactly when this is false).
    pub fn same_content(&self, other: &Section<'_>) -> bool {
        let (a, b) = (self.0, other.0);
        a.len() == b.len()
            && a[..5] == b[..5]
            && a[5] & 0xc1 == b[5] & 0xc1
            && a[6..a.len() - 4] == b[6..b.len() - 4]
    }
}

/// Total length (3 + section_length) announced by a section header, if it is plausible.
#[inline]
fn section_len(buf: &[u8]) -> Option<usize> {
    if buf.len() < 3 {
        return None;
    }
    let len = 3 + usize::from(u16::from_be_bytes([buf[1] & 0x0f, buf[2]]));
    (len <= MAX_SECTION_LEN).then_some(len)
}

/// Set version_number of a complete long-form section in place and recompute its CRC_32.
pub fn set_version(section: &mut [u8], version: u8) {
    section[5] = (section[5] & 0xc1) | ((version & 0x1f) << 1);
    let n = section.len() - 4;
    let crc = crc32_mpeg2(&section[..n]);
    section[n..].copy_from_slice(&crc.to_be_bytes());
}

/// Append the TS packets carrying `section` on `pid` to `out` (pointer_field 0, one section
/// per packet run, 0xFF stuffing). `cc` is the continuity counter of the first packet; the
/// counter after the last packet written is returned.
pub fn packetize(
    section: &[u8],
    pid: Pid,
    mut cc: ContinuityCounter,
    out: &mut impl Extend<u8>,
) -> ContinuityCounter {
    let mut rest = section;
    let mut first = true;
    loop {
        let mut p = [0xffu8; PACKET_LEN];
        p[0] = SYNC_BYTE;
        p[1] = (if first { 0x40 } else { 0 }) | (pid.0 >> 8) as u8 & 0x1f;
        p[2] = pid.0 as u8;
        p[3] = 0x10 | cc.0;
        let start = if first {
            p[4] = 0;
            5
        } else {
            4
        };
        let n = rest.len().min(PACKET_LEN - start);
        p[start..start + n].copy_from_slice(&rest[..n]);
        rest = &rest[n..];
        out.extend(p);
        cc = cc.next();
        first = false;
        if rest.is_empty() {
            return cc;
        }
    }
}

/// Reassembles the PSI sections carried on one PID from its packets' payloads (2.4.4.2):
/// several sections may start in one packet (after `pointer_field`), a section may span
/// packets, `0xFF` stuffing ends the sections of a packet, and a new section starts only in
/// a packet with payload_unit_start_indicator set. The caller judges continuity and calls
/// [`PayloadAssembler::reset`] on a loss, because the partial section's bytes are no longer
/// known. Fixed buffer: no allocation after construction.
#[derive(Debug)]
pub struct PayloadAssembler {
    buf: Box<[u8; MAX_SECTION_LEN]>,
    len: usize,
    /// Whole length of the section being gathered, once its 3-byte header is in.
    need: Option<usize>,
    /// A section is being gathered (its start was seen and nothing was lost since).
    active: bool,
    /// Sections whose section_length is larger than a PAT / PMT allows.
    pub oversize: u64,
    /// Packets whose pointer_field points past the payload.
    pub bad_pointer: u64,
}

impl Default for PayloadAssembler {
    fn default() -> Self {
        PayloadAssembler::new()
    }
}

impl PayloadAssembler {
    pub fn new() -> PayloadAssembler {
        PayloadAssembler {
            buf: Box::new([0; MAX_SECTION_LEN]),
            len: 0,
            need: None,
            active: false,
            oversize: 0,
            bad_pointer: 0,
        }
    }

    /// Forget a partial section (continuity lost, or the stream was re-synchronised).
    pub fn reset(&mut self) {
        self.active = false;
        self.len = 0;
        self.need = None;
    }

    /// Feed the payload of one packet of this PID (after the adaptation field) and call
    /// `on_section` with every whole section it completes, in order: exactly
    /// 3 + section_length bytes, CRC not checked (see [`Section::parse`]).
    pub fn push(&mut self, pusi: bool, payload: &[u8], mut on_section: impl FnMut(&[u8])) {
        if !pusi {
            if self.active {
                self.append(payload, &mut on_section);
            }
            // A new section only starts in a packet with payload_unit_start_indicator set;
            // whatever follows the end of a section here is stuffing.
            return;
        }
        let Some((&pointer, rest)) = payload.split_first() else {
            self.reset();
            return;
        };
        let pointer = usize::from(pointer);
        if pointer > rest.len() {
            self.bad_pointer += 1;
            self.reset();
            return;
        }
        let (tail, mut rest) = rest.split_at(pointer);
        if self.active {
            self.append(tail, &mut on_section);
        }
        // Whatever was not completed by the bytes before the pointer is lost.
        self.reset();
        while let Some(&first) = rest.first() {
            if first == 0xff {
                break;
            }
            self.active = true;
            let used = self.append(rest, &mut on_section);
            if self.active {
                // The section continues in the next packet.
                break;
            }
            rest = rest.get(used..).unwrap_or(&[]);
        }
    }

    /// Append bytes to the active section; emit it if complete. Returns the bytes consumed.
    fn append(&mut self, data: &[u8], on_section: &mut impl FnMut(&[u8])) -> usize {
        let mut used = 0;
        // Header first (3 bytes), to learn the section's length.
        if self.need.is_none() {
            let take = (3 - self.len.min(3)).min(data.len());
            self.buf[self.len..self.len + take].copy_from_slice(&data[..take]);
            self.len += take;
            used = take;
            if self.len < 3 {
                return used;
            }
            let Some(need) = section_len(&self.buf[..3]) else {
                self.oversize += 1;
                self.reset();
                // Drop the rest of this packet: we cannot tell where the next section starts.
                return data.len();
            };
            self.need = Some(need);
        }
        let need = self.need.unwrap_or(MAX_SECTION_LEN);
        let take = (need - self.len).min(data.len() - used);
        self.buf[self.len..self.len + take].copy_from_slice(&data[used..used + take]);
        self.len += take;
        used += take;
        if self.len == need {
            on_section(&self.buf[..need]);
            self.reset();
        }
        used
    }
}

/// Reassembles sections of one PID from its TS packets, judging continuity itself: a lost
/// packet (continuity error) drops the section in progress; a duplicate packet is ignored.
/// Only CRC-valid long-form sections are reported.
#[derive(Debug, Default)]
pub struct SectionAssembler {
    asm: PayloadAssembler,
    last_cc: Option<ContinuityCounter>,
}

impl SectionAssembler {
    /// Feed one packet of this PID; `on_section` is called with every complete, CRC-valid
    /// long-form section that ends in this packet.
    pub fn push(&mut self, p: &TsPacket<'_>, mut on_section: impl FnMut(Section<'_>)) {
        if !p.has_payload() || p.transport_error() || p.scrambling() != 0 {
            return;
        }
        let cc = p.cc();
        match self.last_cc {
            Some(last) if last == cc && !p.discontinuity() => return,
            Some(last) if last.next() != cc && !p.discontinuity() => self.asm.reset(),
            _ => {}
        }
        self.last_cc = Some(cc);
        self.asm.push(p.payload_unit_start(), p.payload(), |s| {
            if let Ok(s) = Section::parse(s) {
                on_section(s);
            }
        });
    }

    /// Continuity counter of the last packet accepted.
    pub fn last_cc(&self) -> Option<ContinuityCounter> {
        self.last_cc
    }
}

/// Build a long-form section from its parts (computes section_length and CRC_32).
pub fn build_section(table_id: u8, extension: u16, version: u8, body: &[u8]) -> Vec<u8> {
    let len = 5 + body.len() + 4;
    let mut s = vec![
        table_id,
        0xb0 | ((len >> 8) as u8 & 0x0f),
        len as u8,
        (extension >> 8) as u8,
        extension as u8,
        0xc1 | ((version & 0x1f) << 1),
        0,
        0,
    ];
    s.extend_from_slice(body);
    s.extend_from_slice(&[0; 4]);
    set_version(&mut s, version);
    s
}

/// A PAT section for `programs` `(program_number, PMT PID)`.
pub fn build_pat(ts_id: u16, version: u8, programs: &[(u16, Pid)]) -> Vec<u8> {
    let body: Vec<u8> = programs
        .iter()
        .flat_map(|&(n, pid)| {
            let [a, b] = n.to_be_bytes();
            [a, b, 0xe0 | (pid.0 >> 8) as u8, pid.0 as u8]
        })
        .collect();
    build_section(TABLE_PAT, ts_id, version, &body)
}

/// A PMT section without descriptors for `streams` `(stream_type, PID)`.
pub fn build_pmt(program: u16, version: u8, pcr_pid: Pid, streams: &[(u8, Pid)]) -> Vec<u8> {
    let mut body = vec![0xe0 | (pcr_pid.0 >> 8) as u8, pcr_pid.0 as u8, 0xf0, 0];
    for &(st, pid) in streams {
        body.extend_from_slice(&[st, 0xe0 | (pid.0 >> 8) as u8, pid.0 as u8, 0xf0, 0]);
    }
    build_section(TABLE_PMT, program, version, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_check_value_and_whole_section_is_zero() {
        // CRC-32/MPEG-2 check value.
        assert_eq!(crc32_mpeg2(b"123456789"), 0x0376_e6e7);
        let pat = build_pat(1, 3, &[(1, Pid(0x1000))]);
        assert_eq!(crc32_mpeg2(&pat), 0);
        let s = Section::try_new(&pat).unwrap();
        assert_eq!(s.version(), 3);
        assert_eq!(s.pat_entries().collect::<Vec<_>>(), vec![(1, Pid(0x1000))]);
    }

    #[test]
    fn set_version_keeps_content_and_fixes_crc() {
        let pmt = build_pmt(1, 0, Pid(0x100), &[(0x1b, Pid(0x100)), (0x0f, Pid(0x101))]);
        let mut v = pmt.clone();
        set_version(&mut v, 17);
        let (a, b) = (
            Section::try_new(&pmt).unwrap(),
            Section::try_new(&v).unwrap(),
        );
        assert_eq!(b.version(), 17);
        assert!(a.same_content(&b));
        assert_eq!(b.pmt_pcr_pid(), Some(Pid(0x100)));
        assert_eq!(
            b.pmt_streams().unwrap().collect::<Vec<_>>(),
            vec![(0x1b, Pid(0x100)), (0x0f, Pid(0x101))]
        );
        let other = build_pmt(1, 0, Pid(0x100), &[(0x02, Pid(0x100)), (0x0f, Pid(0x101))]);
        assert!(!a.same_content(&Section::try_new(&other).unwrap()));
    }

    #[test]
    fn reassembles_multi_packet_section_and_drops_on_loss() {
        let streams: Vec<(u8, Pid)> = (0..60).map(|i| (0x06, Pid(0x200 + i))).collect();
        let pmt = build_pmt(7, 1, Pid(0x200), &streams);
        assert!(pmt.len() > 183);
        let mut pkts = Vec::new();
        let cc = packetize(&pmt, Pid(0x30), ContinuityCounter(14), &mut pkts);
        assert_eq!(pkts.len(), 2 * PACKET_LEN);
        assert_eq!(cc, ContinuityCounter(0));
        let mut asm = SectionAssembler::default();
        let mut got = Vec::new();
        for p in pkts.chunks(PACKET_LEN) {
            asm.push(&TsPacket::try_new(p).unwrap(), |s| {
                got.push(s.bytes().to_vec())
            });
        }
        assert_eq!(got, vec![pmt.clone()]);
        // Losing the second packet of the next copy loses that section only.
        let mut again = Vec::new();
        packetize(&pmt, Pid(0x30), ContinuityCounter(0), &mut again);
        asm.push(&TsPacket::try_new(&again[..PACKET_LEN]).unwrap(), |_| {
            panic!("incomplete")
        });
        let mut third = Vec::new();
        packetize(&pmt, Pid(0x30), ContinuityCounter(2), &mut third);
        for p in third.chunks(PACKET_LEN) {
            asm.push(&TsPacket::try_new(p).unwrap(), |s| {
                got.push(s.bytes().to_vec())
            });
        }
        assert_eq!(got.len(), 2);
    }

    #[test]
    fn two_sections_in_one_packet() {
        let pat = build_pat(1, 0, &[(1, Pid(0x1000))]);
        let mut p = [0xffu8; PACKET_LEN];
        p[..4].copy_from_slice(&[SYNC_BYTE, 0x40, 0, 0x10]);
        p[4] = 0;
        p[5..5 + pat.len()].copy_from_slice(&pat);
        p[5 + pat.len()..5 + 2 * pat.len()].copy_from_slice(&pat);
        let mut n = 0;
        SectionAssembler::default().push(&TsPacket::try_new(&p).unwrap(), |_| n += 1);
        assert_eq!(n, 2);
    }

    /// A PAT section (transport_stream_id 1) from `(program_number, pmt_pid)`.
    fn pat(programs: &[(u16, u16)], version: u8) -> Vec<u8> {
        let programs: Vec<(u16, Pid)> = programs.iter().map(|&(n, p)| (n, Pid(p))).collect();
        build_pat(1, version, &programs)
    }

    /// A PMT section for program 1 with `(stream_type, pid)` streams.
    fn pmt(pcr_pid: u16, streams: &[(u8, u16)], version: u8) -> Vec<u8> {
        let streams: Vec<(u8, Pid)> = streams.iter().map(|&(t, p)| (t, Pid(p))).collect();
        build_pmt(1, version, Pid(pcr_pid), &streams)
    }

    fn collect(asm: &mut PayloadAssembler, pusi: bool, payload: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        asm.push(pusi, payload, |s| out.push(s.to_vec()));
        out
    }

    #[test]
    fn parse_fields_and_tell_a_bad_crc() {
        let s = pat(&[(0, 0x10), (1, 0x1000)], 3);
        let h = Section::parse(&s).unwrap();
        assert_eq!((h.table_id(), h.version(), h.current_next()), (0, 3, true));
        assert_eq!(
            h.pat_entries().collect::<Vec<_>>(),
            vec![(0, Pid(0x10)), (1, Pid(0x1000))]
        );
        assert_eq!(
            h.crc(),
            u32::from_be_bytes(s[s.len() - 4..].try_into().unwrap())
        );
        let m = pmt(0x100, &[(0x1b, 0x100), (0x0f, 0x101)], 0);
        let m_s = Section::parse(&m).unwrap();
        assert_eq!(m_s.pmt_pcr_pid(), Some(Pid(0x100)));
        assert_eq!(
            m_s.pmt_streams().unwrap().collect::<Vec<_>>(),
            vec![(0x1b, Pid(0x100)), (0x0f, Pid(0x101))]
        );
        let mut bad = m.clone();
        bad[13] ^= 1;
        assert_eq!(Section::parse(&bad).unwrap_err(), SectionError::Crc);
        assert!(Section::try_new(&bad).is_none());
        // program_info_length past the body: no streams.
        let mut long_info = m.clone();
        long_info[10] = 0xf3;
        set_version(&mut long_info, 0);
        assert!(Section::parse(&long_info).unwrap().pmt_streams().is_none());
        assert_eq!(
            Section::parse(&m[..m.len() - 1]).unwrap_err(),
            SectionError::Malformed
        );
    }

    #[test]
    fn reassembles_across_packets_with_pointer_field() {
        let m = pmt(
            0x100,
            &(0..60).map(|i| (0x06, 0x200 + i)).collect::<Vec<_>>(),
            1,
        );
        assert!(m.len() > 184);
        let mut asm = PayloadAssembler::new();
        // Packet 1: pointer 0, the first 183 bytes.
        let mut p1 = vec![0u8];
        p1.extend_from_slice(&m[..183]);
        assert!(collect(&mut asm, true, &p1).is_empty());
        // Packet 2: the rest of the section, then a new PAT starting after the pointer.
        let rest = &m[183..];
        let pat_s = pat(&[(1, 0x1000)], 0);
        let mut p2 = vec![rest.len() as u8];
        p2.extend_from_slice(rest);
        p2.extend_from_slice(&pat_s);
        p2.extend_from_slice(&pat_s);
        p2.resize(184, 0xff);
        let got = collect(&mut asm, true, &p2);
        assert_eq!(got, vec![m.clone(), pat_s.clone(), pat_s.clone()]);
        // A section continued without its start is ignored; a bad pointer is counted.
        let mut fresh = PayloadAssembler::new();
        assert!(collect(&mut fresh, false, &m[..100]).is_empty());
        assert!(collect(&mut fresh, true, &[200, 1, 2]).is_empty());
        assert_eq!(fresh.bad_pointer, 1);
        // A reset (continuity lost) drops the partial section.
        assert!(collect(&mut asm, true, &p1).is_empty());
        asm.reset();
        assert!(collect(&mut asm, false, &m[183..]).is_empty());
    }

    #[test]
    fn header_split_across_packets() {
        let s = pat(&[(1, 0x1000)], 0);
        let mut asm = PayloadAssembler::new();
        // A section starting 2 bytes before the end of the packet: its header completes
        // in the next one.
        let mut p1 = vec![0u8; 184];
        p1[0] = 181; // pointer: skip 181 bytes (tail of an unknown section)
        p1[182..184].copy_from_slice(&s[..2]);
        assert!(collect(&mut asm, true, &p1).is_empty());
        assert_eq!(collect(&mut asm, false, &s[2..]), vec![s.clone()]);
    }

    #[test]
    fn oversize_section_is_dropped_and_counted() {
        // section_length 1022: one more than a PAT / PMT may have.
        let mut p = vec![0u8, TABLE_PMT, 0xb3, 0xfe];
        p.resize(184, 0);
        let mut asm = PayloadAssembler::new();
        assert!(collect(&mut asm, true, &p).is_empty());
        assert_eq!(asm.oversize, 1);
    }
}
