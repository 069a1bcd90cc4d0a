//! PSI sections (ISO/IEC 13818-1 2.4.4): reassembly from TS packets, CRC_32, PAT/PMT
//! fields, version rewriting and re-packetization.
//!
//! Used by the splicer ([`super::splice`]) to cache each source's PAT/PMT and to emit them
//! with a rewritten `version_number`. Sections are kept as owned byte vectors (PSI is a few
//! packets per second, so copying it is cheap); buffers are reused.

use super::{ContinuityCounter, PACKET_LEN, Pid, SYNC_BYTE, TsPacket};

/// table_id of a program_association_section.
pub const TABLE_PAT: u8 = 0x00;
/// table_id of a TS_program_map_section.
pub const TABLE_PMT: u8 = 0x02;
/// Largest PSI section (3-byte header + 1021 bytes) for PAT/PMT (2.4.4.4, 2.4.4.9).
pub const MAX_SECTION_LEN: usize = 1024;

/// CRC-32/MPEG-2 (polynomial 0x04C11DB7, init 0xFFFFFFFF, no reflection, no final xor),
/// the CRC_32 of Annex A. Over a whole section including its CRC it yields 0.
pub fn crc32_mpeg2(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut c = (i as u32) << 24;
            for _ in 0..8 {
                c = if c & 0x8000_0000 != 0 {
                    (c << 1) ^ 0x04c1_1db7
                } else {
                    c << 1
                };
            }
            *e = c;
        }
        t
    });
    data.iter().fold(0xffff_ffff, |crc, &b| {
        (crc << 8) ^ table[((crc >> 24) as u8 ^ b) as usize]
    })
}

/// Borrowed view of one complete long-form section (section_syntax_indicator = 1).
#[derive(Clone, Copy, Debug)]
pub struct Section<'a>(&'a [u8]);

impl<'a> Section<'a> {
    /// `buf` must be exactly one section (3 + section_length bytes) with a valid CRC_32.
    pub fn try_new(buf: &'a [u8]) -> Option<Section<'a>> {
        if buf.len() < 12 || buf[1] & 0x80 == 0 || section_len(buf) != Some(buf.len()) {
            return None;
        }
        (crc32_mpeg2(buf) == 0).then_some(Section(buf))
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
    /// PAT entries `(program_number, PID)`; program 0 is the network PID.
    pub fn pat_entries(&self) -> impl Iterator<Item = (u16, Pid)> + 'a {
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
    /// PMT elementary streams `(stream_type, elementary_PID)`.
    pub fn pmt_streams(&self) -> Vec<(u8, Pid)> {
        let b = self.body();
        let mut out = Vec::new();
        if b.len() < 4 {
            return out;
        }
        let info_len = usize::from(u16::from_be_bytes([b[2] & 0x0f, b[3]]));
        let mut i = 4 + info_len;
        while i + 5 <= b.len() {
            let es_info = usize::from(u16::from_be_bytes([b[i + 3] & 0x0f, b[i + 4]]));
            out.push((b[i], Pid(u16::from_be_bytes([b[i + 1] & 0x1f, b[i + 2]]))));
            i += 5 + es_info;
        }
        out
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
    (len <= MAX_SECTION_LEN + 3).then_some(len)
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

/// Reassembles sections of one PID from its TS packets (2.4.4.2: pointer_field on
/// payload_unit_start). A lost packet (continuity error) drops the section in progress;
/// a duplicate packet is ignored. Sections with a bad CRC are dropped.
#[derive(Debug, Default)]
pub struct SectionAssembler {
    buf: Vec<u8>,
    /// A section is in progress in `buf`.
    active: bool,
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
            Some(last) if last.next() != cc && !p.discontinuity() => self.reset(),
            _ => {}
        }
        self.last_cc = Some(cc);
        let payload = p.payload();
        let mut data = payload;
        if p.payload_unit_start() {
            let Some((&ptr, rest)) = payload.split_first() else {
                return self.reset();
            };
            let ptr = usize::from(ptr);
            if ptr > rest.len() {
                return self.reset();
            }
            if self.active {
                self.buf.extend_from_slice(&rest[..ptr]);
                self.finish(&mut on_section);
            }
            self.reset();
            self.active = true;
            data = &rest[ptr..];
        } else if !self.active {
            return;
        }
        // One or more sections may start here; 0xFF as table_id is stuffing to the end.
        for &b in data {
            if !self.active {
                if b == 0xff {
                    break;
                }
                self.active = true;
            }
            self.buf.push(b);
            if section_len(&self.buf).is_some_and(|n| n == self.buf.len()) {
                self.finish(&mut on_section);
            } else if self.buf.len() >= 3 && section_len(&self.buf).is_none() {
                self.reset();
                break;
            }
        }
    }

    /// Continuity counter of the last packet accepted.
    pub fn last_cc(&self) -> Option<ContinuityCounter> {
        self.last_cc
    }

    fn finish(&mut self, on_section: &mut impl FnMut(Section<'_>)) {
        if let Some(s) = section_len(&self.buf)
            .filter(|&n| n <= self.buf.len())
            .and_then(|n| Section::try_new(&self.buf[..n]))
        {
            on_section(s);
        }
        self.buf.clear();
        self.active = false;
    }

    fn reset(&mut self) {
        self.buf.clear();
        self.active = false;
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
            b.pmt_streams(),
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
}
