//! A VM session's forwarded credentials: the guest's agent makes the session's folder and
//! sockets itself and opens a stream to the host per connection (see `agent/src/forward.rs`);
//! the VM backend asks [`GuestRelay`] (its [`ForwardConnector`]) for a host socket per stream,
//! and this side serves the other end exactly as a container's accepted connections: an
//! agent connection relayed to the session's fixed [`AgentTarget`], a git request answered
//! by the host's `git credential fill` (`get` only), at most [`super::session`]'s
//! connection limit at once.

use std::os::unix::net::UnixStream as StdStream;
use std::sync::Arc;

use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::agent_relay::{self, AgentTarget};
use super::git_answer::answer_git;
use crate::backend::{ForwardConnector, ForwardKind};

/// Hands each new stream's far end to the serving thread.
pub(super) struct GuestRelay {
    to_serve: mpsc::UnboundedSender<(ForwardKind, StdStream)>,
}

impl ForwardConnector for GuestRelay {
    fn connect(&self, kind: ForwardKind) -> Option<StdStream> {
        let (ours, theirs) = StdStream::pair().ok()?;
        self.to_serve.send((kind, theirs)).ok()?;
        Some(ours)
    }
}

impl GuestRelay {
    /// A relay and the function its serving thread runs until `stopped`: connections of a
    /// kind the session does not forward (`agent` none, `git` false) are closed at once.
    pub(super) fn new(
        agent: Option<AgentTarget>,
        git: bool,
        limit: usize,
    ) -> (
        GuestRelay,
        impl FnOnce(oneshot::Receiver<()>) + Send + 'static,
    ) {
        let (to_serve, mut queue) = mpsc::unbounded_channel::<(ForwardKind, StdStream)>();
        let serve = move |stopped: oneshot::Receiver<()>| {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let limit = Arc::new(Semaphore::new(limit));
                let accept = tokio::spawn(async move {
                    while let Some((kind, conn)) = queue.recv().await {
                        let Ok(permit) = limit.clone().acquire_owned().await else {
                            return;
                        };
                        if conn.set_nonblocking(true).is_err() {
                            continue;
                        }
                        let Ok(conn) = UnixStream::from_std(conn) else {
                            continue;
                        };
                        match (kind, &agent) {
                            (ForwardKind::SshAgent, Some(target)) => {
                                let target = target.clone();
                                tokio::spawn(async move {
                                    agent_relay::relay(conn, target).await;
                                    drop(permit);
                                });
                            }
                            (ForwardKind::GitCredential, _) if git => {
                                tokio::spawn(async move {
                                    answer_git(conn).await;
                                    drop(permit);
                                });
                            }
                            // Not forwarded for this session: closed.
                            _ => {}
                        }
                    }
                });
                let _ = stopped.await;
                accept.abort();
            });
            rt.shutdown_timeout(std::time::Duration::from_millis(200));
        };
        (GuestRelay { to_serve }, serve)
    }
}
