//! ACPI tables for Linux guests of berth's VMM: RSDP → XSDT → FADT (hardware-reduced) → DSDT,
//! plus the MADT (one local APIC per vCPU, the IOAPIC). The DSDT declares each virtio-mmio
//! device as `LNRO0005` with its registers and interrupt, which is how kernels without
//! CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES (Debian's) find them; the MADT lets the kernel start
//! every vCPU.

use acpi_tables::aml;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;

use super::layout::MmioAnnouncement;
use super::layout::{SERIAL_IRQ, SERIAL_PORT_BASE};

/// Where the tables go: the BIOS area Linux scans for the RSDP (0xe0000-0xfffff).
pub const RSDP_ADDR: u64 = 0xe_0000;
const XSDT_ADDR: u64 = 0xe_0040;
const FADT_ADDR: u64 = 0xe_0100;
const MADT_ADDR: u64 = 0xe_0400;
const DSDT_ADDR: u64 = 0xe_1000;
const AREA_END: u64 = 0x10_0000;
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
pub const LAPIC_ADDR: u32 = 0xfee0_0000;

const OEM_ID: [u8; 6] = *b"BERTH ";
const OEM_TABLE: [u8; 8] = *b"BERTHVMM";

/// IA-PC boot architecture flags: 8042 present, no VGA, no CMOS RTC.
const IAPC_8042: u16 = 1 << 1;
const IAPC_NO_VGA: u16 = 1 << 2;
const IAPC_NO_CMOS_RTC: u16 = 1 << 5;

fn to_bytes(a: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    a.to_aml_bytes(&mut v);
    v
}

/// The DSDT's AML: COM1 and the virtio-mmio devices.
pub fn dsdt_aml(devices: &[MmioAnnouncement]) -> Vec<u8> {
    let mut out = Vec::new();
    let com1_hid = aml::EISAName::new("PNP0501");
    let com1_io = aml::IO::new(SERIAL_PORT_BASE, SERIAL_PORT_BASE, 1, 8);
    let com1_irq = aml::Interrupt::new(true, true, false, false, SERIAL_IRQ);
    let com1_crs = aml::ResourceTemplate::new(vec![&com1_io, &com1_irq]);
    // One statement, so the temporaries the device borrows live long enough.
    aml::Device::new(
        "_SB_.COM1".into(),
        vec![
            &aml::Name::new("_HID".into(), &com1_hid),
            &aml::Name::new("_UID".into(), &aml::ZERO),
            &aml::Name::new("_CRS".into(), &com1_crs),
        ],
    )
    .to_aml_bytes(&mut out);
    for (i, d) in devices.iter().enumerate() {
        let path = format!("_SB_.V{i:03X}");
        let uid = i as u32;
        let mem = aml::Memory32Fixed::new(true, d.base as u32, d.size as u32);
        let irq = aml::Interrupt::new(true, true, false, false, d.irq);
        let crs = aml::ResourceTemplate::new(vec![&mem, &irq]);
        aml::Device::new(
            path.as_str().into(),
            vec![
                &aml::Name::new("_HID".into(), &"LNRO0005"),
                &aml::Name::new("_UID".into(), &uid),
                &aml::Name::new("_CCA".into(), &aml::ONE),
                &aml::Name::new("_CRS".into(), &crs),
            ],
        )
        .to_aml_bytes(&mut out);
    }
    out
}

/// `(guest address, bytes)` of every table, and the RSDP address for the zero page.
pub fn build_tables(
    vcpus: u8,
    devices: &[MmioAnnouncement],
) -> Result<Vec<(u64, Vec<u8>)>, String> {
    let mut dsdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE, 1);
    dsdt.append_slice(&dsdt_aml(devices));

    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE, 1)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton)
        .dsdt_64(DSDT_ADDR);
    fadt.iapc_boot_arch = (IAPC_8042 | IAPC_NO_VGA | IAPC_NO_CMOS_RTC).into();
    let fadt = fadt.finalize();

    let mut madt = MADT::new(
        OEM_ID,
        OEM_TABLE,
        1,
        LocalInterruptController::Address(LAPIC_ADDR),
    );
    for cpu in 0..vcpus.max(1) {
        madt.add_structure(ProcessorLocalApic::new(cpu, cpu, EnabledStatus::Enabled));
    }
    madt.add_structure(IoApic::new(0, IOAPIC_ADDR, 0));

    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE, 1);
    xsdt.add_entry(FADT_ADDR);
    xsdt.add_entry(MADT_ADDR);
    let rsdp = Rsdp::new(OEM_ID, XSDT_ADDR);

    let tables = vec![
        (RSDP_ADDR, to_bytes(&rsdp)),
        (XSDT_ADDR, to_bytes(&xsdt)),
        (FADT_ADDR, to_bytes(&fadt)),
        (MADT_ADDR, to_bytes(&madt)),
        (DSDT_ADDR, to_bytes(&dsdt)),
    ];
    for w in tables.windows(2) {
        if w[0].0 + w[0].1.len() as u64 > w[1].0 {
            return Err(format!("ACPI table at {:#x} overlaps the next one", w[0].0));
        }
    }
    let (last, bytes) = tables
        .last()
        .map(|(a, b)| (*a, b.len() as u64))
        .unwrap_or_default();
    if last + bytes > AREA_END {
        return Err("too many devices for the ACPI area".into());
    }
    Ok(tables)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checksum_ok(b: &[u8]) -> bool {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x)) == 0
    }

    fn u32_at(b: &[u8], o: usize) -> u32 {
        u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
    }

    #[test]
    fn tables_link_and_checksum() {
        let devs = [
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
        ];
        let t = build_tables(2, &devs).unwrap();
        let get = |addr: u64| &t.iter().find(|(a, _)| *a == addr).unwrap().1;
        let rsdp = get(RSDP_ADDR);
        assert_eq!(&rsdp[0..8], b"RSD PTR ");
        assert!(checksum_ok(&rsdp[0..20]) && checksum_ok(rsdp));
        assert_eq!(
            u64::from_le_bytes(rsdp[24..32].try_into().unwrap()),
            XSDT_ADDR
        );
        let xsdt = get(XSDT_ADDR);
        assert_eq!(&xsdt[0..4], b"XSDT");
        assert!(checksum_ok(xsdt));
        assert_eq!(u32_at(xsdt, 4) as usize, xsdt.len());
        let entries: Vec<u64> = xsdt[36..]
            .chunks(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(entries, vec![FADT_ADDR, MADT_ADDR]);
        let fadt = get(FADT_ADDR);
        assert_eq!(&fadt[0..4], b"FACP");
        assert!(checksum_ok(fadt));
        // X_DSDT at offset 140, flags at 112 (HW_REDUCED_ACPI is bit 20).
        assert_eq!(
            u64::from_le_bytes(fadt[140..148].try_into().unwrap()),
            DSDT_ADDR
        );
        assert_ne!(u32_at(fadt, 112) & (1 << 20), 0);
        let madt = get(MADT_ADDR);
        assert_eq!(&madt[0..4], b"APIC");
        assert!(checksum_ok(madt));
        assert_eq!(u32_at(madt, 36), LAPIC_ADDR);
        // Two local APICs (type 0) and one IOAPIC (type 1).
        let mut types = Vec::new();
        let mut o = 44;
        while o < madt.len() {
            types.push(madt[o]);
            o += madt[o + 1] as usize;
        }
        assert_eq!(types, vec![0, 0, 1]);
        let dsdt = get(DSDT_ADDR);
        assert_eq!(&dsdt[0..4], b"DSDT");
        assert!(checksum_ok(dsdt));
        assert_eq!(u32_at(dsdt, 4) as usize, dsdt.len());
        let text = String::from_utf8_lossy(dsdt);
        assert_eq!(text.matches("LNRO0005").count(), 2);
        assert!(text.contains("V000") && text.contains("V001") && text.contains("COM1"));
    }

    #[test]
    fn many_devices_do_not_overflow_the_area() {
        let devs: Vec<MmioAnnouncement> = (0..32)
            .map(|i| MmioAnnouncement {
                base: 0xd000_0000 + i * 0x1000,
                size: 0x1000,
                irq: 5 + i as u32,
            })
            .collect();
        assert!(build_tables(8, &devs).is_ok());
    }

    #[test]
    fn iasl_disassembles_the_tables() {
        if std::process::Command::new("iasl")
            .arg("-v")
            .output()
            .is_err()
        {
            eprintln!("skipping: iasl (acpica-tools) is not installed");
            return;
        }
        let devs = [MmioAnnouncement {
            base: 0xd000_0000,
            size: 0x1000,
            irq: 5,
        }];
        let t = build_tables(1, &devs).unwrap();
        let dir = tempfile::tempdir().unwrap();
        for (addr, name) in [
            (DSDT_ADDR, "dsdt"),
            (MADT_ADDR, "apic"),
            (FADT_ADDR, "facp"),
        ] {
            let bin = dir.path().join(format!("{name}.dat"));
            std::fs::write(&bin, &t.iter().find(|(a, _)| *a == addr).unwrap().1).unwrap();
            let out = std::process::Command::new("iasl")
                .arg("-d")
                .arg(&bin)
                .current_dir(dir.path())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let dsl = std::fs::read_to_string(dir.path().join(format!("{name}.dsl"))).unwrap();
            assert!(!dsl.contains("Invalid"), "{dsl}");
            if name == "dsdt" {
                assert!(dsl.contains("\"LNRO0005\""), "{dsl}");
                assert!(dsl.contains("0xD0000000"), "{dsl}");
                assert!(dsl.contains("PNP0501"), "{dsl}");
            }
        }
    }
}
