//! Framing: header encode/decode and an incremental buffer for non-blocking readers.

use crate::{Frame, Message, ProtoError};

pub const MAGIC: [u8; 2] = *b"BF";
pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 12;
/// Largest payload accepted (stream frames are cut to at most this size).
pub const MAX_PAYLOAD: usize = 1 << 20;

/// Encodes one frame. Payloads over [`MAX_PAYLOAD`] are an error (split stream data first).
pub fn encode(frame: &Frame) -> Result<Vec<u8>, ProtoError> {
    let mut out = vec![0u8; HEADER_LEN];
    frame.message.encode_payload(&mut out);
    let len = out.len() - HEADER_LEN;
    if len > MAX_PAYLOAD {
        return Err(ProtoError::TooLarge(len as u64));
    }
    out[0..2].copy_from_slice(&MAGIC);
    out[2] = VERSION;
    out[3] = frame.message.kind();
    out[4..8].copy_from_slice(&frame.session.to_le_bytes());
    out[8..12].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(out)
}

/// Decodes the frame at the start of `buf`: `Ok(None)` when more bytes are needed, else the
/// frame and how many bytes it used. Header errors are reported as soon as the header is
/// complete, so an oversized length never makes the reader wait for (or buffer) the payload.
pub fn decode(buf: &[u8]) -> Result<Option<(Frame, usize)>, ProtoError> {
    if buf.len() >= 2 && buf[0..2] != MAGIC {
        return Err(ProtoError::BadMagic([buf[0], buf[1]]));
    }
    if buf.len() >= 3 && buf[2] != VERSION {
        return Err(ProtoError::UnsupportedVersion(buf[2]));
    }
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let kind = buf[3];
    let session = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    let len = u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]) as usize;
    if len > MAX_PAYLOAD {
        return Err(ProtoError::TooLarge(len as u64));
    }
    if buf.len() < HEADER_LEN + len {
        return Ok(None);
    }
    let message = Message::decode_payload(kind, &buf[HEADER_LEN..HEADER_LEN + len])?;
    Ok(Some((Frame { session, message }, HEADER_LEN + len)))
}

/// Bytes received so far; yields complete frames.
#[derive(Debug, Default)]
pub struct FrameBuffer {
    buf: Vec<u8>,
}

impl FrameBuffer {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame, if any. After an error the offending frame is dropped when its
    /// extent is known (bad payload), else the buffer is cleared (bad header); either way the
    /// caller decides whether to go on.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, ProtoError> {
        match decode(&self.buf) {
            Ok(Some((frame, used))) => {
                self.buf.drain(..used);
                Ok(Some(frame))
            }
            Ok(None) => Ok(None),
            Err(e) => {
                let extent = (self.buf.len() >= HEADER_LEN).then(|| {
                    HEADER_LEN
                        + u32::from_le_bytes([self.buf[8], self.buf[9], self.buf[10], self.buf[11]])
                            as usize
                });
                match (&e, extent) {
                    (
                        ProtoError::Truncated { .. }
                        | ProtoError::TrailingBytes(_)
                        | ProtoError::NotUtf8 { .. }
                        | ProtoError::Invalid { .. }
                        | ProtoError::UnknownKind(_),
                        Some(n),
                    ) if n <= self.buf.len() => {
                        self.buf.drain(..n);
                    }
                    _ => self.buf.clear(),
                }
                Err(e)
            }
        }
    }

    /// Drops bytes up to the next possible frame start (after a bad header), so a reader that
    /// joined a stream mid-frame can find the next frame.
    pub fn resync(&mut self) {
        let start = self
            .buf
            .windows(2)
            .skip(1)
            .position(|w| w == MAGIC)
            .map(|p| p + 1)
            .unwrap_or(self.buf.len());
        self.buf.drain(..start);
    }

    /// Bytes buffered but not yet a complete frame (a partial frame at EOF is truncation).
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}
