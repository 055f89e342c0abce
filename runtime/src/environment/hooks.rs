//! `on_create` and `on_up`: the commands `up` runs inside a started environment.
//!
//! Order of an `up`: image build → start (services held back) → `on_create` (only when the
//! writable layer is new, or the commands changed since they last succeeded on it) → services
//! → `on_up`. Each step is announced (`on_create 1/2: pip install -e .`) and its duration
//! reported when it is done, so a long step does not look like a hang; its output goes
//! straight to berth's stdout/stderr. `on_create` is recorded as done in `env.json` only
//! after every step succeeded, so a failed one runs again on the next `up`.
//!
//! Both backends run the steps alike, through [`Backend::exec`]. VMs: the agent starts
//! services at boot, so there services run before `on_create`.

use std::fs;
use std::os::fd::AsFd;
use std::path::Path;
use std::time::Instant;

use envfile_spec::Plan;
use sha2::{Digest as _, Sha256};

use super::error::EnvError;
use crate::backend::{Backend, ExecRequest};
use crate::image::{human_duration, Progress};

/// Which list of commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Hook {
    OnCreate,
    OnUp,
}

impl Hook {
    fn name(self) -> &'static str {
        match self {
            Hook::OnCreate => "on_create",
            Hook::OnUp => "on_up",
        }
    }

    fn failed(self, command: &str, code: i32) -> EnvError {
        let command = command.to_string();
        match self {
            Hook::OnCreate => EnvError::OnCreateFailed { command, code },
            Hook::OnUp => EnvError::OnUpFailed { command, code },
        }
    }
}

/// What `env.json` records once `on_create` succeeded: a hash of its commands (`None` when
/// there are none).
pub(super) fn on_create_key(plan: &Plan) -> Option<String> {
    if plan.on_create.is_empty() {
        return None;
    }
    let json = serde_json::to_vec(&plan.on_create).unwrap_or_default();
    Some(hex::encode(Sha256::digest(json)))
}

/// Announces and times the steps of a hook.
struct Steps<'a> {
    hook: Hook,
    total: usize,
    progress: &'a Progress,
}

impl Steps<'_> {
    fn run(
        &self,
        commands: &[String],
        mut one: impl FnMut(&str) -> Result<i32, EnvError>,
    ) -> Result<(), EnvError> {
        for (i, command) in commands.iter().enumerate() {
            let head = format!("{} {}/{}: {command}", self.hook.name(), i + 1, self.total);
            self.progress.message(&head);
            let t = Instant::now();
            let code = one(command)?;
            if code != 0 {
                self.progress.message(&format!(
                    "{head}: failed with exit code {code} after {}",
                    human_duration(t.elapsed())
                ));
                return Err(self.hook.failed(command, code));
            }
            self.progress
                .message(&format!("{head}: done in {}", human_duration(t.elapsed())));
        }
        Ok(())
    }
}

/// Runs `hook`'s commands of `plan` in the running environment of `dir`, through the
/// backend's exec like any command: as the shell's user in the shell's folder, stdin from
/// /dev/null, stdout and stderr to berth's stderr.
pub(super) fn run(
    backend: &dyn Backend,
    dir: &Path,
    plan: &Plan,
    hook: Hook,
    progress: &Progress,
) -> Result<(), EnvError> {
    let commands = match hook {
        Hook::OnCreate => &plan.on_create,
        Hook::OnUp => &plan.on_up,
    };
    let steps = Steps {
        hook,
        total: commands.len(),
        progress,
    };
    steps.run(commands, |command| {
        let req = ExecRequest {
            argv: vec!["/bin/sh".into(), "-c".into(), command.to_string()],
            env: Vec::new(),
            cwd: plan.shell.workdir.clone(),
            user: plan.shell.user.clone(),
            tty: false,
            winsize: None,
            forward: None,
        };
        let devnull =
            fs::File::open("/dev/null").map_err(|source| crate::state::StateError::Read {
                path: "/dev/null".into(),
                source,
            })?;
        // Both streams to berth's stderr, beside the progress lines: stdout stays for
        // `up --json` and for the command of `berth run`.
        let err = std::io::stderr();
        Ok(backend.exec(dir, &req, [devnull.as_fd(), err.as_fd(), err.as_fd()])?)
    })
}
