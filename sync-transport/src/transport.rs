//! "The other side" of a sync, as the engine sees it. The engine only ever talks to two
//! [`Transport`]s (host and environment) and never touches paths itself, so the same engine
//! drives a local folder, a container's mount namespace (`/proc/<pid>/root/<target>` or a helper
//! inside it) or a VM's agent channel.
//!
//! Every path is relative to the synced root ([`crate::tree`]); a transport must refuse to
//! resolve any symlink on the way to a path, so nothing outside the root is ever read or written.
//! Writes are two-phase: [`Transport::stage_file`] writes a temporary file beside the target and
//! [`Transport::commit`] renames it over the target only if the target is still what the
//! engine last saw — a failed or interrupted transfer therefore never truncates a file, and an
//! edit made on that side during the transfer is not overwritten.

use std::io::{self, Read};

use crate::ignore::IgnoreRules;
use crate::tree::{Entry, Scan};

/// Errors of one transport operation.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("{side}: {op} {path:?}: {source}")]
    Io {
        side: String,
        op: &'static str,
        path: String,
        source: io::Error,
    },
    /// The path changed between the engine's look and the operation (it will be looked at
    /// again when its change event arrives).
    #[error("{side}: {path:?} changed while it was being synchronized; it will be retried")]
    Changed { side: String, path: String },
    /// A folder to remove still holds entries (usually ignored ones); it is kept.
    #[error("{side}: folder {path:?} is not empty; kept")]
    NotEmpty { side: String, path: String },
    /// A path component is a symlink or the path is not normal: refused, never followed.
    #[error("{side}: {path:?} goes through a symlink or leaves the synced folder; refused")]
    Escapes { side: String, path: String },
    /// The OS limit on inotify watches was reached.
    #[error("{side}: the inotify watch limit is reached ({detail}); raise it with `sysctl fs.inotify.max_user_watches=524288` (and persist it in /etc/sysctl.d/); berth falls back to polling meanwhile")]
    WatchLimit { side: String, detail: String },
    #[error("{side}: cannot watch for changes: {detail}")]
    Watch { side: String, detail: String },
}

impl TransportError {
    /// Whether the error means "look again later" rather than a real failure.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            TransportError::Changed { .. } | TransportError::NotEmpty { .. }
        ) || matches!(self, TransportError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

/// A file or symlink written under a temporary name, not yet visible under its real name.
pub struct Staged {
    /// The relative path it will get.
    pub rel: String,
    /// The temporary file's name in the same folder.
    pub temp_name: String,
    /// Transport-private state kept from staging to commit (the local transport keeps the
    /// folder's descriptor, so the rename happens in the folder the file was written in).
    pub handle: Option<Box<dyn std::any::Any + Send>>,
}

impl std::fmt::Debug for Staged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Staged")
            .field("rel", &self.rel)
            .field("temp_name", &self.temp_name)
            .finish()
    }
}

/// A file opened for copying.
pub trait SourceFile: Read + Send {
    /// The file's entry as it is now (the local transport asks the open descriptor), to tell
    /// whether it changed while it was read.
    fn entry_now(&mut self) -> io::Result<Entry>;
}

/// What a watcher reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// Something at `rel` changed. `deep` means whatever is below it may have changed too
    /// (a folder created, renamed or removed), so the subtree must be rescanned.
    Changed { rel: String, deep: bool },
    /// Events were lost (queue overflow): everything must be rescanned.
    Rescan,
    /// The watcher failed or hit a limit; the engine should fall back to polling.
    Failed { message: String, limit: bool },
}

/// Receives watch events; called from the watcher's own thread.
pub type EventSink = Box<dyn Fn(WatchEvent) + Send + Sync>;

/// Hands a function to a watcher's own thread, which runs it once it has passed every event
/// queued before the call to the sink: a message the function sends on the channel the sink
/// feeds arrives after the events of every change made before the call.
pub type Barrier = Box<dyn Fn(Box<dyn FnOnce() + Send>) + Send + Sync>;

/// A running watcher; dropping it stops the watch.
pub struct Watching {
    pub guard: Box<dyn Send>,
    /// `Some(reason)` when the watcher polls instead of using inotify.
    pub polling: Option<String>,
    /// For a watcher whose events are complete (inotify: the kernel queues an event before
    /// the change's system call returns), its [`Barrier`]; `None` for the polling watcher and
    /// for a watcher reached over the wire.
    pub barrier: Option<Barrier>,
}

/// One side of a sync.
pub trait Transport: Send + Sync {
    /// A short description for messages (`host /src/app`, `env 4711:/work`).
    fn describe(&self) -> String;

    /// Entries at and below `rel` (`""` = the whole tree; the root itself is not listed),
    /// skipping what `rules` ignore (plus what `.gitignore` files met on the way ignore) and
    /// never following a symlink. A missing `rel` gives an empty scan.
    fn scan(&self, rel: &str, rules: &IgnoreRules) -> Result<Scan, TransportError>;

    /// The entry at `rel` (`lstat`), `None` when missing or of a kind not synchronized.
    fn stat(&self, rel: &str) -> Result<Option<Entry>, TransportError>;

    /// [`Self::stat`] of many paths, in order. A transport that can do better than one lookup
    /// at a time (the local one opens each folder once for its consecutive paths) overrides it.
    fn stat_many(&self, rels: &[&str]) -> Vec<Result<Option<Entry>, TransportError>> {
        rels.iter().map(|r| self.stat(r)).collect()
    }

    /// Hex sha256 of the file at `rel`; `None` when it is not a regular file.
    fn hash(&self, rel: &str) -> Result<Option<String>, TransportError>;

    /// Opens the file at `rel` for reading (refusing symlinks). Returns its entry at opening.
    fn read_file(&self, rel: &str) -> Result<(Entry, Box<dyn SourceFile>), TransportError>;

    /// [`Self::read_file`] of a file whose entry the caller just looked up (`seen`): a
    /// transport may return `seen` as the entry instead of looking again. The caller compares
    /// it with [`SourceFile::entry_now`] after reading, as always, so a change between the
    /// look and the opening makes the copy start over.
    fn read_file_seen(
        &self,
        rel: &str,
        _seen: &Entry,
    ) -> Result<(Entry, Box<dyn SourceFile>), TransportError> {
        self.read_file(rel)
    }

    /// Writes `data` to a temporary file beside `rel` (creating missing parent folders), with
    /// permission bits `mode` and modification time `mtime_ns`.
    fn stage_file(
        &self,
        rel: &str,
        data: &mut dyn Read,
        mode: u32,
        mtime_ns: i64,
    ) -> Result<Staged, TransportError>;

    /// Creates a symlink to `target` under a temporary name beside `rel`.
    fn stage_symlink(&self, rel: &str, target: &str) -> Result<Staged, TransportError>;

    /// Renames a staged entry over its target, provided the target is still `expect`
    /// (`None`: must not exist). Returns the entry now at the target.
    /// On [`TransportError::Changed`] the staged entry is removed.
    fn commit(&self, staged: Staged, expect: Option<&Entry>) -> Result<Entry, TransportError>;

    /// Removes a staged entry that will not be committed.
    fn discard(&self, staged: Staged);

    /// Removes the file, symlink or empty folder at `rel`, provided it is still `expect`.
    fn remove(&self, rel: &str, expect: &Entry) -> Result<(), TransportError>;

    /// Renames `from` to `to` (same side; used to keep a conflict's losing version).
    fn rename(&self, from: &str, to: &str) -> Result<(), TransportError>;

    /// Creates the folder `rel` with `mode`, or sets the mode of the existing folder.
    fn mkdir(&self, rel: &str, mode: u32) -> Result<Entry, TransportError>;

    /// Sets the permission bits of the file or folder at `rel`.
    fn set_mode(&self, rel: &str, mode: u32) -> Result<Entry, TransportError>;

    /// Until [`Self::release_folder`], calls made by this thread for entries directly in
    /// `folder` may keep that folder open (a copy thread working through one folder's
    /// files) instead of looking it up for each entry. A no-op unless a transport can do
    /// better.
    fn keep_folder(&self, _folder: &str) {}

    /// Ends [`Self::keep_folder`] for this thread.
    fn release_folder(&self) {}

    /// Starts watching the tree; events go to `sink` until the returned guard is dropped.
    /// `force_poll` asks for the polling watcher (used after the inotify limit was hit).
    fn watch(&self, sink: EventSink, force_poll: bool) -> Result<Watching, TransportError>;
}
