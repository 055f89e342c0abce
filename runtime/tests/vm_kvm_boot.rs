//! Opt-in: a real Linux kernel under berth's own VMM. Runs only with BERTH_TEST_KVM_BOOT=1 on a
//! host with hardware KVM (kvm_intel/kvm_amd) — never on kvm_pvm, which can restart the host.
//!
//! The kernel is Debian's cloud kernel (fetched by berth; the VMM describes its devices and
//! vCPUs in ACPI), or BERTH_TEST_KVM_KERNEL=/path/to/vmlinux-or-bzImage, with
//! BERTH_TEST_KVM_MODULES=/path/lib/modules/VERSION when its virtio drivers are modules.
//! BERTH_AGENT must point at the static berth-agent.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use berth_runtime::doctor::{kvm_kind, HostRoot, KvmKind};
use berth_runtime::state::BerthHome;
use berth_runtime::vm::{Provider, VmBackend, VmSpec};
use envfile_spec::plan::{KernelSource, VmmKind};

#[test]
fn real_kernel_under_berths_vmm() {
    if std::env::var("BERTH_TEST_KVM_BOOT").as_deref() != Ok("1") {
        eprintln!("skipping: set BERTH_TEST_KVM_BOOT=1 (hardware KVM only) to boot a real kernel under berth's VMM");
        return;
    }
    let kind = kvm_kind(&HostRoot::real());
    if kind != KvmKind::Hardware {
        eprintln!(
            "skipping: /dev/kvm is {kind:?}, not hardware KVM; berth never boots Linux through it"
        );
        return;
    }
    let kernel = match std::env::var_os("BERTH_TEST_KVM_KERNEL") {
        Some(p) => KernelSource::Path {
            path: PathBuf::from(p),
        },
        None => KernelSource::Debian {
            package: "linux-image-cloud-amd64".into(),
            version: None,
        },
    };
    let agent = PathBuf::from(
        std::env::var("BERTH_AGENT").expect("set BERTH_AGENT to the static berth-agent"),
    );
    std::env::set_var("BERTH_VMM_EXE", env!("CARGO_BIN_EXE_berth-vmm"));
    let tmp = tempfile::tempdir().unwrap();
    let layer = tmp.path().join("rootfs");
    std::fs::create_dir_all(layer.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", layer.join("bin/busybox")).unwrap();
    for a in ["sh", "uname", "cat", "echo", "grep"] {
        std::os::unix::fs::symlink("busybox", layer.join("bin").join(a)).unwrap();
    }
    let home = BerthHome::at(tmp.path().join("home")).unwrap();
    let backend = VmBackend::new(home.clone());
    let state_dir = home.env_dir("kvmboot-00000000");
    let spec = VmSpec {
        name: "kvmboot".into(),
        state_dir: state_dir.clone(),
        layers: vec![layer],
        kernel,
        modules: std::env::var_os("BERTH_TEST_KVM_MODULES").map(PathBuf::from),
        memory: 256 << 20,
        vcpus: 2,
        vmm: VmmKind::Kvm,
        env: BTreeMap::new(),
        services: BTreeMap::new(),
        mounts: vec![],
        ports: vec![],
        network: envfile_spec::plan::NetworkMode::Isolated,
        on_up: vec![],
        disk_size: Some(128 << 20),
        agent: Some(agent),
        boot_timeout: Duration::from_secs(30),
    };
    let st = match backend.start(&spec) {
        Ok(st) => st,
        Err(e) => {
            let _ = backend.stop(&state_dir, Duration::from_secs(5));
            panic!("{e}");
        }
    };
    assert_eq!(st.provider, Provider::Kvm);
    let out = backend.exec_capture(&state_dir, &["uname", "-r"]).unwrap();
    assert_eq!(out.status.code, 0);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        st.kernel_release
    );
    let cpus = backend
        .exec_capture(
            &state_dir,
            &["/bin/sh", "-c", "grep -c ^processor /proc/cpuinfo"],
        )
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&cpus.stdout).trim(),
        "2",
        "both vCPUs started (MADT)"
    );
    eprintln!(
        "booted {} in {} ms",
        st.kernel_release,
        st.boot_ms.unwrap_or(0)
    );
    backend.stop(&state_dir, Duration::from_secs(10)).unwrap();
    assert!(!st.process.unwrap().is_alive());
    assert!(!state_dir.join("control.sock").exists());
}
