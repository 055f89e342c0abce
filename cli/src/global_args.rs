//! The options every command takes (`-f`, `-C`, `--environment`, `-q`, `--devcontainer`) and the `--json`
//! flag several share. Below the commands: `args.rs` (the command enum) and each
//! `commands/<command>.rs` use them.

use std::path::PathBuf;

use clap::Args;

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
    /// Use .devcontainer/devcontainer.json (converted in memory, as `berth init
    /// --from-devcontainer` would write it) instead of a berth.toml.
    #[arg(long, global = true, conflicts_with = "file")]
    pub devcontainer: bool,
}

#[derive(Debug, Args, Clone, Copy)]
pub struct JsonFlag {
    /// Print machine-readable JSON.
    #[arg(long)]
    pub json: bool,
}
