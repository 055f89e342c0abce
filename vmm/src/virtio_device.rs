//! What a virtio device model implements, independent of the transport, and the interrupt it
//! raises when it has used buffers.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

use super::irq::IrqLine;

/// `VIRTIO_F_VERSION_1`: berth's devices speak only modern virtio.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

pub const INT_USED_RING: u32 = 1;
pub const INT_CONFIG: u32 = 2;

/// The interrupt of one virtio-mmio device: the InterruptStatus bits and the line, and
/// whether the device found the driver's queues broken (DEVICE_NEEDS_RESET).
#[derive(Clone)]
pub struct VirtioInterrupt {
    status: Arc<AtomicU32>,
    needs_reset: Arc<AtomicBool>,
    line: IrqLine,
}

impl VirtioInterrupt {
    pub fn new(line: IrqLine) -> Self {
        VirtioInterrupt {
            status: Arc::new(AtomicU32::new(0)),
            needs_reset: Arc::new(AtomicBool::new(false)),
            line,
        }
    }

    /// The device cannot go on with what the driver gave it (a malformed descriptor chain):
    /// the transport reports DEVICE_NEEDS_RESET and a configuration-change interrupt tells
    /// the driver, which must reset the device.
    pub fn signal_needs_reset(&self) {
        self.needs_reset.store(true, Ordering::SeqCst);
        self.status.fetch_or(INT_CONFIG, Ordering::SeqCst);
        self.line.trigger();
    }

    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::SeqCst)
    }

    /// A device reset clears the error state.
    pub fn clear_needs_reset(&self) {
        self.needs_reset.store(false, Ordering::SeqCst);
    }

    pub fn signal_used_queue(&self) {
        self.status.fetch_or(INT_USED_RING, Ordering::SeqCst);
        self.line.trigger();
    }

    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }
}

/// Handed to a device when the driver sets DRIVER_OK.
pub struct ActiveQueues {
    pub mem: GuestMemoryMmap,
    pub queues: Vec<Queue>,
    pub interrupt: VirtioInterrupt,
}

pub trait VirtioDevice: Send {
    /// Virtio device id (1 = network, 2 = block, 3 = console, 19 = vsock).
    fn device_type(&self) -> u32;
    /// Offered feature bits (include `VIRTIO_F_VERSION_1`).
    fn features(&self) -> u64;
    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> Vec<u16>;
    /// Reads the device-specific configuration space.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// The driver is ready: take the queues.
    fn activate(&mut self, active: ActiveQueues);
    /// The driver put buffers into queue `index`.
    fn queue_notify(&mut self, index: u16);
    /// The driver reset the device: drop the queues.
    fn reset(&mut self);
}

/// Copies `src` (the config space) at `offset` into `data`; reads past the end give zeros.
pub fn read_config_bytes(src: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(off) = usize::try_from(offset) else {
        return;
    };
    if off < src.len() {
        let n = data.len().min(src.len() - off);
        data[..n].copy_from_slice(&src[off..off + n]);
    }
}
