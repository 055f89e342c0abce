//! The host's credentials in every way into an environment (`shell`, `exec`, SSH sessions),
//! forwarded, never copied in: the SSH agent as a socket inside, the host user's git
//! identity and a git credential helper answered by the host's `git credential fill`
//! (`[credentials]` in berth.toml turns each off).
//!
//! - `session`: one session's forwarding: the inside builtin's private folder and sockets,
//!   checked and served on a thread of its own.
//! - `agent_relay`: where agent connections go (the host's `SSH_AUTH_SOCK`, or the SSH
//!   client's agent channel for `ssh -A`).
//! - `identity`: the host's git identity written into the environment once at `up`, and
//!   what that `up` found of the host's git (sessions read it instead of asking git).
//! - `host_git`: the host's git (identity, `credential fill`), run outside any repository
//!   and never prompting.
//! - `host_git_cache`: its configuration kept in the home with a stamp of what it depends
//!   on, so `up` and `run` start git only when that changed.

mod agent_relay;
mod error;
mod host_git;
mod host_git_cache;
mod identity;
mod session;

pub use agent_relay::{AgentTarget, RelayThread};
pub use error::CredentialsError;
pub use identity::{install_identity, HostGit};
pub(crate) use session::receive_handover;
pub use session::{SessionCredentials, Wanted};
