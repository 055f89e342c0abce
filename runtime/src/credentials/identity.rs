//! The host user's git identity, written into the environment once at `up` instead of at
//! every session: `up` reads the host's git configuration (one `git config`), writes the
//! identity into the environment's tmpfs as its system gitconfig
//! (`/run/berth/gitconfig`, through `Backend::put_run_files`) and records
//! what it found in [`STATE_FILE`] beside the environment's record. A later `up` writes
//! again only when the identity changed (or the environment was restarted: its tmpfs is
//! new). Sessions then read the record instead of running the host's git: `exec` pays
//! nothing for the identity, only for the agent and credential sockets it forwards.
//!
//! An environment that cannot take the file (started by an older berth) is recorded as
//! such, and its sessions get the identity in their own gitconfig as before.

use std::path::Path;

use envfile_spec::plan::CredentialsPlan;
use serde::{Deserialize, Serialize};

use super::host_git;
use crate::backend::{Backend, RunFiles};
use crate::state;

/// Beside the environment's record: what the last `up` found of the host's git.
pub const STATE_FILE: &str = "host-git.json";

/// The host's git as the last `up` found it (under that `up`'s `[credentials]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostGit {
    /// `user.name` and `user.email` to give the environment (`None`: none, or `git` off).
    pub identity: Option<(Option<String>, Option<String>)>,
    /// The host has a credential helper and `git_credentials` is on.
    pub has_helper: bool,
    /// The identity is in the environment's gitconfig file (`false`: sessions carry it).
    pub inside: bool,
}

impl HostGit {
    /// What `policy` gives of the host's current git configuration (one `git config`).
    pub fn of_host(policy: &CredentialsPlan) -> HostGit {
        let wanted = policy.git || policy.git_credentials;
        Self::of_config(policy, wanted.then(host_git::read_config))
    }

    /// [`of_host`](Self::of_host), with git asked only when a file or variable its answer
    /// depends on changed since the answer kept in `home` (see `host_git_cache`).
    pub fn of_host_cached(policy: &CredentialsPlan, home: &crate::state::BerthHome) -> HostGit {
        let wanted = policy.git || policy.git_credentials;
        Self::of_config(
            policy,
            wanted.then(|| super::host_git_cache::read_config_cached(home.root())),
        )
    }

    fn of_config(policy: &CredentialsPlan, host: Option<host_git::HostGitConfig>) -> HostGit {
        let host = host.unwrap_or_default();
        HostGit {
            identity: (policy.git && (host.name.is_some() || host.email.is_some()))
                .then(|| (host.name.clone(), host.email.clone())),
            has_helper: policy.git_credentials && host.has_helper,
            inside: false,
        }
    }

    /// The record `up` left in the environment's folder `dir`, if any.
    pub fn load(dir: &Path) -> Option<HostGit> {
        state::read_json(&dir.join(STATE_FILE)).ok().flatten()
    }
}

/// Brings the environment in `dir` (running, on `backend`) up to date with `now`, the
/// host's git as [`HostGit::of_host`] just found it. `fresh`: the environment was
/// (re)started by this `up`, so its tmpfs holds nothing yet. Returns a notice when the
/// identity could not be written inside (sessions then carry it).
pub fn install_identity(
    backend: &dyn Backend,
    dir: &Path,
    mut now: HostGit,
    fresh: bool,
) -> Option<String> {
    let before = if fresh { None } else { HostGit::load(dir) };
    let was_inside = before.as_ref().is_some_and(|b| b.inside);
    let same = before.as_ref().is_some_and(|b| b.identity == now.identity);
    let mut notice = None;
    if same && (was_inside || now.identity.is_none()) {
        now.inside = was_inside;
    } else if now.identity.is_none() && !was_inside {
        // Nothing inside to remove: a fresh tmpfs, or the identity was never written.
    } else {
        let text = now.identity.as_ref().map(|(name, email)| {
            host_git::gitconfig_text("/etc/gitconfig", name.as_deref(), email.as_deref(), None)
        });
        match backend.put_run_files(dir, RunFiles::Gitconfig(text.as_deref())) {
            Ok(()) => now.inside = now.identity.is_some(),
            Err(e) => {
                let why = e.to_string();
                notice = Some(format!(
                    "the host's git identity could not be written into the environment ({why}); each session carries it instead (`berth down && berth up` restarts the environment with this berth)"
                ));
            }
        }
    }
    // Atomic, not fsynced: it describes the running environment's tmpfs, which a reboot
    // empties (the `up` that restarts the environment is `fresh` and ignores this record).
    if before.as_ref() != Some(&now) {
        if let Err(e) = state::write_json_volatile(&dir.join(STATE_FILE), &now) {
            notice.get_or_insert(format!("cannot record the host's git identity: {e}"));
        }
    }
    notice
}
