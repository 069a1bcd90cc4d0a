//! `[cluster]`: several `hitless run` processes as one system (see `crate::control`).
//!
//! ```toml
//! [cluster]
//! node_id = "gw-a"                    # required: stable id (a metric label; the tie-breaker)
//! listen = "127.0.0.1:7400"           # required: control traffic (UDP)
//! peers = ["127.0.0.1:7401"]          # the other members' listen addresses
//! score = 200                         # default 100, 0..=255; 0 = never manager
//! roles = ["manager", "client", "backup"]   # default all three
//! advert_interval_ms = 100            # default 100, 10..=10000
//! switch_back = "auto"                # "auto" (default) | "manual"
//! key_file = "cluster.key"            # required: shared secret (>= 16 bytes)
//! state_dir = "state-gw-a"            # default "state-<node_id>": epoch and show (fsync'd)
//!
//!   [[cluster.channel]]               # placement of each [[channel]] of the seed show
//!   name = "news"
//!   home = "gw-a"                     # the client that runs it
//!   backup = "gw-b"                   # optional: who takes it over
//!   hot_standby = true                # default false: the backup runs it muted
//! ```
//!
//! Relative paths are relative to the configuration file. With `[cluster]`, the file's
//! `[[channel]]` tables are only the seed of the replicated configuration (the "show",
//! version 0.0): once a node holds a newer show in its state directory, that one is used.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::validate::Validator;
use crate::control::machine::{Roles, SwitchBack};

/// `score` when not given.
pub const DEFAULT_SCORE: u64 = 100;
/// `advert_interval_ms` when not given.
pub const DEFAULT_ADVERT_INTERVAL_MS: u64 = 100;

/// `[cluster]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    /// Stable node id, `[A-Za-z0-9_.-]`. Required.
    pub node_id: Option<Spanned<String>>,
    /// `IP:PORT` for control traffic. Required.
    pub listen: Option<Spanned<String>>,
    /// `IP:PORT` of every other member.
    #[serde(default)]
    pub peers: Vec<Spanned<String>>,
    /// Election score 0..=255 (0 = never manager). Default 100.
    pub score: Option<Spanned<u64>>,
    /// Subset of `"manager"`, `"client"`, `"backup"`. Default all three.
    pub roles: Option<Spanned<Vec<Spanned<String>>>>,
    /// Milliseconds between adverts (10..=10000). Default 100.
    pub advert_interval_ms: Option<Spanned<u64>>,
    /// `"auto"` | `"manual"`. Default `"auto"`.
    pub switch_back: Option<Spanned<String>>,
    /// File holding the shared secret (at least 16 bytes, surrounding whitespace ignored).
    /// Required.
    pub key_file: Option<Spanned<String>>,
    /// Directory for the persisted epoch and show. Default `"state-<node_id>"`.
    pub state_dir: Option<Spanned<String>>,
    /// `[[cluster.channel]]`: placement of the seed show's channels.
    #[serde(default)]
    pub channel: Vec<Spanned<RawPlacement>>,
}

/// `[[cluster.channel]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPlacement {
    /// A `[[channel]]` name of this file. Required.
    pub name: Option<Spanned<String>>,
    /// The client node that runs it. Required.
    pub home: Option<Spanned<String>>,
    /// The node that takes it over. Optional.
    pub backup: Option<Spanned<String>>,
    /// The backup receives and merges it with its output muted. Default false.
    pub hot_standby: Option<bool>,
}

/// Validated `[cluster]`.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    pub node_id: String,
    pub listen: SocketAddr,
    pub peers: Vec<SocketAddr>,
    /// 0..=255; 0 = never manager.
    pub score: u8,
    pub roles: Roles,
    pub advert_interval: Duration,
    pub switch_back: SwitchBack,
    /// Resolved against the configuration file's directory.
    pub key_file: PathBuf,
    /// Resolved against the configuration file's directory.
    pub state_dir: PathBuf,
    /// Channel name → placement, for the seed show.
    pub placement: BTreeMap<String, SeedPlacement>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeedPlacement {
    pub home: String,
    pub backup: Option<String>,
    pub hot_standby: bool,
}

fn resolve(base: Option<&Path>, p: &str) -> PathBuf {
    let p = Path::new(p);
    match base {
        Some(b) if p.is_relative() => b.join(p),
        _ => p.to_owned(),
    }
}

impl Validator<'_> {
    pub(super) fn cluster(
        &mut self,
        raw: RawCluster,
        base: Option<&Path>,
        channels: &[String],
    ) -> ClusterConfig {
        let who = "[cluster]";
        let node_id = match &raw.node_id {
            Some(n) => {
                self.check_name(n, "cluster.node_id", who);
                n.get_ref().clone()
            }
            None => {
                self.report(
                    0..0,
                    "cluster.node_id",
                    format!("{who}: missing key `node_id` — add node_id = \"gw-a\" (unique per node, a metric label)"),
                );
                String::new()
            }
        };
        let unspecified: SocketAddr = ([0, 0, 0, 0], 0).into();
        let addr = |v: &mut Self, s: &Spanned<String>, key: &str| -> SocketAddr {
            match s.get_ref().trim().parse() {
                Ok(a) => a,
                Err(_) => {
                    v.report(
                        s.span(),
                        key,
                        format!(
                            "{who}: {:?} is not IP:PORT — e.g. \"10.0.0.5:7400\" (hostnames are not resolved)",
                            s.get_ref()
                        ),
                    );
                    unspecified
                }
            }
        };
        let listen = match &raw.listen {
            Some(l) => addr(self, l, "cluster.listen"),
            None => {
                self.report(
                    0..0,
                    "cluster.listen",
                    format!(
                        "{who}: missing key `listen` — add listen = \"IP:PORT\" for control traffic"
                    ),
                );
                unspecified
            }
        };
        let peers: Vec<SocketAddr> = raw
            .peers
            .iter()
            .map(|p| addr(self, p, "cluster.peers"))
            .collect();
        for p in &raw.peers {
            if p.get_ref().trim().parse::<SocketAddr>().ok() == Some(listen) {
                self.report(
                    p.span(),
                    "cluster.peers",
                    format!("{who}: peers lists this node's own listen address — list only the other members"),
                );
            }
        }
        let score = self.ranged(
            &raw.score,
            DEFAULT_SCORE,
            (0, 255),
            who,
            "cluster.score",
            "election score",
            "the highest score is elected; 0 means never manager",
        ) as u8;
        let roles = match &raw.roles {
            None => Roles::ALL,
            Some(list) => {
                let mut r = Roles::default();
                for item in list.get_ref() {
                    match item.get_ref().as_str() {
                        "manager" => r.manager = true,
                        "client" => r.client = true,
                        "backup" => r.backup = true,
                        other => self.report(
                            item.span(),
                            "cluster.roles",
                            format!("{who}: role {other:?} is not one of \"manager\", \"client\", \"backup\""),
                        ),
                    }
                }
                if r == Roles::default() && !list.get_ref().is_empty() {
                    // already reported
                } else if list.get_ref().is_empty() {
                    self.report(
                        list.span(),
                        "cluster.roles",
                        format!("{who}: roles is empty — give at least one of \"manager\", \"client\", \"backup\""),
                    );
                }
                r
            }
        };
        let advert_ms = self.ranged(
            &raw.advert_interval_ms,
            DEFAULT_ADVERT_INTERVAL_MS,
            (10, 10_000),
            who,
            "cluster.advert_interval_ms",
            "milliseconds",
            "a member is lost after about 3.5 intervals; 100 (the default) detects a loss in ~0.35 s",
        );
        let switch_back = match &raw.switch_back {
            None => SwitchBack::Auto,
            Some(s) => match s.get_ref().as_str() {
                "auto" => SwitchBack::Auto,
                "manual" => SwitchBack::Manual,
                other => {
                    self.report(
                        s.span(),
                        "cluster.switch_back",
                        format!("{who}: switch_back {other:?} is not \"auto\" or \"manual\""),
                    );
                    SwitchBack::Auto
                }
            },
        };
        let key_file = match &raw.key_file {
            Some(k) => resolve(base, k.get_ref()),
            None => {
                self.report(
                    0..0,
                    "cluster.key_file",
                    format!("{who}: missing key `key_file` — every control message is authenticated; put a shared secret of at least 16 bytes in a file readable only by hitless (e.g. `head -c 32 /dev/urandom | base64 > cluster.key`)"),
                );
                PathBuf::new()
            }
        };
        let state_dir = match &raw.state_dir {
            Some(s) => resolve(base, s.get_ref()),
            None => resolve(base, &format!("state-{node_id}")),
        };
        let mut placement = BTreeMap::new();
        for p in &raw.channel {
            let span = p.span();
            let p = p.get_ref();
            let (Some(name), Some(home)) = (&p.name, &p.home) else {
                self.report(
                    span,
                    "cluster.channel",
                    format!("{who}: [[cluster.channel]] needs `name` (a [[channel]]) and `home` (a node_id)"),
                );
                continue;
            };
            if !channels.contains(name.get_ref()) {
                self.report(
                    name.span(),
                    "cluster.channel.name",
                    format!("{who}: [[cluster.channel]] names {:?}, which is not a [[channel]] of this file", name.get_ref()),
                );
            }
            if placement.contains_key(name.get_ref()) {
                self.report(
                    name.span(),
                    "cluster.channel.name",
                    format!("{who}: channel {:?} is placed twice", name.get_ref()),
                );
            }
            if p.backup
                .as_ref()
                .is_some_and(|b| b.get_ref() == home.get_ref())
            {
                self.report(
                    home.span(),
                    "cluster.channel.backup",
                    format!(
                        "{who}: channel {:?}: backup is its home — name another node",
                        name.get_ref()
                    ),
                );
            }
            placement.insert(
                name.get_ref().clone(),
                SeedPlacement {
                    home: home.get_ref().clone(),
                    backup: p.backup.as_ref().map(|b| b.get_ref().clone()),
                    hot_standby: p.hot_standby.unwrap_or(false),
                },
            );
        }
        for c in channels {
            if !placement.contains_key(c) {
                self.report(
                    0..0,
                    "cluster.channel",
                    format!("{who}: channel {c:?} has no [[cluster.channel]] — add one with its home node (and backup)"),
                );
            }
        }
        ClusterConfig {
            node_id,
            listen,
            peers,
            score,
            roles,
            advert_interval: Duration::from_millis(advert_ms),
            switch_back,
            key_file,
            state_dir,
            placement,
        }
    }
}

/// The `[[channel]]` tables of a configuration text, each as a standalone TOML document
/// (the bodies of the seed show), in file order.
pub fn channel_bodies(text: &str) -> Vec<(String, String)> {
    let Ok(doc) = toml::from_str::<toml::Table>(text) else {
        return Vec::new();
    };
    let Some(toml::Value::Array(list)) = doc.get("channel") else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|ch| {
            let name = ch.get("name")?.as_str()?.to_owned();
            let mut t = toml::Table::new();
            t.insert("channel".into(), toml::Value::Array(vec![ch.clone()]));
            Some((name, toml::to_string(&t).ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::Config;
    use super::*;

    const CH: &str = r#"
[[channel]]
name = "news"
mode = "smpte-2022-7"

  [[channel.source]]
  name = "a"
  url = "rtp://127.0.0.1:5000"
  role = "preferred"

  [[channel.output]]
  url = "rtp://127.0.0.1:6000"
"#;

    fn with(cluster: &str) -> String {
        format!("{cluster}\n{CH}")
    }

    const OK: &str = r#"
[cluster]
node_id = "gw-a"
listen = "127.0.0.1:7400"
peers = ["127.0.0.1:7401"]
score = 200
roles = ["manager", "client"]
switch_back = "manual"
key_file = "keys/cluster.key"

  [[cluster.channel]]
  name = "news"
  home = "gw-a"
  backup = "gw-b"
  hot_standby = true
"#;

    #[test]
    fn parses_and_resolves_paths_against_the_file() {
        let cfg = Config::from_str(&with(OK), Some(Path::new("/etc/hitless/site.toml"))).unwrap();
        let c = cfg.cluster.unwrap();
        assert_eq!(c.node_id, "gw-a");
        assert_eq!(c.peers, vec!["127.0.0.1:7401".parse().unwrap()]);
        assert_eq!(c.score, 200);
        assert!(c.roles.manager && c.roles.client && !c.roles.backup);
        assert_eq!(c.switch_back, SwitchBack::Manual);
        assert_eq!(c.advert_interval, Duration::from_millis(100));
        assert_eq!(c.key_file, Path::new("/etc/hitless/keys/cluster.key"));
        assert_eq!(c.state_dir, Path::new("/etc/hitless/state-gw-a"));
        assert_eq!(
            c.placement["news"],
            SeedPlacement {
                home: "gw-a".into(),
                backup: Some("gw-b".into()),
                hot_standby: true
            }
        );
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let text = with(&OK.replace("score = 200", "score = 300\nbogus = 1"));
        let e = Config::from_str(&text, Some(Path::new("site.toml"))).unwrap_err();
        let d = e.diagnostics();
        assert!(d.iter().any(|d| d.key.ends_with("bogus")), "{e}");
        let text = with(&OK.replace("score = 200", "score = 300"));
        let e = Config::from_str(&text, Some(Path::new("site.toml"))).unwrap_err();
        let d = &e.diagnostics()[0];
        assert_eq!((d.line, d.key.as_str()), (6, "cluster.score"), "{e}");
        assert!(e.to_string().starts_with("site.toml:6:9:"), "{e}");
    }

    #[test]
    fn every_channel_needs_a_placement_and_a_key_file_is_required() {
        let text = with("[cluster]\nnode_id = \"a\"\nlisten = \"127.0.0.1:1\"\n");
        let e = Config::from_str(&text, None).unwrap_err().to_string();
        assert!(e.contains("key_file"), "{e}");
        assert!(e.contains("no [[cluster.channel]]"), "{e}");
    }

    #[test]
    fn a_cluster_node_may_have_no_channels_of_its_own() {
        let text = "[cluster]\nnode_id = \"a\"\nlisten = \"127.0.0.1:1\"\nkey_file = \"k\"\n";
        let cfg = Config::from_str(text, None).unwrap();
        assert!(cfg.channels.is_empty());
    }

    #[test]
    fn channel_bodies_round_trip_through_the_validator() {
        let bodies = channel_bodies(&with(OK));
        assert_eq!(bodies.len(), 1);
        assert_eq!(bodies[0].0, "news");
        let cfg = Config::from_str(&bodies[0].1, None).unwrap();
        assert_eq!(cfg.channels[0].name, "news");
        assert_eq!(cfg.channels[0].sources.len(), 1);
    }
}
