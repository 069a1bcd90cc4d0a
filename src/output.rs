//! Output glue: one send socket per `[[channel.output]]`, batched `sendmmsg(2)`.
//!
//! For RTP input and `rtp://` output the datagrams leave byte-for-byte as they came in
//! (headers kept, so a downstream receiver can merge again); several outputs send the same
//! packets to each destination (2022-7 transmit). For `udp://` output the RTP header is
//! stripped by pointing the iovec past it: the payload is still never copied.

use std::io;

use crate::config::OutputConfig;
use crate::net::mmsg::{self, Dest};
use crate::net::{self, NetError};
use crate::rtp::RtpPacket;
use crate::url::{Scheme, StreamUrl};

/// Counters of one output.
#[derive(Clone, Debug, Default)]
pub struct OutputStats {
    pub packets: u64,
    pub bytes: u64,
    /// Datagrams the kernel refused (e.g. no route); counted and dropped.
    pub errors: u64,
}

pub struct Output {
    pub url: StreamUrl,
    socket: tokio::net::UdpSocket,
    dest: Dest,
    strip_rtp: bool,
    /// Reused slice list for one send batch (no per-packet allocation).
    slices: Vec<(usize, usize)>,
    pub stats: OutputStats,
}

impl Output {
    /// Open the output socket (must run inside a tokio runtime).
    pub fn open(cfg: &OutputConfig) -> Result<Output, NetError> {
        let std = net::open_send(&cfg.url, 4 << 20)?;
        let socket = tokio::net::UdpSocket::from_std(std).map_err(|source| NetError::Option {
            url: cfg.url.to_string(),
            what: "register with tokio",
            source,
        })?;
        Ok(Output {
            url: cfg.url.clone(),
            socket,
            dest: Dest::new(cfg.url.addr),
            strip_rtp: cfg.url.scheme == Scheme::Udp,
            slices: Vec::with_capacity(mmsg::BATCH * 4),
            stats: OutputStats::default(),
        })
    }

    /// Send `pkts` in order, waiting for socket space if the kernel buffer is full.
    pub async fn send(&mut self, pkts: &[RtpPacket]) {
        self.slices.clear();
        self.slices.extend(pkts.iter().map(|p| {
            if self.strip_rtp {
                (p.payload_offset as usize, p.payload_end as usize)
            } else {
                (0, p.data.len())
            }
        }));
        let mut done = 0;
        while done < pkts.len() {
            let views = SliceViews {
                pkts: &pkts[done..],
                ranges: &self.slices[done..],
            };
            let res = self.socket.try_io(tokio::io::Interest::WRITABLE, || {
                mmsg::send_batch(&self.socket, &self.dest, &views.collect())
            });
            match res {
                Ok(n) => {
                    for p in &pkts[done..done + n] {
                        self.stats.bytes += p.data.len() as u64;
                    }
                    self.stats.packets += n as u64;
                    done += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if self.socket.writable().await.is_err() {
                        self.stats.errors += (pkts.len() - done) as u64;
                        return;
                    }
                }
                Err(e) => {
                    // Skip the datagram the kernel refused (ECONNREFUSED after an ICMP
                    // port unreachable, ENETUNREACH...) and carry on with the rest.
                    tracing::debug!(url = %self.url, error = %e, "send failed");
                    self.stats.errors += 1;
                    done += 1;
                }
            }
        }
    }
}

struct SliceViews<'a> {
    pkts: &'a [RtpPacket],
    ranges: &'a [(usize, usize)],
}

impl<'a> SliceViews<'a> {
    /// Borrowed views of at most one syscall batch (fixed array: no allocation).
    fn collect(&self) -> ArrayViews<'a> {
        let n = self.pkts.len().min(mmsg::BATCH);
        let mut v: [&'a [u8]; mmsg::BATCH] = [&[]; mmsg::BATCH];
        for (slot, (p, &(a, b))) in v.iter_mut().zip(self.pkts.iter().zip(self.ranges)) {
            *slot = &p.data[a..b];
        }
        ArrayViews { v, n }
    }
}

struct ArrayViews<'a> {
    v: [&'a [u8]; mmsg::BATCH],
    n: usize,
}

impl<'a> std::ops::Deref for ArrayViews<'a> {
    type Target = [&'a [u8]];
    fn deref(&self) -> &Self::Target {
        &self.v[..self.n]
    }
}
