//! Protection against the `/proc/self/exe` overwrite class of attack (runc's CVE-2019-5736).
//!
//! Two layers:
//! - The supervisor is not dumpable (`PR_SET_DUMPABLE 0`), so processes inside, which lack
//!   `CAP_SYS_PTRACE`, cannot open `/proc/1/exe` (nor `/proc/1/root`, `environ`, `mem`), and
//!   children forked from it stay non-dumpable until their own `execve`.
//! - When the environment's root is the host's root (no user namespace: `privileged`, or
//!   build steps), where an open `/proc/<pid>/exe` could be written through, the launcher and
//!   supervisor run from a sealed, read-only memfd copy of berth's binary instead: the file
//!   reachable there is anonymous and immutable. With a user namespace the environment's root
//!   is an unprivileged host id that cannot write berth's binary anyway, and skipping the copy
//!   keeps each idle environment from pinning its own copy of the binary in memory.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use super::launch::SUPERVISOR_ARG;

static SEALED: OnceLock<Result<OwnedFd, String>> = OnceLock::new();

/// A sealed memfd holding a copy of the running executable (made once per process).
pub fn sealed_self() -> io::Result<&'static OwnedFd> {
    SEALED
        .get_or_init(|| make_sealed(Path::new("/proc/self/exe")).map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| {
            io::Error::other(format!(
                "cannot copy berth's binary into a sealed memfd: {e}"
            ))
        })
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
