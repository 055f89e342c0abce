//! The top of `berth`'s command line, declared with clap: the commands. Each command's own
//! arguments live beside its code in `commands/<command>.rs`; the options every command
//! takes in `global_args.rs`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::commands::down::{DestroyArgs, DownArgs};
use crate::commands::exec::{ExecArgs, ShellArgs};
use crate::commands::image::ImageCommand;
use crate::commands::init::InitArgs;
use crate::commands::login::{LoginArgs, LogoutArgs};
use crate::commands::logs::LogsArgs;
use crate::commands::run::RunArgs;
use crate::commands::snapshot::SnapshotCommand;
use crate::commands::ssh::{OpenArgs, SshArgs, SshConfigArgs};
use crate::commands::sync::SyncArgs;
use crate::commands::up::UpArgs;
use crate::global_args::{GlobalArgs, JsonFlag};

/// Declarative dev environments from a berth.toml: containers in milliseconds, micro-VMs when
/// you need another kernel. No daemon.
#[derive(Debug, Parser)]
#[command(name = "berth", version, about, long_about = None, propagate_version = true)]
#[command(
    after_help = "Exit codes: 0 success, 1 error (bad berth.toml, failed command), \
2 usage error, 3 environment not found / not running; `exec` and `run` return the command's own \
exit code (124 when `run --timeout` expired)."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
// Each command's own arguments are added when that command is the one given (`defer`),
// not for all of them at every start: see `parse_builds_only_the_command_given` below.
#[command(defer = true)]
pub enum Command {
    /// Write a starter berth.toml from a template (or convert a devcontainer.json).
    Init(InitArgs),
    /// Check a berth.toml and report every problem with file:line:column.
    Validate(JsonFlag),
    /// Create or update the environment described by berth.toml and start it.
    Up(UpArgs),
    /// Stop the environment; its writable layer is kept for the next `up`.
    Down(DownArgs),
    /// Stop the environment and remove everything it owns (writable layer, logs).
    Destroy(DestroyArgs),
    /// Open an interactive shell inside the environment.
    Shell(ShellArgs),
    /// Run a command inside the running environment.
    Exec(ExecArgs),
    /// Connect with OpenSSH's `ssh` (berth's own SSH endpoint, no sshd needed inside).
    Ssh(SshArgs),
    /// Print `Host berth-NAME` entries for ssh and IDEs (`--install`: into ~/.ssh).
    SshConfig(SshConfigArgs),
    /// Open the environment in an IDE over SSH (VS Code, Cursor, Zed, JetBrains Gateway).
    Open(OpenArgs),
    /// Run a command in a fresh, throw-away environment (for CI).
    Run(RunArgs),
    /// Show the environment's state, address, ports and resource usage.
    Status(JsonFlag),
    /// List all environments on this machine.
    Ls(JsonFlag),
    /// Show the output of the environment's services.
    Logs(LogsArgs),
    /// Manage images and layers.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Log in to a registry (credentials saved as docker saves them).
    Login(LoginArgs),
    /// Remove the saved credentials of a registry.
    Logout(LogoutArgs),
    /// Save and restore the environment's writable layer.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Show or wait for live-sync mounts.
    Sync(SyncArgs),
    /// Report what this host offers berth and how to fix what is missing.
    Doctor(JsonFlag),
    /// Print the JSON schema of berth.toml (for editors).
    Schema,
    /// Print a shell completion script.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Write the man pages into DIR.
    #[command(hide = true)]
    Manpages { dir: PathBuf },
    /// Internal: keep an environment's `sync` mounts in sync (started by `up`).
    #[command(name = "__sync", hide = true)]
    SyncProcess { env_dir: PathBuf },
    /// Internal: run berth's own VMM for one VM (started by `up` for `vmm = "kvm"`); the
    /// name is `berth_runtime::vm::vmm_process::SUBCOMMAND`.
    #[command(name = "internal-vmm", hide = true)]
    InternalVmm { config: PathBuf },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parse_builds_only_the_command_given() {
        // Every start parses its command line: with the arguments of every command built
        // (and the global options copied into each), `berth up` allocated 270 KiB and took
        // ~30 page faults more. Deferred, a command's own arguments exist once it is chosen.
        let cmd = Cli::command();
        for name in ["up", "exec", "run", "status", "down"] {
            let sc = cmd.find_subcommand(name).unwrap();
            assert_eq!(
                sc.get_arguments().count(),
                0,
                "`{name}`'s arguments are built before any command is chosen"
            );
        }
        let cli = Cli::try_parse_from(["berth", "up", "--rebuild", "-q"]).unwrap();
        assert!(matches!(cli.command, Command::Up(ref a) if a.rebuild) && cli.global.quiet);
    }

    #[test]
    fn exec_takes_everything_after_double_dash() {
        let cli = Cli::try_parse_from(["berth", "exec", "-e", "A=1", "--", "ls", "-l", "--", "x"])
            .unwrap();
        match cli.command {
            Command::Exec(e) => {
                assert_eq!(e.env, ["A=1"]);
                assert_eq!(e.command, ["ls", "-l", "--", "x"]);
            }
            other => panic!("parsed as {other:?}"),
        }
    }
}
