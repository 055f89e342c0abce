//! Networking of environments: port forwarding from the host into an environment, the
//! bridge/NAT/DNS setup of isolated mode as root, and user-mode networking (pasta) rootless.
//!
//! # Pieces
//! - [`forward`]: the userspace port forwarder ([`forward::BoundPorts`] binds host ports,
//!   [`forward::PortForwarder`] serves them), with [`tcp_loop`] (one epoll loop per TCP port,
//!   [`relay`] moving bytes with splice) and [`udp_relay`] (per-client sessions).
//! - [`dialer`]: how the forwarder reaches the guest port: [`dialer::NetnsDialer`] (a helper
//!   thread inside the environment's namespace), [`dialer::LoopbackDialer`] (the forwarder
//!   itself runs inside), [`dialer::AddressDialer`] (an address); a VM backend adds a vsock
//!   dialer by implementing [`dialer::Dialer`].
//! - [`bridge`], [`lease_store`], [`nat`], [`dns`], [`subnet`]: isolated mode as root (bridge
//!   `berth0`, veth per environment with bridge-port isolation, machine-wide leases,
//!   nftables table `inet berth`,
//!   resolv.conf and the DNS redirect to a loopback stub).
//! - [`pasta`]: isolated mode rootless; [`rootless_network_available`] for `berth doctor`.
//! - [`network`]: the entry point, [`Network`] (`attach`, `plumb`, `detach`).
//! - [`tap`]: tap interfaces, the host side of a VM's virtio-net device (berth's own VMM);
//!   [`Network::plumb_tap`] plugs one into the bridge.
//! - [`port_nat`]: as root on the bridge, forwarded ports in the kernel (nftables DNAT) in
//!   front of the forwarder, for connections made on the host ([`Network::forward_in_kernel`]).
//! - [`netlink`], [`netns`], [`port_owner`]: the system interfaces underneath.
//!
//! # How a backend uses it
//!
//! A backend whose long-lived process stays in the host's network namespace (a VM
//! supervisor, tests) calls [`Network::attach`] with the plan's ports and keeps the returned
//! [`NetAttachment`] alive; [`Network::detach`] at the end.
//!
//! The container backend's supervisor lives *inside* the environment's namespaces, so the
//! work is split by where each step can run:
//! 1. launcher, still in the host's network namespace, before it unshares: bind the ports,
//!    `BoundPorts::bind(&specs)` (`ForwardSpec::from(&PortPlan)`); a port in use fails here,
//!    naming the process that holds it, before anything else exists. The sockets are
//!    inherited across `fork`.
//! 2. starter, in the network hook (namespaces exist, nothing runs inside yet):
//!    `Network::new(&home, NetworkOptions::default()).plumb(env_id, EnvNamespaces { net:
//!    &File::open("/proc/PID/ns/net")?, user: rootless.then(|| /proc/PID/ns/user) }, mode,
//!    &[])` → [`NetPlumbing`] with the address, gateway and the `resolv.conf` content to
//!    write into the environment (`None`: keep the host's/image's).
//! 3. supervisor, inside: `bound.start(Arc::new(LoopbackDialer))` and keep the returned
//!    [`forward::PortForwarder`] for its lifetime (root and rootless alike).
//! 4. stop/down/destroy, from any process, also after a `kill -9`: `Network::detach(env_id)`
//!    (idempotent; driven by `envs/<id>/network.json`).
//!
//! `BERTH_SUBNET` overrides the bridge subnet (default 10.88.0.0/16, or the first of a few
//! fallbacks that overlaps no host route); `BERTH_BRIDGE` the bridge and nftables table name
//! (default `berth0` / `berth`). Leases and the bridge's users are counted machine-wide
//! ([`lease_store`], `/run/berth/net/<bridge>/`), so any number of berth homes share one
//! bridge; the end-to-end tests still give each home its own, so that "the bridge goes with
//! the last environment" holds per test.
//!
//! The container backend follows these steps in `container::network_attach` (and `launch`,
//! `supervisor`); its ports need no [`NetAttachment`].
//!
//! A VM of berth's own VMM has no namespace on the host: the VM backend calls
//! [`Network::plumb_tap`] (lease, bridge, NAT, a persistent tap for the VMM), puts the address
//! plan on the guest's kernel command line, and the VMM process serves the ports with
//! [`forward::PortForwarder`] and a [`dialer::AddressDialer`] to the guest's address.
//! [`Network::detach`] removes the tap like a veth.

pub mod bridge;
pub mod bridge_idle;
mod bridge_idle_policy;
pub mod dialer;
pub mod dns;
pub mod error;
pub mod forward;
pub mod lease_store;
pub mod nat;
pub mod netlink;
pub mod netns;
pub mod network;
pub mod nft_generation;
pub mod nft_netlink;
pub mod pasta;
pub mod port_nat;
pub mod port_owner;
pub mod relay;
pub mod subnet;
mod sys;
pub mod tap;
pub mod tcp_loop;
pub mod udp_relay;

pub use error::NetError;
pub use netns::EnvNamespaces;
pub use network::{NetAttachment, NetPlumbing, NetRecord, Network, NetworkOptions, TapPlumbing};
pub use pasta::rootless_network_available;
