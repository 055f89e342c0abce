//! The zero page (`struct boot_params`) handed to the kernel in RSI: the setup header, the
//! command line and initramfs location, and the e820 memory map.

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};

use super::layout::{EBDA_START, HIMEM_START, MMIO_GAP_END, MMIO_GAP_START};

pub const E820_RAM: u32 = 1;
pub const E820_RESERVED: u32 = 2;

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x0100_0000;

/// One e820 range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Range {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// The e820 map of a guest with `mem_size` bytes: low RAM below the EBDA, RAM from 1 MiB up to
/// the MMIO gap, and the rest of the memory above 4 GiB.
pub fn e820_map(mem_size: u64) -> Vec<E820Range> {
    let mut map = vec![E820Range {
        addr: 0,
        size: EBDA_START,
        kind: E820_RAM,
    }];
    let low_end = mem_size.min(MMIO_GAP_START);
    if low_end > HIMEM_START {
        map.push(E820Range {
            addr: HIMEM_START,
            size: low_end - HIMEM_START,
            kind: E820_RAM,
        });
    }
    if mem_size > MMIO_GAP_START {
        map.push(E820Range {
            addr: MMIO_GAP_END,
            size: mem_size - MMIO_GAP_START,
            kind: E820_RAM,
        });
    }
    map
}

/// Where the command line and initramfs sit in guest memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BootLocations {
    pub cmdline_addr: u64,
    /// Length of the command line without its NUL.
    pub cmdline_len: u32,
    /// `(address, size)` of the initramfs.
    pub initrd: Option<(u64, u32)>,
}

/// Builds the zero page. `header` is the bzImage's own setup header when there is one.
pub fn build_boot_params(
    header: Option<setup_header>,
    mem_size: u64,
    at: BootLocations,
) -> Result<boot_params, &'static str> {
    let mut params = boot_params::default();
    if let Some(h) = header {
        params.hdr = h;
    } else {
        params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
        params.hdr.header = KERNEL_HDR_MAGIC;
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.cmd_line_ptr =
        u32::try_from(at.cmdline_addr).map_err(|_| "command line above 4 GiB")?;
    params.hdr.cmdline_size = at.cmdline_len;
    if let Some((addr, size)) = at.initrd {
        params.hdr.ramdisk_image = u32::try_from(addr).map_err(|_| "initramfs above 4 GiB")?;
        params.hdr.ramdisk_size = size;
    }
    let map = e820_map(mem_size);
    if map.len() > params.e820_table.len() {
        return Err("too many e820 entries");
    }
    for (slot, r) in params.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr: r.addr,
            size: r.size,
            r#type: r.kind,
        };
    }
    params.e820_entries = map.len() as u8;
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e820_for_small_guest() {
        let map = e820_map(128 << 20);
        assert_eq!(
            map,
            vec![
                E820Range {
                    addr: 0,
                    size: 0x9fc00,
                    kind: E820_RAM
                },
                E820Range {
                    addr: 0x10_0000,
                    size: (128 << 20) - 0x10_0000,
                    kind: E820_RAM
                },
            ]
        );
    }

    #[test]
    fn e820_for_large_guest_has_hole() {
        let map = e820_map(5 << 30);
        assert_eq!(map.len(), 3);
        assert_eq!(map[1].addr + map[1].size, MMIO_GAP_START);
        assert_eq!(map[2].addr, 1 << 32);
        let ram: u64 = map.iter().map(|r| r.size).sum();
        // All memory but the legacy hole between the EBDA and 1 MiB.
        assert_eq!(ram, (5 << 30) - (HIMEM_START - EBDA_START));
        // No range overlaps the MMIO gap.
        for r in &map {
            assert!(r.addr + r.size <= MMIO_GAP_START || r.addr >= MMIO_GAP_END);
        }
    }

    #[test]
    fn zero_page_fields() {
        let p = build_boot_params(
            None,
            64 << 20,
            BootLocations {
                cmdline_addr: 0x20000,
                cmdline_len: 12,
                initrd: Some((0x300_0000, 4096)),
            },
        )
        .unwrap();
        let hdr = p.hdr;
        assert_eq!({ hdr.boot_flag }, 0xaa55);
        assert_eq!({ hdr.header }, 0x5372_6448);
        assert_eq!({ hdr.type_of_loader }, 0xff);
        assert_eq!({ hdr.cmd_line_ptr }, 0x20000);
        assert_eq!({ hdr.cmdline_size }, 12);
        assert_eq!({ hdr.ramdisk_image }, 0x300_0000);
        assert_eq!({ hdr.ramdisk_size }, 4096);
        assert_eq!(p.e820_entries, 2);
        let e1 = p.e820_table[1];
        assert_eq!(
            ({ e1.addr }, { e1.size }, { e1.r#type }),
            (0x10_0000, (64 << 20) - 0x10_0000, 1)
        );
    }

    #[test]
    fn bzimage_header_is_kept() {
        let h = setup_header {
            version: 0x20f,
            initrd_addr_max: 0x7fff_ffff,
            ..Default::default()
        };
        let p = build_boot_params(Some(h), 64 << 20, BootLocations::default()).unwrap();
        let hdr = p.hdr;
        assert_eq!({ hdr.version }, 0x20f);
        assert_eq!({ hdr.initrd_addr_max }, 0x7fff_ffff);
        assert_eq!({ hdr.type_of_loader }, 0xff);
    }
}
