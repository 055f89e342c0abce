//! Benchmark of the sync engine, run by `bench/sync.sh`:
//! - latency of single edits: write on the host side, poll until the env side shows it
//!   (p50/p95/max over N edits), against a bind mount of the same folder (the floor);
//! - a 10,000-file initial copy and a 10,000-file change: time until both sides are identical,
//!   against `rsync -a --delete --modify-window=-1` of the same tree and change (and a bind
//!   mount: 0 after the write), with the CPU time each used (the engine's threads from the start of the write to the end
//!   of the flush; rsync's processes): on a loaded machine wall times vary from run to run,
//!   CPU times much less.
//!
//! Usage: `sync_bench [WORKDIR] [EDITS]` (default: a temporary folder under /var/tmp, 1000).
//!
//! `sync_bench curve WORKDIR [SIZES] [EDITS]`: the sync curve, one line per tree size (default
//! `1000,10000,100000` files, 100 per folder): the initial pass of an engine started on a
//! tree only the host side has (until it reports `Watching`) against `rsync -a` of the same
//! tree, single-edit latency with that tree in place (p50/p95 over EDITS edits, default 200),
//! and the converge after every file is rewritten against rsync of the same change.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_runtime::sync::{LocalTransport, SyncConfig, SyncEngine, SyncState, Transport};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("curve") {
        return curve(&args[2..]);
    }
    let work = match args.get(1) {
        Some(p) => PathBuf::from(p),
        None => std::env::temp_dir().join(format!("berth-sync-bench-{}", std::process::id())),
    };
    let edits: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1000);
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).unwrap();
    let guard = Cleanup(work.clone());
    let (host, env, state, rsync_dst) = (
        work.join("host"),
        work.join("env"),
        work.join("state"),
        work.join("rsync"),
    );
    for d in [&host, &env, &rsync_dst] {
        fs::create_dir_all(d).unwrap();
    }
    let bind = bind_mount(&host, &work.join("bind"));

    // Engine.
    let h: Arc<dyn Transport> = Arc::new(LocalTransport::open("host", &host).unwrap());
    let e: Arc<dyn Transport> = Arc::new(LocalTransport::open("env", &env).unwrap());
    let engine = Arc::new(SyncEngine::new(SyncConfig::new("bench", &state), h, e));
    let stop = Arc::new(AtomicBool::new(false));
    let runner = {
        let (engine, stop) = (engine.clone(), stop.clone());
        std::thread::spawn(move || engine.run(&stop))
    };
    while engine.status().state != SyncState::Watching {
        std::thread::sleep(Duration::from_millis(5));
    }

    // 1. Single-edit latency.
    fs::create_dir_all(host.join("src")).unwrap();
    let mut lat = Vec::with_capacity(edits);
    let mut floor = Vec::with_capacity(edits);
    for i in 0..edits {
        let name = format!("src/file{}.rs", i % 10);
        let content = format!("// edit {i}\nfn main() {{}}\n");
        let t = Instant::now();
        fs::write(host.join(&name), &content).unwrap();
        wait_content(&env.join(&name), &content, &mut lat, t);
        if let Some(b) = &bind {
            let content = format!("// floor {i}\n");
            let t = Instant::now();
            fs::write(host.join("floor.txt"), &content).unwrap();
            wait_content(&b.join("floor.txt"), &content, &mut floor, t);
        }
    }
    report("single edit, host → env", &mut lat);
    if bind.is_some() {
        report("single edit, bind mount (floor)", &mut floor);
    } else {
        println!("bind mount floor: skipped (needs root for a private mount namespace)");
    }

    // 2. 10,000-file tree: initial copy.
    let cpu = engine_cpu_ms();
    let t = Instant::now();
    write_tree(&host.join("tree"), "v1", 10_000);
    let write_ms = ms(t.elapsed());
    let t = Instant::now();
    engine.flush(Duration::from_secs(600)).unwrap();
    let berth_initial = ms(t.elapsed());
    let berth_cpu = engine_cpu_ms() - cpu;
    let (rsync_initial, rsync_cpu) = rsync(&host, &rsync_dst);
    println!(
        "10,000-file initial copy (writing it took {write_ms:.0} ms): after the write berth {berth_initial:.0} ms, rsync -a {rsync_initial:.0} ms, bind mount 0 ms; berth/rsync = {:.2}; CPU berth {berth_cpu:.0} ms, rsync {rsync_cpu:.0} ms",
        berth_initial / rsync_initial
    );

    // 3. 10,000-file change (every file rewritten).
    let cpu = engine_cpu_ms();
    let t = Instant::now();
    write_tree(&host.join("tree"), "v2", 10_000);
    let write_ms = ms(t.elapsed());
    let t = Instant::now();
    engine.flush(Duration::from_secs(600)).unwrap();
    let berth_change = ms(t.elapsed());
    let berth_cpu = engine_cpu_ms() - cpu;
    let (rsync_change, rsync_cpu) = rsync(&host, &rsync_dst);
    println!(
        "10,000-file change (writing it took {write_ms:.0} ms): after the write berth {berth_change:.0} ms, rsync -a {rsync_change:.0} ms, bind mount 0 ms; berth/rsync = {:.2}; CPU berth {berth_cpu:.0} ms, rsync {rsync_cpu:.0} ms",
        berth_change / rsync_change
    );
    // Including the write: berth syncs while the change is being written.
    println!(
        "10,000-file change incl. writing: berth {:.0} ms, rsync (write then rsync) {:.0} ms; ratio {:.2}",
        write_ms + berth_change,
        write_ms + rsync_change,
        (write_ms + berth_change) / (write_ms + rsync_change)
    );
    let st = engine.status();
    assert_eq!(st.last_error, None, "engine reported an error");

    stop.store(true, Ordering::Relaxed);
    runner.join().unwrap().unwrap();
    if let Some(b) = &bind {
        let _ = nix::mount::umount2(b, nix::mount::MntFlags::MNT_DETACH);
    }
    drop(guard);
}

struct Cleanup(PathBuf);
impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn wait_content(p: &Path, content: &str, out: &mut Vec<f64>, t: Instant) {
    loop {
        if fs::read_to_string(p).is_ok_and(|c| c == content) {
            out.push(ms(t.elapsed()));
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "edit never arrived at {}",
            p.display()
        );
        std::thread::sleep(Duration::from_micros(50));
    }
}

fn report(what: &str, v: &mut [f64]) {
    v.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "{what}: n={} p50 {:.2} ms, p95 {:.2} ms, max {:.2} ms",
        v.len(),
        pct(0.5),
        pct(0.95),
        v[v.len() - 1]
    );
}

/// `files` files of about 200 bytes, 100 per folder (`d00/f00.txt`, ...).
fn write_tree(root: &Path, version: &str, files: usize) {
    for i in 0..files.div_ceil(100) {
        let d = root.join(format!("d{i:02}"));
        fs::create_dir_all(&d).unwrap();
        for j in 0..100.min(files - i * 100) {
            fs::write(
                d.join(format!("f{j:02}.txt")),
                format!("{version} {i} {j}\n{}", "x".repeat(200)),
            )
            .unwrap();
        }
    }
}

/// The sync curve (see the module documentation).
fn curve(args: &[String]) {
    let work = PathBuf::from(
        args.first()
            .expect("usage: sync_bench curve WORKDIR [SIZES] [EDITS]"),
    );
    let sizes: Vec<usize> = args
        .get(1)
        .map(|s| {
            s.split(',')
                .map(|n| n.parse().expect("SIZES: numbers separated by commas"))
                .collect()
        })
        .unwrap_or_else(|| vec![1_000, 10_000, 100_000]);
    let edits: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(200);
    println!("| files | initial pass berth / rsync (ratio; CPU berth / rsync) | single edit p50 / p95 | converge after a full change berth / rsync (ratio; CPU berth / rsync) |");
    println!("|---|---|---|---|");
    for n in sizes {
        let _ = fs::remove_dir_all(&work);
        fs::create_dir_all(&work).unwrap();
        let guard = Cleanup(work.clone());
        let (host, env, state, rsync_dst) = (
            work.join("host"),
            work.join("env"),
            work.join("state"),
            work.join("rsync"),
        );
        for d in [&host, &env, &rsync_dst] {
            fs::create_dir_all(d).unwrap();
        }
        write_tree(&host.join("tree"), "v1", n);
        // Initial pass: the engine starts on a tree only the host side has.
        let h: Arc<dyn Transport> = Arc::new(LocalTransport::open("host", &host).unwrap());
        let e: Arc<dyn Transport> = Arc::new(LocalTransport::open("env", &env).unwrap());
        let engine = Arc::new(SyncEngine::new(SyncConfig::new("bench", &state), h, e));
        let stop = Arc::new(AtomicBool::new(false));
        let cpu = engine_cpu_ms();
        let t = Instant::now();
        let runner = {
            let (engine, stop) = (engine.clone(), stop.clone());
            std::thread::spawn(move || engine.run(&stop))
        };
        while engine.status().state != SyncState::Watching {
            assert!(
                !runner.is_finished(),
                "the engine stopped: {:?}",
                engine.status().last_error
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        let initial = ms(t.elapsed());
        let initial_cpu = engine_cpu_ms() - cpu;
        let (rsync_initial, rsync_initial_cpu) = rsync(&host, &rsync_dst);
        // Single edits with the tree in place.
        let mut lat = Vec::with_capacity(edits);
        for i in 0..edits {
            let k = (i * 7919) % n;
            let name = format!("tree/d{:02}/f{:02}.txt", k / 100, k % 100);
            let content = format!("edit {i}\n");
            let t = Instant::now();
            fs::write(host.join(&name), &content).unwrap();
            wait_content(&env.join(&name), &content, &mut lat, t);
        }
        lat.sort_by(|a, b| a.total_cmp(b));
        let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p).round() as usize];
        let (p50, p95) = (pct(0.5), pct(0.95));
        engine.flush(Duration::from_secs(600)).unwrap();
        rsync(&host, &rsync_dst);
        // Converge after every file is rewritten.
        let cpu = engine_cpu_ms();
        write_tree(&host.join("tree"), "v2", n);
        let t = Instant::now();
        engine.flush(Duration::from_secs(1200)).unwrap();
        let change = ms(t.elapsed());
        let change_cpu = engine_cpu_ms() - cpu;
        let (rsync_change, rsync_change_cpu) = rsync(&host, &rsync_dst);
        assert_eq!(engine.status().last_error, None, "engine reported an error");
        stop.store(true, Ordering::Relaxed);
        runner.join().unwrap().unwrap();
        println!(
            "| {n} | {initial:.0} / {rsync_initial:.0} ms ({:.2}; CPU {initial_cpu:.0} / {rsync_initial_cpu:.0} ms) | {p50:.1} / {p95:.1} ms | {change:.0} / {rsync_change:.0} ms ({:.2}; CPU {change_cpu:.0} / {rsync_change_cpu:.0} ms) |",
            initial / rsync_initial,
            change / rsync_change
        );
        drop(guard);
    }
}

/// CPU time (user + system) of every thread of this process but the calling one (which
/// writes the trees): the engine's worker, copy and watcher threads.
fn engine_cpu_ms() -> f64 {
    usage_ms(libc::RUSAGE_SELF) - usage_ms(libc::RUSAGE_THREAD)
}

fn usage_ms(who: i32) -> f64 {
    // SAFETY: getrusage fills the zeroed struct it is given; `who` is a valid RUSAGE_* value.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(who, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| t.tv_sec as f64 * 1000.0 + t.tv_usec as f64 / 1000.0;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Wall and CPU time (ms) of `rsync -a --delete src/ dst/`.
fn rsync(src: &Path, dst: &Path) -> (f64, f64) {
    let cpu = usage_ms(libc::RUSAGE_CHILDREN);
    let t = Instant::now();
    let st = Command::new("rsync")
        .arg("-a")
        .arg("--delete")
        // Compare mtimes to the nanosecond, as berth does: by default rsync compares whole
        // seconds and skips files rewritten within the second of the previous copy (same
        // size), which made its column sometimes a no-op.
        .arg("--modify-window=-1")
        .arg(format!("{}/", src.display()))
        .arg(format!("{}/", dst.display()))
        .status()
        .expect("rsync is installed");
    assert!(st.success());
    (ms(t.elapsed()), usage_ms(libc::RUSAGE_CHILDREN) - cpu)
}

/// Bind-mounts `src` at `dst` in a private mount namespace of this process (root only).
fn bind_mount(src: &Path, dst: &Path) -> Option<PathBuf> {
    use nix::mount::{mount, MsFlags};
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).ok()?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .ok()?;
    fs::create_dir_all(dst).ok()?;
    mount(Some(src), dst, None::<&str>, MsFlags::MS_BIND, None::<&str>).ok()?;
    Some(dst.to_path_buf())
}
