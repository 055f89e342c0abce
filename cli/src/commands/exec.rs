//! `berth exec -- CMD…` and `berth shell`.

use std::io::IsTerminal;
use std::os::fd::AsFd;

use berth_runtime::backend::ExecRequest;
use berth_runtime::credentials::{HostGit, SessionCredentials, Wanted};
use berth_runtime::environment::{EnvRecord, Environments};
use clap::Args;

use crate::environment::{env_error, Current};
use crate::exit::{CliError, EXIT_USAGE};
use crate::global_args::GlobalArgs;

#[derive(Debug, Args)]
pub struct ShellArgs {
    /// User inside the environment.
    #[arg(short, long)]
    pub user: Option<String>,
    /// Working directory inside the environment.
    #[arg(short, long)]
    pub workdir: Option<String>,
    /// A shell inside this sidecar (a `[services.NAME]` with `image`): its `/bin/sh`.
    #[arg(long, value_name = "NAME")]
    pub service: Option<String>,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Set an environment variable (KEY=VAL); repeatable.
    #[arg(short = 'e', long = "env", value_name = "KEY=VAL")]
    pub env: Vec<String>,
    /// Working directory inside the environment.
    #[arg(short, long)]
    pub workdir: Option<String>,
    /// User inside the environment.
    #[arg(short, long)]
    pub user: Option<String>,
    /// Allocate a terminal even when stdin is not one.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Run inside this sidecar (a `[services.NAME]` with `image`) instead of the environment.
    #[arg(long, value_name = "NAME")]
    pub service: Option<String>,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// Checks `KEY=VAL` arguments of `-e`.
pub fn parse_env(pairs: &[String]) -> Result<Vec<String>, CliError> {
    for p in pairs {
        match p.split_once('=') {
            Some((k, _)) if !k.is_empty() && !k.contains(char::is_whitespace) => {}
            _ => {
                return Err(CliError::new(
                    EXIT_USAGE,
                    format!("-e {p:?}: expected KEY=VALUE, e.g. -e RUST_LOG=debug"),
                ))
            }
        }
    }
    Ok(pairs.to_vec())
}

/// The host's credentials for a session of `req` (`[credentials]` of the environment); a
/// failure is a warning, the command runs without them.
/// `host_git`: the host's git as the environment's start left it when no record has it (a
/// throw-away run's, `UpReport::host_git`); `None`: the environment's record.
pub(crate) fn forward_credentials(
    envs: &Environments,
    record: &EnvRecord,
    req: &mut ExecRequest,
    host_git: Option<HostGit>,
) -> Option<SessionCredentials> {
    let policy = &record.plan.credentials;
    let wanted = match host_git {
        Some(git) => Wanted::of_host_git(git, policy, None),
        None => Wanted::for_session(&envs.home().env_dir(&record.env_id), policy, None),
    };
    match envs.session_credentials(record, req.user.as_deref(), wanted) {
        Ok(c) => {
            if let Some(c) = &c {
                c.add_env(req);
            }
            c
        }
        Err(e) => {
            eprintln!("berth: warning: {e}");
            None
        }
    }
}

pub fn exec(g: &GlobalArgs, args: &ExecArgs) -> Result<i32, CliError> {
    let cur = Current::load(g)?;
    let record = cur.require()?;
    let mut req = ExecRequest {
        argv: args.command.clone(),
        env: parse_env(&args.env)?,
        cwd: args
            .workdir
            .clone()
            .or_else(|| cur.plan.shell.workdir.clone()),
        user: args.user.clone().or_else(|| cur.plan.shell.user.clone()),
        tty: args.tty,
        winsize: None,
        forward: None,
    };
    let (i, o, e) = (std::io::stdin(), std::io::stdout(), std::io::stderr());
    if let Some(name) = &args.service {
        // The sidecar's own image: its defaults, not the environment's shell settings.
        let req = ExecRequest {
            cwd: args.workdir.clone(),
            user: args.user.clone(),
            ..req
        };
        return cur
            .envs
            .exec_in_sidecar(record, name, &req, [i.as_fd(), o.as_fd(), e.as_fd()])
            .map_err(env_error);
    }
    let _credentials = forward_credentials(&cur.envs, record, &mut req, None);
    if args.tty {
        return cur.envs.shell(record, &req).map_err(env_error);
    }
    cur.envs
        .exec(record, &req, [i.as_fd(), o.as_fd(), e.as_fd()])
        .map_err(env_error)
}

pub fn shell(g: &GlobalArgs, args: &ShellArgs) -> Result<i32, CliError> {
    let cur = Current::load(g)?;
    let record = cur.require()?;
    if let Some(name) = &args.service {
        let req = ExecRequest {
            argv: vec!["/bin/sh".into()],
            env: Vec::new(),
            cwd: args.workdir.clone(),
            user: args.user.clone(),
            tty: std::io::stdin().is_terminal(),
            winsize: None,
            forward: None,
        };
        let (i, o, e) = (std::io::stdin(), std::io::stdout(), std::io::stderr());
        return cur
            .envs
            .exec_in_sidecar(record, name, &req, [i.as_fd(), o.as_fd(), e.as_fd()])
            .map_err(env_error);
    }
    let mut req = ExecRequest {
        argv: cur.plan.shell.command.clone(),
        env: Vec::new(),
        cwd: args
            .workdir
            .clone()
            .or_else(|| cur.plan.shell.workdir.clone()),
        user: args.user.clone().or_else(|| cur.plan.shell.user.clone()),
        tty: std::io::stdin().is_terminal(),
        winsize: None,
        forward: None,
    };
    let _credentials = forward_credentials(&cur.envs, record, &mut req, None);
    cur.envs.shell(record, &req).map_err(env_error)
}
