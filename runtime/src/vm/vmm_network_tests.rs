//! berth's VMM (the `berth-vmm` crate) on a tap that berth's network plumbed
//! (`Network::plumb_tap`): the device and the plumbing together, with the VMM crate's simulated
//! guests (feature `test-guest`). Need root (they say so and skip otherwise).

use std::time::{Duration, Instant};

use berth_vmm::irq::IrqLine;
use berth_vmm::test_guest::{kvm_usable, machine, Driver};
use berth_vmm::virtio_device::VirtioInterrupt;
use berth_vmm::virtio_mmio::MmioTransport;
use berth_vmm::virtio_net::{VirtioNet, HDR_LEN};
use berth_vmm::{DeviceConfig, ExitReason, Machine};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::net::netlink::Netlink;
use crate::net::network::{master_of, test_network, DetachOnDrop};
use crate::net::tap::guest_mac;
use crate::state::BerthHome;

/// The plumbing and the device together: a simulated guest on a tap that
/// `Network::plumb_tap` put on a test bridge asks the bridge's address by ARP and gets the
/// host's answer.
#[test]
fn guest_on_a_plumbed_tap_reaches_the_host_bridge() {
    let dir = tempfile::tempdir().unwrap();
    let home = BerthHome::at(dir.path()).unwrap();
    let Some(net) = test_network(&home, "a") else {
        return;
    };
    let id = "vmnet-arp";
    let _cleanup = DetachOnDrop {
        net: &net,
        env_id: id,
    };
    let t = net.plumb_tap(id).unwrap();
    let mac = guest_mac(id);
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let dev = VirtioNet::open(&t.tap, mac).unwrap();
    let mut tr = MmioTransport::new(
        Box::new(dev),
        mem.clone(),
        VirtioInterrupt::new(IrqLine::inert(8)),
    );
    let mut qs = Driver::init(&mut tr, &mem, 2);
    let mut tx = qs.pop().unwrap();
    let mut rx = qs.pop().unwrap();
    for i in 0..8u64 {
        rx.add_chain(&[(0x80000 + i * 0x1000, 2048, true)]);
    }
    Driver::reg_write(&mut tr, 0x50, 0);

    // ARP request: who has the gateway? tell the guest.
    let mut arp = Vec::new();
    arp.extend_from_slice(&[0xff; 6]);
    arp.extend_from_slice(&mac);
    arp.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    arp.extend_from_slice(&mac);
    arp.extend_from_slice(&t.address.octets());
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&t.gateway.octets());
    arp.resize(60, 0);
    mem.write_slice(&[0u8; HDR_LEN], GuestAddress(0x60000))
        .unwrap();
    mem.write_slice(&arp, GuestAddress(0x60000 + HDR_LEN as u64))
        .unwrap();
    tx.add_chain(&[(0x60000, (HDR_LEN + arp.len()) as u32, false)]);
    Driver::reg_write(&mut tr, 0x50, 1);
    assert_eq!(tx.used_idx(), 1);
    let mut sent = 1u16;
    let mut last_sent = Instant::now();

    // The host's reply. Other frames the host sends by itself (IPv6 neighbour discovery on
    // the new bridge) are passed over, and their buffers given back. As a real guest does,
    // the request is repeated while no reply came (a port that just joined the bridge may
    // drop the first frames while the host is busy).
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = 0u16;
    let reply = loop {
        assert!(Instant::now() < deadline, "no ARP reply from the bridge");
        if rx.used_idx() == seen {
            if last_sent.elapsed() > Duration::from_millis(500) {
                tx.add_chain(&[(0x60000, (HDR_LEN + arp.len()) as u32, false)]);
                Driver::reg_write(&mut tr, 0x50, 1);
                sent += 1;
                assert_eq!(tx.used_idx(), sent);
                last_sent = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        let (id, len) = rx.used_elem(seen);
        seen += 1;
        let buf = 0x80000 + u64::from(id) * 0x1000;
        let mut f = vec![0u8; len as usize];
        mem.read_slice(&mut f, GuestAddress(buf)).unwrap();
        // One descriptor per chain: the next chain head is the descriptor just used.
        assert_eq!(u32::from(rx.next_desc % rx.size), id);
        rx.add_chain(&[(buf, 2048, true)]);
        Driver::reg_write(&mut tr, 0x50, 0);
        let f = f.split_off(HDR_LEN);
        if f.len() >= 42 && f[12..14] == [0x08, 0x06] && f[20..22] == [0, 2] {
            break f;
        }
    };
    assert_eq!(&reply[0..6], &mac, "addressed to the guest");
    assert_eq!(
        &reply[28..32],
        &t.gateway.octets(),
        "the bridge answers for the gateway"
    );
    assert_eq!(&reply[38..42], &t.address.octets());
    drop(tr);
    net.detach(id).unwrap();
    let mut nl = Netlink::open().unwrap();
    assert_eq!(nl.link_index(&t.tap).unwrap(), None, "tap removed");
}

#[test]
fn net_device_on_a_bridged_tap_is_seen_by_the_guest() {
    if !kvm_usable() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let home = BerthHome::at(dir.path()).unwrap();
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
            mac: guest_mac(id),
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
    let mut nl = Netlink::open().unwrap();
    assert_eq!(nl.link_index(&t.tap).unwrap(), None);
    assert_eq!(nl.link_index(&bridge).unwrap(), None);
}
