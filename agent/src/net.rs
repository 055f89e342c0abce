//! The guest's network at boot, without external tools: loopback up, and when the kernel
//! command line has `berth.ip=ADDR/PREFIX` (with `berth.gw=` and `berth.dns=` — one address or
//! several separated by commas, and `berth.mtu=`), the first
//! Ethernet interface gets that address, a default route via the gateway (carrying packets of
//! at most `berth.mtu` bytes: the host's uplink's, while the interface itself has the larger
//! MTU of berth's bridge that the device advertises), and `/etc/resolv.conf` names the DNS
//! server. Plain ioctls (SIOCSIFADDR, SIOCSIFNETMASK,
//! SIOCSIFFLAGS, SIOCADDRT) on an AF_INET socket.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::sys;

/// The address plan from the kernel command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    pub addr: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
    /// Resolvers, in order (addresses that do not parse are left out).
    pub dns: Vec<Ipv4Addr>,
    /// The default route's MTU (`berth.mtu`; IPv4's minimum 68 and above).
    pub route_mtu: Option<u32>,
}

impl NetConfig {
    /// `berth.ip=10.0.2.15/24 berth.gw=10.0.2.2 berth.dns=10.0.2.3`; None without `berth.ip`
    /// or when it does not parse.
    pub fn from_cmdline(cmdline: &str) -> Option<NetConfig> {
        let value = |key: &str| {
            cmdline
                .split_whitespace()
                .find_map(|a| a.strip_prefix(key)?.strip_prefix('='))
        };
        let (addr, prefix) = value("berth.ip")?.split_once('/')?;
        let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 32)?;
        Some(NetConfig {
            addr: addr.parse().ok()?,
            prefix,
            gateway: value("berth.gw").and_then(|g| g.parse().ok()),
            dns: value("berth.dns")
                .map(|d| d.split(',').filter_map(|a| a.parse().ok()).collect())
                .unwrap_or_default(),
            route_mtu: value("berth.mtu")
                .and_then(|m| m.parse().ok())
                .filter(|m| *m >= 68),
        })
    }

    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(
            u32::MAX
                .checked_shl(32 - u32::from(self.prefix))
                .unwrap_or(0),
        )
    }
}

fn sockaddr_in(ip: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size; every bit pattern is valid.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    if name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("interface name {name:?} is too long"),
        ));
    }
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut r: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in r.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    Ok(r)
}

/// The kernel's `struct rtentry` (not in the libc crate for glibc targets).
#[repr(C)]
struct RtEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: libc::sockaddr,
    rt_gateway: libc::sockaddr,
    rt_genmask: libc::sockaddr,
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_pad4: *mut libc::c_void,
    rt_metric: libc::c_short,
    rt_dev: *mut libc::c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

struct InetSocket(OwnedFd);

impl InetSocket {
    fn new() -> io::Result<InetSocket> {
        // SAFETY: socket has no pointer arguments; the fd is owned from here on.
        let fd = sys::check(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) })?;
        // SAFETY: fd is a fresh descriptor nobody else owns.
        Ok(InetSocket(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// ioctl `req` with `arg` (an ifreq or rtentry the caller filled in).
    fn ioctl<T>(&self, req: libc::c_ulong, arg: &mut T, what: &str) -> io::Result<()> {
        // SAFETY: `arg` is a valid, exclusively borrowed struct of the type `req` expects.
        sys::check(unsafe { libc::ioctl(self.0.as_raw_fd(), req, arg as *mut T) })
            .map(drop)
            .map_err(|e| io::Error::new(e.kind(), format!("{what}: {e}")))
    }

    fn set_up(&self, name: &str) -> io::Result<()> {
        let mut r = ifreq(name)?;
        self.ioctl(libc::SIOCGIFFLAGS, &mut r, &format!("flags of {name}"))?;
        // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
        let flags = unsafe { r.ifr_ifru.ifru_flags };
        r.ifr_ifru.ifru_flags = flags | (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        self.ioctl(libc::SIOCSIFFLAGS, &mut r, &format!("bringing {name} up"))
    }

    fn set_address(&self, name: &str, cfg: &NetConfig) -> io::Result<()> {
        let mut r = ifreq(name)?;
        r.ifr_ifru.ifru_addr = sockaddr_in(cfg.addr);
        self.ioctl(libc::SIOCSIFADDR, &mut r, &format!("address of {name}"))?;
        let mut r = ifreq(name)?;
        r.ifr_ifru.ifru_netmask = sockaddr_in(cfg.netmask());
        self.ioctl(libc::SIOCSIFNETMASK, &mut r, &format!("netmask of {name}"))
    }

    fn add_default_route(&self, gateway: Ipv4Addr, mtu: Option<u32>) -> io::Result<()> {
        let mut rt = RtEntry {
            rt_pad1: 0,
            rt_dst: sockaddr_in(Ipv4Addr::UNSPECIFIED),
            rt_gateway: sockaddr_in(gateway),
            rt_genmask: sockaddr_in(Ipv4Addr::UNSPECIFIED),
            rt_flags: libc::RTF_UP
                | libc::RTF_GATEWAY
                | if mtu.is_some() { libc::RTF_MTU } else { 0 },
            rt_pad2: 0,
            rt_pad3: 0,
            rt_pad4: std::ptr::null_mut(),
            rt_metric: 0,
            rt_dev: std::ptr::null_mut(),
            rt_mtu: mtu.map_or(0, libc::c_ulong::from),
            rt_window: 0,
            rt_irtt: 0,
        };
        self.ioctl(
            libc::SIOCADDRT,
            &mut rt,
            &format!("default route via {gateway}"),
        )
    }
}

/// The first interface other than loopback, waiting up to `timeout` for its driver.
fn first_ethernet(timeout: Duration) -> Option<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut names: Vec<String> = std::fs::read_dir("/sys/class/net")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n != "lo")
            .collect();
        names.sort();
        if let Some(n) = names.into_iter().next() {
            return Some(n);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Brings loopback up and, with a [`NetConfig`], the first Ethernet interface. Returns what
/// went wrong, for the console; the agent serves anyway.
pub fn configure(cmdline: &str) -> Result<Option<String>, String> {
    let sock = InetSocket::new().map_err(|e| format!("network socket: {e}"))?;
    sock.set_up("lo").map_err(|e| e.to_string())?;
    let Some(cfg) = NetConfig::from_cmdline(cmdline) else {
        return Ok(None);
    };
    let name = first_ethernet(Duration::from_secs(5))
        .ok_or("no network interface appeared (is virtio_net loaded? CONFIG_VIRTIO_NET)")?;
    sock.set_address(&name, &cfg).map_err(|e| e.to_string())?;
    sock.set_up(&name).map_err(|e| e.to_string())?;
    if let Some(gw) = cfg.gateway {
        sock.add_default_route(gw, cfg.route_mtu)
            .map_err(|e| e.to_string())?;
    }
    if !cfg.dns.is_empty() {
        // A dangling symlink (systemd-resolved's stub) would make the write fail.
        let _ = std::fs::remove_file("/etc/resolv.conf");
        let conf: String = cfg
            .dns
            .iter()
            .map(|d| format!("nameserver {d}\n"))
            .collect();
        std::fs::write("/etc/resolv.conf", conf).map_err(|e| format!("/etc/resolv.conf: {e}"))?;
    }
    Ok(Some(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_address_plan() {
        let c = NetConfig::from_cmdline(
            "console=ttyS0 berth.ip=10.0.2.15/24 berth.gw=10.0.2.2 berth.dns=10.0.2.3",
        )
        .unwrap();
        assert_eq!(c.addr, Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(c.netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(c.gateway, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(c.dns, vec![Ipv4Addr::new(10, 0, 2, 3)]);
        assert!(NetConfig::from_cmdline("console=ttyS0").is_none());
        assert!(NetConfig::from_cmdline("berth.ip=10.0.2.15/40").is_none());
        assert!(NetConfig::from_cmdline("berth.ip=nonsense/24").is_none());
        let c = NetConfig::from_cmdline("berth.ip=10.1.2.3/0").unwrap();
        assert_eq!(c.netmask(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(c.gateway, None);
        assert!(c.dns.is_empty());
        assert_eq!(c.route_mtu, None);
        let c = NetConfig::from_cmdline("berth.ip=10.1.2.3/24 berth.mtu=1500").unwrap();
        assert_eq!(c.route_mtu, Some(1500));
        for bad in ["berth.mtu=67", "berth.mtu=big", "berth.mtu="] {
            let c = NetConfig::from_cmdline(&format!("berth.ip=10.1.2.3/24 {bad}")).unwrap();
            assert_eq!(c.route_mtu, None, "{bad}");
        }
        let c = NetConfig::from_cmdline("berth.ip=10.1.2.3/24 berth.dns=10.1.2.1,bogus,9.9.9.9")
            .unwrap();
        assert_eq!(
            c.dns,
            vec![Ipv4Addr::new(10, 1, 2, 1), Ipv4Addr::new(9, 9, 9, 9)]
        );
    }

    #[test]
    fn rtentry_has_the_kernel_layout() {
        assert_eq!(std::mem::size_of::<RtEntry>(), 120);
    }
}
