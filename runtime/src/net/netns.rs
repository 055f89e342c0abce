//! Doing things inside another network namespace without moving the whole process.
//!
//! A socket belongs to the network namespace it was *created* in, whatever thread later uses
//! it. So the host-side code never has to live inside an environment: a helper thread enters
//! the namespace once (`setns(2)` affects only the calling thread) and creates sockets on
//! request; the caller then binds/connects them from anywhere.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use super::sys;

/// The namespaces of the environment being attached.
#[derive(Debug, Clone, Copy)]
pub struct EnvNamespaces<'a> {
    /// Its network namespace (`/proc/PID/ns/net`).
    pub net: &'a File,
    /// Its user namespace (`/proc/PID/ns/user`) when it has its own (rootless); pasta joins it.
    pub user: Option<&'a File>,
}

/// Runs `f` on a short-lived thread that first entered the network namespace `netns`, and
/// returns its result. The thread ends afterwards, so no other code ever runs in the wrong
/// namespace by accident.
pub fn run_in_netns<T, F>(netns: &File, f: F) -> io::Result<T>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    std::thread::scope(|s| {
        s.spawn(|| {
            sys::setns_net(netns.as_fd())?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|_| {
            Err(io::Error::other(
                "a thread inside the network namespace panicked",
            ))
        })
    })
}

/// Opens a network namespace file (`/proc/PID/ns/net`, `/run/netns/NAME`).
pub fn open_netns(path: &Path) -> io::Result<File> {
    File::open(path)
}

/// Which kind of socket to create inside the namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SocketKind {
    pub family: libc::c_int,
    pub ty: libc::c_int,
}

/// Sockets kept ready per kind, so a connection never waits for the helper thread.
pub const SPARE: usize = 8;

enum Request {
    /// Create one socket now and send it back.
    Make(SocketKind, mpsc::Sender<io::Result<OwnedFd>>),
    /// Top the spare pool of this kind up to [`SPARE`].
    Refill(SocketKind),
}

type Spares = Arc<Mutex<HashMap<SocketKind, Vec<OwnedFd>>>>;

/// A thread that lives in one network namespace and creates sockets there on request,
/// keeping a few of each kind asked for ready in advance. The thread ends when the factory
/// is dropped.
#[derive(Debug)]
pub struct NetnsSocketFactory {
    requests: Mutex<mpsc::Sender<Request>>,
    spares: Spares,
}

impl NetnsSocketFactory {
    /// Starts the helper thread and waits until it has entered `netns`; fails (with the
    /// `setns` error, e.g. EPERM when not privileged over that namespace) otherwise.
    pub fn start(netns: &File) -> io::Result<Self> {
        let netns = netns.try_clone()?;
        let (tx, rx) = mpsc::channel::<Request>();
        let (ready_tx, ready_rx) = mpsc::channel::<io::Result<()>>();
        let spares: Spares = Arc::default();
        let pool = spares.clone();
        std::thread::Builder::new()
            .name("berth-netns".into())
            .spawn(move || {
                let entered = sys::setns_net(netns.as_fd());
                drop(netns);
                let ok = entered.is_ok();
                let _ = ready_tx.send(entered);
                if !ok {
                    return;
                }
                for req in rx {
                    match req {
                        Request::Make(kind, reply) => {
                            let _ = reply.send(sys::socket(kind.family, kind.ty, 0));
                        }
                        Request::Refill(kind) => {
                            let have = pool
                                .lock()
                                .map(|p| p.get(&kind).map_or(0, Vec::len))
                                .unwrap_or(SPARE);
                            let fresh: Vec<OwnedFd> = (have..SPARE)
                                .filter_map(|_| sys::socket(kind.family, kind.ty, 0).ok())
                                .collect();
                            if let Ok(mut p) = pool.lock() {
                                p.entry(kind).or_default().extend(fresh);
                            }
                        }
                    }
                }
            })?;
        ready_rx
            .recv()
            .map_err(|_| io::Error::other("the network namespace helper thread died"))??;
        Ok(NetnsSocketFactory {
            requests: Mutex::new(tx),
            spares,
        })
    }

    fn send(&self, req: Request) -> io::Result<()> {
        self.requests
            .lock()
            .map_err(|_| io::Error::other("network namespace helper lock poisoned"))?
            .send(req)
            .map_err(|_| io::Error::other("the network namespace helper thread ended"))
    }

    /// A new, unbound socket that belongs to the factory's namespace.
    pub fn socket(&self, kind: SocketKind) -> io::Result<OwnedFd> {
        let (spare, left) = match self.spares.lock() {
            Ok(mut p) => {
                let v = p.entry(kind).or_default();
                (v.pop(), v.len())
            }
            Err(_) => (None, 0),
        };
        if left < SPARE / 2 {
            let _ = self.send(Request::Refill(kind));
        }
        if let Some(s) = spare {
            return Ok(s);
        }
        let (tx, rx) = mpsc::channel();
        self.send(Request::Make(kind, tx))?;
        rx.recv()
            .map_err(|_| io::Error::other("the network namespace helper thread ended"))?
    }
}
