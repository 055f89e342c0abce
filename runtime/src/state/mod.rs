//! Where berth keeps its data, how it writes it and how it serializes access.
//!
//! Layout under the berth home (`BERTH_HOME`, else `/var/lib/berth` for root, else
//! `$XDG_DATA_HOME/berth` or `~/.local/share/berth`):
//!
//! ```text
//! blobs/sha256/<hex>        content-addressed blobs, verified before they are renamed in
//! layers/<diff-id-hex>/     unpacked layers, read-only, shared by every image and environment
//! images/<ref-hash>.json    image reference → manifest digest → layer chain
//! envs/<env-id>/            one per environment: state.json, lock, control.sock, upper/, work/, logs/
//! volumes/<name>/           named volumes, kept across `destroy` unless `--volumes`
//! kernels/<version>/        VM kernels and modules
//! tmp/                      staging area on the same filesystem, so renames are atomic
//! locks/                    store-wide locks (image store)
//! watch/                    environments garbage collection watches (see `watch_list.rs`)
//! gc.json                   the boot in which the home was last swept whole
//! ```
//!
//! Every state file is written with [`atomic_write`]: write to a temporary file in the same
//! directory, fsync it, rename it over the target, fsync the directory. A reader therefore sees
//! the old or the new content, never a torn one, whatever kills the writer.
//!
//! Locks are `flock(2)` locks on files ([`FileLock`]); the kernel drops them when the holder
//! dies, so a `kill -9` never leaves a stale lock behind.

mod atomic_file;
mod beneath;
mod env_layers;
mod home;
mod lock;
mod private_dir;
mod shm_dir;
mod staging;
mod watch_list;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

pub use atomic_file::{
    atomic_write, read_json, replace_volatile, write_json, write_json_durable_once,
    write_json_if_changed, write_json_volatile,
};
pub use beneath::{
    fd_path, open_beneath, open_dir_nofollow, openat2, refuse_link, RESOLVE_BENEATH,
    RESOLVE_IN_ROOT, RESOLVE_NO_MAGICLINKS, RESOLVE_NO_SYMLINKS,
};
pub use env_layers::{EnvLayersInUse, ENV_RECORD_FILE};
pub use home::{env_id, remove_staging_on_signals, BerthHome, ENV_LOCK_FILE};
pub use lock::{FileLock, LockMode};
pub use private_dir::{
    create_dir_all, create_private_dir, create_private_dir_in_place, free_bytes, set_mode,
};
pub use shm_dir::{sweep_shm_dirs, ShmDir};
pub use staging::{remove_tree, unique_suffix, StagingDir};
pub use watch_list::{booted_at, GcDue, WatchList, Watched};

/// Errors about berth's own state directory.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot determine where berth keeps its data: neither BERTH_HOME, XDG_DATA_HOME nor HOME is set; set BERTH_HOME to a writable folder")]
    NoHome,
    #[error("cannot create berth's state folder {path}: {source}; check its permissions or set BERTH_HOME to a writable folder")]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("{path} is gone: berth's home was removed while this command ran; nothing was made in it again (run the command again to start over in a fresh home)")]
    HomeRemoved { path: PathBuf },
    #[error("cannot restrict {path} to mode {mode:04o} ({source}): berth keeps its store out of other users' reach; give the folder to the user running berth (`chown`) or set BERTH_HOME to a folder of your own")]
    Permissions {
        path: PathBuf,
        mode: u32,
        source: io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} is corrupt ({source}); remove it (or run `berth destroy`) and try again")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot lock {path}: {source}")]
    Lock { path: PathBuf, source: io::Error },
    #[error("{what} is busy: another berth command holds {path}; wait for it to finish")]
    Busy { what: String, path: PathBuf },
    #[error("permission denied: {path} belongs to {owner}, and berth keeps each user's environments private; use your own berth home (unset BERTH_HOME) or run berth as {owner}")]
    NotYours { path: PathBuf, owner: String },
}

/// The name of the user `uid` (or `uid N` when it has none), for messages.
pub fn user_name(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(u)) => format!("{} (uid {uid})", u.name),
        _ => format!("uid {uid}"),
    }
}

/// `Err(NotYours)` when `path` exists, belongs to another user, and this process is not root
/// (root manages every user's environments, as with any system service).
pub fn check_owner(path: &Path) -> Result<(), StateError> {
    use std::os::unix::fs::MetadataExt;
    let me = nix::unistd::geteuid();
    if me.is_root() {
        return Ok(());
    }
    // What the path names (a BERTH_HOME may be a link to the real folder).
    match fs::metadata(path) {
        Ok(m) if m.uid() != me.as_raw() => Err(StateError::NotYours {
            path: path.to_path_buf(),
            owner: user_name(m.uid()),
        }),
        _ => Ok(()),
    }
}

/// `source` as [`StateError::NotYours`] when it is a permission error on something of
/// another user's under `dir`, else as [`StateError::Read`] of `path`.
pub fn read_error(dir: &Path, path: &Path, source: io::Error) -> StateError {
    if source.kind() == io::ErrorKind::PermissionDenied {
        if let Err(e) = check_owner(dir) {
            return e;
        }
    }
    StateError::Read {
        path: path.to_path_buf(),
        source,
    }
}
