//! [`ContainerSpec`]: everything the container backend needs to start one environment. It is
//! written to `envs/<id>/spec.json` and read back by the supervisor process, so it is plain data.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use envfile_spec::plan::{MountKind, MountPlan, NetworkMode, Plan, Resources, ServicePlan};
use serde::{Deserialize, Serialize};

use super::devices::HostDevice;
use super::error::{ContainerError, Result};
use crate::backend::ImageDefaults;
use crate::net::forward::ForwardSpec;
use crate::state::BerthHome;

/// Default size bound of one service log file; one rotated file of the same size is kept.
pub const DEFAULT_LOG_LIMIT: u64 = 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerSpec {
    pub env_id: String,
    /// Hostname inside (the environment's name).
    pub hostname: String,
    /// `envs/<id>`: state.json, spec.json, control.sock, logs/ live here.
    pub state_dir: PathBuf,
    /// Read-only image layers, bottom first.
    pub lower_layers: Vec<PathBuf>,
    /// The layers already carry the environment's ids (copies made where the layer store has
    /// no id-mapped mounts, see `layer_copy`): mounted as they are, never id-mapped.
    #[serde(default)]
    pub premapped_lowers: bool,
    /// The environment's writable layer; kept across `down`/`up`.
    pub upper_dir: PathBuf,
    /// overlayfs work dir, on the same filesystem as `upper_dir`.
    pub work_dir: PathBuf,
    pub mounts: Vec<MountSpec>,
    /// Environment variables of every process (after the image's, before a request's own).
    pub env: BTreeMap<String, String>,
    pub resources: Resources,
    pub network: NetworkMode,
    pub user_mapping: UserMappingChoice,
    /// Run without a user namespace, with all capabilities and no seccomp filter: the
    /// environment's root is the host's root. Only for trusted images.
    pub privileged: bool,
    pub services: BTreeMap<String, ServicePlan>,
    pub image: ImageDefaults,
    /// Size bound of each service log file in bytes.
    pub log_limit: u64,
    /// `[[ports]]`: host ports the launcher binds before it leaves the host's network
    /// namespace and the supervisor forwards to the environment's loopback (not in `host`
    /// mode, where the environment uses the host's ports itself).
    #[serde(default)]
    pub ports: Vec<ForwardSpec>,
    /// A taken host port is replaced by a free one (`berth run --publish-auto`) instead of
    /// failing the start.
    #[serde(default)]
    pub publish_auto: bool,
    /// The berth home whose networking state (bridge, leases, `envs/<id>/network.json`) the
    /// environment's network is set up in. `None`: nothing is set up on the host; an
    /// environment with its own network namespace then has loopback only.
    #[serde(default)]
    pub net_home: Option<PathBuf>,
    /// The id `net_home` keeps the network under (`envs/<net_id>/network.json`, the holder
    /// of its lease on the bridge); `None`: `env_id`. A VM's sidecar, a container of its own
    /// on the bridge, uses `<env id>/sidecars/<name>`: its own folder, which lives exactly as
    /// long as the sidecar does (see [`super::sidecar::bridged_sidecar_spec`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net_id: Option<String>,
    /// Folders above `state_dir` that each start opens to the environment's root as it opens
    /// `state_dir` (group = that root's host gid, mode 0710: search only), so the root
    /// reaches its folder: a VM's folder above its bridged sidecars, which no container
    /// start of the VM's own opens.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub searchable_parents: Vec<PathBuf>,
    /// Services wait for a `start_services` request (`on_create` runs first).
    #[serde(default)]
    pub hold_services: bool,
    /// The writable layer need not outlive this one start (`berth run` without `--keep`):
    /// overlayfs's `volatile`, so neither its unmount nor a `syncfs` inside writes back the
    /// whole filesystem under the berth home (every unmount of a plain overlay does, some
    /// 10-20 ms on a busy disk, and flushes every other program's writes with it). Such a
    /// layer cannot be mounted again (overlayfs marks its work folder): a throw-away
    /// environment is removed after its one start.
    pub volatile_upper: bool,
    /// Host devices the environment may use (berth.toml's `devices`, resolved on the host):
    /// bound into its `/dev` and allowed in its devices cgroup beside the defaults.
    #[serde(default)]
    pub devices: Vec<HostDevice>,
    /// A sidecar: joins this running environment's user and network namespaces instead of
    /// making its own (see [`super::sidecar`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join: Option<JoinSpec>,
    /// `[secrets]` also wanted as variables: their names only (the values are in the
    /// `/run/secrets` tmpfs, read by the supervisor when it starts a process).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secret_env: Vec<String>,
    /// The environment's gitconfig (the host's git identity), written by the supervisor into
    /// berth's tmpfs before anything runs inside (`StartRequest::gitconfig`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gitconfig: Option<String>,
    /// The id mapping already chosen by the caller (a build step chooses before the start,
    /// since its writable root must belong to the step's root): the start uses exactly this
    /// one instead of choosing again, so /etc/subuid changing in between cannot split them.
    #[serde(default)]
    pub chosen_mapping: Option<super::idmap::IdMapping>,
}

/// The mounts of a plan (the environment's or a sidecar's) with their host paths: volumes
/// under `home`'s `volumes/`. `sync` mounts are left out: they are not mounted.
pub fn mount_specs(mounts: &[MountPlan], home: &BerthHome) -> Result<Vec<MountSpec>> {
    let mut out = Vec::new();
    for m in mounts {
        let source = || {
            m.source.clone().ok_or_else(|| {
                ContainerError::Invalid(format!(
                    "mount at {} has no source; give `source` in berth.toml",
                    m.target
                ))
            })
        };
        out.push(match m.kind {
            MountKind::Bind => MountSpec::Bind {
                source: PathBuf::from(source()?),
                target: m.target.clone(),
                readonly: m.readonly,
                idmap: true,
                owner_inside: None,
            },
            MountKind::Sync => continue,
            MountKind::Volume => MountSpec::Volume {
                source: home.volumes_dir().join(source()?),
                target: m.target.clone(),
                readonly: m.readonly,
            },
            MountKind::Tmpfs => MountSpec::Tmpfs {
                target: m.target.clone(),
                size: m.size,
            },
        });
    }
    Ok(out)
}

/// One mount inside the environment, host paths already resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum MountSpec {
    /// A host file or folder. `idmap` shows host ownership as-is inside a user namespace
    /// (host uid 0 appears as root inside) through an id-mapped mount; it needs host root.
    Bind {
        source: PathBuf,
        target: String,
        readonly: bool,
        idmap: bool,
        /// A file berth staged for this container alone (a build step's secret or agent
        /// socket) is given this (uid, gid) inside before it is bound: from the host side
        /// as the mapped host ids, from inside the user namespace (rootless) as they are.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        owner_inside: Option<(u32, u32)>,
    },
    /// A named volume: a folder under `volumes/`, created on demand, owned by the
    /// environment's root.
    Volume {
        source: PathBuf,
        target: String,
        readonly: bool,
    },
    /// A fresh tmpfs, optionally size-limited (bytes).
    Tmpfs { target: String, size: Option<u64> },
    /// One path (`sub`) of an overlay of `lowers` (top first), read-only, or writable into
    /// `upper` (upper and work folders, thrown away by their owner): a build step's bind
    /// mount (see [`super::overlay_bind`]).
    OverlayBind {
        lowers: Vec<OverlayLower>,
        upper: Option<(PathBuf, PathBuf)>,
        sub: String,
        target: String,
    },
}

impl MountSpec {
    pub fn target(&self) -> &str {
        match self {
            MountSpec::Bind { target, .. }
            | MountSpec::Volume { target, .. }
            | MountSpec::Tmpfs { target, .. }
            | MountSpec::OverlayBind { target, .. } => target,
        }
    }
}

/// Which running environment a sidecar container joins (its user and network namespaces;
/// see [`super::sidecar`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinSpec {
    /// The environment's state dir (`envs/<id>`).
    pub env_dir: PathBuf,
}

/// How user ids inside map to the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum UserMappingChoice {
    /// Root: the root user's range in /etc/subuid, else 100000+65536. Other users: their
    /// /etc/subuid range through newuidmap/newgidmap when both exist, else a single id.
    #[default]
    Auto,
    /// Only the invoking user, as root inside.
    SingleId,
    /// An explicit range: inside 0..count is host `host_start`..`host_start+count` (root only).
    Range { host_start: u32, count: u32 },
}

impl ContainerSpec {
    /// A spec with defaults: upper/work under the state dir, no mounts, isolated network.
    pub fn new(env_id: &str, hostname: &str, state_dir: &Path, lower_layers: Vec<PathBuf>) -> Self {
        ContainerSpec {
            env_id: env_id.to_string(),
            hostname: hostname.to_string(),
            state_dir: state_dir.to_path_buf(),
            lower_layers,
            premapped_lowers: false,
            upper_dir: state_dir.join("upper"),
            work_dir: state_dir.join("work"),
            mounts: Vec::new(),
            env: BTreeMap::new(),
            resources: Resources::default(),
            network: NetworkMode::Isolated,
            user_mapping: UserMappingChoice::Auto,
            privileged: false,
            services: BTreeMap::new(),
            image: ImageDefaults::default(),
            log_limit: DEFAULT_LOG_LIMIT,
            ports: Vec::new(),
            publish_auto: false,
            net_home: None,
            net_id: None,
            searchable_parents: Vec::new(),
            hold_services: false,
            volatile_upper: false,
            devices: Vec::new(),
            join: None,
            secret_env: Vec::new(),
            gitconfig: None,
            chosen_mapping: None,
        }
    }

    /// The spec for a plan's environment. Returns notices to print (none today; `sync` mounts
    /// are not mounted but kept in sync by `environment::live_sync`).
    pub fn from_plan(
        plan: &Plan,
        home: &BerthHome,
        env_id: &str,
        lower_layers: Vec<PathBuf>,
        image: ImageDefaults,
        privileged: bool,
    ) -> Result<(Self, Vec<String>)> {
        let mut spec = ContainerSpec::new(env_id, &plan.name, &home.env_dir(env_id), lower_layers);
        let mut notices: Vec<String> = Vec::new();
        // `sync` mounts are kept in sync by berth's sync process (environment::live_sync), not
        // mounted.
        spec.mounts = mount_specs(&plan.mounts, home)?;
        if !plan.secrets.is_empty() {
            // `[secrets]` live in memory only: a tmpfs of their own, which no mount of the
            // user's may replace (it could be a disk).
            if let Some(m) = plan
                .mounts
                .iter()
                .find(|m| Path::new(&m.target).starts_with(crate::ssh_inside::SECRETS_DIR))
            {
                return Err(ContainerError::Invalid(format!(
                    "the mount at {} would hide or replace the tmpfs [secrets] are kept in at {}; mount it elsewhere",
                    m.target,
                    crate::ssh_inside::SECRETS_DIR
                )));
            }
            spec.mounts.push(MountSpec::Tmpfs {
                target: crate::ssh_inside::SECRETS_DIR.into(),
                size: Some(4 << 20),
            });
            spec.secret_env = plan
                .secrets
                .iter()
                .filter(|(_, s)| s.as_env)
                .map(|(n, _)| n.clone())
                .collect();
        }
        // berth's own tmpfs (the environment's gitconfig, written at `up`).
        spec.mounts.push(MountSpec::Tmpfs {
            target: crate::ssh_inside::RUN_DIR.into(),
            size: Some(256 << 10),
        });
        spec.env = plan.env.clone();
        spec.resources = plan.resources.clone();
        spec.network = plan.network.mode;
        spec.ports = plan.ports.iter().map(ForwardSpec::from).collect();
        if spec.network == NetworkMode::Host && !spec.ports.is_empty() {
            notices.push(
                "network.mode = \"host\": [[ports]] are not forwarded; services inside listen on the host's ports directly".into(),
            );
        }
        spec.net_home = Some(home.root().to_path_buf());
        spec.devices = super::devices::resolve(&plan.devices, Path::new("/dev"))?;
        spec.privileged = privileged;
        spec.services = plan.services.clone();
        spec.image = image;
        spec.validate()?;
        Ok((spec, notices))
    }

    /// Checks what the kernel would otherwise reject with a less clear message.
    pub fn validate(&self) -> Result<()> {
        if self.lower_layers.is_empty() {
            return Err(ContainerError::Invalid(
                "no image layers given; build the image first".into(),
            ));
        }
        for l in &self.lower_layers {
            let s = l.to_string_lossy();
            if s.contains(':') || s.contains(',') || !l.is_absolute() {
                return Err(ContainerError::Invalid(format!(
                    "layer path {s} must be absolute and contain neither ':' nor ','; move BERTH_HOME to a plain path"
                )));
            }
        }
        for p in [&self.upper_dir, &self.work_dir] {
            let s = p.to_string_lossy();
            if s.contains(':') || s.contains(',') || !p.is_absolute() {
                return Err(ContainerError::Invalid(format!(
                    "{s} must be absolute and contain neither ':' nor ','"
                )));
            }
        }
        for m in &self.mounts {
            let t = m.target();
            if !t.starts_with('/') || t.split('/').any(|c| c == "..") || t == "/" {
                return Err(ContainerError::Invalid(format!(
                    "mount target {t:?} must be an absolute path below / without `..`"
                )));
            }
        }
        if self.hostname.is_empty() || self.hostname.len() > 64 {
            return Err(ContainerError::Invalid(format!(
                "hostname {:?} must have 1 to 64 characters",
                self.hostname
            )));
        }
        if let Some(join) = &self.join {
            self.validate_join(join)?;
        }
        if let Some(p) = self
            .searchable_parents
            .iter()
            .find(|p| !self.state_dir.starts_with(p) || self.state_dir == **p)
        {
            return Err(ContainerError::Invalid(format!(
                "{} is not a folder above the state folder {}: only those are opened to the environment's root",
                p.display(),
                self.state_dir.display()
            )));
        }
        if let Some(c) = self.resources.cpus {
            if !(c.is_finite() && c > 0.0) {
                return Err(ContainerError::Invalid(format!(
                    "cpus = {c} must be a positive number"
                )));
            }
        }
        Ok(())
    }

    /// What a sidecar's spec may not ask for: its network is the environment's, so no ports
    /// of its own, no network set up for it, and not the host's network.
    fn validate_join(&self, join: &JoinSpec) -> Result<()> {
        let refuse = |what: &str| {
            Err(ContainerError::Invalid(format!(
                "sidecar {} joins the network of the environment in {}, so it cannot have {what}",
                self.env_id,
                join.env_dir.display()
            )))
        };
        if !self.ports.is_empty() {
            return refuse("ports of its own (forward them with the environment's [[ports]])");
        }
        if self.net_home.is_some() {
            return refuse("a network set up for it");
        }
        if self.network == NetworkMode::Host {
            return refuse("the host's network");
        }
        Ok(())
    }

    /// The id its network is recorded and leased under (see `net_id`).
    pub fn network_id(&self) -> &str {
        self.net_id.as_deref().unwrap_or(&self.env_id)
    }

    pub fn control_socket(&self) -> PathBuf {
        self.state_dir.join("control.sock")
    }
    pub fn logs_dir(&self) -> PathBuf {
        self.state_dir.join("logs")
    }
    pub fn spec_file(&self) -> PathBuf {
        self.state_dir.join("spec.json")
    }
}

/// One lower folder of an [`MountSpec::OverlayBind`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlayLower {
    pub path: PathBuf,
    pub ids: LowerIds,
}

/// How the owners of a lower folder show inside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LowerIds {
    /// An image layer of the store: id-mapped into the environment like the rootfs layers.
    Layer,
    /// A host folder (the build context, or a mask berth made over it): the owner of the
    /// folder shows as the environment's root.
    Owner,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_rejects_bad_targets_and_layers() {
        let d = Path::new("/tmp/x");
        let mut s = ContainerSpec::new("e", "e", d, vec![PathBuf::from("/l")]);
        assert!(s.validate().is_ok());
        s.mounts.push(MountSpec::Tmpfs {
            target: "/a/../../etc".into(),
            size: None,
        });
        assert!(s.validate().is_err());
        s.mounts.clear();
        s.lower_layers = vec![PathBuf::from("/a:b")];
        assert!(s.validate().is_err());
        s.lower_layers.clear();
        assert!(s.validate().is_err());
    }

    #[test]
    fn a_sidecar_has_no_network_of_its_own() {
        let mut s = ContainerSpec::new("sc", "sc", Path::new("/s"), vec![PathBuf::from("/l")]);
        s.join = Some(JoinSpec {
            env_dir: "/home/envs/app".into(),
        });
        assert!(s.validate().is_ok());
        let refused = |s: &ContainerSpec| s.validate().unwrap_err().to_string();
        let mut ported = s.clone();
        ported.ports.push(ForwardSpec {
            protocol: envfile_spec::plan::Protocol::Tcp,
            host: "127.0.0.1:8080".parse().unwrap(),
            guest_port: 80,
            shared: false,
        });
        assert!(refused(&ported).contains("ports of its own"));
        let mut networked = s.clone();
        networked.net_home = Some("/home".into());
        assert!(refused(&networked).contains("a network set up for it"));
        s.network = NetworkMode::Host;
        assert!(refused(&s).contains("the host's network"));
    }

    #[test]
    fn spec_round_trips_through_json() {
        let mut s = ContainerSpec::new("e", "h", Path::new("/s"), vec![PathBuf::from("/l")]);
        s.mounts.push(MountSpec::Bind {
            source: "/src".into(),
            target: "/w".into(),
            readonly: true,
            idmap: true,
            owner_inside: None,
        });
        s.user_mapping = UserMappingChoice::Range {
            host_start: 200000,
            count: 65536,
        };
        let j = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<ContainerSpec>(&j).unwrap(), s);
    }
}
