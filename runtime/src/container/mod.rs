//! The container backend: an environment is a set of Linux namespaces around an overlay root
//! filesystem, limited by cgroups, with one supervisor process as its PID 1.
//!
//! Process model of [`ContainerBackend::start`](backend::ContainerBackend::start):
//!
//! ```text
//! berth (caller)  ── writes state.json, creates cgroups, spec.json
//!   └─ berth __supervisor <state-dir>   "launcher", host namespaces (re-exec'd from a sealed memfd)
//!        joins the cgroups, private mount namespace (root), control socket
//!        └─ child: unshare(user) → launcher writes uid/gid maps → launcher mounts the
//!           (id-mapped) overlay and binds → child unshare(mnt, uts, ipc, net, cgroup, pid)
//!             └─ grandchild = PID 1 = supervisor: /proc, /sys, /dev, pivot_root, masks,
//!                hostname, services, control loop
//! ```
//! The launcher and the child exit once the supervisor is ready; the supervisor stays, in its
//! own session. All mounts live in private mount namespaces, so nothing leaks to the host's
//! mount table even when everything is killed with SIGKILL.

pub mod backend;
pub mod cgroups;
pub mod control;
pub mod error;
pub mod fault;
pub mod idmap;
pub mod launch;
pub mod logs;
pub mod namespaces;
pub mod rootfs;
pub mod security;
pub mod selfexe;
pub mod spec;
pub mod state;
pub mod step;
pub mod supervisor;
pub mod terminal;
pub mod users;

pub use backend::{ContainerBackend, EnvStatus, Started, StatusReport};
pub use error::ContainerError;
pub use spec::{ContainerSpec, ImageDefaults, MountSpec, UserMappingChoice};
