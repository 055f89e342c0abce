//! The machine the probes look at: the real host (`/` and the caller's `PATH`), or a fake
//! tree for tests. Probes through it only read; whether they may also act on the host (fork
//! a namespace probe, create a tap) is [`HostRoot::acts_on_host`].

use std::path::{Path, PathBuf};

/// Where to look for things; the real host uses `/`, tests use a fake tree.
#[derive(Debug, Clone)]
pub struct HostRoot {
    root: PathBuf,
    path_dirs: Vec<PathBuf>,
    /// Whether to run the probes that act on the host (the namespace fork, the tap
    /// creation); only against the real host.
    acts_on_host: bool,
}

impl HostRoot {
    /// The machine berth runs on.
    pub fn real() -> Self {
        let path_dirs = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect())
            .unwrap_or_default();
        HostRoot {
            root: PathBuf::from("/"),
            path_dirs,
            acts_on_host: true,
        }
    }

    /// A fake host rooted at `root` with `PATH` = `root/bin` (tests).
    pub fn fake(root: &Path) -> Self {
        HostRoot {
            root: root.to_path_buf(),
            path_dirs: vec![root.join("bin")],
            acts_on_host: false,
        }
    }

    /// Whether this is the real host, where probes may act (fork, create a tap) and not only
    /// read files.
    pub fn acts_on_host(&self) -> bool {
        self.acts_on_host
    }

    /// The host's absolute path `p` below this root.
    pub fn path(&self, p: impl AsRef<Path>) -> PathBuf {
        let p = p.as_ref();
        self.root.join(p.strip_prefix("/").unwrap_or(p))
    }

    /// The content of the host's file `p`, `None` when it cannot be read.
    pub fn read(&self, p: impl AsRef<Path>) -> Option<String> {
        std::fs::read_to_string(self.path(p)).ok()
    }

    pub fn exists(&self, p: impl AsRef<Path>) -> bool {
        self.path(p).exists()
    }

    /// The first executable named `name` on PATH.
    pub fn which(&self, name: &str) -> Option<PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        self.path_dirs.iter().map(|d| d.join(name)).find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    }

    /// Kernel release as (major, minor), from /proc/sys/kernel/osrelease.
    pub fn kernel_version(&self) -> Option<(u32, u32)> {
        let rel = self.read("/proc/sys/kernel/osrelease")?;
        let mut it = rel.trim().split(['.', '-']);
        Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
    }
}

/// Forks a child that creates every namespace kind berth uses (user, mount, pid, net, uts,
/// ipc), and reports whether it could; the error names why not. Acts on the real host only.
pub fn unshare_namespaces() -> Result<(), String> {
    use nix::sched::CloneFlags;
    use nix::sys::wait::{waitpid, WaitStatus};
    use nix::unistd::{fork, ForkResult};
    let flags = CloneFlags::CLONE_NEWUSER
        | CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWNET
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC;
    // SAFETY: the child only calls async-signal-safe unshare(2) and _exit(2).
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            let code = match nix::sched::unshare(flags) {
                Ok(()) => 0,
                Err(e) => e as i32,
            };
            // SAFETY: _exit never returns and skips atexit handlers inherited from the parent.
            unsafe { libc::_exit(code) }
        }
        Ok(ForkResult::Parent { child }) => match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, 0)) => Ok(()),
            Ok(WaitStatus::Exited(_, errno)) => {
                Err(nix::errno::Errno::from_raw(errno).desc().to_string())
            }
            Ok(other) => Err(format!("probe ended with {other:?}")),
            Err(e) => Err(e.to_string()),
        },
        Err(e) => Err(format!("fork: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn a_fake_host_is_read_below_its_root() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("proc/sys/kernel")).unwrap();
        fs::write(d.path().join("proc/sys/kernel/osrelease"), "6.18.44-fc\n").unwrap();
        let h = HostRoot::fake(d.path());
        assert!(!h.acts_on_host() && HostRoot::real().acts_on_host());
        assert_eq!(h.path("/proc/x"), d.path().join("proc/x"));
        assert!(h.exists("/proc/sys/kernel/osrelease") && !h.exists("/dev/kvm"));
        assert_eq!(h.kernel_version(), Some((6, 18)));
        assert_eq!(h.which("sh"), None, "PATH is the fake root's bin/");
    }

    #[test]
    fn root_can_create_every_namespace_kind() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: an unprivileged user's namespaces depend on the host's policy; CI runs as root");
            return;
        }
        assert_eq!(unshare_namespaces(), Ok(()));
    }
}
