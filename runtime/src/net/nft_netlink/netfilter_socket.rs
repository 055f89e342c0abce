//! The `NETLINK_NETFILTER` socket berth's nftables messages go through, and the parsing of
//! the kernel's replies (messages, error codes, attributes).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

pub(in crate::net) const NETLINK_NETFILTER: i32 = 12;
pub(in crate::net) const NLMSG_ERROR: u16 = 2;
pub(in crate::net) const NLMSG_DONE: u16 = 3;
pub(in crate::net) const HEADER_LEN: usize = 16;

pub(in crate::net) fn malformed() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        "malformed nftables netlink reply",
    )
}

/// One netlink message of a reply: type, flags, sequence number, payload.
pub(in crate::net) type Reply<'a> = (u16, u16, u32, &'a [u8]);

/// The messages in one datagram.
pub(in crate::net) fn messages(buf: &[u8]) -> io::Result<Vec<Reply<'_>>> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + HEADER_LEN <= buf.len() {
        let len =
            u32::from_ne_bytes(buf[off..off + 4].try_into().map_err(|_| malformed())?) as usize;
        if len < HEADER_LEN || off + len > buf.len() {
            return Err(malformed());
        }
        let ty = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
        let flags = u16::from_ne_bytes([buf[off + 6], buf[off + 7]]);
        let seq = u32::from_ne_bytes(buf[off + 8..off + 12].try_into().map_err(|_| malformed())?);
        out.push((ty, flags, seq, &buf[off + HEADER_LEN..off + len]));
        off += (len + 3) & !3;
    }
    Ok(out)
}

/// The (negative) errno of an `NLMSG_ERROR` payload; 0 is an acknowledgement.
pub(in crate::net) fn error_code(body: &[u8]) -> io::Result<i32> {
    body.get(..4)
        .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(malformed)
}

/// The payload of the first attribute of type `ty` in `attrs`.
pub(in crate::net) fn find_attr(attrs: &[u8], ty: u16) -> Option<&[u8]> {
    let mut off = 0;
    while off + 4 <= attrs.len() {
        let len = usize::from(u16::from_ne_bytes([attrs[off], attrs[off + 1]]));
        let aty = u16::from_ne_bytes([attrs[off + 2], attrs[off + 3]]) & 0x3fff;
        if len < 4 || off + len > attrs.len() {
            return None;
        }
        if aty == ty {
            return Some(&attrs[off + 4..off + len]);
        }
        off += (len + 3) & !3;
    }
    None
}

/// A `NETLINK_NETFILTER` socket.
pub(in crate::net) struct Socket(OwnedFd);

impl Socket {
    pub(in crate::net) fn open() -> io::Result<Socket> {
        // SAFETY: plain socket(2) call; the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_NETFILTER,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor owned by nobody else.
        Ok(Socket(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    pub(in crate::net) fn send(&self, bytes: &[u8]) -> io::Result<()> {
        // SAFETY: `bytes` is a valid buffer of the given length; the kernel is the
        // destination of an unconnected netlink socket's send.
        let rc = unsafe { libc::send(self.0.as_raw_fd(), bytes.as_ptr().cast(), bytes.len(), 0) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    pub(in crate::net) fn recv(&self, buf: &mut [u8], flags: i32) -> io::Result<usize> {
        loop {
            // SAFETY: `buf` is valid for `buf.len()` writable bytes.
            let n = unsafe {
                libc::recv(
                    self.0.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    flags,
                )
            };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Sends a batch and collects the kernel's verdicts on its `acked` commands. The kernel
    /// processes a batch within the `send` (it loads missing modules and replays it itself),
    /// so every answer is queued when `send` returns; the first error is the batch's.
    pub(in crate::net) fn transact(&self, batch: &[u8], acked: u32) -> io::Result<()> {
        self.send(batch)?;
        let mut buf = vec![0u8; 32 * 1024];
        let mut answers = 0;
        let mut first_error = None;
        while answers < acked {
            let n = match self.recv(&mut buf, libc::MSG_DONTWAIT) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            };
            for (ty, _flags, _seq, body) in messages(&buf[..n])? {
                if ty == NLMSG_ERROR {
                    answers += 1;
                    let code = error_code(body)?;
                    if code != 0 && first_error.is_none() {
                        first_error = Some(io::Error::from_raw_os_error(-code));
                    }
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None if answers < acked => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the kernel answered {answers} of {acked} nftables commands"),
            )),
            None => Ok(()),
        }
    }
}
