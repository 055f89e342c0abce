//! Commands in a running environment: `berth exec`, `berth shell`, the command of `berth
//! run`, and `berth logs`.

use std::os::fd::BorrowedFd;

use super::environments::Environments;
use super::error::EnvError;
use super::record::EnvRecord;
use crate::backend::{CommandSession, ExecRequest, LogsRequest};
use crate::credentials::{CredentialsError, SessionCredentials, Wanted};

impl Environments {
    /// Runs a command inside the running environment with the given stdio.
    pub fn exec(
        &self,
        record: &EnvRecord,
        req: &ExecRequest,
        stdio: [BorrowedFd<'_>; 3],
    ) -> Result<i32, EnvError> {
        let dir = self.running_dir(record)?;
        let r = self.backend(record.plan.backend).exec(&dir, req, stdio);
        self.unless_stopped(record, &dir, r)
    }

    /// Starts a command without waiting for it, to forward signals or enforce a deadline.
    pub fn exec_start(
        &self,
        record: &EnvRecord,
        req: &ExecRequest,
        stdio: [BorrowedFd<'_>; 3],
    ) -> Result<Box<dyn CommandSession>, EnvError> {
        let dir = self.running_dir(record)?;
        let r = self
            .backend(record.plan.backend)
            .exec_start(&dir, req, stdio);
        self.unless_stopped(record, &dir, r)
    }

    /// The host's credentials forwarded to a session of `user` in `record`'s running
    /// environment (see [`SessionCredentials::start`]).
    pub fn session_credentials(
        &self,
        record: &EnvRecord,
        user: Option<&str>,
        wanted: Wanted,
    ) -> Result<Option<SessionCredentials>, CredentialsError> {
        SessionCredentials::start(record.plan.backend, user, wanted, |req, stdio| {
            self.exec_start(record, req, stdio)
                .map_err(|e| e.to_string())
        })
    }

    /// An interactive command on the caller's terminal (or plain stdio when not a terminal).
    pub fn shell(&self, record: &EnvRecord, req: &ExecRequest) -> Result<i32, EnvError> {
        let dir = self.running_dir(record)?;
        let r = self.backend(record.plan.backend).shell(&dir, req);
        self.unless_stopped(record, &dir, r)
    }

    /// The services `berth logs` shows when none is named.
    pub fn logged_services(&self, record: &EnvRecord) -> Vec<String> {
        let dir = self.home.env_dir(&record.env_id);
        self.backend(record.plan.backend)
            .logged_services(&dir, &record.plan)
    }

    /// Prints the logs of `services` on stdout (the last `tail` lines; with `follow`, then
    /// what is appended until interrupted). Returns the exit code.
    pub fn logs(
        &self,
        record: &EnvRecord,
        services: Vec<String>,
        tail: Option<usize>,
        follow: bool,
    ) -> Result<i32, EnvError> {
        let dir = match services.as_slice() {
            [one] if record.plan.sidecars.contains_key(one) => self.sidecar_dir(record, one)?,
            _ => self.home.env_dir(&record.env_id),
        };
        let req = LogsRequest {
            services,
            tail,
            follow,
        };
        self.backend(record.plan.backend)
            .logs(&dir, &req)
            .map_err(|e| {
                if e.is_not_running() {
                    EnvError::NotRunning {
                        name: record.name.clone(),
                    }
                } else {
                    e.into()
                }
            })
    }
}
