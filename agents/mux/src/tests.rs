//! The engine end to end: a host and a guest `Mux` on the two ends of a socket pair, and a
//! raw peer that sends whatever a test wants (garbage included).

use super::*;
use minke_protocol::mux::{encode, session_bytes, MAGIC};
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::thread;

const T: Duration = Duration::from_secs(10);

fn echo(mut s: UnixStream) {
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
fn echo_acceptor() -> Acceptor {
    Arc::new(|port| {
        if port == 0 {
            return Err(io::ErrorKind::ConnectionRefused.into());
        }
        let (a, b) = UnixStream::pair()?;
        thread::spawn(move || echo(b));
        Ok(a)
    })
}

fn line(s: UnixStream) -> Line {
    Line {
        reader: Box::new(s.try_clone().unwrap()),
        writer: Box::new(s),
        wait_peer: None,
    }
}

/// A host and a guest mux with a session up.
fn pair(host_acc: Acceptor, guest_acc: Acceptor) -> (Mux, Mux, UnixStream) {
    let (h, g) = UnixStream::pair().unwrap();
    let keep = h.try_clone().unwrap();
    let host = Mux::start(Role::Host, line(h), host_acc).unwrap();
    let guest = Mux::start(Role::Guest, line(g), guest_acc).unwrap();
    guest.wait_up(T).unwrap();
    host.wait_up(T).unwrap();
    (host, guest, keep)
}

fn round_trip(s: &mut UnixStream, data: &[u8]) {
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

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

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

#[test]
fn concurrent_streams_keep_their_bytes_apart() {
    let (host, _guest, _l) = pair(echo_acceptor(), echo_acceptor());
    thread::scope(|sc| {
        for i in 0..24u8 {
            let host = &host;
            sc.spawn(move || {
                let mut s = host.connect(1024, T).unwrap();
                round_trip(&mut s, &pattern(150_000 + usize::from(i) * 1000, i));
            });
        }
    });
    // Every stream is forgotten once both ends closed.
    let end = Instant::now() + T;
    while host.stats().streams != 0 && Instant::now() < end {
        thread::yield_now();
    }
    assert_eq!(host.stats().streams, 0);
}

/// A stream whose guest-side reader never reads fills its window and stops; the others keep
/// flowing over the same line.
#[test]
fn a_stalled_stream_does_not_block_the_others() {
    let (stalled_tx, stalled_rx) = std::sync::mpsc::channel::<UnixStream>();
    let stalled_tx = Mutex::new(stalled_tx);
    let guest_acc: Acceptor = Arc::new(move |port| {
        let (a, b) = UnixStream::pair()?;
        if port == 9 {
            // Nobody reads `b`: keep it open and idle.
            let _ = stalled_tx.lock().unwrap().send(b);
        } else {
            thread::spawn(move || echo(b));
        }
        Ok(a)
    });
    let (host, _guest, _l) = pair(echo_acceptor(), guest_acc);
    let mut stuck = host.connect(9, T).unwrap();
    let _held = stalled_rx.recv_timeout(T).unwrap();
    let total = 16 << 20;
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let r = stuck.write_all(&vec![7u8; total]);
        let _ = done_tx.send(r.is_ok());
    });
    for i in 0..5 {
        let mut s = host.connect(1024, T).unwrap();
        round_trip(&mut s, &pattern(300_000, i));
    }
    assert!(
        done_rx.try_recv().is_err(),
        "16 MiB went into a stream nobody reads"
    );
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

/// Reads frames the host sends to a raw peer.
struct RawPeer {
    s: UnixStream,
    dec: minke_protocol::mux::MuxDecoder,
}

impl RawPeer {
    fn new(s: UnixStream) -> RawPeer {
        s.set_read_timeout(Some(T)).unwrap();
        RawPeer {
            s,
            dec: minke_protocol::mux::MuxDecoder::new(),
        }
    }

    fn next(&mut self) -> MuxFrame {
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

    fn hello(&mut self, nonce: u64) {
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

    fn send(&mut self, f: &MuxFrame) {
        self.s.write_all(&encode(f).unwrap()).unwrap();
    }
}

#[test]
fn version_mismatch_is_refused_with_a_message() {
    let (h, g) = UnixStream::pair().unwrap();
    let _host = Mux::start(Role::Host, line(h), echo_acceptor()).unwrap();
    let mut raw = RawPeer::new(g);
    raw.s
        .write_all(
            &session_bytes(&MuxFrame::Hello {
                version: 99,
                nonce: 1,
            })
            .unwrap(),
        )
        .unwrap();
    match raw.next() {
        MuxFrame::Error(m) => assert!(m.contains("version 99"), "{m}"),
        f => panic!("{f:?}"),
    }
    raw.hello(2);
}

/// A guest restarted in the middle of a frame: the host resets every stream of the old
/// session and welcomes the new one.
#[test]
fn guest_restart_mid_frame_starts_a_new_session() {
    let (h, g) = UnixStream::pair().unwrap();
    let host = Mux::start(Role::Host, line(h), echo_acceptor()).unwrap();
    let mut raw = RawPeer::new(g);
    raw.hello(1);
    // The old session opens a stream to the host, then dies halfway through a data frame.
    raw.send(&MuxFrame::Open {
        id: 2,
        port: 1025,
        window: 1 << 16,
    });
    assert_eq!(
        raw.next(),
        MuxFrame::Accept {
            id: 2,
            window: DEFAULT_WINDOW
        }
    );
    let half = encode(&MuxFrame::Data {
        id: 2,
        bytes: vec![1; 20_000],
    })
    .unwrap();
    raw.s.write_all(&half[..5000]).unwrap();
    let mut old = host.connect(1, Duration::from_millis(1)).err();
    assert!(old.take().is_some(), "the raw guest answers nothing");
    // A new session: the padding completes the broken frame, the host resets and answers.
    raw.dec = minke_protocol::mux::MuxDecoder::new();
    raw.hello(2);
    assert_eq!(host.stats().sessions, 2);
    assert!(host.stats().protocol_errors >= 1);
    assert_eq!(host.stats().streams, 0);
}

/// Garbage, floods of opens, data beyond the window, frames for unknown streams: the host
/// neither panics nor keeps more than it should, and still serves a proper session after.
#[test]
fn hostile_guest_bytes_are_survived() {
    let (h, g) = UnixStream::pair().unwrap();
    let host = Mux::start(Role::Host, line(h), echo_acceptor()).unwrap();
    let mut raw = RawPeer::new(g);
    // Keep draining what the host sends so its writer never blocks the test.
    let mut drain = raw.s.try_clone().unwrap();
    thread::spawn(move || {
        let mut b = [0u8; 65536];
        while matches!(drain.read(&mut b), Ok(n) if n > 0) {}
    });
    let mut x: u64 = 0x1234_5678_9abc_def0;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let hello = session_bytes(&MuxFrame::Hello {
        version: MUX_VERSION,
        nonce: 3,
    })
    .unwrap();
    for round in 0..60 {
        let mut bytes: Vec<u8> = (0..rnd() % 5000).map(|_| rnd() as u8).collect();
        if round % 5 == 0 {
            bytes.extend_from_slice(&hello[hello.len() - 30..]);
            bytes.extend_from_slice(&MAGIC);
        }
        if round % 6 == 0 {
            bytes.extend_from_slice(&hello);
            for id in 0..(MAX_STREAMS as u32 + 40) {
                bytes.extend(
                    encode(&MuxFrame::Open {
                        id: id * 2 + 2 + round * 1000,
                        port: 77,
                        window: u32::MAX,
                    })
                    .unwrap(),
                );
            }
            for id in 0..50u32 {
                bytes.extend(
                    encode(&MuxFrame::Data {
                        id: id * 2 + 2 + round * 1000,
                        bytes: vec![0; minke_protocol::mux::MAX_DATA],
                    })
                    .unwrap(),
                );
                bytes.extend(
                    encode(&MuxFrame::Credit {
                        id,
                        bytes: u32::MAX,
                    })
                    .unwrap(),
                );
                bytes.extend(encode(&MuxFrame::Close { id: id + 1 }).unwrap());
            }
        }
        raw.s.write_all(&bytes).unwrap();
        assert!(host.stats().streams <= MAX_STREAMS);
    }
    assert!(host.stats().protocol_errors > 0);
    // Still a working host: a proper session starts (the drain thread reads the replies, so
    // look at the counters).
    let end = Instant::now() + T;
    let before = host.stats().sessions;
    raw.s.write_all(&hello).unwrap();
    while host.stats().sessions == before && Instant::now() < end {
        thread::yield_now();
    }
    assert!(host.stats().sessions > before, "{:?}", host.stats());
}

/// A peer that sends more than the window it was given loses the stream, and the host does
/// not buffer the excess.
#[test]
fn data_beyond_the_window_closes_the_stream() {
    let (gate_tx, gate_rx) = std::sync::mpsc::channel::<UnixStream>();
    let gate_tx = Mutex::new(gate_tx);
    let acc: Acceptor = Arc::new(move |_| {
        let (a, b) = UnixStream::pair()?;
        let _ = gate_tx.lock().unwrap().send(b); // held, never read
        Ok(a)
    });
    let (h, g) = UnixStream::pair().unwrap();
    let _host = Mux::start(Role::Host, line(h), acc).unwrap();
    let mut raw = RawPeer::new(g);
    raw.hello(1);
    raw.send(&MuxFrame::Open {
        id: 2,
        port: 1025,
        window: 1000,
    });
    assert!(matches!(raw.next(), MuxFrame::Accept { id: 2, .. }));
    let _local = gate_rx.recv_timeout(T).unwrap();
    let chunk = vec![9u8; minke_protocol::mux::MAX_DATA];
    // Ignoring the credits the host returns as the local socket's buffer fills: more than the
    // window and that buffer together.
    for _ in 0..(8 * DEFAULT_WINDOW as usize / chunk.len()) {
        raw.send(&MuxFrame::Data {
            id: 2,
            bytes: chunk.clone(),
        });
    }
    loop {
        match raw.next() {
            MuxFrame::Close { id: 2 } => break,
            MuxFrame::Credit { .. } => {}
            f => panic!("unexpected {f:?}"),
        }
    }
}

/// Another process opens streams through the `CONNECT` socket.
#[test]
fn connect_socket_opens_streams() {
    let (_host, guest, _l) = pair(echo_acceptor(), echo_acceptor());
    let dir = std::env::temp_dir().join(format!("minke-mux-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("host.sock");
    let server = connect::ConnectServer::start(&guest, &path, T).unwrap();
    let mut s = connect::connect_via(&path, 1025).unwrap();
    round_trip(&mut s, b"through the connect socket");
    let e = connect::connect_via(&path, 0).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}");
    drop(server);
    assert!(!path.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// The guest end reads end of file while no host is connected; when one is again, a new
/// session starts.
#[test]
fn guest_waits_for_the_host_and_starts_again() {
    let (g, h1) = UnixStream::pair().unwrap();
    // The guest's line: reads from `g_read` (a pipe we control), writes to `g`.
    let (mut feed, g_read) = UnixStream::pair().unwrap();
    let (back_tx, back_rx) = std::sync::mpsc::channel::<()>();
    let wait: Box<dyn FnMut() -> bool + Send> = Box::new(move || back_rx.recv().is_ok());
    let guest = Mux::start(
        Role::Guest,
        Line {
            reader: Box::new(g_read),
            writer: Box::new(g),
            wait_peer: Some(wait),
        },
        echo_acceptor(),
    )
    .unwrap();
    let mut host_side = RawPeer::new(h1);
    let nonce = |f: MuxFrame| match f {
        MuxFrame::Hello { nonce, .. } => nonce,
        f => panic!("{f:?}"),
    };
    let n1 = nonce(host_side.next());
    feed.write_all(
        &session_bytes(&MuxFrame::Welcome {
            version: MUX_VERSION,
            nonce: n1,
        })
        .unwrap(),
    )
    .unwrap();
    guest.wait_up(T).unwrap();
    // The host goes away: the guest's reads end; then it comes back.
    feed.shutdown(Shutdown::Write).unwrap();
    let end = Instant::now() + T;
    while guest.is_up() && Instant::now() < end {
        thread::yield_now();
    }
    assert!(!guest.is_up());
    back_tx.send(()).unwrap();
    let n2 = nonce(host_side.next());
    assert_ne!(n1, n2);
}
