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
