//! The memory-hog drill: an exec'd hog must be the OOM killer's victim, never PID1 or an agent.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use minke_shim::Vm;

use crate::{guest_err, guest_procs, sh, vm_err, DrillError, GuestProcs};

/// What [`oom`] measured.
#[derive(Debug, Clone)]
pub struct OomReport {
    /// PID1 and the agents before the hog.
    pub before: GuestProcs,
    /// After it.
    pub after: GuestProcs,
    /// oom_score_adj of each agent.
    pub agents_oom_score_adj: BTreeMap<String, i32>,
    /// oom_score_adj of a process started by exec (the agents' protection must not leak).
    pub exec_oom_score_adj: i32,
    /// The hog's pid.
    pub hog_pid: u32,
    /// The hog's exit code (137: killed by SIGKILL).
    pub hog_code: i32,
    /// How long the hog lived.
    pub hog_ran: Duration,
    /// The kernel's `Killed process` line, if any.
    pub kernel_line: Option<String>,
    /// What an exec printed afterwards (`alive`).
    pub exec_after: String,
}

/// The hog: awk keeps 1 MiB strings in an array until the OOM killer ends it. Small steps, each
/// touched, so the kernel's OOM killer acts rather than one large allocation failing.
const HOG: &str =
    "BEGIN { s = \"x\"; for (k = 0; k < 20; k++) s = s s; for (i = 0; ; i++) a[i] = s i }";

/// Runs a memory hog through exec and checks who the OOM killer picked.
pub fn oom(vm: &Vm) -> Result<OomReport, DrillError> {
    let before = guest_procs(vm)?;
    let mut script = String::from("cat /proc/self/oom_score_adj");
    for (kind, pid) in &before.agents {
        script.push_str(&format!("; echo {kind} $(cat /proc/{pid}/oom_score_adj)"));
    }
    let text = sh(vm, &script)?;
    let mut lines = text.lines();
    let exec_oom_score_adj = lines
        .next()
        .and_then(|l| l.trim().parse().ok())
        .ok_or_else(|| guest_err(vm, format!("cannot read oom_score_adj from {text:?}")))?;
    let agents_oom_score_adj = lines
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_owned(), v.trim().parse().ok()?))
        })
        .collect();
    let t = Instant::now();
    // The shell prints its pid, then becomes the hog (applets run without links from sh).
    let o = vm
        .exec_output(&["sh", "-c", &format!("echo $$; exec awk '{HOG}'")])
        .map_err(vm_err(vm, "exec of the memory hog"))?;
    let hog_ran = t.elapsed();
    let hog_pid = String::from_utf8_lossy(&o.stdout)
        .trim()
        .parse()
        .map_err(|_| guest_err(vm, format!("the hog printed {:?}", o.stdout)))?;
    let kernel_line = sh(vm, "dmesg | grep 'Killed process' | tail -n 1")?
        .lines()
        .next()
        .map(str::to_owned);
    let after = guest_procs(vm)?;
    let exec_after = sh(vm, "echo alive")?;
    Ok(OomReport {
        before,
        after,
        agents_oom_score_adj,
        exec_oom_score_adj,
        hog_pid,
        hog_code: o.code,
        hog_ran,
        kernel_line,
        exec_after,
    })
}
