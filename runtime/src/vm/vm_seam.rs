//! [`VmBackend`] behind the backend seam: [`Backend`] for VMs. Commands go to the agent
//! ([`VmCommand`]), status comes from `vm.json`, logs are read in the guest, snapshots are
//! disk copies ([`super::disk_snapshot`]), and the live sync talks to `berth-agent
//! sync-serve` over one agent connection ([`super::sync_channel`]).

use std::fs;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use envfile_spec::Plan;

use super::agent_proto::Exec;
use super::guest_command::{run_terminal, VmCommand};
use super::shared_folder::{host_folder, served_by_sync};
use super::sync_channel::{open_streams, GuestFolder};
use super::vm_record::{vm_json, VmState, PAUSED_NOTICE};
use super::vm_spec::{shares_folders, VmSpec};
use super::{VmBackend, VmError};
use crate::backend::{
    Backend, BackendError, CommandSession, EnvStatus, ExecRequest, GuestForwarding, LogsRequest,
    RunFiles, SavedSnapshot, SnapshotForm, StartRequest, Started, StatusReport, SyncEndpoint,
    VmFacts,
};
use crate::host::clock::now_ms;
use crate::image::Progress;
use crate::state::{self, BerthHome, StateError};
use crate::sync::{LocalTransport, RemoteTransport, Transport};

/// The environment's disk files, kept across `down`/`up` and set aside when the image changes.
pub const DISK_FILES: [&str; 2] = ["disk.qcow2", "disk.img"];

impl From<VmError> for BackendError {
    fn from(e: VmError) -> Self {
        match e {
            VmError::NotRunning => BackendError::not_running(e),
            e => BackendError::new(e),
        }
    }
}

impl From<&VmState> for VmFacts {
    fn from(s: &VmState) -> Self {
        VmFacts {
            provider: s.provider,
            accel: s.accel.clone(),
            vcpus: s.vcpus,
            memory: s.memory,
            kernel_release: s.kernel_release.clone(),
            boot_ms: s.boot_ms,
            console_log: s.console_log.clone(),
        }
    }
}

/// Running, stopped or dead (VMM gone while `vm.json` says it runs), with the VM's facts.
pub fn report(backend: &VmBackend, state_dir: &Path) -> Result<StatusReport, VmError> {
    let st = backend.status(state_dir)?;
    let status = match (&st.state, st.running) {
        (None, _) => EnvStatus::Stopped,
        (Some(_), true) => EnvStatus::Running,
        (Some(_), false) => EnvStatus::Dead,
    };
    let running = st.state.as_ref().filter(|_| st.running);
    Ok(StatusReport {
        status,
        pid: running.and_then(|s| s.process).map(|p| p.pid),
        uptime: running.map(|s| Duration::from_millis(now_ms().saturating_sub(s.started_at_ms))),
        usage: None,
        services: Vec::new(),
        processes: None,
        last_error: None,
        vm: st.state.as_ref().map(VmFacts::from),
    })
}

/// The agent's form of an exec request (`KEY=VALUE` pairs split; `tty` as asked; the
/// image's working directory and user of `st` where the request names none).
pub fn exec_of(req: &ExecRequest, st: Option<&VmState>) -> Exec {
    let (rows, cols) = req.winsize.unwrap_or((0, 0));
    Exec {
        argv: req.argv.clone(),
        env: req
            .env
            .iter()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        cwd: req
            .cwd
            .clone()
            .or_else(|| st.and_then(|s| s.image_workdir.clone())),
        user: req
            .user
            .clone()
            .or_else(|| st.and_then(|s| s.image_user.clone())),
        tty: req.tty,
        rows,
        cols,
    }
}

/// The credentials `req` forwards, if the VM's agent takes them (one booted by an older
/// berth does not: the command runs without them, and `stderr` says why).
fn forwarding<'a>(
    req: &'a ExecRequest,
    st: &VmState,
    stderr: BorrowedFd<'_>,
) -> Option<&'a GuestForwarding> {
    let f = req.forward.as_ref()?;
    if st.agent_streams {
        return Some(f);
    }
    let warning = "berth: warning: the VM's agent forwards no credentials (the VM was started by an older berth): `berth down && berth up` restarts it with this one\n";
    let _ = nix::unistd::write(stderr, warning.as_bytes());
    None
}

impl VmBackend {
    /// The agent's form of `req` for the running VM in `dir`, and the credentials it
    /// forwards ([`forwarding`]).
    fn exec_for<'a>(
        &self,
        dir: &Path,
        req: &'a ExecRequest,
        stderr: BorrowedFd<'_>,
    ) -> Result<(Exec, Option<&'a GuestForwarding>), VmError> {
        let st = self.running_state(dir)?;
        Ok((exec_of(req, Some(&st)), forwarding(req, &st, stderr)))
    }

    /// Starts `req` in the VM in `dir` with the given stdio (never on a terminal).
    fn command(
        &self,
        dir: &Path,
        req: &ExecRequest,
        stdio: [BorrowedFd<'_>; 3],
    ) -> Result<VmCommand, VmError> {
        let (mut exec, forward) = self.exec_for(dir, req, stdio[2])?;
        exec.tty = false;
        VmCommand::start(self.connect(dir)?, exec, forward, stdio)
    }
}

impl CommandSession for VmCommand {
    fn signal(&mut self, signal: i32) -> Result<(), BackendError> {
        Ok(VmCommand::signal(self, signal)?)
    }
    fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<i32>, BackendError> {
        Ok(VmCommand::wait_timeout(self, timeout)?)
    }
    fn wait(self: Box<Self>) -> Result<i32, BackendError> {
        Ok(VmCommand::wait(*self)?)
    }
    fn resize(&mut self, rows: u16, cols: u16) -> Result<(), BackendError> {
        Ok(VmCommand::resize(self, rows, cols)?)
    }
}

impl Backend for VmBackend {
    fn start(&self, req: &StartRequest<'_>) -> Result<Started, BackendError> {
        let t0 = Instant::now();
        let (mut spec, notices) =
            VmSpec::from_plan(req.plan, req.state_dir, req.layers.clone(), &req.image)?;
        spec.hosts = req
            .hosts
            .iter()
            .map(|(n, a)| (n.clone(), a.to_string()))
            .collect();
        // The gitconfig goes in through the agent once the guest answers, and the services
        // wait for it (unless the caller holds them itself and starts them later).
        let hold_for_gitconfig = req.gitconfig.is_some() && !req.hold_services;
        spec.hold_services = req.hold_services || hold_for_gitconfig;
        let st = VmBackend::start(self, &spec)?;
        let pid = st.process.map(|p| p.pid).ok_or(VmError::NotRunning)?;
        let gitconfig_error = req.gitconfig.as_deref().and_then(|text| {
            self.put_run_files(req.state_dir, RunFiles::Gitconfig(Some(text)))
                .err()
                .map(|e| e.to_string())
        });
        if hold_for_gitconfig {
            Backend::start_services(self, req.state_dir)?;
        }
        Ok(Started {
            pid,
            control_socket: st.control_socket.clone(),
            elapsed: t0.elapsed(),
            notices,
            gitconfig_error,
        })
    }
    /// The agent held them back (`Setup::hold_services`).
    fn start_services(&self, state_dir: &Path) -> Result<(), BackendError> {
        let mut conn = self.connect(state_dir)?;
        conn.client
            .put_files(
                super::agent_proto::Message::StartServices,
                Duration::from_secs(30),
            )
            .map_err(VmError::from)?;
        Ok(())
    }
    /// `PutFile` for each file, then `KeepFiles` (the agent writes into its tmpfs folders).
    fn put_run_files(&self, state_dir: &Path, files: RunFiles<'_>) -> Result<(), BackendError> {
        use super::agent_proto::{Message, PutFile, GITCONFIG_PATH, RUN_DIR, SECRETS_DIR};
        // (name, content) of each file.
        type Files<'a> = Vec<(String, &'a [u8])>;
        let (dir, owner, mode, list): (&str, Option<&str>, u32, Files<'_>) = match files {
            RunFiles::Secrets { owner, files } => (
                SECRETS_DIR,
                owner,
                0o400,
                files
                    .iter()
                    .map(|(n, v)| (n.clone(), v.as_slice()))
                    .collect(),
            ),
            RunFiles::Gitconfig(text) => (
                RUN_DIR,
                None,
                0o644,
                text.map(|t| {
                    let name = GITCONFIG_PATH.rsplit('/').next().unwrap_or_default();
                    (name.to_string(), t.as_bytes())
                })
                .into_iter()
                .collect(),
            ),
        };
        let mut conn = self.connect(state_dir)?;
        let timeout = Duration::from_secs(30);
        for (name, content) in &list {
            if content.len() + 4096 > super::agent_proto::MAX_PAYLOAD {
                return Err(VmError::Config(format!(
                    "{dir}/{name} is larger than a VM's agent takes at once ({} KiB); keep it under 1020 KiB",
                    super::agent_proto::MAX_PAYLOAD / 1024
                ))
                .into());
            }
            let put = PutFile {
                dir: dir.to_string(),
                name: name.clone(),
                owner: owner.filter(|o| !o.is_empty()).map(str::to_string),
                mode,
                content: content.to_vec(),
            };
            conn.client
                .put_files(Message::PutFile(put), timeout)
                .map_err(VmError::from)?;
        }
        let keep = list.into_iter().map(|(n, _)| n).collect();
        conn.client
            .put_files(
                Message::KeepFiles {
                    dir: dir.to_string(),
                    keep,
                },
                timeout,
            )
            .map_err(VmError::from)?;
        Ok(())
    }
    /// A `Setup` carrying only the names: the agent rewrites its block of `/etc/hosts`.
    fn set_hosts(
        &self,
        state_dir: &Path,
        hosts: &[(String, std::net::Ipv4Addr)],
    ) -> Result<(), BackendError> {
        let setup = super::agent_proto::Setup {
            hosts: hosts
                .iter()
                .map(|(n, a)| (n.clone(), a.to_string()))
                .collect(),
            ..Default::default()
        };
        let mut conn = self.connect(state_dir)?;
        conn.client
            .setup(setup, Duration::from_secs(30))
            .map_err(VmError::from)?;
        Ok(())
    }
    fn stop(&self, state_dir: &Path, timeout: Duration) -> Result<(), BackendError> {
        Ok(VmBackend::stop(self, state_dir, timeout)?)
    }
    /// Also deletes the VM's disk.
    fn destroy(&self, state_dir: &Path, timeout: Duration) -> Result<(), BackendError> {
        Ok(VmBackend::destroy(self, state_dir, timeout)?)
    }
    fn status(&self, state_dir: &Path) -> Result<StatusReport, BackendError> {
        Ok(report(self, state_dir)?)
    }
    fn still_running(&self, state_dir: &Path) -> bool {
        self.is_running(state_dir)
    }
    fn resume_if_paused(&self, state_dir: &Path) -> Result<Option<String>, BackendError> {
        Ok(VmBackend::resume_if_paused(self, state_dir)?.then(|| PAUSED_NOTICE.to_string()))
    }
    fn exec(
        &self,
        state_dir: &Path,
        req: &ExecRequest,
        stdio: [BorrowedFd<'_>; 3],
    ) -> Result<i32, BackendError> {
        Ok(self.command(state_dir, req, stdio)?.wait()?)
    }
    fn exec_start(
        &self,
        state_dir: &Path,
        req: &ExecRequest,
        stdio: [BorrowedFd<'_>; 3],
    ) -> Result<Box<dyn CommandSession>, BackendError> {
        if req.tty {
            let (exec, forward) = self.exec_for(state_dir, req, stdio[2])?;
            return Ok(Box::new(VmCommand::start(
                self.connect(state_dir)?,
                exec,
                forward,
                stdio,
            )?));
        }
        Ok(Box::new(self.command(state_dir, req, stdio)?))
    }
    fn shell(&self, state_dir: &Path, req: &ExecRequest) -> Result<i32, BackendError> {
        let (i, o, e) = (std::io::stdin(), std::io::stdout(), std::io::stderr());
        let stdio = [i.as_fd(), o.as_fd(), e.as_fd()];
        let r = if req.tty && std::io::IsTerminal::is_terminal(&i) {
            self.exec_for(state_dir, req, stdio[2])
                .and_then(|(exec, forward)| {
                    self.connect(state_dir)
                        .and_then(|conn| run_terminal(conn, exec, forward, stdio))
                })
        } else {
            self.command(state_dir, req, stdio)
                .and_then(VmCommand::wait)
        };
        Ok(r?)
    }
    /// Every service of the plan (their logs live in the guest).
    fn logged_services(&self, _: &Path, plan: &Plan) -> Vec<String> {
        plan.services.keys().cloned().collect()
    }
    /// Read in the guest, as root (the environment must run).
    fn logs(&self, state_dir: &Path, req: &LogsRequest) -> Result<i32, BackendError> {
        let exec = ExecRequest {
            argv: super::guest_logs::logs_argv(&req.services, req.tail, req.follow),
            env: Vec::new(),
            cwd: Some("/".into()),
            user: Some("root".into()),
            tty: false,
            winsize: None,
            forward: None,
        };
        let (i, o, e) = (std::io::stdin(), std::io::stdout(), std::io::stderr());
        let r = self
            .command(state_dir, &exec, [i.as_fd(), o.as_fd(), e.as_fd()])
            .and_then(VmCommand::wait);
        r.map_err(|e| {
            // A VM gone while the logs were read: "not running".
            if matches!(e, VmError::NotRunning) || !self.is_running(state_dir) {
                BackendError::not_running(e)
            } else {
                e.into()
            }
        })
    }
    /// Renames the VM's disk (if any) to `*.previous`, replacing an older one.
    fn set_aside(&self, dir: &Path) -> Result<Option<String>, BackendError> {
        let mut moved = Vec::new();
        for name in DISK_FILES {
            let disk = dir.join(name);
            if !disk.exists() {
                continue;
            }
            let aside = dir.join(format!("{name}.previous"));
            fs::rename(&disk, &aside).map_err(|source| StateError::Write {
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
    /// The sync mounts, and the bind and volume mounts the VM does not share through
    /// virtio-fs (as recorded by its start).
    fn sync_mounts(&self, state_dir: &Path, plan: &Plan) -> Vec<usize> {
        let shared = state::read_json::<VmState>(&vm_json(state_dir))
            .ok()
            .flatten()
            .map(|s| {
                s.folders_shared
                    .unwrap_or_else(|| shares_folders(s.provider))
            })
            // Not running (`berth sync`, `berth status` of a stopped VM): what `up` would
            // choose now.
            .unwrap_or_else(|| super::vm_spec::would_share_folders(plan));
        plan.mounts
            .iter()
            .enumerate()
            .filter(|(_, m)| served_by_sync(m.kind, shared))
            .map(|(i, _)| i)
            .collect()
    }
    /// One agent connection, one guest-side server per mount. A channel just given up by a
    /// previous sync process (killed) may still be reset by the agent while we connect: a
    /// failed start is tried again on a fresh connection.
    fn sync_endpoint(
        &self,
        state_dir: &Path,
        _home: &BerthHome,
        plan: &Plan,
        mounts: &[usize],
        cancelled: &dyn Fn() -> bool,
    ) -> Result<SyncEndpoint, String> {
        let folders: Vec<GuestFolder> = mounts
            .iter()
            .map(|&i| GuestFolder {
                target: plan.mounts[i].target.clone(),
                // The guest's root, as the environment's root owns what a container sync
                // creates.
                owner: Some((0, 0)),
            })
            .collect();
        let mut attempt = 0;
        let (pairs, alive) = loop {
            attempt += 1;
            match self.connect_remotes(state_dir, plan, mounts, &folders) {
                Ok(r) => break r,
                Err(e) if attempt < 5 && !cancelled() => {
                    eprintln!("berth sync: connecting to the VM failed ({e}); trying again");
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(e) => return Err(e),
            }
        };
        let dir = state_dir.to_path_buf();
        let mut checked = Instant::now();
        Ok(SyncEndpoint {
            pairs,
            alive: Box::new(move || {
                if !alive.load(Ordering::SeqCst) {
                    return false;
                }
                if checked.elapsed() > Duration::from_secs(2) {
                    checked = Instant::now();
                    return state::read_json::<VmState>(&vm_json(&dir))
                        .ok()
                        .flatten()
                        .and_then(|s| s.process)
                        .is_some_and(|p| p.alive());
                }
                true
            }),
            gone: Some(
                "the VM or its agent connection went away; the next `berth up` restarts the sync"
                    .into(),
            ),
            keep: Box::new(()),
        })
    }
    fn snapshot_form(&self) -> SnapshotForm {
        SnapshotForm::Disk
    }
    /// The disk, copied into a new folder `<name>.<nonce>.vm`.
    fn snapshot_save(
        &self,
        state_dir: &Path,
        snaps: &Path,
        name: &str,
    ) -> Result<SavedSnapshot, BackendError> {
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StateError::Write { path, source }
        };
        let staging = snaps.join(format!(".{name}.{nonce}.partial"));
        fs::create_dir(&staging).map_err(io(&staging))?;
        if let Err(e) = self.snapshot_disk(state_dir, &staging) {
            let _ = state::remove_tree(&staging);
            return Err(e.into());
        }
        let folder = format!("{name}.{nonce}.vm");
        let disk_dir = snaps.join(&folder);
        fs::rename(&staging, &disk_dir).map_err(io(&disk_dir))?;
        // The overlay's allocated bytes: the base is shared with the cache (a hard link).
        let size = [super::disk_snapshot::QCOW2, super::disk_snapshot::RAW]
            .iter()
            .filter_map(|f| fs::metadata(disk_dir.join(f)).ok())
            .map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512)
            .sum();
        Ok(SavedSnapshot {
            size,
            disk: Some(folder),
        })
    }
    /// Stops the VM (saying so when it ran: it boots again afterwards) and puts the disk of
    /// folder `disk` back.
    fn snapshot_restore(
        &self,
        state_dir: &Path,
        snaps: &Path,
        name: &str,
        disk: Option<&str>,
        env_name: &str,
        progress: &Progress,
    ) -> Result<bool, BackendError> {
        let folder =
            disk.ok_or_else(|| VmError::Config(format!("snapshot {name} holds no VM disk")))?;
        let was_running = self.is_running(state_dir);
        if was_running {
            progress.message(&format!(
                "stopping the VM of {env_name} to put the disk of snapshot {name} back; it boots again afterwards"
            ));
        }
        VmBackend::stop(self, state_dir, Duration::from_secs(10))?;
        super::disk_snapshot::put_back(&snaps.join(folder), state_dir).map_err(VmError::from)?;
        Ok(was_running)
    }
}

/// The host side and guest side of each mount the sync serves.
type SyncPairs = Vec<(Arc<dyn Transport>, Arc<dyn Transport>)>;

impl VmBackend {
    /// The host and guest transports of every mount, over one new agent connection.
    fn connect_remotes(
        &self,
        env_dir: &Path,
        plan: &Plan,
        mounts: &[usize],
        folders: &[GuestFolder],
    ) -> Result<(SyncPairs, Arc<AtomicBool>), String> {
        let conn = self.connect(env_dir).map_err(|e| e.to_string())?;
        let (streams, alive) = open_streams(conn, folders).map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        for (&i, stream) in mounts.iter().zip(streams) {
            let m = &plan.mounts[i];
            let source = host_folder(m, &self.home().volumes_dir()).map_err(|e| e.to_string())?;
            let host_meta =
                fs::metadata(&source).map_err(|e| format!("{}: {e}", source.display()))?;
            let host: Arc<dyn Transport> = Arc::new(
                LocalTransport::open("host", &source)
                    .map_err(|e| e.to_string())?
                    .with_owner(
                        std::os::unix::fs::MetadataExt::uid(&host_meta),
                        std::os::unix::fs::MetadataExt::gid(&host_meta),
                    )
                    .without_root_setid(),
            );
            let env = RemoteTransport::connect(
                &format!("env {}", m.target),
                stream.reader,
                stream.writer,
            )
            .map_err(|e| format!("{}: {e}", m.target))?
            .with_basis(host.clone());
            out.push((host, Arc::new(env) as Arc<dyn Transport>));
        }
        Ok((out, alive))
    }
}

#[cfg(test)]
mod tests {
    use super::super::Provider;
    use super::*;

    #[test]
    fn exec_request_translation() {
        let req = ExecRequest {
            argv: vec!["env".into()],
            env: vec!["A=1".into(), "B=x=y".into()],
            cwd: Some("/work".into()),
            user: Some("dev".into()),
            tty: true,
            winsize: Some((40, 120)),
            forward: None,
        };
        let e = exec_of(&req, None);
        assert_eq!(
            e.env,
            vec![("A".into(), "1".into()), ("B".into(), "x=y".into())]
        );
        assert_eq!((e.rows, e.cols, e.tty), (40, 120, true));
        assert_eq!(e.cwd.as_deref(), Some("/work"));
        assert_eq!(e.user.as_deref(), Some("dev"));
    }

    #[test]
    fn a_vm_whose_vmm_died_is_dead() {
        let d = tempfile::tempdir().unwrap();
        let home = crate::state::BerthHome::at(d.path()).unwrap();
        let b = VmBackend::new(home);
        let env = d.path().join("env");
        std::fs::create_dir_all(&env).unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let st = VmState {
            vcpus: 2,
            kernel_release: "6.1.0-test".into(),
            started_at_ms: now_ms(),
            boot_ms: Some(1500),
            ..VmState::stand_in(Provider::Qemu, &env, child.id())
        };
        crate::state::write_json(&env.join("vm.json"), &st).unwrap();
        let r = report(&b, &env).unwrap();
        let facts = r.vm.clone();
        assert_eq!(r.status, EnvStatus::Running);
        assert_eq!(r.pid, Some(child.id() as i32));
        let facts = facts.unwrap();
        assert_eq!((facts.vcpus, facts.memory), (2, 256 << 20));
        assert_eq!(facts.kernel_release, "6.1.0-test");
        child.kill().unwrap();
        child.wait().unwrap();
        let r = report(&b, &env).unwrap();
        let facts = r.vm.clone();
        assert_eq!(r.status, EnvStatus::Dead);
        assert_eq!(r.pid, None);
        assert!(facts.is_some(), "the facts stay visible for a dead VM");
    }

    /// A command that names no folder or user runs in the image's working directory as the
    /// image's user, as in a container; one that does keeps its own.
    #[test]
    fn exec_takes_the_images_workdir_and_user() {
        let d = tempfile::tempdir().unwrap();
        let st = VmState {
            image_workdir: Some("/srv/app".into()),
            image_user: Some("app".into()),
            ..VmState::stand_in(super::super::Provider::Qemu, d.path(), std::process::id())
        };
        let req = ExecRequest {
            argv: vec!["pwd".into()],
            ..ExecRequest::default()
        };
        let e = exec_of(&req, Some(&st));
        assert_eq!(e.cwd.as_deref(), Some("/srv/app"));
        assert_eq!(e.user.as_deref(), Some("app"));
        let own = ExecRequest {
            cwd: Some("/tmp".into()),
            user: Some("root".into()),
            ..req
        };
        let e = exec_of(&own, Some(&st));
        assert_eq!(e.cwd.as_deref(), Some("/tmp"));
        assert_eq!(e.user.as_deref(), Some("root"));
    }

    /// A VM booted by an older berth (no `agent_streams` in its record) gets no `Forward`
    /// (its agent could drop the `Exec` after it): the command runs without credentials and
    /// a warning says why.
    #[test]
    fn an_older_agent_gets_no_forwarding_and_the_user_is_told() {
        struct Nowhere;
        impl crate::backend::ForwardConnector for Nowhere {
            fn connect(
                &self,
                _: crate::backend::ForwardKind,
            ) -> Option<std::os::unix::net::UnixStream> {
                None
            }
        }
        let d = tempfile::tempdir().unwrap();
        let req = ExecRequest {
            forward: Some(GuestForwarding {
                agent: true,
                git_credentials: false,
                gitconfig: None,
                connector: Arc::new(Nowhere),
            }),
            ..ExecRequest::default()
        };
        let (r, w) = nix::unistd::pipe().unwrap();
        let mut st = VmState::stand_in(Provider::Qemu, d.path(), std::process::id());
        assert!(forwarding(&req, &st, w.as_fd()).is_some());
        let old: VmState = serde_json::from_value(
            serde_json::to_value(&st)
                .map(|mut v| {
                    v.as_object_mut().unwrap().remove("agent_streams");
                    v
                })
                .unwrap(),
        )
        .unwrap();
        assert!(
            !old.agent_streams,
            "a record without the field is an older agent's"
        );
        st.agent_streams = false;
        assert!(forwarding(&req, &st, w.as_fd()).is_none());
        drop(w);
        let mut said = String::new();
        std::io::Read::read_to_string(&mut std::fs::File::from(r), &mut said).unwrap();
        assert!(said.contains("started by an older berth"), "{said}");
    }

    #[test]
    fn a_vm_without_state_is_stopped() {
        let d = tempfile::tempdir().unwrap();
        let home = crate::state::BerthHome::at(d.path()).unwrap();
        let b = VmBackend::new(home);
        let r = report(&b, &d.path().join("envs/none")).unwrap();
        let facts = r.vm;
        assert_eq!(r.status, EnvStatus::Stopped);
        assert!(facts.is_none());
    }
}
