//! Simulated guests for tests: a virtio driver for one split queue ([`Driver`]: registers
//! programmed through the bus interface, descriptors and rings written into guest memory), and
//! hand-assembled 16-bit guests under real KVM ([`machine`], safe on `kvm_pvm`: no Linux kernel
//! is booted). The crate's own tests use them, and (feature `test-guest`) the runtime's tests of
//! a device on berth's network.

use std::io::Write;
use std::sync::{Arc, Mutex};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::bus::BusDevice;
use crate::virtio_mmio::{MmioTransport, MAGIC_VALUE};
use crate::{DeviceConfig, GuestBoot, MachineConfig};

const NEXT: u16 = 1;
const WRITE: u16 = 2;

/// A guest driver for one split queue.
pub struct Driver {
    pub mem: GuestMemoryMmap,
    /// Guest addresses of the descriptor table and the available and used rings.
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    /// Queue size.
    pub size: u16,
    /// The next free descriptor (modulo `size`) and the driver's available index.
    pub next_desc: u16,
    pub avail_idx: u16,
}

impl Driver {
    pub fn reg_read(t: &mut MmioTransport, off: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    pub fn reg_write(t: &mut MmioTransport, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    /// Negotiates features and sets up `queues` queues at fixed addresses; returns one driver
    /// per queue.
    pub fn init(t: &mut MmioTransport, mem: &GuestMemoryMmap, queues: u16) -> Vec<Driver> {
        assert_eq!(Self::reg_read(t, 0), MAGIC_VALUE);
        assert_eq!(Self::reg_read(t, 4), 2);
        Self::reg_write(t, 0x70, 1 | 2);
        Self::reg_write(t, 0x14, 1);
        let hi = Self::reg_read(t, 0x10);
        assert_eq!(hi & 1, 1, "VIRTIO_F_VERSION_1 offered");
        Self::reg_write(t, 0x24, 1);
        Self::reg_write(t, 0x20, 1);
        Self::reg_write(t, 0x70, 1 | 2 | 8);
        assert_eq!(Self::reg_read(t, 0x70) & 8, 8, "FEATURES_OK kept");
        let mut drivers = Vec::new();
        for q in 0..queues {
            let base = 0x10000 + u64::from(q) * 0x4000;
            Self::reg_write(t, 0x30, u32::from(q));
            assert!(Self::reg_read(t, 0x34) >= 8);
            Self::reg_write(t, 0x38, 8);
            Self::reg_write(t, 0x80, base as u32);
            Self::reg_write(t, 0x84, 0);
            Self::reg_write(t, 0x90, (base + 0x1000) as u32);
            Self::reg_write(t, 0xa0, (base + 0x2000) as u32);
            Self::reg_write(t, 0x44, 1);
            drivers.push(Driver {
                mem: mem.clone(),
                desc: base,
                avail: base + 0x1000,
                used: base + 0x2000,
                size: 8,
                next_desc: 0,
                avail_idx: 0,
            });
        }
        Self::reg_write(t, 0x70, 1 | 2 | 8 | 4);
        assert!(t.is_active());
        drivers
    }

    /// Writes a chain of `(addr, len, device_writable)` buffers and makes it available.
    pub fn add_chain(&mut self, bufs: &[(u64, u32, bool)]) -> u16 {
        let head = self.next_desc;
        for (i, (addr, len, w)) in bufs.iter().enumerate() {
            let idx = self.next_desc % self.size;
            let mut flags = if *w { WRITE } else { 0 };
            let next = (idx + 1) % self.size;
            if i + 1 < bufs.len() {
                flags |= NEXT;
            }
            let at = self.desc + u64::from(idx) * 16;
            self.mem.write_obj(*addr, GuestAddress(at)).unwrap();
            self.mem.write_obj(*len, GuestAddress(at + 8)).unwrap();
            self.mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
            self.mem.write_obj(next, GuestAddress(at + 14)).unwrap();
            self.next_desc += 1;
        }
        let slot = self.avail + 4 + u64::from(self.avail_idx % self.size) * 2;
        self.mem
            .write_obj(head % self.size, GuestAddress(slot))
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem
            .write_obj(self.avail_idx, GuestAddress(self.avail + 2))
            .unwrap();
        head
    }

    pub fn used_idx(&self) -> u16 {
        self.mem.read_obj(GuestAddress(self.used + 2)).unwrap()
    }

    /// `(id, len)` of used element `n`.
    pub fn used_elem(&self, n: u16) -> (u32, u32) {
        let at = self.used + 4 + u64::from(n % self.size) * 8;
        (
            self.mem.read_obj(GuestAddress(at)).unwrap(),
            self.mem.read_obj(GuestAddress(at + 4)).unwrap(),
        )
    }
}

/// Console output collected for assertions.
#[derive(Clone, Default)]
pub struct Captured(pub Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub fn kvm_usable() -> bool {
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

pub const LOAD: u16 = 0x1000;
pub const MMIO_TEST_BASE: u64 = 0xd_0000;

pub fn machine(code: Vec<u8>, devices: Vec<DeviceConfig>) -> (MachineConfig, Captured) {
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
