//! Stream URLs: `udp://`, `rtp://` (unicast or multicast) and `file://` (stub: being written).
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    /// Plain MPEG-TS in UDP (7 TS packets per datagram by convention).
    Udp,
    /// MPEG-TS in RTP (RFC 2250, PT 33).
    Rtp,
    /// A local TS file (slate).
    File,
}

/// A parsed stream URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamUrl {
    pub scheme: Scheme,
    /// Group or unicast address and port (unused for `file://`).
    pub addr: SocketAddr,
    /// `iface=IP`: local interface address for multicast join / send.
    pub iface: Option<Ipv4Addr>,
    /// `source=IP`: source-specific multicast, and drop datagrams from any other sender.
    pub source: Option<IpAddr>,
    /// `ttl=N`: multicast TTL for outputs.
    pub ttl: Option<u32>,
    /// `file://` path.
    pub path: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid URL {url:?}: {reason}")]
pub struct UrlError {
    pub url: String,
    pub reason: String,
}

impl StreamUrl {
    pub fn parse(_s: &str) -> Result<StreamUrl, UrlError> {
        todo!()
    }
    pub fn is_multicast(&self) -> bool {
        self.addr.ip().is_multicast()
    }
}

impl std::fmt::Display for StreamUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}://{}", self.scheme, self.addr)
    }
}
