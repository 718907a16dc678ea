//! The byte streams agents talk over: a small `Conn` trait (read, write, clone, half-close)
//! implemented by AF_VSOCK streams in the guest and by Unix/TCP sockets in tests, so every
//! conversation handler is generic over its transport.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;

use crate::sys;

/// A full-duplex byte stream one conversation runs on.
pub trait Conn: Read + Write + Send + Sized + 'static {
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
