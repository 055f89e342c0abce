//! virtio-console (single port, appears as /dev/hvc0 in the guest) bridged to a host Unix
//! socket: the control channel between berth and the agent. One host connection at a time; a
//! new connection replaces the old one.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use virtio_queue::QueueT;
use vm_memory::Bytes;

use super::virtio_blk::notification_needed;
use super::virtio_device::{read_config_bytes, ActiveQueues, VirtioDevice, VIRTIO_F_VERSION_1};
use super::VmmError;

pub const DEVICE_TYPE_CONSOLE: u32 = 3;
const QUEUE_SIZE: u16 = 256;
const RX: usize = 0;
const TX: usize = 1;
/// Host bytes buffered for the guest before the socket reader waits.
const RX_BUFFER_LIMIT: usize = 1 << 20;

#[derive(Default)]
struct Shared {
    active: Option<ActiveQueues>,
    conn: Option<UnixStream>,
    /// Connection generation, so a stale reader thread stops feeding data.
    generation: u64,
    pending_rx: VecDeque<u8>,
}

pub struct VirtioConsole {
    shared: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
    socket: PathBuf,
}

impl VirtioConsole {
    /// Listens on `socket` (replacing a stale socket file).
    pub fn listen(socket: &Path) -> Result<Self, VmmError> {
        let listener = crate::unix_listener::listen_at(socket).map_err(|e| VmmError::Socket {
            path: socket.to_path_buf(),
            source: e,
        })?;
        listener
            .set_nonblocking(true)
            .map_err(|e| VmmError::Socket {
                path: socket.to_path_buf(),
                source: e,
            })?;
        let shared = Arc::new(Mutex::new(Shared::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (shared.clone(), stop.clone());
        std::thread::Builder::new()
            .name("berth-console-accept".into())
            .spawn(move || accept_loop(listener, s, st))
            .map_err(|e| VmmError::Socket {
                path: socket.to_path_buf(),
                source: e,
            })?;
        Ok(VirtioConsole {
            shared,
            stop,
            socket: socket.to_path_buf(),
        })
    }
}

impl Drop for VirtioConsole {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = std::fs::remove_file(&self.socket);
    }
}

fn lock(s: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

fn accept_loop(listener: UnixListener, shared: Arc<Mutex<Shared>>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                let _ = stream.set_nonblocking(false);
                let Ok(reader) = stream.try_clone() else {
                    continue;
                };
                let generation = {
                    let mut g = lock(&shared);
                    g.generation += 1;
                    g.pending_rx.clear();
                    g.conn = Some(stream);
                    g.generation
                };
                let (s, st) = (shared.clone(), stop.clone());
                let _ = std::thread::Builder::new()
                    .name("berth-console-read".into())
                    .spawn(move || read_loop(reader, generation, s, st));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn read_loop(
    mut stream: UnixStream,
    generation: u64,
    shared: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    while !stop.load(Ordering::SeqCst) {
        if lock(&shared).pending_rx.len() > RX_BUFFER_LIMIT {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let mut g = lock(&shared);
                if g.generation != generation {
                    return;
                }
                g.pending_rx.extend(&buf[..n]);
                fill_rx(&mut g);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(_) => break,
        }
    }
    let mut g = lock(&shared);
    if g.generation == generation {
        g.conn = None;
    }
}

/// Moves pending host bytes into the guest's receive buffers.
fn fill_rx(g: &mut Shared) {
    let Shared {
        active, pending_rx, ..
    } = g;
    let Some(active) = active.as_mut() else {
        return;
    };
    let mem = active.mem.clone();
    let queue = &mut active.queues[RX];
    let mut used_any = false;
    while !pending_rx.is_empty() {
        let Some(chain) = queue.pop_descriptor_chain(&mem) else {
            break;
        };
        let head = chain.head_index();
        let mut written = 0u32;
        for d in chain.filter(|d| d.is_write_only()) {
            let n = (d.len() as usize).min(pending_rx.len());
            if n == 0 {
                break;
            }
            let bytes: Vec<u8> = pending_rx.drain(..n).collect();
            if mem.write_slice(&bytes, d.addr()).is_err() {
                break;
            }
            written += n as u32;
        }
        if queue.add_used(&mem, head, written).is_err() {
            break;
        }
        used_any = true;
    }
    if used_any && notification_needed(queue, &mem) {
        active.interrupt.signal_used_queue();
    }
}

/// Sends what the guest wrote to the host connection (dropped when nobody is connected).
fn drain_tx(g: &mut Shared) {
    let Shared { active, conn, .. } = g;
    let Some(active) = active.as_mut() else {
        return;
    };
    let mem = active.mem.clone();
    let queue = &mut active.queues[TX];
    let mut used_any = false;
    while let Some(chain) = queue.pop_descriptor_chain(&mem) {
        let head = chain.head_index();
        for d in chain.filter(|d| !d.is_write_only()) {
            let mut buf = vec![0u8; d.len() as usize];
            if mem.read_slice(&mut buf, d.addr()).is_ok() {
                if let Some(c) = conn.as_mut() {
                    if c.write_all(&buf).is_err() {
                        *conn = None;
                    }
                }
            }
        }
        if queue.add_used(&mem, head, 0).is_err() {
            break;
        }
        used_any = true;
    }
    if used_any && notification_needed(queue, &mem) {
        active.interrupt.signal_used_queue();
    }
}

impl VirtioDevice for VirtioConsole {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE_CONSOLE
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE, QUEUE_SIZE]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // cols, rows, max_nr_ports, emerg_wr: all zero (no multiport).
        read_config_bytes(&[0u8; 12], offset, data);
    }

    fn activate(&mut self, active: ActiveQueues) {
        let mut g = lock(&self.shared);
        g.active = Some(active);
        fill_rx(&mut g);
    }

    fn queue_notify(&mut self, index: u16) {
        let mut g = lock(&self.shared);
        match index as usize {
            RX => fill_rx(&mut g),
            TX => drain_tx(&mut g),
            _ => {}
        }
    }

    fn reset(&mut self) {
        lock(&self.shared).active = None;
    }
}
