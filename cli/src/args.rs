//! The command-line surface of `berth`, declared with clap. Behaviour lives in `commands/`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

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

#[derive(Debug, Args, Clone)]
pub struct GlobalArgs {
    /// Use this berth.toml instead of searching the current folder and its parents.
    #[arg(short = 'f', long = "file", global = true, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Change to DIR before doing anything.
    #[arg(short = 'C', long = "directory", global = true, value_name = "DIR")]
    pub directory: Option<PathBuf>,
    /// Work on an existing environment by name or id (see `berth ls`) instead of the one of
    /// the berth.toml here.
    #[arg(long = "environment", global = true, value_name = "NAME")]
    pub environment: Option<String>,
    /// Print less: only errors and requested output.
    #[arg(short, long, global = true)]
    pub quiet: bool,
}

#[derive(Debug, Subcommand)]
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

#[derive(Debug, Args, Clone, Copy)]
pub struct JsonFlag {
    /// Print machine-readable JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Template to start from (see --list).
    #[arg(short, long, value_name = "NAME", conflicts_with = "from_devcontainer")]
    pub template: Option<String>,
    /// List the templates and exit.
    #[arg(long)]
    pub list: bool,
    /// Convert a .devcontainer/devcontainer.json (default: the one in this folder).
    #[arg(long, value_name = "PATH", num_args = 0..=1, default_missing_value = ".devcontainer/devcontainer.json")]
    pub from_devcontainer: Option<PathBuf>,
    /// Overwrite an existing berth.toml.
    #[arg(long)]
    pub force: bool,
    /// Environment name (default: the folder's name).
    #[arg(long)]
    pub name: Option<String>,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Rebuild the image and recreate the environment even if nothing changed.
    #[arg(long)]
    pub rebuild: bool,
    /// Re-resolve the image and refresh berth.lock.
    #[arg(long)]
    pub update: bool,
    /// Run the environment without a user namespace (its root is the host's root), with all
    /// capabilities and no seccomp filter. Root only; for trusted images.
    #[arg(long)]
    pub privileged: bool,
    /// Publish on a free host port when a declared one is taken (saying which).
    #[arg(long)]
    pub publish_auto: bool,
}

#[derive(Debug, Args)]
pub struct DownArgs {
    /// Seconds to wait after SIGTERM before SIGKILL.
    #[arg(short, long, default_value_t = 10)]
    pub timeout: u64,
}

#[derive(Debug, Args)]
pub struct DestroyArgs {
    /// Also remove the named volumes the environment uses.
    #[arg(long)]
    pub volumes: bool,
    /// Seconds to wait after SIGTERM before SIGKILL.
    #[arg(short, long, default_value_t = 10)]
    pub timeout: u64,
}

#[derive(Debug, Args)]
pub struct ShellArgs {
    /// User inside the environment.
    #[arg(short, long)]
    pub user: Option<String>,
    /// Working directory inside the environment.
    #[arg(short, long)]
    pub workdir: Option<String>,
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
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Set an environment variable (KEY=VAL); repeatable.
    #[arg(short = 'e', long = "env", value_name = "KEY=VAL")]
    pub env: Vec<String>,
    /// Working directory inside the environment.
    #[arg(short, long)]
    pub workdir: Option<String>,
    /// Kill the environment after this long (e.g. 30s, 5m) and exit 124.
    #[arg(long, value_name = "DURATION")]
    pub timeout: Option<String>,
    /// Keep the environment afterwards (for `berth shell`).
    #[arg(long)]
    pub keep: bool,
    /// Keep the environment only when the command fails.
    #[arg(long)]
    pub keep_on_failure: bool,
    /// Name of the throw-away environment (default: generated).
    #[arg(long)]
    pub name: Option<String>,
    /// Give the run a private copy of the project instead of a live mount.
    #[arg(long)]
    pub copy_source: bool,
    /// Pick free host ports when the declared ones are taken (what `run` always does; kept
    /// for scripts that pass it).
    #[arg(long)]
    pub publish_auto: bool,
    /// Print a JSON summary at the end.
    #[arg(long)]
    pub json: bool,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Only this service.
    pub service: Option<String>,
    /// Keep printing new output (`-f` is the global --file option).
    #[arg(short = 'F', long)]
    pub follow: bool,
    /// Only the last N lines.
    #[arg(short = 'n', long)]
    pub tail: Option<usize>,
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Pull an image from a registry.
    Pull {
        /// Image reference (e.g. debian:bookworm, 127.0.0.1:5000/app@sha256:…).
        reference: String,
        /// Use plain HTTP / accept invalid certificates.
        #[arg(long)]
        insecure: bool,
    },
    /// List images and their sizes (shared layers counted once).
    Ls(JsonFlag),
    /// Remove an image (its layers go with `prune` when nothing else uses them).
    Rm { reference: String },
    /// Remove layers and blobs that no image or environment references.
    Prune,
    /// Import a root filesystem tar, an OCI layout, or a CI cache folder.
    Import {
        /// A rootfs tar or an OCI layout folder.
        path: Option<PathBuf>,
        /// Name to give the imported image.
        #[arg(long)]
        name: Option<String>,
        /// Import layers from a CI cache folder written by `export --cache`.
        #[arg(long, value_name = "DIR", conflicts_with = "path")]
        cache: Option<PathBuf>,
    },
    /// Export an image as a rootfs tar or an OCI layout, or layers into a CI cache folder.
    Export {
        /// The image to export.
        reference: Option<String>,
        /// Output path (a .tar file, or a folder for --oci).
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Write an OCI image layout instead of a flat rootfs tar.
        #[arg(long)]
        oci: bool,
        /// Write all layers this project uses into a CI cache folder.
        #[arg(long, value_name = "DIR", conflicts_with = "output")]
        cache: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Save the environment's writable layer (a VM's disk) under NAME.
    Save { name: String },
    /// List snapshots of this environment.
    Ls(JsonFlag),
    /// Put a snapshot back as the environment's writable layer (a VM's disk).
    Restore { name: String },
    /// Remove a snapshot.
    Rm { name: String },
}

#[derive(Debug, Args)]
pub struct SyncArgs {
    /// Wait until both sides of every sync mount are identical.
    #[arg(long)]
    pub flush: bool,
    /// Print machine-readable JSON.
    #[arg(long)]
    pub json: bool,
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
