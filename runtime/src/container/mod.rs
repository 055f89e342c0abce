//! The container backend: an environment is a set of Linux namespaces around an overlay root
//! filesystem, limited by cgroups, with one supervisor process as its PID 1.
//!
//! Process model of [`ContainerBackend::start`](container_backend::ContainerBackend::start):
//!
//! ```text
//! berth (caller)  ── writes state.json, creates cgroups, spec.json
//!   └─ berth __supervisor <state-dir>   "launcher", host namespaces (re-exec'd; sealed if
//!        privileged; a throw-away run's is a fork of the caller instead: [`launcher_fork`])
//!        joins the cgroups, private mount namespace (root), control socket
//!        └─ child: unshare(user) → launcher writes uid/gid maps → launcher mounts the
//!           overlay (of detached id-mapped layers) and binds → child unshare(mnt, uts, ipc,
//!           net, cgroup, pid)
//!             └─ grandchild = PID 1 = supervisor: /proc, /sys, /dev, pivot_root, masks,
//!                hostname, services, control loop
//! ```
//! Networking ([`network_attach`]): the launcher binds the `[[ports]]` host ports before it
//! unshares; once the namespaces exist the starter plumbs the network namespace (bridge +
//! veth + NAT as root, pasta rootless, loopback only for `none` or without pasta) and writes
//! `/etc/resolv.conf` (in place: it is bound already) while the supervisor brings loopback up
//! and enters its root filesystem; the supervisor starts nothing inside before the starter's
//! go, and forwards the ports from inside for its lifetime; every stop removes the host side
//! again, driven by `network.json`.
//!
//! The launcher and the child exit once the supervisor is ready; the supervisor stays, in its
//! own session. All mounts live in private mount namespaces, so nothing leaks to the host's
//! mount table even when everything is killed with SIGKILL.
//!
//! **User namespace by default.** As root the environment's ids map to root's /etc/subuid
//! range, else 100000+65536 (moved above any user's subordinate range when they overlap);
//! image layers are attached as id-mapped mounts so their root-owned files appear owned by
//! root inside while the writable layer belongs to the mapped root. Where the layers'
//! filesystem has no id-mapped mounts ([`idmap_probe`]), copies owned by the environment's
//! range are mounted instead ([`layer_copy`]). Rootless: the user's
//! subordinate range via newuidmap/newgidmap, else a single-id map. `privileged` runs
//! without a user namespace, capability cut or seccomp filter.
//!
//! **Devices** ([`devices`]): only Docker's default devices and the project's `devices` open
//! (devices cgroup: v1 `devices.allow`, v2 an eBPF program built in [`cgroups::device_bpf`]);
//! the overlay, its lowers, volumes and bind mounts are `nodev`; `/dev` is a tmpfs holding
//! the default nodes and the allowed host devices. The state folder is `0710` with the
//! environment's root's group, so no other user reaches its writable layer.
//!
//! **Security of processes inside** ([`security`]): OCI default capabilities (bounding set
//! included), `no_new_privs`, the seccomp allowlist of Docker's default profile
//! ([`seccomp`]: unlisted calls EPERM, unknown newer ones ENOSYS, argument filters on
//! `socket`, `personality` and `clone`, other ABIs killed), installed by the supervisor on
//! itself so PID 1, services and exec sessions all run under it; all fds from 3 up closed
//! before exec. The supervisor is not dumpable (no ptrace, no
//! `/proc/1/exe` from inside); without a user namespace it also runs from a sealed view of
//! berth's binary: through a detached read-only overlay, else a sealed memfd copy ([`selfexe`]). Mount targets are resolved with `openat2(RESOLVE_IN_ROOT)`, so image
//! symlinks cannot redirect mounts onto the host.
//!
//! **Crash safety.** `state.json` ([`run_state`]) records the id mapping and the cgroup paths
//! before they are created, then the starter and the supervisor (pid + start time). The
//! launcher enters the cgroups before its first instruction, so every process of the
//! environment is in them; `stop` (also after a `kill -9` of anything, or an aborted start:
//! `BERTH_ABORT_AT=<step>`, see [`fault`]) kills what is in the cgroups, removes them and the
//! socket. A dying starter closes the "go" pipe, which makes a half-started supervisor exit.
//!
//! **Tests.** Unit tests beside each module; `runtime/tests/container_env.rs` starts real
//! environments over a busybox rootfs (root; it also runs a rootless check as a user it
//! creates). Speed and density: `bench/container.sh`.

pub mod cgroups;
pub mod container_backend;
pub mod container_seam;
pub mod control;
pub mod detached_overlay;
pub mod devices;
pub mod error;
pub mod fault;
pub mod fork_exec;
pub mod fs_context;
pub mod idmap;
pub mod idmap_choice;
pub mod idmap_probe;
pub mod idmap_record;
pub mod in_root;
pub mod launch;
pub mod launch_report;
pub mod launcher_fork;
pub mod layer_copy;
pub mod layer_ids;
pub mod layer_snapshot;
pub mod login_env;
pub mod logs;
pub mod mount_api;
pub mod namespaces;
pub mod network_attach;
pub mod overlay_bind;
pub mod root_bind;
pub mod rootfs;
pub mod rootfs_enter;
pub mod run_state;
pub mod seccomp;
mod seccomp_syscalls;
pub mod security;
pub mod selfexe;
mod services;
pub mod sidecar;
pub mod spec;
pub mod step;
pub mod supervisor;
pub mod sync_root;
pub mod terminal;
mod terminal_relay;

pub use container_backend::ContainerBackend;
pub use error::ContainerError;
pub use spec::{ContainerSpec, MountSpec, UserMappingChoice};
