//! `berth internal-vmm CONFIG.json` (hidden): berth's own VMM as a VM environment's
//! supervisor process. The VM backend starts the running berth executable this way, so an
//! installed berth needs no separate VMM binary. Runs until the guest powers off or the
//! process gets SIGTERM; refuses to boot on kvm_pvm.

use std::path::Path;

use berth_runtime::vm::vmm_process::{self, ExitReason};

pub fn run(config: &Path) -> i32 {
    match vmm_process::run(config) {
        Ok(reason) => {
            eprintln!("berth internal-vmm: VM stopped: {reason:?}");
            if matches!(reason, ExitReason::Error(_)) {
                1
            } else {
                0
            }
        }
        Err(e) => {
            eprintln!("berth internal-vmm: {e}");
            1
        }
    }
}
