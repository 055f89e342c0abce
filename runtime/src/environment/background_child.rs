//! Work a command leaves to a child process that outlives it: the rest of a `berth run`'s
//! removal after its exit code ([`Environments::remove_run`](super::Environments::remove_run))
//! and the rest of a `berth down` after the environment's processes are gone
//! ([`Environments::down`](super::Environments::down)). The child takes over the
//! environment's lock (the same open file, inherited), so a command that needs the
//! environment waits for it; one killed on the way leaves what garbage collection finishes.

use std::fs;

use super::error::EnvError;
use crate::host::fault_injection::checkpoint;
use crate::net::bridge::IDLE_BRIDGE_GRACE;
use crate::net::bridge_idle::IdleBridge;
use crate::net::{Network, NetworkOptions};
use crate::state::BerthHome;

/// Runs `work(true)` in a forked child detached from the caller ([`detach_from_caller`]),
/// after the fault point `fault_point`, and returns at once; or runs `work(false)` here and
/// returns its result when no process can be forked. The child ends with `_exit`, its
/// status whether `work` succeeded.
pub(super) fn in_background_child(
    fault_point: &str,
    work: impl FnOnce(bool) -> Result<(), EnvError>,
) -> Result<(), EnvError> {
    use nix::unistd::{fork, ForkResult};
    // SAFETY: berth's commands are single-threaded when they stop or tear down an environment
    // (as in `remove_tree_as_mapped_root`); glibc's fork handlers keep malloc usable in the
    // child, which ends with `_exit`.
    match unsafe { fork() } {
        // The child's copies of the caller's descriptors (the environment's lock among them)
        // keep what they hold once the caller closes its own.
        Ok(ForkResult::Parent { .. }) => Ok(()),
        Ok(ForkResult::Child) => {
            detach_from_caller();
            checkpoint(fault_point);
            let ok = work(true).is_ok();
            // SAFETY: leave the forked child without running the caller's destructors.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) }
        }
        Err(_) => work(false),
    }
}

/// Makes a forked child independent of the command that returns meanwhile: out of the
/// caller's session (a Ctrl-C or hangup after the command returned does not cut the work
/// short), and holding none of the caller's pipes (`$(berth run …)` ends with berth).
///
/// One fork, not the classic two: the command returns right after it, and its child is
/// then reparented to (and reaped by) init or the nearest subreaper; until then a finished
/// child is a zombie of this short-lived process, which costs nothing. A second fork would
/// copy the address space once more for every run.
fn detach_from_caller() {
    let _ = nix::unistd::setsid();
    if let Ok(null) = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        for fd in 0..3 {
            let _ = nix::unistd::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), fd);
        }
    }
}

/// Marks `env_id`'s network to leave berth's bridge idle when it releases the bridge's last
/// lease (see [`Network::leave_bridge_idle`]), for [`remove_idle_bridge`] after the detach.
/// Best effort: unmarked, the detach removes the bridge itself, as `destroy` does.
pub(super) fn leave_bridge_idle(home: &BerthHome, env_id: &str) -> Option<IdleBridge> {
    Network::new(home, NetworkOptions::default())
        .leave_bridge_idle(env_id)
        .ok()
        .flatten()
}

/// Removes the bridge a run or a `down` left idle once it has been idle for
/// [`IDLE_BRIDGE_GRACE`], unless an environment uses it again (see
/// [`IdleBridge::remove_if_idle_for`]); best effort: garbage collection removes what this
/// leaves. Waits for the grace first when the bridge is idle now (`detached`: in a child
/// that outlives the command).
pub(super) fn remove_idle_bridge(idle: Option<&IdleBridge>, detached: bool) {
    if let Some(idle) = idle {
        let min_idle = match detached && idle.is_idle() {
            true => {
                std::thread::sleep(IDLE_BRIDGE_GRACE);
                IDLE_BRIDGE_GRACE
            }
            false => std::time::Duration::ZERO,
        };
        let _ = idle.remove_if_idle_for(min_idle);
    }
}
