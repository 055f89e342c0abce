//! virtio-blk backed by a file (the environment's root disk). Requests are served
//! synchronously in the vCPU thread that notified the queue.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::virtio_device::{read_config_bytes, ActiveQueues, VirtioDevice, VIRTIO_F_VERSION_1};
use super::VmmError;

pub const DEVICE_TYPE_BLOCK: u32 = 2;
const VIRTIO_BLK_F_RO: u64 = 1 << 5;
const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
const SECTOR_SIZE: u64 = 512;
const QUEUE_SIZE: u16 = 256;

pub const REQ_IN: u32 = 0;
pub const REQ_OUT: u32 = 1;
pub const REQ_FLUSH: u32 = 4;
pub const REQ_GET_ID: u32 = 8;
pub const STATUS_OK: u8 = 0;
pub const STATUS_IOERR: u8 = 1;
pub const STATUS_UNSUPP: u8 = 2;
const DEVICE_ID: &[u8] = b"berth-root";

pub struct VirtioBlock {
    file: File,
    sectors: u64,
    read_only: bool,
    active: Option<ActiveQueues>,
}

impl VirtioBlock {
    /// Opens `path` and takes an exclusive lock on it, so no second VM uses the same disk.
    pub fn open(path: &Path, read_only: bool) -> Result<Self, VmmError> {
        let disk_err = |reason: String| VmmError::Disk {
            path: path.to_path_buf(),
            reason,
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|e| disk_err(e.to_string()))?;
        // SAFETY: flock on a file descriptor we own; no memory is passed.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(disk_err(
                "it is in use by another VM (locked); stop that VM first".into(),
            ));
        }
        let len = file.metadata().map_err(|e| disk_err(e.to_string()))?.len();
        Ok(VirtioBlock {
            file,
            sectors: len / SECTOR_SIZE,
            read_only,
            active: None,
        })
    }

    fn process_queue(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mem = active.mem.clone();
        let queue = &mut active.queues[0];
        let mut used_any = false;
        while let Some(chain) = queue.pop_descriptor_chain(&mem) {
            let head = chain.head_index();
            let descs: Vec<_> = chain.collect();
            let written = serve_request(&self.file, self.sectors, self.read_only, &mem, &descs);
            if queue.add_used(&mem, head, written).is_err() {
                break;
            }
            used_any = true;
        }
        if used_any && notification_needed(queue, &mem) {
            active.interrupt.signal_used_queue();
        }
    }
}

pub(super) fn notification_needed(queue: &mut Queue, mem: &GuestMemoryMmap) -> bool {
    queue.needs_notification(mem).unwrap_or(true)
}

/// Serves one request; returns how many bytes were written into device-writable buffers.
fn serve_request(
    file: &File,
    sectors: u64,
    read_only: bool,
    mem: &GuestMemoryMmap,
    descs: &[virtio_queue::desc::split::Descriptor],
) -> u32 {
    let (Some(header), Some(status)) = (descs.first(), descs.last()) else {
        return 0;
    };
    if descs.len() < 2 || !status.is_write_only() || status.len() < 1 {
        return 0;
    }
    let data = &descs[1..descs.len() - 1];
    let mut hdr = [0u8; 16];
    if header.is_write_only()
        || header.len() < 16
        || mem.read_slice(&mut hdr, header.addr()).is_err()
    {
        return write_status(mem, status.addr(), STATUS_IOERR, 0);
    }
    let kind = u32::from_le_bytes(hdr[0..4].try_into().unwrap_or_default());
    let sector = u64::from_le_bytes(hdr[8..16].try_into().unwrap_or_default());
    let total: u64 = data.iter().map(|d| u64::from(d.len())).sum();
    let in_range = |total: u64| {
        sector
            .checked_mul(SECTOR_SIZE)
            .and_then(|start| start.checked_add(total))
            .is_some_and(|end| end <= sectors * SECTOR_SIZE)
    };
    match kind {
        REQ_IN => {
            if !in_range(total) || data.iter().any(|d| !d.is_write_only()) {
                return write_status(mem, status.addr(), STATUS_IOERR, 0);
            }
            let mut offset = sector * SECTOR_SIZE;
            for d in data {
                let mut buf = vec![0u8; d.len() as usize];
                if file.read_exact_at(&mut buf, offset).is_err()
                    || mem.write_slice(&buf, d.addr()).is_err()
                {
                    return write_status(mem, status.addr(), STATUS_IOERR, 0);
                }
                offset += u64::from(d.len());
            }
            write_status(mem, status.addr(), STATUS_OK, total as u32)
        }
        REQ_OUT => {
            if read_only || !in_range(total) || data.iter().any(|d| d.is_write_only()) {
                return write_status(mem, status.addr(), STATUS_IOERR, 0);
            }
            let mut offset = sector * SECTOR_SIZE;
            for d in data {
                let mut buf = vec![0u8; d.len() as usize];
                if mem.read_slice(&mut buf, d.addr()).is_err()
                    || file.write_all_at(&buf, offset).is_err()
                {
                    return write_status(mem, status.addr(), STATUS_IOERR, 0);
                }
                offset += u64::from(d.len());
            }
            write_status(mem, status.addr(), STATUS_OK, 0)
        }
        REQ_FLUSH => {
            let s = if file.sync_data().is_ok() {
                STATUS_OK
            } else {
                STATUS_IOERR
            };
            write_status(mem, status.addr(), s, 0)
        }
        REQ_GET_ID => {
            let Some(d) = data.first().filter(|d| d.is_write_only()) else {
                return write_status(mem, status.addr(), STATUS_IOERR, 0);
            };
            let n = (d.len() as usize).min(20).min(DEVICE_ID.len());
            if mem.write_slice(&DEVICE_ID[..n], d.addr()).is_err() {
                return write_status(mem, status.addr(), STATUS_IOERR, 0);
            }
            write_status(mem, status.addr(), STATUS_OK, n as u32)
        }
        _ => write_status(mem, status.addr(), STATUS_UNSUPP, 0),
    }
}

fn write_status(mem: &GuestMemoryMmap, at: GuestAddress, status: u8, data_len: u32) -> u32 {
    let _ = mem.write_obj(status, at);
    data_len + 1
}

impl VirtioDevice for VirtioBlock {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE_BLOCK
    }

    fn features(&self) -> u64 {
        let mut f = VIRTIO_F_VERSION_1 | VIRTIO_BLK_F_FLUSH;
        if self.read_only {
            f |= VIRTIO_BLK_F_RO;
        }
        f
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.sectors.to_le_bytes(), offset, data);
    }

    fn activate(&mut self, active: ActiveQueues) {
        self.active = Some(active);
    }

    fn queue_notify(&mut self, _index: u16) {
        self.process_queue();
    }

    fn reset(&mut self) {
        self.active = None;
    }
}
