//! One-shot runs for image builds: a command in a fresh environment over the given layers,
//! its output streamed to a callback, nothing kept but what it wrote into `upper`.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use envfile_spec::plan::NetworkMode;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::container_backend::ContainerBackend;
use super::error::{ContainerError, Context, Result};
use super::idmap::{self, Invoker};
use super::idmap_record::stable_mapping;
use super::layer_ids::unmap_tree;
use super::run_state::ContainerState;
use super::spec::{ContainerSpec, MountSpec, UserMappingChoice};
use crate::backend::ExecRequest;
use crate::image::build::{StepLower, StepMount};
use crate::state::BerthHome;

/// Which output stream bytes came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputStream {
    Stdout,
    Stderr,
}

/// A build step to run.
#[derive(Debug, Clone)]
pub struct StepRequest {
    /// Image layers so far, bottom first.
    pub lower_layers: Vec<PathBuf>,
    /// Receives the step's changes (becomes the next layer).
    pub upper: PathBuf,
    /// overlayfs work dir on the upper's filesystem.
    pub work: PathBuf,
    pub argv: Vec<String>,
    /// `KEY=VALUE` entries.
    pub env: Vec<String>,
    pub workdir: Option<String>,
    /// A scratch folder for the step's state (removed afterwards), e.g. under `tmp/`.
    pub scratch: PathBuf,
    /// The berth home whose bridge, leases and NAT give the step its network, as for an
    /// isolated environment; `None`: loopback only.
    pub net_home: Option<PathBuf>,
    /// The user the command runs as; `None`: root.
    pub user: Option<String>,
    /// (host folder, path inside): folders kept across builds, mounted read-write.
    pub cache_mounts: Vec<(PathBuf, String)>,
    /// Loopback only.
    pub no_network: bool,
    /// The step's own mounts (bind, tmpfs, secret, ssh agent; see [`StepMount`]).
    pub mounts: Vec<StepMount>,
}

/// Runs one step; returns the command's exit code.
///
/// The step runs in the sandbox of an environment: a user namespace (as root: root inside is
/// the first id of root's subordinate range, the whole 65536 ids mapped, lower layers
/// id-mapped in), a network namespace of its own on berth's bridge with outbound NAT (package
/// installs need the network), a cgroup under berth's own, the default capabilities and the
/// seccomp allowlist. As root, the ids the step wrote into `upper` are moved back from the
/// mapped range afterwards ([`unmap_tree`]), so the layer holds the ids a root install
/// would have left, like every other layer of the shared store. Without root the files
/// belong to the user and the user's subordinate ids, like the rest of a rootless store.
pub fn run_step(req: &StepRequest, on_output: &mut dyn FnMut(OutputStream, &[u8])) -> Result<i32> {
    static N: AtomicU64 = AtomicU64::new(0);
    let id = format!(
        "step-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    // The step's state folder is an environment folder of the home (`envs/step-…`, which
    // also holds its network record): the step's root must walk to its `rootfs/` from inside
    // its user namespace, which the private `tmp/` would not let it do.
    let state_dir = match req.net_home.as_deref() {
        Some(h) => BerthHome::at(h)
            .map_err(|e| ContainerError::Setup(e.to_string()))?
            .env_dir(&id),
        None => req.scratch.join(&id),
    };
    let mut spec = ContainerSpec::new(&id, "berth-build", &state_dir, req.lower_layers.clone());
    spec.upper_dir = req.upper.clone();
    spec.work_dir = req.work.clone();
    spec.user_mapping = UserMappingChoice::Auto;
    spec.network = if req.no_network {
        NetworkMode::None
    } else {
        step_network()
    };
    spec.net_home = req.net_home.clone();
    spec.mounts = req
        .cache_mounts
        .iter()
        .map(|(source, target)| MountSpec::Volume {
            source: source.clone(),
            target: target.clone(),
            readonly: false,
        })
        .collect();
    let who = Invoker::current();
    // Root's mapping is known before the start: the upper's top folder must belong to the
    // step's root, or it could not write to `/`. It is chosen as an environment's start
    // chooses (the home's kept range when /etc/subuid moved since, `idmap_record`), and the
    // start is given this very mapping.
    let mapping = match who.uid {
        0 => stable_mapping(&spec, &who, None)?.0,
        _ => None,
    };
    spec.chosen_mapping = mapping.clone();
    if let Some(m) = &mapping {
        let (u, g) = (m.host_uid(0), m.host_gid(0));
        std::os::unix::fs::lchown(&req.upper, u, g)
            .context(|| format!("cannot hand {} to the build step", req.upper.display()))?;
    }
    spec.mounts
        .extend(step_mounts(&req.mounts, mapping.as_ref())?);
    let backend = ContainerBackend;
    let result = (|| {
        backend.start(&spec)?;
        let (out_r, out_w) = super::namespaces::pipe()?;
        let (err_r, err_w) = super::namespaces::pipe()?;
        let null =
            std::fs::File::open("/dev/null").context(|| "cannot open /dev/null".to_string())?;
        let exec = ExecRequest {
            argv: req.argv.clone(),
            env: req.env.clone(),
            cwd: req.workdir.clone(),
            user: req.user.clone(),
            ..Default::default()
        };
        let session = backend.exec_start(
            &state_dir,
            &exec,
            [null.as_fd(), out_w.as_fd(), err_w.as_fd()],
        )?;
        drop((out_w, err_w, null));
        pump(session, out_r, err_r, on_output)
    })();
    let stopped = backend.stop(&state_dir, Duration::from_secs(5));
    // What the step's network left in the home: its record's folder.
    if let Some(home) = req.net_home.as_deref().and_then(|h| BerthHome::at(h).ok()) {
        let _ = std::fs::remove_dir(home.env_dir(&id));
    }
    // The mapping the step really ran with (recorded by the start).
    let ran_with = ContainerState::load(&state_dir)
        .ok()
        .and_then(|s| s.mapping);
    let _ = crate::state::remove_tree(&state_dir);
    let code = result?;
    stopped?;
    if mapping.is_some() {
        if let Some(m) = ran_with.or(mapping) {
            unmap_tree(&req.upper, &m)?;
        }
    }
    Ok(code)
}

/// The step's own mounts as container mounts. A staged source's owners are ids inside:
/// as root they move onto the step's range (the staged copies are the step's alone and
/// thrown away afterwards), rootless the user's files already show as the step's root. A
/// staged file with an owner of its own (a secret's `uid`/`gid`) gets it when it is
/// mounted, inside the step's user namespace rootless. A staged source must not be a
/// symlink: a bind follows it on the host.
fn step_mounts(mounts: &[StepMount], mapping: Option<&idmap::IdMapping>) -> Result<Vec<MountSpec>> {
    use super::layer_ids::{chown_keeping_setid, walk_tree};
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    for m in mounts {
        match m {
            StepMount::Staged {
                source,
                target,
                readonly,
                owner,
            } => {
                let meta = std::fs::symlink_metadata(source)
                    .context(|| format!("cannot inspect the mount source {}", source.display()))?;
                if meta.file_type().is_symlink() {
                    return Err(ContainerError::Invalid(format!(
                        "the build step's mount source {} is a symlink",
                        source.display()
                    )));
                }
                // A single file with an owner inside gets it at the mount (`owner_inside`),
                // rootless too.
                if let (Some(map), None) = (mapping, owner) {
                    walk_tree(source, &mut |path, meta| {
                        chown_keeping_setid(
                            path,
                            meta,
                            map.host_uid(meta.uid()),
                            map.host_gid(meta.gid()),
                        )
                        .context(|| format!("cannot hand {} to the build step", path.display()))
                    })?;
                }
                out.push(MountSpec::Bind {
                    source: source.clone(),
                    target: target.clone(),
                    readonly: *readonly,
                    idmap: false,
                    owner_inside: *owner,
                });
            }
            StepMount::Tmpfs { target, size } => out.push(MountSpec::Tmpfs {
                target: target.clone(),
                size: *size,
            }),
            StepMount::Overlay {
                lowers,
                upper,
                sub,
                target,
            } => {
                use super::overlay_bind::{LowerIds, OverlayLower};
                let upper = match upper {
                    Some(dir) => {
                        let (u, w) = (dir.join("upper"), dir.join("work"));
                        for d in [&u, &w] {
                            std::fs::create_dir(d)
                                .context(|| format!("cannot create {}", d.display()))?;
                            // The step's root writes there (as root: a host id of its range).
                            if let Some(map) = mapping {
                                std::os::unix::fs::lchown(d, map.host_uid(0), map.host_gid(0))
                                    .context(|| {
                                        format!("cannot hand {} to the build step", d.display())
                                    })?;
                            }
                        }
                        Some((u, w))
                    }
                    None => None,
                };
                out.push(MountSpec::OverlayBind {
                    lowers: lowers
                        .iter()
                        .map(|l| match l {
                            StepLower::Layer(p) => OverlayLower {
                                path: p.clone(),
                                ids: LowerIds::Layer,
                            },
                            StepLower::HostFolder(p) => OverlayLower {
                                path: p.clone(),
                                ids: LowerIds::Owner,
                            },
                        })
                        .collect(),
                    upper,
                    sub: sub.clone(),
                    target: target.clone(),
                });
            }
        }
    }
    Ok(out)
}

/// Build steps get a network namespace of their own: on berth's bridge as root; rootless
/// through pasta where it can run, else the invoking user's own network (a rootless step
/// has nothing of the host's root to reach it with).
fn step_network() -> NetworkMode {
    if nix::unistd::geteuid().is_root() || crate::net::rootless_network_available().is_ok() {
        NetworkMode::Isolated
    } else {
        NetworkMode::Host
    }
}

fn pump(
    mut session: super::control::ExecSession,
    out: OwnedFd,
    err: OwnedFd,
    on_output: &mut dyn FnMut(OutputStream, &[u8]),
) -> Result<i32> {
    let mut open = [Some(out), Some(err)];
    let mut buf = [0u8; 16384];
    let stream = |i: usize| {
        if i == 0 {
            OutputStream::Stdout
        } else {
            OutputStream::Stderr
        }
    };
    // SAFETY: the control fd lives in `session` for this whole function.
    let control = unsafe { std::os::fd::BorrowedFd::borrow_raw(session.control_fd()) };
    loop {
        let mut fds = vec![PollFd::new(control, PollFlags::POLLIN)];
        let mut which = Vec::new();
        for (i, f) in open.iter().enumerate() {
            if let Some(f) = f {
                fds.push(PollFd::new(f.as_fd(), PollFlags::POLLIN));
                which.push(i);
            }
        }
        // An exit status that came in with the Started answer sits in the client's buffer
        // and never makes the socket readable: do not block then.
        let buffered = session.reply_buffered();
        let _ = poll(
            &mut fds,
            if buffered {
                PollTimeout::ZERO
            } else {
                PollTimeout::NONE
            },
        );
        let ready = |p: &PollFd| p.revents().is_some_and(|r| !r.is_empty());
        let exited = buffered || ready(&fds[0]);
        let readable: Vec<usize> = fds[1..]
            .iter()
            .zip(&which)
            .filter(|(p, _)| ready(p))
            .map(|(_, i)| *i)
            .collect();
        drop(fds);
        for i in readable {
            let Some(f) = &open[i] else { continue };
            match nix::unistd::read(f.as_raw_fd(), &mut buf) {
                Ok(0) | Err(_) => open[i] = None,
                Ok(n) => on_output(stream(i), &buf[..n]),
            }
        }
        if exited {
            let code = session.wait_ref()?;
            // The command is done; take what it left in the pipes without waiting for
            // background processes that may still hold them open.
            for (i, f) in open.iter().enumerate() {
                let Some(f) = f else { continue };
                let _ = nix::fcntl::fcntl(
                    f.as_raw_fd(),
                    nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
                );
                while let Ok(n) = nix::unistd::read(f.as_raw_fd(), &mut buf) {
                    if n == 0 {
                        break;
                    }
                    on_output(stream(i), &buf[..n]);
                }
            }
            return Ok(code);
        }
    }
}
