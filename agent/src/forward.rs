//! The guest side of credential forwarding (`Message::Forward`): for one session's command
//! the agent makes a private folder `/tmp/berth-<16 hex>` (0700, the command's user's: made
//! by root under a fresh random name, filled, then given to the user), binds the sockets the
//! host asked for in it (`agent.sock`, `git-credential.sock`), writes the session's
//! gitconfig, and gives the command `SSH_AUTH_SOCK` / `GIT_CONFIG_SYSTEM`. Each connection a
//! process makes to one of the sockets becomes a stream of the session (`StreamOpen`,
//! `StreamData`, `StreamEof`, `StreamClose`), relayed to the host, which alone decides where
//! it leads. At most [`MAX_STREAMS`] at once (more wait in the listener's backlog), and at
//! most [`MAX_STREAM_BUFFER`] bytes held for a process that does not read (the stream is
//! closed beyond). Everything goes when the session ends ([`Drop`]). The folder is a
//! [`SessionFolder`], the same a container's session gets: a folder left by a killed agent
//! goes with the next session's.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};

use berth_agent_proto::{
    Forward, Message, StreamKind, AGENT_SOCKET, GIT_SOCKET, MAX_STREAMS, MAX_STREAM_BUFFER,
    STREAM_CHUNK,
};
use berth_inside_files::session_folder::{SessionFolder, PARENT};

use crate::users::User;

/// What became ready in a poll, for [`Forwarding::ready`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watch {
    /// A listener (index into the listeners) has a connection waiting.
    Accept(usize),
    /// A stream's socket: readable, or writable while data for it waits.
    Stream(u32),
}

struct Stream {
    socket: UnixStream,
    /// Bytes from the host not yet written to the socket.
    to_guest: Vec<u8>,
    /// The host sends nothing more: shut our writing half once `to_guest` is written.
    host_eof: bool,
    /// The process's half ended (its EOF was sent to the host).
    guest_eof: bool,
}

/// One session's forwarded sockets and their open streams; see the module's documentation.
pub struct Forwarding {
    listeners: Vec<(StreamKind, UnixListener)>,
    streams: BTreeMap<u32, Stream>,
    next_stream: u32,
    env: Vec<(String, String)>,
    /// Dropped after the sockets: what it holds goes, then the folder.
    _folder: SessionFolder,
}

impl Forwarding {
    /// Makes the folder in [`PARENT`] for a command of `user`; see the module's documentation.
    pub fn create(req: &Forward, user: &User) -> Result<Forwarding, String> {
        Self::create_in(PARENT, req, user)
    }

    fn create_in(parent: &str, req: &Forward, user: &User) -> Result<Forwarding, String> {
        // On an error what was made goes with `folder`.
        let mut folder = SessionFolder::make_in(parent)?;
        let mut listeners = Vec::new();
        let wanted = [
            (req.agent, AGENT_SOCKET, StreamKind::SshAgent),
            (req.git_credentials, GIT_SOCKET, StreamKind::GitCredential),
        ];
        for (_, name, kind) in wanted.into_iter().filter(|w| w.0) {
            let l = folder.listen(name)?;
            l.set_nonblocking(true)
                .map_err(|e| format!("cannot listen on {}/{name}: {e}", folder.path()))?;
            listeners.push((kind, l));
        }
        let mut env = Vec::new();
        if let Some(text) = &req.gitconfig {
            env.push(("GIT_CONFIG_SYSTEM".into(), folder.write_gitconfig(text)?));
        }
        if req.agent {
            env.push((
                "SSH_AUTH_SOCK".into(),
                format!("{}/{AGENT_SOCKET}", folder.path()),
            ));
        }
        // Last: until now only root could enter it.
        folder.give_to(user.uid, user.gid)?;
        Ok(Forwarding {
            listeners,
            streams: BTreeMap::new(),
            next_stream: 1,
            env,
            _folder: folder,
        })
    }

    /// The variables the command gets (before its own, which win).
    pub fn env(&self) -> &[(String, String)] {
        &self.env
    }

    /// The descriptors to poll and what each is for.
    pub fn watches(&self) -> Vec<(RawFd, i16, Watch)> {
        let mut out = Vec::new();
        if self.streams.len() < MAX_STREAMS {
            for (i, (_, l)) in self.listeners.iter().enumerate() {
                out.push((l.as_raw_fd(), libc::POLLIN, Watch::Accept(i)));
            }
        }
        for (&id, s) in &self.streams {
            let mut events = 0;
            if !s.guest_eof {
                events |= libc::POLLIN;
            }
            if !s.to_guest.is_empty() {
                events |= libc::POLLOUT;
            }
            if events != 0 {
                out.push((s.socket.as_raw_fd(), events, Watch::Stream(id)));
            }
        }
        out
    }

    /// Handles what became ready; returns the messages for the host, in order.
    pub fn ready(&mut self, watch: Watch, buf: &mut [u8]) -> Vec<Message> {
        let mut out = Vec::new();
        match watch {
            Watch::Accept(i) => self.accept(i, &mut out),
            Watch::Stream(id) => {
                self.flush(id, &mut out);
                self.read(id, buf, &mut out);
            }
        }
        out
    }

    fn accept(&mut self, i: usize, out: &mut Vec<Message>) {
        let Some((kind, l)) = self.listeners.get(i) else {
            return;
        };
        let kind = *kind;
        while self.streams.len() < MAX_STREAMS {
            let Ok((socket, _)) = l.accept() else {
                return;
            };
            if socket.set_nonblocking(true).is_err() {
                continue;
            }
            let stream = self.next_stream;
            self.next_stream = self.next_stream.wrapping_add(1).max(1);
            self.streams.insert(
                stream,
                Stream {
                    socket,
                    to_guest: Vec::new(),
                    host_eof: false,
                    guest_eof: false,
                },
            );
            out.push(Message::StreamOpen { stream, kind });
        }
    }

    fn read(&mut self, id: u32, buf: &mut [u8], out: &mut Vec<Message>) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        if s.guest_eof {
            return;
        }
        let n = buf.len().min(STREAM_CHUNK);
        match s.socket.read(&mut buf[..n]) {
            Ok(0) => {
                s.guest_eof = true;
                out.push(Message::StreamEof { stream: id });
                self.finish_if_done(id);
            }
            Ok(n) => out.push(Message::StreamData {
                stream: id,
                data: buf[..n].to_vec(),
            }),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => self.close(id, out),
        }
    }

    /// Writes what waits for the process; shuts the writing half after the host's EOF.
    fn flush(&mut self, id: u32, out: &mut Vec<Message>) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        while !s.to_guest.is_empty() {
            match s.socket.write(&s.to_guest) {
                Ok(n) => {
                    s.to_guest.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.close(id, out),
            }
        }
        if s.host_eof {
            let _ = s.socket.shutdown(std::net::Shutdown::Write);
            self.finish_if_done(id);
        }
    }

    /// Drops a stream both of whose halves ended (nothing left to write).
    fn finish_if_done(&mut self, id: u32) {
        if self
            .streams
            .get(&id)
            .is_some_and(|s| s.guest_eof && s.host_eof && s.to_guest.is_empty())
        {
            self.streams.remove(&id);
        }
    }

    /// Ends a stream on both sides.
    fn close(&mut self, id: u32, out: &mut Vec<Message>) {
        if self.streams.remove(&id).is_some() {
            out.push(Message::StreamClose { stream: id });
        }
    }

    /// A stream frame from the host; returns the messages for the host. Frames for a stream
    /// not open (closed meanwhile) are dropped.
    pub fn host_sent(&mut self, message: Message) -> Vec<Message> {
        let mut out = Vec::new();
        match message {
            Message::StreamData { stream, data } => {
                let Some(s) = self.streams.get_mut(&stream) else {
                    return out;
                };
                if s.host_eof || s.to_guest.len() + data.len() > MAX_STREAM_BUFFER {
                    self.close(stream, &mut out);
                    return out;
                }
                s.to_guest.extend_from_slice(&data);
                self.flush(stream, &mut out);
            }
            Message::StreamEof { stream } => {
                if let Some(s) = self.streams.get_mut(&stream) {
                    s.host_eof = true;
                    self.flush(stream, &mut out);
                }
            }
            Message::StreamClose { stream } => {
                self.streams.remove(&stream);
            }
            _ => {}
        }
        out
    }

    #[cfg(test)]
    fn open_streams(&self) -> usize {
        self.streams.len()
    }
}

impl Drop for Forwarding {
    fn drop(&mut self) {
        // The sockets close before the folder's drop removes their names.
        self.streams.clear();
        self.listeners.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_agent_proto::SESSION_DIR_PLACEHOLDER;
    use std::os::unix::fs::MetadataExt;

    fn me() -> User {
        // SAFETY: getuid/getgid take no arguments.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        User {
            uid,
            gid,
            groups: vec![gid],
            home: "/".into(),
            name: None,
        }
    }

    fn both() -> Forward {
        Forward {
            agent: true,
            git_credentials: true,
            gitconfig: Some(format!(
                "[credential]\n\thelper = cache --socket {SESSION_DIR_PLACEHOLDER}/{GIT_SOCKET}\n"
            )),
        }
    }

    /// Polls `fwd`'s watches once (short timeout) and handles what is ready.
    fn pump(fwd: &mut Forwarding) -> Vec<Message> {
        let watches = fwd.watches();
        let mut fds: Vec<libc::pollfd> = watches
            .iter()
            .map(|(fd, events, _)| libc::pollfd {
                fd: *fd,
                events: *events,
                revents: 0,
            })
            .collect();
        // SAFETY: a valid array of pollfd for its length.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 200) };
        let mut buf = vec![0u8; 64 * 1024];
        let mut out = Vec::new();
        for (p, (_, _, w)) in fds.iter().zip(watches) {
            if p.revents != 0 {
                out.extend(fwd.ready(w, &mut buf));
            }
        }
        out
    }

    #[test]
    fn a_session_folder_is_private_and_goes_with_the_session() {
        let parent = tempfile::tempdir().unwrap();
        let fwd = Forwarding::create_in(parent.path().to_str().unwrap(), &both(), &me()).unwrap();
        let path = fwd._folder.path().to_string();
        let hex = path.rsplit("/berth-").next().unwrap();
        assert!(hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit()));
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o700);
        let env: Vec<String> = fwd.env().iter().map(|(k, v)| format!("{k}={v}")).collect();
        assert_eq!(
            env,
            [
                format!("GIT_CONFIG_SYSTEM={path}/gitconfig"),
                format!("SSH_AUTH_SOCK={path}/agent.sock")
            ]
        );
        let gitconfig = std::fs::read_to_string(format!("{path}/gitconfig")).unwrap();
        assert!(
            gitconfig.contains(&format!("cache --socket {path}/git-credential.sock")),
            "{gitconfig}"
        );
        assert_eq!(
            std::fs::metadata(format!("{path}/gitconfig"))
                .unwrap()
                .mode()
                & 0o777,
            0o600
        );
        drop(fwd);
        assert!(
            !Path::new(&path).exists(),
            "the folder outlived the session"
        );
    }

    use std::path::Path;

    #[test]
    fn a_connection_is_a_stream_both_ways_with_half_closes() {
        let parent = tempfile::tempdir().unwrap();
        let mut fwd =
            Forwarding::create_in(parent.path().to_str().unwrap(), &both(), &me()).unwrap();
        let mut client =
            UnixStream::connect(format!("{}/{GIT_SOCKET}", fwd._folder.path())).unwrap();
        let opened = pump(&mut fwd);
        assert_eq!(
            opened,
            [Message::StreamOpen {
                stream: 1,
                kind: StreamKind::GitCredential
            }]
        );
        client.write_all(b"action=get\n").unwrap();
        client.shutdown(std::net::Shutdown::Write).unwrap();
        let mut got = Vec::new();
        for _ in 0..4 {
            got.extend(pump(&mut fwd));
        }
        assert_eq!(
            got,
            [
                Message::StreamData {
                    stream: 1,
                    data: b"action=get\n".to_vec()
                },
                Message::StreamEof { stream: 1 }
            ]
        );
        assert!(fwd
            .host_sent(Message::StreamData {
                stream: 1,
                data: b"password=x\n".to_vec(),
            })
            .is_empty());
        assert!(fwd.host_sent(Message::StreamEof { stream: 1 }).is_empty());
        let mut answer = String::new();
        client.read_to_string(&mut answer).unwrap();
        assert_eq!(answer, "password=x\n");
        assert_eq!(fwd.open_streams(), 0, "a stream ended both ways is dropped");
        // Frames for a stream that is gone are ignored.
        assert!(fwd.host_sent(Message::StreamEof { stream: 1 }).is_empty());
    }

    #[test]
    fn streams_are_capped_and_a_process_that_does_not_read_is_cut_off() {
        let parent = tempfile::tempdir().unwrap();
        let mut fwd =
            Forwarding::create_in(parent.path().to_str().unwrap(), &both(), &me()).unwrap();
        let at = format!("{}/{AGENT_SOCKET}", fwd._folder.path());
        let clients: Vec<UnixStream> = (0..MAX_STREAMS + 3)
            .map(|_| UnixStream::connect(&at).unwrap())
            .collect();
        let mut opened = 0;
        for _ in 0..8 {
            opened += pump(&mut fwd)
                .iter()
                .filter(|m| matches!(m, Message::StreamOpen { .. }))
                .count();
        }
        assert_eq!(opened, MAX_STREAMS, "more streams than the cap");
        assert!(
            fwd.watches()
                .iter()
                .all(|(_, _, w)| !matches!(w, Watch::Accept(_))),
            "the listener is still polled at the cap"
        );
        // The host floods stream 1, whose process never reads.
        let mut closed = Vec::new();
        for _ in 0..(2 * MAX_STREAM_BUFFER / STREAM_CHUNK + 8) {
            closed.extend(fwd.host_sent(Message::StreamData {
                stream: 1,
                data: vec![0; STREAM_CHUNK],
            }));
        }
        assert_eq!(closed, [Message::StreamClose { stream: 1 }]);
        assert_eq!(fwd.open_streams(), MAX_STREAMS - 1);
        // A slot is free: one more waiting connection becomes a stream.
        let more = pump(&mut fwd);
        assert!(
            matches!(more.as_slice(), [Message::StreamOpen { .. }]),
            "{more:?}"
        );
        drop(clients);
    }
}
