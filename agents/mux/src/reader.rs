//! The reader thread: reads the line, decodes its frames and applies them — session frames
//! through [`session`], stream frames to the stream table — and, when the line reaches end of
//! file, waits for the peer to come back and starts a new session.

use std::io::{self, Read};
use std::net::Shutdown;
use std::sync::Arc;

use minke_protocol::mux::{MuxDecoder, MuxFrame, DEFAULT_WINDOW, MAX_STREAMS};

use crate::pump::spawn_acceptor;
use crate::session::{self, new_guest_session, protocol_error};
use crate::state::Shared;
use crate::stream::{Phase, Stream};
use crate::Role;

/// Bytes read from the line at once.
const READ_CHUNK: usize = 64 * 1024;

pub(crate) fn reader_loop(
    sh: &Arc<Shared>,
    mut r: Box<dyn Read + Send>,
    mut wait_peer: Option<Box<dyn FnMut() -> bool + Send>>,
) {
    let mut dec = MuxDecoder::new();
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        if sh.lock().closed {
            return;
        }
        match r.read(&mut buf) {
            Ok(0) => {
                sh.lock().end_session();
                sh.wake();
                let again = wait_peer.as_mut().is_some_and(|w| w());
                let mut st = sh.lock();
                if !again || st.closed {
                    st.closed = true;
                    sh.wake();
                    return;
                }
                dec = MuxDecoder::new();
                if sh.role == Role::Guest {
                    new_guest_session(&mut st);
                }
                sh.wake();
            }
            Ok(n) => {
                dec.push(&buf[..n]);
                loop {
                    match dec.next_frame() {
                        Ok(Some(f)) => handle(sh, f),
                        Ok(None) => break,
                        Err(e) => protocol_error(sh, &minke_protocol::error_chain(&e)),
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                let mut st = sh.lock();
                st.stats.last_error = Some(format!(
                    "reading the serial line failed: {}",
                    minke_protocol::error_chain(&e)
                ));
                st.end_session();
                st.closed = true;
                sh.wake();
                return;
            }
        }
    }
}

fn is_peer_id(role: Role, id: u32) -> bool {
    match role {
        Role::Host => id != 0 && id & 1 == 0,
        Role::Guest => id & 1 == 1,
    }
}

fn handle(sh: &Arc<Shared>, f: MuxFrame) {
    let mut st = sh.lock();
    match f {
        f @ (MuxFrame::Hello { .. } | MuxFrame::Welcome { .. } | MuxFrame::Error(_)) => {
            if !session::on_frame(sh.role, &mut st, f) {
                return;
            }
        }
        _ if !st.up => {}
        MuxFrame::Open { id, port, window } => {
            if !is_peer_id(sh.role, id)
                || st.streams.contains(id)
                || st.streams.len() >= MAX_STREAMS
            {
                st.refuse(id);
            } else {
                st.streams
                    .insert(id, Stream::new(port, Phase::Accepting, u64::from(window)));
                spawn_acceptor(sh, &mut st, id, port);
            }
        }
        MuxFrame::Accept { id, window } => {
            if let Some(s) = st.streams.get_mut(id) {
                if s.phase == Phase::Opening && !is_peer_id(sh.role, id) {
                    s.phase = Phase::Open;
                    s.credit = u64::from(window);
                }
            }
        }
        MuxFrame::Refuse { id } => {
            if let Some(s) = st.streams.get_mut(id) {
                if s.phase == Phase::Opening && !is_peer_id(sh.role, id) {
                    s.phase = Phase::Refused;
                }
            }
        }
        MuxFrame::Data { id, bytes } => {
            let Some(s) = st.streams.get_mut(id) else {
                return;
            };
            if s.closed || s.peer_closed || s.phase == Phase::Done {
                return; // this side is finished with it
            }
            let len = bytes.len() as u64;
            if s.phase != Phase::Open
                || s.peer_eof
                || s.in_outstanding + len > u64::from(DEFAULT_WINDOW)
            {
                // Data before Accept, after Eof or beyond the window: the peer broke the
                // stream's rules.
                if s.phase != Phase::Open {
                    s.phase = Phase::Done;
                }
                s.close();
                st.stats.last_error = Some(format!("stream {id} broke the flow control rules"));
            } else if len > 0 {
                s.in_outstanding += len;
                s.inq.push_back(bytes);
            }
        }
        MuxFrame::Credit { id, bytes } => {
            if let Some(s) = st.streams.get_mut(id) {
                s.credit = s.credit.saturating_add(u64::from(bytes));
            }
        }
        MuxFrame::Eof { id } => {
            if let Some(s) = st.streams.get_mut(id) {
                s.peer_eof = true;
            }
        }
        MuxFrame::Close { id } => {
            if let Some(s) = st.streams.get_mut(id) {
                s.peer_closed = true;
                s.send_eof = false;
                s.send_close = false;
                s.out.clear();
                s.out_bytes = 0;
                match s.phase {
                    Phase::Opening => s.phase = Phase::Refused,
                    Phase::Accepting => s.phase = Phase::Done,
                    // Stop reading the local socket; what was received is still delivered.
                    Phase::Open => {
                        if let Some(l) = &s.local {
                            let _ = l.shutdown(Shutdown::Read);
                        }
                    }
                    Phase::Refused | Phase::Done => {}
                }
            }
        }
    }
    sh.wake();
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::Shutdown;
    use std::os::unix::net::UnixStream;
    use std::sync::{Arc, Mutex};
    use std::thread;
    use std::time::Instant;

    use minke_protocol::mux::{
        encode, session_bytes, MuxFrame, DEFAULT_WINDOW, MAGIC, MAX_STREAMS, MUX_VERSION,
    };

    use crate::testutil::{echo_acceptor, line, RawPeer, T};
    use crate::{Acceptor, Line, Mux, Role};

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
}
