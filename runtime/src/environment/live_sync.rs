//! The process that keeps an environment's `type = "sync"` mounts in sync: `berth __sync
//! <env-dir>`, one per running environment that has sync mounts, started by `up` after the
//! container or VM and stopped by `down` before it.
//!
//! It runs on the host, as the invoking user, so the host side of each mount is written with
//! the user's own rights. For a container, the environment side is reached through the
//! supervisor's root (`/proc/<pid>/root`), resolved with `openat2(RESOLVE_IN_ROOT)` so that no
//! symlink in the image can point the sync at a host folder; files it creates inside belong to
//! the environment's root (its mapped host ids). For a VM, the environment side is a
//! [`RemoteTransport`] per mount, served in the guest by `berth-agent sync-serve` over one
//! agent connection ([`crate::vm::sync_channel`]); there `bind` mounts the VM cannot share
//! through virtio-fs are synced too. It exits by itself when the environment's supervisor
//! (or VM) is gone, and records itself in `sync.json` (pid + start time) so any later command
//! can stop a stale one.

use std::fs::{self, File};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use envfile_spec::plan::{BackendKind, MountKind};
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use super::error::EnvError;
use super::record::EnvRecord;
use crate::container::rootfs::ensure_in_root;
use crate::container::run_state::ContainerState;
use crate::host::process::ProcessIdentity;
use crate::state::{read_json, write_json, BerthHome, StateError};
use crate::sync::{self, LocalTransport, RemoteTransport, SyncConfig, SyncEngine, Transport};
use crate::vm::sync_channel::{open_streams, GuestFolder};
use crate::vm::VmBackend;

/// Hidden subcommand that runs [`main`].
pub const SYNC_ARG: &str = "__sync";
const RECORD: &str = "sync.json";
/// How long `up` waits for the first full pass of every sync mount.
const INITIAL_SYNC_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct SyncProcessRecord {
    process: ProcessIdentity,
}

/// Indexes (positions in the plan's mounts) of the mounts this process serves: the sync
/// mounts, and in a VM the bind mounts it cannot share through virtio-fs.
pub fn sync_mounts(record: &EnvRecord) -> Vec<usize> {
    record
        .plan
        .mounts
        .iter()
        .enumerate()
        .filter(|(_, m)| match record.plan.backend {
            BackendKind::Container => m.kind == MountKind::Sync,
            BackendKind::Vm => super::vm::mount_served_by_sync(&record.plan, m.kind),
        })
        .map(|(i, _)| i)
        .collect()
}

/// Starts the sync process of a freshly started environment and waits until every sync
/// mount finished its first pass (so `up && exec make` sees the sources). No-op without
/// sync mounts.
pub fn start(home: &BerthHome, record: &EnvRecord) -> Result<(), EnvError> {
    let mounts = sync_mounts(record);
    if mounts.is_empty() {
        return Ok(());
    }
    let dir = home.env_dir(&record.env_id);
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
pub fn ensure(home: &BerthHome, record: &EnvRecord) -> Result<bool, EnvError> {
    if sync_mounts(record).is_empty() || running(&home.env_dir(&record.env_id)) {
        return Ok(false);
    }
    start(home, record)?;
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
    if record.plan.backend == BackendKind::Vm {
        return serve_vm(env_dir, &record, &home);
    }
    let state = ContainerState::load(env_dir).map_err(|e| e.to_string())?;
    let supervisor = state
        .supervisor
        .filter(|s| s.alive())
        .ok_or("the environment is not running")?;
    let env_owner = state
        .mapping
        .as_ref()
        .and_then(|m| m.host_uid(0).zip(m.host_gid(0)));
    let proc_root = File::open(format!("/proc/{}/root", supervisor.pid))
        .map_err(|e| format!("cannot open the environment's root: {e}"))?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    // Keeps the environment-side folders open for the engines' lifetime.
    let mut env_dirs = Vec::new();
    for i in sync_mounts(&record) {
        let m = &record.plan.mounts[i];
        let source = m.source.clone().ok_or("a sync mount has no source")?;
        let host_meta = fs::metadata(&source).map_err(|e| format!("{source}: {e}"))?;
        let target = ensure_in_root(proc_root.as_fd(), &m.target, true, env_owner)
            .map_err(|e| format!("cannot create {} inside: {e}", m.target))?;
        let env_path = format!("/proc/self/fd/{}", target.as_raw_fd());
        let host = LocalTransport::open("host", &source)
            .map_err(|e| e.to_string())?
            .with_owner(host_meta.uid(), host_meta.gid())
            .without_root_setid();
        let mut env = LocalTransport::open("env", &env_path).map_err(|e| e.to_string())?;
        if let Some((uid, gid)) = env_owner {
            env = env.with_owner(uid, gid);
        }
        env_dirs.push(target);
        let config = SyncConfig::for_mount(m, sync::state_dir(&home, &record.env_id, i));
        let engine = SyncEngine::new(config, Arc::new(host) as Arc<dyn Transport>, Arc::new(env));
        let stop = stop.clone();
        let target_name = m.target.clone();
        workers.push(std::thread::spawn(move || {
            if let Err(e) = engine.run(&stop) {
                eprintln!("berth sync: {target_name}: {e}");
            }
        }));
    }
    while !TERMINATE.load(Ordering::SeqCst) && supervisor.alive() {
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        let _ = w.join();
    }
    drop(env_dirs);
    Ok(())
}

/// [`serve`] for a VM: one agent connection, one guest-side server per mount, one engine
/// each; runs until SIGTERM, until the VM stops or until the agent connection ends.
fn serve_vm(env_dir: &Path, record: &EnvRecord, home: &BerthHome) -> Result<(), String> {
    let vms = VmBackend::new(home.clone());
    let mounts = sync_mounts(record);
    let folders: Vec<GuestFolder> = mounts
        .iter()
        .map(|&i| GuestFolder {
            target: record.plan.mounts[i].target.clone(),
            // The guest's root, as the environment's root owns what a container sync creates.
            owner: Some((0, 0)),
        })
        .collect();
    // A channel just given up by a previous sync process (killed) may still be reset by the
    // agent while we connect: a failed start is tried again on a fresh connection.
    let mut attempt = 0;
    let (remotes, alive) = loop {
        attempt += 1;
        match connect_remotes(&vms, env_dir, record, &mounts, &folders) {
            Ok(r) => break r,
            Err(e) if attempt < 5 && !TERMINATE.load(Ordering::SeqCst) => {
                eprintln!("berth sync: connecting to the VM failed ({e}); trying again");
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => return Err(e),
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for (&i, (host, env)) in mounts.iter().zip(remotes) {
        let m = &record.plan.mounts[i];
        let config = SyncConfig::for_mount(m, sync::state_dir(home, &record.env_id, i));
        let engine = SyncEngine::new(config, host, Arc::new(env));
        let stop = stop.clone();
        let target_name = m.target.clone();
        workers.push(std::thread::spawn(move || {
            if let Err(e) = engine.run(&stop) {
                eprintln!("berth sync: {target_name}: {e}");
            }
        }));
    }
    let mut checked = Instant::now();
    while !TERMINATE.load(Ordering::SeqCst) && alive.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(200));
        if checked.elapsed() > Duration::from_secs(2) {
            if !vms.is_running(env_dir) {
                break;
            }
            checked = Instant::now();
        }
    }
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        let _ = w.join();
    }
    if !TERMINATE.load(Ordering::SeqCst) {
        return Err(
            "the VM or its agent connection went away; the next `berth up` restarts the sync"
                .into(),
        );
    }
    Ok(())
}

/// The host and guest transports of every mount, over one new agent connection.
#[allow(clippy::type_complexity)]
fn connect_remotes(
    vms: &VmBackend,
    env_dir: &Path,
    record: &EnvRecord,
    mounts: &[usize],
    folders: &[GuestFolder],
) -> Result<(Vec<(Arc<dyn Transport>, RemoteTransport)>, Arc<AtomicBool>), String> {
    let conn = vms.connect(env_dir).map_err(|e| e.to_string())?;
    let (streams, alive) = open_streams(conn, folders).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for (&i, stream) in mounts.iter().zip(streams) {
        let m = &record.plan.mounts[i];
        let source = crate::vm::shared_folder::host_folder(m, &vms.home().volumes_dir())
            .map_err(|e| e.to_string())?;
        let host_meta = fs::metadata(&source).map_err(|e| format!("{}: {e}", source.display()))?;
        let host: Arc<dyn Transport> = Arc::new(
            LocalTransport::open("host", &source)
                .map_err(|e| e.to_string())?
                .with_owner(host_meta.uid(), host_meta.gid())
                .without_root_setid(),
        );
        let env =
            RemoteTransport::connect(&format!("env {}", m.target), stream.reader, stream.writer)
                .map_err(|e| format!("{}: {e}", m.target))?
                .with_basis(host.clone());
        out.push((host, env));
    }
    Ok((out, alive))
}
