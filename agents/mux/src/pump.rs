//! The local side of each stream: the thread that connects the local socket of a stream the
//! peer opened (through the [`Acceptor`](crate::Acceptor)), and the two pump threads per
//! bridged stream — local socket → outgoing queue within the stream's credit, incoming queue →
//! local socket, crediting back what the local reader took.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use minke_protocol::mux::MAX_DATA;

use crate::spawn;
use crate::state::{Shared, State};
use crate::stream::Phase;

/// Bytes read from one stream's local socket and not yet written to the line.
const OUT_LIMIT: usize = 64 * 1024;

/// Connects the local socket of a stream the peer opened, on a thread of its own.
pub(crate) fn spawn_acceptor(sh: &Arc<Shared>, st: &mut State, id: u32, port: u32) {
    let epoch = st.epoch;
    let a = sh.clone();
    let spawned = spawn(
        "mux-accept",
        Box::new(move || {
            let local = (a.acceptor)(port);
            let mut st = a.lock();
            let accepting = st
                .live(id, epoch)
                .filter(|s| s.phase == Phase::Accepting)
                .is_some();
            match local {
                Ok(l) if accepting => {
                    if let Some(s) = st.live(id, epoch) {
                        s.phase = Phase::Open;
                        s.send_accept = Some(true);
                    }
                    st.stats.accepted += 1;
                    start_pumps(&a, &mut st, id, epoch, l);
                }
                Ok(l) => {
                    let _ = l.shutdown(Shutdown::Both);
                }
                Err(_) => {
                    if let Some(s) = st.live(id, epoch) {
                        if s.phase == Phase::Accepting {
                            s.phase = Phase::Done;
                            s.send_accept = Some(false);
                        }
                    }
                }
            }
            a.wake();
        }),
    );
    if spawned.is_err() {
        if let Some(s) = st.streams.get_mut(id) {
            s.phase = Phase::Done;
            s.send_accept = Some(false);
        }
    }
}

/// Starts the two pump threads of an open stream (lock held).
pub(crate) fn start_pumps(
    sh: &Arc<Shared>,
    st: &mut State,
    id: u32,
    epoch: u64,
    local: UnixStream,
) {
    let Some(s) = st.live(id, epoch) else {
        let _ = local.shutdown(Shutdown::Both);
        return;
    };
    let clones = local.try_clone().and_then(|a| Ok((a, local.try_clone()?)));
    s.local = Some(local);
    s.bridged = true;
    let (rd, wr) = match clones {
        Ok(c) => c,
        Err(_) => {
            s.phase = Phase::Done;
            s.close();
            sh.wake();
            return;
        }
    };
    s.pumps = 2;
    let (a, b) = (sh.clone(), sh.clone());
    let out = spawn("mux-out", Box::new(move || pump_out(&a, id, epoch, rd)));
    if out.is_err() {
        s.pumps = 0;
        s.phase = Phase::Done;
        s.close();
        sh.wake();
        return;
    }
    let inn = spawn("mux-in", Box::new(move || pump_in(&b, id, epoch, wr)));
    if inn.is_err() {
        s.pumps = 1;
        s.close();
    }
    sh.wake();
}

/// Local socket → line, within the stream's credit.
fn pump_out(sh: &Shared, id: u32, epoch: u64, mut local: UnixStream) {
    let mut buf = vec![0u8; MAX_DATA];
    loop {
        let n = {
            let mut st = sh.lock();
            loop {
                let Some(s) = st.live(id, epoch) else { return };
                if s.closed || s.peer_closed {
                    s.pumps = s.pumps.saturating_sub(1);
                    sh.wake();
                    return;
                }
                if s.credit > 0 && s.out_bytes < OUT_LIMIT {
                    let n = s.credit.min(MAX_DATA as u64) as usize;
                    break n.min(OUT_LIMIT - s.out_bytes);
                }
                st = sh.wait(st);
            }
        };
        let r = local.read(&mut buf[..n]);
        let mut st = sh.lock();
        let Some(s) = st.live(id, epoch) else { return };
        match r {
            Ok(0) => {
                s.send_eof = !s.closed && !s.peer_closed;
                s.pumps = s.pumps.saturating_sub(1);
                sh.wake();
                return;
            }
            Ok(k) => {
                if !s.closed && !s.peer_closed {
                    s.out.push_back(buf[..k].to_vec());
                    s.out_bytes += k;
                    s.credit -= k as u64;
                }
                sh.wake();
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => {
                s.close();
                s.pumps = s.pumps.saturating_sub(1);
                sh.wake();
                return;
            }
        }
    }
}

/// Line → local socket; credits what the local reader took.
fn pump_in(sh: &Shared, id: u32, epoch: u64, mut local: UnixStream) {
    loop {
        let chunk = {
            let mut st = sh.lock();
            loop {
                let Some(s) = st.live(id, epoch) else { return };
                if s.closed {
                    s.pumps = s.pumps.saturating_sub(1);
                    sh.wake();
                    return;
                }
                if let Some(c) = s.inq.pop_front() {
                    break c;
                }
                if s.peer_closed {
                    s.shutdown_local();
                    s.pumps = s.pumps.saturating_sub(1);
                    sh.wake();
                    return;
                }
                if s.peer_eof {
                    let _ = local.shutdown(Shutdown::Write);
                    s.pumps = s.pumps.saturating_sub(1);
                    sh.wake();
                    return;
                }
                st = sh.wait(st);
            }
        };
        let r = local.write_all(&chunk);
        let mut st = sh.lock();
        let Some(s) = st.live(id, epoch) else { return };
        match r {
            Ok(()) => s.credit_due += chunk.len() as u64,
            Err(_) => {
                s.close();
                s.pumps = s.pumps.saturating_sub(1);
                sh.wake();
                return;
            }
        }
        sh.wake();
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    use std::sync::{Arc, Mutex};
    use std::thread;

    use crate::testutil::{echo, echo_acceptor, pair, pattern, round_trip, T};
    use crate::Acceptor;

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
}
