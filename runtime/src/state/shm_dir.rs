//! Private folders on the tmpfs `/dev/shm` for what must never touch a disk (a build step's
//! secret, an agent socket's folder): 0700, named `berth-<purpose>-<pid>-<hex>` like the
//! staging folders under `tmp/`, removed on drop, and swept by the next command when their
//! process died without dropping them (a `kill -9` in the middle of a build step).

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};

use super::staging::{process_alive, remove_tree, staging_pid, unique_suffix};

const SHM: &str = "/dev/shm";
const PREFIX: &str = "berth-";

/// A 0700 folder on `/dev/shm` of this process, removed on drop.
#[derive(Debug)]
pub struct ShmDir(PathBuf);

impl ShmDir {
    /// A new folder for `purpose` (lowercase letters, digits and `-`). Fails when `/dev/shm`
    /// is not a tmpfs: what goes in must not reach a disk.
    pub fn new(purpose: &str) -> io::Result<ShmDir> {
        ShmDir::new_in(Path::new(SHM), purpose)
    }

    fn new_in(base: &Path, purpose: &str) -> io::Result<ShmDir> {
        let fs_type = nix::sys::statfs::statfs(base)
            .map_err(|e| io::Error::other(format!("{}: {e}", base.display())))?
            .filesystem_type();
        if fs_type != nix::sys::statfs::TMPFS_MAGIC {
            return Err(io::Error::other(format!(
                "{} is not a tmpfs",
                base.display()
            )));
        }
        let p = base.join(format!(
            "{PREFIX}{purpose}-{}-{}",
            std::process::id(),
            unique_suffix()
        ));
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&p)
            .map_err(|e| io::Error::other(format!("cannot create {}: {e}", p.display())))?;
        Ok(ShmDir(p))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ShmDir {
    fn drop(&mut self) {
        let _ = remove_tree(&self.0);
    }
}

/// Removes this user's `/dev/shm/berth-*` folders whose process is gone (`only_pid`: those
/// of that process alone, alive or not, for a process that is stopping). Folders of other
/// users are never touched, nor anything that is not a folder.
pub fn sweep_shm_dirs(only_pid: Option<i32>) {
    sweep_in(Path::new(SHM), only_pid);
}

fn sweep_in(base: &Path, only_pid: Option<i32>) {
    let Ok(rd) = fs::read_dir(base) else {
        return;
    };
    let me = nix::unistd::geteuid().as_raw();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(PREFIX).and_then(staging_pid) else {
            continue;
        };
        let stale = match only_pid {
            Some(p) => p == pid,
            None => !process_alive(pid),
        };
        // symlink_metadata: a link planted by someone else is neither followed nor removed.
        let ours = fs::symlink_metadata(e.path()).is_ok_and(|m| m.is_dir() && m.uid() == me);
        if stale && ours {
            let _ = remove_tree(&e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dead_pid() -> i32 {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        child.wait().unwrap();
        pid
    }

    #[test]
    fn a_dead_processs_folders_are_swept_and_a_live_ones_and_other_names_stay() {
        let base = tempfile::tempdir().unwrap();
        let dead = base
            .path()
            .join(format!("berth-secret-{}-ab12", dead_pid()));
        let live = base
            .path()
            .join(format!("berth-secret-{}-cd34", std::process::id()));
        let foreign = base
            .path()
            .join(format!("other-secret-{}-ab12", dead_pid()));
        for d in [&dead, &live, &foreign] {
            fs::create_dir(d).unwrap();
            fs::write(d.join("value"), "marker").unwrap();
        }
        sweep_in(base.path(), None);
        assert!(!dead.exists(), "a dead process's folder stays");
        assert!(live.exists() && foreign.exists());
        sweep_in(base.path(), Some(std::process::id() as i32));
        assert!(!live.exists(), "a stopping process's own folder stays");
        assert!(foreign.exists());
    }

    #[test]
    fn a_new_folder_is_private_and_goes_with_its_guard_on_a_tmpfs_only() {
        if nix::sys::statfs::statfs(SHM)
            .map(|s| s.filesystem_type() != nix::sys::statfs::TMPFS_MAGIC)
            .unwrap_or(true)
        {
            eprintln!("skipped: {SHM} is not a tmpfs here");
            return;
        }
        let d = ShmDir::new("test").unwrap();
        let p = d.path().to_path_buf();
        let mode = fs::metadata(&p).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700);
        assert!(
            staging_pid(
                p.file_name()
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .strip_prefix(PREFIX)
                    .unwrap()
            ) == Some(std::process::id() as i32)
        );
        drop(d);
        assert!(!p.exists());
        // A folder on a disk is refused: the target dir of the build is not a tmpfs.
        let disk = Path::new(env!("CARGO_MANIFEST_DIR"));
        if nix::sys::statfs::statfs(disk).unwrap().filesystem_type()
            != nix::sys::statfs::TMPFS_MAGIC
        {
            assert!(ShmDir::new_in(disk, "test").is_err());
        }
    }
}
