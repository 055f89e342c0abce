//! Boots one VM through `VmBackend`, prints timing and the VMM's memory (RSS, the guest RAM's
//! part of it, and the rest: the VMM's overhead) as JSON, runs
//! `uname -r` in it and stops it. Used by bench/vm.sh.
//!
//! vm_up_down --vmm qemu|kvm --kernel debian:PACKAGE|/path/to/kernel --rootfs DIR --agent PATH
//!            --home DIR [--memory-mib N] [--exec-runs N]
//!
//! `--exec-runs N`: also times N `exec -- true` round trips through the agent (median, µs).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use berth_runtime::state::BerthHome;
use berth_runtime::vm::vmm_memory::{self, guest_mappings};
use berth_runtime::vm::{VmBackend, VmSpec};
use envfile_spec::plan::{KernelSource, VmmKind};

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let need = |n: &str| arg(&args, n).unwrap_or_else(|| panic!("missing {n}"));
    let kernel = need("--kernel");
    let kernel = match kernel.strip_prefix("debian:") {
        Some(p) => {
            let (package, version) = match p.split_once('=') {
                Some((p, v)) => (p.to_string(), Some(v.to_string())),
                None => (p.to_string(), None),
            };
            KernelSource::Debian { package, version }
        }
        None => KernelSource::Path {
            path: kernel.into(),
        },
    };
    let vmm = match need("--vmm").as_str() {
        "kvm" => VmmKind::Kvm,
        _ => VmmKind::Qemu,
    };
    let memory = arg(&args, "--memory-mib")
        .and_then(|m| m.parse().ok())
        .unwrap_or(256u64)
        << 20;
    let home = BerthHome::at(need("--home")).expect("berth home");
    let state_dir = home.env_dir("bench-00000000");
    let backend = VmBackend::new(home);
    let spec = VmSpec {
        name: "bench".into(),
        state_dir: state_dir.clone(),
        layers: vec![PathBuf::from(need("--rootfs"))],
        kernel,
        modules: arg(&args, "--modules").map(PathBuf::from),
        memory,
        vcpus: 1,
        vmm,
        env: BTreeMap::new(),
        services: BTreeMap::new(),
        mounts: vec![],
        ports: vec![],
        network: envfile_spec::plan::NetworkMode::Isolated,
        provider: None,
        workdir: None,
        user: None,
        disk_size: Some(256 << 20),
        agent: Some(need("--agent").into()),
        boot_timeout: Duration::from_secs(300),
        hosts: Vec::new(),
        secrets: false,
        secret_env: Vec::new(),
        hold_services: false,
    };
    let t = Instant::now();
    let result = backend.start(&spec);
    let up_ms = t.elapsed().as_millis();
    let st = match result {
        Ok(st) => st,
        Err(e) => {
            let _ = backend.stop(&state_dir, Duration::from_secs(5));
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    let pid = st.process.map(|p| p.pid).unwrap_or(0);
    // RSS, and the part of it that is the guest's RAM (the pages the booted guest touched).
    let mem = vmm_memory::of_process(pid, &guest_mappings(st.provider, memory))
        .unwrap_or_else(|e| panic!("{e}"));
    let uname = backend
        .exec_capture(&state_dir, &["uname", "-r"])
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let exec_runs: usize = arg(&args, "--exec-runs")
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let mut exec_us: Vec<u128> = (0..exec_runs)
        .map(|_| {
            let t = Instant::now();
            let o = backend
                .exec_capture(&state_dir, &["true"])
                .expect("exec -- true");
            assert_eq!(o.status.code, 0, "exec -- true failed");
            t.elapsed().as_micros()
        })
        .collect();
    exec_us.sort_unstable();
    let exec_true_us = exec_us.get(exec_us.len() / 2).copied().unwrap_or(0);
    let t = Instant::now();
    backend
        .stop(&state_dir, Duration::from_secs(20))
        .expect("stop");
    let down_ms = t.elapsed().as_millis();
    println!(
        "{{\"provider\":\"{:?}\",\"accel\":\"{}\",\"kernel\":\"{}\",\"uname\":\"{}\",\"up_ms\":{up_ms},\"vmm_to_agent_ms\":{},\"down_ms\":{down_ms},\"vmm_rss_kib\":{},\"guest_rss_kib\":{},\"vmm_overhead_kib\":{},\"guest_memory_kib\":{},\"exec_true_us\":{exec_true_us}}}",
        st.provider,
        st.accel,
        st.kernel_release,
        uname.unwrap_or_else(|e| format!("error: {e}")),
        st.boot_ms.unwrap_or(0),
        mem.rss_kib,
        mem.guest_rss_kib,
        mem.overhead_kib(),
        memory >> 10
    );
}
