//! The reliability drills: power cuts under a writer that fsyncs, agents killed inside the
//! guest, a memory hog, full filesystems, and boot–exec–poweroff cycles. Each drill drives
//! guests through [`Vm`] and returns what it measured — a lost record or a leaked process is a
//! figure in the report, not an error — so the boot tests (`host-shim/tests/reliability.rs`,
//! `host-shim/tests/boot.rs`) assert on the reports and `cargo xtask bench reliability` prints
//! them. Errors are for drills that could not run (a boot that failed, an exec that broke);
//! they carry the console log tail.
//!
//! The drills need an image with busybox (`sh`, `awk`, `dd`, `df`, `sync`, `truncate`, `kill`,
//! `dmesg`) and, for the power cut, a data disk labelled `var` mounted on `/var`.
//!
//! One module per drill: `power_loss`, `agents` (killed agents), `oom` (memory hog), `enospc`
//! (full filesystems), `cycles` (boot–exec–poweroff cycles and what they leave on the host),
//! `crash_loop`, `booting` (execs while the guest boots); `procs` reads PID1 and the agents
//! from the guest's /proc. Everything public is re-exported here.
//!
//! A dev-only crate (`publish = false`): the shim library carries neither the drills nor their
//! random generator.

#![forbid(unsafe_code)]

use std::time::Duration;

use minke_shim::disk::DiskError;
use minke_shim::error_chain;
use minke_shim::state;
use minke_shim::state::files;
use minke_shim::{Vm, VmConfig, VmError};

mod agents;
mod booting;
mod crash_loop;
mod cycles;
mod enospc;
mod oom;
mod power_loss;
mod procs;

pub use agents::{kill_agents, AgentRestart, AgentsReport};
pub use booting::{exec_while_booting, BootingExecReport};
pub use crash_loop::{crash_loop, restart_delays, CrashLoopReport};
pub use cycles::{boot_cycles, processes_mentioning, zombie_children, CyclesReport};
pub use enospc::{enospc, EnospcReport};
pub use oom::{oom, OomReport};
pub use power_loss::{check_records, power_loss, Found, PowerCut, PowerLossReport, RECORDS_PATH};
pub use procs::{guest_procs, GuestProcs};

/// How long a drill waits for anything the guest does (a boot, an agent's restart, the
/// writer's first record): generous, a loaded 2-core machine under TCG.
pub const GUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a guest gets to power off cleanly.
pub const POWEROFF_GRACE: Duration = Duration::from_secs(30);

/// The files a state directory keeps after its VM is gone: the logs of the last run.
pub const KEPT_AFTER_POWEROFF: [&str; 5] = [
    files::CONSOLE,
    files::QEMU_LOG,
    files::BACKEND_LOG,
    files::BOOT_JSON,
    state::LOCK_FILE,
];

/// A drill could not run.
#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    /// A VM operation failed.
    #[error("{what}{console}")]
    Vm {
        /// What the drill was doing.
        what: String,
        /// The shim's error.
        source: Box<VmError>,
        /// The console log tail (with a heading), or empty when the error has it already.
        console: String,
    },
    /// The guest did something the drill cannot go on from.
    #[error("{what}\nconsole log tail:\n{console}")]
    Guest {
        /// What happened.
        what: String,
        /// The console log tail.
        console: String,
    },
    /// A disk image could not be checked.
    #[error(transparent)]
    Disk(#[from] DiskError),
}

fn vm_err(vm: &Vm, what: impl Into<String>) -> impl FnOnce(VmError) -> DrillError {
    let what = what.into();
    let console = vm.console_tail();
    move |source| {
        let console = if error_chain(&source).contains("console log tail") {
            String::new()
        } else {
            format!("\nconsole log tail:\n{console}")
        };
        DrillError::Vm {
            what,
            source: Box::new(source),
            console,
        }
    }
}

fn guest_err(vm: &Vm, what: impl Into<String>) -> DrillError {
    DrillError::Guest {
        what: what.into(),
        console: vm.console_tail(),
    }
}

/// The seed named by the environment variable `var` (to replay a run), or a fresh one.
pub fn seed_from_env(var: &str) -> u64 {
    if let Some(s) = std::env::var(var).ok().and_then(|v| v.trim().parse().ok()) {
        return s;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    fastrand::Rng::with_seed(now ^ u64::from(std::process::id()) << 32).u64(..)
}

/// Runs `sh -c script` in the guest; its stdout if it exits 0.
fn sh(vm: &Vm, script: &str) -> Result<String, DrillError> {
    let o = vm
        .exec_output(&["sh", "-c", script])
        .map_err(vm_err(vm, format!("exec `{script}`")))?;
    if o.code != 0 {
        return Err(guest_err(
            vm,
            format!(
                "`{script}` exited with {}: {}",
                o.code,
                String::from_utf8_lossy(&o.stderr).trim()
            ),
        ));
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// Boots `cfg` and waits for its agents.
fn boot(cfg: VmConfig) -> Result<Vm, DrillError> {
    let name = cfg.name.clone();
    let mut vm = Vm::boot(cfg).map_err(|source| DrillError::Vm {
        what: format!("{name}: boot"),
        source: Box::new(source),
        console: String::new(),
    })?;
    vm.wait_ready(GUEST_TIMEOUT)
        .map_err(vm_err(&vm, format!("{name}: waiting for the agents")))?;
    Ok(vm)
}

#[cfg(test)]
mod tests {
    use std::error::Error;
    use std::io;

    use minke_protocol::FrameError;
    use minke_shim::client::AgentError;

    use super::*;

    /// The lines `minke` prints for `e`: the message, then each cause.
    fn printed(e: &dyn Error) -> Vec<String> {
        let mut lines = vec![e.to_string()];
        let mut cause = e.source();
        while let Some(c) = cause {
            lines.push(c.to_string());
            cause = c.source();
        }
        lines
    }

    #[test]
    fn each_cause_of_a_drill_error_is_printed_once() {
        let epipe = io::Error::from_raw_os_error(libc::EPIPE);
        let leaf = epipe.to_string();
        let e = DrillError::Vm {
            what: "exec `true`".into(),
            source: Box::new(VmError::Agent(AgentError::Frame(FrameError::Io(epipe)))),
            console: "\nconsole log tail:\nLinux version".into(),
        };
        let lines = printed(&e);
        assert!(lines.len() >= 2, "{lines:?}");
        assert_eq!(
            lines.last().map(String::as_str),
            Some(leaf.as_str()),
            "{lines:?}"
        );
        for (i, a) in lines.iter().enumerate() {
            for (j, b) in lines.iter().enumerate() {
                assert!(
                    i == j || !a.contains(b.as_str()),
                    "line {i} repeats {j}: {lines:?}"
                );
            }
        }
        let one_line = error_chain(&e);
        assert_eq!(one_line, lines.join(": "));
        assert_eq!(one_line.matches(leaf.as_str()).count(), 1, "{one_line}");
    }
}
