//! The host user's git identity, written into the environment once at `up` instead of at
//! every session: `up` reads the host's git configuration (one `git config`, or its stamped
//! answer), gives the identity to the start as the environment's system gitconfig
//! (`/run/berth/gitconfig` in its tmpfs, `StartRequest::gitconfig`: written before anything
//! runs inside, with no command of its own) and records what it found in [`STATE_FILE`]
//! beside the environment's record. A later `up` of the running environment writes again
//! (through `Backend::put_run_files`) only when the identity changed; a restart brings it
//! with the start again (its tmpfs is new). Sessions then read the record instead of running the host's git: `exec` pays
//! nothing for the identity, only for the agent and credential sockets it forwards.
//!
//! An environment that cannot take the file (started by an older berth) is recorded as
//! such, and its sessions get the identity in their own gitconfig as before.

use std::path::Path;

use envfile_spec::plan::CredentialsPlan;
use serde::{Deserialize, Serialize};

use super::git_stamp::{self, ConfigStamp};
use super::host_git;
use crate::backend::{Backend, RunFiles};
use crate::state;
use std::time::SystemTime;

/// Beside the environment's record: what the last `up` found of the host's git.
pub const STATE_FILE: &str = "host-git.json";

/// In the berth home: the last stamped answer of the host's git, for new environments.
pub const HOME_CACHE_FILE: &str = "host-git-cache.json";

/// The host's git as the last `up` found it (under that `up`'s `[credentials]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostGit {
    /// `user.name` and `user.email` to give the environment (`None`: none, or `git` off).
    pub identity: Option<(Option<String>, Option<String>)>,
    /// The host has a credential helper and `git_credentials` is on.
    pub has_helper: bool,
    /// The identity is in the environment's gitconfig file (`false`: sessions carry it).
    pub inside: bool,
    /// What the host's configuration looked like when it was read (no stamp: read again
    /// next time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stamp: Option<ConfigStamp>,
}

impl HostGit {
    /// What `policy` gives of the host's current git configuration (one `git config`),
    /// with the stamp of what it read.
    pub fn of_host(policy: &CredentialsPlan) -> HostGit {
        let key = (policy.git, policy.git_credentials);
        let env = git_stamp::steering_env(std::env::vars_os());
        let standard = git_stamp::standard_files(&env);
        let before = ConfigStamp::take(key, env.clone(), standard.clone(), SystemTime::now());
        let (host, read) = if policy.git || policy.git_credentials {
            host_git::read_config()
        } else {
            (host_git::HostGitConfig::default(), Some(Vec::new()))
        };
        let stamp = read.zip(before).and_then(|(mut files, before)| {
            files.extend(standard);
            let after = ConfigStamp::take(key, env, files, SystemTime::now())?;
            // A standard file that changed while git ran: read again next time.
            after.agrees_with(&before).then_some(after)
        });
        HostGit {
            identity: (policy.git && (host.name.is_some() || host.email.is_some()))
                .then(|| (host.name.clone(), host.email.clone())),
            has_helper: policy.git_credentials && host.has_helper,
            inside: false,
            stamp,
        }
    }

    /// What `policy` gives of the host's git configuration now, without running git when
    /// nothing it reads changed: the record in the environment's folder `dir` (a warm `up`),
    /// else the home's [`HOME_CACHE_FILE`] (the last answer of any `up` or `run` of this
    /// home: a new environment), else [`Self::of_host`], whose stamped answer the home then
    /// keeps.
    pub fn current(dir: &Path, home: &Path, policy: &CredentialsPlan) -> HostGit {
        let key = (policy.git, policy.git_credentials);
        let env = git_stamp::steering_env(std::env::vars_os());
        let still_current =
            |h: &HostGit| h.stamp.as_ref().is_some_and(|s| s.still_current(key, &env));
        if let Some(prev) = HostGit::load(dir).filter(still_current) {
            return prev;
        }
        let cache = home.join(HOME_CACHE_FILE);
        let cached: Option<HostGit> = state::read_json(&cache).ok().flatten();
        if let Some(mut prev) = cached.filter(still_current) {
            // Whether the identity is inside is the environment's, not the home's.
            prev.inside = false;
            return prev;
        }
        let now = HostGit::of_host(policy);
        if now.stamp.is_some() {
            // A cache: lost on a crash, it is only asked again.
            let _ = state::write_json_volatile(&cache, &now);
        }
        now
    }

    /// The record `up` left in the environment's folder `dir`, if any.
    pub fn load(dir: &Path) -> Option<HostGit> {
        state::read_json(&dir.join(STATE_FILE)).ok().flatten()
    }
}

/// The environment's gitconfig for `now`'s identity (`None`: there is none to give).
fn gitconfig_of(now: &HostGit) -> Option<String> {
    now.identity.as_ref().map(|(name, email)| {
        host_git::gitconfig_text("/etc/gitconfig", name.as_deref(), email.as_deref(), None)
    })
}

/// What a (re)start of an environment brings inside for `now`, the host's git as
/// [`HostGit::current`] found it ([`StartRequest::gitconfig`]): its tmpfs is new, so the
/// backend writes the gitconfig before anything runs there, without a command of its own.
/// Record the outcome with [`record_started_identity`].
///
/// [`StartRequest::gitconfig`]: crate::backend::StartRequest::gitconfig
pub fn start_gitconfig(now: &HostGit) -> Option<String> {
    gitconfig_of(now)
}

/// What the environment just started with [`start_gitconfig`]`(&now)` holds of `now`;
/// `error`: why the backend could not write it ([`Started::gitconfig_error`]). Returns it
/// with a notice when the identity is not inside (sessions then carry it). Record it with
/// [`record_started_identity`], or keep it for the sessions of a throw-away run
/// ([`Wanted::of_host_git`](super::Wanted::of_host_git)).
///
/// [`Started::gitconfig_error`]: crate::backend::Started::gitconfig_error
pub fn started_identity(mut now: HostGit, error: Option<String>) -> (HostGit, Option<String>) {
    now.inside = now.identity.is_some() && error.is_none();
    (now, error.map(|why| not_inside_notice(&why)))
}

/// Records `now`, as [`started_identity`] returned it, for the environment in `dir`; returns
/// `notice` (that call's), else a notice when it cannot be recorded.
pub fn record_started_identity(
    dir: &Path,
    now: &HostGit,
    notice: Option<String>,
) -> Option<String> {
    let recorded = record(dir, now);
    notice.or(recorded)
}

/// Brings the running environment in `dir` (on `backend`), which a previous `up` started, up
/// to date with `now`, the host's git as [`HostGit::current`] found it: the gitconfig is
/// written (through [`Backend::put_run_files`]) only when the identity changed since the
/// record. Returns a notice when the identity could not be written inside (sessions then
/// carry it).
pub fn install_identity(backend: &dyn Backend, dir: &Path, mut now: HostGit) -> Option<String> {
    let before = HostGit::load(dir);
    let was_inside = before.as_ref().is_some_and(|b| b.inside);
    let same = before.as_ref().is_some_and(|b| b.identity == now.identity);
    let mut notice = None;
    if same && (was_inside || now.identity.is_none()) {
        now.inside = was_inside;
    } else if now.identity.is_none() && !was_inside {
        // Nothing inside to remove: the identity was never written.
    } else {
        let text = gitconfig_of(&now);
        match backend.put_run_files(dir, RunFiles::Gitconfig(text.as_deref())) {
            Ok(()) => now.inside = now.identity.is_some(),
            Err(e) => notice = Some(not_inside_notice(&e.to_string())),
        }
    }
    if before.as_ref() != Some(&now) {
        if let Some(n) = record(dir, &now) {
            notice.get_or_insert(n);
        }
    }
    notice
}

fn not_inside_notice(why: &str) -> String {
    format!(
        "the host's git identity could not be written into the environment ({why}); each session carries it instead (`berth down && berth up` restarts the environment with this berth)"
    )
}

/// Writes `now` as the environment's [`STATE_FILE`]; a notice when it cannot.
fn record(dir: &Path, now: &HostGit) -> Option<String> {
    // Without fsync: it describes the environment's tmpfs, which a reboot empties (the next
    // `up` restarts the environment and writes it anew), and a record a power cut left
    // unreadable is read as none (`load`).
    state::write_json_volatile(&dir.join(STATE_FILE), now)
        .err()
        .map(|e| format!("cannot record the host's git identity: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stamp of no file under this process's variables: current until they change.
    fn answer(name: &str, inside: bool) -> HostGit {
        let env = git_stamp::steering_env(std::env::vars_os());
        HostGit {
            identity: Some((Some(name.into()), None)),
            has_helper: false,
            inside,
            stamp: ConfigStamp::take((true, true), env, Vec::new(), SystemTime::now()),
        }
    }

    #[test]
    fn a_new_environment_takes_the_homes_answer_and_a_warm_one_its_own() {
        let home = tempfile::tempdir().unwrap();
        let env_dir = tempfile::tempdir().unwrap();
        let policy = CredentialsPlan::default();
        state::write_json(&home.path().join(HOME_CACHE_FILE), &answer("Home", true)).unwrap();
        // A new environment: the home's answer, and nothing of it is inside yet.
        let got = HostGit::current(env_dir.path(), home.path(), &policy);
        assert_eq!(got.identity, Some((Some("Home".into()), None)));
        assert!(!got.inside);
        // A warm `up`: the environment's own record wins.
        state::write_json(&env_dir.path().join(STATE_FILE), &answer("Env", true)).unwrap();
        let got = HostGit::current(env_dir.path(), home.path(), &policy);
        assert_eq!(got.identity, Some((Some("Env".into()), None)));
        assert!(got.inside);
        // An answer under another `[credentials]` is not taken.
        let other = CredentialsPlan {
            git_credentials: false,
            ..policy
        };
        let got = HostGit::current(tempfile::tempdir().unwrap().path(), home.path(), &other);
        assert_ne!(got.identity, Some((Some("Home".into()), None)));
    }
}
