//! One command of an SSH session channel (`exec`, `shell`), run on berth's own exec path:
//! [`Environments::exec_start`] with three pipes, so it works the same for containers and
//! VMs. A thread owns the [`CommandSession`] (waits for it, delivers window changes and
//! signals); tasks copy the client's data to the command's stdin and its stdout/stderr to
//! the channel, then send `exit-status`, EOF and close.
//!
//! A `direct-tcpip` channel is the same with the TCP relay builtin as the command: the
//! channel is accepted once the relay's first byte says it connected, refused with the
//! relay's error otherwise, and it ends without an exit status.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use russh::server::{ChannelOpenHandle, Handle};
use russh::{ChannelId, ChannelOpenFailure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, oneshot};

use crate::backend::ExecRequest;
use crate::credentials::{AgentTarget, Wanted};
use crate::environment::{EnvRecord, Environments};
use crate::state::BerthHome;

/// What every channel of the connection shares.
pub(super) struct Context {
    pub home: BerthHome,
    pub record: EnvRecord,
}

/// What the SSH side asks of a running command.
pub(super) enum Control {
    /// A window change; the sender is told once it is applied.
    Resize(u16, u16, oneshot::Sender<()>),
    Signal(i32),
    /// The client went away: SIGHUP to the command (as a hung-up terminal would), stop.
    Hangup,
}

/// What the client sends a command, in the order it came: a window change is applied
/// before the bytes typed after it reach the terminal (as `stty size` expects).
pub(super) enum Input {
    Data(Vec<u8>),
    Resize(u16, u16),
    Eof,
    /// The client closed the channel: after what it sent before, stdin ends and, `grace`
    /// later, the command is hung up on.
    Close {
        grace: Duration,
    },
}

/// The SSH side's hold on a running command.
pub(super) struct Running {
    pub input: mpsc::UnboundedSender<Input>,
    pub control: std_mpsc::Sender<Control>,
    pub thread: Option<JoinHandle<()>>,
}

impl Running {
    /// Hangs up on the command and waits until its thread has passed that on.
    pub fn hang_up(&mut self) {
        let _ = self.control.send(Control::Hangup);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn pipe_pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(std::io::Error::from)
}

/// Starts `req` for `channel`; the command's output and end reach the client through
/// `handle`. With `tunnel` (a `direct-tcpip` channel's open request), the command is the
/// TCP relay and the channel is accepted or refused by its first byte. With `credentials`
/// (a session's command), the host's credentials are forwarded for as long as it runs, its
/// agent connections to the given target (else the host's `SSH_AUTH_SOCK`).
pub(super) fn start(
    ctx: Arc<Context>,
    req: ExecRequest,
    channel: ChannelId,
    handle: Handle,
    tunnel: Option<ChannelOpenHandle>,
    credentials: Option<Option<AgentTarget>>,
) -> std::io::Result<Running> {
    let (in_r, in_w) = pipe_pair()?;
    let (out_r, out_w) = pipe_pair()?;
    let (err_r, err_w) = pipe_pair()?;
    let (started_tx, started_rx) = oneshot::channel::<Result<(), String>>();
    let (exit_tx, exit_rx) = oneshot::channel::<Result<i32, String>>();
    let (control_tx, control_rx) = std_mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("ssh-command".into())
        .spawn(move || {
            run_command(
                &ctx,
                req,
                credentials,
                [in_r, out_w, err_w],
                started_tx,
                exit_tx,
                control_rx,
            )
        })?;
    let (stdin_tx, stdin_rx) = mpsc::unbounded_channel();
    let stdin = pipe::Sender::from_owned_fd(in_w)?;
    let resize = control_tx.clone();
    let stdout = pipe::Receiver::from_owned_fd(out_r)?;
    let stderr = pipe::Receiver::from_owned_fd(err_r)?;
    tokio::spawn(feed_stdin(stdin, stdin_rx, resize));
    if let Some(reply) = tunnel {
        tokio::spawn(tunnel_task(stdout, stderr, reply, channel, handle, exit_rx));
        return Ok(Running {
            input: stdin_tx,
            control: control_tx,
            thread: Some(thread),
        });
    }
    let out_task = tokio::spawn(copy_out(stdout, handle.clone(), channel, None));
    let err_task = tokio::spawn(copy_out(stderr, handle.clone(), channel, Some(1)));
    tokio::spawn(async move {
        let code = match started_rx.await {
            Ok(Ok(())) => exit_rx.await.unwrap_or_else(|_| Err("lost".into())),
            Ok(Err(e)) => {
                let _ = handle
                    .extended_data(channel, 1, format!("berth: {e}\r\n").into_bytes())
                    .await;
                Err(e)
            }
            Err(_) => Err("lost".into()),
        };
        let _ = out_task.await;
        let _ = err_task.await;
        // 255 as OpenSSH's client reports a session that failed without a status.
        let status = code.unwrap_or(255);
        let _ = handle.exit_status_request(channel, status as u32).await;
        let _ = handle.eof(channel).await;
        let _ = handle.close(channel).await;
    });
    Ok(Running {
        input: stdin_tx,
        control: control_tx,
        thread: Some(thread),
    })
}

/// The command's thread: starts it, passes on window changes and signals, reports its exit.
fn run_command(
    ctx: &Context,
    mut req: ExecRequest,
    credentials: Option<Option<AgentTarget>>,
    stdio: [OwnedFd; 3],
    started: oneshot::Sender<Result<(), String>>,
    exited: oneshot::Sender<Result<i32, String>>,
    control: std_mpsc::Receiver<Control>,
) {
    let envs = Environments::open(&ctx.home);
    // Ended (its folder inside removed) when the command has ended, at the end of this
    // function.
    let _credentials = credentials.and_then(|agent| {
        let dir = ctx.home.env_dir(&ctx.record.env_id);
        let wanted = Wanted::for_session(&dir, &ctx.record.plan.credentials, agent);
        match envs.session_credentials(&ctx.record, req.user.as_deref(), wanted) {
            Ok(c) => {
                if let Some(c) = &c {
                    c.add_env(&mut req);
                }
                c
            }
            Err(e) => {
                let msg = format!("berth: warning: {e}\r\n");
                let _ = nix::unistd::write(stdio[2].as_fd(), msg.as_bytes());
                None
            }
        }
    });
    let session = envs.exec_start(
        &ctx.record,
        &req,
        [stdio[0].as_fd(), stdio[1].as_fd(), stdio[2].as_fd()],
    );
    // The command holds its own copies now; ours would keep its output open.
    drop(stdio);
    let mut session = match session {
        Ok(s) => {
            let _ = started.send(Ok(()));
            s
        }
        Err(e) => {
            let _ = started.send(Err(e.to_string()));
            return;
        }
    };
    // Short commands end within the first poll; a long one is polled less often (a window
    // change or signal waits at most the current period).
    const LONGEST: Duration = Duration::from_millis(20);
    let mut period = Duration::from_millis(2);
    loop {
        loop {
            match control.try_recv() {
                Ok(Control::Resize(rows, cols, applied)) => {
                    let _ = session.resize(rows, cols);
                    let _ = applied.send(());
                    period = Duration::from_millis(2);
                }
                Ok(Control::Signal(sig)) => {
                    let _ = session.signal(sig);
                    period = Duration::from_millis(2);
                }
                Ok(Control::Hangup) | Err(std_mpsc::TryRecvError::Disconnected) => {
                    let _ = session.signal(libc::SIGHUP);
                    return;
                }
                Err(std_mpsc::TryRecvError::Empty) => break,
            }
        }
        match session.wait_timeout(period) {
            Ok(None) => period = (period * 2).min(LONGEST),
            Ok(Some(code)) => {
                let _ = exited.send(Ok(code));
                return;
            }
            Err(e) => {
                let _ = exited.send(Err(e.to_string()));
                return;
            }
        }
    }
}

async fn feed_stdin(
    stdin: pipe::Sender,
    mut input: mpsc::UnboundedReceiver<Input>,
    control: std_mpsc::Sender<Control>,
) {
    // `None` once the client's EOF closed it (or a write failed).
    let mut stdin = Some(stdin);
    while let Some(i) = input.recv().await {
        match i {
            Input::Data(chunk) => {
                if let Some(s) = stdin.as_mut() {
                    if s.write_all(&chunk).await.is_err() {
                        stdin = None;
                    }
                }
            }
            Input::Resize(rows, cols) => {
                let (tx, rx) = oneshot::channel();
                if control.send(Control::Resize(rows, cols, tx)).is_ok() {
                    let _ = rx.await;
                }
            }
            // The client's EOF: closing the pipe is the command's EOF.
            Input::Eof => stdin = None,
            Input::Close { grace } => {
                drop(stdin);
                tokio::time::sleep(grace).await;
                let _ = control.send(Control::Hangup);
                return;
            }
        }
    }
}

async fn copy_out(mut from: pipe::Receiver, handle: Handle, channel: ChannelId, ext: Option<u32>) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let chunk = buf[..n].to_vec();
        let sent = match ext {
            None => handle.data(channel, chunk).await,
            Some(code) => handle.extended_data(channel, code, chunk).await,
        };
        if sent.is_err() {
            return;
        }
    }
}

/// The relay's answer decides the channel: accepted after its `\0`, else refused with what
/// it wrote on stderr (also shown on berth's stderr, which ssh prints).
async fn tunnel_task(
    mut stdout: pipe::Receiver,
    mut stderr: pipe::Receiver,
    reply: ChannelOpenHandle,
    channel: ChannelId,
    handle: Handle,
    exited: oneshot::Receiver<Result<i32, String>>,
) {
    let mut first = [0u8; 1];
    if matches!(stdout.read(&mut first).await, Ok(1)) && first[0] == 0 {
        reply.accept().await;
        copy_out(stdout, handle.clone(), channel, None).await;
        // The far end closed its side; the channel closes once the client's side is done
        // too (the relay exits after the client's EOF), as a half-closed TCP connection.
        let _ = handle.eof(channel).await;
        let _ = exited.await;
        let _ = handle.close(channel).await;
        return;
    }
    let mut why = Vec::new();
    let _ = (&mut stderr).take(4096).read_to_end(&mut why).await;
    let why = String::from_utf8_lossy(&why).trim().to_string();
    let why = if why.is_empty() {
        "the relay inside the environment ended without connecting".to_string()
    } else {
        why
    };
    eprintln!("berth: port forwarding: {why}");
    reply
        .reject(ChannelOpenFailure::Other {
            code: 2, // SSH_OPEN_CONNECT_FAILED
            reason: why,
        })
        .await;
}
