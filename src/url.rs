//! Stream URLs: `udp://`, `rtp://` (unicast or multicast) and `file://`.
//!
//! Grammar (what broadcast engineers write in the channel TOML):
//!
//! ```text
//! udp://HOST:PORT[?QUERY]        plain MPEG-TS in UDP
//! rtp://HOST:PORT[?QUERY]        MPEG-TS in RTP (RFC 2250)
//! udp://@HOST:PORT               VLC style, same as udp://HOST:PORT
//! udp://@:PORT                   VLC style, same as udp://0.0.0.0:PORT
//! udp://SRC@GROUP:PORT           VLC style source-specific multicast, same as ?source=SRC
//! file:///abs/path.ts            absolute path
//! file://relative/path.ts        relative to the config file's directory (see parse_with_base)
//!
//! HOST  = IPv4 literal | "[" IPv6 literal "]"     (no DNS: the gateway binds and joins
//!                                                 literal addresses at startup)
//! QUERY = iface=IPv4 | source=IP | ttl=1..255, joined by "&", each key at most once
//! ```
//!
//! For a source, HOST:PORT is what the socket binds: a local unicast address (or `0.0.0.0`
//! for any) or the multicast group. For an output it is the destination.
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

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

impl Scheme {
    /// The scheme as written in a URL, without `://`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Udp => "udp",
            Scheme::Rtp => "rtp",
            Scheme::File => "file",
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parsed stream URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamUrl {
    pub scheme: Scheme,
    /// Group or unicast address and port (`0.0.0.0:0`, unused, for `file://`).
    pub addr: SocketAddr,
    /// `iface=IP`: local interface address for multicast join / send.
    pub iface: Option<Ipv4Addr>,
    /// `source=IP`: source-specific multicast, and drop datagrams from any other sender.
    pub source: Option<IpAddr>,
    /// `ttl=N` (1..=255): multicast TTL (or unicast hop limit) for outputs.
    pub ttl: Option<u32>,
    /// `file://` path.
    pub path: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid URL {url:?}: {reason}")]
pub struct UrlError {
    pub url: String,
    /// What is wrong and how to fix it, without the URL itself.
    pub reason: String,
}

/// The query keys [`StreamUrl::parse`] accepts.
pub const QUERY_KEYS: [&str; 3] = ["iface", "source", "ttl"];

impl StreamUrl {
    /// Parse a stream URL (see the module docs for the grammar). A relative `file://` path
    /// stays relative; use [`StreamUrl::parse_with_base`] to anchor it.
    pub fn parse(s: &str) -> Result<StreamUrl, UrlError> {
        parse(s.trim()).map_err(|reason| UrlError {
            url: s.to_owned(),
            reason,
        })
    }

    /// Like [`StreamUrl::parse`], but a relative `file://` path is resolved against
    /// `base_dir` (the directory of the config file it was written in).
    pub fn parse_with_base(s: &str, base_dir: Option<&Path>) -> Result<StreamUrl, UrlError> {
        let mut url = StreamUrl::parse(s)?;
        if let (Some(base), Some(path)) = (base_dir, url.path.as_mut())
            && path.is_relative()
        {
            *path = base.join(&*path);
        }
        Ok(url)
    }

    pub fn is_multicast(&self) -> bool {
        self.addr.ip().is_multicast()
    }

    /// `true` for `udp://` and `rtp://`, the schemes that use a socket.
    pub fn is_network(&self) -> bool {
        self.scheme != Scheme::File
    }
}

impl std::str::FromStr for StreamUrl {
    type Err = UrlError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        StreamUrl::parse(s)
    }
}

impl fmt::Display for StreamUrl {
    /// Canonical form: `scheme://addr[?iface=..&source=..&ttl=..]` or `file://path`;
    /// [`StreamUrl::parse`] of the output gives back an equal value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.scheme == Scheme::File {
            let path = self.path.as_deref().unwrap_or(Path::new(""));
            return write!(f, "file://{}", path.display());
        }
        write!(f, "{}://{}", self.scheme, self.addr)?;
        let mut sep = '?';
        let mut param = |f: &mut fmt::Formatter<'_>, k: &str, v: &dyn fmt::Display| {
            let r = write!(f, "{sep}{k}={v}");
            sep = '&';
            r
        };
        if let Some(iface) = self.iface {
            param(f, "iface", &iface)?;
        }
        if let Some(source) = self.source {
            param(f, "source", &source)?;
        }
        if let Some(ttl) = self.ttl {
            param(f, "ttl", &ttl)?;
        }
        Ok(())
    }
}

/// Split `s` at the first `?` into the part before it and its `key=value` pairs (split at
/// `&`; empty segments are skipped, a segment without `=` gets an empty value).
pub fn split_query(s: &str) -> (&str, Vec<(&str, &str)>) {
    match s.split_once('?') {
        None => (s, Vec::new()),
        Some((head, query)) => {
            let pairs = query
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| p.split_once('=').unwrap_or((p, "")))
                .collect();
            (head, pairs)
        }
    }
}

const SCHEMES_HINT: &str = "write udp://IP:PORT, rtp://IP:PORT or file:///path/to/slate.ts";

fn parse(s: &str) -> Result<StreamUrl, String> {
    let Some((scheme, rest)) = s.split_once("://") else {
        return Err(format!("missing scheme: {SCHEMES_HINT}"));
    };
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "udp" => Scheme::Udp,
        "rtp" => Scheme::Rtp,
        "file" => Scheme::File,
        "" => return Err(format!("missing scheme: {SCHEMES_HINT}")),
        other => return Err(format!("unsupported scheme \"{other}\": {SCHEMES_HINT}")),
    };
    if scheme == Scheme::File {
        return parse_file(rest);
    }
    let (authority, query) = split_query(rest);
    let (vlc_source, host_port) = match authority.split_once('@') {
        // `udp://@:5000`: VLC's "listen on every address".
        Some(("", hp)) if hp.starts_with(':') => (None, hp),
        // `udp://@239.1.1.1:5000`: VLC's "listen" prefix, nothing to do.
        Some(("", hp)) => (None, hp),
        // `udp://10.0.0.1@232.1.1.1:5000`: VLC's source-specific form.
        Some((src, hp)) => {
            let src = parse_ip(src).map_err(|e| format!("sender before '@': {e}"))?;
            (Some(src), hp)
        }
        None => (None, authority),
    };
    if let Some((_, path)) = host_port.split_once('/') {
        return Err(format!(
            "unexpected path \"/{path}\" after the address: {} URLs are just {}://IP:PORT",
            scheme, scheme
        ));
    }
    let addr = match host_port.strip_prefix(':') {
        Some(port) if authority.starts_with('@') => parse_host_port(&format!("0.0.0.0:{port}"))?,
        _ => parse_host_port(host_port)?,
    };
    let mut url = StreamUrl {
        scheme,
        addr,
        iface: None,
        source: vlc_source,
        ttl: None,
        path: None,
    };
    let mut seen: Vec<&str> = Vec::new();
    for (key, value) in query {
        if seen.contains(&key) {
            return Err(format!(
                "query parameter \"{key}\" is given twice: keep one"
            ));
        }
        seen.push(key);
        match key {
            "iface" => url.iface = Some(parse_iface(value)?),
            "source" => {
                if url.source.is_some() {
                    return Err(
                        "the sender is given both before '@' and as source=: keep one".to_owned(),
                    );
                }
                url.source = Some(parse_ip(value).map_err(|e| format!("source={value}: {e}"))?);
            }
            "ttl" => url.ttl = Some(parse_ttl(value)?),
            _ => {
                return Err(format!(
                    "unknown query parameter \"{key}\": allowed are iface=IPv4, source=IP, ttl=1..255"
                ));
            }
        }
    }
    if let Some(source) = url.source {
        if source.is_multicast() || source.is_unspecified() {
            return Err(format!(
                "source={source} must be the unicast address of the sending host, not a group or 0.0.0.0"
            ));
        }
        if source.is_ipv4() != addr.is_ipv4() {
            return Err(format!(
                "source={source} and {} are different IP versions: use the sender's address of the same family",
                addr.ip()
            ));
        }
    }
    if url.iface.is_some() && addr.is_ipv6() {
        return Err(
            "iface= selects an IPv4 interface and is not supported with IPv6 addresses: remove it (the default route's interface is used)"
                .to_owned(),
        );
    }
    Ok(url)
}

fn parse_file(rest: &str) -> Result<StreamUrl, String> {
    if rest.is_empty() || rest == "/" {
        return Err(
            "missing path: write file:///abs/path.ts or file://relative/path.ts".to_owned(),
        );
    }
    if rest.contains('?') {
        return Err("file:// URLs take no query parameters: remove the part from '?'".to_owned());
    }
    Ok(StreamUrl {
        scheme: Scheme::File,
        addr: SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0),
        iface: None,
        source: None,
        ttl: None,
        path: Some(PathBuf::from(rest)),
    })
}

fn parse_host_port(hp: &str) -> Result<SocketAddr, String> {
    if hp.is_empty() {
        return Err("missing address: write IP:PORT, e.g. 239.1.1.1:5000".to_owned());
    }
    let (host, port) = if let Some(inner) = hp.strip_prefix('[') {
        let Some((host, after)) = inner.split_once(']') else {
            return Err("missing ']' after the IPv6 address: write [ff3e::1]:5000".to_owned());
        };
        match after.strip_prefix(':') {
            Some(port) => (host, port),
            None if after.is_empty() => {
                return Err(format!(
                    "missing port: write [{host}]:PORT, e.g. [{host}]:5000"
                ));
            }
            None => {
                return Err(format!(
                    "unexpected \"{after}\" after [{host}]: write [{host}]:PORT"
                ));
            }
        }
    } else {
        match hp.rsplit_once(':') {
            Some((host, _)) if host.contains(':') => {
                return Err(format!(
                    "IPv6 addresses need brackets to separate the port: write [{host}]:PORT"
                ));
            }
            Some((host, port)) => (host, port),
            None => {
                parse_ip(hp)?;
                return Err(format!("missing port: write {hp}:PORT, e.g. {hp}:5000"));
            }
        }
    };
    let ip = parse_ip(host)?;
    if port.is_empty() {
        return Err(format!(
            "missing port after ':': write {host}:PORT, e.g. {host}:5000"
        ));
    }
    let port: u16 = match port.parse::<u64>() {
        Ok(p) if p <= u64::from(u16::MAX) => p as u16,
        Ok(p) => return Err(format!("port {p} is out of range: use 1..65535")),
        Err(_) => return Err(format!("port \"{port}\" is not a number: use 1..65535")),
    };
    if port == 0 {
        return Err("port 0 is not allowed: give an explicit port 1..65535".to_owned());
    }
    Ok(SocketAddr::new(ip, port))
}

fn parse_ip(host: &str) -> Result<IpAddr, String> {
    if host.is_empty() {
        return Err(
            "missing IP address: write 0.0.0.0:PORT to receive on every local address, or the group or destination address"
                .to_owned(),
        );
    }
    host.parse::<IpAddr>().map_err(|_| {
        if host.chars().all(|c| c.is_ascii_digit() || c == '.') {
            format!("\"{host}\" is not a valid IPv4 address")
        } else {
            format!(
                "\"{host}\" is not an IP address: hostnames are not resolved, use a literal IPv4 or [IPv6] address \
                 (the gateway binds and joins at startup without DNS)"
            )
        }
    })
}

fn parse_iface(value: &str) -> Result<Ipv4Addr, String> {
    match value.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) if ip.is_multicast() => Err(format!(
            "iface={ip} is a multicast group: iface= takes the local interface's own IPv4 address"
        )),
        Ok(IpAddr::V4(ip)) => Ok(ip),
        Ok(IpAddr::V6(ip)) => Err(format!(
            "iface={ip}: iface= takes the local interface's IPv4 address (IPv6 interface selection is not supported)"
        )),
        Err(_) if value.is_empty() => Err(
            "iface= is empty: give the local interface's IPv4 address, e.g. iface=10.1.1.5"
                .to_owned(),
        ),
        Err(_) => Err(format!(
            "iface={value} is not an IPv4 address: iface= takes the local interface's address, not its name, e.g. iface=10.1.1.5"
        )),
    }
}

fn parse_ttl(value: &str) -> Result<u32, String> {
    match value.parse::<u32>() {
        Ok(ttl @ 1..=255) => Ok(ttl),
        _ => Err(format!("ttl={value} is out of range: use 1..255")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> StreamUrl {
        StreamUrl::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn err(s: &str) -> String {
        match StreamUrl::parse(s) {
            Ok(u) => panic!("{s} parsed as {u:?}"),
            Err(e) => e.reason,
        }
    }

    #[test]
    fn unicast_udp_and_rtp() {
        let u = ok("udp://127.0.0.1:5000");
        assert_eq!(u.scheme, Scheme::Udp);
        assert_eq!(u.addr, "127.0.0.1:5000".parse().unwrap());
        assert!(!u.is_multicast());
        assert_eq!((u.iface, u.source, u.ttl, u.path), (None, None, None, None));
        assert_eq!(ok("rtp://0.0.0.0:5002").scheme, Scheme::Rtp);
        assert_eq!(ok("RTP://10.0.0.1:5002").scheme, Scheme::Rtp);
    }

    #[test]
    fn multicast_with_query() {
        let u = ok("rtp://239.1.1.1:5000?iface=10.1.0.5&source=10.1.0.9&ttl=8");
        assert!(u.is_multicast());
        assert_eq!(u.iface, Some(Ipv4Addr::new(10, 1, 0, 5)));
        assert_eq!(u.source, Some("10.1.0.9".parse().unwrap()));
        assert_eq!(u.ttl, Some(8));
    }

    #[test]
    fn vlc_at_forms() {
        assert_eq!(ok("udp://@239.1.1.1:5000"), ok("udp://239.1.1.1:5000"));
        assert_eq!(ok("udp://@:5000"), ok("udp://0.0.0.0:5000"));
        assert!(err("udp://:5000").contains("0.0.0.0:PORT"));
        assert_eq!(
            ok("udp://10.0.0.9@232.1.1.1:5000"),
            ok("udp://232.1.1.1:5000?source=10.0.0.9")
        );
        assert!(err("udp://10.0.0.9@232.1.1.1:5000?source=10.0.0.8").contains("keep one"));
    }

    #[test]
    fn ipv6() {
        let u = ok("rtp://[ff3e::1]:5000?source=2001:db8::1");
        assert!(u.is_multicast());
        assert_eq!(u.addr.port(), 5000);
        assert!(err("rtp://ff3e::1:5000").contains("brackets"));
        assert!(err("rtp://[ff3e::1]").contains("missing port"));
        assert!(err("rtp://[ff3e::1]:5000?iface=10.0.0.1").contains("IPv6"));
        assert!(err("rtp://[ff3e::1]:5000?source=10.0.0.1").contains("IP versions"));
    }

    #[test]
    fn file_urls() {
        let u = ok("file:///srv/slate.ts");
        assert_eq!(u.scheme, Scheme::File);
        assert_eq!(u.path.as_deref(), Some(Path::new("/srv/slate.ts")));
        assert!(!u.is_network());
        let rel = ok("file://slates/bars.ts");
        assert_eq!(rel.path.as_deref(), Some(Path::new("slates/bars.ts")));
        let based =
            StreamUrl::parse_with_base("file://slates/bars.ts", Some(Path::new("/etc/hitless")))
                .unwrap();
        assert_eq!(
            based.path.as_deref(),
            Some(Path::new("/etc/hitless/slates/bars.ts"))
        );
        let abs = StreamUrl::parse_with_base("file:///srv/a.ts", Some(Path::new("/etc/hitless")))
            .unwrap();
        assert_eq!(abs.path.as_deref(), Some(Path::new("/srv/a.ts")));
        assert!(err("file://").contains("missing path"));
        assert!(err("file:///a.ts?x=1").contains("no query"));
    }

    #[test]
    fn errors_name_problem_and_fix() {
        assert!(err("127.0.0.1:5000").contains("missing scheme"));
        assert!(err("srt://127.0.0.1:5000").contains("unsupported scheme \"srt\""));
        assert!(err("rtp://127.0.0.1").contains("missing port: write 127.0.0.1:PORT"));
        assert!(err("rtp://127.0.0.1:").contains("missing port"));
        assert!(err("rtp://127.0.0.1:0").contains("port 0"));
        assert!(err("rtp://127.0.0.1:70000").contains("out of range"));
        assert!(err("rtp://127.0.0.1:abc").contains("not a number"));
        assert!(err("rtp://localhost:5000").contains("hostnames are not resolved"));
        assert!(err("rtp://239.1.1:5000").contains("not a valid IPv4"));
        assert!(err("rtp://127.0.0.1:5000/stream").contains("unexpected path"));
        assert!(err("rtp://239.1.1.1:5000?foo=1").contains("unknown query parameter \"foo\""));
        assert!(err("rtp://239.1.1.1:5000?ttl=1&ttl=2").contains("twice"));
        assert!(err("rtp://239.1.1.1:5000?ttl=0").contains("1..255"));
        assert!(err("rtp://239.1.1.1:5000?ttl=256").contains("1..255"));
        assert!(err("rtp://239.1.1.1:5000?iface=eth0").contains("not its name"));
        assert!(err("rtp://239.1.1.1:5000?iface=239.0.0.1").contains("multicast group"));
        assert!(err("rtp://239.1.1.1:5000?source=239.0.0.1").contains("unicast address"));
        let e = StreamUrl::parse("rtp://x:1").unwrap_err();
        assert!(e.to_string().starts_with("invalid URL \"rtp://x:1\": "));
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "udp://127.0.0.1:5000",
            "rtp://239.1.1.1:5000?iface=10.1.0.5&source=10.1.0.9&ttl=8",
            "rtp://[ff3e::1]:5000?source=2001:db8::1",
            "udp://239.1.1.1:5000?ttl=16",
            "file:///srv/slate.ts",
            "file://slates/bars.ts",
        ] {
            let u = ok(s);
            assert_eq!(u.to_string(), s);
            assert_eq!(ok(&u.to_string()), u);
        }
        assert_eq!(
            ok("udp://@239.1.1.1:5000?ttl=4&iface=10.0.0.1").to_string(),
            "udp://239.1.1.1:5000?iface=10.0.0.1&ttl=4"
        );
    }

    #[test]
    fn split_query_pairs() {
        assert_eq!(split_query("a:1"), ("a:1", vec![]));
        assert_eq!(
            split_query("a:1?x=1&&y"),
            ("a:1", vec![("x", "1"), ("y", "")])
        );
    }
}
