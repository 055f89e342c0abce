//! The commands the host starts (`Exec`): spawning each with its variables, user and
//! forwarded credentials, relaying its stdin and output, and ending its session once it
//! exited and its output is drained.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use berth_agent_proto::{Exec, Message, MAX_PAYLOAD};

use super::{Key, Server, READ_CHUNK};
use crate::forward::{Forwarding, Watch};
use crate::spawn::{spawn, SpawnRequest};
use crate::sys;
use crate::users;

/// One command the host started, with its pipes or terminal.
pub(super) struct Session {
    pub(super) pid: i32,
    pub(super) tty: bool,
    pub(super) stdin: Option<OwnedFd>,
    pub(super) stdin_buf: Vec<u8>,
    pub(super) stdin_eof: bool,
    pub(super) stdout: Option<OwnedFd>,
    pub(super) stderr: Option<OwnedFd>,
    pub(super) status: Option<(i32, i32)>,
    /// The host's credentials forwarded to this command (its folder goes with the session).
    pub(super) forward: Option<Forwarding>,
}

/// `Forward` requests waiting for their `Exec` at most (a host sending more is refused).
pub(super) const MAX_PENDING_FORWARDS: usize = 16;

impl Server {
    /// A forwarded socket or stream of session `key` is ready: relays what it has.
    pub(super) fn forward_ready(&mut self, key: Key, watch: Watch, buf: &mut [u8]) {
        let Some(f) = self.sessions.get_mut(&key).and_then(|s| s.forward.as_mut()) else {
            return;
        };
        for m in f.ready(watch, buf) {
            self.send(key.0, key.1, m);
        }
    }

    pub(super) fn kill_all_sessions(&mut self) {
        for s in self.sessions.values() {
            // SAFETY: kill on the session's process group; no memory involved.
            unsafe { libc::kill(-s.pid, libc::SIGHUP) };
            // SAFETY: as above, kill takes no memory.
            unsafe { libc::kill(-s.pid, libc::SIGKILL) };
        }
    }

    pub(super) fn start_exec(&mut self, key: Key, exec: Exec) {
        let (ctl, id) = key;
        let forward = self.pending_forwards.remove(&key);
        if self.sessions.contains_key(&key) {
            self.send(
                ctl,
                id,
                Message::Error {
                    message: format!("session {id} is already running"),
                },
            );
            return;
        }
        let user = match exec.user.as_deref() {
            None | Some("root") | Some("0") => users::root(),
            Some(spec) => match users::resolve(spec) {
                Ok(u) => u,
                Err(message) => {
                    self.send(ctl, id, Message::Error { message });
                    self.send(
                        ctl,
                        id,
                        Message::Exit {
                            code: 126,
                            signal: 0,
                        },
                    );
                    return;
                }
            },
        };
        let mut env = self.process_env();
        env.retain(|(k, _)| k != "HOME");
        env.push(("HOME".into(), user.home.clone()));
        // A forwarding that cannot be made is said; the command runs without it.
        let forward = match forward.map(|f| Forwarding::create(&f, &user)) {
            Some(Ok(f)) => Some(f),
            Some(Err(e)) => {
                let message = format!("the host's credentials are not forwarded: {e}");
                self.send(ctl, id, Message::Error { message });
                None
            }
            None => None,
        };
        for (k, v) in forward.iter().flat_map(|f| f.env()) {
            env.retain(|(ek, _)| ek != k);
            env.push((k.clone(), v.clone()));
        }
        for (k, v) in exec.env {
            env.retain(|(ek, _)| *ek != k);
            env.push((k, v));
        }
        let req = SpawnRequest {
            argv: &exec.argv,
            env: &env,
            cwd: exec.cwd.as_deref(),
            user: &user,
            tty: exec.tty.then_some((exec.rows, exec.cols)),
            log: None,
        };
        match spawn(&req) {
            Ok(p) => {
                self.send(ctl, id, Message::Started { pid: p.pid as u32 });
                self.sessions.insert(
                    key,
                    Session {
                        pid: p.pid,
                        tty: exec.tty,
                        stdin: p.stdin,
                        stdin_buf: Vec::new(),
                        stdin_eof: false,
                        stdout: p.stdout,
                        stderr: p.stderr,
                        status: None,
                        forward,
                    },
                );
            }
            Err(e) => {
                drop(forward);
                self.send(
                    ctl,
                    id,
                    Message::Error {
                        message: format!("cannot start {:?}: {e}", exec.argv),
                    },
                );
                self.send(
                    ctl,
                    id,
                    Message::Exit {
                        code: 127,
                        signal: 0,
                    },
                );
            }
        }
    }

    /// The variables of every process started now: the environment's gitconfig while it
    /// exists (a variable of `[env]` wins), `Setup`'s variables, then the `[secrets]` wanted
    /// as variables, read from their tmpfs (not there yet: left out).
    pub(super) fn process_env(&self) -> Vec<(String, String)> {
        let mut env = Vec::new();
        if std::path::Path::new(berth_agent_proto::GITCONFIG_PATH).exists() {
            env.push((
                "GIT_CONFIG_SYSTEM".to_string(),
                berth_agent_proto::GITCONFIG_PATH.to_string(),
            ));
        }
        for (k, v) in &self.env {
            env.retain(|(ek, _)| ek != k);
            env.push((k.clone(), v.clone()));
        }
        for name in &self.secret_env {
            let path = format!("{}/{name}", berth_agent_proto::SECRETS_DIR);
            let Ok(v) = std::fs::read(&path) else {
                continue;
            };
            if let Ok(v) = String::from_utf8(v) {
                if !v.contains('\0') {
                    env.retain(|(ek, _)| ek != name);
                    env.push((name.clone(), v));
                }
            }
        }
        env
    }

    pub(super) fn flush_stdin(&mut self, key: Key) {
        let Some(s) = self.sessions.get_mut(&key) else {
            return;
        };
        let Some(fd) = &s.stdin else {
            s.stdin_buf.clear();
            return;
        };
        while !s.stdin_buf.is_empty() {
            match sys::write(fd.as_raw_fd(), &s.stdin_buf) {
                Ok(n) => {
                    s.stdin_buf.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    s.stdin_buf.clear();
                    if !s.tty {
                        s.stdin = None;
                    }
                    return;
                }
            }
        }
        if s.stdin_eof && !s.tty {
            s.stdin = None;
        }
    }

    pub(super) fn pump_output(&mut self, key: Key, which: u8, buf: &mut [u8]) {
        let (ctl, id) = key;
        let Some(s) = self.sessions.get_mut(&key) else {
            return;
        };
        let slot = if which == 1 {
            &mut s.stdout
        } else {
            &mut s.stderr
        };
        let Some(fd) = slot else { return };
        let n = buf.len().min(MAX_PAYLOAD);
        match sys::read(fd.as_raw_fd(), &mut buf[..n]) {
            Ok(0) => *slot = None,
            Ok(n) => {
                let data = buf[..n].to_vec();
                let m = if which == 1 {
                    Message::Stdout(data)
                } else {
                    Message::Stderr(data)
                };
                self.send(ctl, id, m);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            // EIO: the PTY's last slave closed.
            Err(_) => *slot = None,
        }
    }

    pub(super) fn finish_sessions(&mut self) {
        let done: Vec<Key> = self
            .sessions
            .iter()
            .filter(|(_, s)| {
                s.status.is_some() && (s.tty || (s.stdout.is_none() && s.stderr.is_none()))
            })
            .map(|(key, _)| *key)
            .collect();
        let mut buf = vec![0u8; READ_CHUNK];
        for key in done {
            // A terminal may still hold output the process wrote just before exiting.
            while self.sessions.get(&key).is_some_and(|s| s.stdout.is_some()) {
                let before = self
                    .sessions
                    .get(&key)
                    .and_then(|s| s.stdout.as_ref().map(|f| f.as_raw_fd()));
                self.pump_output(key, 1, &mut buf);
                let mut p = libc::pollfd {
                    fd: before.unwrap_or(-1),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                let ready = unsafe { libc::poll(&mut p, 1, 0) };
                if ready <= 0 || p.revents & libc::POLLIN == 0 {
                    break;
                }
            }
            if let Some(s) = self.sessions.remove(&key) {
                let (code, signal) = s.status.unwrap_or((0, 0));
                // The session's forwarded folder and streams go before the host hears of
                // the exit: a command that returned leaves nothing behind.
                drop(s);
                self.send(key.0, key.1, Message::Exit { code, signal });
            }
        }
    }
}
