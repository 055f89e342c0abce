//! What the sync engine looks at for a change one side reported: the other side is not looked
//! up when the base says what it holds (every write checks its target before it acts), the
//! engine's own writes do not come back to it, and a change whose event is late is never
//! overwritten for it. Waits poll with generous upper bounds (they detect failures; they do
//! not measure speed).

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use berth_runtime::sync::ignore::IgnoreRules;
use berth_runtime::sync::transport::{
    EventSink, SourceFile, Staged, TransportError, WatchEvent, Watching,
};
use berth_runtime::sync::tree::{Entry, Scan};
use berth_runtime::sync::{LocalTransport, SyncConfig, SyncEngine, SyncState, Transport};

mod sync_dirs;
use sync_dirs::dirs;

const WAIT: Duration = Duration::from_secs(60);

/// A local transport that counts the lookups of single paths (`stat`, `stat_many`) and can
/// hold back its watcher's events for some paths (changes whose events are late).
struct Watched {
    inner: LocalTransport,
    lookups: AtomicUsize,
    hold: Arc<Mutex<Vec<String>>>,
    held: Arc<Mutex<Vec<WatchEvent>>>,
    sink: Mutex<Option<Arc<EventSink>>>,
}

impl Watched {
    fn new(label: &str, root: &Path) -> Watched {
        Watched {
            inner: LocalTransport::open(label, root).unwrap(),
            lookups: AtomicUsize::new(0),
            hold: Default::default(),
            held: Default::default(),
            sink: Mutex::new(None),
        }
    }

    /// Hands the events held back to the engine; none are held from now on.
    fn release_held(&self) {
        self.hold.lock().unwrap().clear();
        let sink = self.sink.lock().unwrap().clone().expect("watching");
        for e in self.held.lock().unwrap().drain(..) {
            sink(e);
        }
    }
}

impl Transport for Watched {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn scan(&self, rel: &str, rules: &IgnoreRules) -> Result<Scan, TransportError> {
        self.inner.scan(rel, rules)
    }
    fn stat(&self, rel: &str) -> Result<Option<Entry>, TransportError> {
        self.lookups.fetch_add(1, Ordering::Relaxed);
        self.inner.stat(rel)
    }
    fn stat_many(&self, rels: &[&str]) -> Vec<Result<Option<Entry>, TransportError>> {
        self.lookups.fetch_add(rels.len(), Ordering::Relaxed);
        self.inner.stat_many(rels)
    }
    fn hash(&self, rel: &str) -> Result<Option<String>, TransportError> {
        self.inner.hash(rel)
    }
    fn read_file(&self, rel: &str) -> Result<(Entry, Box<dyn SourceFile>), TransportError> {
        self.inner.read_file(rel)
    }
    fn read_file_seen(
        &self,
        rel: &str,
        seen: &Entry,
    ) -> Result<(Entry, Box<dyn SourceFile>), TransportError> {
        self.inner.read_file_seen(rel, seen)
    }
    fn stage_file(
        &self,
        rel: &str,
        data: &mut dyn Read,
        mode: u32,
        mtime_ns: i64,
    ) -> Result<Staged, TransportError> {
        self.inner.stage_file(rel, data, mode, mtime_ns)
    }
    fn stage_symlink(&self, rel: &str, target: &str) -> Result<Staged, TransportError> {
        self.inner.stage_symlink(rel, target)
    }
    fn commit(&self, staged: Staged, expect: Option<&Entry>) -> Result<Entry, TransportError> {
        self.inner.commit(staged, expect)
    }
    fn discard(&self, staged: Staged) {
        self.inner.discard(staged)
    }
    fn remove(&self, rel: &str, expect: &Entry) -> Result<(), TransportError> {
        self.inner.remove(rel, expect)
    }
    fn rename(&self, from: &str, to: &str) -> Result<(), TransportError> {
        self.inner.rename(from, to)
    }
    fn mkdir(&self, rel: &str, mode: u32) -> Result<Entry, TransportError> {
        self.inner.mkdir(rel, mode)
    }
    fn set_mode(&self, rel: &str, mode: u32) -> Result<Entry, TransportError> {
        self.inner.set_mode(rel, mode)
    }
    fn keep_folder(&self, folder: &str) {
        self.inner.keep_folder(folder)
    }
    fn release_folder(&self) {
        self.inner.release_folder()
    }
    fn watch(&self, sink: EventSink, force_poll: bool) -> Result<Watching, TransportError> {
        let sink: Arc<EventSink> = Arc::new(sink);
        *self.sink.lock().unwrap() = Some(sink.clone());
        let (hold, held) = (self.hold.clone(), self.held.clone());
        self.inner.watch(
            Box::new(move |e| {
                let held_back = matches!(&e, WatchEvent::Changed { rel, .. }
                    if hold.lock().unwrap().contains(rel));
                if held_back {
                    held.lock().unwrap().push(e);
                } else {
                    sink(e);
                }
            }),
            force_poll,
        )
    }
}

/// A running engine between two transports; stopped and joined on drop.
struct Running {
    engine: Arc<SyncEngine>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<(), String>>>,
}

impl Running {
    fn with(state: &Path, h: Arc<dyn Transport>, e: Arc<dyn Transport>) -> Running {
        let engine = Arc::new(SyncEngine::new(SyncConfig::new("test", state), h, e));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (engine, stop) = (engine.clone(), stop.clone());
            std::thread::spawn(move || engine.run(&stop).map_err(|e| e.to_string()))
        };
        let start = Instant::now();
        while engine.status().state != SyncState::Watching {
            assert!(start.elapsed() < WAIT, "the engine never started watching");
            std::thread::sleep(Duration::from_millis(10));
        }
        Running {
            engine,
            stop,
            thread: Some(thread),
        }
    }

    fn flush(&self) {
        self.engine.flush(WAIT).expect("flush");
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let r = t.join().unwrap();
            if !std::thread::panicking() {
                r.expect("engine run");
            }
        }
    }
}

fn read(p: &Path) -> String {
    fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Edits of files both sides agreed on, reported by the host's watcher alone (a burst looked
/// up ahead in a batch, then a single save), are copied without one lookup of the env side:
/// the base says what it holds and each commit checks it. The copies do not come back as
/// the env watcher's events either (each was a lookup of the env side before).
#[test]
fn host_edits_are_copied_without_looking_up_the_env_side() {
    let d = dirs();
    fs::create_dir(d.host.join("d")).unwrap();
    for i in 0..100 {
        fs::write(d.host.join(format!("d/f{i}")), format!("v1 {i}")).unwrap();
    }
    let host: Arc<dyn Transport> = Arc::new(LocalTransport::open("host", &d.host).unwrap());
    let env = Arc::new(Watched::new("env", &d.env));
    let r = Running::with(&d.state, host, env.clone());
    r.flush();
    assert_eq!(read(&d.env.join("d/f99")), "v1 99");
    env.lookups.store(0, Ordering::Relaxed);
    for i in 0..100 {
        fs::write(d.host.join(format!("d/f{i}")), format!("v2 {i}")).unwrap();
    }
    r.flush();
    fs::write(d.host.join("d/f7"), "v3").unwrap();
    r.flush();
    for i in 0..100 {
        let want = if i == 7 {
            "v3".to_string()
        } else {
            format!("v2 {i}")
        };
        assert_eq!(read(&d.env.join(format!("d/f{i}"))), want);
    }
    assert_eq!(
        env.lookups.load(Ordering::Relaxed),
        0,
        "lookups of the env side"
    );
    drop(r);
}

/// The env side edits a file (same size) and its event is late; the host changes only the
/// file's permission bits. A change of bits alone is applied without a check of the target,
/// so the engine looks at the env side first: the env edit wins as the newer one (the
/// host's version is kept as a conflict copy) instead of being overwritten by a chmod that
/// records it as agreed, which would leave the sides different for good.
#[test]
fn a_late_event_of_the_other_side_never_lets_a_change_be_lost() {
    let d = dirs();
    fs::write(d.host.join("f"), "base").unwrap();
    fs::write(d.host.join("g"), "base").unwrap();
    let host: Arc<dyn Transport> = Arc::new(LocalTransport::open("host", &d.host).unwrap());
    let env = Arc::new(Watched::new("env", &d.env));
    let r = Running::with(&d.state, host, env.clone());
    r.flush();
    // Same size, a later mtime: only its event would tell the engine.
    *env.hold.lock().unwrap() = vec!["f".into(), "g".into()];
    fs::write(d.env.join("f"), "BASE").unwrap();
    fs::set_permissions(d.host.join("f"), fs::Permissions::from_mode(0o600)).unwrap();
    // The host edits g while the env side edits it too (event late as well): the commit's
    // check finds the env edit, and both versions are kept.
    fs::write(d.env.join("g"), "env edit").unwrap();
    fs::write(d.host.join("g"), "host edit").unwrap();
    r.flush();
    env.release_held();
    r.flush();
    assert_eq!(read(&d.env.join("f")), "BASE");
    assert_eq!(
        read(&d.host.join("f")),
        "BASE",
        "the env edit reached the host"
    );
    let names = |dir: &Path| -> Vec<String> {
        let mut n: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        n.sort();
        n
    };
    assert_eq!(names(&d.host), names(&d.env));
    let copies: Vec<String> = names(&d.host)
        .into_iter()
        .filter(|n| n.contains(".berth-conflict-"))
        .collect();
    assert_eq!(copies.len(), 2, "{copies:?}");
    let mut kept: Vec<String> = copies.iter().map(|c| read(&d.host.join(c))).collect();
    kept.sort();
    assert_eq!(read(&d.host.join("g")), read(&d.env.join("g")));
    let mut g_versions = vec![read(&d.host.join("g"))];
    g_versions.extend(kept.iter().filter(|k| k.as_str() != "base").cloned());
    g_versions.sort();
    assert_eq!(g_versions, vec!["env edit", "host edit"]);
    assert!(kept.contains(&"base".to_string()), "{kept:?}");
    drop(r);
}
