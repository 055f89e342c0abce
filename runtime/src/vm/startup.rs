//! Starting a VM ([`VmBackend::start`]): the provider's checks, kernel, initramfs and root
//! disk, the tap of a networked VM of berth's VMM, virtiofsd for shared folders, the VMM
//! process, and the agent's setup (hostname, mounts, environment, services) once it answers.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_agent_proto::{MountRequest, ServiceSpec, Setup};
use envfile_spec::plan::{MountKind, NetworkMode, PortPlan};

use super::connect::VmConnection;
use super::kernel::KernelStore;
use super::qemu::QemuConfig;
use super::rootdisk::{qcow2_overlay, raw_copy, RootDisks};
use super::shared_folder::{locate_virtiofsd, shared_folders, SharedFolder};
use super::vm_record::{console_tail, vm_json, VmState};
use super::vm_spec::{choose_provider, shares_folders, VmSpec};
use super::vmm_process::{self, NetOwner, VmmNet, VmmProcessConfig};
use super::{Provider, VmBackend, VmError};
use crate::host::clock::now_ms;
use crate::host::kvm::kvm_kind;
use crate::host::probe::HostRoot;
use crate::host::process::ProcessIdentity;
use crate::net::forward::{BoundPorts, ForwardSpec, ForwardedPort};
use crate::net::{Network, TapPlumbing};
use crate::state;

pub(super) fn services(spec: &VmSpec) -> Vec<ServiceSpec> {
    spec.services
        .iter()
        .map(|(name, s)| ServiceSpec {
            name: name.clone(),
            argv: s.command.clone(),
            env: s.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            // The image's working directory, as for a container's services.
            cwd: s.workdir.clone().or_else(|| spec.workdir.clone()),
            restart: crate::backend::service_restart(s.restart),
        })
        .collect()
}

/// tmpfs mounts, then the shared folders (virtio-fs tags) in their place; `ro` is read by
/// the agent as the read-only flag.
pub(super) fn guest_mounts(spec: &VmSpec, shares: &[SharedFolder]) -> Vec<MountRequest> {
    let tmpfs = spec
        .mounts
        .iter()
        .filter(|m| m.kind == MountKind::Tmpfs)
        .map(|m| MountRequest {
            source: "tmpfs".into(),
            target: m.target.clone(),
            fstype: "tmpfs".into(),
            options: m.size.map(|s| format!("size={s}")).unwrap_or_default(),
        });
    let shared = shares.iter().map(|f| MountRequest {
        source: f.tag.clone(),
        target: f.target.clone(),
        fstype: "virtiofs".into(),
        options: if f.readonly {
            "ro".into()
        } else {
            String::new()
        },
    });
    // berth's own tmpfs folders: the environment's gitconfig, and `[secrets]`.
    let own = [
        Some((super::agent_proto::RUN_DIR, "size=262144,mode=755")),
        spec.secrets
            .then_some((super::agent_proto::SECRETS_DIR, "size=4194304,mode=755")),
    ]
    .into_iter()
    .flatten()
    .map(|(target, options)| MountRequest {
        source: "tmpfs".into(),
        target: target.into(),
        fstype: "tmpfs".into(),
        options: options.into(),
    });
    tmpfs.chain(shared).chain(own).collect()
}

/// Starts one virtiofsd per shared folder; on failure ends those already started.
fn start_shares(shares: &[SharedFolder], logs: &Path) -> Result<Vec<ProcessIdentity>, VmError> {
    if shares.is_empty() {
        return Ok(Vec::new());
    }
    let exe = locate_virtiofsd().ok_or_else(|| {
        VmError::Config(format!(
            "volume mounts of a VM are shared through virtio-fs, but virtiofsd was not found (looked at: {}); install it (Debian: apt-get install qemu-system-common, or virtiofsd)",
            super::shared_folder::VIRTIOFSD_PATHS.join(", ")
        ))
    })?;
    let mut started = Vec::new();
    for (i, f) in shares.iter().enumerate() {
        match super::shared_folder::start(&exe, f, &logs.join(format!("virtiofsd-{i}.log"))) {
            Ok(p) => started.push(p),
            Err(e) => {
                for p in started {
                    p.terminate(Duration::from_secs(2));
                }
                return Err(e);
            }
        }
    }
    Ok(started)
}

/// Fails, naming the port and the process holding it, when a host port of `ports` is taken:
/// qemu's own message for a failed `hostfwd` does not say which. The ports are bound briefly
/// and released for qemu.
fn check_ports_free(ports: &[PortPlan]) -> Result<(), VmError> {
    let specs: Vec<ForwardSpec> = ports.iter().map(ForwardSpec::from).collect();
    drop(BoundPorts::bind(&specs)?);
    Ok(())
}

/// Whether berth's own VMM gives a VM with `mode` a network device: `isolated` and `host`
/// (a VM cannot share the host's interfaces) get a tap on berth's bridge when berth runs as
/// root; rootless there is none (tap interfaces need CAP_NET_ADMIN).
pub fn vmm_networked(mode: NetworkMode) -> bool {
    mode != NetworkMode::None && nix::unistd::geteuid().is_root()
}

/// The guest's address plan for the agent (see `agent/src/net.rs`): with `berth.mtu`, the
/// uplink's MTU for its default route when below the bridge's (the guest's interface has the
/// bridge's, which the virtio-net device advertises), as a container's route gets.
pub(super) fn guest_net_cmdline(t: &TapPlumbing) -> String {
    guest_net_cmdline_with(t, crate::net::bridge::uplink_mtu())
}

fn guest_net_cmdline_with(t: &TapPlumbing, uplink_mtu: u32) -> String {
    let dns: Vec<String> = t.nameservers.iter().map(|d| d.to_string()).collect();
    let mut line = format!(
        "berth.ip={}/{} berth.gw={} berth.dns={}",
        t.address,
        t.prefix,
        t.gateway,
        dns.join(",")
    );
    if uplink_mtu < crate::net::bridge::ENV_LINK_MTU {
        line.push_str(&format!(" berth.mtu={uplink_mtu}"));
    }
    line
}

/// The tap, lease and NAT of a VM being started: detached again when dropped armed, so a
/// start that fails before its VMM runs leaves no network device behind. Disarmed once the
/// VMM process runs: from then on it releases the network itself when it ends (see
/// [`vmm_process`]), and `stop` (or the next start) after a `kill -9`.
struct TapGuard {
    net: Network,
    env_id: String,
    plumbing: TapPlumbing,
    armed: bool,
}

impl TapGuard {
    fn plumb(net: Network, env_id: &str) -> Result<TapGuard, VmError> {
        let plumbing = net.plumb_tap(env_id)?;
        Ok(TapGuard {
            net,
            env_id: env_id.to_string(),
            plumbing,
            armed: true,
        })
    }

    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for TapGuard {
    fn drop(&mut self) {
        if self.armed {
            let _ = self.net.detach(&self.env_id);
        }
    }
}

impl VmBackend {
    /// Boots the VM (unless it already runs), waits for the agent, applies hostname, mounts,
    /// environment and services. Returns the recorded state. (`on_create` and `on_up` are the
    /// environment layer's, through [`Backend::exec`](crate::backend::Backend::exec).)
    pub fn start(&self, spec: &VmSpec) -> Result<VmState, VmError> {
        if let Some(st) = self
            .status(&spec.state_dir)?
            .state
            .filter(|_| self.is_running(&spec.state_dir))
        {
            return Ok(st);
        }
        let (provider, accel) = match spec.provider {
            Some(chosen) => chosen,
            None => choose_provider(spec.vmm, kvm_kind(&HostRoot::real()))?,
        };
        let folders_shared = shares_folders(provider);
        // berth's own VMM has no shared folders yet, and networking only as root (the
        // environment layer says so in its notices).
        let tap_env = match provider {
            Provider::Kvm if vmm_networked(spec.network) => self.env_id(&spec.state_dir),
            _ => None,
        };
        let shares = if provider == Provider::Qemu {
            super::qemu::check_ports(&spec.ports)?;
            check_ports_free(&spec.ports)?;
            shared_folders(
                &spec.mounts,
                &self.home.volumes_dir(),
                &spec.state_dir,
                folders_shared,
            )?
        } else {
            if tap_env.is_some() {
                check_ports_free(&spec.ports)?;
            }
            Vec::new()
        };
        state::create_dir_all(&spec.state_dir)?;
        let logs = spec.state_dir.join("logs");
        state::create_dir_all(&logs)?;
        let agent = super::agent_binary::locate(spec.agent.as_deref())?;
        let kernels = KernelStore::new(self.home.clone());
        let kernel = kernels.ensure(&spec.kernel, spec.modules.as_deref(), self.mirror())?;
        let initramfs = kernels.initramfs(&kernel, &agent)?;
        let base = RootDisks::new(self.home.clone()).base_image(&spec.layers, spec.disk_size)?;
        // qemu gets a qcow2 overlay when qemu-img is there (or the environment already has
        // one), else a private raw copy like berth's VMM.
        let qcow2 = spec.state_dir.join("disk.qcow2");
        let use_qcow2 = provider == Provider::Qemu
            && (qcow2.exists()
                || std::process::Command::new("qemu-img")
                    .arg("--version")
                    .output()
                    .is_ok());
        let (disk, disk_format) = if use_qcow2 {
            qcow2_overlay(&base, &qcow2)?;
            (qcow2, "qcow2")
        } else {
            let d = spec.state_dir.join("disk.img");
            raw_copy(&base, &d)?;
            (d, "raw")
        };
        let control_socket = spec.state_dir.join("control.sock");
        let console_log = logs.join("console.log");
        let _ = std::fs::remove_file(&console_log);
        let mut cmdline = format!(
            "console=ttyS0 reboot=k panic=-1 quiet loglevel=4 berth.root=/dev/vda berth.hostname={}",
            spec.name
        );
        // The tap, lease and NAT: removed again if the start fails before the VMM runs.
        let mut tap = match &tap_env {
            Some(id) => Some(TapGuard::plumb(self.network(), id)?),
            None => None,
        };
        if let Some(g) = &tap {
            // For `berth status`: the VMM process serves these.
            let ports: Vec<ForwardedPort> = spec
                .ports
                .iter()
                .map(|p| {
                    let spec = ForwardSpec::from(p);
                    ForwardedPort {
                        spec,
                        bound: spec.host,
                    }
                })
                .collect();
            g.net.record_ports(&g.env_id, &ports)?;
        }
        if provider == Provider::Kvm {
            cmdline.push_str(" berth.channel=hvc i8042.noaux i8042.nomux i8042.dumbkbd");
            if let Some(g) = &tap {
                cmdline.push(' ');
                cmdline.push_str(&guest_net_cmdline(&g.plumbing));
            }
        } else {
            cmdline.push(' ');
            cmdline.push_str(super::qemu::GUEST_NET_CMDLINE);
        }
        let mut st = VmState {
            provider,
            accel: format!("{accel:?}").to_lowercase(),
            process: None,
            control_socket: control_socket.clone(),
            console_log: console_log.clone(),
            disk: disk.clone(),
            vcpus: spec.vcpus.max(1),
            memory: spec.memory,
            kernel_release: kernel.release.clone(),
            started_at_ms: now_ms(),
            boot_ms: None,
            vsock_socket: (provider == Provider::Kvm).then(|| spec.state_dir.join("vsock.sock")),
            shares: Vec::new(),
            qmp_socket: (provider == Provider::Qemu).then(|| spec.state_dir.join("qmp.sock")),
            folders_shared: Some(folders_shared),
            image_workdir: spec.workdir.clone(),
            image_user: spec.user.clone(),
            agent_streams: true,
        };
        state::write_json(&vm_json(&spec.state_dir), &st)?;
        let started = Instant::now();
        st.shares = start_shares(&shares, &logs)?;
        state::write_json(&vm_json(&spec.state_dir), &st)?;
        let launched = match provider {
            Provider::Qemu => QemuConfig {
                kernel: kernel.image.clone(),
                initramfs,
                disk,
                disk_format,
                memory_mib: (spec.memory >> 20).max(64),
                vcpus: spec.vcpus.max(1),
                accel,
                cmdline,
                console_log: console_log.clone(),
                control_socket: control_socket.clone(),
                pidfile: spec.state_dir.join("qemu.pid"),
                qmp_socket: spec.state_dir.join("qmp.sock"),
                qemu_log: logs.join("qemu.log"),
                ports: spec.ports.clone(),
                outbound: spec.network != NetworkMode::None,
                shares: shares.clone(),
            }
            .launch()
            .map_err(VmError::from),
            Provider::Kvm => {
                let cfg = VmmProcessConfig {
                    kernel: kernel.image.clone(),
                    initramfs,
                    disk,
                    control_socket: control_socket.clone(),
                    console_log: console_log.clone(),
                    memory: spec.memory,
                    vcpus: spec.vcpus.clamp(1, 255) as u8,
                    cmdline,
                    vsock: st.vsock_socket.clone(),
                    net: tap.as_ref().map(|g| {
                        let t = &g.plumbing;
                        VmmNet {
                            tap: t.tap.clone(),
                            mac: crate::net::tap::guest_mac(&g.env_id),
                            guest: t.address,
                            ports: spec.ports.iter().map(ForwardSpec::from).collect(),
                            dns_relay: t.dns_relay.map(|up| (t.gateway, up)),
                            owner: Some(NetOwner {
                                home: self.home.root().to_path_buf(),
                                env_id: g.env_id.clone(),
                            }),
                        }
                    }),
                };
                let cfg_path = spec.state_dir.join("vmm.json");
                state::write_json(&cfg_path, &cfg)?;
                // BERTH_VMM_EXE (berth-vmm), else the running berth binary's `internal-vmm`.
                let exe = std::env::var_os("BERTH_VMM_EXE")
                    .map(PathBuf::from)
                    .or_else(|| std::env::current_exe().ok())
                    .ok_or_else(|| {
                        VmError::Config("cannot find the berth executable to run the VMM".into())
                    })?;
                vmm_process::launch(&exe, &cfg_path, &logs.join("vmm.log"))
            }
        };
        let process = match launched {
            Ok(p) => p,
            Err(e) => {
                let _ = self.cleanup(&spec.state_dir, &st);
                return Err(e);
            }
        };
        // The VMM runs: the failures below end it, and `cleanup` releases the network.
        if let Some(g) = &mut tap {
            g.disarm();
        }
        st.process = Some(process);
        if let Err(e) = state::write_json(&vm_json(&spec.state_dir), &st) {
            process.terminate(Duration::from_secs(2));
            let _ = self.cleanup(&spec.state_dir, &st);
            return Err(e.into());
        }

        let ready = self.wait_ready(&st, spec.boot_timeout, started);
        let mut conn = match ready {
            Ok(c) => c,
            Err(e) => {
                process.terminate(Duration::from_secs(2));
                let _ = self.cleanup(&spec.state_dir, &st);
                return Err(e);
            }
        };
        st.boot_ms = Some(started.elapsed().as_millis() as u64);
        let setup = Setup {
            hostname: spec.name.clone(),
            mounts: guest_mounts(spec, &shares),
            env: spec
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            services: services(spec),
            hosts: spec.hosts.clone(),
            secret_env: spec.secret_env.clone(),
            hold_services: spec.hold_services,
        };
        conn.client.setup(setup, Duration::from_secs(30))?;
        state::write_json(&vm_json(&spec.state_dir), &st)?;
        Ok(st)
    }

    fn wait_ready(
        &self,
        st: &VmState,
        timeout: Duration,
        since: Instant,
    ) -> Result<VmConnection, VmError> {
        let deadline = since + timeout;
        loop {
            let alive = st.process.is_some_and(|p| p.alive());
            if !alive {
                return Err(VmError::Boot {
                    reason: vmm_exit_reason(st),
                    console: console_excerpt(&st.console_log),
                });
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(VmError::Boot {
                    reason: format!(
                        "the agent did not answer within {}s; the kernel may lack CONFIG_VIRTIO_MMIO, CONFIG_VIRTIO_BLK, \
                         CONFIG_VIRTIO_CONSOLE, CONFIG_EXT4_FS or CONFIG_DEVTMPFS (as built-ins or modules)",
                        timeout.as_secs()
                    ),
                    console: console_excerpt(&st.console_log),
                });
            }
            if st.control_socket.exists() {
                match self.connect_with(st, left.min(Duration::from_secs(2))) {
                    Ok(c) => return Ok(c),
                    Err(VmError::Agent(berth_agent_proto::ClientError::Timeout(_))) => {}
                    Err(VmError::Agent(_)) => std::thread::sleep(Duration::from_millis(100)),
                    // The VMM's socket exists but does not listen yet (qemu binds, then
                    // listens), or it is being replaced: not ready, not failed.
                    Err(VmError::Io { source, .. })
                        if matches!(
                            source.kind(),
                            std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound
                        ) =>
                    {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    Err(e) => return Err(e),
                }
            } else {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Why a VM's VMM ended before its agent answered: its own last words (`logs/vmm.log` of
/// berth's VMM, `logs/qemu.log` of qemu), which the guest's console cannot have when the VMM
/// failed before the kernel printed anything (it boots `quiet`).
fn vmm_exit_reason(st: &VmState) -> String {
    let log = st.console_log.with_file_name(match st.provider {
        Provider::Kvm => "vmm.log",
        Provider::Qemu => "qemu.log",
    });
    let said = console_tail(&log, 10);
    if said.trim().is_empty() {
        format!(
            "the VMM exited before the agent was ready (it logged nothing to {})",
            log.display()
        )
    } else {
        format!(
            "the VMM exited before the agent was ready; its log {} ends with:\n{}",
            log.display(),
            said.trim_end()
        )
    }
}

/// The last console lines of a VM that did not become ready, or why there are none.
fn console_excerpt(console_log: &Path) -> String {
    let tail = console_tail(console_log, 25);
    if tail.trim().is_empty() {
        format!(
            "(none in {}: the guest printed nothing, it boots with `quiet` and its agent was not up yet)",
            console_log.display()
        )
    } else {
        tail
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::BerthHome;

    #[test]
    fn the_guests_default_route_gets_the_uplinks_mtu_below_the_bridges() {
        use std::net::Ipv4Addr;
        let t = TapPlumbing {
            tap: "bt0".into(),
            address: Ipv4Addr::new(10, 88, 0, 5),
            prefix: 24,
            gateway: Ipv4Addr::new(10, 88, 0, 1),
            nameservers: vec![Ipv4Addr::new(10, 88, 0, 1), Ipv4Addr::new(9, 9, 9, 9)],
            dns_relay: None,
        };
        assert_eq!(
            guest_net_cmdline_with(&t, 1500),
            "berth.ip=10.88.0.5/24 berth.gw=10.88.0.1 berth.dns=10.88.0.1,9.9.9.9 berth.mtu=1500"
        );
        let bridge = crate::net::bridge::ENV_LINK_MTU;
        assert!(!guest_net_cmdline_with(&t, bridge).contains("berth.mtu"));
        assert!(!guest_net_cmdline_with(&t, 65536).contains("berth.mtu"));
    }

    /// A start that fails between plumbing the tap and launching the VMM removes the tap,
    /// lease and NAT again; once the VMM runs, the tap stays for it.
    #[test]
    fn a_vmm_that_exits_early_is_explained_by_its_own_log() {
        // Before, the error had the reason "the VMM exited before the agent was ready" and an
        // empty console excerpt (the guest boots quiet), nothing of what the VMM said.
        let d = tempfile::tempdir().unwrap();
        let st = VmState::stand_in(Provider::Kvm, d.path(), std::process::id());
        assert!(vmm_exit_reason(&st).contains("it logged nothing to"));
        std::fs::write(
            d.path().join("vmm.log"),
            "berth internal-vmm: cannot open tap bt0: No such device\n",
        )
        .unwrap();
        let reason = vmm_exit_reason(&st);
        assert!(
            reason.ends_with("ends with:\nberth internal-vmm: cannot open tap bt0: No such device"),
            "{reason}"
        );
        let excerpt = console_excerpt(&st.console_log);
        assert!(excerpt.contains("the guest printed nothing"), "{excerpt}");
        std::fs::write(&st.console_log, "[ 1.0] Linux version 6.1\n").unwrap();
        assert_eq!(console_excerpt(&st.console_log), "[ 1.0] Linux version 6.1");
        let qemu = VmState::stand_in(Provider::Qemu, d.path(), std::process::id());
        std::fs::write(d.path().join("qemu.log"), "qemu: could not load kernel\n").unwrap();
        assert!(vmm_exit_reason(&qemu).contains("qemu: could not load kernel"));
    }

    /// The control socket's path exists a moment before anyone listens on it (qemu binds,
    /// then listens): `up` waiting for the agent takes "connection refused" there as "not
    /// ready yet". Before, it failed at once with "control.sock: Connection refused" (seen in
    /// the nested CI, where emulation widens the gap).
    #[test]
    fn a_control_socket_not_listening_yet_is_waited_for() {
        use berth_agent_proto::{decode, encode, Frame, Message};
        use nix::sys::socket::{bind, socket, AddressFamily, SockFlag, SockType, UnixAddr};
        use std::io::{Read, Write};
        let d = tempfile::tempdir().unwrap();
        let home = BerthHome::at(d.path()).unwrap();
        let b = VmBackend::with_mirror(home, crate::vm::kernel::Mirror::unreachable());
        let st = VmState::stand_in(Provider::Kvm, d.path(), std::process::id());
        // Bound, not listening: a client's connect is refused.
        let bound = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::empty(),
            None,
        )
        .unwrap();
        bind(
            std::os::fd::AsRawFd::as_raw_fd(&bound),
            &UnixAddr::new(&st.control_socket).unwrap(),
        )
        .unwrap();
        assert!(std::os::unix::net::UnixStream::connect(&st.control_socket).is_err());
        let path = st.control_socket.clone();
        let agent = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            // Now it listens (as an agent behind the VMM would answer).
            drop(bound);
            std::fs::remove_file(&path).unwrap();
            let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
            let (mut c, _) = l.accept().unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 256];
            let nonce = loop {
                let n = c.read(&mut chunk).unwrap();
                assert!(n > 0, "the client closed before its hello");
                buf.extend_from_slice(&chunk[..n]);
                if let Some((f, _)) = decode(&buf).unwrap() {
                    let Message::Hello { nonce } = f.message else {
                        panic!("not a hello: {:?}", f.message);
                    };
                    break nonce;
                }
            };
            let ack = Message::HelloAck {
                nonce,
                agent_version: "test".into(),
                kernel_release: "6.1".into(),
                ready: true,
            };
            c.write_all(
                &encode(&Frame {
                    session: 0,
                    message: ack,
                })
                .unwrap(),
            )
            .unwrap();
            c
        });
        let r = b.wait_ready(&st, Duration::from_secs(10), Instant::now());
        // Checked before the join: after a failure the agent would wait for a client forever.
        assert!(r.is_ok(), "{:?}", r.err());
        drop(agent.join().unwrap());
    }

    #[test]
    fn a_failed_start_leaves_no_tap() {
        use crate::net::network::{assert_released, master_of, test_network, DetachOnDrop};
        let d = tempfile::tempdir().unwrap();
        let home = BerthHome::at(d.path()).unwrap();
        let Some(net) = test_network(&home, "g") else {
            return;
        };
        let bridge = net.options().bridge.name.clone();
        let id = "vmnet-guard";
        let _cleanup = DetachOnDrop {
            net: &net,
            env_id: id,
        };
        let failed_start = || -> Result<String, VmError> {
            let g = TapGuard::plumb(net.clone(), id)?;
            assert_eq!(master_of(&g.plumbing.tap).as_deref(), Some(bridge.as_str()));
            // What a failure before the launch looks like (e.g. writing vm.json).
            let _: VmState = state::read_json(&d.path().join("missing.json"))?
                .ok_or_else(|| VmError::Config(g.plumbing.tap.clone()))?;
            unreachable!()
        };
        let tap = match failed_start() {
            Err(VmError::Config(tap)) => tap,
            other => panic!("{:?}", other.err()),
        };
        assert_released(&net, id, &tap);

        let mut g = TapGuard::plumb(net.clone(), id).unwrap();
        g.disarm();
        drop(g);
        assert_eq!(
            master_of(&tap).as_deref(),
            Some(bridge.as_str()),
            "kept for the VMM"
        );
    }
}
