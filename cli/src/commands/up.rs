//! `berth up`: reconcile berth.toml into a running environment.

use berth_runtime::environment::{UpAction, UpOptions, UpReport};
use clap::Args;

use super::cache_args::CacheArgs;
use crate::environment::{env_error, human_duration, network_lines, replaced_port_lines, Current};
use crate::exit::CliError;
use crate::global_args::GlobalArgs;
use crate::progress::progress;

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
    #[command(flatten)]
    pub cache: CacheArgs,
}

pub fn run(g: &GlobalArgs, args: &UpArgs) -> Result<i32, CliError> {
    let cur = Current::load(g)?;
    let opts = UpOptions {
        rebuild: args.rebuild,
        update: args.update,
        privileged: args.privileged,
        publish_auto: args.publish_auto,
        progress: progress(g),
        cache_from: args.cache.cache_from.clone(),
        cache_to: args.cache.cache_to.clone(),
        ..UpOptions::default()
    };
    let report = cur.envs.up(&cur.plan, &opts).map_err(env_error)?;
    if !g.quiet {
        print_report(&report);
    } else {
        // Even quiet: a port published elsewhere than declared is something to know.
        for line in report.network.iter().flat_map(replaced_port_lines) {
            eprintln!("{}: {line}", report.name);
        }
    }
    Ok(0)
}

fn print_report(r: &UpReport) {
    for n in &r.notices {
        eprintln!("notice: {n}");
    }
    let t = human_duration(r.elapsed);
    match &r.action {
        UpAction::Unchanged => println!("{} is up to date ({t})", r.name),
        UpAction::Created => println!("{} created and started in {t}", r.name),
        UpAction::Started => println!("{} started in {t}", r.name),
        UpAction::Recreated { details, .. } => {
            let list: Vec<&str> = details.iter().map(|s| s.as_str()).collect();
            if list.is_empty() {
                println!("{} restarted in {t}", r.name);
            } else {
                println!("{} restarted in {t} (changed: {})", r.name, list.join(", "));
            }
        }
    }
    for line in r.network.iter().flat_map(network_lines) {
        println!("{}: {line}", r.name);
    }
    for line in r.network.iter().flat_map(replaced_port_lines) {
        eprintln!("{}: {line}", r.name);
    }
}
