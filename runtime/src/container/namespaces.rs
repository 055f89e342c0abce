//! Linux namespaces of an environment: which ones, entering them, and the one-byte sync pipes
//! the launcher and its child use to take turns.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use envfile_spec::plan::NetworkMode;
use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};

use super::error::{Context, Result};

/// Namespaces unshared after the user namespace: mount, uts, ipc, pid, cgroup, and net unless
/// the environment shares the host's network.
///
/// The new network namespace starts with only a loopback device; the starter's network step
/// ([`network_attach::attach`](super::network_attach::attach)) and then the caller's hook of
/// `ContainerBackend::start_with_hook` receive the supervisor's host pid (its namespaces are
/// `/proc/<pid>/ns/*`) before the environment is set up further.
pub fn environment_flags(network: NetworkMode) -> CloneFlags {
    let mut f = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWCGROUP;
    if network != NetworkMode::Host {
        f |= CloneFlags::CLONE_NEWNET;
    }
    f
}

/// Enters new namespaces of the given kinds.
pub fn enter(flags: CloneFlags) -> Result<()> {
    unshare(flags).context(|| {
        format!("cannot create namespaces {flags:?}; the kernel may restrict them (check sysctl user.max_user_namespaces and kernel.unprivileged_userns_clone)")
    })
}

/// A private mount namespace: nothing mounted from here on propagates to the host.
pub fn private_mount_namespace() -> Result<()> {
    enter(CloneFlags::CLONE_NEWNS)?;
    make_mounts_private()
}

pub fn make_mounts_private() -> Result<()> {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .context(|| "cannot make the mount namespace private".to_string())
}

/// A pipe whose ends are close-on-exec.
pub fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context(|| "cannot create a pipe".to_string())
}

/// Writes one byte (a turn-taking token).
pub fn send_byte(fd: &OwnedFd, b: u8) -> bool {
    loop {
        match nix::unistd::write(fd.as_fd(), &[b]) {
            Ok(1) => return true,
            Err(nix::errno::Errno::EINTR) => continue,
            _ => return false,
        }
    }
}

/// Reads one byte; `None` on end of file (the other side died or gave up).
pub fn recv_byte(fd: &OwnedFd) -> Option<u8> {
    let mut b = [0u8; 1];
    loop {
        match nix::unistd::read(fd.as_raw_fd(), &mut b) {
            Ok(1) => return Some(b[0]),
            Err(nix::errno::Errno::EINTR) => continue,
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_network_keeps_the_host_netns() {
        assert!(environment_flags(NetworkMode::Isolated).contains(CloneFlags::CLONE_NEWNET));
        assert!(environment_flags(NetworkMode::None).contains(CloneFlags::CLONE_NEWNET));
        let h = environment_flags(NetworkMode::Host);
        assert!(!h.contains(CloneFlags::CLONE_NEWNET));
        assert!(h.contains(CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWNS));
        assert!(
            !h.contains(CloneFlags::CLONE_NEWUSER),
            "the user namespace is entered first, separately"
        );
    }

    #[test]
    fn bytes_pass_and_eof_is_none() {
        let (r, w) = pipe().unwrap();
        assert!(send_byte(&w, 7));
        assert_eq!(recv_byte(&r), Some(7));
        drop(w);
        assert_eq!(recv_byte(&r), None);
    }
}
