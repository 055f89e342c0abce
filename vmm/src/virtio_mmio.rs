//! The virtio-mmio transport (version 2): the register block the guest driver programs to
//! negotiate features, set up queues and notify the device.

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::bus::BusDevice;
use super::virtio_device::{ActiveQueues, VirtioDevice, VirtioInterrupt};

pub const MAGIC_VALUE: u32 = 0x7472_6976; // "virt"
const VENDOR_ID: u32 = 0x4854_5242; // "BRTH"

const STATUS_ACKNOWLEDGE: u32 = 1;
const STATUS_DRIVER: u32 = 2;
const STATUS_DRIVER_OK: u32 = 4;
const STATUS_FEATURES_OK: u32 = 8;
/// Set by the device when it hit an unrecoverable error in what the driver gave it.
pub const STATUS_DEVICE_NEEDS_RESET: u32 = 0x40;
const STATUS_FAILED: u32 = 0x80;

mod reg {
    pub const MAGIC: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    pub const CONFIG: u64 = 0x100;
}

pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    interrupt: VirtioInterrupt,
    queues: Vec<Queue>,
    queue_sel: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    status: u32,
    active: bool,
}

impl MmioTransport {
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        interrupt: VirtioInterrupt,
    ) -> Self {
        let queues = new_queues(device.as_ref());
        MmioTransport {
            device,
            mem,
            interrupt,
            queues,
            queue_sel: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            status: 0,
            active: false,
        }
    }

    pub fn is_active(&self) -> bool {
        self.active
    }

    fn selected(&mut self) -> Option<&mut Queue> {
        // Queues cannot be changed once the driver said DRIVER_OK.
        if self.active {
            return None;
        }
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn reset(&mut self) {
        if self.active {
            self.device.reset();
        }
        self.active = false;
        self.queues = new_queues(self.device.as_ref());
        self.status = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        self.interrupt.ack(u32::MAX);
        self.interrupt.clear_needs_reset();
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        self.status = value;
        if value & STATUS_FEATURES_OK != 0 && self.driver_features & !self.device.features() != 0 {
            // The driver accepted features the device never offered.
            self.status &= !STATUS_FEATURES_OK;
        }
        let ready = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK;
        if !self.active && value & ready == ready && value & STATUS_FAILED == 0 {
            let valid = self
                .queues
                .iter()
                .all(|q| !q.ready() || q.is_valid(&self.mem));
            if !valid {
                self.status |= STATUS_FAILED;
                return;
            }
            self.active = true;
            self.device.activate(ActiveQueues {
                mem: self.mem.clone(),
                queues: std::mem::take(&mut self.queues),
                interrupt: self.interrupt.clone(),
            });
        }
    }

    fn read_register(&self, offset: u64) -> u32 {
        let q = self.queues.get(self.queue_sel as usize);
        match offset {
            reg::MAGIC => MAGIC_VALUE,
            reg::VERSION => 2,
            reg::DEVICE_ID => self.device.device_type(),
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device.features() as u32,
                1 => (self.device.features() >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => q.map_or(0, |q| u32::from(q.max_size())),
            reg::QUEUE_READY => q.map_or(0, |q| u32::from(q.ready())),
            reg::INTERRUPT_STATUS => self.interrupt.status(),
            reg::STATUS if self.interrupt.needs_reset() => self.status | STATUS_DEVICE_NEEDS_RESET,
            reg::STATUS => self.status,
            reg::CONFIG_GENERATION => 0,
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u64, v: u32) {
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = v,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            reg::DRIVER_FEATURES => match self.driver_features_sel {
                0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v),
                1 => {
                    self.driver_features =
                        (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32)
                }
                _ => {}
            },
            reg::QUEUE_SEL => self.queue_sel = v,
            reg::QUEUE_NUM => {
                if let Some(q) = self.selected() {
                    q.set_size(v as u16);
                }
            }
            reg::QUEUE_READY => {
                if let Some(q) = self.selected() {
                    q.set_ready(v == 1);
                }
            }
            reg::QUEUE_DESC_LOW => self.with_queue(|q| q.set_desc_table_address(Some(v), None)),
            reg::QUEUE_DESC_HIGH => self.with_queue(|q| q.set_desc_table_address(None, Some(v))),
            reg::QUEUE_DRIVER_LOW => self.with_queue(|q| q.set_avail_ring_address(Some(v), None)),
            reg::QUEUE_DRIVER_HIGH => self.with_queue(|q| q.set_avail_ring_address(None, Some(v))),
            reg::QUEUE_DEVICE_LOW => self.with_queue(|q| q.set_used_ring_address(Some(v), None)),
            reg::QUEUE_DEVICE_HIGH => self.with_queue(|q| q.set_used_ring_address(None, Some(v))),
            reg::QUEUE_NOTIFY if self.active => self.device.queue_notify(v as u16),
            reg::INTERRUPT_ACK => self.interrupt.ack(v),
            reg::STATUS => self.set_status(v),
            _ => {}
        }
    }

    fn with_queue(&mut self, f: impl FnOnce(&mut Queue)) {
        if let Some(q) = self.selected() {
            f(q);
        }
    }
}

fn new_queues(device: &dyn VirtioDevice) -> Vec<Queue> {
    device
        .queue_max_sizes()
        .into_iter()
        .filter_map(|max| Queue::new(max).ok())
        .collect()
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= reg::CONFIG {
            self.device.read_config(offset - reg::CONFIG, data);
        } else if data.len() == 4 {
            data.copy_from_slice(&self.read_register(offset).to_le_bytes());
        } else {
            data.fill(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= reg::CONFIG {
            // Writable configuration is not needed by berth's devices.
            return;
        }
        if let Ok(b) = <[u8; 4]>::try_from(data) {
            self.write_register(offset, u32::from_le_bytes(b));
        }
    }
}
