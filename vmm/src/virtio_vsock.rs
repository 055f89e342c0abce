//! virtio-vsock in userspace with Firecracker's hybrid model: guest connections to host port P
//! become connections to the Unix socket `<uds>_<P>`; a host process connects to `<uds>` and
//! writes `CONNECT <port>\n` to reach guest port `<port>` (answered `OK <host-port>\n`). Stream
//! sockets only, with the virtio credit flow control.

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::Shutdown;
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

pub const DEVICE_TYPE_VSOCK: u32 = 19;
pub const HOST_CID: u64 = 2;
const QUEUE_SIZE: u16 = 256;
const RX: usize = 0;
const TX: usize = 1;
pub const HDR_LEN: usize = 44;
const TYPE_STREAM: u16 = 1;
pub const OP_REQUEST: u16 = 1;
pub const OP_RESPONSE: u16 = 2;
pub const OP_RST: u16 = 3;
pub const OP_SHUTDOWN: u16 = 4;
pub const OP_RW: u16 = 5;
pub const OP_CREDIT_UPDATE: u16 = 6;
pub const OP_CREDIT_REQUEST: u16 = 7;
/// Bytes the VMM buffers per connection towards the host (its advertised receive buffer).
const BUF_ALLOC: u32 = 256 * 1024;
const MAX_PKT_DATA: usize = 64 * 1024;

/// A vsock packet header (little-endian on the wire).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub kind: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

impl Header {
    pub fn to_bytes(self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.kind.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    pub fn from_bytes(b: &[u8]) -> Option<Header> {
        let b = b.get(..HDR_LEN)?;
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64_at = |o: usize| u64::from(u32_at(o)) | (u64::from(u32_at(o + 4)) << 32);
        Some(Header {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            kind: u16::from_le_bytes([b[28], b[29]]),
            op: u16::from_le_bytes([b[30], b[31]]),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        })
    }
}

/// (host port, guest port)
type Key = (u32, u32);

struct Conn {
    stream: UnixStream,
    established: bool,
    /// Bytes from the host side waiting for guest credit.
    to_guest: VecDeque<u8>,
    /// Guest's receive buffer and how much it has consumed.
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// Bytes sent to the guest.
    tx_cnt: u32,
    /// Bytes received from the guest and written to the host.
    fwd_cnt: u32,
    last_credit_sent: u32,
    /// Host-initiated: answer `OK <port>` once the guest accepts.
    host_initiated: bool,
    host_closed: bool,
}

impl Conn {
    fn credit(&self) -> u32 {
        self.peer_buf_alloc
            .saturating_sub(self.tx_cnt.wrapping_sub(self.peer_fwd_cnt))
    }
}

#[derive(Default)]
struct Shared {
    active: Option<ActiveQueues>,
    conns: HashMap<Key, Conn>,
    control: VecDeque<Header>,
    next_host_port: u32,
}

pub struct VirtioVsock {
    cid: u64,
    uds: PathBuf,
    shared: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
}

fn lock(s: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

impl VirtioVsock {
    /// Guest context id `cid`; host connections arrive on `uds`, guest connections go to
    /// `<uds>_<port>`.
    pub fn new(cid: u64, uds: &Path) -> Result<Self, VmmError> {
        let sock_err = |e| VmmError::Socket {
            path: uds.to_path_buf(),
            source: e,
        };
        let listener = crate::unix_listener::listen_at(uds).map_err(sock_err)?;
        listener.set_nonblocking(true).map_err(sock_err)?;
        let shared = Arc::new(Mutex::new(Shared {
            next_host_port: 1 << 30,
            ..Shared::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (shared.clone(), stop.clone());
        std::thread::Builder::new()
            .name("berth-vsock-accept".into())
            .spawn(move || accept_loop(listener, cid, s, st))
            .map_err(sock_err)?;
        Ok(VirtioVsock {
            cid,
            uds: uds.to_path_buf(),
            shared,
            stop,
        })
    }
}

impl Drop for VirtioVsock {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = std::fs::remove_file(&self.uds);
    }
}

fn hdr(cid: u64, key: Key, op: u16) -> Header {
    Header {
        src_cid: HOST_CID,
        dst_cid: cid,
        src_port: key.0,
        dst_port: key.1,
        kind: TYPE_STREAM,
        op,
        buf_alloc: BUF_ALLOC,
        ..Header::default()
    }
}

fn accept_loop(
    listener: UnixListener,
    cid: u64,
    shared: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                let (s, st) = (shared.clone(), stop.clone());
                std::thread::spawn(move || host_connect(stream, cid, s, st));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// A host process connected to the main socket: read `CONNECT <port>` and ask the guest.
fn host_connect(stream: UnixStream, cid: u64, shared: Arc<Mutex<Shared>>, stop: Arc<AtomicBool>) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut line = String::new();
    let Ok(reader) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(reader);
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let _ = stream.set_read_timeout(None);
    let Some(port) = line
        .trim()
        .strip_prefix("CONNECT ")
        .and_then(|p| p.trim().parse::<u32>().ok())
    else {
        let _ = (&stream).write_all(b"ERR expected CONNECT <port>\n");
        return;
    };
    let key = {
        let mut g = lock(&shared);
        let host_port = g.next_host_port;
        g.next_host_port = g.next_host_port.wrapping_add(1).max(1 << 30);
        let key = (host_port, port);
        let Ok(s2) = stream.try_clone() else { return };
        g.conns.insert(key, new_conn(s2, true));
        g.control.push_back(hdr(cid, key, OP_REQUEST));
        fill_rx(&mut g, cid);
        key
    };
    reader_loop(reader, key, cid, shared, stop);
}

fn new_conn(stream: UnixStream, host_initiated: bool) -> Conn {
    Conn {
        stream,
        established: false,
        to_guest: VecDeque::new(),
        peer_buf_alloc: 0,
        peer_fwd_cnt: 0,
        tx_cnt: 0,
        fwd_cnt: 0,
        last_credit_sent: 0,
        host_initiated,
        host_closed: false,
    }
}

/// Moves host bytes of one connection towards the guest until the host side closes.
fn reader_loop(
    mut r: impl Read,
    key: Key,
    cid: u64,
    shared: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        {
            let g = lock(&shared);
            match g.conns.get(&key) {
                None => return,
                Some(c) if c.to_guest.len() > BUF_ALLOC as usize => {
                    drop(g);
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                }
                _ => {}
            }
        }
        match r.read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Ok(0) | Err(_) => {
                let mut g = lock(&shared);
                if let Some(c) = g.conns.get_mut(&key) {
                    c.host_closed = true;
                }
                if g.conns.get(&key).is_some_and(|c| c.to_guest.is_empty()) {
                    let mut h = hdr(cid, key, OP_SHUTDOWN);
                    h.flags = 3;
                    g.control.push_back(h);
                }
                fill_rx(&mut g, cid);
                return;
            }
            Ok(n) => {
                let mut g = lock(&shared);
                match g.conns.get_mut(&key) {
                    Some(c) => c.to_guest.extend(&buf[..n]),
                    None => return,
                }
                fill_rx(&mut g, cid);
            }
        }
    }
}

/// Writes one packet into the next receive buffer; false when the guest has none.
fn push_packet(active: &mut ActiveQueues, h: Header, data: &[u8]) -> bool {
    let mem = active.mem.clone();
    let queue = &mut active.queues[RX];
    let Some(chain) = queue.pop_descriptor_chain(&mem) else {
        return false;
    };
    let head = chain.head_index();
    let mut bytes = h.to_bytes().to_vec();
    bytes.extend_from_slice(data);
    let mut off = 0;
    for d in chain.filter(|d| d.is_write_only()) {
        if off >= bytes.len() {
            break;
        }
        let n = (d.len() as usize).min(bytes.len() - off);
        if mem.write_slice(&bytes[off..off + n], d.addr()).is_err() {
            break;
        }
        off += n;
    }
    let _ = queue.add_used(&mem, head, off as u32);
    true
}

fn fill_rx(g: &mut Shared, cid: u64) {
    let Shared {
        active,
        conns,
        control,
        ..
    } = g;
    let Some(active) = active.as_mut() else {
        return;
    };
    let mut sent = false;
    loop {
        if let Some(h) = control.front().copied() {
            if !push_packet(active, h, &[]) {
                break;
            }
            control.pop_front();
            sent = true;
            continue;
        }
        // Data from the first connection that has some and credit for it.
        let Some((key, c)) = conns
            .iter_mut()
            .find(|(_, c)| c.established && !c.to_guest.is_empty() && c.credit() > 0)
        else {
            break;
        };
        let n = c.to_guest.len().min(c.credit() as usize).min(MAX_PKT_DATA);
        let data: Vec<u8> = c.to_guest.iter().take(n).copied().collect();
        let mut h = hdr(cid, *key, OP_RW);
        h.len = n as u32;
        h.fwd_cnt = c.fwd_cnt;
        if !push_packet(active, h, &data) {
            break;
        }
        c.to_guest.drain(..n);
        c.tx_cnt = c.tx_cnt.wrapping_add(n as u32);
        if c.host_closed && c.to_guest.is_empty() {
            let mut s = hdr(cid, *key, OP_SHUTDOWN);
            s.flags = 3;
            control.push_back(s);
        }
        sent = true;
    }
    let mem = active.mem.clone();
    if sent && notification_needed(&mut active.queues[RX], &mem) {
        active.interrupt.signal_used_queue();
    }
}

/// Handles one packet from the guest.
fn handle_guest_packet(
    g: &mut Shared,
    cid: u64,
    uds: &Path,
    h: Header,
    data: &[u8],
    shared: &Arc<Mutex<Shared>>,
    stop: &Arc<AtomicBool>,
) {
    if h.kind != TYPE_STREAM || h.dst_cid != HOST_CID {
        return;
    }
    let key = (h.dst_port, h.src_port);
    if let Some(c) = g.conns.get_mut(&key) {
        c.peer_buf_alloc = h.buf_alloc;
        c.peer_fwd_cnt = h.fwd_cnt;
    }
    match h.op {
        OP_REQUEST => {
            let target = PathBuf::from(format!("{}_{}", uds.display(), h.dst_port));
            match UnixStream::connect(&target) {
                Ok(stream) => {
                    let Ok(reader) = stream.try_clone() else {
                        return;
                    };
                    let mut c = new_conn(stream, false);
                    c.established = true;
                    c.peer_buf_alloc = h.buf_alloc;
                    c.peer_fwd_cnt = h.fwd_cnt;
                    g.conns.insert(key, c);
                    g.control.push_back(hdr(cid, key, OP_RESPONSE));
                    let (s, st) = (shared.clone(), stop.clone());
                    std::thread::spawn(move || reader_loop(reader, key, cid, s, st));
                }
                Err(_) => g.control.push_back(hdr(cid, key, OP_RST)),
            }
        }
        OP_RESPONSE => {
            if let Some(c) = g.conns.get_mut(&key) {
                c.established = true;
                if c.host_initiated
                    && (&c.stream)
                        .write_all(format!("OK {}\n", key.0).as_bytes())
                        .is_err()
                {
                    g.control.push_back(hdr(cid, key, OP_RST));
                }
            }
        }
        OP_RW => {
            let mut reset = false;
            if let Some(c) = g.conns.get_mut(&key) {
                let data = &data[..(h.len as usize).min(data.len())];
                reset = (&c.stream).write_all(data).is_err();
                c.fwd_cnt = c.fwd_cnt.wrapping_add(data.len() as u32);
                if c.fwd_cnt.wrapping_sub(c.last_credit_sent) > BUF_ALLOC / 2 {
                    c.last_credit_sent = c.fwd_cnt;
                    let mut u = hdr(cid, key, OP_CREDIT_UPDATE);
                    u.fwd_cnt = c.fwd_cnt;
                    g.control.push_back(u);
                }
            } else {
                g.control.push_back(hdr(cid, key, OP_RST));
            }
            if reset {
                g.conns.remove(&key);
                g.control.push_back(hdr(cid, key, OP_RST));
            }
        }
        OP_CREDIT_REQUEST => {
            if let Some(c) = g.conns.get(&key) {
                let mut u = hdr(cid, key, OP_CREDIT_UPDATE);
                u.fwd_cnt = c.fwd_cnt;
                g.control.push_back(u);
            }
        }
        OP_CREDIT_UPDATE => {}
        OP_SHUTDOWN | OP_RST => {
            if let Some(c) = g.conns.remove(&key) {
                let _ = c.stream.shutdown(Shutdown::Both);
            }
            if h.op == OP_SHUTDOWN {
                g.control.push_back(hdr(cid, key, OP_RST));
            }
        }
        _ => g.control.push_back(hdr(cid, key, OP_RST)),
    }
}

impl VirtioVsock {
    fn process_tx(&mut self) {
        let mut g = lock(&self.shared);
        let Some(active) = g.active.as_mut() else {
            return;
        };
        let mem = active.mem.clone();
        let mut packets = Vec::new();
        {
            let queue = &mut active.queues[TX];
            while let Some(chain) = queue.pop_descriptor_chain(&mem) {
                let head = chain.head_index();
                let mut bytes = Vec::new();
                for d in chain.filter(|d| !d.is_write_only()) {
                    let mut b = vec![0u8; (d.len() as usize).min(HDR_LEN + MAX_PKT_DATA * 4)];
                    if mem.read_slice(&mut b, d.addr()).is_err() {
                        break;
                    }
                    bytes.extend_from_slice(&b);
                }
                let _ = queue.add_used(&mem, head, 0);
                if let Some(h) = Header::from_bytes(&bytes) {
                    packets.push((h, bytes[HDR_LEN..].to_vec()));
                }
            }
            if notification_needed(queue, &mem) {
                active.interrupt.signal_used_queue();
            }
        }
        for (h, data) in packets {
            handle_guest_packet(
                &mut g,
                self.cid,
                &self.uds,
                h,
                &data,
                &self.shared,
                &self.stop,
            );
        }
        fill_rx(&mut g, self.cid);
    }
}

impl VirtioDevice for VirtioVsock {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE_VSOCK
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE, QUEUE_SIZE, QUEUE_SIZE]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.cid.to_le_bytes(), offset, data);
    }

    fn activate(&mut self, active: ActiveQueues) {
        let mut g = lock(&self.shared);
        g.active = Some(active);
        fill_rx(&mut g, self.cid);
    }

    fn queue_notify(&mut self, index: u16) {
        match index as usize {
            RX => fill_rx(&mut lock(&self.shared), self.cid),
            TX => self.process_tx(),
            _ => {}
        }
    }

    fn reset(&mut self) {
        let mut g = lock(&self.shared);
        g.active = None;
        for (_, c) in g.conns.drain() {
            let _ = c.stream.shutdown(Shutdown::Both);
        }
        g.control.clear();
    }
}
