//! `berth`: parses arguments, calls into `envfile-spec` and `berth-runtime`, renders output
//! and errors. No runtime logic lives here.

mod args;
mod color;
mod commands;
mod devcontainer_source;
mod envfile;
mod environment;
mod exit;
mod global_args;
mod progress;

use clap::Parser;

use crate::args::{Cli, Command};
use crate::exit::CliError;

fn main() {
    // The supervisor is berth's own binary re-executed (from a sealed copy) by `up` as
    // `berth __supervisor <state-dir>` (see `container::selfexe`); this is its only entry,
    // before clap (which does not know the name).
    let mut argv = std::env::args_os();
    if argv
        .nth(1)
        .is_some_and(|a| a == berth_runtime::container::launch::SUPERVISOR_ARG)
    {
        let dir = argv.next().unwrap_or_default();
        std::process::exit(berth_runtime::container::launch::main(
            std::path::Path::new(&dir),
        ));
    }
    let cli = Cli::parse();
    if let Some(dir) = &cli.global.directory {
        if let Err(e) = std::env::set_current_dir(dir) {
            let err = CliError::usage(format!(
                "cannot change to {}: {e}; check the path given to -C",
                dir.display()
            ));
            std::process::exit(err.report());
        }
    }
    let code = match run(cli) {
        Ok(code) => code,
        Err(err) => err.report(),
    };
    std::process::exit(code);
}

/// Commands whose whole job is printing to stdout: when the reader goes away (`berth ls | head`),
/// they end quietly, as `ls` or `tail -f` do, instead of panicking on a broken pipe. Commands that
/// change state or relay a session keep Rust's ignored SIGPIPE and handle `EPIPE` as an error.
fn only_prints(command: &Command) -> bool {
    matches!(
        command,
        Command::Status(_)
            | Command::Ls(_)
            | Command::Logs(_)
            | Command::Schema
            | Command::Completions { .. }
            | Command::Doctor(_)
    )
}

/// Restores the default action of SIGPIPE (end the process) for this process only.
fn end_quietly_on_broken_pipe() {
    // SAFETY: sets a signal disposition to the default action; no handler code runs, and no
    // other thread exists yet.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn run(cli: Cli) -> Result<i32, CliError> {
    let g = &cli.global;
    if only_prints(&cli.command) {
        end_quietly_on_broken_pipe();
    }
    match cli.command {
        Command::Completions { shell } => commands::completions::print(shell),
        Command::Manpages { dir } => commands::completions::manpages(&dir),
        Command::Validate(flags) => commands::validate::run(g, flags),
        Command::Init(args) => commands::init::run(g, &args),
        Command::Schema => commands::schema::run(),
        Command::Image(cmd) => commands::image::run(cmd, g),
        Command::Doctor(j) => commands::doctor::run(j.json),
        Command::Up(args) => commands::up::run(g, &args),
        Command::Down(args) => commands::down::down(g, &args),
        Command::Destroy(args) => commands::down::destroy(g, &args),
        Command::Status(j) => commands::status::status(g, j.json),
        Command::Ls(j) => commands::status::ls(g, j.json),
        Command::Exec(args) => commands::exec::exec(g, &args),
        Command::Sync(args) => commands::sync::run(g, &args),
        Command::Shell(args) => commands::exec::shell(g, &args),
        Command::Logs(args) => commands::logs::run(g, &args),
        Command::Run(args) => commands::run::run(g, &args),
        Command::Login(args) => commands::login::login(&args, g),
        Command::Logout(args) => commands::login::logout(&args, g),
        Command::Ssh(args) => commands::ssh::run(g, &args),
        Command::SshConfig(args) => commands::ssh::config(g, &args),
        Command::Open(args) => commands::ssh::open(g, &args),
        Command::Snapshot(cmd) => commands::snapshot::run(g, &cmd),
        Command::SyncProcess { env_dir } => {
            Ok(berth_runtime::environment::live_sync::main(&env_dir))
        }
        Command::InternalVmm { config } => Ok(commands::vmm::run(&config)),
    }
}
