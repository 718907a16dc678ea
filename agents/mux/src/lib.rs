//! minke-mux: many byte streams over one ordered byte pipe — the engine of the virtio-serial
//! transport, run by the host shim on QEMU's `serial.sock` and by the guest's serial agent on
//! `/dev/vportNpM`. The frames and the session and credit rules are defined (and documented)
//! in [`minke_protocol::mux`]; this crate moves the bytes.
//!
//! Each stream of the line is bridged to a local Unix stream socket: on the host, one end of a
//! socket pair whose other end the shim uses as it would a vsock connection; in the guest, a
//! connection to the agent that serves the port. Per stream, one thread copies the local
//! socket into the line and another copies the line into the local socket; one reader thread
//! decodes the line and one writer thread sends what the streams queued, a chunk per stream
//! in turn. The reader never blocks on a local socket: what arrives for a stream waits in that
//! stream's queue, which its announced window bounds. So a slow local reader only stalls its
//! own stream, and the memory a peer can make this side hold is bounded whatever it sends.
//!
//! **Invariant:** std only — no syscalls of its own, no knowledge of QEMU or of the agents;
//! the two roles differ only in who says `Hello` and in their stream id parity.
//! **Invariant:** no input from the line panics or grows memory without bound: bad frames end
//! the session, windows bound every queue, and at most [`MAX_STREAMS`] streams exist.

#![forbid(unsafe_code)]

pub mod connect;

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use minke_protocol::mux::{
    self as proto, MuxDecoder, MuxFrame, DEFAULT_WINDOW, MAX_DATA, MAX_STREAMS, MUX_VERSION,
    SYNC_PADDING,
};

/// Bytes read from one stream's local socket and not yet written to the line.
const OUT_LIMIT: usize = 64 * 1024;
/// Bytes written to the line at once.
const BATCH: usize = 128 * 1024;
/// Refusals of streams that were never created, kept for sending; more are dropped.
const MAX_LOOSE: usize = 64;
/// Bytes read from the line at once.
const READ_CHUNK: usize = 64 * 1024;

/// Which end of the line this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The host: answers `Hello`, opens odd stream ids.
    Host,
    /// The guest: says `Hello`, opens even stream ids.
    Guest,
}

/// The byte pipe, as two handles.
pub struct Line {
    /// What the peer sends.
    pub reader: Box<dyn Read + Send>,
    /// Where to send.
    pub writer: Box<dyn Write + Send>,
    /// Called when `reader` reaches end of file. A guest's virtio-serial port reads EOF while
    /// no host is connected: block until one is and return `true` (a new session starts), or
    /// return `false` to stop. `None`: stop at end of file.
    pub wait_peer: Option<Box<dyn FnMut() -> bool + Send>>,
}

/// Serves streams the peer opens: given the port, returns the local socket to bridge, or an
/// error to refuse the stream.
pub type Acceptor = Arc<dyn Fn(u32) -> io::Result<UnixStream> + Send + Sync>;

/// Why a stream could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The line is gone for good.
    #[error("the serial line is closed (has the VM stopped?)")]
    Closed,
    /// No session with the peer yet.
    #[error("no multiplexer session over the serial line within {0:?} (is the guest's serial agent up?)")]
    NoSession(Duration),
    /// The host refused the guest's session.
    #[error("the host refused the multiplexer session: {0}")]
    SessionRefused(String),
    /// Nothing serves that port.
    #[error("port {port} refused the stream (is its agent up?)")]
    Refused {
        /// The port.
        port: u32,
    },
    /// The peer did not answer in time.
    #[error("port {port} did not answer within {timeout:?}")]
    Timeout {
        /// The port.
        port: u32,
        /// The limit.
        timeout: Duration,
    },
    /// The session ended while the stream was being opened.
    #[error("the multiplexer session was reset while opening port {port}")]
    Reset {
        /// The port.
        port: u32,
    },
    /// [`MAX_STREAMS`] streams are open.
    #[error("too many open streams (at most {MAX_STREAMS})")]
    TooMany,
    /// A local socket or thread could not be made.
    #[error("cannot set up the stream")]
    Local(#[from] io::Error),
}

/// Counters of a [`Mux`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MuxStats {
    /// Sessions established.
    pub sessions: u64,
    /// Protocol errors seen on the line (each ends the session in progress).
    pub protocol_errors: u64,
    /// The most recent protocol error.
    pub last_error: Option<String>,
    /// Streams this side opened that the peer accepted.
    pub opened: u64,
    /// Streams the peer opened that this side accepted.
    pub accepted: u64,
    /// Streams open now.
    pub streams: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
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
struct Stream {
    port: u32,
    phase: Phase,
    /// A handle on the local socket, to shut it down when the stream ends.
    local: Option<UnixStream>,
    /// Bytes this side may still send.
    credit: u64,
    out: VecDeque<Vec<u8>>,
    out_bytes: usize,
    inq: VecDeque<Vec<u8>>,
    /// Bytes received and not yet credited back.
    in_outstanding: u64,
    /// Bytes delivered locally, to credit back.
    credit_due: u64,
    peer_eof: bool,
    peer_closed: bool,
    /// This side is finished with the stream: inbound data is dropped.
    closed: bool,
    send_open: bool,
    send_accept: Option<bool>,
    send_eof: bool,
    send_close: bool,
    /// Pump threads still running.
    pumps: u8,
    /// The pumps were started (an opened stream waits for [`Opened::bridge`] until then).
    bridged: bool,
}

impl Stream {
    fn new(port: u32, phase: Phase, credit: u64) -> Stream {
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

    fn shutdown_local(&self) {
        if let Some(l) = &self.local {
            let _ = l.shutdown(Shutdown::Both);
        }
    }

    /// This side is finished: flush what was read, tell the peer, drop what still arrives.
    fn close(&mut self) {
        if !self.closed {
            self.closed = true;
            self.send_close = !self.peer_closed;
        }
        self.inq.clear();
        self.shutdown_local();
    }

    fn removable(&self) -> bool {
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

/// The streams of a session: at most [`MAX_STREAMS`], so a vector searched by id is enough
/// (and keeps the in-guest binary small).
#[derive(Debug, Default)]
struct Streams(Vec<(u32, Stream)>);

impl Streams {
    fn get_mut(&mut self, id: u32) -> Option<&mut Stream> {
        self.0.iter_mut().find(|(i, _)| *i == id).map(|(_, s)| s)
    }
    fn contains(&self, id: u32) -> bool {
        self.0.iter().any(|(i, _)| *i == id)
    }
    fn insert(&mut self, id: u32, s: Stream) {
        self.0.push((id, s));
    }
    fn remove(&mut self, id: u32) {
        self.0.retain(|(i, _)| *i != id);
    }
    fn len(&self) -> usize {
        self.0.len()
    }
}

#[derive(Debug, Default)]
struct State {
    up: bool,
    closed: bool,
    /// Guest: the nonce of the session it asked for.
    nonce: u64,
    /// Guest: why the host refused the session.
    refused: Option<String>,
    send_session: Option<MuxFrame>,
    send_pad: bool,
    /// Bumped whenever a session ends, so threads of an old session notice.
    epoch: u64,
    streams: Streams,
    next_id: u32,
    /// Where the next data round starts, for fairness between streams.
    rr: usize,
    loose: VecDeque<MuxFrame>,
    stats: MuxStats,
}

impl State {
    fn live(&mut self, id: u32, epoch: u64) -> Option<&mut Stream> {
        if self.epoch != epoch {
            return None;
        }
        self.streams.get_mut(id)
    }

    /// Ends the session: every stream is shut down and forgotten.
    fn end_session(&mut self) {
        self.up = false;
        for (_, s) in &self.streams.0 {
            s.shutdown_local();
        }
        self.streams.0.clear();
        self.loose.clear();
        self.epoch += 1;
    }

    fn refuse(&mut self, id: u32) {
        if self.loose.len() < MAX_LOOSE {
            self.loose.push_back(MuxFrame::Refuse { id });
        }
    }
}

struct Shared {
    role: Role,
    st: Mutex<State>,
    cv: Condvar,
    acceptor: Acceptor,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wait<'a>(&self, g: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.cv.wait(g).unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until notified or `deadline`; `None` once the deadline passed.
    fn wait_until<'a>(
        &self,
        g: MutexGuard<'a, State>,
        deadline: Instant,
    ) -> Option<MutexGuard<'a, State>> {
        let left = deadline.checked_duration_since(Instant::now())?;
        if left.is_zero() {
            return None;
        }
        Some(
            self.cv
                .wait_timeout(g, left)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0),
        )
    }

    fn wake(&self) {
        self.cv.notify_all();
    }
}

/// A multiplexer running on one line; clones share it.
#[derive(Clone)]
pub struct Mux {
    sh: Arc<Shared>,
}

impl std::fmt::Debug for Mux {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mux")
            .field("role", &self.sh.role)
            .field("stats", &self.stats())
            .finish()
    }
}

/// A nonce that differs between the sessions of one process and between processes: the time
/// in nanoseconds mixed with the process id. It only has to tell a session's `Welcome` from
/// stale ones, not resist guessing.
fn fresh_nonce() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    t ^ (u64::from(std::process::id()) << 40)
}

/// Starts a named thread (one non-generic function, so each thread body costs no spawn code
/// of its own in the in-guest binary).
fn spawn(name: &str, f: Box<dyn FnOnce() + Send>) -> io::Result<()> {
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(f)
        .map(drop)
}

impl Mux {
    /// Starts the reader and writer threads on `line`; streams the peer opens are served by
    /// `acceptor`. A guest starts by asking for a session.
    pub fn start(role: Role, line: Line, acceptor: Acceptor) -> io::Result<Mux> {
        let st = State {
            next_id: match role {
                Role::Host => 1,
                Role::Guest => 2,
            },
            ..State::default()
        };
        let sh = Arc::new(Shared {
            role,
            st: Mutex::new(st),
            cv: Condvar::new(),
            acceptor,
        });
        if role == Role::Guest {
            new_guest_session(&mut sh.lock());
        }
        let Line {
            reader,
            writer,
            wait_peer,
        } = line;
        let w = sh.clone();
        spawn("mux-writer", Box::new(move || writer_loop(&w, writer)))?;
        let r = sh.clone();
        spawn(
            "mux-reader",
            Box::new(move || reader_loop(&r, reader, wait_peer)),
        )?;
        Ok(Mux { sh })
    }

    /// Waits until a session with the peer is up.
    pub fn wait_up(&self, timeout: Duration) -> Result<(), OpenError> {
        let deadline = Instant::now() + timeout;
        let mut st = self.sh.lock();
        loop {
            if st.closed {
                return Err(OpenError::Closed);
            }
            if let Some(m) = &st.refused {
                return Err(OpenError::SessionRefused(m.clone()));
            }
            if st.up {
                return Ok(());
            }
            st = self
                .sh
                .wait_until(st, deadline)
                .ok_or(OpenError::NoSession(timeout))?;
        }
    }

    /// Waits until the line is closed for good (returns at once if it is).
    pub fn wait_closed(&self) {
        let mut st = self.sh.lock();
        while !st.closed {
            st = self.sh.wait(st);
        }
    }

    /// Opens a stream to the peer's `port`, waiting at most `timeout` for a session and for
    /// the peer's answer. Bridge it with [`Opened::bridge`].
    pub fn open(&self, port: u32, timeout: Duration) -> Result<Opened, OpenError> {
        let deadline = Instant::now() + timeout;
        self.wait_up(timeout)?;
        let mut st = self.sh.lock();
        if !st.up {
            return Err(OpenError::Reset { port });
        }
        if st.streams.len() >= MAX_STREAMS {
            return Err(OpenError::TooMany);
        }
        let mut id = st.next_id;
        while st.streams.contains(id) {
            id = id.wrapping_add(2).max(2 - (id & 1));
        }
        st.next_id = id.wrapping_add(2).max(2 - (id & 1));
        let epoch = st.epoch;
        let mut s = Stream::new(port, Phase::Opening, 0);
        s.send_open = true;
        st.streams.insert(id, s);
        self.sh.wake();
        loop {
            let Some(s) = st.live(id, epoch) else {
                return Err(OpenError::Reset { port });
            };
            match s.phase {
                Phase::Open => {
                    st.stats.opened += 1;
                    return Ok(Opened {
                        sh: self.sh.clone(),
                        id,
                        port,
                        epoch,
                        bridged: false,
                    });
                }
                Phase::Refused => {
                    st.streams.remove(id);
                    return Err(OpenError::Refused { port });
                }
                Phase::Opening => {}
                Phase::Accepting | Phase::Done => return Err(OpenError::Reset { port }),
            }
            st = match self.sh.wait_until(st, deadline) {
                Some(g) => g,
                None => {
                    let mut st = self.sh.lock();
                    if let Some(s) = st.live(id, epoch).filter(|s| s.phase == Phase::Opening) {
                        // The peer may still accept: tell it the stream is over.
                        s.phase = Phase::Done;
                        s.send_close = true;
                        self.sh.wake();
                        return Err(OpenError::Timeout { port, timeout });
                    }
                    st
                }
            };
        }
    }

    /// Opens a stream to the peer's `port` and returns the local end of a socket pair bridged
    /// to it: reading, writing, half-closing and closing it act on the stream.
    pub fn connect(&self, port: u32, timeout: Duration) -> Result<UnixStream, OpenError> {
        let opened = self.open(port, timeout)?;
        let (mine, bridged) = UnixStream::pair()?;
        opened.bridge(bridged)?;
        Ok(mine)
    }

    /// Current counters.
    pub fn stats(&self) -> MuxStats {
        let st = self.sh.lock();
        let mut s = st.stats.clone();
        s.streams = st.streams.len();
        s
    }

    /// Whether a session is up.
    pub fn is_up(&self) -> bool {
        self.sh.lock().up
    }

    /// Stops for good: every stream is shut down and the writer ends. (The reader ends when
    /// the line reports end of file or an error; close the line to make it.)
    pub fn close(&self) {
        let mut st = self.sh.lock();
        st.end_session();
        st.closed = true;
        self.sh.wake();
    }
}

/// A stream the peer accepted, not yet bridged; dropping it closes the stream.
#[derive(Debug)]
pub struct Opened {
    sh: Arc<Shared>,
    id: u32,
    port: u32,
    epoch: u64,
    bridged: bool,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("role", &self.role).finish()
    }
}

impl Opened {
    /// The stream id (unique within the session).
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Bridges `local` to the stream: what is written to its peer socket reaches the peer's
    /// port, and what the peer sends can be read from it.
    pub fn bridge(mut self, local: UnixStream) -> Result<(), OpenError> {
        self.bridged = true;
        let mut st = self.sh.lock();
        let Some(s) = st.live(self.id, self.epoch) else {
            let _ = local.shutdown(Shutdown::Both);
            return Err(OpenError::Reset { port: self.port });
        };
        if s.phase != Phase::Open {
            let _ = local.shutdown(Shutdown::Both);
            return Err(OpenError::Reset { port: self.port });
        }
        start_pumps(&self.sh, &mut st, self.id, self.epoch, local);
        Ok(())
    }
}

impl Drop for Opened {
    fn drop(&mut self) {
        if !self.bridged {
            let mut st = self.sh.lock();
            if let Some(s) = st.live(self.id, self.epoch) {
                s.phase = Phase::Done;
                s.close();
            }
            self.sh.wake();
        }
    }
}

/// Starts the two pump threads of an open stream (lock held).
fn start_pumps(sh: &Arc<Shared>, st: &mut State, id: u32, epoch: u64, local: UnixStream) {
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

fn writer_loop(sh: &Shared, mut w: Box<dyn Write + Send>) {
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

fn reader_loop(
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

fn new_guest_session(st: &mut State) {
    st.nonce = fresh_nonce();
    st.refused = None;
    st.send_session = Some(MuxFrame::Hello {
        version: MUX_VERSION,
        nonce: st.nonce,
    });
}

/// A frame that breaks the protocol: the session in progress ends. The guest asks for a new
/// one; the host sends the padding alone, which ends the guest's session if it still believes
/// in it (the guest then asks for a new one).
fn protocol_error(sh: &Shared, what: &str) {
    let mut st = sh.lock();
    st.stats.protocol_errors += 1;
    st.stats.last_error = Some(what.to_owned());
    if !st.up {
        return; // already looking for a session marker
    }
    st.end_session();
    match sh.role {
        Role::Guest => new_guest_session(&mut st),
        Role::Host => st.send_pad = true,
    }
    sh.wake();
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
        MuxFrame::Hello { version, nonce } => {
            if sh.role != Role::Host {
                return;
            }
            st.end_session();
            if version == MUX_VERSION {
                st.up = true;
                st.stats.sessions += 1;
                st.send_session = Some(MuxFrame::Welcome {
                    version: MUX_VERSION,
                    nonce,
                });
            } else {
                st.send_session = Some(MuxFrame::Error(format!(
                    "the guest speaks multiplexer version {version}, the host {MUX_VERSION}: \
                     use a host and image built from the same minke"
                )));
            }
        }
        MuxFrame::Welcome { version, nonce } => {
            if sh.role != Role::Guest || st.up || nonce != st.nonce {
                return; // stale
            }
            if version == MUX_VERSION {
                st.up = true;
                st.stats.sessions += 1;
            } else {
                st.refused = Some(format!(
                    "the host speaks multiplexer version {version}, the guest {MUX_VERSION}"
                ));
            }
        }
        MuxFrame::Error(msg) => {
            if sh.role == Role::Guest && !st.up {
                st.refused = Some(msg);
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

/// Connects the local socket of a stream the peer opened, on a thread of its own.
fn spawn_acceptor(sh: &Arc<Shared>, st: &mut State, id: u32, port: u32) {
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

#[cfg(test)]
mod tests;
