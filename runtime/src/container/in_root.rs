//! Paths inside an environment's root filesystem, resolved with `openat2(RESOLVE_IN_ROOT)`
//! so a symlink in an image (`/work -> /root`) can never lead a mount or a created folder onto
//! the host.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use super::error::{ContainerError, Context, Result};
use crate::state::{RESOLVE_IN_ROOT, RESOLVE_NO_MAGICLINKS};

/// Who owns files berth creates: the environment's root as seen from the current namespace.
/// Owner (uid, gid) given to created entries; `None` keeps the creator's.
pub type Owner = Option<(u32, u32)>;

/// openat2 relative to `root` with `root` as the filesystem root for the lookup.
fn openat2_in_root(root: BorrowedFd<'_>, path: &str, flags: i32) -> io::Result<OwnedFd> {
    crate::state::openat2(
        root,
        path,
        flags,
        0,
        RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
    )
}

/// Resolves `target` (absolute, inside the rootfs) confined to the rootfs, creating missing
/// directories (and the last component as a directory or empty file), and returns an `O_PATH`
/// fd to it. Created entries get `owner` when given.
pub fn ensure_in_root(
    root: BorrowedFd<'_>,
    target: &str,
    is_dir: bool,
    owner: Owner,
) -> Result<OwnedFd> {
    let comps: Vec<&str> = target
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    if comps.contains(&"..") {
        return Err(ContainerError::Invalid(format!(
            "path {target:?} must not contain `..`"
        )));
    }
    let mut parent = openat2_in_root(root, ".", libc::O_PATH | libc::O_DIRECTORY)
        .context(|| "cannot open the root filesystem".to_string())?;
    let mut sofar = String::new();
    for (i, comp) in comps.iter().enumerate() {
        sofar.push('/');
        sofar.push_str(comp);
        let last = i + 1 == comps.len();
        let want_dir = !last || is_dir;
        let flags = libc::O_PATH | if want_dir { libc::O_DIRECTORY } else { 0 };
        let fd = match openat2_in_root(root, &sofar, flags) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                let name = CString::new(*comp)
                    .map_err(|_| ContainerError::Invalid(format!("bad path {target:?}")))?;
                // SAFETY: creating an entry named `name` in the directory `parent` refers to.
                let rc = unsafe {
                    if want_dir {
                        libc::mkdirat(parent.as_raw_fd(), name.as_ptr(), 0o755)
                    } else {
                        let fd = libc::openat(
                            parent.as_raw_fd(),
                            name.as_ptr(),
                            libc::O_CREAT
                                | libc::O_EXCL
                                | libc::O_WRONLY
                                | libc::O_CLOEXEC
                                | libc::O_NOFOLLOW,
                            0o644,
                        );
                        if fd >= 0 {
                            libc::close(fd);
                            0
                        } else {
                            -1
                        }
                    }
                };
                if rc != 0 {
                    let e = io::Error::last_os_error();
                    if e.raw_os_error() != Some(libc::EEXIST) {
                        return Err(ContainerError::io(
                            format!("cannot create {sofar} in the environment"),
                            e,
                        ));
                    }
                }
                if let Some((u, g)) = owner {
                    // SAFETY: fchownat on an entry of `parent`, not following symlinks.
                    unsafe {
                        libc::fchownat(
                            parent.as_raw_fd(),
                            name.as_ptr(),
                            u,
                            g,
                            libc::AT_SYMLINK_NOFOLLOW,
                        )
                    };
                }
                openat2_in_root(root, &sofar, flags)
                    .context(|| format!("cannot open {sofar} in the environment"))?
            }
            Err(e) => {
                return Err(ContainerError::io(
                    format!(
                        "cannot resolve {sofar} in the environment (is it a {}?)",
                        if want_dir { "directory" } else { "file" }
                    ),
                    e,
                ))
            }
        };
        parent = fd;
    }
    Ok(parent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::fd::AsFd;
    use std::path::Path;

    #[test]
    fn ensure_in_root_creates_and_stays_confined() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        let outside = t.path().join("outside");
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::create_dir_all(&outside).unwrap();
        // A hostile absolute symlink must resolve inside the root, not on the host.
        std::os::unix::fs::symlink(&outside, root.join("evil")).unwrap();
        fs::create_dir_all(root.join(outside.strip_prefix("/").unwrap())).unwrap();
        let rfd = OwnedFd::from(fs::File::open(&root).unwrap());
        let fd = ensure_in_root(rfd.as_fd(), "/evil/x/y", true, None).unwrap();
        drop(fd);
        assert!(!outside.join("x").exists(), "escaped the root");
        assert!(root
            .join(outside.strip_prefix("/").unwrap())
            .join("x/y")
            .is_dir());
        let f = ensure_in_root(rfd.as_fd(), "/etc/hosts", false, None).unwrap();
        drop(f);
        assert!(root.join("etc/hosts").is_file());
        assert!(ensure_in_root(rfd.as_fd(), "/a/../b", true, None).is_err());
        // A dangling symlink is an error, never a path on the host.
        std::os::unix::fs::symlink("/nowhere", root.join("dangling")).unwrap();
        assert!(ensure_in_root(rfd.as_fd(), "/dangling/x", true, None).is_err());
        assert!(!Path::new("/nowhere").exists());
    }
}
