//! Protection against the `/proc/self/exe` overwrite class of attack (runc's CVE-2019-5736).
//!
//! Two layers:
//! - The supervisor is not dumpable (`PR_SET_DUMPABLE 0`), so processes inside, which lack
//!   `CAP_SYS_PTRACE`, cannot open `/proc/1/exe` (nor `/proc/1/root`, `environ`, `mem`), and
//!   children forked from it stay non-dumpable until their own `execve`.
//! - When the environment's root is the host's root (no user namespace: `privileged`, or
//!   build steps), where an open `/proc/<pid>/exe` could be written through, the launcher and
//!   supervisor run from a sealed view of berth's binary instead: the binary seen through a
//!   detached read-only overlay (as runc does; no copy, its page cache is the binary's own,
//!   shared by every run), else a sealed, read-only memfd copy. Either file is immutable and
//!   no path of the host leads to it. With a user namespace the environment's root is an
//!   unprivileged host id that cannot write berth's binary anyway, and runs from the binary.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use super::fs_context::FsContext;
use super::launch::SUPERVISOR_ARG;

static SEALED: OnceLock<Result<OwnedFd, String>> = OnceLock::new();

/// An immutable handle on the running executable (made once per process): the binary
/// through a detached read-only overlay ([`overlay_view`]), else a sealed memfd copy.
pub fn sealed_self() -> io::Result<&'static OwnedFd> {
    SEALED
        .get_or_init(|| {
            overlay_view(Path::new("/proc/self/exe"))
                .or_else(|_| make_sealed(Path::new("/proc/self/exe")))
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| {
            io::Error::other(format!(
                "cannot copy berth's binary into a sealed memfd: {e}"
            ))
        })
}

/// The executable behind `exe` (a path or a magic link such as `/proc/self/exe`) opened
/// (`O_PATH`) through a detached overlay of its folder and an empty tmpfs, with no upper
/// layer: read-only at the superblock, so it can be neither written nor remounted writable,
/// and mounted nowhere, so nothing reaches the folder through it. No copy is made. Refused
/// (an error) without root, before Linux 6.15 (detached layers), when the binary was
/// replaced on disk since it started, or when the file seen is not the one running.
pub fn overlay_view(exe: &Path) -> io::Result<OwnedFd> {
    use std::os::unix::fs::MetadataExt;
    let real = std::fs::read_link(exe).or_else(|_| exe.canonicalize())?;
    let (dir, name) = match (real.parent(), real.file_name()) {
        (Some(d), Some(n)) if real.is_absolute() => (d, n),
        _ => return Err(io::Error::other("the executable has no folder")),
    };
    let empty = fs_mount(
        c"tmpfs",
        &[(c"size", c"4k")],
        libc::MOUNT_ATTR_RDONLY as u32,
    )?;
    let empty_path = CString::new(format!("/proc/self/fd/{}", empty.as_raw_fd()))?;
    let dir = CString::new(dir.as_os_str().as_bytes())?;
    let overlay = fs_mount(
        c"overlay",
        &[
            (c"lowerdir+", dir.as_c_str()),
            (c"lowerdir+", empty_path.as_c_str()),
            (c"xino", c"off"),
        ],
        (libc::MOUNT_ATTR_RDONLY | libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV) as u32,
    )?;
    let name = CString::new(name.as_bytes())?;
    // SAFETY: openat on our overlay's root descriptor with a NUL-terminated file name.
    let fd = unsafe {
        libc::openat(
            overlay.as_raw_fd(),
            name.as_ptr(),
            libc::O_PATH | libc::O_CLOEXEC | libc::O_NOFOLLOW,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd we own.
    let file = unsafe { OwnedFd::from_raw_fd(fd) };
    let seen = std::fs::metadata(format!("/proc/self/fd/{}", file.as_raw_fd()))?;
    let running = std::fs::metadata(exe)?;
    let same = seen.ino() == running.ino()
        && seen.size() == running.size()
        && (seen.mtime(), seen.mtime_nsec()) == (running.mtime(), running.mtime_nsec())
        && seen.is_file();
    if !same {
        return Err(io::Error::other(
            "the binary on disk is not the one running",
        ));
    }
    Ok(file)
}

/// A new detached mount of filesystem `fstype` with string options `opts` and mount
/// attributes `attrs`.
fn fs_mount(fstype: &CStr, opts: &[(&CStr, &CStr)], attrs: u32) -> io::Result<OwnedFd> {
    let ctx = FsContext::open(fstype)?;
    for (key, value) in opts {
        ctx.set_string(key, value)?;
    }
    ctx.create()?;
    ctx.mount(attrs)
}

/// Copies `exe` into a new memfd and seals it against any change.
pub fn make_sealed(exe: &Path) -> io::Result<OwnedFd> {
    let mut src = File::open(exe)?;
    // SAFETY: memfd_create with a static NUL-terminated name; returns a new fd or -1.
    let fd = unsafe {
        libc::memfd_create(
            c"berth".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd we own.
    let mut dst = unsafe { File::from_raw_fd(fd) };
    io::copy(&mut src, &mut dst)?;
    let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    // SAFETY: fcntl on our own fd with integer arguments.
    if unsafe { libc::fcntl(dst.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(OwnedFd::from(dst))
}

/// `berth __supervisor <state-dir>`, from the sealed copy when `sealed` (an error if that
/// copy cannot be made), else from `/proc/self/exe`.
pub fn supervisor_command(state_dir: &Path, sealed: bool) -> io::Result<Command> {
    let program = if sealed {
        format!("/proc/self/fd/{}", sealed_self()?.as_raw_fd())
    } else {
        "/proc/self/exe".to_string()
    };
    let mut c = Command::new(program);
    c.arg(SUPERVISOR_ARG).arg(state_dir);
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The overlay view runs, is the running binary, refuses writes, and names no host path.
    #[test]
    fn the_overlay_view_is_the_running_binary_and_refuses_writes() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: fsopen of overlayfs needs root");
            return;
        }
        let fd = match overlay_view(Path::new("/proc/self/exe")) {
            Ok(fd) => fd,
            Err(e) => {
                eprintln!("skipped: no overlay view on this kernel ({e})");
                return;
            }
        };
        let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
        // The same file: size, inode and the first 64 KiB (the whole test binary is large).
        let head = |p: &str| {
            let mut b = vec![0u8; 64 * 1024];
            let n = std::io::Read::read(&mut File::open(p).unwrap(), &mut b).unwrap();
            b.truncate(n);
            b
        };
        use std::os::unix::fs::MetadataExt;
        let (v, r) = (
            std::fs::metadata(&path).unwrap(),
            std::fs::metadata("/proc/self/exe").unwrap(),
        );
        assert_eq!((v.len(), v.ino()), (r.len(), r.ino()));
        assert_eq!(head(&path), head("/proc/self/exe"));
        let w = std::fs::OpenOptions::new().write(true).open(&path);
        assert_eq!(
            w.err().and_then(|e| e.raw_os_error()),
            Some(libc::EROFS),
            "the view must be read-only"
        );
        let shown = std::fs::read_link(&path).unwrap();
        let real = std::fs::read_link("/proc/self/exe").unwrap();
        assert_ne!(shown, real, "the view must not name the binary's host path");
        assert_eq!(shown.parent(), Some(Path::new("/")));
    }

    #[test]
    fn sealed_copy_is_identical_and_immutable() {
        let fd = make_sealed(Path::new("/proc/self/exe")).unwrap();
        let orig = std::fs::metadata("/proc/self/exe").unwrap().len();
        let f = File::from(fd.try_clone().unwrap());
        assert_eq!(f.metadata().unwrap().len(), orig);
        // SAFETY: F_GET_SEALS on our fd.
        let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
        assert!(seals & libc::F_SEAL_WRITE != 0 && seals & libc::F_SEAL_SEAL != 0);
        use std::io::Write;
        let mut w = std::fs::OpenOptions::new()
            .write(true)
            .open(format!("/proc/self/fd/{}", fd.as_raw_fd()));
        let wrote = w.as_mut().map(|w| w.write_all(b"x")).ok();
        assert!(
            !matches!(wrote, Some(Ok(()))),
            "a sealed memfd must refuse writes"
        );
    }
}
