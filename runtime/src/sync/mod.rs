//! Live two-way sync of a host folder and a folder inside an environment (`type = "sync"`
//! mounts, and VM source folders).
//!
//! Trees, ignore rules, the `Transport` trait, the local transport and the watcher are in
//! `berth-sync-transport` (shared with the VM agent) and re-exported here.
//!
//! | module | concern |
//! |---|---|
//! | [`base`] | the persisted last-synchronized state (snapshot + journal) |
//! | [`reconcile`] | the three-way decision per path, conflict rule |
//! | [`watch`] | debouncing of watch events |
//! | [`engine`] | `SyncEngine`: initial reconcile, continuous sync, flush |
//! | [`status`] | `status.json`, flush requests from other processes |
//!
//! Rules in short: both directions; a path changed on one side is propagated; changed on both
//! sides differently → newest mtime wins and the other version is kept as
//! `NAME.berth-conflict-<unix-time>`; an edit beats a deletion. Files are copied whole between local
//! folders, and as rsync-style deltas over the VM agent channel when large
//! (`berth_sync_transport::delta`), to a temporary file that is renamed into place only if the target did not
//! change meanwhile. Symlinks are copied as symlinks and never followed. Permission bits and
//! mtimes are kept; the environment side's owner is set by the transport
//! ([`local::LocalTransport::with_owner`]). FIFOs, sockets, devices and non-UTF-8 names are not
//! synchronized (listed in the status). Hard links are copied as separate files.
//! `.git` is synchronized like any folder unless the mount's `ignore` lists `.git/`.

pub mod base;
pub mod engine;
pub mod reconcile;
pub mod status;
pub mod watch;

pub use berth_sync_transport::{delta, ignore, local, remote, serve, transport, tree, wire};

use std::path::PathBuf;

pub use base::Side;
pub use engine::{SyncConfig, SyncEngine};
pub use local::LocalTransport;
pub use remote::RemoteTransport;
pub use status::{read_status, request_flush, SyncState, SyncStatus};
pub use transport::Transport;
pub use watch::Debounce;

/// The state folder of the sync for mount number `mount_index` (its position in the plan's
/// `mounts`) of environment `env_id`: `envs/<env-id>/sync/<mount-index>/`.
pub fn state_dir(home: &crate::state::BerthHome, env_id: &str, mount_index: usize) -> PathBuf {
    home.env_dir(env_id)
        .join("sync")
        .join(mount_index.to_string())
}

/// Errors of a sync as a whole.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error(transparent)]
    Transport(#[from] transport::TransportError),
    #[error(transparent)]
    Ignore(#[from] ignore::IgnoreError),
    #[error("no sync engine is running for {state_dir}; start the environment (`berth up`) first")]
    NotRunning { state_dir: PathBuf },
    #[error("another sync engine already runs for {state_dir}; stop it first")]
    Busy { state_dir: PathBuf },
    #[error("{what} did not finish within {secs} s; see `berth status` for the sync's state")]
    Timeout { what: String, secs: u64 },
    #[error("sync {name:?} failed: {message}")]
    Failed { name: String, message: String },
}
