//! The process that keeps an environment's `type = "sync"` mounts in sync: `berth __sync
//! <env-dir>`, one per running environment that has sync mounts, started by `up` after the
//! container or VM and stopped by `down` before it.
//!
//! It runs on the host, as the invoking user, so the host side of each mount is written with
//! the user's own rights. Which mounts it serves and how it reaches the environment side are
//! the backend's ([`Backend::sync_mounts`], [`Backend::sync_endpoint`]): for a container, the
//! supervisor's root (`/proc/<pid>/root`, resolved with `openat2(RESOLVE_IN_ROOT)` so that no
//! symlink in the image can point the sync at a host folder; `container::sync_root`); for a
//! VM, a remote transport per mount, served in the guest by `berth-agent sync-serve` over one
//! agent connection ([`crate::vm::sync_channel`]; there `bind` mounts the VM cannot share
//! through virtio-fs are synced too). It exits by itself when the environment's supervisor
//! (or VM) is gone, and records itself in `sync.json` (pid + start time) so any later command
//! can stop a stale one.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use super::environments::Environments;
use super::error::EnvError;
use super::record::EnvRecord;
use crate::backend::{Backend, SyncEndpoint};
use crate::host::process::ProcessIdentity;
use crate::state::{read_json, write_json, BerthHome, StateError};
use crate::sync::{self, SyncConfig, SyncEngine};

/// Hidden subcommand that runs [`main`].
pub const SYNC_ARG: &str = "__sync";
const RECORD: &str = "sync.json";
/// How long `up` waits for the first full pass of every sync mount.
const INITIAL_SYNC_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct SyncProcessRecord {
    process: ProcessIdentity,
}

/// Starts the sync process of a freshly started environment and waits until every sync
/// mount finished its first pass (so `up && exec make` sees the sources). No-op without
/// sync mounts.
pub fn start(home: &BerthHome, backend: &dyn Backend, record: &EnvRecord) -> Result<(), EnvError> {
    let dir = home.env_dir(&record.env_id);
    let mounts = backend.sync_mounts(&dir, &record.plan);
    if mounts.is_empty() {
        return Ok(());
    }
    stop(&dir);
    let log = dir.join("logs").join("sync.log");
    crate::container::logs::open_logs_dir(&dir).map_err(|source| StateError::CreateDir {
        path: dir.join("logs"),
        source,
    })?;
    let exe = std::env::current_exe().map_err(|source| StateError::Read {
        path: "/proc/self/exe".into(),
        source,
    })?;
    let mut cmd = Command::new(exe);
    cmd.arg(SYNC_ARG).arg(&dir);
    let child = crate::detach::spawn_detached(cmd, &log).map_err(|source| StateError::Write {
        path: log.clone(),
        source,
    })?;
    let pid = child.id() as i32;
    if let Some(process) = ProcessIdentity::of(pid) {
        write_json(&dir.join(RECORD), &SyncProcessRecord { process })?;
    }
    // Reap it if it dies while we wait; once we return, init adopts it.
    std::thread::spawn(move || {
        let mut child = child;
        let _ = child.wait();
    });
    for i in mounts {
        let state = sync::state_dir(home, &record.env_id, i);
        let t0 = Instant::now();
        // The engine announces itself in its status file; until then a flush finds nobody.
        loop {
            match sync::request_flush(&state, INITIAL_SYNC_TIMEOUT) {
                Ok(()) => break,
                Err(sync::SyncError::NotRunning { .. })
                    if t0.elapsed() < Duration::from_secs(30) =>
                {
                    if !ProcessIdentity::of(pid).is_some_and(|p| p.alive()) {
                        return Err(EnvError::SyncFailed {
                            message: format!(
                                "the sync process exited at start; see {}",
                                log.display()
                            ),
                        });
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => {
                    return Err(EnvError::SyncFailed {
                        message: format!("{e} (log: {})", log.display()),
                    })
                }
            }
        }
    }
    Ok(())
}

/// Whether the environment's sync process runs.
pub fn running(env_dir: &Path) -> bool {
    matches!(read_json::<SyncProcessRecord>(&env_dir.join(RECORD)), Ok(Some(r)) if r.process.alive())
}

/// Restarts the sync process of a running environment when it is gone (killed, or it ended
/// with its VM's connection); returns whether it had to. Its base makes it converge.
pub fn ensure(
    home: &BerthHome,
    backend: &dyn Backend,
    record: &EnvRecord,
) -> Result<bool, EnvError> {
    let dir = home.env_dir(&record.env_id);
    if backend.sync_mounts(&dir, &record.plan).is_empty() || running(&dir) {
        return Ok(false);
    }
    start(home, backend, record)?;
    Ok(true)
}

/// Stops the environment's sync process, if one runs (SIGTERM, then SIGKILL after 5 s).
pub fn stop(env_dir: &Path) {
    let path = env_dir.join(RECORD);
    if let Ok(Some(r)) = read_json::<SyncProcessRecord>(&path) {
        let p = r.process;
        // Signals reach only the recorded process (its identity is checked, through a pidfd).
        if p.kill(Signal::SIGTERM) {
            let t0 = Instant::now();
            while p.alive() && t0.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(10));
            }
            p.kill(Signal::SIGKILL);
        }
    }
    let _ = fs::remove_file(path);
}

static TERMINATE: AtomicBool = AtomicBool::new(false);

extern "C" fn on_term(_: libc::c_int) {
    TERMINATE.store(true, Ordering::SeqCst);
}

/// Entry point of `berth __sync <env-dir>`: runs one engine per sync mount until SIGTERM or
/// until the environment's supervisor is gone. Returns the exit code.
pub fn main(env_dir: &Path) -> i32 {
    match serve(env_dir) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("berth sync: {e}");
            1
        }
    }
}

fn serve(env_dir: &Path) -> Result<(), String> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let action = SigAction::new(
        SigHandler::Handler(on_term),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        // SAFETY: the handler only stores into an atomic, which is async-signal-safe.
        let _ = unsafe { sigaction(sig, &action) };
    }
    let record = EnvRecord::load(env_dir)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no environment record in {}", env_dir.display()))?;
    let home_dir = env_dir
        .parent()
        .and_then(Path::parent)
        .ok_or("cannot tell berth's home from the environment folder")?;
    let home = BerthHome::at(home_dir).map_err(|e| e.to_string())?;
    let envs = Environments::open(&home);
    let backend = envs.backend(record.plan.backend);
    let mounts = backend.sync_mounts(env_dir, &record.plan);
    let cancelled = || TERMINATE.load(Ordering::SeqCst);
    let SyncEndpoint {
        pairs,
        mut alive,
        gone,
        keep,
    } = backend.sync_endpoint(env_dir, &home, &record.plan, &mounts, &cancelled)?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for (&i, (host, env)) in mounts.iter().zip(pairs) {
        let m = &record.plan.mounts[i];
        let config = SyncConfig::for_mount(m, sync::state_dir(&home, &record.env_id, i));
        let engine = SyncEngine::new(config, host, env);
        let stop = stop.clone();
        let target_name = m.target.clone();
        workers.push(std::thread::spawn(move || {
            if let Err(e) = engine.run(&stop) {
                eprintln!("berth sync: {target_name}: {e}");
            }
        }));
    }
    while !TERMINATE.load(Ordering::SeqCst) && alive() {
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        let _ = w.join();
    }
    drop(keep);
    match gone {
        Some(why) if !TERMINATE.load(Ordering::SeqCst) => Err(why),
        _ => Ok(()),
    }
}
