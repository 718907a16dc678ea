//! The accelerator: KVM when `/dev/kvm` opens, on probation under `Accel::Auto` — a QEMU death
//! at start or a silent guest falls back to TCG with one warning, and the verdict is
//! remembered per host kernel (`~/.cache/minke/kvm-broken`).

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use super::{connector, launch, start_serial, tail, Vm, VmError};
use crate::binaries::{self, Tool};
use crate::config::Accel;
use crate::process::Guarded;
use crate::state;
use crate::state::{files, UsedAccel};

impl Vm {
    pub(super) fn fall_back_to_tcg(&mut self) -> Result<(), VmError> {
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
        // virtiofsd serves one QEMU: fresh ones for the new QEMU.
        o.share_daemons.clear();
        o.share_daemons = crate::share::start_daemons(&self.state, &self.run.shares)?;
        o.net_daemon = None;
        o.net_daemon = crate::net::start(&self.state, o.net.as_ref())?;
        let (qemu, backend, accel, transport, console) = launch(
            &o.cfg,
            &self.state,
            &qemu_bin,
            UsedAccel::Tcg,
            self.transport,
            &super::launch::Devices {
                machine: super::machine_choice::replan(self.run.machine),
                shares: &self.run.shares,
                net: o.net.as_ref(),
                net_fd: o.net_daemon.as_ref().map(|p| &p.qemu_end),
            },
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
}

pub(super) fn can_open_rw(p: &str) -> Result<(), io::Error> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(p)
        .map(drop)
}

fn kvm_verdict_path() -> Option<PathBuf> {
    Some(state::host_cache_dir()?.join("kvm-broken"))
}

fn host_kernel() -> String {
    rustix::system::uname()
        .release()
        .to_string_lossy()
        .into_owned()
}

pub(super) fn record_kvm_broken(reason: &str) {
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

pub(super) fn warn_once(msg: &str) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if !WARNED.swap(true, Ordering::SeqCst) {
        eprintln!("{msg}");
    }
}

/// Chooses the accelerator; the flag says whether KVM is on probation (Auto).
pub(super) fn resolve_accel(
    accel: Accel,
    arch: minke_protocol::arch::Arch,
) -> Result<(UsedAccel, bool), VmError> {
    // KVM runs guests of the host's own architecture only; others are emulated.
    if Some(arch) != minke_protocol::arch::Arch::host() {
        return match accel {
            Accel::Kvm => Err(VmError::Kvm(format!(
                "KVM cannot run an {arch} guest on this {} host: use --accel tcg",
                std::env::consts::ARCH
            ))),
            _ => Ok((UsedAccel::Tcg, false)),
        };
    }
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
