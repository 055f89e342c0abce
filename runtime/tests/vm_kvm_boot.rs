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

use berth_runtime::host::kvm::{kvm_kind, KvmKind};
use berth_runtime::host::probe::HostRoot;
use berth_runtime::net::bridge::BridgeConfig;
use berth_runtime::net::NetworkOptions;
use berth_runtime::state::BerthHome;
use berth_runtime::vm::{Provider, VmBackend, VmSpec};
use envfile_spec::plan::{KernelSource, PortPlan, Protocol, RestartPolicy, ServicePlan, VmmKind};

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
    for a in ["sh", "uname", "cat", "echo", "grep", "mkdir", "httpd"] {
        std::os::unix::fs::symlink("busybox", layer.join("bin").join(a)).unwrap();
    }
    let home = BerthHome::at(tmp.path().join("home")).unwrap();
    // As root the VM is networked: on a bridge of its own, not the host's berth0.
    let networked = nix::unistd::geteuid().is_root();
    let bridge = format!("berth_kb{}", std::process::id() % 100_000);
    let backend = VmBackend::new(home.clone()).with_network_options(NetworkOptions {
        bridge: BridgeConfig {
            name: bridge.clone(),
            nft_table: bridge.clone(),
            subnet: None,
        },
        ..NetworkOptions::default()
    });
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let web = ServicePlan {
        command: vec![
            "/bin/sh".into(),
            "-c".into(),
            "mkdir -p /srv && echo served-by-berths-vmm > /srv/index.html && exec httpd -f -p 80 -h /srv".into(),
        ],
        restart: RestartPolicy::No,
        env: BTreeMap::new(),
        workdir: None,
    };
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
        services: BTreeMap::from([("web".to_string(), web)]),
        mounts: vec![],
        ports: vec![PortPlan {
            host: port,
            guest: 80,
            protocol: Protocol::Tcp,
            address: "127.0.0.1".parse().unwrap(),
        }],
        network: envfile_spec::plan::NetworkMode::Isolated,
        provider: None,
        workdir: None,
        user: None,
        disk_size: Some(128 << 20),
        agent: Some(agent),
        boot_timeout: Duration::from_secs(30),
        hosts: Vec::new(),
        secrets: false,
        secret_env: Vec::new(),
        hold_services: false,
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
    if networked {
        // virtio-net on the tap: the forwarded port reaches the guest's httpd.
        assert!(
            berth_e2e::vm::http_get_forwarded(port, Duration::from_secs(10))
                .contains("served-by-berths-vmm")
        );
    }
    // The guest powers itself off: the VMM process ends and releases tap, lease and bridge
    // itself, before any `down`.
    let vmm = st.process.unwrap();
    backend
        .connect(&state_dir)
        .unwrap()
        .client
        .poweroff()
        .unwrap();
    assert!(vmm.wait_exit(Duration::from_secs(30)), "the VMM ended");
    assert!(
        !std::path::Path::new(&format!("/sys/class/net/{bridge}")).exists(),
        "the VMM released its tap and the bridge when the guest powered off"
    );
    backend.stop(&state_dir, Duration::from_secs(10)).unwrap();
    assert!(!vmm.alive());
    assert!(
        !std::path::Path::new(&format!("/sys/class/net/{bridge}")).exists(),
        "tap and bridge removed"
    );
    assert!(!state_dir.join("control.sock").exists());
}
