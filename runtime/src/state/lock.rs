//! `flock(2)` locks on files ([`FileLock`]): the kernel drops them when the holder dies, so
//! a `kill -9` never leaves a stale lock behind.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use super::private_dir::create_dir_all;
use super::{check_owner, StateError};

/// Whether a lock is shared (readers) or exclusive (writers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    Shared,
    Exclusive,
}

/// An `flock(2)` lock on a file, released on drop or when the process dies.
#[derive(Debug)]
pub struct FileLock {
    /// Held open for the lock's lifetime: closing the descriptor releases the lock.
    _file: File,
    path: PathBuf,
}

impl FileLock {
    /// Blocks until the lock is held.
    pub fn acquire(path: &Path, mode: LockMode) -> Result<Self, StateError> {
        let file = Self::open(path)?;
        flock(&file, mode, false).map_err(|source| StateError::Lock {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(FileLock {
            _file: file,
            path: path.to_path_buf(),
        })
    }

    /// Takes the lock if free; `Ok(None)` when another process holds it.
    pub fn try_acquire(path: &Path, mode: LockMode) -> Result<Option<Self>, StateError> {
        let file = Self::open(path)?;
        match flock(&file, mode, true) {
            Ok(()) => Ok(Some(FileLock {
                _file: file,
                path: path.to_path_buf(),
            })),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(source) => Err(StateError::Lock {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether another process holds a lock on the file at `path`, asked without creating
    /// the file or its folder (`None`: there is no such file) and without keeping a lock.
    /// For a look from outside at a folder another process may remove meanwhile: taking
    /// the lock with [`try_acquire`](Self::try_acquire) would make the folder again.
    pub fn held_by_another(path: &Path) -> io::Result<Option<bool>> {
        let Some(file) = Self::open_existing(path)? else {
            return Ok(None);
        };
        match flock(&file, LockMode::Exclusive, true) {
            Ok(()) => Ok(Some(false)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Some(true)),
            Err(e) => Err(e),
        }
    }

    /// Blocks until no other process holds a lock on the file at `path`, without creating
    /// the file or its folder (returns at once when there is no such file) and without
    /// keeping a lock: for a wait on a folder its holder may remove meanwhile (as
    /// [`held_by_another`](Self::held_by_another) looks at one).
    pub fn wait_until_released(path: &Path) -> io::Result<()> {
        match Self::open_existing(path)? {
            Some(file) => flock(&file, LockMode::Exclusive, false),
            None => Ok(()),
        }
    }

    /// The file at `path` opened for a lock, or `None` when there is none: never made.
    fn open_existing(path: &Path) -> io::Result<Option<File>> {
        match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(path)
        {
            Ok(f) => Ok(Some(f)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether the locked file is still the one at [`path`](Self::path): `false` once
    /// someone removed (or replaced) it, after which the lock guards nothing. Locks on files
    /// that get removed (the last user cleans up) must re-acquire when this says `false`.
    pub fn is_current(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        match (self._file.metadata(), fs::metadata(&self.path)) {
            (Ok(held), Ok(now)) => held.dev() == now.dev() && held.ino() == now.ino(),
            _ => false,
        }
    }

    fn open(path: &Path) -> Result<File, StateError> {
        let open = || {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .custom_flags(libc::O_CLOEXEC)
                .open(path)
        };
        // The folder is made when the open finds it missing, not checked before every open.
        let opened = match open() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => match path.parent() {
                Some(dir) => {
                    create_dir_all(dir)?;
                    open()
                }
                None => Err(e),
            },
            opened => opened,
        };
        opened.map_err(|source| {
            if source.kind() == io::ErrorKind::PermissionDenied {
                if let Err(e) = check_owner(path.parent().unwrap_or(Path::new("/"))) {
                    return e;
                }
            }
            StateError::Lock {
                path: path.to_path_buf(),
                source,
            }
        })
    }
}

fn flock(file: &File, mode: LockMode, nonblocking: bool) -> io::Result<()> {
    let mut op = match mode {
        LockMode::Shared => libc::LOCK_SH,
        LockMode::Exclusive => libc::LOCK_EX,
    };
    if nonblocking {
        op |= libc::LOCK_NB;
    }
    loop {
        // SAFETY: flock on a file descriptor we own; no memory is passed.
        let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
        if rc == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_holder_is_seen_without_making_the_file_or_keeping_a_lock() {
        // `berth ls` looks at the lock of a run's folder that its removal process may move
        // out of `envs/` meanwhile: the look must not make `envs/<id>/lock` again.
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("env").join("lock");
        assert_eq!(FileLock::held_by_another(&p).unwrap(), None);
        assert!(!d.path().join("env").exists(), "the look made the folder");
        let held = FileLock::acquire(&p, LockMode::Exclusive).unwrap();
        // flock locks belong to the open file: another open conflicts, in this process too.
        assert_eq!(FileLock::held_by_another(&p).unwrap(), Some(true));
        drop(held);
        assert_eq!(FileLock::held_by_another(&p).unwrap(), Some(false));
        assert!(
            FileLock::try_acquire(&p, LockMode::Exclusive)
                .unwrap()
                .is_some(),
            "the look kept the lock"
        );
    }

    #[test]
    fn a_wait_for_release_blocks_while_held_and_makes_nothing() {
        // A command waits for a run's removal process, which moves the folder (and its
        // lock file) out of `envs/` before it lets the lock go: the wait must not make
        // `envs/<id>/lock` again.
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("env").join("lock");
        FileLock::wait_until_released(&p).unwrap();
        assert!(!d.path().join("env").exists(), "the wait made the folder");
        let held = FileLock::acquire(&p, LockMode::Shared).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = {
            let p = p.clone();
            std::thread::spawn(move || {
                FileLock::wait_until_released(&p).unwrap();
                tx.send(()).unwrap();
            })
        };
        assert!(
            rx.recv_timeout(std::time::Duration::from_millis(200))
                .is_err(),
            "the wait returned while the lock was held"
        );
        drop(held);
        rx.recv_timeout(std::time::Duration::from_secs(10))
            .expect("the wait did not return once the lock was let go");
        waiter.join().unwrap();
        assert!(
            FileLock::try_acquire(&p, LockMode::Exclusive)
                .unwrap()
                .is_some(),
            "the wait kept the lock"
        );
    }

    #[test]
    fn exclusive_lock_excludes_and_is_released_on_drop() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("lock");
        let held = FileLock::acquire(&p, LockMode::Exclusive).unwrap();
        assert!(FileLock::try_acquire(&p, LockMode::Exclusive)
            .unwrap()
            .is_none());
        assert!(FileLock::try_acquire(&p, LockMode::Shared)
            .unwrap()
            .is_none());
        drop(held);
        let a = FileLock::try_acquire(&p, LockMode::Shared)
            .unwrap()
            .unwrap();
        let b = FileLock::try_acquire(&p, LockMode::Shared).unwrap();
        assert!(b.is_some());
        assert!(FileLock::try_acquire(&p, LockMode::Exclusive)
            .unwrap()
            .is_none());
        drop(a);
    }
}
