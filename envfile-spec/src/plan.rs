//! The normalized plan: what `berth up` reconciles. Every default is filled in and every host
//! path is absolute, so two plans compare equal exactly when they would produce the same
//! environment. [`Plan::hash`] is stable across runs and berth versions of the same format
//! version; [`Plan::section_hashes`] lets `up` say which parts changed.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::reference::ImageReference;

/// Version of the berth.toml format this plan was made from.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// Environment name: `[a-z0-9-]`, at most 63 characters.
    pub name: String,
    /// Absolute path of the berth.toml this plan came from.
    pub file: PathBuf,
    /// Absolute path of the folder holding the berth.toml (relative paths resolve here).
    pub project_dir: PathBuf,
    pub backend: BackendKind,
    /// Run once after the writable layer is created, before services and `on_up`.
    #[serde(default)]
    pub on_create: Vec<String>,
    pub on_up: Vec<String>,
    /// Host devices the environment may use (`devices`): absolute paths under `/dev`, `*` and
    /// `?` matching within one path component. Empty (the default) is left out of the
    /// serialized plan, so plans from before the key hash as they did.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<String>,
    pub image: ImagePlan,
    pub env: BTreeMap<String, String>,
    pub mounts: Vec<MountPlan>,
    pub ports: Vec<PortPlan>,
    pub resources: Resources,
    pub network: NetworkPlan,
    pub shell: ShellPlan,
    pub services: BTreeMap<String, ServicePlan>,
    /// `[services.NAME]` entries with `image = "…"`: servers from their own image beside the
    /// environment (see [`SidecarPlan`]). Service names are unique across `services` and
    /// `sidecars`. Empty (the default) is left out of the serialized plan, so plans from
    /// before the key hash as they did.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sidecars: BTreeMap<String, SidecarPlan>,
    /// Present exactly when `backend = "vm"`.
    pub vm: Option<VmPlan>,
    /// `[credentials]`: what of the host's credentials every way in gets. All on (the
    /// default) is left out of the serialized plan, so plans from before the key hash as
    /// they did.
    #[serde(default, skip_serializing_if = "CredentialsPlan::is_default")]
    pub credentials: CredentialsPlan,
    /// `[secrets]`: where each secret comes from on the host (never its value, which is
    /// read at `up` and only ever held in memory and in the environment's tmpfs). Empty
    /// (the default) is left out of the serialized plan.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, SecretPlan>,
}

/// One `[secrets]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretPlan {
    pub source: SecretSource,
    /// Also a variable of that name in every session and service.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub as_env: bool,
}

/// Where a secret's value is read on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecretSource {
    /// A variable of berth's own environment.
    FromEnv(String),
    /// A file (absolute path; `~/` and relative paths resolved when checked).
    FromFile(PathBuf),
    /// A command's standard output (one trailing newline removed).
    FromCommand(Vec<String>),
}

/// `[credentials]`: the host's credentials forwarded into `shell`, `exec` and SSH sessions
/// (never copied in).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialsPlan {
    /// The host's SSH agent (`SSH_AUTH_SOCK`) as a socket inside.
    pub ssh_agent: bool,
    /// The host user's git identity (`user.name`, `user.email`).
    pub git: bool,
    /// A git credential helper inside that asks the host's `git credential fill`.
    pub git_credentials: bool,
}

impl Default for CredentialsPlan {
    fn default() -> Self {
        CredentialsPlan {
            ssh_agent: true,
            git: true,
            git_credentials: true,
        }
    }
}

impl CredentialsPlan {
    pub fn is_default(&self) -> bool {
        *self == CredentialsPlan::default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    Container,
    Vm,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImagePlan {
    pub from: ImageSource,
    pub packages: Vec<String>,
    pub setup: Vec<String>,
    /// Patterns (relative to the project folder) of the files copied into the build under
    /// `workdir` before the `setup` steps; see [`crate::inputs`].
    #[serde(default)]
    pub inputs: Vec<String>,
    /// Folder the `setup` steps run in and the inputs land in (absolute). Default: the target
    /// of the first mount of the project folder, else `/`.
    #[serde(default = "root_folder")]
    pub workdir: String,
    /// Make the host's trusted CA certificates available to builds and environments.
    #[serde(default = "yes")]
    pub host_ca: bool,
    /// `dockerfile` (with `context`, `target`, `args`): the base is built from a Dockerfile
    /// by berth's own builder, and `from` is unused. Omitted from the plan when absent, so
    /// plans (and their hashes) of files without it stay as they were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dockerfile: Option<DockerfilePlan>,
    /// `cache`: the registry repository holding cached build steps
    /// (`registry/repository`, no tag), read before each step is built.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<String>,
    /// `cache_push`: also push the steps built here to `cache`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub cache_push: bool,
}

/// A Dockerfile to build the base image from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DockerfilePlan {
    /// The Dockerfile (absolute).
    pub path: PathBuf,
    /// The build context folder (absolute; default: the project folder).
    pub context: PathBuf,
    /// The stage to build (`None`: the last).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Build arguments (`ARG` values).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub args: BTreeMap<String, String>,
}

impl ImagePlan {
    /// The plan without `cache`/`cache_push`: where built steps are shared changes nothing
    /// of the environment, so it is left out of the plan's hashes (no restart for it).
    pub fn without_build_cache(&self) -> ImagePlan {
        ImagePlan {
            cache: None,
            cache_push: false,
            ..self.clone()
        }
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn root_folder() -> String {
    "/".into()
}

fn yes() -> bool {
    true
}

/// Where the base image comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ImageSource {
    /// An OCI image in a registry.
    Oci { reference: ImageReference },
    /// A Debian (or derivative) suite bootstrapped with debootstrap/mmdebstrap.
    Debootstrap {
        suite: String,
        /// Mirror URL; `None` means the host's configured Debian mirror.
        mirror: Option<String>,
    },
    /// A directory on the host holding a root filesystem (absolute path).
    Rootfs { path: PathBuf },
    /// A tar archive of a root filesystem (absolute path).
    Tar { path: PathBuf },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountPlan {
    /// For `bind` and `sync`: absolute host path. For `volume`: the volume's name.
    /// For `tmpfs`: `None`.
    pub source: Option<String>,
    /// Absolute path inside the environment.
    pub target: String,
    pub kind: MountKind,
    pub readonly: bool,
    /// `sync` only: gitignore-style patterns not synchronized.
    pub ignore: Vec<String>,
    /// `tmpfs` only: size limit in bytes.
    pub size: Option<u64>,
    /// `bind`/`sync` only: the source may be `/`, a kernel filesystem, berth's own store or
    /// outside the project folder (the user opted in with `unsafe_host_path = true`).
    /// Omitted from the plan when false, so plans (and their hashes) of files without the
    /// key are unchanged.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unsafe_host_path: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MountKind {
    Bind,
    Sync,
    Volume,
    Tmpfs,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortPlan {
    pub host: u16,
    pub guest: u16,
    pub protocol: Protocol,
    /// Host address the forwarder binds; 127.0.0.1 unless the file says otherwise.
    pub address: IpAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    /// Memory limit in bytes.
    pub memory: Option<u64>,
    /// CPU limit in cores (e.g. 1.5).
    pub cpus: Option<f64>,
    /// Maximum number of processes.
    pub pids: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkPlan {
    pub mode: NetworkMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    Isolated,
    Host,
    None,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShellPlan {
    /// User inside; `None` means the user that maps to the invoking host user.
    pub user: Option<String>,
    /// Working directory inside; always set after normalization (default: the first mount's
    /// target, else `/`).
    pub workdir: Option<String>,
    /// Command for `berth shell`; default `["/bin/sh", "-l"]`.
    pub command: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePlan {
    pub command: Vec<String>,
    pub restart: RestartPolicy,
    /// Variables for this service only (on top of the plan's `env`).
    pub env: BTreeMap<String, String>,
    /// Working directory inside; always set after normalization (default: the shell's workdir).
    pub workdir: Option<String>,
}

/// A sidecar: a service run from its own image, as its own container sharing the
/// environment's network (the pod model: the environment reaches it on `localhost`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SidecarPlan {
    /// Where its root filesystem comes from (any `from` form of `[image]`).
    pub image: ImageSource,
    /// The whole command line, replacing the image's entrypoint and cmd; `None`: the image's
    /// entrypoint followed by its cmd (or by `args`).
    pub command: Option<Vec<String>>,
    /// Arguments to the image's entrypoint, replacing only its cmd (compose's and Docker's
    /// `command`); never with `command`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    pub restart: RestartPolicy,
    /// Its variables (over the image's own; the environment's `[env]` does not apply).
    pub env: BTreeMap<String, String>,
    /// Working directory inside; `None`: the image's.
    pub workdir: Option<String>,
    /// Its own mounts (`bind`, `volume`, `tmpfs`; no `sync`).
    pub mounts: Vec<MountPlan>,
    /// Its own limits, in a cgroup nested under the environment's.
    pub resources: Resources,
    /// How `up` knows it serves; `None`: started is ready.
    pub ready: Option<ReadyPlan>,
    /// Sidecars started (and ready) before this one; stopped after it.
    pub after: Vec<String>,
}

/// A readiness probe and how long `up` waits for it to pass.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadyPlan {
    pub probe: ReadyProbe,
    /// Milliseconds `up` waits before it gives up (default 60 s).
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ReadyProbe {
    /// Ready when this command, run inside the sidecar, exits 0.
    Command { command: Vec<String> },
    /// Ready when a TCP connection to this port on the shared `localhost` succeeds.
    Tcp { port: u16 },
}

/// Default `ready.timeout`.
pub const DEFAULT_READY_TIMEOUT_MS: u64 = 60_000;

impl Plan {
    /// The sidecars in start order: each after every sidecar its `after` names, ties broken
    /// by name (the checker refuses unknown names and cycles, so every sidecar is listed).
    pub fn sidecar_start_order(&self) -> Vec<&str> {
        let mut order: Vec<&str> = Vec::new();
        while order.len() < self.sidecars.len() {
            let next = self.sidecars.iter().find(|(name, s)| {
                !order.contains(&name.as_str())
                    && s.after
                        .iter()
                        .all(|a| order.contains(&a.as_str()) || !self.sidecars.contains_key(a))
            });
            match next {
                Some((name, _)) => order.push(name),
                // A cycle (only in a plan the checker refused): the rest by name.
                None => order.extend(
                    self.sidecars
                        .keys()
                        .map(String::as_str)
                        .filter(|n| !order.contains(n))
                        .collect::<Vec<_>>(),
                ),
            }
        }
        order
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    No,
    OnFailure,
    Always,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmPlan {
    pub kernel: KernelSource,
    /// Guest memory in bytes.
    pub memory: u64,
    pub vcpus: u32,
    pub vmm: VmmKind,
    /// Host path of the kernel's `lib/modules/VERSION` folder, for a path kernel.
    pub modules: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum KernelSource {
    /// A Debian kernel package, fetched from the archive (`debian:PACKAGE[=VERSION]`).
    Debian {
        package: String,
        version: Option<String>,
    },
    /// A kernel image on the host (absolute path): `vmlinux` ELF or `bzImage`.
    Path { path: PathBuf },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmmKind {
    Auto,
    Kvm,
    Qemu,
}

/// Sections of a plan that can change independently; `up` redoes only what a change touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Section {
    Name,
    Backend,
    Image,
    Env,
    Mounts,
    Ports,
    Resources,
    Network,
    Shell,
    Services,
    OnCreate,
    OnUp,
    Vm,
    Devices,
    Sidecars,
    Credentials,
    Secrets,
}

impl Section {
    pub const ALL: [Section; 17] = [
        Section::Name,
        Section::Backend,
        Section::Image,
        Section::Env,
        Section::Mounts,
        Section::Ports,
        Section::Resources,
        Section::Network,
        Section::Shell,
        Section::Services,
        Section::OnCreate,
        Section::OnUp,
        Section::Vm,
        Section::Devices,
        Section::Sidecars,
        Section::Credentials,
        Section::Secrets,
    ];

    /// The name used for this section in berth.toml and in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Section::Name => "name",
            Section::Backend => "backend",
            Section::Image => "image",
            Section::Env => "env",
            Section::Mounts => "mounts",
            Section::Ports => "ports",
            Section::Resources => "resources",
            Section::Network => "network",
            Section::Shell => "shell",
            Section::Services => "services",
            Section::OnCreate => "on_create",
            Section::OnUp => "on_up",
            Section::Vm => "vm",
            Section::Devices => "devices",
            Section::Sidecars => "sidecars",
            Section::Credentials => "credentials",
            Section::Secrets => "secrets",
        }
    }
}

fn sha256_json<T: Serialize>(value: &T) -> String {
    // Serialization of these types cannot fail: no maps with non-string keys, no floats NaN
    // issues matter for hashing (NaN is rejected by validation).
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    hex::encode(Sha256::digest(&bytes))
}

impl Plan {
    /// Stable content hash (hex sha256) of the whole plan, format version included.
    pub fn hash(&self) -> String {
        if self.image.cache.is_some() || self.image.cache_push {
            let mut p = self.clone();
            p.image = self.image.without_build_cache();
            return sha256_json(&(FORMAT_VERSION, &p));
        }
        sha256_json(&(FORMAT_VERSION, self))
    }

    /// One hash per section, so a later `up` can tell exactly what changed.
    pub fn section_hashes(&self) -> BTreeMap<Section, String> {
        Section::ALL
            .iter()
            .map(|&s| (s, self.section_hash(s)))
            .collect()
    }

    pub fn section_hash(&self, section: Section) -> String {
        match section {
            Section::Name => sha256_json(&self.name),
            Section::Backend => sha256_json(&self.backend),
            Section::Image => sha256_json(&self.image.without_build_cache()),
            Section::Env => sha256_json(&self.env),
            Section::Mounts => sha256_json(&self.mounts),
            Section::Ports => sha256_json(&self.ports),
            Section::Resources => sha256_json(&self.resources),
            Section::Network => sha256_json(&self.network),
            Section::Shell => sha256_json(&self.shell),
            Section::Services => sha256_json(&self.services),
            Section::OnCreate => sha256_json(&self.on_create),
            Section::OnUp => sha256_json(&self.on_up),
            Section::Vm => sha256_json(&self.vm),
            Section::Devices => sha256_json(&self.devices),
            Section::Sidecars => sha256_json(&self.sidecars),
            Section::Credentials => sha256_json(&self.credentials),
            Section::Secrets => sha256_json(&self.secrets),
        }
    }

    /// Sections whose content differs between `self` and `other`, in file order.
    pub fn changed_sections(&self, other: &Plan) -> Vec<Section> {
        Section::ALL
            .iter()
            .copied()
            .filter(|&s| self.section_hash(s) != other.section_hash(s))
            .collect()
    }

    /// What changed from `self` to `other`, one entry per changed section in file order:
    /// the section's name, with details where they are short (`image (packages +make -curl)`,
    /// `env (+DEBUG ~PATH)`).
    pub fn describe_changes(&self, other: &Plan) -> Vec<String> {
        self.changed_sections(other)
            .into_iter()
            .map(|s| {
                let details = match s {
                    Section::Image => image_changes(&self.image, &other.image),
                    Section::Env => key_changes(&self.env, &other.env),
                    _ => Vec::new(),
                };
                if details.is_empty() {
                    s.as_str().to_string()
                } else {
                    format!("{} ({})", s.as_str(), details.join(", "))
                }
            })
            .collect()
    }
}

fn image_changes(old: &ImagePlan, new: &ImagePlan) -> Vec<String> {
    let mut out = Vec::new();
    if old.from != new.from {
        out.push("from".to_string());
    }
    let added: Vec<String> = new
        .packages
        .iter()
        .filter(|p| !old.packages.contains(p))
        .map(|p| format!("+{p}"))
        .collect();
    let removed: Vec<String> = old
        .packages
        .iter()
        .filter(|p| !new.packages.contains(p))
        .map(|p| format!("-{p}"))
        .collect();
    if !added.is_empty() || !removed.is_empty() {
        out.push(format!(
            "packages {}",
            added
                .into_iter()
                .chain(removed)
                .collect::<Vec<_>>()
                .join(" ")
        ));
    } else if old.packages != new.packages {
        out.push("packages order".to_string());
    }
    if old.setup != new.setup {
        out.push("setup".to_string());
    }
    out
}

fn key_changes(old: &BTreeMap<String, String>, new: &BTreeMap<String, String>) -> Vec<String> {
    let mut parts = Vec::new();
    for (k, v) in new {
        match old.get(k) {
            None => parts.push(format!("+{k}")),
            Some(o) if o != v => parts.push(format!("~{k}")),
            _ => {}
        }
    }
    parts.extend(
        old.keys()
            .filter(|k| !new.contains_key(*k))
            .map(|k| format!("-{k}")),
    );
    if parts.is_empty() {
        Vec::new()
    } else {
        vec![parts.join(" ")]
    }
}
