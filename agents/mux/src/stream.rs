//! One stream's state — its phase, its queues both ways, the credit it may still spend and the
//! window it granted, the frames it still has to send — and the table of a session's streams.

use std::collections::VecDeque;
use std::net::Shutdown;
use std::os::unix::net::UnixStream;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// This side sent `Open`; a caller waits for the answer.
    Opening,
    /// The peer refused; the waiting caller removes the stream.
    Refused,
    /// The peer sent `Open`; the acceptor is connecting the local socket.
    Accepting,
    /// Bridged.
    Open,
    /// Nothing left but frames to send; removed once they are sent.
    Done,
}

#[derive(Debug)]
pub(crate) struct Stream {
    pub(crate) port: u32,
    pub(crate) phase: Phase,
    /// A handle on the local socket, to shut it down when the stream ends.
    pub(crate) local: Option<UnixStream>,
    /// Bytes this side may still send.
    pub(crate) credit: u64,
    pub(crate) out: VecDeque<Vec<u8>>,
    pub(crate) out_bytes: usize,
    pub(crate) inq: VecDeque<Vec<u8>>,
    /// Bytes received and not yet credited back.
    pub(crate) in_outstanding: u64,
    /// Bytes delivered locally, to credit back.
    pub(crate) credit_due: u64,
    pub(crate) peer_eof: bool,
    pub(crate) peer_closed: bool,
    /// This side is finished with the stream: inbound data is dropped.
    pub(crate) closed: bool,
    pub(crate) send_open: bool,
    pub(crate) send_accept: Option<bool>,
    pub(crate) send_eof: bool,
    pub(crate) send_close: bool,
    /// Pump threads still running.
    pub(crate) pumps: u8,
    /// The pumps were started (an opened stream waits for
    /// [`Opened::bridge`](crate::Opened::bridge) until then).
    pub(crate) bridged: bool,
}

impl Stream {
    pub(crate) fn new(port: u32, phase: Phase, credit: u64) -> Stream {
        Stream {
            port,
            phase,
            local: None,
            credit,
            out: VecDeque::new(),
            out_bytes: 0,
            inq: VecDeque::new(),
            in_outstanding: 0,
            credit_due: 0,
            peer_eof: false,
            peer_closed: false,
            closed: false,
            send_open: false,
            send_accept: None,
            send_eof: false,
            send_close: false,
            pumps: 0,
            bridged: false,
        }
    }

    pub(crate) fn shutdown_local(&self) {
        if let Some(l) = &self.local {
            let _ = l.shutdown(Shutdown::Both);
        }
    }

    /// This side is finished: flush what was read, tell the peer, drop what still arrives.
    pub(crate) fn close(&mut self) {
        if !self.closed {
            self.closed = true;
            self.send_close = !self.peer_closed;
        }
        self.inq.clear();
        self.shutdown_local();
    }

    pub(crate) fn removable(&self) -> bool {
        let idle = self.out.is_empty()
            && !self.send_open
            && self.send_accept.is_none()
            && !self.send_eof
            && !self.send_close;
        match self.phase {
            Phase::Open => self.bridged && self.pumps == 0 && idle,
            Phase::Done => idle,
            Phase::Opening | Phase::Refused | Phase::Accepting => false,
        }
    }
}

/// The streams of a session: at most [`MAX_STREAMS`](minke_protocol::mux::MAX_STREAMS), so a
/// vector searched by id is enough (and keeps the in-guest binary small).
#[derive(Debug, Default)]
pub(crate) struct Streams(pub(crate) Vec<(u32, Stream)>);

impl Streams {
    pub(crate) fn get_mut(&mut self, id: u32) -> Option<&mut Stream> {
        self.0.iter_mut().find(|(i, _)| *i == id).map(|(_, s)| s)
    }
    pub(crate) fn contains(&self, id: u32) -> bool {
        self.0.iter().any(|(i, _)| *i == id)
    }
    pub(crate) fn insert(&mut self, id: u32, s: Stream) {
        self.0.push((id, s));
    }
    pub(crate) fn remove(&mut self, id: u32) {
        self.0.retain(|(i, _)| *i != id);
    }
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }
}
