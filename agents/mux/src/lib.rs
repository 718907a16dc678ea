//! minke-mux: many byte streams over one ordered byte pipe — the engine of the virtio-serial
//! transport, run by the host shim on QEMU's `serial.sock` and by the guest's serial agent on
//! `/dev/vportNpM`. The frames and the session and credit rules are defined (and documented)
//! in [`minke_protocol::mux`]; this crate moves the bytes.
//!
//! Each stream of the line is bridged to a local Unix stream socket: on the host, one end of a
//! socket pair whose other end the shim uses as it would a vsock connection; in the guest, a
//! connection to the agent that serves the port. Per stream, one thread copies the local
//! socket into the line and another copies the line into the local socket; one reader thread
//! decodes the line and one writer thread sends what the streams queued, a chunk per stream
//! in turn. The reader never blocks on a local socket: what arrives for a stream waits in that
//! stream's queue, which its announced window bounds. So a slow local reader only stalls its
//! own stream, and the memory a peer can make this side hold is bounded whatever it sends.
//!
//! **Invariant:** std only — no syscalls of its own, no knowledge of QEMU or of the agents;
//! the two roles differ only in who says `Hello` and in their stream id parity.
//! **Invariant:** no input from the line panics or grows memory without bound: bad frames end
//! the session, windows bound every queue, and at most [`MAX_STREAMS`] streams exist.

#![forbid(unsafe_code)]

pub mod connect;
mod pump;
mod reader;
mod session;
mod state;
mod stream;
mod writer;

#[cfg(test)]
mod testutil;

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use minke_protocol::mux::MAX_STREAMS;

use state::{Shared, State};
use stream::{Phase, Stream};

/// Which end of the line this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The host: answers `Hello`, opens odd stream ids.
    Host,
    /// The guest: says `Hello`, opens even stream ids.
    Guest,
}

/// The byte pipe, as two handles.
pub struct Line {
    /// What the peer sends.
    pub reader: Box<dyn Read + Send>,
    /// Where to send.
    pub writer: Box<dyn Write + Send>,
    /// Called when `reader` reaches end of file. A guest's virtio-serial port reads EOF while
    /// no host is connected: block until one is and return `true` (a new session starts), or
    /// return `false` to stop. `None`: stop at end of file.
    pub wait_peer: Option<Box<dyn FnMut() -> bool + Send>>,
}

/// Serves streams the peer opens: given the port, returns the local socket to bridge, or an
/// error to refuse the stream.
pub type Acceptor = Arc<dyn Fn(u32) -> io::Result<UnixStream> + Send + Sync>;

/// Why a stream could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The line is gone for good.
    #[error("the serial line is closed (has the VM stopped?)")]
    Closed,
    /// No session with the peer yet.
    #[error("no multiplexer session over the serial line within {0:?} (is the guest's serial agent up?)")]
    NoSession(Duration),
    /// The host refused the guest's session.
    #[error("the host refused the multiplexer session: {0}")]
    SessionRefused(String),
    /// Nothing serves that port.
    #[error("port {port} refused the stream (is its agent up?)")]
    Refused {
        /// The port.
        port: u32,
    },
    /// The peer did not answer in time.
    #[error("port {port} did not answer within {timeout:?}")]
    Timeout {
        /// The port.
        port: u32,
        /// The limit.
        timeout: Duration,
    },
    /// The session ended while the stream was being opened.
    #[error("the multiplexer session was reset while opening port {port}")]
    Reset {
        /// The port.
        port: u32,
    },
    /// [`MAX_STREAMS`] streams are open.
    #[error("too many open streams (at most {MAX_STREAMS})")]
    TooMany,
    /// A local socket or thread could not be made.
    #[error("cannot set up the stream")]
    Local(#[from] io::Error),
}

/// Counters of a [`Mux`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MuxStats {
    /// Sessions established.
    pub sessions: u64,
    /// Protocol errors seen on the line (each ends the session in progress).
    pub protocol_errors: u64,
    /// The most recent protocol error.
    pub last_error: Option<String>,
    /// Streams this side opened that the peer accepted.
    pub opened: u64,
    /// Streams the peer opened that this side accepted.
    pub accepted: u64,
    /// Streams open now.
    pub streams: usize,
}

/// A multiplexer running on one line; clones share it.
#[derive(Clone)]
pub struct Mux {
    sh: Arc<Shared>,
}

impl std::fmt::Debug for Mux {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mux")
            .field("role", &self.sh.role)
            .field("stats", &self.stats())
            .finish()
    }
}

/// Starts a named thread (one non-generic function, so each thread body costs no spawn code
/// of its own in the in-guest binary).
fn spawn(name: &str, f: Box<dyn FnOnce() + Send>) -> io::Result<()> {
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(f)
        .map(drop)
}

impl Mux {
    /// Starts the reader and writer threads on `line`; streams the peer opens are served by
    /// `acceptor`. A guest starts by asking for a session.
    pub fn start(role: Role, line: Line, acceptor: Acceptor) -> io::Result<Mux> {
        let st = State {
            next_id: match role {
                Role::Host => 1,
                Role::Guest => 2,
            },
            ..State::default()
        };
        let sh = Arc::new(Shared::new(role, st, acceptor));
        if role == Role::Guest {
            session::new_guest_session(&mut sh.lock());
        }
        let Line {
            reader,
            writer,
            wait_peer,
        } = line;
        let w = sh.clone();
        spawn(
            "mux-writer",
            Box::new(move || writer::writer_loop(&w, writer)),
        )?;
        let r = sh.clone();
        spawn(
            "mux-reader",
            Box::new(move || reader::reader_loop(&r, reader, wait_peer)),
        )?;
        Ok(Mux { sh })
    }

    /// Waits until a session with the peer is up.
    pub fn wait_up(&self, timeout: Duration) -> Result<(), OpenError> {
        let deadline = Instant::now() + timeout;
        let mut st = self.sh.lock();
        loop {
            if st.closed {
                return Err(OpenError::Closed);
            }
            if let Some(m) = &st.refused {
                return Err(OpenError::SessionRefused(m.clone()));
            }
            if st.up {
                return Ok(());
            }
            st = self
                .sh
                .wait_until(st, deadline)
                .ok_or(OpenError::NoSession(timeout))?;
        }
    }

    /// Waits until the line is closed for good (returns at once if it is).
    pub fn wait_closed(&self) {
        let mut st = self.sh.lock();
        while !st.closed {
            st = self.sh.wait(st);
        }
    }

    /// Opens a stream to the peer's `port`, waiting at most `timeout` for a session and for
    /// the peer's answer. Bridge it with [`Opened::bridge`].
    pub fn open(&self, port: u32, timeout: Duration) -> Result<Opened, OpenError> {
        let deadline = Instant::now() + timeout;
        self.wait_up(timeout)?;
        let mut st = self.sh.lock();
        if !st.up {
            return Err(OpenError::Reset { port });
        }
        if st.streams.len() >= MAX_STREAMS {
            return Err(OpenError::TooMany);
        }
        let mut id = st.next_id;
        while st.streams.contains(id) {
            id = id.wrapping_add(2).max(2 - (id & 1));
        }
        st.next_id = id.wrapping_add(2).max(2 - (id & 1));
        let epoch = st.epoch;
        let mut s = Stream::new(port, Phase::Opening, 0);
        s.send_open = true;
        st.streams.insert(id, s);
        self.sh.wake();
        loop {
            let Some(s) = st.live(id, epoch) else {
                return Err(OpenError::Reset { port });
            };
            match s.phase {
                Phase::Open => {
                    st.stats.opened += 1;
                    return Ok(Opened {
                        sh: self.sh.clone(),
                        id,
                        port,
                        epoch,
                        bridged: false,
                    });
                }
                Phase::Refused => {
                    st.streams.remove(id);
                    return Err(OpenError::Refused { port });
                }
                Phase::Opening => {}
                Phase::Accepting | Phase::Done => return Err(OpenError::Reset { port }),
            }
            st = match self.sh.wait_until(st, deadline) {
                Some(g) => g,
                None => {
                    let mut st = self.sh.lock();
                    if let Some(s) = st.live(id, epoch).filter(|s| s.phase == Phase::Opening) {
                        // The peer may still accept: tell it the stream is over.
                        s.phase = Phase::Done;
                        s.send_close = true;
                        self.sh.wake();
                        return Err(OpenError::Timeout { port, timeout });
                    }
                    st
                }
            };
        }
    }

    /// Opens a stream to the peer's `port` and returns the local end of a socket pair bridged
    /// to it: reading, writing, half-closing and closing it act on the stream.
    pub fn connect(&self, port: u32, timeout: Duration) -> Result<UnixStream, OpenError> {
        let opened = self.open(port, timeout)?;
        let (mine, bridged) = UnixStream::pair()?;
        opened.bridge(bridged)?;
        Ok(mine)
    }

    /// Current counters.
    pub fn stats(&self) -> MuxStats {
        let st = self.sh.lock();
        let mut s = st.stats.clone();
        s.streams = st.streams.len();
        s
    }

    /// Whether a session is up.
    pub fn is_up(&self) -> bool {
        self.sh.lock().up
    }

    /// Stops for good: every stream is shut down and the writer ends. (The reader ends when
    /// the line reports end of file or an error; close the line to make it.)
    pub fn close(&self) {
        let mut st = self.sh.lock();
        st.end_session();
        st.closed = true;
        self.sh.wake();
    }
}

/// A stream the peer accepted, not yet bridged; dropping it closes the stream.
#[derive(Debug)]
pub struct Opened {
    sh: Arc<Shared>,
    id: u32,
    port: u32,
    epoch: u64,
    bridged: bool,
}

impl Opened {
    /// The stream id (unique within the session).
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Bridges `local` to the stream: what is written to its peer socket reaches the peer's
    /// port, and what the peer sends can be read from it.
    pub fn bridge(mut self, local: UnixStream) -> Result<(), OpenError> {
        self.bridged = true;
        let mut st = self.sh.lock();
        let Some(s) = st.live(self.id, self.epoch) else {
            let _ = local.shutdown(Shutdown::Both);
            return Err(OpenError::Reset { port: self.port });
        };
        if s.phase != Phase::Open {
            let _ = local.shutdown(Shutdown::Both);
            return Err(OpenError::Reset { port: self.port });
        }
        pump::start_pumps(&self.sh, &mut st, self.id, self.epoch, local);
        Ok(())
    }
}

impl Drop for Opened {
    fn drop(&mut self) {
        if !self.bridged {
            let mut st = self.sh.lock();
            if let Some(s) = st.live(self.id, self.epoch) {
                s.phase = Phase::Done;
                s.close();
            }
            self.sh.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    use std::time::Duration;

    use minke_protocol::mux::{session_bytes, MuxFrame, MUX_VERSION};

    use crate::testutil::{echo_acceptor, line, pair, pattern, round_trip, T};
    use crate::{Mux, OpenError, Role};

    #[test]
    fn streams_both_ways_with_half_close() {
        let (host, guest, _l) = pair(echo_acceptor(), echo_acceptor());
        let mut a = host
            .connect(1024, T)
            .unwrap_or_else(|e| panic!("{e}: {:?} {:?}", guest.stats(), host.stats()));
        round_trip(&mut a, &pattern(1_000_000, 1));
        let mut b = guest
            .connect(1025, T)
            .unwrap_or_else(|e| panic!("{e}: {:?} {:?}", guest.stats(), host.stats()));
        round_trip(&mut b, b"hello from the guest");
        let mut empty = host.connect(5, T).unwrap();
        round_trip(&mut empty, b"");
        assert_eq!(host.stats().sessions, 1);
        assert_eq!(host.stats().opened, 2);
        assert_eq!(host.stats().accepted, 1);
    }

    #[test]
    fn refused_port_is_refused() {
        let (host, guest, _l) = pair(echo_acceptor(), echo_acceptor());
        assert!(matches!(
            host.connect(0, T),
            Err(OpenError::Refused { port: 0 })
        ));
        assert!(matches!(
            guest.connect(0, T),
            Err(OpenError::Refused { port: 0 })
        ));
        // The line still works afterwards.
        round_trip(&mut host.connect(1, T).unwrap(), b"x");
    }

    /// The opener of a stream gets its answer within the timeout, or an error.
    #[test]
    fn silent_peer_times_out() {
        let (h, g) = UnixStream::pair().unwrap();
        let host = Mux::start(Role::Host, line(h), echo_acceptor()).unwrap();
        let mut raw = g;
        raw.write_all(
            &session_bytes(&MuxFrame::Hello {
                version: MUX_VERSION,
                nonce: 5,
            })
            .unwrap(),
        )
        .unwrap();
        host.wait_up(T).unwrap();
        let e = host.connect(1024, Duration::from_millis(100)).unwrap_err();
        assert!(matches!(e, OpenError::Timeout { port: 1024, .. }), "{e}");
        drop(raw);
        host.wait_closed();
        assert!(matches!(host.connect(1, T), Err(OpenError::Closed)));
    }
}
