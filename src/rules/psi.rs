//! PSI section reassembly and PAT / PMT parsing (ISO/IEC 13818-1 2.4.4) for the
//! TR 101 290 analyser: just what Priority 1 needs, zero-copy over a fixed buffer.
//!
//! [`SectionAsm`] rebuilds sections from the payloads of one PID, honouring
//! `pointer_field` (2.4.4.2): several sections may start in one packet, a section may span
//! packets, `0xFF` stuffing ends the sections of a packet. A continuity error (the caller
//! says so) drops the partial section, because its bytes are no longer known.
//! No allocation after construction; no panics on any input.

/// table_id of a program_association_section.
pub const TABLE_PAT: u8 = 0x00;
/// table_id of a TS_program_map_section.
pub const TABLE_PMT: u8 = 0x02;
/// Largest PAT / PMT section: 3-byte header + section_length ≤ 1021 (2.4.4.4, 2.4.4.9).
pub const MAX_SECTION_LEN: usize = 1024;

/// CRC_32 of Annex A over a whole section including its CRC: 0 when the section is intact.
#[inline]
pub fn crc_ok(section: &[u8]) -> bool {
    mpeg2ts_reader::mpegts_crc::sum32(section) == 0
}

/// Reassembles the PSI sections carried on one PID.
pub struct SectionAsm {
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

impl Default for SectionAsm {
    fn default() -> Self {
        SectionAsm::new()
    }
}

impl SectionAsm {
    pub fn new() -> SectionAsm {
        SectionAsm {
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
    /// `on_section` with every section it completes, in order (CRC not checked here).
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
            let section_length = usize::from(self.buf[1] & 0x0f) << 8 | usize::from(self.buf[2]);
            let need = 3 + section_length;
            if need > MAX_SECTION_LEN {
                self.oversize += 1;
                self.reset();
                // Drop the rest of this packet: we cannot tell where the next section starts.
                return data.len();
            }
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

/// Fields of the long section header common to PAT and PMT (2.4.4.4, 2.4.4.9).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SectionHeader {
    pub table_id: u8,
    /// transport_stream_id (PAT) or program_number (PMT).
    pub table_id_extension: u16,
    pub version: u8,
    pub current_next: bool,
    pub section_number: u8,
    pub last_section_number: u8,
}

/// Parse the long header of a whole section (as [`SectionAsm`] emits it); `None` when the
/// section is too short or lacks section_syntax_indicator.
pub fn header(section: &[u8]) -> Option<SectionHeader> {
    if section.len() < 12 || section[1] & 0x80 == 0 {
        return None;
    }
    Some(SectionHeader {
        table_id: section[0],
        table_id_extension: u16::from(section[3]) << 8 | u16::from(section[4]),
        version: (section[5] >> 1) & 0x1f,
        current_next: section[5] & 0x01 != 0,
        section_number: section[6],
        last_section_number: section[7],
    })
}

/// The last 4 bytes of a section: its CRC_32 (used to tell a changed table cheaply).
#[inline]
pub fn crc_field(section: &[u8]) -> u32 {
    match section.len().checked_sub(4).and_then(|i| section.get(i..)) {
        Some(&[a, b, c, d]) => u32::from_be_bytes([a, b, c, d]),
        _ => 0,
    }
}

/// `(program_number, PID)` pairs of a PAT section; program_number 0 is the network PID.
pub fn pat_programs(section: &[u8]) -> impl Iterator<Item = (u16, u16)> + '_ {
    let body = section
        .get(8..section.len().saturating_sub(4))
        .unwrap_or(&[]);
    body.chunks_exact(4).map(|c| {
        (
            u16::from(c[0]) << 8 | u16::from(c[1]),
            u16::from(c[2] & 0x1f) << 8 | u16::from(c[3]),
        )
    })
}

/// PCR_PID and `(stream_type, elementary_PID)` of a PMT section; `None` when the
/// program_info_length runs past the section.
pub fn pmt_streams(section: &[u8]) -> Option<(u16, impl Iterator<Item = (u8, u16)> + '_)> {
    let end = section.len().checked_sub(4)?;
    let pcr_pid = u16::from(*section.get(8)? & 0x1f) << 8 | u16::from(*section.get(9)?);
    let info_len = usize::from(*section.get(10)? & 0x0f) << 8 | usize::from(*section.get(11)?);
    let mut pos = 12usize.checked_add(info_len)?;
    if pos > end {
        return None;
    }
    let it = std::iter::from_fn(move || {
        let e = section.get(pos..end)?;
        if e.len() < 5 {
            return None;
        }
        let stream_type = e[0];
        let pid = u16::from(e[1] & 0x1f) << 8 | u16::from(e[2]);
        let es_info_len = usize::from(e[3] & 0x0f) << 8 | usize::from(e[4]);
        pos += 5 + es_info_len;
        Some((stream_type, pid))
    });
    Some((pcr_pid, it))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A whole section: table_id, long header, `body`, correct CRC_32.
    pub fn section(table_id: u8, ext: u16, version: u8, body: &[u8]) -> Vec<u8> {
        let section_length = 5 + body.len() + 4;
        let mut s = vec![
            table_id,
            0xb0 | (section_length >> 8) as u8,
            section_length as u8,
            (ext >> 8) as u8,
            ext as u8,
            0xc1 | (version & 0x1f) << 1,
            0,
            0,
        ];
        s.extend_from_slice(body);
        let crc = mpeg2ts_reader::mpegts_crc::sum32(&s);
        s.extend_from_slice(&crc.to_be_bytes());
        s
    }

    /// A PAT section listing `(program_number, pmt_pid)`.
    pub fn pat(programs: &[(u16, u16)], version: u8) -> Vec<u8> {
        let body: Vec<u8> = programs
            .iter()
            .flat_map(|&(n, p)| [(n >> 8) as u8, n as u8, 0xe0 | (p >> 8) as u8, p as u8])
            .collect();
        section(TABLE_PAT, 1, version, &body)
    }

    /// A PMT section for program 1 with `(stream_type, pid)` streams.
    pub fn pmt(pcr_pid: u16, streams: &[(u8, u16)], version: u8) -> Vec<u8> {
        let mut body = vec![0xe0 | (pcr_pid >> 8) as u8, pcr_pid as u8, 0xf0, 0];
        for &(t, p) in streams {
            body.extend_from_slice(&[t, 0xe0 | (p >> 8) as u8, p as u8, 0xf0, 0]);
        }
        section(TABLE_PMT, 1, version, &body)
    }

    fn collect(asm: &mut SectionAsm, pusi: bool, payload: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        asm.push(pusi, payload, |s| out.push(s.to_vec()));
        out
    }

    #[test]
    fn crc_and_fields() {
        let s = pat(&[(0, 0x10), (1, 0x1000)], 3);
        assert!(crc_ok(&s));
        let h = header(&s).unwrap();
        assert_eq!((h.table_id, h.version, h.current_next), (0, 3, true));
        assert_eq!(
            pat_programs(&s).collect::<Vec<_>>(),
            vec![(0, 0x10), (1, 0x1000)]
        );
        let m = pmt(0x100, &[(0x1b, 0x100), (0x0f, 0x101)], 0);
        let (pcr, es) = pmt_streams(&m).unwrap();
        assert_eq!(pcr, 0x100);
        assert_eq!(es.collect::<Vec<_>>(), vec![(0x1b, 0x100), (0x0f, 0x101)]);
        let mut bad = m.clone();
        bad[13] ^= 1;
        assert!(!crc_ok(&bad));
    }

    #[test]
    fn reassembles_across_packets_with_pointer_field() {
        let m = pmt(
            0x100,
            &(0..60).map(|i| (0x06, 0x200 + i)).collect::<Vec<_>>(),
            1,
        );
        assert!(m.len() > 184);
        let mut asm = SectionAsm::new();
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
        let mut fresh = SectionAsm::new();
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
        let mut asm = SectionAsm::new();
        // A section starting 2 bytes before the end of the packet: its header completes
        // in the next one.
        let mut p1 = vec![0u8; 184];
        p1[0] = 181; // pointer: skip 181 bytes (tail of an unknown section)
        p1[182..184].copy_from_slice(&s[..2]);
        assert!(collect(&mut asm, true, &p1).is_empty());
        assert_eq!(collect(&mut asm, false, &s[2..]), vec![s.clone()]);
    }
}
