//! Stage 2 of [`OverlayRootfs`]: inside the environment's namespaces, as its root, the kernel
//! filesystems (`/proc`, `/sys` read-only), `/dev` (a tmpfs with the standard nodes, its own
//! devpts, shm, mqueue, the allowed devices), the tmpfs `[[mounts]]`, `pivot_root`, and the OCI
//! default masked and read-only paths.

use std::fs;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::Mode;

use super::error::{ContainerError, Context, Result};
use super::in_root::ensure_in_root;
use super::rootfs::{bind, mkdir_p, open_dir, OverlayRootfs};
use super::spec::MountSpec;
use crate::state::fd_path;

/// OCI runtime-spec default masked paths.
pub const MASKED_PATHS: [&str; 10] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
];

/// OCI runtime-spec default read-only paths.
pub const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Device nodes every environment gets: (name, major, minor).
pub const DEVICES: [(&str, u64, u64); 6] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

impl OverlayRootfs<'_> {
    /// Stage 2, inside the environment's namespaces (as its root): kernel filesystems,
    /// /dev, tmpfs mounts, `pivot_root`, masked and read-only paths.
    pub fn enter(&self, new_netns: bool) -> Result<()> {
        let rootfs = self.mount_point();
        // Mounts made outside this user namespace are locked here, and pivot_root refuses a
        // locked new root: a recursive bind of the rootfs onto itself is a new, unlocked mount.
        mount(
            Some(&rootfs),
            &rootfs,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .context(|| format!("cannot bind {} onto itself", rootfs.display()))?;
        let root = open_dir(&rootfs)?;
        let nosuid_nodev_noexec = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;

        let proc_t = ensure_in_root(root.as_fd(), "/proc", true, None)?;
        mount(
            Some("proc"),
            &fd_path(&proc_t),
            Some("proc"),
            nosuid_nodev_noexec,
            None::<&str>,
        )
        .context(|| "cannot mount /proc in the environment".to_string())?;

        let sys_t = ensure_in_root(root.as_fd(), "/sys", true, None)?;
        let sysfs = if new_netns {
            mount(
                Some("sysfs"),
                &fd_path(&sys_t),
                Some("sysfs"),
                nosuid_nodev_noexec | MsFlags::MS_RDONLY,
                None::<&str>,
            )
        } else {
            Err(nix::errno::Errno::EPERM)
        };
        if sysfs.is_err() {
            // Sharing the host's network namespace: sysfs may only be bind-mounted.
            bind(Path::new("/sys"), &fd_path(&sys_t), true, true)?;
        }

        self.mount_dev(root.as_fd())?;

        for m in &self.spec.mounts {
            if let MountSpec::Tmpfs { target, size } = m {
                let t = ensure_in_root(root.as_fd(), target, true, None)?;
                let mut opts = "mode=755".to_string();
                if let Some(s) = size {
                    opts.push_str(&format!(",size={s}"));
                }
                mount(
                    Some("tmpfs"),
                    &fd_path(&t),
                    Some("tmpfs"),
                    MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                    Some(opts.as_str()),
                )
                .context(|| format!("cannot mount a tmpfs at {target}"))?;
            }
        }
        drop((proc_t, sys_t, root));

        nix::unistd::chdir(&rootfs).context(|| format!("cannot enter {}", rootfs.display()))?;
        nix::unistd::pivot_root(".", ".")
            .context(|| "pivot_root into the environment failed".to_string())?;
        umount2(".", MntFlags::MNT_DETACH)
            .context(|| "cannot detach the host's root filesystem".to_string())?;
        nix::unistd::chdir("/").context(|| "cannot chdir to / after pivot_root".to_string())?;

        for p in MASKED_PATHS {
            mask_path(p)?;
        }
        for p in READONLY_PATHS {
            readonly_path(p)?;
        }
        Ok(())
    }

    fn mount_dev(&self, root: BorrowedFd<'_>) -> Result<()> {
        let dev_t = ensure_in_root(root, "/dev", true, None)?;
        let dev = fd_path(&dev_t);
        mount(
            Some("tmpfs"),
            &dev,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
            Some("mode=755,size=65536k"),
        )
        .context(|| "cannot mount a tmpfs on /dev".to_string())?;
        // Re-open: the fd above points below the new tmpfs.
        drop(dev_t);
        let dev_t = ensure_in_root(root, "/dev", true, None)?;
        let dev = fd_path(&dev_t);
        for (name, major, minor) in DEVICES {
            let p = dev.join(name);
            let made = if self.mapping.is_none() {
                nix::sys::stat::mknod(
                    &p,
                    nix::sys::stat::SFlag::S_IFCHR,
                    Mode::from_bits_truncate(0o666),
                    nix::sys::stat::makedev(major, minor),
                )
                .is_ok()
                    // mknod applies the umask (0644 under 022), and every user must be able
                    // to write /dev/null (apt's `_apt` sandbox user does: `apt-get update` in
                    // a build step failed on `>/dev/null` without this).
                    && {
                        use std::os::unix::fs::PermissionsExt;
                        fs::set_permissions(&p, fs::Permissions::from_mode(0o666))
                            .context(|| format!("cannot chmod /dev/{name}"))?;
                        true
                    }
            } else {
                false
            };
            if !made {
                // In a user namespace device nodes cannot be created: bind the host's.
                fs::File::create(&p).context(|| format!("cannot create /dev/{name}"))?;
                bind(&Path::new("/dev").join(name), &p, false, false)?;
            }
        }
        for (link, to) in [
            ("fd", "/proc/self/fd"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
            ("ptmx", "pts/ptmx"),
        ] {
            std::os::unix::fs::symlink(to, dev.join(link))
                .context(|| format!("cannot create /dev/{link}"))?;
        }
        for (i, d) in self.spec.devices.iter().enumerate() {
            let inside = format!("/dev/{}", d.relative().display());
            let t = ensure_in_root(root, &inside, false, None)?;
            bind(&self.staged_device(i), &fd_path(&t), false, false)?;
        }
        let pts = dev.join("pts");
        mkdir_p(&pts)?;
        let mut opts = "newinstance,ptmxmode=0666,mode=0620".to_string();
        if self.mapping.is_none_or(|m| m.has_gid(5)) {
            opts.push_str(",gid=5");
        }
        mount(
            Some("devpts"),
            &pts,
            Some("devpts"),
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some(opts.as_str()),
        )
        .context(|| "cannot mount /dev/pts".to_string())?;
        let shm = dev.join("shm");
        mkdir_p(&shm)?;
        mount(
            Some("shm"),
            &shm,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("mode=1777,size=65536k"),
        )
        .context(|| "cannot mount /dev/shm".to_string())?;
        let mq = dev.join("mqueue");
        mkdir_p(&mq)?;
        // Optional: some kernels lack POSIX message queues.
        let _ = mount(
            Some("mqueue"),
            &mq,
            Some("mqueue"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None::<&str>,
        );
        Ok(())
    }
}

/// Remounts a bind mount read-only, keeping the flags the kernel locks (nosuid, nodev, noexec).
fn remount_readonly(target: &Path) -> Result<()> {
    let st = nix::sys::statvfs::statvfs(target)
        .context(|| format!("cannot statvfs {}", target.display()))?;
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    use nix::sys::statvfs::FsFlags;
    for (f, m) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if st.flags().contains(f) {
            flags |= m;
        }
    }
    mount(None::<&str>, target, None::<&str>, flags, None::<&str>)
        .context(|| format!("cannot make {} read-only", target.display()))
}

fn mask_path(p: &str) -> Result<()> {
    let meta = match fs::metadata(p) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(ContainerError::io(
                format!("cannot inspect {p} to mask it"),
                e,
            ))
        }
    };
    let r = if meta.is_dir() {
        mount(
            Some("tmpfs"),
            p,
            Some("tmpfs"),
            MsFlags::MS_RDONLY,
            Some("size=0"),
        )
    } else {
        mount(
            Some("/dev/null"),
            p,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
    };
    r.context(|| format!("cannot mask {p}"))
}

fn readonly_path(p: &str) -> Result<()> {
    match mount(
        Some(p),
        p,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    ) {
        Ok(()) => remount_readonly(Path::new(p)),
        Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(ContainerError::sys(
            format!("cannot bind {p} to make it read-only"),
            e,
        )),
    }
}
