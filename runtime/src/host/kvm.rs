//! Which provider backs `/dev/kvm`: it decides whether berth's own VMM may boot a kernel.

use serde::Serialize;

use super::probe::HostRoot;

/// What kind of KVM this host has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KvmKind {
    /// No usable /dev/kvm.
    Absent,
    /// Hardware-assisted KVM (kvm_intel / kvm_amd): boots stock kernels.
    Hardware,
    /// `kvm_pvm`, the pagetable-based nested KVM: runs tiny guests, but booting a stock Linux
    /// kernel through it can restart the host.
    Pvm,
    /// /dev/kvm exists but its provider is unknown.
    Unknown,
}

/// Which KVM provider backs /dev/kvm.
pub fn kvm_kind(host: &HostRoot) -> KvmKind {
    if !host.exists("/dev/kvm") {
        return KvmKind::Absent;
    }
    if host.exists("/sys/module/kvm_pvm") {
        KvmKind::Pvm
    } else if host.exists("/sys/module/kvm_intel") || host.exists("/sys/module/kvm_amd") {
        KvmKind::Hardware
    } else {
        KvmKind::Unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn the_provider_is_told_by_its_module() {
        let d = tempfile::tempdir().unwrap();
        let h = HostRoot::fake(d.path());
        assert_eq!(kvm_kind(&h), KvmKind::Absent);
        fs::create_dir_all(d.path().join("dev")).unwrap();
        fs::write(d.path().join("dev/kvm"), "").unwrap();
        assert_eq!(kvm_kind(&h), KvmKind::Unknown);
        fs::create_dir_all(d.path().join("sys/module/kvm_amd")).unwrap();
        assert_eq!(kvm_kind(&h), KvmKind::Hardware);
        // pvm wins: a nested host may have the hardware modules loaded too.
        fs::create_dir_all(d.path().join("sys/module/kvm_pvm")).unwrap();
        assert_eq!(kvm_kind(&h), KvmKind::Pvm);
    }
}
