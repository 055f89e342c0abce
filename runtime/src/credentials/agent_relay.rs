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

/// Connections one [`RelayThread`] relays at once.
const THREAD_CONNECTIONS: usize = 16;

/// Relays every connection made to a listening socket to a fixed target, on a thread of its
/// own (a build step's `RUN --mount=type=ssh`), until dropped.
pub struct RelayThread {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RelayThread {
    /// Serves `listener` (a listening Unix socket berth made) for `target`.
    pub fn start(
        listener: std::os::unix::net::UnixListener,
        target: AgentTarget,
    ) -> std::io::Result<RelayThread> {
        listener.set_nonblocking(true)?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread = std::thread::Builder::new()
            .name("agent-relay".into())
            .spawn(move || {
                rt.block_on(async move {
                    let Ok(l) = tokio::net::UnixListener::from_std(listener) else {
                        return;
                    };
                    let limit =
                        std::sync::Arc::new(tokio::sync::Semaphore::new(THREAD_CONNECTIONS));
                    let accept = tokio::spawn(async move {
                        while let Ok((conn, _)) = l.accept().await {
                            let Ok(permit) = limit.clone().acquire_owned().await else {
                                return;
                            };
                            let target = target.clone();
                            tokio::spawn(async move {
                                relay(conn, target).await;
                                drop(permit);
                            });
                        }
                    });
                    let _ = stopped.await;
                    accept.abort();
                });
                rt.shutdown_timeout(std::time::Duration::from_millis(200));
            })?;
        Ok(RelayThread {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for RelayThread {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
