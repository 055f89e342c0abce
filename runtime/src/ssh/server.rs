//! The SSH server of `berth ssh --stdio NAME`: SSH on stdin/stdout (a `ProxyCommand`), one
//! connection per process. Authentication is the caller's ability to run this for the
//! environment (the same rule as `berth exec`: it can reach the environment's control
//! channel), so `none` and any public key are accepted for any user name; every session
//! runs as the environment's `[shell]` user whatever name the client sent (the name is
//! not an identity here, so it cannot be used to become anyone else).
//!
//! Served: session channels with `exec`, `shell`, `pty-req`, `window-change`, `signal`,
//! `env` (LANG and LC_*, as sshd's AcceptEnv default), the `sftp` subsystem and
//! `direct-tcpip` channels (`ssh -L`), both through builtins run inside the environment
//! ([`crate::ssh_inside`]; containers only, refused with a reason for a VM), and agent
//! forwarding (`auth-agent-req@openssh.com`: agent connections inside go to the client's
//! agent channel; without it, a session gets the agent of this process's `SSH_AUTH_SOCK`,
//! and the git identity and credentials, as `shell` and `exec` do: [`crate::credentials`]).
//! Remote forwarding (`tcpip-forward`, `ssh -R`): a listener inside the environment whose
//! connections come back as `forwarded-tcpip` channels (containers only). Refused: other
//! channel types (`x11`, `direct-streamlocal`, …) and other subsystems, as the SSH protocol
//! answers an unknown request.

use std::collections::HashMap;
use std::sync::Arc;

use envfile_spec::plan::BackendKind;
use russh::keys::PrivateKey;
use russh::server::{Auth, Msg, Session};
use russh::{Channel, ChannelId, ChannelOpenFailure, MethodKind, MethodSet, Pty, Sig};

use super::error::SshError;
use super::remote_forward::{self, RemoteForward};
use super::session::{self, Context, Control, Input, Running};
use crate::backend::ExecRequest;
use crate::credentials::AgentTarget;
use crate::environment::{EnvRecord, Environments};
use crate::ssh_inside;
use crate::state::BerthHome;

/// A `pty-req`'s terminal.
struct PtyWanted {
    term: String,
    rows: u16,
    cols: u16,
}

#[derive(Default)]
struct ChannelState {
    pty: Option<PtyWanted>,
    /// `KEY=VALUE` from accepted `env` requests.
    env: Vec<String>,
    running: Option<Running>,
    /// A `direct-tcpip` channel (its command is the TCP relay).
    tunnel: bool,
    /// The client asked for agent forwarding (`auth-agent-req@openssh.com`, `ssh -A`).
    agent: bool,
}

struct Connection {
    ctx: Arc<Context>,
    channels: HashMap<ChannelId, ChannelState>,
    /// Active remote forwardings (`ssh -R`) by the address and port the client asked for.
    forwards: HashMap<(String, u32), RemoteForward>,
}

/// Variables a client may set (`env` requests), like sshd's default `AcceptEnv LANG LC_*`.
pub fn accepted_env(name: &str) -> bool {
    name == "LANG" || name.starts_with("LC_")
}

fn clamp(v: u32) -> u16 {
    u16::try_from(v).unwrap_or(u16::MAX)
}

fn signal_number(sig: &Sig) -> Option<i32> {
    Some(match sig {
        Sig::ABRT => libc::SIGABRT,
        Sig::ALRM => libc::SIGALRM,
        Sig::FPE => libc::SIGFPE,
        Sig::HUP => libc::SIGHUP,
        Sig::ILL => libc::SIGILL,
        Sig::INT => libc::SIGINT,
        Sig::KILL => libc::SIGKILL,
        Sig::PIPE => libc::SIGPIPE,
        Sig::QUIT => libc::SIGQUIT,
        Sig::SEGV => libc::SIGSEGV,
        Sig::TERM => libc::SIGTERM,
        Sig::USR1 => libc::SIGUSR1,
        Sig::Custom(name) => match name.as_str() {
            "USR2" => libc::SIGUSR2,
            "WINCH" => libc::SIGWINCH,
            "CONT" => libc::SIGCONT,
            "STOP" => libc::SIGSTOP,
            "TSTP" => libc::SIGTSTP,
            _ => return None,
        },
    })
}

impl Connection {
    /// The exec request of a session channel: `command` through `/bin/sh -c` (as sshd runs
    /// it through the user's shell), or the `[shell]` command; on a terminal when a
    /// `pty-req` came first.
    fn request(&self, state: &ChannelState, command: Option<String>) -> ExecRequest {
        let shell = &self.ctx.record.plan.shell;
        let argv = match command {
            Some(c) => vec!["/bin/sh".into(), "-c".into(), c],
            None => shell.command.clone(),
        };
        let mut env = state.env.clone();
        if let Some(p) = &state.pty {
            env.push(format!("TERM={}", p.term));
        }
        ExecRequest {
            argv,
            env,
            cwd: shell.workdir.clone(),
            user: shell.user.clone(),
            tty: state.pty.is_some(),
            winsize: state.pty.as_ref().map(|p| (p.rows, p.cols)),
            forward: None,
        }
    }

    /// Why a builtin cannot run in this environment, if it cannot.
    fn builtins_refused(&self) -> Option<String> {
        (self.ctx.record.plan.backend == BackendKind::Vm).then(|| {
            "berth's SSH endpoint serves sftp/scp and port forwarding in containers only so far; in a VM use `ssh berth-NAME cat FILE` or `berth sync`".to_string()
        })
    }

    fn start(
        &mut self,
        channel: ChannelId,
        command: Option<String>,
        session: &mut Session,
    ) -> Result<(), russh::Error> {
        let Some(state) = self.channels.get(&channel) else {
            return session.channel_failure(channel);
        };
        let req = self.request(state, command);
        // The host's credentials: the client's agent when it asked (`ssh -A`), else the
        // agent of this process's SSH_AUTH_SOCK (see `credentials::Wanted::for_session`).
        let agent = state
            .agent
            .then(|| AgentTarget::SshClient(session.handle()));
        self.start_request(channel, req, Some(agent), session)
    }

    fn start_request(
        &mut self,
        channel: ChannelId,
        req: ExecRequest,
        credentials: Option<Option<AgentTarget>>,
        session: &mut Session,
    ) -> Result<(), russh::Error> {
        let handle = session.handle();
        let Some(state) = self.channels.get(&channel) else {
            return session.channel_failure(channel);
        };
        if state.running.is_some() {
            // One command per session channel (RFC 4254 6.5).
            return session.channel_failure(channel);
        }
        match session::start(self.ctx.clone(), req, channel, handle, None, credentials) {
            Ok(running) => {
                if let Some(state) = self.channels.get_mut(&channel) {
                    state.running = Some(running);
                }
                session.channel_success(channel)
            }
            Err(e) => {
                session.extended_data(
                    channel,
                    1,
                    format!("berth: cannot start the command: {e}\r\n").into_bytes(),
                )?;
                session.channel_failure(channel)
            }
        }
    }

    fn control(&self, channel: ChannelId, c: Control) {
        if let Some(r) = self.channels.get(&channel).and_then(|s| s.running.as_ref()) {
            let _ = r.control.send(c);
        }
    }

    /// Hangs up on every command still running (the client went away).
    fn hang_up_all(&mut self) {
        self.forwards.clear();
        for (_, mut state) in self.channels.drain() {
            if let Some(r) = state.running.as_mut() {
                r.hang_up();
            }
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.hang_up_all();
    }
}

impl russh::server::Handler for Connection {
    type Error = russh::Error;

    async fn auth_none(&mut self, _user: &str) -> Result<Auth, Self::Error> {
        Ok(Auth::Accept)
    }

    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        _offer: russh::server::PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(Auth::Accept)
    }

    async fn auth_publickey(
        &mut self,
        _user: &str,
        _key: russh::server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(Auth::Accept)
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.channels.insert(channel.id(), ChannelState::default());
        reply.accept().await;
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        term: &str,
        col_width: u32,
        row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        match self.channels.get_mut(&channel) {
            Some(state) if state.running.is_none() => {
                state.pty = Some(PtyWanted {
                    term: term.to_string(),
                    rows: clamp(row_height),
                    cols: clamp(col_width),
                });
                session.channel_success(channel)
            }
            _ => session.channel_failure(channel),
        }
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        match self.channels.get_mut(&channel) {
            Some(state) if accepted_env(name) && !value.contains('\0') => {
                state.env.push(format!("{name}={value}"));
                session.channel_success(channel)
            }
            _ => session.channel_failure(channel),
        }
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.start(channel, None, session)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        match std::str::from_utf8(data) {
            Ok(cmd) if !cmd.contains('\0') => self.start(channel, Some(cmd.to_string()), session),
            _ => {
                session.extended_data(
                    channel,
                    1,
                    b"berth: the command is not UTF-8 text\r\n".to_vec(),
                )?;
                session.channel_failure(channel)
            }
        }
    }

    async fn window_change_request(
        &mut self,
        channel: ChannelId,
        col_width: u32,
        row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let (rows, cols) = (clamp(row_height), clamp(col_width));
        if let Some(state) = self.channels.get_mut(&channel) {
            if let Some(p) = state.pty.as_mut() {
                (p.rows, p.cols) = (rows, cols);
                if let Some(r) = &state.running {
                    let _ = r.input.send(Input::Resize(rows, cols));
                }
            }
        }
        Ok(())
    }

    async fn signal(
        &mut self,
        channel: ChannelId,
        signal: Sig,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(n) = signal_number(&signal) {
            self.control(channel, Control::Signal(n));
        }
        Ok(())
    }

    async fn data(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(r) = self.channels.get(&channel).and_then(|s| s.running.as_ref()) {
            let _ = r.input.send(Input::Data(data.to_vec()));
        }
        Ok(())
    }

    async fn channel_eof(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(r) = self.channels.get(&channel).and_then(|s| s.running.as_ref()) {
            let _ = r.input.send(Input::Eof);
        }
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        // What the client sent before closing still reaches the command, in order; then a
        // session's command is hung up on. A forwarded connection's relay gets a moment to
        // pass the last bytes and its end on to the far side first.
        if let Some(state) = self.channels.remove(&channel) {
            if let Some(r) = &state.running {
                let grace = if state.tunnel {
                    std::time::Duration::from_secs(2)
                } else {
                    std::time::Duration::ZERO
                };
                let _ = r.input.send(Input::Close { grace });
            }
        }
        Ok(())
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let refused = match name {
            "sftp" => self.builtins_refused(),
            _ => Some(format!(
                "no subsystem {name:?} here (berth serves \"sftp\")"
            )),
        };
        if let Some(why) = refused {
            session.extended_data(channel, 1, format!("berth: {why}\r\n").into_bytes())?;
            return session.channel_failure(channel);
        }
        let shell = &self.ctx.record.plan.shell;
        let req = ExecRequest {
            argv: vec![ssh_inside::SFTP_SERVER.into()],
            env: Vec::new(),
            cwd: shell.workdir.clone(),
            user: shell.user.clone(),
            tty: false,
            winsize: None,
            forward: None,
        };
        self.start_request(channel, req, None, session)
    }

    async fn agent_request(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        let allowed = self.ctx.record.plan.credentials.ssh_agent
            && self.ctx.record.plan.backend == BackendKind::Container;
        match self.channels.get_mut(&channel) {
            // russh sends the reply itself, from the answer.
            Some(state) if allowed && state.running.is_none() => {
                state.agent = true;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        session: &mut Session,
    ) -> Result<bool, Self::Error> {
        if let Some(why) = self.builtins_refused() {
            eprintln!("berth: remote forwarding: {why}");
            return Ok(false);
        }
        let Ok(wanted) = u16::try_from(*port) else {
            return Ok(false);
        };
        let key = (address.to_string(), *port);
        if self.forwards.contains_key(&key) {
            return Ok(false);
        }
        match remote_forward::start(self.ctx.clone(), address, wanted, session.handle()) {
            Ok(f) => {
                *port = u32::from(f.port);
                // A request for port 0 is cancelled with the port it got.
                self.forwards.insert((address.to_string(), *port), f);
                Ok(true)
            }
            Err(e) => {
                eprintln!("berth: remote forwarding of {address}:{wanted}: {e}");
                Ok(false)
            }
        }
    }

    async fn cancel_tcpip_forward(
        &mut self,
        address: &str,
        port: u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        Ok(self.forwards.remove(&(address.to_string(), port)).is_some())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: russh::server::ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(why) = self.builtins_refused() {
            eprintln!("berth: {why}");
            reply
                .reject(ChannelOpenFailure::Other {
                    code: 1, // SSH_OPEN_ADMINISTRATIVELY_PROHIBITED
                    reason: why,
                })
                .await;
            return Ok(());
        }
        let shell = &self.ctx.record.plan.shell;
        let req = ExecRequest {
            argv: vec![
                ssh_inside::TCP_RELAY.into(),
                host_to_connect.to_string(),
                port_to_connect.to_string(),
            ],
            env: Vec::new(),
            cwd: shell.workdir.clone(),
            user: shell.user.clone(),
            tty: false,
            winsize: None,
            forward: None,
        };
        let id = channel.id();
        match session::start(
            self.ctx.clone(),
            req,
            id,
            session.handle(),
            Some(reply),
            None,
        ) {
            Ok(running) => {
                self.channels.insert(
                    id,
                    ChannelState {
                        running: Some(running),
                        tunnel: true,
                        ..Default::default()
                    },
                );
            }
            Err(e) => eprintln!("berth: port forwarding: cannot start the relay: {e}"),
        }
        Ok(())
    }
}

/// Serves one SSH connection on stdin/stdout for environment `record` (which must be
/// running) until the client disconnects; every command still running then gets SIGHUP.
pub fn serve_stdio(home: &BerthHome, record: EnvRecord) -> Result<(), SshError> {
    let envs = Environments::open(home);
    let dir = envs.running_dir(&record)?;
    let key = super::host_key::load_or_create(&dir)?;
    let ctx = Arc::new(Context {
        home: home.clone(),
        record,
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| SshError::io("cannot start the SSH server's event loop", e))?;
    let result = runtime.block_on(serve(ctx, key));
    // stdin's reader thread may still be blocked in read(): do not wait for it.
    runtime.shutdown_background();
    result
}

async fn serve(ctx: Arc<Context>, key: PrivateKey) -> Result<(), SshError> {
    let config = russh::server::Config {
        keys: vec![key],
        methods: MethodSet::from(&[MethodKind::None, MethodKind::PublicKey][..]),
        auth_rejection_time: std::time::Duration::from_millis(100),
        auth_rejection_time_initial: Some(std::time::Duration::ZERO),
        // An idle interactive shell stays open, as with sshd.
        inactivity_timeout: None,
        ..Default::default()
    };
    let stream = tokio::io::join(tokio::io::stdin(), tokio::io::stdout());
    let conn = Connection {
        ctx,
        channels: HashMap::new(),
        forwards: HashMap::new(),
    };
    // The connection (and with it every command still running, see its Drop) ends with the
    // session, cleanly or not.
    let result = match russh::server::run_stream(Arc::new(config), stream, conn).await {
        Ok(running) => running.await,
        Err(e) => Err(e),
    };
    result.map_err(SshError::Protocol)
}
