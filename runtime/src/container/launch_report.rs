//! The launch report: how the launcher chain (launcher, then the supervisor) tells the
//! starter in `berth up` how the start goes, one JSON [`LaunchEvent`] per line on the report
//! pipe. Shared by `launch.rs`, `supervisor.rs` (which sends `Ready`) and the starter in
//! `container_backend.rs`.

use std::fs;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use serde::{Deserialize, Serialize};

use crate::net::forward::ForwardedPort;

/// Messages from the launcher chain to the starter, one JSON object per line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum LaunchEvent {
    /// The supervisor's pid in the host's pid namespace.
    Pid {
        pid: i32,
    },
    /// The namespace setup process (the launcher's child), in the environment's new network
    /// namespace already while the launcher maps its ids and mounts its root (sent before
    /// [`LaunchEvent::Pid`]): the starter may plumb that namespace meanwhile.
    Netns {
        pid: i32,
    },
    /// The host ports the launcher bound for `[[ports]]` (sent before [`LaunchEvent::Pid`]).
    Ports {
        ports: Vec<ForwardedPort>,
    },
    /// The gitconfig of the spec (`ContainerSpec::gitconfig`) could not be written inside
    /// (sent before [`LaunchEvent::Ready`]): the start goes on, sessions carry the identity.
    GitconfigFailed {
        message: String,
    },
    Ready,
    Error {
        message: String,
    },
}

/// Writes one event to the report pipe (errors are ignored: the starter sees the pipe close).
pub fn report(fd: &OwnedFd, ev: &LaunchEvent) {
    let mut line = serde_json::to_vec(ev).unwrap_or_default();
    line.push(b'\n');
    // SAFETY: we borrow the fd for one write; the File is forgotten, not closed.
    let mut f = unsafe { fs::File::from_raw_fd(fd.as_raw_fd()) };
    let _ = f.write_all(&line);
    std::mem::forget(f);
}
