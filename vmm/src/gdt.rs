//! The global descriptor table for the 64-bit entry: null, code, data and TSS descriptors, and
//! their translation into the segment registers KVM loads.

use kvm_bindings::kvm_segment;

/// Access/flag bits of a 64-bit code segment (present, ring 0, executable, readable; L set).
pub const CODE64_FLAGS: u16 = 0xa09b;
/// Access/flag bits of a data segment (present, ring 0, writable; 4 KiB granularity, 32-bit).
pub const DATA_FLAGS: u16 = 0xc093;
/// Access bits of a 32-bit busy TSS.
pub const TSS_FLAGS: u16 = 0x808b;

/// The four descriptors berth installs, in order (selectors 0x0, 0x8, 0x10, 0x18).
pub fn boot_gdt() -> [u64; 4] {
    [
        0,
        gdt_entry(CODE64_FLAGS, 0, 0xfffff),
        gdt_entry(DATA_FLAGS, 0, 0xfffff),
        gdt_entry(TSS_FLAGS, 0, 0xfffff),
    ]
}

/// Encodes one segment descriptor. `flags` holds the access byte in bits 0-7 and the
/// granularity/size/long flags in bits 12-15, as in the Linux sources' `GDT_ENTRY`.
pub fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let base = u64::from(base);
    let limit = u64::from(limit);
    let flags = u64::from(flags);
    ((base & 0xff00_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0xffff)
        | ((limit & 0xf_0000) << 32)
        | ((flags & 0xf0ff) << 40)
}

/// The segment register KVM should load for descriptor `entry` at GDT index `index`.
pub fn segment_from_entry(entry: u64, index: u16) -> kvm_segment {
    let granular = (entry >> 55) & 1 == 1;
    let raw_limit = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    kvm_segment {
        base: ((entry >> 16) & 0xff_ffff) | (((entry >> 56) & 0xff) << 24),
        limit: if granular {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector: index * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g: granular as u8,
        avl: ((entry >> 52) & 1) as u8,
        unusable: if (entry >> 47) & 1 == 1 { 0 } else { 1 },
        padding: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_segment_is_64_bit_ring0_present() {
        let gdt = boot_gdt();
        assert_eq!(gdt[0], 0);
        // The well-known encoding of a flat 64-bit kernel code segment.
        assert_eq!(gdt[1], 0x00af_9b00_0000_ffff);
        let cs = segment_from_entry(gdt[1], 1);
        assert_eq!(cs.selector, 0x8);
        assert_eq!(
            (cs.l, cs.db, cs.present, cs.dpl, cs.s, cs.g),
            (1, 0, 1, 0, 1, 1)
        );
        assert_eq!(cs.type_, 0xb);
        assert_eq!(cs.limit, 0xffff_ffff);
        assert_eq!(cs.base, 0);
        assert_eq!(cs.unusable, 0);
    }

    #[test]
    fn data_and_tss_segments() {
        let gdt = boot_gdt();
        assert_eq!(gdt[2], 0x00cf_9300_0000_ffff);
        let ds = segment_from_entry(gdt[2], 2);
        assert_eq!((ds.selector, ds.type_, ds.db, ds.l), (0x10, 0x3, 1, 0));
        let tss = segment_from_entry(gdt[3], 3);
        assert_eq!((tss.selector, tss.type_, tss.s, tss.g), (0x18, 0xb, 0, 1));
    }

    #[test]
    fn base_and_limit_round_trip() {
        let e = gdt_entry(0x0093, 0x1234_5678, 0xabcde);
        let s = segment_from_entry(e, 5);
        assert_eq!(s.base, 0x1234_5678);
        assert_eq!(s.limit, 0xabcde);
        assert_eq!(s.g, 0);
        let np = segment_from_entry(gdt_entry(0x0013, 0, 0), 1);
        assert_eq!(np.unusable, 1);
    }
}
