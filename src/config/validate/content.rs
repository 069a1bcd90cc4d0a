//! `[channel.content]` → [`ContentConfig`]: the content analyser's thresholds and pacing.

use std::ops::RangeInclusive;
use std::time::Duration;

use toml::Spanned;

use super::Validator;
use crate::config::Mode;
use crate::config::raw::RawContent;
use crate::rules::cqa::{
    ContentConfig, DEFAULT_AUDIO_INTERVAL_MS, DEFAULT_QUEUE_JOBS, DEFAULT_VIDEO_INTERVAL_MS,
};

impl Validator<'_> {
    pub(super) fn content(
        &mut self,
        who: &str,
        mode: Mode,
        raw: Option<Spanned<RawContent>>,
    ) -> ContentConfig {
        let mut cfg = ContentConfig::default();
        let Some(raw) = raw else { return cfg };
        if mode == Mode::Smpte2022_7 {
            self.report(
                raw.span(),
                "channel.content",
                format!("{who}: [channel.content] only applies to mode = \"switch\" (content rules choose a source to fail over to) — remove it from this {mode} channel"),
            );
            return cfg;
        }
        let r = raw.into_inner();
        let who = format!("{who} [channel.content]");
        cfg.black_pixel_threshold = self.real(
            &r.black_pixel_threshold,
            cfg.black_pixel_threshold,
            0.0..=1.0,
            &who,
            "black_pixel_threshold",
            "a share of the luma range; blackdetect's default is 0.10",
        );
        cfg.black_picture_threshold = self.real(
            &r.black_picture_threshold,
            cfg.black_picture_threshold,
            0.001..=1.0,
            &who,
            "black_picture_threshold",
            "a share of the picture's samples; blackdetect's default is 0.98",
        );
        cfg.freeze_noise_db = self.real(
            &r.freeze_noise_db,
            cfg.freeze_noise_db,
            -150.0..=0.0,
            &who,
            "freeze_noise_db",
            "dB; freezedetect's default is -60",
        );
        cfg.silence_dbfs = self.real(
            &r.silence_threshold_dbfs,
            cfg.silence_dbfs,
            -150.0..=0.0,
            &who,
            "silence_threshold_dbfs",
            "dBFS; silencedetect's default is -60",
        );
        let video_ms = self.ranged(
            &r.video_interval_ms,
            DEFAULT_VIDEO_INTERVAL_MS,
            (0, 60_000),
            &who,
            "channel.content.video_interval_ms",
            "milliseconds",
            "the default 1000 analyses one keyframe per second",
        );
        let audio_ms = self.ranged(
            &r.audio_interval_ms,
            DEFAULT_AUDIO_INTERVAL_MS,
            (10, 10_000),
            &who,
            "channel.content.audio_interval_ms",
            "milliseconds of audio",
            "the default is 500",
        );
        let queue = self.ranged(
            &r.analysis_queue,
            DEFAULT_QUEUE_JOBS as u64,
            (1, 1024),
            &who,
            "channel.content.analysis_queue",
            "jobs",
            "the default is 64",
        );
        cfg.video_interval = Duration::from_millis(video_ms);
        cfg.audio_interval = Duration::from_millis(audio_ms);
        cfg.queue_jobs = queue as usize;
        cfg
    }

    /// A finite real in `range`, or `default` (with a finding) when it is not.
    fn real(
        &mut self,
        value: &Option<Spanned<f64>>,
        default: f64,
        range: RangeInclusive<f64>,
        who: &str,
        leaf: &str,
        fix: &str,
    ) -> f64 {
        let Some(v) = value else { return default };
        let x = *v.get_ref();
        if x.is_finite() && range.contains(&x) {
            return x;
        }
        self.report(
            v.span(),
            &format!("channel.content.{leaf}"),
            format!(
                "{who}: {leaf} = {x} is out of range {}..={} — {fix}",
                range.start(),
                range.end()
            ),
        );
        default
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use crate::config::Config;
    use crate::rules::Condition;
    use crate::rules::cqa::ContentConfig;

    fn channel(mode: &str, extra: &str) -> String {
        format!(
            r#"
[[channel]]
name = "news"
mode = "{mode}"
{extra}

  [[channel.source]]
  name = "a"
  url = "udp://127.0.0.1:5000"
  role = "preferred"

  [[channel.source]]
  name = "b"
  url = "udp://127.0.0.1:5002"
  role = "non-preferred"

  [[channel.output]]
  url = "udp://127.0.0.1:6000"
"#
        )
    }

    fn parse(text: &str) -> Result<Config, String> {
        Config::from_str(text, Some(Path::new("site.toml"))).map_err(|e| e.to_string())
    }

    #[test]
    fn content_rules_and_settings() {
        let text = channel(
            "switch",
            r#"
  [channel.content]
  black_pixel_threshold = 0.12
  black_picture_threshold = 0.9
  freeze_noise_db = -50
  silence_threshold_dbfs = -70.5
  video_interval_ms = 2000
  audio_interval_ms = 250
  analysis_queue = 8

  [[channel.rule]]
  condition = "silent-audio"
  pid = 257
  sample_duration_s = 2
  samples = 3
  threshold = 2

  [[channel.rule]]
  condition = "frozen-video"

  [[channel.rule]]
  condition = "blank-picture"
"#,
        );
        let cfg = parse(&text).unwrap();
        let ch = &cfg.channels[0];
        assert_eq!(
            ch.content,
            ContentConfig {
                black_pixel_threshold: 0.12,
                black_picture_threshold: 0.9,
                freeze_noise_db: -50.0,
                silence_dbfs: -70.5,
                video_interval: Duration::from_secs(2),
                audio_interval: Duration::from_millis(250),
                queue_jobs: 8,
            }
        );
        let conds: Vec<_> = ch.rules.iter().map(|r| r.condition).collect();
        assert_eq!(
            conds,
            [
                Condition::SilentAudio,
                Condition::FrozenVideo,
                Condition::BlankPicture
            ]
        );
        assert_eq!(ch.rules[0].pid, Some(crate::ts::Pid(257)));
        // Defaults without the table.
        let cfg = parse(&channel("switch", "")).unwrap();
        assert_eq!(cfg.channels[0].content, ContentConfig::default());
    }

    #[test]
    fn content_errors_name_the_line_and_key() {
        let text = channel(
            "switch",
            "\n  [channel.content]\n  black_picture_threshold = 1.5\n  freeze_noise_db = 6\n  audio_interval_ms = 5",
        );
        let e = parse(&text).unwrap_err();
        assert!(
            e.contains("site.toml:7:29: channel \"news\" [channel.content]: black_picture_threshold = 1.5 is out of range 0.001..=1"),
            "{e}"
        );
        assert!(e.contains("site.toml:8:21: "), "{e}");
        assert!(e.contains("freeze_noise_db = 6 is out of range"), "{e}");
        assert!(
            e.contains("audio_interval_ms = 5 is out of range 10..=10000"),
            "{e}"
        );
        let e = parse(&channel(
            "switch",
            "\n  [channel.content]\n  blackness = 0.5",
        ))
        .unwrap_err();
        assert!(e.contains("unknown field `blackness`"), "{e}");
        let e = parse(&channel(
            "smpte-2022-7",
            "\n  [channel.content]\n  freeze_noise_db = -50",
        ))
        .unwrap_err();
        assert!(
            e.contains("[channel.content] only applies to mode = \"switch\""),
            "{e}"
        );
    }
}
