//! Configuration: TOML → serde ([`raw`]) → validation ([`validate`]) → the typed runtime
//! config below.
//!
//! ```toml
//! [node]                                # optional
//! name = "gw-1"                         # default "hitless"
//! http_listen = "127.0.0.1:9000"        # default; serves /metrics, /healthz, /api/v1/...
//!
//! [[channel]]
//! name = "news"
//! mode = "smpte-2022-7"                 # "smpte-2022-7" | "content-merge" | "switch"
//! merge_window_ms = 1000                # default 1000, 1..=15000
//! offline_window_ms = 500               # default 500
//! auto_switch_to_preferred = true       # default true
//! max_bitrate_mbps = 100                # default 100, 1..=10000: merge buffer = window × bitrate
//! leg_timeout_ms = 100                  # default 100: a leg silent this long is lost
//!
//!   [[channel.source]]
//!   name = "a"
//!   url = "rtp://239.1.1.1:5000?iface=10.1.0.5&source=10.1.0.9"
//!   role = "preferred"                  # "preferred" | "non-preferred" | "slate"
//!   recv_buffer_bytes = 4194304         # default 4 MiB (SO_RCVBUF request)
//!
//!   [[channel.output]]
//!   url = "rtp://239.2.1.1:6000?ttl=16&iface=10.3.0.5"
//! ```
//!
//! Every finding is reported, one per line, as `FILE:LINE:COLUMN: what — how to fix`.
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::url::StreamUrl;

mod raw;
mod validate;

/// The configuration embedded in the binary, used by `hitless run` without `--config`.
pub const DEFAULT_CONFIG: &str = include_str!("../default.toml");
/// The file name used in messages about [`DEFAULT_CONFIG`].
pub const EMBEDDED_NAME: &str = "<embedded default>";

/// `[node] name` when not given.
pub const DEFAULT_NODE_NAME: &str = "hitless";
/// `[node] http_listen` when not given.
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:9000";
/// `merge_window_ms` when not given.
pub const DEFAULT_MERGE_WINDOW_MS: u64 = 1000;
/// Largest accepted `merge_window_ms`.
pub const MAX_MERGE_WINDOW_MS: u64 = 15_000;
/// `offline_window_ms` when not given.
pub const DEFAULT_OFFLINE_WINDOW_MS: u64 = 500;
/// `max_bitrate_mbps` when not given.
pub const DEFAULT_MAX_BITRATE_MBPS: u64 = 100;
/// Largest accepted `max_bitrate_mbps`.
pub const MAX_BITRATE_MBPS: u64 = 10_000;
/// `leg_timeout_ms` when not given.
pub const DEFAULT_LEG_TIMEOUT_MS: u64 = 100;
/// `recv_buffer_bytes` when not given (4 MiB).
pub const DEFAULT_RECV_BUFFER_BYTES: usize = 4 << 20;
/// Largest accepted `recv_buffer_bytes` (1 GiB); the kernel takes an `int` and doubles it.
pub const MAX_RECV_BUFFER_BYTES: usize = 1 << 30;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    #[serde(rename = "smpte-2022-7")]
    Smpte2022_7,
    ContentMerge,
    Switch,
}

impl Mode {
    pub const ALL: [Mode; 3] = [Mode::Smpte2022_7, Mode::ContentMerge, Mode::Switch];

    /// The value as written in TOML.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Smpte2022_7 => "smpte-2022-7",
            Mode::ContentMerge => "content-merge",
            Mode::Switch => "switch",
        }
    }

    /// Whether this build can run a channel in this mode.
    pub fn is_supported(self) -> bool {
        self == Mode::Smpte2022_7
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Preferred,
    NonPreferred,
    Slate,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Preferred, Role::NonPreferred, Role::Slate];

    /// The value as written in TOML.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Preferred => "preferred",
            Role::NonPreferred => "non-preferred",
            Role::Slate => "slate",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub node: NodeConfig,
    pub channels: Vec<ChannelConfig>,
    /// Where it was loaded from (`None` for the embedded default).
    pub path: Option<PathBuf>,
}

#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub name: String,
    pub http_listen: SocketAddr,
}

#[derive(Clone, Debug)]
pub struct ChannelConfig {
    pub name: String,
    pub mode: Mode,
    pub merge_window: Duration,
    pub offline_window: Duration,
    pub auto_switch_to_preferred: bool,
    /// Upper bound of the channel's bitrate; sizes the merge buffer (window × bitrate).
    pub max_bitrate_bps: u64,
    /// A leg silent this long is lost: gaps stop waiting for it (leg_timeout_ms).
    pub leg_timeout: Duration,
    pub sources: Vec<SourceConfig>,
    pub outputs: Vec<OutputConfig>,
}

#[derive(Clone, Debug)]
pub struct SourceConfig {
    pub name: String,
    /// Relative `file://` paths are already resolved against the config file's directory.
    pub url: StreamUrl,
    pub role: Role,
    /// Requested SO_RCVBUF in bytes (0: kernel default).
    pub recv_buffer_bytes: usize,
}

#[derive(Clone, Debug)]
pub struct OutputConfig {
    pub url: StreamUrl,
}

/// One finding about a config file, with its position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file as given to [`Config::load`] / [`Config::from_str`], or [`EMBEDDED_NAME`].
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// The TOML key the finding is about, dotted from the top (`channel.source.url`);
    /// empty when a syntax error has no key.
    pub key: String,
    /// What is wrong and how to fix it (includes the channel and source it is about).
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read the configuration file: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file was read but is not a valid configuration: every finding, in file order,
    /// displayed one per line.
    #[error("{}", display_lines(.0))]
    Invalid(Vec<Diagnostic>),
}

impl ConfigError {
    /// The findings (empty for an I/O error).
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            ConfigError::Io { .. } => &[],
            ConfigError::Invalid(d) => d,
        }
    }
}

fn display_lines(diags: &[Diagnostic]) -> String {
    let lines: Vec<String> = diags.iter().map(Diagnostic::to_string).collect();
    lines.join("\n")
}

impl Config {
    /// Read and validate the file at `path`; messages name it as given.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_owned(),
            source,
        })?;
        Config::from_str(&text, Some(path))
    }

    /// Parse and validate `text`. `path` names the file in messages (`None`: the embedded
    /// default) and anchors relative `file://` URLs at its directory.
    #[allow(clippy::should_implement_trait)] // takes a path too; not `FromStr`
    pub fn from_str(text: &str, path: Option<&Path>) -> Result<Config, ConfigError> {
        validate::parse(text, path)
    }

    /// The channel called `name`.
    pub fn channel(&self, name: &str) -> Option<&ChannelConfig> {
        self.channels.iter().find(|c| c.name == name)
    }
}
