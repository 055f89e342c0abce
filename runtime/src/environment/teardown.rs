//! `berth down` and `berth destroy` (with the named volumes of `--volumes`).

use std::time::Duration;

use envfile_spec::plan::MountKind;
use envfile_spec::Plan;

use super::environments::{remove_env_dir, Environments};
use super::error::EnvError;
use super::live_sync;
use super::record::EnvRecord;
use super::sidecars::sidecar_volume_mounts;
use crate::backend::EnvStatus;
use crate::image::{Progress, QuietProgress};
use crate::state;

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
    pub fn down(&self, env_id: &str, timeout: Duration) -> Result<bool, EnvError> {
        let locked = self.lock(env_id, &(std::sync::Arc::new(QuietProgress) as Progress))?;
        let backend = self.backend_at(&locked.dir);
        let was = backend.status(&locked.dir)?.status;
        // The sync process goes first: it reads the environment through its supervisor.
        live_sync::stop(&locked.dir);
        // In reverse start order: a container's sidecars started after it, a VM's before it.
        let vm_first = EnvRecord::load(&locked.dir)?
            .is_some_and(|r| super::bridged_sidecars::on_bridge(&r.plan));
        if vm_first {
            backend.stop(&locked.dir, timeout)?;
        }
        self.stop_sidecars(&locked.dir, timeout)?;
        if !vm_first {
            backend.stop(&locked.dir, timeout)?;
        }
        if let Some(mut r) = EnvRecord::load(&locked.dir)? {
            r.converged = false;
            r.save(&locked.dir)?;
        }
        Ok(was != EnvStatus::Stopped)
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
