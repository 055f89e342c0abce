//! The byte-stream protocol that carries one [`Transport`](crate::Transport) across a reliable
//! stream (a VM agent session's stdin/stdout): [`crate::serve`] answers it, and
//! [`crate::remote::RemoteTransport`] speaks it.
//!
//! A frame is `len: u32 BE | kind: u8 | id: u32 BE | body`, where `len` counts everything after
//! itself. Kind [`KIND_MSG`] carries a JSON-encoded [`Msg`]; kind [`KIND_DATA`] carries raw
//! bytes (file content, delta literals). `id` ties responses, data and events to the request
//! that caused them. The first exchange is `Hello`/`HelloAck` with [`VERSION`]; a server that
//! speaks another version answers with an error and the client refuses to go on.
//!
//! Errors keep their [`TransportError`] kind across the wire ([`WireError`]), so a path that
//! changed or vanished on the far side is still transient for the engine.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

use crate::transport::{TransportError, WatchEvent};
use crate::tree::{Entry, Scan};

/// The protocol version spoken by this build.
pub const VERSION: u32 = 1;
/// A JSON message.
pub const KIND_MSG: u8 = 1;
/// Raw bytes.
pub const KIND_DATA: u8 = 2;
/// The largest frame accepted (a scan of a very large tree is one message).
pub const MAX_FRAME: u32 = 256 << 20;
/// Size of the data chunks file content is sent in.
pub const CHUNK: usize = 64 * 1024;

/// A malformed, truncated or unexpected frame.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("the sync channel closed")]
    Closed,
    #[error("the sync channel closed in the middle of a frame ({got} of {want} bytes)")]
    Truncated { got: usize, want: usize },
    #[error("malformed sync frame: {0}")]
    Malformed(String),
    #[error("sync channel: {0}")]
    Io(#[from] io::Error),
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Msg { id: u32, msg: Msg },
    Data { id: u32, data: Vec<u8> },
}

/// Ignore rules as sent with a scan: the mount's patterns and the `.gitignore` texts known.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireRules {
    pub patterns: Vec<String>,
    pub gitignores: Vec<(String, Vec<String>)>,
}

/// A [`TransportError`] as it crosses the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ErrorMsg {
    Io {
        side: String,
        op: String,
        path: String,
        message: String,
        errno: Option<i32>,
    },
    Changed {
        side: String,
        path: String,
    },
    NotEmpty {
        side: String,
        path: String,
    },
    Escapes {
        side: String,
        path: String,
    },
    WatchLimit {
        side: String,
        detail: String,
    },
    Watch {
        side: String,
        detail: String,
    },
}

/// A watch event as it crosses the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventMsg {
    Changed { rel: String, deep: bool },
    Rescan,
    Failed { message: String, limit: bool },
}

/// Signatures of one block of a file (see [`crate::delta`]).
pub type BlockSig = (u32, String);

/// Every message of the protocol. Requests go client → server; each is answered by exactly one
/// of the responses (after any data frames and delta ops it streams), with the request's id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Msg {
    // ---- requests
    Hello {
        version: u32,
    },
    Scan {
        rel: String,
        rules: WireRules,
    },
    Stat {
        rel: String,
    },
    Hash {
        rel: String,
    },
    /// Streams the file: `Opened`, then data frames (or, with `sigs`, delta ops against the
    /// client's copy), then `ReadEnd`.
    ReadFile {
        rel: String,
        sigs: Option<Signatures>,
    },
    /// Block signatures of the file at `rel` (answered by `Sigs`), to stage a delta against it.
    Signatures {
        rel: String,
    },
    /// Followed by data frames (or delta ops when `delta`), then `StageEnd`.
    StageBegin {
        rel: String,
        mode: u32,
        mtime_ns: i64,
        delta: bool,
    },
    /// End of a stage stream. `ok = false`: the sender could not read its source, drop it.
    /// `sha256`: the content's hash, checked by the receiver (always sent with a delta).
    StageEnd {
        ok: bool,
        sha256: Option<String>,
    },
    StageSymlink {
        rel: String,
        target: String,
    },
    Commit {
        token: u64,
        expect: Option<Entry>,
    },
    Discard {
        token: u64,
    },
    Remove {
        rel: String,
        expect: Entry,
    },
    Rename {
        from: String,
        to: String,
    },
    Mkdir {
        rel: String,
        mode: u32,
    },
    SetMode {
        rel: String,
        mode: u32,
    },
    /// Events follow as `Event` messages with this request's id until `Unwatch`.
    Watch {
        force_poll: bool,
    },
    Unwatch {
        watch: u32,
    },

    // ---- delta ops (inside a read or stage stream; literals are data frames)
    /// Copy `count` blocks starting at block `start` of the receiver's old file.
    CopyBlocks {
        start: u64,
        count: u64,
    },

    // ---- responses
    HelloAck {
        version: u32,
        describe: String,
    },
    Scanned {
        scan: Scan,
    },
    Looked {
        entry: Option<Entry>,
    },
    Hashed {
        hash: Option<String>,
    },
    Opened {
        entry: Entry,
    },
    ReadEnd {
        /// The entry after reading (from the open descriptor), or why it is unknown.
        entry_now: Result<Entry, String>,
        /// The content's sha256 (sent with a delta, so the receiver can check its result).
        sha256: Option<String>,
    },
    /// `None`: no usable old file (missing, small or not a regular file).
    Sigs {
        sigs: Option<Signatures>,
    },
    Staged {
        rel: String,
        temp_name: String,
        token: u64,
    },
    Applied {
        entry: Entry,
    },
    Done,
    Watching {
        polling: Option<String>,
    },
    Event {
        event: EventMsg,
    },
    Error {
        error: ErrorMsg,
    },
}

/// Block signatures of one file version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signatures {
    pub block: u32,
    pub size: u64,
    pub blocks: Vec<BlockSig>,
}

/// Writes one frame.
pub fn write_frame(w: &mut dyn Write, frame: &Frame) -> io::Result<usize> {
    let (kind, id, body) = match frame {
        Frame::Msg { id, msg } => (
            KIND_MSG,
            *id,
            serde_json::to_vec(msg).map_err(io::Error::other)?,
        ),
        Frame::Data { id, data } => (KIND_DATA, *id, data.clone()),
    };
    write_raw(w, kind, id, &body)
}

/// Writes a data frame without copying `data`.
pub fn write_data(w: &mut dyn Write, id: u32, data: &[u8]) -> io::Result<usize> {
    write_raw(w, KIND_DATA, id, data)
}

fn write_raw(w: &mut dyn Write, kind: u8, id: u32, body: &[u8]) -> io::Result<usize> {
    let len = u32::try_from(5 + body.len())
        .ok()
        .filter(|l| *l <= MAX_FRAME)
        .ok_or_else(|| io::Error::other("sync frame too large"))?;
    let mut head = [0u8; 9];
    head[..4].copy_from_slice(&len.to_be_bytes());
    head[4] = kind;
    head[5..].copy_from_slice(&id.to_be_bytes());
    w.write_all(&head)?;
    w.write_all(body)?;
    w.flush()?;
    Ok(9 + body.len())
}

/// Reads one frame; `Ok(None)` on a clean end of stream between frames.
pub fn read_frame(r: &mut dyn Read) -> Result<Option<(Frame, usize)>, WireError> {
    let mut len = [0u8; 4];
    let got = read_full(r, &mut len)?;
    if got == 0 {
        return Ok(None);
    }
    if got < 4 {
        return Err(WireError::Truncated { got, want: 4 });
    }
    let len = u32::from_be_bytes(len);
    if len < 5 {
        return Err(WireError::Malformed(format!(
            "frame length {len} is below the 5-byte header"
        )));
    }
    if len > MAX_FRAME {
        return Err(WireError::Malformed(format!(
            "frame length {len} exceeds the limit of {MAX_FRAME}"
        )));
    }
    // Grown while reading, so a corrupt length does not allocate what never arrives.
    let mut body = Vec::new();
    let got = r.take(u64::from(len)).read_to_end(&mut body)?;
    if got < len as usize {
        return Err(WireError::Truncated {
            got: got + 4,
            want: len as usize + 4,
        });
    }
    let kind = body[0];
    let id = u32::from_be_bytes([body[1], body[2], body[3], body[4]]);
    let frame = match kind {
        KIND_MSG => Frame::Msg {
            id,
            msg: serde_json::from_slice(&body[5..])
                .map_err(|e| WireError::Malformed(format!("bad message: {e}")))?,
        },
        KIND_DATA => {
            body.drain(..5);
            Frame::Data { id, data: body }
        }
        k => return Err(WireError::Malformed(format!("unknown frame kind {k}"))),
    };
    Ok(Some((frame, len as usize + 4)))
}

fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

impl From<&TransportError> for ErrorMsg {
    fn from(e: &TransportError) -> Self {
        match e {
            TransportError::Io {
                side,
                op,
                path,
                source,
            } => ErrorMsg::Io {
                side: side.clone(),
                op: op.to_string(),
                path: path.clone(),
                message: source.to_string(),
                errno: source
                    .raw_os_error()
                    .or_else(|| (source.kind() == io::ErrorKind::NotFound).then_some(libc::ENOENT)),
            },
            TransportError::Changed { side, path } => ErrorMsg::Changed {
                side: side.clone(),
                path: path.clone(),
            },
            TransportError::NotEmpty { side, path } => ErrorMsg::NotEmpty {
                side: side.clone(),
                path: path.clone(),
            },
            TransportError::Escapes { side, path } => ErrorMsg::Escapes {
                side: side.clone(),
                path: path.clone(),
            },
            TransportError::WatchLimit { side, detail } => ErrorMsg::WatchLimit {
                side: side.clone(),
                detail: detail.clone(),
            },
            TransportError::Watch { side, detail } => ErrorMsg::Watch {
                side: side.clone(),
                detail: detail.clone(),
            },
        }
    }
}

impl From<ErrorMsg> for TransportError {
    fn from(e: ErrorMsg) -> Self {
        match e {
            ErrorMsg::Io {
                side,
                op,
                path,
                message,
                errno,
            } => TransportError::Io {
                side,
                op: static_op(&op),
                path,
                source: match errno {
                    // The far side's message, with the errno's kind (NotFound stays transient).
                    Some(n) => io::Error::new(io::Error::from_raw_os_error(n).kind(), message),
                    None => io::Error::other(message),
                },
            },
            ErrorMsg::Changed { side, path } => TransportError::Changed { side, path },
            ErrorMsg::NotEmpty { side, path } => TransportError::NotEmpty { side, path },
            ErrorMsg::Escapes { side, path } => TransportError::Escapes { side, path },
            ErrorMsg::WatchLimit { side, detail } => TransportError::WatchLimit { side, detail },
            ErrorMsg::Watch { side, detail } => TransportError::Watch { side, detail },
        }
    }
}

/// The operation names transports use (`TransportError::Io::op` is static).
fn static_op(op: &str) -> &'static str {
    const OPS: &[&str] = &[
        "chmod",
        "chown",
        "create folder",
        "hash",
        "link",
        "list",
        "open",
        "open folder",
        "open the folder of",
        "open the synced folder",
        "read",
        "remove",
        "rename",
        "rename into place",
        "stat",
        "symlink",
        "write",
        "stage",
        "delta",
    ];
    OPS.iter()
        .find(|o| **o == op)
        .copied()
        .unwrap_or("operate on")
}

impl From<&WatchEvent> for EventMsg {
    fn from(e: &WatchEvent) -> Self {
        match e {
            WatchEvent::Changed { rel, deep } => EventMsg::Changed {
                rel: rel.clone(),
                deep: *deep,
            },
            WatchEvent::Rescan => EventMsg::Rescan,
            WatchEvent::Failed { message, limit } => EventMsg::Failed {
                message: message.clone(),
                limit: *limit,
            },
        }
    }
}

impl From<EventMsg> for WatchEvent {
    fn from(e: EventMsg) -> Self {
        match e {
            EventMsg::Changed { rel, deep } => WatchEvent::Changed { rel, deep },
            EventMsg::Rescan => WatchEvent::Rescan,
            EventMsg::Failed { message, limit } => WatchEvent::Failed { message, limit },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(f: &Frame) -> Vec<u8> {
        let mut v = Vec::new();
        write_frame(&mut v, f).unwrap();
        v
    }

    #[test]
    fn frames_round_trip() {
        let frames = [
            Frame::Msg {
                id: 7,
                msg: Msg::Stat { rel: "a/b".into() },
            },
            Frame::Data {
                id: 9,
                data: vec![0, 1, 2, 255],
            },
            Frame::Msg {
                id: 1,
                msg: Msg::Error {
                    error: ErrorMsg::Changed {
                        side: "env".into(),
                        path: "x".into(),
                    },
                },
            },
        ];
        let mut bytes = Vec::new();
        for f in &frames {
            bytes.extend(encode(f));
        }
        let mut r = &bytes[..];
        for f in &frames {
            assert_eq!(&read_frame(&mut r).unwrap().unwrap().0, f);
        }
        assert!(read_frame(&mut r).unwrap().is_none());
    }

    #[test]
    fn corrupt_input_is_an_error_never_a_panic() {
        let good = encode(&Frame::Msg {
            id: 3,
            msg: Msg::Hash { rel: "f".into() },
        });
        let mut cases: Vec<(&str, Vec<u8>)> = vec![
            ("short length", vec![0, 0]),
            ("length below header", vec![0, 0, 0, 2, 1, 0]),
            ("huge length", vec![0xff, 0xff, 0xff, 0xff, 1]),
            ("unknown kind", vec![0, 0, 0, 5, 9, 0, 0, 0, 1]),
            ("bad json", {
                let mut v = vec![0, 0, 0, 8, KIND_MSG, 0, 0, 0, 1];
                v.extend(b"{x}");
                v
            }),
            ("json of no message", {
                let body = br#"{"t":"nope"}"#;
                let mut v = ((5 + body.len()) as u32).to_be_bytes().to_vec();
                v.extend([KIND_MSG, 0, 0, 0, 1]);
                v.extend(body);
                v
            }),
        ];
        // Every truncation of a good frame.
        for cut in 1..good.len() {
            cases.push(("truncated", good[..cut].to_vec()));
        }
        // Every single-byte corruption of a good frame either decodes or fails cleanly.
        for i in 0..good.len() {
            for x in [0x00u8, 0x7f, 0xff] {
                let mut v = good.clone();
                v[i] ^= x;
                let _ = read_frame(&mut &v[..]);
            }
        }
        for (what, bytes) in cases {
            assert!(read_frame(&mut &bytes[..]).is_err(), "{what}: {bytes:?}");
        }
    }

    proptest::proptest! {
        /// Any byte string decodes to frames or a clean error, and whatever a stream of
        /// frames was cut or corrupted into never panics the reader.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let mut r = &bytes[..];
            for _ in 0..64 {
                match read_frame(&mut r) {
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
        }

        #[test]
        fn data_frames_round_trip(id in proptest::num::u32::ANY, data in proptest::collection::vec(proptest::num::u8::ANY, 0..2048)) {
            let mut v = Vec::new();
            write_data(&mut v, id, &data).unwrap();
            let (f, n) = read_frame(&mut &v[..]).unwrap().unwrap();
            proptest::prop_assert_eq!(n, v.len());
            proptest::prop_assert_eq!(f, Frame::Data { id, data });
        }
    }

    #[test]
    fn errors_keep_their_kind() {
        let cases = [
            TransportError::Changed {
                side: "env".into(),
                path: "a".into(),
            },
            TransportError::NotEmpty {
                side: "env".into(),
                path: "a".into(),
            },
            TransportError::Io {
                side: "env".into(),
                op: "open",
                path: "a".into(),
                source: io::Error::from_raw_os_error(libc::ENOENT),
            },
        ];
        for e in &cases {
            let back: TransportError = ErrorMsg::from(e).into();
            assert!(back.is_transient(), "{back}");
            assert_eq!(back.to_string(), e.to_string());
        }
        let esc = TransportError::Escapes {
            side: "env".into(),
            path: "l/x".into(),
        };
        let back: TransportError = ErrorMsg::from(&esc).into();
        assert!(matches!(back, TransportError::Escapes { .. }));
        let denied = TransportError::Io {
            side: "env".into(),
            op: "write",
            path: "a".into(),
            source: io::Error::from_raw_os_error(libc::EACCES),
        };
        let back: TransportError = ErrorMsg::from(&denied).into();
        assert!(!back.is_transient());
        assert!(
            matches!(&back, TransportError::Io { op: "write", source, .. } if source.kind() == io::ErrorKind::PermissionDenied)
        );
    }
}
