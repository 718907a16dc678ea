//! Framing of the host↔guest protocol.
//!
//! On the wire every message is one frame:
//!
//! ```text
//! +----------------------+-------------------------------+
//! | len: u32 little-end. | payload: len bytes (postcard) |
//! +----------------------+-------------------------------+
//! ```
//!
//! `len` counts only the payload and must be at most [`MAX_FRAME`]; a larger value is rejected
//! before any allocation, so a hostile peer cannot make the reader allocate more than
//! `MAX_FRAME` bytes. The payload is a [`HostMsg`](crate::HostMsg) (host → guest) or a
//! [`GuestMsg`](crate::GuestMsg) (guest → host) encoded with postcard.
//!
//! A connection opens with a handshake: the connecting side sends `Hello { version, .. }`, the
//! accepting side answers `Welcome { version, .. }` when it speaks that version, or `Error` and
//! closes. Each connection then carries exactly one request and its streams (one exec, one file
//! transfer, one forwarded connection…); concurrency comes from opening more connections, and
//! flow control is the transport's own (vsock credit, Unix socket buffers, or the per-stream
//! credit of the virtio-serial multiplexer, [`crate::mux`]).

use std::io::{self, Read, Write};

use serde::{de::DeserializeOwned, Serialize};

/// Version spoken by this build; both sides must agree exactly.
pub const PROTOCOL_VERSION: u32 = 2;

/// Hard maximum payload size of one frame (1 MiB).
pub const MAX_FRAME: usize = 1 << 20;

/// Largest chunk of stream data (stdin/stdout/file bytes) put in one frame. Well below
/// [`MAX_FRAME`] so the envelope always fits.
pub const MAX_CHUNK: usize = 64 * 1024;

/// Why a frame could not be read or decoded.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The transport failed (the OS error is kept).
    #[error("transport error")]
    Io(#[from] io::Error),
    /// The peer closed the connection cleanly between frames.
    #[error("connection closed by peer")]
    Closed,
    /// The peer announced a frame larger than the limit.
    #[error("frame of {len} bytes exceeds the {max} byte limit")]
    TooLarge {
        /// Announced payload length.
        len: u64,
        /// The limit in force.
        max: usize,
    },
    /// The payload is not a valid message.
    #[error("malformed message")]
    Malformed(#[from] postcard::Error),
}

/// Encodes `msg` as one complete frame (length prefix included).
pub fn encode_frame<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let mut buf = postcard::to_extend(msg, vec![0u8; 4])?;
    let len = buf.len() - 4;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge {
            len: len as u64,
            max: MAX_FRAME,
        });
    }
    buf[..4].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(buf)
}

/// Decodes one payload (without its length prefix).
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, FrameError> {
    Ok(postcard::from_bytes(payload)?)
}

/// Writes `msg` as one frame and flushes.
pub fn write_frame<W: Write, T: Serialize>(w: &mut W, msg: &T) -> Result<(), FrameError> {
    let frame = encode_frame(msg)?;
    w.write_all(&frame)?;
    w.flush()?;
    Ok(())
}

/// Reads one frame and decodes it. Returns [`FrameError::Closed`] on a clean EOF before the
/// first byte of a frame; an EOF inside a frame is an I/O error (`UnexpectedEof`).
pub fn read_frame<R: Read, T: DeserializeOwned>(r: &mut R) -> Result<T, FrameError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Err(FrameError::Closed),
            Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge {
            len: len as u64,
            max: MAX_FRAME,
        });
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)?;
    decode_payload(&payload)
}

/// Incremental decoder for callers that receive bytes in arbitrary pieces (fuzzing, non-blocking
/// readers): feed bytes with [`FrameDecoder::push`], take whole messages with
/// [`FrameDecoder::next_msg`]. Buffers at most one frame plus its prefix.
#[derive(Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
}

impl FrameDecoder {
    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Returns the next complete message, `Ok(None)` when more bytes are needed, or an error
    /// for an oversize or malformed frame (after which the stream is unusable).
    pub fn next_msg<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_le_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if len > MAX_FRAME {
            return Err(FrameError::TooLarge {
                len: len as u64,
                max: MAX_FRAME,
            });
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        let msg = decode_payload(&self.buf[4..4 + len]);
        self.buf.drain(..4 + len);
        msg.map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::{ExecRequest, GuestMsg, HostMsg};

    #[test]
    fn round_trip_through_a_byte_pipe() {
        let msgs = vec![
            HostMsg::Hello {
                version: PROTOCOL_VERSION,
                client: "test".into(),
                nonce: [1; 32],
                proof: [0; 32],
            },
            HostMsg::Exec(ExecRequest {
                argv: vec!["true".into()],
                ..Default::default()
            }),
            HostMsg::Stdin(vec![1, 2, 3]),
            HostMsg::StdinEof,
        ];
        let mut bytes = Vec::new();
        for m in &msgs {
            write_frame(&mut bytes, m).unwrap();
        }
        let mut r = &bytes[..];
        for m in &msgs {
            let got: HostMsg = read_frame(&mut r).unwrap();
            assert_eq!(&got, m);
        }
        assert!(matches!(
            read_frame::<_, HostMsg>(&mut r),
            Err(FrameError::Closed)
        ));
    }

    #[test]
    fn oversize_frame_is_rejected_before_allocation() {
        let bytes = u32::MAX.to_le_bytes();
        let err = read_frame::<_, GuestMsg>(&mut &bytes[..]).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn truncated_frame_is_an_error() {
        let mut bytes = Vec::new();
        write_frame(&mut bytes, &GuestMsg::Stdout(vec![7; 100])).unwrap();
        bytes.truncate(50);
        assert!(read_frame::<_, GuestMsg>(&mut &bytes[..]).is_err());
    }

    #[test]
    fn garbage_never_panics() {
        // A cheap deterministic sweep; the fuzz targets go much further.
        let mut x: u32 = 0x1234_5678;
        for n in 0..2000usize {
            let mut bytes = Vec::with_capacity(n % 64 + 4);
            bytes.extend_from_slice(&((n % 64) as u32).to_le_bytes());
            for _ in 0..(n % 64) {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                bytes.push(x as u8);
            }
            let _ = read_frame::<_, HostMsg>(&mut &bytes[..]);
            let mut d = FrameDecoder::default();
            d.push(&bytes);
            let _ = d.next_msg::<GuestMsg>();
        }
    }

    #[test]
    fn incremental_decoder_handles_split_input() {
        let mut bytes = Vec::new();
        write_frame(&mut bytes, &GuestMsg::Exit { code: 42 }).unwrap();
        write_frame(&mut bytes, &GuestMsg::Stderr(b"x".to_vec())).unwrap();
        let mut d = FrameDecoder::default();
        let mut out = Vec::new();
        for b in bytes {
            d.push(&[b]);
            while let Some(m) = d.next_msg::<GuestMsg>().unwrap() {
                out.push(m);
            }
        }
        assert_eq!(
            out,
            vec![GuestMsg::Exit { code: 42 }, GuestMsg::Stderr(b"x".to_vec())]
        );
    }
}
