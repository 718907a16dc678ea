//! The stream multiplexer of the virtio-serial transport: many byte streams over the one
//! virtio-serial port `minke.control`, each of which carries the ordinary protocol of
//! [`crate::wire`] exactly as a vsock connection would.
//!
//! # Frames
//!
//! Every frame is a u32 little-endian payload length followed by a postcard-encoded
//! [`MuxFrame`], like [`crate::wire`] but with the smaller limit [`MAX_MUX_FRAME`]:
//!
//! ```text
//! +----------------------+-----------------------------------+
//! | len: u32 little-end. | payload: len bytes (MuxFrame)     |
//! +----------------------+-----------------------------------+
//! ```
//!
//! A length of 0 or above [`MAX_MUX_FRAME`], a payload that is not a `MuxFrame`, a `Data`
//! frame above [`MAX_DATA`] bytes or a session frame above [`MAX_SESSION_FRAME`] bytes is a
//! protocol error: the session ends (see below).
//!
//! # Sessions
//!
//! The line has no out-of-band signal, and either end may restart (the guest agent is
//! supervised and restarted; bytes of the dead session may still be in flight). A session
//! therefore starts with a marker that can be found in any byte stream:
//!
//! ```text
//! [PAD: SYNC_PADDING zero bytes] [MAGIC: b"minkeMUX"] [frame: Hello | Welcome | Error]
//! ```
//!
//! - The guest opens a session with `Hello { version: MUX_VERSION, nonce }`. The host answers
//!   `Welcome { version, nonce }` (same nonce) or `Error(message)` when it speaks another
//!   version. A `Welcome` whose nonce is not the guest's own is stale and ignored.
//! - The padding is longer than the longest frame, so a peer cut off in the middle of a frame
//!   completes that frame with zeros and then reads a zero length: a protocol error. A run of
//!   [`SYNC_PADDING`] zero bytes thus always ends the receiver's session; a host that sees a
//!   protocol error sends the padding alone to tell the guest to start again.
//! - After an error, or before the first session, a [`MuxDecoder`] scans for `MAGIC` and only
//!   accepts a session frame of at most [`MAX_SESSION_FRAME`] bytes right after it, looking
//!   no further ahead than that, so `MAGIC` bytes inside stale data (a copy of the minke
//!   binary, say) cannot hide the real marker.
//!
//! Ending a session closes every stream of it.
//!
//! # Streams
//!
//! Either side opens a stream to a port of the other: the host to the guest's control agent
//! (port 1024), the guest to the host's time server ([`crate::TIMESYNC_PORT`]). Stream ids are chosen by the
//! opener, odd for the host and even (non-zero) for the guest, and never reused within a
//! session.
//!
//! ```text
//! opener   Open { id, port, window }          ─►
//!                                             ◄─  Accept { id, window } | Refuse { id }
//! both     Data { id, bytes }  Credit { id, bytes }  Eof { id }  Close { id }
//! ```
//!
//! - **Flow control is per stream, by credit.** `window` is how many bytes the announcing side
//!   can buffer for the stream. A sender keeps `credit` = the peer's window + every `Credit`
//!   received − every `Data` byte sent, and never sends more; the receiver returns `Credit`
//!   as its local reader consumes the bytes. One stream whose reader is slow therefore only
//!   stops itself: the line keeps moving for every other stream, and no receiver ever has to
//!   buffer more than the window it announced. Data beyond the window is a violation that
//!   closes the stream. The opener sends no `Data` before `Accept`.
//! - `Eof` half-closes: its sender writes no more on the stream, but keeps reading.
//! - `Close`: its sender is finished with the stream in both directions and drops whatever
//!   still arrives for it; the receiver still delivers the data it already received, then
//!   closes its end. Frames for ids that are unknown or closed are ignored.

use serde::{Deserialize, Serialize};

/// Version of the multiplexer spoken by this build; both sides must agree exactly. Independent
/// of [`crate::PROTOCOL_VERSION`], which the streams inside carry on their own.
pub const MUX_VERSION: u32 = 1;

/// Name of the virtio-serial port (`-device virtserialport,name=…`), as the guest finds it in
/// `/sys/class/virtio-ports/*/name`.
pub const PORT_NAME: &str = "minke.control";

/// Kernel command-line parameter the host sets to tell the guest which transport it chose.
pub const TRANSPORT_PARAM: &str = "minke.transport";

/// Value of [`TRANSPORT_PARAM`] for the virtio-serial transport (`minke.transport=serial`).
pub const TRANSPORT_SERIAL: &str = "serial";

/// The firmware config file that says the same as [`TRANSPORT_PARAM`] out of band (for boots
/// whose command line is the medium's own, such as a UKI's): it holds [`TRANSPORT_SERIAL`].
pub const TRANSPORT_FW_CFG_NAME: &str = "opt/minke/transport";

/// Where the guest's `qemu_fw_cfg` driver shows [`TRANSPORT_FW_CFG_NAME`].
pub const TRANSPORT_FW_CFG_PATH: &str = "/sys/firmware/qemu_fw_cfg/by_name/opt/minke/transport/raw";

/// The session marker.
pub const MAGIC: [u8; 8] = *b"minkeMUX";

/// Largest payload of one frame: a full `Data` frame and its envelope.
pub const MAX_MUX_FRAME: usize = MAX_DATA + 64;

/// Largest `Data` payload.
pub const MAX_DATA: usize = 32 * 1024;

/// Largest session frame (`Hello`, `Welcome`, `Error`) accepted after [`MAGIC`].
pub const MAX_SESSION_FRAME: usize = 256;

/// Zero bytes sent before [`MAGIC`]: more than any frame, so they end any frame in progress.
pub const SYNC_PADDING: usize = 4 + MAX_MUX_FRAME + 4;

/// Receive window each side announces for a stream.
pub const DEFAULT_WINDOW: u32 = 256 * 1024;

/// Most streams open at once on one side; more `Open`s are refused.
pub const MAX_STREAMS: usize = 256;

/// Whether a kernel command line selects the virtio-serial transport
/// (`minke.transport=serial` as a whole word).
pub fn serial_transport(cmdline: &str) -> bool {
    cmdline.split_ascii_whitespace().any(|w| {
        w.split_once('=')
            .is_some_and(|(k, v)| k == TRANSPORT_PARAM && v == TRANSPORT_SERIAL)
    })
}

/// One frame of the multiplexer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MuxFrame {
    /// Guest → host: start a session (always after the padding and [`MAGIC`]).
    Hello {
        /// Multiplexer version the guest speaks.
        version: u32,
        /// Identifies this session; echoed by `Welcome`.
        nonce: u64,
    },
    /// Host → guest: the session is up.
    Welcome {
        /// Multiplexer version the host speaks.
        version: u32,
        /// The guest's nonce.
        nonce: u64,
    },
    /// Host → guest: the session is refused, with a message for the user.
    Error(String),
    /// Open stream `id` to the receiver's `port`.
    Open {
        /// New stream id (host odd, guest even).
        id: u32,
        /// Port on the receiving side.
        port: u32,
        /// Bytes the opener can buffer for this stream.
        window: u32,
    },
    /// The stream is connected.
    Accept {
        /// Stream id.
        id: u32,
        /// Bytes the acceptor can buffer for this stream.
        window: u32,
    },
    /// Nothing serves that port (or too many streams are open).
    Refuse {
        /// Stream id.
        id: u32,
    },
    /// Stream bytes; at most [`MAX_DATA`] and at most the sender's credit.
    Data {
        /// Stream id.
        id: u32,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// The receiver consumed `bytes` more bytes: the sender may send that many more.
    Credit {
        /// Stream id.
        id: u32,
        /// Bytes consumed.
        bytes: u32,
    },
    /// The sender writes no more on this stream.
    Eof {
        /// Stream id.
        id: u32,
    },
    /// The sender is finished with this stream in both directions.
    Close {
        /// Stream id.
        id: u32,
    },
}

impl MuxFrame {
    /// `Hello`, `Welcome` or `Error`: the frames that follow [`MAGIC`].
    pub fn is_session(&self) -> bool {
        matches!(
            self,
            MuxFrame::Hello { .. } | MuxFrame::Welcome { .. } | MuxFrame::Error(_)
        )
    }
}

/// Why bytes could not be decoded (or a frame encoded).
#[derive(Debug, thiserror::Error)]
pub enum MuxError {
    /// A length prefix of 0 or above the limit.
    #[error("multiplexer frame of {len} bytes is outside 1..={max}")]
    BadLength {
        /// Announced payload length.
        len: u64,
        /// The limit in force.
        max: usize,
    },
    /// The payload is not a valid frame.
    #[error("malformed multiplexer frame")]
    Malformed(#[from] postcard::Error),
    /// A `Data` frame above [`MAX_DATA`].
    #[error("multiplexer data frame of {0} bytes exceeds {MAX_DATA}")]
    DataTooLarge(usize),
}

/// Appends `frame` with its length prefix to `out`.
pub fn encode_into(frame: &MuxFrame, out: &mut Vec<u8>) -> Result<(), MuxError> {
    if let MuxFrame::Data { bytes, .. } = frame {
        if bytes.len() > MAX_DATA {
            return Err(MuxError::DataTooLarge(bytes.len()));
        }
    }
    let payload = postcard::to_stdvec(frame)?;
    let max = if frame.is_session() {
        MAX_SESSION_FRAME
    } else {
        MAX_MUX_FRAME
    };
    if payload.len() > max {
        return Err(MuxError::BadLength {
            len: payload.len() as u64,
            max,
        });
    }
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(())
}

/// `frame` as bytes (length prefix included).
pub fn encode(frame: &MuxFrame) -> Result<Vec<u8>, MuxError> {
    let mut out = Vec::new();
    encode_into(frame, &mut out)?;
    Ok(out)
}

/// The bytes that start a session: padding, [`MAGIC`], then the session frame.
pub fn session_bytes(frame: &MuxFrame) -> Result<Vec<u8>, MuxError> {
    let mut out = vec![0u8; SYNC_PADDING];
    out.extend_from_slice(&MAGIC);
    encode_into(frame, &mut out)?;
    Ok(out)
}

/// Incremental, panic-free decoder of the byte stream of one direction. It starts scanning for
/// [`MAGIC`], and goes back to scanning after every error. Feed bytes with
/// [`MuxDecoder::push`] and take frames with [`MuxDecoder::next_frame`] until it returns
/// `Ok(None)`; it then holds less than one frame plus the last push, so memory stays bounded
/// whatever the peer sends.
#[derive(Debug, Default)]
pub struct MuxDecoder {
    buf: Vec<u8>,
    /// Bytes of `buf` already consumed.
    pos: usize,
    synced: bool,
}

impl MuxDecoder {
    /// A decoder scanning for the first session marker.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.pos > 0 && (self.pos == self.buf.len() || self.pos >= 64 * 1024) {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Whether the decoder is reading frames (`false`: scanning for [`MAGIC`]).
    pub fn is_synced(&self) -> bool {
        self.synced
    }

    /// Drops the current session: scan for the next marker from here on.
    pub fn resync(&mut self) {
        self.synced = false;
    }

    /// Bytes held (for tests of the memory bound).
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The next frame, `Ok(None)` when more bytes are needed, or the protocol error that ended
    /// the session (the decoder then scans for the next marker).
    pub fn next_frame(&mut self) -> Result<Option<MuxFrame>, MuxError> {
        if !self.synced {
            return Ok(self.scan());
        }
        let rest = &self.buf[self.pos..];
        let Some(len) = rest.get(..4) else {
            return Ok(None);
        };
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        if len == 0 || len > MAX_MUX_FRAME {
            self.pos += 4.min(rest.len());
            self.synced = false;
            return Err(MuxError::BadLength {
                len: len as u64,
                max: MAX_MUX_FRAME,
            });
        }
        let Some(payload) = rest.get(4..4 + len) else {
            return Ok(None);
        };
        let frame = postcard::from_bytes::<MuxFrame>(payload);
        self.pos += 4 + len;
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                self.synced = false;
                return Err(e.into());
            }
        };
        match &frame {
            MuxFrame::Data { bytes, .. } if bytes.len() > MAX_DATA => {
                self.synced = false;
                Err(MuxError::DataTooLarge(bytes.len()))
            }
            f if f.is_session() && len > MAX_SESSION_FRAME => {
                self.synced = false;
                Err(MuxError::BadLength {
                    len: len as u64,
                    max: MAX_SESSION_FRAME,
                })
            }
            _ => Ok(Some(frame)),
        }
    }

    /// Looks for `MAGIC` + a small session frame; consumes what can never be one.
    fn scan(&mut self) -> Option<MuxFrame> {
        loop {
            let rest = &self.buf[self.pos..];
            let Some(at) = rest.windows(MAGIC.len()).position(|w| w == MAGIC) else {
                // Keep a tail that may be the start of MAGIC.
                self.pos += rest.len().saturating_sub(MAGIC.len() - 1);
                return None;
            };
            let body = &rest[at + MAGIC.len()..];
            let Some(len) = body.get(..4) else {
                self.pos += at;
                return None;
            };
            let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
            if len == 0 || len > MAX_SESSION_FRAME {
                self.pos += at + 1;
                continue;
            }
            let Some(payload) = body.get(4..4 + len) else {
                self.pos += at;
                return None;
            };
            match postcard::from_bytes::<MuxFrame>(payload) {
                Ok(f) if f.is_session() => {
                    self.pos += at + MAGIC.len() + 4 + len;
                    self.synced = true;
                    return Some(f);
                }
                _ => self.pos += at + 1,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (xorshift64*), so property tests need no dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }
        fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next() as u8).collect()
        }
    }

    fn any_frame(r: &mut Rng) -> MuxFrame {
        let id = r.next() as u32;
        match r.below(10) {
            0 => MuxFrame::Hello {
                version: r.next() as u32,
                nonce: r.next(),
            },
            1 => MuxFrame::Welcome {
                version: r.next() as u32,
                nonce: r.next(),
            },
            2 => {
                let n = r.below(100) as usize;
                MuxFrame::Error(
                    String::from_utf8_lossy(&r.bytes(n))
                        .chars()
                        .take(60)
                        .collect(),
                )
            }
            3 => MuxFrame::Open {
                id,
                port: r.next() as u32,
                window: r.next() as u32,
            },
            4 => MuxFrame::Accept {
                id,
                window: r.next() as u32,
            },
            5 => MuxFrame::Refuse { id },
            6 => {
                let n = match r.below(4) {
                    0 => MAX_DATA,
                    1 => 0,
                    _ => r.below(MAX_DATA as u64 + 1) as usize,
                };
                MuxFrame::Data {
                    id,
                    bytes: r.bytes(n),
                }
            }
            7 => MuxFrame::Credit {
                id,
                bytes: r.next() as u32,
            },
            8 => MuxFrame::Eof { id },
            _ => MuxFrame::Close { id },
        }
    }

    fn decode_all(d: &mut MuxDecoder, out: &mut Vec<MuxFrame>) -> usize {
        let mut errors = 0;
        loop {
            match d.next_frame() {
                Ok(Some(f)) => out.push(f),
                Ok(None) => return errors,
                Err(_) => errors += 1,
            }
        }
    }

    /// Property: any sequence of frames after a session marker decodes to itself, however the
    /// bytes are split.
    #[test]
    fn round_trip_in_random_pieces() {
        let mut r = Rng(0x5eed_1234_abcd_0001);
        for _ in 0..300 {
            let hello = MuxFrame::Hello {
                version: MUX_VERSION,
                nonce: r.next(),
            };
            let mut frames = vec![hello.clone()];
            let mut bytes = session_bytes(&hello).unwrap();
            for _ in 0..r.below(12) {
                let f = any_frame(&mut r);
                encode_into(&f, &mut bytes).unwrap();
                frames.push(f);
            }
            let mut d = MuxDecoder::new();
            let mut got = Vec::new();
            let mut at = 0;
            while at < bytes.len() {
                let n = (r.below(70_000) as usize + 1).min(bytes.len() - at);
                d.push(&bytes[at..at + n]);
                at += n;
                assert_eq!(decode_all(&mut d, &mut got), 0);
                assert!(d.buffered() <= 4 + MAX_MUX_FRAME);
            }
            assert_eq!(got, frames);
        }
    }

    #[test]
    fn nothing_before_the_marker_is_a_frame() {
        let mut bytes = encode(&MuxFrame::Eof { id: 1 }).unwrap();
        let welcome = MuxFrame::Welcome {
            version: 1,
            nonce: 7,
        };
        bytes.extend(session_bytes(&welcome).unwrap());
        encode_into(&MuxFrame::Close { id: 3 }, &mut bytes).unwrap();
        let mut d = MuxDecoder::new();
        d.push(&bytes);
        let mut got = Vec::new();
        assert_eq!(decode_all(&mut d, &mut got), 0);
        assert_eq!(got, vec![welcome, MuxFrame::Close { id: 3 }]);
    }

    /// A peer that died in the middle of a frame: the next session's padding completes it,
    /// ends the session with an error, and the new `Hello` is found.
    #[test]
    fn padding_recovers_from_a_frame_cut_in_half() {
        let hello = |nonce| MuxFrame::Hello { version: 1, nonce };
        let mut bytes = session_bytes(&hello(1)).unwrap();
        let big = encode(&MuxFrame::Data {
            id: 2,
            bytes: vec![7; MAX_DATA],
        })
        .unwrap();
        bytes.extend_from_slice(&big[..1000]);
        bytes.extend(session_bytes(&hello(2)).unwrap());
        let mut d = MuxDecoder::new();
        d.push(&bytes);
        let mut got = Vec::new();
        let errors = decode_all(&mut d, &mut got);
        assert!(errors >= 1);
        assert_eq!(got.first(), Some(&hello(1)));
        assert_eq!(got.last(), Some(&hello(2)));
        assert!(d.is_synced());
    }

    /// MAGIC inside stale data, followed by a plausible length, does not swallow the real
    /// marker that comes after the padding.
    #[test]
    fn magic_inside_stale_data_does_not_hide_the_marker() {
        let mut stale = Vec::new();
        stale.extend_from_slice(&MAGIC);
        stale.extend_from_slice(&200u32.to_le_bytes());
        stale.extend_from_slice(&[0xff; 10]);
        let welcome = MuxFrame::Welcome {
            version: 1,
            nonce: 9,
        };
        let mut bytes = stale;
        bytes.extend(session_bytes(&welcome).unwrap());
        let mut d = MuxDecoder::new();
        let mut got = Vec::new();
        for b in bytes.chunks(3) {
            d.push(b);
            decode_all(&mut d, &mut got);
        }
        assert_eq!(got, vec![welcome]);
    }

    #[test]
    fn bad_lengths_and_payloads_are_errors_that_resync() {
        let start = session_bytes(&MuxFrame::Hello {
            version: 1,
            nonce: 1,
        })
        .unwrap();
        for tail in [
            &0u32.to_le_bytes()[..],
            &(MAX_MUX_FRAME as u32 + 1).to_le_bytes()[..],
            &u32::MAX.to_le_bytes()[..],
            &[3, 0, 0, 0, 0xff, 0xff, 0xff][..],
        ] {
            let mut d = MuxDecoder::new();
            d.push(&start);
            assert!(d.next_frame().unwrap().is_some());
            d.push(tail);
            assert!(d.next_frame().is_err(), "{tail:?}");
            assert!(!d.is_synced());
            assert!(matches!(d.next_frame(), Ok(None)));
        }
        // A Data frame above MAX_DATA is refused by the encoder and by the decoder.
        let f = MuxFrame::Data {
            id: 1,
            bytes: vec![0; MAX_DATA + 1],
        };
        assert!(matches!(encode(&f), Err(MuxError::DataTooLarge(_))));
        let mut raw = Vec::new();
        let payload = postcard::to_stdvec(&f).unwrap();
        raw.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        raw.extend_from_slice(&payload);
        let mut d = MuxDecoder::new();
        d.push(&start);
        d.next_frame().unwrap();
        d.push(&raw);
        assert!(matches!(d.next_frame(), Err(MuxError::DataTooLarge(_))));
    }

    /// Property: random garbage, whole or in pieces, never panics and never makes the decoder
    /// hold more than one frame plus the last push.
    #[test]
    fn garbage_never_panics_and_memory_stays_bounded() {
        let mut r = Rng(0xdead_beef_0bad_f00d);
        let marker = session_bytes(&MuxFrame::Hello {
            version: 1,
            nonce: 0,
        })
        .unwrap();
        let mut d = MuxDecoder::new();
        let mut sink = Vec::new();
        for i in 0..3000 {
            let n = r.below(9000) as usize;
            let mut chunk = r.bytes(n);
            // Sometimes a marker, so the synced path sees garbage too.
            if i % 7 == 0 {
                chunk.extend_from_slice(&marker[SYNC_PADDING..]);
            }
            if i % 11 == 0 {
                chunk.extend_from_slice(&MAGIC);
            }
            d.push(&chunk);
            decode_all(&mut d, &mut sink);
            sink.clear();
            assert!(
                d.buffered() <= 4 + MAX_MUX_FRAME,
                "{} bytes held",
                d.buffered()
            );
        }
    }

    #[test]
    fn session_frames_must_be_small() {
        let long = MuxFrame::Error("x".repeat(MAX_SESSION_FRAME));
        assert!(matches!(
            session_bytes(&long),
            Err(MuxError::BadLength { .. })
        ));
        // Not even inside a session.
        let mut d = MuxDecoder::new();
        d.push(
            &session_bytes(&MuxFrame::Welcome {
                version: 1,
                nonce: 1,
            })
            .unwrap(),
        );
        assert!(d.next_frame().unwrap().is_some());
        let payload = postcard::to_stdvec(&long).unwrap();
        d.push(&(payload.len() as u32).to_le_bytes());
        d.push(&payload);
        assert!(matches!(d.next_frame(), Err(MuxError::BadLength { .. })));
    }

    #[test]
    fn transport_parameter() {
        assert!(serial_transport(
            "console=ttyS0 minke.transport=serial quiet"
        ));
        assert!(!serial_transport("console=ttyS0 quiet"));
        assert!(!serial_transport("minke.transport=serialx"));
        assert!(!serial_transport("xminke.transport=serial"));
        assert!(!serial_transport("minke.transport=vsock"));
    }
}
