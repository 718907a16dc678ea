//! The forward conversation: connect to a TCP port on the guest's loopback or to a Unix
//! socket, answer `Ok`, then copy raw bytes both ways until both directions are closed. When
//! one side stops sending, the other side's write half is shut down, so half-closed protocols
//! (request, EOF, response) work.

use std::io;
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;

use minke_protocol::msg::ForwardTarget;
use minke_protocol::wire::write_frame;
use minke_protocol::GuestMsg;

use super::ControlError;
use crate::conn::Conn;

/// Serves `Forward(target)` on `conn`.
pub fn forward<C: Conn>(conn: &mut C, target: &ForwardTarget) -> Result<(), ControlError> {
    match target {
        ForwardTarget::Tcp(port) => {
            let s = connect_loopback(*port).map_err(|e| {
                ControlError::Refused(format!(
                    "cannot connect to 127.0.0.1:{port}: {}",
                    crate::os_msg(&e)
                ))
            })?;
            let _ = s.set_nodelay(true);
            write_frame(conn, &GuestMsg::Ok)?;
            splice(conn, s)?;
        }
        ForwardTarget::Unix(path) => {
            let s = UnixStream::connect(path).map_err(|e| {
                ControlError::Refused(format!(
                    "cannot connect to unix socket {path}: {}",
                    crate::os_msg(&e)
                ))
            })?;
            write_frame(conn, &GuestMsg::Ok)?;
            splice(conn, s)?;
        }
    }
    Ok(())
}

/// Connects to 127.0.0.1:`port`. Through rustix rather than `TcpStream::connect`, whose
/// generic address resolution keeps glibc's resolver, NSS and dynamic loader in the static
/// binary (about 200 KB) even for a literal address.
fn connect_loopback(port: u16) -> io::Result<TcpStream> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType};
    let fd = rustix::net::socket_with(
        AddressFamily::INET,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?;
    rustix::net::connect(
        &fd,
        &std::net::SocketAddrV4::new([127, 0, 0, 1].into(), port),
    )?;
    Ok(TcpStream::from(fd))
}

/// Copies `a` → `b` on a thread and `b` → `a` here. Host → target ends with a write shutdown
/// of the target. Target → host ends the whole connection: vsock half-close does not cross
/// every transport (the vhost-user backend drops a guest's SHUT_WR), so a target that is done
/// talking closes the forward, as HTTP-style protocols expect.
pub fn splice<A: Conn, B: Conn>(a: &mut A, b: B) -> io::Result<()> {
    let mut a_read = a.try_clone()?;
    let mut b_write = b.try_clone()?;
    let up = std::thread::spawn(move || {
        let r = io::copy(&mut a_read, &mut b_write);
        let _ = b_write.shutdown(Shutdown::Write);
        r
    });
    let mut b_read = b;
    let _ = io::copy(&mut b_read, a);
    let _ = a.shutdown(Shutdown::Both);
    // Unblock the other direction too.
    let _ = b_read.shutdown(Shutdown::Both);
    let _ = up.join();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::tests::{connect, test_ctx, tmpdir};
    use minke_protocol::wire::read_frame;
    use minke_protocol::HostMsg;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::sync::Arc;

    #[test]
    fn forward_to_a_local_tcp_listener_with_half_close() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut req = Vec::new();
            s.read_to_end(&mut req).unwrap(); // until the host half-closes
            s.write_all(b"got:").unwrap();
            s.write_all(&req).unwrap();
        });
        let dir = tmpdir("fwd");
        let mut host = connect(Arc::new(test_ctx(&dir, Arc::default())));
        write_frame(&mut host, &HostMsg::Forward(ForwardTarget::Tcp(port))).unwrap();
        assert_eq!(read_frame::<_, GuestMsg>(&mut host).unwrap(), GuestMsg::Ok);
        host.write_all(b"ping").unwrap();
        host.shutdown(Shutdown::Write).unwrap();
        let mut resp = Vec::new();
        host.read_to_end(&mut resp).unwrap();
        assert_eq!(resp, b"got:ping");
        server.join().unwrap();
    }

    #[test]
    fn forward_to_a_closed_port_is_an_error() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let dir = tmpdir("fwd-closed");
        let mut host = connect(Arc::new(test_ctx(&dir, Arc::default())));
        write_frame(&mut host, &HostMsg::Forward(ForwardTarget::Tcp(port))).unwrap();
        match read_frame::<_, GuestMsg>(&mut host).unwrap() {
            GuestMsg::Error(e) => assert!(e.contains("connection refused"), "{e}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn forward_to_a_unix_socket() {
        let dir = tmpdir("fwd-unix");
        let sock = dir.join("s.sock");
        let l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut b = [0u8; 5];
            s.read_exact(&mut b).unwrap();
            s.write_all(&b).unwrap();
        });
        let mut host = connect(Arc::new(test_ctx(&dir, Arc::default())));
        write_frame(
            &mut host,
            &HostMsg::Forward(ForwardTarget::Unix(sock.display().to_string())),
        )
        .unwrap();
        assert_eq!(read_frame::<_, GuestMsg>(&mut host).unwrap(), GuestMsg::Ok);
        host.write_all(b"hello").unwrap();
        let mut resp = Vec::new();
        host.read_to_end(&mut resp).unwrap();
        assert_eq!(resp, b"hello");
        server.join().unwrap();
    }
}
