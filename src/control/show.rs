//! The replicated configuration (the "show", after Hog 4): every channel of the system, where
//! it runs (home node, backup node, hot standby) and its version.
//!
//! A show is versioned by [`Version`] `(epoch, version)`, compared lexicographically. A copy
//! with a lower version never replaces a higher one (this is what makes the Hog 4 start-order
//! hazard impossible); two copies with the same version and different content (different
//! [`Digest`]) are a divergence that only an operator resolves.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// A node's stable id (`[cluster] node_id`): also the last election tie-breaker.
pub type NodeId = String;

/// Version of the show: the manager epoch (term number) it was made under, then a counter
/// that increases with every change. Ordered lexicographically; `(0, 0)` is the seed from
/// the configuration file, which no node can prove is newest.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Version {
    pub epoch: u64,
    pub version: u64,
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.epoch, self.version)
    }
}

/// SHA-256 of a show's canonical JSON: equal digests mean equal content.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct Digest(pub [u8; 32]);

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl fmt::Display for Digest {
    /// The first 8 bytes in hex: enough to tell copies apart in logs and the API.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// One channel of the show.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShowChannel {
    /// The channel's `[[channel]]` table as TOML text (with its sources and outputs). The
    /// control state machine treats it as opaque; the glue validates it before a change is
    /// accepted and parses it before a channel is started.
    pub body: String,
    /// The client node that runs the channel normally.
    pub home: NodeId,
    /// The node that takes the channel over when its home is lost or by operator action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<NodeId>,
    /// The backup already receives and merges the sources with its output muted, so a
    /// takeover only unmutes.
    #[serde(default)]
    pub hot_standby: bool,
}

/// The replicated configuration content (without its version).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Show {
    pub channels: BTreeMap<String, ShowChannel>,
}

impl Show {
    /// Canonical bytes: JSON of ordered maps, so equal content gives equal bytes everywhere.
    pub fn canonical(&self) -> Vec<u8> {
        // Serializing plain maps of strings and bools cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn digest(&self) -> Digest {
        Digest(Sha256::digest(self.canonical()).into())
    }
}

/// A change to the show, made by an operator through the manager.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShowChange {
    /// Add or replace a channel.
    Put { name: String, channel: ShowChannel },
    /// Remove a channel.
    Remove { name: String },
}

impl ShowChange {
    /// Apply to `show`; `Err` names what is wrong.
    pub fn apply(&self, show: &mut Show) -> Result<(), String> {
        match self {
            ShowChange::Put { name, channel } => {
                show.channels.insert(name.clone(), channel.clone());
            }
            ShowChange::Remove { name } => {
                if show.channels.remove(name).is_none() {
                    return Err(format!("no channel named {name:?} in the configuration"));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(home: &str) -> ShowChannel {
        ShowChannel {
            body: "[[channel]]\nname = \"x\"\n".into(),
            home: home.into(),
            backup: Some("b".into()),
            hot_standby: true,
        }
    }

    #[test]
    fn versions_order_by_epoch_then_counter() {
        let v = |epoch, version| Version { epoch, version };
        assert!(v(1, 9) < v(2, 0));
        assert!(v(2, 1) > v(2, 0));
        assert_eq!(v(0, 0), Version::default());
    }

    #[test]
    fn digest_depends_on_content_not_insertion_order() {
        let mut a = Show::default();
        a.channels.insert("one".into(), ch("a"));
        a.channels.insert("two".into(), ch("b"));
        let mut b = Show::default();
        b.channels.insert("two".into(), ch("b"));
        b.channels.insert("one".into(), ch("a"));
        assert_eq!(a.digest(), b.digest());
        b.channels.get_mut("one").unwrap().hot_standby = false;
        assert_ne!(a.digest(), b.digest());
    }

    #[test]
    fn remove_unknown_channel_is_refused() {
        let mut s = Show::default();
        let r = ShowChange::Remove { name: "x".into() }.apply(&mut s);
        assert!(r.is_err());
    }
}
