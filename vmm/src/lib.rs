//! berth's own VMM on KVM (rust-vmm crates), in the spirit of Firecracker: direct Linux boot,
//! in-kernel irqchip and PIT, 8250 serial console, i8042 reset, and virtio-mmio devices
//! (block for the root disk, console for the control channel, vsock, and network on a tap).
//!
//! Never boot a Linux kernel through `kvm_pvm`: this crate does not probe the host, so its
//! callers must refuse first (berth's runtime does, in `vm::vmm_process::run` and the VM
//! backend, through its `kvm_kind` host probe).

pub mod acpi;
pub mod boot;
pub mod boot_params;
pub mod bus;
pub mod exit;
pub mod gdt;
pub mod i8042;
pub mod irq;
pub mod layout;
pub mod machine;
pub mod paging;
pub mod serial;
pub mod tap_device;
pub mod unix_listener;
pub mod vcpu;
pub mod virtio_blk;
pub mod virtio_console;
pub mod virtio_device;
pub mod virtio_mmio;
pub mod virtio_net;
pub mod virtio_vsock;

#[cfg(test)]
mod kvm_tests;
#[cfg(any(test, feature = "test-guest"))]
pub mod test_guest;
#[cfg(test)]
mod virtio_tests;

use std::path::PathBuf;

pub use exit::ExitReason;
pub use machine::{DeviceConfig, GuestBoot, Machine, MachineConfig};

#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("KVM failed to {what}: {source}; check that /dev/kvm is usable (`berth doctor`)")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("guest memory: {0}")]
    Memory(String),
    #[error("cannot prepare the guest for boot: {0}")]
    Boot(String),
    #[error("invalid kernel command line: {0}")]
    Cmdline(String),
    #[error("kernel {path}: {reason}")]
    Kernel { path: PathBuf, reason: String },
    #[error("disk image {path}: {reason}")]
    Disk { path: PathBuf, reason: String },
    #[error("cannot listen on {path}: {source}")]
    Socket {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("device layout: {0}")]
    Bus(#[from] bus::BusOverlap),
    #[error("network device: {0}")]
    Net(String),
    #[error("cannot start a vCPU thread: {0}")]
    Thread(std::io::Error),
}
