//! The host's credentials in every way into an environment (`shell`, `exec`, SSH sessions),
//! forwarded, never copied in: the SSH agent as a socket inside, the host user's git
//! identity and a git credential helper answered by the host's `git credential fill`
//! (`[credentials]` in berth.toml turns each off).
//!
//! - `session`: one session's forwarding: the inside builtin's private folder and sockets,
//!   checked and served on a thread of its own.
//! - `guest_relay`: the same for a VM, whose agent makes the folder and sockets and opens a
//!   stream per connection: the host ends of those streams, served the same way.
//! - `agent_relay`: where agent connections go (the host's `SSH_AUTH_SOCK`, or the SSH
//!   client's agent channel for `ssh -A`).
//! - `identity`: the host's git identity written into the environment once at `up`, and
//!   what that `up` found of the host's git (sessions read it instead of asking git).
//! - `git_answer`: one git credential request from inside (a container's connection or a
//!   VM's stream) answered by the host's `credential fill` (`get` only).
//! - `git_stamp`: whether the files and variables git's configuration comes from changed
//!   since git was last asked (a warm `up`, or a new environment with the home's cached
//!   answer, runs git only then).
//! - `host_git`: the host's git (identity, `credential fill`), run outside any repository
//!   and never prompting.

mod agent_relay;
mod error;
mod git_answer;
mod git_stamp;
mod guest_relay;
mod host_git;
mod identity;
mod session;

pub use agent_relay::{AgentTarget, RelayThread};
pub use error::CredentialsError;
pub use identity::{
    install_identity, record_started_identity, start_gitconfig, started_identity, HostGit,
};
pub(crate) use session::receive_handover;
pub use session::{SessionCredentials, Wanted};
