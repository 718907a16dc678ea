//! Helpers shared by the tests of every module: a host and a guest `Mux` on the two ends of a
//! socket pair, echo servers, and a raw peer that sends whatever a test wants (garbage
//! included).

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use minke_protocol::mux::{encode, session_bytes, MuxFrame, MUX_VERSION};

use crate::{Acceptor, Line, Mux, Role};

/// How long a test waits for anything.
pub(crate) const T: Duration = Duration::from_secs(10);

pub(crate) fn echo(mut s: UnixStream) {
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = s.shutdown(Shutdown::Write);
}

/// Serves every port with an echo server, except port 0 (refused).
pub(crate) fn echo_acceptor() -> Acceptor {
    Arc::new(|port| {
        if port == 0 {
            return Err(io::ErrorKind::ConnectionRefused.into());
        }
        let (a, b) = UnixStream::pair()?;
        thread::spawn(move || echo(b));
        Ok(a)
    })
}

pub(crate) fn line(s: UnixStream) -> Line {
    Line {
        reader: Box::new(s.try_clone().unwrap()),
        writer: Box::new(s),
        wait_peer: None,
    }
}

/// A host and a guest mux with a session up.
pub(crate) fn pair(host_acc: Acceptor, guest_acc: Acceptor) -> (Mux, Mux, UnixStream) {
    let (h, g) = UnixStream::pair().unwrap();
    let keep = h.try_clone().unwrap();
    let host = Mux::start(Role::Host, line(h), host_acc).unwrap();
    let guest = Mux::start(Role::Guest, line(g), guest_acc).unwrap();
    guest.wait_up(T).unwrap();
    host.wait_up(T).unwrap();
    (host, guest, keep)
}

pub(crate) fn round_trip(s: &mut UnixStream, data: &[u8]) {
    let mut w = s.try_clone().unwrap();
    let d = data.to_vec();
    let writer = thread::spawn(move || {
        w.write_all(&d).unwrap();
        w.shutdown(Shutdown::Write).unwrap();
    });
    let mut got = Vec::new();
    s.set_read_timeout(Some(T)).unwrap();
    s.read_to_end(&mut got).unwrap();
    writer.join().unwrap();
    assert!(got == data, "echoed {} of {} bytes", got.len(), data.len());
}

pub(crate) fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Reads frames the host sends to a raw peer.
pub(crate) struct RawPeer {
    pub(crate) s: UnixStream,
    pub(crate) dec: minke_protocol::mux::MuxDecoder,
}

impl RawPeer {
    pub(crate) fn new(s: UnixStream) -> RawPeer {
        s.set_read_timeout(Some(T)).unwrap();
        RawPeer {
            s,
            dec: minke_protocol::mux::MuxDecoder::new(),
        }
    }

    pub(crate) fn next(&mut self) -> MuxFrame {
        let mut buf = [0u8; 65536];
        loop {
            match self.dec.next_frame() {
                Ok(Some(f)) => return f,
                Err(_) => continue, // e.g. the padding of a new session
                Ok(None) => {}
            }
            let n = self.s.read(&mut buf).expect("the host answers");
            assert!(n > 0, "the host closed the line");
            self.dec.push(&buf[..n]);
        }
    }

    pub(crate) fn hello(&mut self, nonce: u64) {
        let b = session_bytes(&MuxFrame::Hello {
            version: MUX_VERSION,
            nonce,
        })
        .unwrap();
        self.s.write_all(&b).unwrap();
        assert_eq!(
            self.next(),
            MuxFrame::Welcome {
                version: MUX_VERSION,
                nonce
            }
        );
    }

    pub(crate) fn send(&mut self, f: &MuxFrame) {
        self.s.write_all(&encode(f).unwrap()).unwrap();
    }
}
