//! `sendmmsg(2)` of header + payload pairs for `hitless send`.
//!
//! The sender keeps the file's bytes in one buffer and builds each datagram's 12-byte RTP
//! header on the stack; a two-entry `iovec` joins them in the kernel, so nothing is copied or
//! allocated per datagram. `crate::net::mmsg::send_batch` takes whole buffers, which would
//! need a per-datagram copy of the payload behind its header, hence this small variant.
#![allow(unsafe_code)]

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::AsRawFd;

use socket2::SockAddr;

/// Most datagrams per syscall.
pub const BATCH: usize = 64;

/// One datagram to send: an optional header (empty for plain UDP) and the payload.
#[derive(Clone, Copy)]
pub struct Msg<'a> {
    pub header: &'a [u8],
    pub payload: &'a [u8],
}

/// Send `msgs` (at most [`BATCH`]) to `dest` on a blocking socket. Returns how many the
/// kernel accepted (all of them unless it failed part-way; on error with nothing sent, the
/// error).
pub fn send(sock: &impl AsRawFd, dest: &SockAddr, msgs: &[Msg<'_>]) -> io::Result<usize> {
    assert!(msgs.len() <= BATCH, "at most BATCH datagrams per call");
    if msgs.is_empty() {
        return Ok(0);
    }
    // SAFETY: all-zero is a valid bit pattern for these plain C structs.
    let mut iovs: [[libc::iovec; 2]; BATCH] = unsafe { MaybeUninit::zeroed().assume_init() };
    let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { MaybeUninit::zeroed().assume_init() };
    for (i, m) in msgs.iter().enumerate() {
        let mut n = 0;
        for part in [m.header, m.payload] {
            if !part.is_empty() {
                iovs[i][n].iov_base = part.as_ptr() as *mut libc::c_void;
                iovs[i][n].iov_len = part.len();
                n += 1;
            }
        }
        hdrs[i].msg_hdr.msg_iov = iovs[i].as_mut_ptr();
        hdrs[i].msg_hdr.msg_iovlen = n as _;
        hdrs[i].msg_hdr.msg_name = dest.as_ptr() as *mut libc::c_void;
        hdrs[i].msg_hdr.msg_namelen = dest.len();
    }
    // SAFETY: the kernel only reads through these pointers; `msgs`' slices, `iovs`, `hdrs`
    // and `dest` all outlive the call, and every iovec points at an initialised slice.
    let n = unsafe {
        libc::sendmmsg(
            sock.as_raw_fd(),
            hdrs.as_mut_ptr(),
            msgs.len() as libc::c_uint,
            0,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    #[test]
    fn header_and_payload_arrive_joined() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let dest = SockAddr::from(rx.local_addr().unwrap());
        let payload = [0x47u8; 188];
        let msgs = [
            Msg {
                header: &[1, 2, 3],
                payload: &payload,
            },
            Msg {
                header: &[],
                payload: &payload[..10],
            },
        ];
        assert_eq!(send(&tx, &dest, &msgs).unwrap(), 2);
        let mut buf = [0u8; 512];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(n, 191);
        assert_eq!(&buf[..3], &[1, 2, 3]);
        assert_eq!(&buf[3..n], &payload[..]);
        assert_eq!(rx.recv(&mut buf).unwrap(), 10);
    }
}
