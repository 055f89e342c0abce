//! Identity-mapped page tables for the 64-bit entry: one PML4 entry, one PDPT with
//! `PDE_COUNT` entries, each pointing at a page directory of 512 2-MiB pages.

use vm_memory::{Bytes, GuestAddress, GuestMemory};

use super::layout::{PDE_ADDR, PDE_COUNT, PDPTE_ADDR, PML4_ADDR};

const PRESENT_RW: u64 = 0x3;
const PAGE_SIZE_2M: u64 = 0x80;

/// The page-table entries, as `(guest address, value)` pairs, that identity-map the first
/// `PDE_COUNT` GiB.
pub fn identity_map_entries() -> Vec<(u64, u64)> {
    let mut out = Vec::with_capacity(1 + PDE_COUNT as usize * 513);
    out.push((PML4_ADDR, PDPTE_ADDR | PRESENT_RW));
    for d in 0..PDE_COUNT {
        let pd = PDE_ADDR + d * 0x1000;
        out.push((PDPTE_ADDR + d * 8, pd | PRESENT_RW));
        for i in 0..512u64 {
            let phys = (d << 30) | (i << 21);
            out.push((pd + i * 8, phys | PRESENT_RW | PAGE_SIZE_2M));
        }
    }
    out
}

/// Writes the tables into guest memory; returns the value for CR3.
pub fn write_identity_map<M: GuestMemory>(mem: &M) -> Result<u64, vm_memory::GuestMemoryError> {
    for (addr, value) in identity_map_entries() {
        mem.write_obj(value, GuestAddress(addr))?;
    }
    Ok(PML4_ADDR)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    /// Walks the tables like the MMU does for a 2 MiB page.
    fn translate(mem: &GuestMemoryMmap, cr3: u64, virt: u64) -> Option<u64> {
        let pml4e: u64 = mem
            .read_obj(GuestAddress(cr3 + ((virt >> 39) & 511) * 8))
            .ok()?;
        if pml4e & 1 == 0 {
            return None;
        }
        let pdpte: u64 = mem
            .read_obj(GuestAddress((pml4e & !0xfff) + ((virt >> 30) & 511) * 8))
            .ok()?;
        if pdpte & 1 == 0 {
            return None;
        }
        let pde: u64 = mem
            .read_obj(GuestAddress((pdpte & !0xfff) + ((virt >> 21) & 511) * 8))
            .ok()?;
        if pde & 1 == 0 || pde & PAGE_SIZE_2M == 0 {
            return None;
        }
        Some((pde & !0x1f_ffff) | (virt & 0x1f_ffff))
    }

    #[test]
    fn first_four_gib_are_identity_mapped() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x20000)]).unwrap();
        let cr3 = write_identity_map(&mem).unwrap();
        assert_eq!(cr3, PML4_ADDR);
        for virt in [
            0u64,
            0x1000,
            0x10_0000,
            0x1234_5678,
            0xd000_0000,
            0xffff_ffff,
        ] {
            assert_eq!(translate(&mem, cr3, virt), Some(virt), "{virt:#x}");
        }
        // Beyond 4 GiB nothing is mapped.
        assert_eq!(translate(&mem, cr3, 0x1_0000_0000), None);
    }
}
