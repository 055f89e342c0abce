//! A sidecar container (runtime/README.md, "Sidecars"): a container of its own (root
//! filesystem, mount, pid, uts, ipc and cgroup namespaces, supervisor, state dir) that joins
//! a running environment's user namespace (the same id mapping) and network namespace (the
//! environment reaches it on `localhost`). [`JoinSpec`] in its `ContainerSpec` names the
//! environment; the starter takes the environment's id mapping ([`Joined::open`]) instead
//! of choosing one, and the launcher's namespace child enters both namespaces at once through
//! a pidfd of the environment's supervisor ([`Joined::enter`]) where a fresh container
//! unshares them. Nothing of the environment's network (veth, pasta, ports) is touched: its
//! record stays the environment's. (`JoinSpec` and what a sidecar's spec may not ask for
//! are with the rest of the spec, in `spec.rs`.)

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use super::error::{ContainerError, Context, Result};
use super::idmap::IdMapping;
use super::run_state::{ContainerState, Phase};
use super::spec::{ContainerSpec, JoinSpec};

/// The running environment a sidecar joins: a pidfd of its supervisor (so a reused pid is
/// never entered) and its id mapping (`None`: a privileged environment, no user namespace).
pub struct Joined {
    pidfd: OwnedFd,
    pub mapping: Option<IdMapping>,
}

impl Joined {
    /// Opens the environment of `spec.join`, which must be running, and checks that the
    /// sidecar's spec fits it.
    pub fn open(spec: &ContainerSpec, join: &JoinSpec) -> Result<Joined> {
        let env_dir = &join.env_dir;
        let not_running = || {
            ContainerError::Invalid(format!(
                "the environment in {} is not running; a sidecar joins a running environment, so start the environment first",
                env_dir.display()
            ))
        };
        let state = ContainerState::load(env_dir)?;
        if state.phase != Phase::Running {
            return Err(not_running());
        }
        let pidfd = state
            .supervisor
            .and_then(|s| s.pidfd())
            .ok_or_else(not_running)?;
        if state.mapping.is_none() != spec.privileged {
            return Err(ContainerError::Invalid(format!(
                "sidecar {} and the environment in {} differ in --privileged; a sidecar runs with the environment's user namespace, so both must be privileged or neither",
                spec.env_id,
                env_dir.display()
            )));
        }
        Ok(Joined {
            pidfd,
            mapping: state.mapping,
        })
    }

    /// Enters the environment's user namespace (when it has one) and its network namespace,
    /// in one `setns` (the network namespace is then entered with the rights the joined user
    /// namespace gives). The calling process must be single-threaded.
    pub fn enter(&self) -> Result<()> {
        let mut flags = libc::CLONE_NEWNET;
        if self.mapping.is_some() {
            flags |= libc::CLONE_NEWUSER;
        }
        // SAFETY: setns with a pidfd this struct owns and namespace flags; no memory passed.
        if unsafe { libc::setns(self.pidfd.as_raw_fd(), flags) } != 0 {
            return Err(io::Error::last_os_error())
                .context(|| "cannot enter the environment's namespaces".to_string());
        }
        Ok(())
    }
}
