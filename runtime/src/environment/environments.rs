//! [`Environments`]: all environments of one berth home, the backend each runs on (picked
//! once, by [`Environments::backend`]), their records and locks.

use std::fs;
use std::path::{Path, PathBuf};

use envfile_spec::plan::BackendKind;
use envfile_spec::Plan;

use super::error::EnvError;
use super::record::EnvRecord;
use crate::backend::{Backend, BackendError, EnvStatus};
use crate::container::ContainerBackend;
use crate::image::{ImageStore, Progress};
use crate::net::{NetRecord, Network, NetworkOptions};
use crate::state::{self, BerthHome, FileLock, LockMode, WatchList, ENV_LOCK_FILE};
use crate::vm::VmBackend;

/// All environments under one berth home.
pub struct Environments {
    pub(super) home: BerthHome,
    pub(super) images: ImageStore,
    container: ContainerBackend,
    pub(super) vms: VmBackend,
}

/// An environment's folder and its held lock.
pub(super) struct Locked {
    pub(super) dir: PathBuf,
    _lock: FileLock,
}

impl Environments {
    pub fn open(home: &BerthHome) -> Self {
        Environments {
            home: home.clone(),
            images: ImageStore::open(home),
            container: ContainerBackend,
            vms: VmBackend::new(home.clone()),
        }
    }

    pub fn home(&self) -> &BerthHome {
        &self.home
    }

    /// The id of the environment a plan describes.
    pub fn env_id(plan: &Plan) -> String {
        state::env_id(&plan.name, &plan.file)
    }

    /// The backend that runs environments of `kind`: the one place that tells them apart.
    pub fn backend(&self, kind: BackendKind) -> &dyn Backend {
        match kind {
            BackendKind::Container => &self.container,
            BackendKind::Vm => &self.vms,
        }
    }

    /// Every backend, for what any of them may have left in an environment's folder (the
    /// VM's first, so their notices keep their order).
    pub(super) fn all_backends(&self) -> [&dyn Backend; 2] {
        [&self.vms, &self.container]
    }

    /// The backend the record in `dir` says the environment runs on (a folder without a
    /// record holds at most a container's leftovers).
    pub(super) fn backend_at(&self, dir: &Path) -> &dyn Backend {
        self.backend_of(EnvRecord::load(dir).ok().flatten().as_ref())
    }

    /// The backend of the environment whose record is `record` (a container's without one).
    pub(super) fn backend_of(&self, record: Option<&EnvRecord>) -> &dyn Backend {
        self.backend(record.map_or(BackendKind::Container, |r| r.plan.backend))
    }

    /// Takes the environment's lock, waiting (and saying so) while another command holds it.
    pub(super) fn lock(&self, env_id: &str, progress: &Progress) -> Result<Locked, EnvError> {
        let dir = self.home.env_dir(env_id);
        state::create_private_dir_in_place(&dir)?;
        let path = self.home.env_lock(env_id);
        // A `berth run`'s new folder: its lock file is its marker under a second name.
        WatchList::of(&self.home).link_run_marker(env_id, &path);
        let lock = match FileLock::try_acquire(&path, LockMode::Exclusive)? {
            Some(l) => l,
            None => {
                progress.message(&format!(
                    "waiting for another berth command on {env_id} to finish"
                ));
                FileLock::acquire(&path, LockMode::Exclusive)?
            }
        };
        // Crash tests: a `berth run` killed here has its folder (and project copy) but no
        // record yet.
        crate::host::fault_injection::checkpoint("env-locked");
        Ok(Locked { dir, _lock: lock })
    }

    /// Indexes (in the plan's mounts) of the mounts berth's sync process serves for the
    /// environment of `record`: its sync mounts, and in a VM the bind mounts it does not share
    /// through virtio-fs.
    pub fn sync_mounts(&self, record: &EnvRecord) -> Vec<usize> {
        let dir = self.home.env_dir(&record.env_id);
        self.backend(record.plan.backend)
            .sync_mounts(&dir, &record.plan)
    }

    /// The environment's network as recorded while it runs.
    pub(super) fn network_record(&self, env_id: &str) -> Option<NetRecord> {
        Network::new(&self.home, NetworkOptions::default())
            .record(env_id)
            .ok()
            .flatten()
    }

    /// Finds an environment by id, or by name when exactly one has it.
    pub fn find(&self, id_or_name: &str) -> Result<EnvRecord, EnvError> {
        if let Some(r) = EnvRecord::load(&self.home.env_dir(id_or_name))? {
            return Ok(r);
        }
        let matches: Vec<EnvRecord> = self
            .records()?
            .into_iter()
            .filter(|r| r.name == id_or_name)
            .collect();
        match <[EnvRecord; 1]>::try_from(matches) {
            Ok([r]) => Ok(r),
            Err(_) => Err(EnvError::NotFound {
                name: id_or_name.to_string(),
            }),
        }
    }

    /// Every environment record on this machine.
    pub fn records(&self) -> Result<Vec<EnvRecord>, EnvError> {
        let mut out = Vec::new();
        let Ok(rd) = fs::read_dir(self.home.envs_dir()) else {
            return Ok(out);
        };
        for entry in rd.flatten() {
            match EnvRecord::load(&entry.path()) {
                Ok(Some(r)) => out.push(r),
                // Another user's environment in this home: say so rather than hide it.
                Err(e @ crate::state::StateError::NotYours { .. }) => return Err(e.into()),
                _ => {}
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name).then(a.env_id.cmp(&b.env_id)));
        Ok(out)
    }

    /// Makes a throw-away environment permanent (`run --keep`): garbage collection no
    /// longer removes it when its `berth run` ends.
    pub fn keep(&self, env_id: &str) -> Result<(), EnvError> {
        let dir = self.home.env_dir(env_id);
        if let Some(mut r) = EnvRecord::load(&dir)? {
            r.ephemeral = None;
            r.save(&dir)?;
        }
        // After the record: a marker left by a kill in between is dropped by the next gc.
        WatchList::of(&self.home).remove_run(env_id)?;
        Ok(())
    }

    /// A command that failed because the environment stopped under it (a concurrent `down`
    /// refused or dropped the control connection, the VM is gone) reports "not running",
    /// not a broken connection.
    pub(super) fn unless_stopped<T>(
        &self,
        record: &EnvRecord,
        dir: &Path,
        r: Result<T, BackendError>,
    ) -> Result<T, EnvError> {
        r.map_err(|e| {
            // An environment that still answers is up: the error is the command's own.
            if e.is_not_running() || !self.backend(record.plan.backend).still_running(dir) {
                EnvError::NotRunning {
                    name: record.name.clone(),
                }
            } else {
                e.into()
            }
        })
    }

    /// The environment's folder, when it is running.
    pub fn running_dir(&self, record: &EnvRecord) -> Result<PathBuf, EnvError> {
        let dir = self.home.env_dir(&record.env_id);
        let backend = self.backend(record.plan.backend);
        // The cheap answer first (a container's: its state file and supervisor, without the
        // cgroups' usage figures every `exec` and `run` would read for nothing); the full
        // status only to report why it is not running.
        if backend.liveness(&dir) == EnvStatus::Running {
            return Ok(dir);
        }
        match backend.status(&dir)?.status {
            EnvStatus::Running => Ok(dir),
            _ => Err(EnvError::NotRunning {
                name: record.name.clone(),
            }),
        }
    }
}

/// Removes an environment folder. The lock file goes last, while we still hold it, so a
/// waiting command wakes up to a folder that no longer has a record.
pub(super) fn remove_env_dir(dir: &Path) -> Result<(), EnvError> {
    let err = |path: &Path, source| crate::state::StateError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.file_name().is_some_and(|n| n == ENV_LOCK_FILE) {
                continue;
            }
            if p.is_dir() && !p.is_symlink() {
                state::remove_tree(&p).map_err(|s| err(&p, s))?;
            } else {
                fs::remove_file(&p).map_err(|s| err(&p, s))?;
            }
        }
    }
    let _ = fs::remove_file(dir.join(ENV_LOCK_FILE));
    let _ = fs::remove_dir(dir);
    // Garbage collection no longer watches it (a marker left by a kill before this line goes
    // with the next gc, which finds no folder).
    if !dir.exists() {
        if let Some((watch, env_id)) = WatchList::of_env_dir(dir) {
            let _ = watch.remove(&env_id);
        }
    }
    Ok(())
}
