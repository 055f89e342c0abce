//! A sidecar container (runtime/README.md, "Sidecars"): a container of its own (root
//! filesystem, mount, pid, uts, ipc and cgroup namespaces, supervisor, state dir) that joins
//! a running environment's user namespace (the same id mapping) and network namespace (the
//! environment reaches it on `localhost`). [`JoinSpec`] in its `ContainerSpec` names the
//! environment; the starter takes the environment's id mapping ([`Joined::open`]) instead
//! of choosing one, and the launcher's namespace child enters both namespaces at once through
//! a pidfd of the environment's supervisor ([`Joined::enter`]) where a fresh container
//! unshares them. Nothing of the environment's network (veth, pasta, ports) is touched: its
//! record stays the environment's. (`JoinSpec` and what a sidecar's spec may not ask for
//! are with the rest of the spec, in `spec.rs`.)

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use envfile_spec::plan::{MountKind, ServicePlan, SidecarPlan};

use super::error::{ContainerError, Context, Result};
use super::idmap::IdMapping;
use super::run_state::{ContainerState, Phase};
use super::spec::{mount_specs, ContainerSpec, JoinSpec};
use crate::backend::ImageDefaults;
use crate::image::ImageConfig;
use crate::state::BerthHome;

/// The folder of sidecar `name` of environment `env_id`: `envs/<id>/sidecars/<name>`.
pub fn sidecar_dir(home: &BerthHome, env_id: &str, name: &str) -> PathBuf {
    home.env_dir(env_id).join("sidecars").join(name)
}

/// The container spec of sidecar `name` (berth.toml's `[services.NAME]` with `image`) of the
/// container environment `env_id`, over its image's `lower_layers` and `config`: its server
/// is the one service of its own supervisor (its `command`, else the image's entrypoint and
/// cmd), under its own name (`berth logs NAME`), with its restart policy, variables, working
/// folder (else the image's), mounts (volumes under `home`) and limits; it joins the
/// environment.
pub fn sidecar_spec(
    home: &BerthHome,
    env_id: &str,
    name: &str,
    plan: &SidecarPlan,
    lower_layers: Vec<PathBuf>,
    config: &ImageConfig,
) -> Result<ContainerSpec> {
    let mut spec = sidecar_base(home, env_id, name, plan, lower_layers, config)?;
    spec.join = Some(JoinSpec {
        env_dir: home.env_dir(env_id),
    });
    spec.validate()?;
    Ok(spec)
}

/// The network id of sidecar `name` of a VM environment: its own folder under `envs/`
/// (`<env id>/sidecars/<name>`), where its `network.json` lives and which its lease on the
/// bridge names.
pub fn bridged_sidecar_net_id(env_id: &str, name: &str) -> String {
    format!("{env_id}/sidecars/{name}")
}

/// The container spec of sidecar `name` of the VM environment `env_id`: as [`sidecar_spec`],
/// but a container of its own on berth's bridge (own user and network namespaces, a veth and
/// an address of its own, set up in `home` as a container environment's network is), which
/// the VM reaches by the sidecar's name.
pub fn bridged_sidecar_spec(
    home: &BerthHome,
    env_id: &str,
    name: &str,
    plan: &SidecarPlan,
    lower_layers: Vec<PathBuf>,
    config: &ImageConfig,
) -> Result<ContainerSpec> {
    let mut spec = sidecar_base(home, env_id, name, plan, lower_layers, config)?;
    spec.network = envfile_spec::plan::NetworkMode::Isolated;
    spec.net_home = Some(home.root().to_path_buf());
    spec.net_id = Some(bridged_sidecar_net_id(env_id, name));
    spec.searchable_parents = vec![home.env_dir(env_id)];
    spec.validate()?;
    Ok(spec)
}

fn sidecar_base(
    home: &BerthHome,
    env_id: &str,
    name: &str,
    plan: &SidecarPlan,
    lower_layers: Vec<PathBuf>,
    config: &ImageConfig,
) -> Result<ContainerSpec> {
    let dir = sidecar_dir(home, env_id, name);
    let mut spec = ContainerSpec::new(
        &format!("{env_id}-sidecar-{name}"),
        name,
        &dir,
        lower_layers,
    );
    if let Some(m) = plan.mounts.iter().find(|m| m.kind == MountKind::Sync) {
        return Err(ContainerError::Invalid(format!(
            "sidecar {name} has a sync mount at {}; a sidecar's mounts are bind, volume or tmpfs",
            m.target
        )));
    }
    spec.mounts = mount_specs(&plan.mounts, home)?;
    let command = match (&plan.command, &plan.args) {
        (Some(c), _) => c.clone(),
        // `args`: the image's entrypoint keeps running, with these instead of its cmd.
        (None, Some(args)) => config.entrypoint.iter().chain(args).cloned().collect(),
        (None, None) => config
            .entrypoint
            .iter()
            .chain(&config.cmd)
            .cloned()
            .collect(),
    };
    if command.is_empty() {
        return Err(ContainerError::Invalid(format!(
            "the image of sidecar {name} has neither an entrypoint nor a cmd; give services.{name}.command in berth.toml"
        )));
    }
    spec.services = BTreeMap::from([(
        name.to_string(),
        ServicePlan {
            command,
            restart: plan.restart,
            env: BTreeMap::new(),
            workdir: plan.workdir.clone(),
        },
    )]);
    spec.env = plan.env.clone();
    spec.resources = plan.resources.clone();
    spec.image = ImageDefaults {
        env: config.env.clone(),
        workdir: config.working_dir.clone(),
        user: config.user.clone(),
    };
    Ok(spec)
}

/// The running environment a sidecar joins: its user and network namespaces, handed over by
/// its supervisor on its control socket (the supervisor is not dumpable, so a rootless owner
/// cannot open them through /proc, nor `setns` through a pidfd of it), and its id mapping
/// (`None`: a privileged environment, no user namespace).
pub struct Joined {
    user: OwnedFd,
    net: OwnedFd,
    pub mapping: Option<IdMapping>,
}

impl Joined {
    /// Whether a TCP connection to `127.0.0.1:port` in the environment's network namespace
    /// succeeds now (a sidecar's `ready = { tcp = PORT }`): from a forked child that enters
    /// the namespace, so this process stays where it is. The child makes only system calls
    /// (it may be forked from a process with threads).
    pub fn tcp_answers(&self, port: u16) -> Result<bool> {
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(std::net::Ipv4Addr::LOCALHOST).to_be(),
            },
            sin_zero: [0; 8],
        };
        let (user, net) = (self.user_fd(), self.net.as_raw_fd());
        // SAFETY: the child calls only async-signal-safe system calls and `_exit`s.
        match unsafe { libc::fork() } {
            -1 => Err(io::Error::last_os_error())
                .context(|| "cannot fork the readiness probe".to_string()),
            0 => {
                // SAFETY: setns/socket/connect with valid arguments; `addr` lives on this
                // stack; `_exit` ends the child without running the parent's destructors.
                unsafe {
                    if user >= 0 && libc::setns(user, libc::CLONE_NEWUSER) != 0 {
                        libc::_exit(2);
                    }
                    if libc::setns(net, libc::CLONE_NEWNET) != 0 {
                        libc::_exit(2);
                    }
                    let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
                    if fd < 0 {
                        libc::_exit(2);
                    }
                    let ok = libc::connect(
                        fd,
                        (&addr as *const libc::sockaddr_in).cast(),
                        std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                    ) == 0;
                    libc::_exit(if ok { 0 } else { 1 })
                }
            }
            child => match nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(child), None) {
                Ok(nix::sys::wait::WaitStatus::Exited(_, 0)) => Ok(true),
                Ok(nix::sys::wait::WaitStatus::Exited(_, 1)) => Ok(false),
                other => Err(ContainerError::Setup(format!(
                    "the readiness probe could not enter the environment's network namespace ({other:?})"
                ))),
            },
        }
    }

    /// The user namespace to enter first, -1 for a privileged environment (none of its own).
    fn user_fd(&self) -> libc::c_int {
        match self.mapping {
            Some(_) => self.user.as_raw_fd(),
            None => -1,
        }
    }

    /// The running environment whose state dir is `env_dir`.
    pub fn environment(env_dir: &Path) -> Result<Joined> {
        let not_running = || {
            ContainerError::Invalid(format!(
                "the environment in {} is not running; a sidecar joins a running environment, so start the environment first",
                env_dir.display()
            ))
        };
        let state = ContainerState::load(env_dir)?;
        if state.phase != Phase::Running || !state.supervisor.is_some_and(|s| s.alive()) {
            return Err(not_running());
        }
        let (user, net) = super::control::namespaces(&env_dir.join("control.sock"))?;
        Ok(Joined {
            user,
            net,
            mapping: state.mapping,
        })
    }

    /// Opens the environment of `spec.join`, which must be running, and checks that the
    /// sidecar's spec fits it.
    pub fn open(spec: &ContainerSpec, join: &JoinSpec) -> Result<Joined> {
        let joined = Joined::environment(&join.env_dir)?;
        if joined.mapping.is_none() != spec.privileged {
            return Err(ContainerError::Invalid(format!(
                "sidecar {} and the environment in {} differ in --privileged; a sidecar runs with the environment's user namespace, so both must be privileged or neither",
                spec.env_id,
                join.env_dir.display()
            )));
        }
        Ok(joined)
    }

    /// Enters the environment's user namespace (when it has one), then its network
    /// namespace with the rights the joined user namespace gives. The calling process must
    /// be single-threaded.
    pub fn enter(&self) -> Result<()> {
        let user = self.user_fd();
        // SAFETY: setns with descriptors this struct owns and a namespace flag; no memory passed.
        if user >= 0 && unsafe { libc::setns(user, libc::CLONE_NEWUSER) } != 0 {
            return Err(io::Error::last_os_error())
                .context(|| "cannot enter the environment's user namespace".to_string());
        }
        // SAFETY: as above.
        if unsafe { libc::setns(self.net.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error())
                .context(|| "cannot enter the environment's network namespace".to_string());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envfile_spec::plan::{MountPlan, ReadyPlan, ReadyProbe, Resources, RestartPolicy};

    fn plan(command: Option<&[&str]>) -> SidecarPlan {
        SidecarPlan {
            image: envfile_spec::plan::ImageSource::Rootfs { path: "/r".into() },
            command: command.map(|c| c.iter().map(|s| s.to_string()).collect()),
            args: None,
            restart: RestartPolicy::OnFailure,
            env: BTreeMap::from([("A".into(), "1".into())]),
            workdir: None,
            mounts: vec![MountPlan {
                source: Some("cache-data".into()),
                target: "/data".into(),
                kind: MountKind::Volume,
                readonly: false,
                ignore: Vec::new(),
                size: None,
                unsafe_host_path: false,
            }],
            resources: Resources {
                memory: Some(1 << 28),
                cpus: None,
                pids: Some(64),
            },
            ready: Some(ReadyPlan {
                probe: ReadyProbe::Tcp { port: 6379 },
                timeout_ms: 1000,
            }),
            after: Vec::new(),
        }
    }

    fn config() -> ImageConfig {
        ImageConfig {
            env: vec!["PATH=/usr/bin".into()],
            cmd: vec!["redis-server".into(), "--port".into(), "6379".into()],
            entrypoint: vec!["docker-entrypoint.sh".into()],
            working_dir: Some("/data".into()),
            user: Some("redis".into()),
        }
    }

    #[test]
    fn the_server_is_the_images_entrypoint_and_cmd_unless_the_file_says() {
        let tmp = tempfile::tempdir().unwrap();
        let home = BerthHome::at(tmp.path()).unwrap();
        let b = tmp.path();
        let layers = vec![b.join("layers/1")];
        let spec = sidecar_spec(
            &home,
            "app-1234abcd",
            "cache",
            &plan(None),
            layers.clone(),
            &config(),
        )
        .unwrap();
        assert_eq!(spec.state_dir, b.join("envs/app-1234abcd/sidecars/cache"));
        assert_eq!(spec.hostname, "cache");
        assert_eq!(spec.lower_layers, layers);
        let svc = &spec.services["cache"];
        assert_eq!(spec.services.len(), 1);
        assert_eq!(
            svc.command,
            ["docker-entrypoint.sh", "redis-server", "--port", "6379"]
        );
        assert_eq!(svc.restart, RestartPolicy::OnFailure);
        assert_eq!(svc.workdir, None, "the image's working folder");
        assert_eq!(spec.image.user.as_deref(), Some("redis"));
        assert_eq!(spec.env["A"], "1");
        assert_eq!(spec.resources.pids, Some(64));
        assert_eq!(
            spec.mounts,
            [super::super::MountSpec::Volume {
                source: b.join("volumes/cache-data"),
                target: "/data".into(),
                readonly: false
            }]
        );
        assert_eq!(
            spec.join,
            Some(JoinSpec {
                env_dir: b.join("envs/app-1234abcd")
            })
        );
        assert_eq!(spec.net_home, None);
        assert!(spec.ports.is_empty());

        let own = sidecar_spec(
            &home,
            "app-1234abcd",
            "cache",
            &plan(Some(&["redis-server", "--appendonly", "yes"])),
            layers.clone(),
            &config(),
        )
        .unwrap();
        assert_eq!(
            own.services["cache"].command,
            ["redis-server", "--appendonly", "yes"],
            "command replaces the entrypoint too"
        );
        let mut with_args = plan(None);
        with_args.args = Some(vec!["--appendonly".into(), "yes".into()]);
        let args = sidecar_spec(
            &home,
            "app-1234abcd",
            "cache",
            &with_args,
            layers.clone(),
            &config(),
        )
        .unwrap();
        assert_eq!(
            args.services["cache"].command,
            ["docker-entrypoint.sh", "--appendonly", "yes"],
            "args replace the cmd only, as compose's command"
        );

        let err = sidecar_spec(
            &home,
            "app-1234abcd",
            "cache",
            &plan(None),
            layers,
            &ImageConfig::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("give services.cache.command"), "{err}");
    }
}
