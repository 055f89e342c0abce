//! One side of a live sync, shared by berth on the host and `berth-agent` inside a VM.
//!
//! | module | concern |
//! |---|---|
//! | [`tree`] | entries and their metadata, relative paths, hashing |
//! | [`ignore`] | which paths are left alone (mount patterns + `.gitignore`) |
//! | [`transport`] | the `Transport` trait: one side of a sync |
//! | [`local`] | a transport for a folder reachable by path (host, `/proc/<pid>/root/…`, a VM guest's own folder) |
//! | [`watch`] | the watcher of a tree: inotify, or polling as a fallback |
//! | [`inotify`] | berth's recursive inotify watcher (one thread, only the events the engine needs) |
//! | [`own_renames`] | a local transport's renames into place, whose events its watcher drops |
//! | [`wire`] | the byte-stream protocol that carries a transport (frames, messages, errors) |
//! | [`serve`](mod@serve) | answers that protocol with any transport (`berth-agent sync-serve`) |
//! | [`remote`] | `RemoteTransport`: a transport on the far end of such a stream |
//! | [`delta`] | rsync-style block signatures and copy/literal ops for large files |
//!
//! The sync engine itself (three-way reconcile, base, debounce) lives in `berth-runtime`.

pub mod delta;
pub mod ignore;
pub mod inotify;
pub mod local;
pub mod own_renames;
pub mod remote;
pub mod serve;
pub mod transport;
pub mod tree;
pub mod watch;
pub mod wire;

pub use local::LocalTransport;
pub use remote::RemoteTransport;
pub use serve::serve;
pub use transport::Transport;
