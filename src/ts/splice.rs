//! Clean switching between non-identical transport streams (`mode = "switch"`), sans-IO.
//!
//! The [`Splicer`] turns the packets of whichever source is active into one output that a
//! decoder accepts across switches, although the sources differ in PIDs, PSI versions,
//! continuity-counter phase and PCR time base. It follows ISO/IEC 13818-1:
//!
//! * **Continuity and time base (2.4.3.3, 2.4.3.5).** After a switch, the first packet of
//!   every PID carries `discontinuity_indicator = 1`. A packet that already has an adaptation
//!   field (length ≥ 1) is copied with the flag set; otherwise an adaptation-field-only packet
//!   (adaptation_field_control `10`, 183-byte field: flags with only the discontinuity bit,
//!   then stuffing) is inserted before it on the same PID, with CC = first CC − 1 (mod 16).
//!   Since a packet without payload does not increment the counter, the source's packet then
//!   follows it continuously and passes through untouched. On the PCR_PID the flag announces
//!   a system time-base discontinuity: the next PCR is a sample of the new clock; on other
//!   PIDs it puts them in the discontinuity state, so their PTS/DTS refer to the new time base.
//!   CCs are therefore never rewritten on elementary streams: every source packet but one
//!   per PID per switch leaves zero copy.
//! * **Whole PES only.** After a switch, payload packets of a PID are dropped until its first
//!   `payload_unit_start_indicator`, so the decoder never gets the tail of a PES packet (or
//!   section) whose head belonged to nothing. The first payload packet is marked again if an
//!   adaptation-only packet (e.g. a PCR-only packet) was marked before it, because the dropped
//!   packets left a CC gap. Packets without payload pass (they carry PCRs).
//! * **PSI (2.4.4).** The splicer reassembles the PAT (PID 0) and the PMTs (the PIDs the PAT
//!   names) of *every* source it is given, active or not, and caches the last complete,
//!   CRC-valid section of each. On the active source these PIDs are re-packetized from the
//!   sections (pointer_field 0, one section per packet run, output CC continuing the output's
//!   own counter on that PID), so the splicer can insert PSI at will without breaking
//!   continuity. When a switch happens, the new source's PAT and then its PMTs are emitted
//!   from the cache before any of its other packets; if the source's PSI is not yet cached,
//!   its other packets are dropped until it is. Versions: every emitted PAT/PMT is compared
//!   (all fields but version_number and CRC_32) with what the output carried last for that
//!   table (PAT, or PMT of the same program_number on the same PID): equal content keeps the
//!   output's version, different content gets the output's last version + 1 (mod 32) and a
//!   recomputed CRC_32. Before the first switch this reproduces the source's own versions;
//!   after it, versions stay consistent for as long as the source plays, and change exactly
//!   when the content changes, which is when a decoder must re-read the table (2.4.4.5).
//!   A regenerated PSI packet byte-identical to the source packet is passed zero copy.
//! * **Null packets** (PID 0x1FFF) pass through.
//!
//! Copied packets are written into a `BytesMut` arena allocated in chunks and reused, so the
//! steady state makes no allocation per packet. Each output `Bytes` is one 188-byte packet.

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};

use super::psi::{self, Section, SectionAssembler, TABLE_PAT, TABLE_PMT};
use super::{ContinuityCounter, NULL_PID, PACKET_LEN, Pid, SYNC_BYTE, TsPacket};

/// Bytes allocated at a time for copied packets.
const ARENA_BYTES: usize = 64 * PACKET_LEN;
const PIDS: usize = 8192;
const NO_CC: u8 = 0xff;

/// Counters of the splicer (plain fields; the metrics module exports them).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SpliceStats {
    /// TS packets received from the active source.
    pub packets_in: u64,
    /// TS packets appended to the output.
    pub packets_out: u64,
    /// Source packets emitted as a modified copy (discontinuity flag set, PSI re-packetized).
    pub rewritten: u64,
    /// Packets created by the splicer (adaptation-only packets, PSI emitted on a switch).
    pub inserted: u64,
    /// Active-source packets dropped: waiting for PSI or a unit start after a switch, bad
    /// sync or length, reserved adaptation_field_control.
    pub dropped: u64,
    /// Number of switches.
    pub switches: u64,
}

/// PSI state of one source.
#[derive(Default)]
struct SourcePsi {
    pat: Option<Vec<u8>>,
    /// `(program_number, PMT PID)` from the PAT (program 0, the network PID, excluded).
    programs: Vec<(u16, Pid)>,
    pmts: HashMap<u16, Vec<u8>>,
    asm: HashMap<Pid, SectionAssembler>,
}

impl SourcePsi {
    fn is_psi_pid(&self, pid: Pid) -> bool {
        pid == Pid(0) || self.programs.iter().any(|&(_, p)| p == pid)
    }
    fn ready(&self) -> bool {
        self.pat.is_some() && self.programs.iter().all(|(n, _)| self.pmts.contains_key(n))
    }
    /// Cache a complete section from `pid`; true when it is the PAT or a PMT.
    fn cache(&mut self, pid: Pid, s: &Section<'_>) -> bool {
        if !s.current_next() || s.section_number() != 0 || s.last_section_number() != 0 {
            return false;
        }
        if pid == Pid(0) && s.table_id() == TABLE_PAT {
            self.programs.clear();
            self.programs
                .extend(s.pat_entries().filter(|&(n, _)| n != 0));
            let programs = &self.programs;
            self.pmts
                .retain(|n, _| programs.iter().any(|(p, _)| p == n));
            let pat = self.pat.get_or_insert_with(Vec::new);
            pat.clear();
            pat.extend_from_slice(s.bytes());
            return true;
        }
        if s.table_id() == TABLE_PMT
            && self
                .programs
                .iter()
                .any(|&(n, p)| p == pid && n == s.table_id_extension())
        {
            let pmt = self.pmts.entry(s.table_id_extension()).or_default();
            pmt.clear();
            pmt.extend_from_slice(s.bytes());
            return true;
        }
        false
    }
}

/// A PAT/PMT as last emitted on the output.
struct OutTable {
    pid: Pid,
    section: Vec<u8>,
}

/// Sans-IO switcher between non-identical sources; see the module docs.
///
/// Feed it every source's datagrams with [`Splicer::push`] (inactive ones are only scanned for
/// PAT/PMT, so a switch can emit the new PSI at once) and tell it the active source with
/// [`Splicer::switch_to`]. Nothing is emitted before the first `switch_to`.
pub struct Splicer {
    active: Option<usize>,
    /// There was output before the current source: its packets must be marked.
    marking: bool,
    /// The active source's PAT/PMT have not been emitted since the switch.
    psi_pending: bool,
    sources: Vec<SourcePsi>,
    /// Switch generation; `marked[pid] == generation` once the PID has been marked.
    generation: u32,
    marked: Vec<u32>,
    /// `started[pid] == generation` once a payload unit start of the PID was emitted.
    started: Vec<u32>,
    /// Last CC emitted per PID (NO_CC when none).
    out_cc: Vec<u8>,
    out_pat: Option<OutTable>,
    out_pmts: HashMap<u16, OutTable>,
    /// Sections completed by the packet being processed: `(pid, start, end)` in `done_buf`.
    done: Vec<(Pid, usize, usize)>,
    done_buf: Vec<u8>,
    scratch: Vec<u8>,
    arena: BytesMut,
    pub stats: SpliceStats,
}

impl Default for Splicer {
    fn default() -> Self {
        Self::new()
    }
}

impl Splicer {
    pub fn new() -> Splicer {
        Splicer {
            active: None,
            marking: false,
            psi_pending: false,
            sources: Vec::new(),
            generation: 1,
            marked: vec![0; PIDS],
            started: vec![0; PIDS],
            out_cc: vec![NO_CC; PIDS],
            out_pat: None,
            out_pmts: HashMap::new(),
            done: Vec::new(),
            done_buf: Vec::new(),
            scratch: Vec::new(),
            arena: BytesMut::with_capacity(ARENA_BYTES),
            stats: SpliceStats::default(),
        }
    }

    /// The source whose packets are emitted.
    pub fn active(&self) -> Option<usize> {
        self.active
    }

    /// Make `source` the active source. Its PAT/PMT go out at the start of the next
    /// [`Splicer::push`] of that source (or as soon as they have been seen), then its packets,
    /// each PID starting at a unit start with a discontinuity_indicator.
    pub fn switch_to(&mut self, source: usize) {
        if self.active == Some(source) {
            return;
        }
        self.marking = self.marking || self.active.is_some();
        self.active = Some(source);
        self.psi_pending = true;
        self.generation = self.generation.wrapping_add(1);
        if self.generation == 0 {
            // Generation 0 is what fresh tables hold; skip it so no PID looks already seen.
            self.marked.fill(0);
            self.started.fill(0);
            self.generation = 1;
        }
        self.stats.switches += 1;
        self.source(source);
    }

    fn source(&mut self, source: usize) -> &mut SourcePsi {
        if self.sources.len() <= source {
            self.sources.resize_with(source + 1, SourcePsi::default);
        }
        &mut self.sources[source]
    }

    /// Push the TS packets of one datagram (whole 188-byte packets, RTP header removed) from
    /// `source`. For the active source, append to `out` the packets to send, in order, one
    /// `Bytes` per TS packet: unchanged packets are slices of `payload` (zero copy).
    /// Other sources are only scanned for PSI. Invalid packets are counted and skipped.
    pub fn push(&mut self, source: usize, payload: &Bytes, out: &mut Vec<Bytes>) {
        self.source(source);
        let active = self.active == Some(source);
        if active && self.psi_pending && self.sources[source].ready() {
            self.emit_cached_psi(source, out);
        }
        for (i, chunk) in payload.chunks_exact(PACKET_LEN).enumerate() {
            let Some(p) = TsPacket::try_new(chunk) else {
                if active {
                    self.stats.dropped += 1;
                }
                continue;
            };
            let off = i * PACKET_LEN;
            let pid = p.pid();
            if active {
                self.stats.packets_in += 1;
            }
            if self.sources[source].is_psi_pid(pid) {
                self.handle_psi(
                    source,
                    active,
                    &p,
                    payload.slice(off..off + PACKET_LEN),
                    out,
                );
                continue;
            }
            if !active {
                continue;
            }
            if self.psi_pending {
                self.stats.dropped += 1;
                continue;
            }
            if pid == NULL_PID {
                self.emit(payload.slice(off..off + PACKET_LEN), out);
                continue;
            }
            self.handle_es(&p, payload.slice(off..off + PACKET_LEN), out);
        }
        if payload.len() % PACKET_LEN != 0 && active {
            self.stats.dropped += 1;
        }
    }

    fn emit(&mut self, pkt: Bytes, out: &mut Vec<Bytes>) {
        if let Some(p) = TsPacket::try_new(&pkt) {
            self.out_cc[usize::from(p.pid().0)] = p.cc().0;
        }
        self.stats.packets_out += 1;
        out.push(pkt);
    }

    /// A fresh, zeroed 188-byte packet at the end of the arena.
    fn arena_packet(&mut self) -> &mut [u8] {
        if self.arena.capacity() - self.arena.len() < PACKET_LEN {
            self.arena.reserve(ARENA_BYTES);
        }
        let start = self.arena.len();
        self.arena.resize(start + PACKET_LEN, 0);
        &mut self.arena[start..]
    }

    fn take_arena(&mut self, out: &mut Vec<Bytes>) {
        while !self.arena.is_empty() {
            let pkt = self.arena.split_to(PACKET_LEN).freeze();
            self.emit(pkt, out);
        }
    }

    fn handle_es(&mut self, p: &TsPacket<'_>, pkt: Bytes, out: &mut Vec<Bytes>) {
        let pid = usize::from(p.pid().0);
        let g = self.generation;
        let afc = (p.bytes()[3] >> 4) & 0x03;
        if afc == 0 {
            self.stats.dropped += 1;
            return;
        }
        let mut mark = self.marking && self.marked[pid] != g;
        if self.marking && p.has_payload() && self.started[pid] != g {
            if !p.payload_unit_start() {
                self.stats.dropped += 1;
                return;
            }
            self.started[pid] = g;
            // An adaptation-only packet was marked, then payload packets were dropped: the CC
            // gap needs its own indicator.
            mark = true;
        }
        if !mark {
            self.emit(pkt, out);
            return;
        }
        self.marked[pid] = g;
        let b = p.bytes();
        if p.has_adaptation() && b[4] > 0 {
            if b[5] & 0x80 != 0 {
                self.emit(pkt, out);
                return;
            }
            let a = self.arena_packet();
            a.copy_from_slice(b);
            a[5] |= 0x80;
            self.stats.rewritten += 1;
        } else {
            let cc = (b[3].wrapping_sub(1)) & 0x0f;
            let a = self.arena_packet();
            a[0] = SYNC_BYTE;
            a[1] = b[1] & 0x1f;
            a[2] = b[2];
            a[3] = 0x20 | cc;
            a[4] = 183;
            a[5] = 0x80;
            a[6..].fill(0xff);
            self.stats.inserted += 1;
            self.take_arena(out);
            self.emit(pkt, out);
            return;
        }
        self.take_arena(out);
    }

    fn handle_psi(
        &mut self,
        source: usize,
        active: bool,
        p: &TsPacket<'_>,
        pkt: Bytes,
        out: &mut Vec<Bytes>,
    ) {
        let pid = p.pid();
        self.done.clear();
        self.done_buf.clear();
        let src = &mut self.sources[source];
        let (done, done_buf) = (&mut self.done, &mut self.done_buf);
        src.asm.entry(pid).or_default().push(p, |s| {
            let start = done_buf.len();
            done_buf.extend_from_slice(s.bytes());
            done.push((pid, start, done_buf.len()));
        });
        for &(_, start, end) in &self.done {
            if let Some(s) = Section::try_new(&self.done_buf[start..end]) {
                src.cache(pid, &s);
            }
        }
        if !active {
            return;
        }
        if self.psi_pending {
            if self.sources[source].ready() {
                // The table set is complete with this packet: it goes out now, from the cache.
                self.emit_cached_psi(source, out);
            }
            return;
        }
        for k in 0..self.done.len() {
            let (pid, start, end) = self.done[k];
            self.scratch.clear();
            self.scratch.extend_from_slice(&self.done_buf[start..end]);
            self.emit_section(pid, Some(&pkt), false, out);
        }
    }

    /// Emit the active source's cached PAT then PMTs (after a switch).
    fn emit_cached_psi(&mut self, source: usize, out: &mut Vec<Bytes>) {
        self.psi_pending = false;
        let src = &self.sources[source];
        let Some(pat) = &src.pat else { return };
        let mut tables: Vec<(Pid, Vec<u8>)> = vec![(Pid(0), pat.clone())];
        for (n, pid) in &src.programs {
            if let Some(pmt) = src.pmts.get(n) {
                tables.push((*pid, pmt.clone()));
            }
        }
        for (pid, section) in tables {
            self.scratch.clear();
            self.scratch.extend_from_slice(&section);
            self.emit_section(pid, None, true, out);
        }
    }

    /// Emit the section in `scratch` on `pid`, with the output's version for its content.
    /// `src` is the source packet the section ended in: if the regenerated packet is
    /// identical to it, it is sent instead (zero copy). `inserted` counts the packets as
    /// inserted rather than rewritten.
    fn emit_section(
        &mut self,
        pid: Pid,
        src: Option<&Bytes>,
        inserted: bool,
        out: &mut Vec<Bytes>,
    ) {
        let Some(s) = Section::try_new(&self.scratch) else {
            return;
        };
        let table = match s.table_id() {
            TABLE_PAT if pid == Pid(0) => Some(self.out_pat.as_mut()),
            TABLE_PMT => Some(self.out_pmts.get_mut(&s.table_id_extension())),
            _ => None,
        };
        if let Some(prev) = table {
            let version = match prev {
                Some(prev) => {
                    let p = Section::try_new(&prev.section)
                        .map(|ps| (ps.version(), prev.pid == pid && ps.same_content(&s)));
                    match p {
                        Some((v, true)) => v,
                        Some((v, false)) => (v + 1) & 0x1f,
                        None => s.version(),
                    }
                }
                None => s.version(),
            };
            if version != s.version() {
                psi::set_version(&mut self.scratch, version);
            }
            let rec = OutTable {
                pid,
                section: self.scratch.clone(),
            };
            if pid == Pid(0) && self.scratch[0] == TABLE_PAT {
                self.out_pat = Some(rec);
            } else {
                let program = u16::from_be_bytes([self.scratch[3], self.scratch[4]]);
                self.out_pmts.insert(program, rec);
            }
        }
        let n_packets = 1 + self.scratch.len().saturating_sub(183).div_ceil(184);
        let last = self.out_cc[usize::from(pid.0)];
        let cc = if last != NO_CC {
            ContinuityCounter(last).next()
        } else {
            // First on this PID: take the source's phase, so an untouched stream stays
            // byte-identical (and zero copy).
            let src_cc = src
                .and_then(|b| TsPacket::try_new(b).map(|p| p.cc().0))
                .unwrap_or(0);
            ContinuityCounter((src_cc + 16 - ((n_packets - 1) % 16) as u8) & 0x0f)
        };
        if self.arena.capacity() - self.arena.len() < n_packets * PACKET_LEN {
            self.arena.reserve(ARENA_BYTES.max(n_packets * PACKET_LEN));
        }
        let start = self.arena.len();
        psi::packetize(&self.scratch, pid, cc, &mut self.arena);
        if let Some(src) = src
            && n_packets == 1
            && self.arena[start..] == src[..]
        {
            self.arena.truncate(start);
            self.emit(src.clone(), out);
            return;
        }
        if inserted {
            self.stats.inserted += n_packets as u64;
        } else {
            self.stats.rewritten += n_packets as u64;
        }
        self.take_arena(out);
    }
}

/// True when a TS packet starts a random access point: random_access_indicator in its
/// adaptation field, or (for H.264 video) a PES start whose payload in this packet has an
/// IDR slice (nal_unit_type 5) or a sequence parameter set (7). The NAL scan assumes H.264:
/// use it on an H.264 PID only (MPEG-2 slice start codes look like NAL headers); other
/// codecs rely on the indicator, which encoders set on key frames.
pub fn is_random_access(p: &TsPacket<'_>) -> bool {
    let b = p.bytes();
    if p.has_adaptation() && b[4] > 0 && b[5] & 0x40 != 0 {
        return true;
    }
    if !p.payload_unit_start() {
        return false;
    }
    let pl = p.payload();
    if pl.len() < 9 || pl[..3] != [0, 0, 1] || pl[3] & 0xf0 != 0xe0 {
        return false;
    }
    let es = pl.get(9 + usize::from(pl[8])..).unwrap_or(&[]);
    es.windows(4)
        .any(|w| w[..3] == [0, 0, 1] && w[3] & 0x80 == 0 && matches!(w[3] & 0x1f, 5 | 7))
}
