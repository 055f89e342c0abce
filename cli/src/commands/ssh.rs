//! `berth ssh [NAME] [-- CMD…]`, `berth ssh --stdio NAME` and `berth ssh-config`.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;

use berth_runtime::environment::{EnvRecord, Environments};
use berth_runtime::ssh::{self, HostEntry, SshError};
use clap::Args;

use crate::environment::{env_error, Current};
use crate::exit::{from_error, CliError, EXIT_ERROR, EXIT_USAGE};
use crate::global_args::GlobalArgs;

#[derive(Debug, Args)]
pub struct SshArgs {
    /// Speak SSH on stdin/stdout (for ssh's ProxyCommand) instead of running ssh.
    #[arg(long)]
    pub stdio: bool,
    /// The environment (default: the one of the current berth.toml).
    pub name: Option<String>,
    /// A command to run instead of an interactive shell.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct SshConfigArgs {
    /// Only this environment (default: every environment on this machine).
    pub name: Option<String>,
    /// Write the entries to ~/.ssh/berth_config and include it from ~/.ssh/config.
    #[arg(long)]
    pub install: bool,
}

#[derive(Debug, Args)]
pub struct OpenArgs {
    /// The IDE: code (VS Code), cursor, zed or jetbrains (JetBrains Gateway).
    #[arg(long, default_value = "code", value_name = "IDE")]
    pub ide: String,
    /// The environment (default: the one of the current berth.toml).
    pub name: Option<String>,
}

fn ssh_error(e: SshError) -> CliError {
    match e {
        SshError::Env(e) => env_error(e),
        e => from_error(EXIT_ERROR, &e),
    }
}

/// The environment named, else the one of the current berth.toml.
fn record(g: &GlobalArgs, name: Option<&str>) -> Result<(Environments, EnvRecord), CliError> {
    let name = name.or(g.environment.as_deref());
    if let Some(name) = name {
        let envs = crate::environment::environments()?;
        let rec = envs.find(name).map_err(env_error)?;
        return Ok((envs, rec));
    }
    let cur = Current::load(g)?;
    let rec = cur.require()?.clone();
    Ok((cur.envs, rec))
}

fn berth_exe() -> Result<PathBuf, CliError> {
    std::env::current_exe().map_err(|e| {
        CliError::new(
            EXIT_ERROR,
            format!("cannot find berth's own executable for ssh's ProxyCommand: {e}"),
        )
    })
}

pub fn run(g: &GlobalArgs, args: &SshArgs) -> Result<i32, CliError> {
    if args.stdio {
        let Some(name) = args.name.as_deref().or(g.environment.as_deref()) else {
            return Err(CliError::new(
                EXIT_USAGE,
                "berth ssh --stdio needs the environment's name: berth ssh --stdio NAME",
            ));
        };
        if !args.command.is_empty() {
            return Err(CliError::new(
                EXIT_USAGE,
                "berth ssh --stdio takes no command: the SSH client sends it",
            ));
        }
        let envs = crate::environment::environments()?;
        let rec = envs.find(name).map_err(env_error)?;
        ssh::serve_stdio(envs.home(), rec).map_err(ssh_error)?;
        return Ok(0);
    }
    let (envs, rec) = record(g, args.name.as_deref())?;
    envs.running_dir(&rec).map_err(env_error)?;
    let entry = ssh::host_entry(envs.home(), &rec).map_err(ssh_error)?;
    ssh::write_known_hosts(envs.home(), std::slice::from_ref(&entry)).map_err(ssh_error)?;
    let argv = ssh::ssh_command(&berth_exe()?, envs.home(), &entry, &args.command);
    let err = std::process::Command::new("ssh").args(argv).exec();
    Err(CliError::new(
        EXIT_ERROR,
        if err.kind() == std::io::ErrorKind::NotFound {
            "berth ssh runs OpenSSH's `ssh`, which is not installed: install it (Debian/Ubuntu: apt install openssh-client) or use `berth shell`".to_string()
        } else {
            format!("cannot run ssh: {err}")
        },
    ))
}

pub fn config(g: &GlobalArgs, args: &SshConfigArgs) -> Result<i32, CliError> {
    let (envs, records) = match args.name.as_deref().or(g.environment.as_deref()) {
        Some(_) => {
            let (envs, rec) = record(g, args.name.as_deref())?;
            (envs, vec![rec])
        }
        None => {
            let envs = crate::environment::environments()?;
            let recs = envs.records().map_err(env_error)?;
            (envs, recs)
        }
    };
    let (text, count) = config_text(&envs, &records)?;
    if !args.install {
        print!("{text}");
        return Ok(0);
    }
    install(&text, count)?;
    Ok(0)
}

/// The `Host` entries of `records` (throw-away runs left out) and how many there are; berth's
/// known-hosts file is brought up to date with them.
fn config_text(envs: &Environments, records: &[EnvRecord]) -> Result<(String, usize), CliError> {
    let entries: Vec<HostEntry> = records
        .iter()
        .filter(|r| r.ephemeral.is_none())
        .map(|r| ssh::host_entry(envs.home(), r))
        .collect::<Result<_, _>>()
        .map_err(ssh_error)?;
    ssh::write_known_hosts(envs.home(), &entries).map_err(ssh_error)?;
    Ok((
        ssh::ssh_config_text(&berth_exe()?, envs.home(), &entries),
        entries.len(),
    ))
}

/// Writes `text` (the entries of every environment) into `~/.ssh/berth_config`, included
/// from `~/.ssh/config`, and says so.
fn install(text: &str, count: usize) -> Result<(), CliError> {
    let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) else {
        return Err(CliError::new(
            EXIT_ERROR,
            "--install writes under ~/.ssh, but HOME is not set; print the entries with `berth ssh-config` and add them yourself",
        ));
    };
    let done = ssh::install_config(&PathBuf::from(home).join(".ssh"), text).map_err(ssh_error)?;
    eprintln!(
        "wrote {} entr{} to {}",
        count,
        if count == 1 { "y" } else { "ies" },
        done.file.display()
    );
    if done.include_added {
        eprintln!(
            "added an Include line at the top of {}{}",
            done.config.display(),
            done.backup
                .map(|b| format!(" (previous version: {})", b.display()))
                .unwrap_or_default()
        );
    }
    Ok(())
}

/// `berth open`: installs the `Host` entries of every environment (as `ssh-config
/// --install`), prints the IDE's command for the environment's workdir and runs it when
/// the IDE's launcher is on PATH.
pub fn open(g: &GlobalArgs, args: &OpenArgs) -> Result<i32, CliError> {
    let Some(ide) = ssh::Ide::from_name(&args.ide) else {
        return Err(CliError::new(
            EXIT_USAGE,
            format!(
                "unknown IDE {:?}: use one of {}",
                args.ide,
                ssh::Ide::NAMES.join(", ")
            ),
        ));
    };
    let (envs, rec) = record(g, args.name.as_deref())?;
    envs.running_dir(&rec).map_err(env_error)?;
    let (text, count) = config_text(&envs, &envs.records().map_err(env_error)?)?;
    install(&text, count)?;
    let workdir = rec.plan.shell.workdir.as_deref().unwrap_or("/");
    let uri = ssh::open_uri(ide, &rec.name, rec.plan.shell.user.as_deref(), workdir);
    let launcher_args = ssh::launcher_args(ide, &uri);
    println!("{} {}", ide.launcher(), launcher_args.join(" "));
    let path = std::env::var_os("PATH").unwrap_or_default();
    let Some(launcher) = ssh::find_on_path(ide.launcher(), &path) else {
        eprintln!(
            "{} is not on PATH: run the command above where the IDE is installed (or open the URI)",
            ide.launcher()
        );
        return Ok(0);
    };
    let status = std::process::Command::new(&launcher)
        .args(&launcher_args)
        .status()
        .map_err(|e| {
            CliError::new(
                EXIT_ERROR,
                format!("cannot run {}: {e}", launcher.display()),
            )
        })?;
    Ok(status.code().unwrap_or(EXIT_ERROR))
}
