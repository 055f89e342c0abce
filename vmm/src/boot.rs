//! Direct Linux boot: loads an ELF `vmlinux` or a `bzImage` with linux-loader, places the
//! command line (with the virtio-mmio device announcements) and the initramfs, and writes the
//! zero page, GDT and page tables the 64-bit entry needs.

use std::fs::File;
use std::path::{Path, PathBuf};

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::{BzImage, Elf, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::acpi::{build_tables, RSDP_ADDR};
use super::boot_params::{build_boot_params, BootLocations};
use super::gdt::boot_gdt;
use super::layout::{
    MmioAnnouncement, CMDLINE_ADDR, CMDLINE_MAX, GDT_ADDR, HIMEM_START, IDT_ADDR, MMIO_GAP_START,
    ZERO_PAGE_ADDR,
};
use super::paging::write_identity_map;
use super::VmmError;

/// Offset of the 64-bit entry point (`startup_64`) from the start of a bzImage's protected-mode
/// kernel.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// Highest initramfs end when the kernel does not say (the boot protocol's old default).
const DEFAULT_INITRD_ADDR_MAX: u64 = 0x37ff_ffff;

/// The kernel command line: the user's part followed by one `virtio_mmio.device=` per device.
pub fn build_cmdline(base: &str, devices: &[MmioAnnouncement]) -> Result<Cmdline, VmmError> {
    let bad = |e: linux_loader::cmdline::Error| VmmError::Cmdline(e.to_string());
    let mut cmdline = Cmdline::new(CMDLINE_MAX).map_err(bad)?;
    if !base.trim().is_empty() {
        cmdline.insert_str(base.trim()).map_err(bad)?;
    }
    for d in devices {
        cmdline
            .add_virtio_mmio_device(d.size, GuestAddress(d.base), d.irq, None)
            .map_err(bad)?;
    }
    Ok(cmdline)
}

/// Where the boot CPU starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootEntry {
    pub rip: u64,
    pub cr3: u64,
    pub zero_page: u64,
}

/// Everything needed to boot a Linux kernel.
#[derive(Debug, Clone)]
pub struct LinuxBoot {
    pub kernel: PathBuf,
    pub initramfs: Option<PathBuf>,
    /// Command line without the device announcements (berth adds those).
    pub cmdline: String,
    /// Describe the devices and vCPUs in ACPI tables (DSDT/MADT); otherwise announce the
    /// virtio-mmio devices on the command line (needs CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES and
    /// gives the guest one CPU).
    pub acpi: bool,
}

/// Loads kernel, initramfs and command line into `mem` and writes the boot structures.
pub fn load_linux(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    boot: &LinuxBoot,
    devices: &[MmioAnnouncement],
    vcpus: u8,
) -> Result<BootEntry, VmmError> {
    let (rip, header) = load_kernel(mem, &boot.kernel)?;
    let cmdline_devices = if boot.acpi { &[][..] } else { devices };
    let cmdline = build_cmdline(&boot.cmdline, cmdline_devices)?;
    let mut rsdp = 0;
    if boot.acpi {
        for (addr, bytes) in build_tables(vcpus, devices).map_err(VmmError::Boot)? {
            mem.write_slice(&bytes, GuestAddress(addr))
                .map_err(|e| VmmError::Boot(format!("cannot write ACPI tables: {e}")))?;
        }
        rsdp = RSDP_ADDR;
    }
    linux_loader::loader::load_cmdline(mem, GuestAddress(CMDLINE_ADDR), &cmdline)
        .map_err(|e| VmmError::Cmdline(e.to_string()))?;
    let cmdline_len = cmdline
        .as_cstring()
        .map_err(|e| VmmError::Cmdline(e.to_string()))?
        .as_bytes()
        .len() as u32;
    let initrd = match &boot.initramfs {
        Some(path) => {
            let addr_max = header
                .map(|h| u64::from(h.initrd_addr_max))
                .filter(|&m| m != 0)
                .unwrap_or(DEFAULT_INITRD_ADDR_MAX);
            Some(load_initramfs(mem, mem_size, addr_max, path)?)
        }
        None => None,
    };
    let params = build_boot_params(
        header,
        mem_size,
        BootLocations {
            cmdline_addr: CMDLINE_ADDR,
            cmdline_len,
            initrd,
        },
    )
    .map_err(|e| VmmError::Boot(e.to_string()))?;
    let mut params = params;
    params.acpi_rsdp_addr = rsdp;
    mem.write_obj(params, GuestAddress(ZERO_PAGE_ADDR))
        .map_err(|e| VmmError::Boot(format!("cannot write the zero page: {e}")))?;
    let cr3 = write_boot_tables(mem)?;
    Ok(BootEntry {
        rip,
        cr3,
        zero_page: ZERO_PAGE_ADDR,
    })
}

/// Writes the GDT, an empty IDT and the identity page tables; returns CR3.
pub fn write_boot_tables(mem: &GuestMemoryMmap) -> Result<u64, VmmError> {
    let bad =
        |e: vm_memory::GuestMemoryError| VmmError::Boot(format!("cannot write boot tables: {e}"));
    for (i, entry) in boot_gdt().iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(GDT_ADDR + i as u64 * 8))
            .map_err(bad)?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_ADDR)).map_err(bad)?;
    write_identity_map(mem).map_err(bad)
}

fn load_kernel(
    mem: &GuestMemoryMmap,
    path: &Path,
) -> Result<(u64, Option<linux_loader::loader::bootparam::setup_header>), VmmError> {
    let open = || {
        File::open(path).map_err(|e| VmmError::Kernel {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    };
    let mut f = open()?;
    let mut magic = [0u8; 4];
    let is_elf = std::io::Read::read_exact(&mut f, &mut magic).is_ok() && magic == *b"\x7fELF";
    if is_elf {
        let r = Elf::load(mem, None, &mut f, Some(GuestAddress(HIMEM_START))).map_err(|e| {
            VmmError::Kernel {
                path: path.to_path_buf(),
                reason: format!("not a loadable vmlinux: {e}"),
            }
        })?;
        return Ok((r.kernel_load.0, None));
    }
    let mut f = open()?;
    let r = BzImage::load(mem, None, &mut f, Some(GuestAddress(HIMEM_START))).map_err(|e| {
        VmmError::Kernel {
            path: path.to_path_buf(),
            reason: format!("neither an ELF vmlinux nor a bzImage: {e}"),
        }
    })?;
    Ok((r.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET, r.setup_header))
}

/// Places the initramfs as high as allowed in low memory, page aligned.
fn load_initramfs(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    addr_max: u64,
    path: &Path,
) -> Result<(u64, u32), VmmError> {
    let data = std::fs::read(path).map_err(|e| VmmError::Kernel {
        path: path.to_path_buf(),
        reason: format!("cannot read the initramfs: {e}"),
    })?;
    let addr = initramfs_address(mem_size, addr_max, data.len() as u64).ok_or_else(|| {
        VmmError::Kernel {
            path: path.to_path_buf(),
            reason: format!(
                "the initramfs ({} bytes) does not fit in guest memory; give the VM more memory",
                data.len()
            ),
        }
    })?;
    mem.write_slice(&data, GuestAddress(addr))
        .map_err(|e| VmmError::Boot(format!("cannot write the initramfs: {e}")))?;
    Ok((addr, data.len() as u32))
}

/// Highest page-aligned address where `size` bytes end at or below both the end of low RAM and
/// `addr_max`, or `None` when it would collide with the kernel area.
pub fn initramfs_address(mem_size: u64, addr_max: u64, size: u64) -> Option<u64> {
    let top = mem_size.min(MMIO_GAP_START).min(addr_max.saturating_add(1));
    let addr = top.checked_sub(size)? & !0xfff;
    // Leave the first 16 MiB to the kernel image and its decompression.
    (addr >= HIMEM_START + (15 << 20) && size <= u64::from(u32::MAX)).then_some(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_announces_devices() {
        let c = build_cmdline(
            "console=ttyS0 reboot=k panic=1",
            &[
                MmioAnnouncement {
                    base: 0xd000_0000,
                    size: 0x1000,
                    irq: 5,
                },
                MmioAnnouncement {
                    base: 0xd000_1000,
                    size: 0x1000,
                    irq: 6,
                },
            ],
        )
        .unwrap();
        assert_eq!(
            c.as_cstring().unwrap().to_str().unwrap(),
            "console=ttyS0 reboot=k panic=1 virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6"
        );
    }

    #[test]
    fn cmdline_too_long_is_an_error() {
        let long = "x".repeat(CMDLINE_MAX + 1);
        assert!(matches!(
            build_cmdline(&long, &[]),
            Err(VmmError::Cmdline(_))
        ));
    }

    #[test]
    fn initramfs_goes_high_and_aligned() {
        let a = initramfs_address(256 << 20, DEFAULT_INITRD_ADDR_MAX, 5000).unwrap();
        assert_eq!(a % 4096, 0);
        assert!(a + 5000 <= 256 << 20);
        assert_eq!((256 << 20) - a, 2 * 4096);
        // Capped by the kernel's initrd_addr_max.
        let b = initramfs_address(2 << 30, 0x3fff_ffff, 4096).unwrap();
        assert_eq!(b, 0x4000_0000 - 4096);
        // Too big for the memory.
        assert_eq!(
            initramfs_address(32 << 20, DEFAULT_INITRD_ADDR_MAX, 30 << 20),
            None
        );
    }

    #[test]
    fn loads_boot_tables_and_rejects_garbage_kernel() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
        assert_eq!(
            write_boot_tables(&mem).unwrap(),
            super::super::layout::PML4_ADDR
        );
        let gdt1: u64 = mem.read_obj(GuestAddress(GDT_ADDR + 8)).unwrap();
        assert_eq!(gdt1, 0x00af_9b00_0000_ffff);
        let dir = tempfile::tempdir().unwrap();
        let k = dir.path().join("vmlinux");
        std::fs::write(&k, b"definitely not a kernel").unwrap();
        let err = load_linux(
            &mem,
            64 << 20,
            &LinuxBoot {
                kernel: k,
                initramfs: None,
                cmdline: String::new(),
                acpi: true,
            },
            &[],
            1,
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("neither an ELF vmlinux nor a bzImage"),
            "{err}"
        );
    }
}
