//! One session's forwarded credentials: [`SessionCredentials::start`] runs the inside
//! builtin ([`ssh_inside::SESSION_SOCKETS`]) as the session's user, receives its private
//! folder's path and listening sockets, checks that each is what it must be (a listening
//! Unix stream socket: a hostile environment could pass anything), and serves them on a
//! thread of its own: agent connections relayed to the session's [`AgentTarget`], git
//! credential requests answered by the host's `git credential fill`. The session's
//! command gets `SSH_AUTH_SOCK` and `GIT_CONFIG_SYSTEM` pointing into the folder
//! ([`SessionCredentials::add_env`]). Dropping it stops serving, ends the builtin (it
//! removes the folder) and waits for it.

use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener as StdListener, UnixStream as StdStream};
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use envfile_spec::plan::{BackendKind, CredentialsPlan};
use nix::sys::socket::{self, sockopt, AddressFamily, SockType, SockaddrLike, SockaddrStorage};
use tokio::net::UnixListener;
use tokio::sync::{oneshot, Semaphore};

use super::agent_relay::{self, AgentTarget};
use super::error::CredentialsError;
use super::git_answer::answer_git;
use super::guest_relay::GuestRelay;
use super::host_git;
use super::identity::HostGit;
use crate::backend::{CommandSession, ExecRequest, GuestForwarding};
use crate::ssh_inside::{self, GITCONFIG_FILE, GITCONFIG_PATH, SESSION_DIR_PLACEHOLDER};

// The same names in a container's folder as in a VM's.
use berth_agent_proto::{AGENT_SOCKET, GIT_SOCKET};
/// Connections relayed at once per session (an environment opening thousands gets no more).
const MAX_CONNECTIONS: usize = 32;
/// How long the inside builtin may take to hand its sockets over.
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(20);

/// What a session gets.
#[derive(Debug, Clone, Default)]
pub struct Wanted {
    pub agent: Option<AgentTarget>,
    /// The host user's `user.name` and `user.email` for the session's own gitconfig
    /// (`None`: none forwarded, or already in the environment's gitconfig).
    pub identity: Option<(Option<String>, Option<String>)>,
    pub git_credentials: bool,
    /// The environment's gitconfig ([`GITCONFIG_PATH`]) holds the identity: a session's
    /// gitconfig includes it.
    pub identity_inside: bool,
}

impl Wanted {
    /// What a session started by this berth process in the environment whose folder is
    /// `dir` gets under `policy`: the agent of its `SSH_AUTH_SOCK` (unless `agent` names
    /// another target), and the host's git identity and credentials as the last `up` found
    /// them ([`HostGit`]; the host's git is asked only when no `up` recorded it).
    pub fn for_session(dir: &Path, policy: &CredentialsPlan, agent: Option<AgentTarget>) -> Wanted {
        let git = HostGit::load(dir).unwrap_or_else(|| HostGit::of_host(policy));
        Self::of_host_git(git, policy, agent)
    }

    /// [`for_session`](Self::for_session) with the host's git as the start of the
    /// environment left it (`git`), for the command of a throw-away `berth run`, whose `up`
    /// keeps it in memory instead of a record file (`UpReport::host_git`).
    pub fn of_host_git(
        git: HostGit,
        policy: &CredentialsPlan,
        agent: Option<AgentTarget>,
    ) -> Wanted {
        let agent = if policy.ssh_agent {
            agent.or_else(AgentTarget::of_this_process)
        } else {
            None
        };
        let identity_inside = policy.git && git.inside;
        Wanted {
            agent,
            identity: git.identity.filter(|_| policy.git && !identity_inside),
            git_credentials: policy.git_credentials && git.has_helper,
            identity_inside,
        }
    }

    fn is_empty(&self) -> bool {
        self.agent.is_none() && self.identity.is_none() && !self.git_credentials
    }

    /// The session's own gitconfig, when it has an identity or the credential helper to
    /// add: after an include of the environment's gitconfig (or the image's), the helper's
    /// socket in the session's folder ([`SESSION_DIR_PLACEHOLDER`] until it is made).
    fn gitconfig(&self) -> Option<String> {
        (self.identity.is_some() || self.git_credentials).then(|| {
            let (name, email) = self.identity.clone().unwrap_or_default();
            let helper = format!("{SESSION_DIR_PLACEHOLDER}/{GIT_SOCKET}");
            host_git::gitconfig_text(
                if self.identity_inside {
                    GITCONFIG_PATH
                } else {
                    "/etc/gitconfig"
                },
                name.as_deref(),
                email.as_deref(),
                self.git_credentials.then_some(helper.as_str()),
            )
        })
    }
}

/// A running session's forwarded credentials; see the module's documentation.
pub struct SessionCredentials {
    env: Vec<String>,
    stop: Option<oneshot::Sender<()>>,
    serving: Option<JoinHandle<()>>,
    /// Our end of the builtin's stdin: closing it tells the builtin to clean up.
    handover: Option<StdStream>,
    builtin: Option<Box<dyn CommandSession>>,
    /// A VM's: what its agent forwards, and the connector of its streams.
    forward: Option<GuestForwarding>,
}

impl SessionCredentials {
    /// Starts forwarding `wanted` for a session of `user` (`None`: the image's user) in a
    /// running environment of `backend`, whose builtin `exec_start` starts inside (as
    /// `Environments::session_credentials` does). `Ok(None)` when there is nothing to
    /// forward. A VM's agent makes the folder and sockets itself when the command starts
    /// (see [`Self::add_env`]): nothing runs inside before.
    pub fn start(
        backend: BackendKind,
        user: Option<&str>,
        wanted: Wanted,
        exec_start: impl FnOnce(
            &ExecRequest,
            [std::os::fd::BorrowedFd<'_>; 3],
        ) -> Result<Box<dyn CommandSession>, String>,
    ) -> Result<Option<SessionCredentials>, CredentialsError> {
        if wanted.is_empty() {
            return Ok(None);
        }
        if backend == BackendKind::Vm {
            return Self::for_guest(wanted).map(Some);
        }
        let mut names = Vec::new();
        if wanted.agent.is_some() {
            names.push(AGENT_SOCKET);
        }
        if wanted.git_credentials {
            names.push(GIT_SOCKET);
        }
        let gitconfig = wanted.gitconfig();
        let mut argv = vec![ssh_inside::SESSION_SOCKETS.to_string(), names.join(",")];
        if let Some(g) = &gitconfig {
            argv.push(g.clone());
        }
        let (ours, theirs) =
            StdStream::pair().map_err(|e| CredentialsError::io("socket pair", e))?;
        let devnull =
            std::fs::File::open("/dev/null").map_err(|e| CredentialsError::io("/dev/null", e))?;
        let (err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| CredentialsError::io("pipe", e.into()))?;
        let req = ExecRequest {
            argv,
            env: Vec::new(),
            cwd: Some("/".into()),
            user: user.map(str::to_string),
            tty: false,
            winsize: None,
            forward: None,
        };
        let mut builtin = exec_start(&req, [theirs.as_fd(), devnull.as_fd(), err_w.as_fd()])
            .map_err(CredentialsError::Inside)?;
        drop((theirs, err_w));
        let received = receive(&ours, names.len());
        let (dir, listeners) = match received {
            Ok(r) => r,
            Err(why) => {
                let mut text = String::new();
                drop(ours);
                let _ = std::fs::File::from(err_r)
                    .take(4096)
                    .read_to_string(&mut text);
                let _ = builtin.signal(libc::SIGKILL);
                let _ = builtin.wait_timeout(Duration::from_secs(5));
                let text = text.trim();
                // An environment started by an older berth has a supervisor without the
                // builtin: it tried to run it as a program.
                let hint = if text.contains(ssh_inside::SESSION_SOCKETS) {
                    " (the environment was started by an older berth: `berth down && berth up` restarts it with this one)"
                } else {
                    ""
                };
                return Err(CredentialsError::Inside(if text.is_empty() {
                    why
                } else {
                    format!("{why}: {text}{hint}")
                }));
            }
        };
        let mut env = Vec::new();
        let mut agent_listener = None;
        let mut git_listener = None;
        for (name, l) in names.iter().zip(listeners) {
            if *name == AGENT_SOCKET {
                env.push(format!("SSH_AUTH_SOCK={dir}/{AGENT_SOCKET}"));
                agent_listener = Some(l);
            } else {
                git_listener = Some(l);
            }
        }
        if gitconfig.is_some() {
            env.push(format!("GIT_CONFIG_SYSTEM={dir}/{GITCONFIG_FILE}"));
        }
        let (stop, stopped) = oneshot::channel();
        let agent = wanted.agent.clone();
        let serving = std::thread::Builder::new()
            .name("credentials".into())
            .spawn(move || serve(agent_listener.zip(agent), git_listener, stopped))
            .map_err(|e| CredentialsError::io("thread", e))?;
        Ok(Some(SessionCredentials {
            env,
            stop: Some(stop),
            serving: Some(serving),
            handover: Some(ours),
            builtin: Some(builtin),
            forward: None,
        }))
    }

    /// A VM session's forwarding: the serving thread, and what the command's request
    /// carries to the agent ([`GuestForwarding`]).
    fn for_guest(wanted: Wanted) -> Result<SessionCredentials, CredentialsError> {
        let (relay, serve) = GuestRelay::new(
            wanted.agent.clone(),
            wanted.git_credentials,
            MAX_CONNECTIONS,
        );
        let (stop, stopped) = oneshot::channel();
        let serving = std::thread::Builder::new()
            .name("credentials".into())
            .spawn(move || serve(stopped))
            .map_err(|e| CredentialsError::io("thread", e))?;
        Ok(SessionCredentials {
            env: Vec::new(),
            stop: Some(stop),
            serving: Some(serving),
            handover: None,
            builtin: None,
            forward: Some(GuestForwarding {
                agent: wanted.agent.is_some(),
                git_credentials: wanted.git_credentials,
                gitconfig: wanted.gitconfig(),
                connector: Arc::new(relay),
            }),
        })
    }

    /// The variables the session's command gets (`SSH_AUTH_SOCK`, `GIT_CONFIG_SYSTEM`).
    pub fn env(&self) -> &[String] {
        &self.env
    }

    /// Puts [`Self::env`] before `req`'s own variables (which win); for a VM, gives `req`
    /// the forwarding its agent sets up (the variables are the agent's to add, also before
    /// the request's own).
    pub fn add_env(&self, req: &mut ExecRequest) {
        let mut env = self.env.clone();
        env.append(&mut req.env);
        req.env = env;
        if self.forward.is_some() {
            req.forward = self.forward.clone();
        }
    }
}

impl Drop for SessionCredentials {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.serving.take() {
            let _ = t.join();
        }
        drop(self.handover.take());
        if let Some(mut b) = self.builtin.take() {
            if !matches!(b.wait_timeout(Duration::from_secs(5)), Ok(Some(_))) {
                let _ = b.signal(libc::SIGKILL);
                let _ = b.wait_timeout(Duration::from_secs(5));
            }
        }
    }
}

/// Receives a builtin's handover (its short text and the descriptors it passed) on `from`,
/// waiting at most [`HANDOVER_TIMEOUT`]. The descriptors are the caller's to check.
pub(crate) fn receive_handover(from: &StdStream) -> Result<(Vec<u8>, Vec<OwnedFd>), String> {
    from.set_read_timeout(Some(HANDOVER_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 512];
    let mut space = nix::cmsg_space!([RawFd; 4]);
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let msg = socket::recvmsg::<()>(
        from.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        socket::MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(|e| format!("no answer from inside the environment: {e}"))?;
    let mut fds = Vec::new();
    for c in msg.cmsgs().map_err(|e| e.to_string())? {
        if let socket::ControlMessageOwned::ScmRights(r) = c {
            // SAFETY: descriptors just received, owned by nobody else in this process.
            fds.extend(r.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
        }
    }
    let n = msg.bytes;
    if n == 0 {
        return Err("the environment's side ended without passing anything".into());
    }
    Ok((buf[..n].to_vec(), fds))
}

/// Receives the folder's path and `count` listening sockets from the builtin.
fn receive(from: &StdStream, count: usize) -> Result<(String, Vec<StdListener>), String> {
    let (text, fds) = receive_handover(from)?;
    let dir = std::str::from_utf8(&text)
        .ok()
        .filter(|d| valid_session_dir(d))
        .ok_or("the environment's side named an unexpected folder")?
        .to_string();
    if fds.len() != count {
        return Err(format!(
            "the environment's side passed {} sockets instead of {count}",
            fds.len()
        ));
    }
    let listeners = fds
        .into_iter()
        .map(listening_unix_socket)
        .collect::<Result<_, _>>()?;
    Ok((dir, listeners))
}

/// `/tmp/berth-<16 hex>`, what the builtin makes.
pub(super) fn valid_session_dir(d: &str) -> bool {
    berth_inside_files::session_folder::is_folder_path(d)
}

/// `fd` as a listener if it is a listening Unix stream socket, else why not.
pub(super) fn listening_unix_socket(fd: OwnedFd) -> Result<StdListener, String> {
    let bad = || {
        "the environment's side passed something that is not a listening Unix socket".to_string()
    };
    let addr: SockaddrStorage = socket::getsockname(fd.as_raw_fd()).map_err(|_| bad())?;
    if addr.family() != Some(AddressFamily::Unix)
        || socket::getsockopt(&fd, sockopt::SockType).map_err(|_| bad())? != SockType::Stream
        || !socket::getsockopt(&fd, sockopt::AcceptConn).map_err(|_| bad())?
    {
        return Err(bad());
    }
    let l = StdListener::from(fd);
    l.set_nonblocking(true).map_err(|e| e.to_string())?;
    Ok(l)
}

/// The serving thread: accepts on the session's sockets until `stopped`.
fn serve(
    agent: Option<(StdListener, AgentTarget)>,
    git: Option<StdListener>,
    stopped: oneshot::Receiver<()>,
) {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    rt.block_on(async move {
        let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        if let Some((l, target)) = agent {
            if let Ok(l) = UnixListener::from_std(l) {
                tokio::spawn(accept_agent(l, target, limit.clone()));
            }
        }
        if let Some(l) = git {
            if let Ok(l) = UnixListener::from_std(l) {
                tokio::spawn(accept_git(l, limit));
            }
        }
        let _ = stopped.await;
    });
    // Relays still open end with the session; a host lookup still running is not waited for.
    rt.shutdown_timeout(Duration::from_millis(200));
}

async fn accept_agent(l: UnixListener, target: AgentTarget, limit: Arc<Semaphore>) {
    while let Ok((conn, _)) = l.accept().await {
        let Ok(permit) = limit.clone().acquire_owned().await else {
            return;
        };
        let target = target.clone();
        tokio::spawn(async move {
            agent_relay::relay(conn, target).await;
            drop(permit);
        });
    }
}

async fn accept_git(l: UnixListener, limit: Arc<Semaphore>) {
    while let Ok((conn, _)) = l.accept().await {
        let Ok(permit) = limit.clone().acquire_owned().await else {
            return;
        };
        tokio::spawn(async move {
            answer_git(conn).await;
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_listening_unix_stream_socket_is_served() {
        let dir = tempfile::tempdir().unwrap();
        let l = StdListener::bind(dir.path().join("s")).unwrap();
        assert!(listening_unix_socket(OwnedFd::from(l)).is_ok());
        // A connected socket (e.g. one the environment connected to a server of its choice).
        let (a, _b) = StdStream::pair().unwrap();
        assert!(listening_unix_socket(OwnedFd::from(a)).is_err());
        // A listening TCP socket.
        let t = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(listening_unix_socket(OwnedFd::from(t)).is_err());
        // A file.
        let f = std::fs::File::open("/dev/null").unwrap();
        assert!(listening_unix_socket(OwnedFd::from(f)).is_err());
        // A Unix datagram socket.
        let d = std::os::unix::net::UnixDatagram::bind(dir.path().join("d")).unwrap();
        assert!(listening_unix_socket(OwnedFd::from(d)).is_err());
    }

    #[test]
    fn only_the_builtins_folder_names_are_taken() {
        assert!(valid_session_dir("/tmp/berth-0123456789abcdef"));
        for bad in [
            "/tmp/berth-0123456789abcdef/../x",
            "/run/user/0",
            "/tmp/berth-0123456789abcdeg",
            "/tmp/berth-0123456789abcdef\nX=1",
            "/tmp/berth-",
        ] {
            assert!(!valid_session_dir(bad), "{bad:?}");
        }
    }
}
