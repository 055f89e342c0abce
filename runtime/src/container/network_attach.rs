//! The container backend's side of networking ([`crate::net`]), split by where each step
//! can run (see the module documentation of `net`):
//!
//! - the launcher binds the `[[ports]]` host ports before it unshares
//!   ([`launch`](super::launch));
//! - the starter, once the namespaces exist and before anything runs inside, plumbs the
//!   environment's network namespace ([`attach`]): bridge, veth and NAT as root, pasta
//!   rootless, nothing for `host`; loopback only for `none` and for rootless isolated mode
//!   when pasta cannot run here (then with a notice). It writes the environment's
//!   `/etc/resolv.conf` and records the forwarded ports in `envs/<id>/network.json`;
//! - the supervisor brings its loopback up ([`loopback_up_here`]) and serves the ports;
//! - every stop, also after a `kill -9`, removes what [`attach`] made ([`detach`]), driven by
//!   the record.

use std::fs::File;
use std::path::{Path, PathBuf};

use envfile_spec::plan::NetworkMode;

use super::error::{ContainerError, Context, Result};
use super::rootfs::{write_if_changed, NO_DNS_RESOLV_CONF};
use super::spec::ContainerSpec;
use crate::net::bridge::bridge_name_from_env;
use crate::net::forward::ForwardedPort;
use crate::net::netlink::Netlink;
use crate::net::{rootless_network_available, EnvNamespaces, Network, NetworkOptions};
use crate::state::BerthHome;

fn network_in(home: &Path) -> Result<Network> {
    let home = BerthHome::at(home)?;
    Ok(Network::new(&home, NetworkOptions::default()))
}

/// The network mode the environment actually gets: rootless isolated mode needs pasta, and
/// without it (missing, or `/dev/net/tun` not usable by this user) the environment keeps
/// loopback only, its ports still forwarded by the supervisor.
pub fn effective_mode(network: &Network, wanted: NetworkMode) -> (NetworkMode, Option<String>) {
    if network.uses_pasta(wanted) {
        if let Err(why) = rootless_network_available() {
            return (
                NetworkMode::None,
                Some(format!(
                    "no outbound network for this rootless environment (loopback only; [[ports]] are still forwarded): {why}"
                )),
            );
        }
    }
    (wanted, None)
}

/// Where the starter finds the environment's network namespace.
pub enum EnvNetns<'a> {
    /// That of the process with this host pid (the supervisor), and its user namespace too
    /// where rootless plumbing needs it.
    Of(i32),
    /// Opened already (the namespace setup process's, [`LaunchEvent::Netns`]), for plumbing
    /// as root: no user namespace is needed then.
    ///
    /// [`LaunchEvent::Netns`]: super::launch_report::LaunchEvent::Netns
    Open(&'a File),
}

/// The environment's `/etc/resolv.conf` as its network step chose it, for
/// [`ResolvConf::write`] once the launcher made the file (with the root's mounts).
#[must_use = "the environment's resolv.conf is written by ResolvConf::write"]
pub struct ResolvConf(Option<String>);

impl ResolvConf {
    /// Writes the file (keeping its inode: it is bound into the environment); nothing when
    /// the environment shares the host's network.
    pub fn write(self, spec: &ContainerSpec) -> Result<()> {
        match self.0 {
            Some(content) => write_resolv_conf(spec, &content),
            None => Ok(()),
        }
    }
}

/// The starter's network step for the environment whose network namespace is `ns`; `ports`
/// are the host ports the launcher bound. (`berth up` tells the user when the environment
/// gets less network than it asked for, see [`effective_mode`].) Returns the environment's
/// resolv.conf to write.
pub fn attach(
    spec: &ContainerSpec,
    ns: &EnvNetns<'_>,
    own_userns: bool,
    ports: &[ForwardedPort],
) -> Result<ResolvConf> {
    let nothing = ResolvConf(None);
    if spec.network == NetworkMode::Host {
        return Ok(nothing);
    }
    let Some(home) = &spec.net_home else {
        return Ok(nothing);
    };
    let network = network_in(home)?;
    let (mode, _) = effective_mode(&network, spec.network);
    let resolv_conf = match mode {
        NetworkMode::Host => return Ok(nothing),
        NetworkMode::None => {
            // Nothing on the host to remove: a throw-away run without ports makes no record
            // (one file less made and removed per run; its `up` reports loopback only from
            // the plan, and `detach` finds nothing to do without a record).
            if !spec.volatile_upper || !ports.is_empty() {
                network.record_loopback_only(spec.network_id())?;
            }
            NO_DNS_RESOLV_CONF.to_string()
        }
        NetworkMode::Isolated => {
            if !network.uses_pasta(mode) {
                bridge_name_from_env().map_err(ContainerError::Invalid)?;
            }
            crate::host::fault_injection::checkpoint("network-attach");
            let open = |pid: i32, kind: &str| {
                let p = PathBuf::from(format!("/proc/{pid}/ns/{kind}"));
                File::open(&p).context(|| {
                    format!(
                        "cannot open {} of the starting environment (did its supervisor exit?)",
                        p.display()
                    )
                })
            };
            let rootless = !nix::unistd::geteuid().is_root();
            let opened;
            let (net, user) = match ns {
                EnvNetns::Of(pid) => {
                    opened = open(*pid, "net")?;
                    let user = match own_userns && rootless {
                        true => Some(open(*pid, "user")?),
                        false => None,
                    };
                    (&opened, user)
                }
                EnvNetns::Open(net) => (*net, None),
            };
            let plumbing = network.plumb(
                spec.network_id(),
                EnvNamespaces {
                    net,
                    user: user.as_ref(),
                },
                mode,
                &[],
            )?;
            if plumbing.dns_forwarder.is_some() {
                // Its relay would have to live in a host-side process for as long as the
                // environment runs; a container has none.
                eprintln!("berth: notice: the host's resolvers are IPv6-only, which the IPv4 bridge cannot reach: DNS inside {} will not work; give the host an IPv4 resolver", spec.hostname);
            }
            if let Err(e) = network.forward_in_kernel(spec.network_id(), net, ports) {
                eprintln!("berth: notice: {e}; the ports of {} are forwarded in user space instead (slower)", spec.hostname);
            }
            plumbing
                .resolv_conf
                .unwrap_or_else(|| NO_DNS_RESOLV_CONF.to_string())
        }
    };
    // The record written above already lists no ports: rewritten only when there are some.
    if !ports.is_empty() {
        network.record_ports(spec.network_id(), ports)?;
    }
    Ok(ResolvConf(Some(resolv_conf)))
}

/// Removes what [`attach`] set up on the host for the environment in `state_dir` (veth,
/// lease, bridge and NAT table when it was the last, pasta). Idempotent; a no-op for an
/// environment that never had a network.
pub fn detach(state_dir: &Path) -> Result<()> {
    if let Some((network, id)) = recorded_network(state_dir)? {
        network.detach(&id)?;
    }
    Ok(())
}

/// The part of [`detach`] that frees the environment's forwarded host ports (their rules on
/// the host, a pasta process), for a stop that leaves the rest for later. Idempotent; the
/// later [`detach`] finds it done.
pub fn release_ports(state_dir: &Path) -> Result<()> {
    if let Some((network, id)) = recorded_network(state_dir)? {
        network.release_forwarded_ports(&id)?;
    }
    Ok(())
}

/// The network of the environment in `state_dir` and its id there, from its recorded spec;
/// `None` for an environment that never had one.
fn recorded_network(state_dir: &Path) -> Result<Option<(Network, String)>> {
    let spec: Option<ContainerSpec> = crate::state::read_json(&state_dir.join("spec.json"))?;
    match spec {
        Some(spec) => match &spec.net_home {
            Some(home) => Ok(Some((network_in(home)?, spec.network_id().to_string()))),
            None => Ok(None),
        },
        None => Ok(None),
    }
}

/// Where the environment's `/etc/resolv.conf` comes from: a file in its state folder, bound
/// over the image's by [`OverlayRootfs`](super::rootfs::OverlayRootfs).
pub fn resolv_conf_file(spec: &ContainerSpec) -> PathBuf {
    spec.state_dir.join("etc").join("resolv.conf")
}

/// Writes the environment's resolv.conf, keeping the file's inode: it is bind-mounted into
/// the environment already.
fn write_resolv_conf(spec: &ContainerSpec, content: &str) -> Result<()> {
    let path = resolv_conf_file(spec);
    write_if_changed(&path, content.as_bytes())
        .context(|| format!("cannot write {}", path.display()))
}

/// Brings up the loopback interface of the calling process's network namespace.
pub fn loopback_up_here() -> Result<()> {
    let what = || "cannot bring up the environment's loopback interface".to_string();
    let mut nl = Netlink::open().context(what)?;
    if let Some(lo) = nl.link_index("lo").context(what)? {
        nl.set_up(lo).context(what)?;
    }
    Ok(())
}
