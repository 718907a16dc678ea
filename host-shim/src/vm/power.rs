//! The end of a VM: power off (the agent's request or the ACPI button), kill, power cut, and
//! the drop that kills a booted VM's processes.

use std::time::{Duration, Instant};

use minke_protocol::msg::PowerAction;
use minke_protocol::CONTROL_PORT;

use super::{PowerOff, Vm, VmError};
use crate::client;
use crate::qmp;
use crate::state::files;
use crate::state::{self, StateError};

impl Vm {
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

    pub(super) fn wait_exit(&mut self, grace: Duration) -> Result<PowerOff, VmError> {
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
                o.share_daemons.clear();
                o.net_daemon = None;
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
                            // A record whose QEMU is not this VM's says nothing true about
                            // its backend either: signal nothing more.
                            break;
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
