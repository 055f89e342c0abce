//! Sidecars of an environment (runtime/README.md, "Sidecars"): started by `up` after a
//! container environment's container (before a VM) and before its own services and `on_up`,
//! in [`Plan::sidecar_start_order`], each waited for by its `ready` probe; stopped by `down`
//! in reverse order before the environment; removed by `destroy`. A sidecar is a container
//! of its own (`envs/<id>/sidecars/<name>/`), joined to a container environment's user and
//! network namespaces (`container::sidecar`), or on berth's bridge beside a VM
//! (`bridged_sidecars.rs`); its record (`sidecar.json` in its folder) holds the hash of its
//! plan, so a reconciling `up` restarts only the sidecars that changed.

use std::fs;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use envfile_spec::plan::{MountKind, MountPlan, ReadyProbe, Section, SidecarPlan};
use envfile_spec::Plan;
use serde::{Deserialize, Serialize};

use super::bridged_sidecars;
use super::environments::Environments;
use super::error::EnvError;
use super::record::EnvRecord;
use super::sidecar_error::SidecarError;
use super::up::{UpOptions, UpReport};
use super::up_decision::UpAction;
use crate::backend::{Backend, EnvStatus, ExecRequest, StatusReport};
use crate::container::sidecar::{bridged_sidecar_spec, sidecar_dir, sidecar_spec, Joined};
use crate::container::ContainerBackend;
use crate::image::lockfile::{lock_path_for, LockFile, LockSlot};
use crate::image::{human_duration, Progress, PullOptions, ResolveOptions};
use crate::state;

/// Lines of a sidecar's log shown when it does not become ready.
const LOG_TAIL_LINES: usize = 20;
/// Pause between two readiness probes.
const PROBE_INTERVAL: Duration = Duration::from_millis(100);

/// One sidecar in `berth status`.
#[derive(Debug, Clone, Serialize)]
pub struct SidecarView {
    pub name: String,
    /// The image it was started from (as the store names it), once started.
    pub image: Option<String>,
    /// State, usage and its server (the one service, named after the sidecar).
    #[serde(flatten)]
    pub report: StatusReport,
    /// Whether its `ready` probe passes now (`None`: no probe, or it is not running).
    pub ready: Option<bool>,
}

/// What `up` recorded about a running sidecar (`sidecar.json` in its folder).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct SidecarRecord {
    /// Hash of its plan and image: another one means the sidecar must be restarted.
    plan_hash: String,
    /// The image it was started from (name, layers) for `status` and `image prune`.
    image: String,
    layer_dirs: Vec<PathBuf>,
}

const SIDECAR_RECORD: &str = "sidecar.json";

fn load_record(dir: &Path) -> Option<SidecarRecord> {
    let bytes = fs::read(dir.join(SIDECAR_RECORD)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn plan_hash(plan: &SidecarPlan, image_id: &str) -> String {
    use sha2::Digest;
    let bytes = serde_json::to_vec(&(plan, image_id)).unwrap_or_default();
    hex::encode(sha2::Sha256::digest(&bytes))
}

/// The named volumes the sidecars of `plan` mount.
pub(super) fn sidecar_volume_mounts(plan: &Plan) -> impl Iterator<Item = &MountPlan> {
    plan.sidecars
        .values()
        .flat_map(|s| s.mounts.iter())
        .filter(|m| m.kind == MountKind::Volume)
}

/// Gives the sidecars of a `berth run`'s plan volumes of their own (`<run name>-<volume>`):
/// each run starts with empty ones, parallel runs do not share data, and they are removed
/// with the run's environment ([`Environments::destroy_sidecars`]). The volumes named in
/// `keep` (`run --keep-volumes`) stay the named volumes themselves; a name no sidecar
/// mounts is an error.
pub(super) fn private_run_volumes(run: &mut Plan, keep: &[String]) -> Result<(), EnvError> {
    let known: Vec<String> = sidecar_volume_mounts(run)
        .filter_map(|m| m.source.clone())
        .collect();
    if let Some(unknown) = keep.iter().find(|k| !known.contains(k)) {
        return Err(EnvError::Sidecar(SidecarError::UnknownVolume {
            name: unknown.clone(),
            known: match known.is_empty() {
                true => "none".into(),
                false => known.join(", "),
            },
        }));
    }
    let prefix = run.name.clone();
    for m in run.sidecars.values_mut().flat_map(|s| s.mounts.iter_mut()) {
        if m.kind == MountKind::Volume {
            if let Some(source) = &mut m.source {
                if !keep.contains(source) {
                    *source = format!("{prefix}-{source}");
                }
            }
        }
    }
    Ok(())
}

/// The sidecar folders of the environment in `env_dir`, by name.
fn sidecar_dirs(env_dir: &Path) -> Vec<(String, PathBuf)> {
    let Ok(entries) = fs::read_dir(env_dir.join("sidecars")) else {
        return Vec::new();
    };
    let mut out: Vec<(String, PathBuf)> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .collect();
    out.sort();
    out
}

/// The sidecars in the order to stop them: the reverse of the recorded plan's start order,
/// then any folder the plan does not name (a sidecar removed from berth.toml).
fn stop_order(env_dir: &Path) -> Vec<(String, PathBuf)> {
    let mut dirs = sidecar_dirs(env_dir);
    let mut order = Vec::new();
    if dirs.is_empty() {
        // No sidecar (the usual case): the record is not needed to order none.
        return order;
    }
    if let Ok(Some(record)) = EnvRecord::load(env_dir) {
        for name in record.plan.sidecar_start_order().into_iter().rev() {
            if let Some(i) = dirs.iter().position(|(n, _)| n == name) {
                order.push(dirs.remove(i));
            }
        }
    }
    order.extend(dirs);
    order
}

impl Environments {
    /// `up` of a running environment whose plan changed only in its sidecars: restarts the
    /// sidecars that changed (and removes those gone), leaves the environment and the other
    /// sidecars running. `None` when this is not such an `up`.
    pub(super) fn reconcile_sidecars(
        &self,
        plan: &Plan,
        opts: &UpOptions,
        previous: Option<&EnvRecord>,
        current: &StatusReport,
        action: &UpAction,
        dir: &Path,
    ) -> Result<Option<UpReport>, EnvError> {
        let t0 = Instant::now();
        let Some(prev) = previous else {
            return Ok(None);
        };
        let only_sidecars = matches!(action, UpAction::Recreated { changed, .. } if changed == &[Section::Sidecars]);
        if !only_sidecars
            || current.status != EnvStatus::Running
            || !prev.converged
            || prev.privileged != opts.privileged
            || opts.rebuild
            || opts.update
        {
            return Ok(None);
        }
        let notices = self.up_sidecars(plan, &prev.env_id, dir, &opts.progress, false)?;
        if bridged_sidecars::on_bridge(plan) {
            // A restarted sidecar may have another address on the bridge.
            let hosts = bridged_sidecars::hosts(&self.home, plan, &prev.env_id)?;
            self.backend(plan.backend).set_hosts(dir, &hosts)?;
        }
        EnvRecord {
            plan: plan.clone(),
            plan_hash: plan.hash(),
            ..prev.clone()
        }
        .save(dir)?;
        Ok(Some(UpReport {
            network: self.network_record(&prev.env_id),
            env_id: prev.env_id.clone(),
            name: plan.name.clone(),
            action: action.clone(),
            pid: current.pid,
            elapsed: t0.elapsed(),
            image_elapsed: Duration::ZERO,
            notices,
            host_git: None,
        }))
    }

    /// Starts the sidecars of `plan` beside the running container environment in `env_dir`
    /// (a VM's: on the bridge, before the VM starts), in start order, each waited for by its
    /// `ready` probe; a sidecar already running as planned (a container's: in the
    /// environment's network namespace) stays as it is, sidecars no longer in the plan are
    /// stopped and removed (their volumes stay). On any failure every sidecar and the
    /// environment are stopped: nothing of the group is left running.
    pub(super) fn up_sidecars(
        &self,
        plan: &Plan,
        env_id: &str,
        env_dir: &Path,
        progress: &Progress,
        update: bool,
    ) -> Result<Vec<String>, EnvError> {
        if plan.sidecars.is_empty() && sidecar_dirs(env_dir).is_empty() {
            return Ok(Vec::new());
        }
        let result = self.up_sidecars_inner(plan, env_id, env_dir, progress, update);
        if result.is_err() {
            self.stop_group(plan, env_dir);
        }
        result
    }

    /// Stops every sidecar and the environment in `env_dir` after a failed start of the
    /// group (best effort: the caller reports the failure).
    pub(super) fn stop_group(&self, plan: &Plan, env_dir: &Path) {
        let timeout = Duration::from_secs(5);
        let _ = self.stop_sidecars(env_dir, timeout);
        super::live_sync::stop(env_dir);
        let _ = self.backend(plan.backend).stop(env_dir, timeout);
    }

    fn up_sidecars_inner(
        &self,
        plan: &Plan,
        env_id: &str,
        env_dir: &Path,
        progress: &Progress,
        update: bool,
    ) -> Result<Vec<String>, EnvError> {
        let backend: &dyn Backend = &ContainerBackend;
        for (name, dir) in sidecar_dirs(env_dir) {
            if !plan.sidecars.contains_key(&name) {
                backend.destroy(&dir, Duration::from_secs(10))?;
                remove_dir(&dir)?;
            }
        }
        let group = if bridged_sidecars::on_bridge(plan) {
            Group::Bridge
        } else {
            Group::Joined(net_namespace(backend, env_dir))
        };
        let start = GroupStart {
            env_id,
            env_dir,
            group,
            progress,
            lock_path: lock_path_for(&plan.file),
            update,
        };
        let mut notices = Vec::new();
        for name in plan.sidecar_start_order() {
            let sidecar = &plan.sidecars[name];
            let started = self
                .up_sidecar(name, sidecar, &start)
                .map_err(|e| match e {
                    EnvError::Sidecar(_) => e,
                    other => EnvError::Sidecar(SidecarError::Start {
                        name: name.to_string(),
                        message: other.to_string(),
                    }),
                })?;
            notices.extend(started);
        }
        // Entries of sidecars gone from berth.toml leave the lock file.
        LockFile::keep_sidecars(&start.lock_path, &plan.sidecar_start_order())?;
        Ok(notices)
    }

    /// Starts one sidecar unless it already runs as planned, then waits for it to be ready.
    fn up_sidecar(
        &self,
        name: &str,
        sidecar: &SidecarPlan,
        start: &GroupStart<'_>,
    ) -> Result<Vec<String>, EnvError> {
        let GroupStart {
            env_id,
            env_dir,
            group,
            progress,
            ..
        } = start;
        let (env_id, env_dir) = (*env_id, *env_dir);
        let backend: &dyn Backend = &ContainerBackend;
        let dir = sidecar_dir(&self.home, env_id, name);
        // Resolved as the environment's base image is (pulled, imported, bootstrapped;
        // cached in the layer store) and pinned in berth.lock in an entry of its own.
        let resolve = ResolveOptions {
            pull: PullOptions {
                progress: (*progress).clone(),
                ..PullOptions::default()
            },
            update: start.update,
            pinned: None,
        };
        let (image, _) = self.images.resolve_in_lock(
            &sidecar.image,
            &start.lock_path,
            LockSlot::Sidecar(name),
            &resolve,
        )?;
        let hash = plan_hash(sidecar, &image.id.to_string());
        let running = backend.status(&dir)?;
        let same_group = running.status == EnvStatus::Running
            && match group {
                Group::Joined(env_net) => {
                    env_net.is_some() && &net_namespace(backend, &dir) == env_net
                }
                Group::Bridge => true,
            };
        if same_group && load_record(&dir).is_some_and(|r| r.plan_hash == hash) {
            return Ok(Vec::new());
        }
        if running.status != EnvStatus::Stopped {
            progress.message(&format!("restarting sidecar {name}"));
            backend.stop(&dir, Duration::from_secs(10))?;
        }
        let layers = image.layers.clone();
        let spec = match group {
            Group::Joined(_) => {
                let mut spec =
                    sidecar_spec(&self.home, env_id, name, sidecar, layers, &image.config)?;
                spec.privileged = Joined::environment(env_dir)?.mapping.is_none();
                spec
            }
            Group::Bridge => {
                bridged_sidecar_spec(&self.home, env_id, name, sidecar, layers, &image.config)?
            }
        };
        let record = SidecarRecord {
            plan_hash: hash,
            image: image.name.clone(),
            layer_dirs: image.layers.clone(),
        };
        state::create_private_dir(&dir)?;
        state::write_json(&dir.join(SIDECAR_RECORD), &record)?;
        let started = ContainerBackend.start(&spec)?;
        let target = TcpTarget::of(group, env_dir, &self.home, env_id, name)?;
        self.wait_ready(name, sidecar, &target, &dir, progress)?;
        Ok(started.notices)
    }

    /// Waits until the sidecar's `ready` probe passes (at once when it has none).
    fn wait_ready(
        &self,
        name: &str,
        sidecar: &SidecarPlan,
        target: &TcpTarget,
        dir: &Path,
        progress: &Progress,
    ) -> Result<(), EnvError> {
        let Some(ready) = &sidecar.ready else {
            return Ok(());
        };
        let probe = match &ready.probe {
            ReadyProbe::Tcp { port } => format!("tcp {port}"),
            ReadyProbe::Command { command } => format!("command `{}`", shown_command(command)),
        };
        progress.message(&format!(
            "waiting for sidecar {name} to be ready ({probe})…"
        ));
        let t0 = Instant::now();
        let timeout = Duration::from_millis(ready.timeout_ms);
        loop {
            let ok = match &ready.probe {
                ReadyProbe::Tcp { port } => target.answers(*port)?,
                ReadyProbe::Command { command } => command_passes(dir, command)?,
            };
            if ok {
                progress.message(&format!(
                    "sidecar {name} is ready ({})",
                    human_duration(t0.elapsed())
                ));
                return Ok(());
            }
            if t0.elapsed() >= timeout {
                return Err(EnvError::Sidecar(SidecarError::NotReady {
                    name: name.to_string(),
                    waited: human_duration(timeout),
                    probe,
                    log: log_tail(dir, name),
                }));
            }
            std::thread::sleep(PROBE_INTERVAL);
        }
    }

    /// The sidecars of the environment `record` describes, in start order, with their state
    /// and whether their `ready` probe passes now.
    pub(super) fn sidecar_views(&self, record: &EnvRecord) -> Vec<SidecarView> {
        let env_dir = self.home.env_dir(&record.env_id);
        let backend: &dyn Backend = &ContainerBackend;
        let group = match bridged_sidecars::on_bridge(&record.plan) {
            true => Group::Bridge,
            false => Group::Joined(None),
        };
        record
            .plan
            .sidecar_start_order()
            .into_iter()
            .map(|name| {
                let dir = sidecar_dir(&self.home, &record.env_id, name);
                let report = backend.status(&dir).unwrap_or_else(|e| StatusReport {
                    status: EnvStatus::Dead,
                    pid: None,
                    uptime: None,
                    usage: None,
                    services: Vec::new(),
                    processes: None,
                    last_error: Some(e.to_string()),
                    vm: None,
                });
                let ready = match (&record.plan.sidecars[name].ready, report.status) {
                    (Some(ready), EnvStatus::Running) => Some(match &ready.probe {
                        ReadyProbe::Tcp { port } => {
                            TcpTarget::of(&group, &env_dir, &self.home, &record.env_id, name)
                                .and_then(|t| t.answers(*port))
                                .unwrap_or(false)
                        }
                        ReadyProbe::Command { command } => {
                            command_passes(&dir, command).unwrap_or(false)
                        }
                    }),
                    _ => None,
                };
                SidecarView {
                    name: name.to_string(),
                    image: load_record(&dir).map(|r| r.image),
                    report,
                    ready,
                }
            })
            .collect()
    }

    /// The folder of sidecar `name` of the running environment `record` describes, for
    /// `exec --service`, `shell --service` and `logs NAME`.
    pub fn sidecar_dir(&self, record: &EnvRecord, name: &str) -> Result<PathBuf, EnvError> {
        if !record.plan.sidecars.contains_key(name) {
            return Err(EnvError::Sidecar(SidecarError::Unknown {
                name: name.to_string(),
                env: record.name.clone(),
                known: record
                    .plan
                    .sidecars
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
            }));
        }
        Ok(sidecar_dir(&self.home, &record.env_id, name))
    }

    /// Runs a command inside sidecar `name` (`exec --service NAME`), through its own
    /// supervisor's control socket; with `req.tty`, on the caller's terminal.
    pub fn exec_in_sidecar(
        &self,
        record: &EnvRecord,
        name: &str,
        req: &ExecRequest,
        stdio: [BorrowedFd<'_>; 3],
    ) -> Result<i32, EnvError> {
        let dir = self.running_sidecar_dir(record, name)?;
        let backend: &dyn Backend = &ContainerBackend;
        let r = if req.tty {
            backend.shell(&dir, req)
        } else {
            backend.exec(&dir, req, stdio)
        };
        r.map_err(|e| {
            if e.is_not_running() || !backend.still_running(&dir) {
                EnvError::Sidecar(SidecarError::NotRunning {
                    name: name.to_string(),
                })
            } else {
                e.into()
            }
        })
    }

    fn running_sidecar_dir(&self, record: &EnvRecord, name: &str) -> Result<PathBuf, EnvError> {
        let dir = self.sidecar_dir(record, name)?;
        match Backend::status(&ContainerBackend, &dir)?.status {
            EnvStatus::Running => Ok(dir),
            _ => Err(EnvError::Sidecar(SidecarError::NotRunning {
                name: name.to_string(),
            })),
        }
    }

    /// Stops every sidecar of the environment in `env_dir`, last started first. Each one is
    /// tried (a sidecar that cannot be stopped must not keep the others running); the first
    /// error is returned.
    pub(super) fn stop_sidecars(&self, env_dir: &Path, timeout: Duration) -> Result<(), EnvError> {
        let mut first = None;
        for (_, dir) in stop_order(env_dir) {
            if let Err(e) = Backend::stop(&ContainerBackend, &dir, timeout) {
                first.get_or_insert(EnvError::from(e));
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Stops and removes every sidecar of the environment in `env_dir` (their writable
    /// layers, logs, records); their volumes stay, except the private ones of a `berth run`
    /// ([`private_run_volumes`]).
    pub(super) fn destroy_sidecars(
        &self,
        env_dir: &Path,
        timeout: Duration,
    ) -> Result<(), EnvError> {
        for (_, dir) in stop_order(env_dir) {
            Backend::destroy(&ContainerBackend, &dir, timeout)?;
            remove_dir(&dir)?;
        }
        remove_dir(&env_dir.join("sidecars"))?;
        // An unreadable record (a run's never written out before a power cut, a corrupt one
        // `destroy` is asked to remove) names no volumes of a run: nothing more to remove.
        let record = EnvRecord::load(env_dir).ok().flatten();
        if let Some(record) = record.filter(|r| r.ephemeral.is_some()) {
            let prefix = format!("{}-", record.name);
            for m in sidecar_volume_mounts(&record.plan) {
                match &m.source {
                    Some(name) if name.starts_with(&prefix) => {
                        remove_dir(&self.home.volumes_dir().join(name))?
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }
}

/// What the start of each sidecar of a group needs.
struct GroupStart<'a> {
    env_id: &'a str,
    env_dir: &'a Path,
    group: Group,
    progress: &'a Progress,
    /// The project's berth.lock, which pins each sidecar's image.
    lock_path: PathBuf,
    /// `up --update`: resolve the images afresh and pin them again.
    update: bool,
}

/// How the sidecars of an environment are networked.
enum Group {
    /// In the container environment's network namespace (`net:[inode]` of its supervisor,
    /// `None` when it is not running).
    Joined(Option<String>),
    /// Each on berth's bridge with an address of its own (a VM's).
    Bridge,
}

/// Where a sidecar's `ready = { tcp = PORT }` connects: the container environment's
/// `localhost` (entered from a forked child), or the sidecar's address on the bridge (from
/// the host, as the VM's traffic arrives).
enum TcpTarget {
    Localhost(Joined),
    Bridge(Option<Ipv4Addr>),
}

impl TcpTarget {
    fn of(
        group: &Group,
        env_dir: &Path,
        home: &state::BerthHome,
        env_id: &str,
        name: &str,
    ) -> Result<TcpTarget, EnvError> {
        Ok(match group {
            Group::Joined(_) => TcpTarget::Localhost(Joined::environment(env_dir)?),
            Group::Bridge => TcpTarget::Bridge(bridged_sidecars::address(home, env_id, name)),
        })
    }

    fn answers(&self, port: u16) -> Result<bool, EnvError> {
        Ok(match self {
            TcpTarget::Localhost(joined) => joined.tcp_answers(port)?,
            TcpTarget::Bridge(Some(address)) => bridged_sidecars::tcp_answers(*address, port),
            TcpTarget::Bridge(None) => false,
        })
    }
}

/// The network namespace (`net:[inode]`) the supervisor of the container in `dir` is in.
fn net_namespace(backend: &dyn Backend, dir: &Path) -> Option<String> {
    let pid = backend.status(dir).ok()?.pid?;
    let link = fs::read_link(format!("/proc/{pid}/ns/net")).ok()?;
    Some(link.to_string_lossy().into_owned())
}

/// Whether `command` exits 0 inside the sidecar in `dir` (its output is dropped).
fn command_passes(dir: &Path, command: &[String]) -> Result<bool, EnvError> {
    let null = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|source| state::StateError::Read {
            path: "/dev/null".into(),
            source,
        })?;
    let req = ExecRequest {
        argv: command.to_vec(),
        ..ExecRequest::default()
    };
    let code = ContainerBackend.exec(dir, &req, [null.as_fd(), null.as_fd(), null.as_fd()])?;
    Ok(code == 0)
}

fn shown_command(command: &[String]) -> String {
    match command {
        [sh, c, script] if sh == "/bin/sh" && c == "-c" => script.clone(),
        _ => command.join(" "),
    }
}

/// The last lines of the sidecar's server log (named after the sidecar), indented.
fn log_tail(dir: &Path, name: &str) -> String {
    let text = crate::container::logs::read_service_log(dir, name)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    if lines.is_empty() {
        return "    (it wrote nothing)".into();
    }
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..]
        .iter()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn remove_dir(dir: &Path) -> Result<(), EnvError> {
    if !dir.exists() {
        return Ok(());
    }
    state::remove_tree(dir).map_err(|source| {
        EnvError::State(state::StateError::Write {
            path: dir.to_path_buf(),
            source,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_changes_with_the_plan_and_the_image() {
        let sidecar: SidecarPlan = serde_json::from_value(serde_json::json!({
            "image": {"kind": "rootfs", "path": "/r"}, "command": null, "restart": "no",
            "env": {}, "workdir": null, "mounts": [], "resources": {}, "ready": null, "after": []
        }))
        .unwrap();
        let mut other = sidecar.clone();
        other.env.insert("A".into(), "1".into());
        assert_eq!(plan_hash(&sidecar, "i1"), plan_hash(&sidecar, "i1"));
        assert_ne!(plan_hash(&sidecar, "i1"), plan_hash(&other, "i1"));
        assert_ne!(plan_hash(&sidecar, "i1"), plan_hash(&sidecar, "i2"));
    }

    #[test]
    fn a_run_gets_volumes_of_its_own_except_those_it_keeps() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("rootfs")).unwrap();
        let file = dir.path().join("berth.toml");
        let toml = "name = \"app-run-x1\"\n[image]\nfrom = \"rootfs:./rootfs\"\n[services.db]\nimage = \"rootfs:./rootfs\"\nmounts = [{ source = \"db-data\", target = \"/data\", type = \"volume\" }, { source = \"db-logs\", target = \"/logs\", type = \"volume\" }]\n";
        let plan = envfile_spec::parse(toml.as_bytes(), &file).unwrap().plan;
        let mut run = plan.clone();
        private_run_volumes(&mut run, &["db-logs".into()]).unwrap();
        let sources: Vec<_> = run.sidecars["db"]
            .mounts
            .iter()
            .map(|m| m.source.clone().unwrap())
            .collect();
        assert_eq!(sources, ["app-run-x1-db-data", "db-logs"]);
        let err = private_run_volumes(&mut plan.clone(), &["db-dat".into()])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--keep-volumes db-dat") && err.contains("db-data, db-logs"),
            "{err}"
        );
    }

    #[test]
    fn the_log_tail_keeps_the_last_lines() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(log_tail(tmp.path(), "db"), "    (it wrote nothing)");
    }
}
