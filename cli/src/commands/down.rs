//! `berth down` and `berth destroy`.

use std::time::Duration;

use crate::args::{DestroyArgs, DownArgs, GlobalArgs};
use crate::environment::{env_error, Current};
use crate::exit::CliError;

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
        if !g.quiet {
            println!("{} does not exist; nothing to destroy", cur.plan.name);
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
