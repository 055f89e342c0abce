//! The messages and their payload encoding.

use crate::ProtoError;

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub session: u32,
    pub message: Message,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Host → agent, first frame on every connection.
    Hello {
        nonce: u64,
    },
    /// Agent → host: answer to `Hello` (same nonce).
    HelloAck {
        nonce: u64,
        agent_version: String,
        kernel_release: String,
        /// Setup has finished and the agent serves `Exec`.
        ready: bool,
    },
    /// Agent → host: boot finished (root mounted, control channel open).
    Ready {
        kernel_release: String,
        uptime_ms: u64,
    },
    /// Host → agent: hostname, mounts, environment and services.
    Setup(Setup),
    /// Agent → host: `Setup` applied.
    SetupDone,
    /// Host → agent: run a process in session `Frame::session`.
    Exec(Exec),
    /// Agent → host: the process runs.
    Started {
        pid: u32,
    },
    /// Host → agent: bytes for the process's stdin; empty means end of input.
    Stdin(Vec<u8>),
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// Agent → host: the process ended after all its output was sent. `signal` is 0 unless it
    /// was killed by a signal (then `code` is 128 + signal).
    Exit {
        code: i32,
        signal: i32,
    },
    /// Host → agent: the terminal size changed.
    Resize {
        rows: u16,
        cols: u16,
    },
    /// Host → agent: deliver a signal to the session's process group.
    Signal {
        signal: i32,
    },
    /// Either way: the request in this session failed.
    Error {
        message: String,
    },
    /// Host → agent: sync and stop the VM.
    Poweroff,
    /// Host → agent: write one file into one of berth's tmpfs folders in the guest
    /// (`[secrets]`, the environment's gitconfig); answered by `SetupDone` or `Error`.
    PutFile(PutFile),
    /// Host → agent: remove every file of `dir` (one of berth's tmpfs folders) not named in
    /// `keep`; answered by `SetupDone` or `Error`.
    KeepFiles {
        dir: String,
        keep: Vec<String>,
    },
    /// Host → agent: start the services a `Setup` held back; answered by `SetupDone`.
    StartServices,
    /// Host → agent, right before the `Exec` of the same session: forward the host's
    /// credentials to that command (see [`Forward`]). Not answered; an agent that does not
    /// know it reports an `Error` on session 0 and runs the command without them.
    Forward(Forward),
    /// Agent → host: a process of the session connected to one of its forwarded sockets;
    /// `stream` (chosen by the agent, unique among the session's open streams) names the
    /// connection in the frames that follow.
    StreamOpen {
        stream: u32,
        kind: StreamKind,
    },
    /// Either way: bytes of an open stream (at most [`STREAM_CHUNK`] per frame).
    StreamData {
        stream: u32,
        data: Vec<u8>,
    },
    /// Either way: the sender sends nothing more on `stream` (its half is shut down).
    StreamEof {
        stream: u32,
    },
    /// Either way: `stream` is over (both halves); also a refusal of a `StreamOpen`.
    StreamClose {
        stream: u32,
    },
}

/// Most bytes one `StreamData` frame carries (a larger one is a protocol error).
pub const STREAM_CHUNK: usize = 64 * 1024;
/// Most streams one session has open at once; a `StreamOpen` beyond is refused.
pub const MAX_STREAMS: usize = 32;
/// Most bytes either side holds for one stream that its local end has not taken yet; a
/// stream whose reader falls that far behind is closed (the forwarded protocols, the SSH
/// agent's and git's credential requests, are small requests and answers).
pub const MAX_STREAM_BUFFER: usize = 512 * 1024;
/// Largest session gitconfig a `Forward` carries.
pub const MAX_FORWARD_GITCONFIG: usize = 64 * 1024;
/// Stands for the session folder's path in a `Forward`'s gitconfig (the host cannot know it).
pub const SESSION_DIR_PLACEHOLDER: &str = "@BERTH_SESSION_DIR@";
/// The forwarded sockets' and the gitconfig's names in a session's folder.
pub const AGENT_SOCKET: &str = "agent.sock";
pub const GIT_SOCKET: &str = "git-credential.sock";
pub const SESSION_GITCONFIG: &str = "gitconfig";

/// What a forwarded stream leads to on the host: the one thing the host connects it to,
/// fixed by the host when the session started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamKind {
    /// The SSH agent (`SSH_AUTH_SOCK` inside).
    SshAgent = 1,
    /// git's `credential-cache` protocol, answered by the host's credential helper.
    GitCredential = 2,
}

/// The host's credentials for one session's command: the agent makes a private folder
/// `/tmp/berth-<16 hex>` (0700, the command's user's), binds the sockets asked for in it,
/// writes the gitconfig, gives the command `SSH_AUTH_SOCK` / `GIT_CONFIG_SYSTEM`, relays
/// each connection as a stream to the host, and removes it all when the command ends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Forward {
    /// Bind [`AGENT_SOCKET`].
    pub agent: bool,
    /// Bind [`GIT_SOCKET`].
    pub git_credentials: bool,
    /// The session's gitconfig ([`SESSION_DIR_PLACEHOLDER`] for the folder), if any.
    pub gitconfig: Option<String>,
}

impl Forward {
    /// Whether it asks for nothing.
    pub fn is_empty(&self) -> bool {
        !self.agent && !self.git_credentials && self.gitconfig.is_none()
    }
}

/// A file for one of berth's tmpfs folders in the guest. Its `Debug` never shows the
/// content (a secret).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct PutFile {
    /// `/run/secrets` or `/run/berth`; the agent refuses any other.
    pub dir: String,
    pub name: String,
    /// User name or uid:gid the file is given to; `None`: root.
    pub owner: Option<String>,
    pub mode: u32,
    pub content: Vec<u8>,
}

impl std::fmt::Debug for PutFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PutFile({}/{}, owner {:?}, mode {:o}, {} bytes)",
            self.dir,
            self.name,
            self.owner,
            self.mode,
            self.content.len()
        )
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Exec {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<String>,
    /// User name or numeric uid inside the guest; `None` = root.
    pub user: Option<String>,
    pub tty: bool,
    pub rows: u16,
    pub cols: u16,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Setup {
    pub hostname: String,
    pub mounts: Vec<MountRequest>,
    /// Environment for every process the agent starts.
    pub env: Vec<(String, String)>,
    pub services: Vec<ServiceSpec>,
    /// Names the guest resolves through `/etc/hosts` (name, IPv4 address): the sidecars of
    /// the environment, on berth's bridge. The agent replaces its own block of the file with
    /// them (an empty list removes it); a `Setup` with only `hosts` updates them on a running
    /// guest.
    pub hosts: Vec<(String, String)>,
    /// `[secrets]` wanted as variables (names only): every process the agent starts gets
    /// each from `/run/secrets/NAME` as it is then.
    pub secret_env: Vec<String>,
    /// The services wait for `StartServices` (the host writes `[secrets]` and runs
    /// `on_create` first).
    pub hold_services: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MountRequest {
    pub source: String,
    pub target: String,
    pub fstype: String,
    pub options: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    No = 0,
    OnFailure = 1,
    Always = 2,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    pub name: String,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<String>,
    pub restart: Restart,
}

impl Message {
    pub(crate) fn kind(&self) -> u8 {
        match self {
            Message::Hello { .. } => 1,
            Message::HelloAck { .. } => 2,
            Message::Ready { .. } => 3,
            Message::Setup(_) => 4,
            Message::SetupDone => 5,
            Message::Exec(_) => 6,
            Message::Started { .. } => 7,
            Message::Stdin(_) => 8,
            Message::Stdout(_) => 9,
            Message::Stderr(_) => 10,
            Message::Exit { .. } => 11,
            Message::Resize { .. } => 12,
            Message::Signal { .. } => 13,
            Message::Error { .. } => 14,
            Message::Poweroff => 15,
            Message::PutFile(_) => 16,
            Message::KeepFiles { .. } => 17,
            Message::StartServices => 18,
            Message::Forward(_) => 19,
            Message::StreamOpen { .. } => 20,
            Message::StreamData { .. } => 21,
            Message::StreamEof { .. } => 22,
            Message::StreamClose { .. } => 23,
        }
    }

    pub(crate) fn encode_payload(&self, out: &mut Vec<u8>) {
        let mut w = Writer(out);
        match self {
            Message::Hello { nonce } => w.u64(*nonce),
            Message::HelloAck {
                nonce,
                agent_version,
                kernel_release,
                ready,
            } => {
                w.u64(*nonce);
                w.str(agent_version);
                w.str(kernel_release);
                w.bool(*ready);
            }
            Message::Ready {
                kernel_release,
                uptime_ms,
            } => {
                w.str(kernel_release);
                w.u64(*uptime_ms);
            }
            Message::Setup(s) => {
                w.str(&s.hostname);
                w.u32(s.mounts.len() as u32);
                for m in &s.mounts {
                    w.str(&m.source);
                    w.str(&m.target);
                    w.str(&m.fstype);
                    w.str(&m.options);
                }
                w.pairs(&s.env);
                w.u32(s.services.len() as u32);
                for svc in &s.services {
                    w.str(&svc.name);
                    w.strs(&svc.argv);
                    w.pairs(&svc.env);
                    w.opt(&svc.cwd);
                    w.u8(svc.restart as u8);
                }
                w.pairs(&s.hosts);
                w.strs(&s.secret_env);
                w.bool(s.hold_services);
            }
            Message::PutFile(p) => {
                w.str(&p.dir);
                w.str(&p.name);
                w.opt(&p.owner);
                w.u32(p.mode);
                w.u32(p.content.len() as u32);
                w.0.extend_from_slice(&p.content);
            }
            Message::KeepFiles { dir, keep } => {
                w.str(dir);
                w.strs(keep);
            }
            Message::SetupDone | Message::Poweroff | Message::StartServices => {}
            Message::Exec(e) => {
                w.strs(&e.argv);
                w.pairs(&e.env);
                w.opt(&e.cwd);
                w.opt(&e.user);
                w.bool(e.tty);
                w.u16(e.rows);
                w.u16(e.cols);
            }
            Message::Started { pid } => w.u32(*pid),
            Message::Stdin(b) | Message::Stdout(b) | Message::Stderr(b) => w.0.extend_from_slice(b),
            Message::Exit { code, signal } => {
                w.u32(*code as u32);
                w.u32(*signal as u32);
            }
            Message::Resize { rows, cols } => {
                w.u16(*rows);
                w.u16(*cols);
            }
            Message::Signal { signal } => w.u32(*signal as u32),
            Message::Error { message } => w.str(message),
            Message::Forward(f) => {
                w.bool(f.agent);
                w.bool(f.git_credentials);
                w.opt(&f.gitconfig);
            }
            Message::StreamOpen { stream, kind } => {
                w.u32(*stream);
                w.u8(*kind as u8);
            }
            Message::StreamData { stream, data } => {
                w.u32(*stream);
                w.0.extend_from_slice(data);
            }
            Message::StreamEof { stream } | Message::StreamClose { stream } => w.u32(*stream),
        }
    }

    pub(crate) fn decode_payload(kind: u8, payload: &[u8]) -> Result<Message, ProtoError> {
        let mut r = Reader { buf: payload };
        let m = match kind {
            1 => Message::Hello {
                nonce: r.u64("nonce")?,
            },
            2 => Message::HelloAck {
                nonce: r.u64("nonce")?,
                agent_version: r.str("agent_version")?,
                kernel_release: r.str("kernel_release")?,
                ready: r.bool("ready")?,
            },
            3 => Message::Ready {
                kernel_release: r.str("kernel_release")?,
                uptime_ms: r.u64("uptime_ms")?,
            },
            4 => {
                let hostname = r.str("hostname")?;
                let n = r.count("mounts", 16)?;
                let mut mounts = Vec::with_capacity(n);
                for _ in 0..n {
                    mounts.push(MountRequest {
                        source: r.str("mount.source")?,
                        target: r.str("mount.target")?,
                        fstype: r.str("mount.fstype")?,
                        options: r.str("mount.options")?,
                    });
                }
                let env = r.pairs("env")?;
                let n = r.count("services", 17)?;
                let mut services = Vec::with_capacity(n);
                for _ in 0..n {
                    services.push(ServiceSpec {
                        name: r.str("service.name")?,
                        argv: r.strs("service.argv")?,
                        env: r.pairs("service.env")?,
                        cwd: r.opt("service.cwd")?,
                        restart: match r.u8("service.restart")? {
                            0 => Restart::No,
                            1 => Restart::OnFailure,
                            2 => Restart::Always,
                            _ => {
                                return Err(ProtoError::Invalid {
                                    field: "service.restart",
                                })
                            }
                        },
                    });
                }
                let hosts = r.pairs("hosts")?;
                let secret_env = r.strs("secret_env")?;
                let hold_services = r.bool("hold_services")?;
                Message::Setup(Setup {
                    hostname,
                    mounts,
                    env,
                    services,
                    hosts,
                    secret_env,
                    hold_services,
                })
            }
            5 => Message::SetupDone,
            6 => Message::Exec(Exec {
                argv: r.strs("argv")?,
                env: r.pairs("env")?,
                cwd: r.opt("cwd")?,
                user: r.opt("user")?,
                tty: r.bool("tty")?,
                rows: r.u16("rows")?,
                cols: r.u16("cols")?,
            }),
            7 => Message::Started { pid: r.u32("pid")? },
            8 => Message::Stdin(r.rest()),
            9 => Message::Stdout(r.rest()),
            10 => Message::Stderr(r.rest()),
            11 => Message::Exit {
                code: r.u32("code")? as i32,
                signal: r.u32("signal")? as i32,
            },
            12 => Message::Resize {
                rows: r.u16("rows")?,
                cols: r.u16("cols")?,
            },
            13 => Message::Signal {
                signal: r.u32("signal")? as i32,
            },
            14 => Message::Error {
                message: r.str("message")?,
            },
            15 => Message::Poweroff,
            16 => Message::PutFile(PutFile {
                dir: r.str("dir")?,
                name: r.str("name")?,
                owner: r.opt("owner")?,
                mode: r.u32("mode")?,
                content: {
                    let n = r.u32("content")? as usize;
                    r.take(n, "content")?.to_vec()
                },
            }),
            18 => Message::StartServices,
            17 => Message::KeepFiles {
                dir: r.str("dir")?,
                keep: r.strs("keep")?,
            },
            19 => {
                let agent = r.bool("agent")?;
                let git_credentials = r.bool("git_credentials")?;
                let gitconfig = r.opt("gitconfig")?;
                if gitconfig
                    .as_ref()
                    .is_some_and(|g| g.len() > MAX_FORWARD_GITCONFIG || g.contains('\0'))
                {
                    return Err(ProtoError::Invalid { field: "gitconfig" });
                }
                Message::Forward(Forward {
                    agent,
                    git_credentials,
                    gitconfig,
                })
            }
            20 => Message::StreamOpen {
                stream: r.u32("stream")?,
                kind: match r.u8("kind")? {
                    1 => StreamKind::SshAgent,
                    2 => StreamKind::GitCredential,
                    _ => return Err(ProtoError::Invalid { field: "kind" }),
                },
            },
            21 => {
                let stream = r.u32("stream")?;
                let data = r.rest();
                if data.is_empty() || data.len() > STREAM_CHUNK {
                    return Err(ProtoError::Invalid { field: "data" });
                }
                Message::StreamData { stream, data }
            }
            22 => Message::StreamEof {
                stream: r.u32("stream")?,
            },
            23 => Message::StreamClose {
                stream: r.u32("stream")?,
            },
            k => return Err(ProtoError::UnknownKind(k)),
        };
        if !r.buf.is_empty() {
            return Err(ProtoError::TrailingBytes(r.buf.len()));
        }
        Ok(m)
    }
}

struct Writer<'a>(&'a mut Vec<u8>);

impl Writer<'_> {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn bool(&mut self, v: bool) {
        self.0.push(v as u8);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn str(&mut self, s: &str) {
        self.u32(s.len() as u32);
        self.0.extend_from_slice(s.as_bytes());
    }
    fn strs(&mut self, v: &[String]) {
        self.u32(v.len() as u32);
        for s in v {
            self.str(s);
        }
    }
    fn pairs(&mut self, v: &[(String, String)]) {
        self.u32(v.len() as u32);
        for (k, val) in v {
            self.str(k);
            self.str(val);
        }
    }
    fn opt(&mut self, v: &Option<String>) {
        match v {
            Some(s) => {
                self.u8(1);
                self.str(s);
            }
            None => self.u8(0),
        }
    }
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl Reader<'_> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&[u8], ProtoError> {
        if self.buf.len() < n {
            return Err(ProtoError::Truncated { field });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], ProtoError> {
        let b = self.take(N, field)?;
        let mut out = [0u8; N];
        out.copy_from_slice(b);
        Ok(out)
    }
    fn u8(&mut self, field: &'static str) -> Result<u8, ProtoError> {
        Ok(self.array::<1>(field)?[0])
    }
    fn bool(&mut self, field: &'static str) -> Result<bool, ProtoError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(ProtoError::Invalid { field }),
        }
    }
    fn u16(&mut self, field: &'static str) -> Result<u16, ProtoError> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }
    fn u32(&mut self, field: &'static str) -> Result<u32, ProtoError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }
    fn u64(&mut self, field: &'static str) -> Result<u64, ProtoError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }
    /// A count of items of at least `min_item` bytes each; rejected when the payload could
    /// not hold that many (so a hostile count never drives a huge allocation).
    fn count(&mut self, field: &'static str, min_item: usize) -> Result<usize, ProtoError> {
        let n = self.u32(field)? as usize;
        if n.saturating_mul(min_item) > self.buf.len() {
            return Err(ProtoError::Truncated { field });
        }
        Ok(n)
    }
    fn str(&mut self, field: &'static str) -> Result<String, ProtoError> {
        let n = self.u32(field)? as usize;
        let b = self.take(n, field)?;
        String::from_utf8(b.to_vec()).map_err(|_| ProtoError::NotUtf8 { field })
    }
    fn strs(&mut self, field: &'static str) -> Result<Vec<String>, ProtoError> {
        let n = self.count(field, 4)?;
        (0..n).map(|_| self.str(field)).collect()
    }
    fn pairs(&mut self, field: &'static str) -> Result<Vec<(String, String)>, ProtoError> {
        let n = self.count(field, 8)?;
        (0..n)
            .map(|_| Ok((self.str(field)?, self.str(field)?)))
            .collect()
    }
    fn opt(&mut self, field: &'static str) -> Result<Option<String>, ProtoError> {
        match self.u8(field)? {
            0 => Ok(None),
            1 => Ok(Some(self.str(field)?)),
            _ => Err(ProtoError::Invalid { field }),
        }
    }
    fn rest(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf).to_vec()
    }
}
