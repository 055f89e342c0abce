//! Byte streams into a VM for live sync: [`open_streams`] starts one `berth-agent sync-serve`
//! per synced folder as an exec session of `/proc/1/exe` (PID 1 is the agent, still
//! executable through that link after its switch_root), all on one agent connection, so a
//! VM with any number of sync mounts uses one control channel and leaves the others to
//! `exec` and `shell`.
//!
//! One thread owns the connection and routes each session's stdout to its stream's reader
//! (never blocking, so the agent is never kept waiting on the channel); writing to a stream
//! sends stdin frames, and dropping the writer ends the session's input, which ends the
//! server in the guest. The server's stderr goes to this process's stderr (the sync log).

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;

use berth_agent_proto::{ClientError, Exec, Message, SessionHandle};

use super::{VmConnection, VmError};

/// The agent inside the guest, reachable after switch_root.
pub const AGENT_IN_GUEST: &str = "/proc/1/exe";

/// One folder to serve: its path in the guest and the owner of what the sync creates there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestFolder {
    pub target: String,
    pub owner: Option<(u32, u32)>,
}

/// The two halves of one stream.
pub struct Stream {
    pub reader: Box<dyn Read + Send>,
    pub writer: Box<dyn Write + Send>,
}

/// The agent command serving `folder`.
pub fn serve_argv(folder: &GuestFolder) -> Vec<String> {
    let mut argv = vec![
        AGENT_IN_GUEST.to_string(),
        "sync-serve".into(),
        "--root".into(),
        folder.target.clone(),
    ];
    if let Some((u, g)) = folder.owner {
        argv.push("--owner".into());
        argv.push(format!("{u}:{g}"));
    }
    argv
}

/// Starts a server per folder over `conn`. `alive` turns false once the connection ends
/// (the VM stopped, or the agent closed the channel).
pub fn open_streams(
    conn: VmConnection,
    folders: &[GuestFolder],
) -> Result<(Vec<Stream>, Arc<AtomicBool>), VmError> {
    let mut client = conn.client;
    let mut routes: Vec<(u32, Sender<Vec<u8>>, String)> = Vec::new();
    let mut streams = Vec::new();
    for f in folders {
        let handle = client.start(Exec {
            argv: serve_argv(f),
            ..Exec::default()
        })?;
        let (tx, rx) = mpsc::channel();
        routes.push((handle.id, tx, f.target.clone()));
        streams.push(Stream {
            reader: Box::new(SessionReader {
                rx,
                pending: Vec::new(),
                pos: 0,
            }),
            writer: Box::new(SessionWriter { handle }),
        });
    }
    let alive = Arc::new(AtomicBool::new(true));
    let flag = alive.clone();
    std::thread::Builder::new()
        .name("vm-sync-channel".into())
        .spawn(move || {
            loop {
                let frame = match client.next_frame() {
                    Ok(f) => f,
                    Err(e) => {
                        if !matches!(e, ClientError::Closed) {
                            eprintln!("berth sync: the VM's agent channel failed: {e}");
                        }
                        break;
                    }
                };
                let Some(k) = routes.iter().position(|r| r.0 == frame.session) else {
                    continue;
                };
                match frame.message {
                    Message::Stdout(d) => {
                        let _ = routes[k].1.send(d);
                    }
                    Message::Stderr(d) => {
                        eprint!("{}: {}", routes[k].2, String::from_utf8_lossy(&d));
                    }
                    Message::Error { message } => {
                        eprintln!("berth sync: {}: {message}", routes[k].2);
                    }
                    Message::Exit { code, .. } => {
                        if code != 0 {
                            eprintln!(
                                "berth sync: the guest side of {} ended with code {code}",
                                routes[k].2
                            );
                        }
                        // Its reader sees the end of the stream.
                        routes.remove(k);
                        if routes.is_empty() {
                            break;
                        }
                    }
                    _ => {}
                }
            }
            flag.store(false, Ordering::SeqCst);
        })
        .map_err(|source| VmError::Io {
            path: "thread".into(),
            source,
        })?;
    Ok((streams, alive))
}

/// A session's stdout as a byte stream.
struct SessionReader {
    rx: Receiver<Vec<u8>>,
    pending: Vec<u8>,
    pos: usize,
}

impl Read for SessionReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos >= self.pending.len() {
            match self.rx.recv() {
                Ok(d) => {
                    self.pending = d;
                    self.pos = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.pending.len() - self.pos);
        buf[..n].copy_from_slice(&self.pending[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// A session's stdin as a byte stream; dropping it ends the input.
struct SessionWriter {
    handle: SessionHandle,
}

impl Write for SessionWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        self.handle
            .stdin(buf)
            .map_err(|e| io::Error::new(io::ErrorKind::BrokenPipe, e.to_string()))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for SessionWriter {
    fn drop(&mut self) {
        let _ = self.handle.stdin(&[]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_command() {
        let f = GuestFolder {
            target: "/work".into(),
            owner: Some((0, 0)),
        };
        assert_eq!(
            serve_argv(&f),
            [
                "/proc/1/exe",
                "sync-serve",
                "--root",
                "/work",
                "--owner",
                "0:0"
            ]
        );
        let f = GuestFolder {
            target: "/src".into(),
            owner: None,
        };
        assert_eq!(serve_argv(&f).len(), 4);
    }

    #[test]
    fn session_reader_joins_chunks_and_ends_with_the_sender() {
        let (tx, rx) = mpsc::channel();
        let mut r = SessionReader {
            rx,
            pending: Vec::new(),
            pos: 0,
        };
        tx.send(b"ab".to_vec()).unwrap();
        tx.send(Vec::new()).unwrap();
        tx.send(b"cde".to_vec()).unwrap();
        drop(tx);
        let mut all = Vec::new();
        r.read_to_end(&mut all).unwrap();
        assert_eq!(all, b"abcde");
    }
}
