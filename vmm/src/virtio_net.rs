//! virtio-net backed by a tap interface on the host (see [`crate::tap_device`]).
//!
//! Features: `VIRTIO_F_VERSION_1`, `VIRTIO_NET_F_MAC` and `VIRTIO_NET_F_MTU` (the tap's MTU,
//! read when the device opens it: berth's bridge ports have 65535, so a VM on the bridge
//! neither pulls the bridge's MTU down nor has its large frames dropped; a guest driver
//! given an MTU above 1500 posts receive buffers large enough for it). No checksum or
//! segmentation offloads and no mergeable receive buffers, so every frame travels whole,
//! fully checksummed, behind a 12-byte `virtio_net_hdr_v1` that carries nothing but
//! `num_buffers = 1` (receive) and is ignored (transmit). The tap has no vnet header either.
//!
//! Transmit is served in the vCPU thread that notified the queue. Receive is event-driven: a
//! thread polls the tap (only while it has no frame waiting for a guest buffer), a stop
//! eventfd and a kick eventfd that a receive-queue notification writes; a frame that finds
//! no buffer waits until the driver adds one. A malformed descriptor chain (a receive buffer
//! the device may not write, a transmit chain without a header, an avail index past the
//! queue size, guest memory the descriptors do not map) puts the device into its error
//! state: DEVICE_NEEDS_RESET, a configuration interrupt, and no more queue processing until
//! the driver resets it.

use std::os::fd::{AsFd, AsRawFd};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::virtio_blk::notification_needed;
use super::virtio_device::{read_config_bytes, ActiveQueues, VirtioDevice, VIRTIO_F_VERSION_1};
use super::VmmError;
use crate::tap_device::Tap;

pub const DEVICE_TYPE_NET: u32 = 1;
/// The device has a MAC address (in the configuration space).
pub const VIRTIO_NET_F_MAC: u64 = 1 << 5;
/// The device advises the driver of its maximum MTU (the `mtu` field of the configuration
/// space).
pub const VIRTIO_NET_F_MTU: u64 = 1 << 3;
/// `struct virtio_net_hdr_v1`: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset,
/// num_buffers.
pub const HDR_LEN: usize = 12;
/// The largest frame accepted from the guest or read from the tap (without GSO frames are
/// MTU-sized; this leaves room for any MTU the tap is given).
pub const MAX_FRAME: usize = 65_550;
/// Ethernet header (destination, source, ethertype): a frame is the MTU plus this.
const ETH_HLEN: usize = 14;
/// The smallest MTU advertised: the driver refuses `VIRTIO_NET_F_MTU` below IPv4's 68.
const MIN_MTU: u32 = 68;
const QUEUE_SIZE: u16 = 256;
pub const RX: usize = 0;
pub const TX: usize = 1;

/// The receive header: everything zero (no offloads), one buffer.
fn rx_header() -> [u8; HDR_LEN] {
    let mut h = [0u8; HDR_LEN];
    h[10..12].copy_from_slice(&1u16.to_le_bytes());
    h
}

#[derive(Default)]
struct Shared {
    active: Option<ActiveQueues>,
    /// A frame read from the tap that found no receive buffer yet.
    pending: Option<Vec<u8>>,
    /// The driver gave a malformed chain; nothing is processed until it resets the device.
    broken: bool,
}

pub struct VirtioNet {
    mac: [u8; 6],
    /// The MTU advertised to the guest (the tap's, at most what a frame of [`MAX_FRAME`]
    /// carries); `None` when the tap's could not be read (no `VIRTIO_NET_F_MTU`: the driver
    /// keeps 1500).
    mtu: Option<u16>,
    tap: Arc<Tap>,
    shared: Arc<Mutex<Shared>>,
    kick: Arc<EventFd>,
    stop: Arc<EventFd>,
    thread: Option<JoinHandle<()>>,
}

/// The MTU to advertise for a tap of MTU `tap_mtu`: capped so a frame fits [`MAX_FRAME`] and
/// the 16-bit field; `None` below the driver's minimum.
fn advertised_mtu(tap_mtu: u32) -> Option<u16> {
    let cap = (MAX_FRAME - ETH_HLEN).min(usize::from(u16::MAX)) as u32;
    (tap_mtu >= MIN_MTU).then(|| tap_mtu.min(cap) as u16)
}

fn lock(s: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

fn eventfd() -> Result<EventFd, VmmError> {
    EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)
        .map_err(|e| VmmError::Net(format!("cannot create an eventfd: {e}")))
}

impl VirtioNet {
    /// Attaches to the tap interface `tap` (the backend created it on berth's bridge); `mac`
    /// is the guest's address.
    pub fn open(tap: &str, mac: [u8; 6]) -> Result<Self, VmmError> {
        let tap = Tap::open(tap).map_err(|e| {
            VmmError::Net(format!(
                "{e}; the VM's network needs root and {} (`berth doctor`)",
                crate::tap_device::TUN_DEVICE
            ))
        })?;
        Self::with_tap(tap, mac)
    }

    /// The device on an open tap; it advertises the tap's MTU to the guest.
    pub fn with_tap(tap: Tap, mac: [u8; 6]) -> Result<Self, VmmError> {
        let mtu = tap.mtu().ok().and_then(advertised_mtu);
        let tap = Arc::new(tap);
        let shared = Arc::new(Mutex::new(Shared::default()));
        let kick = Arc::new(eventfd()?);
        let stop = Arc::new(eventfd()?);
        let (t, s, k, st) = (tap.clone(), shared.clone(), kick.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("berth-net-rx".into())
            .spawn(move || rx_loop(&t, &s, &k, &st))
            .map_err(|e| VmmError::Net(format!("cannot start the receive thread: {e}")))?;
        Ok(VirtioNet {
            mac,
            mtu,
            tap,
            shared,
            kick,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for VirtioNet {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn pollfd(fd: libc::c_int) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

/// Moves frames from the tap into the guest's receive buffers until stopped.
fn rx_loop(tap: &Tap, shared: &Mutex<Shared>, kick: &EventFd, stop: &EventFd) {
    let mut buf = vec![0u8; MAX_FRAME];
    let mut tap_ok = true;
    loop {
        let want_tap = tap_ok && lock(shared).pending.is_none();
        let mut fds = [
            pollfd(stop.as_raw_fd()),
            pollfd(kick.as_raw_fd()),
            pollfd(if want_tap {
                tap.as_fd().as_raw_fd()
            } else {
                -1
            }),
        ];
        // SAFETY: `fds` is a valid array of three pollfd structures (fd -1 is ignored).
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if rc < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            eprintln!(
                "virtio-net: poll failed: {}",
                std::io::Error::last_os_error()
            );
            return;
        }
        if fds[0].revents != 0 {
            return;
        }
        if fds[1].revents != 0 {
            let _ = kick.read();
        }
        let mut g = lock(shared);
        deliver_pending(&mut g);
        while want_tap && g.pending.is_none() {
            match tap.read(&mut buf) {
                Ok(n) => {
                    g.pending = Some(buf[..n].to_vec());
                    deliver_pending(&mut g);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    // The interface went away (deleted under the VM): the guest's link is
                    // dead, the rest of the VM goes on.
                    eprintln!("virtio-net: reading tap {}: {e}", tap.name());
                    tap_ok = false;
                    break;
                }
            }
        }
    }
}

enum Rx {
    Delivered,
    NoBuffer,
    /// The frame does not fit the driver's buffer: dropped, the buffer stays available.
    TooBig,
    Broken,
}

/// Gives the pending frame to the guest if a buffer is there; drops it while the device is
/// not running (like a link that is down).
fn deliver_pending(g: &mut Shared) {
    let Some(frame) = g.pending.take() else {
        return;
    };
    if g.broken {
        return;
    }
    let Some(active) = g.active.as_mut() else {
        return;
    };
    let mem = active.mem.clone();
    let queue = &mut active.queues[RX];
    match write_rx(queue, &mem, &frame) {
        Rx::Delivered => {
            if notification_needed(queue, &mem) {
                active.interrupt.signal_used_queue();
            }
        }
        Rx::NoBuffer => g.pending = Some(frame),
        Rx::TooBig => {}
        Rx::Broken => {
            g.broken = true;
            active.interrupt.signal_needs_reset();
        }
    }
}

fn write_rx(queue: &mut Queue, mem: &GuestMemoryMmap, frame: &[u8]) -> Rx {
    let chain = match queue.iter(mem) {
        Ok(mut it) => it.next(),
        Err(_) => return Rx::Broken,
    };
    let Some(chain) = chain else {
        return Rx::NoBuffer;
    };
    let head = chain.head_index();
    let descs: Vec<_> = chain.collect();
    if descs.is_empty() || descs.iter().any(|d| !d.is_write_only()) {
        return Rx::Broken;
    }
    let capacity: u64 = descs.iter().map(|d| u64::from(d.len())).sum();
    if capacity < HDR_LEN as u64 {
        return Rx::Broken;
    }
    if capacity < (HDR_LEN + frame.len()) as u64 {
        queue.go_to_previous_position();
        return Rx::TooBig;
    }
    let header = rx_header();
    let mut parts = [&header[..], frame];
    let mut written = 0usize;
    for d in &descs {
        let mut room = d.len() as usize;
        let mut at = d.addr();
        for part in parts.iter_mut() {
            let n = room.min(part.len());
            if n == 0 {
                continue;
            }
            if mem.write_slice(&part[..n], at).is_err() {
                return Rx::Broken;
            }
            *part = &part[n..];
            at = GuestAddress(at.0 + n as u64);
            room -= n;
            written += n;
        }
    }
    if queue.add_used(mem, head, written as u32).is_err() {
        return Rx::Broken;
    }
    Rx::Delivered
}

/// What one transmit chain turned out to be.
enum Tx {
    Frame(Vec<u8>),
    /// Longer than [`MAX_FRAME`]: dropped.
    Oversized,
}

fn read_tx(mem: &GuestMemoryMmap, descs: &[virtio_queue::desc::split::Descriptor]) -> Option<Tx> {
    if descs.iter().any(|d| d.is_write_only()) {
        return None;
    }
    let total: u64 = descs.iter().map(|d| u64::from(d.len())).sum();
    if total < HDR_LEN as u64 {
        return None;
    }
    if total > (HDR_LEN + MAX_FRAME) as u64 {
        return Some(Tx::Oversized);
    }
    let mut bytes = vec![0u8; total as usize];
    let mut off = 0;
    for d in descs {
        let n = d.len() as usize;
        mem.read_slice(&mut bytes[off..off + n], d.addr()).ok()?;
        off += n;
    }
    bytes.drain(..HDR_LEN);
    Some(Tx::Frame(bytes))
}

/// Sends every frame the guest queued to the tap.
fn drain_tx(g: &mut Shared, tap: &Tap) {
    if g.broken {
        return;
    }
    let Some(active) = g.active.as_mut() else {
        return;
    };
    let mem = active.mem.clone();
    let queue = &mut active.queues[TX];
    let mut used_any = false;
    let mut broken = false;
    loop {
        let chain = match queue.iter(&mem) {
            Ok(mut it) => it.next(),
            Err(_) => {
                broken = true;
                break;
            }
        };
        let Some(chain) = chain else {
            break;
        };
        let head = chain.head_index();
        let descs: Vec<_> = chain.collect();
        match read_tx(&mem, &descs) {
            None => {
                broken = true;
                break;
            }
            Some(Tx::Frame(frame)) if !frame.is_empty() => {
                // A full or downed tap drops the frame, as a wire would.
                let _ = tap.write(&frame);
            }
            Some(_) => {}
        }
        if queue.add_used(&mem, head, 0).is_err() {
            broken = true;
            break;
        }
        used_any = true;
    }
    if used_any && notification_needed(queue, &mem) {
        active.interrupt.signal_used_queue();
    }
    if broken {
        g.broken = true;
        active.interrupt.signal_needs_reset();
    }
}

impl VirtioDevice for VirtioNet {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE_NET
    }

    fn features(&self) -> u64 {
        let mtu = if self.mtu.is_some() {
            VIRTIO_NET_F_MTU
        } else {
            0
        };
        VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC | mtu
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE, QUEUE_SIZE]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // mac[6], status and max_virtqueue_pairs (unused without their features), mtu.
        let mut config = [0u8; 12];
        config[..6].copy_from_slice(&self.mac);
        config[10..12].copy_from_slice(&self.mtu.unwrap_or(0).to_le_bytes());
        read_config_bytes(&config, offset, data);
    }

    fn activate(&mut self, active: ActiveQueues) {
        let mut g = lock(&self.shared);
        g.active = Some(active);
        g.broken = false;
        drop(g);
        let _ = self.kick.write(1);
    }

    fn queue_notify(&mut self, index: u16) {
        match index as usize {
            // New receive buffers: the receive thread delivers what waits.
            RX => {
                let _ = self.kick.write(1);
            }
            TX => drain_tx(&mut lock(&self.shared), &self.tap),
            _ => {}
        }
    }

    fn reset(&mut self) {
        let mut g = lock(&self.shared);
        g.active = None;
        g.pending = None;
        g.broken = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_advertised_mtu_is_the_taps_within_what_a_frame_and_the_field_hold() {
        assert_eq!(advertised_mtu(1500), Some(1500));
        assert_eq!(advertised_mtu(9000), Some(9000));
        assert_eq!(advertised_mtu(65535), Some(65535));
        assert_eq!(advertised_mtu(68), Some(68));
        assert_eq!(advertised_mtu(67), None, "below IPv4's minimum");
        assert_eq!(advertised_mtu(0), None);
        assert_eq!(advertised_mtu(1 << 20), Some(65535));
    }
}
