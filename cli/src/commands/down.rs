//! `berth down` and `berth destroy`.

use std::time::Duration;

use clap::Args;

use crate::environment::{env_error, Current};
use crate::exit::CliError;
use crate::global_args::GlobalArgs;

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

pub fn down(g: &GlobalArgs, args: &DownArgs) -> Result<i32, CliError> {
    let cur = Current::load(g)?;
    let Some(record) = &cur.record else {
        if !g.quiet {
            println!("{} was never started; nothing to stop", cur.plan.name);
        }
        return Ok(0);
    };
    let was_running = cur
        .envs
        .down(&record.env_id, Duration::from_secs(args.timeout))
        .map_err(env_error)?;
    if !g.quiet {
        if was_running {
            println!("{} stopped", record.name);
        } else {
            println!("{} was not running", record.name);
        }
    }
    Ok(0)
}

pub fn destroy(g: &GlobalArgs, args: &DestroyArgs) -> Result<i32, CliError> {
    let cur = Current::load(g)?;
    let Some(record) = &cur.record else {
        if !args.volumes {
            if !g.quiet {
                println!("{} does not exist; nothing to destroy", cur.plan.name);
            }
            return Ok(0);
        }
        // Destroyed before without --volumes: the volumes berth.toml declares are still here.
        let berth_runtime::environment::VolumesRemoved { removed, in_use } =
            cur.envs.remove_plan_volumes(&cur.plan).map_err(env_error)?;
        for (volume, user) in &in_use {
            eprintln!("kept volume {volume}: environment {user} still uses it");
        }
        if !g.quiet {
            if removed.is_empty() {
                println!("{} does not exist and has no volumes left", cur.plan.name);
            } else {
                println!(
                    "{} does not exist; removed its volumes {}",
                    cur.plan.name,
                    removed.join(", ")
                );
            }
        }
        return Ok(0);
    };
    cur.envs
        .destroy(
            &record.env_id,
            args.volumes,
            Duration::from_secs(args.timeout),
        )
        .map_err(env_error)?;
    if !g.quiet {
        println!(
            "{} destroyed{}",
            record.name,
            if args.volumes {
                " with its volumes"
            } else {
                ""
            }
        );
    }
    Ok(0)
}
