//! The content analyser's tap on the packet path of one source: reads the PAT and the first
//! program's PMT to find the video and audio PIDs (ISO/IEC 13818-1 2.4.4), and copies out only
//! what the worker will decode: one video keyframe per `video_interval` and the audio PES
//! packets. Everything else costs a PID comparison per packet.
//!
//! Sans-IO: `push(now, packet)`, then [`ContentTap::poll_event`] for stream changes and
//! [`Job`]s; the glue hands jobs to the worker's bounded queue and gives back to
//! [`ContentTap::recycle`] the buffers it gets back (or could not queue), so that the steady
//! state allocates nothing.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::{AudioCodec, StreamInfo, StreamKind, Streams, VideoCodec};
use crate::ts::psi::{SectionAssembler, TABLE_PAT, TABLE_PMT};
use crate::ts::{Pid, TsPacket};

/// Largest keyframe access unit copied (a 1080p IDR is typically 100–600 kB).
pub const MAX_VIDEO_AU: usize = 4 << 20;
/// Largest audio PES copied.
pub const MAX_AUDIO_PES: usize = 64 << 10;
/// Audio PIDs analysed per source at most.
pub const MAX_AUDIO_PIDS: usize = 8;
/// Buffers kept for reuse.
const POOL: usize = 16;
/// Events held when nobody polls (bounds memory if the glue falls behind).
const MAX_EVENTS: usize = 64;

/// Work for the analyser worker.
#[derive(Debug)]
pub struct Job {
    pub pid: Pid,
    pub kind: JobKind,
    /// The PES header's PTS (90 kHz), when present.
    pub pts: Option<u64>,
    /// Video: a whole access unit (Annex B). Audio: one PES payload.
    pub data: Vec<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobKind {
    /// A keyframe of a video codec this build decodes.
    Video(VideoCodec),
    Audio(AudioCodec),
}

/// What the tap has for the glue.
#[derive(Debug)]
pub enum TapEvent {
    /// The program's streams (first PMT, or a PMT that changed them).
    Streams(Streams),
    Job(Job),
}

/// Counters of one tap.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TapStats {
    /// Jobs produced.
    pub jobs: u64,
    /// Keyframes or PES packets given up because they exceeded their size bound.
    pub oversize: u64,
}

#[derive(Debug)]
struct Collect {
    pid: Pid,
    kind: JobKind,
    pts: Option<u64>,
    /// `None` while this PID's current PES is not being copied.
    buf: Option<Vec<u8>>,
    last_cc: Option<u8>,
}

pub struct ContentTap {
    pat: SectionAssembler,
    pmt_pid: Option<Pid>,
    pmt: SectionAssembler,
    pmt_crc: Option<u32>,
    /// Copy the video keyframes / the audio (only what some rule needs).
    want_video: bool,
    want_audio: bool,
    /// Only these audio PIDs (every rule on silence names its PID); `None`: all of them.
    audio_pids: Option<Vec<Pid>>,
    video_interval: Duration,
    /// When (and at which PTS) the last keyframe was copied.
    last_video: Option<(Instant, Option<u64>)>,
    collect: Vec<Collect>,
    pool: Vec<Vec<u8>>,
    events: VecDeque<TapEvent>,
    stats: TapStats,
}

impl ContentTap {
    pub fn new(want_video: bool, want_audio: bool, video_interval: Duration) -> ContentTap {
        ContentTap {
            pat: SectionAssembler::default(),
            pmt_pid: None,
            pmt: SectionAssembler::default(),
            pmt_crc: None,
            want_video,
            want_audio,
            audio_pids: None,
            video_interval,
            last_video: None,
            collect: Vec::with_capacity(1 + MAX_AUDIO_PIDS),
            pool: Vec::with_capacity(POOL),
            events: VecDeque::with_capacity(MAX_EVENTS),
            stats: TapStats::default(),
        }
    }

    /// Copy only these audio PIDs (when every `silent-audio` rule is scoped to a PID, the
    /// others are not worth copying or decoding).
    pub fn with_audio_pids(mut self, pids: Vec<Pid>) -> ContentTap {
        self.audio_pids = Some(pids);
        self
    }

    pub fn stats(&self) -> TapStats {
        self.stats
    }

    /// Give a job's buffer back (after the worker is done with it, or when the queue was
    /// full).
    pub fn recycle(&mut self, mut buf: Vec<u8>) {
        if self.pool.len() < POOL {
            buf.clear();
            self.pool.push(buf);
        }
    }

    pub fn poll_event(&mut self) -> Option<TapEvent> {
        self.events.pop_front()
    }

    fn emit(&mut self, ev: TapEvent) {
        if self.events.len() < MAX_EVENTS {
            self.events.push_back(ev);
        } else if let TapEvent::Job(j) = ev {
            self.recycle(j.data);
        }
    }

    /// One TS packet (188 bytes) received at `now`. Invalid packets are ignored.
    #[inline]
    pub fn push(&mut self, now: Instant, pkt: &[u8]) {
        let Some(p) = TsPacket::try_new(pkt) else {
            return;
        };
        let pid = p.pid();
        if pid == Pid(0) {
            self.on_pat(&p);
        } else if Some(pid) == self.pmt_pid {
            self.on_pmt(&p);
        } else if let Some(i) = self.collect.iter().position(|c| c.pid == pid) {
            self.on_es(now, i, &p);
        }
    }

    fn on_pat(&mut self, p: &TsPacket<'_>) {
        let mut found = None;
        self.pat.push(p, |s| {
            if s.table_id() == TABLE_PAT {
                found = s.pat_entries().find(|(program, _)| *program != 0);
            }
        });
        if let Some((_, pmt)) = found
            && self.pmt_pid != Some(pmt)
        {
            self.pmt_pid = Some(pmt);
            self.pmt = SectionAssembler::default();
            self.pmt_crc = None;
        }
    }

    fn on_pmt(&mut self, p: &TsPacket<'_>) {
        let mut streams = None;
        let known = self.pmt_crc;
        self.pmt.push(p, |s| {
            if s.table_id() != TABLE_PMT || known == Some(s.crc()) {
                return;
            }
            let mut info = Streams {
                video: None,
                audio: Vec::new(),
            };
            for (stream_type, pid) in s.pmt_streams().into_iter().flatten() {
                let codec = StreamKind::from_stream_type(stream_type);
                match codec {
                    StreamKind::Video(_) if info.video.is_none() => {
                        info.video = Some(StreamInfo { pid, codec })
                    }
                    StreamKind::Audio(_) if info.audio.len() < MAX_AUDIO_PIDS => {
                        info.audio.push(StreamInfo { pid, codec })
                    }
                    _ => {}
                }
            }
            streams = Some((s.crc(), info));
        });
        let Some((crc, info)) = streams else {
            return;
        };
        self.pmt_crc = Some(crc);
        for c in self.collect.drain(..) {
            if let Some(b) = c.buf
                && self.pool.len() < POOL
            {
                self.pool.push(b);
            }
        }
        if let Some((pid, codec)) = info.video.and_then(|v| Some((v.pid, v.codec.video()?)))
            && self.want_video
        {
            self.collect.push(Collect {
                pid,
                kind: JobKind::Video(codec),
                pts: None,
                buf: None,
                last_cc: None,
            });
        }
        if self.want_audio {
            let wanted = |pid: Pid| self.audio_pids.as_ref().is_none_or(|p| p.contains(&pid));
            for a in info.audio.iter().filter(|a| wanted(a.pid)) {
                if let Some(codec) = a.codec.audio() {
                    self.collect.push(Collect {
                        pid: a.pid,
                        kind: JobKind::Audio(codec),
                        pts: None,
                        buf: None,
                        last_cc: None,
                    });
                }
            }
        }
        self.emit(TapEvent::Streams(info));
    }

    fn on_es(&mut self, now: Instant, i: usize, p: &TsPacket<'_>) {
        if !p.has_payload() || p.scrambling() != 0 {
            return;
        }
        let cc = p.cc().0;
        let c = &mut self.collect[i];
        if c.last_cc == Some(cc) && !p.discontinuity() {
            return; // the legal duplicate
        }
        let lost = c
            .last_cc
            .is_some_and(|last| (last + 1) & 0x0f != cc && !p.discontinuity());
        c.last_cc = Some(cc);
        let payload = p.payload();
        if p.payload_unit_start() {
            self.finish(i);
            let c = &self.collect[i];
            let start = match c.kind {
                JobKind::Video(codec) => {
                    self.video_due(now, pes_pts(payload))
                        && (p.random_access() || starts_keyframe(codec, pes_payload(payload)))
                }
                JobKind::Audio(_) => true,
            };
            if start {
                let mut buf = self.pool.pop().unwrap_or_default();
                buf.clear();
                let c = &mut self.collect[i];
                c.pts = pes_pts(payload);
                buf.extend_from_slice(pes_payload(payload));
                c.buf = Some(buf);
                if matches!(c.kind, JobKind::Video(_)) {
                    self.last_video = Some((now, c.pts));
                }
            }
            return;
        }
        let c = &mut self.collect[i];
        if lost {
            // A hole in the PES: decoding it would only produce errors.
            if let Some(b) = c.buf.take() {
                self.recycle(b);
            }
            return;
        }
        let max = match c.kind {
            JobKind::Video(_) => MAX_VIDEO_AU,
            JobKind::Audio(_) => MAX_AUDIO_PES,
        };
        if let Some(b) = &mut c.buf {
            if b.len() + payload.len() > max {
                if let Some(b) = c.buf.take() {
                    self.stats.oversize += 1;
                    self.recycle(b);
                }
            } else {
                b.extend_from_slice(payload);
            }
        }
    }

    /// Whether the next keyframe is due: `video_interval` after the last copied one, by PTS
    /// (exact, unlike arrival times that jitter) or by arrival time when there is no PTS. A
    /// PTS that jumps back (a restart, a loop) makes it due. An eighth of the interval is
    /// forgiven, so that a GOP slightly shorter than the interval (0.96 s for 1 s) is sampled
    /// at every keyframe rather than at every other one.
    fn video_due(&self, now: Instant, pts: Option<u64>) -> bool {
        const WRAP: u64 = 1 << 33;
        let wait = self.video_interval - self.video_interval / 8;
        let ticks = u64::try_from(wait.as_micros() * 9 / 100).unwrap_or(u64::MAX);
        match (self.last_video, pts) {
            (None, _) => true,
            (Some((_, Some(last))), Some(pts)) => pts.wrapping_sub(last) & (WRAP - 1) >= ticks,
            (Some((t, _)), _) => now.saturating_duration_since(t) >= wait,
        }
    }

    /// The PES being copied on `collect[i]` is complete (the next one starts).
    fn finish(&mut self, i: usize) {
        let c = &mut self.collect[i];
        if let Some(data) = c.buf.take() {
            if data.is_empty() {
                self.recycle(data);
                return;
            }
            let job = Job {
                pid: c.pid,
                kind: c.kind,
                pts: c.pts,
                data,
            };
            self.stats.jobs += 1;
            self.emit(TapEvent::Job(job));
        }
    }
}

/// The PES packet's payload after its header (ISO/IEC 13818-1 2.4.3.6); empty when the
/// header is not a PES header.
pub fn pes_payload(b: &[u8]) -> &[u8] {
    if b.len() < 9 || b[..3] != [0, 0, 1] {
        return &[];
    }
    b.get(9 + usize::from(b[8])..).unwrap_or(&[])
}

/// The PTS of a PES header, when it has one.
pub fn pes_pts(b: &[u8]) -> Option<u64> {
    if b.len() < 14 || b[..3] != [0, 0, 1] || b[7] & 0x80 == 0 {
        return None;
    }
    let p = &b[9..14];
    Some(
        (u64::from(p[0] >> 1) & 7) << 30
            | u64::from(p[1]) << 22
            | u64::from(p[2] >> 1) << 15
            | u64::from(p[3]) << 7
            | u64::from(p[4] >> 1),
    )
}

/// Whether the start of an access unit shows a keyframe when the muxer did not set
/// random_access_indicator: H.264 an SPS or IDR slice before any other slice; HEVC a VPS,
/// SPS or IRAP slice before any other slice; MPEG-2 a sequence or GOP header.
pub fn starts_keyframe(codec: VideoCodec, es: &[u8]) -> bool {
    for w in es
        .windows(4)
        .filter(|w| w[0] == 0 && w[1] == 0 && w[2] == 1)
    {
        match codec {
            VideoCodec::H264 => match w[3] & 0x1f {
                5 | 7 => return true,
                1 => return false,
                _ => {}
            },
            VideoCodec::Hevc => match (w[3] >> 1) & 0x3f {
                16..=21 | 32 | 33 => return true,
                0..=9 => return false,
                _ => {}
            },
            VideoCodec::Mpeg2 => match w[3] {
                0xb3 | 0xb8 => return true,
                0x00..=0xaf => return false,
                _ => {}
            },
            VideoCodec::Other(_) => return false,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ts::psi::{build_pat, build_pmt, packetize};
    use crate::ts::{ContinuityCounter, PACKET_LEN, SYNC_BYTE};

    #[allow(clippy::disallowed_methods)]
    fn base() -> Instant {
        Instant::now()
    }

    fn psi(streams: &[(u8, Pid)]) -> Vec<u8> {
        let mut v = Vec::new();
        packetize(
            &build_pat(1, 0, &[(1, Pid(0x1000))]),
            Pid(0),
            ContinuityCounter(0),
            &mut v,
        );
        packetize(
            &build_pmt(1, 0, Pid(0x100), streams),
            Pid(0x1000),
            ContinuityCounter(0),
            &mut v,
        );
        v
    }

    /// A PES start packet on `pid` with `es` after a 5-byte-PTS header, rest stuffed with
    /// `0xaa`; `rap` sets random_access_indicator.
    fn pes_start(pid: u16, cc: u8, rap: bool, pts: u64, es: &[u8]) -> [u8; PACKET_LEN] {
        let mut p = [0xaa; PACKET_LEN];
        p[0] = SYNC_BYTE;
        p[1] = 0x40 | (pid >> 8) as u8;
        p[2] = pid as u8;
        p[3] = 0x30 | cc;
        p[4] = 1;
        p[5] = if rap { 0x40 } else { 0 };
        let h = [
            0,
            0,
            1,
            0xe0,
            0,
            0,
            0x80,
            0x80,
            5,
            0x21 | ((pts >> 29) as u8 & 0x0e),
            (pts >> 22) as u8,
            (pts >> 14) as u8 | 1,
            (pts >> 7) as u8,
            (pts << 1) as u8 | 1,
        ];
        p[6..20].copy_from_slice(&h);
        p[20..20 + es.len()].copy_from_slice(es);
        p
    }

    fn cont(pid: u16, cc: u8, fill: u8) -> [u8; PACKET_LEN] {
        let mut p = [fill; PACKET_LEN];
        p[0] = SYNC_BYTE;
        p[1] = (pid >> 8) as u8;
        p[2] = pid as u8;
        p[3] = 0x10 | cc;
        p
    }

    fn drain(tap: &mut ContentTap) -> (Vec<Streams>, Vec<Job>) {
        let (mut s, mut j) = (Vec::new(), Vec::new());
        while let Some(e) = tap.poll_event() {
            match e {
                TapEvent::Streams(x) => s.push(x),
                TapEvent::Job(x) => j.push(x),
            }
        }
        (s, j)
    }

    #[test]
    fn pes_header_fields() {
        let p = pes_start(0x100, 0, false, 0x1_2345_6789, &[0, 0, 0, 1, 0x65]);
        assert_eq!(pes_pts(&p[4 + 2..]), Some(0x1_2345_6789));
        assert_eq!(&pes_payload(&p[6..])[..5], &[0, 0, 0, 1, 0x65]);
        let h264 = VideoCodec::H264;
        assert!(starts_keyframe(
            h264,
            &[0, 0, 0, 1, 0x09, 0xf0, 0, 0, 0, 1, 0x67]
        ));
        assert!(!starts_keyframe(
            h264,
            &[0, 0, 0, 1, 0x09, 0xf0, 0, 0, 1, 0x41]
        ));
        let hevc = VideoCodec::Hevc;
        assert!(starts_keyframe(
            hevc,
            &[0, 0, 0, 1, 0x46, 1, 0, 0, 1, 0x40, 1]
        ));
        assert!(!starts_keyframe(
            hevc,
            &[0, 0, 0, 1, 0x46, 1, 0, 0, 1, 0x02, 1]
        ));
        assert!(starts_keyframe(VideoCodec::Mpeg2, &[0, 0, 1, 0xb3, 0x28]));
        assert!(!starts_keyframe(VideoCodec::Mpeg2, &[0, 0, 1, 0x00, 0x28]));
    }

    #[test]
    fn finds_streams_and_copies_one_keyframe_per_interval_and_all_audio() {
        let t0 = base();
        // Two AAC PIDs, only 0x101 wanted (a rule scoped to it).
        let mut tap =
            ContentTap::new(true, true, Duration::from_secs(1)).with_audio_pids(vec![Pid(0x101)]);
        let streams = [
            (0x1b, Pid(0x100)),
            (0x0f, Pid(0x101)),
            (0x02, Pid(0x102)),
            (0x0f, Pid(0x103)),
        ];
        for p in psi(&streams).chunks(PACKET_LEN) {
            tap.push(t0, p);
        }
        let (s, j) = drain(&mut tap);
        assert!(j.is_empty());
        assert_eq!(
            s[0].video,
            Some(StreamInfo {
                pid: Pid(0x100),
                codec: StreamKind::Video(VideoCodec::H264)
            })
        );
        assert_eq!(
            s[0].audio.len(),
            2,
            "MPEG-2 video on 0x102 is a second video: ignored"
        );
        let idr = [0, 0, 0, 1, 0x09, 0xf0, 0, 0, 0, 1, 0x67];
        let p_frame = [0, 0, 0, 1, 0x09, 0xf0, 0, 0, 0, 1, 0x41];
        let ms = Duration::from_millis;
        // Keyframe at 0 (copied, 2 packets), P frame (not copied), keyframe at 500 ms (too
        // early), keyframe at 1000 ms (copied).
        tap.push(t0, &pes_start(0x100, 0, true, 1000, &idr));
        tap.push(t0, &cont(0x100, 1, 0x11));
        tap.push(t0 + ms(40), &pes_start(0x100, 2, false, 4600, &p_frame));
        tap.push(t0 + ms(40), &cont(0x100, 3, 0x22));
        tap.push(t0 + ms(500), &pes_start(0x100, 4, true, 46000, &idr));
        tap.push(t0 + ms(1000), &pes_start(0x100, 5, false, 91000, &idr));
        tap.push(t0 + ms(1000), &cont(0x100, 6, 0x33));
        tap.push(t0 + ms(1040), &pes_start(0x100, 7, false, 94600, &p_frame));
        // Audio: two PES, each is a job once the next starts.
        tap.push(t0, &pes_start(0x101, 0, false, 900, &[0xff, 0xf1]));
        tap.push(t0, &pes_start(0x101, 1, false, 2820, &[0xff, 0xf1]));
        tap.push(t0, &pes_start(0x103, 0, false, 900, &[0xff, 0xf1]));
        tap.push(t0, &pes_start(0x103, 1, false, 2820, &[0xff, 0xf1]));
        let (_, jobs) = drain(&mut tap);
        let video: Vec<_> = jobs
            .iter()
            .filter(|j| j.kind == JobKind::Video(VideoCodec::H264))
            .collect();
        assert_eq!(video.len(), 2);
        assert_eq!(video[0].pts, Some(1000));
        assert_eq!(video[0].data.len(), (PACKET_LEN - 20) + (PACKET_LEN - 4));
        assert_eq!(video[1].pts, Some(91000));
        let audio: Vec<_> = jobs
            .iter()
            .filter(|j| matches!(j.kind, JobKind::Audio(_)))
            .collect();
        assert_eq!(audio.len(), 1);
        assert_eq!(audio[0].pts, Some(900));
        assert_eq!(tap.stats().jobs, 3);
        // Buffers come back and are reused: no allocation in the steady state.
        for j in jobs {
            tap.recycle(j.data);
        }
        assert_eq!(tap.pool.len(), 3);
    }

    #[test]
    fn a_gop_slightly_shorter_than_the_interval_is_sampled_at_every_keyframe() {
        let t0 = base();
        let mut tap = ContentTap::new(true, false, Duration::from_secs(1));
        for p in psi(&[(0x1b, Pid(0x100))]).chunks(PACKET_LEN) {
            tap.push(t0, p);
        }
        let idr = [0, 0, 0, 1, 0x65];
        // Keyframes every 0.96 s (86,400 ticks), then one only 0.5 s after the last.
        for (k, pts) in [0u64, 86_400, 172_800, 217_800, 259_200]
            .into_iter()
            .enumerate()
        {
            tap.push(t0, &pes_start(0x100, k as u8, true, pts, &idr));
        }
        tap.push(t0, &pes_start(0x100, 5, false, 300_000, &[0, 0, 1, 0x41]));
        let (_, jobs) = drain(&mut tap);
        let pts: Vec<_> = jobs.iter().filter_map(|j| j.pts).collect();
        assert_eq!(pts, [0, 86_400, 172_800, 259_200]);
    }

    #[test]
    fn a_lost_packet_drops_the_pes_and_undecodable_video_is_not_copied() {
        let t0 = base();
        let mut tap = ContentTap::new(true, false, Duration::ZERO);
        for p in psi(&[(0x1b, Pid(0x100))]).chunks(PACKET_LEN) {
            tap.push(t0, p);
        }
        let idr = [0, 0, 0, 1, 0x65];
        tap.push(t0, &pes_start(0x100, 0, true, 0, &idr));
        tap.push(t0, &cont(0x100, 2, 0)); // cc 1 lost
        tap.push(t0, &pes_start(0x100, 3, true, 0, &idr));
        let (_, jobs) = drain(&mut tap);
        assert!(jobs.is_empty());

        // AVS video (stream type 0x42) is decodable by no build.
        let mut tap = ContentTap::new(true, true, Duration::ZERO);
        for p in psi(&[(0x42, Pid(0x100))]).chunks(PACKET_LEN) {
            tap.push(t0, p);
        }
        tap.push(t0, &pes_start(0x100, 0, true, 0, &idr));
        tap.push(t0, &pes_start(0x100, 1, true, 0, &idr));
        let (s, jobs) = drain(&mut tap);
        assert_eq!(
            s[0].video.as_ref().map(|v| v.codec),
            Some(StreamKind::Video(VideoCodec::Other(0x42)))
        );
        assert!(jobs.is_empty());
    }

    proptest::proptest! {
        /// Network input never panics the tap: random packets on the PSI and stream PIDs.
        #[test]
        fn random_packets_never_panic(
            packets in proptest::collection::vec(
                (0usize..4, proptest::collection::vec(proptest::num::u8::ANY, PACKET_LEN - 1)),
                0..200,
            )
        ) {
            let t0 = base();
            let mut tap = ContentTap::new(true, true, Duration::ZERO);
            for p in psi(&[(0x1b, Pid(0x100)), (0x0f, Pid(0x101)), (0x03, Pid(0x102))])
                .chunks(PACKET_LEN)
            {
                tap.push(t0, p);
            }
            for (which, body) in packets {
                let pid = [0u16, 0x1000, 0x100, 0x101][which];
                let mut p = vec![SYNC_BYTE];
                p.extend_from_slice(&body);
                p[1] = (p[1] & 0xe0) | (pid >> 8) as u8;
                p[2] = pid as u8;
                tap.push(t0, &p);
                while let Some(ev) = tap.poll_event() {
                    if let TapEvent::Job(j) = ev {
                        tap.recycle(j.data);
                    }
                }
            }
        }
    }
}
