//! `VmBackend`: start, connect to, stop and inspect an environment's VM, whichever provider
//! runs it. State lives in the environment folder:
//!
//! ```text
//! envs/<id>/vm.json        VmState: provider, VMM pid + start time, kernel, boot time
//! envs/<id>/disk.qcow2     the environment's copy-on-write root disk (qemu)
//! envs/<id>/disk.img       the same for berth's VMM
//! envs/<id>/control.sock   control channel to the agent (one client at a time)
//! envs/<id>/qmp.sock       qemu's machine protocol (pauses the VM for disk snapshots)
//! envs/<id>/logs/console.log  the guest's serial console
//! envs/<id>/fs-<n>.sock    virtiofsd's socket for shared folder n (qemu)
//! envs/<id>/logs/virtiofsd-<n>.log  its messages
//! envs/<id>/network.json   the tap, lease and ports of a networked VM of berth's VMM
//! ```
//!
//! The caller (the CLI) holds the environment's lock around `start` and `stop`.

use std::collections::BTreeMap;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use berth_agent_proto::{Client, MountRequest, Output, Restart, ServiceSpec, Setup};
use envfile_spec::plan::{
    KernelSource, MountKind, MountPlan, NetworkMode, PortPlan, RestartPolicy, ServicePlan, VmmKind,
};
use serde::{Deserialize, Serialize};

use super::kernel::{KernelStore, Mirror};
use super::process::ProcessRecord;
use super::qemu::{Accel, QemuConfig};
use super::rootdisk::{qcow2_overlay, raw_copy, RootDisks};
use super::shared_folder::{locate_virtiofsd, shared_folders, SharedFolder};
use super::vmm_process::{self, check_kvm_can_boot_linux, NetOwner, VmmNet, VmmProcessConfig};
use super::VmError;
use crate::doctor::{kvm_kind, HostRoot, KvmKind};
use crate::net::forward::{BoundPorts, ForwardSpec, ForwardedPort};
use crate::net::{Network, NetworkOptions, TapPlumbing};
use crate::state::{self, BerthHome, FileLock, LockMode};

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
    pub on_up: Vec<String>,
    /// Size of the root disk; default twice the layers' size, at least 1 GiB.
    pub disk_size: Option<u64>,
    /// The static berth-agent; default: see [`agent_binary::locate`](super::agent_binary::locate).
    pub agent: Option<PathBuf>,
    /// How long to wait for the agent after the VMM started.
    pub boot_timeout: Duration,
}

/// Which program runs the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Qemu,
    Kvm,
}

/// Recorded in `vm.json` before the VMM starts and completed once the agent is ready.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmState {
    pub provider: Provider,
    pub accel: String,
    pub process: Option<ProcessRecord>,
    pub control_socket: PathBuf,
    pub console_log: PathBuf,
    pub disk: PathBuf,
    pub vcpus: u32,
    pub memory: u64,
    pub kernel_release: String,
    /// Unix time (ms) the VMM was started.
    pub started_at_ms: u64,
    /// Milliseconds from VMM start to agent ready.
    pub boot_ms: Option<u64>,
    /// Host side of the guest's vsock (berth's VMM): connect and send `CONNECT <port>\n` to
    /// reach a guest port; guest connections to host port P arrive at `<path>_<P>`.
    #[serde(default)]
    pub vsock_socket: Option<PathBuf>,
    /// The virtiofsd processes serving the VM's shared folders (qemu); they end with qemu.
    #[serde(default)]
    pub shares: Vec<ProcessRecord>,
    /// qemu's QMP socket (none for berth's VMM, or a VM started by an older berth).
    #[serde(default)]
    pub qmp_socket: Option<PathBuf>,
}

#[cfg(test)]
impl VmState {
    /// The record of a 256 MiB, 1-vCPU VM of `provider` in `env` whose VMM is `pid` (tests
    /// stand a plain process in for the VMM).
    pub(crate) fn stand_in(provider: Provider, env: &Path, pid: u32) -> VmState {
        let kvm = provider == Provider::Kvm;
        VmState {
            provider,
            accel: if kvm { "kvm" } else { "tcg" }.into(),
            process: ProcessRecord::of(pid as i32),
            control_socket: env.join("control.sock"),
            console_log: env.join("console.log"),
            disk: env.join(if kvm { "disk.img" } else { "disk.qcow2" }),
            vcpus: 1,
            memory: 1 << 28,
            kernel_release: "6.1".into(),
            started_at_ms: 0,
            boot_ms: Some(1),
            vsock_socket: kvm.then(|| env.join("vsock.sock")),
            shares: vec![],
            qmp_socket: None,
        }
    }
}

/// Said when a VM left paused was resumed.
pub const PAUSED_NOTICE: &str = "the VM was paused (a `berth snapshot save` was interrupted while it copied the disk); resumed it";

/// The environment's lock file in its folder (the CLI's lock around `up`, `down`, `snapshot`).
pub const ENV_LOCK: &str = "lock";

/// What `berth status` shows for a VM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmStatus {
    pub running: bool,
    pub state: Option<VmState>,
}

/// A connection to a running VM's agent. Its channel's lock lives inside the connection, so
/// the channel stays reserved while the client or any of its session handles exists.
pub struct VmConnection {
    pub client: Client,
}

impl VmConnection {
    /// Runs `argv` and collects its output.
    pub fn run(&mut self, argv: &[&str]) -> Result<Output, VmError> {
        Ok(self.client.run(argv)?)
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn vm_json(state_dir: &Path) -> PathBuf {
    state_dir.join("vm.json")
}

/// The last `n` lines of the console log, for error messages.
pub fn console_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).to_string())
        .unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
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

fn services(spec: &VmSpec) -> Vec<ServiceSpec> {
    spec.services
        .iter()
        .map(|(name, s)| ServiceSpec {
            name: name.clone(),
            argv: s.command.clone(),
            env: s.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            cwd: s.workdir.clone(),
            restart: match s.restart {
                RestartPolicy::No => Restart::No,
                RestartPolicy::OnFailure => Restart::OnFailure,
                RestartPolicy::Always => Restart::Always,
            },
        })
        .collect()
}

/// Runs each command with `/bin/sh -c`; the first failure is the error.
fn run_on_up(conn: &mut VmConnection, commands: &[String]) -> Result<(), VmError> {
    for cmd in commands {
        let out = conn.client.run(&["/bin/sh", "-c", cmd])?;
        if out.status.code != 0 {
            return Err(VmError::OnUp {
                command: cmd.clone(),
                code: out.status.code,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
    }
    Ok(())
}

/// tmpfs mounts, then the shared folders (virtio-fs tags) in their place; `ro` is read by
/// the agent as the read-only flag.
fn guest_mounts(spec: &VmSpec, shares: &[SharedFolder]) -> Vec<MountRequest> {
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
    tmpfs.chain(shared).collect()
}

/// Starts one virtiofsd per shared folder; on failure ends those already started.
fn start_shares(shares: &[SharedFolder], logs: &Path) -> Result<Vec<ProcessRecord>, VmError> {
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

/// The guest's address plan for the agent (see `agent/src/net.rs`).
fn guest_net_cmdline(t: &TapPlumbing) -> String {
    let dns: Vec<String> = t.nameservers.iter().map(|d| d.to_string()).collect();
    format!(
        "berth.ip={}/{} berth.gw={} berth.dns={}",
        t.address,
        t.prefix,
        t.gateway,
        dns.join(",")
    )
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

pub struct VmBackend {
    home: BerthHome,
    mirror: Mirror,
    net_options: NetworkOptions,
}

impl VmBackend {
    /// The berth home this backend keeps its VMs in.
    pub fn home(&self) -> &BerthHome {
        &self.home
    }

    fn network(&self) -> Network {
        Network::new(&self.home, self.net_options.clone())
    }

    /// Another bridge for the VMs' taps than berth's default (tests).
    pub fn with_network_options(mut self, options: NetworkOptions) -> Self {
        self.net_options = options;
        self
    }

    /// The environment id of `state_dir` when it is an environment folder of this home (the
    /// key of its network record and lease).
    fn env_id(&self, state_dir: &Path) -> Option<String> {
        let name = state_dir.file_name()?.to_str()?;
        (self.home.env_dir(name) == state_dir).then(|| name.to_string())
    }

    pub fn new(home: BerthHome) -> Self {
        VmBackend {
            home,
            mirror: Mirror::discover(),
            net_options: NetworkOptions::default(),
        }
    }

    pub fn with_mirror(home: BerthHome, mirror: Mirror) -> Self {
        VmBackend {
            home,
            mirror,
            net_options: NetworkOptions::default(),
        }
    }

    /// Boots the VM (unless it already runs), waits for the agent, applies hostname, mounts,
    /// environment and services, and runs `on_up`. Returns the recorded state.
    pub fn start(&self, spec: &VmSpec) -> Result<VmState, VmError> {
        if let Some(st) = self
            .status(&spec.state_dir)?
            .state
            .filter(|_| self.is_running(&spec.state_dir))
        {
            return Ok(st);
        }
        let (provider, accel) = choose_provider(spec.vmm, kvm_kind(&HostRoot::real()))?;
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
                locate_virtiofsd().is_some(),
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
        let kernel = kernels.ensure(&spec.kernel, spec.modules.as_deref(), &self.mirror)?;
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
        };
        conn.client.setup(setup, Duration::from_secs(30))?;
        run_on_up(&mut conn, &spec.on_up)?;
        state::write_json(&vm_json(&spec.state_dir), &st)?;
        Ok(st)
    }

    /// Runs `on_up` commands in the running VM (the environment layer does this itself, after
    /// the live sync's first pass, when the VM has synced folders).
    pub fn run_on_up(&self, state_dir: &Path, commands: &[String]) -> Result<(), VmError> {
        if commands.is_empty() {
            return Ok(());
        }
        run_on_up(&mut self.connect(state_dir)?, commands)
    }

    fn wait_ready(
        &self,
        st: &VmState,
        timeout: Duration,
        since: Instant,
    ) -> Result<VmConnection, VmError> {
        let deadline = since + timeout;
        loop {
            let alive = st.process.is_some_and(|p| p.is_alive());
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
                    Err(e) => return Err(e),
                }
            } else {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    fn connect_with(&self, st: &VmState, timeout: Duration) -> Result<VmConnection, VmError> {
        // The first free channel; each serves one client.
        for socket in super::control_sockets(&st.control_socket) {
            let Some(lock) =
                FileLock::try_acquire(&super::control_lock(&socket), LockMode::Exclusive)?
            else {
                continue;
            };
            if !socket.exists() {
                continue;
            }
            let stream = UnixStream::connect(&socket).map_err(|e| VmError::Io {
                path: socket.clone(),
                source: e,
            })?;
            let mut client = Client::with_guard(stream, Some(Box::new(lock)))?;
            client.hello(timeout)?;
            return Ok(VmConnection { client });
        }
        Err(VmError::Busy)
    }

    /// Resumes a running qemu VM that was left paused (a `berth snapshot save` killed while
    /// it copied the disk): its guest answers nothing until then. Returns whether it was
    /// paused. The caller holds the environment's lock, so no save is under way.
    pub fn resume_if_paused(&self, state_dir: &Path) -> Result<bool, VmError> {
        let Ok(st) = self.running_state(state_dir) else {
            return Ok(false);
        };
        let (Provider::Qemu, Some(qmp)) = (st.provider, &st.qmp_socket) else {
            return Ok(false);
        };
        let mut monitor = super::qmp::Qmp::connect(qmp, Duration::from_secs(10))?;
        Ok(monitor.resume_if_paused()?)
    }

    /// Connects to the running VM's agent (for exec and shell). An unanswered hello is tried
    /// again on a fresh connection: the agent resets a channel when the host side closes, so a
    /// handshake lost while the previous client was going away gets a clean retry. Before that
    /// retry, a qemu VM left paused is resumed (with a notice) unless another command holds
    /// the environment's lock (a save in progress resumes it itself).
    pub fn connect(&self, state_dir: &Path) -> Result<VmConnection, VmError> {
        let st = self.running_state(state_dir)?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.connect_with(&st, Duration::from_secs(4)) {
                Err(VmError::Agent(berth_agent_proto::ClientError::Timeout(_))) if attempt < 3 => {
                    if !self.is_running(state_dir) {
                        return Err(VmError::NotRunning);
                    }
                    // A paused VM does not answer: only then is qemu asked (one QMP round
                    // trip on this rare path instead of on every exec).
                    if st.provider == Provider::Qemu && self.resume_unlocked(state_dir) {
                        eprintln!("berth: notice: {PAUSED_NOTICE}");
                    }
                }
                other => return other,
            }
        }
    }

    /// [`resume_if_paused`](Self::resume_if_paused) when the environment's lock is free (it is
    /// held while checking); whether the VM was paused. A failed check is left to the
    /// connection that follows to report.
    fn resume_unlocked(&self, state_dir: &Path) -> bool {
        let Ok(Some(_lock)) = FileLock::try_acquire(&state_dir.join(ENV_LOCK), LockMode::Exclusive)
        else {
            return false;
        };
        matches!(self.resume_if_paused(state_dir), Ok(true))
    }

    fn running_state(&self, state_dir: &Path) -> Result<VmState, VmError> {
        let st: VmState = state::read_json(&vm_json(state_dir))?.ok_or(VmError::NotRunning)?;
        if !st.process.is_some_and(|p| p.is_alive()) {
            return Err(VmError::NotRunning);
        }
        Ok(st)
    }

    /// Runs `argv` in the VM and collects its output.
    pub fn exec_capture(&self, state_dir: &Path, argv: &[&str]) -> Result<Output, VmError> {
        self.connect(state_dir)?.run(argv)
    }

    pub fn is_running(&self, state_dir: &Path) -> bool {
        self.running_state(state_dir).is_ok()
    }

    pub fn status(&self, state_dir: &Path) -> Result<VmStatus, VmError> {
        let st: Option<VmState> = state::read_json(&vm_json(state_dir))?;
        let running = st
            .as_ref()
            .and_then(|s| s.process)
            .is_some_and(|p| p.is_alive());
        Ok(VmStatus { running, state: st })
    }

    /// Asks the agent to power off, waits up to `grace`, then kills the VMM. Removes the
    /// control socket and pid file; keeps the disk. Safe to call when the VM is not running
    /// (or its VMM was killed): it cleans up what is left.
    pub fn stop(&self, state_dir: &Path, grace: Duration) -> Result<(), VmError> {
        let Some(st) = state::read_json::<VmState>(&vm_json(state_dir))? else {
            // Also without vm.json: a network left by an interrupted start.
            return self.release_network(state_dir);
        };
        if let Some(p) = st.process.filter(|p| p.is_alive()) {
            let asked = self
                .connect_with(&st, Duration::from_secs(2))
                .and_then(|mut c| Ok(c.client.poweroff()?));
            if asked.is_err() || !p.wait_gone(grace) {
                p.terminate(Duration::from_secs(3));
            }
        }
        self.cleanup(state_dir, &st)
    }

    /// Fills the new folder `dest` with a self-contained copy of the environment's disk (see
    /// [`disk_snapshot`](super::disk_snapshot)). A stopped VM's disk is copied as it is. A
    /// running qemu VM is made consistent first: `sync` in the guest writes its caches to the
    /// disk, then qemu pauses the VM (QMP `stop`, which drains and flushes qemu's block layer)
    /// while the disk file is copied, and resumes it (`cont`). What the guest wrote before the
    /// snapshot is in it; a write in flight at that moment is cut as by a power loss, which
    /// ext4's journal recovers from.
    pub fn snapshot_disk(&self, state_dir: &Path, dest: &Path) -> Result<(), VmError> {
        let status = self.status(state_dir)?;
        let Some(st) = status.state.filter(|_| status.running) else {
            let disk = [super::disk_snapshot::QCOW2, super::disk_snapshot::RAW]
                .iter()
                .map(|d| state_dir.join(d))
                .find(|d| d.exists())
                .ok_or_else(|| {
                    VmError::Config(
                        "this VM environment has no disk yet (it was never started); start it with `berth up` first".into(),
                    )
                })?;
            super::disk_snapshot::capture(&disk, dest)?;
            return Ok(());
        };
        let qmp = match (st.provider, &st.qmp_socket) {
            (Provider::Qemu, Some(q)) => q.clone(),
            (Provider::Qemu, None) => return Err(VmError::Config(
                "this VM was started by an older berth that gave qemu no monitor socket; restart it (`berth down`, `berth up`) to snapshot it while it runs, or snapshot it stopped".into(),
            )),
            (Provider::Kvm, _) => return Err(VmError::Config(
                "berth's own VMM cannot pause a running VM for a snapshot yet; stop it with `berth down` first (snapshots of a stopped VM work)".into(),
            )),
        };
        let mut monitor = super::qmp::Qmp::connect(&qmp, Duration::from_secs(30))?;
        // A save that was killed while the VM was paused left it so: resume it first (a
        // no-op on a running VM), or the guest could not run `sync`.
        monitor.execute("cont")?;
        let out = self.exec_capture(state_dir, &["sync"])?;
        if out.status.code != 0 {
            return Err(VmError::Config(format!(
                "`sync` in the guest failed (exit code {}): {}",
                out.status.code,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        monitor.execute("stop")?;
        let copied = super::disk_snapshot::capture(&st.disk, dest);
        let resumed = monitor.execute("cont");
        copied?;
        resumed?;
        Ok(())
    }

    /// Stops the VM (see [`stop`](Self::stop) for `grace`) and deletes the environment's disk
    /// (the cached base image stays).
    pub fn destroy(&self, state_dir: &Path, grace: Duration) -> Result<(), VmError> {
        self.stop(state_dir, grace)?;
        for f in ["disk.qcow2", "disk.img", "vmm.json"] {
            let p = state_dir.join(f);
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(VmError::Io { path: p, source: e }),
            }
        }
        super::disk_snapshot::sweep_bases(state_dir)?;
        Ok(())
    }

    /// Removes the VM's tap, its lease, and the bridge and NAT when it was their last user.
    pub fn release_network(&self, state_dir: &Path) -> Result<(), VmError> {
        match self.env_id(state_dir) {
            Some(id) => Ok(self.network().detach(&id)?),
            None => Ok(()),
        }
    }

    fn cleanup(&self, state_dir: &Path, st: &VmState) -> Result<(), VmError> {
        // virtiofsd ends when qemu disconnects; one that hangs on is ended here.
        for p in &st.shares {
            if !p.wait_gone(Duration::from_millis(500)) {
                p.terminate(Duration::from_secs(2));
            }
        }
        for i in 0..st.shares.len() {
            let _ = std::fs::remove_file(state_dir.join(format!("fs-{i}.sock")));
        }
        for socket in super::control_sockets(&st.control_socket) {
            let _ = std::fs::remove_file(super::control_lock(&socket));
            let _ = std::fs::remove_file(socket);
        }
        if let Some(v) = &st.vsock_socket {
            let _ = std::fs::remove_file(v);
        }
        if let Some(q) = &st.qmp_socket {
            let _ = std::fs::remove_file(q);
        }
        let _ = std::fs::remove_file(state_dir.join("qemu.pid"));
        let _ = std::fs::remove_file(vm_json(state_dir));
        self.release_network(state_dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn stop_and_status_without_a_vm() {
        let d = tempfile::tempdir().unwrap();
        let b = VmBackend::with_mirror(BerthHome::at(d.path()).unwrap(), Mirror::unreachable());
        let env = d.path().join("envs/x");
        assert!(!b.status(&env).unwrap().running);
        b.stop(&env, Duration::from_secs(1)).unwrap();
        assert!(matches!(b.connect(&env), Err(VmError::NotRunning)));
    }

    #[test]
    fn dead_vmm_is_reported_and_cleaned_up() {
        let d = tempfile::tempdir().unwrap();
        let b = VmBackend::with_mirror(BerthHome::at(d.path()).unwrap(), Mirror::unreachable());
        let env = d.path().join("env");
        std::fs::create_dir_all(&env).unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let st = VmState::stand_in(Provider::Qemu, &env, child.id());
        assert!(st.process.is_some());
        state::write_json(&env.join("vm.json"), &st).unwrap();
        assert!(b.status(&env).unwrap().running);
        child.kill().unwrap();
        child.wait().unwrap();
        let s = b.status(&env).unwrap();
        assert!(!s.running, "kill -9 of the VMM shows as not running");
        assert!(matches!(b.connect(&env), Err(VmError::NotRunning)));
        b.stop(&env, Duration::from_secs(1)).unwrap();
        assert!(!env.join("vm.json").exists());
    }

    /// A start that fails between plumbing the tap and launching the VMM removes the tap,
    /// lease and NAT again; once the VMM runs, the tap stays for it.
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

    /// A qemu VM left paused by a killed `snapshot save` is resumed by the next connect (or
    /// `up`); while another command holds the environment's lock, connect leaves it alone.
    #[test]
    fn a_vm_left_paused_is_resumed() {
        let d = tempfile::tempdir().unwrap();
        let b = VmBackend::with_mirror(BerthHome::at(d.path()).unwrap(), Mirror::unreachable());
        let env = d.path().join("env");
        std::fs::create_dir_all(&env).unwrap();
        let Some(qemu) = super::super::qmp::TestQemu::start(&env) else {
            return;
        };
        let st = VmState {
            provider: Provider::Qemu,
            accel: "tcg".into(),
            process: ProcessRecord::of(qemu.child.id() as i32),
            control_socket: env.join("control.sock"),
            console_log: env.join("console.log"),
            disk: env.join("disk.qcow2"),
            vcpus: 1,
            memory: 32 << 20,
            kernel_release: "6.1".into(),
            started_at_ms: 0,
            boot_ms: Some(1),
            vsock_socket: None,
            shares: vec![],
            qmp_socket: Some(qemu.qmp.clone()),
        };
        state::write_json(&env.join("vm.json"), &st).unwrap();
        // qemu's monitor serves one client at a time: a connection per step.
        let monitor = || super::super::qmp::Qmp::connect(&qemu.qmp, Duration::from_secs(10));
        let run = |cmd: &str| monitor().unwrap().execute(cmd).unwrap();
        let run_state = || monitor().unwrap().run_state().unwrap();
        run("cont");
        assert!(
            !b.resume_if_paused(&env).unwrap(),
            "a running VM is left alone"
        );
        assert_eq!(run_state(), "running");
        run("stop");

        let lock = FileLock::acquire(&env.join(ENV_LOCK), LockMode::Exclusive).unwrap();
        assert!(!b.resume_unlocked(&env), "a save may be under way");
        assert_eq!(run_state(), "paused");
        drop(lock);
        assert!(b.resume_unlocked(&env));
        assert_eq!(run_state(), "running");

        run("stop");
        assert!(b.resume_if_paused(&env).unwrap());
        assert_eq!(run_state(), "running");
    }

    #[test]
    fn a_killed_networked_vmm_leaves_no_tap_once_stopped() {
        use crate::net::bridge::veth_name;
        use crate::net::nat::NatRules;
        use crate::net::network::{assert_released, master_of, test_network, DetachOnDrop};
        let d = tempfile::tempdir().unwrap();
        let home = BerthHome::at(d.path()).unwrap();
        let Some(net) = test_network(&home, "b") else {
            return;
        };
        let bridge = net.options().bridge.name.clone();
        let b = VmBackend::with_mirror(home.clone(), Mirror::unreachable())
            .with_network_options(net.options().clone());
        let id = "vmnet-stop";
        let _cleanup = DetachOnDrop {
            net: &net,
            env_id: id,
        };
        let env = home.env_dir(id);
        assert_eq!(b.env_id(&env).as_deref(), Some(id));
        let t = net.plumb_tap(id).unwrap();
        assert_eq!(t.tap, veth_name(id));
        assert_eq!(master_of(&t.tap).as_deref(), Some(bridge.as_str()));
        assert_eq!(net.record(id).unwrap().unwrap().address, Some(t.address));
        assert!(NatRules::exists(&bridge));
        let cmdline = guest_net_cmdline(&t);
        assert!(
            cmdline.contains(&format!("berth.ip={}/{}", t.address, t.prefix))
                && cmdline.contains(&format!("berth.gw={}", t.gateway))
                && cmdline.contains(&format!("berth.dns={}", t.nameservers[0])),
            "{cmdline}"
        );

        // A VMM (stand-in) killed with -9: the tap and lease stay behind it...
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let st = VmState::stand_in(Provider::Kvm, &env, child.id());
        state::write_json(&env.join("vm.json"), &st).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!b.status(&env).unwrap().running);
        assert!(master_of(&t.tap).is_some(), "the tap outlives its VMM");

        // ...until the next stop, which removes tap, lease, NAT and the bridge (its last user).
        b.stop(&env, Duration::from_secs(1)).unwrap();
        assert_released(&net, id, &t.tap);
        // Stopping again finds nothing to do.
        b.stop(&env, Duration::from_secs(1)).unwrap();
    }
}
