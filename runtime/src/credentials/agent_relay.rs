//! Where a session's agent connections go: the host's agent socket (`SSH_AUTH_SOCK` of the
//! berth process, read on the host) or, for an SSH session whose client asked for agent
//! forwarding (`ssh -A`), a new `auth-agent@openssh.com` channel to that client. The target
//! is fixed when the session starts; nothing from inside the environment changes it.

use std::path::PathBuf;

use tokio::io::copy_bidirectional;
use tokio::net::UnixStream;

/// Where agent connections from inside are relayed to.
#[derive(Clone)]
pub enum AgentTarget {
    /// The host's agent socket (an absolute path on the host).
    HostSocket(PathBuf),
    /// The SSH client of this connection, through its agent channel.
    SshClient(russh::server::Handle),
}

impl std::fmt::Debug for AgentTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AgentTarget::HostSocket(p) => write!(f, "HostSocket({})", p.display()),
            AgentTarget::SshClient(_) => write!(f, "SshClient"),
        }
    }
}

impl AgentTarget {
    /// The host's agent of this process (`SSH_AUTH_SOCK`, an absolute path), if any.
    pub fn of_this_process() -> Option<AgentTarget> {
        let p = PathBuf::from(std::env::var_os("SSH_AUTH_SOCK")?);
        p.is_absolute().then_some(AgentTarget::HostSocket(p))
    }
}

/// Relays one connection from inside to `target` until either side ends.
pub async fn relay(mut inside: UnixStream, target: AgentTarget) {
    match target {
        AgentTarget::HostSocket(path) => {
            // Only the fixed host path: never a name the environment sent.
            let Ok(mut agent) = UnixStream::connect(&path).await else {
                return;
            };
            let _ = copy_bidirectional(&mut inside, &mut agent).await;
        }
        AgentTarget::SshClient(handle) => {
            let Ok(channel) = handle.channel_open_agent().await else {
                return;
            };
            let mut stream = channel.into_stream();
            let _ = copy_bidirectional(&mut inside, &mut stream).await;
        }
    }
}
