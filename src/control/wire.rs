//! Control message codec: every datagram is authenticated with HMAC-SHA256 (RFC 2104) under
//! the cluster's shared key, over the whole datagram, and carries a per-sender counter that
//! must increase, so that forged, altered or replayed messages are dropped and counted, never
//! acted on. Sans-IO: the caller passes the wall-clock time in microseconds.
//!
//! ```text
//! "HLC1" | counter: u64 BE | sender length: u8 | sender | payload (JSON Message) | HMAC: 32
//! ```
//!
//! The counter is the sender's wall-clock time in microseconds, bumped by one when two
//! messages share a microsecond: it keeps increasing across restarts of the sender. A
//! receiver accepts the first message of a sender only when the counter is within
//! [`FRESHNESS_US`] of its own clock (a message captured before the receiver restarted cannot
//! be replayed to it), then only counters above the last accepted one.

use std::collections::HashMap;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::machine::Message;

type HmacSha256 = Hmac<Sha256>;

const MAGIC: &[u8; 4] = b"HLC1";
const MAC_LEN: usize = 32;
/// Largest datagram we send or accept (a UDP payload over IPv4).
pub const MAX_DATAGRAM: usize = 65_507;
/// Tolerated clock difference between members for a sender's first message (60 s).
pub const FRESHNESS_US: u64 = 60_000_000;
/// Shortest accepted key, in bytes.
pub const MIN_KEY_LEN: usize = 16;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("malformed control message: {0}")]
    Malformed(&'static str),
    #[error("control message fails authentication (wrong key or altered)")]
    BadMac,
    #[error("replayed control message from {sender:?} (counter {counter} <= {last})")]
    Replay {
        sender: String,
        counter: u64,
        last: u64,
    },
    #[error("stale first control message from {sender:?} (counter {counter}, clock {now})")]
    Stale {
        sender: String,
        counter: u64,
        now: u64,
    },
    #[error("control message too large ({0} bytes)")]
    TooLarge(usize),
    #[error("the key is shorter than {MIN_KEY_LEN} bytes")]
    ShortKey,
}

impl WireError {
    /// Bounded metric label.
    pub fn label(&self) -> &'static str {
        match self {
            WireError::Malformed(_) => "malformed",
            WireError::BadMac => "unauthenticated",
            WireError::Replay { .. } | WireError::Stale { .. } => "replayed",
            WireError::TooLarge(_) => "too-large",
            WireError::ShortKey => "short-key",
        }
    }
}

fn mac(key: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length: new_from_slice cannot fail for it.
    <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC takes keys of any length")
}

/// Encodes this node's messages with a strictly increasing counter.
pub struct Encoder {
    key: Vec<u8>,
    sender: String,
    last: u64,
}

impl Encoder {
    pub fn new(key: &[u8], sender: &str) -> Result<Encoder, WireError> {
        if key.len() < MIN_KEY_LEN {
            return Err(WireError::ShortKey);
        }
        if sender.len() > 255 {
            return Err(WireError::Malformed("sender id longer than 255 bytes"));
        }
        Ok(Encoder {
            key: key.to_vec(),
            sender: sender.to_owned(),
            last: 0,
        })
    }

    /// One authenticated datagram; `now_us` is the wall clock in microseconds.
    pub fn encode(&mut self, now_us: u64, msg: &Message) -> Result<Vec<u8>, WireError> {
        let counter = now_us.max(self.last + 1);
        self.last = counter;
        let payload =
            serde_json::to_vec(msg).map_err(|_| WireError::Malformed("unserializable"))?;
        let mut out = Vec::with_capacity(4 + 8 + 1 + self.sender.len() + payload.len() + MAC_LEN);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&counter.to_be_bytes());
        out.push(self.sender.len() as u8);
        out.extend_from_slice(self.sender.as_bytes());
        out.extend_from_slice(&payload);
        let mut m = mac(&self.key);
        m.update(&out);
        out.extend_from_slice(&m.finalize().into_bytes());
        if out.len() > MAX_DATAGRAM {
            return Err(WireError::TooLarge(out.len()));
        }
        Ok(out)
    }
}

/// Checks and decodes peers' datagrams, remembering each sender's last counter.
pub struct Decoder {
    key: Vec<u8>,
    last: HashMap<String, u64>,
}

impl Decoder {
    pub fn new(key: &[u8]) -> Result<Decoder, WireError> {
        if key.len() < MIN_KEY_LEN {
            return Err(WireError::ShortKey);
        }
        Ok(Decoder {
            key: key.to_vec(),
            last: HashMap::new(),
        })
    }

    /// Authenticate, check freshness and decode. Nothing is remembered unless the message is
    /// accepted, so a forged datagram cannot advance a sender's counter.
    pub fn decode(&mut self, now_us: u64, data: &[u8]) -> Result<Message, WireError> {
        if data.len() > MAX_DATAGRAM {
            return Err(WireError::TooLarge(data.len()));
        }
        if data.len() < 4 + 8 + 1 + MAC_LEN {
            return Err(WireError::Malformed("too short"));
        }
        if &data[..4] != MAGIC {
            return Err(WireError::Malformed("not a hitless control message"));
        }
        let (body, tag) = data.split_at(data.len() - MAC_LEN);
        let mut m = mac(&self.key);
        m.update(body);
        m.verify_slice(tag).map_err(|_| WireError::BadMac)?;
        let mut c = [0u8; 8];
        c.copy_from_slice(&body[4..12]);
        let counter = u64::from_be_bytes(c);
        let slen = body[12] as usize;
        let rest = &body[13..];
        if rest.len() < slen {
            return Err(WireError::Malformed("sender id truncated"));
        }
        let sender = std::str::from_utf8(&rest[..slen])
            .map_err(|_| WireError::Malformed("sender id is not UTF-8"))?;
        let msg: Message = serde_json::from_slice(&rest[slen..])
            .map_err(|_| WireError::Malformed("payload is not a control message"))?;
        if msg.sender() != sender {
            return Err(WireError::Malformed("payload names another sender"));
        }
        match self.last.get(sender) {
            Some(&last) if counter <= last => {
                return Err(WireError::Replay {
                    sender: sender.to_owned(),
                    counter,
                    last,
                });
            }
            None if counter.abs_diff(now_us) > FRESHNESS_US => {
                return Err(WireError::Stale {
                    sender: sender.to_owned(),
                    counter,
                    now: now_us,
                });
            }
            _ => {}
        }
        self.last.insert(sender.to_owned(), counter);
        Ok(msg)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const KEY: &[u8] = b"0123456789abcdef-cluster-key";
    const T: u64 = 1_800_000_000_000_000;

    fn leave(node: &str) -> Message {
        Message::Leave { node: node.into() }
    }

    #[test]
    fn round_trip() {
        let mut e = Encoder::new(KEY, "gw-a").unwrap();
        let mut d = Decoder::new(KEY).unwrap();
        let m = leave("gw-a");
        let dg = e.encode(T, &m).unwrap();
        assert_eq!(d.decode(T, &dg), Ok(m));
    }

    #[test]
    fn replay_is_rejected_and_counters_increase_within_a_microsecond() {
        let mut e = Encoder::new(KEY, "gw-a").unwrap();
        let mut d = Decoder::new(KEY).unwrap();
        let a = e.encode(T, &leave("gw-a")).unwrap();
        let b = e.encode(T, &leave("gw-a")).unwrap();
        assert!(d.decode(T, &a).is_ok());
        assert!(d.decode(T, &b).is_ok(), "same microsecond, next counter");
        assert!(matches!(d.decode(T, &a), Err(WireError::Replay { .. })));
        assert_eq!(d.decode(T, &b).unwrap_err().label(), "replayed");
    }

    #[test]
    fn a_restarted_sender_continues_above_its_old_counter() {
        let mut d = Decoder::new(KEY).unwrap();
        let mut e1 = Encoder::new(KEY, "gw-a").unwrap();
        assert!(d.decode(T, &e1.encode(T, &leave("gw-a")).unwrap()).is_ok());
        let mut e2 = Encoder::new(KEY, "gw-a").unwrap();
        let later = T + 2_000_000;
        assert!(
            d.decode(later, &e2.encode(later, &leave("gw-a")).unwrap())
                .is_ok()
        );
    }

    #[test]
    fn old_capture_is_stale_for_a_fresh_receiver() {
        let mut e = Encoder::new(KEY, "gw-a").unwrap();
        let old = e.encode(T, &leave("gw-a")).unwrap();
        let mut d = Decoder::new(KEY).unwrap();
        let r = d.decode(T + FRESHNESS_US + 1, &old);
        assert!(matches!(r, Err(WireError::Stale { .. })));
    }

    #[test]
    fn wrong_key_forgery_and_tampering_fail_authentication() {
        let mut forger = Encoder::new(b"another-key-entirely!", "gw-a").unwrap();
        let mut d = Decoder::new(KEY).unwrap();
        let f = forger.encode(T, &leave("gw-a")).unwrap();
        assert_eq!(d.decode(T, &f), Err(WireError::BadMac));
        let mut e = Encoder::new(KEY, "gw-a").unwrap();
        let mut dg = e.encode(T, &leave("gw-a")).unwrap();
        dg[15] ^= 1;
        assert_eq!(d.decode(T, &dg), Err(WireError::BadMac));
        // A rejected forgery does not advance the counter: the genuine message still passes.
        let good = e.encode(T, &leave("gw-a")).unwrap();
        assert!(d.decode(T, &good).is_ok());
    }

    #[test]
    fn sender_must_match_the_payload() {
        let mut e = Encoder::new(KEY, "gw-a").unwrap();
        let mut d = Decoder::new(KEY).unwrap();
        let dg = e.encode(T, &leave("gw-b")).unwrap();
        assert_eq!(
            d.decode(T, &dg),
            Err(WireError::Malformed("payload names another sender"))
        );
    }

    #[test]
    fn short_keys_are_refused() {
        assert!(Encoder::new(b"short", "a").is_err());
        assert!(Decoder::new(b"short").is_err());
    }

    proptest! {
        /// Every advert survives the codec unchanged, and any single flipped bit is caught.
        #[test]
        fn adverts_round_trip_and_bit_flips_fail(
            node in "[a-z0-9_.-]{1,16}",
            score in any::<u8>(),
            n in any::<u64>(),
            version in any::<(u64, u64)>(),
            flip in any::<prop::sample::Index>(),
        ) {
            use super::super::machine::{Advert, Roles, Term};
            use super::super::show::Version;
            let msg = Message::Advert(Advert {
                node: node.clone(),
                score,
                roles: Roles::ALL,
                seen: Term { n, node: node.clone() },
                manager: Some(Term { n, node: node.clone() }),
                version: Version { epoch: version.0, version: version.1 },
                digest: Default::default(),
                placement: None,
                failed: Default::default(),
            });
            let mut e = Encoder::new(KEY, &node).unwrap();
            let dg = e.encode(T, &msg).unwrap();
            let mut d = Decoder::new(KEY).unwrap();
            let mut bad = dg.clone();
            let bit = flip.index(bad.len() * 8);
            bad[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(d.decode(T, &bad).is_err());
            prop_assert_eq!(d.decode(T, &dg), Ok(msg));
        }

        /// Network input never panics, and nothing but a genuine message is accepted.
        #[test]
        fn arbitrary_bytes_never_panic_nor_pass(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut d = Decoder::new(KEY).unwrap();
            prop_assert!(d.decode(T, &data).is_err());
            let mut framed = b"HLC1".to_vec();
            framed.extend_from_slice(&data);
            prop_assert!(d.decode(T, &framed).is_err());
        }
    }
}
