//! The launcher: `berth __supervisor <state-dir>`, re-executed by `ContainerBackend::start`.
//! It joins the cgroups, creates the namespaces in the right order with its child, mounts the
//! root filesystem, and forks the supervisor (PID 1 of the environment); see the module
//! documentation of `container` for the process tree. Progress and errors go to the starter
//! as JSON lines on fd [`REPORT_FD`]; the supervisor finishes the root filesystem while the
//! starter runs its network hook, then waits for one byte on [`GO_FD`] (sent after that
//! hook) before anything runs inside.

use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::Path;

use nix::sched::CloneFlags;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult, Gid, Uid};

use super::error::{ContainerError, Context, Result};
use super::idmap::IdMapping;
use super::launch_report::{report, LaunchEvent};
use super::namespaces::{
    enter, environment_flags, make_mounts_private, pipe, private_mount_namespace, recv_byte,
    send_byte,
};
use super::rootfs::{LayerClones, OverlayRootfs};
use super::run_state::ContainerState;
use super::sidecar::Joined;
use super::spec::ContainerSpec;
use super::supervisor;
use crate::host::fault_injection::checkpoint;
use crate::net::forward::{BoundPorts, ForwardedPort, OnPortInUse};

/// The hidden argument that turns berth's binary into the launcher.
pub const SUPERVISOR_ARG: &str = "__supervisor";
/// Where the launcher finds the report pipe (write end).
pub const REPORT_FD: RawFd = 3;
/// Where the launcher finds the go pipe (read end).
pub const GO_FD: RawFd = 4;

/// Entry point of the hidden subcommand. Never returns for the supervisor process.
pub fn main(state_dir: &Path) -> i32 {
    checkpoint("launcher-exec");
    let is_pipe = |fd: RawFd| {
        // SAFETY: fstat into a zeroed stat struct; fails harmlessly on a closed fd.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat writes into `st`, which we exclusively borrow; a closed fd only fails.
        (unsafe { libc::fstat(fd, &mut st) } == 0) && (st.st_mode & libc::S_IFMT) == libc::S_IFIFO
    };
    if !is_pipe(REPORT_FD) || !is_pipe(GO_FD) {
        eprintln!("berth: `{SUPERVISOR_ARG}` is internal; `berth up` starts it");
        return 2;
    }
    // SAFETY: the starter placed the report pipe at REPORT_FD and the go pipe at GO_FD; this
    // process owns them from here on.
    let (report_fd, go_fd) =
        unsafe { (OwnedFd::from_raw_fd(REPORT_FD), OwnedFd::from_raw_fd(GO_FD)) };
    for fd in [&report_fd, &go_fd] {
        let _ = nix::fcntl::fcntl(
            fd.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        );
    }
    match launch(state_dir, report_fd, go_fd) {
        Ok(()) => 0,
        Err((fd, e)) => {
            if let Some(fd) = fd {
                report(
                    &fd,
                    &LaunchEvent::Error {
                        message: e.to_string(),
                    },
                );
            }
            1
        }
    }
}

type LaunchError = (Option<OwnedFd>, ContainerError);

fn launch(state_dir: &Path, report_fd: OwnedFd, go_fd: OwnedFd) -> Result<(), LaunchError> {
    macro_rules! tryr {
        ($e:expr) => {
            match $e {
                Ok(v) => v,
                Err(e) => return Err((Some(report_fd), e.into())),
            }
        };
    }
    let spec: ContainerSpec = tryr!(crate::state::read_json(&state_dir.join("spec.json"))
        .map_err(ContainerError::from)
        .and_then(|s| s.ok_or_else(|| ContainerError::Setup(format!(
            "{}/spec.json is missing",
            state_dir.display()
        )))));
    let state = tryr!(ContainerState::load(state_dir));
    let _ = nix::unistd::setsid();
    // The starter put this process into the cgroups before exec; a stop that raced with the
    // start has already removed them and recorded it.
    if state.phase != super::run_state::Phase::Starting {
        return Err((
            Some(report_fd),
            ContainerError::Setup("the environment was stopped while starting".into()),
        ));
    }
    checkpoint("cgroups-joined");
    let mapping = state.mapping.clone();
    // A sidecar enters the environment's user and network namespaces instead of making them.
    let joined = match &spec.join {
        Some(join) => Some(tryr!(super::sidecar::Joined::open(&spec, join))),
        None => None,
    };
    let is_root = nix::unistd::geteuid().is_root();
    let host_side_mounts = mapping.is_none() || is_root;
    if host_side_mounts {
        tryr!(private_mount_namespace());
    }
    let owner = match (&mapping, is_root) {
        (Some(m), true) => m.host_uid(0).zip(m.host_gid(0)),
        _ => None,
    };
    // Ports first, while still in the host's network namespace: a port in use fails the
    // start here, naming its holder, before anything else exists. The sockets stay in the
    // host's namespace across the unshare and are inherited by the supervisor.
    let ports = tryr!(bind_ports(&spec));
    report(
        &report_fd,
        &LaunchEvent::Ports {
            ports: ports.iter().map(|(p, _)| *p).collect(),
        },
    );
    let listener = tryr!(bind_control_socket(&spec));
    let logs = tryr!(open_logs_dir(&spec, owner));
    // The environment's network namespace is made with its user namespace, first, so the
    // starter plumbs it while this process maps the ids and mounts the root.
    let early_net = joined.is_none() && spec.network != envfile_spec::plan::NetworkMode::Host;
    let (to_child_r, to_child_w) = tryr!(pipe());
    let (from_child_r, from_child_w) = tryr!(pipe());
    // SAFETY: this process is single-threaded (freshly exec'd, no threads started).
    match tryr!(unsafe { fork() }.context(|| "cannot fork".to_string())) {
        ForkResult::Child => {
            drop((to_child_w, from_child_r));
            let r = namespace_child(
                &spec,
                mapping.as_ref(),
                joined.as_ref(),
                host_side_mounts,
                early_net,
                to_child_r,
                from_child_w,
                listener,
                logs,
                &report_fd,
                go_fd,
                ports,
                !is_root,
            );
            if let Err(e) = r {
                report(
                    &report_fd,
                    &LaunchEvent::Error {
                        message: e.to_string(),
                    },
                );
            }
            // SAFETY: leave without running the parent's atexit handlers or destructors twice.
            unsafe { libc::_exit(1) }
        }
        ForkResult::Parent { child } => {
            drop((to_child_r, from_child_w, listener, logs, go_fd, ports));
            if recv_byte(&from_child_r) != Some(1) {
                let _ = waitpid(child, None);
                return Err((
                    None,
                    ContainerError::Setup("the namespace setup process failed".into()),
                ));
            }
            if early_net {
                report(
                    &report_fd,
                    &LaunchEvent::Netns {
                        pid: child.as_raw(),
                    },
                );
            }
            let result = (|| -> Result<Option<LayerClones>> {
                if let (Some(m), None) = (&mapping, &joined) {
                    m.write_for(child.as_raw())?;
                }
                checkpoint("userns-mapped");
                let mut clones = None;
                if host_side_mounts {
                    let ns = match &mapping {
                        Some(_) => Some(OwnedFd::from(
                            fs::File::open(format!("/proc/{child}/ns/user")).context(|| {
                                "cannot open the environment's user namespace".to_string()
                            })?,
                        )),
                        None => None,
                    };
                    clones = Some(
                        OverlayRootfs::new(&spec, mapping.as_ref())
                            .mount_layers(ns.as_ref(), owner)?,
                    );
                }
                checkpoint("rootfs-mounted");
                Ok(clones)
            })();
            send_byte(&to_child_w, if result.is_ok() { 1 } else { 0 });
            let st = waitpid(child, None);
            // The layers' clones go only now, with the environment under way (see LayerClones).
            let _clones = match result {
                Ok(clones) => clones,
                Err(e) => return Err((Some(report_fd), e)),
            };
            match st {
                Ok(WaitStatus::Exited(_, 0)) => Ok(()),
                // The child reported its own error.
                _ => Err((None, ContainerError::Setup("namespace setup failed".into()))),
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn namespace_child(
    spec: &ContainerSpec,
    mapping: Option<&IdMapping>,
    joined: Option<&Joined>,
    host_side_mounts: bool,
    early_net: bool,
    go: OwnedFd,
    ready: OwnedFd,
    listener: UnixListener,
    logs: OwnedFd,
    report_fd: &OwnedFd,
    start_fd: OwnedFd,
    ports: Vec<(ForwardedPort, OwnedFd)>,
    rootless: bool,
) -> Result<()> {
    let net_now = match early_net {
        true => CloneFlags::CLONE_NEWNET,
        false => CloneFlags::empty(),
    };
    match joined {
        Some(j) => j.enter()?,
        None if mapping.is_some() => enter(CloneFlags::CLONE_NEWUSER | net_now)?,
        None if early_net => enter(net_now)?,
        None => {}
    }
    send_byte(&ready, 1);
    if recv_byte(&go) != Some(1) {
        // The launcher failed and reported why.
        // SAFETY: plain exit of a forked child.
        unsafe { libc::_exit(1) }
    }
    if let Some(m) = mapping {
        become_root(m)?;
    }
    if !host_side_mounts {
        private_mount_namespace()?;
        // Without a user namespace to map into there are no clones to keep.
        drop(OverlayRootfs::new(spec, mapping).mount_layers(None, None)?);
    }
    let mut flags = environment_flags(spec.network);
    if joined.is_some() || early_net {
        flags.remove(CloneFlags::CLONE_NEWNET);
    }
    enter(flags)?;
    if !host_side_mounts {
        make_mounts_private()?;
    }
    // SAFETY: single-threaded process.
    match unsafe { fork() }.context(|| "cannot fork the supervisor".to_string())? {
        ForkResult::Child => {
            // SAFETY: the report fd stays valid in the child; re-own a duplicate for the supervisor.
            let report_dup = report_fd
                .try_clone()
                .context(|| "cannot duplicate the report pipe".to_string())?;
            supervisor::run_pid1(
                spec.clone(),
                mapping.cloned(),
                listener,
                logs,
                report_dup,
                start_fd,
                ports,
                rootless,
            )
        }
        ForkResult::Parent { child } => {
            report(
                report_fd,
                &LaunchEvent::Pid {
                    pid: child.as_raw(),
                },
            );
            // SAFETY: plain exit of a forked child; the supervisor is reparented.
            unsafe { libc::_exit(0) }
        }
    }
}

/// Switches to uid/gid 0 inside the new user namespace (its mapped root).
fn become_root(m: &IdMapping) -> Result<()> {
    let zero_g = Gid::from_raw(0);
    let zero_u = Uid::from_raw(0);
    nix::unistd::setresgid(zero_g, zero_g, zero_g)
        .context(|| "cannot become gid 0 in the user namespace".to_string())?;
    if !m.needs_setgroups_deny() {
        nix::unistd::setgroups(&[]).context(|| "cannot clear supplementary groups".to_string())?;
    }
    nix::unistd::setresuid(zero_u, zero_u, zero_u)
        .context(|| "cannot become uid 0 in the user namespace".to_string())
}

/// Binds the host ports of `[[ports]]` (none when the environment shares the host's network).
fn bind_ports(spec: &ContainerSpec) -> Result<Vec<(ForwardedPort, OwnedFd)>> {
    if spec.network == envfile_spec::plan::NetworkMode::Host || spec.ports.is_empty() {
        return Ok(Vec::new());
    }
    let on_clash = if spec.publish_auto {
        OnPortInUse::PickFree
    } else {
        OnPortInUse::Fail
    };
    let bound = BoundPorts::bind_with(&spec.ports, on_clash)?;
    Ok(bound.into_parts())
}

fn bind_control_socket(spec: &ContainerSpec) -> Result<UnixListener> {
    let path = spec.control_socket();
    let _ = fs::remove_file(&path);
    let l = super::control::with_socket_path(&path, |p| UnixListener::bind(p))
        .context(|| format!("cannot create the control socket {}", path.display()))?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
        .context(|| format!("cannot chmod {}", path.display()))?;
    Ok(l)
}

fn open_logs_dir(spec: &ContainerSpec, owner: Option<(u32, u32)>) -> Result<OwnedFd> {
    let dir = spec.logs_dir();
    let f = super::logs::open_logs_dir(&spec.state_dir)
        .context(|| format!("cannot open {}", dir.display()))?;
    if let Some((u, g)) = owner {
        // On the descriptor: a chown by path would follow a link planted in its place.
        nix::unistd::fchown(
            f.as_raw_fd(),
            Some(Uid::from_raw(u)),
            Some(Gid::from_raw(g)),
        )
        .context(|| format!("cannot chown {}", dir.display()))?;
    }
    Ok(OwnedFd::from(f))
}
