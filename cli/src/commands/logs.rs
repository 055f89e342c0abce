//! `berth logs [SERVICE] [-F] [-n N]`: the services' output, kept in size-bounded files (for
//! a VM, inside the guest, read there through the agent).

use crate::environment::{env_error, Current};
use crate::exit::{CliError, EXIT_ERROR};
use crate::global_args::GlobalArgs;
use clap::Args;

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

pub fn run(g: &GlobalArgs, args: &LogsArgs) -> Result<i32, CliError> {
    let cur = Current::load(g)?;
    let record = cur.require()?;
    let services = match &args.service {
        Some(s) => {
            if !record.plan.services.contains_key(s) && !record.plan.sidecars.contains_key(s) {
                let known: Vec<&str> = record
                    .plan
                    .services
                    .keys()
                    .chain(record.plan.sidecars.keys())
                    .map(String::as_str)
                    .collect();
                return Err(CliError::new(
                    EXIT_ERROR,
                    format!(
                        "no service {s:?} in {}; services: {}",
                        record.name,
                        if known.is_empty() {
                            "none".into()
                        } else {
                            known.join(", ")
                        }
                    ),
                ));
            }
            vec![s.clone()]
        }
        None => cur.envs.logged_services(record),
    };
    cur.envs
        .logs(record, services, args.tail, args.follow)
        .map_err(env_error)
}
