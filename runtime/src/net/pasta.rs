//! Rootless isolated networking with `pasta` (Debian package `passt`): a user-mode network
//! stack attached to the environment's namespace. It gives the environment the host's
//! addresses and routes, DNS and outbound TCP/UDP without any privilege, and forwards the
//! declared ports from the host into the namespace.
//!
//! An unprivileged supervisor cannot enter a namespace owned by another user namespace
//! (`setns` wants `CAP_SYS_ADMIN` in its own namespace too), so in rootless mode pasta does the
//! port forwarding itself; berth only checks beforehand that the host ports are free, to give
//! the same clear error as the root forwarder.

use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, TcpListener, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use envfile_spec::plan::Protocol;

use super::error::NetError;
use super::forward::{ForwardError, ForwardSpec};
use super::netns::EnvNamespaces;
use super::port_owner::find_port_holder;

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/bin:/bin"));
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|d| d.join(name))
        .find(|p| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(p)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// The TUN device pasta opens inside the environment's namespace.
const TUN: &str = "/dev/net/tun";

/// The pasta binary rootless environments use, or why they cannot have a network (for
/// `berth doctor`): pasta missing or broken, or `/dev/net/tun` not usable by this user.
pub fn rootless_network_available() -> Result<PathBuf, String> {
    tun_usable()?;
    let pasta = find_on_path("pasta").ok_or_else(|| {
        "pasta not found on PATH: rootless environments would have no network; install the Debian package `passt`".to_string()
    })?;
    let out = Command::new(&pasta)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            format!(
                "{} cannot run: {e}; reinstall the Debian package `passt`",
                pasta.display()
            )
        })?;
    if !out.status.success() {
        return Err(format!(
            "{} --version failed ({}); reinstall the Debian package `passt`",
            pasta.display(),
            out.status
        ));
    }
    Ok(pasta)
}

fn tun_usable() -> Result<(), String> {
    use nix::unistd::{access, AccessFlags};
    if !std::path::Path::new(TUN).exists() {
        return Err(format!(
            "{TUN} is missing: pasta needs the TUN device; load the module (`modprobe tun`)"
        ));
    }
    access(TUN, AccessFlags::R_OK | AccessFlags::W_OK).map_err(|e| {
        format!(
            "{TUN} cannot be opened by this user ({e}): pasta needs it for rootless networking; as root run `chmod 0666 {TUN}` (the usual mode)"
        )
    })
}

/// Fails like the root forwarder when a host port of `specs` is taken, naming the holder.
pub fn check_ports_free(specs: &[ForwardSpec]) -> Result<(), ForwardError> {
    for s in specs {
        let r = match s.protocol {
            Protocol::Tcp => TcpListener::bind(s.host).map(drop),
            Protocol::Udp => UdpSocket::bind(s.host).map(drop),
        };
        match r {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) => {
                return Err(ForwardError::PortInUse {
                    protocol: s.protocol,
                    addr: s.host,
                    holder: find_port_holder(s.protocol, s.host),
                })
            }
            Err(source) => {
                return Err(ForwardError::Bind {
                    protocol: s.protocol,
                    addr: s.host,
                    source,
                })
            }
        }
    }
    Ok(())
}

/// pasta's notation for one forwarded port: `ADDRESS/HOSTPORT:GUESTPORT`.
fn port_arg(s: &ForwardSpec) -> String {
    format!("{}/{}:{}", s.host.ip(), s.host.port(), s.guest_port)
}

/// The address the environment sends DNS to when the host's resolver is a loopback stub:
/// pasta maps it to that stub (`--dns-forward`). Link-local, so it never clashes with a
/// real network the environment might reach.
pub const PASTA_DNS: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 53);

/// The command line that attaches pasta to the namespaces at the given paths. `dns_stub`:
/// the host's loopback resolver, reached from inside at [`PASTA_DNS`].
pub fn pasta_args(
    netns: &Path,
    userns: Option<&Path>,
    pid_file: &Path,
    specs: &[ForwardSpec],
    dns_stub: Option<IpAddr>,
) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec!["--config-net".into(), "--quiet".into()];
    if let Some(stub) = dns_stub {
        args.extend([
            "--dns".into(),
            stub.to_string().into(),
            "--dns-forward".into(),
            PASTA_DNS.to_string().into(),
        ]);
    }
    if nix::unistd::geteuid().is_root() {
        // As root pasta would switch to nobody before opening the namespace paths.
        args.extend(["--runas".into(), "0".into()]);
    }
    if let Some(u) = userns {
        args.extend(["--userns".into(), u.into()]);
    }
    args.extend(["--netns".into(), netns.into()]);
    args.extend(["--pid".into(), pid_file.into()]);
    for (flag, proto) in [("-t", Protocol::Tcp), ("-u", Protocol::Udp)] {
        let ports: Vec<String> = specs
            .iter()
            .filter(|s| s.protocol == proto)
            .map(port_arg)
            .collect();
        if ports.is_empty() {
            args.extend([flag.into(), "none".into()]);
        }
        for p in ports {
            args.extend([flag.into(), p.into()]);
        }
    }
    // Nothing is forwarded from the namespace back to the host's ports.
    args.extend(["-T".into(), "none".into(), "-U".into(), "none".into()]);
    args
}

/// A running pasta process attached to one environment. It runs on its own (pasta forks to
/// the background) until [`stop`] — [`super::Network::detach`] calls that from the record.
#[derive(Debug)]
pub struct Pasta {
    pid: u32,
}

impl Pasta {
    /// Starts pasta on the environment's namespaces and waits until it has configured the
    /// network (pasta forks to the background only after that).
    pub fn start(
        env_dir: &Path,
        ns: EnvNamespaces<'_>,
        specs: &[ForwardSpec],
        dns_stub: Option<IpAddr>,
    ) -> Result<Pasta, NetError> {
        let bin = rootless_network_available().map_err(NetError::Rootless)?;
        // pasta opens the namespaces by path. `/proc/self/fd/N` of its own inherited
        // descriptors always passes the kernel's access check, whereas another process's
        // `/proc/PID/...` fails once pasta has dropped its capabilities.
        let inherit: Vec<RawFd> = std::iter::once(ns.net.as_raw_fd())
            .chain(ns.user.map(|u| u.as_raw_fd()))
            .collect();
        let netns = PathBuf::from(format!("/proc/self/fd/{}", ns.net.as_raw_fd()));
        let userns = ns
            .user
            .map(|u| PathBuf::from(format!("/proc/self/fd/{}", u.as_raw_fd())));
        let pid_file = env_dir.join("pasta.pid");
        let _ = std::fs::remove_file(&pid_file);
        let mut cmd = Command::new(&bin);
        cmd.args(pasta_args(
            &netns,
            userns.as_deref(),
            &pid_file,
            specs,
            dns_stub,
        ))
        .stdin(Stdio::null());
        // SAFETY: the closure runs in the forked child before exec and only calls fcntl,
        // which is async-signal-safe; it touches no memory shared with the parent's threads.
        unsafe {
            cmd.pre_exec(move || {
                for &fd in &inherit {
                    if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let out = cmd
            .output()
            .map_err(|e| NetError::Rootless(format!("cannot run {}: {e}", bin.display())))?;
        if !out.status.success() {
            return Err(NetError::Rootless(format!(
                "pasta failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let pid = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| {
                NetError::Rootless(format!(
                    "pasta started but wrote no pid to {}",
                    pid_file.display()
                ))
            })?;
        Ok(Pasta { pid })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }
}

/// Stops the pasta process `pid`, if that pid still is pasta (it may have exited and the
/// number been reused).
pub fn stop(pid: u32) {
    // Its command name may be `passt.avx2` (pasta re-executes the build for the CPU), so
    // look at how it was invoked.
    let is_pasta = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            let argv0 = c.split(|&b| b == 0).next().unwrap_or_default();
            let name = argv0.rsplit(|&b| b == b'/').next().unwrap_or_default();
            name.starts_with(b"pasta")
        })
        .unwrap_or(false);
    if is_pasta {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    #[test]
    fn command_line_forwards_declared_ports_only() {
        let specs = [
            ForwardSpec {
                protocol: Protocol::Tcp,
                host: "127.0.0.1:8080".parse::<SocketAddr>().unwrap(),
                guest_port: 80,
                shared: false,
            },
            ForwardSpec {
                protocol: Protocol::Tcp,
                host: "0.0.0.0:2222".parse::<SocketAddr>().unwrap(),
                guest_port: 22,
                shared: false,
            },
        ];
        let args: Vec<String> = pasta_args(
            Path::new("/proc/1/fd/3"),
            None,
            Path::new("/e/pasta.pid"),
            &specs,
            Some("127.0.0.53".parse().unwrap()),
        )
        .into_iter()
        .map(|a| a.into_string().unwrap())
        .collect();
        let line = args.join(" ");
        assert!(line.contains("--netns /proc/1/fd/3"), "{line}");
        assert!(
            line.contains("-t 127.0.0.1/8080:80 -t 0.0.0.0/2222:22"),
            "{line}"
        );
        assert!(
            line.contains("-u none") && line.contains("-T none -U none"),
            "{line}"
        );
        assert!(!line.contains("--userns"));
        assert!(
            line.contains("--dns 127.0.0.53 --dns-forward 169.254.1.53"),
            "{line}"
        );
    }

    #[test]
    fn busy_port_is_reported_with_its_holder() {
        let held = TcpListener::bind("127.0.0.1:0").unwrap();
        let spec = ForwardSpec {
            protocol: Protocol::Tcp,
            host: held.local_addr().unwrap(),
            guest_port: 1,
            shared: false,
        };
        let msg = check_ports_free(&[spec]).unwrap_err().to_string();
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
    }
}
