//! Copies a TCP conversation in both directions between two connected stream sockets.
//!
//! Each direction moves bytes with `splice(2)` through its own pipe, so the payload is never
//! copied into user space; a socket type that cannot splice (some vsock/agent streams) falls
//! back to `read`/`send` through a buffer. Half-close is preserved: when one side ends its
//! output, the other side's write half is shut down and the opposite direction keeps flowing.
//! An error on either side (reset, broken pipe) or the stop signal resets both connections.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use super::sys::{self, Interest, StopSignal};

/// Bytes requested per `splice` call; the kernel moves at most what the pipe holds.
const SPLICE_CHUNK: usize = 1 << 20;
/// Pipe capacity asked for (the default 64 KiB halves throughput on fast links).
const PIPE_SIZE: usize = 1 << 18;
/// Buffer size of the copy fallback.
const COPY_BUFFER: usize = 1 << 16;

/// How a relayed conversation ended.
#[derive(Debug, PartialEq, Eq)]
pub enum RelayEnd {
    /// Both sides finished their output; both sockets were closed in order.
    Finished,
    /// One side failed (reset, broken pipe); the other was reset.
    Failed(io::ErrorKind),
    /// The forwarder was stopped; both sides were reset.
    Stopped,
}

enum Mover {
    Splice { read: OwnedFd, write: OwnedFd },
    Copy { buf: Vec<u8>, start: usize },
}

/// One direction of the relay: from `src` to `dst`.
struct Direction {
    mover: Mover,
    /// Bytes read from `src` and not yet written to `dst`.
    pending: usize,
    eof: bool,
    done: bool,
    /// What the last step stopped on: `src` readable (`Some(true)`) or `dst` writable.
    waits_for_read: Option<bool>,
}

enum Step {
    /// Wait until `src` is readable (`true`) or `dst` is writable (`false`).
    WaitRead,
    WaitWrite,
    Done,
    Failed(io::Error),
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

impl Direction {
    fn new() -> Direction {
        let mover = match sys::pipe_nonblocking() {
            Ok((read, write)) => {
                sys::grow_pipe(write.as_fd(), PIPE_SIZE);
                Mover::Splice { read, write }
            }
            Err(_) => Mover::copy(),
        };
        Direction {
            mover,
            pending: 0,
            eof: false,
            done: false,
            waits_for_read: None,
        }
    }

    fn step(&mut self, src: BorrowedFd<'_>, dst: BorrowedFd<'_>) -> Step {
        loop {
            if self.pending > 0 {
                let written = match &mut self.mover {
                    Mover::Splice { read, .. } => sys::splice(read.as_fd(), dst, self.pending),
                    Mover::Copy { buf, start } => {
                        sys::send(dst, &buf[*start..*start + self.pending])
                            .inspect(|&n| *start += n)
                    }
                };
                match written {
                    Ok(n) => self.pending -= n,
                    Err(e) if would_block(&e) => return Step::WaitWrite,
                    Err(e) => return Step::Failed(e),
                }
                continue;
            }
            if self.eof {
                // The peer may already be gone entirely; its reset shows up on the other
                // direction, so a failed shutdown needs no handling here.
                let _ = sys::shutdown_write(dst);
                self.done = true;
                return Step::Done;
            }
            let read = match &mut self.mover {
                Mover::Splice { write, .. } => sys::splice(src, write.as_fd(), SPLICE_CHUNK),
                Mover::Copy { buf, start } => {
                    *start = 0;
                    sys::read(src, buf)
                }
            };
            match read {
                Ok(0) => self.eof = true,
                Ok(n) => self.pending = n,
                Err(e) if would_block(&e) => return Step::WaitRead,
                Err(e)
                    if e.raw_os_error() == Some(libc::EINVAL)
                        && matches!(self.mover, Mover::Splice { .. }) =>
                {
                    // This socket type cannot splice; nothing was moved yet, so switch.
                    self.mover = Mover::copy();
                }
                Err(e) => return Step::Failed(e),
            }
        }
    }
}

impl Mover {
    fn copy() -> Mover {
        Mover::Copy {
            buf: vec![0; COPY_BUFFER],
            start: 0,
        }
    }
}

/// Where a [`Conversation`] stands after [`Conversation::advance`].
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// Still flowing: wait for the sockets to become ready as `want` says.
    Open { want: [Want; 2] },
    /// Both directions ended in order.
    Finished,
    /// One side failed; call [`Conversation::reset`].
    Failed(io::ErrorKind),
}

/// What one socket of a conversation waits for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Want {
    pub read: bool,
    pub write: bool,
}

/// A conversation between two connected, non-blocking stream sockets: both directions
/// advance as far as the sockets allow on each call, so it can be driven by poll, epoll
/// (edge-triggered included) or a plain loop.
pub struct Conversation {
    a: OwnedFd,
    b: OwnedFd,
    /// [0]: a → b, [1]: b → a.
    dirs: [Direction; 2],
}

impl Conversation {
    /// Makes both sockets non-blocking and prepares the two directions.
    pub fn new(a: OwnedFd, b: OwnedFd) -> io::Result<Conversation> {
        sys::set_nonblocking(a.as_fd(), true)?;
        sys::set_nonblocking(b.as_fd(), true)?;
        Ok(Conversation {
            a,
            b,
            dirs: [Direction::new(), Direction::new()],
        })
    }

    pub fn fds(&self) -> [RawFd; 2] {
        [self.a.as_raw_fd(), self.b.as_raw_fd()]
    }

    /// Moves whatever can be moved now, in both directions.
    pub fn advance(&mut self) -> Progress {
        self.advance_ready([true; 2], [true; 2])
    }

    /// Moves what can be moved after a readiness report: `readable[s]`/`writable[s]` for
    /// socket `s` (0: `a`, 1: `b`). Only the directions that can make progress are tried, so
    /// a one-way bulk transfer costs no system calls on the idle direction.
    pub fn advance_ready(&mut self, readable: [bool; 2], writable: [bool; 2]) -> Progress {
        for i in 0..2 {
            let dir = &mut self.dirs[i];
            let (src, dst) = if i == 0 {
                (&self.a, &self.b)
            } else {
                (&self.b, &self.a)
            };
            let ready = match dir.waits_for_read {
                None => true,
                Some(true) => readable[i],
                Some(false) => writable[1 - i],
            };
            if dir.done || !ready {
                continue;
            }
            dir.waits_for_read = match dir.step(src.as_fd(), dst.as_fd()) {
                Step::WaitRead => Some(true),
                Step::WaitWrite => Some(false),
                Step::Done => None,
                Step::Failed(e) => return Progress::Failed(e.kind()),
            };
        }
        if self.dirs.iter().all(|d| d.done) {
            return Progress::Finished;
        }
        let mut want = [Want::default(); 2];
        for (i, dir) in self.dirs.iter().enumerate() {
            match dir.waits_for_read {
                _ if dir.done => {}
                Some(true) => want[i].read = true,
                Some(false) => want[1 - i].write = true,
                None => {}
            }
        }
        Progress::Open { want }
    }

    /// Closes both sockets with a reset.
    pub fn reset(self) {
        sys::set_linger_reset(self.a.as_fd());
        sys::set_linger_reset(self.b.as_fd());
    }
}

/// Relays between `a` and `b` on the calling thread until both directions ended, one side
/// failed, or `stop` was raised. Both sockets are closed on return.
pub fn relay(a: OwnedFd, b: OwnedFd, stop: &StopSignal) -> RelayEnd {
    let (ra, rb) = (a.as_raw_fd(), b.as_raw_fd());
    let mut conv = match Conversation::new(a, b) {
        Ok(c) => c,
        Err(e) => return RelayEnd::Failed(e.kind()),
    };
    loop {
        let want = match conv.advance() {
            Progress::Finished => return RelayEnd::Finished,
            Progress::Failed(kind) => {
                conv.reset();
                return RelayEnd::Failed(kind);
            }
            Progress::Open { want } => want,
        };
        let interests = [
            Interest {
                fd: ra,
                read: want[0].read,
                write: want[0].write,
            },
            Interest {
                fd: rb,
                read: want[1].read,
                write: want[1].write,
            },
            stop.interest(),
        ];
        match sys::poll(&interests, -1) {
            Ok(ready) if ready[2].readable => {
                conv.reset();
                return RelayEnd::Stopped;
            }
            Ok(_) => {}
            Err(e) => {
                conv.reset();
                return RelayEnd::Failed(e.kind());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::sync::Arc;

    /// Two connected TCP pairs: (client, relay end A) and (relay end B, server).
    fn pairs() -> (TcpStream, TcpStream, TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (a, _) = l.accept().unwrap();
        let b = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (server, _) = l.accept().unwrap();
        (client, a, b, server)
    }

    #[test]
    fn relays_both_ways_and_preserves_half_close() {
        let (mut client, a, b, mut server) = pairs();
        let stop = Arc::new(StopSignal::new().unwrap());
        let s2 = stop.clone();
        let t = std::thread::spawn(move || relay(a.into(), b.into(), &s2));
        client.write_all(b"ping").unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"ping");
        // The server can still answer after the client's half-close.
        server.write_all(b"pong").unwrap();
        drop(server);
        let mut back = Vec::new();
        client.read_to_end(&mut back).unwrap();
        assert_eq!(back, b"pong");
        assert_eq!(t.join().unwrap(), RelayEnd::Finished);
    }

    #[test]
    fn stop_resets_both_sides() {
        let (mut client, a, b, _server) = pairs();
        let stop = Arc::new(StopSignal::new().unwrap());
        let s2 = stop.clone();
        let t = std::thread::spawn(move || relay(a.into(), b.into(), &s2));
        stop.raise();
        assert_eq!(t.join().unwrap(), RelayEnd::Stopped);
        let mut buf = [0u8; 1];
        client
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let r = client.read(&mut buf);
        assert!(
            matches!(&r, Err(e) if e.kind() == io::ErrorKind::ConnectionReset),
            "{r:?}"
        );
    }
}
