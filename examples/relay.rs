//! The simplest forwarder that does the gateway's job: the baseline of
//! `scripts/bench-loopback.py`.
//!
//! Binds N UDP ports, reads them with the gateway's batched `recvmmsg(2)` into the
//! gateway's slab pool, keeps the first copy of each RTP sequence number and forwards it
//! at once, in arrival order, to one destination with `sendmmsg(2)`. No reordering, no
//! merge window, no timers, no metrics, no async runtime: one thread blocked in `poll(2)`.
//! Same batch size and read budget per wake-up as the gateway's channel task, same socket
//! buffers (4 MiB), so the comparison measures what the gateway adds on top.
//!
//! ```sh
//! cargo build --release --example relay
//! target/release/examples/relay --listen 127.0.0.1:5000 --listen 127.0.0.1:5002 \
//!     --to 127.0.0.1:6000 --duration 10
//! ```
//!
//! Stops on SIGTERM/SIGINT or after `--duration`, then prints one JSON line of counters
//! on stdout.
#![allow(unsafe_code)]
// A standalone program: reading the clock here is glue, not logic.
#![allow(clippy::disallowed_methods)]

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use hitless::net::mmsg::{self, Datagram, Dest, SlabPool};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// Batches read from one socket per wake-up, as in the gateway's channel task.
const READ_BUDGET: usize = 8;
/// SO_RCVBUF / SO_SNDBUF, as the gateway's defaults.
const SOCKET_BUFFER: usize = 4 << 20;

#[derive(Parser)]
#[command(about = "Minimal recvmmsg/sendmmsg 2022-7 relay (benchmark baseline)")]
struct Args {
    /// Address to receive one leg on (repeat for each leg).
    #[arg(long, required = true)]
    listen: Vec<SocketAddr>,
    /// Where to send the de-duplicated stream.
    #[arg(long)]
    to: SocketAddr,
    /// Stop after this many seconds (default: run until SIGTERM/SIGINT).
    #[arg(long)]
    duration: Option<f64>,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// First-copy filter over the 16-bit RTP sequence space: a generation stamp per sequence
/// number (the extended sequence number + 1 that last passed), so the window slides with
/// the highest sequence seen and nothing is ever cleared or allocated per packet.
struct FirstCopy {
    stamp: Box<[u32]>,
    top: Option<i64>,
}

impl FirstCopy {
    fn new() -> FirstCopy {
        FirstCopy {
            stamp: vec![0u32; 1 << 16].into_boxed_slice(),
            top: None,
        }
    }

    /// True when `seq` has not been forwarded yet (within ±2^15 of the highest seen).
    #[inline]
    fn first(&mut self, seq: u16) -> bool {
        let top = *self.top.get_or_insert(i64::from(seq) + (1 << 16));
        let ext = top + i64::from(seq.wrapping_sub(top as u16) as i16);
        let slot = &mut self.stamp[usize::from(seq)];
        let tag = (ext + 1) as u32;
        if *slot == tag {
            return false;
        }
        *slot = tag;
        if ext > top {
            self.top = Some(ext);
        }
        true
    }
}

#[derive(Default)]
struct Counters {
    received: Vec<u64>,
    invalid: u64,
    duplicates: u64,
    forwarded: u64,
    send_errors: u64,
}

fn open_recv(addr: SocketAddr) -> io::Result<UdpSocket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.set_recv_buffer_size(SOCKET_BUFFER)?;
    s.set_nonblocking(true)?;
    s.bind(&SockAddr::from(addr))?;
    Ok(s.into())
}

fn open_send(to: SocketAddr) -> io::Result<UdpSocket> {
    let s = Socket::new(Domain::for_address(to), Type::DGRAM, Some(Protocol::UDP))?;
    s.set_send_buffer_size(SOCKET_BUFFER)?;
    s.set_nonblocking(true)?;
    let any: SocketAddr = if to.is_ipv4() {
        "0.0.0.0:0".parse().unwrap()
    } else {
        "[::]:0".parse().unwrap()
    };
    s.bind(&SockAddr::from(any))?;
    Ok(s.into())
}

/// `poll(2)` on `fds` for up to `timeout_ms`; EINTR counts as a timeout.
fn poll(fds: &mut [libc::pollfd], timeout_ms: i32) -> io::Result<()> {
    // SAFETY: `fds` is a valid, exclusively borrowed array of `fds.len()` pollfd.
    let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(())
}

/// Send all of `bufs`, blocking in `poll(2)` for writability when the socket is full (the
/// gateway's outputs wait the same way).
fn send_all(sock: &UdpSocket, dest: &Dest, bufs: &[Bytes], c: &mut Counters) {
    let mut done = 0;
    while done < bufs.len() {
        match mmsg::send_batch(sock, dest, &bufs[done..]) {
            Ok(n) => {
                c.forwarded += n as u64;
                done += n;
                if n == 0 {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let mut p = [libc::pollfd {
                    fd: sock.as_raw_fd(),
                    events: libc::POLLOUT,
                    revents: 0,
                }];
                if poll(&mut p, 100).is_err() || STOP.load(Ordering::Relaxed) {
                    break;
                }
            }
            Err(_) => {
                c.send_errors += 1;
                done += 1;
            }
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
    }
    let legs: Vec<UdpSocket> = args
        .listen
        .iter()
        .map(|&a| open_recv(a).map_err(|e| anyhow::anyhow!("bind {a}: {e}")))
        .collect::<anyhow::Result<_>>()?;
    let out = open_send(args.to)?;
    let dest = Dest::new(args.to);
    let deadline = args
        .duration
        .map(|s| Instant::now() + Duration::from_secs_f64(s));

    let mut pool = SlabPool::default();
    let mut batch: Vec<Datagram> = Vec::with_capacity(mmsg::BATCH);
    let mut fwd: Vec<Bytes> = Vec::with_capacity(mmsg::BATCH * READ_BUDGET);
    let mut filter = FirstCopy::new();
    let mut c = Counters {
        received: vec![0; legs.len()],
        ..Counters::default()
    };
    let mut fds: Vec<libc::pollfd> = legs
        .iter()
        .map(|s| libc::pollfd {
            fd: s.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    eprintln!("relay ready: {:?} -> {}", args.listen, args.to);

    while !STOP.load(Ordering::Relaxed) && deadline.is_none_or(|d| Instant::now() < d) {
        poll(&mut fds, 100)?;
        for (i, leg) in legs.iter().enumerate() {
            if fds[i].revents == 0 {
                continue;
            }
            for _ in 0..READ_BUDGET {
                batch.clear();
                let n = match mmsg::recv_batch(leg, &mut pool, &mut batch) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e.into()),
                };
                c.received[i] += n as u64;
                for d in batch.drain(..) {
                    if d.truncated || d.data.len() < 12 || d.data[0] >> 6 != 2 {
                        c.invalid += 1;
                        continue;
                    }
                    if filter.first(u16::from_be_bytes([d.data[2], d.data[3]])) {
                        fwd.push(d.data);
                    } else {
                        c.duplicates += 1;
                    }
                }
                if n < mmsg::BATCH {
                    break;
                }
            }
            // Forward after each leg's reads, as the gateway flushes after each wake-up.
            send_all(&out, &dest, &fwd, &mut c);
            fwd.clear();
        }
    }
    println!(
        "{{\"received\":{:?},\"invalid\":{},\"duplicates\":{},\"forwarded\":{},\"send_errors\":{}}}",
        c.received, c.invalid, c.duplicates, c.forwarded, c.send_errors
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::FirstCopy;

    #[test]
    fn keeps_first_copy_across_wrap() {
        let mut f = FirstCopy::new();
        assert!(f.first(65534));
        assert!(!f.first(65534));
        assert!(f.first(65535));
        assert!(f.first(0));
        assert!(!f.first(65535));
        assert!(f.first(1));
        assert!(!f.first(0));
        // A full cycle later the same numbers are new again.
        for s in 2..=u16::MAX {
            assert!(f.first(s));
        }
        assert!(f.first(0));
        assert!(!f.first(0));
    }
}
