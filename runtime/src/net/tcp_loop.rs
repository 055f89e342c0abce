//! The event loop of one forwarded TCP port: accepts clients, dials the guest port for each
//! and relays every conversation, all on one thread with epoll. Each socket is watched for
//! exactly what its conversation waits for (like poll), so bulk transfers cause no wake-ups
//! for readiness nobody needs. No thread is
//! started per connection and no thread hand-off sits on a connection's path, which keeps
//! the per-connection cost to a few system calls.

use std::collections::HashMap;
use std::io;
use std::net::TcpListener;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use super::dialer::Dialer;
use super::relay::{Conversation, Progress, Want};
use super::sys::{self, Epoll};

const LISTENER: u64 = 0;
const STOP: u64 = 1;

/// Serves `listener` until `stop` becomes readable. `listener` must be non-blocking.
pub fn serve_tcp(
    listener: TcpListener,
    guest_port: u16,
    dialer: Arc<dyn Dialer>,
    stop: Arc<sys::StopSignal>,
) {
    let Ok(epoll) = Epoll::new() else { return };
    if epoll
        .add(listener.as_raw_fd(), LISTENER, true, false)
        .is_err()
        || epoll
            .add(stop.as_fd().as_raw_fd(), STOP, true, false)
            .is_err()
    {
        return;
    }
    let mut conns: HashMap<u64, Conn> = HashMap::new();
    let mut next_id: u64 = 1;
    let mut events = Vec::with_capacity(64);
    loop {
        events.clear();
        if epoll.wait(&mut events, -1).is_err() {
            break;
        }
        for ev in &events {
            match ev.token {
                STOP => {
                    for (_, c) in conns.drain() {
                        c.conv.reset();
                    }
                    return;
                }
                LISTENER => accept_all(
                    &listener,
                    guest_port,
                    &*dialer,
                    &epoll,
                    &mut conns,
                    &mut next_id,
                ),
                token => {
                    let id = token >> 1;
                    let Some(conn) = conns.get_mut(&id) else {
                        continue;
                    };
                    let side = (token & 1) as usize;
                    let (mut readable, mut writable) = ([false; 2], [false; 2]);
                    readable[side] = ev.readable;
                    writable[side] = ev.writable;
                    match conn.conv.advance_ready(readable, writable) {
                        Progress::Open { want } => {
                            if conn.watch(&epoll, id, want).is_err() {
                                if let Some(c) = conns.remove(&id) {
                                    unregister(&epoll, &c.conv);
                                    c.conv.reset();
                                }
                            }
                        }
                        Progress::Finished => {
                            if let Some(c) = conns.remove(&id) {
                                unregister(&epoll, &c.conv);
                            }
                        }
                        Progress::Failed(_) => {
                            if let Some(c) = conns.remove(&id) {
                                unregister(&epoll, &c.conv);
                                c.conv.reset();
                            }
                        }
                    }
                }
            }
        }
    }
    for (_, c) in conns.drain() {
        c.conv.reset();
    }
}

/// A conversation and what its two sockets are currently watched for.
struct Conn {
    conv: Conversation,
    watching: [Want; 2],
}

impl Conn {
    /// Watches each socket for what the conversation waits for, changing only what differs.
    fn watch(&mut self, epoll: &Epoll, id: u64, want: [Want; 2]) -> io::Result<()> {
        let fds = self.conv.fds();
        for side in 0..2 {
            if want[side] != self.watching[side] {
                epoll.modify(
                    fds[side],
                    (id << 1) | side as u64,
                    want[side].read,
                    want[side].write,
                )?;
                self.watching[side] = want[side];
            }
        }
        Ok(())
    }
}

fn unregister(epoll: &Epoll, c: &Conversation) {
    for fd in c.fds() {
        epoll.delete(fd);
    }
}

fn accept_all(
    listener: &TcpListener,
    guest_port: u16,
    dialer: &dyn Dialer,
    epoll: &Epoll,
    conns: &mut HashMap<u64, Conn>,
    next_id: &mut u64,
) {
    loop {
        let client = match listener.accept() {
            Ok((c, _)) => c,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE)) => {
                // Out of descriptors: back off instead of spinning on the ready listener.
                std::thread::sleep(Duration::from_millis(50));
                return;
            }
            Err(_) => continue,
        };
        let _ = client.set_nodelay(true);
        let client = OwnedFd::from(client);
        let guest = match dialer.dial_tcp(guest_port) {
            Ok(g) => g,
            Err(_) => {
                // Nobody listens inside (or the environment is gone): the client sees a
                // reset at once, the closest thing to the refusal it would get directly.
                sys::set_linger_reset(client.as_fd());
                continue;
            }
        };
        let _ = sys::set_int_option(guest.as_fd(), libc::IPPROTO_TCP, libc::TCP_NODELAY, 1);
        let Ok(mut conv) = Conversation::new(client, guest) else {
            continue;
        };
        let id = *next_id;
        *next_id += 1;
        let want = match conv.advance() {
            Progress::Open { want } => want,
            Progress::Finished => continue,
            Progress::Failed(_) => {
                conv.reset();
                continue;
            }
        };
        let [a, b] = conv.fds();
        if epoll.add(a, id << 1, want[0].read, want[0].write).is_err()
            || epoll
                .add(b, (id << 1) | 1, want[1].read, want[1].write)
                .is_err()
        {
            unregister(epoll, &conv);
            conv.reset();
            continue;
        }
        conns.insert(
            id,
            Conn {
                conv,
                watching: want,
            },
        );
    }
}
