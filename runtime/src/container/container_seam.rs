//! [`ContainerBackend`] behind the backend seam: [`Backend`] for containers (the plan made
//! into a [`ContainerSpec`], commands over the control socket, logs from the log files,
//! snapshots of the writable layer, live sync through the supervisor's root), and
//! [`ExecSession`] as a [`CommandSession`].

use std::fs;
use std::os::fd::BorrowedFd;
use std::path::Path;
use std::time::Duration;

use envfile_spec::plan::MountKind;
use envfile_spec::Plan;

use super::container_backend::ContainerBackend;
use super::control::{self, ExecSession};
use super::error::ContainerError;
use super::network_attach;
use super::spec::ContainerSpec;
use super::terminal_relay::RelayedTerminal;
use crate::backend::{
    Backend, BackendError, CommandSession, EnvStatus, ExecRequest, LogsRequest, RunFiles,
    SavedSnapshot, SnapshotForm, StartRequest, Started, StatusReport, SyncEndpoint,
};
use crate::image::Progress;
use crate::state::BerthHome;

impl From<ContainerError> for BackendError {
    fn from(e: ContainerError) -> Self {
        match e {
            ContainerError::NotRunning { .. } => BackendError::not_running(e),
            e => BackendError::new(e),
        }
    }
}

impl Backend for ContainerBackend {
    fn start(&self, req: &StartRequest<'_>) -> std::result::Result<Started, BackendError> {
        let (mut spec, mut notices) = ContainerSpec::from_plan(
            req.plan,
            req.home,
            req.env_id,
            req.layers.clone(),
            req.image.clone(),
            req.privileged,
        )?;
        spec.publish_auto = req.publish_auto;
        spec.hold_services = req.hold_services;
        spec.volatile_upper = req.throwaway;
        // Written by the supervisor before anything runs inside (no builtin round trip).
        spec.gitconfig = req.gitconfig.clone();
        if let (_, Some(n)) = network_attach::effective_mode(
            &crate::net::Network::new(req.home, crate::net::NetworkOptions::default()),
            spec.network,
        ) {
            notices.push(n);
        }
        let mut started = ContainerBackend::start(self, &spec)?;
        notices.append(&mut started.notices);
        started.notices = notices;
        Ok(started)
    }
    fn start_services(&self, state_dir: &Path) -> std::result::Result<(), BackendError> {
        Ok(ContainerBackend::start_services(self, state_dir)?)
    }
    /// Through the builtins `write-secrets` and `write-gitconfig`, run as root inside.
    fn put_run_files(
        &self,
        state_dir: &Path,
        files: RunFiles<'_>,
    ) -> std::result::Result<(), BackendError> {
        let (argv, input) = match files {
            RunFiles::Secrets { owner, files } => {
                let mut payload = Vec::new();
                for (name, value) in files {
                    payload.extend_from_slice(format!("{name}\n{}\n", value.len()).as_bytes());
                    payload.extend_from_slice(value);
                }
                (
                    vec![
                        crate::ssh_inside::WRITE_SECRETS.to_string(),
                        owner.unwrap_or_default().to_string(),
                    ],
                    payload,
                )
            }
            RunFiles::Gitconfig(text) => (
                vec![crate::ssh_inside::WRITE_GITCONFIG.to_string()],
                text.unwrap_or_default().as_bytes().to_vec(),
            ),
        };
        crate::backend::run_fed(self, state_dir, argv, input)
            .map_err(|why| BackendError::new(std::io::Error::other(why)))
    }
    /// A container's sidecars share its network namespace: they are on its `localhost`.
    fn set_hosts(
        &self,
        _: &Path,
        _: &[(String, std::net::Ipv4Addr)],
    ) -> std::result::Result<(), BackendError> {
        Ok(())
    }
    fn stop(&self, state_dir: &Path, timeout: Duration) -> std::result::Result<(), BackendError> {
        Ok(ContainerBackend::stop(self, state_dir, timeout)?)
    }
    /// Returns once the processes are gone; their supervisor's exit (its mount namespace's
    /// teardown) and the removal of cgroups and network are left for `finish_stop`.
    fn stop_processes(
        &self,
        state_dir: &Path,
        timeout: Duration,
    ) -> std::result::Result<bool, BackendError> {
        Ok(ContainerBackend::stop_processes(self, state_dir, timeout)?
            == super::container_backend::StopLeft::Teardown)
    }
    fn finish_stop(&self, state_dir: &Path, _: Duration) -> std::result::Result<(), BackendError> {
        Ok(ContainerBackend::finish_stop(self, state_dir)?)
    }
    /// The writable layer is in the environment's folder, which the caller removes (so
    /// `stopped` is not recorded in it).
    fn destroy(
        &self,
        state_dir: &Path,
        timeout: Duration,
    ) -> std::result::Result<(), BackendError> {
        Ok(ContainerBackend::stop_for_removal(
            self, state_dir, timeout,
        )?)
    }
    fn status(&self, state_dir: &Path) -> std::result::Result<StatusReport, BackendError> {
        Ok(ContainerBackend::status(self, state_dir)?)
    }
    /// No cgroup file read (five files, each opened, read and closed, in cgroup v1).
    fn status_without_usage(
        &self,
        state_dir: &Path,
    ) -> std::result::Result<StatusReport, BackendError> {
        Ok(ContainerBackend::report(self, state_dir, false)?)
    }
    /// From the state record and a look at the recorded processes: no cgroup, no supervisor.
    fn liveness(&self, state_dir: &Path) -> EnvStatus {
        ContainerBackend::liveness(self, state_dir)
    }
    /// Running, and its supervisor still answers.
    fn still_running(&self, state_dir: &Path) -> bool {
        matches!(
            ContainerBackend::status(self, state_dir).map(|s| s.status),
            Ok(EnvStatus::Running)
        ) && control::ping(&state_dir.join("control.sock"))
    }
    fn resume_if_paused(&self, _: &Path) -> std::result::Result<Option<String>, BackendError> {
        Ok(None)
    }
    fn exec(
        &self,
        state_dir: &Path,
        req: &ExecRequest,
        stdio: [BorrowedFd<'_>; 3],
    ) -> std::result::Result<i32, BackendError> {
        Ok(ContainerBackend::exec(self, state_dir, req, stdio)?)
    }
    fn exec_start(
        &self,
        state_dir: &Path,
        req: &ExecRequest,
        stdio: [BorrowedFd<'_>; 3],
    ) -> std::result::Result<Box<dyn CommandSession>, BackendError> {
        if req.tty {
            let session = self.exec_tty(state_dir, req)?;
            return Ok(Box::new(RelayedTerminal::start(
                session,
                stdio[0],
                stdio[1],
                req.winsize,
            )?));
        }
        Ok(Box::new(ContainerBackend::exec_start(
            self, state_dir, req, stdio,
        )?))
    }
    fn shell(&self, state_dir: &Path, req: &ExecRequest) -> std::result::Result<i32, BackendError> {
        Ok(ContainerBackend::shell(self, state_dir, req)?)
    }
    /// The services that have log files.
    fn logged_services(&self, state_dir: &Path, _: &Plan) -> Vec<String> {
        super::logs::services_with_logs(state_dir)
    }
    /// Read from the log files on the host; the environment need not run.
    fn logs(&self, state_dir: &Path, req: &LogsRequest) -> std::result::Result<i32, BackendError> {
        super::logs::print_logs(state_dir, &req.services, req.tail, req.follow)?;
        Ok(0)
    }
    /// `upper/` becomes `upper.previous/` (replacing an older one), `work/` goes.
    fn set_aside(&self, dir: &Path) -> std::result::Result<Option<String>, BackendError> {
        let upper = dir.join("upper");
        if !fs::read_dir(&upper).is_ok_and(|mut rd| rd.next().is_some()) {
            return Ok(None);
        }
        let aside = dir.join("upper.previous");
        let _ = crate::state::remove_tree(&aside);
        fs::rename(&upper, &aside).map_err(|source| crate::state::StateError::Write {
            path: aside.clone(),
            source,
        })?;
        let _ = crate::state::remove_tree(&dir.join("work"));
        Ok(Some(format!(
            "the base image changed, so the environment starts from a fresh writable layer; the previous one is kept in {}",
            aside.display()
        )))
    }
    /// The `sync` mounts (the others are mounted).
    fn sync_mounts(&self, _: &Path, plan: &Plan) -> Vec<usize> {
        plan.mounts
            .iter()
            .enumerate()
            .filter(|(_, m)| m.kind == MountKind::Sync)
            .map(|(i, _)| i)
            .collect()
    }
    fn sync_endpoint(
        &self,
        state_dir: &Path,
        home: &BerthHome,
        plan: &Plan,
        mounts: &[usize],
        _: &dyn Fn() -> bool,
    ) -> std::result::Result<SyncEndpoint, String> {
        super::sync_root::endpoint(state_dir, home, plan, mounts)
    }
    fn snapshot_form(&self) -> SnapshotForm {
        SnapshotForm::Layer
    }
    fn snapshot_save(
        &self,
        state_dir: &Path,
        snaps: &Path,
        name: &str,
    ) -> std::result::Result<SavedSnapshot, BackendError> {
        super::layer_snapshot::save(self, state_dir, snaps, name)
    }
    fn snapshot_restore(
        &self,
        state_dir: &Path,
        snaps: &Path,
        name: &str,
        _disk: Option<&str>,
        _env_name: &str,
        _progress: &Progress,
    ) -> std::result::Result<bool, BackendError> {
        super::layer_snapshot::restore(self, state_dir, snaps, name)
    }
}

impl CommandSession for ExecSession {
    fn signal(&mut self, signal: i32) -> std::result::Result<(), BackendError> {
        Ok(ExecSession::signal(self, signal)?)
    }
    fn wait_timeout(
        &mut self,
        timeout: Duration,
    ) -> std::result::Result<Option<i32>, BackendError> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let ready = self.reply_buffered() || {
            // SAFETY: the session owns this fd and outlives the poll.
            let fd = unsafe { BorrowedFd::borrow_raw(self.control_fd()) };
            let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
            let ms = timeout.as_millis().min(u128::from(u16::MAX)) as u16;
            poll(&mut fds, PollTimeout::from(ms)).unwrap_or(0) > 0
        };
        if ready {
            Ok(Some(self.wait_ref()?))
        } else {
            Ok(None)
        }
    }
    fn wait(self: Box<Self>) -> std::result::Result<i32, BackendError> {
        Ok(ExecSession::wait(*self)?)
    }
    /// A command on a terminal is a [`RelayedTerminal`]; this one has none.
    fn resize(&mut self, _: u16, _: u16) -> std::result::Result<(), BackendError> {
        Err(ContainerError::Invalid("this command has no terminal to resize".into()).into())
    }
}
