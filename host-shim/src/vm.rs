//! [`Vm`]: boot an image under QEMU, wait for its agents, run commands, move files, pause,
//! resume, power off; or attach to a VM another process booted.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use minke_protocol::msg::{ExecRequest, ForwardTarget, InfoReply, PowerAction};
use minke_protocol::{
    HostMsg, Secret, CONTROL_PORT, READY_MARKER, RUNTIME_CONFIG_DIR, TIMESYNC_PORT,
};

use crate::binaries::{self, NotFound, Tool};
use crate::client::{self, AgentError, Output, Stdin};
use crate::config::{Accel, Transport, VmConfig};
use crate::console::ConsoleLog;
use crate::disk::{self, DiskError};
use crate::forward::{ForwardListen, Forwarder};
use crate::getfiles::{self, GetOptions};
use crate::process::Guarded;
use crate::qemu::{self, files, UsedAccel, UsedTransport};
use crate::qmp::{self, QmpError};
use crate::serial::SerialEndpoint;
use crate::state::{self, RunInfo, StateError};
use crate::timesync::{TimeServer, TimesyncStats};
use crate::transport::{ConnectError, Connector, Duplex};

/// How long [`Vm::attach`] waits for a VM that is still booting: generous, for a loaded
/// machine under TCG.
pub const ATTACH_TIMEOUT: Duration = Duration::from_secs(120);
/// Lines of console log attached to boot errors.
const CONSOLE_TAIL_LINES: usize = 40;
/// How long the vhost-user backend and QMP may take to come up.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the agent may take to answer `Hello` on a fresh connection.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Limit of one connection attempt while waiting for readiness.
const READY_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);
/// Under `Accel::Auto`, how long KVM gets to reach agent readiness before TCG is tried. A
/// working KVM boots a minke image in well under a second.
const KVM_READY_BUDGET: Duration = Duration::from_secs(8);

/// A VM operation failed.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// A host program is missing.
    #[error(transparent)]
    Tool(#[from] NotFound),
    /// State directory trouble.
    #[error(transparent)]
    State(#[from] StateError),
    /// A data disk could not be prepared.
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// QMP failed.
    #[error(transparent)]
    Qmp(#[from] QmpError),
    /// No stream to the guest agent.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The agent conversation failed.
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// A process could not be started.
    #[error("cannot start {what}")]
    Spawn {
        /// Which program.
        what: String,
        /// OS error.
        source: io::Error,
    },
    /// A local I/O operation failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// OS error.
        source: io::Error,
    },
    /// A helper process did not come up in time.
    #[error("{what} did not come up within {timeout:?}{log}")]
    Startup {
        /// What.
        what: &'static str,
        /// Limit.
        timeout: Duration,
        /// Log tail (with a leading newline) or empty.
        log: String,
    },
    /// QEMU ended before the guest was ready.
    #[error(
        "QEMU exited ({status}) before the guest was ready; console log tail:\n{console}{qemu_log}"
    )]
    QemuExited {
        /// Exit status.
        status: String,
        /// Console tail.
        console: String,
        /// QEMU's stderr tail (with a heading) or empty.
        qemu_log: String,
    },
    /// The agent did not answer in time.
    #[error("the guest's control agent did not answer within {timeout:?} (last error: {last}); console log tail:\n{console}")]
    NotReady {
        /// Limit.
        timeout: Duration,
        /// Last connection error.
        last: String,
        /// Console tail.
        console: String,
    },
    /// KVM was asked for but cannot be used.
    #[error("KVM is not usable: {0}; use `Accel::Tcg` (or Auto)")]
    Kvm(String),
    /// Kernel vhost-vsock was asked for but is not available.
    #[error("kernel vhost-vsock is not usable: {0}; load it with `modprobe vhost_vsock` or use the vhost-user transport")]
    VhostKernel(String),
    /// The operation needs the shim that booted the VM.
    #[error("{0} is only possible from the process that booted the VM")]
    NotOwner(&'static str),
}

/// Result of [`Vm::poweroff`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerOff {
    /// QEMU exited within the grace period.
    Clean,
    /// QEMU had to be killed.
    Killed,
}

/// A booted (or attached) VM. Dropping a booted VM kills QEMU and the vsock backend.
#[derive(Debug)]
pub struct Vm {
    name: String,
    state: PathBuf,
    connector: Connector,
    /// The VM's secret: every conversation with its agents proves it.
    secret: Secret,
    accel: UsedAccel,
    transport: UsedTransport,
    run: RunInfo,
    owned: Option<Owned>,
}

#[derive(Debug)]
struct Owned {
    cfg: VmConfig,
    qemu: Guarded,
    backend: Option<Guarded>,
    time: Option<TimeServer>,
    serial: Option<SerialEndpoint>,
    forwards: Vec<Forwarder>,
    started: Instant,
    ready_after: Option<Duration>,
    kvm_probe: bool,
    /// Copies the console into the capped `console.log` (none when QEMU tees it to the
    /// terminal).
    console: Option<ConsoleLog>,
    /// Held for the VM's life: a second boot of the name fails at once.
    _lock: state::VmLock,
}

impl Vm {
    /// Boots `cfg` and returns once QEMU runs (see [`Vm::wait_ready`] for the guest).
    pub fn boot(cfg: VmConfig) -> Result<Vm, VmError> {
        let state = match &cfg.state_dir {
            Some(d) => {
                state::check_name(&cfg.name)?;
                d.clone()
            }
            None => state::state_dir(&cfg.name)?,
        };
        let lock = state::prepare_boot(&state, &cfg.name)?;
        for f in [files::QMP, files::VHU, files::SERIAL] {
            state::check_socket_path(&state, f)?;
        }
        state::check_socket_path(&state, &format!("{}_{TIMESYNC_PORT}", files::VSOCK))?;
        let qemu_bin = binaries::find(Tool::QemuSystem)?;
        for d in &cfg.disks {
            disk::ensure(d)?;
        }
        let (accel, kvm_probe) = resolve_accel(cfg.accel)?;
        let transport = resolve_transport(cfg.transport)?;
        let secret = new_secret()?;
        state::write_private(&state.join(files::SECRET), secret.as_bytes())?;
        let time = match transport {
            UsedTransport::VhostUser => Some(
                TimeServer::listen_unix(
                    &qemu::guest_to_host_socket(&state, TIMESYNC_PORT),
                    secret.clone(),
                )
                .map_err(|source| VmError::Io {
                    what: "cannot listen for time sync".into(),
                    source,
                })?,
            ),
            UsedTransport::VhostKernel { .. } => {
                match TimeServer::listen_vsock(TIMESYNC_PORT, secret.clone()) {
                    Ok(t) => Some(t),
                    Err(e) => {
                        tracing::warn!(
                            "time sync disabled: cannot listen on vsock port {TIMESYNC_PORT}: {}",
                            crate::error_chain(&e)
                        );
                        None
                    }
                }
            }
            UsedTransport::Serial => Some(TimeServer::detached(secret.clone())),
        };
        let (qemu, backend, accel, transport, console, kvm_probe) =
            match launch(&cfg, &state, &qemu_bin, accel, transport) {
                Ok((q, b, a, t, c)) => (q, b, a, t, c, kvm_probe),
                Err(VmError::Kvm(why)) if kvm_probe => {
                    record_kvm_broken(&why);
                    warn_once(&format!(
                    "warning: KVM cannot run this guest here ({why}); falling back to TCG (slower)"
                ));
                    let (q, b, a, t, c) =
                        launch(&cfg, &state, &qemu_bin, UsedAccel::Tcg, transport)?;
                    (q, b, a, t, c, false)
                }
                Err(e) => return Err(e),
            };
        let serial = start_serial(&state, transport, time.as_ref())?;
        let connector = connector(&state, transport, serial.as_ref());
        let run = RunInfo {
            name: cfg.name.clone(),
            qemu_pid: qemu.pid(),
            backend_pid: backend.as_ref().map(Guarded::pid),
            qemu_stamp: qemu.stamp(),
            backend_stamp: backend.as_ref().and_then(Guarded::stamp),
            shim_pid: std::process::id(),
            accel,
            transport,
            publish: cfg.publish.clone(),
            started_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        };
        state::write_run(&state, &run)?;
        let mut vm = Vm {
            name: cfg.name.clone(),
            state,
            connector,
            secret,
            accel,
            transport,
            run,
            owned: Some(Owned {
                cfg,
                qemu,
                backend,
                time,
                serial,
                forwards: Vec::new(),
                started: Instant::now(),
                ready_after: None,
                kvm_probe,
                console,
                _lock: lock,
            }),
        };
        let publish = vm
            .owned
            .as_ref()
            .map(|o| o.cfg.publish.clone())
            .unwrap_or_default();
        for (host, guest) in publish {
            let f = vm.forward(
                ForwardListen::Tcp(std::net::SocketAddr::from(([127, 0, 0, 1], host))),
                ForwardTarget::Tcp(guest),
            )?;
            if let Some(o) = vm.owned.as_mut() {
                o.forwards.push(f);
            }
        }
        Ok(vm)
    }

    /// Attaches to the VM `name` booted by another process, waiting up to [`ATTACH_TIMEOUT`]
    /// for it to be ready if it is still booting (see [`Vm::attach_dir_within`]).
    pub fn attach(name: &str) -> Result<Vm, VmError> {
        Vm::attach_within(name, ATTACH_TIMEOUT)
    }

    /// [`Vm::attach`] with a limit of `timeout`.
    pub fn attach_within(name: &str, timeout: Duration) -> Result<Vm, VmError> {
        Vm::attach_dir_within(&state::state_dir(name)?, timeout)
    }

    /// Attaches to the VM whose state directory is `dir`, waiting up to [`ATTACH_TIMEOUT`].
    pub fn attach_dir(dir: &Path) -> Result<Vm, VmError> {
        Vm::attach_dir_within(dir, ATTACH_TIMEOUT)
    }

    /// Attaches to the VM whose state directory is `dir` and waits up to `timeout` for it to
    /// be ready: the same readiness [`Vm::wait_ready`] gives the booting process (the init's
    /// ready line, tagged with the VM's secret, then a handshake with the control agent). A
    /// VM that is neither booting nor running is an error at once.
    pub fn attach_dir_within(dir: &Path, timeout: Duration) -> Result<Vm, VmError> {
        let mut vm = Vm::attach_dir_now(dir, timeout)?;
        vm.wait_ready(timeout)?;
        Ok(vm)
    }

    /// Attaches to the VM `name` without waiting for its readiness, for a caller that says it
    /// is waiting ([`Vm::is_booted`]) before it calls [`Vm::wait_ready`]. Only a VM whose
    /// booting process has not recorded it yet is waited for, up to `timeout`.
    pub fn attach_now(name: &str, timeout: Duration) -> Result<Vm, VmError> {
        Vm::attach_dir_now(&state::state_dir(name)?, timeout)
    }

    /// [`Vm::attach_now`] by state directory.
    pub fn attach_dir_now(dir: &Path, timeout: Duration) -> Result<Vm, VmError> {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let deadline = Instant::now() + timeout;
        // Between taking its lock and starting QEMU a booting process has no run.json yet.
        let run = loop {
            match state::read_run(dir) {
                Ok(run) => break run,
                Err(_) if state::lock_held(dir) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(_) => return Err(StateError::NotRunning(name).into()),
            }
        };
        if !state::is_running(&run) {
            state::clean_stale(dir);
            return Err(StateError::NotRunning(name).into());
        }
        let secret = read_secret(dir)?;
        // The booting shim serves hybrid vsock on `vm.vsock` for the serial transport too.
        let connector = connector(dir, run.transport, None);
        Ok(Vm {
            name: run.name.clone(),
            state: dir.to_path_buf(),
            connector,
            secret,
            accel: run.accel,
            transport: run.transport,
            run,
            owned: None,
        })
    }

    /// Whether the guest's init has said, on the console and with the VM's secret, that it
    /// is ready (it may since have powered off).
    pub fn is_booted(&self) -> bool {
        let line = self.secret.ready_line();
        std::fs::read(self.state.join(files::READY)).is_ok_and(|r| r == line.as_bytes())
            || self.console_has_line(&line)
    }

    /// VM name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// State directory.
    pub fn state_dir(&self) -> &Path {
        &self.state
    }

    /// The serial console log.
    pub fn console_log(&self) -> PathBuf {
        self.state.join(files::CONSOLE)
    }

    /// Accelerator in use.
    pub fn accel(&self) -> UsedAccel {
        self.accel
    }

    /// Transport in use.
    pub fn transport(&self) -> UsedTransport {
        self.transport
    }

    /// What `run.json` records.
    pub fn run_info(&self) -> &RunInfo {
        &self.run
    }

    /// Time from QEMU's start to the first successful agent handshake (after `wait_ready`).
    pub fn ready_after(&self) -> Option<Duration> {
        self.owned.as_ref().and_then(|o| o.ready_after)
    }

    /// Time sync counters (booting process only).
    pub fn timesync_stats(&self) -> Option<TimesyncStats> {
        self.owned
            .as_ref()
            .and_then(|o| o.time.as_ref())
            .map(TimeServer::stats)
    }

    /// Waits until the guest's control agent completes a handshake, then sends the runtime
    /// config. On timeout or QEMU's death the error carries the console log tail. Under
    /// `Accel::Auto`, a KVM boot that dies or stays silent is retried once with TCG. Calling it
    /// again later waits for a restarted control agent to serve again.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<(), VmError> {
        let deadline = Instant::now() + timeout;
        let mut step = Duration::from_millis(5);
        let mut last = String::new();
        let mut marker_seen = false;
        loop {
            if let Some(o) = self.owned.as_mut() {
                let kvm_failed = o.kvm_probe
                    && (o.qemu.try_wait().is_some() || o.started.elapsed() > KVM_READY_BUDGET);
                if kvm_failed {
                    self.fall_back_to_tcg()?;
                    continue;
                }
                if let Some(status) = o.qemu.try_wait() {
                    return Err(self.exited_error(status));
                }
            } else if !state::is_running(&self.run) {
                return Err(StateError::NotRunning(self.name.clone()).into());
            }
            // Connect only once the init says on the console that its agents listen: requests
            // sent to vhost-device-vsock before the guest's vsock driver is up can leave the
            // backend unresponsive for the rest of the VM's life.
            if !marker_seen {
                // A later call (a restarted control agent) need not find the line again.
                marker_seen = self.owned.as_ref().is_some_and(|o| o.ready_after.is_some())
                    || self.is_booted();
                last = format!(
                    "the guest has not printed its {READY_MARKER:?} line on its console yet"
                );
            }
            if marker_seen {
                // A short limit per attempt: a request the backend drops is not answered, and
                // the next attempt is.
                match self.agent_within("minke-ready", READY_ATTEMPT_TIMEOUT) {
                    Ok(_) => break,
                    Err(e) => last = crate::error_chain(&e),
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(VmError::NotReady {
                    timeout,
                    last,
                    console: self.console_tail(),
                });
            }
            std::thread::sleep(step.min(deadline - now));
            step = (step * 2).min(Duration::from_millis(50));
        }
        if let Some(o) = self.owned.as_mut() {
            // A later call (after the control agent was restarted) keeps the boot's figure.
            o.ready_after.get_or_insert_with(|| o.started.elapsed());
            o.kvm_probe = false;
            state::write_private(
                &self.state.join(files::READY),
                self.secret.ready_line().as_bytes(),
            )?;
        }
        let config = self
            .owned
            .as_ref()
            .map(|o| o.cfg.runtime_config.clone())
            .unwrap_or_default();
        if !config.is_empty() {
            self.put_runtime_config(&config)?;
        }
        if self.owned.is_some() {
            if let Ok(i) = self.info() {
                let _ = state::write_private(
                    &self.state.join(files::BOOT_JSON),
                    i.boot_json.as_bytes(),
                );
            }
        }
        Ok(())
    }

    /// Sends `(name, contents)` files to [`RUNTIME_CONFIG_DIR`] as one tar stream (the
    /// directory is created by the agent).
    fn put_runtime_config(&self, files: &[(String, Vec<u8>)]) -> Result<(), VmError> {
        let io = |source| VmError::Io {
            what: "cannot pack the runtime config".into(),
            source,
        };
        let mut b = tar::Builder::new(Vec::new());
        for (name, body) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(body.len() as u64);
            // Secrets may be among them: readable by the guest's root only.
            h.set_mode(0o600);
            h.set_mtime(0);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, name, &body[..]).map_err(io)?;
        }
        let tarball = b.into_inner().map_err(io)?;
        let mut s = self.agent("minke-config")?;
        client::put(
            s.as_mut(),
            HostMsg::PutTree {
                dest: RUNTIME_CONFIG_DIR.into(),
            },
            &mut &tarball[..],
        )?;
        Ok(())
    }

    fn fall_back_to_tcg(&mut self) -> Result<(), VmError> {
        let o = self.owned.as_mut().expect("only owners probe KVM");
        o.serial = None;
        o.qemu.kill();
        if let Some(b) = o.backend.as_mut() {
            b.kill();
        }
        let log = tail(&self.state.join(files::QEMU_LOG), 3);
        record_kvm_broken(&log);
        warn_once(&format!(
            "warning: KVM cannot run this guest here ({}); falling back to TCG (slower)",
            log.lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("no answer")
                .trim()
        ));
        let qemu_bin = binaries::find(Tool::QemuSystem)?;
        let (qemu, backend, accel, transport, console) = launch(
            &o.cfg,
            &self.state,
            &qemu_bin,
            UsedAccel::Tcg,
            self.transport,
        )?;
        o.qemu = qemu;
        o.console = console;
        o.backend = backend;
        o.serial = start_serial(&self.state, transport, o.time.as_ref())?;
        self.connector = connector(&self.state, transport, o.serial.as_ref());
        o.kvm_probe = false;
        o.started = Instant::now();
        self.accel = accel;
        self.transport = transport;
        self.run.qemu_pid = o.qemu.pid();
        self.run.backend_pid = o.backend.as_ref().map(Guarded::pid);
        self.run.qemu_stamp = o.qemu.stamp();
        self.run.backend_stamp = o.backend.as_ref().and_then(Guarded::stamp);
        self.run.accel = accel;
        state::write_run(&self.state, &self.run)?;
        Ok(())
    }

    fn exited_error(&self, status: ExitStatus) -> VmError {
        let ql = tail(&self.state.join(files::QEMU_LOG), 10);
        VmError::QemuExited {
            status: status.to_string(),
            console: self.console_tail(),
            qemu_log: if ql.trim().is_empty() {
                String::new()
            } else {
                format!("\nQEMU said:\n{ql}")
            },
        }
    }

    /// Whether a line of the console log is exactly `line` (the serial console may end
    /// lines with `\r`).
    fn console_has_line(&self, line: &str) -> bool {
        std::fs::read(self.console_log())
            .map(|b| {
                String::from_utf8_lossy(&b)
                    .lines()
                    .any(|l| l.trim_end_matches('\r') == line)
            })
            .unwrap_or(false)
    }

    /// The last lines of the console log.
    pub fn console_tail(&self) -> String {
        tail(&self.console_log(), CONSOLE_TAIL_LINES)
    }

    /// Opens a handshaken connection to the control agent.
    fn agent(&self, client_name: &str) -> Result<Box<dyn Duplex>, VmError> {
        self.agent_within(client_name, HANDSHAKE_TIMEOUT)
    }

    /// Like [`Vm::agent`] with a limit on connecting and the handshake.
    fn agent_within(
        &self,
        client_name: &str,
        timeout: Duration,
    ) -> Result<Box<dyn Duplex>, VmError> {
        self.agent_sending(client_name, timeout, None)
    }

    /// Like [`Vm::agent_within`], with `request` sent right behind the `Hello`.
    fn agent_sending(
        &self,
        client_name: &str,
        timeout: Duration,
        request: Option<&HostMsg>,
    ) -> Result<Box<dyn Duplex>, VmError> {
        let mut s = self.connector.connect(CONTROL_PORT, timeout)?;
        let setup = |source| VmError::Io {
            what: "cannot set a socket timeout".into(),
            source,
        };
        s.set_read_timeout(Some(timeout)).map_err(setup)?;
        client::handshake_with(s.as_mut(), client_name, &self.secret, request)?;
        s.set_read_timeout(None).map_err(setup)?;
        Ok(s)
    }

    /// Runs a command, streaming stdin from `stdin` and output to the sinks; returns its exit
    /// code (128 + signal when killed).
    pub fn exec(
        &self,
        req: ExecRequest,
        stdin: Stdin,
        stdout: &mut dyn Write,
        stderr: &mut dyn Write,
    ) -> Result<i32, VmError> {
        let s = self.agent_sending("minke-exec", HANDSHAKE_TIMEOUT, Some(&HostMsg::Exec(req)))?;
        Ok(client::exec_sent(s, stdin, stdout, stderr)?)
    }

    /// Runs `argv` with no stdin and collects its output.
    pub fn exec_output<S: AsRef<str>>(&self, argv: &[S]) -> Result<Output, VmError> {
        let req = ExecRequest {
            argv: argv.iter().map(|a| a.as_ref().to_string()).collect(),
            ..Default::default()
        };
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        let code = self.exec(req, Stdin::Null, &mut stdout, &mut stderr)?;
        Ok(Output {
            code,
            stdout,
            stderr,
        })
    }

    /// Writes `bytes` to the guest file `guest` (atomically) with permission bits `mode`.
    pub fn put_bytes(&self, bytes: &[u8], guest: &str, mode: u32) -> Result<(), VmError> {
        let mut s = self.agent("minke-cp")?;
        client::put(
            s.as_mut(),
            HostMsg::PutFile {
                path: guest.into(),
                mode,
            },
            &mut &bytes[..],
        )?;
        Ok(())
    }

    /// Copies the host file `local` to the guest path `guest`, keeping its permission bits.
    pub fn put_file(&self, local: &Path, guest: &str) -> Result<(), VmError> {
        use std::os::unix::fs::PermissionsExt;
        let io = |source| VmError::Io {
            what: format!("cannot read {}", local.display()),
            source,
        };
        let mut f = File::open(local).map_err(io)?;
        let mode = f.metadata().map_err(io)?.permissions().mode() & 0o7777;
        let mut s = self.agent("minke-cp")?;
        client::put(
            s.as_mut(),
            HostMsg::PutFile {
                path: guest.into(),
                mode,
            },
            &mut f,
        )?;
        Ok(())
    }

    /// Reads the guest file `guest` into memory; fails beyond
    /// [`getfiles::MEMORY_LIMIT`] (use [`Vm::get_file`] for large files).
    pub fn read_file(&self, guest: &str) -> Result<Vec<u8>, VmError> {
        let mut s = self.agent("minke-cp")?;
        getfiles::read_capped(
            s.as_mut(),
            &HostMsg::GetFile { path: guest.into() },
            getfiles::MEMORY_LIMIT,
            &format!("guest file {guest}"),
        )
    }

    /// Copies the guest file `guest` to the host path `local`. Nothing is created until the
    /// guest answers; the data goes to a fresh temporary file in `local`'s directory, renamed
    /// into place at the end and removed on failure.
    pub fn get_file(&self, guest: &str, local: &Path) -> Result<u64, VmError> {
        let mut s = self.agent("minke-cp")?;
        getfiles::file_to(s.as_mut(), guest, local)
    }

    /// Copies the host directory `local` into the guest directory `guest` (as a tar stream).
    pub fn put_tree(&self, local: &Path, guest: &str) -> Result<(), VmError> {
        let (r, w) = rustix::pipe::pipe().map_err(|e| VmError::Io {
            what: "cannot create a pipe".into(),
            source: e.into(),
        })?;
        let (r, w) = (File::from(r), File::from(w));
        let src = local.to_path_buf();
        let packer = std::thread::spawn(move || -> io::Result<()> {
            let mut b = tar::Builder::new(w);
            b.follow_symlinks(false);
            b.mode(tar::HeaderMode::Deterministic);
            b.append_dir_all(".", &src)?;
            b.into_inner()?.flush()
        });
        let mut s = self.agent("minke-cp")?;
        let mut r = r;
        let res = client::put(s.as_mut(), HostMsg::PutTree { dest: guest.into() }, &mut r);
        drop(r);
        let packed = packer
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("tar thread panicked")));
        res?;
        packed.map_err(|source| VmError::Io {
            what: format!("cannot pack {}", local.display()),
            source,
        })
    }

    /// Copies the guest directory `guest` into the host directory `local` (created once the
    /// guest answers, removed again if the copy fails), with [`GetOptions::default`]: setuid,
    /// setgid and sticky bits dropped, the umask applied.
    pub fn get_tree(&self, guest: &str, local: &Path) -> Result<(), VmError> {
        self.get_tree_with(guest, local, GetOptions::default())
    }

    /// [`Vm::get_tree`] with options. Whatever the options, nothing is written outside `local`
    /// and device nodes and fifos are skipped (see [`crate::getfiles`]).
    pub fn get_tree_with(
        &self,
        guest: &str,
        local: &Path,
        opts: GetOptions,
    ) -> Result<(), VmError> {
        let mut s = self.agent("minke-cp")?;
        getfiles::tree_to(s.as_mut(), guest, local, opts)
    }

    /// Listens on `listen` and pipes each accepted connection to `target` in the guest.
    pub fn forward(
        &self,
        listen: ForwardListen,
        target: ForwardTarget,
    ) -> Result<Forwarder, VmError> {
        let what = format!("cannot listen on {listen:?}");
        Forwarder::start(listen, self.connector.clone(), self.secret.clone(), target)
            .map_err(|source| VmError::Io { what, source })
    }

    /// Agent and boot information.
    pub fn info(&self) -> Result<InfoReply, VmError> {
        let mut s = self.agent("minke-info")?;
        Ok(client::info(s.as_mut())?)
    }

    /// The guest's log ring buffer (one service, or all); fails beyond
    /// [`getfiles::MEMORY_LIMIT`].
    pub fn logs(&self, service: Option<&str>) -> Result<Vec<u8>, VmError> {
        let mut s = self.agent("minke-logs")?;
        getfiles::read_capped(
            s.as_mut(),
            &HostMsg::Logs {
                service: service.map(str::to_owned),
            },
            getfiles::MEMORY_LIMIT,
            "the guest's logs",
        )
    }

    /// Whether the vCPUs run, and QEMU's run state (`running`, `paused`…).
    pub fn status(&self) -> Result<(bool, String), VmError> {
        Ok(qmp::query_status(&self.state.join(files::QMP))?)
    }

    /// Pauses the vCPUs (QMP `stop`).
    pub fn pause(&self) -> Result<(), VmError> {
        Ok(qmp::stop(&self.state.join(files::QMP))?)
    }

    /// Resumes the vCPUs (QMP `cont`) and asks the guest to resync its clock at once. Returns
    /// how many time sync connections were told (0 from an attached handle: the push goes
    /// through the booting process's time server).
    pub fn resume(&self) -> Result<usize, VmError> {
        qmp::cont(&self.state.join(files::QMP))?;
        let pushed = self
            .owned
            .as_ref()
            .and_then(|o| o.time.as_ref())
            .map(TimeServer::push_resumed)
            .unwrap_or(0);
        if self.transport == UsedTransport::VhostUser {
            self.revive_vhost_user()?;
        }
        Ok(pushed)
    }

    /// After `cont`, vhost-device-vsock may leave its queues idle until new traffic arrives,
    /// so a first connection request can go unanswered: open short-lived control connections
    /// until one completes a handshake, which also flushes what was queued (the `Resumed` push).
    fn revive_vhost_user(&self) -> Result<(), VmError> {
        let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
        loop {
            match self.agent_within("minke-resume", Duration::from_millis(250)) {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => {}
            }
        }
    }

    /// Asks the guest to power off — through the control agent's `Power` request, or the ACPI
    /// power button (QMP `system_powerdown`) when the agent does not answer — waits up to
    /// `grace` for QEMU to exit, then kills it.
    pub fn poweroff(&mut self, grace: Duration) -> Result<PowerOff, VmError> {
        // One request, never two: PID1 takes a second request as "hurry up" and would cut
        // the onshutdown tasks short.
        let mut asked = false;
        if let Ok(mut s) = self.connector.connect(CONTROL_PORT, Duration::from_secs(2)) {
            let _ = s.set_read_timeout(Some(grace.min(Duration::from_secs(2))));
            if client::handshake(s.as_mut(), "minke-power", &self.secret).is_ok() {
                asked = client::power(s.as_mut(), PowerAction::Poweroff).is_ok();
            }
        }
        if !asked {
            let _ = qmp::system_powerdown(&self.state.join(files::QMP));
        }
        self.wait_exit(grace)
    }

    /// Presses the ACPI power button (QMP `system_powerdown`, what a hypervisor's "shut down"
    /// does), waits up to `grace` for QEMU to exit, then kills it.
    pub fn acpi_powerdown(&mut self, grace: Duration) -> Result<PowerOff, VmError> {
        qmp::system_powerdown(&self.state.join(files::QMP))?;
        self.wait_exit(grace)
    }

    fn wait_exit(&mut self, grace: Duration) -> Result<PowerOff, VmError> {
        let clean = match self.owned.as_mut() {
            Some(o) => o.qemu.wait_timeout(grace).is_some(),
            None => {
                let end = Instant::now() + grace;
                while state::is_running(&self.run) && Instant::now() < end {
                    std::thread::sleep(Duration::from_millis(10));
                }
                !state::is_running(&self.run)
            }
        };
        self.try_kill()?;
        Ok(if clean {
            PowerOff::Clean
        } else {
            PowerOff::Killed
        })
    }

    /// Kills QEMU and the vsock backend at once and cleans the state directory. On an attached
    /// handle a process is signalled only once proven to be the one `run.json` recorded (see
    /// [`Vm::try_kill`]); a refusal is logged.
    pub fn kill(&mut self) {
        if let Err(e) = self.try_kill() {
            tracing::warn!("{}", crate::error_chain(&e));
        }
    }

    /// [`Vm::kill`], reporting why an attached handle signalled nothing: a recorded pid that is
    /// not a valid pid, has no recorded start time, or now names another process (its start
    /// time or executable differ) is never signalled. A process that already exited is not an
    /// error.
    pub fn try_kill(&mut self) -> Result<(), VmError> {
        use crate::process::{NotProven, Proven};
        use rustix::process::Signal;
        match self.owned.as_mut() {
            Some(o) => {
                o.forwards.clear();
                o.serial = None;
                o.qemu.kill();
                if let Some(b) = o.backend.as_mut() {
                    b.kill();
                }
                o.time = None;
                // This process holds the lock: clean without asking it.
                state::remove_stale_files(&self.state);
                Ok(())
            }
            None => {
                let mut refused = None;
                let mut targets = vec![(
                    "QEMU",
                    u64::from(self.run.qemu_pid),
                    self.run.qemu_stamp.as_ref(),
                )];
                if let Some(b) = self.run.backend_pid {
                    targets.push((
                        "the vsock backend",
                        b.into(),
                        self.run.backend_stamp.as_ref(),
                    ));
                }
                for (what, pid, stamp) in targets {
                    match Proven::prove(pid, stamp) {
                        Ok(p) => {
                            if what == "QEMU" {
                                let _ = qmp::quit(&self.state.join(files::QMP));
                            }
                            p.signal(Signal::KILL).map_err(|source| VmError::Io {
                                what: format!("cannot kill {what} (pid {})", p.pid()),
                                source,
                            })?;
                        }
                        Err(NotProven::Gone(_)) => {}
                        Err(source) => {
                            refused.get_or_insert(StateError::Unproven { what, pid, source });
                        }
                    }
                }
                // Cleans only once the booting process let go of the VM.
                state::clean_stale(&self.state);
                match refused {
                    Some(e) => Err(e.into()),
                    None => Ok(()),
                }
            }
        }
    }

    /// Cuts the power, from any thread: SIGKILL to QEMU and the vsock backend and nothing else
    /// (an exec in progress then fails). [`Vm::kill`] or drop reaps them and cleans the state
    /// directory. Does nothing on an attached handle.
    pub fn power_cut(&self) {
        if let Some(o) = &self.owned {
            o.qemu.signal(rustix::process::Signal::KILL);
            if let Some(b) = &o.backend {
                b.signal(rustix::process::Signal::KILL);
            }
        }
    }

    /// Whether QEMU is still running.
    pub fn is_running(&mut self) -> bool {
        match self.owned.as_mut() {
            Some(o) => o.qemu.try_wait().is_none(),
            None => state::is_running(&self.run),
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if self.owned.is_some() {
            self.kill();
        }
    }
}

type Launched = (
    Guarded,
    Option<Guarded>,
    UsedAccel,
    UsedTransport,
    Option<ConsoleLog>,
);

/// Starts the host end of the virtio-serial transport once QEMU listens on `serial.sock`.
fn start_serial(
    state: &Path,
    transport: UsedTransport,
    time: Option<&TimeServer>,
) -> Result<Option<SerialEndpoint>, VmError> {
    if transport != UsedTransport::Serial {
        return Ok(None);
    }
    SerialEndpoint::start(state, time)
        .map(Some)
        .map_err(|source| VmError::Io {
            what: "cannot start the virtio-serial transport".into(),
            source,
        })
}

/// How this process reaches guest ports. `serial` is the booting process's endpoint; without
/// it (an attached process) the serial transport is reached through the hybrid vsock socket
/// the booting process serves.
fn connector(state: &Path, transport: UsedTransport, serial: Option<&SerialEndpoint>) -> Connector {
    match (transport, serial) {
        (UsedTransport::VhostKernel { cid }, _) => Connector::Kernel { cid },
        (UsedTransport::Serial, Some(ep)) => Connector::Serial {
            mux: ep.mux().clone(),
        },
        (UsedTransport::VhostUser | UsedTransport::Serial, _) => Connector::Hybrid {
            uds: state.join(files::VSOCK),
        },
    }
}

/// Starts the vsock backend (if any) and QEMU, and waits for QMP to answer.
fn launch(
    cfg: &VmConfig,
    state: &Path,
    qemu_bin: &Path,
    accel: UsedAccel,
    transport: UsedTransport,
) -> Result<Launched, VmError> {
    let backend = match transport {
        UsedTransport::VhostUser => Some(start_backend(state)?),
        _ => None,
    };
    let mut cid_tries = 0;
    let mut transport = transport;
    loop {
        let _ = std::fs::remove_file(state.join(files::QMP));
        let args = qemu::qemu_args(cfg, state, accel, transport);
        let log_path = state.join(files::QEMU_LOG);
        let log = state::create_private(&log_path)?;
        // The console comes through a socket into a capped, rotated log; a console shown on
        // the terminal is teed by QEMU itself.
        let console = if cfg.console_to_terminal {
            state::create_private(&state.join(files::CONSOLE))?;
            None
        } else {
            Some(ConsoleLog::listen(state)?)
        };
        let mut cmd = Command::new(qemu_bin);
        cmd.args(&args).stdin(Stdio::null()).stderr(log);
        cmd.stdout(if cfg.console_to_terminal {
            Stdio::inherit()
        } else {
            Stdio::null()
        });
        let mut qemu = Guarded::spawn(cmd).map_err(|source| VmError::Spawn {
            what: qemu_bin.display().to_string(),
            source,
        })?;
        match wait_qmp(state, &mut qemu) {
            Ok(()) => return Ok((qemu, backend, accel, transport, console)),
            Err(e) => {
                let said = std::fs::read_to_string(&log_path).unwrap_or_default();
                if let UsedTransport::VhostKernel { cid } = transport {
                    if said.contains("in use") && cid_tries < 32 {
                        cid_tries += 1;
                        transport = UsedTransport::VhostKernel { cid: cid + 1 };
                        continue;
                    }
                }
                if accel == UsedAccel::Kvm && qemu.try_wait().is_some() {
                    return Err(VmError::Kvm(
                        said.trim()
                            .lines()
                            .last()
                            .unwrap_or("QEMU exited")
                            .to_string(),
                    ));
                }
                return Err(e);
            }
        }
    }
}

fn start_backend(state: &Path) -> Result<Guarded, VmError> {
    let bin = binaries::find(Tool::VhostDeviceVsock)?;
    let vhu = state.join(files::VHU);
    let _ = std::fs::remove_file(&vhu);
    let _ = std::fs::remove_file(state.join(files::VSOCK));
    let log_path = state.join(files::BACKEND_LOG);
    let log = state::create_private(&log_path)?;
    let log2 = log.try_clone().map_err(|source| VmError::Io {
        what: "cannot dup a log fd".into(),
        source,
    })?;
    let mut cmd = Command::new(&bin);
    cmd.args(qemu::backend_args(state))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    let mut child = Guarded::spawn(cmd).map_err(|source| VmError::Spawn {
        what: bin.display().to_string(),
        source,
    })?;
    let end = Instant::now() + STARTUP_TIMEOUT;
    let mut step = Duration::from_millis(1);
    while !vhu.exists() {
        if child.try_wait().is_some() || Instant::now() > end {
            return Err(VmError::Startup {
                what: "vhost-device-vsock",
                timeout: STARTUP_TIMEOUT,
                log: format!("\n{}", tail(&log_path, 10)),
            });
        }
        std::thread::sleep(step);
        step = (step * 2).min(Duration::from_millis(10));
    }
    Ok(child)
}

fn wait_qmp(state: &Path, qemu: &mut Guarded) -> Result<(), VmError> {
    let sock = state.join(files::QMP);
    let end = Instant::now() + STARTUP_TIMEOUT;
    let mut step = Duration::from_millis(1);
    loop {
        if let Some(status) = qemu.try_wait() {
            return Err(VmError::QemuExited {
                status: status.to_string(),
                console: tail(&state.join(files::CONSOLE), CONSOLE_TAIL_LINES),
                qemu_log: format!("\nQEMU said:\n{}", tail(&state.join(files::QEMU_LOG), 10)),
            });
        }
        if sock.exists() && qmp::query_status(&sock).is_ok() {
            return Ok(());
        }
        if Instant::now() > end {
            return Err(VmError::Startup {
                what: "QEMU's QMP socket",
                timeout: STARTUP_TIMEOUT,
                log: format!("\n{}", tail(&state.join(files::QEMU_LOG), 10)),
            });
        }
        std::thread::sleep(step);
        step = (step * 2).min(Duration::from_millis(10));
    }
}

fn can_open_rw(p: &str) -> Result<(), io::Error> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(p)
        .map(drop)
}

fn kvm_verdict_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|x| !x.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("minke/kvm-broken"))
}

fn host_kernel() -> String {
    rustix::system::uname()
        .release()
        .to_string_lossy()
        .into_owned()
}

fn record_kvm_broken(reason: &str) {
    if let Some(p) = kvm_verdict_path() {
        if let Some(d) = p.parent() {
            let _ = std::fs::create_dir_all(d);
        }
        let _ = std::fs::write(&p, format!("{}\n{}\n", host_kernel(), reason.trim()));
    }
}

fn kvm_known_broken() -> bool {
    kvm_verdict_path()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .is_some_and(|s| s.lines().next() == Some(host_kernel().as_str()))
}

fn warn_once(msg: &str) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if !WARNED.swap(true, Ordering::SeqCst) {
        eprintln!("{msg}");
    }
}

/// Chooses the accelerator; the flag says whether KVM is on probation (Auto).
fn resolve_accel(accel: Accel) -> Result<(UsedAccel, bool), VmError> {
    match accel {
        Accel::Tcg => Ok((UsedAccel::Tcg, false)),
        Accel::Kvm => can_open_rw("/dev/kvm")
            .map(|()| (UsedAccel::Kvm, false))
            .map_err(|e| VmError::Kvm(format!("/dev/kvm: {e}"))),
        Accel::Auto => {
            if can_open_rw("/dev/kvm").is_err() {
                return Ok((UsedAccel::Tcg, false));
            }
            if kvm_known_broken() {
                let p = kvm_verdict_path().unwrap_or_default();
                warn_once(&format!(
                    "warning: KVM cannot run guests on this host (remembered in {}; delete it to retry); using TCG",
                    p.display()
                ));
                return Ok((UsedAccel::Tcg, false));
            }
            Ok((UsedAccel::Kvm, true))
        }
    }
}

/// First guest CID tried with kernel vhost-vsock; the pid spreads concurrent shims apart.
fn first_cid() -> u32 {
    3 + std::process::id() % 100_000
}

fn resolve_transport(t: Transport) -> Result<UsedTransport, VmError> {
    let kernel = || can_open_rw("/dev/vhost-vsock");
    match t {
        Transport::VhostKernel => kernel()
            .map(|()| UsedTransport::VhostKernel { cid: first_cid() })
            .map_err(|e| VmError::VhostKernel(format!("/dev/vhost-vsock: {e}"))),
        Transport::VhostUser => {
            binaries::find(Tool::VhostDeviceVsock)?;
            Ok(UsedTransport::VhostUser)
        }
        Transport::Serial => Ok(UsedTransport::Serial),
        Transport::Auto => {
            if kernel().is_ok() {
                Ok(UsedTransport::VhostKernel { cid: first_cid() })
            } else if binaries::find(Tool::VhostDeviceVsock).is_ok() {
                Ok(UsedTransport::VhostUser)
            } else {
                warn_once(
                    "warning: no vsock transport (no /dev/vhost-vsock, no vhost-device-vsock): using \
                     virtio-serial; install vhost-device-vsock with `cargo install --locked vhost-device-vsock`",
                );
                Ok(UsedTransport::Serial)
            }
        }
    }
}

/// The last `n` lines of a file (reads at most the last 64 KiB).
pub(crate) fn tail(path: &Path, n: usize) -> String {
    let Ok(mut f) = File::open(path) else {
        return format!("({} not readable)", path.display());
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let s = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A fresh random secret for one boot.
fn new_secret() -> Result<Secret, VmError> {
    let mut b = [0u8; minke_protocol::auth::SECRET_LEN];
    let mut filled = 0;
    while filled < b.len() {
        match rustix::rand::getrandom(&mut b[filled..], rustix::rand::GetRandomFlags::empty()) {
            Ok(n) => filled += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                return Err(VmError::Io {
                    what: "cannot make the VM's secret (getrandom)".into(),
                    source: e.into(),
                })
            }
        }
    }
    Secret::from_bytes(&b).map_err(|e| VmError::Io {
        what: "cannot make the VM's secret".into(),
        source: io::Error::other(e),
    })
}

/// The secret of the VM whose state directory is `dir`, written there by its booting process.
fn read_secret(dir: &Path) -> Result<Secret, VmError> {
    let p = dir.join(files::SECRET);
    let bytes = std::fs::read(&p).map_err(|source| VmError::Io {
        what: format!(
            "cannot read the VM's secret {} (only the user who booted the VM can attach to it)",
            p.display()
        ),
        source,
    })?;
    Secret::from_bytes(&bytes).map_err(|e| VmError::Io {
        what: format!("{} is damaged", p.display()),
        source: io::Error::other(e),
    })
}

#[cfg(test)]
#[path = "vm_kill_tests.rs"]
mod kill_tests;
