//! The control protocol between berth (host) and `berth-agent` (guest), over any reliable byte
//! stream (virtio-serial port, virtio-console, vsock, a Unix socket in tests).
//!
//! Every frame is a 12-byte header followed by a payload:
//!
//! ```text
//! magic "BF" (2) | version (1) | kind (1) | session u32 LE (4) | payload length u32 LE (4)
//! ```
//!
//! `session` ties stream frames to one `Exec` (0 for control messages). A session whose
//! `Exec` followed a `Forward` may also carry streams the agent opens (`StreamOpen`, then
//! `StreamData`/`StreamEof`/`StreamClose` both ways, named by a stream id): connections a
//! process made to the credential sockets the agent made for it. Payload fields are
//! little-endian integers, strings and byte strings prefixed by a u32 length, lists prefixed by
//! a u32 count. Decoding never panics: a malformed, truncated or oversized frame is a
//! [`ProtoError`].

pub mod client;
mod codec;
mod message;
pub mod restart;
pub mod users;

pub use client::{AgentInfo, Client, ClientError, ExitStatus, Output, SessionHandle};
pub use codec::{decode, encode, FrameBuffer, HEADER_LEN, MAGIC, MAX_PAYLOAD, VERSION};
pub use message::{
    Exec, Forward, Frame, Message, MountRequest, PutFile, Restart, ServiceSpec, Setup, StreamKind,
    AGENT_SOCKET, GIT_SOCKET, MAX_FORWARD_GITCONFIG, MAX_STREAMS, MAX_STREAM_BUFFER,
    SESSION_DIR_PLACEHOLDER, SESSION_GITCONFIG, STREAM_CHUNK,
};

/// berth's own tmpfs inside an environment (container or VM): what berth writes there at
/// `up` lives in memory only.
pub const RUN_DIR: &str = "/run/berth";
/// The environment's system gitconfig, written at `up` (the host user's git identity, after
/// an include of the image's `/etc/gitconfig`). Every process started inside gets
/// `GIT_CONFIG_SYSTEM` pointing at it while it exists (a variable of `[env]` wins).
pub const GITCONFIG_PATH: &str = "/run/berth/gitconfig";
/// `[secrets]` inside an environment: one file each, on a tmpfs.
pub const SECRETS_DIR: &str = "/run/secrets";

/// Where the agent writes each `[services]` entry's output in the guest: `<dir>/<name>.log`.
pub const SERVICE_LOG_DIR: &str = "/var/log/berth";

/// Why bytes are not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtoError {
    /// The stream is not at a frame boundary (or not speaking this protocol).
    BadMagic([u8; 2]),
    /// The peer speaks another protocol version.
    UnsupportedVersion(u8),
    /// A message kind this side does not know.
    UnknownKind(u8),
    /// The payload exceeds [`MAX_PAYLOAD`].
    TooLarge(u64),
    /// A field runs past the end of the payload.
    Truncated { field: &'static str },
    /// The payload has bytes left after the last field.
    TrailingBytes(usize),
    /// A string field is not UTF-8.
    NotUtf8 { field: &'static str },
    /// A field has a value outside its range.
    Invalid { field: &'static str },
}

impl std::fmt::Display for ProtoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProtoError::BadMagic(m) => write!(f, "not a berth agent frame (starts with {m:02x?}); is the other end a berth agent?"),
            ProtoError::UnsupportedVersion(v) => write!(f, "agent protocol version {v} is not supported (this side speaks {VERSION}); use matching berth and berth-agent builds"),
            ProtoError::UnknownKind(k) => write!(f, "unknown agent message kind {k}"),
            ProtoError::TooLarge(n) => write!(f, "agent frame of {n} bytes exceeds the {MAX_PAYLOAD}-byte limit"),
            ProtoError::Truncated { field } => write!(f, "agent frame truncated in field `{field}`"),
            ProtoError::TrailingBytes(n) => write!(f, "agent frame has {n} unexpected trailing bytes"),
            ProtoError::NotUtf8 { field } => write!(f, "agent frame field `{field}` is not UTF-8"),
            ProtoError::Invalid { field } => write!(f, "agent frame field `{field}` has an invalid value"),
        }
    }
}

impl std::error::Error for ProtoError {}

#[cfg(test)]
mod tests;
