//! What a backend starts from: [`StartRequest`] (the environment's plan, its image's layers
//! and defaults) and [`ImageDefaults`].

use std::path::{Path, PathBuf};

use envfile_spec::Plan;

use crate::state::BerthHome;

/// What the image's config sets for processes inside, under the plan's own settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageDefaults {
    /// `KEY=VALUE` entries.
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
}

/// Everything a backend turns into its own spec to start an environment.
pub struct StartRequest<'a> {
    pub home: &'a BerthHome,
    pub plan: &'a Plan,
    pub env_id: &'a str,
    /// The environment's folder (`home.env_dir(env_id)`).
    pub state_dir: &'a Path,
    /// The image's layer folders, bottom first.
    pub layers: Vec<PathBuf>,
    pub image: ImageDefaults,
    /// No user namespace (`up --privileged`; containers).
    pub privileged: bool,
    /// Replace taken host ports of `[[ports]]` by free ones (`berth run --publish-auto`).
    pub publish_auto: bool,
    /// Start without the services: `on_create` runs first, then
    /// [`Backend::start_services`](super::Backend::start_services).
    pub hold_services: bool,
    /// Names the environment resolves (name, address): the sidecars of a VM, each on berth's
    /// bridge with an address of its own (a container's sidecars share its `localhost`).
    pub hosts: Vec<(String, std::net::Ipv4Addr)>,
    /// The environment's gitconfig (the host's git identity, [`RunFiles::Gitconfig`]),
    /// inside before any service or command starts; whether it got there is
    /// [`Started::gitconfig_error`](super::Started::gitconfig_error).
    ///
    /// [`RunFiles::Gitconfig`]: super::RunFiles::Gitconfig
    pub gitconfig: Option<String>,
    /// The environment is removed after this start, never started again (`berth run`
    /// without `--keep`): its writable layer need survive neither a crash nor a restart, so
    /// the backend may skip making it durable (containers: overlayfs's `volatile`; a VM's
    /// disk is written as always).
    pub throwaway: bool,
}
