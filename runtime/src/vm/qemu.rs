//! The qemu provider: `qemu-system-x86_64 -M pc` with the kernel, berth's initramfs, the root
//! disk on virtio-blk, the serial console in a log file and the control channel on a
//! virtio-serial port backed by a Unix-socket chardev (virtio-pci devices; see `args` for why
//! not microvm), a virtio-net NIC on qemu's user network (`hostfwd` per forwarded port,
//! `restrict=on` for `network = "none"`) and virtio-fs devices for shared folders. TCG unless the host has
//! hardware KVM. qemu daemonizes itself once its devices and sockets are set up.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use envfile_spec::plan::{PortPlan, Protocol};

use super::shared_folder::SharedFolder;
use crate::host::process::ProcessIdentity;

pub const QEMU_BINARY: &str = "qemu-system-x86_64";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Tcg,
    Kvm,
}

#[derive(Debug, Clone)]
pub struct QemuConfig {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub disk: PathBuf,
    /// `qcow2` (overlay on the cached base image) or `raw` (a private copy).
    pub disk_format: &'static str,
    pub memory_mib: u64,
    pub vcpus: u32,
    pub accel: Accel,
    pub cmdline: String,
    pub console_log: PathBuf,
    pub control_socket: PathBuf,
    pub pidfile: PathBuf,
    /// qemu's machine protocol socket (QMP), for pausing the VM while its disk is copied.
    pub qmp_socket: PathBuf,
    /// qemu's own messages.
    pub qemu_log: PathBuf,
    /// Host ports forwarded to the guest by the user-mode network (the NIC is always there,
    /// so the guest reaches outside).
    pub ports: Vec<PortPlan>,
    /// Whether the guest may open connections to the outside (`restrict=off`).
    pub outbound: bool,
    /// Host folders served by virtiofsd (already listening on their sockets).
    pub shares: Vec<SharedFolder>,
}

/// The guest's address on qemu's user-mode network (slirp's defaults), as the agent reads it
/// from the kernel command line.
pub const GUEST_NET_CMDLINE: &str = "berth.ip=10.0.2.15/24 berth.gw=10.0.2.2 berth.dns=10.0.2.3";

/// `hostfwd=tcp:127.0.0.1:8080-:80` for one `[[ports]]` entry (IPv4: see [`check_ports`]).
fn hostfwd(p: &PortPlan) -> String {
    let proto = match p.protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    };
    format!("hostfwd={proto}:{}:{}-:{}", p.address, p.host, p.guest)
}

/// qemu's user network (7.2, Debian 12) forwards only from IPv4 host addresses.
pub fn check_ports(ports: &[PortPlan]) -> Result<(), QemuError> {
    match ports.iter().find(|p| p.address.is_ipv6()) {
        Some(p) => Err(QemuError::Ipv6Port {
            address: p.address,
            port: p.host,
        }),
        None => Ok(()),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    #[error("cannot run {QEMU_BINARY}: {0}; install it (Debian: apt-get install qemu-system-x86)")]
    Spawn(std::io::Error),
    #[error("qemu failed to start the VM: {0}")]
    Failed(String),
    #[error("[[ports]] host port {port} on {address}: qemu's user network forwards only from IPv4 host addresses; use `address = \"127.0.0.1\"` (or another IPv4 address)")]
    Ipv6Port {
        address: std::net::IpAddr,
        port: u16,
    },
}

impl QemuConfig {
    pub fn args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::new();
        let mut push = |s: &str| a.push(s.into());
        push("-M");
        // The `pc` machine with virtio-pci: Debian's kernels find virtio-mmio devices only
        // through ACPI (no CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES), and under TCG qemu 7.2's ACPI
        // microvm delivers no timer interrupts to them.
        push("pc");
        push("-accel");
        push(match self.accel {
            Accel::Tcg => "tcg",
            Accel::Kvm => "kvm",
        });
        if self.accel == Accel::Kvm {
            push("-cpu");
            push("host");
        }
        push("-m");
        push(&format!("{}M", self.memory_mib));
        if !self.shares.is_empty() {
            // vhost-user devices need guest memory that virtiofsd can map.
            push("-object");
            push(&format!(
                "memory-backend-memfd,id=mem,size={}M,share=on",
                self.memory_mib
            ));
            push("-numa");
            push("node,memdev=mem");
        }
        push("-smp");
        push(&self.vcpus.max(1).to_string());
        for s in [
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ] {
            push(s);
        }
        let path = |p: &Path| p.to_string_lossy().replace(',', ",,");
        push("-kernel");
        push(&path(&self.kernel));
        push("-initrd");
        push(&path(&self.initramfs));
        push("-append");
        push(&self.cmdline);
        push("-chardev");
        push(&format!("file,id=console,path={}", path(&self.console_log)));
        push("-serial");
        push("chardev:console");
        push("-device");
        push("virtio-serial-pci");
        for (i, sock) in super::control_sockets(&self.control_socket)
            .iter()
            .enumerate()
        {
            push("-chardev");
            push(&format!(
                "socket,id=control{i},path={},server=on,wait=off",
                path(sock)
            ));
            push("-device");
            push(&format!("virtserialport,chardev=control{i},name=berth.{i}"));
        }
        push("-chardev");
        push(&format!(
            "socket,id=qmp,path={},server=on,wait=off",
            path(&self.qmp_socket)
        ));
        push("-mon");
        push("chardev=qmp,mode=control");
        push("-drive");
        push(&format!(
            "id=root,file={},format={},if=none,discard=unmap",
            path(&self.disk),
            self.disk_format
        ));
        push("-device");
        push("virtio-blk-pci,drive=root");
        let mut netdev = String::from("user,id=net0");
        if !self.outbound {
            netdev.push_str(",restrict=on");
        }
        for p in &self.ports {
            netdev.push(',');
            netdev.push_str(&hostfwd(p));
        }
        push("-netdev");
        push(&netdev);
        push("-device");
        push("virtio-net-pci,netdev=net0");
        for (i, f) in self.shares.iter().enumerate() {
            push("-chardev");
            push(&format!("socket,id=fs{i},path={}", path(&f.socket)));
            push("-device");
            push(&format!("vhost-user-fs-pci,chardev=fs{i},tag={}", f.tag));
        }
        push("-daemonize");
        push("-pidfile");
        push(&path(&self.pidfile));
        a
    }

    /// Starts qemu; returns once it runs in the background (its control socket exists).
    pub fn launch(&self) -> Result<ProcessIdentity, QemuError> {
        for sock in super::control_sockets(&self.control_socket) {
            let _ = std::fs::remove_file(sock);
        }
        let _ = std::fs::remove_file(&self.qmp_socket);
        let log = crate::detach::create_log_file(&self.qemu_log).map_err(QemuError::Spawn)?;
        let status = Command::new(QEMU_BINARY)
            .args(self.args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .status()
            .map_err(QemuError::Spawn)?;
        let messages = std::fs::read_to_string(&self.qemu_log).unwrap_or_default();
        if !status.success() {
            return Err(QemuError::Failed(format!("{status}: {}", messages.trim())));
        }
        let pid: i32 = std::fs::read_to_string(&self.pidfile)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| {
                QemuError::Failed(format!(
                    "no pid in {}: {}",
                    self.pidfile.display(),
                    messages.trim()
                ))
            })?;
        ProcessIdentity::of(pid).ok_or_else(|| {
            QemuError::Failed(format!(
                "qemu (pid {pid}) exited right away: {}",
                messages.trim()
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line() {
        let c = QemuConfig {
            kernel: "/k/vmlinuz".into(),
            initramfs: "/k/initrd,1.gz".into(),
            disk: "/e/disk.qcow2".into(),
            disk_format: "qcow2",
            memory_mib: 512,
            vcpus: 2,
            accel: Accel::Tcg,
            cmdline: "console=ttyS0".into(),
            console_log: "/e/console.log".into(),
            control_socket: "/e/control.sock".into(),
            pidfile: "/e/qemu.pid".into(),
            qmp_socket: "/e/qmp.sock".into(),
            qemu_log: "/e/qemu.log".into(),
            ports: vec![
                PortPlan {
                    host: 8080,
                    guest: 80,
                    protocol: Protocol::Tcp,
                    address: "127.0.0.1".parse().unwrap(),
                },
                PortPlan {
                    host: 5353,
                    guest: 53,
                    protocol: Protocol::Udp,
                    address: "0.0.0.0".parse().unwrap(),
                },
            ],
            outbound: true,
            shares: vec![],
        };
        let a: Vec<String> = c
            .args()
            .iter()
            .map(|s| s.to_string_lossy().to_string())
            .collect();
        let joined = a.join(" ");
        assert!(
            joined.starts_with("-M pc -accel tcg -m 512M -smp 2"),
            "{joined}"
        );
        assert!(!joined.contains("-enable-kvm") && !joined.contains("accel kvm"));
        assert!(joined.contains("socket,id=control0,path=/e/control.sock,server=on,wait=off"));
        assert!(joined.contains("socket,id=control3,path=/e/control-3.sock,server=on,wait=off"));
        assert!(joined.contains("virtserialport,chardev=control0,name=berth.0"));
        assert!(joined.contains("virtserialport,chardev=control3,name=berth.3"));
        assert!(joined.contains(
            "-chardev socket,id=qmp,path=/e/qmp.sock,server=on,wait=off -mon chardev=qmp,mode=control"
        ));
        assert!(joined.contains("virtio-blk-pci,drive=root") && joined.contains("format=qcow2"));
        assert!(
            joined.contains("-initrd /k/initrd,,1.gz"),
            "commas in paths are escaped"
        );
        assert!(joined.contains("-no-reboot") && joined.contains("-daemonize"));
        assert!(
            joined.contains(
                "-netdev user,id=net0,hostfwd=tcp:127.0.0.1:8080-:80,hostfwd=udp:0.0.0.0:5353-:53 \
                 -device virtio-net-pci,netdev=net0"
            ),
            "{joined}"
        );
        assert!(!joined.contains("memory-backend") && !joined.contains("vhost-user-fs"));
        assert!(check_ports(&c.ports).is_ok());
        let offline = QemuConfig {
            outbound: false,
            ..c.clone()
        };
        let joined_offline = offline
            .args()
            .iter()
            .map(|s| s.to_string_lossy().to_string())
            .collect::<Vec<_>>()
            .join(" ");
        assert!(
            joined_offline.contains("-netdev user,id=net0,restrict=on,hostfwd=tcp:"),
            "{joined_offline}"
        );
        let mut v6 = c.ports.clone();
        v6[0].address = "::1".parse().unwrap();
        let e = check_ports(&v6).unwrap_err().to_string();
        assert!(e.contains("8080 on ::1") && e.contains("IPv4"), "{e}");
        let shared = QemuConfig {
            shares: vec![SharedFolder {
                tag: "berth0".into(),
                source: "/src".into(),
                target: "/w".into(),
                readonly: false,
                kind: envfile_spec::plan::MountKind::Bind,
                socket: "/e/fs-0.sock".into(),
            }],
            ..c.clone()
        };
        let joined = shared
            .args()
            .iter()
            .map(|s| s.to_string_lossy().to_string())
            .collect::<Vec<_>>()
            .join(" ");
        assert!(
            joined.contains("-m 512M -object memory-backend-memfd,id=mem,size=512M,share=on -numa node,memdev=mem"),
            "{joined}"
        );
        assert!(joined.contains(
            "-chardev socket,id=fs0,path=/e/fs-0.sock -device vhost-user-fs-pci,chardev=fs0,tag=berth0"
        ));
        let kvm = QemuConfig {
            accel: Accel::Kvm,
            ..c
        };
        assert!(kvm.args().iter().any(|s| s == "kvm"));
    }
}
