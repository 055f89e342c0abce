//! The berth home: where each kind of data lives (the layout in the module documentation of
//! [`crate::state`]), its creation and permissions, and the sweep of what killed commands left
//! in `tmp/`.

use std::fs;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::lock::{FileLock, LockMode};
use super::private_dir::{create_dir_all, set_mode};
use super::staging::{self, process_alive, remove_tree, staging_pid, unique_suffix, StagingDir};
use super::{check_owner, StateError};

/// File name of an environment's lock in its folder: every command that creates, changes or
/// removes the environment holds it exclusively (`up`, `down`, `destroy`, `snapshot`, gc).
pub const ENV_LOCK_FILE: &str = "lock";

/// A home folder as [`BerthHome::at`] remembers it: path, device, inode and birth time (a
/// folder made anew may get the inode number of a removed one, not its birth time).
type HomeIdentity = (PathBuf, u64, u64, Option<std::time::SystemTime>);

/// Homes whose layout this process made and checked (see [`BerthHome::at`]).
static PREPARED: std::sync::OnceLock<std::sync::Mutex<Vec<HomeIdentity>>> =
    std::sync::OnceLock::new();

fn home_identity(root: &Path, m: &fs::Metadata) -> HomeIdentity {
    use std::os::unix::fs::MetadataExt;
    (root.to_path_buf(), m.dev(), m.ino(), m.created().ok())
}

/// The root of berth's on-disk state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BerthHome {
    root: PathBuf,
}

impl BerthHome {
    /// The home chosen from the environment: `BERTH_HOME`, `/var/lib/berth` for root, or the
    /// user's XDG data folder. Creates the folder layout when missing.
    pub fn discover() -> Result<Self, StateError> {
        let home = Self::at(Self::locate()?)?;
        home.sweep_tmp();
        Ok(home)
    }

    /// The folder [`discover`](Self::discover) would use, without creating or changing it.
    pub fn locate() -> Result<PathBuf, StateError> {
        Ok(
            if let Some(h) = std::env::var_os("BERTH_HOME").filter(|v| !v.is_empty()) {
                PathBuf::from(h)
            } else if nix::unistd::geteuid().is_root() {
                PathBuf::from("/var/lib/berth")
            } else if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
                PathBuf::from(x).join("berth")
            } else if let Some(h) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
                PathBuf::from(h).join(".local/share/berth")
            } else {
                return Err(StateError::NoHome);
            },
        )
    }

    /// Removes what killed berth processes left in `tmp/`: staging folders and temporary
    /// files named `<purpose>-<pid>-<suffix>` whose process is gone (a `kill -9`, a crash,
    /// a power loss), and partial downloads nobody resumed for a day (a download in progress
    /// holds its lock and is never touched), and this user's private `/dev/shm` folders
    /// ([`super::ShmDir`]) of dead processes. Runs at the start of every command.
    pub fn sweep_tmp(&self) {
        super::shm_dir::sweep_shm_dirs(None);
        const STALE_PARTIAL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);
        let Ok(rd) = fs::read_dir(self.tmp_dir()) else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let path = e.path();
            if let Some(pid) = staging_pid(&name) {
                if !process_alive(pid) {
                    let _ = if path.is_dir() && !path.is_symlink() {
                        remove_tree(&path)
                    } else {
                        fs::remove_file(&path)
                    };
                }
            } else if let Some(hex) = name
                .strip_prefix("blob-")
                .and_then(|n| n.strip_suffix(".partial"))
            {
                let old = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > STALE_PARTIAL);
                if old {
                    let lock = self.locks_dir().join("blobs").join(hex);
                    if let Ok(Some(_held)) = FileLock::try_acquire(&lock, LockMode::Exclusive) {
                        let _ = fs::remove_file(&path);
                    }
                }
            }
        }
    }

    /// A home at an explicit path (tests), created when missing.
    pub fn at(root: impl Into<PathBuf>) -> Result<Self, StateError> {
        let root = root.into();
        let root = if root.is_relative() {
            std::env::current_dir()
                .map_err(|source| StateError::CreateDir {
                    path: root.clone(),
                    source,
                })?
                .join(root)
        } else {
            root
        };
        // One command opens its home several times (the CLI, the network, the container
        // backend): the layout is made and checked once per process and home folder (the
        // same folder: see `HomeIdentity`; a home removed and made anew is checked again).
        let identity = fs::metadata(&root).ok().map(|m| home_identity(&root, &m));
        let prepared = PREPARED.get_or_init(Default::default);
        if let Some(id) = &identity {
            if prepared.lock().is_ok_and(|p| p.contains(id)) {
                return Ok(BerthHome { root });
            }
        }
        // Someone else's home (BERTH_HOME pointing at root's /var/lib/berth): refused whole,
        // before anything is created in it or read from it.
        check_owner(&root)?;
        let home = BerthHome { root };
        // The environment folders are narrowed by garbage collection's full sweep (due in a
        // home of an older berth), not here: every command would read all of them.
        home.prepare_store(nix::unistd::geteuid().is_root())?;
        if let (Ok(m), Ok(mut p)) = (fs::metadata(&home.root), prepared.lock()) {
            p.push(home_identity(&home.root, &m));
        }
        Ok(home)
    }

    /// Keeps the store out of other local users' reach, as containerd and podman keep theirs:
    /// unpacked layers hold the images' setuid files and device nodes, and an environment's
    /// folder its writable layer. The home is `0711` for root (an environment's root, an
    /// unprivileged host uid, must still walk through it and `envs/` to its own folder, which
    /// the container backend gives it through the folder's group) and `0700` rootless (there
    /// the environment's root is the user); `layers/`, `blobs/`, `images/`, `tmp/`,
    /// `volumes/`, `kernels/` and `locks/` are `0700` (only berth's root-side processes open
    /// them); each `envs/<id>/` loses every permission for others. A home made by an older
    /// berth is tightened by its next command, without touching its content: the store's
    /// folders by [`BerthHome::at`], the environment folders by the full sweep of garbage
    /// collection ([`BerthHome::narrow_env_dirs`]; see [`BerthHome::gc_due`]).
    pub fn restrict_access(&self, as_root: bool) -> Result<(), StateError> {
        self.restrict_store(as_root)?;
        self.narrow_env_dirs()
    }

    /// The home, `envs/` and the store's folders, each with the mode it must have (`None`:
    /// any): traversable by the environments' mapped roots where they must reach in
    /// (`as_root`), private otherwise.
    fn store_dirs(&self, as_root: bool) -> [(PathBuf, Option<u32>); 10] {
        let traversable = if as_root { 0o711 } else { 0o700 };
        [
            (self.root.clone(), Some(traversable)),
            (self.root.join("blobs"), Some(0o700)),
            (self.blobs_dir(), None),
            (self.layers_dir(), Some(0o700)),
            (self.images_dir(), Some(0o700)),
            (self.envs_dir(), Some(traversable)),
            (self.volumes_dir(), Some(0o700)),
            (self.kernels_dir(), Some(0o700)),
            (self.tmp_dir(), Some(0o700)),
            (self.locks_dir(), Some(0o700)),
        ]
    }

    /// Makes the store's folders ([`BerthHome::store_dirs`]) and gives them their modes:
    /// one `lstat` for each folder already as it should be (every command after the first),
    /// else what a missing folder or one with other permissions needs.
    fn prepare_store(&self, as_root: bool) -> Result<(), StateError> {
        use std::os::unix::fs::PermissionsExt;
        for (dir, mode) in self.store_dirs(as_root) {
            let ready = fs::symlink_metadata(&dir).is_ok_and(|m| {
                m.is_dir() && mode.is_none_or(|want| m.permissions().mode() & 0o7777 == want)
            });
            if !ready {
                create_dir_all(&dir)?;
                if let Some(mode) = mode {
                    set_mode(&dir, mode)?;
                }
            }
        }
        // Each environment's folder goes to a block group of its own on ext4, not the one
        // where the home's other folders are and where a `destroy`, a prune or the removal of
        // a big run just freed thousands of inodes: without a journal, ext4 steps over those
        // one by one for every file created there for minutes after (host::dir_spread), and a
        // `berth run` creates about thirty (measured: 17 to 38 ms per run instead of 12 after
        // 20,000 files were deleted beside them). Flagged here, once per process, so a home of
        // an older berth gets it too. A placement hint: a filesystem without it, or a
        // refusal, changes nothing else.
        let _ = crate::host::dir_spread::spread_subfolders(&self.envs_dir());
        Ok(())
    }

    /// Gives the home, `envs/` and the store's folders their modes (see
    /// [`BerthHome::restrict_access`]).
    fn restrict_store(&self, as_root: bool) -> Result<(), StateError> {
        for (dir, mode) in self.store_dirs(as_root) {
            if let Some(mode) = mode {
                set_mode(&dir, mode)?;
            }
        }
        Ok(())
    }

    /// Takes every permission for others (and group read/write) from each `envs/<id>/`, as
    /// older versions made them 0755: one read of `envs/` and a stat per environment.
    pub fn narrow_env_dirs(&self) -> Result<(), StateError> {
        let Ok(envs) = fs::read_dir(self.envs_dir()) else {
            return Ok(());
        };
        for entry in envs.flatten() {
            let path = entry.path();
            // Relative to the open folder (no walk of the whole path), links not followed.
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o7777;
            if meta.is_dir() && mode & 0o067 != 0 {
                // Group search stays: the container backend gives it to the environment's root.
                set_mode(&path, mode & 0o710)?;
            }
        }
        Ok(())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs/sha256")
    }
    pub fn layers_dir(&self) -> PathBuf {
        self.root.join("layers")
    }
    pub fn images_dir(&self) -> PathBuf {
        self.root.join("images")
    }
    pub fn envs_dir(&self) -> PathBuf {
        self.root.join("envs")
    }
    pub fn volumes_dir(&self) -> PathBuf {
        self.root.join("volumes")
    }
    pub fn kernels_dir(&self) -> PathBuf {
        self.root.join("kernels")
    }
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }
    pub fn locks_dir(&self) -> PathBuf {
        self.root.join("locks")
    }
    /// The folder of one environment.
    pub fn env_dir(&self, env_id: &str) -> PathBuf {
        self.envs_dir().join(env_id)
    }
    /// The lock of one environment ([`ENV_LOCK_FILE`] in its folder).
    pub fn env_lock(&self, env_id: &str) -> PathBuf {
        self.env_dir(env_id).join(ENV_LOCK_FILE)
    }

    /// A fresh, uniquely named staging folder under `tmp/`, removed when the guard drops
    /// (unless [`StagingDir::keep`] is called after its content was renamed elsewhere).
    pub fn staging_dir(&self, purpose: &str) -> Result<StagingDir, StateError> {
        let path = self.tmp_dir().join(format!(
            "{purpose}-{}-{}",
            std::process::id(),
            unique_suffix()
        ));
        create_dir_all(&path)?;
        Ok(StagingDir { path: Some(path) })
    }
}

/// Makes SIGINT and SIGTERM remove this process's staging folders and temporary files in the
/// home's `tmp/` before the process exits with 128 + the signal (see
/// [`staging::remove_staging_on_signals`]).
pub fn remove_staging_on_signals(home: &BerthHome) -> std::io::Result<()> {
    staging::remove_staging_on_signals(home.tmp_dir(), |pid| {
        super::shm_dir::sweep_shm_dirs(Some(pid))
    })
}

/// An identifier for an environment that is stable for one berth.toml: its name plus a short
/// hash of the file's absolute path, so two projects both named `web` do not collide.
pub fn env_id(name: &str, envfile: &Path) -> String {
    let digest = Sha256::digest(envfile.as_os_str().as_encoded_bytes());
    format!("{name}-{}", &hex::encode(digest)[..8])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::staging::staging_pid;

    #[test]
    fn home_layout_is_created_and_staging_is_cleaned() {
        let d = tempfile::tempdir().unwrap();
        let home = BerthHome::at(d.path().join("h")).unwrap();
        assert!(home.blobs_dir().is_dir() && home.layers_dir().is_dir() && home.tmp_dir().is_dir());
        let s = home.staging_dir("pull").unwrap();
        let sp = s.path().to_path_buf();
        fs::write(sp.join("x"), b"1").unwrap();
        drop(s);
        assert!(!sp.exists());
    }

    #[test]
    fn environment_folders_are_spread_over_the_filesystem_in_a_new_home_and_an_old_one() {
        use crate::host::dir_spread::spreads_subfolders;
        // /var/tmp: a disk filesystem here (ext4), where the flag exists.
        let d = tempfile::tempdir_in("/var/tmp").unwrap();
        let home = BerthHome::at(d.path().join("new")).unwrap();
        if spreads_subfolders(&home.envs_dir()).unwrap().is_none() {
            eprintln!("skipped: the filesystem of /var/tmp has no FS_TOPDIR_FL (not ext2/3/4)");
            return;
        }
        assert_eq!(spreads_subfolders(&home.envs_dir()).unwrap(), Some(true));
        // A home an older berth made: its layout complete, `envs/` without the flag.
        let old = BerthHome {
            root: d.path().join("old"),
        };
        for (dir, _) in old.store_dirs(nix::unistd::geteuid().is_root()) {
            fs::create_dir_all(dir).unwrap();
        }
        assert_eq!(spreads_subfolders(&old.envs_dir()).unwrap(), Some(false));
        let home = BerthHome::at(old.root()).unwrap();
        assert_eq!(spreads_subfolders(&home.envs_dir()).unwrap(), Some(true));
    }

    #[test]
    fn another_users_home_is_refused_naming_its_owner() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root to become another user; CI runs as root");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(d.path(), fs::Permissions::from_mode(0o755)).unwrap();
        assert!(check_owner(d.path()).is_ok(), "root manages every home");
        // SAFETY: the child only calls setresuid and this crate's code, then _exit.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let nobody = nix::unistd::Uid::from_raw(65534);
                let code = if nix::unistd::setresuid(nobody, nobody, nobody).is_err() {
                    10
                } else {
                    match BerthHome::at(d.path()) {
                        Err(StateError::NotYours { owner, .. }) if owner.contains("uid 0") => 0,
                        _ => 1,
                    }
                };
                // SAFETY: leaving the forked child without unwinding.
                unsafe { libc::_exit(code) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                let st = nix::sys::wait::waitpid(child, None).unwrap();
                assert_eq!(st, nix::sys::wait::WaitStatus::Exited(child, 0));
            }
        }
        assert!(
            fs::read_dir(d.path()).unwrap().next().is_none(),
            "nothing was created in the refused home"
        );
    }

    #[test]
    fn the_store_is_private_and_an_old_home_is_tightened_without_data_loss() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("h");
        let home = BerthHome::at(&root).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        fs::create_dir_all(home.layers_dir().join("abc/bin")).unwrap();
        fs::write(home.layers_dir().join("abc/bin/tool"), b"x").unwrap();
        fs::create_dir_all(home.env_dir("e-1").join("upper")).unwrap();
        for p in [
            root.clone(),
            home.layers_dir(),
            home.envs_dir(),
            home.env_dir("e-1"),
            root.join("blobs"),
        ] {
            fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        }
        for as_root in [true, false] {
            home.restrict_access(as_root).unwrap();
            let top = if as_root { 0o711 } else { 0o700 };
            assert_eq!(mode(&root), top);
            assert_eq!(mode(&home.envs_dir()), top);
            for p in [home.layers_dir(), root.join("blobs"), home.tmp_dir()] {
                assert_eq!(mode(&p), 0o700, "{}", p.display());
            }
            assert_eq!(mode(&home.env_dir("e-1")), 0o710);
        }
        assert_eq!(
            fs::read(home.layers_dir().join("abc/bin/tool")).unwrap(),
            b"x"
        );
        assert!(home.env_dir("e-1").join("upper").is_dir());
    }

    #[test]
    fn a_home_is_prepared_once_per_process_and_again_when_made_anew() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("h");
        let home = BerthHome::at(&root).unwrap();
        // Opened again by the same process: the layout is not made again.
        fs::remove_dir(home.kernels_dir()).unwrap();
        BerthHome::at(&root).unwrap();
        assert!(!home.kernels_dir().exists(), "prepared once per process");
        // The home removed and made anew (another inode): prepared again.
        fs::remove_dir_all(&root).unwrap();
        fs::create_dir(&root).unwrap();
        let again = BerthHome::at(&root).unwrap();
        for dir in [again.envs_dir(), again.tmp_dir(), again.kernels_dir()] {
            assert!(dir.is_dir(), "{} made again", dir.display());
        }
    }

    #[test]
    fn the_next_command_removes_what_dead_processes_left_in_tmp() {
        let d = tempfile::tempdir().unwrap();
        let home = BerthHome::at(d.path()).unwrap();
        let tmp = home.tmp_dir();
        // A pid that cannot exist (above the kernel's pid_max limit).
        let dead = tmp.join("layer-4194305-1a2b");
        fs::create_dir_all(dead.join("usr/bin")).unwrap();
        fs::write(dead.join("usr/bin/x"), b"half").unwrap();
        fs::write(tmp.join("blob-import-4194305-ff"), b"half").unwrap();
        let live = home.staging_dir("layer").unwrap();
        let fresh_partial = tmp.join(format!("blob-{}.partial", "ab".repeat(32)));
        fs::write(&fresh_partial, b"resumable").unwrap();
        let old_partial = tmp.join(format!("blob-{}.partial", "cd".repeat(32)));
        fs::write(&old_partial, b"abandoned").unwrap();
        let long_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3 * 24 * 3600);
        fs::File::options()
            .write(true)
            .open(&old_partial)
            .unwrap()
            .set_modified(long_ago)
            .unwrap();
        let other = tmp.join("removing-abc");
        fs::create_dir(&other).unwrap();
        home.sweep_tmp();
        assert!(!dead.exists(), "a dead process's staging folder stays");
        assert!(!tmp.join("blob-import-4194305-ff").exists());
        assert!(
            live.path().exists(),
            "this process's staging folder was removed"
        );
        assert!(fresh_partial.exists(), "a resumable download was removed");
        assert!(!old_partial.exists(), "a day-old partial download stays");
        assert!(other.exists(), "a name without a pid was touched");
        assert_eq!(staging_pid("layer-12-ab"), Some(12));
        assert_eq!(staging_pid("build-upper-12-ab"), Some(12));
        assert_eq!(staging_pid("removing-abc"), None);
        assert_eq!(staging_pid("blob-ab.partial"), None);
    }

    #[test]
    fn env_ids_differ_by_path() {
        let a = env_id("web", Path::new("/a/berth.toml"));
        let b = env_id("web", Path::new("/b/berth.toml"));
        assert_ne!(a, b);
        assert!(a.starts_with("web-") && a.len() == "web-".len() + 8);
    }
}
