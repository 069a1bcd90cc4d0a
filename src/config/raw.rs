//! The TOML schema as written by users: serde structs that keep every value's byte span so
//! that validation can name the line and column. Nothing here is interpreted; see
//! `validate.rs` for the rules and `mod.rs` for the typed runtime config.
//!
//! This schema is a contract with the people who write channel files: keys are only ever
//! added, and every key below is documented with its unit and default.
//!
//! Keys that validation must check for presence (`name`, `mode`, `url`, `role`) are
//! `Option` here so that a missing key is reported together with every other finding
//! instead of stopping deserialization at the first one.
use serde::Deserialize;
use toml::Spanned;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    /// `[node]`: this gateway. Optional; every key in it has a default.
    #[serde(default)]
    pub node: Option<RawNode>,
    /// `[[channel]]`: one entry per merged stream. At least one is required.
    #[serde(default)]
    pub channel: Vec<Spanned<RawChannel>>,
    /// `[cluster]`: several nodes as one system (see `cluster.rs`). Optional.
    pub cluster: Option<super::cluster::RawCluster>,
}

/// `[node]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNode {
    /// Node name (a metric label: `[A-Za-z0-9_.-]`). Default `"hitless"` — deliberately not
    /// the hostname, so that configs stay portable.
    pub name: Option<Spanned<String>>,
    /// `IP:PORT` where `/metrics`, `/healthz` and `/api/v1/...` are served.
    /// Default `"127.0.0.1:9000"`.
    pub http_listen: Option<Spanned<String>>,
    /// File holding a bearer token required by mutating API calls. Optional (recommended
    /// whenever `http_listen` is not loopback).
    pub api_token_file: Option<Spanned<String>>,
}

/// `[[channel]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawChannel {
    /// Channel name (a metric label: `[A-Za-z0-9_.-]`, unique). Required.
    pub name: Option<Spanned<String>>,
    /// `"smpte-2022-7"` | `"content-merge"` | `"switch"`. Required.
    pub mode: Option<Spanned<String>>,
    /// Merge window in milliseconds (1..=15000): how long a gap waits for the other legs,
    /// so it must exceed the path differential between them. Default 1000.
    pub merge_window_ms: Option<Spanned<u64>>,
    /// Milliseconds (>= 1) without packets before a source is reported offline. Default 500.
    pub offline_window_ms: Option<Spanned<u64>>,
    /// Return to the preferred source when it is healthy again (switch modes). Default true.
    pub auto_switch_to_preferred: Option<bool>,
    /// Upper bound of the channel's bitrate in Mbit/s (1..=10000); sizes the merge buffer
    /// (memory = window × bitrate). Default 100.
    pub max_bitrate_mbps: Option<Spanned<u64>>,
    /// Milliseconds (>= 1) a leg may stay silent before it is considered lost, after which
    /// gaps no longer wait for it. Default 100.
    pub leg_timeout_ms: Option<Spanned<u64>>,
    /// Switch mode: milliseconds (>= 0) a higher-priority source must stay healthy before the
    /// channel switches back to it. Default 5000.
    pub clear_time_ms: Option<Spanned<u64>>,
    /// Switch mode: failures (>= 1) within `holddown_period_ms` that hold a flapping source
    /// down. Default 3.
    pub holddown_failures: Option<Spanned<u64>>,
    /// Switch mode: milliseconds over which failures are counted. Default 60000.
    pub holddown_period_ms: Option<Spanned<u64>>,
    /// Switch mode: milliseconds a flapping source stays held down. Default 30000.
    pub holddown_ms: Option<Spanned<u64>>,
    /// Switch mode: live-event stage at start, `"pre-live"` | `"live"` | `"post-live"`.
    /// Default `"live"`.
    pub stage: Option<Spanned<String>>,
    /// Configured but not running. Default false.
    pub disabled: Option<bool>,
    /// No error/recovery notifications or warning logs (metrics still counted). Default false.
    pub muted: Option<bool>,
    /// Switch mode: land every switch on a random access point of the new source.
    /// Default false.
    pub switch_on_rap: Option<bool>,
    /// Switch mode: milliseconds (1..=10000) a `switch_on_rap` switch may wait. Default 1000.
    pub rap_max_wait_ms: Option<Spanned<u64>>,
    /// TR 101 290 1.6 PID_error period in milliseconds (>= 100). Default 5000.
    pub pid_error_period_ms: Option<Spanned<u64>>,
    /// `[[channel.rule]]`: sampled failover rules (switch and content-merge modes).
    #[serde(default)]
    pub rule: Vec<Spanned<RawRule>>,
    /// `[channel.content]`: content analysis settings for the `frozen-video`,
    /// `blank-picture` and `silent-audio` rules (switch mode). Optional.
    pub content: Option<Spanned<RawContent>>,
    /// `[[channel.source]]`: the legs. At least one.
    #[serde(default)]
    pub source: Vec<Spanned<RawSource>>,
    /// `[[channel.output]]`: where the merged stream goes. At least one.
    #[serde(default)]
    pub output: Vec<Spanned<RawOutput>>,
}

/// `[[channel.source]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSource {
    /// Source name (a metric label: `[A-Za-z0-9_.-]`, unique in the channel). Required.
    pub name: Option<Spanned<String>>,
    /// Stream URL (see `crate::url`): `rtp://IP:PORT[?iface=IP&source=IP]`, `udp://...`, or
    /// `file://` for slates. Required.
    pub url: Option<Spanned<String>>,
    /// `"preferred"` | `"non-preferred"` | `"slate"`. Required.
    pub role: Option<Spanned<String>>,
    /// SO_RCVBUF request in bytes (0 keeps the kernel default; capped by
    /// `net.core.rmem_max`). Default 4194304 (4 MiB).
    pub recv_buffer_bytes: Option<Spanned<u64>>,
}

/// `[[channel.output]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOutput {
    /// Destination URL: `udp://` or `rtp://`, unicast or multicast (`?ttl=N&iface=IP`).
    /// Required.
    pub url: Option<Spanned<String>>,
}

/// `[[channel.rule]]`: a sampled failover rule. Time is cut into windows of
/// `sample_duration_s`; a window is in error when the condition occurred in it; the source
/// is unhealthy while at least `threshold` of the last `samples` windows are in error.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRule {
    /// `"p1-transport-errors"` | `"low-bitrate"` | `"frozen-video"` | `"blank-picture"` |
    /// `"silent-audio"` | `"unrecovered-packets"` (content-merge only: a window is in error
    /// when the merged output lost at least one packet on every leg in it; an alarm on every
    /// source, not a reason to switch). Required.
    pub condition: Option<Spanned<String>>,
    /// Seconds (> 0, fractions allowed) per sample window. Default 10.
    pub sample_duration_s: Option<Spanned<f64>>,
    /// Windows looked at (1..=128). Default 6.
    pub samples: Option<Spanned<u64>>,
    /// Windows in error that fail the source (1..=samples). Default 2.
    pub threshold: Option<Spanned<u64>>,
    /// Only count errors on this PID (0..=8191), for `p1-transport-errors` and the content
    /// conditions (`silent-audio`: one audio PID; the video ones: the video PID).
    pub pid: Option<Spanned<u64>>,
    /// `low-bitrate` only, required there: kbit/s below which a window is in error.
    pub min_kbps: Option<Spanned<u64>>,
}

/// `[channel.content]`: how the content analyser judges pictures and sound (ffmpeg's
/// blackdetect / freezedetect / silencedetect defaults).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawContent {
    /// Luma at or below `16 + t × 219` counts as black (0..=1). Default 0.10.
    pub black_pixel_threshold: Option<Spanned<f64>>,
    /// Share of black luma samples (0..=1, > 0) from which a picture is blank. Default 0.98.
    pub black_picture_threshold: Option<Spanned<f64>>,
    /// dB (−150..=0): sampled pictures differing by at most this much are frozen. Default −60.
    pub freeze_noise_db: Option<Spanned<f64>>,
    /// dBFS (−150..=0): audio whose peak stays below this on every channel is silent.
    /// Default −60.
    pub silence_threshold_dbfs: Option<Spanned<f64>>,
    /// Milliseconds (0..=60000) between analysed keyframes (0: every keyframe). Default 1000.
    pub video_interval_ms: Option<Spanned<u64>>,
    /// Milliseconds of audio (10..=10000) per level measurement. Default 500.
    pub audio_interval_ms: Option<Spanned<u64>>,
    /// Analysis jobs (1..=1024) that may wait for the channel's worker; more are dropped
    /// (never packets). Default 64.
    pub analysis_queue: Option<Spanned<u64>>,
}
