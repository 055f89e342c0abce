//! Writing state files so that a reader sees the old or the new content, never a torn one,
//! whatever kills the writer ([`atomic_write`], durable; [`replace_volatile`], without fsync),
//! and the JSON state files on top of them.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::staging::unique_suffix;
use super::{read_error, StateError};

/// Writes `bytes` to `path` atomically and durably: temp file in the same folder, fsync,
/// rename, fsync of the folder.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    replace_file(path, bytes, true)
}

/// Like [`atomic_write`] but without fsync: readers still see the old or the new content and a
/// killed writer leaves no torn file, but a power loss may lose the update. For runtime state
/// that means nothing after a reboot anyway (which processes run, which cgroups exist), where
/// two fsyncs per update would dominate the cost of starting an environment.
pub fn replace_volatile(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    replace_file(path, bytes, false)
}

fn replace_file(path: &Path, bytes: &[u8], durable: bool) -> Result<(), StateError> {
    let err = |source| StateError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path.file_name().unwrap_or(OsStr::new("state"));
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{}",
        file_name.to_string_lossy(),
        std::process::id(),
        unique_suffix()
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        if durable {
            f.sync_all()?;
        }
        fs::rename(&tmp, path)?;
        if durable {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(err)
}

/// Serializes `value` as pretty JSON and writes it with [`atomic_write`].
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<(), StateError> {
    atomic_write(path, &json_bytes(path, value)?)
}

/// Like [`write_json`], but leaves `path` alone when it is a regular file that already holds
/// exactly these bytes: an unchanged state file then costs a read instead of two fsyncs
/// (milliseconds each on a busy disk). Its content was made durable by the `atomic_write`
/// that put it there.
pub fn write_json_if_changed<T: serde::Serialize>(
    path: &Path,
    value: &T,
) -> Result<(), StateError> {
    let bytes = json_bytes(path, value)?;
    let meta = fs::symlink_metadata(path).ok();
    let is_file = meta.as_ref().is_some_and(|m| m.file_type().is_file());
    if is_file && fs::read(path).is_ok_and(|old| old == bytes) {
        // Written 0644 by an older version: narrowed like a rewrite would.
        use std::os::unix::fs::PermissionsExt;
        if meta.is_some_and(|m| m.permissions().mode() & 0o077 != 0) {
            fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(|source| {
                StateError::Write {
                    path: path.to_path_buf(),
                    source,
                }
            })?;
        }
        return Ok(());
    }
    atomic_write(path, &bytes)
}

fn json_bytes<T: serde::Serialize>(path: &Path, value: &T) -> Result<Vec<u8>, StateError> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|e| StateError::Write {
        path: path.to_path_buf(),
        source: io::Error::other(e),
    })?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// [`write_json`] through [`replace_volatile`]: no fsync.
pub fn write_json_volatile<T: serde::Serialize>(path: &Path, value: &T) -> Result<(), StateError> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|e| StateError::Write {
        path: path.to_path_buf(),
        source: io::Error::other(e),
    })?;
    bytes.push(b'\n');
    replace_volatile(path, &bytes)
}

/// Runtime state that a reboot makes meaningless (which interfaces, processes, throw-away
/// environments exist): written durably when the file is created, so that after a power cut
/// the record is there and readable for whoever cleans up, and replaced atomically but
/// without fsync afterwards (a killed writer still leaves the old or the new content; a
/// power cut may bring back the previous one, which then describes something equally gone).
pub fn write_json_durable_once<T: serde::Serialize>(
    path: &Path,
    value: &T,
) -> Result<(), StateError> {
    let bytes = json_bytes(path, value)?;
    let exists = fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_file());
    replace_file(path, &bytes, !exists)
}

/// Reads JSON written by [`write_json`]; `Ok(None)` when the file does not exist.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, StateError> {
    match fs::read(path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| StateError::Corrupt {
                    path: path.to_path_buf(),
                    source,
                })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(read_error(
            path.parent().unwrap_or(Path::new("/")),
            path,
            source,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unchanged_json_is_not_rewritten_but_changes_and_symlinks_are() {
        use std::os::unix::fs::MetadataExt;
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("env.json");
        write_json_if_changed(&p, &vec![1, 2]).unwrap();
        let ino = fs::metadata(&p).unwrap().ino();
        write_json_if_changed(&p, &vec![1, 2]).unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().ino(),
            ino,
            "same content: left alone"
        );
        write_json_if_changed(&p, &vec![3]).unwrap();
        assert_ne!(
            fs::metadata(&p).unwrap().ino(),
            ino,
            "new content: replaced"
        );
        assert_eq!(read_json::<Vec<i32>>(&p).unwrap(), Some(vec![3]));
        // A symlink holding the same bytes is replaced by a regular file, as write_json does.
        let target = t.path().join("elsewhere.json");
        fs::copy(&p, &target).unwrap();
        let link = t.path().join("link.json");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        write_json_if_changed(&link, &vec![3]).unwrap();
        assert!(fs::symlink_metadata(&link).unwrap().file_type().is_file());
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp_files() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.json");
        atomic_write(&p, b"one").unwrap();
        atomic_write(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn json_round_trip_and_corrupt_file_is_reported() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s.json");
        assert_eq!(read_json::<Vec<u32>>(&p).unwrap(), None);
        write_json(&p, &vec![1u32, 2]).unwrap();
        assert_eq!(read_json::<Vec<u32>>(&p).unwrap(), Some(vec![1, 2]));
        fs::write(&p, b"{not json").unwrap();
        assert!(matches!(
            read_json::<Vec<u32>>(&p),
            Err(StateError::Corrupt { .. })
        ));
    }
}
