//! Guest physical memory layout of berth's micro-VMs (x86_64), in the spirit of Firecracker's:
//! low memory holds the boot structures, the kernel loads at 1 MiB, virtio-mmio devices live in
//! a gap below 4 GiB that the e820 map leaves out of RAM.

/// GDT used for the 64-bit entry.
pub const GDT_ADDR: u64 = 0x500;
/// Empty IDT (interrupts stay disabled until the kernel installs its own).
pub const IDT_ADDR: u64 = 0x520;
/// The zero page (`struct boot_params`).
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Initial stack pointer for the boot CPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Level-4 page table (PML4).
pub const PML4_ADDR: u64 = 0x9000;
/// Page-directory-pointer table.
pub const PDPTE_ADDR: u64 = 0xa000;
/// First page directory; `PDE_COUNT` consecutive pages follow.
pub const PDE_ADDR: u64 = 0xb000;
/// Page directories mapped (each maps 1 GiB with 2 MiB pages): identity map of the first 4 GiB.
pub const PDE_COUNT: u64 = 4;
/// Kernel command line.
pub const CMDLINE_ADDR: u64 = 0x20000;
/// Longest command line accepted (the kernel's COMMAND_LINE_SIZE on x86 is 2048).
pub const CMDLINE_MAX: usize = 2048;
/// End of the low RAM area reported in e820 (the EBDA starts here on a PC).
pub const EBDA_START: u64 = 0x9fc00;
/// Where the kernel image is loaded (1 MiB).
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the hole below 4 GiB for device MMIO (not RAM).
pub const MMIO_GAP_START: u64 = 0xd000_0000;
/// End of that hole.
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// First virtio-mmio device; each device takes `VIRTIO_MMIO_SIZE` bytes.
pub const VIRTIO_MMIO_BASE: u64 = MMIO_GAP_START;
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// First interrupt line given to virtio-mmio devices (0-4 are taken by the PIT, keyboard, serial).
pub const VIRTIO_IRQ_BASE: u32 = 5;

/// A virtio-mmio device as the kernel command line announces it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioAnnouncement {
    pub base: u64,
    pub size: u64,
    pub irq: u32,
}
/// TSS and identity-map pages KVM needs on Intel (placed just below the MMIO gap end).
pub const KVM_TSS_ADDR: u64 = 0xfffb_d000;
pub const KVM_IDENTITY_MAP_ADDR: u64 = 0xfffb_c000;

/// Legacy I/O ports.
pub const SERIAL_PORT_BASE: u16 = 0x3f8;
pub const SERIAL_PORT_LEN: u16 = 8;
pub const SERIAL_IRQ: u32 = 4;
pub const I8042_PORT_BASE: u16 = 0x60;
pub const I8042_PORT_LEN: u16 = 5;

/// Address and interrupt line of the `index`-th virtio-mmio device.
pub fn virtio_mmio_slot(index: u32) -> (u64, u32) {
    (
        VIRTIO_MMIO_BASE + u64::from(index) * VIRTIO_MMIO_SIZE,
        VIRTIO_IRQ_BASE + index,
    )
}

/// RAM ranges `(start, length)` for a guest of `mem_size` bytes: one range below the MMIO gap
/// and, when the memory does not fit there, the rest above 4 GiB.
pub fn ram_ranges(mem_size: u64) -> Vec<(u64, u64)> {
    if mem_size <= MMIO_GAP_START {
        vec![(0, mem_size)]
    } else {
        vec![
            (0, MMIO_GAP_START),
            (MMIO_GAP_END, mem_size - MMIO_GAP_START),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_memory_is_one_range() {
        assert_eq!(ram_ranges(256 << 20), vec![(0, 256 << 20)]);
    }

    #[test]
    fn large_memory_skips_the_mmio_gap() {
        let r = ram_ranges(4 << 30);
        assert_eq!(r[0], (0, MMIO_GAP_START));
        assert_eq!(r[1].0, MMIO_GAP_END);
        assert_eq!(r[0].1 + r[1].1, 4 << 30);
    }

    #[test]
    fn virtio_slots_do_not_overlap() {
        let (a0, i0) = virtio_mmio_slot(0);
        let (a1, i1) = virtio_mmio_slot(1);
        assert_eq!(a1 - a0, VIRTIO_MMIO_SIZE);
        assert_eq!((i0, i1), (5, 6));
        // Boot structures stay below the kernel and do not overlap each other.
        let ends = [
            (GDT_ADDR, 4 * 8),
            (ZERO_PAGE_ADDR, 4096),
            (PML4_ADDR, 4096),
            (PDPTE_ADDR, 4096),
            (PDE_ADDR, PDE_COUNT * 4096),
        ];
        for w in ends.windows(2) {
            assert!(w[0].0 + w[0].1 <= w[1].0);
        }
        const { assert!(PDE_ADDR + PDE_COUNT * 4096 <= CMDLINE_ADDR) };
        const { assert!(CMDLINE_ADDR + CMDLINE_MAX as u64 <= EBDA_START) };
    }
}
