//! Opening files in state folders without following links: `openat2(2)` with `RESOLVE_*`
//! flags, opens confined beneath an open folder, and `/proc/self/fd` paths of what was opened.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// `openat2(2)`'s `struct open_how`.
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}
/// `openat2` resolve flags (linux/openat2.h).
pub const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
pub const RESOLVE_NO_SYMLINKS: u64 = 0x04;
pub const RESOLVE_BENEATH: u64 = 0x08;
pub const RESOLVE_IN_ROOT: u64 = 0x10;

/// `/proc/self/fd/N` of an open descriptor: lets a path-taking call (mount(2), a chown, a
/// read_link) act on exactly the object that was resolved and opened.
pub fn fd_path(fd: &impl std::os::fd::AsRawFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// `openat2(2)` of `path` relative to `dir` with the `RESOLVE_*` flags `resolve`, always
/// close-on-exec, retried on `EINTR`/`EAGAIN`. `mode` is passed only with `O_CREAT`.
pub fn openat2(
    dir: std::os::fd::BorrowedFd<'_>,
    path: &str,
    flags: i32,
    mode: u32,
    resolve: u64,
) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let c = std::ffi::CString::new(path).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: if flags & libc::O_CREAT != 0 {
            mode as u64
        } else {
            0
        },
        resolve,
    };
    loop {
        // SAFETY: openat2 with a valid dirfd, a NUL-terminated path and a correctly sized
        // open_how.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir.as_raw_fd(),
                c.as_ptr(),
                &how as *const OpenHow,
                std::mem::size_of::<OpenHow>(),
            )
        };
        if fd >= 0 {
            // SAFETY: a fresh descriptor from the kernel, owned by nobody else.
            return Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) });
        }
        let e = io::Error::last_os_error();
        if !matches!(e.raw_os_error(), Some(libc::EINTR) | Some(libc::EAGAIN)) {
            return Err(e);
        }
    }
}

/// Opens `name` (a relative path) under the open folder `dir` without following a symlink
/// anywhere and without leaving `dir`: `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
/// RESOLVE_NO_MAGICLINKS)`, always close-on-exec. For files in state folders that something
/// other than berth could have replaced by a link (logs a process inside can reach). A link
/// gives `ELOOP`, which [`refuse_link`] turns into a message.
pub fn open_beneath(
    dir: std::os::fd::BorrowedFd<'_>,
    name: &str,
    flags: i32,
    mode: u32,
) -> io::Result<File> {
    let resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
    openat2(dir, name, flags, mode, resolve).map(File::from)
}

/// Opens the folder `path` itself, refusing a symlink in its place (`O_NOFOLLOW`): the
/// anchor for [`open_beneath`]. Close-on-exec.
pub fn open_dir_nofollow(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// `e` with `path` and the way out in its message when it is the kernel refusing a symlink
/// (`ELOOP`, or `ENOTDIR` from `O_DIRECTORY | O_NOFOLLOW` on a link); other errors unchanged.
pub fn refuse_link(path: &Path, e: io::Error) -> io::Error {
    let is_link = e.raw_os_error() == Some(libc::ELOOP)
        || (e.raw_os_error() == Some(libc::ENOTDIR)
            && fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()));
    if !is_link {
        return e;
    }
    io::Error::new(
        e.kind(),
        format!(
            "{} is a symbolic link (or passes through one): berth does not follow links in its \
             state folders, as something inside the environment may have planted it; remove it \
             and try again",
            path.display()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_beneath_refuses_links_and_escapes() {
        use std::os::fd::AsFd;
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("outside"), "x").unwrap();
        let dir = d.path().join("logs");
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("ok.log"), "fine").unwrap();
        std::os::unix::fs::symlink(d.path().join("outside"), dir.join("link.log")).unwrap();
        let f = open_dir_nofollow(&dir).unwrap();
        assert!(open_beneath(f.as_fd(), "ok.log", libc::O_RDONLY, 0).is_ok());
        for bad in ["link.log", "../outside", "/etc/passwd"] {
            let e = open_beneath(f.as_fd(), bad, libc::O_RDONLY, 0).unwrap_err();
            assert!(
                matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::EXDEV)),
                "{bad}: {e}"
            );
        }
        let e = open_beneath(f.as_fd(), "link.log", libc::O_RDONLY, 0).unwrap_err();
        let e = refuse_link(&dir.join("link.log"), e);
        assert!(e.to_string().contains("link.log is a symbolic link"), "{e}");
        // The anchor folder itself replaced by a link.
        let linked = d.path().join("linked");
        std::os::unix::fs::symlink(&dir, &linked).unwrap();
        let e = refuse_link(&linked, open_dir_nofollow(&linked).unwrap_err());
        assert!(e.to_string().contains("symbolic link"), "{e}");
    }
}
