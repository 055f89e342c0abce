//! Credentials forwarded to one command by a backend whose guest relays the connections
//! itself (a VM's agent opens a stream per connection made inside): [`GuestForwarding`] rides
//! on the [`ExecRequest`](super::ExecRequest), and the backend asks its
//! [`ForwardConnector`] for a host-side socket per stream. Where a stream leads is decided
//! by the connector, fixed when the session started; the guest only names the kind.

use std::os::unix::net::UnixStream;
use std::sync::Arc;

/// What a forwarded connection inside is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ForwardKind {
    /// The SSH agent (`SSH_AUTH_SOCK` inside).
    SshAgent,
    /// git's `credential-cache` protocol (the session's credential helper).
    GitCredential,
}

/// The host side of forwarded connections.
pub trait ForwardConnector: Send + Sync {
    /// A host socket for one new connection of `kind` made inside (the host serves the
    /// other end), or `None` when none is served now.
    fn connect(&self, kind: ForwardKind) -> Option<UnixStream>;
}

/// What one command gets forwarded, and where its connections go.
#[derive(Clone)]
pub struct GuestForwarding {
    /// An SSH agent socket inside (`SSH_AUTH_SOCK`).
    pub agent: bool,
    /// A git credential helper socket inside.
    pub git_credentials: bool,
    /// The session's gitconfig (identity, helper), its folder written as
    /// `berth_agent_proto::SESSION_DIR_PLACEHOLDER`.
    pub gitconfig: Option<String>,
    pub connector: Arc<dyn ForwardConnector>,
}

impl GuestForwarding {
    /// Whether connections of `kind` are forwarded.
    pub fn allows(&self, kind: ForwardKind) -> bool {
        match kind {
            ForwardKind::SshAgent => self.agent,
            ForwardKind::GitCredential => self.git_credentials,
        }
    }
}

impl std::fmt::Debug for GuestForwarding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "GuestForwarding(agent {}, git credentials {}, gitconfig {})",
            self.agent,
            self.git_credentials,
            self.gitconfig.is_some()
        )
    }
}

impl PartialEq for GuestForwarding {
    fn eq(&self, other: &Self) -> bool {
        self.agent == other.agent
            && self.git_credentials == other.git_credentials
            && self.gitconfig == other.gitconfig
            && Arc::ptr_eq(&self.connector, &other.connector)
    }
}

impl Eq for GuestForwarding {}
