//! The VMM core under real KVM with hand-assembled 16-bit guests (safe on `kvm_pvm`: no Linux
//! kernel is booted). Skipped, with the reason printed, when /dev/kvm is not usable.

use std::io::Write;
use std::sync::{Arc, Mutex};

use super::{DeviceConfig, ExitReason, GuestBoot, Machine, MachineConfig};

/// Console output collected for assertions.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn kvm_usable() -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => true,
        Err(e) => {
            eprintln!("skipping: /dev/kvm is not usable here ({e})");
            false
        }
    }
}

const LOAD: u16 = 0x1000;
const MMIO_TEST_BASE: u64 = 0xd_0000;

fn machine(code: Vec<u8>, devices: Vec<DeviceConfig>) -> (MachineConfig, Captured) {
    let out = Captured::default();
    let mut cfg = MachineConfig::new(
        0x10000,
        GuestBoot::RealMode {
            code,
            load_addr: LOAD,
        },
        Box::new(out.clone()),
    );
    cfg.irqchip = false;
    cfg.devices = devices;
    cfg.mmio_base = MMIO_TEST_BASE;
    (cfg, out)
}

#[test]
fn serial_output_then_hlt_stops_the_vm() {
    if !kvm_usable() {
        return;
    }
    let code = vec![
        0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xb0, b'H', // mov al, 'H'
        0xee, // out dx, al
        0xb0, b'i', // mov al, 'i'
        0xee, // out dx, al
        0xf4, // hlt
    ];
    let (cfg, out) = machine(code, vec![]);
    let reason = Machine::create(cfg).unwrap().run().unwrap();
    assert_eq!(reason, ExitReason::Halted);
    assert_eq!(&*out.0.lock().unwrap(), b"Hi");
}

#[test]
fn virtio_mmio_magic_value_read_by_guest() {
    if !kvm_usable() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.img");
    std::fs::write(&disk, [0u8; 4096]).unwrap();
    let mut code = vec![
        0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xb8, 0x00, 0xd0, // mov ax, 0xd000
        0x8e, 0xd8, // mov ds, ax
        0x66, 0xa1, 0x00, 0x00, // mov eax, [0]  (MagicValue, 32-bit MMIO read)
    ];
    // Send the four bytes of the value to the serial port, lowest first.
    for _ in 0..3 {
        code.extend_from_slice(&[0xee, 0x66, 0xc1, 0xe8, 0x08]); // out dx, al; shr eax, 8
    }
    code.extend_from_slice(&[0xee, 0xf4]); // out dx, al; hlt
    let (cfg, out) = machine(
        code,
        vec![DeviceConfig::Block {
            path: disk,
            read_only: true,
        }],
    );
    let reason = Machine::create(cfg).unwrap().run().unwrap();
    assert_eq!(reason, ExitReason::Halted);
    // 0x74726976 little-endian is "virt".
    assert_eq!(&*out.0.lock().unwrap(), b"virt");
}

#[test]
fn i8042_reset_is_a_clean_exit() {
    if !kvm_usable() {
        return;
    }
    let code = vec![
        0xb0, 0xfe, // mov al, 0xfe
        0xe6, 0x64, // out 0x64, al
        0xf4, // hlt (never reached)
    ];
    let (cfg, _) = machine(code, vec![]);
    let reason = Machine::create(cfg).unwrap().run().unwrap();
    assert_eq!(reason, ExitReason::Reset);
}

#[test]
fn irqchip_pit_and_irqfds_with_serial_and_reset() {
    if !kvm_usable() {
        return;
    }
    // With the in-kernel irqchip HLT no longer exits, so the guest resets instead.
    let code = vec![
        0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xb0, b'o', // mov al, 'o'
        0xee, // out dx, al
        0xb0, b'k', // mov al, 'k'
        0xee, // out dx, al
        0xb0, 0xfe, // mov al, 0xfe
        0xe6, 0x64, // out 0x64, al
        0xf4, // hlt
    ];
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.img");
    std::fs::write(&disk, [0u8; 4096]).unwrap();
    let (mut cfg, out) = machine(
        code,
        vec![
            DeviceConfig::Block {
                path: disk,
                read_only: false,
            },
            DeviceConfig::Console {
                socket: dir.path().join("control.sock"),
            },
            DeviceConfig::Vsock {
                cid: 3,
                uds: dir.path().join("vsock.sock"),
            },
        ],
    );
    cfg.irqchip = true;
    let reason = Machine::create(cfg).unwrap().run().unwrap();
    assert_eq!(reason, ExitReason::Reset);
    assert_eq!(&*out.0.lock().unwrap(), b"ok");
}

#[test]
fn net_device_on_a_bridged_tap_is_seen_by_the_guest() {
    use crate::net::network::{master_of, test_network, DetachOnDrop};
    if !kvm_usable() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let home = crate::state::BerthHome::at(dir.path()).unwrap();
    let Some(net) = test_network(&home, "k") else {
        return;
    };
    let id = "vmnet-kvm";
    let _cleanup = DetachOnDrop {
        net: &net,
        env_id: id,
    };
    let t = net.plumb_tap(id).unwrap();
    let bridge = net.options().bridge.name.clone();
    assert_eq!(master_of(&t.tap).as_deref(), Some(bridge.as_str()));
    let mut code = vec![
        0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xb8, 0x00, 0xd0, // mov ax, 0xd000
        0x8e, 0xd8, // mov ds, ax
        0x66, 0xa1, 0x08, 0x00, // mov eax, [8]  (DeviceID)
    ];
    for _ in 0..3 {
        code.extend_from_slice(&[0xee, 0x66, 0xc1, 0xe8, 0x08]); // out dx, al; shr eax, 8
    }
    code.extend_from_slice(&[0xee, 0xf4]); // out dx, al; hlt
    let (cfg, out) = machine(
        code,
        vec![DeviceConfig::Net {
            tap: t.tap.clone(),
            mac: crate::net::tap::guest_mac(id),
        }],
    );
    let reason = Machine::create(cfg).unwrap().run().unwrap();
    assert_eq!(reason, ExitReason::Halted);
    assert_eq!(
        &*out.0.lock().unwrap(),
        &[1, 0, 0, 0],
        "virtio device id 1 = network"
    );
    // The persistent tap stays on the bridge after the VMM let go, until detach.
    assert_eq!(master_of(&t.tap).as_deref(), Some(bridge.as_str()));
    net.detach(id).unwrap();
    let mut nl = crate::net::netlink::Netlink::open().unwrap();
    assert_eq!(nl.link_index(&t.tap).unwrap(), None);
    assert_eq!(nl.link_index(&bridge).unwrap(), None);
}
