//! What a process started in the environment may do: capabilities cut to the OCI default set,
//! `no_new_privs`, a default seccomp filter, and no inherited file descriptors. These are
//! applied in the forked child right before `execve` ([`ProcessSecurity::apply_before_exec`]).

use std::collections::BTreeMap;

use caps::{CapSet, Capability, CapsHashSet};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};

use super::error::{ContainerError, Result};

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

/// Which optional denials the seccomp filter carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeccompOptions {
    /// Deny mount(2) and the new mount API, umount2, pivot_root (not privileged).
    pub deny_mount: bool,
    /// Deny creating user namespaces from inside (berth itself was not rootless).
    pub deny_new_userns: bool,
}

/// Syscalls always refused with EPERM: kernel modules, kexec, keyrings, BPF, perf, handles
/// to host files, clock and swap changes, reboot, raw I/O ports, and friends.
pub const ALWAYS_DENIED: &[&str] = &[
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "bpf",
    "keyctl",
    "add_key",
    "request_key",
    "open_by_handle_at",
    "name_to_handle_at",
    "perf_event_open",
    "reboot",
    "swapon",
    "swapoff",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "acct",
    "iopl",
    "ioperm",
    "quotactl",
    "lookup_dcookie",
    "uselib",
    "userfaultfd",
    "syslog",
    "vhangup",
    "kcmp",
    "process_vm_writev",
];

/// Denied unless privileged.
pub const MOUNT_SYSCALLS: &[&str] = &[
    "mount",
    "umount2",
    "pivot_root",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "mount_setattr",
];

/// x86_64 and aarch64 syscall numbers of the names above (seccomp filters need numbers).
fn syscall_number(name: &str) -> Option<i64> {
    Some(match name {
        "kexec_load" => libc::SYS_kexec_load,
        "kexec_file_load" => libc::SYS_kexec_file_load,
        "init_module" => libc::SYS_init_module,
        "finit_module" => libc::SYS_finit_module,
        "delete_module" => libc::SYS_delete_module,
        "bpf" => libc::SYS_bpf,
        "keyctl" => libc::SYS_keyctl,
        "add_key" => libc::SYS_add_key,
        "request_key" => libc::SYS_request_key,
        "open_by_handle_at" => libc::SYS_open_by_handle_at,
        "name_to_handle_at" => libc::SYS_name_to_handle_at,
        "perf_event_open" => libc::SYS_perf_event_open,
        "reboot" => libc::SYS_reboot,
        "swapon" => libc::SYS_swapon,
        "swapoff" => libc::SYS_swapoff,
        "settimeofday" => libc::SYS_settimeofday,
        "clock_settime" => libc::SYS_clock_settime,
        "clock_adjtime" => libc::SYS_clock_adjtime,
        "adjtimex" => libc::SYS_adjtimex,
        "acct" => libc::SYS_acct,
        #[cfg(target_arch = "x86_64")]
        "iopl" => libc::SYS_iopl,
        #[cfg(target_arch = "x86_64")]
        "ioperm" => libc::SYS_ioperm,
        "quotactl" => libc::SYS_quotactl,
        "lookup_dcookie" => libc::SYS_lookup_dcookie,
        #[cfg(target_arch = "x86_64")]
        "uselib" => libc::SYS_uselib,
        "userfaultfd" => libc::SYS_userfaultfd,
        "syslog" => libc::SYS_syslog,
        "vhangup" => libc::SYS_vhangup,
        "kcmp" => libc::SYS_kcmp,
        "process_vm_writev" => libc::SYS_process_vm_writev,
        "mount" => libc::SYS_mount,
        "umount2" => libc::SYS_umount2,
        "pivot_root" => libc::SYS_pivot_root,
        "move_mount" => libc::SYS_move_mount,
        "open_tree" => libc::SYS_open_tree,
        "fsopen" => libc::SYS_fsopen,
        "fsconfig" => libc::SYS_fsconfig,
        "fsmount" => libc::SYS_fsmount,
        "fspick" => libc::SYS_fspick,
        "mount_setattr" => libc::SYS_mount_setattr,
        "unshare" => libc::SYS_unshare,
        "clone" => libc::SYS_clone,
        "clone3" => libc::SYS_clone3,
        _ => return None,
    })
}

/// Builds the default filter, as programs to stack in order: allow everything except the denials above (EPERM). `clone3`
/// answers ENOSYS when user namespaces are denied (its flags live in memory a filter cannot
/// read), so libc falls back to `clone`, whose flags are checked.
pub fn build_filters(opts: SeccompOptions) -> Result<Vec<BpfProgram>> {
    let eperm = SeccompAction::Errno(libc::EPERM as u32);
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    let mut names: Vec<&str> = ALWAYS_DENIED.to_vec();
    if opts.deny_mount {
        names.extend_from_slice(MOUNT_SYSCALLS);
    }
    for n in names {
        if let Some(nr) = syscall_number(n) {
            rules.insert(nr, vec![]);
        }
    }
    let mut filters =
        vec![SeccompFilter::new(rules, SeccompAction::Allow, eperm.clone(), arch()?).map_err(sc)?];
    if opts.deny_new_userns {
        let newuser = libc::CLONE_NEWUSER as u64;
        let cond = |arg| {
            SeccompRule::new(vec![SeccompCondition::new(
                arg,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::MaskedEq(newuser),
                newuser,
            )
            .map_err(sc)?])
            .map_err(sc)
        };
        let mut r = BTreeMap::new();
        r.insert(libc::SYS_unshare, vec![cond(0)?]);
        r.insert(libc::SYS_clone, vec![cond(0)?]);
        filters.push(SeccompFilter::new(r, SeccompAction::Allow, eperm, arch()?).map_err(sc)?);
        let mut r = BTreeMap::new();
        r.insert(libc::SYS_clone3, vec![]);
        filters.push(
            SeccompFilter::new(
                r,
                SeccompAction::Allow,
                SeccompAction::Errno(libc::ENOSYS as u32),
                arch()?,
            )
            .map_err(sc)?,
        );
    }
    filters
        .into_iter()
        .map(|f| f.try_into().map_err(sc))
        .collect()
}

fn arch() -> Result<seccompiler::TargetArch> {
    std::env::consts::ARCH.try_into().map_err(|_| {
        ContainerError::Setup(format!(
            "seccomp filters are not supported on {}",
            std::env::consts::ARCH
        ))
    })
}

fn sc(e: impl std::fmt::Display) -> ContainerError {
    ContainerError::Setup(format!("cannot build the seccomp filter: {e}"))
}

/// The security profile of processes started in one environment, built before `fork` so the
/// child only makes system calls.
pub struct ProcessSecurity {
    /// Capabilities kept; `None` keeps everything (privileged).
    pub keep: Option<CapsHashSet>,
    /// Stacked seccomp programs; empty when privileged.
    pub seccomp: Vec<BpfProgram>,
}

impl ProcessSecurity {
    pub fn new(privileged: bool, rootless: bool) -> Result<ProcessSecurity> {
        if privileged {
            return Ok(ProcessSecurity {
                keep: None,
                seccomp: Vec::new(),
            });
        }
        let seccomp = build_filters(SeccompOptions {
            deny_mount: true,
            deny_new_userns: !rootless,
        })?;
        Ok(ProcessSecurity {
            keep: Some(DEFAULT_CAPABILITIES.iter().copied().collect()),
            seccomp,
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
    /// from 3 up closed, the seccomp filter installed. Returns the failing step's name.
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
        for p in &self.seccomp {
            seccompiler::apply_filter(p).map_err(|_| "install the seccomp filter")?;
        }
        Ok(())
    }
}

/// Closes every fd ≥ `first` (close_range(2), with a /proc fallback for old kernels).
pub fn close_fds_from(first: u32) {
    // SAFETY: close_range only closes descriptors; the caller owns none above `first` it needs.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, 0) };
    if rc != 0 {
        for fd in first..4096 {
            // SAFETY: closing possibly-unused descriptor numbers is harmless.
            unsafe { libc::close(fd as i32) };
        }
    }
}

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
    fn filter_builds_and_stacks() {
        let all = build_filters(SeccompOptions {
            deny_mount: true,
            deny_new_userns: true,
        })
        .unwrap();
        assert_eq!(all.len(), 3);
        let p = build_filters(SeccompOptions {
            deny_mount: false,
            deny_new_userns: false,
        })
        .unwrap();
        assert_eq!(p.len(), 1);
        assert!(p[0].len() < all[0].len(), "mount denials add instructions");
    }

    #[test]
    fn every_denied_name_has_a_number_on_x86_64() {
        if cfg!(target_arch = "x86_64") {
            for n in ALWAYS_DENIED.iter().chain(MOUNT_SYSCALLS) {
                assert!(syscall_number(n).is_some(), "{n}");
            }
        }
    }

    #[test]
    fn default_caps_exclude_sys_admin_and_module_loading() {
        let s = ProcessSecurity::new(false, false).unwrap();
        let keep = s.keep.unwrap();
        assert_eq!(keep.len(), 14);
        assert!(!keep.contains(&Capability::CAP_SYS_ADMIN));
        assert!(!keep.contains(&Capability::CAP_SYS_MODULE));
        assert!(!keep.contains(&Capability::CAP_SYS_PTRACE));
        let p = ProcessSecurity::new(true, false).unwrap();
        assert!(p.keep.is_none() && p.seccomp.is_empty());
    }

    #[test]
    fn filter_denies_in_a_child_process() {
        // Install the filter in a forked child and observe EPERM from a denied call.
        let progs = build_filters(SeccompOptions {
            deny_mount: true,
            deny_new_userns: true,
        })
        .unwrap();
        // SAFETY: the child only makes raw system calls and exits with _exit.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let mut code = 0;
                for p in &progs {
                    if seccompiler::apply_filter(p).is_err() {
                        code = 10;
                    }
                }
                // SAFETY: raw syscalls with harmless arguments.
                unsafe {
                    if libc::syscall(libc::SYS_keyctl, 0, 0, 0, 0, 0) != -1
                        || *libc::__errno_location() != libc::EPERM
                    {
                        code |= 1;
                    }
                    if libc::unshare(libc::CLONE_NEWUSER) != -1
                        || *libc::__errno_location() != libc::EPERM
                    {
                        code |= 2;
                    }
                    if libc::syscall(libc::SYS_clone3, 0, 0) != -1
                        || *libc::__errno_location() != libc::ENOSYS
                    {
                        code |= 4;
                    }
                    if libc::getpid() <= 0 {
                        code |= 8;
                    }
                    libc::_exit(code);
                }
            }
            nix::unistd::ForkResult::Parent { child } => {
                let st = nix::sys::wait::waitpid(child, None).unwrap();
                assert_eq!(st, nix::sys::wait::WaitStatus::Exited(child, 0));
            }
        }
    }
}
