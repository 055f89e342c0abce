//! virtio-mmio transport and devices driven by a simulated guest driver: registers programmed
//! through the bus interface, descriptors and rings written into guest memory.

use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::bus::BusDevice;
use super::irq::IrqLine;
use super::test_guest::Driver;
use super::virtio_blk::{VirtioBlock, REQ_IN, REQ_OUT, STATUS_IOERR, STATUS_OK, STATUS_UNSUPP};
use super::virtio_console::VirtioConsole;
use super::virtio_device::VirtioInterrupt;
use super::virtio_mmio::MmioTransport;

fn block_header(mem: &GuestMemoryMmap, at: u64, kind: u32, sector: u64) {
    mem.write_obj(kind, GuestAddress(at)).unwrap();
    mem.write_obj(0u32, GuestAddress(at + 4)).unwrap();
    mem.write_obj(sector, GuestAddress(at + 8)).unwrap();
}

#[test]
fn block_reads_writes_and_rejects_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.img");
    let mut content = vec![0u8; 8 * 512];
    for (i, b) in content.iter_mut().enumerate() {
        *b = (i / 512) as u8 + 1;
    }
    std::fs::write(&disk, &content).unwrap();
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let interrupt = VirtioInterrupt::new(IrqLine::inert(5));
    let dev = VirtioBlock::open(&disk, false).unwrap();
    // A second opener is refused: the disk is locked.
    assert!(VirtioBlock::open(&disk, false)
        .err()
        .unwrap()
        .to_string()
        .contains("in use"));
    let mut t = MmioTransport::new(Box::new(dev), mem.clone(), interrupt.clone());
    assert_eq!(Driver::reg_read(&mut t, 0x8), 2, "device id = block");
    let mut cap = [0u8; 8];
    t.read(0x100, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), 8, "capacity in sectors");
    let mut q = Driver::init(&mut t, &mem, 1).remove(0);

    // Read sector 3.
    block_header(&mem, 0x40000, REQ_IN, 3);
    let head = q.add_chain(&[
        (0x40000, 16, false),
        (0x41000, 512, true),
        (0x42000, 1, true),
    ]);
    Driver::reg_write(&mut t, 0x50, 0);
    assert_eq!(q.used_idx(), 1);
    assert_eq!(q.used_elem(0), (u32::from(head), 513));
    let mut data = [0u8; 512];
    mem.read_slice(&mut data, GuestAddress(0x41000)).unwrap();
    assert!(data.iter().all(|&b| b == 4));
    assert_eq!(
        mem.read_obj::<u8>(GuestAddress(0x42000)).unwrap(),
        STATUS_OK
    );
    assert_eq!(
        Driver::reg_read(&mut t, 0x60) & 1,
        1,
        "used-ring interrupt raised"
    );
    Driver::reg_write(&mut t, 0x64, 1);
    assert_eq!(Driver::reg_read(&mut t, 0x60), 0);

    // Write sector 6 from two buffers.
    block_header(&mem, 0x40000, REQ_OUT, 6);
    mem.write_slice(&[0xaa; 256], GuestAddress(0x43000))
        .unwrap();
    mem.write_slice(&[0xbb; 256], GuestAddress(0x44000))
        .unwrap();
    q.add_chain(&[
        (0x40000, 16, false),
        (0x43000, 256, false),
        (0x44000, 256, false),
        (0x42000, 1, true),
    ]);
    Driver::reg_write(&mut t, 0x50, 0);
    assert_eq!(q.used_idx(), 2);
    assert_eq!(
        mem.read_obj::<u8>(GuestAddress(0x42000)).unwrap(),
        STATUS_OK
    );
    let f = std::fs::File::open(&disk).unwrap();
    let mut back = [0u8; 512];
    f.read_exact_at(&mut back, 6 * 512).unwrap();
    assert!(back[..256].iter().all(|&b| b == 0xaa) && back[256..].iter().all(|&b| b == 0xbb));

    // Past the end of the disk: I/O error, nothing read.
    block_header(&mem, 0x40000, REQ_IN, 7);
    q.add_chain(&[
        (0x40000, 16, false),
        (0x41000, 1024, true),
        (0x42000, 1, true),
    ]);
    Driver::reg_write(&mut t, 0x50, 0);
    assert_eq!(q.used_idx(), 3);
    assert_eq!(
        mem.read_obj::<u8>(GuestAddress(0x42000)).unwrap(),
        STATUS_IOERR
    );

    // Unknown request type.
    block_header(&mem, 0x40000, 99, 0);
    q.add_chain(&[(0x40000, 16, false), (0x42000, 1, true)]);
    Driver::reg_write(&mut t, 0x50, 0);
    assert_eq!(
        mem.read_obj::<u8>(GuestAddress(0x42000)).unwrap(),
        STATUS_UNSUPP
    );

    // A chain whose header points outside guest memory does not panic.
    q.add_chain(&[(0x7fff_0000, 16, false), (0x42000, 1, true)]);
    Driver::reg_write(&mut t, 0x50, 0);
    assert_eq!(q.used_idx(), 5);

    // Reset returns the device to its initial state.
    Driver::reg_write(&mut t, 0x70, 0);
    assert!(!t.is_active());
    assert_eq!(Driver::reg_read(&mut t, 0x70), 0);
}

#[test]
fn transport_refuses_unoffered_features() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("d");
    std::fs::write(&disk, [0u8; 512]).unwrap();
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let mut t = MmioTransport::new(
        Box::new(VirtioBlock::open(&disk, true).unwrap()),
        mem,
        VirtioInterrupt::new(IrqLine::inert(5)),
    );
    Driver::reg_write(&mut t, 0x24, 0);
    Driver::reg_write(&mut t, 0x20, 1 << 30);
    Driver::reg_write(&mut t, 0x70, 1 | 2 | 8);
    assert_eq!(Driver::reg_read(&mut t, 0x70) & 8, 0);
}

#[test]
fn console_bridges_guest_and_host_socket() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("control.sock");
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let console = VirtioConsole::listen(&sock).unwrap();
    let mut t = MmioTransport::new(
        Box::new(console),
        mem.clone(),
        VirtioInterrupt::new(IrqLine::inert(6)),
    );
    assert_eq!(Driver::reg_read(&mut t, 0x8), 3, "device id = console");
    let mut queues = Driver::init(&mut t, &mem, 2);
    let (rx, tx) = queues.split_at_mut(1);
    let (rx, tx) = (&mut rx[0], &mut tx[0]);
    rx.add_chain(&[(0x50000, 64, true)]);
    Driver::reg_write(&mut t, 0x50, 0);

    let mut host = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    host.write_all(b"hello").unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while rx.used_idx() == 0 {
        assert!(
            Instant::now() < deadline,
            "host bytes never reached the guest"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(rx.used_elem(0).1, 5);
    let mut got = [0u8; 5];
    mem.read_slice(&mut got, GuestAddress(0x50000)).unwrap();
    assert_eq!(&got, b"hello");

    mem.write_slice(b"pong", GuestAddress(0x60000)).unwrap();
    tx.add_chain(&[(0x60000, 4, false)]);
    Driver::reg_write(&mut t, 0x50, 1);
    assert_eq!(tx.used_idx(), 1);
    let mut back = [0u8; 4];
    host.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"pong");
    drop(t);
    assert!(!sock.exists(), "socket removed when the device goes away");
}

mod vsock {
    use super::*;
    use crate::virtio_vsock::*;
    use std::io::BufRead;

    const GUEST_CID: u64 = 3;

    fn guest_hdr(src_port: u32, dst_port: u32, op: u16, len: u32) -> Header {
        Header {
            src_cid: GUEST_CID,
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            len,
            kind: 1,
            op,
            buf_alloc: 65536,
            ..Header::default()
        }
    }

    /// Sends a packet from the guest through the TX queue.
    fn send(
        t: &mut MmioTransport,
        tx: &mut Driver,
        mem: &GuestMemoryMmap,
        h: Header,
        data: &[u8],
        at: u64,
    ) {
        mem.write_slice(&h.to_bytes(), GuestAddress(at)).unwrap();
        if data.is_empty() {
            tx.add_chain(&[(at, HDR_LEN as u32, false)]);
        } else {
            mem.write_slice(data, GuestAddress(at + 0x100)).unwrap();
            tx.add_chain(&[
                (at, HDR_LEN as u32, false),
                (at + 0x100, data.len() as u32, false),
            ]);
        }
        Driver::reg_write(t, 0x50, 1);
    }

    /// Waits for the `n`-th packet in the RX used ring; returns header and payload.
    fn recv(rx: &Driver, mem: &GuestMemoryMmap, n: u16, bufs: &[u64]) -> (Header, Vec<u8>) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while rx.used_idx() <= n {
            assert!(Instant::now() < deadline, "no packet {n} from the device");
            std::thread::sleep(Duration::from_millis(5));
        }
        let (id, len) = rx.used_elem(n);
        let buf = bufs[id as usize % bufs.len()];
        let mut b = vec![0u8; len as usize];
        mem.read_slice(&mut b, GuestAddress(buf)).unwrap();
        let h = Header::from_bytes(&b).unwrap();
        (h, b[HDR_LEN..].to_vec())
    }

    #[test]
    fn header_round_trip() {
        let h = guest_hdr(1, 2, OP_RW, 9);
        assert_eq!(Header::from_bytes(&h.to_bytes()), Some(h));
        assert_eq!(Header::from_bytes(&[0u8; 10]), None);
    }

    #[test]
    fn guest_and_host_initiated_streams() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("v.sock");
        let host_listener =
            std::os::unix::net::UnixListener::bind(format!("{}_1234", uds.display())).unwrap();
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let dev = VirtioVsock::new(GUEST_CID, &uds).unwrap();
        let mut t = MmioTransport::new(
            Box::new(dev),
            mem.clone(),
            VirtioInterrupt::new(IrqLine::inert(7)),
        );
        assert_eq!(Driver::reg_read(&mut t, 0x8), 19, "device id = vsock");
        let mut cid = [0u8; 8];
        t.read(0x100, &mut cid);
        assert_eq!(u64::from_le_bytes(cid), GUEST_CID);
        let mut qs = Driver::init(&mut t, &mem, 3);
        let (rx, rest) = qs.split_at_mut(1);
        let (rx, tx) = (&mut rx[0], &mut rest[0]);
        // Eight receive buffers, one per descriptor (chain heads 0..8 map to these).
        let bufs: Vec<u64> = (0..8).map(|i| 0x80000 + i * 0x1000).collect();
        for b in &bufs {
            rx.add_chain(&[(*b, 0x1000, true)]);
        }
        Driver::reg_write(&mut t, 0x50, 0);

        // Guest connects to host port 1234.
        send(
            &mut t,
            tx,
            &mem,
            guest_hdr(5000, 1234, OP_REQUEST, 0),
            &[],
            0x60000,
        );
        let (mut host_side, _) = host_listener.accept().unwrap();
        let (h, _) = recv(rx, &mem, 0, &bufs);
        assert_eq!(
            (h.op, h.src_port, h.dst_port, h.dst_cid),
            (OP_RESPONSE, 1234, 5000, GUEST_CID)
        );
        send(
            &mut t,
            tx,
            &mem,
            guest_hdr(5000, 1234, OP_RW, 4),
            b"ping",
            0x61000,
        );
        let mut got = [0u8; 4];
        host_side.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ping");
        host_side.write_all(b"pong").unwrap();
        let (h, data) = recv(rx, &mem, 1, &bufs);
        assert_eq!((h.op, h.len), (OP_RW, 4));
        assert_eq!(data, b"pong");
        // Host closes: the guest is told to shut down.
        drop(host_side);
        let (h, _) = recv(rx, &mem, 2, &bufs);
        assert_eq!(h.op, OP_SHUTDOWN);

        // Host connects to guest port 52.
        let mut host = std::os::unix::net::UnixStream::connect(&uds).unwrap();
        host.write_all(b"CONNECT 52\n").unwrap();
        let (h, _) = recv(rx, &mem, 3, &bufs);
        assert_eq!((h.op, h.dst_port), (OP_REQUEST, 52));
        let host_port = h.src_port;
        send(
            &mut t,
            tx,
            &mem,
            guest_hdr(52, host_port, OP_RESPONSE, 0),
            &[],
            0x62000,
        );
        let mut line = String::new();
        std::io::BufReader::new(host.try_clone().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, format!("OK {host_port}\n"));
        send(
            &mut t,
            tx,
            &mem,
            guest_hdr(52, host_port, OP_RW, 5),
            b"hello",
            0x63000,
        );
        let mut got = [0u8; 5];
        host.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello");

        // A guest connection to a port nobody listens on is refused.
        send(
            &mut t,
            tx,
            &mem,
            guest_hdr(5001, 9999, OP_REQUEST, 0),
            &[],
            0x64000,
        );
        let (h, _) = recv(rx, &mem, 4, &bufs);
        assert_eq!((h.op, h.dst_port), (OP_RST, 5001));
        drop(t);
        assert!(!uds.exists());
    }
}

/// virtio-net against a real tap interface: frames are seen from the host side through a
/// packet socket bound to the tap. Needs root (the tests say so and skip otherwise).
mod net {
    use super::*;
    use crate::tap_device::test_tap;
    use crate::virtio_mmio::STATUS_DEVICE_NEEDS_RESET;
    use crate::virtio_net::{VirtioNet, HDR_LEN};
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    const GUEST_MAC: [u8; 6] = [0x02, 0xbe, 0x27, 0x00, 0x00, 0x01];
    const HOST_MAC: [u8; 6] = [0x02, 0xbe, 0x27, 0x00, 0x00, 0x02];
    const ETHERTYPE_TX: u16 = 0x88b5;
    const ETHERTYPE_RX: u16 = 0x88b6;

    fn frame(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&dst);
        f.extend_from_slice(&src);
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(payload);
        f.resize(f.len().max(60), 0);
        f
    }

    /// A packet socket on interface `index` that sees every frame (host side of the tap).
    struct PacketSocket {
        fd: OwnedFd,
        index: i32,
    }

    impl PacketSocket {
        fn bind(index: u32) -> PacketSocket {
            let proto = (libc::ETH_P_ALL as u16).to_be();
            // SAFETY: socket has no pointer arguments; the fd is owned right away.
            let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
            assert!(
                raw >= 0,
                "packet socket: {}",
                std::io::Error::last_os_error()
            );
            // SAFETY: raw is a fresh descriptor nobody else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            // SAFETY: sockaddr_ll is plain data; zeroes are valid.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = proto;
            sll.sll_ifindex = index as i32;
            // SAFETY: bind with a valid sockaddr_ll and its size.
            let rc = unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    (&sll as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
            let tv = libc::timeval {
                tv_sec: 5,
                tv_usec: 0,
            };
            // SAFETY: SO_RCVTIMEO with a valid timeval and its size.
            unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    (&tv as *const libc::timeval).cast(),
                    std::mem::size_of::<libc::timeval>() as u32,
                )
            };
            PacketSocket {
                fd,
                index: index as i32,
            }
        }

        /// Transmits `frame` on the interface (towards the tap's reader: the device).
        fn send(&self, frame: &[u8]) {
            // SAFETY: sockaddr_ll is plain data; zeroes are valid.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_ifindex = self.index;
            sll.sll_halen = 6;
            sll.sll_addr[..6].copy_from_slice(&frame[..6]);
            // SAFETY: sendto with a valid buffer, address and sizes.
            let rc = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&sll as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            assert_eq!(
                rc,
                frame.len() as isize,
                "{}",
                std::io::Error::last_os_error()
            );
        }

        /// The next frame with `ethertype` that the interface received (from the device).
        fn recv(&self, ethertype: u16) -> Vec<u8> {
            let mut buf = vec![0u8; 1 << 17];
            loop {
                // SAFETY: sockaddr_ll is plain data; zeroes are valid.
                let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
                let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
                // SAFETY: recvfrom into a buffer and address we own, with their sizes.
                let n = unsafe {
                    libc::recvfrom(
                        self.fd.as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        0,
                        (&mut sll as *mut libc::sockaddr_ll).cast(),
                        &mut len,
                    )
                };
                assert!(
                    n >= 0,
                    "no frame from the device: {}",
                    std::io::Error::last_os_error()
                );
                let f = &buf[..n as usize];
                if sll.sll_pkttype != libc::PACKET_OUTGOING
                    && f.len() >= 14
                    && u16::from_be_bytes([f[12], f[13]]) == ethertype
                {
                    return f.to_vec();
                }
            }
        }
    }

    /// Sets the interface `name` up (`SIOCGIFFLAGS`, then `SIOCSIFFLAGS` with `IFF_UP`) and
    /// returns its index; with `mtu`, sets its MTU first (`SIOCSIFMTU`).
    fn link_up(name: &str, mtu: Option<u32>) -> u32 {
        let cname = std::ffi::CString::new(name).unwrap();
        // SAFETY: if_nametoindex reads the NUL-terminated string we own.
        let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        assert_ne!(index, 0, "{name}: {}", std::io::Error::last_os_error());
        // SAFETY: socket has no pointer arguments; the fd is owned right away.
        let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        assert!(raw >= 0, "socket: {}", std::io::Error::last_os_error());
        // SAFETY: raw is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: ifreq is plain data; zeroes are valid.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
            *d = s as libc::c_char;
        }
        if let Some(mtu) = mtu {
            req.ifr_ifru.ifru_mtu = mtu as libc::c_int;
            // SAFETY: SIOCSIFMTU reads the ifreq we pass.
            let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCSIFMTU, &req) };
            assert_eq!(
                rc,
                0,
                "SIOCSIFMTU {name}: {}",
                std::io::Error::last_os_error()
            );
        }
        // SAFETY: SIOCGIFFLAGS fills the ifreq we exclusively borrow.
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) };
        assert_eq!(
            rc,
            0,
            "SIOCGIFFLAGS {name}: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: after SIOCGIFFLAGS the union holds the flags.
        unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
        // SAFETY: SIOCSIFFLAGS reads the ifreq we pass.
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCSIFFLAGS, &req) };
        assert_eq!(
            rc,
            0,
            "SIOCSIFFLAGS {name}: {}",
            std::io::Error::last_os_error()
        );
        index
    }

    struct Rig {
        t: MmioTransport,
        mem: GuestMemoryMmap,
        rx: Driver,
        tx: Driver,
        host: PacketSocket,
    }

    /// A device on a fresh tap `name` (up, IPv6 off so the host sends nothing by itself), a
    /// driver with both queues, and the host-side socket. `None`: skipped (not root).
    fn rig(name: &str) -> Option<Rig> {
        rig_with_mtu(name, None)
    }

    /// [`rig`] on a tap given `mtu` before the device opens it.
    fn rig_with_mtu(name: &str, mtu: Option<u32>) -> Option<Rig> {
        let tap = test_tap(name)?;
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
        let index = link_up(name, mtu);
        let host = PacketSocket::bind(index);
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let dev = VirtioNet::with_tap(tap, GUEST_MAC).unwrap();
        let mut t = MmioTransport::new(
            Box::new(dev),
            mem.clone(),
            VirtioInterrupt::new(IrqLine::inert(8)),
        );
        assert_eq!(Driver::reg_read(&mut t, 0x8), 1, "device id = network");
        let mut mac = [0u8; 6];
        t.read(0x100, &mut mac);
        assert_eq!(mac, GUEST_MAC, "MAC in the configuration space");
        Driver::reg_write(&mut t, 0x14, 0);
        assert_ne!(
            Driver::reg_read(&mut t, 0x10) & (1 << 5),
            0,
            "VIRTIO_NET_F_MAC"
        );
        let mut qs = Driver::init(&mut t, &mem, 2);
        let tx = qs.pop().unwrap();
        let rx = qs.pop().unwrap();
        Some(Rig {
            t,
            mem,
            rx,
            tx,
            host,
        })
    }

    fn wait_used(q: &Driver, n: u16) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while q.used_idx() != n {
            assert!(
                Instant::now() < deadline,
                "used index stayed at {}",
                q.used_idx()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Sends `f` from the guest: header and frame in two descriptors.
    fn guest_send(r: &mut Rig, f: &[u8]) {
        r.mem
            .write_slice(&[0u8; HDR_LEN], GuestAddress(0x60000))
            .unwrap();
        r.mem.write_slice(f, GuestAddress(0x61000)).unwrap();
        r.tx.add_chain(&[
            (0x60000, HDR_LEN as u32, false),
            (0x61000, f.len() as u32, false),
        ]);
        Driver::reg_write(&mut r.t, 0x50, 1);
    }

    #[test]
    fn frames_cross_the_tap_both_ways_and_the_queues_wrap() {
        let name = format!("bna{}", std::process::id() % 10_000_000);
        let Some(mut r) = rig(&name) else {
            return;
        };
        // Three times around both 8-entry rings.
        for i in 0..24u16 {
            let out = frame(
                [0xff; 6],
                GUEST_MAC,
                ETHERTYPE_TX,
                format!("tx {i}").as_bytes(),
            );
            guest_send(&mut r, &out);
            assert_eq!(r.tx.used_idx(), i + 1, "tx chain {i} used");
            assert_eq!(
                r.host.recv(ETHERTYPE_TX),
                out,
                "frame {i} came out of the tap"
            );

            // One receive buffer in two descriptors: the header lands in the first.
            let buf = 0x80000 + u64::from(i % 8) * 0x1000;
            r.rx.add_chain(&[(buf, 10, true), (buf + 0x100, 2048, true)]);
            Driver::reg_write(&mut r.t, 0x50, 0);
            let inbound = frame(
                GUEST_MAC,
                HOST_MAC,
                ETHERTYPE_RX,
                format!("rx {i}").as_bytes(),
            );
            r.host.send(&inbound);
            wait_used(&r.rx, i + 1);
            let (id, len) = r.rx.used_elem(i);
            assert_eq!(id, u32::from((2 * i) % 8), "chain head of rx buffer {i}");
            assert_eq!(len as usize, HDR_LEN + inbound.len());
            let mut hdr = [0u8; HDR_LEN];
            r.mem.read_slice(&mut hdr[..10], GuestAddress(buf)).unwrap();
            r.mem
                .read_slice(&mut hdr[10..], GuestAddress(buf + 0x100))
                .unwrap();
            assert_eq!(
                hdr,
                [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0],
                "no offloads, one buffer"
            );
            let mut got = vec![0u8; inbound.len()];
            r.mem
                .read_slice(&mut got, GuestAddress(buf + 0x102))
                .unwrap();
            assert_eq!(got, inbound, "frame {i} reached the guest");
        }
        assert_ne!(
            Driver::reg_read(&mut r.t, 0x60) & 1,
            0,
            "used-ring interrupt"
        );
        assert_eq!(
            Driver::reg_read(&mut r.t, 0x70) & STATUS_DEVICE_NEEDS_RESET,
            0
        );
    }

    #[test]
    fn a_frame_waits_for_a_buffer_and_one_too_big_is_dropped() {
        let name = format!("bnb{}", std::process::id() % 10_000_000);
        let Some(mut r) = rig(&name) else {
            return;
        };
        // No buffer yet: the frame waits in the device.
        let first = frame(GUEST_MAC, HOST_MAC, ETHERTYPE_RX, b"waits");
        r.host.send(&first);
        // Make sure the device read it from the tap (the tap's queue is empty again) before
        // offering a buffer that is too small for the next one.
        std::thread::sleep(Duration::from_millis(100));
        r.rx.add_chain(&[(0x80000, 2048, true)]);
        Driver::reg_write(&mut r.t, 0x50, 0);
        wait_used(&r.rx, 1);
        assert_eq!(r.rx.used_elem(0).1 as usize, HDR_LEN + first.len());
        // A 64-byte buffer cannot take a 1000-byte frame: dropped, the buffer stays for the
        // next frame that fits.
        r.rx.add_chain(&[(0x81000, 64 + HDR_LEN as u32, true)]);
        Driver::reg_write(&mut r.t, 0x50, 0);
        r.host
            .send(&frame(GUEST_MAC, HOST_MAC, ETHERTYPE_RX, &[7u8; 1000]));
        let small = frame(GUEST_MAC, HOST_MAC, ETHERTYPE_RX, b"fits");
        r.host.send(&small);
        wait_used(&r.rx, 2);
        assert_eq!(r.rx.used_elem(1).1 as usize, HDR_LEN + small.len());
        let mut got = vec![0u8; small.len()];
        r.mem
            .read_slice(&mut got, GuestAddress(0x81000 + HDR_LEN as u64))
            .unwrap();
        assert_eq!(got, small);
        assert_eq!(
            Driver::reg_read(&mut r.t, 0x70) & STATUS_DEVICE_NEEDS_RESET,
            0
        );
    }

    /// The tap's MTU reaches the guest (`VIRTIO_NET_F_MTU` and the configuration space), and
    /// frames of that size cross whole both ways: a receive buffer of several descriptors
    /// takes one, a transmit chain carries one out.
    #[test]
    fn the_taps_large_mtu_is_advertised_and_its_frames_cross_whole() {
        let name = format!("bnm{}", std::process::id() % 10_000_000);
        let Some(mut r) = rig_with_mtu(&name, Some(65521)) else {
            return;
        };
        Driver::reg_write(&mut r.t, 0x14, 0);
        assert_ne!(
            Driver::reg_read(&mut r.t, 0x10) & (1 << 3),
            0,
            "VIRTIO_NET_F_MTU offered"
        );
        let mut mtu = [0u8; 2];
        r.t.read(0x100 + 10, &mut mtu);
        assert_eq!(
            u16::from_le_bytes(mtu),
            65521,
            "mtu in the configuration space"
        );

        let payload: Vec<u8> = (0..60_000u32).map(|i| (i % 251) as u8).collect();
        let out = frame([0xff; 6], GUEST_MAC, ETHERTYPE_TX, &payload);
        guest_send(&mut r, &out);
        assert_eq!(
            r.host.recv(ETHERTYPE_TX),
            out,
            "60,000-byte frame out whole"
        );

        // Four 16 KiB descriptors, the way a driver posts big receive buffers.
        let bufs: Vec<(u64, u32, bool)> = (0..4)
            .map(|i| (0x90000 + i * 0x4000, 0x4000, true))
            .collect();
        r.rx.add_chain(&bufs);
        Driver::reg_write(&mut r.t, 0x50, 0);
        let inbound = frame(GUEST_MAC, HOST_MAC, ETHERTYPE_RX, &payload);
        r.host.send(&inbound);
        wait_used(&r.rx, 1);
        assert_eq!(r.rx.used_elem(0).1 as usize, HDR_LEN + inbound.len());
        let mut got = vec![0u8; inbound.len()];
        r.mem
            .read_slice(&mut got, GuestAddress(0x90000 + HDR_LEN as u64))
            .unwrap();
        assert_eq!(got, inbound, "60,000-byte frame in whole");

        // A tap at the default MTU advertises 1500.
        let name = format!("bnn{}", std::process::id() % 10_000_000);
        let mut r = rig(&name).unwrap();
        r.t.read(0x100 + 10, &mut mtu);
        assert_eq!(u16::from_le_bytes(mtu), 1500);
    }

    fn assert_needs_reset(t: &mut MmioTransport) {
        assert_ne!(
            Driver::reg_read(t, 0x70) & STATUS_DEVICE_NEEDS_RESET,
            0,
            "DEVICE_NEEDS_RESET set"
        );
        assert_ne!(Driver::reg_read(t, 0x60) & 2, 0, "configuration interrupt");
        Driver::reg_write(t, 0x70, 0);
        assert_eq!(Driver::reg_read(t, 0x70), 0, "reset clears the error");
    }

    #[test]
    fn malformed_chains_put_the_device_in_its_error_state() {
        let name = format!("bnc{}", std::process::id() % 10_000_000);
        let Some(mut r) = rig(&name) else {
            return;
        };
        // A transmit chain with a device-writable buffer.
        r.tx.add_chain(&[(0x60000, HDR_LEN as u32, false), (0x61000, 60, true)]);
        Driver::reg_write(&mut r.t, 0x50, 1);
        assert_needs_reset(&mut r.t);

        // A transmit chain shorter than the header; then one whose buffer is outside guest
        // memory.
        for bufs in [
            vec![(0x60000u64, 4u32, false)],
            vec![(0x60000, HDR_LEN as u32, false), (0x7fff_0000, 60, false)],
        ] {
            let mut qs = Driver::init(&mut r.t, &r.mem, 2);
            let mut tx = qs.pop().unwrap();
            tx.add_chain(&bufs);
            Driver::reg_write(&mut r.t, 0x50, 1);
            assert_needs_reset(&mut r.t);
        }

        // The driver claims more available buffers than the queue holds.
        let mut qs = Driver::init(&mut r.t, &r.mem, 2);
        let tx = qs.pop().unwrap();
        r.mem.write_obj(100u16, GuestAddress(tx.avail + 2)).unwrap();
        Driver::reg_write(&mut r.t, 0x50, 1);
        assert_needs_reset(&mut r.t);

        // A receive buffer the device may not write; the frame meant for it is not delivered.
        let mut qs = Driver::init(&mut r.t, &r.mem, 2);
        let mut rx = qs.remove(0);
        rx.add_chain(&[(0x80000, 2048, false)]);
        Driver::reg_write(&mut r.t, 0x50, 0);
        r.host
            .send(&frame(GUEST_MAC, HOST_MAC, ETHERTYPE_RX, b"nowhere"));
        let deadline = Instant::now() + Duration::from_secs(5);
        while Driver::reg_read(&mut r.t, 0x70) & STATUS_DEVICE_NEEDS_RESET == 0 {
            assert!(
                Instant::now() < deadline,
                "the device never flagged the chain"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(rx.used_idx(), 0);
        assert_needs_reset(&mut r.t);

        // After a reset the device works again.
        let mut qs = Driver::init(&mut r.t, &r.mem, 2);
        r.tx = qs.pop().unwrap();
        let out = frame([0xff; 6], GUEST_MAC, ETHERTYPE_TX, b"after reset");
        guest_send(&mut r, &out);
        assert_eq!(r.host.recv(ETHERTYPE_TX), out);
    }
}
