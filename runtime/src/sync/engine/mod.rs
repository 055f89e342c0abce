//! The sync engine: an initial three-way reconcile of both sides against the persisted base,
//! then continuous sync of what the watchers report, until a stop flag is set.
//!
//! One thread decides everything (no two operations on one path ever race inside the engine);
//! watchers feed it through a channel. Each batch of dirty paths is looked at on both sides
//! (big batches: one lookup thread per side), decided by [`super::reconcile::decide`] and
//! applied in three phases: removals deepest-first; folders, symlinks and modes parents-first;
//! then the file copies, by a few threads that each take whole folders. Every applied change
//! is recorded in the base, and the round's journal lines are written when it ends, so a
//! `kill -9` at any point leaves a base that a restart merges correctly (changes of the round
//! cut short are found equal on both sides and recorded again).
//!
//! The phases, one file each: the loop over events and flushes ([`watch_loop`]), full passes
//! ([`full_scan`]), batches of dirty paths ([`dirty_batch`]), deciding and applying
//! ([`apply_phases`]) and the file copies ([`file_copy`]).

mod apply_phases;
mod dirty_batch;
mod file_copy;
mod full_scan;
mod watch_loop;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use envfile_spec::plan::MountPlan;

use super::base::{BaseStore, Side};
use super::ignore::IgnoreRules;
use super::status::{self, SyncState, SyncStatus};
use super::transport::{Transport, WatchEvent, Watching};
use super::tree::Entry;
use super::watch::{Debounce, Dirty};
use super::SyncError;
use crate::host::clock::now_ms;
use crate::state::{FileLock, LockMode};

/// How one sync is configured.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    /// A name for messages and `berth status` (usually the mount's target).
    pub name: String,
    /// Where the base, status and flush files live (e.g. `envs/<id>/sync/<n>/`).
    pub state_dir: PathBuf,
    /// Gitignore-style patterns not synchronized (the mount's `ignore`).
    pub ignore: Vec<String>,
    pub debounce: Debounce,
    /// Use the polling watcher on both sides from the start.
    pub force_poll: bool,
    /// Copy host → environment only (a `readonly` mount): the host's state wins every
    /// difference, so a change made inside is undone and never reaches the host.
    pub host_to_env_only: bool,
}

impl SyncConfig {
    pub fn new(name: &str, state_dir: impl Into<PathBuf>) -> Self {
        SyncConfig {
            name: name.to_string(),
            state_dir: state_dir.into(),
            ignore: Vec::new(),
            debounce: Debounce::default(),
            force_poll: false,
            host_to_env_only: false,
        }
    }

    /// The configuration for a `type = "sync"` mount.
    pub fn for_mount(mount: &MountPlan, state_dir: impl Into<PathBuf>) -> Self {
        let mut c = SyncConfig::new(&mount.target, state_dir);
        c.ignore = mount.ignore.clone();
        c.host_to_env_only = mount.readonly;
        c
    }
}

enum Msg {
    Watch(Side, WatchEvent, Instant),
    Flush(Sender<Result<(), String>>),
    /// A side's watcher has reported every change made before barrier number `n` was asked.
    Barrier(Side, u64),
}

/// A two-way sync between two transports. [`SyncEngine::run`] does the work on the calling
/// thread; [`SyncEngine::flush`] and [`SyncEngine::status`] may be called from other threads.
pub struct SyncEngine {
    config: SyncConfig,
    host: Arc<dyn Transport>,
    env: Arc<dyn Transport>,
    control: Mutex<Option<Sender<Msg>>>,
    status: Arc<Mutex<SyncStatus>>,
}

impl SyncEngine {
    pub fn new(config: SyncConfig, host: Arc<dyn Transport>, env: Arc<dyn Transport>) -> Self {
        let status = SyncStatus::new(&config.name, host.describe(), env.describe());
        SyncEngine {
            config,
            host,
            env,
            control: Mutex::new(None),
            status: Arc::new(Mutex::new(status)),
        }
    }

    /// Synchronizes until `stop` is set (checked at least every 100 ms and between transfers).
    /// Holds an exclusive lock on the state folder: one engine per sync.
    pub fn run(&self, stop: &AtomicBool) -> Result<(), SyncError> {
        let dir = &self.config.state_dir;
        crate::state::create_dir_all(dir)?;
        let _lock = FileLock::try_acquire(&dir.join("engine.lock"), LockMode::Exclusive)?
            .ok_or_else(|| SyncError::Busy {
                state_dir: dir.clone(),
            })?;
        let (tx, rx) = mpsc::channel();
        *self.control.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx.clone());
        let result = Worker::new(self, tx).and_then(|mut w| {
            let r = w.run(&rx, stop);
            w.finish(&r);
            r
        });
        *self.control.lock().unwrap_or_else(|p| p.into_inner()) = None;
        if let Err(e) = &result {
            let mut st = self.status.lock().unwrap_or_else(|p| p.into_inner());
            st.state = SyncState::Failed;
            st.last_error = Some(e.to_string());
            let _ = status::write_status(dir, &st);
        }
        result
    }

    /// Blocks until every change made before the call is synchronized: rounds over the paths
    /// the inotify watchers reported (a complete scan of both sides first when a side polls
    /// or is reached over the wire, or events may have been lost), until one finds nothing
    /// left to do (see `flush_passes`).
    pub fn flush(&self, timeout: Duration) -> Result<(), SyncError> {
        let tx = self
            .control
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| SyncError::NotRunning {
                state_dir: self.config.state_dir.clone(),
            })?;
        let (rtx, rrx) = mpsc::channel();
        tx.send(Msg::Flush(rtx))
            .map_err(|_| SyncError::NotRunning {
                state_dir: self.config.state_dir.clone(),
            })?;
        match rrx.recv_timeout(timeout) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(SyncError::Failed {
                name: self.config.name.clone(),
                message,
            }),
            Err(RecvTimeoutError::Timeout) => Err(SyncError::Timeout {
                what: "flush".into(),
                secs: timeout.as_secs(),
            }),
            Err(RecvTimeoutError::Disconnected) => Err(SyncError::NotRunning {
                state_dir: self.config.state_dir.clone(),
            }),
        }
    }

    /// The current status.
    pub fn status(&self) -> SyncStatus {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

struct Worker<'a> {
    engine: &'a SyncEngine,
    tx: Sender<Msg>,
    base: BaseStore,
    mount_rules: IgnoreRules,
    rules: IgnoreRules,
    gitignores: [BTreeMap<String, String>; 2],
    watchers: [Option<Watching>; 2],
    dirty: Dirty,
    /// What the engine last wrote per path and side, to recognize the watcher's echo.
    echo: HashMap<String, (Side, Option<Entry>)>,
    /// When to rescan everything after a failure (paths that failed get no new event).
    rescan_at: Option<Instant>,
    status_written: Option<Instant>,
    flushed: u64,
    first_pass: bool,
    /// The last watcher barrier asked for, and the last one each side answered.
    barrier_asked: u64,
    barrier_answered: [u64; 2],
}

fn idx(side: Side) -> usize {
    match side {
        Side::Host => 0,
        Side::Env => 1,
    }
}

/// What one reconcile pass did.
struct PassResult {
    /// Changes made on disk (copies, removals, folders, modes, conflict copies).
    applied: u64,
    /// Paths that changed while being synchronized and must be looked at again.
    retries: u64,
    /// The last failure that is not transient.
    failure: Option<String>,
    /// What was applied can only be confirmed by a complete look at both sides, not by the
    /// watchers' events: a conflict copy was made on one side only (the other side gets it
    /// on the next pass), or a `.gitignore` changed (the sides were scanned with the old
    /// rules, which may hide paths the new ones include).
    needs_full_pass: bool,
}

/// What applying one path achieved.
enum Outcome {
    Done,
    /// Must be looked at again (changed meanwhile).
    Retry,
    Failed(String),
}

impl<'a> Worker<'a> {
    fn new(engine: &'a SyncEngine, tx: Sender<Msg>) -> Result<Self, SyncError> {
        let base = BaseStore::open(&engine.config.state_dir)?;
        let mount_rules = IgnoreRules::new(&engine.config.ignore)?;
        let flushed = status::read_flush_request(&engine.config.state_dir);
        Ok(Worker {
            engine,
            tx,
            base,
            rules: mount_rules.clone(),
            mount_rules,
            gitignores: [BTreeMap::new(), BTreeMap::new()],
            watchers: [None, None],
            dirty: Dirty::default(),
            echo: HashMap::new(),
            rescan_at: None,
            status_written: None,
            flushed,
            first_pass: true,
            barrier_asked: 0,
            barrier_answered: [0, 0],
        })
    }

    fn side(&self, side: Side) -> &Arc<dyn Transport> {
        match side {
            Side::Host => &self.engine.host,
            Side::Env => &self.engine.env,
        }
    }

    fn cfg(&self) -> &SyncConfig {
        &self.engine.config
    }

    fn update_status(&mut self, force: bool, f: impl FnOnce(&mut SyncStatus)) {
        let snapshot = {
            let mut st = self.engine.status.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut st);
            st.updated_unix_ms = now_ms();
            st.clone()
        };
        let due = force
            || self
                .status_written
                .is_none_or(|t| t.elapsed() >= Duration::from_millis(200));
        if due {
            if let Err(e) = status::write_status(&self.cfg().state_dir, &snapshot) {
                let mut st = self.engine.status.lock().unwrap_or_else(|p| p.into_inner());
                st.last_error = Some(e.to_string());
            }
            self.status_written = Some(Instant::now());
        }
    }
}

/// Timing lines on stderr when `BERTH_SYNC_TRACE` is set (for diagnosis and benchmarks).
fn trace(args: std::fmt::Arguments<'_>) {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *ON.get_or_init(|| std::env::var_os("BERTH_SYNC_TRACE").is_some()) {
        eprintln!("berth sync: {args}");
    }
}
