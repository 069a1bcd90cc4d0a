//! The analyser over the committed clips against ffmpeg's own detectors: the blank, frozen and
//! silent stretches it finds start and end within one sample (one analysed keyframe, one audio
//! interval) of what blackdetect / freezedetect / silencedetect reported
//! (`testdata/*.oracle.txt`, made by the commands in `testdata/README.md`).

use std::path::Path;
use std::time::{Duration, Instant};

use super::tap::{ContentTap, TapEvent};
use super::worker::{Analysers, Report};
use super::{ContentConfig, Streams};
use crate::ts::PACKET_LEN;

#[allow(clippy::disallowed_methods)]
fn base() -> Instant {
    Instant::now()
}

fn read(name: &str) -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// What the analyser found over a whole clip: (PTS, flag) per sample.
#[derive(Default)]
struct Found {
    streams: Vec<Streams>,
    blank: Vec<(u64, bool)>,
    frozen: Vec<(u64, bool)>,
    silent: Vec<(u64, bool)>,
    errors: Vec<String>,
}

fn analyse(name: &str, cfg: &ContentConfig) -> Found {
    let data = read(name);
    let t0 = base();
    let mut tap = ContentTap::new(true, true, cfg.video_interval);
    let mut an = Analysers::new(cfg.clone());
    let mut found = Found::default();
    for (i, pkt) in data.chunks_exact(PACKET_LEN).enumerate() {
        // Arrival time only matters without PTS; spread the packets at ~1 ms each.
        tap.push(t0 + Duration::from_millis(i as u64), pkt);
        while let Some(ev) = tap.poll_event() {
            match ev {
                TapEvent::Streams(s) => found.streams.push(s),
                TapEvent::Job(job) => {
                    an.handle_job(0, &job, &mut |r| match r {
                        Report::Picture { pts, picture, .. } => {
                            let pts = pts.expect("keyframes have a PTS");
                            found.blank.push((pts, picture.blank));
                            if let Some(f) = picture.frozen {
                                found.frozen.push((pts, f));
                            }
                        }
                        Report::Level { level, .. } => {
                            found.silent.push((level.pts.expect("PTS"), level.silent))
                        }
                        Report::Error { error, .. } => found.errors.push(error.to_string()),
                        Report::Done { .. } => {}
                    });
                    tap.recycle(job.data);
                }
            }
        }
    }
    found
}

/// Stretches where the flag is set, in seconds from `origin` (ffmpeg's stream start time):
/// (time of the first sample with it, time of the first sample without it after).
fn runs(samples: &[(u64, bool)], origin: u64) -> Vec<(f64, Option<f64>)> {
    let secs = |pts: u64| pts.wrapping_sub(origin) as f64 / 90_000.0;
    let mut out = Vec::new();
    let mut open = None;
    for &(pts, on) in samples {
        match (open, on) {
            (None, true) => open = Some(secs(pts)),
            (Some(s), false) => {
                out.push((s, Some(secs(pts))));
                open = None;
            }
            _ => {}
        }
    }
    if let Some(s) = open {
        out.push((s, None));
    }
    out
}

/// The oracle's stretches for one detector: `(start, end)` in seconds.
fn oracle(name: &str, start_key: &str, end_key: &str) -> Vec<(f64, f64)> {
    let text = String::from_utf8(read(name)).expect("utf-8");
    let value = |line: &str, key: &str| -> Option<f64> {
        let at = line.find(key)? + key.len();
        line[at..]
            .trim_start()
            .split(|c: char| c.is_whitespace() || c == '|')
            .next()?
            .parse()
            .ok()
    };
    let mut out = Vec::new();
    let mut start = None;
    for line in text.lines() {
        if let Some(s) = value(line, start_key) {
            start = Some(s);
        }
        if let (Some(s), Some(e)) = (start, value(line, end_key)) {
            out.push((s, e));
            start = None;
        }
    }
    out
}

fn assert_agree(what: &str, ours: &[(f64, Option<f64>)], oracle: &[(f64, f64)], sample: f64) {
    eprintln!("{what}: analyser {ours:?}, ffmpeg {oracle:?}");
    assert_eq!(
        ours.len(),
        oracle.len(),
        "{what}: analyser {ours:?} vs ffmpeg {oracle:?}"
    );
    for (o, f) in ours.iter().zip(oracle) {
        let end = o.1.unwrap_or(f64::INFINITY);
        assert!(
            (o.0 - f.0).abs() <= sample + 1e-3 && (end - f.1).abs() <= sample + 1e-3,
            "{what}: analyser {o:?} vs ffmpeg {f:?} differ by more than one sample ({sample} s)"
        );
    }
}

/// ffmpeg's time origin: the earliest first PTS of the streams it decodes.
fn origin(found: &Found) -> u64 {
    [found.blank.first(), found.silent.first()]
        .into_iter()
        .flatten()
        .map(|(pts, _)| *pts)
        .min()
        .expect("something analysed")
}

#[test]
fn h264_aac_clip_agrees_with_blackdetect_freezedetect_silencedetect() {
    let cfg = ContentConfig::default();
    let found = analyse("cqa_h264_aac.ts", &cfg);
    assert!(found.errors.is_empty(), "{:?}", found.errors);
    // 18 s at one keyframe per second, 36 half-second audio intervals.
    assert!(
        (17..=18).contains(&found.blank.len()),
        "{}",
        found.blank.len()
    );
    assert!(
        (34..=36).contains(&found.silent.len()),
        "{}",
        found.silent.len()
    );
    let t0 = origin(&found);
    let oracle_file = "cqa_h264_aac.oracle.txt";
    let video = cfg.video_interval.as_secs_f64();
    assert_agree(
        "blank",
        &runs(&found.blank, t0),
        &oracle(oracle_file, "black_start:", "black_end:"),
        video,
    );
    // freezedetect's start is the first picture of the frozen stretch: the sample before the
    // first one found equal to its predecessor.
    let frozen: Vec<_> = runs(&found.frozen, t0)
        .into_iter()
        .map(|(s, e)| (s - video, e))
        .collect();
    assert_agree(
        "frozen",
        &frozen,
        &oracle(oracle_file, "freeze_start:", "freeze_end:"),
        video,
    );
    assert_agree(
        "silent",
        &runs(&found.silent, t0),
        &oracle(oracle_file, "silence_start:", "silence_end:"),
        cfg.audio_interval.as_secs_f64(),
    );
}

#[test]
fn mpeg2_mp2_clip_video_is_unknown_and_mp2_silence_agrees() {
    let cfg = ContentConfig::default();
    let found = analyse("cqa_mpeg2_mp2.ts", &cfg);
    assert!(found.errors.is_empty(), "{:?}", found.errors);
    let s = &found.streams[0];
    assert_eq!(
        s.video.map(|v| v.codec.label()).as_deref(),
        Some("mpeg2-video")
    );
    if cfg!(feature = "ffmpeg") {
        // The system FFmpeg decodes it: SMPTE bars, never black, frozen from the second
        // sample on (as freezedetect finds them: frozen from the start to the end).
        assert!(s.video.is_some_and(|v| v.codec.decodable()));
        assert!(found.blank.len() >= 17, "{}", found.blank.len());
        assert!(found.blank.iter().all(|(_, b)| !b));
        assert!(found.frozen.iter().all(|(_, f)| *f));
    } else {
        assert!(!s.video.is_some_and(|v| v.codec.decodable()));
        assert!(found.blank.is_empty(), "MPEG-2 video is never analysed");
    }
    assert_agree(
        "silent",
        &runs(&found.silent, origin(&found)),
        &oracle("cqa_mpeg2_mp2.oracle.txt", "silence_start:", "silence_end:"),
        cfg.audio_interval.as_secs_f64(),
    );
}

#[test]
fn existing_h264_clip_is_neither_blank_frozen_nor_silent() {
    let found = analyse("h264_aac.ts", &ContentConfig::default());
    assert!(found.errors.is_empty(), "{:?}", found.errors);
    assert!(found.blank.len() >= 7);
    assert!(found.blank.iter().all(|(_, b)| !b));
    assert!(found.frozen.iter().all(|(_, f)| !f));
    assert!(found.silent.len() >= 14);
    assert!(found.silent.iter().all(|(_, s)| !s));
}
