//! Ingest glue: one receive socket per source, batched reads, validation, drop accounting.
//!
//! A datagram is received once into a pooled slab ([`crate::net::mmsg`]), frozen into
//! `Bytes`, given its arrival time and validated: RTP header (for `rtp://`), then the
//! payload must be whole 188-byte TS packets with sync bytes. Anything else is counted by
//! reason and dropped; it never reaches the merger and never disturbs another leg.
//!
//! Arrival time: the kernel timestamps every datagram when it receives it (`SO_TIMESTAMPNS`,
//! wall clock); the ingest reads both clocks once per batch and moves each timestamp onto
//! the monotonic clock ([`arrival`]), so that neither the reading thread's scheduling delay
//! nor the batching (every datagram of a batch read at one instant) reaches the content
//! merger, which measures a leg's losses by its arrival times. What they cannot remove is
//! the sender's own jitter: on loopback the kernel stamps a datagram while the sending
//! process sends it, so a stalled sender (e.g. `hitless send` on a busy machine) still shows.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;

use crate::config::SourceConfig;
use crate::net::mmsg::{self, Datagram, SlabPool};
use crate::net::{self, NetError};
use crate::rtp::{RtpError, RtpPacket};
use crate::ts::{self, TsError};
use crate::url::Scheme;

/// Why a datagram was dropped at ingest. Closed set: it labels a metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    Rtp(RtpError),
    Ts(TsError),
    /// `source=` was given and the datagram came from another sender.
    WrongSender,
    /// Larger than the receive slot.
    Oversize,
    /// Not RTP where the channel needs RTP.
    NotRtp,
}

impl DropReason {
    pub const ALL: [DropReason; 9] = [
        DropReason::Rtp(RtpError::Truncated),
        DropReason::Rtp(RtpError::BadVersion),
        DropReason::Rtp(RtpError::HeadersTruncated),
        DropReason::Rtp(RtpError::BadPadding),
        DropReason::Ts(TsError::BadLength),
        DropReason::Ts(TsError::BadSync),
        DropReason::WrongSender,
        DropReason::Oversize,
        DropReason::NotRtp,
    ];

    pub fn label(self) -> &'static str {
        match self {
            DropReason::Rtp(e) => e.reason(),
            DropReason::Ts(e) => e.reason(),
            DropReason::WrongSender => "wrong_sender",
            DropReason::Oversize => "oversize",
            DropReason::NotRtp => "not_rtp",
        }
    }

    fn index(self) -> usize {
        DropReason::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }
}

/// Counters of one leg's ingest.
#[derive(Clone, Debug, Default)]
pub struct IngestStats {
    /// Valid datagrams handed on.
    pub packets: u64,
    /// Bytes of valid datagrams (whole UDP payload).
    pub bytes: u64,
    /// Dropped datagrams, indexed like [`DropReason::ALL`].
    pub dropped: [u64; DropReason::ALL.len()],
}

impl IngestStats {
    pub fn dropped_by_reason(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        DropReason::ALL
            .iter()
            .zip(self.dropped.iter())
            .map(|(r, n)| (r.label(), *n))
    }
    pub fn dropped_total(&self) -> u64 {
        self.dropped.iter().sum()
    }
}

/// A kernel receive timestamp older than this (a clock step, or a stall longer than any
/// merge window) counts as this old.
pub const MAX_RX_AGE: Duration = Duration::from_secs(1);

/// The monotonic arrival time of a datagram the kernel stamped `rx` (wall clock), given the
/// two clocks read together at `now` / `now_sys` after it was received: `now − (now_sys −
/// rx)`, clamped to `[now − MAX_RX_AGE, now]`. A timestamp in the future (the wall clock was
/// stepped back meanwhile) or none at all gives `now`.
pub fn arrival(now: Instant, now_sys: SystemTime, rx: Option<SystemTime>) -> Instant {
    let Some(age) = rx.and_then(|rx| now_sys.duration_since(rx).ok()) else {
        return now;
    };
    now.checked_sub(age.min(MAX_RX_AGE)).unwrap_or(now)
}

/// Both clocks, read together once per batch (the glue is the only place that reads them).
#[allow(clippy::disallowed_methods)]
fn clocks() -> (Instant, SystemTime) {
    (Instant::now(), SystemTime::now())
}

/// A source's receive socket and its validation state.
pub struct Leg {
    pub socket: tokio::net::UdpSocket,
    pub local: SocketAddr,
    pool: SlabPool,
    batch: Vec<Datagram>,
    scheme: Scheme,
    sender: Option<std::net::IpAddr>,
    /// Arrival time of the last datagram handed on: the leg's arrival times never go back
    /// (a datagram without a timestamp, or a clamped one, could otherwise).
    last_arrival: Option<Instant>,
    pub stats: IngestStats,
}

/// What the kernel granted versus what was asked, for the caller to warn about.
pub struct Opened {
    pub leg: Leg,
    pub requested_recv_buffer: usize,
    pub granted_recv_buffer: usize,
}

impl Leg {
    /// Bind the source's socket (must run inside a tokio runtime).
    pub fn open(cfg: &SourceConfig) -> Result<Opened, NetError> {
        let rs = net::open_recv(&cfg.url, cfg.recv_buffer_bytes)?;
        if let Err(e) = mmsg::enable_rx_timestamps(&rs.socket) {
            // Not fatal: arrival times are then those of the batch reads.
            tracing::warn!(source = %cfg.url, error = %e, "no kernel receive timestamps (SO_TIMESTAMPNS)");
        }
        let local = rs.socket.local_addr().map_err(|source| NetError::Option {
            url: cfg.url.to_string(),
            what: "getsockname",
            source,
        })?;
        let socket =
            tokio::net::UdpSocket::from_std(rs.socket).map_err(|source| NetError::Option {
                url: cfg.url.to_string(),
                what: "register with tokio",
                source,
            })?;
        Ok(Opened {
            leg: Leg {
                socket,
                local,
                pool: SlabPool::default(),
                batch: Vec::with_capacity(mmsg::BATCH),
                scheme: cfg.url.scheme,
                sender: cfg.url.source,
                last_arrival: None,
                stats: IngestStats::default(),
            },
            requested_recv_buffer: cfg.recv_buffer_bytes,
            // Linux doubles the value for bookkeeping overhead; report what was usable.
            granted_recv_buffer: rs.granted_recv_buffer / 2,
        })
    }

    /// Read one batch without blocking and hand every valid RTP datagram to `sink`
    /// (merge modes). Returns the number of datagrams read (valid or not); `WouldBlock`
    /// when none.
    pub fn read_rtp_batch(&mut self, mut sink: impl FnMut(RtpPacket)) -> io::Result<usize> {
        self.read_batch(take_rtp, |p, _| sink(p))
    }

    /// Read one batch and hand the TS payload of every valid datagram to `sink` (switch
    /// and content-merge modes: `rtp://` or `udp://` sources; the payload is a zero-copy
    /// slice), with its arrival time: the kernel's receive timestamp on the monotonic clock
    /// ([`arrival`]), never earlier than the leg's previous one, never later than the
    /// batch's read.
    pub fn read_ts_batch(&mut self, sink: impl FnMut(Bytes, Instant)) -> io::Result<usize> {
        self.read_batch(take_ts, sink)
    }

    fn read_batch<T>(
        &mut self,
        validate: fn(Datagram, Scheme, Option<std::net::IpAddr>) -> Result<T, DropReason>,
        mut sink: impl FnMut(T, Instant),
    ) -> io::Result<usize> {
        self.batch.clear();
        let (pool, batch) = (&mut self.pool, &mut self.batch);
        // A short batch means the socket queue is empty (recvmmsg returns fewer than asked
        // only then): tell tokio so, by reporting WouldBlock from inside `try_io`, which
        // clears the cached readiness unless a newer readiness event has arrived meanwhile.
        // Otherwise the next wake-up would spend a `recvmmsg` call to learn it.
        let mut short = 0;
        let res = self.socket.try_io(tokio::io::Interest::READABLE, || {
            let n = mmsg::recv_batch(&self.socket, pool, batch)?;
            if n < mmsg::BATCH {
                short = n;
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        });
        let n = match res {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && short > 0 => short,
            Err(e) => return Err(e),
        };
        let (now, now_sys) = clocks();
        for d in self.batch.drain(..) {
            let len = d.data.len() as u64;
            let mut at = arrival(now, now_sys, d.rx);
            if let Some(last) = self.last_arrival {
                at = at.max(last);
            }
            match validate(d, self.scheme, self.sender) {
                Ok(p) => {
                    self.stats.packets += 1;
                    self.stats.bytes += len;
                    self.last_arrival = Some(at);
                    sink(p, at);
                }
                Err(reason) => self.stats.dropped[reason.index()] += 1,
            }
        }
        Ok(n)
    }
}

/// Validate one datagram for a switch channel: RTP (header validated, then stripped) or
/// plain UDP; either way the payload must be whole TS packets. Returns the TS payload.
pub fn validate_ts(
    d: &Datagram,
    scheme: Scheme,
    sender: Option<std::net::IpAddr>,
) -> Result<Bytes, DropReason> {
    take_ts(d.clone(), scheme, sender)
}

/// Validate one datagram for an RTP channel.
pub fn validate_rtp(
    d: &Datagram,
    scheme: Scheme,
    sender: Option<std::net::IpAddr>,
) -> Result<RtpPacket, DropReason> {
    take_rtp(d.clone(), scheme, sender)
}

/// [`validate_ts`], consuming the datagram (no reference-count round trip per packet).
fn take_ts(
    d: Datagram,
    scheme: Scheme,
    sender: Option<std::net::IpAddr>,
) -> Result<Bytes, DropReason> {
    if scheme == Scheme::Rtp {
        return take_rtp(d, scheme, sender).map(|p| p.payload());
    }
    if sender.is_some_and(|s| s != d.from.ip()) {
        return Err(DropReason::WrongSender);
    }
    if d.truncated {
        return Err(DropReason::Oversize);
    }
    ts::validate_payload(&d.data).map_err(DropReason::Ts)?;
    Ok(d.data)
}

/// [`validate_rtp`], consuming the datagram.
fn take_rtp(
    d: Datagram,
    scheme: Scheme,
    sender: Option<std::net::IpAddr>,
) -> Result<RtpPacket, DropReason> {
    if sender.is_some_and(|s| s != d.from.ip()) {
        return Err(DropReason::WrongSender);
    }
    if d.truncated {
        return Err(DropReason::Oversize);
    }
    if scheme != Scheme::Rtp {
        return Err(DropReason::NotRtp);
    }
    let p = RtpPacket::try_new(d.data).map_err(DropReason::Rtp)?;
    ts::validate_payload(p.payload_slice()).map_err(DropReason::Ts)?;
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dgram(data: Vec<u8>, from: &str) -> Datagram {
        Datagram {
            data: Bytes::from(data),
            from: from.parse().unwrap(),
            truncated: false,
            rx: None,
        }
    }

    #[test]
    fn validation_reasons() {
        let good = crate::rtp::tests::rtp(1, 1, 1316).to_vec();
        let ok = validate_rtp(&dgram(good.clone(), "10.0.0.1:1"), Scheme::Rtp, None);
        assert!(ok.is_ok());
        let src = Some("10.0.0.2".parse().unwrap());
        assert_eq!(
            validate_rtp(&dgram(good.clone(), "10.0.0.1:1"), Scheme::Rtp, src).unwrap_err(),
            DropReason::WrongSender
        );
        let mut bad_sync = good.clone();
        bad_sync[12 + 188] = 0;
        assert_eq!(
            validate_rtp(&dgram(bad_sync, "10.0.0.1:1"), Scheme::Rtp, None).unwrap_err(),
            DropReason::Ts(TsError::BadSync)
        );
        let short = good[..12 + 100].to_vec();
        assert_eq!(
            validate_rtp(&dgram(short, "10.0.0.1:1"), Scheme::Rtp, None).unwrap_err(),
            DropReason::Ts(TsError::BadLength)
        );
        assert_eq!(
            validate_rtp(&dgram(vec![0x80, 1], "10.0.0.1:1"), Scheme::Rtp, None).unwrap_err(),
            DropReason::Rtp(RtpError::Truncated)
        );
    }

    proptest::proptest! {
        /// Network input never panics: any bytes are either a valid RTP/TS datagram or a
        /// counted drop reason.
        #[test]
        fn arbitrary_datagrams_never_panic(data in proptest::collection::vec(proptest::num::u8::ANY, 0..1600)) {
            let _ = validate_rtp(&dgram(data, "10.0.0.1:1"), Scheme::Rtp, None);
        }

        /// A valid RTP/TS datagram with any one byte of its header corrupted either still
        /// validates or is dropped with a reason: never a panic.
        #[test]
        fn corrupted_headers_are_classified(pos in 0usize..16, val in proptest::num::u8::ANY) {
            let mut v = crate::rtp::tests::rtp(9, 9, 1316).to_vec();
            v[pos] = val;
            let _ = validate_rtp(&dgram(v, "10.0.0.1:1"), Scheme::Rtp, None);
        }
    }

    #[test]
    fn plain_udp_ts_is_validated_and_rtp_is_stripped_for_switch_mode() {
        let rtp = crate::rtp::tests::rtp(1, 1, 1316).to_vec();
        let udp = rtp[12..].to_vec();
        let p = validate_ts(&dgram(udp.clone(), "10.0.0.1:1"), Scheme::Udp, None).unwrap();
        assert_eq!(&p[..], &udp[..]);
        let p = validate_ts(&dgram(rtp, "10.0.0.1:1"), Scheme::Rtp, None).unwrap();
        assert_eq!(&p[..], &udp[..]);
        assert_eq!(
            validate_ts(&dgram(udp[..100].to_vec(), "10.0.0.1:1"), Scheme::Udp, None).unwrap_err(),
            DropReason::Ts(TsError::BadLength)
        );
    }

    #[test]
    fn kernel_timestamps_move_onto_the_monotonic_clock_within_a_second() {
        let now = crate::merge::sim::base() + Duration::from_secs(10);
        let sys = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let ms = Duration::from_millis;
        assert_eq!(arrival(now, sys, Some(sys - ms(3))), now - ms(3));
        assert_eq!(arrival(now, sys, Some(sys)), now);
        assert_eq!(arrival(now, sys, None), now, "no timestamp");
        assert_eq!(
            arrival(now, sys, Some(sys + ms(5))),
            now,
            "a timestamp in the future (the wall clock stepped back)"
        );
        assert_eq!(
            arrival(now, sys, Some(sys - Duration::from_secs(3600))),
            now - MAX_RX_AGE,
            "an hour old (the wall clock stepped forward)"
        );
        assert_eq!(arrival(now, sys, Some(sys - MAX_RX_AGE)), now - MAX_RX_AGE);
    }

    #[test]
    fn every_reason_has_a_distinct_label() {
        let mut labels: Vec<_> = DropReason::ALL.iter().map(|r| r.label()).collect();
        labels.sort();
        labels.dedup();
        assert_eq!(labels.len(), DropReason::ALL.len());
    }
}
