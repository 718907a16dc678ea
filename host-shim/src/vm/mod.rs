//! [`Vm`]: boot an image under QEMU, wait for its agents, run commands, move files, pause,
//! resume, power off; or attach to a VM another process booted.
//!
//! This file holds the type, its errors, booting and the conversations with the guest; the
//! rest of the API and the machinery behind it live beside it:
//! - `attach.rs`: [`Vm::attach`] and its kin, for a VM another process booted;
//! - `copy.rs`: files and trees into and out of the guest, the runtime config;
//! - `power.rs`: power off, kill, power cut, and the drop that ends a booted VM;
//! - `launch.rs`: starting QEMU and the vsock backend, waiting for QMP, the host end of the
//!   chosen transport;
//! - `accel.rs`: the accelerator choice, KVM's probation and the remembered verdict;
//! - `transport_choice.rs`: the transport choice;
//! - `secret.rs`: the per-VM secret, made at boot and read back by attached handles.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use minke_protocol::msg::{ExecRequest, ForwardTarget, InfoReply};
use minke_protocol::{HostMsg, Secret, CONTROL_PORT, READY_MARKER, TIMESYNC_PORT};

use crate::binaries::{self, NotFound, Tool};
use crate::client::{self, AgentError, Output, Stdin};
use crate::config::VmConfig;
use crate::console::ConsoleLog;
use crate::disk::{self, DiskError};
use crate::forward::{ForwardListen, Forwarder};
use crate::getfiles;
use crate::process::Guarded;
use crate::qemu;
use crate::qmp::{self, QmpError};
use crate::serial::SerialEndpoint;
use crate::share;
pub(crate) use crate::state::tail;
use crate::state::{self, RunInfo, StateError};
use crate::state::{files, UsedAccel, UsedTransport};
use crate::timesync::{TimeServer, TimesyncStats};
use crate::transport::{ConnectError, Connector, Duplex};

mod accel;
mod attach;
mod copy;
mod launch;
mod machine_choice;
mod power;
mod secret;
mod transport_choice;
mod tsc;
pub use tsc::host_tsc_khz;

use accel::{record_kvm_broken, resolve_accel, warn_once};
use launch::{connector, launch, start_serial, Devices};
use machine_choice::resolve_machine;
use secret::new_secret;
use transport_choice::resolve_transport;

/// How long [`Vm::attach`] waits for a VM that is still booting: generous, for a loaded
/// machine under TCG.
pub const ATTACH_TIMEOUT: Duration = Duration::from_secs(120);
/// Lines of console log attached to boot errors.
const CONSOLE_TAIL_LINES: usize = 40;
/// How long the agent may take to answer `Hello` on a fresh connection.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Limit of one connection attempt while waiting for readiness.
const READY_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);
/// Under `Accel::Auto`, how long KVM gets to reach agent readiness before TCG is tried. A
/// working KVM boots a minke image in well under a second.
const KVM_READY_BUDGET: Duration = Duration::from_secs(8);

/// The firmware and medium of an EFI boot exist, and nothing asks for what such a boot cannot
/// give (the medium's command line and initrd are sealed into it).
fn check_efi(efi: &crate::config::EfiBoot, cfg: &VmConfig) -> Result<(), VmError> {
    use crate::config::EfiMedium;
    if !efi.firmware.is_file() {
        let package = match cfg.arch {
            minke_protocol::arch::Arch::X86_64 => "ovmf",
            minke_protocol::arch::Arch::Aarch64 => "qemu-efi-aarch64",
        };
        return Err(VmError::Config(format!(
            "no UEFI firmware at {}: install Debian's {package}, or name the firmware image",
            efi.firmware.display()
        )));
    }
    let medium = match &efi.medium {
        EfiMedium::Uki(p) | EfiMedium::Cdrom(p) | EfiMedium::Disk { path: p, .. } => p,
    };
    if !medium.is_file() {
        return Err(VmError::Config(format!(
            "no boot medium at {}",
            medium.display()
        )));
    }
    if !cfg.extra_initrds.is_empty() {
        return Err(VmError::Config(format!(
            "{} carries its own initrd: files cannot be added to it at boot; boot the image \
             directory instead, or add them to the spec",
            medium.display()
        )));
    }
    Ok(())
}

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
    /// A shared directory could not be set up.
    #[error(transparent)]
    Share(#[from] crate::share::ShareError),
    /// The network could not be set up.
    #[error(transparent)]
    Net(#[from] crate::net::NetError),
    /// The configuration asks for something that cannot be done.
    #[error("{0}")]
    Config(String),
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
    /// The guest has not said it is ready, and the transport must not be used before it has.
    #[error("VM {0} is still booting (its init has not said it is ready): wait for it (`minke exec --timeout`, `Vm::wait_ready`)")]
    Booting(String),
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

impl From<crate::getfiles::GetError> for VmError {
    fn from(e: crate::getfiles::GetError) -> Self {
        match e {
            crate::getfiles::GetError::Agent(e) => VmError::Agent(e),
            crate::getfiles::GetError::Io { what, source } => VmError::Io { what, source },
        }
    }
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
    /// One virtiofsd per virtio-fs share.
    share_daemons: Vec<Guarded>,
    /// The network plan, kept for a relaunch.
    net: Option<crate::net::NetPlan>,
    /// passt, when it serves the network.
    net_daemon: Option<crate::net::Passt>,
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
    pub fn boot(mut cfg: VmConfig) -> Result<Vm, VmError> {
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
        let qemu_bin = binaries::find(Tool::QemuSystemFor(cfg.arch))?;
        // Every share checked before anything starts: a missing directory is an error here.
        let shares = share::plan(
            &cfg.shares,
            cfg.share_backend,
            cfg.guest_share_kinds.as_deref(),
        )?;
        if let Some(efi) = &cfg.efi {
            check_efi(efi, &cfg)?;
        }
        for d in &cfg.disks {
            disk::ensure(d)?;
        }
        let (accel, kvm_probe) = resolve_accel(cfg.accel, cfg.arch)?;
        let transport = resolve_transport(cfg.transport)?;
        let net = crate::net::plan(cfg.net, cfg.net_backend)?;
        // Decided before anything starts: a machine asked for and impossible is an error now.
        let machine = resolve_machine(&cfg, &shares, net.as_ref(), accel, kvm_probe)?;
        let secret = new_secret()?;
        state::write_private(&state.join(files::SECRET), secret.as_bytes())?;
        if !shares.is_empty() {
            share::write_list(&state, &shares)?;
        }
        if let Some(img) = &cfg.run_image {
            if !img.is_file() {
                return Err(VmError::Io {
                    what: format!("cannot attach the run image {}", img.display()),
                    source: std::io::Error::from(std::io::ErrorKind::NotFound),
                });
            }
            let desc = minke_protocol::image::RunImage {
                fstype: "erofs".into(),
            };
            state::write_private(
                &state.join(files::IMAGE),
                &minke_protocol::image::encode(&desc),
            )?;
        }
        cfg.initrd = launch::initrd_for(&cfg, &state)?;
        let share_daemons = share::start_daemons(&state, &shares)?;
        if let Some(p) = &net {
            crate::net::write_config(&state, p)?;
        }
        let mut net_daemon = crate::net::start(&state, net.as_ref())?;
        let mut share_daemons = share_daemons;
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
        let (qemu, backend, accel, transport, console, kvm_probe) = match launch(
            &cfg,
            &state,
            &qemu_bin,
            accel,
            transport,
            &Devices {
                machine,
                shares: &shares,
                net: net.as_ref(),
                net_fd: net_daemon.as_ref().map(|p| &p.qemu_end),
            },
        ) {
            Ok((q, b, a, t, c)) => (q, b, a, t, c, kvm_probe),
            Err(VmError::Kvm(why)) if kvm_probe => {
                record_kvm_broken(&why);
                warn_once(&format!(
                    "warning: KVM cannot run this guest here ({why}); falling back to TCG (slower)"
                ));
                // virtiofsd and passt serve one QEMU each: fresh ones for the second.
                share_daemons.clear();
                share_daemons = share::start_daemons(&state, &shares)?;
                drop(net_daemon.take());
                net_daemon = crate::net::start(&state, net.as_ref())?;
                let (q, b, a, t, c) = launch(
                    &cfg,
                    &state,
                    &qemu_bin,
                    UsedAccel::Tcg,
                    transport,
                    &Devices {
                        machine,
                        shares: &shares,
                        net: net.as_ref(),
                        net_fd: net_daemon.as_ref().map(|p| &p.qemu_end),
                    },
                )?;
                (q, b, a, t, c, false)
            }
            Err(e) => return Err(e),
        };
        // QEMU is up and connected to passt: a passt that died meanwhile is an error now,
        // not a guest without network later.
        if let Some(p) = net_daemon.as_mut() {
            p.check_running(&state)?;
        }
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
            machine: Some(machine.used),
            transport,
            publish: cfg.publish.clone(),
            shares,
            net: net.as_ref().map(|p| p.used),
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
                share_daemons,
                net,
                net_daemon,
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
        let mut console_seen = 0;
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
            let wait = step.min(deadline - now);
            match self.owned.as_ref().and_then(|o| o.console.as_ref()) {
                // Before the marker, look again as soon as the guest prints: the ready line is
                // the last thing it prints while booting.
                Some(log) if !marker_seen => console_seen = log.wait_past(console_seen, wait),
                _ => std::thread::sleep(wait),
            }
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
        if self.owned.is_some() && !self.run.shares.is_empty() {
            self.check_shares_mounted()?;
        }
        if self
            .owned
            .as_ref()
            .is_some_and(|o| o.cfg.run_image.is_some())
        {
            self.check_image_mounted()?;
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

    /// Fails unless every share is mounted in the guest where it was asked: a command must
    /// not run against an empty directory and have its writes vanish.
    fn check_shares_mounted(&self) -> Result<(), VmError> {
        let mounts = self.read_file("/proc/1/mounts")?;
        let mounts = String::from_utf8_lossy(&mounts);
        for p in &self.run.shares {
            // /proc/PID/mounts writes a space in a path as \040.
            let path = p.share.path.replace(' ', "\\040");
            let mounted = mounts.lines().any(|l| {
                let mut f = l.split(' ');
                f.next() == Some(p.share.tag.as_str()) && f.next() == Some(path.as_str())
            });
            if !mounted {
                return Err(crate::share::ShareError::NotMounted {
                    guest: p.share.path.clone(),
                    host: p.host.clone(),
                    console: self.console_tail(),
                }
                .into());
            }
        }
        Ok(())
    }

    /// Fails unless the guest mounted the run image's root: a command meant for the container
    /// must not run in the guest's own root instead.
    fn check_image_mounted(&self) -> Result<(), VmError> {
        let mounts = self.read_file("/proc/1/mounts")?;
        let mounted = String::from_utf8_lossy(&mounts)
            .lines()
            .any(|l| l.split(' ').nth(1) == Some(minke_protocol::image::ROOT));
        if mounted {
            return Ok(());
        }
        Err(VmError::Io {
            what: format!(
                "the guest did not mount the container image at {} (does the image carry erofs \
                 and overlay? `allow_images: false` leaves them out); console:\n{}",
                minke_protocol::image::ROOT,
                self.console_tail()
            ),
            source: std::io::Error::other("not mounted"),
        })
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
        // vhost-device-vsock can stop serving a VM for good when a connection reaches it
        // before the guest's vsock driver is up (see `wait_ready`): no connection before the
        // init's ready line, whoever asks.
        let ready_known = self.owned.as_ref().is_some_and(|o| o.ready_after.is_some());
        if self.transport == UsedTransport::VhostUser && !ready_known && !self.is_booted() {
            return Err(VmError::Booting(self.name.clone()));
        }
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
        .map_err(VmError::from)
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
}

#[cfg(test)]
mod kill_tests;
