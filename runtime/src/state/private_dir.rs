//! Folders of berth's store: created private to their owner, narrowed when an older version
//! made them wider, and the free space left on their filesystem.

use std::fs;
use std::io;
use std::path::Path;

use super::{check_owner, StateError};

/// Creates the folder `path` (and its parents) with mode 0700 for the folder itself, or
/// narrows an existing one to at most 0710 (environment folders of older versions were 0755):
/// environment folders hold `[env]` values, logs and the control socket, for their owner only.
pub fn create_private_dir(path: &Path) -> Result<(), StateError> {
    make_private_dir(path, true)
}

/// [`create_private_dir`] of a folder whose parent must already exist: the folder of one
/// environment in the home's `envs/`, which every process makes when it opens the home. A
/// missing parent means the home was removed while this process ran (a test's temporary
/// home, a user's `rm -rf`): [`StateError::HomeRemoved`], and nothing is made again there
/// (a detached `berth run` removal or `down` child would otherwise leave a new, empty home).
pub fn create_private_dir_in_place(path: &Path) -> Result<(), StateError> {
    make_private_dir(path, false)
}

fn make_private_dir(path: &Path, parents: bool) -> Result<(), StateError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let err = |source| StateError::CreateDir {
        path: path.to_path_buf(),
        source,
    };
    // The common case (every command after the first): a folder already private, seen with
    // one `lstat` (what the steps below end with anyway).
    if fs::symlink_metadata(path).is_ok_and(|m| m.is_dir() && m.permissions().mode() & 0o067 == 0) {
        return Ok(());
    }
    if let Some(parent) = path.parent().filter(|_| parents) {
        create_dir_all(parent)?;
    }
    match fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound && !parents => Err(StateError::HomeRemoved {
            path: path.parent().unwrap_or(path).to_path_buf(),
        }),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let m = fs::symlink_metadata(path).map_err(err)?;
            if !m.is_dir() {
                return Err(err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "it exists and is not a folder; remove it",
                )));
            }
            // Group search (0710) is how a container's mapped root reaches its rootfs.
            let mode = m.permissions().mode() & 0o777;
            if mode & 0o067 != 0 {
                check_owner(path)?;
                fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o710)).map_err(err)?;
            }
            Ok(())
        }
        Err(e) => Err(err(e)),
    }
}

/// Sets `path`'s permission bits to `mode` unless they already are (a no-op on every command
/// after the first).
pub fn set_mode(path: &Path, mode: u32) -> Result<(), StateError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = fs::symlink_metadata(path).map_err(|source| StateError::Permissions {
        path: path.to_path_buf(),
        mode,
        source,
    })?;
    if meta.permissions().mode() & 0o7777 == mode {
        return Ok(());
    }
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|source| {
        StateError::Permissions {
            path: path.to_path_buf(),
            mode,
            source,
        }
    })
}

/// Bytes an unprivileged writer may still use on the filesystem holding `path`
/// (`statvfs`: available blocks × fragment size).
pub fn free_bytes(path: &Path) -> io::Result<u64> {
    let st = nix::sys::statvfs::statvfs(path)?;
    Ok((st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64))
}

pub fn create_dir_all(path: &Path) -> Result<(), StateError> {
    // A folder that exists (the common case) costs one `stat`, not a failed `mkdir` and the
    // `stat` that `fs::create_dir_all` makes after it.
    if fs::metadata(path).is_ok_and(|m| m.is_dir()) {
        return Ok(());
    }
    fs::create_dir_all(path).map_err(|source| StateError::CreateDir {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{atomic_write, write_json_if_changed, FileLock, LockMode};

    #[test]
    fn state_files_and_environment_folders_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let env = d.path().join("envs/e1");
        create_private_dir(&env).unwrap();
        assert_eq!(mode(&env), 0o700);
        atomic_write(&env.join("env.json"), b"{}").unwrap();
        assert_eq!(mode(&env.join("env.json")), 0o600);
        drop(FileLock::acquire(&env.join("lock"), LockMode::Exclusive).unwrap());
        assert_eq!(mode(&env.join("lock")), 0o600);
        // Made by an older version: narrowed; group search (a mapped root's) is kept.
        fs::set_permissions(&env, fs::Permissions::from_mode(0o755)).unwrap();
        create_private_dir(&env).unwrap();
        assert_eq!(mode(&env), 0o710);
        fs::set_permissions(env.join("env.json"), fs::Permissions::from_mode(0o644)).unwrap();
        write_json_if_changed(&env.join("env.json"), &serde_json::json!({})).unwrap();
        write_json_if_changed(&env.join("env.json"), &serde_json::json!({})).unwrap();
        assert_eq!(mode(&env.join("env.json")), 0o600);
    }

    #[test]
    fn an_environment_folder_is_made_in_place_only_while_its_home_is_there() {
        let d = tempfile::tempdir().unwrap();
        let home = d.path().join("home");
        fs::create_dir_all(home.join("envs")).unwrap();
        create_private_dir_in_place(&home.join("envs/e1")).unwrap();
        create_private_dir_in_place(&home.join("envs/e1")).unwrap();
        // The home removed under a running process: an error naming it, nothing made again.
        fs::remove_dir_all(&home).unwrap();
        let e = create_private_dir_in_place(&home.join("envs/e1")).unwrap_err();
        assert!(matches!(e, StateError::HomeRemoved { .. }), "{e}");
        assert!(
            e.to_string()
                .contains(&home.join("envs").display().to_string()),
            "{e}"
        );
        assert!(!home.exists(), "the home was made again");
    }
}
