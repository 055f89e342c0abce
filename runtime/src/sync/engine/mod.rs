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

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::Read as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use envfile_spec::plan::MountPlan;

use super::base::{BaseEntry, BaseStore, Side};
use super::ignore::IgnoreRules;
use super::reconcile::{conflict_name, decide, Decision};
use super::status::{self, now_ms, SyncState, SyncStatus};
use super::transport::{Transport, TransportError, WatchEvent, Watching};
use super::tree::{file_name, is_within, parent, Entry, EntryKind, HashingReader, Tree};
use super::watch::{Batch, Debounce, Dirty, DirtyPath};
use super::SyncError;
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
    Watch(Side, WatchEvent),
    Flush(Sender<Result<(), String>>),
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

    /// Blocks until both sides are identical (a complete rescan found nothing left to do).
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

/// Flush passes before giving up on reaching a quiet state (changes keep arriving).
const MAX_FLUSH_PASSES: usize = 20;
/// Runs of at least this many file copies are copied by several threads.
const PARALLEL_COPIES_FROM: usize = 8;
/// Batches of at least this many paths have both sides' entries looked up by two threads.
const PREFETCH_FROM: usize = 64;
/// How long after a failed path everything is looked at again.
const FAILURE_RETRY: Duration = Duration::from_secs(5);
/// Remembered writes for echo suppression before the memory is cleared.
const MAX_ECHOES: usize = 200_000;
/// Attempts to copy a file that keeps changing while it is read.
const COPY_ATTEMPTS: usize = 5;

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

    fn start_watch(&mut self, side: Side, force_poll: bool) -> Result<(), SyncError> {
        let tx = Mutex::new(self.tx.clone());
        let sink = Box::new(move |ev: WatchEvent| {
            let _ = tx
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .send(Msg::Watch(side, ev));
        });
        self.watchers[idx(side)] = None;
        let w = self.side(side).watch(sink, force_poll)?;
        if let Some(reason) = &w.polling {
            let reason = reason.clone();
            // Keep a reason already given (the other side's watch limit, say): "polling
            // requested" after a failure would hide the message naming the sysctl.
            self.update_status(true, |s| {
                s.polling.get_or_insert(reason);
            });
        }
        self.watchers[idx(side)] = Some(w);
        Ok(())
    }

    fn run(&mut self, rx: &mpsc::Receiver<Msg>, stop: &AtomicBool) -> Result<(), SyncError> {
        // Watch first, so nothing changed during the initial scan is missed.
        let poll = self.cfg().force_poll;
        self.start_watch(Side::Host, poll)?;
        self.start_watch(Side::Env, poll)?;
        self.update_status(true, |s| s.state = SyncState::Scanning);
        self.full_pass(stop)?;
        self.first_pass = false;
        // Flush requests made before the start are served by the initial pass.
        let flushed = self.flushed;
        self.update_status(true, |s| {
            s.state = SyncState::Watching;
            s.pending = 0;
            s.flushed = flushed;
        });
        let mut waiters: Vec<Sender<Result<(), String>>> = Vec::new();
        let mut last_request_check = Instant::now();
        let debounce = self.cfg().debounce;
        while !stop.load(Ordering::Relaxed) {
            let wait = self
                .dirty
                .due_in(Instant::now(), debounce)
                .unwrap_or(Duration::from_millis(100))
                .min(Duration::from_millis(100));
            match rx.recv_timeout(wait) {
                Ok(Msg::Watch(side, ev)) => self.on_event(side, ev)?,
                Ok(Msg::Flush(r)) => waiters.push(r),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            let now = Instant::now();
            if self
                .dirty
                .due_in(now, debounce)
                .is_some_and(|d| d.is_zero())
            {
                let batch = self.dirty.take();
                if let Err(e) = self.apply_batch(batch, stop) {
                    // E.g. a side's folder became unreadable: report, look again in a second.
                    let msg = e.to_string();
                    self.update_status(true, |s| {
                        s.last_error = Some(msg);
                        s.state = SyncState::Watching;
                    });
                    self.rescan_at = Some(Instant::now() + Duration::from_secs(1));
                }
            }
            if self.rescan_at.is_some_and(|t| Instant::now() >= t) {
                self.rescan_at = None;
                self.dirty.add(None, WatchEvent::Rescan, Instant::now());
            }
            let mut requested = None;
            if now.duration_since(last_request_check) >= Duration::from_millis(100) {
                last_request_check = now;
                let n = status::read_flush_request(&self.cfg().state_dir);
                if n > self.flushed {
                    requested = Some(n);
                }
            }
            if !waiters.is_empty() || requested.is_some() {
                let r = self.flush_passes(rx, &mut waiters, stop);
                let mut failed_request = None;
                if let Some(n) = requested {
                    match &r {
                        Ok(()) => self.flushed = n,
                        Err(_) => {
                            // Report it to the requester, who then stops waiting.
                            failed_request = Some(n);
                            self.flushed = n;
                        }
                    }
                }
                let flushed = self.flushed;
                let error = r.clone().err();
                for w in waiters.drain(..) {
                    let _ = w.send(r.clone());
                }
                self.update_status(true, |s| {
                    if let Some(n) = failed_request {
                        s.flush_failed = n;
                    } else if requested.is_some() {
                        s.flushed = flushed;
                    }
                    if let Some(e) = error {
                        s.last_error = Some(format!("flush: {e}"));
                    }
                    s.state = SyncState::Watching;
                });
            }
        }
        Ok(())
    }

    fn finish(&mut self, result: &Result<(), SyncError>) {
        self.watchers = [None, None];
        let compact = self.base.compact();
        let ok = result.is_ok();
        self.update_status(true, |s| {
            if ok {
                s.state = SyncState::Stopped;
            }
            if let Err(e) = compact {
                s.last_error = Some(e.to_string());
            }
        });
    }

    fn on_event(&mut self, side: Side, ev: WatchEvent) -> Result<(), SyncError> {
        match ev {
            WatchEvent::Failed { message, limit } => {
                let msg = if limit {
                    TransportError::WatchLimit {
                        side: self.side(side).describe(),
                        detail: message,
                    }
                    .to_string()
                } else {
                    message
                };
                let polling = self.watchers[idx(side)]
                    .as_ref()
                    .is_some_and(|w| w.polling.is_some());
                if !polling {
                    self.start_watch(side, true)?;
                }
                self.update_status(true, |s| {
                    s.polling = Some(msg.clone());
                    s.last_error = Some(msg);
                });
                self.dirty.add(None, WatchEvent::Rescan, Instant::now());
            }
            ev => self.dirty.add(Some(side), ev, Instant::now()),
        }
        Ok(())
    }

    /// Full passes until one finds nothing to do: both sides are then identical.
    /// Flush requests that arrive meanwhile join `waiters` (this flush's last pass starts
    /// after them).
    fn flush_passes(
        &mut self,
        rx: &mpsc::Receiver<Msg>,
        waiters: &mut Vec<Sender<Result<(), String>>>,
        stop: &AtomicBool,
    ) -> Result<(), String> {
        for _ in 0..MAX_FLUSH_PASSES {
            self.update_status(true, |s| s.state = SyncState::Scanning);
            if let Err(e) = self.drop_covered_events(rx, waiters) {
                return Err(e.to_string());
            }
            match self.full_pass(stop) {
                Ok(p) if p.applied == 0 && p.retries == 0 => {
                    return match p.failure {
                        None => Ok(()),
                        Some(f) => Err(f),
                    }
                }
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
            if stop.load(Ordering::Relaxed) {
                return Err("the sync is stopping".into());
            }
        }
        Err(format!(
            "changes kept arriving during {MAX_FLUSH_PASSES} complete passes"
        ))
    }

    /// Before a full pass: takes every message already received and forgets the paths
    /// waiting for a batch. They describe changes made before the scan about to start, which
    /// sees their result; without this, a flush after a big burst would be followed by a
    /// batch re-reading every path of the burst (and of the engine's own writes) once more.
    /// Events still to come (changes made during the pass) are kept, as always.
    fn drop_covered_events(
        &mut self,
        rx: &mpsc::Receiver<Msg>,
        waiters: &mut Vec<Sender<Result<(), String>>>,
    ) -> Result<(), SyncError> {
        while let Ok(msg) = rx.try_recv() {
            match msg {
                Msg::Watch(side, ev) => self.on_event(side, ev)?,
                Msg::Flush(r) => waiters.push(r),
            }
        }
        let dropped = self.dirty.take();
        trace(format_args!(
            "full pass covers {} waiting paths{}",
            dropped.paths.len(),
            if dropped.rescan { " and a rescan" } else { "" }
        ));
        Ok(())
    }

    fn rebuild_rules(&mut self) -> bool {
        let new = self
            .mount_rules
            .with_gitignores(&[&self.gitignores[0], &self.gitignores[1]]);
        let changed = new.gitignore_texts() != self.rules.gitignore_texts();
        self.rules = new;
        changed
    }

    /// Scans both sides completely and reconciles every path.
    fn full_pass(&mut self, stop: &AtomicBool) -> Result<PassResult, SyncError> {
        let t = Instant::now();
        let r = self.full_pass_inner(stop);
        if let Ok(p) = &r {
            trace(format_args!(
                "full pass: {} applied, {} retries in {:?}",
                p.applied,
                p.retries,
                t.elapsed()
            ));
        }
        r
    }

    fn full_pass_inner(&mut self, stop: &AtomicBool) -> Result<PassResult, SyncError> {
        let t = Instant::now();
        let mut trees = [Tree::new(), Tree::new()];
        let mut skipped = Vec::new();
        let mut unreadable = Vec::new();
        // One scan per side: each scanner applies its own side's .gitignore files as it
        // descends; what only the other side's rules ignore is filtered out below. Both run
        // at once (each mostly waits for its own side's filesystem or channel).
        let scans = {
            let (host, env, rules) = (&self.engine.host, &self.engine.env, &self.rules);
            std::thread::scope(|s| {
                let h = s.spawn(|| host.scan("", rules));
                let e = env.scan("", rules);
                let h = h.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
                [h, e]
            })
        };
        for (side, scan) in [Side::Host, Side::Env].into_iter().zip(scans) {
            let scan = scan?;
            if self.first_pass {
                for rel in &scan.leftovers {
                    // We hold the engine lock: temp files are from a killed engine.
                    if let Ok(Some(e)) = self.side(side).stat(rel) {
                        let _ = self.side(side).remove(rel, &e);
                    }
                }
            }
            skipped.extend(
                scan.skipped
                    .iter()
                    .map(|(p, why)| format!("{}: {p} ({why})", side.name())),
            );
            skipped.extend(scan.unreadable.iter().map(|p| {
                format!(
                    "{}: {p}/ (cannot be listed: permission denied)",
                    side.name()
                )
            }));
            unreadable.extend(scan.unreadable);
            self.gitignores[idx(side)] = scan.gitignores;
            trees[idx(side)] = scan.entries;
        }
        self.rebuild_rules();
        trace(format_args!(
            "full pass: both sides scanned in {:?}",
            t.elapsed()
        ));
        skipped.truncate(100);
        self.update_status(false, |s| s.skipped = skipped);
        let mut paths: BTreeSet<String> = trees[0].keys().cloned().collect();
        paths.extend(trees[1].keys().cloned());
        paths.extend(self.base.entries().keys().cloned());
        let paths = self.filter_ignored(paths, &trees);
        let paths = without_unknown(paths, &unreadable);
        trace(format_args!(
            "full pass: {} paths to decide after {:?}",
            paths.len(),
            t.elapsed()
        ));
        let [mut host, mut env] = trees;
        let (result, retry) = self.apply(paths, &mut host, &mut env, stop)?;
        let now = Instant::now();
        for r in retry {
            self.dirty.retry(r, now);
        }
        Ok(result)
    }

    /// Drops ignored paths; their base entries are forgotten (they are no longer synced).
    fn filter_ignored(&mut self, paths: BTreeSet<String>, trees: &[Tree; 2]) -> Vec<String> {
        let mut keep = Vec::with_capacity(paths.len());
        for p in paths {
            let is_dir = trees[0].get(&p).or(trees[1].get(&p)).map(|e| e.kind)
                == Some(EntryKind::Dir)
                || self.base.get(&p).map(|b| b.kind) == Some(EntryKind::Dir);
            if self.rules.is_ignored(&p, is_dir) {
                if self.base.get(&p).is_some() {
                    let _ = self.base.set(&p, None);
                }
            } else {
                keep.push(p);
            }
        }
        keep
    }

    /// Reconciles the paths a batch of events named.
    fn apply_batch(&mut self, batch: Batch, stop: &AtomicBool) -> Result<(), SyncError> {
        let t = Instant::now();
        let (n, rescan) = (batch.paths.len(), batch.rescan);
        let r = self.apply_batch_inner(batch, stop);
        trace(format_args!(
            "batch of {n} paths{} took {:?}",
            if rescan { " (rescan)" } else { "" },
            t.elapsed()
        ));
        r
    }

    fn apply_batch_inner(&mut self, batch: Batch, stop: &AtomicBool) -> Result<(), SyncError> {
        if batch.rescan {
            self.update_status(false, |s| s.state = SyncState::Scanning);
            self.full_pass(stop)?;
            self.update_status(true, |s| {
                s.state = SyncState::Watching;
                s.pending = 0;
            });
            return Ok(());
        }
        let mut trees = [Tree::new(), Tree::new()];
        let mut paths = BTreeSet::new();
        let mut scanned: HashSet<String> = HashSet::new();
        let mut gitignore_dirs = BTreeSet::new();
        let mut unreadable = Vec::new();
        // Deep paths first, shortest first, so their subtrees cover the rest.
        let mut order: Vec<(String, DirtyPath)> = batch.paths.into_iter().collect();
        order.sort_by_key(|(p, d)| (!d.deep, p.len()));
        let mut pre = self.prefetch_stats(&order);
        for (rel, dp) in order {
            if covered(&rel, &scanned) {
                continue;
            }
            if self.is_echo(&rel, dp, &pre) {
                continue;
            }
            let mut deep = dp.deep;
            if file_name(&rel) == ".gitignore" {
                gitignore_dirs.insert(parent(&rel).to_string());
            }
            let (Some(h), Some(e)) = (
                self.look(Side::Host, &rel, &mut pre),
                self.look(Side::Env, &rel, &mut pre),
            ) else {
                continue; // could not be read: unknown, not deleted; the error is in the status
            };
            let is_dir = |x: &Option<Entry>| x.as_ref().map(|e| e.kind) == Some(EntryKind::Dir);
            let base_dir = self.base.get(&rel).map(|b| b.kind) == Some(EntryKind::Dir);
            // A folder that appeared, vanished or changed kind: its subtree changed too.
            if is_dir(&h) != base_dir || is_dir(&e) != base_dir {
                deep = true;
            }
            if self
                .rules
                .is_ignored(&rel, is_dir(&h) || is_dir(&e) || base_dir)
            {
                continue;
            }
            if deep && (is_dir(&h) || is_dir(&e) || base_dir) {
                let scans =
                    [Side::Host, Side::Env].map(|side| self.side(side).scan(&rel, &self.rules));
                let [Ok(hs), Ok(es)] = scans else {
                    let msg = scans
                        .into_iter()
                        .find_map(|r| r.err())
                        .map(|e| e.to_string());
                    self.update_status(true, |s| s.last_error = msg);
                    continue;
                };
                for (side, scan) in [(Side::Host, hs), (Side::Env, es)] {
                    unreadable.extend(scan.unreadable.iter().cloned());
                    for (dir, text) in scan.gitignores {
                        if self.gitignores[idx(side)].get(&dir) != Some(&text) {
                            gitignore_dirs.insert(dir);
                        }
                    }
                    paths.extend(scan.entries.keys().cloned());
                    trees[idx(side)].extend(scan.entries);
                }
                paths.extend(self.base.paths_under(&rel));
                paths.insert(rel.clone());
                scanned.insert(rel);
            } else {
                if let Some(h) = h {
                    trees[0].insert(rel.clone(), h);
                }
                if let Some(e) = e {
                    trees[1].insert(rel.clone(), e);
                }
                paths.insert(rel);
            }
        }
        let paths = self.filter_ignored(paths, &trees);
        let paths = without_unknown(paths, &unreadable);
        let [mut host, mut env] = trees;
        let (_, retry) = self.apply(paths, &mut host, &mut env, stop)?;
        let now = Instant::now();
        for r in retry {
            self.dirty.retry(r, now);
        }
        if !gitignore_dirs.is_empty() && self.reload_gitignores(&gitignore_dirs) {
            // Rules changed: what they now include or exclude needs a complete look.
            self.dirty.add(None, WatchEvent::Rescan, now);
        }
        self.update_status(true, |s| {
            s.state = SyncState::Watching;
            s.pending = 0;
        });
        Ok(())
    }

    /// `stat` of one side for reconciling: `Some(None)` when the path is not in the tree
    /// (missing, or behind a symlink). `None` (error recorded) when the side could not be
    /// read: the path's state is then unknown and must not be taken for a deletion.
    fn look(&mut self, side: Side, rel: &str, pre: &mut Prefetched) -> Option<Option<Entry>> {
        let stat = match pre[idx(side)].remove(rel) {
            Some(r) => r,
            None => self.side(side).stat(rel),
        };
        match stat {
            Ok(e) => Some(e),
            Err(TransportError::Escapes { .. }) => Some(None),
            Err(e) => {
                let msg = e.to_string();
                self.update_status(true, |s| s.last_error = Some(msg));
                None
            }
        }
    }

    /// Whether the events for `rel` are only the echo of the engine's own write: reported by
    /// the side it wrote, which still holds exactly what was written. Folders are never
    /// treated as echoes (something may have been created inside before it was watched).
    fn is_echo(&mut self, rel: &str, dp: DirtyPath, pre: &Prefetched) -> bool {
        let Some((side, expected)) = self.echo.get(rel) else {
            return false;
        };
        let side = *side;
        let is_echo = dp.only_side() == Some(side)
            && expected.as_ref().map(|e| e.kind) != Some(EntryKind::Dir)
            && match pre[idx(side)].get(rel) {
                Some(Ok(now)) => same_or_both_missing(now.as_ref(), expected.as_ref()),
                Some(Err(_)) => false,
                None => match self.side(side).stat(rel) {
                    Ok(now) => same_or_both_missing(now.as_ref(), expected.as_ref()),
                    Err(_) => false,
                },
            };
        if !is_echo {
            self.echo.remove(rel);
        }
        is_echo
    }

    /// For a big batch, the `stat` of both sides of every path not below a deep path (those
    /// are usually covered by a scan of that folder), taken by one thread per side at once;
    /// for a likely echo of the engine's own write, only of the side it wrote. Small batches
    /// (a single save) are looked at path by path.
    fn prefetch_stats(&self, order: &[(String, DirtyPath)]) -> Prefetched {
        if order.len() < PREFETCH_FROM {
            return [HashMap::new(), HashMap::new()];
        }
        let deep: HashSet<String> = order
            .iter()
            .filter(|(_, d)| d.deep)
            .map(|(p, _)| p.clone())
            .collect();
        let mut todo: [Vec<&str>; 2] = [Vec::new(), Vec::new()];
        for (p, d) in order {
            if d.deep || covered(p, &deep) {
                continue;
            }
            let echo_side = self
                .echo
                .get(p)
                .map(|(side, _)| *side)
                .filter(|side| d.only_side() == Some(*side));
            for side in [Side::Host, Side::Env] {
                if echo_side.is_none_or(|e| e == side) {
                    todo[idx(side)].push(p.as_str());
                }
            }
        }
        let stat_all = |t: &Arc<dyn Transport>, paths: &[&str]| {
            paths
                .iter()
                .map(|p| (p.to_string(), t.stat(p)))
                .collect::<HashMap<_, _>>()
        };
        let (host, env) = (&self.engine.host, &self.engine.env);
        std::thread::scope(|s| {
            let h = s.spawn(|| stat_all(host, &todo[0]));
            let e = stat_all(env, &todo[1]);
            [h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)), e]
        })
    }

    fn expect_echo(&mut self, side: Side, rel: &str, entry: Option<Entry>) {
        if self.echo.len() >= MAX_ECHOES {
            self.echo.clear();
        }
        self.echo.insert(rel.to_string(), (side, entry));
    }

    /// Rereads the `.gitignore` of these folders on both sides; whether the rules changed.
    fn reload_gitignores(&mut self, dirs: &BTreeSet<String>) -> bool {
        for side in [Side::Host, Side::Env] {
            for dir in dirs {
                let rel = if dir.is_empty() {
                    ".gitignore".to_string()
                } else {
                    format!("{dir}/.gitignore")
                };
                let text = self.side(side).read_file(&rel).ok().and_then(|(_, mut r)| {
                    let mut s = String::new();
                    r.read_to_string(&mut s).ok().map(|_| s)
                });
                match text {
                    Some(t) => self.gitignores[idx(side)].insert(dir.clone(), t),
                    None => self.gitignores[idx(side)].remove(dir),
                };
            }
        }
        self.rebuild_rules()
    }

    /// Decides and applies every path. Returns what was done and the paths to retry.
    fn apply(
        &mut self,
        paths: Vec<String>,
        host: &mut Tree,
        env: &mut Tree,
        stop: &AtomicBool,
    ) -> Result<(PassResult, Vec<String>), SyncError> {
        let mut decisions = Vec::new();
        for p in paths {
            let mut d = decide(host.get(&p), env.get(&p), self.base.get(&p));
            if let Decision::NeedHash { host: hh, env: he } = d {
                if hh {
                    self.fill_hash(Side::Host, &p, host);
                }
                if he {
                    self.fill_hash(Side::Env, &p, env);
                }
                d = decide(host.get(&p), env.get(&p), self.base.get(&p));
                if let Decision::NeedHash { .. } = d {
                    continue; // vanished while hashed; its event will bring it back
                }
            }
            if self.cfg().host_to_env_only {
                d = host_wins(d);
            }
            if d != Decision::Nothing {
                decisions.push((p, d));
            }
        }
        let work = decisions
            .iter()
            .filter(|(_, d)| *d != Decision::Record)
            .count();
        if work > 0 {
            self.update_status(false, |s| {
                s.state = SyncState::Syncing;
                s.pending = work as u64;
            });
        }
        let mut retry = Vec::new();
        let mut failed: Option<String> = None;
        let mut applied = 0u64;
        let mut conflicts = 0u64;
        let mut blocked: HashSet<String> = HashSet::new();
        // Phase 1: removals (deepest first) and moving conflict losers aside.
        for (p, d) in decisions.iter().rev() {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let outcome = match *d {
                Decision::Propagate { from } => {
                    let (src, dst) = pick(from, host, env, p);
                    match dst {
                        Some(dst) if needs_removal(src, dst) => {
                            match self.side(from.other()).remove(p, dst) {
                                Ok(()) => {
                                    applied += 1;
                                    if src.is_none() {
                                        let _ = self.base.set(p, None);
                                        self.expect_echo(from.other(), p, None);
                                    }
                                    tree_mut(from.other(), host, env).remove(p);
                                    Outcome::Done
                                }
                                Err(TransportError::NotEmpty { .. }) => {
                                    // Holds ignored or new entries: kept, looked at again.
                                    blocked.insert(p.clone());
                                    Outcome::Done
                                }
                                Err(e) => self.transport_failure(e),
                            }
                        }
                        _ => Outcome::Done,
                    }
                }
                Decision::Conflict { winner } => {
                    let loser = winner.other();
                    match self.keep_loser(loser, p, host, env) {
                        Ok(()) => {
                            conflicts += 1;
                            Outcome::Done
                        }
                        Err(e) => self.transport_failure(e),
                    }
                }
                _ => Outcome::Done,
            };
            match outcome {
                Outcome::Done => {}
                Outcome::Retry => {
                    blocked.insert(p.clone());
                    retry.push(p.clone());
                }
                Outcome::Failed(m) => {
                    blocked.insert(p.clone());
                    failed = Some(m);
                }
            }
        }
        // Phase 2: creations and updates (parents first) and base records. Plain file copies
        // are collected and made afterwards, so that many of them run in parallel: their
        // folders exist by then (created in this loop, in path order, with their modes).
        let mut jobs = Vec::new();
        for (p, d) in decisions.iter().filter(|(p, _)| !blocked.contains(p)) {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            if let Some(job) = self.copy_job(p, *d, host, env) {
                jobs.push(job);
                continue;
            }
            let outcome = match *d {
                Decision::Record => {
                    let r = match (host.get(p), env.get(p)) {
                        (Some(h), Some(e)) => {
                            let hash = h.hash.clone().or_else(|| e.hash.clone());
                            Some(BaseEntry::agreed(h, e, hash))
                        }
                        _ => None,
                    };
                    let _ = self.base.set(p, r);
                    Outcome::Done
                }
                Decision::Propagate { from } | Decision::Conflict { winner: from } => {
                    match pick(from, host, env, p).0.cloned() {
                        None => Outcome::Done, // removal done in phase 1
                        Some(src) => match self.put(from, p, &src, host, env) {
                            Ok(()) => {
                                applied += 1;
                                Outcome::Done
                            }
                            Err(e) => self.transport_failure(e),
                        },
                    }
                }
                _ => Outcome::Done,
            };
            match outcome {
                Outcome::Done => {}
                Outcome::Retry => retry.push(p.clone()),
                Outcome::Failed(m) => failed = Some(m),
            }
        }
        // Phase 3: the file copies.
        let results = if jobs.len() >= PARALLEL_COPIES_FROM {
            self.copy_files(&jobs, stop)
        } else {
            let mut results = Vec::with_capacity(jobs.len());
            for job in &jobs {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let (src, dst) = match job.from {
                    Side::Host => (&self.engine.host, &self.engine.env),
                    Side::Env => (&self.engine.env, &self.engine.host),
                };
                results.push(copy_file(&**src, &**dst, &job.rel, job.dst_expect.as_ref()));
            }
            results
        };
        for (job, r) in jobs.into_iter().zip(results) {
            match r {
                Ok((s, d)) => {
                    applied += 1;
                    self.record_put(job.from, &job.rel, s, d, host, env);
                }
                Err(e) => match self.transport_failure(e) {
                    Outcome::Done => {}
                    Outcome::Retry => retry.push(job.rel),
                    Outcome::Failed(m) => failed = Some(m),
                },
            }
        }
        // Journal lines of this round reach the file before anything else is looked at.
        if let Err(e) = self.base.write_journal() {
            failed = Some(e.to_string());
        }
        if failed.is_some() && self.rescan_at.is_none() {
            self.rescan_at = Some(Instant::now() + FAILURE_RETRY);
        }
        let result = PassResult {
            applied: applied + conflicts,
            retries: retry.len() as u64,
            failure: failed.clone(),
        };
        self.update_status(false, |s| {
            s.applied += applied;
            s.conflicts += conflicts;
            if let Some(m) = failed {
                s.last_error = Some(m);
            }
        });
        Ok((result, retry))
    }

    fn transport_failure(&self, e: TransportError) -> Outcome {
        if e.is_transient() {
            Outcome::Retry
        } else {
            Outcome::Failed(e.to_string())
        }
    }

    fn fill_hash(&self, side: Side, rel: &str, tree: &mut Tree) {
        if let Some(e) = tree.get_mut(rel) {
            if e.kind == EntryKind::File && e.hash.is_none() {
                match self.side(side).hash(rel) {
                    Ok(Some(h)) => e.hash = Some(h),
                    _ => {
                        tree.remove(rel);
                    }
                }
            }
        }
    }

    /// Renames the losing side's version to `NAME.berth-conflict-<time>`.
    fn keep_loser(
        &mut self,
        loser: Side,
        rel: &str,
        host: &mut Tree,
        env: &mut Tree,
    ) -> Result<(), TransportError> {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let t = self.side(loser).clone();
        let tree = tree_mut(loser, host, env);
        let name = conflict_name(rel, secs, |c| {
            tree.contains_key(c) || matches!(t.stat(c), Ok(Some(_)))
        });
        t.rename(rel, &name)?;
        tree.remove(rel);
        Ok(())
    }

    /// Makes `to`'s side of `rel` equal to `src` (from side `from`) and records the base.
    fn put(
        &mut self,
        from: Side,
        rel: &str,
        src: &Entry,
        host: &mut Tree,
        env: &mut Tree,
    ) -> Result<(), TransportError> {
        let to = from.other();
        let dst_now = tree_mut(to, host, env).get(rel).cloned();
        let dst = self.side(to).clone();
        let (src_final, dst_final) = match src.kind {
            EntryKind::Dir => (src.clone(), dst.mkdir(rel, src.mode)?),
            EntryKind::Symlink => {
                let target = src.target.clone().unwrap_or_default();
                let staged = dst.stage_symlink(rel, &target)?;
                (src.clone(), dst.commit(staged, dst_now.as_ref())?)
            }
            EntryKind::File => {
                if self.mode_only_applies(from, rel, src, dst_now.as_ref()) {
                    let new = dst.set_mode(rel, src.mode)?;
                    let mut src = src.clone();
                    src.hash = self.base.get(rel).and_then(|b| b.hash.clone());
                    (src, new)
                } else {
                    let src_t = self.side(from).clone();
                    copy_file(&*src_t, &*dst, rel, dst_now.as_ref())?
                }
            }
        };
        self.record_put(from, rel, src_final, dst_final, host, env);
        Ok(())
    }

    /// Whether only the permission bits of an otherwise unchanged file differ (chmod, no copy).
    fn mode_only_applies(&self, from: Side, rel: &str, src: &Entry, dst: Option<&Entry>) -> bool {
        let (Some(b), Some(dst)) = (self.base.get(rel), dst) else {
            return false;
        };
        let to = from.other();
        b.kind == EntryKind::File
            && dst.kind == EntryKind::File
            && src.size == b.size
            && dst.size == b.size
            && src.mtime_ns == b.mtime(from)
            && dst.mtime_ns == b.mtime(to)
            && src.mode != dst.mode
    }

    /// Copies a batch of files with a few threads (they are independent: their folders
    /// exist). Each thread takes all the files of one folder at a time ([`folder_groups`]).
    /// Results come back in order; a job not run because `stop` was set reports `Changed`
    /// (looked at again later).
    fn copy_files(&self, jobs: &[CopyJob], stop: &AtomicBool) -> Vec<CopyResult> {
        let host: &dyn Transport = &*self.engine.host;
        let env: &dyn Transport = &*self.engine.env;
        let threads = copy_threads().min(jobs.len());
        let groups = folder_groups(jobs, threads);
        let next = AtomicUsize::new(0);
        let slots: Vec<Mutex<Option<CopyResult>>> = jobs.iter().map(|_| Mutex::new(None)).collect();
        std::thread::scope(|scope| {
            for _ in 0..threads {
                scope.spawn(|| loop {
                    let g = next.fetch_add(1, Ordering::Relaxed);
                    let Some(group) = groups.get(g) else { break };
                    for &k in group {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        let job = &jobs[k];
                        let (src, dst) = match job.from {
                            Side::Host => (host, env),
                            Side::Env => (env, host),
                        };
                        let r = copy_file(src, dst, &job.rel, job.dst_expect.as_ref());
                        *slots[k].lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
                    }
                });
            }
        });
        slots
            .into_iter()
            .zip(jobs)
            .map(|(slot, job)| {
                slot.into_inner()
                    .unwrap_or_else(|p| p.into_inner())
                    .unwrap_or_else(|| {
                        Err(TransportError::Changed {
                            side: "engine".into(),
                            path: job.rel.clone(),
                        })
                    })
            })
            .collect()
    }

    /// The copy job for a decision, when it is a plain file copy.
    fn copy_job(&self, rel: &str, d: Decision, host: &Tree, env: &Tree) -> Option<CopyJob> {
        let (Decision::Propagate { from } | Decision::Conflict { winner: from }) = d else {
            return None;
        };
        let (src, dst) = pick(from, host, env, rel);
        let src = src?;
        if src.kind != EntryKind::File || self.mode_only_applies(from, rel, src, dst) {
            return None;
        }
        Some(CopyJob {
            from,
            rel: rel.to_string(),
            dst_expect: dst.cloned(),
        })
    }

    /// Records a finished put: base, expected echo, and the destination tree.
    /// When the side written refused only setuid/setgid bits of a file (a host folder of
    /// root's drops them: `LocalTransport::without_root_setid`), the source side drops them
    /// too, so both sides agree instead of the bits being copied again on every pass. The
    /// source entry as it is now (unchanged if that chmod fails: the next pass retries).
    fn settle_setid(&self, from: Side, rel: &str, src: Entry, dst: &Entry) -> Entry {
        let setid = libc::S_ISUID | libc::S_ISGID;
        if src.kind != EntryKind::File
            || dst.kind != EntryKind::File
            || src.mode == dst.mode
            || (src.mode ^ dst.mode) & !setid != 0
            || dst.mode & setid & !src.mode != 0
        {
            return src;
        }
        match self.side(from).set_mode(rel, dst.mode) {
            Ok(mut now) if now.mode == dst.mode => {
                now.hash = src.hash;
                now
            }
            _ => src,
        }
    }

    fn record_put(
        &mut self,
        from: Side,
        rel: &str,
        src_final: Entry,
        dst_final: Entry,
        host: &mut Tree,
        env: &mut Tree,
    ) {
        let to = from.other();
        let src_final = self.settle_setid(from, rel, src_final, &dst_final);
        let (h, e) = match from {
            Side::Host => (&src_final, &dst_final),
            Side::Env => (&dst_final, &src_final),
        };
        let hash = src_final.hash.clone();
        let _ = self.base.set(rel, Some(BaseEntry::agreed(h, e, hash)));
        self.expect_echo(to, rel, Some(dst_final.clone()));
        tree_mut(to, host, env).insert(rel.to_string(), dst_final);
    }
}

/// Entries of a batch's paths looked up ahead, per side ([`Worker::prefetch_stats`]).
type Prefetched = [HashMap<String, Result<Option<Entry>, TransportError>>; 2];

/// Whether a path's entry now is the one expected (`None`: missing).
fn same_or_both_missing(now: Option<&Entry>, expected: Option<&Entry>) -> bool {
    match (now, expected) {
        (None, None) => true,
        (Some(n), Some(e)) => n.same_state(e),
        _ => false,
    }
}

/// The source entry copied (with its hash) and the entry written, or why not.
type CopyResult = Result<(Entry, Entry), TransportError>;

/// One file to copy.
struct CopyJob {
    from: Side,
    rel: String,
    dst_expect: Option<Entry>,
}

/// The jobs (indexes into `jobs`) grouped by folder, in order of first appearance, so that
/// each copy thread works in a folder of its own: the kernel serializes creating and renaming
/// entries of one folder on that folder's lock, and threads in the same folder spend their
/// time waiting (spinning) for it. With fewer folders than `threads`, every job is a group of
/// its own (sharing folders then still overlaps the reading and writing of contents).
fn folder_groups(jobs: &[CopyJob], threads: usize) -> Vec<Vec<usize>> {
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (k, job) in jobs.iter().enumerate() {
        let g = *index.entry(parent(&job.rel)).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[g].push(k);
    }
    if groups.len() < threads {
        return (0..jobs.len()).map(|k| vec![k]).collect();
    }
    groups
}

/// Copy threads: the machine's parallelism, at most 4.
fn copy_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 4)
}

/// Copies a file whole from `src` to `dst`, retrying while the source changes under the copy.
fn copy_file(
    src: &dyn Transport,
    dst: &dyn Transport,
    rel: &str,
    dst_expect: Option<&Entry>,
) -> Result<(Entry, Entry), TransportError> {
    let changed = || TransportError::Changed {
        side: src.describe(),
        path: rel.to_string(),
    };
    for _ in 0..COPY_ATTEMPTS {
        let (before, file) = match src.read_file(rel) {
            Ok(f) => f,
            Err(TransportError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                return Err(changed())
            }
            Err(e) => return Err(e),
        };
        let mut reader = HashingReader::new(file);
        let staged = dst.stage_file(rel, &mut reader, before.mode, before.mtime_ns)?;
        let (hash, bytes, mut file) = reader.finish_with_inner();
        // Written to while we read it? (A file replaced by a rename is fine: we copied
        // the old one whole, and the rename brings its own event.)
        let after = file.entry_now().ok();
        if bytes != before.size || after.is_none_or(|a| !a.same_state(&before)) {
            dst.discard(staged);
            continue;
        }
        let written = dst.commit(staged, dst_expect)?;
        let mut before = before;
        before.hash = Some(hash);
        return Ok((before, written));
    }
    Err(changed())
}

/// Timing lines on stderr when `BERTH_SYNC_TRACE` is set (for diagnosis and benchmarks).
fn trace(args: std::fmt::Arguments<'_>) {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *ON.get_or_init(|| std::env::var_os("BERTH_SYNC_TRACE").is_some()) {
        eprintln!("berth sync: {args}");
    }
}

/// Drops paths below folders whose content could not be read on some side.
fn without_unknown(paths: Vec<String>, unreadable: &[String]) -> Vec<String> {
    if unreadable.is_empty() {
        return paths;
    }
    paths
        .into_iter()
        .filter(|p| !unreadable.iter().any(|u| p != u && is_within(p, u)))
        .collect()
}

fn covered(rel: &str, scanned: &HashSet<String>) -> bool {
    let mut p = rel;
    loop {
        if scanned.contains(p) {
            return true;
        }
        if p.is_empty() {
            return false;
        }
        p = parent(p);
        if p.is_empty() {
            return scanned.contains("");
        }
    }
}

/// A one-way (host → environment) sync's decision: whatever differs, the host's state is
/// applied to the environment, and nothing is ever kept as a conflict copy.
fn host_wins(d: Decision) -> Decision {
    match d {
        Decision::Propagate { .. } | Decision::Conflict { .. } => {
            Decision::Propagate { from: Side::Host }
        }
        other => other,
    }
}

fn pick<'t>(
    from: Side,
    host: &'t Tree,
    env: &'t Tree,
    rel: &str,
) -> (Option<&'t Entry>, Option<&'t Entry>) {
    match from {
        Side::Host => (host.get(rel), env.get(rel)),
        Side::Env => (env.get(rel), host.get(rel)),
    }
}

fn tree_mut<'t>(side: Side, host: &'t mut Tree, env: &'t mut Tree) -> &'t mut Tree {
    match side {
        Side::Host => host,
        Side::Env => env,
    }
}

/// Whether the destination entry must be removed before the source's state can be written:
/// the source is gone, or one of them is a folder and the other is not (a file or symlink can
/// be renamed over a file or symlink, not over a folder).
fn needs_removal(src: Option<&Entry>, dst: &Entry) -> bool {
    match src {
        None => true,
        Some(s) => (s.kind == EntryKind::Dir) != (dst.kind == EntryKind::Dir),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_below_unreadable_folders_are_left_out() {
        let paths = ["a", "a/x", "a/y/z", "ab", "b/c"]
            .map(String::from)
            .to_vec();
        let kept = without_unknown(paths, &["a".to_string()]);
        assert_eq!(kept, vec!["a", "ab", "b/c"]);
    }

    #[test]
    fn covered_by_a_scanned_ancestor() {
        let scanned: HashSet<String> = ["a/b".to_string()].into();
        assert!(covered("a/b", &scanned));
        assert!(covered("a/b/c/d", &scanned));
        assert!(!covered("a/bc", &scanned));
        assert!(!covered("a", &scanned));
        let all: HashSet<String> = ["".to_string()].into();
        assert!(covered("x/y", &all));
    }

    #[test]
    fn copy_jobs_are_grouped_by_folder() {
        let job = |rel: &str| CopyJob {
            from: Side::Host,
            rel: rel.to_string(),
            dst_expect: None,
        };
        // Path order interleaves a folder's files with its subfolder's.
        let jobs: Vec<CopyJob> = ["a/1", "a/b/1", "a/b/2", "a/c", "top", "z/1", "a/d"]
            .into_iter()
            .map(job)
            .collect();
        assert_eq!(
            folder_groups(&jobs, 2),
            vec![vec![0, 3, 6], vec![1, 2], vec![4], vec![5]]
        );
        // Fewer folders than threads: one job per group.
        let jobs: Vec<CopyJob> = ["a/1", "a/2", "a/3"].into_iter().map(job).collect();
        assert_eq!(folder_groups(&jobs, 2), vec![vec![0], vec![1], vec![2]]);
        assert_eq!(folder_groups(&jobs, 1), vec![vec![0, 1, 2]]);
    }

    #[test]
    fn removal_needed_only_across_folder_and_non_folder() {
        let f = Entry {
            kind: EntryKind::File,
            mode: 0o644,
            size: 1,
            mtime_ns: 1,
            target: None,
            hash: None,
        };
        let mut l = f.clone();
        l.kind = EntryKind::Symlink;
        let mut d = f.clone();
        d.kind = EntryKind::Dir;
        assert!(needs_removal(None, &f));
        assert!(
            !needs_removal(Some(&l), &f),
            "rename replaces a file by a link"
        );
        assert!(needs_removal(Some(&d), &f));
        assert!(needs_removal(Some(&f), &d));
        assert!(!needs_removal(Some(&d), &d));
    }
}
