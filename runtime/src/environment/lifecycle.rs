//! `up`, `down`, `destroy`, `status`, `ls`, `exec`: the reconcile loop over one environment.

use std::fs;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use envfile_spec::plan::{BackendKind, Section};
use envfile_spec::Plan;
use serde::Serialize;

use super::build_plan::build_spec;
use super::build_runner::ContainerStepRunner;
use super::error::EnvError;
use super::hooks::{self, Hook};
use super::live_sync;
use super::record::{EnvRecord, Ephemeral, ImageUse};
use super::session::CommandSession;
use super::vm::{self as vm_env, VmView};
use crate::backend::{EnvStatus, StatusReport};
use crate::container::control::ExecRequest;
use crate::container::{ContainerBackend, ContainerSpec, ImageDefaults};
use crate::image::lockfile::lock_path_for;
use crate::image::{
    ImageStore, Progress, PullOptions, QuietProgress, ResolveOptions, ResolvedImage,
};
use crate::net::{NetRecord, Network, NetworkOptions};
use crate::state::{self, BerthHome, FileLock, LockMode};
use crate::vm::command::{run_terminal, VmCommand};
use crate::vm::{VmBackend, VmError};

/// How `up` should go.
#[derive(Clone)]
pub struct UpOptions {
    /// Recreate even when nothing changed.
    pub rebuild: bool,
    /// Re-resolve the image and refresh berth.lock.
    pub update: bool,
    /// No user namespace: the environment's root is the host's root.
    pub privileged: bool,
    /// Where pulls and builds report.
    pub progress: Progress,
    /// For `berth run`: the environment's own id instead of the one derived from the plan.
    pub env_id: Option<String>,
    /// For `berth run`: the process that owns the throw-away environment.
    pub ephemeral: Option<Ephemeral>,
    /// Grace period when a running environment must be restarted.
    pub stop_timeout: Duration,
    /// Replace taken host ports of `[[ports]]` by free ones (`berth run --publish-auto`).
    pub publish_auto: bool,
}

impl Default for UpOptions {
    fn default() -> Self {
        UpOptions {
            rebuild: false,
            update: false,
            privileged: false,
            progress: std::sync::Arc::new(QuietProgress),
            env_id: None,
            ephemeral: None,
            stop_timeout: Duration::from_secs(10),
            publish_auto: false,
        }
    }
}

/// What `up` did.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum UpAction {
    /// Running and the plan is unchanged: nothing was done.
    Unchanged,
    /// Created for the first time.
    Created,
    /// Existed but was stopped (or dead); started again.
    Started,
    /// Was running with another plan; these sections changed (`details`: the same, with
    /// what changed in them, e.g. `image (packages +make)`).
    Recreated {
        changed: Vec<Section>,
        details: Vec<String>,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct UpReport {
    pub env_id: String,
    pub name: String,
    pub action: UpAction,
    /// Supervisor pid on the host.
    pub pid: Option<i32>,
    pub elapsed: Duration,
    /// Part of `elapsed` spent resolving and building the image.
    pub image_elapsed: Duration,
    /// Things the user should know (fallbacks, a reset writable layer, …).
    pub notices: Vec<String>,
    /// Address and forwarded ports (`None` when the environment shares the host's network).
    pub network: Option<NetRecord>,
}

/// What [`Environments::remove_plan_volumes`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VolumesRemoved {
    /// Names of the volumes removed.
    pub removed: Vec<String>,
    /// Volumes kept because another environment mounts them: (volume, environment name).
    pub in_use: Vec<(String, String)>,
}

/// One line of `berth ls`.
#[derive(Debug, Clone, Serialize)]
pub struct EnvSummary {
    pub env_id: String,
    pub name: String,
    pub file: PathBuf,
    pub status: EnvStatus,
    pub image: Option<String>,
    pub ephemeral: bool,
}

/// What `berth status` shows.
#[derive(Debug, Clone, Serialize)]
pub struct EnvView {
    pub env_id: String,
    pub name: String,
    pub file: PathBuf,
    pub image: Option<String>,
    /// The berth.toml changed since the last `up`: these sections differ.
    pub pending_changes: Vec<Section>,
    #[serde(flatten)]
    pub report: StatusReport,
    /// Address, gateway and forwarded ports while it runs.
    pub network: Option<NetRecord>,
    /// VM facts (provider, vCPUs, memory, kernel, boot time) while a VM environment runs or
    /// after its VMM died.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vm: Option<VmView>,
}

/// All environments under one berth home.
pub struct Environments {
    home: BerthHome,
    images: ImageStore,
    pub(super) backend: ContainerBackend,
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
            backend: ContainerBackend,
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

    /// The backend the record in `dir` says the environment runs on (a folder without a
    /// record holds at most a container's leftovers).
    fn kind_at(dir: &Path) -> BackendKind {
        EnvRecord::load(dir)
            .ok()
            .flatten()
            .map(|r| r.plan.backend)
            .unwrap_or(BackendKind::Container)
    }

    /// State of the environment in `dir` on backend `kind`, with VM facts for a VM.
    fn report_at(
        &self,
        dir: &Path,
        kind: BackendKind,
    ) -> Result<(StatusReport, Option<VmView>), EnvError> {
        match kind {
            BackendKind::Container => Ok((self.backend.status(dir)?, None)),
            BackendKind::Vm => Ok(vm_env::report(&self.vms, dir)?),
        }
    }

    /// Stops the environment in `dir` (also cleans up after a dead one).
    fn stop_at(&self, dir: &Path, kind: BackendKind, timeout: Duration) -> Result<(), EnvError> {
        // The sync process goes first: it reads the environment through its supervisor.
        live_sync::stop(dir);
        match kind {
            BackendKind::Container => self.backend.stop(dir, timeout)?,
            BackendKind::Vm => self.vms.stop(dir, timeout)?,
        }
        Ok(())
    }

    /// Takes the environment's lock, waiting (and saying so) while another command holds it.
    pub(super) fn lock(&self, env_id: &str, progress: &Progress) -> Result<Locked, EnvError> {
        let dir = self.home.env_dir(env_id);
        state::create_private_dir(&dir)?;
        let path = dir.join("lock");
        let lock = match FileLock::try_acquire(&path, LockMode::Exclusive)? {
            Some(l) => l,
            None => {
                progress.message(&format!(
                    "waiting for another berth command on {env_id} to finish"
                ));
                FileLock::acquire(&path, LockMode::Exclusive)?
            }
        };
        Ok(Locked { dir, _lock: lock })
    }

    /// Reconciles the plan into a running environment. Garbage collection of orphaned `berth
    /// run` environments is the caller's (every berth command runs it once at its start).
    pub fn up(&self, plan: &Plan, opts: &UpOptions) -> Result<UpReport, EnvError> {
        let t0 = Instant::now();
        let env_id = opts.env_id.clone().unwrap_or_else(|| Self::env_id(plan));
        super::mount_source::check_mount_sources(
            plan,
            self.home.root(),
            &self.home.env_dir(&env_id),
        )?;
        let locked = self.lock(&env_id, &opts.progress)?;
        let previous = EnvRecord::load(&locked.dir)?;
        let first = previous.is_none();
        let result = self.up_locked(plan, opts, t0, env_id, &locked.dir, previous);
        // A failed `on_create`/`on_up` step leaves an environment that came up (recorded,
        // so `destroy` removes it) for `berth shell` to look into; the next `up` retries.
        let hook_failed = matches!(
            result,
            Err(EnvError::OnCreateFailed { .. } | EnvError::OnUpFailed { .. })
        );
        if result.is_err() && first && !hook_failed {
            // Nothing of an environment that never came up stays: processes, cgroups,
            // network, sync process, and its folder (the lock goes last, as in `destroy`).
            self.undo_first_up(&locked.dir, plan.backend);
        }
        result
    }

    /// Removes what a failed first `up` of the environment in `dir` left. Best effort: the
    /// error the caller reports is the `up`'s.
    fn undo_first_up(&self, dir: &Path, kind: BackendKind) {
        live_sync::stop(dir);
        let timeout = Duration::from_secs(2);
        let stopped = match kind {
            BackendKind::Container => self.backend.stop(dir, timeout).map_err(EnvError::from),
            BackendKind::Vm => self.vms.destroy(dir, timeout).map_err(EnvError::from),
        };
        if stopped.is_ok() {
            let _ = remove_env_dir(dir);
        }
    }

    fn up_locked(
        &self,
        plan: &Plan,
        opts: &UpOptions,
        t0: Instant,
        env_id: String,
        dir: &Path,
        previous: Option<EnvRecord>,
    ) -> Result<UpReport, EnvError> {
        // A running environment is stopped by the backend it runs on, which is the plan's
        // only if the backend did not change.
        let previous_kind = previous
            .as_ref()
            .map(|p| p.plan.backend)
            .unwrap_or(plan.backend);
        let (current, _) = self.report_at(dir, previous_kind)?;
        let status = current.status;
        let hash = plan.hash();
        // What the build reads besides the plan (inputs, host certificates).
        let spec = build_spec(plan)?;
        let build_key = spec.content_key();
        if let Some(prev) = &previous {
            if status == EnvStatus::Running
                && prev.converged
                && prev.plan_hash == hash
                && prev.build_key == build_key
                && prev.privileged == opts.privileged
                && !opts.rebuild
                && !opts.update
            {
                // A qemu VM a killed `snapshot save` left paused would not answer (we hold
                // the lock: no save is under way).
                let mut notices = Vec::new();
                if plan.backend == BackendKind::Vm && self.vms.resume_if_paused(dir)? {
                    notices.push(crate::vm::vm_backend::PAUSED_NOTICE.to_string());
                }
                if live_sync::ensure(&self.home, prev)? {
                    notices.push(
                        "the sync process was not running; it was restarted and caught up".into(),
                    );
                }
                // "Up to date" must not hide a service that keeps dying.
                for s in &current.services {
                    if let Some(c) = &s.crash_loop {
                        notices.push(format!(
                            "service {} is {}; see `berth logs {}`",
                            s.name,
                            c.describe(),
                            s.name
                        ));
                    }
                }
                return Ok(UpReport {
                    network: self.network_record(&env_id),
                    env_id,
                    name: plan.name.clone(),
                    action: UpAction::Unchanged,
                    pid: current.pid,
                    elapsed: t0.elapsed(),
                    image_elapsed: Duration::ZERO,
                    notices,
                });
            }
        }
        let mut notices = Vec::new();

        // The image: resolved (pulled, imported, bootstrapped) and pinned in berth.lock.
        let resolve = ResolveOptions {
            pull: PullOptions {
                progress: opts.progress.clone(),
                ..PullOptions::default()
            },
            update: opts.update,
            pinned: None,
        };
        let t_image = Instant::now();
        // Held until env.json lists the layers, so a concurrent `image prune` keeps them.
        let _store = self.images.lock_shared()?;
        let (base, _) =
            self.images
                .resolve_locked(&plan.image.from, &lock_path_for(&plan.file), &resolve)?;
        let scratch = self.home.staging_dir("build")?;
        let runner = ContainerStepRunner {
            scratch: scratch.path().to_path_buf(),
            net_home: self.home.root().to_path_buf(),
        };
        let image = self.images.build(&base, &spec, &runner, &opts.progress)?;
        drop(scratch);
        let layer_dirs = image.layers.clone();
        let image_elapsed = t_image.elapsed();

        let action = match (&previous, status) {
            (None, _) => UpAction::Created,
            (Some(prev), EnvStatus::Running | EnvStatus::Starting) => {
                let mut changed = prev.plan.changed_sections(plan);
                if prev.build_key != build_key && !changed.contains(&Section::Image) {
                    changed.push(Section::Image);
                    changed.sort();
                }
                UpAction::Recreated {
                    changed,
                    details: prev.plan.describe_changes(plan),
                }
            }
            (Some(_), _) => UpAction::Started,
        };
        if status != EnvStatus::Stopped {
            self.stop_at(dir, previous_kind, opts.stop_timeout)?;
        }

        // `on_create` ran on the writable layer the previous `up` used, if that one stays.
        let mut on_create_done = previous.as_ref().and_then(|p| p.on_create_done.clone());
        // A writable layer (or VM disk) made on another base would not make sense on this
        // one: keep it aside (one generation) instead of deleting the user's changes.
        if let Some(prev_image) = previous.as_ref().and_then(|p| p.image.as_ref()) {
            if prev_image.layer_dirs != layer_dirs {
                on_create_done = None;
                notices.extend(set_disks_aside(dir)?);
            }
            if prev_image.layer_dirs != layer_dirs && dir_has_entries(&dir.join("upper")) {
                let aside = dir.join("upper.previous");
                let _ = state::remove_tree(&aside);
                fs::rename(dir.join("upper"), &aside).map_err(|source| {
                    crate::state::StateError::Write {
                        path: aside.clone(),
                        source,
                    }
                })?;
                let _ = state::remove_tree(&dir.join("work"));
                notices.push(format!(
                    "the base image changed, so the environment starts from a fresh writable layer; the previous one is kept in {}",
                    aside.display()
                ));
            }
        }

        let record = EnvRecord {
            env_id: env_id.clone(),
            name: plan.name.clone(),
            file: plan.file.clone(),
            plan: plan.clone(),
            plan_hash: hash,
            converged: false,
            image: Some(ImageUse {
                name: image.name.clone(),
                id: image.id.to_string(),
                layer_dirs: layer_dirs.clone(),
            }),
            layers: image.diff_ids.iter().map(|d| d.to_string()).collect(),
            privileged: opts.privileged,
            created_at: previous
                .as_ref()
                .map(|p| p.created_at)
                .unwrap_or_else(now_secs),
            ephemeral: opts.ephemeral,
            build_key: build_key.clone(),
            on_create_done,
        };
        record.save(dir)?;
        let create_key = hooks::on_create_key(plan);
        let on_create_pending = create_key.is_some() && record.on_create_done != create_key;

        let mut record = record;
        let pid = match plan.backend {
            BackendKind::Container => {
                let pid = self.start_container(
                    &record,
                    &image,
                    layer_dirs,
                    opts,
                    on_create_pending,
                    &mut notices,
                )?;
                if on_create_pending {
                    self.run_container_hook(dir, plan, Hook::OnCreate, &opts.progress)?;
                    record.on_create_done = create_key;
                    record.save(dir)?;
                    self.backend.start_services(dir)?;
                }
                self.run_container_hook(dir, plan, Hook::OnUp, &opts.progress)?;
                Some(pid)
            }
            BackendKind::Vm => {
                let (mut spec, vm_notices) = vm_env::spec_from_plan(plan, dir, layer_dirs)?;
                notices.extend(vm_notices);
                // The image's own variables (PATH, …) under the plan's, as for containers.
                for kv in &image.config.env {
                    if let Some((k, v)) = kv.split_once('=') {
                        spec.env
                            .entry(k.to_string())
                            .or_insert_with(|| v.to_string());
                    }
                }
                // `on_create` and `on_up` run once the synced folders are in (as for
                // containers).
                let on_up = std::mem::take(&mut spec.on_up);
                let st = self.vms.start(&spec)?;
                live_sync::start(&self.home, &record)?;
                if on_create_pending {
                    self.run_vm_hook(dir, &plan.on_create, Hook::OnCreate, &opts.progress)?;
                    record.on_create_done = create_key;
                    record.save(dir)?;
                }
                self.run_vm_hook(dir, &on_up, Hook::OnUp, &opts.progress)?;
                st.process.map(|p| p.pid)
            }
        };
        let record = EnvRecord {
            converged: true,
            ..record
        };
        record.save(dir)?;
        Ok(UpReport {
            network: self.network_record(&env_id),
            env_id,
            name: plan.name.clone(),
            action,
            pid,
            elapsed: t0.elapsed(),
            image_elapsed,
            notices,
        })
    }

    /// Starts the container of `plan` (its services held back with `hold_services`, for
    /// `on_create`); returns the supervisor pid.
    fn start_container(
        &self,
        record: &EnvRecord,
        image: &ResolvedImage,
        layer_dirs: Vec<PathBuf>,
        opts: &UpOptions,
        hold_services: bool,
        notices: &mut Vec<String>,
    ) -> Result<i32, EnvError> {
        let (plan, env_id) = (&record.plan, record.env_id.as_str());
        let defaults = ImageDefaults {
            env: image.config.env.clone(),
            workdir: image.config.working_dir.clone(),
            user: image.config.user.clone(),
        };
        let (mut spec, spec_notices) = ContainerSpec::from_plan(
            plan,
            &self.home,
            env_id,
            layer_dirs,
            defaults,
            opts.privileged,
        )?;
        notices.extend(spec_notices);
        spec.publish_auto = opts.publish_auto;
        spec.hold_services = hold_services;
        if let (_, Some(n)) = crate::container::network::effective_mode(
            &Network::new(&self.home, NetworkOptions::default()),
            spec.network,
        ) {
            notices.push(n);
        }
        let started = self.backend.start(&spec)?;
        notices.extend(started.notices.iter().cloned());
        live_sync::start(&self.home, record)?;

        Ok(started.pid)
    }

    /// The environment's network as recorded while it runs.
    fn network_record(&self, env_id: &str) -> Option<NetRecord> {
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

    /// Stops the environment; its writable layer stays. Returns whether it was running.
    pub fn down(&self, env_id: &str, timeout: Duration) -> Result<bool, EnvError> {
        let locked = self.lock(env_id, &(std::sync::Arc::new(QuietProgress) as Progress))?;
        let kind = Self::kind_at(&locked.dir);
        let was = self.report_at(&locked.dir, kind)?.0.status;
        self.stop_at(&locked.dir, kind, timeout)?;
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
        live_sync::stop(&locked.dir);
        match Self::kind_at(&locked.dir) {
            BackendKind::Container => self.backend.stop(&locked.dir, timeout)?,
            BackendKind::Vm => self.vms.destroy(&locked.dir, timeout)?,
        }
        if volumes {
            if let Some(r) = EnvRecord::load(&locked.dir)? {
                for m in &r.plan.mounts {
                    if m.kind == envfile_spec::plan::MountKind::Volume {
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

    /// `destroy --volumes` of a project whose environment is already gone: removes the
    /// volumes its berth.toml declares, except those another environment still mounts.
    pub fn remove_plan_volumes(&self, plan: &Plan) -> Result<VolumesRemoved, EnvError> {
        let others = self.records()?;
        let mut removed = Vec::new();
        let mut in_use = Vec::new();
        for name in plan
            .mounts
            .iter()
            .filter(|m| m.kind == envfile_spec::plan::MountKind::Volume)
            .filter_map(|m| m.source.as_ref())
        {
            if let Some(user) = others.iter().find(|r| {
                r.plan.mounts.iter().any(|m| {
                    m.kind == envfile_spec::plan::MountKind::Volume
                        && m.source.as_ref() == Some(name)
                })
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

    /// State, usage and pending changes of an environment.
    pub fn status(&self, record: &EnvRecord, current: Option<&Plan>) -> Result<EnvView, EnvError> {
        let dir = self.home.env_dir(&record.env_id);
        let (report, vm) = self.report_at(&dir, record.plan.backend)?;
        let network = match report.status {
            EnvStatus::Running => self.network_record(&record.env_id),
            _ => None,
        };
        Ok(EnvView {
            env_id: record.env_id.clone(),
            name: record.name.clone(),
            file: record.file.clone(),
            image: record.image.as_ref().map(|i| i.name.clone()),
            pending_changes: current
                .map(|p| record.plan.changed_sections(p))
                .unwrap_or_default(),
            report,
            network,
            vm,
        })
    }

    /// Every environment with its state.
    pub fn list(&self) -> Result<Vec<EnvSummary>, EnvError> {
        self.collect_garbage();
        let mut out = Vec::new();
        for r in self.records()? {
            let status = self
                .report_at(&self.home.env_dir(&r.env_id), r.plan.backend)
                .map(|(s, _)| s.status)
                .unwrap_or(EnvStatus::Dead);
            out.push(EnvSummary {
                env_id: r.env_id,
                name: r.name,
                file: r.file,
                status,
                image: r.image.map(|i| i.name),
                ephemeral: r.ephemeral.is_some(),
            });
        }
        Ok(out)
    }

    /// Runs a command inside the running environment with the given stdio.
    pub fn exec(
        &self,
        record: &EnvRecord,
        req: &ExecRequest,
        stdio: [BorrowedFd<'_>; 3],
    ) -> Result<i32, EnvError> {
        let dir = self.running_dir(record)?;
        match record.plan.backend {
            BackendKind::Container => {
                let r = self.backend.exec(&dir, req, stdio);
                self.unless_stopped(record, &dir, r)
            }
            BackendKind::Vm => {
                let r = self.vm_command(&dir, req, stdio).and_then(VmCommand::wait);
                self.unless_vm_stopped(record, &dir, r)
            }
        }
    }

    /// Starts a command without waiting for it, to forward signals or enforce a deadline.
    pub fn exec_start(
        &self,
        record: &EnvRecord,
        req: &ExecRequest,
        stdio: [BorrowedFd<'_>; 3],
    ) -> Result<CommandSession, EnvError> {
        let dir = self.running_dir(record)?;
        match record.plan.backend {
            BackendKind::Container => {
                let r = self.backend.exec_start(&dir, req, stdio);
                self.unless_stopped(record, &dir, r)
                    .map(CommandSession::Container)
            }
            BackendKind::Vm => {
                let r = self.vm_command(&dir, req, stdio);
                self.unless_vm_stopped(record, &dir, r)
                    .map(CommandSession::Vm)
            }
        }
    }

    /// Starts `req` in the VM in `dir` with the given stdio (never on a terminal).
    fn vm_command(
        &self,
        dir: &Path,
        req: &ExecRequest,
        stdio: [BorrowedFd<'_>; 3],
    ) -> Result<VmCommand, VmError> {
        let mut exec = vm_env::exec_of(req);
        exec.tty = false;
        VmCommand::start(self.vms.connect(dir)?, exec, stdio)
    }

    /// Makes a throw-away environment permanent (`run --keep`): garbage collection no
    /// longer removes it when its `berth run` ends.
    pub fn keep(&self, env_id: &str) -> Result<(), EnvError> {
        let dir = self.home.env_dir(env_id);
        if let Some(mut r) = EnvRecord::load(&dir)? {
            r.ephemeral = None;
            r.save(&dir)?;
        }
        Ok(())
    }

    /// An interactive command on the caller's terminal (or plain stdio when not a terminal).
    pub fn shell(&self, record: &EnvRecord, req: &ExecRequest) -> Result<i32, EnvError> {
        let dir = self.running_dir(record)?;
        match record.plan.backend {
            BackendKind::Container => {
                let r = self.backend.shell(&dir, req);
                self.unless_stopped(record, &dir, r)
            }
            BackendKind::Vm => {
                let (i, o, e) = (std::io::stdin(), std::io::stdout(), std::io::stderr());
                let stdio = [i.as_fd(), o.as_fd(), e.as_fd()];
                let r = if req.tty && std::io::IsTerminal::is_terminal(&i) {
                    self.vms
                        .connect(&dir)
                        .and_then(|conn| run_terminal(conn, vm_env::exec_of(req), stdio))
                } else {
                    self.vm_command(&dir, req, stdio).and_then(VmCommand::wait)
                };
                self.unless_vm_stopped(record, &dir, r)
            }
        }
    }

    /// Like [`unless_stopped`](Self::unless_stopped) for a VM: a command that failed because
    /// the VM is gone reports "not running".
    fn unless_vm_stopped<T>(
        &self,
        record: &EnvRecord,
        dir: &Path,
        r: Result<T, VmError>,
    ) -> Result<T, EnvError> {
        r.map_err(|e| {
            if matches!(e, VmError::NotRunning) || !self.vms.is_running(dir) {
                EnvError::NotRunning {
                    name: record.name.clone(),
                }
            } else {
                e.into()
            }
        })
    }

    /// A command that failed because the environment stopped under it (a concurrent `down`
    /// refused or dropped the control connection) reports "not running", not a broken
    /// socket.
    fn unless_stopped<T>(
        &self,
        record: &EnvRecord,
        dir: &Path,
        r: Result<T, crate::container::ContainerError>,
    ) -> Result<T, EnvError> {
        r.map_err(|e| {
            let running = matches!(
                self.backend.status(dir).map(|s| s.status),
                Ok(EnvStatus::Running)
            );
            // A supervisor that still answers is up: the error is the command's own.
            if running && crate::container::control::ping(&dir.join("control.sock")) {
                e.into()
            } else {
                EnvError::NotRunning {
                    name: record.name.clone(),
                }
            }
        })
    }

    /// The environment's folder, when it is running.
    pub fn running_dir(&self, record: &EnvRecord) -> Result<PathBuf, EnvError> {
        let dir = self.home.env_dir(&record.env_id);
        match self.report_at(&dir, record.plan.backend)?.0.status {
            EnvStatus::Running => Ok(dir),
            _ => Err(EnvError::NotRunning {
                name: record.name.clone(),
            }),
        }
    }
}

/// Renames the environment's VM disk (if any) to `*.previous`, replacing an older one; says
/// so in the returned notice.
fn set_disks_aside(dir: &Path) -> Result<Option<String>, EnvError> {
    let mut moved = Vec::new();
    for name in vm_env::DISK_FILES {
        let disk = dir.join(name);
        if !disk.exists() {
            continue;
        }
        let aside = dir.join(format!("{name}.previous"));
        fs::rename(&disk, &aside).map_err(|source| crate::state::StateError::Write {
            path: aside.clone(),
            source,
        })?;
        moved.push(aside.display().to_string());
    }
    Ok((!moved.is_empty()).then(|| {
        format!(
            "the base image changed, so the VM starts from a fresh disk; the previous one is kept as {}",
            moved.join(", ")
        )
    }))
}

fn dir_has_entries(p: &Path) -> bool {
    fs::read_dir(p).is_ok_and(|mut rd| rd.next().is_some())
}

/// Removes an environment folder. The lock file goes last, while we still hold it, so a
/// waiting command wakes up to a folder that no longer has a record.
fn remove_env_dir(dir: &Path) -> Result<(), EnvError> {
    let err = |path: &Path, source| crate::state::StateError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.file_name().is_some_and(|n| n == "lock") {
                continue;
            }
            if p.is_dir() && !p.is_symlink() {
                state::remove_tree(&p).map_err(|s| err(&p, s))?;
            } else {
                fs::remove_file(&p).map_err(|s| err(&p, s))?;
            }
        }
    }
    let _ = fs::remove_file(dir.join("lock"));
    let _ = fs::remove_dir(dir);
    Ok(())
}

pub(super) fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
