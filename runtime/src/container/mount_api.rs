//! The new mount API (`open_tree` + `mount_setattr` + `move_mount`, not wrapped by nix 0.29):
//! attaching clones of mounts, optionally id-mapped into a user namespace, read-only, nosuid or
//! nodev, and the short-lived user namespaces id-mapped mounts are made with.

use std::ffi::CString;
use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::error::{ContainerError, Context, Result};
use super::idmap::IdMapping;

/// A user namespace with `mapping` (written directly: only host root may call this), as a
/// descriptor for `mount_setattr(MOUNT_ATTR_IDMAP)`. A short-lived child process creates the
/// namespace; it is gone when this returns, the descriptor keeps the namespace alive.
/// The caller must be single-threaded (it forks).
pub fn user_namespace_with(mapping: &IdMapping) -> Result<OwnedFd> {
    use nix::sys::wait::waitpid;
    use nix::unistd::{fork, pipe, read, write, ForkResult};
    let (ready_r, ready_w) = pipe().context(|| "cannot create a pipe".to_string())?;
    let (go_r, go_w) = pipe().context(|| "cannot create a pipe".to_string())?;
    // SAFETY: the child only calls async-signal-safe functions (unshare, write, read, _exit).
    match unsafe { fork() }.context(|| "cannot fork".to_string())? {
        ForkResult::Child => {
            drop((ready_r, go_w));
            // SAFETY: raw syscalls on descriptors this child owns, then _exit.
            unsafe {
                let ok: u8 = u8::from(libc::unshare(libc::CLONE_NEWUSER) == 0);
                libc::write(ready_w.as_raw_fd(), (&ok as *const u8).cast(), 1);
                let mut b = 0u8;
                libc::read(go_r.as_raw_fd(), (&mut b as *mut u8).cast(), 1);
                libc::_exit(0)
            }
        }
        ForkResult::Parent { child } => {
            drop((ready_w, go_r));
            let mut b = [0u8; 1];
            let unshared = read(ready_r.as_raw_fd(), &mut b).is_ok_and(|n| n == 1) && b[0] == 1;
            let result = if unshared {
                mapping.write_for(child.as_raw()).and_then(|()| {
                    fs::File::open(format!("/proc/{child}/ns/user"))
                        .map(OwnedFd::from)
                        .context(|| "cannot open the mount's user namespace".to_string())
                })
            } else {
                Err(ContainerError::Setup(
                    "cannot create a user namespace for an id-mapped bind mount".into(),
                ))
            };
            let _ = write(&go_w, &[1]);
            drop(go_w);
            let _ = waitpid(child, None);
            result
        }
    }
}

// The new mount API, not wrapped by nix 0.29.
pub(crate) const OPEN_TREE_CLONE: libc::c_uint = 1;
pub(crate) const OPEN_TREE_CLOEXEC: libc::c_uint = libc::O_CLOEXEC as libc::c_uint;
pub(crate) const AT_RECURSIVE: libc::c_uint = 0x8000;
pub(crate) const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
pub(crate) const MOUNT_ATTR_RDONLY: u64 = 0x0000_0001;
pub(crate) const MOUNT_ATTR_NODEV: u64 = 0x0000_0004;
const MOUNT_ATTR_NOSUID: u64 = 0x0000_0002;
pub(crate) const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x0000_0004;
const MOVE_MOUNT_T_SYMLINKS: libc::c_uint = 0x0000_0010;

/// `struct mount_attr` of `mount_setattr(2)`.
#[repr(C)]
pub(crate) struct MountAttr {
    pub attr_set: u64,
    pub attr_clr: u64,
    pub propagation: u64,
    pub userns_fd: u64,
}

/// Attaches an id-mapped clone of `source` at `target` (an existing, empty directory or file in
/// the current mount namespace): files owned by host ids appear as the ids that map to them in
/// the user namespace `userns`. `target` is a path the kernel resolves, e.g. `/proc/self/fd/N`.
pub fn idmapped_bind(
    source: &Path,
    target: &Path,
    userns: &OwnedFd,
    flags: CloneFlags,
) -> Result<()> {
    attach_clone(source, target, Some(userns), flags)
}

/// Attributes of an attached mount clone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CloneFlags {
    pub readonly: bool,
    /// Setuid/setgid bits and file capabilities are ignored on the mount.
    pub nosuid: bool,
    /// Device nodes on the mount cannot be opened.
    pub nodev: bool,
}

/// Attaches a clone of the mount at `source` on `target` (resolved by the kernel, following
/// magic links such as `/proc/self/fd/N`), optionally id-mapped into `userns` and/or
/// read-only. Without id-mapping the clone is recursive, like `mount --rbind`, and read-only
/// (and nosuid, nodev) apply to every mount in it. Setting the attributes on the detached clone
/// avoids a remount, which could not reach a mount attached on an fd path.
pub fn attach_clone(
    source: &Path,
    target: &Path,
    userns: Option<&OwnedFd>,
    flags: CloneFlags,
) -> Result<()> {
    let tree = clone_tree(source, userns, flags)?;
    attach_tree(&tree, target).map_err(|e| {
        ContainerError::io(
            format!(
                "cannot attach the id-mapped mount of {} at {}",
                source.display(),
                target.display()
            ),
            e,
        )
    })
}

/// A detached clone of the mount at `source` (`open_tree(OPEN_TREE_CLONE)`), with the
/// attributes of `flags` and, with `userns`, id-mapped into that user namespace. It belongs
/// to no mount namespace: it is gone when the last descriptor of it (or of a mount made
/// from it, such as an overlay with it as a layer) is closed, whatever kills the process.
/// Recursive unless id-mapped, as in [`attach_clone`].
pub fn clone_tree(source: &Path, userns: Option<&OwnedFd>, flags: CloneFlags) -> Result<OwnedFd> {
    let src = cstr(source)?;
    let recursive = if userns.is_none() { AT_RECURSIVE } else { 0 };
    // SAFETY: open_tree with a valid NUL-terminated path; returns a new fd or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            src.as_ptr(),
            OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | recursive,
        )
    };
    if fd < 0 {
        return Err(ContainerError::io(
            format!("cannot clone the mount of {} (open_tree)", source.display()),
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    let tree = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let attr = MountAttr {
        attr_set: if userns.is_some() {
            MOUNT_ATTR_IDMAP
        } else {
            0
        } | if flags.readonly { MOUNT_ATTR_RDONLY } else { 0 }
            | if flags.nosuid { MOUNT_ATTR_NOSUID } else { 0 }
            | if flags.nodev { MOUNT_ATTR_NODEV } else { 0 },
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.map_or(0, |u| u.as_raw_fd() as u64),
    };
    if attr.attr_set != 0 {
        // SAFETY: mount_setattr on our detached tree fd with a correctly sized mount_attr.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                tree.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_EMPTY_PATH as libc::c_uint | AT_RECURSIVE,
                &attr as *const MountAttr,
                std::mem::size_of::<MountAttr>(),
            )
        };
        if rc < 0 {
            return Err(ContainerError::io(
                format!(
                    "cannot set the attributes of the mount of {} (mount_setattr); id-mapped mounts need Linux 5.12+ and a filesystem that supports them",
                    source.display()
                ),
                std::io::Error::last_os_error(),
            ));
        }
    }
    Ok(tree)
}

/// Attaches the detached mount `tree` (from [`clone_tree`] or `fsmount`) at `target`, resolved
/// by the kernel (following magic links such as `/proc/self/fd/N`).
pub fn attach_tree(tree: &OwnedFd, target: &Path) -> std::io::Result<()> {
    let dst = CString::new(target.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: move_mount of our tree fd onto a NUL-terminated target path.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            dst.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_SYMLINKS,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

pub(crate) fn cstr(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| ContainerError::Invalid(format!("path {} contains a NUL byte", p.display())))
}
