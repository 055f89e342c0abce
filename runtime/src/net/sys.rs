//! Thin, safe wrappers around the few Linux syscalls the networking layer needs that `std`
//! does not offer: `splice(2)`, `pipe2(2)`, `poll(2)`, `setns(2)`, `eventfd(2)`, `shutdown(2)`
//! on raw descriptors, `SO_LINGER` and `SO_REUSEPORT`. Each wrapper retries on `EINTR` where
//! that is what every caller wants.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn cvt_size(rc: libc::ssize_t) -> io::Result<usize> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc as usize)
    }
}

/// A pipe pair, both ends close-on-exec and non-blocking.
pub fn pipe_nonblocking() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` is a valid two-element array the kernel fills in.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) })?;
    // SAFETY: pipe2 succeeded, so both descriptors are fresh and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Asks for a larger pipe buffer; failure (e.g. above `pipe-max-size`) is harmless.
pub fn grow_pipe(fd: BorrowedFd<'_>, bytes: usize) {
    // SAFETY: fcntl on a descriptor we borrow; F_SETPIPE_SZ takes an int argument.
    unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, bytes as libc::c_int) };
}

/// `splice(2)` without offsets, non-blocking on the pipe side. Returns the bytes moved
/// (0 means end of input).
pub fn splice(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
    loop {
        // SAFETY: both descriptors are borrowed and valid; null offsets mean "current position".
        let rc = unsafe {
            libc::splice(
                from.as_raw_fd(),
                std::ptr::null_mut(),
                to.as_raw_fd(),
                std::ptr::null_mut(),
                len,
                libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
            )
        };
        match cvt_size(rc) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// `read(2)` on a borrowed descriptor.
pub fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is valid for `buf.len()` writable bytes.
        let rc = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        match cvt_size(rc) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// `send(2)` with `MSG_NOSIGNAL`, so a peer that went away yields `EPIPE`, not `SIGPIPE`.
pub fn send(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is valid for `buf.len()` readable bytes.
        let rc = unsafe {
            libc::send(
                fd.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        match cvt_size(rc) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// Sets or clears `O_NONBLOCK`.
pub fn set_nonblocking(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    // SAFETY: fcntl F_GETFL/F_SETFL on a borrowed descriptor.
    let flags = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })?;
    let flags = if on {
        flags | libc::O_NONBLOCK
    } else {
        flags & !libc::O_NONBLOCK
    };
    // SAFETY: as above.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags) })?;
    Ok(())
}

/// `shutdown(2)` of the write side: the peer reads end-of-file.
pub fn shutdown_write(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: shutdown on a borrowed socket descriptor.
    cvt(unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_WR) }).map(drop)
}

/// Makes the next `close` of this socket send a TCP reset instead of a FIN, so a client sees
/// "connection reset" at once rather than an orderly (and misleading) end of stream.
pub fn set_linger_reset(fd: BorrowedFd<'_>) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt with a pointer to a properly sized `linger` value.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
}

/// Sets an integer socket option.
pub fn set_int_option(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: setsockopt with a pointer to a c_int and its size.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// A fresh socket of the given family and type, close-on-exec.
pub fn socket(family: libc::c_int, ty: libc::c_int, protocol: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call; on success the descriptor is new and ours.
    let fd = cvt(unsafe { libc::socket(family, ty | libc::SOCK_CLOEXEC, protocol) })?;
    // SAFETY: `fd` was just returned by the kernel and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Moves the calling thread into the network namespace `netns` refers to.
pub fn setns_net(netns: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: setns on a borrowed namespace descriptor; affects only the calling thread.
    cvt(unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) }).map(drop)
}

/// Readiness of one descriptor as reported by [`poll`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Ready {
    pub readable: bool,
    pub writable: bool,
    /// Hang-up or error: the next read/write will say which.
    pub closed: bool,
}

/// Interest in one descriptor for [`poll`].
#[derive(Debug, Clone, Copy)]
pub struct Interest {
    pub fd: RawFd,
    pub read: bool,
    pub write: bool,
}

/// `poll(2)` on a few descriptors; `timeout_ms < 0` waits forever. Returns one [`Ready`] per
/// interest, in order.
pub fn poll(interests: &[Interest], timeout_ms: i32) -> io::Result<Vec<Ready>> {
    let mut fds: Vec<libc::pollfd> = interests
        .iter()
        .map(|i| libc::pollfd {
            fd: i.fd,
            events: (if i.read { libc::POLLIN } else { 0 })
                | (if i.write { libc::POLLOUT } else { 0 }),
            revents: 0,
        })
        .collect();
    loop {
        // SAFETY: `fds` is a valid array of `fds.len()` pollfd structures.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        match cvt(rc) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
            Ok(_) => break,
        }
    }
    Ok(fds
        .iter()
        .map(|p| Ready {
            readable: p.revents & libc::POLLIN != 0,
            writable: p.revents & libc::POLLOUT != 0,
            closed: p.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0,
        })
        .collect())
}

/// A one-shot "stop" signal every worker thread can poll on: an eventfd that becomes (and
/// stays) readable once [`StopSignal::raise`] was called.
#[derive(Debug)]
pub struct StopSignal {
    fd: OwnedFd,
}

impl StopSignal {
    pub fn new() -> io::Result<Self> {
        // SAFETY: eventfd(2) with flags only; on success the descriptor is ours.
        let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
        Ok(StopSignal {
            // SAFETY: `fd` was just returned by the kernel.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    pub fn raise(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64 to our eventfd.
        unsafe { libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    pub fn is_raised(&self) -> bool {
        poll(&[self.interest()], 0)
            .map(|r| r[0].readable)
            .unwrap_or(true)
    }

    pub fn interest(&self) -> Interest {
        Interest {
            fd: self.fd.as_raw_fd(),
            read: true,
            write: false,
        }
    }
}

impl AsFd for StopSignal {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// A `sockaddr_in`/`sockaddr_in6` for `addr`, with its length.
fn sockaddr(addr: &std::net::SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        std::net::SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and suitably aligned for sockaddr_in.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        std::net::SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and suitably aligned for sockaddr_in6.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// `connect(2)` that gives up after `timeout_ms` (then `TimedOut`). Leaves the socket
/// non-blocking.
pub fn connect(fd: BorrowedFd<'_>, addr: &std::net::SocketAddr, timeout_ms: i32) -> io::Result<()> {
    set_nonblocking(fd, true)?;
    let (storage, len) = sockaddr(addr);
    // SAFETY: `storage` holds a valid socket address of `len` bytes.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&storage as *const libc::sockaddr_storage).cast(),
            len,
        )
    };
    match cvt(rc) {
        Ok(_) => Ok(()),
        Err(e)
            if e.raw_os_error() == Some(libc::EINTR)
                || e.raw_os_error() == Some(libc::EINPROGRESS) =>
        {
            let ready = poll(
                &[Interest {
                    fd: fd.as_raw_fd(),
                    read: false,
                    write: true,
                }],
                timeout_ms,
            )?;
            if !ready[0].writable && !ready[0].closed {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("connecting to {addr} timed out"),
                ));
            }
            socket_error(fd)
        }
        Err(e) => Err(e),
    }
}

/// `bind(2)`.
pub fn bind(fd: BorrowedFd<'_>, addr: &std::net::SocketAddr) -> io::Result<()> {
    let (storage, len) = sockaddr(addr);
    // SAFETY: `storage` holds a valid socket address of `len` bytes.
    cvt(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&storage as *const libc::sockaddr_storage).cast(),
            len,
        )
    })
    .map(drop)
}

/// `listen(2)`.
pub fn listen(fd: BorrowedFd<'_>, backlog: i32) -> io::Result<()> {
    // SAFETY: listen on a borrowed socket.
    cvt(unsafe { libc::listen(fd.as_raw_fd(), backlog) }).map(drop)
}

/// The pending error of a socket (`SO_ERROR`), as a result.
pub fn socket_error(fd: BorrowedFd<'_>) -> io::Result<()> {
    let mut err: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `err`.
    cvt(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut err as *mut libc::c_int).cast(),
            &mut len,
        )
    })?;
    if err == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(err))
    }
}

/// An epoll instance.
#[derive(Debug)]
pub struct Epoll {
    fd: OwnedFd,
}

/// Readiness reported by [`Epoll::wait`] for one registered token.
#[derive(Debug, Clone, Copy)]
pub struct EpollEvent {
    pub token: u64,
    /// Readable, or hung up / in error (a read will tell which).
    pub readable: bool,
    /// Writable, or in error (a write will tell).
    pub writable: bool,
}

impl Epoll {
    pub fn new() -> io::Result<Epoll> {
        // SAFETY: epoll_create1 with a flag only; on success the descriptor is ours.
        let fd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        Ok(Epoll {
            // SAFETY: `fd` was just returned by the kernel.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Registers `fd` under `token` for (level-triggered) readability and/or writability.
    pub fn add(&self, fd: RawFd, token: u64, read: bool, write: bool) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, token, read, write)
    }

    /// Changes what `fd` is watched for.
    pub fn modify(&self, fd: RawFd, token: u64, read: bool, write: bool) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, token, read, write)
    }

    fn ctl(
        &self,
        op: libc::c_int,
        fd: RawFd,
        token: u64,
        read: bool,
        write: bool,
    ) -> io::Result<()> {
        let events =
            (if read { libc::EPOLLIN } else { 0 }) | (if write { libc::EPOLLOUT } else { 0 });
        let mut ev = libc::epoll_event {
            events: events as u32,
            u64: token,
        };
        // SAFETY: `ev` is a valid epoll_event; both descriptors are valid.
        cvt(unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), op, fd, &mut ev) }).map(drop)
    }

    /// Unregisters `fd` (before it is closed).
    pub fn delete(&self, fd: RawFd) {
        // SAFETY: EPOLL_CTL_DEL ignores the event argument; a null pointer is allowed.
        unsafe {
            libc::epoll_ctl(
                self.fd.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                fd,
                std::ptr::null_mut(),
            )
        };
    }

    /// Waits for events (`timeout_ms < 0`: forever) and appends them to `out`.
    pub fn wait(&self, out: &mut Vec<EpollEvent>, timeout_ms: i32) -> io::Result<()> {
        // SAFETY: epoll_event is plain old data; all-zero is valid.
        let mut evs: [libc::epoll_event; 64] = unsafe { std::mem::zeroed() };
        // SAFETY: `evs` has room for 64 events.
        let n = unsafe { libc::epoll_wait(self.fd.as_raw_fd(), evs.as_mut_ptr(), 64, timeout_ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(())
            } else {
                Err(e)
            };
        }
        out.extend(evs[..n as usize].iter().map(|e| {
            let trouble = e.events & (libc::EPOLLERR | libc::EPOLLHUP) as u32 != 0;
            EpollEvent {
                token: e.u64,
                readable: trouble || e.events & libc::EPOLLIN as u32 != 0,
                writable: trouble || e.events & libc::EPOLLOUT as u32 != 0,
            }
        }));
        Ok(())
    }
}
