//! Isolated mode as root: the host bridge, its address leases and one veth pair per
//! environment.
//!
//! The bridge (`berth0`), its nftables table and IPv4 forwarding are host-wide: they exist
//! while at least one environment of any berth home holds a lease, and the last release
//! removes them; or, for a caller that asked ([`LastUser::LeavesIdle`], `berth run` and
//! `berth down`, which then remove it in their detached child), leaves them *idle*
//! ([`super::bridge_idle`]). The shared state (subnet, every home's leases) is the machine-wide record
//! of [`super::lease_store`] (`/run/berth/net/<bridge>/`), changed only under its lock. Each
//! lease is recorded *before* the host is changed, so a crash at any point leaves a record
//! that `detach` (or the next user's release of departed holders) cleans up from.
//!
//! Environments are kept apart at layer 2 by bridge-port isolation (`IFLA_BRPORT_ISOLATED`)
//! on every veth, and at layer 3 by the nftables rule that drops bridge-to-bridge routing.

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;

use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::host::clock::now_ms;
use crate::host::fault_injection::checkpoint;
use crate::state::BerthHome;

use super::bridge_idle_policy::idle_too_briefly;
pub use super::bridge_idle_policy::{LastUser, IDLE_BRIDGE_GRACE};
use super::error::NetError;
use super::lease_store::{port_name, BridgeState, Holder, LeaseEntry, LeaseStore, StoreLock};
use super::nat::{self, NatRules};
use super::netlink::{Netlink, PacketLimits};
use super::subnet::{self, Subnet};

/// Name of the interface inside the environment.
pub const GUEST_INTERFACE: &str = "eth0";

/// Which bridge, nftables table and subnet to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeConfig {
    /// Bridge interface name (at most 15 bytes).
    pub name: String,
    /// Name of berth's nftables table (family `inet`).
    pub nft_table: String,
    /// Requested subnet (CIDR); `None` picks the default or a free fallback.
    pub subnet: Option<String>,
}

/// Names another bridge than `berth0` (and the nftables table of the same name), e.g. for
/// berth homes side by side on one host, whose leases must not mix.
pub const BRIDGE_ENV: &str = "BERTH_BRIDGE";

/// The bridge name `BERTH_BRIDGE` asks for (`None` when unset or empty), or why it cannot be
/// used: it must start with `berth` (berth recognises its own tables by that) and be at most
/// 15 lowercase letters, digits or `_`, so it is valid both as an interface and a table name.
pub fn bridge_name_from_env() -> Result<Option<String>, String> {
    match std::env::var(BRIDGE_ENV).ok().filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(name) => check_bridge_name(&name).map(|()| Some(name)),
    }
}

/// Whether `name` can name berth's bridge and its nftables table.
pub fn check_bridge_name(name: &str) -> Result<(), String> {
    let ok = name.starts_with("berth")
        && name.len() <= 15
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{BRIDGE_ENV}={name:?}: a bridge name must start with `berth` and have at most 15 lowercase letters, digits or `_`"
        ))
    }
}

impl Default for BridgeConfig {
    /// `berth0`, table `inet berth` (or both named by a valid `BERTH_BRIDGE`), subnet from
    /// `BERTH_SUBNET` when set.
    fn default() -> Self {
        let (name, nft_table) = match bridge_name_from_env() {
            Ok(Some(name)) => (name.clone(), name),
            _ => ("berth0".into(), "berth".into()),
        };
        BridgeConfig {
            name,
            nft_table,
            subnet: std::env::var(subnet::SUBNET_ENV)
                .ok()
                .filter(|s| !s.trim().is_empty()),
        }
    }
}

/// An environment's place on the bridge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub address: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub subnet: Subnet,
    /// The host-side veth or tap plugged into the bridge for it.
    pub port: String,
}

/// The usual host-side veth name of an environment (or the tap of a VM): short (IFNAMSIZ
/// is 16) and stable. When another berth home's environment of the same id already holds
/// it, the lease gets a name derived from the home as well ([`Lease::port`] is the truth).
pub fn veth_name(env_id: &str) -> String {
    port_name(env_id)
}

/// A bridge shared by the environments of every berth home on the host; `home` is the one
/// whose environments this value attaches.
#[derive(Debug, Clone)]
pub struct Bridge {
    home: BerthHome,
    config: BridgeConfig,
}

pub(super) fn netlink() -> Result<Netlink, NetError> {
    Netlink::open().map_err(|e| NetError::link("open a netlink socket", e))
}

impl Bridge {
    pub fn new(home: &BerthHome, config: BridgeConfig) -> Bridge {
        Bridge {
            home: home.clone(),
            config,
        }
    }

    pub fn config(&self) -> &BridgeConfig {
        &self.config
    }

    /// The machine-wide record of the bridge. Its name becomes a path under
    /// `/run/berth/net`, so it must be a plain interface name (also when it comes from an
    /// environment's `network.json`): at most 15 lowercase letters, digits or `_`.
    fn store(&self) -> Result<LeaseStore, NetError> {
        Bridge::store_of(&self.config.name)
    }

    pub(super) fn store_of(name: &str) -> Result<LeaseStore, NetError> {
        let plain = !name.is_empty()
            && name.len() <= 15
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !plain {
            return Err(NetError::Subnet(format!(
                "{name:?} is not a bridge name berth makes (at most 15 lowercase letters, digits or `_`); check {BRIDGE_ENV} and the environment's network.json"
            )));
        }
        Ok(LeaseStore::for_bridge(name))
    }

    fn holder(&self, env_id: &str) -> Holder {
        Holder::new(self.home.root(), env_id)
    }

    /// The machine-wide record of the bridge (every home's leases), if it is in use.
    pub fn state(&self) -> Result<Option<BridgeState>, NetError> {
        self.store()?.peek()
    }

    /// Leases an address for `env_id`, sets up the bridge, NAT and forwarding when this is
    /// the first environment, and plugs a veth pair into `netns` (peer `eth0`, address,
    /// default route via the bridge, loopback up).
    /// `dns_stub`: the host's IPv4 loopback resolver, to which DNS sent to the bridge
    /// address is redirected.
    pub fn attach(
        &self,
        env_id: &str,
        netns: &File,
        dns_stub: Option<Ipv4Addr>,
    ) -> Result<Lease, NetError> {
        let lock = self.store()?.lock()?;
        checkpoint("bridge-locked");
        let mut nl = netlink()?;
        let (lease, bridge_index) = self.lease(&lock, &mut nl, env_id, dns_stub)?;
        checkpoint("bridge-leased");
        plug_veth(&mut nl, bridge_index, netns, &lease)?;
        Ok(lease)
    }

    /// Like [`attach`](Self::attach) for a VM of berth's own VMM: leases an address and plugs
    /// a persistent tap interface named [`Lease::port`] into the bridge, for the VMM to attach
    /// to ([`super::tap::Tap::open`]). The guest configures its own side (the address goes on
    /// its kernel command line). [`detach`](Self::detach) removes the tap like a veth.
    pub fn attach_tap(&self, env_id: &str, dns_stub: Option<Ipv4Addr>) -> Result<Lease, NetError> {
        let lock = self.store()?.lock()?;
        let mut nl = netlink()?;
        let (lease, bridge_index) = self.lease(&lock, &mut nl, env_id, dns_stub)?;
        plug_tap(&mut nl, &lease.port, bridge_index)?;
        Ok(lease)
    }

    /// The record under the lock, with this home's leases file of an earlier berth folded
    /// in.
    fn load(&self, lock: &StoreLock) -> Result<Option<BridgeState>, NetError> {
        let store = self.store()?;
        let mut st = store.load(lock)?;
        store.adopt_home_file(
            lock,
            self.home.root(),
            &self.config.name,
            &self.config.nft_table,
            &mut st,
        )?;
        Ok(st)
    }

    /// Leases `env_id` an address (its old one if it has one), recording it first, then
    /// prepares the bridge; returns the lease and the bridge's interface index. Called
    /// under the lock.
    fn lease(
        &self,
        lock: &StoreLock,
        nl: &mut Netlink,
        env_id: &str,
        dns_stub: Option<Ipv4Addr>,
    ) -> Result<(Lease, u32), NetError> {
        let name = self.config.name.clone();
        let mut st = match self.load(lock)? {
            Some(st) if !st.leases.is_empty() => {
                self.check_same_subnet(&st)?;
                st
            }
            unused => {
                let subnet = subnet::choose_subnet(
                    self.config.subnet.as_deref(),
                    &subnet::host_routes(),
                    &name,
                )
                .map_err(NetError::Subnet)?;
                match unused {
                    // An idle bridge (its last user left it up): used again as it is.
                    Some(idle)
                        if idle.subnet == subnet && idle.nft_table == self.config.nft_table =>
                    {
                        idle
                    }
                    // Idle, but not what this attach asks for: removed, then made anew.
                    Some(idle) => {
                        remove_from_host(lock, nl, &idle)?;
                        BridgeState::new(&name, subnet, &self.config.nft_table)
                    }
                    None => BridgeState::new(&name, subnet, &self.config.nft_table),
                }
            }
        };
        let holder = self.holder(env_id);
        release_departed(&mut st, nl, Some(&holder));
        st.idle_since_ms = None;
        let entry = match st.lease_of(&holder) {
            Some(l) => l.clone(),
            None => {
                let entry = LeaseEntry {
                    address: st.free_address()?,
                    port: st.free_port_name(&holder),
                    holder,
                };
                st.leases.push(entry.clone());
                entry
            }
        };
        // Recorded before anything is created: a crash from here on leaves a lease that
        // `detach` (or the next user's clean-up of departed holders) removes.
        let store = self.store()?;
        store.save(lock, &st)?;
        let bridge_index = prepare_bridge(nl, &st, dns_stub, &store.dir().join(APPLIED_FILE))?;
        let lease = Lease {
            address: entry.address,
            gateway: st.subnet.gateway(),
            subnet: st.subnet,
            port: entry.port,
        };
        Ok((lease, bridge_index))
    }

    /// A subnet asked for (`BERTH_SUBNET`) must be the one the bridge already has: another
    /// berth home (another job, another user) made it and its environments use it.
    fn check_same_subnet(&self, st: &BridgeState) -> Result<(), NetError> {
        let Some(asked) = self.config.subnet.as_deref() else {
            return Ok(());
        };
        match asked.parse::<Subnet>() {
            Ok(s) if s != st.subnet => Err(NetError::SubnetInUse {
                bridge: st.bridge.clone(),
                subnet: st.subnet.to_string(),
                asked: s.to_string(),
                users: st.leases.len(),
            }),
            Ok(_) => Ok(()),
            Err(e) => Err(NetError::Subnet(format!("{}: {e}", subnet::SUBNET_ENV))),
        }
    }

    /// Unplugs `env_id` (its veth or tap), drops its lease and, when it was the bridge's
    /// last user in any berth home, removes the NAT table, the bridge and the record, and
    /// restores IPv4 forwarding (unless another berth bridge still needs it); or, with
    /// [`LastUser::LeavesIdle`], leaves them idle for [`IdleBridge::remove_if_idle_for`].
    /// `recorded_port`: the interface the environment's own record names, used when the
    /// lease is already gone. Idempotent.
    pub fn detach(
        &self,
        env_id: &str,
        recorded_port: Option<&str>,
        last: LastUser,
    ) -> Result<(), NetError> {
        let store = self.store()?;
        let mut nl = netlink()?;
        let holder = self.holder(env_id);
        // The environment's own port goes before the lock is taken: deleting a veth whose
        // namespace is still alive waits for the kernel to let go of the device (tens of ms
        // back to back), and a start waiting for this lock would wait for that too. The
        // record, read without the lock, names the port while the lease is held, and no
        // other lease gets that name meanwhile (`BridgeState::free_port_name`). Once the
        // port is gone another command's `release_departed` may drop the lease first: then
        // the locked part below finds none and deletes nothing another lease names.
        let deleted_early = store
            .peek()?
            .and_then(|st| st.lease_of(&holder).map(|l| l.port.clone()));
        if let Some(port) = &deleted_early {
            nl.delete_link_named(port)
                .map_err(|e| NetError::link(format!("delete interface {port}"), e))?;
        }
        let lock = store.lock()?;
        let mut st = self.load(&lock)?;
        let port = match st.as_mut().and_then(|st| st.release(&holder)) {
            // Gone already: the name was ours from the early delete until this release.
            Some(entry) if deleted_early.as_ref() == Some(&entry.port) => None,
            Some(entry) => Some(entry.port),
            None => recorded_port
                .map(str::to_string)
                .or_else(|| Some(veth_name(env_id)))
                // Never another environment's interface of the same name.
                .filter(|p| {
                    !st.as_ref()
                        .is_some_and(|st| st.port_used_by_other(p, &holder))
                }),
        };
        if let Some(port) = port {
            nl.delete_link_named(&port)
                .map_err(|e| NetError::link(format!("delete interface {port}"), e))?;
        }
        let Some(mut st) = st else {
            // Nobody uses the bridge: the lock taken for this call is all there is.
            return store.remove(lock);
        };
        release_departed(&mut st, &mut nl, Some(&holder));
        if last == LastUser::LeavesIdle && st.leases.is_empty() {
            st.idle_since_ms = Some(now_ms());
            return store.save(&lock, &st);
        }
        settle(&store, lock, &mut nl, &st)
    }

    /// Garbage collection: releases the leases of holders that are gone (their
    /// environment folder or their interface; see [`release_departed`]) and, when none is
    /// left (an idle bridge too, whose remover was killed), removes the bridge, NAT table and
    /// record. Skips when the bridge has no record or another process is changing it (that
    /// one releases them, or uses the bridge). Returns how many leases went.
    pub fn collect_departed(&self) -> Result<usize, NetError> {
        let store = self.store()?;
        if !store.dir().exists() {
            return Ok(0);
        }
        let Some(lock) = store.try_lock()? else {
            return Ok(0);
        };
        let Some(mut st) = self.load(&lock)? else {
            return Ok(0);
        };
        let mut nl = netlink()?;
        let before = st.leases.len();
        release_departed(&mut st, &mut nl, None);
        let released = before - st.leases.len();
        // A bridge left idle moments ago is its last user's remover's (see `bridge_idle`).
        if released > 0 || (st.leases.is_empty() && !idle_too_briefly(&st, IDLE_BRIDGE_GRACE)) {
            settle(&store, lock, &mut nl, &st)?;
        }
        Ok(released)
    }
}

/// Saves the record, or, when no lease is left, removes the NAT table, the bridge, the
/// record and its lock, and restores IPv4 forwarding (unless another berth bridge needs it).
pub(super) fn settle(
    store: &LeaseStore,
    lock: StoreLock,
    nl: &mut Netlink,
    st: &BridgeState,
) -> Result<(), NetError> {
    if !st.leases.is_empty() {
        return store.save(&lock, st);
    }
    remove_from_host(&lock, nl, st)?;
    store.remove(lock)
}

/// Removes the bridge of `st`, its NAT table and the note of the ruleset applied, and
/// restores IPv4 forwarding (unless another berth bridge needs it); the record stays. Under
/// the lock, for a bridge no lease uses.
pub(super) fn remove_from_host(
    _lock: &StoreLock,
    nl: &mut Netlink,
    st: &BridgeState,
) -> Result<(), NetError> {
    let store = Bridge::store_of(&st.bridge)?;
    let _ = std::fs::remove_file(store.dir().join(APPLIED_FILE));
    NatRules::remove(&st.nft_table)?;
    nl.delete_link_named(&st.bridge)
        .map_err(|e| NetError::link(format!("delete bridge {}", st.bridge), e))?;
    nat::release_ipv4_forwarding(&st.nft_table)?;
    Ok(())
}

/// Beside the bridge's record: the nftables ruleset generation right after berth applied
/// its table, and a hash of the ruleset applied (`<generation> <hex>`).
const APPLIED_FILE: &str = "nft-applied";

/// Creates the bridge, its address, the NAT table and forwarding when they are missing;
/// returns the bridge's interface index. A known bridge still gets them re-asserted
/// (idempotent), in case someone flushed the ruleset or the host rebooted; the NAT table
/// only when the ruleset changed since berth applied it (see [`nat_table_is_current`]).
fn prepare_bridge(
    nl: &mut Netlink,
    st: &BridgeState,
    dns_stub: Option<Ipv4Addr>,
    applied: &std::path::Path,
) -> Result<u32, NetError> {
    let name = &st.bridge;
    let lookup = |nl: &mut Netlink| {
        nl.link_index(name)
            .map_err(|e| NetError::link(format!("look up bridge {name}"), e))
    };
    let existed = lookup(nl)?;
    let index = match existed {
        Some(i) => i,
        None => {
            nl.create_bridge(name, bridge_mac(name))
                .map_err(|e| NetError::link(format!("create bridge {name}"), e))?;
            lookup(nl)?.ok_or_else(|| {
                NetError::link(
                    format!("look up bridge {name}"),
                    std::io::Error::from_raw_os_error(libc::ENODEV),
                )
            })?
        }
    };
    match nl.add_address(index, st.subnet.gateway(), st.subnet.prefix()) {
        Err(e) if e.raw_os_error() != Some(libc::EEXIST) => {
            return Err(NetError::link(
                format!("give bridge {name} the address {}", st.subnet.gateway()),
                e,
            ))
        }
        _ => {}
    }
    nl.set_up(index)
        .map_err(|e| NetError::link(format!("bring bridge {name} up"), e))?;
    if dns_stub.is_some() {
        nat::allow_loopback_destinations(name)?;
    }
    let rules = NatRules {
        table: st.nft_table.clone(),
        bridge: name.clone(),
        subnet: st.subnet,
        dns_stub,
    };
    let ruleset = hex::encode(sha2::Sha256::digest(rules.ruleset().as_bytes()));
    if existed.is_none() || !nat_table_is_current(applied, &ruleset) {
        let _ = std::fs::remove_file(applied);
        rules.apply()?;
        // Read right after the transaction: a change by someone else from here on moves it.
        if let Ok(generation) = super::nft_generation::current() {
            let _ = std::fs::write(applied, format!("{generation} {ruleset}\n"));
        }
    }
    nat::enable_ipv4_forwarding()?;
    Ok(index)
}

/// Whether berth's NAT table is still exactly the `ruleset` (hash) berth applied last: the
/// ruleset generation has not moved since (nobody changed any table, ours included, nor
/// flushed the ruleset; a reboot empties `/run` with the record).
fn nat_table_is_current(applied: &std::path::Path, ruleset: &str) -> bool {
    let Ok(text) = std::fs::read_to_string(applied) else {
        return false;
    };
    let mut words = text.split_whitespace();
    let (Some(generation), Some(hash)) = (words.next(), words.next()) else {
        return false;
    };
    hash == ruleset
        && super::nft_generation::current()
            .is_ok_and(|now| generation.parse::<u32>().is_ok_and(|g| g == now))
}

/// The bridge's own hardware address: stable (from its name), locally administered,
/// unicast. Fixed, so removing a port never changes the MAC behind the gateway address.
fn bridge_mac(name: &str) -> [u8; 6] {
    let d = sha2::Sha256::digest(format!("berth bridge {name}").as_bytes());
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&d[..6]);
    mac[0] = (mac[0] & 0xfe) | 0x02;
    mac
}

/// Releases the leases of holders that are gone, except `keep`'s: an environment whose
/// interface no longer exists (its namespace died, which removes the veth pair with it),
/// or whose folder is gone (its home was deleted; its tap, if any, is removed here).
pub(super) fn release_departed(st: &mut BridgeState, nl: &mut Netlink, keep: Option<&Holder>) {
    st.leases.retain(|l| {
        if Some(&l.holder) == keep {
            return true;
        }
        if !l.holder.env_dir().exists() {
            let _ = nl.delete_link_named(&l.port);
            return false;
        }
        !matches!(nl.link_index(&l.port), Ok(None))
    });
}

/// MTU of every port of berth's bridge: both ends of an environment's veth pair and a VM's
/// tap (whose device advertises it to the guest, `VIRTIO_NET_F_MTU`). Traffic between the
/// host and an environment (forwarded ports through the kernel, the gateway's services, DNS)
/// and between environments and VMs then moves in packets about as large as on loopback.
/// It is the largest MTU a tap takes (65535 less the Ethernet header): the bridge takes the
/// smallest MTU of its ports, and a port below the others would drop their larger packets.
/// Outbound traffic keeps the uplink's MTU by the `mtu` of the environment's default route
/// (a VM's by `berth.mtu=` on its kernel command line).
pub const ENV_LINK_MTU: u32 = 65521;

/// The largest IPv4 packet the stack builds (GSO) and merges (GRO) on the host's end of every
/// environment's veth pair and on the bridge (set as each veth joins): 524,280 bytes, the
/// most both take ("BIG TCP", Linux 6.3+; older kernels ignore it and keep 64 KiB). The host
/// sending to an environment's address (the gateway's services, a client using the address)
/// hands the stack 8x fewer, larger packets than loopback's 64 KiB, each bridged, looked up by
/// conntrack and handed to the environment once (`bench/net.sh`, the floor rows: about half
/// the CPU per GiB). The wire is unchanged (the MTU is [`ENV_LINK_MTU`]). A VM's tap takes
/// 64 KiB, and the bridge adopts that until the next veth joins after the tap left.
///
/// The environment's own end (`eth0`) takes the same size for what it sends to the host (a
/// server answering through a forwarded port, whose replies go to the gateway address:
/// `bench/net.sh`'s download, 0.6x direct loopback's CPU per GiB instead of 1.2-1.3x), but with at most [`outbound_segments`] segments per packet:
/// its packets to the internet leave through the uplink, which takes at most 64 KiB, and a
/// larger packet would be cut into MTU-sized ones in software on the way (measured: 2.5-3x the
/// CPU per byte sent out, at 0.3-0.4x the rate). Outbound connections have the uplink's
/// segment size (the default route's MTU), so that many of them fill 64 KiB; connections to
/// the host have the bridge's (about 64 KiB each), so 8 of them fill 524,280 bytes. (A UDP
/// sender batching more datagrams than the limit with `UDP_SEGMENT` has them split at `eth0`,
/// in software, rather than on the way out.)
pub const ENV_LINK_PACKET: u32 = 524_280;

/// The largest packet the uplink (and any device on the way out with the kernel's defaults)
/// takes whole: 64 KiB, less the most a TCP stack keeps for headers (`MAX_TCP_HEADER`, 320
/// bytes, and one).
const UPLINK_PACKET: u32 = 65_536 - 321;

/// Most segments in one packet the environment's `eth0` builds, so that a packet of a
/// connection through the default route, whose segments are at most `outbound_mtu` less 40
/// bytes of IPv4 and TCP headers, stays within 64 KiB ([`UPLINK_PACKET`]): 47 for an MTU of
/// 1400, 44 for 1500, 7 for 9000; at least 1.
pub fn outbound_segments(outbound_mtu: u32) -> u32 {
    (UPLINK_PACKET / outbound_mtu.saturating_sub(40).max(1)).max(1)
}

/// MTU of the interface carrying the host's default route (1500 when unknown), so that
/// environments never send packets the uplink must fragment.
pub(crate) fn uplink_mtu() -> u32 {
    let iface = std::fs::read_to_string("/proc/net/route")
        .ok()
        .and_then(|t| {
            t.lines().skip(1).find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.get(1) == Some(&"00000000") && f.get(7) == Some(&"00000000"))
                    .then(|| f[0].to_string())
            })
        });
    iface
        .and_then(|i| std::fs::read_to_string(format!("/sys/class/net/{i}/mtu")).ok())
        .and_then(|m| m.trim().parse().ok())
        .unwrap_or(1500)
}

fn plug_veth(
    nl: &mut Netlink,
    bridge_index: u32,
    netns: &File,
    lease: &Lease,
) -> Result<(), NetError> {
    let veth = &lease.port;
    let outbound_mtu = uplink_mtu();
    // A veth of an earlier run whose namespace is still alive: replace it.
    nl.delete_link_named(veth)
        .map_err(|e| NetError::link(format!("delete stale veth {veth}"), e))?;
    nl.create_veth(
        veth,
        bridge_index,
        GUEST_INTERFACE,
        netns.as_fd(),
        ENV_LINK_MTU,
        Some(ENV_LINK_PACKET),
        Some(PacketLimits {
            ipv4_bytes: ENV_LINK_PACKET,
            segments: Some(outbound_segments(outbound_mtu)),
        }),
    )
    .map_err(|e| NetError::link(format!("create veth {veth}"), e))?;
    checkpoint("veth-created");
    let index = nl
        .link_index(veth)
        .map_err(|e| NetError::link(format!("look up veth {veth}"), e))?
        .ok_or_else(|| {
            NetError::link(
                format!("look up veth {veth}"),
                std::io::Error::from_raw_os_error(libc::ENODEV),
            )
        })?;
    nl.set_bridge_port_isolated(index)
        .map_err(|e| NetError::link(format!("isolate bridge port {veth}"), e))?;
    nl.set_up(index)
        .map_err(|e| NetError::link(format!("bring veth {veth} up"), e))?;
    // Only now can the bridge take large packets: its limit is the smallest of its ports'
    // (64 KiB with none). Refused while a VM's tap is on it: the bridge keeps 64 KiB then.
    match nl.set_ipv4_packet_size(bridge_index, ENV_LINK_PACKET) {
        Err(e) if e.raw_os_error() != Some(libc::EINVAL) => {
            return Err(NetError::link(
                format!("set the largest IPv4 packet of the bridge (for {veth})"),
                e,
            ))
        }
        _ => {}
    }
    checkpoint("veth-up");
    configure_guest(netns, lease, outbound_mtu)
}

fn plug_tap(nl: &mut Netlink, tap: &str, bridge_index: u32) -> Result<(), NetError> {
    // A tap of an earlier run (its VMM was killed): replace it.
    nl.delete_link_named(tap)
        .map_err(|e| NetError::link(format!("delete stale tap {tap}"), e))?;
    super::tap::create_persistent(tap)
        .map_err(|e| NetError::link(format!("create tap {tap}"), e))?;
    let plugged = (|| {
        let index = nl
            .link_index(tap)?
            .ok_or_else(|| std::io::Error::from_raw_os_error(libc::ENODEV))?;
        // Before joining: a port below the bridge's MTU would pull the bridge down with it.
        nl.set_mtu(index, ENV_LINK_MTU)?;
        nl.set_master(index, bridge_index)?;
        nl.set_bridge_port_isolated(index)?;
        nl.set_up(index)
    })();
    if let Err(e) = plugged {
        let _ = nl.delete_link_named(tap);
        return Err(NetError::link(format!("plug tap {tap} into the bridge"), e));
    }
    Ok(())
}

/// Inside the environment: loopback up, `eth0` addressed and up, default route via the bridge
/// carrying packets of at most `outbound_mtu` (the uplink's; `eth0` itself has
/// [`ENV_LINK_MTU`] for the host and the gateway on the subnet).
fn configure_guest(netns: &File, lease: &Lease, outbound_mtu: u32) -> Result<(), NetError> {
    let mut nl = Netlink::open_in(netns).map_err(NetError::Namespace)?;
    let step = |what: &str, r: std::io::Result<()>| {
        r.map_err(|e| NetError::link(format!("{what} inside the environment"), e))
    };
    if let Some(lo) = nl.link_index("lo").ok().flatten() {
        step("bring lo up", nl.set_up(lo))?;
    }
    let eth = nl
        .link_index(GUEST_INTERFACE)
        .map_err(|e| NetError::link("look up eth0 inside the environment", e))?
        .ok_or_else(|| {
            NetError::link(
                "look up eth0 inside the environment",
                std::io::Error::from_raw_os_error(libc::ENODEV),
            )
        })?;
    match nl.add_address(eth, lease.address, lease.subnet.prefix()) {
        Err(e) if e.raw_os_error() != Some(libc::EEXIST) => {
            return step(&format!("give eth0 the address {}", lease.address), Err(e))
        }
        _ => {}
    }
    step("bring eth0 up", nl.set_up(eth))?;
    let route_mtu = (outbound_mtu < ENV_LINK_MTU).then_some(outbound_mtu);
    match nl.add_default_route(lease.gateway, eth, route_mtu) {
        Err(e) if e.raw_os_error() != Some(libc::EEXIST) => step(
            &format!("add the default route via {}", lease.gateway),
            Err(e),
        ),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbound_packets_of_the_environment_fit_the_uplinks_64_kib() {
        for (mtu, segs) in [(1400, 47), (1500, 44), (9000, 7)] {
            assert_eq!(outbound_segments(mtu), segs, "MTU {mtu}");
            assert!(segs * (mtu - 40) + 320 < 65_536, "MTU {mtu}");
        }
        // No room for two: one segment, one packet of the MTU, as without a limit.
        assert_eq!(outbound_segments(ENV_LINK_MTU), 1);
        // Connections to the host (segments of the bridge's MTU) still fill 8 per packet.
        assert!(outbound_segments(1500) * (ENV_LINK_MTU - 40) >= ENV_LINK_PACKET - 320);
    }

    #[test]
    fn bridge_names_must_be_berths_and_fit_both_namespaces() {
        assert!(check_bridge_name("berth0").is_ok());
        assert!(check_bridge_name("berth_ci_12345").is_ok());
        for bad in [
            "br0",
            "berth-ci",
            "Berth0",
            "berth0123456789ab",
            "berth0;drop",
        ] {
            let e = check_bridge_name(bad).unwrap_err();
            assert!(e.contains("BERTH_BRIDGE"), "{e}");
        }
    }

    #[test]
    fn a_bridge_name_that_is_no_plain_name_never_becomes_a_path() {
        let home = tempfile::tempdir().unwrap();
        let home = BerthHome::at(home.path()).unwrap();
        for bad in ["../../etc", "berth0/x", "", "Berth0"] {
            let b = Bridge::new(
                &home,
                BridgeConfig {
                    name: bad.into(),
                    nft_table: "berth".into(),
                    subnet: None,
                },
            );
            assert!(b.store().is_err(), "{bad:?}");
        }
    }

    /// The NAT table is not re-applied while the ruleset generation says nobody touched it,
    /// and is when someone did: a table deleted behind berth's back (`nft flush ruleset`,
    /// an admin) is back after the next attach to the kept bridge.
    #[test]
    fn a_nat_table_removed_behind_berths_back_is_applied_again_by_the_next_attach() {
        use crate::net::nat::NatRules;
        use crate::net::network::{assert_released, test_network, DetachOnDrop};
        let d = tempfile::tempdir().unwrap();
        let home = BerthHome::at(d.path()).unwrap();
        let Some(net) = test_network(&home, "n") else {
            return;
        };
        let table = net.options().bridge.nft_table.clone();
        let applied = LeaseStore::for_bridge(&net.options().bridge.name)
            .dir()
            .join(APPLIED_FILE);
        let _a = DetachOnDrop {
            net: &net,
            env_id: "gen-a",
        };
        let _b = DetachOnDrop {
            net: &net,
            env_id: "gen-b",
        };
        net.plumb_tap("gen-a").unwrap();
        assert!(NatRules::exists(&table));
        let noted = std::fs::read_to_string(&applied).unwrap();
        let generation: u32 = noted.split_whitespace().next().unwrap().parse().unwrap();
        assert!(
            super::super::nft_generation::current().unwrap() >= generation,
            "{noted}"
        );

        let deleted = std::process::Command::new("nft")
            .args(["delete", "table", "inet", &table])
            .status()
            .unwrap();
        assert!(deleted.success());
        assert!(!NatRules::exists(&table));
        let t = net.plumb_tap("gen-b").unwrap();
        assert!(NatRules::exists(&table), "applied again");
        assert_ne!(std::fs::read_to_string(&applied).unwrap(), noted);

        net.detach("gen-a").unwrap();
        net.detach("gen-b").unwrap();
        assert_released(&net, "gen-b", &t.tap);
        assert!(!applied.exists(), "removed with the bridge's record");
    }

    #[test]
    fn bridge_macs_are_stable_local_unicast() {
        let a = bridge_mac("berth0");
        assert_eq!(a, bridge_mac("berth0"));
        assert_ne!(a, bridge_mac("berth1"));
        assert_eq!(a[0] & 0x03, 0x02, "locally administered, unicast");
    }

    #[test]
    fn veth_names_fit_ifnamsiz_and_differ() {
        let a = veth_name("web-12345678");
        assert!(a.len() <= 15);
        assert_ne!(a, veth_name("web-87654321"));
    }
}
