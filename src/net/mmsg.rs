//! Batched UDP syscalls: `recvmmsg(2)` into pooled slabs and `sendmmsg(2)` from `Bytes`.
//!
//! This is the one place with `unsafe` code in the crate: the two syscalls take arrays of
//! raw `mmsghdr`/`iovec` that point into buffers we own. Every pointer is built on the
//! stack for the duration of one call and points into memory that outlives the call, so
//! nothing raw escapes this module.
//!
//! Receive path, zero-copy: a [`SlabPool`] owns a large zero-initialised `BytesMut`; each
//! call offers the kernel [`BATCH`] consecutive slots of [`SLOT`] bytes, and every datagram
//! received is split off its slot and frozen into a `Bytes` that shares the slab. The same
//! `Bytes` travels to the output socket. When a slab runs low it is replaced; if every
//! datagram cut from the old slab has been dropped, `BytesMut::reserve` reclaims the same
//! allocation, so steady state allocates nothing per packet.
//!
//! Receive timestamps: with [`enable_rx_timestamps`] (`SO_TIMESTAMPNS`, socket(7)) the kernel
//! attaches to every datagram the wall-clock time (`CLOCK_REALTIME`) at which it was
//! received, as an `SCM_TIMESTAMPNS` control message. Each header of a batch gets its own
//! control buffer (preallocated with the headers) and [`Datagram::rx`] carries the time, so
//! the datagrams of one batch keep their own arrival times however late the reading thread
//! runs.
#![allow(unsafe_code)]

use std::io;
use std::mem::{MaybeUninit, size_of};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};

/// Datagrams per syscall.
pub const BATCH: usize = 64;
/// Bytes per receive slot: the largest datagram we accept (MPEG-TS over RTP is 1328).
pub const SLOT: usize = 2048;
/// Slots per slab.
const SLAB_SLOTS: usize = 4 * BATCH;
/// Bytes of control buffer per received datagram: room for the `SCM_TIMESTAMPNS` message
/// (32 bytes on 64-bit Linux) and one more of the same size, should another option ever
/// be enabled on the socket (a message that does not fit sets `MSG_CTRUNC`).
const CTRL_LEN: usize = 64;
// SAFETY: CMSG_SPACE only computes a length (no pointer is involved).
const _: () = assert!(
    unsafe { libc::CMSG_SPACE(size_of::<libc::timespec>() as libc::c_uint) } as usize <= CTRL_LEN
);

/// One received datagram.
#[derive(Clone, Debug)]
pub struct Datagram {
    pub data: Bytes,
    pub from: SocketAddr,
    /// The datagram was larger than [`SLOT`] and has been cut: drop it.
    pub truncated: bool,
    /// When the kernel received it (wall clock, `SCM_TIMESTAMPNS`): `None` when the socket
    /// has no [`enable_rx_timestamps`], or the control message was cut (`MSG_CTRUNC`) or
    /// malformed.
    pub rx: Option<SystemTime>,
}

/// Receive buffers: slabs of [`SLOT`]-sized slots that received datagrams are cut from,
/// and the `recvmmsg(2)` header arrays, kept between calls so that a call does not zero
/// 13 KiB of headers (most calls at moderate rates return one or two datagrams).
pub struct SlabPool {
    slab: BytesMut,
    /// Start of the last slab allocation whose first `SLAB_SLOTS * SLOT` bytes were all
    /// initialised (zeroed once, then written by the kernel); null before the first.
    init_base: *const u8,
    scratch: Box<RecvScratch>,
}

/// `recvmmsg(2)` arguments. The pointers in them are rewritten before every call and only
/// used for the duration of that call.
struct RecvScratch {
    addrs: [libc::sockaddr_storage; BATCH],
    iovs: [libc::iovec; BATCH],
    hdrs: [libc::mmsghdr; BATCH],
    /// Control buffers, one per header; `u64` words so that they are aligned for
    /// `cmsghdr` (whose alignment is that of `size_t`), as CMSG_FIRSTHDR assumes.
    ctrl: [[u64; CTRL_LEN / 8]; BATCH],
}

// SAFETY: the raw pointers in `RecvScratch` (and `init_base`, only ever compared, never
// dereferenced) point into the pool's own buffers and are rewritten before each call that
// uses them; nothing is shared between threads through them.
unsafe impl Send for SlabPool {}

impl Default for SlabPool {
    fn default() -> Self {
        SlabPool {
            slab: BytesMut::new(),
            init_base: std::ptr::null(),
            // SAFETY: all-zero is a valid bit pattern for these plain C structs.
            scratch: unsafe { Box::new(MaybeUninit::<RecvScratch>::zeroed().assume_init()) },
        }
    }
}

impl SlabPool {
    /// Make sure at least [`BATCH`] initialised slots are available.
    fn ensure_batch(&mut self) {
        if self.slab.len() >= BATCH * SLOT {
            return;
        }
        // Drop the unused tail, then ask for a whole slab: `reserve` reuses the original
        // allocation when no datagram cut from it is still alive, else allocates a new one.
        self.slab.clear();
        self.slab.reserve(SLAB_SLOTS * SLOT);
        if std::ptr::eq(self.slab.as_ptr(), self.init_base)
            && self.slab.capacity() >= SLAB_SLOTS * SLOT
        {
            // The same allocation came back (every datagram cut from it was dropped; a
            // new one cannot have its address while the old one is alive, and `slab`
            // kept it alive until `reserve` decided). All of its first SLAB_SLOTS * SLOT
            // bytes were initialised when it was first zeroed and have only been written
            // since: no need to zero 512 KiB again (2 KiB per datagram).
            // SAFETY: capacity checked above; those bytes are initialised (see above).
            unsafe { self.slab.set_len(SLAB_SLOTS * SLOT) };
        } else {
            self.slab.resize(SLAB_SLOTS * SLOT, 0);
            self.init_base = self.slab.as_ptr();
        }
    }
}

fn to_socket_addr(storage: &libc::sockaddr_storage) -> SocketAddr {
    match i32::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: ss_family says the storage holds a sockaddr_in, and sockaddr_storage
            // is large enough and suitably aligned for it.
            let sin = unsafe { &*(storage as *const _ as *const libc::sockaddr_in) };
            SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            ))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &*(storage as *const _ as *const libc::sockaddr_in6) };
            SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            ))
        }
        _ => SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)),
    }
}

/// Ask the kernel to timestamp every datagram received on `sock` (`SO_TIMESTAMPNS`): then
/// [`recv_batch`] fills [`Datagram::rx`].
pub fn enable_rx_timestamps(sock: &impl AsRawFd) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: the option value is a live c_int and its exact size is passed; the kernel
    // only reads it during the call.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&on as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The `SCM_TIMESTAMPNS` time in the control messages the kernel wrote for `h`, if any.
///
/// # Safety
/// `h` is a header filled by a successful `recvmmsg(2)`: unless its `msg_controllen` is 0,
/// `msg_control` points to a live buffer, aligned for `cmsghdr`, whose first
/// `msg_controllen` bytes are initialised (the kernel sets `msg_controllen` to what it wrote,
/// at most the buffer size it was given).
unsafe fn rx_timestamp(h: &libc::msghdr) -> Option<SystemTime> {
    if h.msg_flags & libc::MSG_CTRUNC != 0 {
        // A message was cut (a buffer too small): do not trust a partial one.
        return None;
    }
    // SAFETY: CMSG_LEN only computes a length.
    let want = unsafe { libc::CMSG_LEN(size_of::<libc::timespec>() as libc::c_uint) } as usize;
    // SAFETY: see the function's contract. CMSG_FIRSTHDR and CMSG_NXTHDR return null or a
    // pointer to a cmsghdr that lies wholly within the first msg_controllen bytes.
    let mut c = unsafe { libc::CMSG_FIRSTHDR(h) };
    while !c.is_null() {
        // SAFETY: non-null from CMSG_FIRSTHDR/CMSG_NXTHDR: a whole, aligned, initialised
        // cmsghdr inside the buffer.
        let cm = unsafe { &*c };
        if cm.cmsg_level == libc::SOL_SOCKET
            && cm.cmsg_type == libc::SCM_TIMESTAMPNS
            && cm.cmsg_len as usize >= want
        {
            // SAFETY: the kernel wrote this message whole (no MSG_CTRUNC, checked above) and
            // its cmsg_len (checked above) covers a timespec after the header; read_unaligned
            // assumes nothing about the data's alignment.
            let ts = unsafe { libc::CMSG_DATA(c).cast::<libc::timespec>().read_unaligned() };
            let secs = u64::try_from(ts.tv_sec).ok()?;
            let nanos = u32::try_from(ts.tv_nsec)
                .ok()
                .filter(|n| *n < 1_000_000_000)?;
            return SystemTime::UNIX_EPOCH.checked_add(Duration::new(secs, nanos));
        }
        // SAFETY: as for CMSG_FIRSTHDR; `c` is a cmsghdr of `h`'s buffer.
        c = unsafe { libc::CMSG_NXTHDR(h, c) };
    }
    None
}

/// Receive up to [`BATCH`] datagrams with one `recvmmsg(2)` (non-blocking) and append them
/// to `out`. Returns how many were received; `WouldBlock` when none were waiting.
pub fn recv_batch(
    sock: &impl AsRawFd,
    pool: &mut SlabPool,
    out: &mut Vec<Datagram>,
) -> io::Result<usize> {
    pool.ensure_batch();
    let fd: RawFd = sock.as_raw_fd();
    let base = pool.slab.as_mut_ptr();
    let sc = &mut *pool.scratch;
    for i in 0..BATCH {
        // SAFETY: ensure_batch guarantees BATCH * SLOT initialised bytes from `base`.
        sc.iovs[i].iov_base = unsafe { base.add(i * SLOT) }.cast();
        sc.iovs[i].iov_len = SLOT;
        let h = &mut sc.hdrs[i].msg_hdr;
        h.msg_iov = &mut sc.iovs[i];
        h.msg_iovlen = 1;
        h.msg_name = (&mut sc.addrs[i] as *mut libc::sockaddr_storage).cast();
        h.msg_control = sc.ctrl[i].as_mut_ptr().cast();
        // The kernel overwrites these four: reset them for every call.
        h.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        h.msg_controllen = CTRL_LEN as _;
        h.msg_flags = 0;
        sc.hdrs[i].msg_len = 0;
    }
    // SAFETY: the scratch arrays live until the call returns; each iovec points at a
    // distinct SLOT-sized slice of the slab, which we hold mutably; each msg_control points
    // at its own CTRL_LEN-byte buffer in the scratch, and msg_controllen says so.
    let n = unsafe {
        libc::recvmmsg(
            fd,
            sc.hdrs.as_mut_ptr(),
            BATCH as libc::c_uint,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    out.reserve(n);
    for (h, a) in sc.hdrs.iter().zip(sc.addrs.iter()).take(n) {
        let mut d = pool.slab.split_to(SLOT);
        d.truncate((h.msg_len as usize).min(SLOT));
        out.push(Datagram {
            data: d.freeze(),
            from: to_socket_addr(a),
            truncated: h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
            // SAFETY: one of the first `n` headers, just filled by recvmmsg; its msg_control
            // is our CTRL_LEN-byte, u64-aligned buffer, zero-initialised with the scratch.
            rx: unsafe { rx_timestamp(&h.msg_hdr) },
        });
    }
    Ok(n)
}

/// A destination in the form the kernel wants it, built once per output.
pub struct Dest {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl Dest {
    pub fn new(addr: SocketAddr) -> Dest {
        let sa = socket2::SockAddr::from(addr);
        // SAFETY: all-zero is a valid sockaddr_storage; we copy at most its size.
        let mut storage: libc::sockaddr_storage = unsafe { MaybeUninit::zeroed().assume_init() };
        let len = (sa.len() as usize).min(size_of::<libc::sockaddr_storage>());
        // SAFETY: `sa.as_ptr()` points to `sa.len()` valid bytes; the regions do not overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(
                sa.as_ptr().cast::<u8>(),
                (&mut storage as *mut libc::sockaddr_storage).cast::<u8>(),
                len,
            );
        }
        Dest {
            storage,
            len: len as libc::socklen_t,
        }
    }
}

/// Send `bufs` to `dest` with as few `sendmmsg(2)` calls as possible (non-blocking).
/// Returns how many were sent: fewer than `bufs.len()` only when the socket buffer is full
/// (the caller waits for writability and continues from there). Errors other than
/// `WouldBlock` are returned only if nothing was sent.
pub fn send_batch<B: AsRef<[u8]>>(
    sock: &impl AsRawFd,
    dest: &Dest,
    bufs: &[B],
) -> io::Result<usize> {
    let fd = sock.as_raw_fd();
    let mut sent = 0;
    while sent < bufs.len() {
        let chunk = &bufs[sent..bufs.len().min(sent + BATCH)];
        // Only the entries used are written (no 5 KiB of zeroing per call).
        let mut iovs = [const { MaybeUninit::<libc::iovec>::uninit() }; BATCH];
        let mut hdrs = [const { MaybeUninit::<libc::mmsghdr>::uninit() }; BATCH];
        for (i, b) in chunk.iter().enumerate() {
            let b = b.as_ref();
            let iov = iovs[i].write(libc::iovec {
                iov_base: b.as_ptr() as *mut libc::c_void,
                iov_len: b.len(),
            });
            // SAFETY: all-zero is a valid bit pattern for this plain C struct.
            let mut h: libc::mmsghdr = unsafe { MaybeUninit::zeroed().assume_init() };
            h.msg_hdr.msg_iov = iov;
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_name =
                (&dest.storage as *const libc::sockaddr_storage) as *mut libc::c_void;
            h.msg_hdr.msg_namelen = dest.len;
            hdrs[i].write(h);
        }
        // SAFETY: the first chunk.len() headers and iovecs are initialised above; the kernel
        // only reads through these pointers (sendmmsg); every buffer, iovec and the
        // destination outlive the call.
        let n = unsafe {
            libc::sendmmsg(
                fd,
                hdrs.as_mut_ptr().cast::<libc::mmsghdr>(),
                chunk.len() as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if sent > 0 {
                return Ok(sent);
            }
            return Err(e);
        }
        sent += n as usize;
        if (n as usize) < chunk.len() {
            break;
        }
    }
    Ok(sent)
}

/// Most parts one gathered datagram may have: an RTP header and 7 TS packets.
pub const MAX_PARTS: usize = 8;

/// One datagram assembled from up to [`MAX_PARTS`] borrowed slices (scatter/gather): the
/// kernel joins them, so repacketising TS packets or prepending an RTP header copies nothing.
#[derive(Clone, Copy)]
pub struct Gather<'a> {
    parts: [&'a [u8]; MAX_PARTS],
    n: usize,
}

impl Default for Gather<'_> {
    fn default() -> Self {
        Gather {
            parts: [&[]; MAX_PARTS],
            n: 0,
        }
    }
}

impl<'a> Gather<'a> {
    /// Append a part; returns false (and appends nothing) when the datagram is full.
    pub fn push(&mut self, part: &'a [u8]) -> bool {
        if self.n == MAX_PARTS {
            return false;
        }
        self.parts[self.n] = part;
        self.n += 1;
        true
    }
    pub fn len(&self) -> usize {
        self.n
    }
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }
    /// Total bytes of the datagram.
    pub fn bytes(&self) -> usize {
        self.parts[..self.n].iter().map(|p| p.len()).sum()
    }
}

/// Send gathered datagrams to `dest` with as few `sendmmsg(2)` calls as possible
/// (non-blocking). Same return contract as [`send_batch`].
pub fn send_gather(sock: &impl AsRawFd, dest: &Dest, msgs: &[Gather<'_>]) -> io::Result<usize> {
    let fd = sock.as_raw_fd();
    let mut sent = 0;
    while sent < msgs.len() {
        let chunk = &msgs[sent..msgs.len().min(sent + BATCH)];
        // Only the entries and parts used are written (no 12 KiB of zeroing per call).
        let mut iovs = [const { [MaybeUninit::<libc::iovec>::uninit(); MAX_PARTS] }; BATCH];
        let mut hdrs = [const { MaybeUninit::<libc::mmsghdr>::uninit() }; BATCH];
        for (i, m) in chunk.iter().enumerate() {
            for (iov, part) in iovs[i].iter_mut().zip(&m.parts[..m.n]) {
                iov.write(libc::iovec {
                    iov_base: part.as_ptr() as *mut libc::c_void,
                    iov_len: part.len(),
                });
            }
            // SAFETY: all-zero is a valid bit pattern for this plain C struct.
            let mut h: libc::mmsghdr = unsafe { MaybeUninit::zeroed().assume_init() };
            h.msg_hdr.msg_iov = iovs[i].as_mut_ptr().cast::<libc::iovec>();
            h.msg_hdr.msg_iovlen = m.n;
            h.msg_hdr.msg_name =
                (&dest.storage as *const libc::sockaddr_storage) as *mut libc::c_void;
            h.msg_hdr.msg_namelen = dest.len;
            hdrs[i].write(h);
        }
        // SAFETY: the first chunk.len() headers and, for each, its first msg_iovlen iovecs
        // are initialised above; the kernel only reads through these pointers; every part,
        // iovec and the destination outlive the call.
        let n = unsafe {
            libc::sendmmsg(
                fd,
                hdrs.as_mut_ptr().cast::<libc::mmsghdr>(),
                chunk.len() as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if sent > 0 { Ok(sent) } else { Err(e) };
        }
        sent += n as usize;
        if (n as usize) < chunk.len() {
            break;
        }
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    #[test]
    fn batch_roundtrip_on_loopback_keeps_bytes_and_sender() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_nonblocking(true).unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let dest = Dest::new(rx.local_addr().unwrap());
        let bufs: Vec<Vec<u8>> = (0..100u8).map(|i| vec![i; 100 + i as usize]).collect();
        assert_eq!(send_batch(&tx, &dest, &bufs).unwrap(), 100);
        let mut pool = SlabPool::default();
        let mut out = Vec::new();
        // Loopback delivery is synchronous: everything is queued once sendmmsg returned.
        while out.len() < 100 {
            recv_batch(&rx, &mut pool, &mut out).unwrap();
        }
        for (i, d) in out.iter().enumerate() {
            assert_eq!(&d.data[..], &bufs[i][..]);
            assert_eq!(d.from, tx.local_addr().unwrap());
            assert!(!d.truncated);
            assert!(d.rx.is_none(), "no SO_TIMESTAMPNS on this socket");
        }
        assert_eq!(
            recv_batch(&rx, &mut pool, &mut out).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
    }

    #[test]
    fn gathered_parts_arrive_as_one_datagram_each() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_nonblocking(true).unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let dest = Dest::new(rx.local_addr().unwrap());
        let hdr = [0x80u8; 12];
        let ts: Vec<[u8; 188]> = (0..7u8).map(|i| [i; 188]).collect();
        let mut msgs = Vec::new();
        for k in 1..=7 {
            let mut g = Gather::default();
            assert!(g.push(&hdr));
            for p in &ts[..k] {
                assert!(g.push(p));
            }
            msgs.push(g);
        }
        let mut full = msgs[6];
        assert!(!full.push(&hdr), "a ninth part must be refused");
        assert_eq!(send_gather(&tx, &dest, &msgs).unwrap(), 7);
        let (mut pool, mut out) = (SlabPool::default(), Vec::new());
        while out.len() < 7 {
            recv_batch(&rx, &mut pool, &mut out).unwrap();
        }
        for (k, d) in out.iter().enumerate() {
            assert_eq!(d.data.len(), 12 + 188 * (k + 1));
            assert_eq!(&d.data[..12], &hdr);
            assert!(
                d.data[12..]
                    .chunks(188)
                    .enumerate()
                    .all(|(i, c)| c.iter().all(|&b| b == i as u8))
            );
        }
    }

    #[test]
    fn oversize_datagram_is_flagged() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_nonblocking(true).unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.send_to(&[7u8; SLOT + 10], rx.local_addr().unwrap())
            .unwrap();
        let (mut pool, mut out) = (SlabPool::default(), Vec::new());
        recv_batch(&rx, &mut pool, &mut out).unwrap();
        assert!(out[0].truncated);
    }

    #[test]
    fn slab_is_reclaimed_when_datagrams_are_dropped() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_nonblocking(true).unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let dest = Dest::new(rx.local_addr().unwrap());
        let (mut pool, mut out) = (SlabPool::default(), Vec::new());
        pool.ensure_batch();
        let first = pool.slab.as_ptr();
        for _ in 0..(SLAB_SLOTS / BATCH) * 3 {
            let bufs = vec![[0x47u8; 188]; BATCH];
            send_batch(&tx, &dest, &bufs).unwrap();
            while out.len() < BATCH {
                recv_batch(&rx, &mut pool, &mut out).unwrap();
            }
            out.clear();
        }
        pool.ensure_batch();
        assert_eq!(
            pool.slab.as_ptr(),
            first,
            "the slab allocation was not reused"
        );
    }

    #[test]
    #[allow(clippy::disallowed_methods)] // the test compares with the wall clock
    fn kernel_timestamps_every_datagram_of_a_batch_in_order() {
        let rx = UdpSocket::bind("127.0.8.1:0").unwrap();
        rx.set_nonblocking(true).unwrap();
        enable_rx_timestamps(&rx).unwrap();
        let tx = UdpSocket::bind("127.0.8.2:0").unwrap();
        let to = rx.local_addr().unwrap();
        let before = SystemTime::now();
        tx.send_to(&[1u8; 188], to).unwrap();
        tx.send_to(&[2u8; 188], to).unwrap();
        let (mut pool, mut out) = (SlabPool::default(), Vec::new());
        // Loopback delivery is synchronous: both are queued once send_to returned.
        assert_eq!(recv_batch(&rx, &mut pool, &mut out).unwrap(), 2);
        let after = SystemTime::now();
        let t: Vec<SystemTime> = out.iter().map(|d| d.rx.expect("a timestamp")).collect();
        assert!(t[0] <= t[1], "{t:?}");
        assert!(
            before <= t[0] && t[1] <= after,
            "{before:?} {t:?} {after:?}"
        );
    }

    /// A header with control bytes as the kernel writes them.
    fn header_with_timestamp(buf: &mut [u64; CTRL_LEN / 8], ts: libc::timespec) -> libc::msghdr {
        // SAFETY: all-zero is a valid msghdr; CMSG_* compute lengths and pointers inside
        // `buf`, which is u64-aligned and larger than CMSG_SPACE(timespec) (asserted at
        // compile time); the writes stay within it.
        unsafe {
            let mut h: libc::msghdr = MaybeUninit::zeroed().assume_init();
            h.msg_control = buf.as_mut_ptr().cast();
            h.msg_controllen = libc::CMSG_SPACE(size_of::<libc::timespec>() as libc::c_uint) as _;
            let c = libc::CMSG_FIRSTHDR(&h);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_TIMESTAMPNS;
            (*c).cmsg_len = libc::CMSG_LEN(size_of::<libc::timespec>() as libc::c_uint) as _;
            libc::CMSG_DATA(c)
                .cast::<libc::timespec>()
                .write_unaligned(ts);
            h
        }
    }

    #[test]
    fn timestamp_message_is_parsed_and_ignored_when_cut() {
        let mut buf = [0u64; CTRL_LEN / 8];
        let ts = libc::timespec {
            tv_sec: 1_700_000_000,
            tv_nsec: 123_456_789,
        };
        let mut h = header_with_timestamp(&mut buf, ts);
        let want = SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        // SAFETY: `h` points into `buf`, initialised, as the kernel would leave it.
        assert_eq!(unsafe { rx_timestamp(&h) }, Some(want));
        h.msg_flags = libc::MSG_CTRUNC;
        // SAFETY: as above.
        assert_eq!(unsafe { rx_timestamp(&h) }, None, "MSG_CTRUNC");
        h.msg_flags = 0;
        h.msg_controllen = 0;
        // SAFETY: as above (no control bytes).
        assert_eq!(unsafe { rx_timestamp(&h) }, None, "no control message");
        let bad = libc::timespec {
            tv_sec: 1,
            tv_nsec: 1_000_000_000,
        };
        let h = header_with_timestamp(&mut buf, bad);
        // SAFETY: as above.
        assert_eq!(
            unsafe { rx_timestamp(&h) },
            None,
            "nanoseconds out of range"
        );
    }
}
