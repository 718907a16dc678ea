//! The control agent: listens on vsock (or, under the serial transport, on the Unix socket the
//! serial agent bridges to the host), accepts connections from the host only (CID 2), runs
//! the handshake and then exactly one request per connection (exec, files, forward, info,
//! logs, power). Conversations run concurrently, each on a worker thread of its own; workers
//! are kept between connections (see `Workers`).
//!
//! Host-side contract, per connection: send `Hello { version: PROTOCOL_VERSION, .. }`; read
//! `Welcome` (or `Error`, then the agent closes); send one request and follow the conversation
//! described in [`minke_protocol::msg`]. The agent never sends a frame before the host's
//! `Hello`, and closes the connection when the conversation is over.

pub mod exec;
pub mod files;
pub mod forward;

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use minke_protocol::config::Container;
use minke_protocol::msg::{InfoReply, PowerAction};
use minke_protocol::wire::{read_frame, write_frame, FrameError, MAX_CHUNK, PROTOCOL_VERSION};
use minke_protocol::{GuestMsg, HostMsg, Purpose, Secret};

use crate::conn::{Conn, HostListener, Peer};

/// Directory where PID1 keeps one log ring buffer file per service.
pub const LOG_DIR: &str = "/run/minke/log";

/// Why a conversation ended early.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The transport failed or the host sent an undecodable frame; nothing more can be sent.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The request cannot be served; the message goes to the host as `GuestMsg::Error`.
    #[error("{0}")]
    Refused(String),
}

impl From<io::Error> for ControlError {
    fn from(e: io::Error) -> Self {
        ControlError::Frame(FrameError::Io(e))
    }
}

/// What a conversation handler may need from the agent: the image config and where the
/// guest-side files live. Tests point the paths at temporary files.
pub struct Ctx {
    /// Containers of the image.
    pub containers: Vec<Container>,
    /// The image config file (sent back verbatim by `Info`).
    pub config_path: PathBuf,
    /// The boot timeline file.
    pub boot_json_path: PathBuf,
    /// Directory of service log ring buffers.
    pub log_dir: PathBuf,
    /// Performs a power action (signals PID1 in the guest).
    pub power: Box<dyn Fn(PowerAction) -> io::Result<()> + Send + Sync>,
    /// The VM secret every `Hello` must prove, or why the guest has none (then every
    /// connection is refused with that reason).
    pub secret: Result<Secret, String>,
}

impl Ctx {
    /// The context of the real agent in a guest.
    pub fn guest() -> Ctx {
        let cfg = crate::load_config("control");
        Ctx {
            containers: cfg.containers,
            config_path: minke_protocol::IMAGE_CONFIG_PATH.into(),
            boot_json_path: minke_protocol::BOOT_TIMELINE_PATH.into(),
            log_dir: LOG_DIR.into(),
            power: Box::new(signal_pid1),
            secret: crate::auth::secret().cloned().map_err(str::to_owned),
        }
    }
}

/// Asks PID1 to power off (SIGUSR2) or reboot (SIGUSR1).
fn signal_pid1(action: PowerAction) -> io::Result<()> {
    use rustix::process::{kill_process, Pid, Signal};
    let sig = match action {
        PowerAction::Poweroff => Signal::USR2,
        PowerAction::Reboot => Signal::USR1,
    };
    kill_process(Pid::INIT, sig)?;
    Ok(())
}

/// Runs the control agent on `port` (vsock, or its Unix socket under the serial transport);
/// returns the process exit code (only on failure to listen: the accept loop runs for ever).
pub fn run(port: u32) -> i32 {
    let ctx = Arc::new(Ctx::guest());
    let listener = match HostListener::bind(port) {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "minke agent control: cannot listen on port {port} over {}: {e}",
                crate::conn::transport_name()
            );
            return 1;
        }
    };
    crate::notify_ready("control");
    eprintln!(
        "minke agent control: listening on {}",
        listener.describe(port)
    );
    let workers = Workers::new(Arc::clone(&ctx), MAX_CONNECTIONS, HANDSHAKE_WITHIN);
    workers.ensure_idle();
    loop {
        let (mut conn, peer) = match listener.accept() {
            Ok(c) => c,
            Err(e) => {
                eprintln!("minke agent control: accept failed: {e}");
                std::thread::sleep(std::time::Duration::from_millis(100));
                continue;
            }
        };
        if let Peer::Cid(cid) = peer {
            eprintln!("{}", minke_protocol::console::refused_peer_line(cid));
            let msg = format!(
                "connection refused: only the host (cid {}) may use the control agent",
                minke_protocol::HOST_CID
            );
            let _ = write_frame(&mut conn, &GuestMsg::Error(msg));
            let _ = conn.shutdown(Shutdown::Both);
            continue;
        }
        workers.admit(conn);
    }
}

/// Most conversations served at once; connections beyond are refused with an `Error` frame
/// and closed, so a flood of connections cannot exhaust the guest's threads and memory.
const MAX_CONNECTIONS: usize = 64;
/// How long a new connection may take to complete its handshake before it is closed, so
/// connections that never speak (or trickle bytes) cannot hold the slots above for ever.
const HANDSHAKE_WITHIN: Duration = Duration::from_secs(10);

/// The threads that serve connections, kept between connections: starting a thread costs
/// about half a millisecond under TCG, a twentieth of an exec round trip. A connection goes to
/// an idle worker; when none is idle a new one starts, so concurrent conversations never wait
/// for each other. Workers beyond [`KEEP_IDLE`] end after [`IDLE_FOR`] without work. At most
/// `limit` connections are served at once (see [`Workers::admit`]).
struct Workers<C: Conn> {
    tx: mpsc::Sender<C>,
    rx: Arc<Mutex<mpsc::Receiver<C>>>,
    idle: Arc<AtomicUsize>,
    /// Connections admitted and not yet finished (queued or being served).
    active: Arc<AtomicUsize>,
    limit: usize,
    handshake_within: Duration,
    ctx: Arc<Ctx>,
}

/// Idle workers kept for the next connections.
const KEEP_IDLE: usize = 2;
/// How long a worker beyond [`KEEP_IDLE`] waits for work before it ends.
const IDLE_FOR: Duration = Duration::from_secs(30);

impl<C: Conn> Workers<C> {
    fn new(ctx: Arc<Ctx>, limit: usize, handshake_within: Duration) -> Workers<C> {
        let (tx, rx) = mpsc::channel();
        Workers {
            tx,
            rx: Arc::new(Mutex::new(rx)),
            idle: Arc::new(AtomicUsize::new(0)),
            active: Arc::new(AtomicUsize::new(0)),
            limit,
            handshake_within,
            ctx,
        }
    }

    /// Starts a worker unless one is idle.
    fn ensure_idle(&self) {
        if self.idle.load(Ordering::SeqCst) > 0 {
            return;
        }
        // Counted idle before it starts, so the next connection does not start another.
        self.idle.fetch_add(1, Ordering::SeqCst);
        if !self.spawn() {
            self.idle.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Starts a worker; false (logged) when the thread cannot be started.
    fn spawn(&self) -> bool {
        let (rx, idle, active, ctx) = (
            Arc::clone(&self.rx),
            Arc::clone(&self.idle),
            Arc::clone(&self.active),
            Arc::clone(&self.ctx),
        );
        let within = self.handshake_within;
        let spawned = std::thread::Builder::new()
            .name("control-conn".into())
            .spawn(move || worker(&rx, &idle, &active, &ctx, within));
        match spawned {
            Ok(_) => true,
            Err(e) => {
                eprintln!("minke agent control: cannot start a connection thread: {e}");
                false
            }
        }
    }

    /// Serves `conn` on a worker, or refuses it when `limit` connections are being served.
    /// Only the accept loop admits, so the check and the count cannot race another admission.
    fn admit(&self, conn: C) {
        if self.active.load(Ordering::SeqCst) >= self.limit {
            refuse_busy(conn, self.limit);
            return;
        }
        self.active.fetch_add(1, Ordering::SeqCst);
        self.hand_over(conn);
    }

    /// Gives `conn` to an idle worker, or to a new one when none is idle. The idle worker is
    /// claimed here (the count drops now, not when a worker picks the connection up), so two
    /// connections in quick succession never both count on the same idle worker, the second
    /// waiting for the first conversation to end. When no thread can be started, `conn` waits
    /// for the next worker that becomes free.
    fn hand_over(&self, conn: C) {
        let claimed = self
            .idle
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if !claimed {
            self.spawn();
        }
        // The receiver lives in the workers' Arc as long as `self`: sending cannot fail.
        let _ = self.tx.send(conn);
    }
}

/// Tells a connection beyond the limit why it is closed, without ever waiting for it: the
/// accept loop must not stall on a peer that does not read.
fn refuse_busy<C: Conn>(mut conn: C, limit: usize) {
    let _ = rustix::io::ioctl_fionbio(conn.as_fd(), true);
    let msg = format!(
        "too many connections: the control agent serves at most {limit} at once; retry when \
         some of them have ended"
    );
    let _ = write_frame(&mut conn, &GuestMsg::Error(msg));
    let _ = conn.shutdown(Shutdown::Both);
}

/// A worker: serves connections one after another. It counts as idle while it waits (until
/// [`Workers::hand_over`] claims it); it ends after [`IDLE_FOR`] without work if more than
/// [`KEEP_IDLE`] workers are idle then. Every connection sent is thus awaited by a worker of
/// its own: waiting workers are never fewer than the idle count plus the connections queued.
fn worker<C: Conn>(
    rx: &Mutex<mpsc::Receiver<C>>,
    idle: &AtomicUsize,
    active: &AtomicUsize,
    ctx: &Ctx,
    handshake_within: Duration,
) {
    loop {
        let next = rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .recv_timeout(IDLE_FOR);
        match next {
            Ok(conn) => {
                serve_within(conn, ctx, handshake_within);
                active.fetch_sub(1, Ordering::SeqCst);
                idle.fetch_add(1, Ordering::SeqCst);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                // Leaves only as one of the idle ones not claimed, keeping KEEP_IDLE.
                let left = idle
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                        (n > KEEP_IDLE).then(|| n - 1)
                    })
                    .is_ok();
                if left {
                    return;
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// A connection whose reads fail once a deadline has passed, until the deadline is cleared:
/// bounds the handshake as a whole, however slowly the peer trickles its bytes.
struct Deadline<C: Conn> {
    inner: C,
    until: Option<std::time::Instant>,
    within: Duration,
}

impl<C: Conn> Deadline<C> {
    fn new(inner: C, within: Duration) -> Self {
        Deadline {
            inner,
            until: std::time::Instant::now().checked_add(within),
            within,
        }
    }

    /// Lifts the deadline (the handshake is over).
    fn clear(&mut self) {
        self.until = None;
    }
}

impl<C: Conn> Read for Deadline<C> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use rustix::event::{poll, PollFd, PollFlags, Timespec};
        if let Some(until) = self.until {
            loop {
                let left = until.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "no complete handshake within {} s: connection closed",
                            self.within.as_secs_f32()
                        ),
                    ));
                }
                let timeout = Timespec {
                    tv_sec: left.as_secs() as i64,
                    tv_nsec: i64::from(left.subsec_nanos()),
                };
                let mut fds = [PollFd::new(&self.inner, PollFlags::IN)];
                match poll(&mut fds, Some(&timeout)) {
                    Ok(0) | Err(rustix::io::Errno::INTR) => {}
                    Ok(_) => break,
                    Err(e) => return Err(e.into()),
                }
            }
        }
        self.inner.read(buf)
    }
}

impl<C: Conn> Write for Deadline<C> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<C: Conn> std::os::fd::AsFd for Deadline<C> {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.inner.as_fd()
    }
}

impl<C: Conn> Conn for Deadline<C> {
    fn try_clone(&self) -> io::Result<Self> {
        Ok(Deadline {
            inner: self.inner.try_clone()?,
            until: None,
            within: self.within,
        })
    }
    fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.inner.shutdown(how)
    }
}

/// Serves one connection: handshake, one request, its conversation. Errors are logged (and
/// sent to the host when the connection still works).
pub fn serve<C: Conn>(conn: C, ctx: &Ctx) {
    serve_within(conn, ctx, HANDSHAKE_WITHIN)
}

/// [`serve`], the handshake bounded by `handshake_within` as a whole.
fn serve_within<C: Conn>(conn: C, ctx: &Ctx, handshake_within: Duration) {
    let mut conn = Deadline::new(conn, handshake_within);
    let result = handshake(&mut conn, ctx).and_then(|()| {
        conn.clear();
        let req: HostMsg = read_frame(&mut conn)?;
        dispatch(&mut conn, req, ctx)
    });
    match result {
        Ok(()) => {}
        Err(ControlError::Refused(msg)) => {
            let _ = write_frame(&mut conn, &GuestMsg::Error(msg));
        }
        Err(ControlError::Frame(FrameError::Closed)) => {}
        Err(ControlError::Frame(e)) => {
            let why = minke_protocol::error_chain(&e);
            eprintln!("minke agent control: connection ended: {why}");
            if matches!(e, FrameError::Malformed(_) | FrameError::TooLarge { .. }) {
                let _ = write_frame(
                    &mut conn,
                    &GuestMsg::Error(format!("protocol error: {why}")),
                );
            }
        }
    }
    finish(&mut conn);
}

/// How long a finished conversation waits for the host to close its side.
const LINGER: Duration = Duration::from_secs(2);

/// Ends a conversation: closes this side for writing, then reads (and drops) what the host
/// still sends until it closes too, for at most [`LINGER`]. Closing both ways at once would
/// race late host frames (a `StdinEof` after a short exec's `Exit`): the serial transport's
/// bridge then meets a closed socket and may drop the stream with the reply still queued.
pub(crate) fn finish<C: Conn>(conn: &mut C) {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let _ = conn.shutdown(Shutdown::Write);
    let end = std::time::Instant::now() + LINGER;
    let mut sink = [0u8; 4096];
    loop {
        let left = end.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            break;
        }
        let timeout = Timespec {
            tv_sec: left.as_secs() as i64,
            tv_nsec: i64::from(left.subsec_nanos()),
        };
        let mut fds = [PollFd::new(&*conn, PollFlags::IN)];
        match poll(&mut fds, Some(&timeout)) {
            Ok(0) => break,
            Ok(_) => match conn.read(&mut sink) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            },
            Err(rustix::io::Errno::INTR) => {}
            Err(_) => break,
        }
    }
    let _ = conn.shutdown(Shutdown::Both);
}

fn handshake<C: Conn>(conn: &mut C, ctx: &Ctx) -> Result<(), ControlError> {
    match read_frame::<_, HostMsg>(conn)? {
        HostMsg::Hello {
            version,
            nonce,
            proof,
            ..
        } if version == PROTOCOL_VERSION => {
            let secret = ctx.secret.as_ref().map_err(|e| ControlError::Refused(e.clone()))?;
            if !secret.verify(Purpose::Control, &nonce, &proof) {
                eprintln!("minke agent control: refused a connection without the VM's secret");
                return Err(ControlError::Refused(
                    "connection refused: the Hello does not prove this VM's secret (only the \
                     minke that booted the VM, or a process of its user reading the VM's state \
                     directory, may connect)"
                        .into(),
                ));
            }
            write_frame(
                conn,
                &GuestMsg::Welcome {
                    version: PROTOCOL_VERSION,
                    agent: env!("CARGO_PKG_VERSION").to_string(),
                    proof: secret.proof(Purpose::ControlAgent, &nonce),
                },
            )?;
            Ok(())
        }
        HostMsg::Hello { version, .. } => Err(ControlError::Refused(format!(
            "protocol version mismatch: the guest agent speaks version {PROTOCOL_VERSION}, the host \
             sent {version}: use a host and image built from the same minke release"
        ))),
        other => Err(ControlError::Refused(format!(
            "expected Hello to open the connection, got {}",
            msg_name(&other)
        ))),
    }
}

fn dispatch<C: Conn>(conn: &mut C, req: HostMsg, ctx: &Ctx) -> Result<(), ControlError> {
    match req {
        HostMsg::Exec(req) => exec::exec(conn, req, ctx),
        HostMsg::PutFile { path, mode } => files::put_file(conn, &path, mode),
        HostMsg::PutTree { dest } => files::put_tree(conn, &dest),
        HostMsg::GetFile { path } => files::get_file(conn, &path),
        HostMsg::GetTree { path } => files::get_tree(conn, &path),
        HostMsg::Forward(target) => forward::forward(conn, &target),
        HostMsg::Info => {
            let reply = info(ctx);
            write_frame(conn, &GuestMsg::Info(reply))?;
            Ok(())
        }
        HostMsg::Logs { service } => logs(conn, service.as_deref(), ctx),
        HostMsg::Power(action) => {
            write_frame(conn, &GuestMsg::Ok)?;
            eprintln!("minke agent control: host asked for {action:?}");
            (ctx.power)(action).map_err(|e| {
                eprintln!("minke agent control: cannot signal PID1: {e}");
                ControlError::from(e)
            })
        }
        other => Err(ControlError::Refused(format!(
            "{} is not a request the control agent serves",
            msg_name(&other)
        ))),
    }
}

/// Short name of a host message, for error messages.
pub(crate) fn msg_name(m: &HostMsg) -> &'static str {
    match m {
        HostMsg::Hello { .. } => "Hello",
        HostMsg::Welcome { .. } => "Welcome",
        HostMsg::Error(_) => "Error",
        HostMsg::Exec(_) => "Exec",
        HostMsg::Stdin(_) => "Stdin",
        HostMsg::StdinEof => "StdinEof",
        HostMsg::Signal(_) => "Signal",
        HostMsg::Resize(_) => "Resize",
        HostMsg::PutFile { .. } => "PutFile",
        HostMsg::PutTree { .. } => "PutTree",
        HostMsg::GetFile { .. } => "GetFile",
        HostMsg::GetTree { .. } => "GetTree",
        HostMsg::Data(_) => "Data",
        HostMsg::End => "End",
        HostMsg::Forward(_) => "Forward",
        HostMsg::Info => "Info",
        HostMsg::Logs { .. } => "Logs",
        HostMsg::Power(_) => "Power",
        HostMsg::TimeReply { .. } => "TimeReply",
        HostMsg::Resumed => "Resumed",
    }
}

fn info(ctx: &Ctx) -> InfoReply {
    let uname = rustix::system::uname();
    let boottime = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    InfoReply {
        agent: env!("CARGO_PKG_VERSION").to_string(),
        kernel: uname.release().to_string_lossy().into_owned(),
        boot_json: std::fs::read_to_string(&ctx.boot_json_path).unwrap_or_default(),
        config_json: std::fs::read_to_string(&ctx.config_path).unwrap_or_default(),
        boottime_ns: (boottime.tv_sec as u64)
            .saturating_mul(1_000_000_000)
            .saturating_add(boottime.tv_nsec as u64),
    }
}

fn logs<C: Conn>(conn: &mut C, service: Option<&str>, ctx: &Ctx) -> Result<(), ControlError> {
    match service {
        Some(name) => {
            if name.is_empty() || name.contains('/') || name == "." || name == ".." {
                return Err(ControlError::Refused(format!(
                    "`{name}` is not a service name"
                )));
            }
            let path = ctx.log_dir.join(name);
            let file = std::fs::File::open(&path).map_err(|e| {
                ControlError::Refused(format!(
                    "no log for service `{name}` ({}: {})",
                    path.display(),
                    crate::os_msg(&e)
                ))
            })?;
            send_reader(conn, file)?;
        }
        None => {
            let mut names: Vec<String> = match std::fs::read_dir(&ctx.log_dir) {
                Ok(rd) => rd
                    .filter_map(|e| e.ok())
                    .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect(),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
                Err(e) => {
                    return Err(ControlError::Refused(format!(
                        "cannot list {}: {}",
                        ctx.log_dir.display(),
                        crate::os_msg(&e)
                    )))
                }
            };
            names.sort();
            let mut out = DataOut::new(conn);
            for name in names {
                let Ok(mut file) = std::fs::File::open(ctx.log_dir.join(&name)) else {
                    continue;
                };
                writeln!(out, "==> {name} <==")?;
                io::copy(&mut file, &mut out)?;
            }
            out.finish()?;
        }
    }
    write_frame(conn, &GuestMsg::End)?;
    Ok(())
}

/// Sends everything `r` yields as `Data` frames (not followed by `End`).
pub(crate) fn send_reader<C: Write, R: Read>(conn: &mut C, mut r: R) -> Result<(), ControlError> {
    let mut buf = vec![0u8; MAX_CHUNK];
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(ControlError::Refused(format!(
                    "read failed: {}",
                    crate::os_msg(&e)
                )))
            }
        };
        write_frame(conn, &GuestMsg::Data(buf[..n].to_vec()))?;
    }
}

/// A `Write` that cuts what it is given into `Data` frames of at most [`MAX_CHUNK`] bytes.
pub(crate) struct DataOut<'a, W: Write> {
    w: &'a mut W,
    buf: Vec<u8>,
}

impl<'a, W: Write> DataOut<'a, W> {
    pub(crate) fn new(w: &'a mut W) -> Self {
        DataOut {
            w,
            buf: Vec::with_capacity(MAX_CHUNK),
        }
    }

    fn send(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            let chunk = std::mem::take(&mut self.buf);
            write_frame(self.w, &GuestMsg::Data(chunk)).map_err(frame_to_io)?;
            self.buf.reserve(MAX_CHUNK);
        }
        Ok(())
    }

    /// Sends what is buffered.
    pub(crate) fn finish(mut self) -> io::Result<()> {
        self.send()
    }
}

impl<W: Write> Write for DataOut<'_, W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = MAX_CHUNK - self.buf.len();
        let n = room.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == MAX_CHUNK {
            self.send()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

pub(crate) fn frame_to_io(e: FrameError) -> io::Error {
    match e {
        FrameError::Io(e) => e,
        other => io::Error::other(other),
    }
}

/// Checks a host-supplied guest path: absolute, without `..` components or NUL bytes.
pub(crate) fn check_path(path: &str) -> Result<PathBuf, ControlError> {
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err(ControlError::Refused(format!(
            "path `{path}` must be absolute"
        )));
    }
    if path.contains('\0') {
        return Err(ControlError::Refused(format!(
            "path `{}` contains a NUL byte",
            path.escape_debug()
        )));
    }
    if p.components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(ControlError::Refused(format!(
            "path `{path}` must not contain `..`"
        )));
    }
    Ok(p.to_path_buf())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;
    use std::sync::Mutex;

    /// A context whose files live under `dir` and whose power actions are recorded.
    pub(crate) fn test_ctx(dir: &Path, power_log: Arc<Mutex<Vec<PowerAction>>>) -> Ctx {
        Ctx {
            containers: Vec::new(),
            config_path: dir.join("image.json"),
            boot_json_path: dir.join("boot.json"),
            log_dir: dir.join("log"),
            power: Box::new(move |a| {
                power_log.lock().unwrap().push(a);
                Ok(())
            }),
            secret: Ok(test_secret()),
        }
    }

    /// The secret of the test contexts.
    pub(crate) fn test_secret() -> Secret {
        Secret::from_bytes(&[0x5e; minke_protocol::auth::SECRET_LEN]).unwrap()
    }

    /// The `Hello` a holder of [`test_secret`] sends.
    pub(crate) fn hello() -> HostMsg {
        HostMsg::Hello {
            version: PROTOCOL_VERSION,
            client: "test".into(),
            nonce: [7; 32],
            proof: test_secret().proof(Purpose::Control, &[7; 32]),
        }
    }

    /// Starts `serve` on one end of a socket pair, returns the host end after the handshake.
    pub(crate) fn connect(ctx: Arc<Ctx>) -> UnixStream {
        let (mut host, guest) = UnixStream::pair().unwrap();
        std::thread::spawn(move || serve(guest, &ctx));
        write_frame(&mut host, &hello()).unwrap();
        match read_frame::<_, GuestMsg>(&mut host).unwrap() {
            GuestMsg::Welcome { version, proof, .. } => {
                assert_eq!(version, PROTOCOL_VERSION);
                assert!(
                    test_secret().verify(Purpose::ControlAgent, &[7; 32], &proof),
                    "the Welcome proves the secret over the host's nonce"
                );
            }
            other => panic!("expected Welcome, got {other:?}"),
        }
        host
    }

    pub(crate) fn tmpdir(tag: &str) -> PathBuf {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let d = std::env::temp_dir().join(format!("minke-agents-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// Reads `Data`… `End` into one buffer.
    pub(crate) fn read_data(host: &mut UnixStream) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        loop {
            match read_frame::<_, GuestMsg>(host).unwrap() {
                GuestMsg::Data(d) => out.extend_from_slice(&d),
                GuestMsg::End => return Ok(out),
                GuestMsg::Error(e) => return Err(e),
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn version_mismatch_is_refused() {
        let dir = tmpdir("ver");
        let ctx = Arc::new(test_ctx(&dir, Arc::default()));
        let (mut host, guest) = UnixStream::pair().unwrap();
        std::thread::spawn(move || serve(guest, &ctx));
        write_frame(
            &mut host,
            &HostMsg::Hello {
                version: 999,
                client: "x".into(),
                nonce: [7; 32],
                proof: test_secret().proof(Purpose::Control, &[7; 32]),
            },
        )
        .unwrap();
        match read_frame::<_, GuestMsg>(&mut host).unwrap() {
            GuestMsg::Error(e) => assert!(e.contains("version mismatch"), "{e}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            read_frame::<_, GuestMsg>(&mut host),
            Err(FrameError::Closed)
        ));
    }

    /// A Hello without the VM's secret is refused, and the request behind it never runs.
    #[test]
    fn a_hello_without_the_secret_is_refused() {
        let dir = tmpdir("auth");
        let power = Arc::new(Mutex::new(Vec::new()));
        for proof in [
            [0u8; 32],
            Secret::from_bytes(&[1; 32])
                .unwrap()
                .proof(Purpose::Control, &[7; 32]),
            test_secret().proof(Purpose::TimeHost, &[7; 32]),
            // A proof over another nonce: a replayed Hello with its nonce changed.
            test_secret().proof(Purpose::Control, &[8; 32]),
        ] {
            let ctx = Arc::new(test_ctx(&dir, Arc::clone(&power)));
            let (mut host, guest) = UnixStream::pair().unwrap();
            let t = std::thread::spawn(move || serve(guest, &ctx));
            let mut out = Vec::new();
            write_frame(
                &mut out,
                &HostMsg::Hello {
                    version: PROTOCOL_VERSION,
                    client: "intruder".into(),
                    nonce: [7; 32],
                    proof,
                },
            )
            .unwrap();
            write_frame(&mut out, &HostMsg::Power(PowerAction::Poweroff)).unwrap();
            host.write_all(&out).unwrap();
            match read_frame::<_, GuestMsg>(&mut host).unwrap() {
                GuestMsg::Error(e) => assert!(e.contains("secret"), "{e}"),
                other => panic!("expected a refusal, got {other:?}"),
            }
            drop(host);
            t.join().unwrap();
        }
        assert!(power.lock().unwrap().is_empty(), "a refused request ran");
        // A guest without a secret refuses everyone, saying why.
        let mut ctx = test_ctx(&dir, Arc::clone(&power));
        ctx.secret = Err("the guest has no VM secret".into());
        let ctx = Arc::new(ctx);
        let (mut host, guest) = UnixStream::pair().unwrap();
        std::thread::spawn(move || serve(guest, &ctx));
        write_frame(&mut host, &hello()).unwrap();
        match read_frame::<_, GuestMsg>(&mut host).unwrap() {
            GuestMsg::Error(e) => assert!(e.contains("no VM secret"), "{e}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn garbage_instead_of_hello_gets_an_error_not_a_panic() {
        let dir = tmpdir("garbage");
        let ctx = Arc::new(test_ctx(&dir, Arc::default()));
        let (mut host, guest) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || serve(guest, &ctx));
        host.write_all(&[5, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff])
            .unwrap();
        match read_frame::<_, GuestMsg>(&mut host).unwrap() {
            GuestMsg::Error(e) => assert!(e.contains("protocol error"), "{e}"),
            other => panic!("{other:?}"),
        }
        t.join().unwrap();
    }

    #[test]
    fn info_logs_and_power() {
        let dir = tmpdir("info");
        std::fs::write(dir.join("boot.json"), "{\"events\":[]}").unwrap();
        std::fs::write(dir.join("image.json"), "{}").unwrap();
        std::fs::create_dir(dir.join("log")).unwrap();
        std::fs::write(dir.join("log/web"), "hello\n").unwrap();
        std::fs::write(dir.join("log/db"), "x\n").unwrap();
        let power = Arc::new(Mutex::new(Vec::new()));
        let ctx = Arc::new(test_ctx(&dir, Arc::clone(&power)));

        let mut host = connect(Arc::clone(&ctx));
        write_frame(&mut host, &HostMsg::Info).unwrap();
        match read_frame::<_, GuestMsg>(&mut host).unwrap() {
            GuestMsg::Info(i) => {
                assert_eq!(i.boot_json, "{\"events\":[]}");
                assert_eq!(i.config_json, "{}");
                assert!(!i.kernel.is_empty());
                assert!(i.boottime_ns > 0);
            }
            other => panic!("{other:?}"),
        }

        let mut host = connect(Arc::clone(&ctx));
        write_frame(
            &mut host,
            &HostMsg::Logs {
                service: Some("web".into()),
            },
        )
        .unwrap();
        assert_eq!(read_data(&mut host).unwrap(), b"hello\n");

        let mut host = connect(Arc::clone(&ctx));
        write_frame(&mut host, &HostMsg::Logs { service: None }).unwrap();
        assert_eq!(
            read_data(&mut host).unwrap(),
            b"==> db <==\nx\n==> web <==\nhello\n"
        );

        let mut host = connect(Arc::clone(&ctx));
        write_frame(
            &mut host,
            &HostMsg::Logs {
                service: Some("../etc".into()),
            },
        )
        .unwrap();
        assert!(read_data(&mut host).is_err());

        let mut host = connect(Arc::clone(&ctx));
        write_frame(&mut host, &HostMsg::Power(PowerAction::Reboot)).unwrap();
        assert_eq!(read_frame::<_, GuestMsg>(&mut host).unwrap(), GuestMsg::Ok);
        assert!(matches!(
            read_frame::<_, GuestMsg>(&mut host),
            Err(FrameError::Closed)
        ));
        assert_eq!(*power.lock().unwrap(), vec![PowerAction::Reboot]);
    }

    #[test]
    fn connections_beyond_the_limit_are_refused_until_one_ends() {
        let dir = tmpdir("limit");
        let ctx = Arc::new(test_ctx(&dir, Arc::default()));
        let workers = Workers::new(ctx, 2, Duration::from_secs(30));
        // Two connections that never say Hello hold both slots.
        let mut silent = Vec::new();
        for _ in 0..2 {
            let (host, guest) = UnixStream::pair().unwrap();
            workers.admit(guest);
            silent.push(host);
        }
        for _ in 0..3 {
            let (mut host, guest) = UnixStream::pair().unwrap();
            workers.admit(guest);
            match read_frame::<_, GuestMsg>(&mut host).unwrap() {
                GuestMsg::Error(e) => assert!(e.contains("too many connections"), "{e}"),
                other => panic!("{other:?}"),
            }
            assert!(matches!(
                read_frame::<_, GuestMsg>(&mut host),
                Err(FrameError::Closed)
            ));
        }
        // One of them goes away: its slot is free again and the next connection is served.
        drop(silent.pop());
        let start = std::time::Instant::now();
        while workers.active.load(Ordering::SeqCst) >= 2 {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "the slot stayed taken"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let (mut host, guest) = UnixStream::pair().unwrap();
        workers.admit(guest);
        write_frame(&mut host, &hello()).unwrap();
        match read_frame::<_, GuestMsg>(&mut host).unwrap() {
            GuestMsg::Welcome { .. } => {}
            other => panic!("expected Welcome, got {other:?}"),
        }
    }

    #[test]
    fn a_handshake_not_done_in_time_is_closed_even_when_trickled() {
        let dir = tmpdir("deadline");
        let ctx = Arc::new(test_ctx(&dir, Arc::default()));
        let within = Duration::from_millis(300);
        for trickle in [false, true] {
            let (mut host, guest) = UnixStream::pair().unwrap();
            let c = Arc::clone(&ctx);
            let start = std::time::Instant::now();
            let agent = std::thread::spawn(move || serve_within(guest, &c, within));
            let trickler = trickle.then(|| {
                let mut w = host.try_clone().unwrap();
                std::thread::spawn(move || {
                    // A frame header announcing 1000 bytes, then a byte every 50 ms: each read
                    // gets data in time, only the deadline as a whole can end it.
                    let _ = w.write_all(&1000u32.to_le_bytes());
                    for _ in 0..60 {
                        if w.write_all(&[0]).is_err() {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(50));
                    }
                })
            });
            assert!(matches!(
                read_frame::<_, GuestMsg>(&mut host),
                Err(FrameError::Closed)
            ));
            let waited = start.elapsed();
            assert!(
                waited >= within && waited < Duration::from_millis(1500),
                "trickle {trickle}: closed after {waited:?}"
            );
            drop(host);
            agent.join().unwrap();
            if let Some(t) = trickler {
                t.join().unwrap();
            }
        }
    }
}
