//! Tap devices (`/dev/net/tun`, `IFF_TAP | IFF_NO_PI`): the host side of a VM's virtio-net
//! device ([`crate::virtio_net`]). Ethernet frames written to a [`Tap`] come out of the host
//! interface of the same name, and frames the host sends there are read from it.
//!
//! berth's runtime creates the interface persistent (`Tap::open` then
//! [`Tap::set_persistent`]) and plugs it into its bridge before the VMM starts; the VMM
//! attaches to it by name ([`Tap::open`]). No vnet header (`IFF_VNET_HDR`): the virtio-net
//! device offers no offloads, so the header carries nothing the host would need.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// The clone device every tap is opened through.
pub const TUN_DEVICE: &str = "/dev/net/tun";

/// An open queue of a tap interface (non-blocking, close-on-exec).
#[derive(Debug)]
pub struct Tap {
    fd: OwnedFd,
    name: String,
}

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn ifreq(name: &str, flags: libc::c_int) -> io::Result<libc::ifreq> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("tap name {name:?} must have 1 to 15 bytes"),
        ));
    }
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut r: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in r.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    r.ifr_ifru.ifru_flags = flags as libc::c_short;
    Ok(r)
}

impl Tap {
    /// Attaches to the tap interface `name`, creating it (not persistent) if it does not exist.
    pub fn open(name: &str) -> io::Result<Tap> {
        let mut req = ifreq(name, libc::IFF_TAP | libc::IFF_NO_PI)?;
        let path = c"/dev/net/tun";
        // SAFETY: open with a valid NUL-terminated path; the descriptor is owned below.
        let raw = cvt(unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_RDWR | libc::O_CLOEXEC | libc::O_NONBLOCK,
            )
        })
        .map_err(|e| io::Error::new(e.kind(), format!("{TUN_DEVICE}: {e}")))?;
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: TUNSETIFF reads (and updates) the ifreq we exclusively borrow.
        cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) })
            .map_err(|e| io::Error::new(e.kind(), format!("attach to tap {name}: {e}")))?;
        Ok(Tap {
            fd,
            name: name.to_string(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Makes the interface outlive this descriptor (`TUNSETPERSIST`), or not.
    pub fn set_persistent(&self, on: bool) -> io::Result<()> {
        // SAFETY: TUNSETPERSIST takes an integer argument, no memory.
        cvt(unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                libc::TUNSETPERSIST,
                libc::c_ulong::from(on),
            )
        })
        .map(drop)
    }

    /// The interface's MTU (`SIOCGIFMTU`): the largest frame payload the host side carries,
    /// which the virtio-net device advertises to the guest.
    pub fn mtu(&self) -> io::Result<u32> {
        let mut req = ifreq(&self.name, 0)?;
        // SAFETY: socket has no pointer arguments; the descriptor is owned right away.
        let raw =
            cvt(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let sock = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: SIOCGIFMTU fills the ifreq we exclusively borrow.
        cvt(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFMTU, &mut req) })
            .map_err(|e| io::Error::new(e.kind(), format!("MTU of tap {}: {e}", self.name)))?;
        // SAFETY: SIOCGIFMTU filled the mtu member of the union.
        let mtu = unsafe { req.ifr_ifru.ifru_mtu };
        Ok(u32::try_from(mtu).unwrap_or(0))
    }

    /// Reads one frame; `WouldBlock` when none is waiting.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
            let rc = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if rc >= 0 {
                return Ok(rc as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Writes one frame.
    pub fn write(&self, frame: &[u8]) -> io::Result<usize> {
        loop {
            // SAFETY: `frame` is valid for reads of `frame.len()` bytes.
            let rc =
                unsafe { libc::write(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
            if rc >= 0 {
                return Ok(rc as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Opens a tap for a test, or says why the test is skipped (no root, no `/dev/net/tun`).
#[cfg(any(test, feature = "test-guest"))]
pub fn test_tap(name: &str) -> Option<Tap> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping: tap devices need root (CAP_NET_ADMIN)");
        return None;
    }
    match Tap::open(name) {
        Ok(t) => Some(t),
        Err(e) => {
            eprintln!("skipping: cannot create a tap device: {e}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_fit_ifnamsiz() {
        assert!(ifreq("", 0).is_err());
        assert!(ifreq("abcdefghijklmnop", 0).is_err());
        assert!(ifreq("bv0123456789", 0).is_ok());
    }
}
