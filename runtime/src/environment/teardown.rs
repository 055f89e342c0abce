//! `berth down` and `berth destroy` (with the named volumes of `--volumes`).

use std::time::Duration;

use envfile_spec::plan::MountKind;
use envfile_spec::Plan;

use super::background_child::{in_background_child, leave_bridge_idle, remove_idle_bridge};
use super::environments::{remove_env_dir, Environments, Locked};
use super::error::EnvError;
use super::live_sync;
use super::record::EnvRecord;
use super::sidecars::sidecar_volume_mounts;
use crate::backend::{Backend, EnvStatus};
use crate::image::{Progress, QuietProgress};
use crate::state::{self, FileLock, LockMode, WatchList, ENV_LOCK_FILE};

/// What [`Environments::remove_plan_volumes`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VolumesRemoved {
    /// Names of the volumes removed.
    pub removed: Vec<String>,
    /// Volumes kept because another environment mounts them: (volume, environment name).
    pub in_use: Vec<(String, String)>,
}

impl Environments {
    /// Stops the environment; its writable layer stays. Returns whether it was running.
    ///
    /// Returns once the environment's processes are gone and its forwarded host ports are
    /// free. A container's supervisor is then still exiting (the kernel tears down its mount
    /// namespace, and unmounting the writable layer syncs its filesystem), and its cgroups
    /// and network are still there: a detached child finishes the stop
    /// ([`finish_stop_detached`](Self::finish_stop_detached)) holding the environment's lock,
    /// so a following `up` or `destroy` waits for it. The `watch/<env-id>.stop` marker,
    /// written before the stop begins, lets garbage collection finish it when that child is
    /// killed.
    pub fn down(&self, env_id: &str, timeout: Duration) -> Result<bool, EnvError> {
        let locked = self.lock(env_id, &(std::sync::Arc::new(QuietProgress) as Progress))?;
        // Read once here, under the lock: nothing below changes it before `converged` flips.
        let record = EnvRecord::load(&locked.dir)?;
        let backend = self.backend_of(record.as_ref());
        let was = backend.liveness(&locked.dir);
        // The sync process goes first: it reads the environment through its supervisor.
        live_sync::stop(&locked.dir);
        // In reverse start order: a container's sidecars started after it, a VM's before it.
        let vm_first = record
            .as_ref()
            .is_some_and(|r| super::bridged_sidecars::on_bridge(&r.plan));
        if vm_first {
            backend.stop(&locked.dir, timeout)?;
        }
        self.stop_sidecars(&locked.dir, timeout)?;
        let watch = WatchList::of(&self.home);
        let left = match vm_first {
            true => false,
            false => {
                watch.add_stop(env_id)?;
                backend.stop_processes(&locked.dir, timeout)?
            }
        };
        // `converged` is read only of a running environment (`up`'s decision): the flip waits
        // for the stop's end, with the detached child's work when there is some. Lost to a
        // killed child, a stopped environment's record says converged, which `up` ignores.
        let unconverged = record.filter(|r| r.converged).map(|r| EnvRecord {
            converged: false,
            ..r
        });
        if left {
            self.finish_stop_detached(env_id, locked, timeout, backend, unconverged)?;
        } else {
            if let Some(r) = unconverged {
                r.save(&locked.dir)?;
            }
            watch.remove_stop(env_id)?;
        }
        Ok(was != EnvStatus::Stopped)
    }

    /// The rest of `down`'s stop ([`Backend::finish_stop`](crate::backend::Backend)), in a
    /// forked child that takes over the environment's lock (the same open file, inherited)
    /// and outlives the command: it waits for the supervisor's exit, removes the cgroups and
    /// the network, records the environment not converged, drops the marker, lets the lock
    /// go, and then removes berth's bridge if this environment was its last user and nobody
    /// attached within
    /// [`IDLE_BRIDGE_GRACE`](crate::net::bridge::IDLE_BRIDGE_GRACE)
    /// (a `down` then `up` finds it made). Killed on the way, it leaves a marker on an
    /// unlocked environment that garbage collection finishes. When no process can be forked,
    /// all of it is done here before returning.
    fn finish_stop_detached(
        &self,
        env_id: &str,
        locked: Locked,
        timeout: Duration,
        backend: &dyn Backend,
        unconverged: Option<EnvRecord>,
    ) -> Result<(), EnvError> {
        in_background_child("down-finish", |detached| {
            self.finish_stop(env_id, locked, timeout, detached, backend, unconverged)
        })
    }

    /// What [`finish_stop_detached`](Self::finish_stop_detached)'s child does (`detached`), or
    /// the command itself when it cannot fork.
    fn finish_stop(
        &self,
        env_id: &str,
        locked: Locked,
        timeout: Duration,
        detached: bool,
        backend: &dyn Backend,
        unconverged: Option<EnvRecord>,
    ) -> Result<(), EnvError> {
        let idle = match detached {
            true => leave_bridge_idle(self.home(), env_id),
            false => None,
        };
        let finished = backend.finish_stop(&locked.dir, timeout);
        if finished.is_ok() {
            if let Some(r) = unconverged {
                r.save(&locked.dir)?;
            }
            WatchList::of(&self.home).remove_stop(env_id)?;
        }
        drop(locked);
        remove_idle_bridge(idle.as_ref(), detached);
        Ok(finished?)
    }

    /// Garbage collection of the stop of `env_id` whose detached child was killed (its
    /// `.stop` marker is on an environment nobody holds): finishes it. Whether it did (or
    /// found it done); `false` while a command holds the environment.
    pub(super) fn collect_stop(&self, env_id: &str) -> bool {
        let dir = self.home.env_dir(env_id);
        let watch = WatchList::of(&self.home);
        if !dir.exists() {
            return watch.remove_stop(env_id).is_ok();
        }
        let Ok(Some(lock)) = FileLock::try_acquire(&dir.join(ENV_LOCK_FILE), LockMode::Exclusive)
        else {
            return false;
        };
        let finished = self
            .backend_at(&dir)
            .finish_stop(&dir, Duration::from_secs(2))
            .is_ok()
            && watch.remove_stop(env_id).is_ok();
        drop(lock);
        finished
    }

    /// Stops the environment and removes its folder (writable layer, logs, record); with
    /// `volumes`, also the named volumes its plan uses.
    pub fn destroy(&self, env_id: &str, volumes: bool, timeout: Duration) -> Result<(), EnvError> {
        let locked = self.lock(env_id, &(std::sync::Arc::new(QuietProgress) as Progress))?;
        self.end_processes(&locked.dir, timeout)?;
        if volumes {
            if let Some(r) = EnvRecord::load(&locked.dir)? {
                for m in r.plan.mounts.iter().chain(sidecar_volume_mounts(&r.plan)) {
                    if m.kind == MountKind::Volume {
                        if let Some(name) = &m.source {
                            state::remove_tree(&self.home.volumes_dir().join(name)).map_err(
                                |source| crate::state::StateError::Write {
                                    path: self.home.volumes_dir().join(name),
                                    source,
                                },
                            )?;
                        }
                    }
                }
            }
        }
        // Remove everything but the lock we hold, then the folder itself.
        remove_env_dir(&locked.dir)?;
        Ok(())
    }

    /// What `destroy` and `berth run`'s removal both do before the folder goes: the sync
    /// process, the sidecars (their throw-away volumes of a run with them) and the backend's
    /// processes, cgroups, mounts and network.
    pub(super) fn end_processes(
        &self,
        dir: &std::path::Path,
        timeout: Duration,
    ) -> Result<(), EnvError> {
        live_sync::stop(dir);
        self.destroy_sidecars(dir, timeout)?;
        self.backend_at(dir).destroy(dir, timeout)?;
        Ok(())
    }

    /// `destroy --volumes` of a project whose environment is already gone: removes the
    /// volumes its berth.toml declares, except those another environment still mounts.
    pub fn remove_plan_volumes(&self, plan: &Plan) -> Result<VolumesRemoved, EnvError> {
        let others = self.records()?;
        let mut removed = Vec::new();
        let mut in_use = Vec::new();
        for name in plan
            .mounts
            .iter()
            .chain(sidecar_volume_mounts(plan))
            .filter(|m| m.kind == MountKind::Volume)
            .filter_map(|m| m.source.as_ref())
        {
            if let Some(user) = others.iter().find(|r| {
                r.plan
                    .mounts
                    .iter()
                    .chain(sidecar_volume_mounts(&r.plan))
                    .any(|m| m.kind == MountKind::Volume && m.source.as_ref() == Some(name))
            }) {
                in_use.push((name.clone(), user.name.clone()));
                continue;
            }
            let path = self.home.volumes_dir().join(name);
            if path.exists() {
                state::remove_tree(&path)
                    .map_err(|source| crate::state::StateError::Write { path, source })?;
                removed.push(name.clone());
            }
        }
        Ok(VolumesRemoved { removed, in_use })
    }
}
