//! Opening streams from other processes through a Unix socket, with the hybrid vsock
//! convention (Firecracker's, also spoken by vhost-device-vsock):
//!
//! ```text
//! client → server:  "CONNECT 1025\n"
//! server → client:  "OK 4\n"          (the stream id; on refusal the socket closes unanswered)
//! ```
//!
//! after which the socket is the stream. The guest's serial agent serves it on
//! `/run/minke/host.sock` for guest processes that connect to host ports (the time sync
//! agent); the host shim serves it on the VM's `vm.vsock`, so processes that attach to a VM
//! booted by another talk to it as they would through vhost-device-vsock.

use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::Mux;

/// Longest request or reply line accepted, newline included.
pub const MAX_LINE: usize = 32;
/// How long a client may take to send its request line.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads one `\n`-terminated line of at most [`MAX_LINE`] bytes, a byte at a time so nothing
/// after it is consumed. `None` at end of file before the newline or for a longer line.
pub fn read_line<R: Read>(r: &mut R) -> io::Result<Option<Vec<u8>>> {
    let mut line = Vec::with_capacity(MAX_LINE);
    loop {
        let mut b = [0u8; 1];
        match r.read(&mut b) {
            Ok(0) => return Ok(None),
            Ok(_) if b[0] == b'\n' => return Ok(Some(line)),
            Ok(_) if line.len() + 1 >= MAX_LINE => return Ok(None),
            Ok(_) => line.push(b[0]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// The port of a `CONNECT <port>` line (without its newline).
pub fn parse_connect(line: &[u8]) -> Option<u32> {
    parse_number(line.strip_prefix(b"CONNECT ")?)
}

/// The number of an `OK <n>` line (without its newline).
pub fn parse_ok(line: &[u8]) -> Option<u32> {
    parse_number(line.strip_prefix(b"OK ")?)
}

fn parse_number(digits: &[u8]) -> Option<u32> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Connects to the server at `path` and asks for a stream to `port`; returns the socket,
/// which is then the stream.
pub fn connect_via(path: &Path, port: u32) -> io::Result<UnixStream> {
    let mut s = UnixStream::connect(path)?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())?;
    match read_line(&mut s)? {
        Some(l) if parse_ok(&l).is_some() => Ok(s),
        Some(l) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "unexpected answer {:?} to CONNECT {port}",
                String::from_utf8_lossy(&l)
            ),
        )),
        None => Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!("port {port} refused the connection"),
        )),
    }
}

/// A running `CONNECT` server; stops accepting and removes its socket on drop.
#[derive(Debug)]
pub struct ConnectServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
}

impl ConnectServer {
    /// Listens on `path` (replacing a stale socket) and opens a stream of `mux` for each
    /// request, waiting at most `timeout` for the peer to accept it.
    pub fn start(mux: &Mux, path: &Path, timeout: Duration) -> io::Result<ConnectServer> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (mux, flag) = (mux.clone(), stop.clone());
        crate::spawn(
            "mux-connect",
            Box::new(move || {
                for conn in listener.incoming() {
                    if flag.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(conn) = conn else { continue };
                    let mux = mux.clone();
                    let _ = crate::spawn(
                        "mux-connect-req",
                        Box::new(move || serve_request(&mux, conn, timeout)),
                    );
                }
            }),
        )?;
        Ok(ConnectServer {
            path: path.to_path_buf(),
            stop,
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ConnectServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = UnixStream::connect(&self.path);
        let _ = std::fs::remove_file(&self.path);
    }
}

/// One request: read the line, open the stream, answer, bridge. Any failure closes the socket
/// without an answer, which the client reads as a refusal.
fn serve_request(mux: &Mux, mut conn: UnixStream, timeout: Duration) {
    if conn.set_read_timeout(Some(REQUEST_TIMEOUT)).is_err() {
        return;
    }
    let Ok(Some(line)) = read_line(&mut conn) else {
        return;
    };
    let Some(port) = parse_connect(&line) else {
        return;
    };
    let Ok(opened) = mux.open(port, timeout) else {
        return;
    };
    let answer = format!("OK {}\n", opened.id());
    if conn.write_all(answer.as_bytes()).is_err() || conn.set_read_timeout(None).is_err() {
        return; // dropping `opened` closes the stream
    }
    let _ = opened.bridge(conn);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{echo_acceptor, pair, round_trip, T};

    #[test]
    fn lines() {
        assert_eq!(parse_connect(b"CONNECT 1025"), Some(1025));
        assert_eq!(parse_connect(b"CONNECT "), None);
        assert_eq!(parse_connect(b"CONNECT -1"), None);
        assert_eq!(parse_connect(b"CONNECT 99999999999"), None);
        assert_eq!(parse_connect(b"connect 1"), None);
        assert_eq!(parse_ok(b"OK 7"), Some(7));
        assert_eq!(parse_ok(b"NO 7"), None);
        let mut r = &b"CONNECT 1\nrest"[..];
        assert_eq!(read_line(&mut r).unwrap().unwrap(), b"CONNECT 1");
        assert_eq!(r, b"rest", "nothing after the newline is consumed");
        let long = [b'x'; 100];
        assert_eq!(read_line(&mut &long[..]).unwrap(), None);
        assert_eq!(read_line(&mut &b"no newline"[..]).unwrap(), None);
    }

    /// Another process opens streams through the `CONNECT` socket.
    #[test]
    fn connect_socket_opens_streams() {
        let (_host, guest, _l) = pair(echo_acceptor(), echo_acceptor());
        let dir = std::env::temp_dir().join(format!("minke-mux-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("host.sock");
        let server = ConnectServer::start(&guest, &path, T).unwrap();
        let mut s = connect_via(&path, 1025).unwrap();
        round_trip(&mut s, b"through the connect socket");
        let e = connect_via(&path, 0).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}");
        drop(server);
        assert!(!path.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
