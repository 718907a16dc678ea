//! The byte streams agents talk over: a small `Conn` trait (read, write, clone, half-close)
//! implemented by AF_VSOCK streams in the guest and by Unix/TCP sockets in tests, so every
//! conversation handler is generic over its transport.
//!
//! Which transport reaches the host is decided once per boot, from the kernel command line
//! the host sets: `minke.transport=serial` selects the virtio-serial transport, anything else
//! vsock. Under the serial transport the serial agent (`crate::serial`) carries every stream
//! over the one virtio-serial port, and the agents meet it on Unix sockets in
//! [`RUN_DIR`]: a listening agent binds [`port_socket`]`(port)` instead of a vsock port, and
//! an agent that connects to the host goes through [`HOST_SOCKET`]. [`HostListener`] and
//! [`connect_host`] hide the difference, so an agent has one code path for both.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::OnceLock;

use crate::sys;

/// Directory of the serial transport's Unix sockets.
pub const RUN_DIR: &str = "/run/minke";

/// Where the serial agent takes `CONNECT <port>` requests for host ports.
pub const HOST_SOCKET: &str = "/run/minke/host.sock";

/// How long a connection to the host waits for the serial agent's socket to appear.
const SERIAL_SOCKET_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Where an agent listening on `port` takes the host's streams under the serial transport.
pub fn port_socket(port: u32) -> PathBuf {
    PathBuf::from(format!("{RUN_DIR}/port-{port}.sock"))
}

/// Whether the host chose the virtio-serial transport for this boot (read once from
/// `/proc/cmdline`, or from the firmware config where the command line is the boot medium's).
pub fn serial_transport() -> bool {
    static SERIAL: OnceLock<bool> = OnceLock::new();
    *SERIAL.get_or_init(|| {
        std::fs::read_to_string("/proc/cmdline")
            .is_ok_and(|c| minke_protocol::mux::serial_transport(&c))
            || std::fs::read(minke_protocol::mux::TRANSPORT_FW_CFG_PATH).is_ok_and(|v| {
                v.strip_suffix(b"\0").unwrap_or(&v)
                    == minke_protocol::mux::TRANSPORT_SERIAL.as_bytes()
            })
    })
}

/// The transport in words, for messages.
pub fn transport_name() -> &'static str {
    if serial_transport() {
        "the virtio-serial transport"
    } else {
        "vsock"
    }
}

/// A full-duplex byte stream one conversation runs on.
pub trait Conn: Read + Write + AsFd + Send + Sized + 'static {
    /// A second handle on the same stream (for a reader and a writer thread).
    fn try_clone(&self) -> io::Result<Self>;
    /// Half- or fully closes the stream.
    fn shutdown(&self, how: Shutdown) -> io::Result<()>;
}

impl Conn for UnixStream {
    fn try_clone(&self) -> io::Result<Self> {
        UnixStream::try_clone(self)
    }
    fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        UnixStream::shutdown(self, how)
    }
}

impl Conn for TcpStream {
    fn try_clone(&self) -> io::Result<Self> {
        TcpStream::try_clone(self)
    }
    fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        TcpStream::shutdown(self, how)
    }
}

/// A connected AF_VSOCK stream socket.
#[derive(Debug)]
pub struct VsockStream(OwnedFd);

impl VsockStream {
    /// Connects to `cid:port`.
    pub fn connect(cid: u32, port: u32) -> io::Result<Self> {
        sys::vsock_connect(cid, port).map(VsockStream)
    }
}

impl AsFd for VsockStream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl Read for VsockStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match rustix::io::read(&self.0, &mut *buf) {
                Err(rustix::io::Errno::INTR) => continue,
                r => return Ok(r?),
            }
        }
    }
}

impl Write for VsockStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        loop {
            match rustix::io::write(&self.0, buf) {
                Err(rustix::io::Errno::INTR) => continue,
                r => return Ok(r?),
            }
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Conn for VsockStream {
    fn try_clone(&self) -> io::Result<Self> {
        Ok(VsockStream(rustix::io::fcntl_dupfd_cloexec(&self.0, 0)?))
    }
    fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        let how = match how {
            Shutdown::Read => rustix::net::Shutdown::Read,
            Shutdown::Write => rustix::net::Shutdown::Write,
            Shutdown::Both => rustix::net::Shutdown::Both,
        };
        Ok(rustix::net::shutdown(&self.0, how)?)
    }
}

/// A listening AF_VSOCK socket.
#[derive(Debug)]
pub struct VsockListener(OwnedFd);

impl VsockListener {
    /// Listens on `port` for any local CID.
    pub fn bind(port: u32) -> io::Result<Self> {
        sys::vsock_listen(port).map(VsockListener)
    }

    /// Accepts a connection; returns it with the peer's CID.
    pub fn accept(&self) -> io::Result<(VsockStream, u32)> {
        let (fd, cid, _port) = sys::vsock_accept(self.0.as_fd())?;
        Ok((VsockStream(fd), cid))
    }
}

/// A stream to or from the host, whichever transport carries it.
#[derive(Debug)]
pub enum HostConn {
    /// AF_VSOCK.
    Vsock(VsockStream),
    /// A Unix socket bridged to the host by the serial agent.
    Unix(UnixStream),
}

impl Read for HostConn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            HostConn::Vsock(s) => s.read(buf),
            HostConn::Unix(s) => s.read(buf),
        }
    }
}

impl Write for HostConn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            HostConn::Vsock(s) => s.write(buf),
            HostConn::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsFd for HostConn {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            HostConn::Vsock(s) => s.as_fd(),
            HostConn::Unix(s) => s.as_fd(),
        }
    }
}

impl Conn for HostConn {
    fn try_clone(&self) -> io::Result<Self> {
        Ok(match self {
            HostConn::Vsock(s) => HostConn::Vsock(Conn::try_clone(s)?),
            HostConn::Unix(s) => HostConn::Unix(s.try_clone()?),
        })
    }
    fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        match self {
            HostConn::Vsock(s) => Conn::shutdown(s, how),
            HostConn::Unix(s) => s.shutdown(how),
        }
    }
}

/// Who connected to a [`HostListener`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// The host: vsock CID 2, or the serial agent's Unix socket, which only root can reach
    /// (mode 0600 in `/run/minke`) and which carries only the host's streams.
    Host,
    /// Another vsock CID (a sibling VM, or the guest itself).
    Cid(u32),
}

/// Where an agent takes the host's streams: a vsock port, or its Unix socket under the serial
/// transport.
#[derive(Debug)]
pub enum HostListener {
    /// AF_VSOCK.
    Vsock(VsockListener),
    /// `/run/minke/port-N.sock`.
    Unix(UnixListener),
}

impl HostListener {
    /// Listens for the host on `port` over the transport of this boot.
    pub fn bind(port: u32) -> io::Result<HostListener> {
        if !serial_transport() {
            return VsockListener::bind(port).map(HostListener::Vsock);
        }
        std::fs::create_dir_all(RUN_DIR)?;
        let path = port_socket(port);
        let _ = std::fs::remove_file(&path);
        let l = UnixListener::bind(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        Ok(HostListener::Unix(l))
    }

    /// Where it listens, for messages.
    pub fn describe(&self, port: u32) -> String {
        match self {
            HostListener::Vsock(_) => format!("vsock port {port}"),
            HostListener::Unix(_) => format!("{} (serial transport)", port_socket(port).display()),
        }
    }

    /// The next connection and who made it.
    pub fn accept(&self) -> io::Result<(HostConn, Peer)> {
        match self {
            HostListener::Vsock(l) => {
                let (s, cid) = l.accept()?;
                let peer = if cid == minke_protocol::HOST_CID {
                    Peer::Host
                } else {
                    Peer::Cid(cid)
                };
                Ok((HostConn::Vsock(s), peer))
            }
            HostListener::Unix(l) => Ok((HostConn::Unix(l.accept()?.0), Peer::Host)),
        }
    }
}

/// Connects to the host's `port` over the transport of this boot.
pub fn connect_host(port: u32) -> io::Result<HostConn> {
    if serial_transport() {
        // The serial agent starts beside this one and binds its socket once the host has
        // welcomed its session: wait for that (bounded) instead of failing the first attempt.
        let deadline = std::time::Instant::now() + SERIAL_SOCKET_WAIT;
        loop {
            match minke_mux::connect::connect_via(std::path::Path::new(HOST_SOCKET), port) {
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                    ) && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                r => return r.map(HostConn::Unix),
            }
        }
    } else {
        VsockStream::connect(minke_protocol::HOST_CID, port).map(HostConn::Vsock)
    }
}
