//! `berth completions SHELL` and the hidden `berth manpages DIR`, generated from clap.

use std::path::Path;

use clap::CommandFactory;

use crate::args::Cli;
use crate::exit::{CliError, EXIT_ERROR};

pub fn print(shell: clap_complete::Shell) -> Result<i32, CliError> {
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "berth", &mut std::io::stdout());
    Ok(0)
}

pub fn manpages(dir: &Path) -> Result<i32, CliError> {
    std::fs::create_dir_all(dir)
        .and_then(|_| clap_mangen::generate_to(Cli::command(), dir))
        .map_err(|e| {
            CliError::new(
                EXIT_ERROR,
                format!("cannot write man pages to {}: {e}", dir.display()),
            )
        })?;
    Ok(0)
}
