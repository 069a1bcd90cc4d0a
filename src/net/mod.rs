//! Socket plumbing shared by the gateway and the tools: opening receive sockets per
//! [`StreamUrl`] (unicast, any-source and source-specific multicast, interface selection,
//! receive buffer) and send sockets (TTL, interface), plus batched syscalls in [`mmsg`].

pub mod mmsg;

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::url::StreamUrl;

/// Result of opening a receive socket: the socket and what the kernel granted.
pub struct RecvSocket {
    pub socket: std::net::UdpSocket,
    /// SO_RCVBUF as reported by the kernel (Linux reports twice the usable size).
    pub granted_recv_buffer: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("{url}: cannot create socket: {source}")]
    Socket { url: String, source: io::Error },
    #[error("{url}: cannot bind {addr}: {source} (is another process or source using this port?)")]
    Bind {
        url: String,
        addr: SocketAddr,
        source: io::Error,
    },
    #[error(
        "{url}: cannot join multicast group {group}: {source} (check iface= names a local address on the right network)"
    )]
    Join {
        url: String,
        group: IpAddr,
        source: io::Error,
    },
    #[error("{url}: {what}: {source}")]
    Option {
        url: String,
        what: &'static str,
        source: io::Error,
    },
}

/// Open a non-blocking UDP socket that receives what `url` describes.
///
/// Unicast binds the given address. Multicast binds the group address and port (so that
/// other groups on the same port are not delivered to us), then joins the group on
/// `iface=` (or the default interface): a source-specific join (IGMPv3) when `source=` is
/// given, any-source otherwise. The kernel may cap `recv_buffer_bytes` at
/// `net.core.rmem_max`; the granted size is returned so the caller can warn.
pub fn open_recv(url: &StreamUrl, recv_buffer_bytes: usize) -> Result<RecvSocket, NetError> {
    let u = || url.to_string();
    let addr = url.addr;
    let domain = Domain::for_address(addr);
    let sock = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))
        .map_err(|source| NetError::Socket { url: u(), source })?;
    let opt = |what: &'static str| {
        move |source| NetError::Option {
            url: u(),
            what,
            source,
        }
    };
    sock.set_reuse_address(true).map_err(opt("SO_REUSEADDR"))?;
    if recv_buffer_bytes > 0 {
        sock.set_recv_buffer_size(recv_buffer_bytes)
            .map_err(opt("SO_RCVBUF"))?;
    }
    let granted_recv_buffer = sock.recv_buffer_size().map_err(opt("SO_RCVBUF"))?;
    sock.set_nonblocking(true).map_err(opt("O_NONBLOCK"))?;
    sock.bind(&SockAddr::from(addr))
        .map_err(|source| NetError::Bind {
            url: u(),
            addr,
            source,
        })?;
    if addr.ip().is_multicast() {
        let join_err = |source| NetError::Join {
            url: u(),
            group: addr.ip(),
            source,
        };
        match (addr.ip(), url.source) {
            (IpAddr::V4(group), Some(IpAddr::V4(src))) => {
                let iface = url.iface.unwrap_or(Ipv4Addr::UNSPECIFIED);
                sock.join_ssm_v4(&src, &group, &iface).map_err(join_err)?;
            }
            (IpAddr::V4(group), _) => {
                let iface = url.iface.unwrap_or(Ipv4Addr::UNSPECIFIED);
                sock.join_multicast_v4(&group, &iface).map_err(join_err)?;
            }
            (IpAddr::V6(group), _) => {
                sock.join_multicast_v6(&group, 0).map_err(join_err)?;
            }
        }
    }
    Ok(RecvSocket {
        socket: sock.into(),
        granted_recv_buffer,
    })
}

/// Open a non-blocking UDP socket for sending to `url` (TTL and interface for multicast).
pub fn open_send(
    url: &StreamUrl,
    send_buffer_bytes: usize,
) -> Result<std::net::UdpSocket, NetError> {
    let u = || url.to_string();
    let opt = |what: &'static str| {
        move |source| NetError::Option {
            url: u(),
            what,
            source,
        }
    };
    let domain = Domain::for_address(url.addr);
    let sock = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))
        .map_err(|source| NetError::Socket { url: u(), source })?;
    if send_buffer_bytes > 0 {
        sock.set_send_buffer_size(send_buffer_bytes)
            .map_err(opt("SO_SNDBUF"))?;
    }
    sock.set_nonblocking(true).map_err(opt("O_NONBLOCK"))?;
    let local: SocketAddr = match (url.addr, url.iface) {
        (SocketAddr::V4(_), Some(iface)) if !url.is_multicast() => SocketAddr::new(iface.into(), 0),
        (SocketAddr::V4(_), _) => SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0),
        (SocketAddr::V6(_), _) => SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), 0),
    };
    sock.bind(&SockAddr::from(local))
        .map_err(|source| NetError::Bind {
            url: u(),
            addr: local,
            source,
        })?;
    if url.is_multicast() && url.addr.is_ipv4() {
        sock.set_multicast_ttl_v4(url.ttl.unwrap_or(16))
            .map_err(opt("IP_MULTICAST_TTL"))?;
        if let Some(iface) = url.iface {
            sock.set_multicast_if_v4(&iface)
                .map_err(opt("IP_MULTICAST_IF"))?;
        }
        sock.set_multicast_loop_v4(true)
            .map_err(opt("IP_MULTICAST_LOOP"))?;
    } else if let Some(ttl) = url.ttl {
        sock.set_ttl_v4(ttl).map_err(opt("IP_TTL"))?;
    }
    Ok(sock.into())
}
