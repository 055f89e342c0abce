//! berth's own VMM as the environment's supervisor process: the CLI re-executes itself as
//! `berth internal-vmm <config.json>`, which runs [`run`] until the guest stops.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::process::ProcessRecord;
use super::vmm::boot::LinuxBoot;
use super::vmm::{DeviceConfig, ExitReason, GuestBoot, Machine, MachineConfig};
use super::VmError;
use crate::doctor::{kvm_kind, HostRoot, KvmKind};
use crate::net::dialer::AddressDialer;
use crate::net::dns::DnsForwarder;
use crate::net::forward::{ForwardSpec, PortForwarder};
use crate::net::{Network, NetworkOptions};
use crate::state::{BerthHome, FileLock, LockMode};

/// The guest's vsock context id.
pub const GUEST_CID: u64 = 3;

/// The hidden CLI subcommand that runs [`run`].
pub const SUBCOMMAND: &str = "internal-vmm";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmmProcessConfig {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub disk: PathBuf,
    pub control_socket: PathBuf,
    pub console_log: PathBuf,
    pub memory: u64,
    pub vcpus: u8,
    pub cmdline: String,
    /// virtio-vsock (hybrid model) Unix socket, guest CID 3.
    #[serde(default)]
    pub vsock: Option<PathBuf>,
    /// virtio-net on a tap of berth's bridge, and what this process serves for it.
    #[serde(default)]
    pub net: Option<VmmNet>,
}

/// The VM's network as the VMM process runs it: the device, and the `[[ports]]` forwarder
/// (and DNS relay) that must live as long as the VM, in the host's network namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmmNet {
    /// The tap interface (created and plugged into the bridge by the backend).
    pub tap: String,
    pub mac: [u8; 6],
    /// The guest's address: forwarded ports are dialed there.
    pub guest: Ipv4Addr,
    pub ports: Vec<ForwardSpec>,
    /// `(bridge address, upstream)`: relay DNS sent to the bridge address (IPv6-only host
    /// resolvers).
    #[serde(default)]
    pub dns_relay: Option<(Ipv4Addr, IpAddr)>,
    /// Whose tap and lease these are: the process releases them when the VM ends.
    #[serde(default)]
    pub owner: Option<NetOwner>,
}

/// The environment a VMM process's network belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetOwner {
    /// The berth home's root.
    pub home: PathBuf,
    pub env_id: String,
}

/// Releases the VM's tap, lease (and the bridge and NAT when it was their last user) once
/// the VM has ended, so a guest that powered itself off leaves no network device behind.
/// When a berth command holds the environment's lock (`down` waiting for this process,
/// `up` whose start failed), that command releases them itself: this one leaves them to it,
/// so it never detaches a network a new start is plumbing. Returns whether it released them.
pub fn release_network(owner: &NetOwner) -> Result<bool, VmError> {
    // A home removed meanwhile is not made again (`BerthHome::at` creates its folders).
    if !owner.home.is_dir() {
        return Ok(false);
    }
    let home = BerthHome::at(&owner.home)?;
    let dir = home.env_dir(&owner.env_id);
    if !dir.is_dir() {
        return Ok(false);
    }
    let Some(_lock) =
        FileLock::try_acquire(&dir.join(super::vm_record::ENV_LOCK), LockMode::Exclusive)?
    else {
        return Ok(false);
    };
    Network::new(&home, NetworkOptions::default()).detach(&owner.env_id)?;
    Ok(true)
}

/// Refuses to boot a Linux kernel through KVM unless it is hardware KVM (or explicitly
/// unknown): `kvm_pvm` can restart the whole host when a stock kernel boots on it.
pub fn check_kvm_can_boot_linux(kind: KvmKind) -> Result<(), VmError> {
    match kind {
        KvmKind::Hardware | KvmKind::Unknown => Ok(()),
        KvmKind::Pvm => Err(VmError::UnsafeKvm),
        KvmKind::Absent => Err(VmError::NoKvm),
    }
}

/// Runs the VM in this process until it stops, then releases its network (see
/// [`release_network`]).
pub fn run(config_path: &Path) -> Result<ExitReason, VmError> {
    check_kvm_can_boot_linux(kvm_kind(&HostRoot::real()))?;
    let cfg: VmmProcessConfig = crate::state::read_json(config_path)?
        .ok_or_else(|| VmError::Config(format!("{} does not exist", config_path.display())))?;
    let reason = run_machine(&cfg);
    if let Some(owner) = cfg.net.as_ref().and_then(|n| n.owner.as_ref()) {
        if let Err(e) = release_network(owner) {
            eprintln!(
                "berth-vmm: releasing the network of {}: {e}; `berth down` removes it",
                owner.env_id
            );
        }
    }
    reason
}

fn run_machine(cfg: &VmmProcessConfig) -> Result<ExitReason, VmError> {
    let console = File::options()
        .create(true)
        .append(true)
        .open(&cfg.console_log)
        .map_err(|e| VmError::Io {
            path: cfg.console_log.clone(),
            source: e,
        })?;
    let mut mc = MachineConfig::new(
        cfg.memory,
        GuestBoot::Linux(LinuxBoot {
            kernel: cfg.kernel.clone(),
            initramfs: Some(cfg.initramfs.clone()),
            cmdline: cfg.cmdline.clone(),
            acpi: true,
        }),
        Box::new(console),
    );
    mc.vcpus = cfg.vcpus;
    mc.devices = vec![DeviceConfig::Block {
        path: cfg.disk.clone(),
        read_only: false,
    }];
    for socket in super::control_sockets(&cfg.control_socket) {
        mc.devices.push(DeviceConfig::Console { socket });
    }
    if let Some(uds) = &cfg.vsock {
        mc.devices.push(DeviceConfig::Vsock {
            cid: GUEST_CID,
            uds: uds.clone(),
        });
    }
    if let Some(net) = &cfg.net {
        mc.devices.push(DeviceConfig::Net {
            tap: net.tap.clone(),
            mac: net.mac,
        });
    }
    // SIGTERM (from `down`, after the guest had its chance to power off) stops the VM. Block
    // it before any thread exists so every thread inherits the mask and only the waiter sees it.
    let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigset operations on a local, then the calling thread's mask.
    let set = unsafe {
        libc::sigemptyset(set.as_mut_ptr());
        libc::sigaddset(set.as_mut_ptr(), libc::SIGTERM);
        libc::sigaddset(set.as_mut_ptr(), libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, set.as_ptr(), std::ptr::null_mut());
        set.assume_init()
    };
    let machine = Machine::create(mc)?;
    // Started after the signal mask, so their threads inherit it; they end with the process.
    let _forwarders = match &cfg.net {
        Some(net) => serve_network(net)?,
        None => (None, None),
    };
    let exit = machine.exit_signal();
    std::thread::spawn(move || {
        let mut sig = 0;
        // SAFETY: sigwait on a set of blocked signals with a valid out-pointer.
        unsafe { libc::sigwait(&set, &mut sig) };
        exit.request(ExitReason::Stopped);
    });
    let reason = machine.run()?;
    for socket in super::control_sockets(&cfg.control_socket) {
        let _ = std::fs::remove_file(socket);
    }
    Ok(reason)
}

/// The port forwarder to the guest's address and the DNS relay, as `net` asks.
fn serve_network(net: &VmmNet) -> Result<(Option<PortForwarder>, Option<DnsForwarder>), VmError> {
    let ports = if net.ports.is_empty() {
        None
    } else {
        let dialer = AddressDialer {
            ip: IpAddr::V4(net.guest),
        };
        Some(PortForwarder::start(&net.ports, Arc::new(dialer))?)
    };
    let dns = match net.dns_relay {
        Some((listen, upstream)) => Some(DnsForwarder::start(listen, upstream)?),
        None => None,
    };
    Ok((ports, dns))
}

/// Starts `exe internal-vmm config` in its own session, detached from the terminal.
pub fn launch(exe: &Path, config_path: &Path, log: &Path) -> Result<ProcessRecord, VmError> {
    let mut cmd = Command::new(exe);
    cmd.arg(SUBCOMMAND).arg(config_path);
    let child = crate::detach::spawn_detached(cmd, log).map_err(|e| VmError::Io {
        path: exe.to_path_buf(),
        source: e,
    })?;
    ProcessRecord::of(child.id() as i32)
        .ok_or_else(|| VmError::Config("the VMM process exited right away".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vmm_process_forwards_ports_to_the_guest_address() {
        use std::io::{Read, Write};
        // The "guest": a listener on loopback, standing in for the VM's address on the bridge.
        let guest = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let guest_port = guest.local_addr().unwrap().port();
        let host_port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let net = VmmNet {
            tap: "unused".into(),
            mac: [0x02, 0, 0, 0, 0, 1],
            guest: Ipv4Addr::LOCALHOST,
            ports: vec![ForwardSpec {
                protocol: envfile_spec::plan::Protocol::Tcp,
                host: (Ipv4Addr::LOCALHOST, host_port).into(),
                guest_port,
                shared: false,
            }],
            dns_relay: None,
            owner: None,
        };
        let (forwarder, dns) = serve_network(&net).unwrap();
        assert!(dns.is_none());
        let mut client = std::net::TcpStream::connect(("127.0.0.1", host_port)).unwrap();
        let (mut inside, _) = guest.accept().unwrap();
        client.write_all(b"ping").unwrap();
        let mut got = [0u8; 4];
        inside.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ping");
        drop(forwarder);
        // The forwarder ended with the VM: the host port is free again.
        std::net::TcpListener::bind(("127.0.0.1", host_port)).unwrap();
    }

    /// The guest powered itself off: the VMM process releases tap, lease, NAT and bridge,
    /// unless a berth command holds the environment's lock (then that command does).
    #[test]
    fn the_vmm_process_releases_its_network_when_the_vm_ends() {
        use crate::net::network::{assert_released, master_of, test_network, DetachOnDrop};
        let d = tempfile::tempdir().unwrap();
        let home = BerthHome::at(d.path()).unwrap();
        let Some(net) = test_network(&home, "r") else {
            return;
        };
        let bridge = net.options().bridge.name.clone();
        let id = "vmnet-release";
        let _cleanup = DetachOnDrop {
            net: &net,
            env_id: id,
        };
        let owner = NetOwner {
            home: d.path().to_path_buf(),
            env_id: id.into(),
        };
        let t = net.plumb_tap(id).unwrap();
        assert_eq!(master_of(&t.tap).as_deref(), Some(bridge.as_str()));

        // `down` holds the lock while it waits for the VMM: left to it.
        let lock = FileLock::acquire(
            &home.env_dir(id).join(super::super::vm_record::ENV_LOCK),
            LockMode::Exclusive,
        )
        .unwrap();
        assert!(!release_network(&owner).unwrap());
        assert!(master_of(&t.tap).is_some(), "left to the lock holder");
        drop(lock);

        assert!(release_network(&owner).unwrap());
        assert_released(&net, id, &t.tap);
        // Once more (the environment was destroyed meanwhile): nothing to do.
        std::fs::remove_dir_all(home.env_dir(id)).unwrap();
        assert!(!release_network(&owner).unwrap());
        let gone = NetOwner {
            home: d.path().join("removed-home"),
            env_id: id.into(),
        };
        assert!(!release_network(&gone).unwrap());
        assert!(!gone.home.exists(), "a removed home is not made again");
    }

    #[test]
    fn refuses_kvm_pvm_and_missing_kvm() {
        assert!(matches!(
            check_kvm_can_boot_linux(KvmKind::Pvm),
            Err(VmError::UnsafeKvm)
        ));
        assert!(matches!(
            check_kvm_can_boot_linux(KvmKind::Absent),
            Err(VmError::NoKvm)
        ));
        assert!(check_kvm_can_boot_linux(KvmKind::Hardware).is_ok());
        assert!(VmError::UnsafeKvm.to_string().contains("kvm_pvm"));
    }
}
