//! Validation: the raw TOML structs of `raw.rs` → the typed [`Config`], collecting every
//! finding (not only the first) with the line and column of the value it is about.
//!
//! Messages read `FILE:LINE:COLUMN: channel "news" source "b": url "...": what is wrong — how
//! to fix it`, so that a broadcast engineer can fix a file without reading this code.
use std::net::IpAddr;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use toml::Spanned;

use super::raw::{RawChannel, RawConfig, RawNode, RawOutput, RawRule, RawSource};

mod content;
use super::{
    ChannelConfig, Config, ConfigError, DEFAULT_CLEAR_TIME_MS, DEFAULT_HOLDDOWN_FAILURES,
    DEFAULT_HOLDDOWN_MS, DEFAULT_HOLDDOWN_PERIOD_MS, DEFAULT_HTTP_LISTEN, DEFAULT_LEG_TIMEOUT_MS,
    DEFAULT_MAX_BITRATE_MBPS, DEFAULT_MERGE_WINDOW_MS, DEFAULT_NODE_NAME,
    DEFAULT_OFFLINE_WINDOW_MS, DEFAULT_PID_ERROR_PERIOD_MS, DEFAULT_RAP_MAX_WAIT_MS,
    DEFAULT_RECV_BUFFER_BYTES, Diagnostic, EMBEDDED_NAME, HoldDownConfig, MAX_BITRATE_MBPS,
    MAX_MERGE_WINDOW_MS, MAX_RECV_BUFFER_BYTES, Mode, NodeConfig, OutputConfig, Role, SourceConfig,
    Stage,
};
use crate::rules::{Condition, RuleSpec};
use crate::ts::Pid;
use crate::url::{Scheme, StreamUrl};

/// Parse and validate; see [`Config::from_str`].
pub(super) fn parse(text: &str, path: Option<&Path>) -> Result<Config, ConfigError> {
    let file = path.map_or_else(|| EMBEDDED_NAME.to_owned(), |p| p.display().to_string());
    let mut v = Validator {
        text,
        file,
        diags: Vec::new(),
    };
    let raw: RawConfig = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            // toml stops at the first syntax or type error, so this is the only finding.
            v.serde_error(&e);
            return Err(ConfigError::Invalid(v.diags));
        }
    };
    let base_dir = path.and_then(Path::parent);
    let mut cfg = v.config(raw, base_dir);
    if v.diags.is_empty() {
        cfg.path = path.map(Path::to_owned);
        Ok(cfg)
    } else {
        v.diags.sort_by_key(|d| (d.line, d.column));
        Err(ConfigError::Invalid(v.diags))
    }
}

pub(super) struct Validator<'a> {
    pub(super) text: &'a str,
    file: String,
    diags: Vec<Diagnostic>,
}

/// A network source already seen, for the port-overlap check across all channels.
struct SeenSource {
    who: String,
    url: StreamUrl,
}

/// An output already seen, for the duplicate-destination check across all channels.
struct SeenOutput {
    who: String,
    url: StreamUrl,
}

#[derive(Default)]
struct Seen {
    /// Channel name and the line of its `[[channel]]`.
    channels: Vec<(String, usize)>,
    sources: Vec<SeenSource>,
    outputs: Vec<SeenOutput>,
}

impl Validator<'_> {
    pub(super) fn report(&mut self, span: Range<usize>, key: &str, message: String) {
        let (line, column) = line_col(self.text, span.start);
        self.diags.push(Diagnostic {
            file: self.file.clone(),
            line,
            column,
            key: key.to_owned(),
            message,
        });
    }

    /// Turn a toml/serde error (syntax, unknown key, wrong type) into a diagnostic.
    fn serde_error(&mut self, e: &toml::de::Error) {
        let span = e.span().unwrap_or(0..0);
        let msg = e.message().trim().replace('\n', "; ");
        let spanned = self.text.get(span.clone()).unwrap_or_default();
        let (key, leaf) = if let Some(header) = header_name(spanned) {
            // The error is about a whole table, e.g. `[channel]` where a list is expected.
            let leaf = header.rsplit('.').next().unwrap_or_default().to_owned();
            (header, leaf)
        } else {
            let leaf = key_at(self.text, span.start)
                .or_else(|| bare_key(spanned))
                .unwrap_or_default();
            let key = match (table_at(self.text, span.start), leaf.is_empty()) {
                (_, true) => String::new(),
                (Some(table), false) => format!("{table}.{leaf}"),
                (None, false) => leaf.clone(),
            };
            (key, leaf)
        };
        let mut message = if leaf.is_empty() || msg.contains(&format!("`{leaf}`")) {
            msg.clone()
        } else {
            format!("{leaf}: {msg}")
        };
        if msg.starts_with("unknown field") {
            message.push_str(" — fix the spelling or remove the key");
        } else if msg.contains("expected a sequence")
            && ["channel", "source", "output"].contains(&leaf.as_str())
        {
            message.push_str(" — write [[channel]], [[channel.source]] and [[channel.output]] with double brackets (each is a list of tables)");
        } else if msg.contains("expected u64") {
            message = message.replace("expected u64", "expected a whole number ≥ 0 without quotes");
        } else if msg.contains("expected a string") || msg.contains("expected a boolean") {
            message.push_str(
                " — check the quotes: text values are quoted, numbers and true/false are not",
            );
        }
        self.report(span, &key, message);
    }

    fn config(&mut self, raw: RawConfig, base: Option<&Path>) -> Config {
        let node = self.node(raw.node, base);
        // A cluster member may start with no channels of its own: the show comes from peers.
        if raw.channel.is_empty() && raw.cluster.is_none() {
            self.report(
                0..0,
                "channel",
                "no [[channel]] is defined — add at least one [[channel]] with a [[channel.source]] and a [[channel.output]]".to_owned(),
            );
        }
        let mut seen = Seen::default();
        let channels: Vec<ChannelConfig> = raw
            .channel
            .into_iter()
            .enumerate()
            .map(|(i, ch)| self.channel(i, ch, base, &mut seen))
            .collect();
        let names: Vec<String> = channels.iter().map(|c| c.name.clone()).collect();
        let cluster = raw.cluster.map(|c| self.cluster(c, base, &names));
        Config {
            node,
            channels,
            cluster,
            path: None,
        }
    }

    fn node(&mut self, raw: Option<RawNode>, base: Option<&Path>) -> NodeConfig {
        let raw = raw.unwrap_or(RawNode {
            name: None,
            http_listen: None,
            api_token_file: None,
        });
        let api_token_file = raw.api_token_file.as_ref().map(|f| match base {
            Some(b) if Path::new(f.get_ref()).is_relative() => b.join(f.get_ref()),
            _ => Path::new(f.get_ref()).to_owned(),
        });
        let name = match &raw.name {
            Some(n) => {
                self.check_name(n, "node.name", "[node]");
                n.get_ref().clone()
            }
            None => DEFAULT_NODE_NAME.to_owned(),
        };
        let default_listen = DEFAULT_HTTP_LISTEN
            .parse()
            .expect("DEFAULT_HTTP_LISTEN is a literal socket address");
        let http_listen = match &raw.http_listen {
            None => default_listen,
            Some(l) => match l.get_ref().trim().parse() {
                Ok(addr) => addr,
                Err(_) => {
                    self.report(
                        l.span(),
                        "node.http_listen",
                        format!(
                            "[node]: http_listen {:?} is not IP:PORT — e.g. \"127.0.0.1:9000\", or \"0.0.0.0:9000\" to serve on every interface (hostnames are not resolved)",
                            l.get_ref()
                        ),
                    );
                    default_listen
                }
            },
        };
        NodeConfig {
            name,
            http_listen,
            api_token_file,
        }
    }

    /// Names become metric labels, so they are restricted to `[A-Za-z0-9_.-]`.
    pub(super) fn check_name(&mut self, name: &Spanned<String>, key: &str, who: &str) -> bool {
        let n = name.get_ref();
        if n.is_empty() {
            self.report(
                name.span(),
                key,
                format!("{who}: name is empty — give a name of letters, digits, '_', '.' or '-' (it becomes a metric label)"),
            );
            return false;
        }
        if !n.chars().all(valid_name_char) {
            let fixed: String = n
                .chars()
                .map(|c| if valid_name_char(c) { c } else { '_' })
                .collect();
            self.report(
                name.span(),
                key,
                format!(
                    "{who}: name {n:?} has characters outside [A-Za-z0-9_.-] (names become metric labels) — e.g. {fixed:?}"
                ),
            );
            return false;
        }
        true
    }

    /// A whole number with a default and an inclusive range.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn ranged(
        &mut self,
        value: &Option<Spanned<u64>>,
        default: u64,
        range: (u64, u64),
        who: &str,
        key: &str,
        unit: &str,
        fix: &str,
    ) -> u64 {
        let Some(v) = value else { return default };
        let (min, max) = range;
        let n = *v.get_ref();
        if n < min || n > max {
            let leaf = key.rsplit('.').next().unwrap_or(key);
            let allowed = if max == u64::MAX {
                format!("must be at least {min} ({unit})")
            } else {
                format!("is out of range {min}..={max} ({unit})")
            };
            self.report(
                v.span(),
                key,
                format!("{who}: {leaf} = {n} {allowed} — {fix}"),
            );
            return default;
        }
        n
    }

    fn channel(
        &mut self,
        index: usize,
        ch: Spanned<RawChannel>,
        base: Option<&Path>,
        seen: &mut Seen,
    ) -> ChannelConfig {
        let header = ch.span();
        let ch: RawChannel = ch.into_inner();
        let who = match &ch.name {
            Some(n) if !n.get_ref().is_empty() => format!("channel {:?}", n.get_ref()),
            _ => format!("channel #{}", index + 1),
        };

        let name = match &ch.name {
            None => {
                self.report(
                    header.clone(),
                    "channel.name",
                    format!("{who}: missing key `name` — add name = \"...\" (letters, digits, '_', '.', '-'; it becomes a metric label)"),
                );
                String::new()
            }
            Some(n) => {
                if self.check_name(n, "channel.name", &who) {
                    let line = line_col(self.text, header.start).0;
                    if let Some((_, first)) = seen.channels.iter().find(|(c, _)| c == n.get_ref()) {
                        self.report(
                            n.span(),
                            "channel.name",
                            format!("{who}: name is already used by the [[channel]] at line {first} — channel names must be unique"),
                        );
                    } else {
                        seen.channels.push((n.get_ref().clone(), line));
                    }
                }
                n.get_ref().clone()
            }
        };

        let mode = self.mode(&ch, &who, header.clone());

        let merge_ms = self.ranged(
            &ch.merge_window_ms,
            DEFAULT_MERGE_WINDOW_MS,
            (1, MAX_MERGE_WINDOW_MS),
            &who,
            "channel.merge_window_ms",
            "milliseconds",
            "it must exceed the path differential between the legs; 1000 (the default) suits most sites",
        );
        let offline_ms = self.ranged(
            &ch.offline_window_ms,
            DEFAULT_OFFLINE_WINDOW_MS,
            (1, u64::MAX),
            &who,
            "channel.offline_window_ms",
            "milliseconds",
            "the default is 500",
        );
        let mbps = self.ranged(
            &ch.max_bitrate_mbps,
            DEFAULT_MAX_BITRATE_MBPS,
            (1, MAX_BITRATE_MBPS),
            &who,
            "channel.max_bitrate_mbps",
            "Mbit/s",
            "give the channel's peak bitrate; it sizes the merge buffer (memory = window × bitrate), default 100",
        );
        let leg_timeout_ms = self.ranged(
            &ch.leg_timeout_ms,
            DEFAULT_LEG_TIMEOUT_MS,
            (1, u64::MAX),
            &who,
            "channel.leg_timeout_ms",
            "milliseconds",
            "the default is 100",
        );

        let clear_ms = self.ranged(
            &ch.clear_time_ms,
            DEFAULT_CLEAR_TIME_MS,
            (0, 3_600_000),
            &who,
            "channel.clear_time_ms",
            "milliseconds",
            "how long a better source must stay healthy before switching back; default 5000",
        );
        let hd_failures = self.ranged(
            &ch.holddown_failures,
            DEFAULT_HOLDDOWN_FAILURES,
            (1, 1000),
            &who,
            "channel.holddown_failures",
            "failures",
            "default 3",
        );
        let hd_period_ms = self.ranged(
            &ch.holddown_period_ms,
            DEFAULT_HOLDDOWN_PERIOD_MS,
            (1, 86_400_000),
            &who,
            "channel.holddown_period_ms",
            "milliseconds",
            "default 60000",
        );
        let hd_ms = self.ranged(
            &ch.holddown_ms,
            DEFAULT_HOLDDOWN_MS,
            (0, 86_400_000),
            &who,
            "channel.holddown_ms",
            "milliseconds",
            "default 30000; 0 disables the hold-down",
        );
        let rap_ms = self.ranged(
            &ch.rap_max_wait_ms,
            DEFAULT_RAP_MAX_WAIT_MS,
            (1, 10_000),
            &who,
            "channel.rap_max_wait_ms",
            "milliseconds",
            "about one GOP; default 1000",
        );
        let pid_err_ms = self.ranged(
            &ch.pid_error_period_ms,
            DEFAULT_PID_ERROR_PERIOD_MS,
            (100, 3_600_000),
            &who,
            "channel.pid_error_period_ms",
            "milliseconds",
            "TR 101 290 suggests 5000 (the default)",
        );
        let stage = match &ch.stage {
            None => Stage::Live,
            Some(st) => match Stage::parse(st.get_ref()) {
                Some(x) => x,
                None => {
                    self.report(
                        st.span(),
                        "channel.stage",
                        format!(
                            "{who}: stage {:?} is not a valid stage — use one of \"pre-live\", \"live\", \"post-live\"",
                            st.get_ref()
                        ),
                    );
                    Stage::Live
                }
            },
        };
        for key in [
            ("clear_time_ms", ch.clear_time_ms.as_ref().map(|v| v.span())),
            ("stage", ch.stage.as_ref().map(|v| v.span())),
            (
                "holddown_failures",
                ch.holddown_failures.as_ref().map(|v| v.span()),
            ),
            (
                "rap_max_wait_ms",
                ch.rap_max_wait_ms.as_ref().map(|v| v.span()),
            ),
            (
                "holddown_period_ms",
                ch.holddown_period_ms.as_ref().map(|v| v.span()),
            ),
            ("holddown_ms", ch.holddown_ms.as_ref().map(|v| v.span())),
        ] {
            if let (Some(span), true) = (key.1, mode == Mode::Smpte2022_7) {
                self.report(
                    span,
                    &format!("channel.{}", key.0),
                    format!("{who}: {} only applies to mode = \"switch\" (and to content-merge's fallback to switching) — remove it from this {mode} channel", key.0),
                );
            }
        }
        let content = self.content(&who, mode, ch.content);
        let mut rules = Vec::new();
        for r in ch.rule {
            if let Some(spec) = self.rule(&who, mode, r) {
                rules.push(spec);
            }
        }

        if ch.source.is_empty() {
            self.report(
                header.clone(),
                "channel.source",
                format!(
                    "{who}: no [[channel.source]] — add at least one source under this channel"
                ),
            );
        }
        if ch.output.is_empty() {
            self.report(
                header.clone(),
                "channel.output",
                format!(
                    "{who}: no [[channel.output]] — add at least one output under this channel"
                ),
            );
        }

        let mut names: Vec<String> = Vec::new();
        let mut sources = Vec::new();
        let mut local: Vec<(String, StreamUrl)> = Vec::new();
        for (i, src) in ch.source.into_iter().enumerate() {
            if let Some(s) = self.source(&who, mode, i, src, base, seen, &mut names) {
                local.push((s.0, s.1.url.clone()));
                sources.push(s.1);
            }
        }
        let mut outputs = Vec::new();
        for (i, out) in ch.output.into_iter().enumerate() {
            if let Some(o) = self.output(&who, i, out, base, seen, &local) {
                outputs.push(o);
            }
        }

        ChannelConfig {
            name,
            mode,
            merge_window: Duration::from_millis(merge_ms),
            offline_window: Duration::from_millis(offline_ms),
            auto_switch_to_preferred: ch.auto_switch_to_preferred.unwrap_or(true),
            max_bitrate_bps: mbps * 1_000_000,
            leg_timeout: Duration::from_millis(leg_timeout_ms),
            clear_time: Duration::from_millis(clear_ms),
            holddown: HoldDownConfig {
                failures: hd_failures as u32,
                period: Duration::from_millis(hd_period_ms),
                hold: Duration::from_millis(hd_ms),
            },
            stage,
            disabled: ch.disabled.unwrap_or(false),
            muted: ch.muted.unwrap_or(false),
            switch_on_rap: ch.switch_on_rap.unwrap_or(false),
            rap_max_wait: Duration::from_millis(rap_ms),
            pid_error_period: Duration::from_millis(pid_err_ms),
            rules,
            content,
            sources,
            outputs,
        }
    }

    fn mode(&mut self, ch: &RawChannel, who: &str, header: Range<usize>) -> Mode {
        let Some(m) = &ch.mode else {
            self.report(
                header,
                "channel.mode",
                format!("{who}: missing key `mode` — add mode = \"smpte-2022-7\""),
            );
            return Mode::Smpte2022_7;
        };
        let text = m.get_ref();
        match Mode::ALL.into_iter().find(|x| x.as_str() == text) {
            Some(mode) if mode.is_supported() => mode,
            Some(mode) => {
                self.report(
                    m.span(),
                    "channel.mode",
                    format!("{who}: mode \"{mode}\" is not supported yet in this build (planned); use \"smpte-2022-7\" or \"switch\""),
                );
                mode
            }
            None => {
                let hint = match Mode::ALL
                    .into_iter()
                    .find(|x| x.as_str().eq_ignore_ascii_case(text.trim()))
                {
                    Some(x) => format!(" (values are lowercase: \"{x}\")"),
                    None => String::new(),
                };
                self.report(
                    m.span(),
                    "channel.mode",
                    format!(
                        "{who}: mode {text:?} is not a valid mode — use one of \"smpte-2022-7\", \"content-merge\", \"switch\"{hint}"
                    ),
                );
                Mode::Smpte2022_7
            }
        }
    }

    /// One `[[channel.rule]]` → a checked [`RuleSpec`].
    fn rule(&mut self, who: &str, mode: Mode, r: Spanned<RawRule>) -> Option<RuleSpec> {
        let span = r.span();
        let r = r.into_inner();
        if mode == Mode::Smpte2022_7 {
            let unrecovered = r
                .condition
                .as_ref()
                .is_some_and(|c| c.get_ref() == Condition::UnrecoveredPackets.label());
            let msg = if unrecovered {
                format!(
                    "{who}: rule \"unrecovered-packets\": a {mode} channel runs no rules (it merges its legs and has no source to fail over to); its unrecovered count is the metric hitless_merge_unrecovered_packets_total and merge.unrecovered in the API — alert on that, and remove the [[channel.rule]]"
                )
            } else {
                format!(
                    "{who}: failover rules apply to mode = \"switch\" and to content-merge's fallback (a {mode} channel merges its legs and has no source to fail over to) — remove the [[channel.rule]]"
                )
            };
            self.report(span.clone(), "channel.rule", msg);
            return None;
        }
        let Some(cond) = &r.condition else {
            self.report(
                span,
                "channel.rule.condition",
                format!("{who}: rule without `condition` — add condition = \"p1-transport-errors\" or \"low-bitrate\""),
            );
            return None;
        };
        let Some(condition) = Condition::ALL
            .into_iter()
            .find(|c| c.label() == cond.get_ref())
        else {
            self.report(
                cond.span(),
                "channel.rule.condition",
                format!(
                    "{who}: condition {:?} is not a rule condition — use one of {}",
                    cond.get_ref(),
                    Condition::ALL
                        .iter()
                        .map(|c| format!("\"{c}\""))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
            return None;
        };
        let wrule = format!("{who} rule \"{condition}\"");
        if condition == Condition::UnrecoveredPackets && mode != Mode::ContentMerge {
            self.report(
                cond.span(),
                "channel.rule.condition",
                format!("{wrule}: only meaningful in mode = \"content-merge\", where the legs are merged and a packet can be lost on every leg; a {mode} channel plays one source as received — use \"p1-transport-errors\" (its continuity-counter errors) instead"),
            );
            return None;
        }
        if !condition.is_supported() {
            self.report(
                cond.span(),
                "channel.rule.condition",
                format!("{wrule}: not supported in this build — use \"p1-transport-errors\" or \"low-bitrate\""),
            );
            return None;
        }
        let dur = match &r.sample_duration_s {
            None => 10.0,
            Some(d) => {
                let v = *d.get_ref();
                if !(v.is_finite() && (0.001..=3600.0).contains(&v)) {
                    self.report(
                        d.span(),
                        "channel.rule.sample_duration_s",
                        format!("{wrule}: sample_duration_s = {v} is out of range 0.001..=3600 (seconds) — the reference example uses 10"),
                    );
                    return None;
                }
                v
            }
        };
        let samples = self.ranged(
            &r.samples,
            6,
            (1, 128),
            &wrule,
            "channel.rule.samples",
            "windows",
            "the reference example uses 6",
        );
        let threshold = self.ranged(
            &r.threshold,
            2.min(samples),
            (1, samples),
            &wrule,
            "channel.rule.threshold",
            "windows in error",
            "at most `samples`; the reference example uses 2 of 6",
        );
        let pid = match &r.pid {
            None => None,
            Some(p) if *p.get_ref() > 0x1fff || !condition.takes_pid() => {
                self.report(
                    p.span(),
                    "channel.rule.pid",
                    if condition.takes_pid() {
                        format!(
                            "{wrule}: pid = {} is not a 13-bit PID (0..=8191)",
                            p.get_ref()
                        )
                    } else {
                        format!("{wrule}: pid does not apply to {condition} — remove it")
                    },
                );
                return None;
            }
            Some(p) => Some(Pid(*p.get_ref() as u16)),
        };
        let min_kbps = match (&r.min_kbps, condition) {
            (Some(k), Condition::LowBitrate)
                if *k.get_ref() > 0 && *k.get_ref() <= u32::MAX as u64 =>
            {
                Some(*k.get_ref() as u32)
            }
            (Some(k), Condition::LowBitrate) => {
                self.report(
                    k.span(),
                    "channel.rule.min_kbps",
                    format!("{wrule}: min_kbps must be a positive number of kbit/s"),
                );
                return None;
            }
            (Some(k), _) => {
                self.report(
                    k.span(),
                    "channel.rule.min_kbps",
                    format!("{wrule}: min_kbps only applies to \"low-bitrate\" — remove it"),
                );
                return None;
            }
            (None, Condition::LowBitrate) => {
                self.report(span, "channel.rule.min_kbps", format!("{wrule}: low-bitrate needs min_kbps — e.g. min_kbps = 2000 for a 2.5 Mbit/s channel"));
                return None;
            }
            (None, _) => None,
        };
        let spec = RuleSpec {
            condition,
            sample_duration: Duration::from_secs_f64(dur),
            samples: samples as u32,
            threshold: threshold as u32,
            pid,
            min_kbps,
        };
        if let Err(e) = spec.validate() {
            self.report(span, "channel.rule", format!("{wrule}: {e}"));
            return None;
        }
        Some(spec)
    }

    /// Returns the source's display label and config when its URL is usable for the
    /// cross-checks.
    #[allow(clippy::too_many_arguments)]
    fn source(
        &mut self,
        channel: &str,
        mode: Mode,
        index: usize,
        src: Spanned<RawSource>,
        base: Option<&Path>,
        seen: &mut Seen,
        names: &mut Vec<String>,
    ) -> Option<(String, SourceConfig)> {
        let header = src.span();
        let src: RawSource = src.into_inner();
        let who = match &src.name {
            Some(n) if !n.get_ref().is_empty() => format!("{channel} source {:?}", n.get_ref()),
            _ => format!("{channel} source #{}", index + 1),
        };

        let name = match &src.name {
            None => {
                self.report(
                    header.clone(),
                    "channel.source.name",
                    format!("{who}: missing key `name` — add name = \"...\" (letters, digits, '_', '.', '-'; it becomes a metric label)"),
                );
                String::new()
            }
            Some(n) => {
                if self.check_name(n, "channel.source.name", &who) {
                    if names.contains(n.get_ref()) {
                        self.report(
                            n.span(),
                            "channel.source.name",
                            format!("{who}: name is used by another source of this channel — source names must be unique within a channel"),
                        );
                    } else {
                        names.push(n.get_ref().clone());
                    }
                }
                n.get_ref().clone()
            }
        };

        let role = match &src.role {
            None => {
                self.report(
                    header.clone(),
                    "channel.source.role",
                    format!("{who}: missing key `role` — add role = \"preferred\", \"non-preferred\" or \"slate\""),
                );
                Role::NonPreferred
            }
            Some(r) => match Role::ALL.into_iter().find(|x| x.as_str() == r.get_ref()) {
                Some(role) => {
                    if role == Role::Slate && mode != Mode::Switch {
                        self.report(
                            r.span(),
                            "channel.source.role",
                            format!(
                                "{who}: role \"slate\" is not allowed in a {mode} channel (it merges copies of one stream; a slate is other content) — use mode = \"switch\" for a slate"
                            ),
                        );
                    }
                    role
                }
                None => {
                    self.report(
                        r.span(),
                        "channel.source.role",
                        format!(
                            "{who}: role {:?} is not a valid role — use one of \"preferred\", \"non-preferred\", \"slate\"",
                            r.get_ref()
                        ),
                    );
                    Role::NonPreferred
                }
            },
        };

        let recv_buffer_bytes = match &src.recv_buffer_bytes {
            None => DEFAULT_RECV_BUFFER_BYTES,
            Some(b) if *b.get_ref() > MAX_RECV_BUFFER_BYTES as u64 => {
                self.report(
                    b.span(),
                    "channel.source.recv_buffer_bytes",
                    format!(
                        "{who}: recv_buffer_bytes = {} is larger than {MAX_RECV_BUFFER_BYTES} (1 GiB) — 4194304 (4 MiB, the default) to 67108864 (64 MiB) covers most channels; 0 keeps the kernel default",
                        b.get_ref()
                    ),
                );
                DEFAULT_RECV_BUFFER_BYTES
            }
            // Fits: at most MAX_RECV_BUFFER_BYTES, itself a usize.
            Some(b) => *b.get_ref() as usize,
        };

        let Some(raw_url) = &src.url else {
            self.report(
                header,
                "channel.source.url",
                format!("{who}: missing key `url` — add url = \"rtp://IP:PORT\""),
            );
            return None;
        };
        let url = self.url(raw_url, base, &who, "channel.source.url")?;
        let at = raw_url.span();
        let key = "channel.source.url";
        let pre = format!("{who}: url {:?}", raw_url.get_ref());
        if url.scheme == Scheme::File {
            if role != Role::Slate {
                self.report(
                    at.clone(),
                    key,
                    format!("{pre}: file:// is only for slate sources (role = \"slate\") — receive live legs over rtp:// or udp://"),
                );
            }
        } else {
            if mode == Mode::Smpte2022_7 && url.scheme != Scheme::Rtp && role != Role::Slate {
                self.report(
                    at.clone(),
                    key,
                    format!(
                        "{pre}: smpte-2022-7 needs RTP sequence numbers, but this is {}:// — use rtp:// (and have the sender emit RTP)",
                        url.scheme
                    ),
                );
            }
            if url.ttl.is_some() {
                self.report(
                    at.clone(),
                    key,
                    format!("{pre}: ttl= applies to outputs only — remove it from the source"),
                );
            }
            if url.iface.is_some() && !url.is_multicast() {
                self.report(
                    at.clone(),
                    key,
                    format!(
                        "{pre}: iface= selects the interface of a multicast join; a unicast source receives on the address it binds — write that address instead (e.g. rtp://{}:{})",
                        url.iface.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED),
                        url.addr.port()
                    ),
                );
            }
            if let Some(prev) = seen
                .sources
                .iter()
                .find_map(|p| recv_clash(&p.url, &url).map(|c| (p, c)))
            {
                let (p, clash) = prev;
                let port = url.addr.port();
                let why = match clash {
                    Clash::Same => format!("port {port} is already used by {} ({})", p.who, p.url),
                    Clash::Wildcard => format!(
                        "port {port} is already used by {} ({}), and a wildcard bind receives every address and every joined group on that port",
                        p.who, p.url
                    ),
                    Clash::Group => format!(
                        "group {} is already received by {} ({}); the kernel delivers a group to every socket bound to it whatever iface= says",
                        url.addr, p.who, p.url
                    ),
                };
                let fix = match clash {
                    Clash::Group => {
                        "use another group or port, or source-specific joins with different source="
                    }
                    _ => "give every source its own port",
                };
                self.report(at, key, format!("{pre}: {why} — {fix}"));
            }
            seen.sources.push(SeenSource {
                who: who.clone(),
                url: url.clone(),
            });
        }
        Some((
            who,
            SourceConfig {
                name,
                url,
                role,
                recv_buffer_bytes,
            },
        ))
    }

    fn output(
        &mut self,
        channel: &str,
        index: usize,
        out: Spanned<RawOutput>,
        base: Option<&Path>,
        seen: &mut Seen,
        sources: &[(String, StreamUrl)],
    ) -> Option<OutputConfig> {
        let header = out.span();
        let out: RawOutput = out.into_inner();
        let who = format!("{channel} output #{}", index + 1);
        let key = "channel.output.url";
        let Some(raw_url) = &out.url else {
            self.report(
                header,
                key,
                format!("{who}: missing key `url` — add url = \"rtp://IP:PORT\""),
            );
            return None;
        };
        let url = self.url(raw_url, base, &who, key)?;
        let at = raw_url.span();
        let pre = format!("{who}: url {:?}", raw_url.get_ref());
        if url.scheme == Scheme::File {
            self.report(
                at,
                key,
                format!("{pre}: file:// cannot be an output — send to udp:// or rtp://"),
            );
            return None;
        }
        if url.source.is_some() {
            self.report(
                at.clone(),
                key,
                format!("{pre}: source= filters senders and applies to sources only — remove it from the output"),
            );
        }
        if let Some((src, _)) = sources.iter().find(|(_, s)| loops(s, &url)) {
            self.report(
                at.clone(),
                key,
                format!(
                    "{pre}: sends to {}, which {src} receives — a loop; send to another address or port",
                    url.addr
                ),
            );
        }
        if let Some(prev) = seen.outputs.iter().find(|p| same_destination(&p.url, &url)) {
            self.report(
                at,
                key,
                format!(
                    "{pre}: destination {} is already used by {} — two streams on one destination corrupt each other; give each output its own address or port",
                    url.addr, prev.who
                ),
            );
        }
        seen.outputs.push(SeenOutput {
            who,
            url: url.clone(),
        });
        Some(OutputConfig { url })
    }

    fn url(
        &mut self,
        raw: &Spanned<String>,
        base: Option<&Path>,
        who: &str,
        key: &str,
    ) -> Option<StreamUrl> {
        match StreamUrl::parse_with_base(raw.get_ref(), base) {
            Ok(url) => Some(url),
            Err(e) => {
                self.report(
                    raw.span(),
                    key,
                    format!("{who}: url {:?}: {}", raw.get_ref(), e.reason),
                );
                None
            }
        }
    }
}

fn valid_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
}

/// How two receive sockets would steal each other's datagrams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Clash {
    /// The same unicast address and port.
    Same,
    /// A wildcard bind (`0.0.0.0` / `[::]`) overlaps the other on the same port.
    Wildcard,
    /// The same multicast group and port, not told apart by source-specific joins.
    Group,
}

/// Whether two network sources would receive each other's datagrams. Mirrors what
/// `net::open_recv` does: unicast binds the URL's address, multicast binds group:port, both
/// with SO_REUSEADDR, so the kernel does not refuse the overlap — it silently splits or
/// duplicates the traffic, hence this check.
fn recv_clash(a: &StreamUrl, b: &StreamUrl) -> Option<Clash> {
    if a.addr.port() != b.addr.port() {
        return None;
    }
    let (ia, ib) = (a.addr.ip(), b.addr.ip());
    match (ia.is_multicast(), ib.is_multicast()) {
        (true, true) if ia != ib => None,
        (true, true) => match (a.source, b.source) {
            // Distinct (S,G) channels: the ingest drops datagrams from any other sender,
            // so each leg only keeps its own even though both sockets see both.
            (Some(x), Some(y)) if x != y => None,
            _ => Some(Clash::Group),
        },
        (false, false) if same_ip(ia, ib) => Some(Clash::Same),
        (false, false) => (covers(ia, ib) || covers(ib, ia)).then_some(Clash::Wildcard),
        // A wildcard unicast bind also receives any group joined on its port.
        (true, false) => covers(ib, ia).then_some(Clash::Wildcard),
        (false, true) => covers(ia, ib).then_some(Clash::Wildcard),
    }
}

/// Whether a socket bound to `wild` also receives what is addressed to `other`.
fn covers(wild: IpAddr, other: IpAddr) -> bool {
    match wild {
        IpAddr::V4(w) => w.is_unspecified() && other.is_ipv4(),
        // `[::]` is dual-stack by default on Linux (net.ipv6.bindv6only = 0).
        IpAddr::V6(w) => w.is_unspecified(),
    }
}

fn same_ip(a: IpAddr, b: IpAddr) -> bool {
    a.to_canonical() == b.to_canonical()
}

/// Whether sending to `out` would come back in on the source `src`. Only what is certain
/// without asking the OS for the local addresses: the same address, or a wildcard source
/// and a loopback destination on its port.
fn loops(src: &StreamUrl, out: &StreamUrl) -> bool {
    if src.scheme == Scheme::File || src.addr.port() != out.addr.port() {
        return false;
    }
    let (s, d) = (src.addr.ip(), out.addr.ip());
    same_ip(s, d) || (covers(s, d) && d.is_loopback())
}

/// Two outputs that would interleave two streams at one receiver. The same multicast
/// group sent out of two different interfaces (`iface=`) reaches two different networks
/// (the red/blue pair of a 2022-7 output), so that is allowed.
fn same_destination(a: &StreamUrl, b: &StreamUrl) -> bool {
    if a.addr.port() != b.addr.port() || !same_ip(a.addr.ip(), b.addr.ip()) {
        return false;
    }
    match (a.is_multicast(), a.iface, b.iface) {
        (true, Some(x), Some(y)) => x == y,
        _ => true,
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut o = offset.min(text.len());
    while !text.is_char_boundary(o) {
        o -= 1;
    }
    let before = &text[..o];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// The key of a `key = value` line whose value starts at `offset`.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let line_start = text.get(..offset)?.rfind('\n').map_or(0, |i| i + 1);
    let before = text
        .get(line_start..offset)?
        .trim_end()
        .strip_suffix('=')?
        .trim_end();
    let start = before
        .char_indices()
        .rev()
        .take_while(|(_, c)| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
        .last()
        .map(|(i, _)| i)?;
    Some(before[start..].to_owned())
}

/// `s` if it is a bare TOML key (the span of an unknown field is the key itself).
fn bare_key(s: &str) -> Option<String> {
    let ok = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'));
    ok.then(|| s.to_owned())
}

/// The dotted name of the `[table]` or `[[array]]` header above `offset`, if any.
fn table_at(text: &str, offset: usize) -> Option<String> {
    let before = text.get(..offset.min(text.len()))?;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    before[..line_start]
        .lines()
        .rev()
        .find_map(|l| header_name(l.trim()))
}

/// `channel.source` for `[[channel.source]]` or `[channel.source]`.
fn header_name(s: &str) -> Option<String> {
    let name = s
        .strip_prefix('[')?
        .trim_start_matches('[')
        .split(']')
        .next()?
        .trim();
    Some(name.to_owned())
}
