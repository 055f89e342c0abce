//! Tap interfaces as berth's network plumbs them for VMs: the backend creates the interface
//! *persistent* ([`create_persistent`]) and plugs it into berth's bridge before the VMM starts;
//! the VMM attaches to it by name ([`Tap::open`], the device half, which lives in the VMM crate
//! `berth_vmm::tap_device`). So the interface outlives a VMM killed with `kill -9`, and
//! [`super::bridge::Bridge::detach`] removes it like a container's veth. Also the guest's MAC
//! address and the probe `berth doctor` runs.

use std::io;
use std::path::Path;

pub use berth_vmm::tap_device::{Tap, TUN_DEVICE};

/// A stable, locally administered unicast MAC address for the guest of `seed` (an
/// environment id).
pub fn guest_mac(seed: &str) -> [u8; 6] {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(seed.as_bytes());
    [0x02, d[0], d[1], d[2], d[3], d[4]]
}

/// Creates the persistent tap interface `name` (or takes over an existing one).
pub fn create_persistent(name: &str) -> io::Result<()> {
    Tap::open(name)?.set_persistent(true)
}

/// Whether this process can create tap interfaces: `/dev/net/tun` opens and `TUNSETIFF` on a
/// throw-away name succeeds (the interface disappears with the descriptor). For `berth doctor`.
pub fn tap_usable() -> Result<(), String> {
    if !Path::new(TUN_DEVICE).exists() {
        return Err(format!(
            "{TUN_DEVICE} is missing (modprobe tun; in a container, pass the device through)"
        ));
    }
    let probe = format!("bprobe{}", std::process::id() % 100_000_000);
    match Tap::open(&probe) {
        Ok(_) => Ok(()),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES)) => {
            Err(format!("{e}: creating a tap needs root (CAP_NET_ADMIN)"))
        }
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::netlink::Netlink;
    use berth_vmm::tap_device::test_tap;

    #[test]
    fn guest_macs_are_local_unicast_and_stable() {
        let m = guest_mac("web-1234");
        assert_eq!(m[0] & 0x03, 0x02, "locally administered, unicast");
        assert_eq!(m, guest_mac("web-1234"));
        assert_ne!(m, guest_mac("web-4321"));
    }

    #[test]
    fn persistent_tap_outlives_its_descriptor_until_deleted() {
        let name = format!("btt{}", std::process::id() % 1_000_000);
        let Some(tap) = test_tap(&name) else {
            return;
        };
        tap.set_persistent(true).unwrap();
        drop(tap);
        let mut nl = Netlink::open().unwrap();
        assert!(
            nl.link_index(&name).unwrap().is_some(),
            "persistent tap kept"
        );
        // A second opener attaches to the same interface. (Busy while a child another test
        // thread forked still holds a copy of the first descriptor, until it execs: its
        // close-on-exec copy goes then.)
        let again = (0..100)
            .find_map(|_| match Tap::open(&name) {
                Err(e) if e.kind() == io::ErrorKind::ResourceBusy => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    None
                }
                other => Some(other),
            })
            .expect("the tap stayed busy for a second")
            .unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(
            again.read(&mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        drop(again);
        assert!(nl.delete_link_named(&name).unwrap());
        assert!(nl.link_index(&name).unwrap().is_none());
        assert!(tap_usable().is_ok());
    }
}
