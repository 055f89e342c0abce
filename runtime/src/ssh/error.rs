//! [`SshError`]: what can go wrong serving or configuring SSH.

use crate::environment::EnvError;

/// What can go wrong serving or configuring SSH.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error(transparent)]
    Env(#[from] EnvError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("SSH host key: {0}")]
    HostKey(String),
    #[error("SSH connection failed: {0}; berth ssh --stdio speaks SSH on stdin/stdout and is meant to be run by ssh as a ProxyCommand (use `berth ssh NAME` or the entries of `berth ssh-config`)")]
    Protocol(russh::Error),
}

impl SshError {
    pub(crate) fn io(context: &str, source: std::io::Error) -> SshError {
        SshError::Io {
            context: context.to_string(),
            source,
        }
    }
}
