//! What the content analyser last found for one source, and the state of each content
//! condition derived from it: *present*, *absent* or *unknown* (with the reason). Sans-IO:
//! reports come in with the time they were received; a measurement older than its staleness
//! bound (three intervals, at least 3 s) no longer counts, so a source whose analysis stopped
//! (offline, undecodable from some point, the worker starved) becomes unknown rather than
//! keeping its last verdict.
//!
//! Each report is also an observation for the rule engine: [`ContentMonitor::handle_report`]
//! marks the open window of every matching rule, like a counter does for the other conditions.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::audio::Level;
use super::video::Picture;
use super::worker::Report;
use super::{ContentConfig, StreamInfo, Streams};
use crate::rules::{Condition, SourceRules};
use crate::ts::Pid;

/// Floor of the dB values shown by the API (JSON has no −∞: identical pictures and digital
/// silence show as this).
pub const DB_FLOOR: f64 = -120.0;
/// A measurement counts for this many of its intervals (and at least [`MIN_STALE`]).
const STALE_INTERVALS: u32 = 3;
const MIN_STALE: Duration = Duration::from_secs(3);

/// The state of a content condition on a source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    Present,
    Absent,
    Unknown(String),
}

impl State {
    pub fn label(&self) -> &'static str {
        match self {
            State::Present => "present",
            State::Absent => "absent",
            State::Unknown(_) => "unknown",
        }
    }

    /// The `hitless_content_state` value: 1 present, 0 absent, −1 unknown.
    pub fn metric(&self) -> f64 {
        match self {
            State::Present => 1.0,
            State::Absent => 0.0,
            State::Unknown(_) => -1.0,
        }
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct VideoStatus {
    pub pid: u16,
    pub codec: String,
    pub decodable: bool,
    /// Keyframes analysed.
    pub pictures: u64,
    pub errors: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    pub width: Option<usize>,
    pub height: Option<usize>,
    /// Share of black luma samples in the last analysed picture (0..=1).
    pub black_share: Option<f64>,
    /// Difference to the previous analysed picture, dB (floored at −120).
    pub difference_db: Option<f64>,
    pub last_ms_ago: Option<u64>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct AudioStatus {
    pub pid: u16,
    pub codec: String,
    pub decodable: bool,
    /// Level measurements made.
    pub levels: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Peak level of each channel over the last interval, dBFS (floored at −120).
    pub peak_dbfs: Vec<f64>,
    pub silent: Option<bool>,
    pub last_ms_ago: Option<u64>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct ConditionStatus {
    /// `"present"`, `"absent"` or `"unknown"`.
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The content analysis of one source, as the API shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ContentStatus {
    pub video: Option<VideoStatus>,
    pub audio: Vec<AudioStatus>,
    /// By condition label.
    pub conditions: BTreeMap<&'static str, ConditionStatus>,
}

#[derive(Debug)]
struct VideoSeen {
    info: StreamInfo,
    pictures: u64,
    errors: u64,
    last_error: Option<String>,
    last: Option<(Instant, Picture)>,
}

#[derive(Debug)]
struct AudioSeen {
    info: StreamInfo,
    levels: u64,
    unsupported: Option<String>,
    last: Option<(Instant, Level)>,
}

#[derive(Debug)]
pub struct ContentMonitor {
    video_stale: Duration,
    audio_stale: Duration,
    /// `None` until the first PMT.
    streams: Option<(Option<VideoSeen>, Vec<AudioSeen>)>,
}

impl ContentMonitor {
    pub fn new(cfg: &ContentConfig) -> ContentMonitor {
        ContentMonitor {
            video_stale: (cfg.video_interval * STALE_INTERVALS).max(MIN_STALE),
            audio_stale: (cfg.audio_interval * STALE_INTERVALS).max(MIN_STALE),
            streams: None,
        }
    }

    /// The program's streams changed (or were found).
    pub fn handle_streams(&mut self, s: &Streams) {
        self.streams = Some((
            s.video.map(|info| VideoSeen {
                info,
                pictures: 0,
                errors: 0,
                last_error: None,
                last: None,
            }),
            s.audio
                .iter()
                .map(|&info| AudioSeen {
                    info,
                    levels: 0,
                    unsupported: None,
                    last: None,
                })
                .collect(),
        ));
    }

    /// A finding of the worker about this source, received at `now`: remembered, and
    /// observed by the rules on its condition.
    pub fn handle_report(&mut self, now: Instant, report: Report, rules: &mut SourceRules) {
        let Some((video, audio)) = &mut self.streams else {
            return;
        };
        match report {
            Report::Picture { pid, picture, .. } => {
                let Some(v) = video.as_mut().filter(|v| v.info.pid == pid) else {
                    return;
                };
                rules.observe_condition_on_pid(now, Condition::BlankPicture, pid, picture.blank);
                if let Some(frozen) = picture.frozen {
                    rules.observe_condition_on_pid(now, Condition::FrozenVideo, pid, frozen);
                }
                v.pictures += 1;
                v.last = Some((now, picture));
            }
            Report::Level { pid, level, .. } => {
                let Some(a) = audio.iter_mut().find(|a| a.info.pid == pid) else {
                    return;
                };
                rules.observe_condition_on_pid(now, Condition::SilentAudio, pid, level.silent);
                a.levels += 1;
                a.unsupported = None;
                a.last = Some((now, level));
            }
            Report::Error { pid, error, .. } => {
                if let Some(v) = video.as_mut().filter(|v| v.info.pid == pid) {
                    v.errors += 1;
                    v.last_error = Some(error.to_string());
                } else if let Some(a) = audio.iter_mut().find(|a| a.info.pid == pid) {
                    a.unsupported = Some(error.to_string());
                }
            }
            Report::Done { .. } => {}
        }
    }

    /// Tell the rules which content conditions cannot be judged at `now`. Call before the
    /// rules are read (window ends, reports).
    pub fn sync_rules(&self, now: Instant, rules: &mut SourceRules) {
        rules.set_unknown(|c, pid| matches!(self.state(now, c, pid), State::Unknown(_)));
    }

    /// The state of `condition` (scoped to `pid` when given) at `now`.
    pub fn state(&self, now: Instant, condition: Condition, pid: Option<Pid>) -> State {
        let unknown = |why: &str| State::Unknown(why.to_owned());
        let Some((video, audio)) = &self.streams else {
            return unknown("no PMT received yet");
        };
        let fresh = |at: Instant, stale: Duration| now.saturating_duration_since(at) <= stale;
        match condition {
            Condition::BlankPicture | Condition::FrozenVideo => {
                let Some(v) = video else {
                    return unknown("the program has no video stream");
                };
                if pid.is_some_and(|p| p != v.info.pid) {
                    return unknown("the rule's PID is not the program's video PID");
                }
                if !v.info.codec.decodable() {
                    return State::Unknown(format!(
                        "video codec {} is not decodable by this build",
                        v.info.codec.label()
                    ));
                }
                let Some((at, pic)) = v
                    .last
                    .as_ref()
                    .filter(|(at, _)| fresh(*at, self.video_stale))
                else {
                    return match &v.last_error {
                        Some(e) => State::Unknown(format!("no picture analysed recently: {e}")),
                        None => unknown("no picture analysed recently"),
                    };
                };
                let _ = at;
                let present = if condition == Condition::BlankPicture {
                    Some(pic.blank)
                } else {
                    pic.frozen
                };
                match present {
                    Some(true) => State::Present,
                    Some(false) => State::Absent,
                    None => unknown("one picture analysed: nothing to compare with yet"),
                }
            }
            Condition::SilentAudio => {
                let candidates: Vec<&AudioSeen> = audio
                    .iter()
                    .filter(|a| pid.is_none_or(|p| p == a.info.pid))
                    .collect();
                if candidates.is_empty() {
                    return unknown(if pid.is_some() {
                        "the rule's PID is not an audio PID of the program"
                    } else {
                        "the program has no audio stream"
                    });
                }
                let mut judged = false;
                let mut why = None;
                for a in &candidates {
                    if !a.info.codec.decodable() {
                        why.get_or_insert_with(|| {
                            format!(
                                "audio codec {} is not decodable by this build",
                                a.info.codec.label()
                            )
                        });
                        continue;
                    }
                    match &a.last {
                        Some((at, level)) if fresh(*at, self.audio_stale) => {
                            if level.silent {
                                return State::Present;
                            }
                            judged = true;
                        }
                        _ => {
                            why.get_or_insert_with(|| match &a.unsupported {
                                Some(e) => format!("no audio level measured recently: {e}"),
                                None => "no audio level measured recently".to_owned(),
                            });
                        }
                    }
                }
                if judged {
                    State::Absent
                } else {
                    State::Unknown(why.unwrap_or_default())
                }
            }
            _ => unknown("not a content condition"),
        }
    }

    /// What the API shows.
    pub fn status(&self, now: Instant) -> ContentStatus {
        let ms = |at: Instant| now.saturating_duration_since(at).as_millis() as u64;
        let db = |v: f64| v.max(DB_FLOOR);
        let (video, audio) = match &self.streams {
            None => (None, Vec::new()),
            Some((v, a)) => (
                v.as_ref().map(|v| {
                    let pic = v.last.as_ref().map(|(_, p)| p);
                    VideoStatus {
                        pid: v.info.pid.0,
                        codec: v.info.codec.label(),
                        decodable: v.info.codec.decodable(),
                        pictures: v.pictures,
                        errors: v.errors,
                        last_error: v.last_error.clone(),
                        width: pic.map(|p| p.width),
                        height: pic.map(|p| p.height),
                        black_share: pic.map(|p| p.black_share),
                        difference_db: pic.and_then(|p| p.difference_db).map(db),
                        last_ms_ago: v.last.as_ref().map(|(at, _)| ms(*at)),
                    }
                }),
                a.iter()
                    .map(|a| AudioStatus {
                        pid: a.info.pid.0,
                        codec: a.info.codec.label(),
                        decodable: a.info.codec.decodable(),
                        levels: a.levels,
                        last_error: a.unsupported.clone(),
                        peak_dbfs: a
                            .last
                            .as_ref()
                            .map(|(_, l)| l.peak_dbfs.iter().map(|&d| db(d)).collect())
                            .unwrap_or_default(),
                        silent: a.last.as_ref().map(|(_, l)| l.silent),
                        last_ms_ago: a.last.as_ref().map(|(at, _)| ms(*at)),
                    })
                    .collect(),
            ),
        };
        let conditions = CONTENT_CONDITIONS
            .iter()
            .map(|&c| {
                let st = self.state(now, c, None);
                (
                    c.label(),
                    ConditionStatus {
                        state: st.label(),
                        reason: match st {
                            State::Unknown(why) => Some(why),
                            _ => None,
                        },
                    },
                )
            })
            .collect();
        ContentStatus {
            video,
            audio,
            conditions,
        }
    }
}

/// The conditions judged by the content analyser.
pub const CONTENT_CONDITIONS: [Condition; 3] = [
    Condition::FrozenVideo,
    Condition::BlankPicture,
    Condition::SilentAudio,
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::RuleSpec;
    use crate::rules::cqa::{AudioType, StreamKind, VideoCodec};

    #[allow(clippy::disallowed_methods)]
    fn base() -> Instant {
        Instant::now()
    }

    const S: Duration = Duration::from_secs(1);

    fn streams(video: StreamKind, audio: &[(u16, StreamKind)]) -> Streams {
        Streams {
            video: Some(StreamInfo {
                pid: Pid(0x100),
                codec: video,
            }),
            audio: audio
                .iter()
                .map(|&(p, codec)| StreamInfo { pid: Pid(p), codec })
                .collect(),
        }
    }

    fn picture(blank: bool, frozen: Option<bool>) -> Report {
        Report::Picture {
            source: 0,
            pid: Pid(0x100),
            pts: None,
            picture: Picture {
                width: 16,
                height: 16,
                black_share: if blank { 1.0 } else { 0.0 },
                difference_db: frozen.map(|f| if f { f64::NEG_INFINITY } else { -10.0 }),
                blank,
                frozen,
            },
        }
    }

    fn level(pid: u16, silent: bool) -> Report {
        Report::Level {
            source: 0,
            pid: Pid(pid),
            level: Level {
                pts: None,
                sample_rate: 48000,
                peak_dbfs: vec![if silent { f64::NEG_INFINITY } else { -6.0 }; 2],
                silent,
            },
        }
    }

    fn rule(condition: Condition, pid: Option<u16>) -> RuleSpec {
        RuleSpec {
            condition,
            sample_duration: S,
            samples: 1,
            threshold: 1,
            pid: pid.map(Pid),
            min_kbps: None,
        }
    }

    #[test]
    fn undecodable_video_is_unknown_and_never_fails() {
        let t0 = base();
        let mut m = ContentMonitor::new(&ContentConfig::default());
        let mut rules = SourceRules::new(t0, &[rule(Condition::BlankPicture, None)]);
        assert!(matches!(
            m.state(t0, Condition::BlankPicture, None),
            State::Unknown(_)
        ));
        // AVS video (stream type 0x42) is decodable by no build.
        m.handle_streams(&streams(
            StreamKind::Video(VideoCodec::Other(0x42)),
            &[(0x101, StreamKind::Audio(AudioType::Ac3))],
        ));
        let st = m.state(t0, Condition::BlankPicture, None);
        assert_eq!(
            st,
            State::Unknown(
                "video codec video-stream-type-0x42 is not decodable by this build".into()
            )
        );
        assert_eq!(st.metric(), -1.0);
        assert!(matches!(
            m.state(t0, Condition::SilentAudio, None),
            State::Unknown(why) if why.contains("ac3")
        ));
        m.sync_rules(t0, &mut rules);
        assert_eq!(rules.status()[0].state, "unknown");
        let status = m.status(t0);
        assert_eq!(status.conditions["blank-picture"].state, "unknown");
        assert_eq!(status.video.as_ref().map(|v| v.decodable), Some(false));
    }

    #[test]
    fn pictures_feed_the_rules_and_go_stale() {
        let t0 = base();
        let mut m = ContentMonitor::new(&ContentConfig::default());
        let mut rules = SourceRules::new(
            t0,
            &[
                rule(Condition::BlankPicture, None),
                rule(Condition::FrozenVideo, Some(0x100)),
            ],
        );
        m.handle_streams(&streams(StreamKind::Video(VideoCodec::H264), &[]));
        m.handle_report(t0, picture(true, None), &mut rules);
        assert_eq!(m.state(t0, Condition::BlankPicture, None), State::Present);
        assert!(matches!(
            m.state(t0, Condition::FrozenVideo, None),
            State::Unknown(_)
        ));
        m.handle_report(t0 + S / 2, picture(true, Some(true)), &mut rules);
        m.sync_rules(t0 + S / 2, &mut rules);
        struct NoMeter;
        impl crate::rules::SourceMeter for NoMeter {
            fn bytes(&self) -> u64 {
                0
            }
            fn p1_errors(&self, _: Option<Pid>) -> u64 {
                0
            }
            fn unrecovered(&self) -> u64 {
                0
            }
        }
        rules.handle_timeout(t0 + S, &NoMeter);
        assert_eq!(rules.failing(), Some(Condition::BlankPicture));
        assert!(rules.status()[1].failing);
        // Nothing analysed for longer than 3 s: unknown, and the rules stop failing.
        let late = t0 + 4 * S;
        assert!(matches!(
            m.state(late, Condition::BlankPicture, None),
            State::Unknown(_)
        ));
        m.sync_rules(late, &mut rules);
        assert_eq!(rules.failing(), None);
        assert_eq!(rules.status()[0].state, "unknown");
    }

    #[test]
    fn silence_on_any_audio_pid_or_on_the_rule_pid() {
        let t0 = base();
        let mut m = ContentMonitor::new(&ContentConfig::default());
        let aac = StreamKind::Audio(AudioType::Aac);
        m.handle_streams(&streams(
            StreamKind::Video(VideoCodec::H264),
            &[(0x101, aac), (0x102, aac)],
        ));
        let mut rules = SourceRules::new(t0, &[]);
        m.handle_report(t0, level(0x101, false), &mut rules);
        m.handle_report(t0, level(0x102, true), &mut rules);
        assert_eq!(m.state(t0, Condition::SilentAudio, None), State::Present);
        assert_eq!(
            m.state(t0, Condition::SilentAudio, Some(Pid(0x101))),
            State::Absent
        );
        assert!(matches!(
            m.state(t0, Condition::SilentAudio, Some(Pid(0x103))),
            State::Unknown(_)
        ));
        let st = m.status(t0);
        assert_eq!(st.audio[1].peak_dbfs, vec![DB_FLOOR, DB_FLOOR]);
        assert_eq!(st.conditions["silent-audio"].state, "present");
    }
}
