//! `berth snapshot save|ls|restore|rm`: the environment's writable layer (a VM's disk),
//! captured by name.

use berth_runtime::image::progress::human_bytes;
use clap::Subcommand;

use crate::environment::{env_error, Current};
use crate::exit::CliError;
use crate::global_args::{GlobalArgs, JsonFlag};
use crate::progress::progress;

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

pub fn run(g: &GlobalArgs, cmd: &SnapshotCommand) -> Result<i32, CliError> {
    let cur = Current::load(g)?;
    let record = cur.require()?;
    match cmd {
        SnapshotCommand::Save { name } => {
            let info = cur.envs.snapshot_save(record, name).map_err(env_error)?;
            if !g.quiet {
                println!(
                    "saved snapshot {} of {} ({})",
                    info.name,
                    record.name,
                    human_bytes(info.size)
                );
            }
        }
        SnapshotCommand::Ls(j) => {
            let list = cur.envs.snapshot_list(record).map_err(env_error)?;
            if j.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&list).unwrap_or_default()
                );
            } else if list.is_empty() {
                println!(
                    "{} has no snapshots; `berth snapshot save NAME` makes one",
                    record.name
                );
            } else {
                println!("{:<24} {:>10}  CREATED (unix time)", "NAME", "SIZE");
                for s in list {
                    println!(
                        "{:<24} {:>10}  {}",
                        s.name,
                        human_bytes(s.size),
                        s.created_at
                    );
                }
            }
        }
        SnapshotCommand::Restore { name } => {
            let restarted = cur
                .envs
                .snapshot_restore(record, name, progress(g))
                .map_err(env_error)?;
            if !g.quiet {
                println!(
                    "restored snapshot {name} of {}{}",
                    record.name,
                    if restarted {
                        " and started it again"
                    } else {
                        ""
                    }
                );
            }
        }
        SnapshotCommand::Rm { name } => {
            cur.envs.snapshot_remove(record, name).map_err(env_error)?;
            if !g.quiet {
                println!("removed snapshot {name} of {}", record.name);
            }
        }
    }
    Ok(0)
}
