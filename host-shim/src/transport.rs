//! Byte streams to the guest's agents, whatever carries them.
//!
//! **Hybrid vsock** (vhost-user backend, Firecracker's convention). Host → guest: connect to
//! the Unix socket `vm.vsock` and write one ASCII line naming the guest port; the backend
//! answers with one line naming the host-side port it allocated, then the stream is the guest
//! connection:
//!
//! ```text
//! host → backend:  "CONNECT 1024\n"
//! backend → host:  "OK 1073741824\n"      (any u32; anything else, or EOF, is a refusal)
//! ```
//!
//! The reply is read one byte at a time so no byte of the guest's stream is consumed; a reply
//! longer than [`MAX_REPLY`] is an error. When the guest has no listener on the port the
//! backend closes the socket without a reply. Guest → host: the backend connects to the Unix
//! socket `vm.vsock_PORT`, which the shim listens on.
//!
//! **Kernel vsock**: an `AF_VSOCK` stream to `(cid, port)`.
//!
//! **virtio-serial**: a stream of the multiplexer the booting shim runs on QEMU's
//! `serial.sock` ([`crate::serial`]), handed over as one end of a Unix socket pair. Processes
//! that attach to such a VM use hybrid vsock on its `vm.vsock`, which the booting shim serves
//! on top of the multiplexer.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Longest `OK <port>\n` reply accepted.
pub const MAX_REPLY: usize = 32;

/// Why a connection to a guest port failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The transport socket could not be reached.
    #[error("cannot connect to {path} (is the VM running?)")]
    Socket {
        /// Socket path.
        path: PathBuf,
        /// OS error.
        source: io::Error,
    },
    /// The backend closed the connection: nothing listens on that guest port yet.
    #[error("guest port {port} refused the connection (is its agent up?)")]
    Refused {
        /// Guest port.
        port: u32,
    },
    /// The backend answered something other than `OK <port>`.
    #[error("unexpected hybrid vsock reply {reply:?} for guest port {port}")]
    BadReply {
        /// Guest port.
        port: u32,
        /// What it said (lossy).
        reply: String,
    },
    /// I/O failed during the handshake.
    #[error("hybrid vsock handshake for guest port {port} failed")]
    Io {
        /// Guest port.
        port: u32,
        /// OS error.
        source: io::Error,
    },
    /// The backend did not answer `CONNECT` in time.
    #[error("no answer to the connection request for guest port {port} within {timeout:?}")]
    Timeout {
        /// Guest port.
        port: u32,
        /// Limit.
        timeout: Duration,
    },
    /// The virtio-serial multiplexer could not open the stream.
    #[error("cannot open guest port {port} over the virtio-serial transport")]
    Serial {
        /// Guest port.
        port: u32,
        /// What went wrong.
        source: minke_mux::OpenError,
    },
}

/// A bidirectional byte stream to a guest agent.
pub trait Duplex: Read + Write + Send + std::fmt::Debug {
    /// Another handle to the same stream (for a reader and a writer on two threads).
    fn try_clone_box(&self) -> io::Result<Box<dyn Duplex>>;
    /// Half-closes the host → guest direction.
    fn shutdown_write(&self) -> io::Result<()>;
    /// Read timeout for the next reads.
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()>;
    /// Write timeout for the next writes.
    fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()>;
}

impl Duplex for UnixStream {
    fn try_clone_box(&self) -> io::Result<Box<dyn Duplex>> {
        Ok(Box::new(self.try_clone()?))
    }
    fn shutdown_write(&self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        UnixStream::set_read_timeout(self, t)
    }
    fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        UnixStream::set_write_timeout(self, t)
    }
}

impl Duplex for vsock::VsockStream {
    fn try_clone_box(&self) -> io::Result<Box<dyn Duplex>> {
        Ok(Box::new(self.try_clone()?))
    }
    fn shutdown_write(&self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        vsock::VsockStream::set_read_timeout(self, t)
    }
    fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        vsock::VsockStream::set_write_timeout(self, t)
    }
}

/// Opens streams to guest ports.
#[derive(Debug, Clone)]
pub enum Connector {
    /// Hybrid vsock through the vhost-user backend's Unix socket.
    Hybrid {
        /// `vm.vsock` path.
        uds: PathBuf,
    },
    /// Kernel vsock.
    Kernel {
        /// Guest CID.
        cid: u32,
    },
    /// virtio-serial, through the multiplexer of the shim that booted the VM.
    Serial {
        /// The multiplexer on QEMU's `serial.sock`.
        mux: minke_mux::Mux,
    },
}

impl Connector {
    /// Opens a stream to guest `port`, waiting at most `timeout` for the transport to accept
    /// it (the hybrid `OK` line).
    pub fn connect(&self, port: u32, timeout: Duration) -> Result<Box<dyn Duplex>, ConnectError> {
        match self {
            Connector::Hybrid { uds } => Ok(Box::new(hybrid_connect(uds, port, timeout)?)),
            Connector::Kernel { cid } => vsock::VsockStream::connect_with_cid_port(*cid, port)
                .map(|s| Box::new(s) as Box<dyn Duplex>)
                .map_err(|e| match e.raw_os_error() {
                    Some(libc::ECONNREFUSED) | Some(libc::ECONNRESET) => {
                        ConnectError::Refused { port }
                    }
                    _ => ConnectError::Io { port, source: e },
                }),
            Connector::Serial { mux } => mux
                .connect(port, timeout)
                .map(|s| Box::new(s) as Box<dyn Duplex>)
                .map_err(|e| match e {
                    minke_mux::OpenError::Refused { port } => ConnectError::Refused { port },
                    minke_mux::OpenError::Timeout { port, timeout } => {
                        ConnectError::Timeout { port, timeout }
                    }
                    source => ConnectError::Serial { port, source },
                }),
        }
    }
}

/// Connects to `uds` and performs the `CONNECT`/`OK` exchange for guest `port`, waiting at
/// most `timeout` for the reply (the backend may hold a request while the guest's driver is
/// not ready).
pub fn hybrid_connect(
    uds: &Path,
    port: u32,
    timeout: Duration,
) -> Result<UnixStream, ConnectError> {
    // vhost-device-vsock 0.3.0 now and then closes a new connection before reading its
    // CONNECT line. Nothing reached the guest then, so the exchange is tried again on a fresh
    // connection, a bounded number of times; a refusal after the line was read is final.
    let mut dropped = 0;
    loop {
        match hybrid_connect_once(uds, port, timeout) {
            Err(ConnectError::Io { source, .. })
                if source.kind() == io::ErrorKind::BrokenPipe && dropped < DROPS_TRIED =>
            {
                dropped += 1;
            }
            other => return other,
        }
    }
}

/// Connections the vsock backend may drop before reading `CONNECT` before one counts.
const DROPS_TRIED: u32 = 3;

fn hybrid_connect_once(
    uds: &Path,
    port: u32,
    timeout: Duration,
) -> Result<UnixStream, ConnectError> {
    let mut s = UnixStream::connect(uds).map_err(|source| ConnectError::Socket {
        path: uds.to_path_buf(),
        source,
    })?;
    let io = |source| ConnectError::Io { port, source };
    s.set_read_timeout(Some(timeout)).map_err(io)?;
    hybrid_handshake(&mut s, port).map_err(|e| match e {
        ConnectError::Io { source, .. }
            if matches!(
                source.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            ConnectError::Timeout { port, timeout }
        }
        e => e,
    })?;
    s.set_read_timeout(None).map_err(io)?;
    Ok(s)
}

/// Runs the `CONNECT <port>\n` → `OK <hostport>\n` exchange on an open stream; returns the
/// host-side port the backend reported.
pub fn hybrid_handshake<S: Read + Write>(s: &mut S, port: u32) -> Result<u32, ConnectError> {
    let io = |source| ConnectError::Io { port, source };
    s.write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(io)?;
    let mut line = Vec::with_capacity(MAX_REPLY);
    loop {
        let mut b = [0u8; 1];
        match s.read(&mut b) {
            Ok(0) if line.is_empty() => return Err(ConnectError::Refused { port }),
            Ok(0) => {
                return Err(ConnectError::BadReply {
                    port,
                    reply: String::from_utf8_lossy(&line).into_owned(),
                })
            }
            Ok(_) if b[0] == b'\n' => break,
            Ok(_) => {
                line.push(b[0]);
                if line.len() > MAX_REPLY {
                    return Err(ConnectError::BadReply {
                        port,
                        reply: String::from_utf8_lossy(&line).into_owned(),
                    });
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                return Err(ConnectError::Refused { port })
            }
            Err(e) => return Err(io(e)),
        }
    }
    parse_ok(&line).ok_or_else(|| ConnectError::BadReply {
        port,
        reply: String::from_utf8_lossy(&line).into_owned(),
    })
}

fn parse_ok(line: &[u8]) -> Option<u32> {
    let rest = line.strip_prefix(b"OK ")?;
    let s = std::str::from_utf8(rest).ok()?;
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;
    use std::os::unix::net::UnixListener;

    const T: Duration = Duration::from_secs(10);

    #[test]
    fn silent_backend_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm.vsock");
        let l = UnixListener::bind(&path).unwrap();
        let h = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut b = [0u8; 16];
            let _ = s.read(&mut b);
            let _ = s.read(&mut b); // hold the connection until the client gives up
        });
        let e = hybrid_connect(&path, 1024, Duration::from_millis(50)).unwrap_err();
        assert!(matches!(e, ConnectError::Timeout { port: 1024, .. }), "{e}");
        h.join().unwrap();
    }

    /// A fake backend: reads one CONNECT line, answers `reply`, then echoes.
    fn fake_backend(
        reply: &'static [u8],
    ) -> (tempfile::TempDir, PathBuf, std::thread::JoinHandle<String>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm.vsock");
        let l = UnixListener::bind(&path).unwrap();
        let h = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut r = io::BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            let mut w = s;
            w.write_all(reply).unwrap();
            if reply.ends_with(b"hello") {
                let mut buf = [0u8; 5];
                r.read_exact(&mut buf).unwrap();
                w.write_all(&buf).unwrap();
            }
            line
        });
        (dir, path, h)
    }

    #[test]
    fn ok_reply_then_stream_is_the_guest_connection() {
        let (_d, path, h) = fake_backend(b"OK 1073741824\nhello");
        let mut s = hybrid_connect(&path, 1024, T).unwrap();
        let mut first = [0u8; 5];
        s.read_exact(&mut first).unwrap();
        assert_eq!(
            &first, b"hello",
            "bytes after the OK line belong to the guest stream"
        );
        s.write_all(b"12345").unwrap();
        let mut echo = [0u8; 5];
        s.read_exact(&mut echo).unwrap();
        assert_eq!(&echo, b"12345");
        assert_eq!(h.join().unwrap(), "CONNECT 1024\n");
    }

    #[test]
    fn close_without_reply_is_refused() {
        let (_d, path, h) = fake_backend(b"");
        let e = hybrid_connect(&path, 5, T).unwrap_err();
        assert!(matches!(e, ConnectError::Refused { port: 5 }), "{e}");
        h.join().unwrap();
    }

    #[test]
    fn bad_and_overlong_replies_are_errors() {
        for reply in [
            &b"NO 1\n"[..],
            b"OK \n",
            b"OK 12x\n",
            b"OK 99999999999\n",
            &[b'O'; 100],
        ] {
            let (_d, path, h) = fake_backend(reply);
            let e = hybrid_connect(&path, 9, T).unwrap_err();
            assert!(matches!(e, ConnectError::BadReply { .. }), "{reply:?}: {e}");
            h.join().unwrap();
        }
    }

    #[test]
    fn missing_socket_says_so() {
        let e = hybrid_connect(Path::new("/nonexistent/vm.vsock"), 1024, T).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("cannot connect to /nonexistent/vm.vsock"),
            "{e}"
        );
    }
}
