//! The killed-agents drill: SIGKILL to the time sync and control agents inside the guest, and
//! PID1 bringing each back.

use std::time::{Duration, Instant};

use minke_shim::Vm;

use crate::{guest_err, guest_procs, sh, vm_err, DrillError, GuestProcs, GUEST_TIMEOUT};

/// One agent killed and brought back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRestart {
    /// Agent kind.
    pub kind: String,
    /// Its pid before the kill.
    pub old_pid: u32,
    /// Its pid after.
    pub new_pid: u32,
    /// From the kill to the agent serving again (the host sees its connection or handshake).
    pub back_after: Duration,
}

/// What [`kill_agents`] measured.
#[derive(Debug, Clone)]
pub struct AgentsReport {
    /// PID1 and the agents before the kills.
    pub before: GuestProcs,
    /// After both agents came back.
    pub after: GuestProcs,
    /// The time sync agent, then the control agent.
    pub restarts: Vec<AgentRestart>,
    /// QEMU still runs the same guest (no reboot: `-no-reboot` would have ended it).
    pub same_qemu: bool,
    /// What an exec printed afterwards (`alive`).
    pub exec_after: String,
}

/// Kills the time sync agent, then the control agent (with SIGKILL, from inside the guest) and
/// waits for PID1 to bring each back: the time sync agent is back when the host's time server
/// sees a new connection, the control agent when [`Vm::wait_ready`] completes a handshake.
/// Needs the booting handle of a VM with both agents.
pub fn kill_agents(vm: &mut Vm) -> Result<AgentsReport, DrillError> {
    let before = guest_procs(vm)?;
    let mut restarts = Vec::new();

    let connections = |vm: &Vm| vm.timesync_stats().map(|s| s.connections).unwrap_or(0);
    let deadline = Instant::now() + GUEST_TIMEOUT;
    while connections(vm) == 0 {
        if Instant::now() > deadline {
            return Err(guest_err(
                vm,
                "the time sync agent never connected to the host",
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let old = before.agent("timesync");
    if old == 0 || before.agent("control") == 0 {
        return Err(guest_err(
            vm,
            format!(
                "the guest runs no time sync or control agent: {:?}",
                before.agents
            ),
        ));
    }
    let c0 = connections(vm);
    let t = Instant::now();
    sh(vm, &format!("kill -9 {old}"))?;
    while connections(vm) == c0 {
        if t.elapsed() > GUEST_TIMEOUT {
            return Err(guest_err(
                vm,
                format!(
                    "the time sync agent did not reconnect within {GUEST_TIMEOUT:?} of SIGKILL"
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let back_after = t.elapsed();
    restarts.push(AgentRestart {
        kind: "timesync".into(),
        old_pid: old,
        new_pid: guest_procs(vm)?.agent("timesync"),
        back_after,
    });

    // The exec that kills the control agent dies with it (PID1 also kills the rest of the
    // agent's cgroup): its connection breaks, or at best it reports `kill`'s success.
    let old = before.agent("control");
    let t = Instant::now();
    match vm.exec_output(&["kill", "-9", &old.to_string()]) {
        Err(_) => {}
        Ok(o) if o.code == 0 || o.code == 128 + 9 => {}
        Ok(o) => {
            return Err(guest_err(
                vm,
                format!(
                    "kill -9 {old} exited with {}: {}",
                    o.code,
                    String::from_utf8_lossy(&o.stderr).trim()
                ),
            ))
        }
    }
    vm.wait_ready(GUEST_TIMEOUT)
        .map_err(vm_err(vm, "waiting for the restarted control agent"))?;
    let back_after = t.elapsed();
    let after = guest_procs(vm)?;
    restarts.push(AgentRestart {
        kind: "control".into(),
        old_pid: old,
        new_pid: after.agent("control"),
        back_after,
    });
    let same_qemu = vm.is_running();
    let exec_after = sh(vm, "echo alive")?;
    Ok(AgentsReport {
        before,
        after,
        restarts,
        same_qemu,
        exec_after,
    })
}
