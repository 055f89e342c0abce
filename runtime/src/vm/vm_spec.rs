//! [`VmSpec`]: everything needed to run one environment as a VM, made from the plan by
//! [`VmSpec::from_plan`] (the counterpart of `ContainerSpec::from_plan`), which also decides
//! the provider (qemu or berth's own VMM) once for this host and names what of the plan a
//! VM serves differently.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use envfile_spec::plan::{
    KernelSource, MountKind, MountPlan, NetworkMode, PortPlan, ServicePlan, VmmKind,
};
use envfile_spec::Plan;

use super::qemu::Accel;
use super::shared_folder::locate_virtiofsd;
use super::vmm_process::check_kvm_can_boot_linux;
use super::{Provider, VmError};
use crate::backend::ImageDefaults;
use crate::host::kvm::{kvm_kind, KvmKind};
use crate::host::probe::HostRoot;

/// How long `up` waits for the guest's agent (TCG boots of a stock kernel take seconds).
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

/// Everything needed to run one environment as a VM.
#[derive(Debug, Clone)]
pub struct VmSpec {
    /// Environment name (the guest's hostname).
    pub name: String,
    /// The environment's folder (`BerthHome::env_dir`).
    pub state_dir: PathBuf,
    /// Root filesystem layers, bottom → top.
    pub layers: Vec<PathBuf>,
    pub kernel: KernelSource,
    /// `lib/modules/<version>` of a path kernel.
    pub modules: Option<PathBuf>,
    /// Guest memory in bytes.
    pub memory: u64,
    pub vcpus: u32,
    pub vmm: VmmKind,
    /// The provider and acceleration, decided once by [`VmSpec::from_plan`] (and recorded in
    /// `vm.json` by the start); `None`: the start chooses from `vmm`.
    pub provider: Option<(Provider, Accel)>,
    pub env: BTreeMap<String, String>,
    pub services: BTreeMap<String, ServicePlan>,
    /// `tmpfs` mounts are made in the guest; under qemu, `bind` and `volume` mounts are host
    /// folders shared live through virtio-fs ([`super::shared_folder`]). `sync` mounts (and
    /// `bind` mounts without virtio-fs) are left to the live sync over the agent channel.
    pub mounts: Vec<MountPlan>,
    /// Forwarded by qemu's user-mode network (`hostfwd`), or, under berth's own VMM, by the
    /// VMM process's port forwarder to the guest's address on berth's bridge.
    pub ports: Vec<PortPlan>,
    /// qemu: `none`: the guest reaches nothing outside (forwarded ports still answer);
    /// `isolated` and `host` both get qemu's user network (a VM cannot share the host's
    /// interfaces). berth's own VMM: `isolated` and `host` get a tap on berth's bridge (as
    /// root; rootless the VM has no network device), `none` no network device at all.
    pub network: NetworkMode,
    /// The image's working directory: commands and services start there unless they say
    /// otherwise (as in a container).
    pub workdir: Option<String>,
    /// The image's user: commands run as this user unless they name one (as in a container).
    pub user: Option<String>,
    /// Size of the root disk; default twice the layers' size, at least 1 GiB.
    pub disk_size: Option<u64>,
    /// The static berth-agent; default: see [`agent_binary::locate`](super::agent_binary::locate).
    pub agent: Option<PathBuf>,
    /// How long to wait for the agent after the VMM started.
    pub boot_timeout: Duration,
    /// Names the guest resolves through its `/etc/hosts` (name, IPv4 address): the
    /// environment's sidecars on berth's bridge (`StartRequest::hosts`).
    pub hosts: Vec<(String, String)>,
    /// The plan has `[secrets]`: the guest gets a tmpfs at `/run/secrets` for them.
    pub secrets: bool,
    /// `[secrets]` wanted as variables (names only).
    pub secret_env: Vec<String>,
    /// The agent holds the services until `start_services` (`StartRequest::hold_services`).
    pub hold_services: bool,
}

/// Chooses the provider for `vmm` on a host with `kind` KVM.
pub fn choose_provider(vmm: VmmKind, kind: KvmKind) -> Result<(Provider, Accel), VmError> {
    match vmm {
        VmmKind::Qemu => Ok((
            Provider::Qemu,
            if kind == KvmKind::Hardware {
                Accel::Kvm
            } else {
                Accel::Tcg
            },
        )),
        VmmKind::Kvm => {
            check_kvm_can_boot_linux(kind)?;
            Ok((Provider::Kvm, Accel::Kvm))
        }
        VmmKind::Auto => Ok(match kind {
            KvmKind::Hardware => (Provider::Kvm, Accel::Kvm),
            _ => (Provider::Qemu, Accel::Tcg),
        }),
    }
}

impl VmSpec {
    /// The VM for `plan` (which must have a `[vm]` section), root filesystem from `layers`, the
    /// image's defaults under the plan's settings, and notices for what of the plan a VM does not
    /// provide yet. The provider is chosen here, once, for this host.
    pub fn from_plan(
        plan: &Plan,
        state_dir: &Path,
        layers: Vec<PathBuf>,
        image: &ImageDefaults,
    ) -> Result<(VmSpec, Vec<String>), VmError> {
        let vm = plan.vm.as_ref().ok_or_else(|| {
            VmError::Config("backend = \"vm\" needs a [vm] section with at least `kernel`".into())
        })?;
        // `[secrets]` live in the guest's memory only: no mount of the user's (a synced or
        // shared folder would carry them back to the host's disk) may cover their tmpfs.
        if !plan.secrets.is_empty() {
            let secrets_dir = Path::new(super::agent_proto::SECRETS_DIR);
            if let Some(m) = plan.mounts.iter().find(|m| {
                Path::new(&m.target).starts_with(secrets_dir) || secrets_dir.starts_with(&m.target)
            }) {
                return Err(VmError::Config(format!(
                    "the mount at {} would cover the tmpfs [secrets] are kept in at {}; mount it elsewhere",
                    m.target,
                    secrets_dir.display()
                )));
            }
        }
        let provider = choose_provider(vm.vmm, kvm_kind(&HostRoot::real()))?;
        let mut env = plan.env.clone();
        // The image's own variables (PATH, …) under the plan's, as for containers.
        for kv in &image.env {
            if let Some((k, v)) = kv.split_once('=') {
                env.entry(k.to_string()).or_insert_with(|| v.to_string());
            }
        }
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
            provider: Some(provider),
            env,
            services: plan.services.clone(),
            mounts: plan.mounts.clone(),
            ports: plan.ports.clone(),
            network: plan.network.mode,
            workdir: image.workdir.clone(),
            user: image.user.clone(),
            disk_size: None,
            agent: None,
            boot_timeout: BOOT_TIMEOUT,
            hosts: Vec::new(),
            secrets: !plan.secrets.is_empty(),
            secret_env: plan
                .secrets
                .iter()
                .filter(|(_, s)| s.as_env)
                .map(|(n, _)| n.clone())
                .collect(),
            hold_services: false,
        };
        Ok((
            spec,
            unsupported(
                plan,
                Some(provider.0),
                nix::unistd::geteuid().is_root(),
                locate_virtiofsd().is_some(),
            ),
        ))
    }
}

/// Whether a VM run by `provider` shares host folders through virtio-fs (qemu with
/// virtiofsd).
pub fn shares_folders(provider: Provider) -> bool {
    provider == Provider::Qemu && locate_virtiofsd().is_some()
}

/// Whether a VM of `plan` started now would share host folders through virtio-fs (for a
/// VM that does not run, so has recorded nothing).
pub fn would_share_folders(plan: &Plan) -> bool {
    plan.vm
        .as_ref()
        .and_then(|vm| choose_provider(vm.vmm, kvm_kind(&HostRoot::real())).ok())
        .is_some_and(|(p, _)| shares_folders(p))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_choice_never_boots_linux_on_kvm_pvm() {
        use KvmKind::*;
        assert_eq!(
            choose_provider(VmmKind::Auto, Pvm).unwrap(),
            (Provider::Qemu, Accel::Tcg)
        );
        assert_eq!(
            choose_provider(VmmKind::Auto, Unknown).unwrap(),
            (Provider::Qemu, Accel::Tcg)
        );
        assert_eq!(
            choose_provider(VmmKind::Auto, Absent).unwrap(),
            (Provider::Qemu, Accel::Tcg)
        );
        assert_eq!(
            choose_provider(VmmKind::Auto, Hardware).unwrap(),
            (Provider::Kvm, Accel::Kvm)
        );
        assert_eq!(
            choose_provider(VmmKind::Qemu, Pvm).unwrap(),
            (Provider::Qemu, Accel::Tcg)
        );
        assert_eq!(
            choose_provider(VmmKind::Qemu, Hardware).unwrap(),
            (Provider::Qemu, Accel::Kvm)
        );
        assert!(matches!(
            choose_provider(VmmKind::Kvm, Pvm),
            Err(VmError::UnsafeKvm)
        ));
        assert!(matches!(
            choose_provider(VmmKind::Kvm, Absent),
            Err(VmError::NoKvm)
        ));
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
        let (spec, _) =
            VmSpec::from_plan(&plan, Path::new("/s"), vec![], &ImageDefaults::default()).unwrap();
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
        assert!(
            VmSpec::from_plan(&plan, Path::new("/s"), vec![], &ImageDefaults::default()).is_err()
        );
    }

    /// The image's config applies to a VM as to a container: its variables under the plan's,
    /// its working directory for services that name none (and, through `vm.json`, for
    /// commands), its user for commands.
    #[test]
    fn the_images_defaults_apply_under_the_plans_settings() {
        let mut plan: Plan = serde_json::from_value(serde_json::json!({
            "name": "x", "file": "/p/berth.toml", "project_dir": "/p", "backend": "vm",
            "on_up": [], "image": {"from": {"kind": "rootfs", "path": "/r"}, "packages": [], "setup": []},
            "env": {"A": "plan"}, "mounts": [], "ports": [], "resources": {},
            "network": {"mode": "none"},
            "shell": {"user": null, "workdir": "/", "command": ["/bin/sh"]},
            "services": {
                "web": {"command": ["web"], "restart": "no", "env": {}, "workdir": null},
                "job": {"command": ["job"], "restart": "no", "env": {}, "workdir": "/jobs"}
            },
            "vm": {"kernel": {"kind": "debian", "package": "linux-image-cloud-amd64", "version": null},
                   "memory": 268435456, "vcpus": 1, "vmm": "qemu", "modules": null}
        }))
        .unwrap();
        let image = ImageDefaults {
            env: vec!["A=image".into(), "PATH=/image/bin".into()],
            workdir: Some("/srv/app".into()),
            user: Some("app".into()),
        };
        let (spec, _) = VmSpec::from_plan(&plan, Path::new("/s"), vec![], &image).unwrap();
        assert_eq!(spec.env.get("A").map(String::as_str), Some("plan"));
        assert_eq!(spec.env.get("PATH").map(String::as_str), Some("/image/bin"));
        assert_eq!(spec.workdir.as_deref(), Some("/srv/app"));
        assert_eq!(spec.user.as_deref(), Some("app"));
        let services = super::super::startup::services(&spec);
        let cwd = |name: &str| {
            services
                .iter()
                .find(|s| s.name == name)
                .and_then(|s| s.cwd.clone())
        };
        assert_eq!(cwd("web").as_deref(), Some("/srv/app"));
        assert_eq!(cwd("job").as_deref(), Some("/jobs"));
        // The provider is decided here, once: qemu as asked.
        assert_eq!(spec.provider.map(|(p, _)| p), Some(Provider::Qemu));
        // An image without a config leaves it all to the guest's defaults.
        plan.env.clear();
        let (spec, _) =
            VmSpec::from_plan(&plan, Path::new("/s"), vec![], &ImageDefaults::default()).unwrap();
        assert!(spec.env.is_empty() && spec.workdir.is_none() && spec.user.is_none());
    }

    /// `[secrets]` in a VM: a tmpfs of their own in the guest (and berth's `/run/berth`), the
    /// `as_env` names for the agent, and no mount of the user's over them.
    #[test]
    fn a_vms_secrets_get_their_tmpfs_and_no_mount_covers_it() {
        let mut plan: Plan = serde_json::from_value(serde_json::json!({
            "name": "x", "file": "/p/berth.toml", "project_dir": "/p", "backend": "vm",
            "on_up": [], "image": {"from": {"kind": "rootfs", "path": "/r"}, "packages": [], "setup": []},
            "env": {}, "mounts": [], "ports": [], "resources": {},
            "network": {"mode": "none"},
            "shell": {"user": null, "workdir": "/", "command": ["/bin/sh"]},
            "services": {},
            "secrets": {
                "A": {"source": {"from_env": "X"}, "as_env": true},
                "B": {"source": {"from_file": "/p/b"}}
            },
            "vm": {"kernel": {"kind": "debian", "package": "linux-image-cloud-amd64", "version": null},
                   "memory": 268435456, "vcpus": 1, "vmm": "qemu", "modules": null}
        }))
        .unwrap();
        let (spec, _) =
            VmSpec::from_plan(&plan, Path::new("/s"), vec![], &ImageDefaults::default()).unwrap();
        assert_eq!(spec.secret_env, ["A"]);
        let mounts = super::super::startup::guest_mounts(&spec, &[]);
        let tmpfs: Vec<(&str, &str)> = mounts
            .iter()
            .filter(|m| m.fstype == "tmpfs")
            .map(|m| (m.target.as_str(), m.options.as_str()))
            .collect();
        assert_eq!(
            tmpfs,
            [
                ("/run/berth", "size=262144,mode=755"),
                ("/run/secrets", "size=4194304,mode=755")
            ]
        );
        for target in ["/run/secrets", "/run/secrets/A", "/run"] {
            plan.mounts = vec![serde_json::from_value(serde_json::json!({
                "source": "/p/src", "target": target, "kind": "sync", "readonly": false,
                "ignore": [], "size": null
            }))
            .unwrap()];
            let e = VmSpec::from_plan(&plan, Path::new("/s"), vec![], &ImageDefaults::default())
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("would cover the tmpfs [secrets]"),
                "{target}: {e}"
            );
        }
        // Without secrets, only berth's own folder.
        plan.secrets.clear();
        plan.mounts.clear();
        let (spec, _) =
            VmSpec::from_plan(&plan, Path::new("/s"), vec![], &ImageDefaults::default()).unwrap();
        let mounts = super::super::startup::guest_mounts(&spec, &[]);
        assert_eq!(mounts.len(), 1, "{mounts:?}");
    }
}
