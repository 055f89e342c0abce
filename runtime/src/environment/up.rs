//! `berth up`: reconciles a plan into a running environment, on the backend the plan names.

use std::time::{Duration, Instant};

use envfile_spec::plan::{NetworkMode, Section};
use envfile_spec::reference::ImageReference;
use envfile_spec::Plan;
use serde::Serialize;

use super::bridged_sidecars;
use super::build_plan::{build_key, build_spec};
use super::build_runner::ContainerStepRunner;
use super::environments::{remove_env_dir, Environments};
use super::error::EnvError;
use super::hooks::{self, Hook};
use super::live_sync;
use super::record::{EnvRecord, Ephemeral, ImageUse};
use super::up_decision::{decide, UpAction, Wanted};
use crate::backend::{Backend, EnvStatus, ImageDefaults, StartRequest};
use crate::credentials::HostGit;
use crate::host::clock::now_secs;
use crate::image::build_cache::{BuildCache, BuildCacheSettings};
use crate::image::dockerfile::build::default_name;
use crate::image::dockerfile::DockerfileBuild;
use crate::image::lockfile::lock_path_for;
use crate::image::{Progress, PullOptions, QuietProgress, ResolveOptions};
use crate::net::NetRecord;

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
    /// For `berth run` without `--keep`/`--keep-on-failure`: the environment is removed
    /// after this start ([`StartRequest::throwaway`]).
    pub throwaway: bool,
    /// Grace period when a running environment must be restarted.
    pub stop_timeout: Duration,
    /// Replace taken host ports of `[[ports]]` by free ones (`berth run --publish-auto`).
    pub publish_auto: bool,
    /// `--cache-from`: the registry build cache to read (over `[image].cache`).
    pub cache_from: Option<ImageReference>,
    /// `--cache-to`: the registry build cache to push the built steps to.
    pub cache_to: Option<ImageReference>,
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
            throwaway: false,
            stop_timeout: Duration::from_secs(10),
            publish_auto: false,
            cache_from: None,
            cache_to: None,
        }
    }
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
    /// The host's git as this start left it inside, when it is recorded nowhere: a
    /// throw-away run's (its one command's credentials come from here, see
    /// `credentials::Wanted::of_host_git`); `None` for every other `up`, whose
    /// `host-git.json` sessions read.
    pub host_git: Option<HostGit>,
}

impl Environments {
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
        // Before anything starts: a VM that could not reach its sidecars.
        bridged_sidecars::check_reachable(plan)?;
        self.watch(&env_id, plan.backend, opts.ephemeral)?;
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
            self.undo_first_up(&locked.dir, self.backend(plan.backend));
        }
        result
    }

    /// Removes what a failed first `up` of the environment in `dir` left. Best effort: the
    /// error the caller reports is the `up`'s.
    fn undo_first_up(&self, dir: &std::path::Path, backend: &dyn Backend) {
        live_sync::stop(dir);
        let _ = self.destroy_sidecars(dir, Duration::from_secs(2));
        if backend.destroy(dir, Duration::from_secs(2)).is_ok() {
            let _ = remove_env_dir(dir);
        }
    }

    fn up_locked(
        &self,
        plan: &Plan,
        opts: &UpOptions,
        t0: Instant,
        env_id: String,
        dir: &std::path::Path,
        previous: Option<EnvRecord>,
    ) -> Result<UpReport, EnvError> {
        let backend = self.backend(plan.backend);
        // `[secrets]` are read first: a missing one stops `up` before anything changed.
        let secrets = crate::secrets::resolve(plan)?;
        // A running environment is stopped by the backend it runs on, which is the plan's
        // only if the backend did not change.
        let running_on = match &previous {
            Some(p) => self.backend(p.plan.backend),
            None => backend,
        };
        // The state, the pid and the services' crash loops; not the usage (cgroup reads).
        let current = running_on.status_without_usage(dir)?;
        let hash = plan.hash();
        // What the build reads besides the plan (inputs, host certificates).
        let spec = build_spec(plan, &self.home)?;
        let build_key = build_key(plan, &spec, &self.home)?;
        let wanted = Wanted {
            rebuild: opts.rebuild,
            update: opts.update,
            privileged: opts.privileged,
        };
        let mut decision = decide(
            previous.as_ref(),
            current.status,
            plan,
            &hash,
            &build_key,
            wanted,
        );
        if let Some(report) = self.reconcile_sidecars(
            plan,
            opts,
            previous.as_ref(),
            &current,
            &decision.action,
            dir,
        )? {
            return Ok(report);
        }
        // `[credentials]` is read by each new session from the record: a change of it alone
        // needs no restart. The record takes the new plan, and `up` goes on as for an
        // unchanged environment.
        let only_credentials = matches!(&decision.action, UpAction::Recreated { changed, .. } if changed == &[Section::Credentials]);
        let mut credentials_notice = None;
        if let (true, Some(prev)) = (only_credentials, &previous) {
            if current.status == EnvStatus::Running
                && prev.converged
                && prev.privileged == opts.privileged
                && !opts.rebuild
                && !opts.update
            {
                EnvRecord {
                    plan: plan.clone(),
                    plan_hash: hash.clone(),
                    ..prev.clone()
                }
                .save(dir)?;
                decision.action = UpAction::Unchanged;
                credentials_notice = Some(
                    "[credentials] changed: new sessions (shell, exec, ssh) follow it; no restart needed"
                        .to_string(),
                );
            }
        }
        if let (UpAction::Unchanged, Some(prev)) = (&decision.action, &previous) {
            // A qemu VM a killed `snapshot save` left paused would not answer (we hold
            // the lock: no save is under way).
            let mut notices: Vec<String> = credentials_notice
                .into_iter()
                .chain(backend.resume_if_paused(dir)?)
                .collect();
            // Secrets are read again at every `up`: a changed value reaches the files.
            if !secrets.is_empty() {
                crate::secrets::install(backend, dir, plan.shell.user.as_deref(), &secrets)?;
            }
            // The host's git identity, when it changed since the last `up`.
            notices.extend(crate::credentials::install_identity(
                backend,
                dir,
                HostGit::current(dir, self.home.root(), &plan.credentials),
            ));
            if live_sync::ensure(&self.home, backend, prev)? {
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
                host_git: None,
            });
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
        let runner = ContainerStepRunner::new(&self.home);
        let cache = BuildCache::new(
            BuildCacheSettings::new(
                plan.image.cache.as_deref(),
                plan.image.cache_push,
                opts.cache_from.as_ref(),
                opts.cache_to.as_ref(),
            )?,
            opts.progress.clone(),
        )?;
        // The registry build cache serves the Dockerfile's instructions and the steps alike.
        let image = match &plan.image.dockerfile {
            // The base built from the Dockerfile (`from` is unused then).
            Some(df) => {
                let build = DockerfileBuild {
                    dockerfile: df.path.clone(),
                    context: df.context.clone(),
                    target: df.target.clone(),
                    args: df.args.clone(),
                    name: default_name(&df.path, df.target.as_deref()),
                    resolve: resolve.clone(),
                    // The values `up` read for the environment: a command source does
                    // not run again for the build.
                    secrets: plan
                        .secrets
                        .iter()
                        .map(|(k, s)| (k.clone(), s.source.clone()))
                        .collect::<crate::secrets::LazySecrets>()
                        .with_values(&secrets),
                    ssh_agent: plan
                        .credentials
                        .ssh_agent
                        .then(crate::credentials::AgentTarget::of_this_process)
                        .flatten()
                        .and_then(|t| match t {
                            crate::credentials::AgentTarget::HostSocket(p) => Some(p),
                            crate::credentials::AgentTarget::SshClient(_) => None,
                        }),
                    // Its RUN steps trust the host's CAs as the setup steps do.
                    host_ca: spec.host_ca.clone(),
                };
                let out =
                    self.images
                        .build_dockerfile_cached(&build, &runner, &opts.progress, &cache)?;
                notices.extend(out.notices);
                self.images
                    .build_cached(&out.image, &spec, &runner, &opts.progress, &cache)?
            }
            // The steps are looked up in the cache while the base's layers download.
            None => cache.while_pulling(
                &self.images,
                |id, config| crate::image::early_keys::early_chains(id, config, &spec),
                resolve.pull.clone(),
                |pull| {
                    let resolve = ResolveOptions { pull, ..resolve };
                    let lock = lock_path_for(&plan.file);
                    Ok(self
                        .images
                        .resolve_locked(&plan.image.from, &lock, &resolve)?
                        .0)
                },
                |base| {
                    self.images
                        .build_cached(base, &spec, &runner, &opts.progress, &cache)
                },
            )?,
        };
        notices.extend(cache.notices());
        drop(runner);
        let layer_dirs = image.layers.clone();
        let image_elapsed = t_image.elapsed();

        if decision.stop_first {
            live_sync::stop(dir);
            self.stop_sidecars(dir, opts.stop_timeout)?;
            running_on.stop(dir, opts.stop_timeout)?;
        }

        // `on_create` ran on the writable layer the previous `up` used, if that one stays.
        let mut on_create_done = previous.as_ref().and_then(|p| p.on_create_done.clone());
        // A writable layer (or VM disk) made on another base would not make sense on this
        // one: keep it aside (one generation) instead of deleting the user's changes. The
        // folder may hold what either backend left.
        if let Some(prev_image) = previous.as_ref().and_then(|p| p.image.as_ref()) {
            if prev_image.layer_dirs != layer_dirs {
                on_create_done = None;
                for b in self.all_backends() {
                    notices.extend(b.set_aside(dir)?);
                }
            }
        }

        let mut record = EnvRecord {
            env_id: env_id.clone(),
            name: plan.name.clone(),
            file: plan.file.clone(),
            plan: plan.clone(),
            plan_hash: hash,
            // A throw-away environment's record is written once, converged already: nothing
            // can see it before this `up` ends (the lock is held; a failed first `up` is
            // undone, and `berth run` destroys the environment on any error of `up`; a killed
            // one is garbage), so a second write would only cost a file.
            converged: opts.ephemeral.is_some(),
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
        // Sidecars start before the environment's own services and `on_create`/`on_up`. A
        // VM's, on the bridge, start before the VM: its `/etc/hosts` names them at boot.
        let bridged = bridged_sidecars::on_bridge(plan);
        let hosts = match bridged {
            true => {
                notices.extend(self.up_sidecars(
                    plan,
                    &env_id,
                    dir,
                    &opts.progress,
                    opts.update,
                )?);
                bridged_sidecars::hosts(&self.home, plan, &env_id)?
            }
            false => Vec::new(),
        };
        // Secrets are written before the services start (they may read them); the host's
        // git identity comes with the start itself, before anything runs inside.
        let host_git = HostGit::current(dir, self.home.root(), &plan.credentials);
        let throwaway = opts.throwaway && opts.ephemeral.is_some();
        let hold_services = on_create_pending
            || (!bridged && !plan.sidecars.is_empty())
            || !plan.secrets.is_empty();

        let started = backend.start(&StartRequest {
            home: &self.home,
            plan,
            env_id: &env_id,
            state_dir: dir,
            layers: layer_dirs,
            image: ImageDefaults {
                env: image.config.env.clone(),
                workdir: image.config.working_dir.clone(),
                user: image.config.user.clone(),
            },
            privileged: opts.privileged,
            publish_auto: opts.publish_auto,
            // `on_create` runs before the services where the backend can hold them back.
            hold_services,
            hosts,
            gitconfig: crate::credentials::start_gitconfig(&host_git),
            throwaway,
        });
        let started = match started {
            Ok(started) => started,
            Err(e) => {
                if bridged {
                    self.stop_group(plan, dir);
                }
                return Err(e.into());
            }
        };
        notices.extend(started.notices.iter().cloned());
        if !secrets.is_empty() {
            crate::secrets::install(backend, dir, plan.shell.user.as_deref(), &secrets)?;
        }
        drop(secrets);
        let (host_git, git_notice) =
            crate::credentials::started_identity(host_git, started.gitconfig_error.clone());
        // A throw-away run keeps it for its command: no record file is created and removed
        // per run (each inode made and freed costs every later one a longer search on ext4
        // without a journal).
        let host_git = match throwaway {
            true => {
                notices.extend(git_notice);
                Some(host_git)
            }
            false => {
                notices.extend(crate::credentials::record_started_identity(
                    dir, &host_git, git_notice,
                ));
                None
            }
        };
        // `on_create` and `on_up` run once the synced folders are in.
        live_sync::start(&self.home, backend, &record)?;
        if !bridged {
            notices.extend(self.up_sidecars(plan, &env_id, dir, &opts.progress, opts.update)?);
        }
        if on_create_pending {
            hooks::run(backend, dir, plan, Hook::OnCreate, &opts.progress)?;
            record.on_create_done = create_key;
            record.save(dir)?;
        }
        if hold_services {
            backend.start_services(dir)?;
        }
        hooks::run(backend, dir, plan, Hook::OnUp, &opts.progress)?;
        if !record.converged {
            let record = EnvRecord {
                converged: true,
                ..record
            };
            record.save(dir)?;
        }
        // A throw-away run that has loopback only (`none`, or rootless without pasta)
        // records no network (`container::network_attach`): reported as such all the same.
        let network = self.network_record(&env_id).or_else(|| {
            (throwaway && plan.network.mode != NetworkMode::Host).then(NetRecord::loopback_only)
        });
        Ok(UpReport {
            network,
            env_id,
            name: plan.name.clone(),
            action: decision.action,
            pid: Some(started.pid),
            elapsed: t0.elapsed(),
            image_elapsed,
            notices,
            host_git,
        })
    }
}
