//! Output glue: one send socket per `[[channel.output]]`, batched `sendmmsg(2)` with
//! scatter/gather, so no payload byte is ever copied on the way out.
//!
//! - Merge modes, RTP input: for `rtp://` output the datagrams leave byte-for-byte as they
//!   came in (headers kept, so a downstream receiver can merge again); for `udp://` output
//!   the RTP header is stripped by pointing the iovec past it. Several outputs send the same
//!   packets to each destination (2022-7 transmit).
//! - Switch mode: the channel emits TS packets (from whichever source is on air, plus the few
//!   packets the splicer rewrote). They are grouped 7 to a datagram; `rtp://` outputs get an
//!   RTP header of their own (RFC 2250, PT 33, sequence continuous across switches, 90 kHz
//!   timestamp from the send time), written into a reused header buffer.

use std::io;
use std::time::Instant;

use bytes::Bytes;

use crate::config::OutputConfig;
use crate::net::mmsg::{self, Dest, Gather};
use crate::net::{self, NetError};
use crate::rtp::{self, RtpPacket};
use crate::url::{Scheme, StreamUrl};

/// TS packets per output datagram in switch mode (1316 bytes, the usual MTU-safe size).
pub const TS_PER_DATAGRAM: usize = 7;

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
    rtp_out: bool,
    /// RTP state for outputs that make their own headers (switch mode).
    seq: u16,
    ssrc: u32,
    epoch: Option<Instant>,
    headers: Vec<[u8; rtp::FIXED_HEADER_LEN]>,
    pub stats: OutputStats,
    /// Hot standby (cluster): while set, nothing is sent; the channel still receives and
    /// merges, so that a takeover only clears it.
    standby: std::sync::Arc<std::sync::atomic::AtomicBool>,
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
            rtp_out: cfg.url.scheme == Scheme::Rtp,
            seq: fastrand::u16(..),
            ssrc: fastrand::u32(..),
            epoch: None,
            headers: Vec::with_capacity(mmsg::BATCH),
            stats: OutputStats::default(),
            standby: Default::default(),
        })
    }

    /// Share a hot-standby flag: while it is set, this output sends nothing.
    pub fn with_standby(mut self, flag: std::sync::Arc<std::sync::atomic::AtomicBool>) -> Output {
        self.standby = flag;
        self
    }

    fn is_standby(&self) -> bool {
        self.standby.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Send RTP datagrams in order (merge modes): whole for `rtp://`, payload only for
    /// `udp://`. Waits for socket space if the kernel buffer is full.
    pub async fn send_rtp(&mut self, pkts: &[RtpPacket]) {
        if self.is_standby() {
            return;
        }
        let strip = !self.rtp_out;
        let mut done = 0;
        while done < pkts.len() {
            // One iovec per datagram: no scatter/gather needed for whole datagrams.
            let n = (pkts.len() - done).min(mmsg::BATCH);
            let mut bufs: [&[u8]; mmsg::BATCH] = [&[]; mmsg::BATCH];
            for (b, p) in bufs.iter_mut().zip(&pkts[done..done + n]) {
                *b = if strip {
                    p.payload_slice()
                } else {
                    &p.data[..]
                };
            }
            let bufs = &bufs[..n];
            done += self
                .transmit(
                    n,
                    |k| bufs[..k].iter().map(|b| b.len() as u64).sum(),
                    |s, d| mmsg::send_batch(s, d, bufs),
                )
                .await;
        }
    }

    /// Send TS packets (switch mode), 7 to a datagram, with a fresh RTP header for `rtp://`.
    pub async fn send_ts(&mut self, now: Instant, ts: &[Bytes]) {
        if ts.is_empty() || self.is_standby() {
            return;
        }
        let epoch = *self.epoch.get_or_insert(now);
        // 90 kHz media clock (RFC 2250) from the send time.
        let ts90 = (now.saturating_duration_since(epoch).as_micros() * 9 / 100) as u32;
        for group in ts.chunks(TS_PER_DATAGRAM * mmsg::BATCH) {
            let n = group.len().div_ceil(TS_PER_DATAGRAM);
            self.headers.clear();
            if self.rtp_out {
                for _ in 0..n {
                    let mut h = [0u8; rtp::FIXED_HEADER_LEN];
                    rtp::write_header(&mut h, rtp::PT_MP2T, self.seq, ts90, self.ssrc);
                    self.seq = self.seq.wrapping_add(1);
                    self.headers.push(h);
                }
            }
            let headers = std::mem::take(&mut self.headers);
            let mut msgs = [Gather::default(); mmsg::BATCH];
            for (i, (m, chunk)) in msgs
                .iter_mut()
                .zip(group.chunks(TS_PER_DATAGRAM))
                .enumerate()
            {
                if let Some(h) = headers.get(i) {
                    m.push(h);
                }
                for p in chunk {
                    m.push(p);
                }
            }
            let mut done = 0;
            while done < n {
                let msgs = &msgs[done..n];
                done += self
                    .transmit(
                        msgs.len(),
                        |k| msgs[..k].iter().map(|m| m.bytes() as u64).sum(),
                        |s, d| mmsg::send_gather(s, d, msgs),
                    )
                    .await;
            }
            self.headers = headers;
        }
    }

    /// Send as many of the `count` datagrams `send` sends as possible; returns how many left
    /// (sent or skipped on error). `bytes(k)` is the size of the first `k`. Waits for
    /// writability when the socket buffer is full.
    async fn transmit(
        &mut self,
        count: usize,
        bytes: impl Fn(usize) -> u64,
        send: impl Fn(&tokio::net::UdpSocket, &Dest) -> io::Result<usize>,
    ) -> usize {
        loop {
            let res = self.socket.try_io(tokio::io::Interest::WRITABLE, || {
                send(&self.socket, &self.dest)
            });
            match res {
                Ok(n) => {
                    self.stats.packets += n as u64;
                    self.stats.bytes += bytes(n);
                    return n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if self.socket.writable().await.is_err() {
                        self.stats.errors += count as u64;
                        return count;
                    }
                }
                Err(e) => {
                    // Skip the datagram the kernel refused (ECONNREFUSED after an ICMP port
                    // unreachable, ENETUNREACH...) and carry on with the rest.
                    tracing::debug!(url = %self.url, error = %e, "send failed");
                    self.stats.errors += 1;
                    return 1;
                }
            }
        }
    }
}
