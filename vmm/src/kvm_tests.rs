//! The VMM core under real KVM with hand-assembled 16-bit guests (safe on `kvm_pvm`: no Linux
//! kernel is booted). Skipped, with the reason printed, when /dev/kvm is not usable.

use super::test_guest::{kvm_usable, machine};
use super::{DeviceConfig, ExitReason, Machine};

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
fn a_guest_that_cannot_take_an_exception_stops_naming_where_it_was() {
    if !kvm_usable() {
        return;
    }
    // An empty interrupt table: the breakpoint cannot be delivered, nor the #GP that
    // follows, nor the double fault after it.
    let code = vec![
        0x0f, 0x01, 0x1e, 0x08, 0x10, // lidt [0x1008]: limit 0, base 0 (stored below)
        0xcc, // int3 at code offset 5
        0xf4, // hlt (never reached)
        0x90, // padding
        0, 0, 0, 0, 0, 0, // at 0x1008: the table's limit and base
    ];
    let (cfg, _) = machine(code, vec![]);
    let reason = Machine::create(cfg).unwrap().run().unwrap();
    // KVM reports it as a shutdown exit; this host's kvm_pvm, which emulates real mode, as
    // an internal error. Either way the reason says where the guest was.
    let state = match reason {
        ExitReason::Shutdown(state) => state,
        ExitReason::Error(e) if e.contains("InternalError") => e,
        other => panic!("expected a triple fault, got {other:?}"),
    };
    // The empty table the guest loaded shows: these are its registers.
    assert!(
        state.contains("rip=") && state.contains("idt=0x0+0x0"),
        "{state}"
    );
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
