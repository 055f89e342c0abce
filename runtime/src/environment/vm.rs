//! What the environment layer needs to run a plan as a VM: the [`VmSpec`] made from a plan,
//! the status report and VM facts of `berth status`, and the translation of exec requests.
//! The mechanism itself lives in [`crate::vm`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use envfile_spec::plan::{KernelSource, MountKind, NetworkMode};
use envfile_spec::Plan;
use serde::Serialize;

use crate::backend::{EnvStatus, StatusReport};
use crate::container::control::ExecRequest;
use crate::vm::agent_proto::Exec;
use crate::vm::shared_folder::{locate_virtiofsd, served_by_sync};
use crate::vm::{Provider, VmBackend, VmError, VmSpec, VmState};

/// How long `up` waits for the guest's agent (TCG boots of a stock kernel take seconds).
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

/// The environment's disk files, kept across `down`/`up` and set aside when the image changes.
pub(super) const DISK_FILES: [&str; 2] = ["disk.qcow2", "disk.img"];

/// VM facts shown by `berth status`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VmView {
    pub provider: Provider,
    /// `kvm` or `tcg`.
    pub accel: String,
    pub vcpus: u32,
    /// Guest memory in bytes.
    pub memory: u64,
    pub kernel_release: String,
    /// Milliseconds from VMM start to agent ready.
    pub boot_ms: Option<u64>,
    pub console_log: PathBuf,
}

impl From<&VmState> for VmView {
    fn from(s: &VmState) -> Self {
        VmView {
            provider: s.provider,
            accel: s.accel.clone(),
            vcpus: s.vcpus,
            memory: s.memory,
            kernel_release: s.kernel_release.clone(),
            boot_ms: s.boot_ms,
            console_log: s.console_log.clone(),
        }
    }
}

/// The VM for `plan` (which must have a `[vm]` section), root filesystem from `layers`, and
/// notices for what of the plan a VM does not provide yet.
pub(super) fn spec_from_plan(
    plan: &Plan,
    state_dir: &Path,
    layers: Vec<PathBuf>,
) -> Result<(VmSpec, Vec<String>), VmError> {
    let vm = plan.vm.as_ref().ok_or_else(|| {
        VmError::Config("backend = \"vm\" needs a [vm] section with at least `kernel`".into())
    })?;
    let spec = VmSpec {
        name: plan.name.clone(),
        state_dir: state_dir.to_path_buf(),
        layers,
        kernel: vm.kernel.clone(),
        modules: match &vm.kernel {
            KernelSource::Path { .. } => vm.modules.clone(),
            KernelSource::Debian { .. } => None,
        },
        memory: vm.memory,
        vcpus: vm.vcpus,
        vmm: vm.vmm,
        env: plan.env.clone(),
        services: plan.services.clone(),
        mounts: plan.mounts.clone(),
        ports: plan.ports.clone(),
        network: plan.network.mode,
        on_up: plan.on_up.clone(),
        disk_size: None,
        agent: None,
        boot_timeout: BOOT_TIMEOUT,
    };
    Ok((
        spec,
        unsupported(
            plan,
            provider_of(plan),
            nix::unistd::geteuid().is_root(),
            locate_virtiofsd().is_some(),
        ),
    ))
}

/// Whether the VM of `plan` shares host folders through virtio-fs (qemu with virtiofsd).
fn shares_folders(provider: Option<Provider>) -> bool {
    provider == Some(Provider::Qemu) && locate_virtiofsd().is_some()
}

/// The provider that will run `plan`'s VM on this host, when one can.
fn provider_of(plan: &Plan) -> Option<Provider> {
    let vm = plan.vm.as_ref()?;
    crate::vm::vm_backend::choose_provider(
        vm.vmm,
        crate::doctor::kvm_kind(&crate::doctor::HostRoot::real()),
    )
    .ok()
    .map(|(p, _)| p)
}

/// Whether the mount `kind` of `plan`'s VM is served by the live sync over the agent channel
/// (see [`crate::vm::shared_folder::served_by_sync`]).
pub(crate) fn mount_served_by_sync(plan: &Plan, kind: MountKind) -> bool {
    served_by_sync(kind, shares_folders(provider_of(plan)))
}

/// Notices for what of `plan` a VM run by `provider` serves differently or not at all
/// (`root`: berth runs as root, which berth's own VMM needs for networking; `virtiofsd`:
/// virtiofsd is installed).
fn unsupported(
    plan: &Plan,
    provider: Option<Provider>,
    root: bool,
    virtiofsd: bool,
) -> Vec<String> {
    let own_vmm = provider == Some(Provider::Kvm);
    let shares = provider == Some(Provider::Qemu) && virtiofsd;
    let mut notices: Vec<String> = plan
        .mounts
        .iter()
        .filter_map(|m| match m.kind {
            MountKind::Bind | MountKind::Volume if !shares => Some(format!(
                "the {} mount on {} is served as a sync mount (copied both ways over the agent channel, changes show after a moment){}: {}",
                if m.kind == MountKind::Bind { "bind" } else { "volume" },
                m.target,
                if m.readonly { "; being `readonly`, it is copied host → guest only and changes made inside are undone" } else { "" },
                if own_vmm {
                    "berth's own VMM shares no folders"
                } else {
                    "virtiofsd is not installed (Debian: apt-get install virtiofsd)"
                }
            )),
            _ => None,
        })
        .collect();
    if plan.network.mode == NetworkMode::Host && provider == Some(Provider::Qemu) {
        notices.push(
            "network = \"host\" cannot share the host's interfaces with a VM: it gets qemu's user network (outbound NAT); reach its services through [[ports]]"
                .into(),
        );
    }
    if own_vmm {
        let mode = plan.network.mode;
        if mode == NetworkMode::Host && root {
            notices.push(
                "network = \"host\" cannot share the host's interfaces with a VM: berth's own VMM plugs it into berth's bridge like \"isolated\"; reach its services through [[ports]]"
                    .into(),
            );
        }
        if mode != NetworkMode::None && !root {
            notices.push(
                "the VM has no network: berth's own VMM (vmm = \"kvm\", or \"auto\" on hardware KVM) connects VMs through a tap on berth's bridge, which needs root; run berth as root or use vmm = \"qemu\" (user-mode networking)"
                    .into(),
            );
        }
        if !plan.ports.is_empty() && (mode == NetworkMode::None || !root) {
            notices.push(format!(
                "ports are not forwarded: berth's own VMM forwards them over the VM's network, which it {}; use vmm = \"qemu\" or reach services with `berth exec`",
                if mode == NetworkMode::None {
                    "does not have with network = \"none\""
                } else {
                    "does not have without root"
                }
            ));
        }
    }
    notices
}

/// Running, stopped or dead (VMM gone while `vm.json` says it runs), with the VM's facts.
pub(super) fn report(
    backend: &VmBackend,
    state_dir: &Path,
) -> Result<(StatusReport, Option<VmView>), VmError> {
    let st = backend.status(state_dir)?;
    let status = match (&st.state, st.running) {
        (None, _) => EnvStatus::Stopped,
        (Some(_), true) => EnvStatus::Running,
        (Some(_), false) => EnvStatus::Dead,
    };
    let running = st.state.as_ref().filter(|_| st.running);
    let report = StatusReport {
        status,
        pid: running.and_then(|s| s.process).map(|p| p.pid),
        uptime: running.map(|s| {
            Duration::from_millis(crate::vm::vm_backend::now_ms().saturating_sub(s.started_at_ms))
        }),
        usage: None,
        services: Vec::new(),
        processes: None,
        last_error: None,
    };
    Ok((report, st.state.as_ref().map(VmView::from)))
}

/// The agent's form of an exec request (`KEY=VALUE` pairs split; `tty` as asked).
pub(super) fn exec_of(req: &ExecRequest) -> Exec {
    let (rows, cols) = req.winsize.unwrap_or((0, 0));
    Exec {
        argv: req.argv.clone(),
        env: req
            .env
            .iter()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        cwd: req.cwd.clone(),
        user: req.user.clone(),
        tty: req.tty,
        rows,
        cols,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_request_translation() {
        let req = ExecRequest {
            argv: vec!["env".into()],
            env: vec!["A=1".into(), "B=x=y".into()],
            cwd: Some("/work".into()),
            user: Some("dev".into()),
            tty: true,
            winsize: Some((40, 120)),
        };
        let e = exec_of(&req);
        assert_eq!(
            e.env,
            vec![("A".into(), "1".into()), ("B".into(), "x=y".into())]
        );
        assert_eq!((e.rows, e.cols, e.tty), (40, 120, true));
        assert_eq!(e.cwd.as_deref(), Some("/work"));
        assert_eq!(e.user.as_deref(), Some("dev"));
    }

    #[test]
    fn a_vm_whose_vmm_died_is_dead() {
        let d = tempfile::tempdir().unwrap();
        let home = crate::state::BerthHome::at(d.path()).unwrap();
        let b = VmBackend::new(home);
        let env = d.path().join("env");
        std::fs::create_dir_all(&env).unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let st = VmState {
            vcpus: 2,
            kernel_release: "6.1.0-test".into(),
            started_at_ms: crate::vm::vm_backend::now_ms(),
            boot_ms: Some(1500),
            ..VmState::stand_in(Provider::Qemu, &env, child.id())
        };
        crate::state::write_json(&env.join("vm.json"), &st).unwrap();
        let (r, facts) = report(&b, &env).unwrap();
        assert_eq!(r.status, EnvStatus::Running);
        assert_eq!(r.pid, Some(child.id() as i32));
        let facts = facts.unwrap();
        assert_eq!((facts.vcpus, facts.memory), (2, 256 << 20));
        assert_eq!(facts.kernel_release, "6.1.0-test");
        child.kill().unwrap();
        child.wait().unwrap();
        let (r, facts) = report(&b, &env).unwrap();
        assert_eq!(r.status, EnvStatus::Dead);
        assert_eq!(r.pid, None);
        assert!(facts.is_some(), "the facts stay visible for a dead VM");
    }

    #[test]
    fn unsupported_parts_of_a_plan_are_named() {
        use envfile_spec::plan::MountPlan;
        let mount = |kind, target: &str| MountPlan {
            source: Some("/src".into()),
            target: target.into(),
            kind,
            readonly: false,
            ignore: vec![],
            size: None,
            unsafe_host_path: false,
        };
        let mut plan: Plan = serde_json::from_value(serde_json::json!({
            "name": "x", "file": "/p/berth.toml", "project_dir": "/p", "backend": "vm",
            "on_up": [], "image": {"from": {"kind": "rootfs", "path": "/r"}, "packages": [], "setup": []},
            "env": {}, "mounts": [], "ports": [], "resources": {},
            "network": {"mode": "isolated"},
            "shell": {"user": null, "workdir": "/", "command": ["/bin/sh"]},
            "services": {},
            "vm": {"kernel": {"kind": "debian", "package": "linux-image-cloud-amd64", "version": null},
                   "memory": 268435456, "vcpus": 1, "vmm": "qemu", "modules": null}
        }))
        .unwrap();
        plan.mounts = vec![
            mount(MountKind::Bind, "/Work"),
            mount(MountKind::Tmpfs, "/t"),
        ];
        let (spec, _) = spec_from_plan(&plan, Path::new("/s"), vec![]).unwrap();
        assert_eq!(spec.mounts.len(), 2);
        // qemu shares bind mounts as they are; sync mounts are synced, which needs no notice.
        plan.mounts.push(mount(MountKind::Sync, "/Sync"));
        assert!(unsupported(&plan, Some(Provider::Qemu), true, true).is_empty());
        // Without virtiofsd, a bind mount is served as a sync mount, saying so.
        let notices = unsupported(&plan, Some(Provider::Qemu), true, false);
        assert_eq!(notices.len(), 1, "{notices:?}");
        assert!(
            notices[0].contains("bind mount on /Work is served as a sync mount")
                && notices[0].contains("virtiofsd is not installed"),
            "{notices:?}"
        );
        plan.mounts.push(mount(MountKind::Volume, "/Vol"));
        plan.ports = vec![envfile_spec::plan::PortPlan {
            host: 8080,
            guest: 80,
            protocol: envfile_spec::plan::Protocol::Tcp,
            address: "127.0.0.1".parse().unwrap(),
        }];
        assert!(unsupported(&plan, Some(Provider::Qemu), true, true).is_empty());
        // berth's own VMM syncs bind and volume mounts, saying so; as root it forwards the
        // ports.
        let notices = unsupported(&plan, Some(Provider::Kvm), true, true);
        assert_eq!(notices.len(), 2, "{notices:?}");
        assert!(
            notices[0].contains("bind mount on /Work is served as a sync mount")
                && notices[0].contains("own VMM shares no folders"),
            "{notices:?}"
        );
        assert!(
            notices[1].contains("volume mount on /Vol is served as a sync mount"),
            "{notices:?}"
        );
        // Rootless it has no network, and says so once for the network, once for the ports.
        let notices = unsupported(&plan, Some(Provider::Kvm), false, true);
        assert_eq!(notices.len(), 4, "{notices:?}");
        assert!(notices[2].contains("the VM has no network"), "{notices:?}");
        assert!(
            notices[3].contains("ports are not forwarded") && notices[3].contains("without root"),
            "{notices:?}"
        );
        // network = "none": no device, so no ports either.
        plan.network.mode = NetworkMode::None;
        let notices = unsupported(&plan, Some(Provider::Kvm), true, true);
        assert_eq!(notices.len(), 3, "{notices:?}");
        assert!(notices[2].contains("network = \"none\""), "{notices:?}");
        plan.network.mode = NetworkMode::Host;
        let notices = unsupported(&plan, Some(Provider::Kvm), true, true);
        assert!(
            notices
                .iter()
                .any(|n| n.contains("plugs it into berth's bridge")),
            "{notices:?}"
        );
        plan.network.mode = NetworkMode::Host;
        let notices = unsupported(&plan, Some(Provider::Qemu), true, true);
        assert!(
            notices
                .iter()
                .any(|n| n.contains("network = \"host\" cannot share")),
            "{notices:?}"
        );
        plan.vm = None;
        assert!(spec_from_plan(&plan, Path::new("/s"), vec![]).is_err());
    }

    #[test]
    fn a_vm_without_state_is_stopped() {
        let d = tempfile::tempdir().unwrap();
        let home = crate::state::BerthHome::at(d.path()).unwrap();
        let b = VmBackend::new(home);
        let (r, facts) = report(&b, &d.path().join("envs/none")).unwrap();
        assert_eq!(r.status, EnvStatus::Stopped);
        assert!(facts.is_none());
    }
}
