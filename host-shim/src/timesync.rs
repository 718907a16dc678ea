//! Host side of time sync: the guest's timesync agent connects to host port [`minke_protocol::TIMESYNC_PORT`], says
//! `Hello`, and asks `TimeRequest { seq, t1 }`; the host answers `TimeReply { seq, t1, t2, t3 }`
//! with its CLOCK_REALTIME receive and send times, and pushes `Resumed` after a pause.
//!
//! The guest is not trusted: a connection that sends garbage, an oversize frame, an unexpected
//! message or nothing at all is closed and the error recorded; at most
//! [`MAX_CONNECTIONS`] connections are served at once, each with bounded buffers, so a flood
//! costs at most a few threads and a few MiB.

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use minke_protocol::wire::{read_frame, write_frame, FrameError};
use minke_protocol::{GuestMsg, HostMsg, Purpose, Secret, PROTOCOL_VERSION};

use crate::transport::Duplex;

/// Most guest connections served at once; more are closed at once.
pub const MAX_CONNECTIONS: usize = 4;
/// Errors kept for inspection (oldest dropped first).
pub const MAX_ERRORS: usize = 16;
/// How long the guest may stay silent before its `Hello`.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a write to the guest may block.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// Counters of the time server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TimesyncStats {
    /// Connections that completed the handshake.
    pub connections: u64,
    /// `TimeReply` messages sent.
    pub replies: u64,
    /// `Resumed` messages pushed.
    pub resumed_pushes: u64,
    /// The most recent errors (connection closed because of them).
    pub errors: Vec<String>,
}

#[derive(Debug, Default)]
struct Shared {
    connections: AtomicU64,
    replies: AtomicU64,
    pushes: AtomicU64,
    active: AtomicU64,
    errors: Mutex<VecDeque<String>>,
    /// Writers of handshaken connections, for `Resumed`.
    writers: Mutex<BTreeMap<u64, Box<dyn Duplex>>>,
    next_id: AtomicU64,
    stop: AtomicBool,
    /// The VM secret: a guest's `Hello` must prove it, and the `Welcome` proves it back.
    /// Always set by the constructors (`None` only in `Default`, refusing everyone).
    secret: Option<Secret>,
}

impl Shared {
    fn with_secret(secret: Secret) -> Arc<Shared> {
        Arc::new(Shared {
            secret: Some(secret),
            ..Shared::default()
        })
    }
}

impl Shared {
    fn record(&self, e: String) {
        let mut errs = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        if errs.len() == MAX_ERRORS {
            errs.pop_front();
        }
        errs.push_back(e);
    }
}

/// The host's time server; stops accepting on drop.
#[derive(Debug)]
pub struct TimeServer {
    shared: Arc<Shared>,
    path: Option<PathBuf>,
}

/// Host CLOCK_REALTIME in nanoseconds since the epoch.
pub fn realtime_ns() -> i64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Realtime);
    t.tv_sec as i64 * 1_000_000_000 + t.tv_nsec as i64
}

impl TimeServer {
    /// Accepts connections with `accept` on a thread of its own until the server stops.
    fn accept_loop<A>(&self, mut accept: A) -> io::Result<()>
    where
        A: FnMut() -> io::Result<Box<dyn Duplex>> + Send + 'static,
    {
        let shared = self.shared.clone();
        std::thread::Builder::new()
            .name("minke-timesync".into())
            .spawn(move || loop {
                let conn = accept();
                if shared.stop.load(Ordering::SeqCst) {
                    break;
                }
                match conn {
                    Ok(s) => spawn_conn(&shared, s),
                    Err(e) => shared.record(format!("accept failed: {e}")),
                }
            })?;
        Ok(())
    }

    /// Listens on the hybrid vsock socket `path` (`vm.vsock_PORT`).
    pub fn listen_unix(path: &Path, secret: Secret) -> io::Result<TimeServer> {
        let _ = std::fs::remove_file(path);
        let l = UnixListener::bind(path)?;
        let server = TimeServer {
            shared: Shared::with_secret(secret),
            path: Some(path.to_path_buf()),
        };
        server.accept_loop(move || l.accept().map(|(s, _)| Box::new(s) as Box<dyn Duplex>))?;
        Ok(server)
    }

    /// Listens for kernel vsock connections on host `port` (any CID).
    pub fn listen_vsock(port: u32, secret: Secret) -> io::Result<TimeServer> {
        let l = vsock::VsockListener::bind_with_cid_port(libc::VMADDR_CID_ANY, port)?;
        let server = TimeServer {
            shared: Shared::with_secret(secret),
            path: None,
        };
        server.accept_loop(move || l.accept().map(|(s, _)| Box::new(s) as Box<dyn Duplex>))?;
        Ok(server)
    }

    /// A server with no listener, fed connections by hand (tests, other transports).
    pub fn detached(secret: Secret) -> TimeServer {
        TimeServer {
            shared: Shared::with_secret(secret),
            path: None,
        }
    }

    /// Serves one connection on a new thread.
    pub fn serve(&self, conn: Box<dyn Duplex>) {
        spawn_conn(&self.shared, conn);
    }

    /// A function that serves connections on this server from elsewhere (the serial
    /// transport's multiplexer hands it the streams the guest opens to the time port); it
    /// closes them once the server is dropped.
    pub fn feeder(&self) -> impl Fn(Box<dyn Duplex>) + Send + Sync + 'static {
        let shared = self.shared.clone();
        move |conn| {
            if !shared.stop.load(Ordering::SeqCst) {
                spawn_conn(&shared, conn);
            }
        }
    }

    /// Pushes `Resumed` to every handshaken connection; returns how many got it.
    pub fn push_resumed(&self) -> usize {
        let mut writers = self
            .shared
            .writers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut sent = 0;
        writers.retain(|_, w| match write_frame(w, &HostMsg::Resumed) {
            Ok(()) => {
                sent += 1;
                true
            }
            Err(e) => {
                self.shared
                    .record(format!("cannot push Resumed: {}", crate::error_chain(&e)));
                false
            }
        });
        self.shared.pushes.fetch_add(sent as u64, Ordering::SeqCst);
        sent
    }

    /// Current counters.
    pub fn stats(&self) -> TimesyncStats {
        let s = &self.shared;
        TimesyncStats {
            connections: s.connections.load(Ordering::SeqCst),
            replies: s.replies.load(Ordering::SeqCst),
            resumed_pushes: s.pushes.load(Ordering::SeqCst),
            errors: s
                .errors
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .cloned()
                .collect(),
        }
    }
}

impl Drop for TimeServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(p) = &self.path {
            // Wake the accept loop so it sees the flag, then remove the socket.
            let _ = std::os::unix::net::UnixStream::connect(p);
            let _ = std::fs::remove_file(p);
        }
        self.shared
            .writers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}

fn spawn_conn(shared: &Arc<Shared>, conn: Box<dyn Duplex>) {
    if shared.active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS as u64 {
        shared.active.fetch_sub(1, Ordering::SeqCst);
        shared.record(format!(
            "more than {MAX_CONNECTIONS} time sync connections: closed one"
        ));
        return;
    }
    let conn: Box<dyn Duplex> = Box::new(HelloDeadline::new(conn, HELLO_TIMEOUT));
    let shared2 = shared.clone();
    let spawned = std::thread::Builder::new()
        .name("minke-timesync-conn".into())
        .spawn(move || {
            let id = shared2.next_id.fetch_add(1, Ordering::SeqCst);
            if let Err(e) = serve_conn(&shared2, id, conn) {
                shared2.record(e);
            }
            shared2
                .writers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            shared2.active.fetch_sub(1, Ordering::SeqCst);
        });
    if let Err(e) = spawned {
        shared.active.fetch_sub(1, Ordering::SeqCst);
        shared.record(format!("cannot start a time sync thread: {e}"));
    }
}

/// One deadline for the guest's whole `Hello`: a per-read timeout alone lets a guest that
/// sends a byte at a time hold a connection slot for ever. Reads fail once `limit` has passed
/// since the connection was accepted, until the host first writes (its `Welcome`, or an error);
/// from then on the connection is as if unwrapped.
#[derive(Debug)]
struct HelloDeadline {
    inner: Box<dyn Duplex>,
    deadline: Option<std::time::Instant>,
    limit: Duration,
    /// The read timeout asked for through [`Duplex::set_read_timeout`].
    wanted: std::cell::Cell<Option<Duration>>,
}

impl HelloDeadline {
    fn new(inner: Box<dyn Duplex>, limit: Duration) -> Self {
        HelloDeadline {
            inner,
            deadline: Some(std::time::Instant::now() + limit),
            limit,
            wanted: std::cell::Cell::new(None),
        }
    }
}

impl io::Read for HelloDeadline {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(d) = self.deadline {
            let left = d.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no complete Hello within {:?}", self.limit),
                ));
            }
            let t = self.wanted.get().map_or(left, |w| w.min(left));
            self.inner.set_read_timeout(Some(t))?;
        }
        self.inner.read(buf)
    }
}

impl io::Write for HelloDeadline {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.deadline.take().is_some() {
            self.inner.set_read_timeout(self.wanted.get())?;
        }
        self.inner.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl Duplex for HelloDeadline {
    fn try_clone_box(&self) -> io::Result<Box<dyn Duplex>> {
        self.inner.try_clone_box()
    }
    fn shutdown_write(&self) -> io::Result<()> {
        self.inner.shutdown_write()
    }
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.wanted.set(t);
        self.inner.set_read_timeout(t)
    }
    fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.inner.set_write_timeout(t)
    }
}

#[cfg(test)]
mod hello_deadline_tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use std::time::Instant;

    #[test]
    fn a_guest_dribbling_its_hello_is_cut_off_at_the_deadline() {
        let (mut g, h) = UnixStream::pair().unwrap();
        let mut c = HelloDeadline::new(Box::new(h), Duration::from_millis(300));
        // A per-read timeout longer than the whole deadline does not extend it.
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let dribble = std::thread::spawn(move || {
            for _ in 0..40 {
                if g.write_all(&[0]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let start = Instant::now();
        let mut buf = [0u8; 1];
        let err = loop {
            match c.read(&mut buf) {
                Ok(0) => panic!("end of stream before the deadline"),
                Ok(_) => {}
                Err(e) => break e,
            }
        };
        assert!(start.elapsed() < Duration::from_secs(2), "{err}");
        assert!(
            matches!(
                err.kind(),
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
            ),
            "{err}"
        );
        drop(c);
        dribble.join().unwrap();
    }

    #[test]
    fn after_the_hosts_first_write_the_deadline_is_gone() {
        let (mut g, h) = UnixStream::pair().unwrap();
        let mut c = HelloDeadline::new(Box::new(h), Duration::from_millis(100));
        g.write_all(b"hi").unwrap();
        let mut buf = [0u8; 2];
        c.read_exact(&mut buf).unwrap();
        c.write_all(b"welcome").unwrap();
        std::thread::sleep(Duration::from_millis(200));
        g.write_all(b"late").unwrap();
        let mut buf = [0u8; 4];
        c.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"late");
    }
}

fn serve_conn(shared: &Shared, id: u64, mut conn: Box<dyn Duplex>) -> Result<(), String> {
    let err = |what: &str, e: FrameError| format!("time sync {what}: {}", crate::error_chain(&e));
    conn.set_read_timeout(Some(HELLO_TIMEOUT))
        .map_err(|e| format!("time sync setup: {e}"))?;
    conn.set_write_timeout(Some(WRITE_TIMEOUT))
        .map_err(|e| format!("time sync setup: {e}"))?;
    let Some(secret) = &shared.secret else {
        return Err("time sync hello: this server has no VM secret".into());
    };
    let nonce = match read_frame::<_, GuestMsg>(&mut conn).map_err(|e| err("hello", e))? {
        GuestMsg::Hello {
            version,
            nonce,
            proof,
            ..
        } if version == PROTOCOL_VERSION => {
            if !secret.verify(Purpose::TimeGuest, &nonce, &proof) {
                let msg = "the Hello does not prove this VM's secret".to_string();
                let _ = write_frame(&mut conn, &HostMsg::Error(msg.clone()));
                return Err(format!("time sync hello: {msg}"));
            }
            nonce
        }
        GuestMsg::Hello { version, .. } => {
            let msg = format!(
                "protocol version {version} not supported (host speaks {PROTOCOL_VERSION})"
            );
            let _ = write_frame(&mut conn, &HostMsg::Error(msg.clone()));
            return Err(format!("time sync hello: {msg}"));
        }
        other => {
            return Err(format!(
                "time sync hello: expected Hello, got {}",
                kind(&other)
            ))
        }
    };
    write_frame(
        &mut conn,
        &HostMsg::Welcome {
            version: PROTOCOL_VERSION,
            proof: secret.proof(Purpose::TimeHost, &nonce),
        },
    )
    .map_err(|e| err("welcome", e))?;
    shared.connections.fetch_add(1, Ordering::SeqCst);
    // After the handshake the guest may stay quiet for as long as it likes.
    conn.set_read_timeout(None)
        .map_err(|e| format!("time sync setup: {e}"))?;
    let pusher = conn
        .try_clone_box()
        .map_err(|e| format!("time sync setup: {e}"))?;
    shared
        .writers
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(id, pusher);
    let mut writer = conn
        .try_clone_box()
        .map_err(|e| format!("time sync setup: {e}"))?;
    loop {
        let msg = match read_frame::<_, GuestMsg>(&mut conn) {
            Ok(m) => m,
            Err(FrameError::Closed) => return Ok(()),
            Err(e) => return Err(err("request", e)),
        };
        let t2 = realtime_ns();
        let GuestMsg::TimeRequest { seq, t1 } = msg else {
            return Err(format!(
                "time sync: unexpected {} from the guest",
                kind(&msg)
            ));
        };
        // Replies and pushes share the socket: hold the pusher lock while writing so frames
        // never interleave.
        let writers = shared.writers.lock().unwrap_or_else(|p| p.into_inner());
        let reply = HostMsg::TimeReply {
            seq,
            t1,
            t2,
            t3: realtime_ns(),
        };
        let res = write_frame(&mut writer, &reply);
        drop(writers);
        res.map_err(|e| err("reply", e))?;
        shared.replies.fetch_add(1, Ordering::SeqCst);
    }
}

fn kind(m: &GuestMsg) -> String {
    let s = format!("{m:?}");
    s.split(['(', ' ', '{'])
        .next()
        .unwrap_or("message")
        .to_string()
}

/// The offsets (ms) the guest's time sync agent logged, in order: its step and slew lines
/// ([`minke_protocol::console::step_line`], [`minke_protocol::console::slew_line`]) in
/// console text.
pub fn logged_offsets(console: &str) -> Vec<f64> {
    console
        .lines()
        .filter_map(minke_protocol::console::parse_offset_ms)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_come_from_the_agents_step_and_slew_lines() {
        use minke_protocol::console::{slew_line, step_line};
        let console = format!(
            "timesync: {}\n\
             control: something else 3 ms\n\
             timesync: {}\n\
             timesync: minke agent timesync: slew offset garbage ms\n",
            step_line(5_001_610_000, 400_000, 0.0),
            slew_line(-15_000, 300_000, 0.0, 0.0, 16),
        );
        assert_eq!(logged_offsets(&console), vec![5001.61, -0.015]);
    }
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use std::time::Instant;

    fn wait_for(srv: &TimeServer, f: impl Fn(&TimesyncStats) -> bool) -> TimesyncStats {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let s = srv.stats();
            if f(&s) || Instant::now() > end {
                return s;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn secret() -> Secret {
        Secret::from_bytes(&[0x11; 32]).unwrap()
    }

    fn guest_hello(nonce: [u8; 32]) -> GuestMsg {
        GuestMsg::Hello {
            version: PROTOCOL_VERSION,
            client: "t".into(),
            nonce,
            proof: secret().proof(Purpose::TimeGuest, &nonce),
        }
    }

    fn welcome(nonce: [u8; 32]) -> HostMsg {
        HostMsg::Welcome {
            version: PROTOCOL_VERSION,
            proof: secret().proof(Purpose::TimeHost, &nonce),
        }
    }

    fn hello(s: &mut UnixStream) {
        write_frame(s, &guest_hello([9; 32])).unwrap();
        assert_eq!(read_frame::<_, HostMsg>(s).unwrap(), welcome([9; 32]));
    }

    /// Only a holder of the secret gets the time, and the Welcome proves the server holds it
    /// over the guest's own nonce.
    #[test]
    fn a_hello_without_the_secret_gets_no_time() {
        let srv = TimeServer::detached(secret());
        for hello in [
            GuestMsg::Hello {
                version: PROTOCOL_VERSION,
                client: "intruder".into(),
                nonce: [1; 32],
                proof: [0; 32],
            },
            GuestMsg::Hello {
                version: PROTOCOL_VERSION,
                client: "replay".into(),
                nonce: [2; 32],
                proof: secret().proof(Purpose::TimeGuest, &[1; 32]),
            },
            GuestMsg::Hello {
                version: PROTOCOL_VERSION,
                client: "other purpose".into(),
                nonce: [3; 32],
                proof: secret().proof(Purpose::TimeHost, &[3; 32]),
            },
        ] {
            let (mut g, h) = UnixStream::pair().unwrap();
            srv.serve(Box::new(h));
            write_frame(&mut g, &hello).unwrap();
            match read_frame::<_, HostMsg>(&mut g).unwrap() {
                HostMsg::Error(e) => assert!(e.contains("secret"), "{e}"),
                m => panic!("expected a refusal, got {m:?}"),
            }
            let mut rest = Vec::new();
            g.read_to_end(&mut rest).unwrap();
            assert!(rest.is_empty(), "no time after a refusal");
        }
        let st = wait_for(&srv, |s| s.errors.len() == 3);
        assert_eq!((st.connections, st.replies), (0, 0));
        // The holder's Welcome carries the proof over its nonce, which the guest checks.
        let (mut g, h) = UnixStream::pair().unwrap();
        srv.serve(Box::new(h));
        write_frame(&mut g, &guest_hello([5; 32])).unwrap();
        match read_frame::<_, HostMsg>(&mut g).unwrap() {
            HostMsg::Welcome { proof, .. } => {
                assert!(secret().verify(Purpose::TimeHost, &[5; 32], &proof));
                assert!(!secret().verify(Purpose::TimeHost, &[6; 32], &proof));
            }
            m => panic!("{m:?}"),
        }
    }

    #[test]
    fn answers_requests_with_host_times_and_pushes_resumed() {
        let srv = TimeServer::detached(secret());
        let (mut g, h) = UnixStream::pair().unwrap();
        srv.serve(Box::new(h));
        hello(&mut g);
        for seq in 0..3 {
            let before = realtime_ns();
            write_frame(&mut g, &GuestMsg::TimeRequest { seq, t1: -5 }).unwrap();
            match read_frame::<_, HostMsg>(&mut g).unwrap() {
                HostMsg::TimeReply { seq: s, t1, t2, t3 } => {
                    assert_eq!((s, t1), (seq, -5));
                    assert!(before <= t2 && t2 <= t3 && t3 <= realtime_ns());
                }
                m => panic!("{m:?}"),
            }
        }
        assert_eq!(srv.push_resumed(), 1);
        assert_eq!(read_frame::<_, HostMsg>(&mut g).unwrap(), HostMsg::Resumed);
        drop(g);
        let st = wait_for(&srv, |s| s.replies == 3);
        assert_eq!((st.connections, st.replies, st.resumed_pushes), (1, 3, 1));
    }

    /// The guest agent sends its first request right behind Hello, in one go.
    #[test]
    fn a_request_pipelined_behind_hello_is_answered_after_welcome() {
        let srv = TimeServer::detached(secret());
        let (mut g, h) = UnixStream::pair().unwrap();
        srv.serve(Box::new(h));
        let mut both = Vec::new();
        write_frame(&mut both, &guest_hello([8; 32])).unwrap();
        write_frame(&mut both, &GuestMsg::TimeRequest { seq: 1, t1: 7 }).unwrap();
        g.write_all(&both).unwrap();
        assert_eq!(read_frame::<_, HostMsg>(&mut g).unwrap(), welcome([8; 32]));
        match read_frame::<_, HostMsg>(&mut g).unwrap() {
            HostMsg::TimeReply { seq, t1, .. } => assert_eq!((seq, t1), (1, 7)),
            m => panic!("{m:?}"),
        }
    }

    #[test]
    fn hostile_frames_close_the_connection_and_are_recorded() {
        let srv = TimeServer::detached(secret());
        let cases: [&[u8]; 3] = [
            &u32::MAX.to_le_bytes(),         // oversize length
            &[3, 0, 0, 0, 0xff, 0xff, 0xff], // garbage payload
            &[0, 0],                         // truncated prefix then EOF
        ];
        for bytes in cases {
            let (mut g, h) = UnixStream::pair().unwrap();
            srv.serve(Box::new(h));
            g.write_all(bytes).unwrap();
            g.shutdown(std::net::Shutdown::Write).unwrap();
            let mut rest = Vec::new();
            g.read_to_end(&mut rest).unwrap();
            assert!(rest.is_empty(), "no reply to garbage");
        }
        // A well-formed but unexpected message after the handshake.
        let (mut g, h) = UnixStream::pair().unwrap();
        srv.serve(Box::new(h));
        hello(&mut g);
        write_frame(&mut g, &GuestMsg::Stdout(vec![1])).unwrap();
        let mut rest = Vec::new();
        g.read_to_end(&mut rest).unwrap();
        let st = wait_for(&srv, |s| s.errors.len() == 4);
        assert_eq!(st.errors.len(), 4, "{:?}", st.errors);
        assert!(
            st.errors.iter().any(|e| e.contains("exceeds")),
            "{:?}",
            st.errors
        );
        assert!(
            st.errors.iter().any(|e| e.contains("unexpected Stdout")),
            "{:?}",
            st.errors
        );
    }

    #[test]
    fn connection_flood_is_bounded() {
        let srv = TimeServer::detached(secret());
        let mut held = Vec::new();
        for _ in 0..(MAX_CONNECTIONS + 20) {
            let (g, h) = UnixStream::pair().unwrap();
            srv.serve(Box::new(h));
            held.push(g);
        }
        let st = wait_for(&srv, |s| s.errors.len() >= MAX_ERRORS);
        assert!(
            st.errors.iter().all(|e| e.contains("more than")),
            "{:?}",
            st.errors
        );
        assert_eq!(st.errors.len(), MAX_ERRORS, "error log is bounded");
        assert!(srv.shared.active.load(Ordering::SeqCst) <= MAX_CONNECTIONS as u64);
    }

    #[test]
    fn request_flood_is_answered_in_order() {
        let srv = TimeServer::detached(secret());
        let (mut g, h) = UnixStream::pair().unwrap();
        srv.serve(Box::new(h));
        hello(&mut g);
        let mut w = g.try_clone().unwrap();
        let n = 20_000u64;
        let writer = std::thread::spawn(move || {
            for seq in 0..n {
                write_frame(&mut w, &GuestMsg::TimeRequest { seq, t1: 0 }).unwrap();
            }
        });
        for seq in 0..n {
            match read_frame::<_, HostMsg>(&mut g).unwrap() {
                HostMsg::TimeReply { seq: s, .. } => assert_eq!(s, seq),
                m => panic!("{m:?}"),
            }
        }
        writer.join().unwrap();
    }
}
