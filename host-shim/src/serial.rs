//! The host end of the virtio-serial transport: the shim connects to QEMU's `serial.sock`
//! chardev (the guest's `minke.control` port) and runs the host role of the stream
//! multiplexer on it ([`minke_mux`]; frames and rules in [`minke_protocol::mux`]).
//!
//! - [`crate::transport::Connector::Serial`] opens streams to guest ports: each is one end
//!   of a Unix socket pair bridged to a multiplexer stream, a [`Duplex`] like any vsock
//!   connection, so exec, files, forward, info and power run unchanged.
//! - Streams the guest opens to the time port go to the [`TimeServer`]; any other port is
//!   refused.
//! - The state directory's `vm.vsock` speaks the hybrid vsock `CONNECT <port>` convention on
//!   top of the multiplexer, so a process that attaches to the VM (`minke exec NAME`) connects
//!   exactly as it would through vhost-device-vsock.
//!
//! The guest is not trusted: the multiplexer bounds what it buffers per stream and in all,
//! and garbage on the line ends the session, never the shim (see [`minke_mux`]).

use std::io;
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use minke_mux::connect::ConnectServer;
use minke_mux::{Acceptor, Line, Mux, Role};
use minke_protocol::TIMESYNC_PORT;

use crate::state::files;
use crate::timesync::TimeServer;
use crate::transport::Duplex;

/// How long a `CONNECT` on `vm.vsock` may wait for the guest to accept the stream.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

type Feed = Box<dyn Fn(Box<dyn Duplex>) + Send + Sync>;

/// The running host end; dropping it closes the line and every stream.
#[derive(Debug)]
pub struct SerialEndpoint {
    mux: Mux,
    line: UnixStream,
    _connect: ConnectServer,
}

impl SerialEndpoint {
    /// Connects to the `serial.sock` of the VM whose state directory is `state` (QEMU listens
    /// on it from its start) and serves the time port with `time`.
    pub fn start(state: &Path, time: Option<&TimeServer>) -> io::Result<SerialEndpoint> {
        let sock = state.join(files::SERIAL);
        let line = UnixStream::connect(&sock).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot connect to {}: {e}", sock.display()),
            )
        })?;
        let feed: Option<Feed> = time.map(|t| Box::new(t.feeder()) as Feed);
        let acceptor: Acceptor = Arc::new(move |port| match &feed {
            Some(feed) if port == TIMESYNC_PORT => {
                let (theirs, ours) = UnixStream::pair()?;
                feed(Box::new(theirs));
                Ok(ours)
            }
            _ => Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!("nothing serves host port {port}"),
            )),
        });
        let mux = Mux::start(
            Role::Host,
            Line {
                reader: Box::new(line.try_clone()?),
                writer: Box::new(line.try_clone()?),
                wait_peer: None,
            },
            acceptor,
        )?;
        let vsock = state.join(files::VSOCK);
        let connect = ConnectServer::start(&mux, &vsock, CONNECT_TIMEOUT).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot listen on {}: {e}", vsock.display()),
            )
        })?;
        Ok(SerialEndpoint {
            mux,
            line,
            _connect: connect,
        })
    }

    /// The multiplexer (cheap to clone).
    pub fn mux(&self) -> &Mux {
        &self.mux
    }
}

impl Drop for SerialEndpoint {
    fn drop(&mut self) {
        self.mux.close();
        let _ = self.line.shutdown(Shutdown::Both);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixListener;
    use std::time::Instant;

    use minke_protocol::mux::{encode, session_bytes, MuxDecoder, MuxFrame, MUX_VERSION};
    use minke_protocol::wire::{read_frame, write_frame};
    use minke_protocol::{GuestMsg, HostMsg, PROTOCOL_VERSION};

    /// A stand-in for QEMU's chardev: the test plays the guest on the accepted socket.
    fn endpoint(time: Option<&TimeServer>) -> (tempfile::TempDir, SerialEndpoint, UnixStream) {
        let dir = tempfile::tempdir().unwrap();
        let l = UnixListener::bind(dir.path().join(files::SERIAL)).unwrap();
        let ep = SerialEndpoint::start(dir.path(), time).unwrap();
        let (guest, _) = l.accept().unwrap();
        guest
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        (dir, ep, guest)
    }

    fn next(guest: &mut UnixStream, dec: &mut MuxDecoder) -> MuxFrame {
        let mut buf = [0u8; 65536];
        loop {
            match dec.next_frame() {
                Ok(Some(f)) => return f,
                Ok(None) => {}
                Err(_) => continue,
            }
            let n = guest.read(&mut buf).unwrap();
            assert!(n > 0, "the shim closed the line");
            dec.push(&buf[..n]);
        }
    }

    /// Garbage from the guest, in any amount, costs the host a protocol error count and
    /// nothing else; a proper session still comes up after it.
    #[test]
    fn garbage_from_the_guest_is_survived() {
        let (_d, ep, mut guest) = endpoint(None);
        let mut x: u32 = 0x9e37_79b9;
        for round in 0..50 {
            let mut bytes: Vec<u8> = (0..40_000)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            if round % 10 == 0 {
                bytes.extend(
                    session_bytes(&MuxFrame::Hello {
                        version: MUX_VERSION,
                        nonce: round,
                    })
                    .unwrap(),
                );
            }
            guest.write_all(&bytes).unwrap();
        }
        let nonce = 77;
        guest
            .write_all(
                &session_bytes(&MuxFrame::Hello {
                    version: MUX_VERSION,
                    nonce,
                })
                .unwrap(),
            )
            .unwrap();
        let mut dec = MuxDecoder::new();
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            assert!(Instant::now() < end, "no Welcome for the last Hello");
            if next(&mut guest, &mut dec)
                == (MuxFrame::Welcome {
                    version: MUX_VERSION,
                    nonce,
                })
            {
                break;
            }
        }
        assert!(ep.mux().stats().sessions >= 1);
    }

    /// The guest opens the time port: the stream reaches the time server, which answers the
    /// handshake; other host ports are refused.
    #[test]
    fn guest_streams_reach_the_time_server() {
        let secret = minke_protocol::Secret::from_bytes(&[0x22; 32]).unwrap();
        let time = TimeServer::detached(secret.clone());
        let (_d, _ep, mut guest) = endpoint(Some(&time));
        guest
            .write_all(
                &session_bytes(&MuxFrame::Hello {
                    version: MUX_VERSION,
                    nonce: 1,
                })
                .unwrap(),
            )
            .unwrap();
        let mut dec = MuxDecoder::new();
        assert!(matches!(
            next(&mut guest, &mut dec),
            MuxFrame::Welcome { .. }
        ));
        let send = |g: &mut UnixStream, f: &MuxFrame| g.write_all(&encode(f).unwrap()).unwrap();
        send(
            &mut guest,
            &MuxFrame::Open {
                id: 2,
                port: 9,
                window: 65536,
            },
        );
        assert_eq!(next(&mut guest, &mut dec), MuxFrame::Refuse { id: 2 });
        send(
            &mut guest,
            &MuxFrame::Open {
                id: 4,
                port: TIMESYNC_PORT,
                window: 65536,
            },
        );
        assert!(matches!(
            next(&mut guest, &mut dec),
            MuxFrame::Accept { id: 4, .. }
        ));
        let mut hello = Vec::new();
        write_frame(
            &mut hello,
            &GuestMsg::Hello {
                version: PROTOCOL_VERSION,
                client: "test".into(),
                nonce: [4; 32],
                proof: secret.proof(minke_protocol::Purpose::TimeGuest, &[4; 32]),
            },
        )
        .unwrap();
        send(
            &mut guest,
            &MuxFrame::Data {
                id: 4,
                bytes: hello,
            },
        );
        let mut got = Vec::new();
        while got.len() < 4
            || got.len() < 4 + u32::from_le_bytes([got[0], got[1], got[2], got[3]]) as usize
        {
            match next(&mut guest, &mut dec) {
                MuxFrame::Data { id: 4, bytes } => got.extend(bytes),
                MuxFrame::Credit { .. } => {}
                f => panic!("unexpected {f:?}"),
            }
        }
        let reply: HostMsg = read_frame(&mut &got[..]).unwrap();
        assert_eq!(
            reply,
            HostMsg::Welcome {
                version: PROTOCOL_VERSION,
                proof: secret.proof(minke_protocol::Purpose::TimeHost, &[4; 32]),
            }
        );
    }
}
