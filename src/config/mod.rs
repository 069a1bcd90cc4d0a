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

pub mod cluster;
mod raw;
mod validate;

pub use cluster::ClusterConfig;

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
/// `clear_time_ms` when not given: how long a better source must stay healthy before the
/// channel switches back to it.
pub const DEFAULT_CLEAR_TIME_MS: u64 = 5_000;
/// `holddown_failures` when not given: failures within `holddown_period_ms` that hold a
/// flapping source down.
pub const DEFAULT_HOLDDOWN_FAILURES: u64 = 3;
/// `holddown_period_ms` when not given.
pub const DEFAULT_HOLDDOWN_PERIOD_MS: u64 = 60_000;
/// `holddown_ms` when not given: how long a flapping source is held down.
pub const DEFAULT_HOLDDOWN_MS: u64 = 30_000;
/// `rap_max_wait_ms` when not given: the longest a `switch_on_rap` switch waits for a
/// random access point of the new source.
pub const DEFAULT_RAP_MAX_WAIT_MS: u64 = 1_000;
/// `pid_error_period_ms` when not given: TR 101 290 1.6 PID_error period.
pub const DEFAULT_PID_ERROR_PERIOD_MS: u64 = 5_000;
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
        matches!(self, Mode::Smpte2022_7 | Mode::Switch | Mode::ContentMerge)
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

/// Live-event stage of a switch channel: pre-live and post-live put the slate on air
/// whatever the health of the other sources; live selects by priority and health.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    PreLive,
    Live,
    PostLive,
}

impl Stage {
    pub const ALL: [Stage; 3] = [Stage::PreLive, Stage::Live, Stage::PostLive];

    /// The value as written in TOML and in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::PreLive => "pre-live",
            Stage::Live => "live",
            Stage::PostLive => "post-live",
        }
    }

    pub fn parse(s: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|x| x.as_str() == s)
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Anti-flapping: a source that fails `failures` times within `period` is held down (not
/// eligible) for `hold`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HoldDownConfig {
    pub failures: u32,
    pub period: Duration,
    pub hold: Duration,
}

/// Validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub node: NodeConfig,
    pub channels: Vec<ChannelConfig>,
    /// `[cluster]`: this node is a member of a multi-node system (`None`: standalone).
    pub cluster: Option<ClusterConfig>,
    /// Where it was loaded from (`None` for the embedded default).
    pub path: Option<PathBuf>,
}

#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// `[node] name`, a metric label (default `"hitless"`).
    pub name: String,
    /// Where the HTTP API and `/metrics` listen (default `127.0.0.1:9000`).
    pub http_listen: SocketAddr,
    /// `api_token_file`, resolved against the config file: mutating API calls then need
    /// `Authorization: Bearer <token>`.
    pub api_token_file: Option<PathBuf>,
}

#[derive(Clone, Debug)]
pub struct ChannelConfig {
    /// Unique channel name, a metric label.
    pub name: String,
    /// [`Mode::Smpte2022_7`] or [`Mode::Switch`] in this build (validation rejects
    /// content-merge).
    pub mode: Mode,
    /// How long a gap waits for the other legs (`merge_window_ms`, default 1000 ms).
    pub merge_window: Duration,
    /// Silence before a source is reported offline (`offline_window_ms`, default 500 ms).
    pub offline_window: Duration,
    /// Return to the preferred source once healthy (default true).
    pub auto_switch_to_preferred: bool,
    /// Upper bound of the channel's bitrate in bit/s (`max_bitrate_mbps` × 10⁶, default
    /// 100 Mbit/s); sizes the merge buffer (window × bitrate).
    pub max_bitrate_bps: u64,
    /// A leg silent this long is lost: gaps stop waiting for it (`leg_timeout_ms`,
    /// default 100 ms).
    pub leg_timeout: Duration,
    /// Switch mode: how long a better source must stay healthy before switching back to it
    /// (`clear_time_ms`, default 5000 ms).
    pub clear_time: Duration,
    /// Switch mode: anti-flapping hold-down (`holddown_failures`, `holddown_period_ms`,
    /// `holddown_ms`; defaults 3 in 60 s → held 30 s).
    pub holddown: HoldDownConfig,
    /// Switch mode: live-event stage at start (`stage`, default live).
    pub stage: Stage,
    /// Configured but not running (`disabled`, default false): no sockets are opened.
    pub disabled: bool,
    /// No error/recovery notifications or warning logs; metrics still counted (`muted`).
    pub muted: bool,
    /// Switch mode: land switches on a random access point of the new source (`switch_on_rap`,
    /// default false), waiting at most `rap_max_wait` (`rap_max_wait_ms`, default 1000 ms).
    pub switch_on_rap: bool,
    pub rap_max_wait: Duration,
    /// TR 101 290 1.6 PID_error period (`pid_error_period_ms`, default 5000 ms).
    pub pid_error_period: Duration,
    /// Switch mode: sampled failover rules (`[[channel.rule]]`), applied to every source.
    pub rules: Vec<crate::rules::RuleSpec>,
    /// Switch mode: content analysis settings (`[channel.content]`), used when a rule needs
    /// them (`frozen-video`, `blank-picture`, `silent-audio`).
    pub content: crate::rules::cqa::ContentConfig,
    /// At least one; network sources never overlap each other's receive addresses.
    pub sources: Vec<SourceConfig>,
    /// At least one; never a source of the same channel, never another output's destination.
    pub outputs: Vec<OutputConfig>,
}

#[derive(Clone, Debug)]
pub struct SourceConfig {
    /// Unique within the channel, a metric label.
    pub name: String,
    /// Relative `file://` paths are already resolved against the config file's directory.
    pub url: StreamUrl,
    /// Never [`Role::Slate`] in a 2022-7 channel.
    pub role: Role,
    /// Requested SO_RCVBUF in bytes (0: kernel default; default 4 MiB).
    pub recv_buffer_bytes: usize,
}

#[derive(Clone, Debug)]
pub struct OutputConfig {
    /// `udp://` (RTP header stripped) or `rtp://` destination.
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

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "site.toml";

    const BASE: &str = r#"[node]
name = "gw-1"
http_listen = "127.0.0.1:9000"

[[channel]]
name = "news"
mode = "smpte-2022-7"

  [[channel.source]]
  name = "a"
  url = "rtp://127.0.0.1:5000"
  role = "preferred"

  [[channel.source]]
  name = "b"
  url = "rtp://127.0.0.1:5002"
  role = "non-preferred"

  [[channel.output]]
  url = "rtp://127.0.0.1:6000"
"#;

    /// A second channel to append to [`BASE`].
    fn sports(src_a: &str, src_b: &str, out: &str) -> String {
        format!(
            r#"
[[channel]]
name = "sports"
mode = "smpte-2022-7"

  [[channel.source]]
  name = "a"
  url = "{src_a}"
  role = "preferred"

  [[channel.source]]
  name = "b"
  url = "{src_b}"
  role = "non-preferred"

  [[channel.output]]
  url = "{out}"
"#
        )
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_str(text, Some(Path::new(FILE)))
    }

    fn diags(text: &str) -> Vec<Diagnostic> {
        match parse(text) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => e.diagnostics().to_vec(),
        }
    }

    /// `FILE:LINE:COL:` of the `nth` (0-based) occurrence of `needle`, counted by hand.
    fn pos(text: &str, needle: &str, nth: usize) -> String {
        let offset = text
            .match_indices(needle)
            .nth(nth)
            .unwrap_or_else(|| panic!("{needle:?} not in text"))
            .0;
        let line = text[..offset].lines().count() + usize::from(text[..offset].ends_with('\n'));
        let line = line.max(1);
        let col = offset - text[..offset].rfind('\n').map_or(0, |i| i + 1) + 1;
        format!("{FILE}:{line}:{col}:")
    }

    /// Assert one finding is at `needle` (its `nth` occurrence), about `key`, and says `says`.
    #[track_caller]
    fn expect_at(text: &str, needle: &str, nth: usize, key: &str, says: &str) {
        let at = pos(text, needle, nth);
        let ds = diags(text);
        let found = ds.iter().any(|d| {
            let s = d.to_string();
            s.starts_with(&at) && d.key == key && s.contains(says)
        });
        let all: Vec<String> = ds.iter().map(|d| format!("{} [{}]", d, d.key)).collect();
        assert!(
            found,
            "no finding at {at} key {key} saying {says:?}; got:\n{}",
            all.join("\n")
        );
    }

    fn replace(old: &str, new: &str) -> String {
        assert!(BASE.contains(old), "{old:?} not in BASE");
        BASE.replacen(old, new, 1)
    }

    #[test]
    fn default_config_parses() {
        let cfg = Config::from_str(DEFAULT_CONFIG, None).unwrap();
        assert_eq!(cfg.node.name, "hitless");
        assert_eq!(cfg.node.http_listen, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(cfg.path, None);
        assert_eq!(cfg.channels.len(), 1);
        let ch = &cfg.channels[0];
        assert_eq!((ch.name.as_str(), ch.mode), ("default", Mode::Smpte2022_7));
        let srcs: Vec<_> = ch
            .sources
            .iter()
            .map(|s| (s.name.as_str(), s.url.to_string(), s.role))
            .collect();
        assert_eq!(
            srcs,
            [
                ("a", "rtp://127.0.0.1:5000".to_owned(), Role::Preferred),
                ("b", "rtp://127.0.0.1:5002".to_owned(), Role::NonPreferred)
            ]
        );
        assert_eq!(ch.outputs[0].url.to_string(), "rtp://127.0.0.1:6000");
    }

    #[test]
    fn embedded_default_is_named_in_messages() {
        let e = Config::from_str("[[channel]]\nname = 1\n", None).unwrap_err();
        assert!(e.to_string().starts_with("<embedded default>:2:8: "), "{e}");
    }

    #[test]
    fn defaults_apply() {
        let text = BASE.replace(
            "[node]\nname = \"gw-1\"\nhttp_listen = \"127.0.0.1:9000\"\n",
            "",
        );
        let cfg = parse(&text).unwrap();
        assert_eq!(cfg.path.as_deref(), Some(Path::new(FILE)));
        assert_eq!(cfg.node.name, DEFAULT_NODE_NAME);
        assert_eq!(cfg.node.http_listen.to_string(), DEFAULT_HTTP_LISTEN);
        let ch = &cfg.channels[0];
        assert_eq!(ch.merge_window, Duration::from_millis(1000));
        assert_eq!(ch.offline_window, Duration::from_millis(500));
        assert!(ch.auto_switch_to_preferred);
        assert_eq!(ch.max_bitrate_bps, 100_000_000);
        assert_eq!(ch.leg_timeout, Duration::from_millis(100));
        assert_eq!(ch.sources[0].recv_buffer_bytes, 4 * 1024 * 1024);
    }

    #[test]
    fn explicit_values_are_used() {
        let text = replace(
            "mode = \"smpte-2022-7\"\n",
            "mode = \"smpte-2022-7\"\nmerge_window_ms = 250\noffline_window_ms = 80\nauto_switch_to_preferred = false\nmax_bitrate_mbps = 20\nleg_timeout_ms = 40\n",
        )
        .replace("role = \"preferred\"", "role = \"preferred\"\n  recv_buffer_bytes = 0");
        let ch = parse(&text).unwrap().channels.remove(0);
        assert_eq!(ch.merge_window, Duration::from_millis(250));
        assert_eq!(ch.offline_window, Duration::from_millis(80));
        assert!(!ch.auto_switch_to_preferred);
        assert_eq!(ch.max_bitrate_bps, 20_000_000);
        assert_eq!(ch.leg_timeout, Duration::from_millis(40));
        assert_eq!(ch.sources[0].recv_buffer_bytes, 0);
    }

    #[test]
    fn unknown_key_names_position_and_allowed_keys() {
        let text = replace("mode = ", "merge_windw_ms = 5\nmode = ");
        expect_at(
            &text,
            "merge_windw_ms",
            0,
            "channel.merge_windw_ms",
            "unknown field `merge_windw_ms`",
        );
        expect_at(
            &text,
            "merge_windw_ms",
            0,
            "channel.merge_windw_ms",
            "`merge_window_ms`",
        );
        let text = replace(
            "  role = \"preferred\"",
            "  role = \"preferred\"\n  iface = \"10.0.0.1\"",
        );
        expect_at(
            &text,
            "iface",
            0,
            "channel.source.iface",
            "`recv_buffer_bytes`",
        );
    }

    #[test]
    fn wrong_type_names_key() {
        let text = replace(
            "mode = \"smpte-2022-7\"\n",
            "mode = \"smpte-2022-7\"\nmerge_window_ms = \"1000\"\n",
        );
        expect_at(
            &text,
            "\"1000\"",
            0,
            "channel.merge_window_ms",
            "merge_window_ms: invalid type",
        );
        let text = replace(
            "mode = \"smpte-2022-7\"\n",
            "mode = \"smpte-2022-7\"\nleg_timeout_ms = -5\n",
        );
        expect_at(&text, "-5", 0, "channel.leg_timeout_ms", "whole number");
    }

    #[test]
    fn single_brackets_hint() {
        let text = "[channel]\nname = \"x\"\n";
        let e = parse(text).unwrap_err().to_string();
        assert!(e.starts_with("site.toml:1:1: "), "{e}");
        assert!(e.contains("double brackets"), "{e}");
    }

    #[test]
    fn syntax_error_has_position() {
        let text = replace("name = \"news\"", "name = \"news");
        let e = parse(&text).unwrap_err();
        assert_eq!(e.diagnostics().len(), 1);
        assert!(e.to_string().starts_with("site.toml:6:"), "{e}");
    }

    #[test]
    fn unknown_mode_lists_valid_values() {
        let text = replace("\"smpte-2022-7\"", "\"2022-7\"");
        expect_at(
            &text,
            "\"2022-7\"",
            0,
            "channel.mode",
            "\"smpte-2022-7\", \"content-merge\", \"switch\"",
        );
        let text = replace("\"smpte-2022-7\"", "\"SMPTE-2022-7\"");
        expect_at(&text, "\"SMPTE", 0, "channel.mode", "lowercase");
    }

    #[test]
    fn content_merge_mode_is_accepted() {
        let text = replace("\"smpte-2022-7\"", "\"content-merge\"");
        let cfg = parse(&text).unwrap();
        assert_eq!(cfg.channels[0].mode, Mode::ContentMerge);
    }

    #[test]
    fn switch_channel_with_rules_stage_and_slate() {
        let text = replace("\"smpte-2022-7\"", "\"switch\"")
            + r#"
  [[channel.source]]
  name = "slate"
  url = "file://slate.ts"
  role = "slate"

  [[channel.rule]]
  condition = "p1-transport-errors"
  sample_duration_s = 10
  samples = 6
  threshold = 2
  pid = 256

  [[channel.rule]]
  condition = "low-bitrate"
  sample_duration_s = 1
  samples = 3
  threshold = 3
  min_kbps = 1500
"#;
        let text = text.replacen(
            "mode = \"switch\"",
            "mode = \"switch\"\nclear_time_ms = 2000\nstage = \"pre-live\"\nmuted = true",
            1,
        );
        let cfg = Config::from_str(&text, Some(Path::new("/etc/hitless/site.toml"))).unwrap();
        let ch = &cfg.channels[0];
        assert_eq!(ch.mode, Mode::Switch);
        assert_eq!(ch.stage, Stage::PreLive);
        assert_eq!(ch.clear_time, Duration::from_millis(2000));
        assert!(ch.muted && !ch.disabled);
        assert_eq!(ch.sources[2].role, Role::Slate);
        assert_eq!(
            ch.sources[2].url.path.as_deref(),
            Some(Path::new("/etc/hitless/slate.ts"))
        );
        assert_eq!(ch.rules.len(), 2);
        assert_eq!(ch.rules[0].pid, Some(crate::ts::Pid(256)));
        assert_eq!(ch.rules[0].sample_duration, Duration::from_secs(10));
        assert_eq!(
            (
                ch.rules[1].samples,
                ch.rules[1].threshold,
                ch.rules[1].min_kbps
            ),
            (3, 3, Some(1500))
        );
    }

    #[test]
    fn rule_errors_name_the_key_and_fix() {
        let sw = replace("\"smpte-2022-7\"", "\"switch\"");
        let with = |rule: &str| format!("{sw}\n  [[channel.rule]]\n{rule}\n");
        let e = parse(&with("  condition = \"low-bitrate\""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("low-bitrate needs min_kbps"), "{e}");
        let e = parse(&with(
            "  condition = \"p1-transport-errors\"\n  samples = 3\n  threshold = 4",
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("threshold = 4 is out of range 1..=3"), "{e}");
        // unrecovered-packets: content-merge only, the error names the position and the fix.
        let text = with("  condition = \"unrecovered-packets\"");
        expect_at(
            &text,
            "\"unrecovered-packets\"",
            0,
            "channel.rule.condition",
            "only meaningful in mode = \"content-merge\"",
        );
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.contains("use \"p1-transport-errors\""), "{e}");
        let cm = replace("\"smpte-2022-7\"", "\"content-merge\"")
            + "\n  [[channel.rule]]\n  condition = \"unrecovered-packets\"\n  sample_duration_s = 1\n  samples = 3\n  threshold = 1\n";
        let cfg = parse(&cm).unwrap();
        let r = &cfg.channels[0].rules[0];
        assert_eq!(
            (r.condition, r.sample_duration, r.samples, r.threshold),
            (
                crate::rules::Condition::UnrecoveredPackets,
                Duration::from_secs(1),
                3,
                1
            )
        );
        let e = parse(&format!(
            "{BASE}\n  [[channel.rule]]\n  condition = \"unrecovered-packets\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("a smpte-2022-7 channel runs no rules")
                && e.contains("hitless_merge_unrecovered_packets_total"),
            "{e}"
        );
        let e = parse(&with("  condition = \"black\""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not a rule condition — use one of"), "{e}");
        let e = parse(&format!(
            "{BASE}\n  [[channel.rule]]\n  condition = \"low-bitrate\"\n  min_kbps = 1\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("failover rules apply to mode = \"switch\""),
            "{e}"
        );
        let e = parse(&sw.replacen(
            "mode = \"switch\"",
            "mode = \"switch\"\nstage = \"live-ish\"",
            1,
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("site.toml:8:9: ")
                && e.contains("use one of \"pre-live\", \"live\", \"post-live\""),
            "{e}"
        );
    }

    #[test]
    fn unknown_role_lists_valid_values() {
        let text = replace("\"non-preferred\"", "\"backup\"");
        expect_at(
            &text,
            "\"backup\"",
            0,
            "channel.source.role",
            "source \"b\": role \"backup\" is not a valid role — use one of \"preferred\", \"non-preferred\", \"slate\"",
        );
    }

    #[test]
    fn duplicate_channel_names() {
        let text = format!(
            "{BASE}{}",
            sports(
                "rtp://127.0.0.1:5100",
                "rtp://127.0.0.1:5102",
                "rtp://127.0.0.1:6100"
            )
        )
        .replace("name = \"sports\"", "name = \"news\"");
        expect_at(
            &text,
            "\"news\"",
            1,
            "channel.name",
            "already used by the [[channel]] at line 5",
        );
    }

    #[test]
    fn duplicate_source_names() {
        let text = replace("name = \"b\"", "name = \"a\"");
        expect_at(
            &text,
            "\"a\"",
            1,
            "channel.source.name",
            "unique within a channel",
        );
    }

    #[test]
    fn port_reused_across_channels() {
        let text = format!(
            "{BASE}{}",
            sports(
                "rtp://127.0.0.1:5100",
                "rtp://127.0.0.1:5002",
                "rtp://127.0.0.1:6100"
            )
        );
        expect_at(
            &text,
            "\"rtp://127.0.0.1:5002\"",
            1,
            "channel.source.url",
            "channel \"sports\" source \"b\": url \"rtp://127.0.0.1:5002\": port 5002 is already used by channel \"news\" source \"b\"",
        );
        expect_at(
            &text,
            "\"rtp://127.0.0.1:5002\"",
            1,
            "channel.source.url",
            "give every source its own port",
        );
    }

    #[test]
    fn wildcard_overlaps_specific_and_multicast() {
        let text = format!(
            "{BASE}{}",
            sports(
                "rtp://0.0.0.0:5000",
                "rtp://127.0.0.1:5102",
                "rtp://127.0.0.1:6100"
            )
        );
        expect_at(
            &text,
            "\"rtp://0.0.0.0:5000\"",
            0,
            "channel.source.url",
            "wildcard bind",
        );
        let text = format!(
            "{BASE}{}",
            sports(
                "rtp://239.1.1.1:5102",
                "rtp://0.0.0.0:5102",
                "rtp://127.0.0.1:6100"
            )
        );
        expect_at(
            &text,
            "\"rtp://0.0.0.0:5102\"",
            0,
            "channel.source.url",
            "wildcard bind",
        );
        // Different specific addresses on one port do not overlap.
        let text = format!(
            "{BASE}{}",
            sports(
                "rtp://127.0.0.2:5000",
                "rtp://127.0.0.2:5002",
                "rtp://127.0.0.1:6100"
            )
        );
        parse(&text).unwrap();
    }

    #[test]
    fn multicast_groups_share_a_port_only_when_distinct() {
        let ok = sports(
            "rtp://239.1.1.1:5000",
            "rtp://239.1.1.2:5000",
            "rtp://239.9.9.9:6000",
        );
        parse(&format!("{BASE}{ok}")).unwrap();
        let ssm = sports(
            "rtp://232.1.1.1:5000?source=10.1.0.9",
            "rtp://232.1.1.1:5000?source=10.2.0.9",
            "rtp://239.9.9.9:6000",
        );
        parse(&format!("{BASE}{ssm}")).unwrap();
        let clash = sports(
            "rtp://239.1.1.1:5000?iface=10.1.0.5",
            "rtp://239.1.1.1:5000?iface=10.2.0.5",
            "rtp://239.9.9.9:6000",
        );
        let text = format!("{BASE}{clash}");
        expect_at(
            &text,
            "\"rtp://239.1.1.1:5000?iface=10.2",
            0,
            "channel.source.url",
            "group 239.1.1.1:5000 is already received by channel \"sports\" source \"a\"",
        );
    }

    #[test]
    fn output_to_own_source_is_a_loop() {
        let text = replace("rtp://127.0.0.1:6000", "udp://127.0.0.1:5002");
        expect_at(
            &text,
            "\"udp://127.0.0.1:5002\"",
            0,
            "channel.output.url",
            "which channel \"news\" source \"b\" receives — a loop",
        );
        let text = replace("rtp://127.0.0.1:5000", "rtp://0.0.0.0:6000");
        expect_at(
            &text,
            "\"rtp://127.0.0.1:6000\"",
            0,
            "channel.output.url",
            "a loop",
        );
    }

    #[test]
    fn duplicate_output_destination() {
        let text = format!(
            "{BASE}{}",
            sports(
                "rtp://127.0.0.1:5100",
                "rtp://127.0.0.1:5102",
                "rtp://127.0.0.1:6000"
            )
        );
        expect_at(
            &text,
            "\"rtp://127.0.0.1:6000\"",
            1,
            "channel.output.url",
            "already used by channel \"news\" output #1",
        );
        // The same group out of two interfaces is a red/blue output pair.
        let pair = "url = \"rtp://239.2.1.1:6000?iface=10.1.0.5\"\n\n  [[channel.output]]\n  url = \"rtp://239.2.1.1:6000?iface=10.2.0.5\"";
        parse(&replace("url = \"rtp://127.0.0.1:6000\"", pair)).unwrap();
    }

    #[test]
    fn windows_and_bitrate_ranges() {
        let set = |kv: &str| {
            replace(
                "mode = \"smpte-2022-7\"\n",
                &format!("mode = \"smpte-2022-7\"\n{kv}\n"),
            )
        };
        let text = set("merge_window_ms = 0");
        expect_at(
            &text,
            "0\n",
            0,
            "channel.merge_window_ms",
            "merge_window_ms = 0 is out of range 1..=15000 (milliseconds)",
        );
        let text = set("merge_window_ms = 15001");
        expect_at(
            &text,
            "15001",
            0,
            "channel.merge_window_ms",
            "path differential",
        );
        parse(&set("merge_window_ms = 15000")).unwrap();
        let text = set("offline_window_ms = 0");
        expect_at(
            &text,
            "0\n",
            0,
            "channel.offline_window_ms",
            "must be at least 1 (milliseconds)",
        );
        let text = set("max_bitrate_mbps = 0");
        expect_at(
            &text,
            "0\n",
            0,
            "channel.max_bitrate_mbps",
            "1..=10000 (Mbit/s)",
        );
        let text = set("max_bitrate_mbps = 10001");
        expect_at(
            &text,
            "10001",
            0,
            "channel.max_bitrate_mbps",
            "merge buffer",
        );
        let text = set("leg_timeout_ms = 0");
        expect_at(
            &text,
            "0\n",
            0,
            "channel.leg_timeout_ms",
            "leg_timeout_ms = 0 must be at least 1",
        );
    }

    #[test]
    fn slate_not_allowed_in_2022_7() {
        let text = replace("\"non-preferred\"", "\"slate\"");
        expect_at(
            &text,
            "\"slate\"",
            0,
            "channel.source.role",
            "not allowed in a smpte-2022-7 channel",
        );
    }

    #[test]
    fn smpte_2022_7_needs_rtp() {
        let text = replace("rtp://127.0.0.1:5002", "udp://127.0.0.1:5002");
        expect_at(
            &text,
            "\"udp://",
            0,
            "channel.source.url",
            "smpte-2022-7 needs RTP sequence numbers",
        );
    }

    #[test]
    fn file_urls_only_for_slates_and_never_outputs() {
        let text = replace("rtp://127.0.0.1:5002", "file:///srv/slate.ts");
        expect_at(
            &text,
            "\"file://",
            0,
            "channel.source.url",
            "file:// is only for slate sources",
        );
        let text = replace("rtp://127.0.0.1:6000", "file:///tmp/out.ts");
        expect_at(
            &text,
            "\"file://",
            0,
            "channel.output.url",
            "file:// cannot be an output",
        );
    }

    #[test]
    fn udp_output_is_accepted() {
        let cfg = parse(&replace(
            "rtp://127.0.0.1:6000",
            "udp://239.2.1.1:6000?ttl=4",
        ))
        .unwrap();
        assert_eq!(cfg.channels[0].outputs[0].url.ttl, Some(4));
    }

    #[test]
    fn url_errors_carry_position() {
        let text = replace("rtp://127.0.0.1:5002", "rtp://localhost:5002");
        expect_at(
            &text,
            "\"rtp://localhost",
            0,
            "channel.source.url",
            "hostnames are not resolved",
        );
        let text = replace("rtp://127.0.0.1:5002", "rtp://127.0.0.1:5002?ttl=4");
        expect_at(
            &text,
            "\"rtp://127.0.0.1:5002?",
            0,
            "channel.source.url",
            "ttl= applies to outputs only",
        );
        let text = replace(
            "rtp://127.0.0.1:5002",
            "rtp://127.0.0.1:5002?iface=127.0.0.1",
        );
        expect_at(
            &text,
            "\"rtp://127.0.0.1:5002?",
            0,
            "channel.source.url",
            "iface= selects the interface of a multicast join",
        );
        let text = replace(
            "rtp://127.0.0.1:6000",
            "rtp://127.0.0.1:6000?source=127.0.0.9",
        );
        expect_at(
            &text,
            "\"rtp://127.0.0.1:6000?",
            0,
            "channel.output.url",
            "applies to sources only",
        );
    }

    #[test]
    fn names_are_metric_labels() {
        let text = replace("name = \"news\"", "name = \"news feed\"");
        expect_at(
            &text,
            "\"news feed\"",
            0,
            "channel.name",
            "outside [A-Za-z0-9_.-] (names become metric labels) — e.g. \"news_feed\"",
        );
        let text = replace("name = \"a\"", "name = \"\"");
        expect_at(&text, "\"\"", 0, "channel.source.name", "name is empty");
        let text = replace("name = \"gw-1\"", "name = \"gw/1\"");
        expect_at(&text, "\"gw/1\"", 0, "node.name", "[node]: name");
    }

    #[test]
    fn missing_keys_point_at_their_table() {
        let text = replace("  url = \"rtp://127.0.0.1:5002\"\n", "");
        expect_at(
            &text,
            "[[channel.source]]",
            1,
            "channel.source.url",
            "missing key `url`",
        );
        let text = replace("  role = \"preferred\"\n", "");
        expect_at(
            &text,
            "[[channel.source]]",
            0,
            "channel.source.role",
            "missing key `role`",
        );
        let text = replace("mode = \"smpte-2022-7\"\n", "");
        expect_at(
            &text,
            "[[channel]]",
            0,
            "channel.mode",
            "missing key `mode`",
        );
    }

    #[test]
    fn channels_sources_and_outputs_required() {
        expect_at(
            "[node]\nname = \"x\"\n",
            "[node]",
            0,
            "channel",
            "no [[channel]] is defined",
        );
        let text = "[[channel]]\nname = \"x\"\nmode = \"smpte-2022-7\"\n";
        expect_at(
            text,
            "[[channel]]",
            0,
            "channel.source",
            "no [[channel.source]]",
        );
        expect_at(
            text,
            "[[channel]]",
            0,
            "channel.output",
            "no [[channel.output]]",
        );
    }

    #[test]
    fn http_listen_and_recv_buffer() {
        let text = replace("\"127.0.0.1:9000\"", "\"localhost:9000\"");
        expect_at(
            &text,
            "\"localhost",
            0,
            "node.http_listen",
            "is not IP:PORT",
        );
        let text = replace(
            "role = \"preferred\"",
            "role = \"preferred\"\n  recv_buffer_bytes = 4000000000",
        );
        expect_at(
            &text,
            "4000000000",
            0,
            "channel.source.recv_buffer_bytes",
            "larger than 1073741824",
        );
    }

    #[test]
    fn every_finding_is_reported_one_per_line() {
        let text = replace("\"smpte-2022-7\"", "\"content_merge\"")
            .replace("name = \"b\"", "name = \"a\"")
            .replace("rtp://127.0.0.1:6000", "rtp://127.0.0.1:5000");
        let e = parse(&text).unwrap_err();
        assert_eq!(e.diagnostics().len(), 3, "{e}");
        let shown = e.to_string();
        let lines: Vec<&str> = shown.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(
            lines[0].starts_with("site.toml:7:8: channel \"news\": mode \"content_merge\""),
            "{e}"
        );
        assert!(
            lines[1].starts_with("site.toml:15:10: channel \"news\" source \"a\": name"),
            "{e}"
        );
        assert!(
            lines[2].starts_with("site.toml:20:9: channel \"news\" output #1: url"),
            "{e}"
        );
    }

    #[test]
    fn load_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.toml");
        let e = Config::load(&missing).unwrap_err();
        assert!(
            e.to_string().starts_with(&missing.display().to_string()),
            "{e}"
        );
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, replace("\"smpte-2022-7\"", "\"content_merge\"")).unwrap();
        let e = Config::load(&bad).unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("{}:7:8: ", bad.display())),
            "{e}"
        );
        let good = dir.path().join("good.toml");
        std::fs::write(&good, BASE).unwrap();
        assert_eq!(
            Config::load(&good).unwrap().path.as_deref(),
            Some(good.as_path())
        );
    }
}
