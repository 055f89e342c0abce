//! The environment side of a container's live sync: its folders reached through the
//! supervisor's root (`/proc/<pid>/root`), resolved with `openat2(RESOLVE_IN_ROOT)` so that no
//! symlink in the image can point the sync at a host folder; files the sync creates inside
//! belong to the environment's root (its mapped host ids).

use std::fs::{self, File};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

use envfile_spec::Plan;

use super::rootfs::ensure_in_root;
use super::run_state::ContainerState;
use crate::backend::SyncEndpoint;
use crate::state::BerthHome;
use crate::sync::{LocalTransport, Transport};

/// Host and environment transports of each of `mounts` (indexes in `plan.mounts`) of the
/// running container in `env_dir`; alive while its supervisor is.
pub fn endpoint(
    env_dir: &Path,
    _home: &BerthHome,
    plan: &Plan,
    mounts: &[usize],
) -> Result<SyncEndpoint, String> {
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
    let mut pairs = Vec::new();
    // Keeps the environment-side folders open for the engines' lifetime.
    let mut env_dirs = Vec::new();
    for &i in mounts {
        let m = &plan.mounts[i];
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
        pairs.push((
            Arc::new(host) as Arc<dyn Transport>,
            Arc::new(env) as Arc<dyn Transport>,
        ));
    }
    Ok(SyncEndpoint {
        pairs,
        alive: Box::new(move || supervisor.alive()),
        gone: None,
        keep: Box::new(env_dirs),
    })
}
