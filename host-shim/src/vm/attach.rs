//! Attaching to a VM another process booted: [`Vm::attach`] and its kin, and whether the
//! guest has said it is ready.

use std::path::Path;
use std::time::{Duration, Instant};

use super::secret::read_secret;
use super::{connector, Vm, VmError, ATTACH_TIMEOUT};
use crate::state::files;
use crate::state::{self, StateError};

impl Vm {
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
        if dir.exists() {
            state::check_private_dir(dir)?;
        }
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
}
