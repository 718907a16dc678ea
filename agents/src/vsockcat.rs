//! `minke-init vsock CID PORT`: a vsock stream on stdin/stdout, for scripts and diagnostics in
//! the guest (nothing else in a minimal image speaks AF_VSOCK): stdin goes to the peer, the
//! peer's bytes to stdout. Half-closes its sending side at stdin's end and exits when the peer
//! closes.

use std::io::{self, Read, Write};
use std::net::Shutdown;

use crate::conn::{Conn, VsockStream};

/// Runs the tool with its arguments (`["2", "1025"]`); returns the exit code.
pub fn main(args: &[String]) -> i32 {
    let parse = |s: Option<&String>| s.and_then(|s| s.parse::<u32>().ok());
    let (Some(cid), Some(port), None) = (parse(args.first()), parse(args.get(1)), args.get(2))
    else {
        eprintln!("usage: minke-init vsock CID PORT   (CID 2 is the host, 1 this guest)");
        return 2;
    };
    match run(cid, port) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("minke-init vsock {cid} {port}: {}", crate::os_msg(&e));
            1
        }
    }
}

fn run(cid: u32, port: u32) -> io::Result<()> {
    let conn = VsockStream::connect(cid, port)?;
    let mut to_peer = conn.try_clone()?;
    // stdin → peer on its own thread: the tool ends when the peer's stream does, even if stdin
    // never ends (a FIFO looping the output back, a terminal).
    std::thread::spawn(move || {
        let _ = io::copy(&mut io::stdin().lock(), &mut to_peer);
        let _ = to_peer.shutdown(Shutdown::Write);
    });
    let mut from_peer = conn;
    let mut out = io::stdout().lock();
    let mut buf = [0u8; 16 << 10];
    loop {
        match from_peer.read(&mut buf) {
            Ok(0) => return out.flush(),
            Ok(n) => {
                out.write_all(&buf[..n])?;
                out.flush()?;
            }
            // The peer closing on us is the end of its stream, not our failure.
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return out.flush(),
            Err(e) => return Err(e),
        }
    }
}
