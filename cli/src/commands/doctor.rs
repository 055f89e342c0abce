//! `berth doctor`: what this host offers berth, with a fix for each missing piece.

use berth_runtime::doctor::{
    agent_check, diagnose, layer_idmap_check, store_check, virtiofsd_check, CheckStatus,
};
use berth_runtime::host::probe::HostRoot;

use crate::exit::CliError;

pub fn run(json: bool) -> Result<i32, CliError> {
    let mut report = diagnose(&HostRoot::real());
    report.checks.push(agent_check());
    report.checks.push(virtiofsd_check());
    // Inspected where it is, not created: the doctor reports, the next command tightens.
    if let Ok(home) = berth_runtime::state::BerthHome::locate() {
        report
            .checks
            .push(store_check(&home, nix::unistd::geteuid().as_raw()));
        report.checks.push(layer_idmap_check(&home));
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        let width = report
            .checks
            .iter()
            .map(|c| c.name.len())
            .max()
            .unwrap_or(0);
        for c in &report.checks {
            let mark = match c.status {
                CheckStatus::Ok => "ok  ",
                CheckStatus::Warn => "warn",
                CheckStatus::Missing => "MISS",
            };
            println!("[{mark}] {:width$}  {}", c.name, c.detail);
            if let Some(fix) = &c.fix {
                println!("       {:width$}  fix: {fix}", "");
            }
        }
        println!();
        println!("vmm = \"auto\" uses: {}", report.vmm_auto);
    }
    // Missing pieces are reported, not fatal: exit 1 so scripts can tell.
    Ok(if report.healthy() { 0 } else { 1 })
}
