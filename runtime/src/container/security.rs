//! What a process in the environment may do: capabilities cut to the OCI default set,
//! `no_new_privs`, the seccomp allowlist ([`seccomp`]), and no inherited file descriptors.
//! The supervisor (PID 1 inside) puts itself under the allowlist once the environment is set
//! up ([`ProcessSecurity::confine_supervisor`]), so every process it forks inherits it; the
//! rest is applied in the forked child right before `execve`
//! ([`ProcessSecurity::apply_before_exec`]).

use caps::{CapSet, Capability, CapsHashSet};
use seccompiler::BpfProgram;

use super::error::{ContainerError, Result};
use super::seccomp;

/// The OCI runtime-spec default capability set (what `docker run` grants).
pub const DEFAULT_CAPABILITIES: [Capability; 14] = [
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_FSETID,
    Capability::CAP_FOWNER,
    Capability::CAP_MKNOD,
    Capability::CAP_NET_RAW,
    Capability::CAP_SETGID,
    Capability::CAP_SETUID,
    Capability::CAP_SETFCAP,
    Capability::CAP_SETPCAP,
    Capability::CAP_NET_BIND_SERVICE,
    Capability::CAP_SYS_CHROOT,
    Capability::CAP_KILL,
    Capability::CAP_AUDIT_WRITE,
];

/// The security profile of processes started in one environment, built before `fork` so the
/// child only makes system calls.
pub struct ProcessSecurity {
    /// Capabilities kept; `None` keeps everything (privileged).
    pub keep: Option<CapsHashSet>,
    /// The seccomp allowlist; `None` when privileged.
    pub seccomp: Option<BpfProgram>,
}

impl ProcessSecurity {
    /// `rootless`: berth runs without host root, so nested user namespaces stay allowed
    /// (the environment's user namespace is the invoking user's own).
    pub fn new(privileged: bool, rootless: bool) -> Result<ProcessSecurity> {
        if privileged {
            return Ok(ProcessSecurity {
                keep: None,
                seccomp: None,
            });
        }
        Ok(ProcessSecurity {
            keep: Some(DEFAULT_CAPABILITIES.iter().copied().collect()),
            seccomp: Some(seccomp::compile(rootless)?),
        })
    }

    /// Puts the calling supervisor under the allowlist, before it starts any thread or
    /// process: from here on nothing inside the environment, PID 1 included, can make a
    /// refused call. A no-op when privileged.
    pub fn confine_supervisor(&self) -> Result<()> {
        let Some(p) = &self.seccomp else {
            return Ok(());
        };
        seccomp::install(p).map_err(|e| {
            ContainerError::Setup(format!(
                "cannot install the seccomp filter on the supervisor: {e}; berth needs a kernel built with CONFIG_SECCOMP_FILTER (see `grep Seccomp /proc/self/status`), or start trusted images with `berth up --privileged`"
            ))
        })
    }

    /// Step 1, still with full capabilities: shrink the bounding set (needs CAP_SETPCAP).
    pub fn drop_bounding(&self) -> std::result::Result<(), caps::errors::CapsError> {
        let Some(keep) = &self.keep else {
            return Ok(());
        };
        for cap in caps::all() {
            if !keep.contains(&cap) {
                // Capabilities newer than the running kernel do not exist to drop.
                if caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) {
                    caps::drop(None, CapSet::Bounding, cap)?;
                }
            }
        }
        Ok(())
    }

    /// Step 2, after setuid/setgid: effective/permitted cut to the kept set (for uid 0; other
    /// users lost them with setuid), inheritable and ambient empty, `no_new_privs`, every fd
    /// from 3 up closed. The seccomp filter is inherited from the supervisor
    /// ([`confine_supervisor`](Self::confine_supervisor)). Returns the failing step's name.
    pub fn apply_before_exec(&self) -> std::result::Result<(), &'static str> {
        if let Some(keep) = &self.keep {
            let permitted = caps::read(None, CapSet::Permitted).map_err(|_| "read capabilities")?;
            let set: CapsHashSet = permitted.intersection(keep).copied().collect();
            caps::clear(None, CapSet::Ambient).map_err(|_| "clear ambient capabilities")?;
            caps::clear(None, CapSet::Inheritable).map_err(|_| "clear inheritable capabilities")?;
            caps::set(None, CapSet::Effective, &set).map_err(|_| "set effective capabilities")?;
            caps::set(None, CapSet::Permitted, &set).map_err(|_| "set permitted capabilities")?;
            // SAFETY: prctl with constant arguments.
            if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
                return Err("set no_new_privs");
            }
        }
        close_fds_from(3);
        Ok(())
    }
}

/// Closes every fd ≥ `first`: the one implementation the VM agent shares.
pub use berth_inside_files::descriptors::close_from as close_fds_from;

/// Closes every fd except 0-2 and `keep` (the supervisor drops what the launcher chain left
/// open: sync pipes, duplicate report fds).
pub fn close_fds_except(keep: &[i32]) {
    let mut keep: Vec<u32> = keep.iter().filter(|&&f| f > 2).map(|&f| f as u32).collect();
    keep.sort_unstable();
    keep.dedup();
    let mut from = 3u32;
    for k in keep {
        if k > from {
            // SAFETY: closes only descriptors between the kept ones.
            unsafe { libc::syscall(libc::SYS_close_range, from, k - 1, 0) };
        }
        from = k + 1;
    }
    close_fds_from(from);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_caps_exclude_sys_admin_and_module_loading() {
        let s = ProcessSecurity::new(false, false).unwrap();
        assert!(s.seccomp.is_some());
        let keep = s.keep.unwrap();
        assert_eq!(keep.len(), 14);
        assert!(!keep.contains(&Capability::CAP_SYS_ADMIN));
        assert!(!keep.contains(&Capability::CAP_SYS_MODULE));
        assert!(!keep.contains(&Capability::CAP_SYS_PTRACE));
        let p = ProcessSecurity::new(true, false).unwrap();
        assert!(p.keep.is_none() && p.seccomp.is_none());
        assert!(
            p.confine_supervisor().is_ok(),
            "privileged installs nothing"
        );
    }
}
