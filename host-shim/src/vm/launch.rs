//! Starting a VM's processes: the vsock backend (vhost-user), QEMU, the wait for QMP, and the
//! host end of the chosen transport.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{tail, VmError, CONSOLE_TAIL_LINES};
use crate::binaries::{self, Tool};
use crate::config::VmConfig;
use crate::console::ConsoleLog;
use crate::net::NetPlan;
use crate::process::Guarded;
use crate::qemu;
use crate::qmp;
use crate::serial::SerialEndpoint;
use crate::share::Planned;
use crate::state;
use crate::state::{files, UsedAccel, UsedTransport};
use crate::timesync::TimeServer;
use crate::transport::Connector;

/// How long the vhost-user backend and QMP may take to come up.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

type Launched = (
    Guarded,
    Option<Guarded>,
    UsedAccel,
    UsedTransport,
    Option<ConsoleLog>,
);

/// Starts the host end of the virtio-serial transport once QEMU listens on `serial.sock`.
pub(super) fn start_serial(
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
pub(super) fn connector(
    state: &Path,
    transport: UsedTransport,
    serial: Option<&SerialEndpoint>,
) -> Connector {
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

/// The initrd QEMU boots: the image's, or, with extra archives, a private copy of it in the
/// state directory with each extra appended on a 4-byte boundary (zero padding between
/// archives is skipped by the kernel's unpacker).
pub(super) fn initrd_for(cfg: &VmConfig, state: &Path) -> Result<std::path::PathBuf, VmError> {
    if cfg.extra_initrds.is_empty() {
        return Ok(cfg.initrd.clone());
    }
    let path = state.join(files::INITRD);
    let io = |what: String| move |source| VmError::Io { what, source };
    let mut out = state::create_private(&path)?;
    let mut len = 0u64;
    for part in std::iter::once(&cfg.initrd).chain(&cfg.extra_initrds) {
        let pad = (4 - len % 4) % 4;
        out.write_all(&[0u8; 3][..pad as usize])
            .map_err(io(format!("cannot write {}", path.display())))?;
        len += pad;
        let mut f = std::fs::File::open(part).map_err(io(format!(
            "cannot read the initrd part {}",
            part.display()
        )))?;
        len += std::io::copy(&mut f, &mut out).map_err(io(format!(
            "cannot copy {} into {}",
            part.display(),
            path.display()
        )))?;
    }
    Ok(path)
}

/// What a boot brings besides the image and the transport: shared directories and the network
/// card with, for passt, QEMU's end of their socket pair.
#[derive(Clone, Copy)]
pub(super) struct Devices<'a> {
    pub(super) machine: crate::qemu::MachinePlan,
    pub(super) shares: &'a [Planned],
    pub(super) net: Option<&'a NetPlan>,
    pub(super) net_fd: Option<&'a std::os::fd::OwnedFd>,
}

/// Starts the vsock backend (if any) and QEMU, and waits for QMP to answer.
pub(super) fn launch(
    cfg: &VmConfig,
    state: &Path,
    qemu_bin: &Path,
    accel: UsedAccel,
    transport: UsedTransport,
    devices: &Devices<'_>,
) -> Result<Launched, VmError> {
    let Devices {
        machine,
        shares,
        net,
        net_fd,
    } = *devices;
    let backend = match transport {
        UsedTransport::VhostUser => Some(start_backend(state)?),
        _ => None,
    };
    let mut cid_tries = 0;
    let mut transport = transport;
    loop {
        let _ = std::fs::remove_file(state.join(files::QMP));
        let args = qemu::qemu_args(cfg, state, machine, accel, transport, shares, net);
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
        if let Some(fd) = net_fd {
            use std::os::fd::AsRawFd;
            crate::sys::inherit_fd_as(&mut cmd, fd.as_raw_fd(), crate::net::PASST_FD);
        }
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
                // A QEMU that died under KVM for another reason (a device, a daemon) is not a
                // verdict on KVM: only what names it is.
                let about_kvm = said.to_ascii_lowercase().contains("kvm");
                if accel == UsedAccel::Kvm && about_kvm && qemu.try_wait().is_some() {
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
