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
}

/// `[[channel]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawChannel {
    /// Channel name (a metric label: `[A-Za-z0-9_.-]`, unique). Required.
    pub name: Option<Spanned<String>>,
    /// `"smpte-2022-7"` | `"content-merge"` | `"switch"`. Required. Only `"smpte-2022-7"`
    /// is supported by this build.
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
