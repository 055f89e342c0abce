//! End-to-end tests of the sync engine on two real host folders. Waits poll with generous
//! upper bounds (they detect failures; they do not measure speed).

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use berth_runtime::sync::{
    request_flush, LocalTransport, RemoteTransport, SyncConfig, SyncEngine, SyncState, Transport,
};
use sha2::{Digest, Sha256};
use std::os::unix::net::UnixStream;

mod sync_dirs;
use sync_dirs::{dirs, Dirs};

const WAIT: Duration = Duration::from_secs(60);

/// A running engine between two folders; stopped and joined on drop.
struct Running {
    engine: Arc<SyncEngine>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<(), String>>>,
}

impl Running {
    fn start(cfg: SyncConfig, host: &Path, env: &Path) -> Running {
        let h: Arc<dyn Transport> = Arc::new(LocalTransport::open("host", host).unwrap());
        let e: Arc<dyn Transport> = Arc::new(LocalTransport::open("env", env).unwrap());
        Running::with(cfg, h, e)
    }

    /// Like [`Running::start`], the env side reached through the wire protocol: a
    /// `RemoteTransport` talking to a server on `env` over a socketpair (as in a VM).
    fn start_remote(cfg: SyncConfig, host: &Path, env: &Path) -> Running {
        let h: Arc<dyn Transport> = Arc::new(LocalTransport::open("host", host).unwrap());
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let env = env.to_path_buf();
        std::thread::spawn(move || {
            let t = LocalTransport::open("env", &env).unwrap();
            let mut r = a.try_clone().unwrap();
            berth_sync_serve(&mut r, a, &t);
        });
        let e = RemoteTransport::connect(
            "env",
            Box::new(b.try_clone().unwrap()),
            Box::new(ShutdownOnDrop(b)),
        )
        .unwrap()
        .with_basis(h.clone());
        Running::with(cfg, h, Arc::new(e))
    }

    fn with(cfg: SyncConfig, h: Arc<dyn Transport>, e: Arc<dyn Transport>) -> Running {
        let engine = Arc::new(SyncEngine::new(cfg, h, e));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let engine = engine.clone();
            let stop = stop.clone();
            std::thread::spawn(move || engine.run(&stop).map_err(|e| e.to_string()))
        };
        let r = Running {
            engine,
            stop,
            thread: Some(thread),
        };
        wait_for("engine to start watching", || {
            r.engine.status().state == SyncState::Watching
        });
        r
    }

    fn flush(&self) {
        self.engine.flush(WAIT).expect("flush");
    }

    fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap().expect("engine run");
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn berth_sync_serve(r: &mut UnixStream, w: UnixStream, t: &LocalTransport) {
    if let Err(e) = berth_runtime::sync::serve::serve(r, Box::new(w), t) {
        eprintln!("sync server: {e}");
    }
}

/// The writing half of a socket; dropping it ends the stream for the peer.
struct ShutdownOnDrop(UnixStream);

impl std::io::Write for ShutdownOnDrop {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

impl Drop for ShutdownOnDrop {
    fn drop(&mut self) {
        let _ = self.0.shutdown(std::net::Shutdown::Write);
    }
}

fn cfg(d: &Dirs) -> SyncConfig {
    SyncConfig::new("test", &d.state)
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// kind, mode and content hash (or link target) of every entry below `root`.
fn digest(root: &Path) -> BTreeMap<String, String> {
    try_digest(root).unwrap()
}

/// [`digest`], or the error met when an entry vanished while it was read (the engine is
/// still at work).
fn try_digest(root: &Path) -> std::io::Result<BTreeMap<String, String>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) -> std::io::Result<()> {
        let mut names = fs::read_dir(dir)?.collect::<Result<Vec<_>, _>>()?;
        names.sort_by_key(|e| e.file_name());
        for e in names {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let m = fs::symlink_metadata(&p)?;
            let mode = m.permissions().mode() & 0o7777;
            if m.file_type().is_symlink() {
                out.insert(rel, format!("l {}", fs::read_link(&p)?.display()));
            } else if m.is_dir() {
                out.insert(rel, format!("d {mode:o}"));
                walk(root, &p, out)?;
            } else {
                let h = hex::encode(Sha256::digest(fs::read(&p)?));
                out.insert(rel, format!("f {mode:o} {h}"));
            }
        }
        Ok(())
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out)?;
    Ok(out)
}

fn assert_same(d: &Dirs) {
    let (h, e) = (digest(&d.host), digest(&d.env));
    if h != e {
        let only_h: Vec<_> = h
            .iter()
            .filter(|(k, v)| e.get(*k) != Some(v))
            .take(10)
            .collect();
        let only_e: Vec<_> = e
            .iter()
            .filter(|(k, v)| h.get(*k) != Some(v))
            .take(10)
            .collect();
        panic!("trees differ\nhost has: {only_h:?}\nenv has: {only_e:?}");
    }
}

fn read(p: &Path) -> Option<String> {
    fs::read_to_string(p).ok()
}

fn set_mtime(p: &Path, secs_ago: u64) {
    let f = fs::OpenOptions::new().write(true).open(p).unwrap();
    f.set_modified(SystemTime::now() - Duration::from_secs(secs_ago))
        .unwrap();
}

/// How a test reaches the env side: directly, or through the wire protocol.
type Start = fn(SyncConfig, &Path, &Path) -> Running;

/// Every kind of change made on one side shows up on the other, in both directions.
fn changes_propagate(from_host: bool) {
    changes_propagate_with(from_host, Running::start)
}

fn changes_propagate_with(from_host: bool, start: Start) {
    let d = dirs();
    let r = start(cfg(&d), &d.host, &d.env);
    let (a, b) = if from_host {
        (d.host.clone(), d.env.clone())
    } else {
        (d.env.clone(), d.host.clone())
    };
    // create
    fs::create_dir_all(a.join("src/deep")).unwrap();
    fs::write(a.join("src/deep/main.rs"), "fn main() {}\n").unwrap();
    wait_for("create", || {
        read(&b.join("src/deep/main.rs")).as_deref() == Some("fn main() {}\n")
    });
    // modify
    fs::write(a.join("src/deep/main.rs"), "fn main() { run() }\n").unwrap();
    wait_for("modify", || {
        read(&b.join("src/deep/main.rs")).as_deref() == Some("fn main() { run() }\n")
    });
    // chmod (executable bit)
    fs::write(a.join("run.sh"), "#!/bin/sh\n").unwrap();
    fs::set_permissions(a.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    wait_for("chmod", || {
        fs::metadata(b.join("run.sh")).is_ok_and(|m| m.permissions().mode() & 0o777 == 0o755)
    });
    fs::set_permissions(a.join("run.sh"), fs::Permissions::from_mode(0o700)).unwrap();
    wait_for("chmod again", || {
        fs::metadata(b.join("run.sh")).is_ok_and(|m| m.permissions().mode() & 0o777 == 0o700)
    });
    // symlinks, kept as symlinks (relative, absolute, dangling)
    symlink("deep/main.rs", a.join("src/link")).unwrap();
    symlink("/etc/hostname", a.join("abs")).unwrap();
    symlink("missing", a.join("dangling")).unwrap();
    wait_for("symlinks", || {
        fs::read_link(b.join("src/link")).is_ok_and(|t| t == Path::new("deep/main.rs"))
            && fs::read_link(b.join("abs")).is_ok_and(|t| t == Path::new("/etc/hostname"))
            && fs::read_link(b.join("dangling")).is_ok_and(|t| t == Path::new("missing"))
    });
    // rename a file and a folder
    fs::rename(a.join("run.sh"), a.join("start.sh")).unwrap();
    fs::rename(a.join("src"), a.join("lib")).unwrap();
    wait_for("rename", || {
        b.join("start.sh").exists()
            && !b.join("run.sh").exists()
            && b.join("lib/deep/main.rs").exists()
            && !b.join("src").exists()
    });
    // delete a file and a tree
    fs::remove_file(a.join("start.sh")).unwrap();
    fs::remove_dir_all(a.join("lib")).unwrap();
    wait_for("delete", || {
        !b.join("start.sh").exists() && !b.join("lib").exists()
    });
    r.flush();
    assert_same(&d);
    let st = r.engine.status();
    assert_eq!(st.conflicts, 0);
    assert_eq!(st.last_error, None);
    r.stop();
}

#[test]
fn host_changes_propagate_to_env() {
    changes_propagate(true);
}

#[test]
fn env_changes_propagate_to_host() {
    changes_propagate(false);
}

#[test]
fn initial_sync_of_10000_files() {
    let d = dirs();
    for i in 0..100 {
        let dir = d.host.join(format!("d{i:03}"));
        fs::create_dir(&dir).unwrap();
        for j in 0..100 {
            fs::write(dir.join(format!("f{j:03}.txt")), format!("{i}/{j}\n")).unwrap();
        }
    }
    // Some pre-existing identical and different files on the env side.
    fs::create_dir(d.env.join("d000")).unwrap();
    fs::write(d.env.join("d000/f000.txt"), "0/0\n").unwrap();
    fs::write(d.env.join("env-only.txt"), "e").unwrap();
    let r = Running::start(cfg(&d), &d.host, &d.env);
    r.flush();
    assert_same(&d);
    assert_eq!(digest(&d.env).len(), 100 * 100 + 100 + 1);
    assert_eq!(read(&d.host.join("env-only.txt")).as_deref(), Some("e"));
    r.stop();
    // A restart with an up-to-date base finds nothing to do.
    let r = Running::start(cfg(&d), &d.host, &d.env);
    r.flush();
    assert_eq!(r.engine.status().applied, 0);
    r.stop();
}

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git is installed");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn git_checkout_between_branches_converges() {
    let d = dirs();
    git(&d.host, &["init", "-q"]);
    for i in 0..40 {
        let dir = d.host.join(format!("m{i}"));
        fs::create_dir(&dir).unwrap();
        for j in 0..50 {
            fs::write(dir.join(format!("{j}.rs")), format!("// main {i} {j}\n")).unwrap();
        }
    }
    git(&d.host, &["add", "-A"]);
    git(&d.host, &["commit", "-qm", "main"]);
    git(&d.host, &["checkout", "-qb", "other"]);
    for i in 0..40 {
        let dir = d.host.join(format!("m{i}"));
        for j in 0..50 {
            match j % 5 {
                0 => fs::remove_file(dir.join(format!("{j}.rs"))).unwrap(),
                1 => fs::write(dir.join(format!("{j}.rs")), format!("// other {i} {j}\n")).unwrap(),
                2 => fs::rename(
                    dir.join(format!("{j}.rs")),
                    dir.join(format!("{j}.moved.rs")),
                )
                .unwrap(),
                _ => {}
            }
        }
        fs::create_dir(d.host.join(format!("o{i}"))).unwrap();
        for j in 0..25 {
            fs::write(
                d.host.join(format!("o{i}/{j}.rs")),
                format!("// new {i} {j}\n"),
            )
            .unwrap();
        }
    }
    git(&d.host, &["add", "-A"]);
    git(&d.host, &["commit", "-qm", "other"]);
    let r = Running::start(cfg(&d), &d.host, &d.env);
    r.flush();
    assert_same(&d);
    for branch in ["main", "other", "main", "other"] {
        git(&d.host, &["checkout", "-q", branch]);
        std::thread::sleep(Duration::from_millis(30));
    }
    r.flush();
    assert_same(&d);
    // The env side's checkout matches the commit exactly: git sees a clean tree there.
    let out = Command::new("git")
        .args(["status", "--porcelain"])
        .current_dir(&d.env)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "",
        "env checkout is clean"
    );
    assert!(d.env.join("o5/3.rs").exists() && !d.env.join("m5/0.rs").exists());
    r.stop();
}

/// One big round mixing what the copy phase must not reorder: new nested folders with their
/// modes (created before the files copied into them), files replaced by folders and folders
/// by files, removed and renamed folders, and updates — far more copies than one thread does.
#[test]
fn big_round_of_mixed_changes_converges_in_one_flush() {
    let d = dirs();
    for i in 0..30 {
        let dir = d.host.join(format!("a{i}"));
        fs::create_dir(&dir).unwrap();
        for j in 0..20 {
            fs::write(dir.join(format!("{j}")), format!("a {i} {j}")).unwrap();
        }
        fs::write(d.host.join(format!("file{i}")), format!("file {i}")).unwrap();
    }
    let r = Running::start(cfg(&d), &d.host, &d.env);
    r.flush();
    assert_same(&d);
    for i in 0..30 {
        let dir = d.host.join(format!("a{i}"));
        match i % 5 {
            0 => fs::remove_dir_all(&dir).unwrap(),
            1 => fs::rename(&dir, d.host.join(format!("renamed{i}"))).unwrap(),
            2 => {
                // A folder becomes a file.
                fs::remove_dir_all(&dir).unwrap();
                fs::write(&dir, format!("now a file {i}")).unwrap();
            }
            _ => {
                for j in 0..20 {
                    fs::write(dir.join(format!("{j}")), format!("a {i} {j} v2")).unwrap();
                }
            }
        }
        // A file becomes a folder of files, below a new nested folder with its own mode.
        let f = d.host.join(format!("file{i}"));
        fs::remove_file(&f).unwrap();
        fs::create_dir_all(f.join("x/y")).unwrap();
        fs::set_permissions(f.join("x"), fs::Permissions::from_mode(0o750)).unwrap();
        for j in 0..10 {
            fs::write(f.join(format!("x/y/{j}")), format!("deep {i} {j}")).unwrap();
        }
    }
    r.flush();
    assert_same(&d);
    let env = digest(&d.env);
    assert_eq!(env.get("file3/x").map(|s| s.as_str()), Some("d 750"));
    assert_eq!(
        read(&d.env.join("file3/x/y/9")).as_deref(),
        Some("deep 3 9")
    );
    assert_eq!(read(&d.env.join("a2")).as_deref(), Some("now a file 2"));
    assert_eq!(read(&d.env.join("renamed1/4")).as_deref(), Some("a 1 4"));
    assert_eq!(read(&d.env.join("a3/19")).as_deref(), Some("a 3 19 v2"));
    assert!(!d.env.join("a0").exists() && !d.env.join("a1").exists());
    assert!(
        env.keys().all(|k| !k.contains("berth-")),
        "no temp or conflict files"
    );
    r.stop();
    // The base journal of that round made it to disk: a restart finds nothing to do.
    let r = Running::start(cfg(&d), &d.host, &d.env);
    r.flush();
    assert_eq!(r.engine.status().applied, 0);
    r.stop();
}

/// A burst on both sides, synchronized by the watchers alone (no flush): big batches have
/// their entries looked up ahead by one thread per side, echoes of the engine's own writes
/// included.
#[test]
fn burst_on_both_sides_converges_without_a_flush() {
    let d = dirs();
    fs::create_dir(d.host.join("h")).unwrap();
    for i in 0..100 {
        fs::write(d.host.join(format!("h/{i}")), format!("h {i}")).unwrap();
    }
    let r = Running::start(cfg(&d), &d.host, &d.env);
    r.flush();
    for i in 0..300 {
        fs::write(d.host.join(format!("h/new{i}")), format!("new {i}")).unwrap();
        if i < 100 {
            if i % 2 == 0 {
                fs::remove_file(d.env.join(format!("h/{i}"))).unwrap();
            } else {
                fs::write(d.env.join(format!("h/{i}")), format!("env {i}")).unwrap();
            }
        }
    }
    wait_for(
        "both sides to converge",
        || matches!((try_digest(&d.host), try_digest(&d.env)), (Ok(h), Ok(e)) if h == e),
    );
    assert_eq!(read(&d.env.join("h/new299")).as_deref(), Some("new 299"));
    assert_eq!(read(&d.host.join("h/7")).as_deref(), Some("env 7"));
    assert!(!d.host.join("h/8").exists());
    r.stop();
}

#[test]
fn conflicting_edits_keep_both_versions() {
    conflicting_edits_keep_both_versions_with(Running::start)
}

fn conflicting_edits_keep_both_versions_with(start: Start) {
    let d = dirs();
    fs::write(d.host.join("notes.txt"), "base\n").unwrap();
    fs::write(d.host.join("gone.txt"), "base\n").unwrap();
    let r = start(cfg(&d), &d.host, &d.env);
    r.flush();
    r.stop();
    // Both sides edit while the engine is not running; env's edit is newer.
    fs::write(d.host.join("notes.txt"), "host edit\n").unwrap();
    set_mtime(&d.host.join("notes.txt"), 100);
    fs::write(d.env.join("notes.txt"), "env edit\n").unwrap();
    set_mtime(&d.env.join("notes.txt"), 10);
    // One side deletes what the other edits: the edit wins.
    fs::remove_file(d.host.join("gone.txt")).unwrap();
    fs::write(d.env.join("gone.txt"), "env kept editing\n").unwrap();
    let r = start(cfg(&d), &d.host, &d.env);
    r.flush();
    assert_same(&d);
    assert_eq!(
        read(&d.host.join("notes.txt")).as_deref(),
        Some("env edit\n")
    );
    let copies: Vec<_> = fs::read_dir(&d.host)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("notes.txt.berth-conflict-"))
        .collect();
    assert_eq!(copies.len(), 1, "{copies:?}");
    assert_eq!(
        read(&d.host.join(&copies[0])).as_deref(),
        Some("host edit\n")
    );
    assert_eq!(
        read(&d.host.join("gone.txt")).as_deref(),
        Some("env kept editing\n")
    );
    assert_eq!(r.engine.status().conflicts, 1);
    r.stop();
}

#[test]
fn ignored_paths_stay_on_their_side() {
    ignored_paths_stay_on_their_side_with(Running::start)
}

fn ignored_paths_stay_on_their_side_with(start: Start) {
    let d = dirs();
    let mut c = cfg(&d);
    c.ignore = vec!["target/".into(), "node_modules/".into()];
    fs::write(d.host.join(".gitignore"), "*.log\n/build/\n").unwrap();
    let r = start(c, &d.host, &d.env);
    fs::create_dir_all(d.host.join("target/debug")).unwrap();
    fs::write(d.host.join("target/debug/app"), "bin").unwrap();
    fs::write(d.host.join("debug.log"), "log").unwrap();
    fs::create_dir_all(d.env.join("web/node_modules/left-pad")).unwrap();
    fs::write(d.env.join("web/node_modules/left-pad/index.js"), "x").unwrap();
    fs::create_dir(d.env.join("build")).unwrap();
    fs::write(d.env.join("build/out.o"), "o").unwrap();
    fs::write(d.host.join("barrier"), "1").unwrap();
    wait_for("barrier", || d.env.join("barrier").exists());
    r.flush();
    assert!(d.env.join(".gitignore").exists());
    assert!(d.env.join("web").is_dir() && d.host.join("web").is_dir());
    for p in ["target", "debug.log"] {
        assert!(!d.env.join(p).exists(), "{p} copied to env");
    }
    for p in ["web/node_modules", "build"] {
        assert!(!d.host.join(p).exists(), "{p} copied to host");
    }
    // Removing the folder on the host leaves env's ignored content alone.
    fs::remove_dir_all(d.host.join("web")).unwrap();
    fs::write(d.host.join("barrier"), "2").unwrap();
    wait_for("barrier 2", || {
        read(&d.env.join("barrier")).as_deref() == Some("2")
    });
    r.flush();
    assert!(d.env.join("web/node_modules/left-pad/index.js").exists());
    // Un-ignoring via .gitignore makes build/ sync.
    fs::write(d.host.join(".gitignore"), "*.log\n").unwrap();
    wait_for("build synced after .gitignore change", || {
        d.host.join("build/out.o").exists()
    });
    r.stop();
}

#[test]
fn polling_fallback_syncs() {
    let d = dirs();
    let mut c = cfg(&d);
    c.force_poll = true;
    let r = Running::start(c, &d.host, &d.env);
    assert!(r.engine.status().polling.is_some());
    fs::write(d.host.join("a"), "1").unwrap();
    wait_for("polled change", || d.env.join("a").exists());
    fs::write(d.env.join("b"), "2").unwrap();
    wait_for("polled change back", || d.host.join("b").exists());
    r.stop();
}

/// A flush confirms its full pass by the watchers' events, not by a second complete scan.
/// With watchers that report nothing (polling once an hour), it must still converge: what
/// changed before the flush through its full pass, and what that pass leaves for a second
/// look (a conflict copy made on the loser's side only; paths a `.gitignore` it copied no
/// longer hides) through the full pass it then runs again.
#[test]
fn flush_converges_what_no_watcher_reported() {
    let d = dirs();
    fs::write(d.host.join(".gitignore"), "*.log\n").unwrap();
    fs::write(d.host.join("notes.txt"), "base\n").unwrap();
    let blind = |label: &str, root: &Path| -> Arc<dyn Transport> {
        Arc::new(
            LocalTransport::open(label, root)
                .unwrap()
                .with_poll_interval(Duration::from_secs(3600)),
        )
    };
    let mut c = cfg(&d);
    c.force_poll = true;
    let r = Running::with(c, blind("host", &d.host), blind("env", &d.env));
    r.flush();
    assert_same(&d);

    // A change made out of the watchers' view: found by the flush's full pass.
    fs::write(d.host.join("unseen.txt"), "made while nobody watched\n").unwrap();
    r.flush();
    assert_eq!(
        read(&d.env.join("unseen.txt")).as_deref(),
        Some("made while nobody watched\n")
    );

    // Both sides edit one file (env's edit newer): host's version is kept as a conflict
    // copy on the host, and the flush also brings that copy to the env side.
    fs::write(d.host.join("notes.txt"), "host edit\n").unwrap();
    set_mtime(&d.host.join("notes.txt"), 100);
    fs::write(d.env.join("notes.txt"), "env edit\n").unwrap();
    set_mtime(&d.env.join("notes.txt"), 10);
    r.flush();
    assert_same(&d);
    let copies: Vec<_> = fs::read_dir(&d.env)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("notes.txt.berth-conflict-"))
        .collect();
    assert_eq!(copies.len(), 1, "conflict copy on the env side: {copies:?}");
    assert_eq!(
        read(&d.env.join(&copies[0])).as_deref(),
        Some("host edit\n")
    );

    // The host stops ignoring logs: the flush copies the new .gitignore and then the log,
    // which the env side's old .gitignore still hid while the first pass decided.
    fs::write(d.host.join("build.log"), "now synchronized\n").unwrap();
    fs::write(d.host.join(".gitignore"), "*.tmp\n").unwrap();
    r.flush();
    assert_eq!(
        read(&d.env.join("build.log")).as_deref(),
        Some("now synchronized\n")
    );
    assert_same(&d);
    r.stop();
}
#[test]
fn env_reached_through_proc_pid_root() {
    let d = dirs();
    let env_via_proc = PathBuf::from(format!("/proc/{}/root", std::process::id()))
        .join(d.env.strip_prefix("/").unwrap());
    let r = Running::start(cfg(&d), &d.host, &env_via_proc);
    fs::create_dir(d.host.join("x")).unwrap();
    fs::write(d.host.join("x/y"), "via proc").unwrap();
    wait_for("file via /proc/<pid>/root", || {
        read(&d.env.join("x/y")).as_deref() == Some("via proc")
    });
    fs::write(d.env.join("back"), "b").unwrap();
    wait_for("file back", || d.host.join("back").exists());
    r.flush();
    assert_same(&d);
    r.stop();
}

#[test]
fn flush_request_from_another_process_and_status_file() {
    let d = dirs();
    let r = Running::start(cfg(&d), &d.host, &d.env);
    fs::write(d.host.join("f"), "x").unwrap();
    request_flush(&d.state, WAIT).unwrap();
    assert!(d.env.join("f").exists());
    let st = berth_runtime::sync::read_status(&d.state).unwrap().unwrap();
    assert!(st.flushed >= 1);
    r.stop();
    let st = berth_runtime::sync::read_status(&d.state).unwrap().unwrap();
    assert_eq!(st.state, SyncState::Stopped);
    assert!(request_flush(&d.state, WAIT).is_err(), "no engine running");
}

/// Child side of `kill_during_burst_then_restart_converges`: runs an engine until killed.
#[test]
#[ignore = "helper process for kill_during_burst_then_restart_converges"]
fn child_engine() {
    let (Some(host), Some(env), Some(state)) = (
        std::env::var_os("SYNC_TEST_HOST"),
        std::env::var_os("SYNC_TEST_ENV"),
        std::env::var_os("SYNC_TEST_STATE"),
    ) else {
        return;
    };
    let h: Arc<dyn Transport> = Arc::new(LocalTransport::open("host", host).unwrap());
    let e: Arc<dyn Transport> = Arc::new(LocalTransport::open("env", env).unwrap());
    let engine = SyncEngine::new(SyncConfig::new("child", PathBuf::from(state)), h, e);
    engine.run(&AtomicBool::new(false)).unwrap();
}

struct ChildGuard(Child);
impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_child(d: &Dirs) -> ChildGuard {
    spawn_child_with(d, Command::new(std::env::current_exe().unwrap()))
}

fn spawn_child_with(d: &Dirs, mut cmd: Command) -> ChildGuard {
    let child = cmd
        .args(["child_engine", "--exact", "--ignored", "--nocapture"])
        .env("SYNC_TEST_HOST", &d.host)
        .env("SYNC_TEST_ENV", &d.env)
        .env("SYNC_TEST_STATE", &d.state)
        .spawn()
        .unwrap();
    let g = ChildGuard(child);
    wait_for("child engine watching", || {
        berth_runtime::sync::read_status(&d.state)
            .ok()
            .flatten()
            .is_some_and(|s| s.pid == g.0.id() && s.state == SyncState::Watching)
    });
    g
}

#[test]
fn kill_during_burst_then_restart_converges() {
    let d = dirs();
    for i in 0..200 {
        fs::write(d.host.join(format!("pre{i}")), format!("pre {i}")).unwrap();
    }
    let mut child = spawn_child(&d);
    request_flush(&d.state, WAIT).unwrap();
    // Burst on both sides; kill -9 the engine in the middle of it.
    fs::create_dir(d.host.join("burst")).unwrap();
    for i in 0..3000 {
        fs::write(d.host.join(format!("burst/{i}")), format!("burst {i}")).unwrap();
        if i % 10 == 0 {
            fs::write(d.env.join(format!("env{i}")), format!("env {i}")).unwrap();
        }
        if i == 1500 {
            child.0.kill().unwrap(); // SIGKILL
            child.0.wait().unwrap();
        }
    }
    // More changes while no engine runs.
    for i in 0..100 {
        fs::write(d.host.join(format!("pre{i}")), format!("edited {i}")).unwrap();
        fs::remove_file(d.host.join(format!("burst/{}", i * 7))).unwrap();
    }
    drop(child);
    let _child = spawn_child(&d);
    request_flush(&d.state, WAIT).unwrap();
    assert_same(&d);
    let all = digest(&d.host);
    assert!(
        all.keys().all(|k| !k.contains("berth-conflict")),
        "no spurious conflicts"
    );
    assert!(
        all.keys().all(|k| !k.contains("berth-sync-tmp")),
        "no leftovers"
    );
    assert_eq!(read(&d.env.join("pre3")).as_deref(), Some("edited 3"));
    assert_eq!(read(&d.host.join("env2990")).as_deref(), Some("env 2990"));
    assert!(!d.env.join("burst/7").exists() && d.env.join("burst/8").exists());
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

#[test]
fn env_side_files_get_the_mapped_owner() {
    use std::os::unix::fs::MetadataExt;
    if !is_root() {
        eprintln!("skipped: chown to another user needs root");
        return;
    }
    let d = dirs();
    let h: Arc<dyn Transport> = Arc::new(LocalTransport::open("host", &d.host).unwrap());
    let e: Arc<dyn Transport> = Arc::new(
        LocalTransport::open("env", &d.env)
            .unwrap()
            .with_owner(4321, 4322),
    );
    let r = Running::with(cfg(&d), h, e);
    fs::create_dir(d.host.join("dir")).unwrap();
    fs::write(d.host.join("dir/file"), "x").unwrap();
    symlink("file", d.host.join("dir/link")).unwrap();
    r.flush();
    for p in ["dir", "dir/file", "dir/link"] {
        let m = fs::symlink_metadata(d.env.join(p)).unwrap();
        assert_eq!((m.uid(), m.gid()), (4321, 4322), "{p}");
    }
    r.stop();
}

#[test]
fn watch_limit_falls_back_to_polling_with_a_clear_message() {
    if !is_root() {
        eprintln!("skipped: lowering the inotify limit in a user namespace is done as root here");
        return;
    }
    let d = dirs();
    for i in 0..20 {
        fs::create_dir(d.host.join(format!("d{i}"))).unwrap();
    }
    // A user namespace has its own inotify limits: lower it there only, not for the host.
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--user",
        "--map-root-user",
        "sh",
        "-c",
        "echo 5 > /proc/sys/user/max_inotify_watches && exec \"$0\" \"$@\"",
    ])
    .arg(std::env::current_exe().unwrap());
    let _child = spawn_child_with(&d, cmd);
    let st = berth_runtime::sync::read_status(&d.state).unwrap().unwrap();
    let polling = st.polling.clone().expect("polling fallback reported");
    // The watch limit we lowered, or (on a busy host) the instance limit: either way the
    // message names the sysctl to raise.
    assert!(
        polling.contains("sysctl fs.inotify.max_user_watches=524288")
            || polling.contains("sysctl fs.inotify.max_user_instances="),
        "{st:#?}"
    );
    fs::write(d.host.join("d3/new"), "polled").unwrap();
    wait_for("change found by polling", || {
        read(&d.env.join("d3/new")).as_deref() == Some("polled")
    });
}

/// Clears the immutable flag on drop, so the temporary folder can be removed.
struct Immutable(PathBuf);
impl Immutable {
    fn set(p: &Path) -> Option<Immutable> {
        let ok = Command::new("chattr")
            .arg("+i")
            .arg(p)
            .status()
            .ok()?
            .success();
        ok.then(|| Immutable(p.to_path_buf()))
    }
}
impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}

#[test]
fn failed_transfer_leaves_the_target_intact_and_fails_the_flush() {
    if !is_root() {
        eprintln!("skipped: making a file immutable (chattr +i) needs root");
        return;
    }
    let d = dirs();
    fs::write(d.host.join("a"), "v1").unwrap();
    let r = Running::start(cfg(&d), &d.host, &d.env);
    r.flush();
    let Some(lock) = Immutable::set(&d.env.join("a")) else {
        eprintln!("skipped: chattr +i is not supported on this filesystem");
        return;
    };
    fs::write(d.host.join("a"), "v2 is longer").unwrap();
    let e = r.engine.flush(WAIT).unwrap_err().to_string();
    assert!(e.contains("\"a\""), "{e}");
    assert_eq!(
        read(&d.env.join("a")).as_deref(),
        Some("v1"),
        "target intact"
    );
    let names: Vec<_> = fs::read_dir(&d.env)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "no temporary file left: {names:?}");
    // The same failure reaches a flush requested by another process.
    let e = request_flush(&d.state, WAIT).unwrap_err().to_string();
    assert!(e.contains("\"a\""), "{e}");
    drop(lock);
    r.flush();
    assert_eq!(read(&d.env.join("a")).as_deref(), Some("v2 is longer"));
    r.stop();
}

/// A transport that injects a concurrent edit at a chosen moment, to drive the race paths.
struct Meddler {
    inner: LocalTransport,
    root: PathBuf,
    /// Before a file is staged on this side: write this content to it first (once).
    edit_before_commit: std::sync::Mutex<Option<(String, &'static str)>>,
    /// While a file is read from this side: append to it after the first read (once per count).
    grow_while_read: std::sync::Mutex<Option<(String, usize)>>,
}

impl Meddler {
    fn new(root: &Path) -> Meddler {
        Meddler {
            inner: LocalTransport::open("meddled", root).unwrap(),
            root: root.to_path_buf(),
            edit_before_commit: Default::default(),
            grow_while_read: Default::default(),
        }
    }
}

struct GrowingReader {
    inner: Box<dyn berth_runtime::sync::transport::SourceFile>,
    path: PathBuf,
    grow: bool,
}

impl std::io::Read for GrowingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if self.grow {
            self.grow = false;
            let mut f = fs::OpenOptions::new().append(true).open(&self.path)?;
            std::io::Write::write_all(&mut f, b" and more")?;
        }
        Ok(n)
    }
}

impl berth_runtime::sync::transport::SourceFile for GrowingReader {
    fn entry_now(&mut self) -> std::io::Result<berth_runtime::sync::tree::Entry> {
        self.inner.entry_now()
    }
}

impl Transport for Meddler {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn scan(
        &self,
        rel: &str,
        rules: &berth_runtime::sync::ignore::IgnoreRules,
    ) -> Result<berth_runtime::sync::tree::Scan, berth_runtime::sync::transport::TransportError>
    {
        self.inner.scan(rel, rules)
    }
    fn stat(
        &self,
        rel: &str,
    ) -> Result<
        Option<berth_runtime::sync::tree::Entry>,
        berth_runtime::sync::transport::TransportError,
    > {
        self.inner.stat(rel)
    }
    fn hash(
        &self,
        rel: &str,
    ) -> Result<Option<String>, berth_runtime::sync::transport::TransportError> {
        self.inner.hash(rel)
    }
    fn read_file(
        &self,
        rel: &str,
    ) -> Result<
        (
            berth_runtime::sync::tree::Entry,
            Box<dyn berth_runtime::sync::transport::SourceFile>,
        ),
        berth_runtime::sync::transport::TransportError,
    > {
        let (e, inner) = self.inner.read_file(rel)?;
        let mut g = self.grow_while_read.lock().unwrap();
        let grow = match g.as_mut() {
            Some((p, n)) if p == rel && *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        };
        Ok((
            e,
            Box::new(GrowingReader {
                inner,
                path: self.root.join(rel),
                grow,
            }),
        ))
    }
    fn stage_file(
        &self,
        rel: &str,
        data: &mut dyn std::io::Read,
        mode: u32,
        mtime_ns: i64,
    ) -> Result<
        berth_runtime::sync::transport::Staged,
        berth_runtime::sync::transport::TransportError,
    > {
        let staged = self.inner.stage_file(rel, data, mode, mtime_ns)?;
        if let Some((p, text)) = self
            .edit_before_commit
            .lock()
            .unwrap()
            .take_if(|(p, _)| p == rel)
        {
            fs::write(self.root.join(&p), text).unwrap();
        }
        Ok(staged)
    }
    fn stage_symlink(
        &self,
        rel: &str,
        target: &str,
    ) -> Result<
        berth_runtime::sync::transport::Staged,
        berth_runtime::sync::transport::TransportError,
    > {
        self.inner.stage_symlink(rel, target)
    }
    fn commit(
        &self,
        staged: berth_runtime::sync::transport::Staged,
        expect: Option<&berth_runtime::sync::tree::Entry>,
    ) -> Result<berth_runtime::sync::tree::Entry, berth_runtime::sync::transport::TransportError>
    {
        self.inner.commit(staged, expect)
    }
    fn discard(&self, staged: berth_runtime::sync::transport::Staged) {
        self.inner.discard(staged)
    }
    fn remove(
        &self,
        rel: &str,
        expect: &berth_runtime::sync::tree::Entry,
    ) -> Result<(), berth_runtime::sync::transport::TransportError> {
        self.inner.remove(rel, expect)
    }
    fn rename(
        &self,
        from: &str,
        to: &str,
    ) -> Result<(), berth_runtime::sync::transport::TransportError> {
        self.inner.rename(from, to)
    }
    fn mkdir(
        &self,
        rel: &str,
        mode: u32,
    ) -> Result<berth_runtime::sync::tree::Entry, berth_runtime::sync::transport::TransportError>
    {
        self.inner.mkdir(rel, mode)
    }
    fn set_mode(
        &self,
        rel: &str,
        mode: u32,
    ) -> Result<berth_runtime::sync::tree::Entry, berth_runtime::sync::transport::TransportError>
    {
        self.inner.set_mode(rel, mode)
    }
    fn watch(
        &self,
        sink: berth_runtime::sync::transport::EventSink,
        force_poll: bool,
    ) -> Result<
        berth_runtime::sync::transport::Watching,
        berth_runtime::sync::transport::TransportError,
    > {
        self.inner.watch(sink, force_poll)
    }
}

#[test]
fn edit_on_the_target_during_a_transfer_becomes_a_conflict_not_a_loss() {
    let d = dirs();
    fs::write(d.host.join("f"), "base").unwrap();
    let env = Arc::new(Meddler::new(&d.env));
    let h: Arc<dyn Transport> = Arc::new(LocalTransport::open("host", &d.host).unwrap());
    let r = Running::with(cfg(&d), h, env.clone());
    r.flush();
    // The host edits f; while the engine stages the copy on env, env edits f too.
    *env.edit_before_commit.lock().unwrap() = Some(("f".into(), "env edit during transfer"));
    fs::write(d.host.join("f"), "host edit").unwrap();
    r.flush();
    assert_same(&d);
    let mut versions: Vec<String> = fs::read_dir(&d.env)
        .unwrap()
        .map(|e| fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    versions.sort();
    assert_eq!(
        versions,
        vec!["env edit during transfer", "host edit"],
        "both kept"
    );
    assert!(
        env.edit_before_commit.lock().unwrap().is_none(),
        "the edit was injected"
    );
    assert_eq!(r.engine.status().conflicts, 1);
    r.stop();
}

#[test]
fn file_growing_while_copied_is_copied_again() {
    let d = dirs();
    let host = Arc::new(Meddler::new(&d.host));
    let e: Arc<dyn Transport> = Arc::new(LocalTransport::open("env", &d.env).unwrap());
    let r = Running::with(cfg(&d), host.clone(), e);
    *host.grow_while_read.lock().unwrap() = Some(("log".into(), 2));
    fs::write(d.host.join("log"), "start").unwrap();
    r.flush();
    assert_same(&d);
    assert_eq!(
        read(&d.env.join("log")).as_deref(),
        Some("start and more and more")
    );
    assert_eq!(
        host.grow_while_read.lock().unwrap().as_ref().map(|g| g.1),
        Some(0)
    );
    r.stop();
}

// The same engine tests with the env side behind the wire protocol (as for a VM).

#[test]
fn remote_host_changes_propagate_to_env() {
    changes_propagate_with(true, Running::start_remote);
}

#[test]
fn remote_env_changes_propagate_to_host() {
    changes_propagate_with(false, Running::start_remote);
}

#[test]
fn remote_conflicting_edits_keep_both_versions() {
    conflicting_edits_keep_both_versions_with(Running::start_remote);
}

#[test]
fn remote_ignored_paths_stay_on_their_side() {
    ignored_paths_stay_on_their_side_with(Running::start_remote);
}

#[test]
fn remote_large_file_edits_converge_both_ways() {
    let d = dirs();
    let r = Running::start_remote(cfg(&d), &d.host, &d.env);
    let mut big: Vec<u8> = (0..(3u32 << 20))
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    fs::write(d.host.join("big.bin"), &big).unwrap();
    r.flush();
    big[1_000_000] ^= 1;
    fs::write(d.host.join("big.bin"), &big).unwrap();
    r.flush();
    assert!(fs::read(d.env.join("big.bin")).unwrap() == big);
    big[2_000_000] ^= 1;
    fs::write(d.env.join("big.bin"), &big).unwrap();
    r.flush();
    assert!(fs::read(d.host.join("big.bin")).unwrap() == big);
    assert_same(&d);
    r.stop();
}

/// A `readonly` mount's sync copies host → env only: edits, new files, deletions and mode
/// changes made on the env side are undone, the host is never written, and no conflict copy
/// appears; host changes still arrive.
fn one_way_sync_undoes_env_changes_with(start: Start) {
    let d = dirs();
    fs::create_dir(d.host.join("src")).unwrap();
    fs::write(d.host.join("src/a.txt"), "host a\n").unwrap();
    fs::write(d.host.join("b.txt"), "host b\n").unwrap();
    let mut c = cfg(&d);
    c.host_to_env_only = true;
    let r = start(c, &d.host, &d.env);
    r.flush();
    assert_same(&d);
    let host_before = digest(&d.host);

    fs::write(d.env.join("src/a.txt"), "edited inside\n").unwrap();
    fs::write(d.env.join("new.txt"), "made inside\n").unwrap();
    fs::create_dir(d.env.join("made-dir")).unwrap();
    fs::write(d.env.join("made-dir/x"), "x\n").unwrap();
    fs::remove_file(d.env.join("b.txt")).unwrap();
    fs::set_permissions(d.env.join("src"), fs::Permissions::from_mode(0o700)).unwrap();
    wait_for("env changes to be undone", || {
        try_digest(&d.env).ok().as_ref() == Some(&host_before)
    });
    r.flush();
    assert_eq!(digest(&d.host), host_before, "the host was written");
    assert_same(&d);

    // Host → env still works.
    fs::write(d.host.join("src/a.txt"), "host a, edited\n").unwrap();
    r.flush();
    assert_eq!(
        read(&d.env.join("src/a.txt")).as_deref(),
        Some("host a, edited\n")
    );
    assert_same(&d);
    r.stop();
}

#[test]
fn one_way_sync_undoes_env_changes() {
    one_way_sync_undoes_env_changes_with(Running::start)
}

#[test]
fn remote_one_way_sync_undoes_env_changes() {
    one_way_sync_undoes_env_changes_with(Running::start_remote)
}

/// A host folder written as root (berth as root syncing into a folder of root's) never gets
/// a setuid-root or setgid-root file from the environment: the bits are dropped on the host,
/// and then on the environment's side too, so both sides agree (nothing is copied again on
/// every pass). A later chmod inside is dropped the same way; other mode changes still sync.
#[test]
fn env_setuid_files_never_become_setuid_root_on_the_host() {
    use std::os::unix::fs::MetadataExt;
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipping: files owned by root need root");
        return;
    }
    let d = dirs();
    let h: Arc<dyn Transport> = Arc::new(
        LocalTransport::open("host", &d.host)
            .unwrap()
            .with_owner(0, 0)
            .without_root_setid(),
    );
    let e: Arc<dyn Transport> = Arc::new(LocalTransport::open("env", &d.env).unwrap());
    let r = Running::with(cfg(&d), h, e);
    let mode = |p: &Path| fs::metadata(p).unwrap().mode() & 0o7777;
    let chmod = |p: &Path, m: u32| fs::set_permissions(p, fs::Permissions::from_mode(m)).unwrap();
    let (hs, es) = (d.host.join("s"), d.env.join("s"));
    fs::write(&es, "x").unwrap();
    chmod(&es, 0o6755);
    r.flush();
    assert_eq!(fs::metadata(&hs).unwrap().uid(), 0);
    assert_eq!(mode(&hs), 0o755, "a setuid-root file reached the host");
    assert_eq!(
        mode(&es),
        0o755,
        "the environment's copy kept the bits the host refused"
    );
    chmod(&es, 0o4755);
    r.flush();
    assert_eq!(mode(&hs), 0o755, "a chmod inside made a setuid-root file");
    assert_eq!(mode(&es), 0o755);
    chmod(&es, 0o700);
    r.flush();
    assert_eq!(mode(&hs), 0o700, "a plain chmod did not sync");
    assert_same(&d);
    r.stop();
}
