//! vCPU setup (CPUID, registers, segments, paging, FPU, local APIC) and the run loop that
//! dispatches port-I/O and MMIO exits to the buses.

use std::sync::Arc;

use kvm_bindings::{kvm_fpu, kvm_regs, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd};

use super::boot::BootEntry;
use super::bus::Bus;
use super::exit::{ExitReason, ExitSignal};
use super::gdt::{boot_gdt, segment_from_entry};
use super::layout::{BOOT_STACK_POINTER, GDT_ADDR, IDT_ADDR};
use super::VmmError;

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmmError {
    move |source| VmmError::Kvm { what, source }
}

/// Passes the host's supported CPUID through, with this vCPU's APIC id and the hypervisor bit.
pub fn configure_cpuid(kvm: &Kvm, vcpu: &VcpuFd, index: u8) -> Result<(), VmmError> {
    let mut cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_err("read the supported CPUID"))?;
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => {
                e.ebx = (e.ebx & 0x00ff_ffff) | (u32::from(index) << 24);
                e.ecx |= 1 << 31;
            }
            0xb => e.edx = u32::from(index),
            _ => {}
        }
    }
    vcpu.set_cpuid2(&cpuid).map_err(kvm_err("set CPUID"))
}

/// Puts the boot vCPU at the kernel's 64-bit entry: long mode, paging on, RSI = zero page.
pub fn configure_long_mode(vcpu: &VcpuFd, entry: BootEntry) -> Result<(), VmmError> {
    let regs = kvm_regs {
        rflags: 0x2,
        rip: entry.rip,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: entry.zero_page,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(kvm_err("set registers"))?;

    let mut sregs = vcpu
        .get_sregs()
        .map_err(kvm_err("read segment registers"))?;
    let gdt = boot_gdt();
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (gdt.len() * 8 - 1) as u16;
    sregs.idt.base = IDT_ADDR;
    sregs.idt.limit = 7;
    sregs.cs = segment_from_entry(gdt[1], 1);
    let data = segment_from_entry(gdt[2], 2);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment_from_entry(gdt[3], 3);
    sregs.cr3 = entry.cr3;
    sregs.cr4 |= X86_CR4_PAE;
    sregs.cr0 |= X86_CR0_PE | X86_CR0_PG;
    sregs.efer |= EFER_LME | EFER_LMA;
    vcpu.set_sregs(&sregs)
        .map_err(kvm_err("set segment registers"))?;

    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(kvm_err("set FPU state"))
}

/// Real mode at `0:ip` (for hand-made guests).
pub fn configure_real_mode(vcpu: &VcpuFd, ip: u16) -> Result<(), VmmError> {
    let mut sregs = vcpu
        .get_sregs()
        .map_err(kvm_err("read segment registers"))?;
    for s in [
        &mut sregs.cs,
        &mut sregs.ds,
        &mut sregs.es,
        &mut sregs.fs,
        &mut sregs.gs,
        &mut sregs.ss,
    ] {
        s.base = 0;
        s.selector = 0;
    }
    vcpu.set_sregs(&sregs)
        .map_err(kvm_err("set segment registers"))?;
    let regs = kvm_regs {
        rflags: 0x2,
        rip: u64::from(ip),
        rsp: 0xff0,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(kvm_err("set registers"))
}

/// Routes LINT0 to ExtINT and LINT1 to NMI, as a PC's BIOS would.
pub fn configure_lapic(vcpu: &VcpuFd) -> Result<(), VmmError> {
    let mut lapic = vcpu.get_lapic().map_err(kvm_err("read the local APIC"))?;
    for (offset, mode) in [(APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)] {
        let bytes: [u8; 4] = std::array::from_fn(|i| lapic.regs[offset + i] as u8);
        let v = (u32::from_le_bytes(bytes) & !0x700) | (mode << 8);
        for (i, b) in v.to_le_bytes().iter().enumerate() {
            lapic.regs[offset + i] = *b as _;
        }
    }
    vcpu.set_lapic(&lapic)
        .map_err(kvm_err("set the local APIC"))
}

/// Runs the vCPU until the VM is asked to stop.
pub fn run_loop(mut vcpu: VcpuFd, pio: Bus, mmio: Bus, exit: Arc<ExitSignal>) {
    while !exit.is_requested() {
        match vcpu.run() {
            Ok(VcpuExit::IoOut(port, data)) => {
                pio.write(u64::from(port), data);
            }
            Ok(VcpuExit::IoIn(port, data)) => {
                pio.read(u64::from(port), data);
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                mmio.read(addr, data);
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                mmio.write(addr, data);
            }
            Ok(VcpuExit::Hlt) => exit.request(ExitReason::Halted),
            // A triple fault. On Intel the registers still say where the guest was; on AMD,
            // KVM has already put the vCPU through INIT (the VMCB is undefined after a
            // shutdown intercept), so they show the reset state, which says so much.
            Ok(VcpuExit::Shutdown) => exit.request(ExitReason::Shutdown(cpu_state(&vcpu))),
            Ok(VcpuExit::Intr) => {}
            Ok(other) => {
                let what = format!("{other:?}");
                exit.request(ExitReason::Error(format!(
                    "unexpected vCPU exit: {what} at {}",
                    cpu_state(&vcpu)
                )))
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
            Err(e) => exit.request(ExitReason::Error(format!("KVM_RUN failed: {e}"))),
        }
    }
}

/// The registers that say where a vCPU was and in which mode (`rip`, `rsp`, the control
/// registers, `efer`), for the log of a guest that stopped unexpectedly.
pub fn cpu_state(vcpu: &VcpuFd) -> String {
    let regs = match vcpu.get_regs() {
        Ok(r) => format!("rip={:#x} rsp={:#x} rflags={:#x}", r.rip, r.rsp, r.rflags),
        Err(e) => format!("registers unreadable ({e})"),
    };
    let sregs = match vcpu.get_sregs() {
        Ok(s) => format!(
            "cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x} cs={:#x} idt={:#x}+{:#x}",
            s.cr0, s.cr2, s.cr3, s.cr4, s.efer, s.cs.selector, s.idt.base, s.idt.limit
        ),
        Err(e) => format!("segment registers unreadable ({e})"),
    };
    format!("{regs} {sregs}")
}
