//! The writer thread: gathers everything ready to send — the session frame, refusals, each
//! stream's control frames and credit, data one chunk per stream in turn, end-of-stream
//! frames — into one batch, writes it to the line, and forgets the streams that are finished.

use std::io::Write;

use minke_protocol::mux::{self as proto, MuxFrame, DEFAULT_WINDOW, SYNC_PADDING};

use crate::state::{Shared, State};

/// Bytes written to the line at once.
const BATCH: usize = 128 * 1024;

/// Appends one of this side's frames. They are always within the limits (data is cut at
/// `MAX_DATA`, session frames are short), so encoding cannot fail.
fn put(out: &mut Vec<u8>, f: &MuxFrame) {
    let _ = proto::encode_into(f, out);
}

/// Everything ready to send, in order: the session frame, loose refusals, per-stream control
/// frames, then data one chunk per stream in turn, then end-of-stream frames.
fn collect(st: &mut State) -> Vec<u8> {
    let mut out = Vec::new();
    if let Some(f) = st.send_session.take() {
        if let Ok(b) = proto::session_bytes(&f) {
            out = b;
        }
        st.send_pad = false;
    } else if std::mem::take(&mut st.send_pad) {
        out = vec![0; SYNC_PADDING];
    }
    if !st.up {
        return out;
    }
    while let Some(f) = st.loose.pop_front() {
        put(&mut out, &f);
    }
    for (id, s) in st.streams.0.iter_mut() {
        let id = *id;
        if std::mem::take(&mut s.send_open) {
            let window = DEFAULT_WINDOW;
            put(
                &mut out,
                &MuxFrame::Open {
                    id,
                    port: s.port,
                    window,
                },
            );
        }
        match s.send_accept.take() {
            Some(true) => put(
                &mut out,
                &MuxFrame::Accept {
                    id,
                    window: DEFAULT_WINDOW,
                },
            ),
            Some(false) => put(&mut out, &MuxFrame::Refuse { id }),
            None => {}
        }
        if s.credit_due > 0
            && !s.closed
            && (s.credit_due >= u64::from(DEFAULT_WINDOW / 4) || s.inq.is_empty())
        {
            let n = s.credit_due.min(u64::from(u32::MAX));
            s.credit_due -= n;
            s.in_outstanding = s.in_outstanding.saturating_sub(n);
            put(
                &mut out,
                &MuxFrame::Credit {
                    id,
                    bytes: n as u32,
                },
            );
        }
    }
    // Data, one chunk per stream per round, starting where the last batch stopped.
    let n = st.streams.len();
    'rounds: loop {
        let mut any = false;
        for k in 0..n {
            if out.len() >= BATCH {
                break 'rounds;
            }
            let i = (st.rr + k) % n;
            let (id, s) = &mut st.streams.0[i];
            if let Some(bytes) = s.out.pop_front() {
                s.out_bytes -= bytes.len();
                put(&mut out, &MuxFrame::Data { id: *id, bytes });
                any = true;
            }
        }
        if !any {
            break;
        }
    }
    st.rr = st.rr.wrapping_add(1);
    for (id, s) in st.streams.0.iter_mut() {
        let id = *id;
        if !s.out.is_empty() {
            continue;
        }
        if std::mem::take(&mut s.send_eof) && !s.send_close {
            put(&mut out, &MuxFrame::Eof { id });
        }
        if std::mem::take(&mut s.send_close) {
            put(&mut out, &MuxFrame::Close { id });
        }
    }
    out
}

pub(crate) fn writer_loop(sh: &Shared, mut w: Box<dyn Write + Send>) {
    loop {
        let batch = {
            let mut st = sh.lock();
            loop {
                if st.closed {
                    return;
                }
                let b = collect(&mut st);
                st.streams.0.retain(|(_, s)| !s.removable());
                if !b.is_empty() {
                    break b;
                }
                st = sh.wait(st);
            }
        };
        // Queues have room again and streams may be gone: wake the pumps.
        sh.wake();
        if let Err(e) = w.write_all(&batch).and_then(|()| w.flush()) {
            let mut st = sh.lock();
            st.stats.last_error = Some(format!(
                "writing to the serial line failed: {}",
                minke_protocol::error_chain(&e)
            ));
            st.end_session();
            st.closed = true;
            sh.wake();
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::thread;
    use std::time::Instant;

    use crate::testutil::{echo_acceptor, pair, pattern, round_trip, T};

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
}
