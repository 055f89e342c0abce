//! A micro-VM: KVM VM with guest memory, in-kernel irqchip and PIT, the legacy devices, the
//! virtio-mmio devices and one thread per vCPU. `Machine::run` blocks until the guest resets,
//! halts or the host stops it.

use std::os::unix::thread::JoinHandleExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{
    Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    MemoryRegionAddress,
};

use super::boot::{load_linux, LinuxBoot};
use super::bus::Bus;
use super::exit::{ExitReason, ExitSignal};
use super::i8042::I8042;
use super::irq::IrqLine;
use super::layout::MmioAnnouncement;
use super::layout::{
    ram_ranges, I8042_PORT_BASE, I8042_PORT_LEN, KVM_IDENTITY_MAP_ADDR, KVM_TSS_ADDR, SERIAL_IRQ,
    SERIAL_PORT_BASE, SERIAL_PORT_LEN, VIRTIO_IRQ_BASE, VIRTIO_MMIO_BASE, VIRTIO_MMIO_SIZE,
};
use super::serial::{ConsoleSink, SerialPort};
use super::vcpu;
use super::virtio_blk::VirtioBlock;
use super::virtio_console::VirtioConsole;
use super::virtio_device::{VirtioDevice, VirtioInterrupt};
use super::virtio_mmio::MmioTransport;
use super::virtio_net::VirtioNet;
use super::virtio_vsock::VirtioVsock;
use super::VmmError;

/// What the boot vCPU runs.
pub enum GuestBoot {
    /// A Linux kernel through the 64-bit boot protocol.
    Linux(LinuxBoot),
    /// Raw 16-bit code copied to `load_addr` and started at `0:load_addr` (hand-made guests).
    RealMode { code: Vec<u8>, load_addr: u16 },
}

/// A virtio device to attach.
pub enum DeviceConfig {
    /// File-backed virtio-blk.
    Block { path: PathBuf, read_only: bool },
    /// virtio-console bridged to a host Unix socket (the control channel).
    Console { socket: PathBuf },
    /// virtio-vsock with guest CID `cid`, bridged to Unix sockets at `uds` (hybrid model).
    Vsock { cid: u64, uds: PathBuf },
    /// virtio-net on the host tap interface `tap`, guest MAC `mac`.
    Net { tap: String, mac: [u8; 6] },
}

pub struct MachineConfig {
    pub mem_size: u64,
    pub vcpus: u8,
    /// In-kernel IOAPIC/PIC/LAPIC and PIT. Off only for hand-made guests whose HLT must exit.
    pub irqchip: bool,
    /// Serial console output.
    pub console: ConsoleSink,
    pub devices: Vec<DeviceConfig>,
    /// Address of the first virtio-mmio device (default: the MMIO gap below 4 GiB).
    pub mmio_base: u64,
    pub boot: GuestBoot,
}

impl MachineConfig {
    pub fn new(mem_size: u64, boot: GuestBoot, console: ConsoleSink) -> Self {
        MachineConfig {
            mem_size,
            vcpus: 1,
            irqchip: true,
            console,
            devices: Vec::new(),
            mmio_base: VIRTIO_MMIO_BASE,
            boot,
        }
    }
}

pub struct Machine {
    vm: VmFd,
    vcpus: Vec<kvm_ioctls::VcpuFd>,
    pio: Bus,
    mmio: Bus,
    exit: Arc<ExitSignal>,
    // Kept alive for the VM's lifetime: KVM maps this memory into the guest.
    _mem: GuestMemoryMmap,
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmmError {
    move |source| VmmError::Kvm { what, source }
}

impl Machine {
    pub fn create(config: MachineConfig) -> Result<Self, VmmError> {
        let kvm = Kvm::new().map_err(kvm_err("open /dev/kvm"))?;
        let vm = kvm.create_vm().map_err(kvm_err("create a VM"))?;
        let ranges: Vec<(GuestAddress, usize)> = ram_ranges(config.mem_size)
            .into_iter()
            .map(|(a, l)| (GuestAddress(a), l as usize))
            .collect();
        let mem = GuestMemoryMmap::<()>::from_ranges(&ranges).map_err(|e| {
            VmmError::Memory(format!(
                "cannot allocate {} bytes of guest memory: {e}",
                config.mem_size
            ))
        })?;
        for (slot, region) in mem.iter().enumerate() {
            let host = region
                .get_host_address(MemoryRegionAddress(0))
                .map_err(|e| VmmError::Memory(e.to_string()))?;
            let desc = kvm_userspace_memory_region {
                slot: slot as u32,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
                flags: 0,
            };
            // SAFETY: the region is a live mapping owned by `mem`, which the Machine keeps for
            // as long as the VM exists.
            unsafe { vm.set_user_memory_region(desc) }.map_err(kvm_err("register guest memory"))?;
        }
        // Intel without unrestricted guest needs these pages; harmless elsewhere. Best effort:
        // some KVM providers do not implement them and do not need them.
        let _ = vm.set_tss_address(KVM_TSS_ADDR as usize);
        let _ = vm.set_identity_map_address(KVM_IDENTITY_MAP_ADDR);
        if config.irqchip {
            vm.create_irq_chip()
                .map_err(kvm_err("create the in-kernel interrupt controller"))?;
            let pit = kvm_pit_config {
                flags: KVM_PIT_SPEAKER_DUMMY,
                ..Default::default()
            };
            vm.create_pit2(pit)
                .map_err(kvm_err("create the in-kernel PIT"))?;
        }
        let line = |gsi: u32| -> Result<IrqLine, VmmError> {
            if config.irqchip {
                IrqLine::wired(&vm, gsi)
            } else {
                Ok(IrqLine::inert(gsi))
            }
        };

        let exit = Arc::new(ExitSignal::default());
        let mut pio = Bus::default();
        pio.insert(
            u64::from(SERIAL_PORT_BASE),
            u64::from(SERIAL_PORT_LEN),
            Arc::new(Mutex::new(SerialPort::new(
                line(SERIAL_IRQ)?,
                config.console,
            ))),
        )?;
        pio.insert(
            u64::from(I8042_PORT_BASE),
            u64::from(I8042_PORT_LEN),
            Arc::new(Mutex::new(I8042::new(exit.clone()))),
        )?;

        let mut mmio = Bus::default();
        let mut announcements = Vec::new();
        for (i, dev) in config.devices.into_iter().enumerate() {
            let base = config.mmio_base + i as u64 * VIRTIO_MMIO_SIZE;
            let irq = VIRTIO_IRQ_BASE + i as u32;
            let device: Box<dyn VirtioDevice> = match dev {
                DeviceConfig::Block { path, read_only } => {
                    Box::new(VirtioBlock::open(&path, read_only)?)
                }
                DeviceConfig::Console { socket } => Box::new(VirtioConsole::listen(&socket)?),
                DeviceConfig::Vsock { cid, uds } => Box::new(VirtioVsock::new(cid, &uds)?),
                DeviceConfig::Net { tap, mac } => Box::new(VirtioNet::open(&tap, mac)?),
            };
            let transport =
                MmioTransport::new(device, mem.clone(), VirtioInterrupt::new(line(irq)?));
            mmio.insert(base, VIRTIO_MMIO_SIZE, Arc::new(Mutex::new(transport)))?;
            announcements.push(MmioAnnouncement {
                base,
                size: VIRTIO_MMIO_SIZE,
                irq,
            });
        }

        let mut vcpus = Vec::new();
        for index in 0..config.vcpus.max(1) {
            let fd = vm
                .create_vcpu(u64::from(index))
                .map_err(kvm_err("create a vCPU"))?;
            vcpus.push(fd);
        }
        match config.boot {
            GuestBoot::Linux(boot) => {
                let entry = load_linux(
                    &mem,
                    config.mem_size,
                    &boot,
                    &announcements,
                    config.vcpus.max(1),
                )?;
                for (index, fd) in vcpus.iter().enumerate() {
                    vcpu::configure_cpuid(&kvm, fd, index as u8)?;
                    if config.irqchip {
                        vcpu::configure_lapic(fd)?;
                    }
                }
                // Only the boot CPU starts at the entry; the others wait for INIT/SIPI.
                vcpu::configure_long_mode(&vcpus[0], entry)?;
            }
            GuestBoot::RealMode { code, load_addr } => {
                mem.write_slice(&code, GuestAddress(u64::from(load_addr)))
                    .map_err(|e| VmmError::Boot(format!("cannot place the guest code: {e}")))?;
                vcpu::configure_real_mode(&vcpus[0], load_addr)?;
            }
        }
        Ok(Machine {
            vm,
            vcpus,
            pio,
            mmio,
            exit,
            _mem: mem,
        })
    }

    /// Lets another thread stop the VM (`request(ExitReason::Stopped)`).
    pub fn exit_signal(&self) -> Arc<ExitSignal> {
        self.exit.clone()
    }

    /// Runs the vCPUs until the VM stops; returns why.
    pub fn run(self) -> Result<ExitReason, VmmError> {
        install_kick_handler();
        let mut threads = Vec::new();
        // Only vCPU 0 runs unless the guest starts the others; with an irqchip they block in KVM.
        let start_all = self.vcpus.len();
        for (index, fd) in self.vcpus.into_iter().enumerate().take(start_all) {
            let (pio, mmio, exit) = (self.pio.clone(), self.mmio.clone(), self.exit.clone());
            let t = std::thread::Builder::new()
                .name(format!("berth-vcpu{index}"))
                .spawn(move || vcpu::run_loop(fd, pio, mmio, exit))
                .map_err(VmmError::Thread)?;
            threads.push(t);
        }
        let reason = self.exit.wait();
        // Kick every vCPU out of KVM_RUN until its thread ends.
        for t in threads {
            while !t.is_finished() {
                // SAFETY: pthread_kill on a thread that is still running (checked above, and
                // joinable handles keep the pthread_t valid); the handler does nothing.
                unsafe { libc::pthread_kill(t.as_pthread_t(), kick_signal()) };
                std::thread::sleep(Duration::from_millis(1));
            }
            let _ = t.join();
        }
        drop(self.vm);
        Ok(reason)
    }
}

fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int) {}

/// A no-op handler without SA_RESTART, so the signal interrupts KVM_RUN with EINTR.
fn install_kick_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: sigaction with a zeroed struct, an empty mask and a handler that does
        // nothing (async-signal-safe).
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_kick as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(kick_signal(), &sa, std::ptr::null_mut());
        }
    });
}
