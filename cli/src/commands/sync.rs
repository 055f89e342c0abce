//! `berth sync`: the state of each `type = "sync"` mount of the environment; with `--flush`,
//! waits until both sides of every sync mount are identical.

use std::time::Duration;

use berth_runtime::environment::{EnvRecord, Environments};
use berth_runtime::sync::{self, SyncError};
use clap::Args;
use envfile_spec::plan::MountPlan;

use crate::environment::Current;
use crate::exit::{from_error, CliError, EXIT_ERROR, EXIT_NOT_RUNNING};
use crate::global_args::GlobalArgs;

#[derive(Debug, Args)]
pub struct SyncArgs {
    /// Wait until both sides of every sync mount are identical.
    #[arg(long)]
    pub flush: bool,
    /// Print machine-readable JSON.
    #[arg(long)]
    pub json: bool,
}

/// How long `--flush` waits for one mount.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(600);

fn sync_error(e: SyncError) -> CliError {
    let code = match e {
        SyncError::NotRunning { .. } => EXIT_NOT_RUNNING,
        _ => EXIT_ERROR,
    };
    from_error(code, &e)
}

pub fn run(g: &GlobalArgs, args: &SyncArgs) -> Result<i32, CliError> {
    let cur = Current::load(g)?;
    let record = cur.require()?;
    let mounts: Vec<_> = cur
        .envs
        .sync_mounts(record)
        .into_iter()
        .map(|i| {
            (
                sync::state_dir(cur.envs.home(), &record.env_id, i),
                &record.plan.mounts[i],
            )
        })
        .collect();
    if args.flush {
        for (dir, _) in &mounts {
            sync::request_flush(dir, FLUSH_TIMEOUT).map_err(sync_error)?;
        }
    }
    let mut rows = Vec::new();
    for (dir, m) in &mounts {
        let status = sync::read_status(dir).map_err(|e| from_error(EXIT_ERROR, &e))?;
        rows.push((m, status));
    }
    if args.json {
        let v: Vec<_> = rows
            .iter()
            .map(|(m, s)| {
                serde_json::json!({
                    "source": m.source,
                    "target": m.target,
                    "status": s,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return Ok(0);
    }
    if rows.is_empty() {
        println!("{}: no sync mounts", record.plan.name);
    }
    for (m, s) in rows {
        println!("{}", describe(m, s.as_ref()));
    }
    Ok(0)
}

/// One line per sync mount: `SOURCE ⇄ TARGET: STATE`.
fn describe(m: &MountPlan, s: Option<&sync::SyncStatus>) -> String {
    let state = match s {
        Some(s) => s.to_string(),
        None => "not started".to_string(),
    };
    format!(
        "{} ⇄ {}: {state}",
        m.source.as_deref().unwrap_or("-"),
        m.target
    )
}

/// The sync lines `berth status` shows for an environment.
pub fn status_lines(envs: &Environments, record: &EnvRecord) -> Vec<String> {
    let home = envs.home();
    envs.sync_mounts(record)
        .into_iter()
        .map(|i| {
            let status = sync::read_status(&sync::state_dir(home, &record.env_id, i))
                .ok()
                .flatten();
            describe(&record.plan.mounts[i], status.as_ref())
        })
        .collect()
}
