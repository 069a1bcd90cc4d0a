//! ETSI TR 101 290 Priority 1 analyser (clause 5.2.1, Table 5.0a), sans-IO.
//!
//! [`Tr101290`] is fed every TS packet with its arrival time ([`Tr101290::push`]); the time
//! based indicators (PAT / PMT absent for more than 0.5 s, PID_error) are checked lazily on
//! each push and by [`Tr101290::handle_timeout`], which the glue calls at
//! [`Tr101290::poll_timeout`] so that a source that stops sending still raises them.
//! No clock is read, nothing is allocated per packet in steady state (per-PID state lives in
//! a fixed 8192-entry table; PAT / PMT are re-parsed only when their CRC changes) and no
//! input panics.
//!
//! Indicators and their reading here:
//! - 1.1 TS_sync_loss: sync is acquired after 5 consecutive sync bytes and lost after 2 or
//!   more consecutive bad ones; one count per loss. While sync is lost "all other indicators
//!   are invalid": packets are not analysed and the timers are suspended; on re-acquisition
//!   the continuity baselines are forgotten and the timers restart.
//! - 1.2 Sync_byte_error: every packet whose first byte is not 0x47 (or that is not 188
//!   bytes long). Such a packet is not parsed: its header cannot be trusted, so a packet
//!   lost this way may also show as a continuity error on its PID.
//! - 1.3 / 1.3.a PAT_error_2: no CRC-valid section with table_id 0x00 on PID 0 for more than
//!   `pat_period` (one count per period of absence), a section with another table_id on
//!   PID 0, or transport_scrambling_control ≠ 00 on PID 0.
//! - 1.4 Continuity_count_error: wrong order, a packet occurring more than twice, a lost
//!   packet (ISO/IEC 13818-1 2.4.3.3). One duplicate is legal (and is not parsed twice);
//!   discontinuity_indicator resets the expectation; packets without payload must repeat
//!   the counter; the null PID is excluded. One count per offending packet.
//! - 1.5 / 1.5.a PMT_error_2: a program_map_PID of the PAT without a CRC-valid PMT section
//!   (table_id 0x02) for more than `pmt_period`, or scrambled.
//! - 1.6 PID_error: a PID referenced in a PMT that does not occur for `pid_error_period`
//!   (from when it was last seen or first referenced), one count per period of absence.
//!
//! CRC_32 mismatches on PAT / PMT sections (indicator 2.2, priority 2) are counted apart
//! ([`Tr101290::crc_errors`]); such a section does not count as present.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::ts::psi::{PayloadAssembler, Section, SectionError, TABLE_PAT, TABLE_PMT};
use crate::ts::{NULL_PID, PACKET_LEN, Pid, SYNC_BYTE, TsPacket};

/// PID of the program association table.
pub const PAT_PID: Pid = Pid(0);
/// Events kept for [`Tr101290::poll_event`]; older ones are dropped (and counted) first.
pub const EVENT_QUEUE: usize = 256;
/// Consecutive good sync bytes to acquire sync (1.1).
pub const SYNC_ACQUIRE_PACKETS: u8 = 5;
/// Consecutive bad sync bytes to lose sync (1.1).
pub const SYNC_LOSS_PACKETS: u8 = 2;
/// Shortest timer period accepted (a zero period would fire on every packet).
const MIN_PERIOD: Duration = Duration::from_millis(1);
/// "More than" the period: the first instant in error is one nanosecond after it.
const STRICTLY_AFTER: Duration = Duration::from_nanos(1);
const PID_COUNT: usize = 0x2000;

/// Thresholds of the time-based indicators.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct P1Config {
    /// 1.6: how long a PID referenced in a PMT may be absent (user-set; commonly 5 s).
    pub pid_error_period: Duration,
    /// 1.3.a: longest gap between PAT sections (0.5 s).
    pub pat_period: Duration,
    /// 1.5.a: longest gap between PMT sections of each program_map_PID (0.5 s).
    pub pmt_period: Duration,
}

impl Default for P1Config {
    fn default() -> Self {
        P1Config {
            pid_error_period: Duration::from_secs(5),
            pat_period: Duration::from_millis(500),
            pmt_period: Duration::from_millis(500),
        }
    }
}

/// The Priority 1 indicators.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Indicator {
    TsSyncLoss,
    SyncByteError,
    PatError,
    ContinuityCountError,
    PmtError,
    PidError,
}

impl Indicator {
    /// Number of indicators (length of [`Tr101290::counts`]).
    pub const N: usize = 6;
    pub const ALL: [Indicator; Indicator::N] = [
        Indicator::TsSyncLoss,
        Indicator::SyncByteError,
        Indicator::PatError,
        Indicator::ContinuityCountError,
        Indicator::PmtError,
        Indicator::PidError,
    ];

    /// Bounded metric label.
    pub fn label(self) -> &'static str {
        match self {
            Indicator::TsSyncLoss => "ts_sync_loss",
            Indicator::SyncByteError => "sync_byte_error",
            Indicator::PatError => "pat_error",
            Indicator::ContinuityCountError => "continuity_count_error",
            Indicator::PmtError => "pmt_error",
            Indicator::PidError => "pid_error",
        }
    }

    /// Clause of TR 101 290 Table 5.0a.
    pub fn clause(self) -> &'static str {
        match self {
            Indicator::TsSyncLoss => "1.1",
            Indicator::SyncByteError => "1.2",
            Indicator::PatError => "1.3.a",
            Indicator::ContinuityCountError => "1.4",
            Indicator::PmtError => "1.5.a",
            Indicator::PidError => "1.6",
        }
    }

    #[inline]
    fn index(self) -> usize {
        self as usize
    }
}

/// One raised indicator, for logging.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct P1Event {
    pub indicator: Indicator,
    /// The PID the error is attributed to (none for sync errors).
    pub pid: Option<Pid>,
    /// When the error occurred (for a timeout: when the period ran out, not when checked).
    pub at: Instant,
    /// Errors this event stands for (a long absence checked late counts every period).
    pub count: u64,
}

/// TS synchronisation state (1.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncState {
    /// Never synchronised yet; packets with a good sync byte are analysed.
    Acquiring,
    InSync,
    /// Lost after 2 or more bad sync bytes: nothing else is analysed until 5 good ones.
    Lost,
}

/// Continuity state flags of a PID.
const F_CC_SEEN: u8 = 1;
const F_CC_DUP: u8 = 2;
const F_REFERENCED: u8 = 4;
const F_PMT_PID: u8 = 8;
/// Scratch marks while recomputing the two flags above.
const F_NEW: u8 = 16;
const F_NEW_PMT: u8 = 32;

#[derive(Clone, Copy, Default)]
struct PidState {
    packets: u64,
    cc_errors: u64,
    /// All P1 errors attributed to this PID.
    errors: u64,
    last_seen: Option<Instant>,
    /// Next PID_error instant after one fired (the absence goes on).
    pid_error_due: Option<Instant>,
    cc: u8,
    flags: u8,
}

struct Program {
    number: u16,
    pmt_pid: Pid,
    /// PAT section_number that listed it.
    pat_section: u8,
    pmt_due: Instant,
    pmt_crc: Option<u32>,
    pcr_pid: Option<Pid>,
    /// `(stream_type, elementary_PID)`.
    streams: Vec<(u8, Pid)>,
    /// Section reassembly for this PMT PID (None while in use, or on a PID shared with an
    /// earlier program).
    asm: Option<Box<PayloadAssembler>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Cc {
    Ok,
    Duplicate,
    Error,
}

/// Counters and the event queue, apart from the tables so both can be borrowed at once.
struct Tally {
    counts: [u64; Indicator::N],
    events: VecDeque<P1Event>,
    events_dropped: u64,
}

impl Tally {
    fn raise(
        &mut self,
        pids: &mut [PidState],
        indicator: Indicator,
        pid: Option<Pid>,
        at: Instant,
        count: u64,
    ) {
        self.counts[indicator.index()] += count;
        if let Some(p) = pid.and_then(|p| pids.get_mut(usize::from(p.0))) {
            p.errors += count;
            if indicator == Indicator::ContinuityCountError {
                p.cc_errors += count;
            }
        }
        if self.events.len() >= EVENT_QUEUE {
            self.events.pop_front();
            self.events_dropped += 1;
        }
        self.events.push_back(P1Event {
            indicator,
            pid,
            at,
            count,
        });
    }
}

/// The first instant at which `period` has been exceeded since `t`.
#[inline]
fn due_after(t: Instant, period: Duration) -> Instant {
    t.checked_add(period + STRICTLY_AFTER).unwrap_or(t)
}

/// If `*due` has passed, the number of whole periods missed (≥ 1) and moves `*due` past
/// `now`; 0 otherwise.
fn fire(due: &mut Instant, now: Instant, period: Duration) -> u64 {
    if now < *due {
        return 0;
    }
    let late = (now - *due).as_nanos();
    let n = (late / period.as_nanos().max(1)) as u64 + 1;
    let step = u32::try_from(n)
        .ok()
        .and_then(|k| period.checked_mul(k))
        .unwrap_or(Duration::MAX);
    *due = due.checked_add(step).unwrap_or(now + STRICTLY_AFTER);
    n
}

fn earliest(a: Option<Instant>, b: Instant) -> Option<Instant> {
    Some(a.map_or(b, |a| a.min(b)))
}

/// TR 101 290 Priority 1 analyser of one transport stream.
pub struct Tr101290 {
    cfg: P1Config,
    pids: Box<[PidState]>,
    tally: Tally,
    packets: u64,
    crc_errors: u64,
    sync: SyncState,
    good_run: u8,
    bad_run: u8,
    started: bool,
    pat_asm: Option<Box<PayloadAssembler>>,
    pat_due: Option<Instant>,
    pat_version: Option<u8>,
    /// CRC of each current PAT section (by section_number) to skip unchanged ones.
    pat_crc: Box<[Option<u32>; 256]>,
    programs: Vec<Program>,
    /// A lower bound of the earliest timer (may be early: then nothing fires).
    next_check: Option<Instant>,
}

impl Tr101290 {
    pub fn new(cfg: P1Config) -> Tr101290 {
        let cfg = P1Config {
            pid_error_period: cfg.pid_error_period.max(MIN_PERIOD),
            pat_period: cfg.pat_period.max(MIN_PERIOD),
            pmt_period: cfg.pmt_period.max(MIN_PERIOD),
        };
        Tr101290 {
            cfg,
            pids: vec![PidState::default(); PID_COUNT].into_boxed_slice(),
            tally: Tally {
                counts: [0; Indicator::N],
                events: VecDeque::with_capacity(EVENT_QUEUE),
                events_dropped: 0,
            },
            packets: 0,
            crc_errors: 0,
            sync: SyncState::Acquiring,
            good_run: 0,
            bad_run: 0,
            started: false,
            pat_asm: Some(Box::new(PayloadAssembler::new())),
            pat_due: None,
            pat_version: None,
            pat_crc: Box::new([None; 256]),
            programs: Vec::new(),
            next_check: None,
        }
    }

    pub fn config(&self) -> &P1Config {
        &self.cfg
    }

    /// Analyse one packet (normally 188 bytes; anything else counts as a sync byte error)
    /// that arrived at `now`. `now` must not go backwards. Afterwards the caller should
    /// re-read [`poll_timeout`](Self::poll_timeout) and may drain
    /// [`poll_event`](Self::poll_event).
    #[inline]
    pub fn push(&mut self, now: Instant, pkt: &[u8]) {
        self.packets += 1;
        if self.next_check.is_some_and(|t| now >= t) {
            self.run_timers(now);
        }
        if pkt.len() != PACKET_LEN || pkt[0] != SYNC_BYTE {
            self.bad_sync(now);
            return;
        }
        self.bad_run = 0;
        self.good_run = self.good_run.saturating_add(1);
        match self.sync {
            SyncState::InSync => {}
            SyncState::Acquiring if self.good_run >= SYNC_ACQUIRE_PACKETS => {
                self.sync = SyncState::InSync;
            }
            SyncState::Acquiring => {}
            SyncState::Lost if self.good_run >= SYNC_ACQUIRE_PACKETS => {
                self.sync = SyncState::InSync;
                self.resync(now);
            }
            // 1.1 active: every other indicator is invalid.
            SyncState::Lost => return,
        }
        if let Some(p) = TsPacket::try_new(pkt) {
            self.analyse(now, p);
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) should be called next if no packet
    /// arrives (it may be early, then nothing fires). `None` while no timer runs (before the
    /// first packet, and while sync is lost).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_check
    }

    /// Evaluate the time-based indicators (PAT / PMT absent, PID_error) at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.run_timers(now);
    }

    /// Next raised indicator, oldest first (the queue keeps the last [`EVENT_QUEUE`]).
    pub fn poll_event(&mut self) -> Option<P1Event> {
        self.tally.events.pop_front()
    }

    /// Cumulative count per indicator, indexed like [`Indicator::ALL`].
    pub fn counts(&self) -> &[u64; Indicator::N] {
        &self.tally.counts
    }

    pub fn count(&self, indicator: Indicator) -> u64 {
        self.tally.counts[indicator.index()]
    }

    /// All Priority 1 errors counted so far.
    pub fn errors_total(&self) -> u64 {
        self.tally.counts.iter().sum()
    }

    /// Priority 1 errors attributed to `pid` (continuity, PID_error, PAT errors on PID 0,
    /// PMT errors on a PMT PID). Sync errors belong to no PID.
    pub fn errors_for_pid(&self, pid: Pid) -> u64 {
        self.pids.get(usize::from(pid.0)).map_or(0, |s| s.errors)
    }

    /// PAT / PMT sections whose CRC_32 did not match (TR 101 290 2.2).
    pub fn crc_errors(&self) -> u64 {
        self.crc_errors
    }

    pub fn packets(&self) -> u64 {
        self.packets
    }

    pub fn sync_state(&self) -> SyncState {
        self.sync
    }

    fn bad_sync(&mut self, now: Instant) {
        self.tally
            .raise(&mut self.pids, Indicator::SyncByteError, None, now, 1);
        self.good_run = 0;
        self.bad_run = self.bad_run.saturating_add(1);
        if self.sync == SyncState::InSync && self.bad_run >= SYNC_LOSS_PACKETS {
            self.sync = SyncState::Lost;
            self.next_check = None;
            self.tally
                .raise(&mut self.pids, Indicator::TsSyncLoss, None, now, 1);
        }
    }

    /// Sync is back: what was missed while it was lost is not counted again.
    fn resync(&mut self, now: Instant) {
        for s in self.pids.iter_mut() {
            s.flags &= !(F_CC_SEEN | F_CC_DUP);
            if s.flags & F_REFERENCED != 0 {
                s.last_seen = Some(now);
                s.pid_error_due = None;
            }
        }
        if let Some(a) = &mut self.pat_asm {
            a.reset();
        }
        if self.started {
            self.pat_due = Some(due_after(now, self.cfg.pat_period));
        }
        for p in &mut self.programs {
            if let Some(a) = &mut p.asm {
                a.reset();
            }
            p.pmt_due = due_after(now, self.cfg.pmt_period);
        }
        self.recompute_next();
    }

    #[inline]
    fn analyse(&mut self, now: Instant, p: TsPacket<'_>) {
        if !self.started {
            self.started = true;
            let due = due_after(now, self.cfg.pat_period);
            self.pat_due = Some(due);
            self.next_check = earliest(self.next_check, due);
        }
        let pid = p.pid();
        let Some(st) = self.pids.get_mut(usize::from(pid.0)) else {
            return;
        };
        st.packets += 1;
        st.last_seen = Some(now);
        let flags = st.flags;
        let cc = if pid == NULL_PID {
            Cc::Ok
        } else {
            check_cc(st, &p)
        };
        if cc == Cc::Error {
            self.tally.raise(
                &mut self.pids,
                Indicator::ContinuityCountError,
                Some(pid),
                now,
                1,
            );
        }
        if pid == PAT_PID {
            if p.scrambling() != 0 {
                self.tally
                    .raise(&mut self.pids, Indicator::PatError, Some(pid), now, 1);
                return;
            }
            if cc == Cc::Duplicate || !p.has_payload() {
                return;
            }
            if let Some(mut asm) = self.pat_asm.take() {
                if cc == Cc::Error {
                    asm.reset();
                }
                asm.push(p.payload_unit_start(), p.payload(), |s| {
                    self.on_pat_section(now, s)
                });
                self.pat_asm = Some(asm);
            }
        } else if flags & F_PMT_PID != 0 {
            if p.scrambling() != 0 {
                self.tally
                    .raise(&mut self.pids, Indicator::PmtError, Some(pid), now, 1);
                return;
            }
            if cc == Cc::Duplicate || !p.has_payload() {
                return;
            }
            let Some(i) = self
                .programs
                .iter()
                .position(|g| g.pmt_pid == pid && g.asm.is_some())
            else {
                return;
            };
            if let Some(mut asm) = self.programs[i].asm.take() {
                if cc == Cc::Error {
                    asm.reset();
                }
                asm.push(p.payload_unit_start(), p.payload(), |s| {
                    self.on_pmt_section(now, pid, s)
                });
                if let Some(g) = self.programs.get_mut(i) {
                    g.asm = Some(asm);
                }
            }
        }
    }

    fn on_pat_section(&mut self, now: Instant, s: &[u8]) {
        if s.first() != Some(&TABLE_PAT) {
            // 1.3.a: a section with table_id other than 0x00 on PID 0.
            self.tally
                .raise(&mut self.pids, Indicator::PatError, Some(PAT_PID), now, 1);
            return;
        }
        let Some(h) = self.checked(s) else {
            return;
        };
        self.pat_due = Some(due_after(now, self.cfg.pat_period));
        if !h.current_next() {
            return;
        }
        let (version, section_number) = (h.version(), h.section_number());
        let crc = h.crc();
        let sec = usize::from(section_number);
        if self.pat_version == Some(version) && self.pat_crc[sec] == Some(crc) {
            return;
        }
        if self.pat_version != Some(version) {
            // A new version replaces every section of the old one.
            self.pat_crc.fill(None);
            self.programs.retain(|g| g.pat_section == section_number);
            self.pat_version = Some(version);
        }
        self.pat_crc[sec] = Some(crc);
        let mut old: Vec<Program> = Vec::new();
        let mut i = 0;
        while i < self.programs.len() {
            if self.programs[i].pat_section == section_number {
                old.push(self.programs.swap_remove(i));
            } else {
                i += 1;
            }
        }
        for (number, pmt_pid) in h.pat_entries() {
            if number == 0 {
                continue; // network_PID
            }
            if self
                .programs
                .iter()
                .any(|g| g.number == number && g.pmt_pid == pmt_pid)
            {
                continue;
            }
            if let Some(k) = old
                .iter()
                .position(|g| g.number == number && g.pmt_pid == pmt_pid)
            {
                self.programs.push(old.swap_remove(k));
                continue;
            }
            self.programs.push(Program {
                number,
                pmt_pid,
                pat_section: section_number,
                pmt_due: due_after(now, self.cfg.pmt_period),
                pmt_crc: None,
                pcr_pid: None,
                streams: Vec::new(),
                asm: None,
            });
        }
        self.programs.sort_by_key(|g| (g.pmt_pid, g.number));
        // One reassembler per PMT PID, on its first program.
        for i in 0..self.programs.len() {
            let first = i == 0 || self.programs[i - 1].pmt_pid != self.programs[i].pmt_pid;
            let g = &mut self.programs[i];
            if !first {
                g.asm = None;
            } else if g.asm.is_none() {
                g.asm = Some(Box::new(PayloadAssembler::new()));
            }
        }
        self.update_references(now);
    }

    /// A whole PAT / PMT section with a valid CRC_32; a mismatch is counted (2.2) and the
    /// section is not present.
    fn checked<'s>(&mut self, s: &'s [u8]) -> Option<Section<'s>> {
        match Section::parse(s) {
            Ok(h) => Some(h),
            Err(SectionError::Crc) => {
                self.crc_errors += 1;
                None
            }
            Err(SectionError::Malformed) => None,
        }
    }

    fn on_pmt_section(&mut self, now: Instant, pid: Pid, s: &[u8]) {
        if s.first() != Some(&TABLE_PMT) {
            return; // other private sections may share the PID
        }
        let Some(h) = self.checked(s) else {
            return;
        };
        let Some(g) = self
            .programs
            .iter_mut()
            .find(|g| g.pmt_pid == pid && g.number == h.table_id_extension())
        else {
            return;
        };
        g.pmt_due = due_after(now, self.cfg.pmt_period);
        let crc = h.crc();
        if !h.current_next() || g.pmt_crc == Some(crc) {
            return;
        }
        let (Some(pcr_pid), Some(streams)) = (h.pmt_pcr_pid(), h.pmt_streams()) else {
            return;
        };
        g.pmt_crc = Some(crc);
        g.pcr_pid = Some(pcr_pid).filter(|p| *p != NULL_PID);
        g.streams.clear();
        g.streams.extend(streams);
        self.update_references(now);
    }

    /// Recompute the PMT_PID and referenced flags after the PAT or a PMT changed; a newly
    /// referenced PID's absence is measured from `now`.
    fn update_references(&mut self, now: Instant) {
        for g in &self.programs {
            let pmt = usize::from(g.pmt_pid.0);
            if let Some(s) = self.pids.get_mut(pmt) {
                s.flags |= F_NEW_PMT;
            }
            for &(_, p) in &g.streams {
                if let Some(s) = self.pids.get_mut(usize::from(p.0)) {
                    s.flags |= F_NEW;
                }
            }
        }
        for s in self.pids.iter_mut() {
            let referenced = s.flags & F_NEW != 0;
            if referenced && s.flags & F_REFERENCED == 0 {
                s.last_seen = Some(now);
                s.pid_error_due = None;
            }
            let pmt = s.flags & F_NEW_PMT != 0;
            s.flags &= !(F_NEW | F_NEW_PMT | F_REFERENCED | F_PMT_PID);
            if referenced {
                s.flags |= F_REFERENCED;
            }
            if pmt {
                s.flags |= F_PMT_PID;
            }
        }
        self.recompute_next();
    }

    /// Fire every timer due at `now` and compute the next check.
    fn run_timers(&mut self, now: Instant) {
        if self.sync == SyncState::Lost {
            self.next_check = None;
            return;
        }
        if let Some(due) = &mut self.pat_due {
            let at = *due;
            let n = fire(due, now, self.cfg.pat_period);
            if n > 0 {
                self.tally
                    .raise(&mut self.pids, Indicator::PatError, Some(PAT_PID), at, n);
            }
        }
        for g in &mut self.programs {
            let at = g.pmt_due;
            let n = fire(&mut g.pmt_due, now, self.cfg.pmt_period);
            if n > 0 {
                self.tally
                    .raise(&mut self.pids, Indicator::PmtError, Some(g.pmt_pid), at, n);
            }
            for &(_, pid) in &g.streams {
                let Some(s) = self.pids.get_mut(usize::from(pid.0)) else {
                    continue;
                };
                let Some(mut due) = pid_due(s, self.cfg.pid_error_period) else {
                    continue;
                };
                let at = due;
                let n = fire(&mut due, now, self.cfg.pid_error_period);
                if n > 0 {
                    s.pid_error_due = Some(due);
                    self.tally
                        .raise(&mut self.pids, Indicator::PidError, Some(pid), at, n);
                }
            }
        }
        self.recompute_next();
    }

    fn recompute_next(&mut self) {
        if self.sync == SyncState::Lost {
            self.next_check = None;
            return;
        }
        let mut next = self.pat_due;
        for g in &self.programs {
            next = earliest(next, g.pmt_due);
            for &(_, pid) in &g.streams {
                if let Some(d) = self
                    .pids
                    .get(usize::from(pid.0))
                    .and_then(|s| pid_due(s, self.cfg.pid_error_period))
                {
                    next = earliest(next, d);
                }
            }
        }
        self.next_check = next;
    }

    /// Snapshot for the API and `hitless analyze`.
    pub fn report(&self) -> P1Report {
        let counts = Indicator::ALL
            .iter()
            .map(|&i| IndicatorCount {
                clause: i.clause(),
                indicator: i.label(),
                count: self.count(i),
            })
            .collect();
        let pids = self
            .pids
            .iter()
            .enumerate()
            .filter(|(_, s)| s.packets > 0 || s.flags & (F_REFERENCED | F_PMT_PID) != 0)
            .map(|(pid, s)| PidReport {
                pid: pid as u16,
                packets: s.packets,
                cc_errors: s.cc_errors,
                errors: s.errors,
                kind: if pid == 0 {
                    "pat"
                } else if s.flags & F_PMT_PID != 0 {
                    "pmt"
                } else if s.flags & F_REFERENCED != 0 {
                    "es"
                } else if Pid(pid as u16) == NULL_PID {
                    "null"
                } else {
                    "other"
                },
            })
            .collect();
        let mut pmt_pids: Vec<u16> = self.programs.iter().map(|g| g.pmt_pid.0).collect();
        pmt_pids.dedup();
        P1Report {
            sync: self.sync,
            packets: self.packets,
            errors_total: self.errors_total(),
            counts,
            crc_errors: self.crc_errors,
            events_dropped: self.tally.events_dropped,
            pmt_pids,
            programs: self
                .programs
                .iter()
                .map(|g| ProgramReport {
                    program_number: g.number,
                    pmt_pid: g.pmt_pid.0,
                    pcr_pid: g.pcr_pid.map(|p| p.0),
                    streams: g
                        .streams
                        .iter()
                        .map(|&(stream_type, p)| StreamReport {
                            pid: p.0,
                            stream_type,
                        })
                        .collect(),
                })
                .collect(),
            pids,
        }
    }
}

/// Next PID_error instant of a referenced PID.
#[inline]
fn pid_due(s: &PidState, period: Duration) -> Option<Instant> {
    if s.flags & F_REFERENCED == 0 {
        return None;
    }
    let base = due_after(s.last_seen?, period);
    Some(s.pid_error_due.map_or(base, |d| d.max(base)))
}

/// ISO/IEC 13818-1 2.4.3.3 continuity of one packet against its PID's state.
#[inline]
fn check_cc(st: &mut PidState, p: &TsPacket<'_>) -> Cc {
    let cc = p.cc().0;
    if st.flags & F_CC_SEEN == 0 || p.discontinuity() {
        st.cc = cc;
        st.flags = (st.flags & !F_CC_DUP) | F_CC_SEEN;
        return Cc::Ok;
    }
    if !p.has_payload() {
        // The counter does not increment without payload.
        if cc == st.cc {
            return Cc::Ok;
        }
        st.cc = cc;
        st.flags &= !F_CC_DUP;
        return Cc::Error;
    }
    if cc == st.cc {
        if st.flags & F_CC_DUP != 0 {
            return Cc::Error; // a packet occurring more than twice
        }
        st.flags |= F_CC_DUP;
        return Cc::Duplicate;
    }
    let ok = cc == (st.cc + 1) & 0x0f;
    st.cc = cc;
    st.flags &= !F_CC_DUP;
    if ok { Cc::Ok } else { Cc::Error }
}

/// Count of one indicator in a [`P1Report`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct IndicatorCount {
    pub clause: &'static str,
    pub indicator: &'static str,
    pub count: u64,
}

/// One PID seen (or expected) in the stream.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PidReport {
    pub pid: u16,
    pub packets: u64,
    pub cc_errors: u64,
    /// All P1 errors attributed to the PID.
    pub errors: u64,
    /// "pat", "pmt", "es" (referenced by a PMT), "null" or "other".
    pub kind: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct StreamReport {
    pub pid: u16,
    pub stream_type: u8,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ProgramReport {
    pub program_number: u16,
    pub pmt_pid: u16,
    pub pcr_pid: Option<u16>,
    pub streams: Vec<StreamReport>,
}

/// Priority 1 summary for the API and `hitless analyze --json`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct P1Report {
    pub sync: SyncState,
    pub packets: u64,
    pub errors_total: u64,
    /// Per indicator, in Table 5.0a order.
    pub counts: Vec<IndicatorCount>,
    /// PAT / PMT sections with a bad CRC_32 (2.2, not part of `errors_total`).
    pub crc_errors: u64,
    /// Events dropped from the bounded queue (not errors).
    pub events_dropped: u64,
    pub pmt_pids: Vec<u16>,
    pub programs: Vec<ProgramReport>,
    pub pids: Vec<PidReport>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::pace;
    use crate::ts::psi::{build_pat, build_pmt};
    use proptest::prelude::*;

    /// The one real clock reading of these tests: every other time is `base() + Duration`.
    #[allow(clippy::disallowed_methods)]
    fn base() -> Instant {
        Instant::now()
    }

    const MS: Duration = Duration::from_millis(1);
    type Pkt = [u8; PACKET_LEN];

    /// A testdata file as (PCR-derived arrival offset, packet).
    fn stream(name: &str) -> Vec<(Duration, Pkt)> {
        let path = format!("{}/testdata/{name}", env!("CARGO_MANIFEST_DIR"));
        let data = std::fs::read(&path).expect("testdata file");
        let n = data.len() / PACKET_LEN;
        let (pid, pcrs) = pace::collect_pcrs(&data, None).expect("PCRs");
        let s = pace::from_pcrs(n, pid, &pcrs).expect("schedule");
        data.chunks_exact(PACKET_LEN)
            .zip(&s.packet_ticks)
            .map(|(p, &t)| {
                let mut a = [0u8; PACKET_LEN];
                a.copy_from_slice(p);
                (Duration::from_nanos(t * 1000 / 27), a)
            })
            .collect()
    }

    fn pid_of(p: &Pkt) -> u16 {
        u16::from(p[1] & 0x1f) << 8 | u16::from(p[2])
    }

    fn run(t0: Instant, pkts: &[(Duration, Pkt)]) -> Tr101290 {
        let mut a = Tr101290::new(P1Config::default());
        for (t, p) in pkts {
            a.push(t0 + *t, p);
        }
        a
    }

    /// Errors a timer of `period` raises when sections at `last` and then `next` arrive:
    /// one at every instant `last + k·period + 1 ns ≤ next`, k ≥ 1.
    fn timeouts(last: Duration, next: Duration, period: Duration) -> u64 {
        let mut n = 0;
        let mut due = last + period + Duration::from_nanos(1);
        while due <= next {
            n += 1;
            due += period;
        }
        n
    }

    /// Drop every packet of `pid` in `[from, to)`; returns (stream, last time kept before,
    /// first time kept after, payload packets dropped).
    fn cut(
        pkts: &[(Duration, Pkt)],
        pid: u16,
        from: Duration,
        to: Duration,
    ) -> (Vec<(Duration, Pkt)>, Duration, Duration, usize) {
        let hit = |(t, p): &(Duration, Pkt)| pid_of(p) == pid && *t >= from && *t < to;
        let before = pkts
            .iter()
            .filter(|x| pid_of(&x.1) == pid && x.0 < from)
            .map(|x| x.0)
            .next_back()
            .expect("a packet before");
        let after = pkts
            .iter()
            .find(|x| pid_of(&x.1) == pid && x.0 >= to)
            .expect("a packet after")
            .0;
        let dropped = pkts.iter().filter(|x| hit(x)).count();
        let kept = pkts.iter().filter(|x| !hit(x)).copied().collect();
        (kept, before, after, dropped)
    }

    /// A packet carrying one whole section (pointer_field 0, 0xFF stuffing).
    fn psi_packet(pid: u16, cc: u8, section: &[u8]) -> Pkt {
        let mut p = [0xffu8; PACKET_LEN];
        p[0] = SYNC_BYTE;
        p[1] = 0x40 | (pid >> 8) as u8;
        p[2] = pid as u8;
        p[3] = 0x10 | (cc & 0x0f);
        p[4] = 0;
        p[5..5 + section.len()].copy_from_slice(section);
        p
    }

    fn only(a: &Tr101290, want: &[(Indicator, u64)]) {
        for i in Indicator::ALL {
            let n = want.iter().find(|w| w.0 == i).map_or(0, |w| w.1);
            assert_eq!(a.count(i), n, "{}", i.label());
        }
    }

    #[test]
    fn clean_testdata_has_no_p1_errors() {
        for name in ["h264_aac.ts", "mpeg2_mp2.ts"] {
            let pkts = stream(name);
            let a = run(base(), &pkts);
            assert_eq!(a.errors_total(), 0, "{name}: {:?}", a.counts());
            assert_eq!(a.crc_errors(), 0);
            assert_eq!(a.sync_state(), SyncState::InSync);
            let r = a.report();
            assert_eq!(r.pmt_pids, vec![0x1000], "{name}");
            let es: Vec<u16> = r.programs[0].streams.iter().map(|s| s.pid).collect();
            assert_eq!(es, vec![0x100, 0x101]);
            assert_eq!(r.programs[0].pcr_pid, Some(0x100));
            assert_eq!(r.packets, pkts.len() as u64);
            assert!(r.pids.iter().any(|p| p.pid == 0x1fff && p.kind == "null"));
        }
    }

    #[test]
    fn sync_byte_error_and_sync_loss() {
        let pkts = stream("h264_aac.ts");
        let t0 = base();
        // One bad sync byte on a null packet: 1.2 only.
        let null = (1000..).find(|&i| pid_of(&pkts[i].1) == 0x1fff).unwrap();
        let mut v = pkts.clone();
        v[null].1[0] = 0x46;
        let a = run(t0, &v);
        only(&a, &[(Indicator::SyncByteError, 1)]);
        assert_eq!(a.errors_for_pid(Pid(0x1fff)), 0);
        // On a video packet, the packet is lost too: its PID shows a continuity error.
        let vid = (1000..).find(|&i| pid_of(&pkts[i].1) == 0x100).unwrap();
        let mut v = pkts.clone();
        v[vid].1[0] = 0x00;
        let a = run(t0, &v);
        only(
            &a,
            &[
                (Indicator::SyncByteError, 1),
                (Indicator::ContinuityCountError, 1),
            ],
        );
        // Two in a row: sync lost once; what follows re-acquires without other errors.
        let mut v = pkts.clone();
        v[2000].1[0] = 0x00;
        v[2001].1[0] = 0xb8;
        let mut a = Tr101290::new(P1Config::default());
        for (t, p) in &v[..2002] {
            a.push(t0 + *t, p);
        }
        assert_eq!(a.sync_state(), SyncState::Lost);
        assert_eq!(
            a.poll_timeout(),
            None,
            "timers suspended while sync is lost"
        );
        for (t, p) in &v[2002..] {
            a.push(t0 + *t, p);
        }
        assert_eq!(a.sync_state(), SyncState::InSync);
        only(
            &a,
            &[(Indicator::SyncByteError, 2), (Indicator::TsSyncLoss, 1)],
        );
        let ev: Vec<_> = std::iter::from_fn(|| a.poll_event()).collect();
        assert_eq!(ev.len(), 3);
        assert_eq!(ev[2].indicator, Indicator::TsSyncLoss);
        assert_eq!(ev[2].at, t0 + v[2001].0);
    }

    #[test]
    fn lost_packet_is_one_continuity_error() {
        let mut pkts = stream("h264_aac.ts");
        let i = (3000..).find(|&i| pid_of(&pkts[i].1) == 0x100).unwrap();
        pkts.remove(i);
        let a = run(base(), &pkts);
        only(&a, &[(Indicator::ContinuityCountError, 1)]);
        assert_eq!(a.errors_for_pid(Pid(0x100)), 1);
        assert_eq!(a.errors_for_pid(Pid(0x101)), 0);
        let r = a.report();
        let v = r.pids.iter().find(|p| p.pid == 0x100).unwrap();
        assert_eq!((v.cc_errors, v.kind), (1, "es"));
    }

    #[test]
    fn one_duplicate_is_legal_more_are_errors() {
        let pkts = stream("h264_aac.ts");
        let i = (3000..).find(|&i| pid_of(&pkts[i].1) == 0x100).unwrap();
        for (copies, errors) in [(2, 0), (3, 1), (4, 2)] {
            let mut v = pkts.clone();
            for _ in 1..copies {
                v.insert(i, pkts[i]);
            }
            let a = run(base(), &v);
            only(&a, &[(Indicator::ContinuityCountError, errors)]);
        }
        // A duplicated PAT packet is not parsed twice and raises nothing.
        let pat_i = (3000..).find(|&i| pid_of(&pkts[i].1) == 0).unwrap();
        let mut v = pkts.clone();
        v.insert(pat_i, pkts[pat_i]);
        assert_eq!(run(base(), &v).errors_total(), 0);
    }

    #[test]
    fn discontinuity_indicator_resets_and_null_pid_is_excluded() {
        let t0 = base();
        let mut a = Tr101290::new(P1Config::default());
        let pkt = |pid: u16, cc: u8| crate::ts::tests::ts(pid, cc);
        for cc in [0, 1, 2] {
            a.push(t0, &pkt(0x44, cc));
        }
        // discontinuity_indicator: adaptation field with the flag, then payload.
        let mut d = pkt(0x44, 9);
        d[3] = 0x30 | 9;
        d[4] = 1;
        d[5] = 0x80;
        a.push(t0, &d);
        a.push(t0, &pkt(0x44, 10));
        // Adaptation-only packet keeps the counter; changing it is an error.
        let mut af = pkt(0x44, 10);
        af[3] = 0x20 | 10;
        af[4] = 183;
        af[5] = 0;
        a.push(t0, &af);
        a.push(t0, &pkt(0x44, 11));
        for cc in [3, 9, 9, 9, 1] {
            a.push(t0, &pkt(0x1fff, cc));
        }
        assert_eq!(a.errors_total(), 0);
        af[3] = 0x20 | 5;
        a.push(t0, &af);
        assert_eq!(a.count(Indicator::ContinuityCountError), 1);
    }

    #[test]
    fn pat_absent_for_one_second() {
        let pkts = stream("h264_aac.ts");
        let (v, last, next, dropped) = cut(&pkts, 0, 2 * 1000 * MS, 3 * 1000 * MS);
        let t0 = base();
        let mut a = Tr101290::new(P1Config::default());
        for (t, p) in &v {
            a.push(t0 + *t, p);
        }
        let n = timeouts(last, next, 500 * MS);
        assert_eq!(n, 2, "a ~1.1 s gap is two periods of 0.5 s");
        let cc = u64::from(dropped % 16 != 0);
        only(
            &a,
            &[
                (Indicator::PatError, n),
                (Indicator::ContinuityCountError, cc),
            ],
        );
        assert_eq!(a.errors_for_pid(PAT_PID), n + cc);
        let first = std::iter::from_fn(|| a.poll_event())
            .find(|e| e.indicator == Indicator::PatError)
            .unwrap();
        assert_eq!(first.at, t0 + last + 500 * MS + Duration::from_nanos(1));
    }

    #[test]
    fn pat_scrambled_or_wrong_table_id() {
        let pkts = stream("h264_aac.ts");
        let i = (2000..).find(|&i| pid_of(&pkts[i].1) == 0).unwrap();
        let mut v = pkts.clone();
        v[i].1[3] |= 0x80; // transport_scrambling_control = 10
        only(&run(base(), &v), &[(Indicator::PatError, 1)]);
        let mut v = pkts.clone();
        v[i].1[5] = 0x42; // table_id of an SDT on PID 0
        only(&run(base(), &v), &[(Indicator::PatError, 1)]);
        // A corrupted PAT section is a CRC error (2.2), not a P1 error on its own.
        let mut v = pkts.clone();
        v[i].1[15] ^= 0x01;
        let a = run(base(), &v);
        assert_eq!((a.errors_total(), a.crc_errors()), (0, 1));
    }

    #[test]
    fn pmt_absent_for_one_second_or_scrambled() {
        let pkts = stream("mpeg2_mp2.ts");
        let (v, last, next, dropped) = cut(&pkts, 0x1000, 2 * 1000 * MS, 3 * 1000 * MS);
        let a = run(base(), &v);
        let n = timeouts(last, next, 500 * MS);
        assert!(n >= 1);
        let cc = u64::from(dropped % 16 != 0);
        only(
            &a,
            &[
                (Indicator::PmtError, n),
                (Indicator::ContinuityCountError, cc),
            ],
        );
        assert_eq!(a.errors_for_pid(Pid(0x1000)), n + cc);
        let i = (2000..).find(|&i| pid_of(&pkts[i].1) == 0x1000).unwrap();
        let mut v = pkts.clone();
        v[i].1[3] |= 0xc0;
        only(&run(base(), &v), &[(Indicator::PmtError, 1)]);
    }

    #[test]
    fn referenced_pid_absent_for_six_seconds() {
        let pkts = stream("h264_aac.ts");
        let (v, last, next, dropped) = cut(&pkts, 0x101, 1000 * MS, 7000 * MS);
        let a = run(base(), &v);
        let n = timeouts(last, next, Duration::from_secs(5));
        assert_eq!(n, 1);
        let cc = u64::from(dropped % 16 != 0);
        only(
            &a,
            &[
                (Indicator::PidError, 1),
                (Indicator::ContinuityCountError, cc),
            ],
        );
        assert_eq!(a.errors_for_pid(Pid(0x101)), 1 + cc);
        // With a user period longer than the gap, nothing.
        let mut b = Tr101290::new(P1Config {
            pid_error_period: Duration::from_secs(7),
            ..P1Config::default()
        });
        let t0 = base();
        for (t, p) in &v {
            b.push(t0 + *t, p);
        }
        assert_eq!(b.count(Indicator::PidError), 0);
    }

    #[test]
    fn stopped_stream_raises_pat_pmt_then_pid_errors_on_timeout() {
        let pkts = stream("h264_aac.ts");
        let t0 = base();
        let fed: Vec<_> = pkts.iter().filter(|x| x.0 < 2000 * MS).copied().collect();
        let mut a = run(t0, &fed);
        let last_of = |pid: u16| fed.iter().rfind(|x| pid_of(&x.1) == pid).unwrap().0;
        let step = |a: &mut Tr101290, until: Instant| {
            while let Some(t) = a.poll_timeout().filter(|t| *t <= until) {
                a.handle_timeout(t);
            }
        };
        let end = fed.last().unwrap().0;
        step(&mut a, t0 + end + 450 * MS);
        only(&a, &[]);
        // 1.2 s after the last packet: every 0.5 s period since the last PAT / PMT.
        step(&mut a, t0 + end + 1200 * MS);
        let stop = end + 1200 * MS;
        only(
            &a,
            &[
                (Indicator::PatError, timeouts(last_of(0), stop, 500 * MS)),
                (
                    Indicator::PmtError,
                    timeouts(last_of(0x1000), stop, 500 * MS),
                ),
            ],
        );
        assert!(a.count(Indicator::PatError) >= 2);
        // After 5 s without them, the referenced PIDs are in error too.
        step(&mut a, t0 + end + 5100 * MS);
        assert_eq!(a.count(Indicator::PidError), 2);
        assert_eq!(a.errors_for_pid(Pid(0x100)), 1);
        assert_eq!(a.errors_for_pid(Pid(0x101)), 1);
        // Checking late gives the same counts as checking on time.
        let mut b = run(t0, &fed);
        b.handle_timeout(t0 + end + 5100 * MS);
        assert_eq!(a.counts(), b.counts());
    }

    #[test]
    fn synthetic_program_and_table_changes() {
        let t0 = base();
        let mut a = Tr101290::new(P1Config::default());
        let mut t = t0;
        for k in 0..5u8 {
            a.push(
                t,
                &psi_packet(0, k, &build_pat(1, 0, &[(0, Pid(0x10)), (1, Pid(0x20))])),
            );
            a.push(
                t,
                &psi_packet(0x20, k, &build_pmt(1, 0, Pid(0x31), &[(0x1b, Pid(0x31))])),
            );
            a.push(t, &crate::ts::tests::ts(0x31, k));
            t += 100 * MS;
        }
        assert_eq!(a.report().pmt_pids, vec![0x20]);
        // New PAT version moves the program's PMT to 0x21, which then references 0x32.
        for k in 5..12u8 {
            a.push(t, &psi_packet(0, k, &build_pat(1, 1, &[(1, Pid(0x21))])));
            a.push(
                t,
                &psi_packet(
                    0x21,
                    k - 5,
                    &build_pmt(1, 3, Pid(0x32), &[(0x1b, Pid(0x32))]),
                ),
            );
            a.push(t, &crate::ts::tests::ts(0x32, k));
            t += 100 * MS;
        }
        let r = a.report();
        assert_eq!(r.pmt_pids, vec![0x21]);
        assert_eq!(r.programs[0].streams[0].pid, 0x32);
        assert_eq!(a.errors_total(), 0, "{:?}", a.counts());
        a.handle_timeout(t + 5 * 1000 * MS);
        assert_eq!(
            a.errors_for_pid(Pid(0x31)),
            0,
            "0x31 is no longer referenced"
        );
        assert_eq!(a.errors_for_pid(Pid(0x32)), 1);
    }

    #[test]
    fn event_queue_is_bounded() {
        let t0 = base();
        let mut a = Tr101290::new(P1Config::default());
        for _ in 0..EVENT_QUEUE + 10 {
            a.push(t0, &[0u8; PACKET_LEN]);
        }
        assert_eq!(a.count(Indicator::SyncByteError), (EVENT_QUEUE + 10) as u64);
        assert_eq!(std::iter::from_fn(|| a.poll_event()).count(), EVENT_QUEUE);
        assert_eq!(a.report().events_dropped, 10);
        assert_eq!(Indicator::ALL.len(), Indicator::N);
        let labels: Vec<_> = Indicator::ALL.iter().map(|i| i.label()).collect();
        assert_eq!(labels[3], "continuity_count_error");
    }

    proptest! {
        #[test]
        fn arbitrary_packets_never_panic(
            pkts in proptest::collection::vec(
                (any::<bool>(), 0u16..4, proptest::collection::vec(any::<u8>(), PACKET_LEN)),
                1..300,
            ),
            gaps_ms in proptest::collection::vec(0u64..400, 300),
        ) {
            let t0 = base();
            let mut a = Tr101290::new(P1Config::default());
            let mut t = t0;
            // A valid PAT / PMT first so that the PSI paths see the garbage too.
            a.push(t, &psi_packet(0, 0, &build_pat(1, 0, &[(1, Pid(0x20))])));
            a.push(t, &psi_packet(0x20, 0, &build_pmt(1, 0, Pid(0x100), &[(0x1b, Pid(0x100))])));
            for (i, (sync, pid_sel, mut p)) in pkts.into_iter().enumerate() {
                if sync {
                    p[0] = SYNC_BYTE;
                    let pid = [0u16, 0x20, 0x100, 0x1fff][usize::from(pid_sel)];
                    if i % 2 == 0 {
                        p[1] = (p[1] & 0xe0) | (pid >> 8) as u8;
                        p[2] = pid as u8;
                    }
                }
                t += Duration::from_millis(gaps_ms[i % gaps_ms.len()]);
                a.push(t, &p);
                if let Some(d) = a.poll_timeout().filter(|d| *d <= t) {
                    a.handle_timeout(d);
                }
                while a.poll_event().is_some() {}
            }
            a.push(t, &[0x47]);
            a.handle_timeout(t + Duration::from_secs(30));
            let r = a.report();
            prop_assert_eq!(r.errors_total, a.counts().iter().sum::<u64>());
        }
    }
}
