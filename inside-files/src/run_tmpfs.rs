//! berth's tmpfs folders inside an environment, [`SECRETS_DIR`] (`[secrets]`) and
//! [`RUN_DIR`] (the environment's gitconfig): each opened from `/run` without following a
//! link and used only while it is a tmpfs (the one berth mounted), so what berth writes
//! there never lands on a disk, whatever the environment did to its `/run`. A file is
//! written under a temporary name, given to its owner, then renamed into place.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

pub use berth_agent_proto::{RUN_DIR, SECRETS_DIR};

use crate::fd_calls::{self, check, cstr};

/// `statfs.f_type` of a tmpfs.
const TMPFS_MAGIC: i64 = 0x0102_1994;

/// Opens `dir`, [`SECRETS_DIR`] or [`RUN_DIR`], and checks it is a tmpfs.
pub fn open(dir: &str) -> Result<OwnedFd, String> {
    let name = match dir {
        d if d == SECRETS_DIR || d == RUN_DIR => &d["/run/".len()..],
        _ => return Err(format!("{dir} is not one of berth's folders")),
    };
    let run = fd_calls::open_dir_at(libc::AT_FDCWD, "/run")
        .map_err(|e| format!("cannot open /run: {e}"))?;
    let fd = fd_calls::open_dir_at(run.as_raw_fd(), name)
        .map_err(|e| format!("cannot open {dir}: {e}"))?;
    // SAFETY: a zeroed statfs, filled by fstatfs below.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: fstatfs on a descriptor we own into a valid statfs.
    check(unsafe { libc::fstatfs(fd.as_raw_fd(), &mut st) })
        .map_err(|e| format!("cannot inspect {dir}: {e}"))?;
    if st.f_type as i64 != TMPFS_MAGIC {
        return Err(format!(
            "{dir} is not the tmpfs berth mounted: nothing is written to it (restart the environment: berth down && berth up)"
        ));
    }
    Ok(fd)
}

/// Writes `value` as `name` in `dir` (opened by [`open`]): under a temporary name created
/// without following a link, given to `owner` (when set) and exactly `mode` (the umask may
/// have taken bits away), then renamed into place. `what` names the file in errors; on an
/// error the temporary file goes.
pub fn write_replacing(
    dir: &OwnedFd,
    name: &str,
    value: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
    what: &str,
) -> Result<(), String> {
    let tmp = format!(".{name}.new");
    let _ = remove(dir, &tmp);
    let mode = mode & 0o777;
    let file =
        fd_calls::create_at(dir, &tmp, mode).map_err(|e| format!("cannot write {what}: {e}"))?;
    let written = (|| {
        if let Some((uid, gid)) = owner {
            fd_calls::fchown(&file, uid, gid)
                .map_err(|e| format!("cannot give {what} to its user: {e}"))?;
        }
        fd_calls::fchmod(&file, mode).map_err(|e| format!("cannot set the mode of {what}: {e}"))?;
        fd_calls::write_all(&file, value).map_err(|e| format!("cannot write {what}: {e}"))?;
        let (c_tmp, c_name) = (
            cstr(&tmp).map_err(|e| e.to_string())?,
            cstr(name).map_err(|e| format!("cannot write {what}: {e}"))?,
        );
        // SAFETY: valid names relative to a directory descriptor we own.
        check(unsafe {
            libc::renameat(
                dir.as_raw_fd(),
                c_tmp.as_ptr(),
                dir.as_raw_fd(),
                c_name.as_ptr(),
            )
        })
        .map(drop)
        .map_err(|e| format!("cannot write {what}: {e}"))
    })();
    if written.is_err() {
        let _ = remove(dir, &tmp);
    }
    written
}

/// Removes the file `name` of `dir` (never follows a link).
pub fn remove(dir: &OwnedFd, name: &str) -> io::Result<()> {
    fd_calls::unlink_at(dir, name, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_berths_folders_are_opened() {
        for bad in [
            "/tmp",
            "/run",
            "/run/secrets/..",
            "/run/berth/",
            "/run/secrets2",
        ] {
            assert!(
                open(bad).unwrap_err().contains("not one of berth's"),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_file_replaces_the_previous_one_whole_with_its_mode() {
        use std::os::unix::fs::MetadataExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = fd_calls::open_dir_at(libc::AT_FDCWD, tmp.path().to_str().unwrap()).unwrap();
        let file = tmp.path().join("TOKEN");
        write_replacing(&dir, "TOKEN", b"one", 0o644, None, "secret TOKEN").unwrap();
        write_replacing(&dir, "TOKEN", b"two", 0o400, None, "secret TOKEN").unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), b"two");
        assert_eq!(std::fs::metadata(&file).unwrap().mode() & 0o777, 0o400);
        let names: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().flatten().collect();
        assert_eq!(names.len(), 1, "a temporary file stayed");
        // A link where the file is goes, its target untouched.
        let target = tmp.path().join("target");
        std::fs::write(&target, "kept").unwrap();
        std::fs::remove_file(&file).unwrap();
        std::os::unix::fs::symlink(&target, &file).unwrap();
        write_replacing(&dir, "TOKEN", b"three", 0o400, None, "secret TOKEN").unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "kept");
        assert_eq!(std::fs::read(&file).unwrap(), b"three");
        remove(&dir, "TOKEN").unwrap();
        assert!(!file.exists());
    }
}
