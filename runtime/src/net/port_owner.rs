//! Which process holds a port: socket inode from `/proc/net/{tcp,tcp6,udp,udp6}`, then the
//! process whose `/proc/PID/fd/*` links to `socket:[INODE]`, and whether that process is a
//! berth environment's supervisor or VMM (then the environment is named).

use std::fmt;
use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::ffi::OsStrExt;

use envfile_spec::plan::Protocol;

/// A process that has a socket bound to a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortHolder {
    pub pid: u32,
    /// The process's command name (`/proc/PID/comm`).
    pub name: String,
    /// The berth environment whose supervisor (or VMM) the process is, by name.
    pub environment: Option<String>,
}

impl fmt::Display for PortHolder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.environment {
            Some(env) => write!(f, "environment {env}"),
            None => write!(f, "pid {} ({})", self.pid, self.name),
        }
    }
}

/// The environment whose supervisor or VMM has the command line `cmdline` (NUL-separated):
/// `… __supervisor BERTH_HOME/envs/<id>` or `… internal-vmm BERTH_HOME/envs/<id>/vmm.json`.
/// Named as its `env.json` says, else by its id.
fn environment_of(cmdline: &[u8]) -> Option<String> {
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let at = args
        .iter()
        .position(|a| *a == b"__supervisor" || *a == b"internal-vmm")?;
    let path = std::path::Path::new(std::ffi::OsStr::from_bytes(args.get(at + 1)?));
    let dir = if args[at] == b"internal-vmm" {
        path.parent()?
    } else {
        path
    };
    let id = dir.file_name()?.to_str()?.to_string();
    let name = fs::read(dir.join("env.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v.get("name")?.as_str().map(str::to_string));
    Some(name.unwrap_or(id))
}

/// TCP state number of a listening socket in `/proc/net/tcp`.
const TCP_LISTEN: u8 = 0x0A;

/// The process holding `addr` for `protocol`, when it can be found (it may live in another
/// PID namespace or belong to another user whose `/proc/PID/fd` we cannot read).
pub fn find_port_holder(protocol: Protocol, addr: SocketAddr) -> Option<PortHolder> {
    let tables: &[&str] = match protocol {
        Protocol::Tcp => &["/proc/net/tcp", "/proc/net/tcp6"],
        Protocol::Udp => &["/proc/net/udp", "/proc/net/udp6"],
    };
    let inodes: Vec<u64> = tables
        .iter()
        .filter_map(|t| fs::read_to_string(t).ok())
        .flat_map(|text| socket_inodes(&text, protocol, addr))
        .collect();
    if inodes.is_empty() {
        return None;
    }
    process_with_socket(&inodes)
}

/// Inodes of the sockets in one `/proc/net/*` table that occupy `addr`.
fn socket_inodes(table: &str, protocol: Protocol, addr: SocketAddr) -> Vec<u64> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (local, state, inode) = (f.get(1)?, f.get(3)?, f.get(9)?);
            let local = parse_hex_addr(local)?;
            let state = u8::from_str_radix(state, 16).ok()?;
            let inode: u64 = inode.parse().ok()?;
            let occupies = local.port() == addr.port()
                && (local.ip() == addr.ip()
                    || local.ip().is_unspecified()
                    || addr.ip().is_unspecified()
                    || mapped_equal(local.ip(), addr.ip()))
                && (protocol == Protocol::Udp || state == TCP_LISTEN);
            (occupies && inode != 0).then_some(inode)
        })
        .collect()
}

fn mapped_equal(a: IpAddr, b: IpAddr) -> bool {
    let canon = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    canon(a) == canon(b)
}

/// Parses `0100007F:1F90` (IPv4) or the 32-hex-digit IPv6 form: each 32-bit word is in host
/// byte order.
fn parse_hex_addr(s: &str) -> Option<SocketAddr> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let words: Vec<u32> = (0..ip.len() / 8)
        .map(|i| u32::from_str_radix(&ip[i * 8..i * 8 + 8], 16).ok())
        .collect::<Option<_>>()?;
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    let ip = match bytes.len() {
        4 => IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])),
        16 => {
            let mut b = [0u8; 16];
            b.copy_from_slice(&bytes);
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

fn process_with_socket(inodes: &[u64]) -> Option<PortHolder> {
    let targets: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    let mut pids: Vec<u32> = fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    for pid in pids {
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(link) = fs::read_link(fd.path()) else {
                continue;
            };
            if targets.iter().any(|t| link.as_os_str() == t.as_str()) {
                let name = fs::read_to_string(format!("/proc/{pid}/comm"))
                    .map(|s| s.trim_end().to_string())
                    .unwrap_or_else(|_| "?".into());
                let environment = fs::read(format!("/proc/{pid}/cmdline"))
                    .ok()
                    .and_then(|c| environment_of(&c));
                return Some(PortHolder {
                    pid,
                    name,
                    environment,
                });
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_net_addresses() {
        assert_eq!(
            parse_hex_addr("0100007F:1F90"),
            Some("127.0.0.1:8080".parse().unwrap())
        );
        assert_eq!(
            parse_hex_addr("00000000000000000000000001000000:0035"),
            Some("[::1]:53".parse().unwrap())
        );
        assert_eq!(parse_hex_addr("zz:1"), None);
    }

    #[test]
    fn matches_listening_tcp_and_wildcards_only() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1\n\
   1: 0100007F:1F90 0100007F:C000 01 00000000:00000000 00:00000000 00000000     0        0 222 1\n\
   2: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 333 1\n";
        let a: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        assert_eq!(socket_inodes(table, Protocol::Tcp, a), vec![111]);
        let b: SocketAddr = "127.0.0.1:80".parse().unwrap();
        assert_eq!(socket_inodes(table, Protocol::Tcp, b), vec![333]);
        let c: SocketAddr = "127.0.0.1:81".parse().unwrap();
        assert!(socket_inodes(table, Protocol::Tcp, c).is_empty());
    }

    #[test]
    fn a_supervisor_or_vmm_is_named_by_its_environment() {
        let d = tempfile::tempdir().unwrap();
        let env = d.path().join("envs/web-12345678");
        fs::create_dir_all(&env).unwrap();
        let sup = format!("/proc/self/exe\0__supervisor\0{}\0", env.display());
        assert_eq!(
            environment_of(sup.as_bytes()).as_deref(),
            Some("web-12345678")
        );
        fs::write(
            env.join("env.json"),
            r#"{"name":"web","env_id":"web-12345678"}"#,
        )
        .unwrap();
        assert_eq!(environment_of(sup.as_bytes()).as_deref(), Some("web"));
        let vmm = format!("berth\0internal-vmm\0{}/vmm.json\0", env.display());
        assert_eq!(environment_of(vmm.as_bytes()).as_deref(), Some("web"));
        assert_eq!(environment_of(b"nginx\0-g\0daemon off;\0"), None);
        let holder = PortHolder {
            pid: 7,
            name: "exe".into(),
            environment: Some("web".into()),
        };
        assert_eq!(holder.to_string(), "environment web");
    }

    #[test]
    fn finds_this_process_holding_a_port() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let holder = find_port_holder(Protocol::Tcp, l.local_addr().unwrap()).unwrap();
        assert_eq!(holder.pid, std::process::id());
        let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let holder = find_port_holder(Protocol::Udp, u.local_addr().unwrap()).unwrap();
        assert_eq!(holder.pid, std::process::id());
    }
}
