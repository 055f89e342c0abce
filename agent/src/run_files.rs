//! berth's files in the guest's tmpfs folders (`PutFile`, `KeepFiles`): `[secrets]` under
//! `/run/secrets` (0400, the `[shell]` user's) and the environment's gitconfig under
//! `/run/berth`, the guest side of what the container's `write-secrets`/`write-gitconfig`
//! builtins do. Only those two folders, each opened without following a link from `/run`
//! and written only when it is a tmpfs (the one the agent mounted from `Setup`), so what
//! the host sends never lands on the VM's disk. A file is written under a temporary name,
//! given to its owner, then renamed into place.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use berth_agent_proto::{PutFile, RUN_DIR, SECRETS_DIR};

use crate::sys;
use crate::users;

/// `statfs.f_type` of a tmpfs.
const TMPFS_MAGIC: i64 = 0x0102_1994;

/// Whether `name` may be a file's name in one of the folders.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

fn open_dir_at(at: libc::c_int, path: &str) -> io::Result<OwnedFd> {
    let c = sys::cstr(path)?;
    // SAFETY: a valid path; the returned descriptor is owned below.
    let fd = sys::check(unsafe {
        libc::openat(
            at,
            c.as_ptr(),
            libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_RDONLY,
        )
    })?;
    // SAFETY: openat returned a fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// One of berth's folders, opened without following a link, checked to be a tmpfs.
fn open_tmpfs(dir: &str) -> Result<OwnedFd, String> {
    let name = match dir {
        d if d == SECRETS_DIR || d == RUN_DIR => &d["/run/".len()..],
        _ => return Err(format!("{dir} is not one of berth's folders")),
    };
    let run = open_dir_at(libc::AT_FDCWD, "/run").map_err(|e| format!("cannot open /run: {e}"))?;
    let fd = open_dir_at(run.as_raw_fd(), name).map_err(|e| format!("cannot open {dir}: {e}"))?;
    // SAFETY: a zeroed statfs filled by fstatfs on a descriptor we own.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    sys::check(unsafe { libc::fstatfs(fd.as_raw_fd(), &mut st) })
        .map_err(|e| format!("cannot inspect {dir}: {e}"))?;
    if st.f_type as i64 != TMPFS_MAGIC {
        return Err(format!(
            "{dir} is not the tmpfs berth mounted: nothing is written to it (restart the environment: berth down && berth up)"
        ));
    }
    Ok(fd)
}

fn unlink_at(dir: &OwnedFd, name: &str) -> io::Result<()> {
    let c = sys::cstr(name)?;
    // SAFETY: a valid name relative to a directory descriptor we own.
    sys::check(unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), 0) }).map(|_| ())
}

/// Writes `p` into its folder; see the module's documentation.
pub fn put(p: &PutFile) -> Result<(), String> {
    if !valid_name(&p.name) {
        return Err(format!("{:?} is not a valid file name", p.name));
    }
    let dir = open_tmpfs(&p.dir)?;
    let owner = match p.owner.as_deref() {
        None | Some("") => users::root(),
        Some(spec) => users::resolve(spec)?,
    };
    let path = format!("{}/{}", p.dir, p.name);
    let tmp = format!(".{}.new", p.name);
    let _ = unlink_at(&dir, &tmp);
    let c_tmp = sys::cstr(&tmp).map_err(|e| e.to_string())?;
    let mode = p.mode & 0o777;
    // SAFETY: a valid name relative to a directory descriptor we own.
    let fd = sys::check(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c_tmp.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            mode,
        )
    })
    .map_err(|e| format!("cannot write {path}: {e}"))?;
    // SAFETY: openat returned a fresh descriptor.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let written = (|| {
        // SAFETY: fchown and fchmod on a descriptor we own.
        sys::check(unsafe { libc::fchown(fd.as_raw_fd(), owner.uid, owner.gid) })?;
        // SAFETY: as above (the umask may have taken bits away).
        sys::check(unsafe { libc::fchmod(fd.as_raw_fd(), mode) })?;
        sys::write_all(fd.as_raw_fd(), &p.content)?;
        let c_name = sys::cstr(&p.name)?;
        // SAFETY: valid names relative to a directory descriptor we own.
        sys::check(unsafe {
            libc::renameat(
                dir.as_raw_fd(),
                c_tmp.as_ptr(),
                dir.as_raw_fd(),
                c_name.as_ptr(),
            )
        })
        .map(|_| ())
    })();
    if let Err(e) = written {
        let _ = unlink_at(&dir, &tmp);
        return Err(format!("cannot write {path}: {e}"));
    }
    Ok(())
}

/// Removes every file of `dir` not named in `keep`.
pub fn keep(dir_path: &str, keep: &[String]) -> Result<(), String> {
    let dir = open_tmpfs(dir_path)?;
    let listing = std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd()))
        .map_err(|e| format!("cannot list {dir_path}: {e}"))?;
    for e in listing.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !keep.contains(&name) {
            unlink_at(&dir, &name).map_err(|e| format!("cannot remove {dir_path}/{name}: {e}"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_names_and_berths_folders_are_taken() {
        assert!(valid_name("TOKEN") && valid_name("gitconfig") && valid_name("a-b.c_1"));
        for bad in ["", ".hidden", "../x", "a/b", "a\nb", &"x".repeat(65)] {
            assert!(!valid_name(bad), "{bad:?}");
        }
        for bad in ["/tmp", "/run", "/run/secrets/..", "/run/berth/"] {
            assert!(open_tmpfs(bad).unwrap_err().contains("not one of berth's"));
        }
    }
}
