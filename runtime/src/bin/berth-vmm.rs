//! berth's own VMM as a process: `berth-vmm [internal-vmm] CONFIG.json`. The VM backend starts
//! it (or the berth binary's hidden `internal-vmm` subcommand, which does the same) as the
//! environment's supervisor; it runs until the guest powers off or it gets SIGTERM.
//! Refuses to boot on kvm_pvm.

use std::path::PathBuf;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != berth_runtime::vm::vmm_process::SUBCOMMAND)
        .collect();
    let [config] = args.as_slice() else {
        eprintln!("usage: berth-vmm CONFIG.json");
        std::process::exit(2);
    };
    match berth_runtime::vm::vmm_process::run(&PathBuf::from(config)) {
        Ok(reason) => {
            eprintln!("berth-vmm: VM stopped: {reason:?}");
            let ok = !matches!(reason, berth_runtime::vm::vmm_process::ExitReason::Error(_));
            std::process::exit(if ok { 0 } else { 1 });
        }
        Err(e) => {
            eprintln!("berth-vmm: {e}");
            std::process::exit(1);
        }
    }
}
