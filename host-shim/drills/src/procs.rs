//! PID1's identity and the agents' pids, read from the guest's /proc.

use std::collections::BTreeMap;

use minke_shim::Vm;

use crate::{guest_err, sh, DrillError};

/// PID1's identity and the agents' pids, as the guest's /proc shows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestProcs {
    /// PID1's start time (clock ticks after boot): the same value means the same PID1.
    pub pid1_start: u64,
    /// PID1's command line.
    pub pid1_cmdline: String,
    /// Agent kind (`control`, `timesync`…) → pid.
    pub agents: BTreeMap<String, u32>,
}

impl GuestProcs {
    /// The pid of agent `kind`, or 0.
    pub fn agent(&self, kind: &str) -> u32 {
        self.agents.get(kind).copied().unwrap_or(0)
    }
}

/// Reads PID1's start time and the agents' pids (processes running `/init agent KIND`).
pub fn guest_procs(vm: &Vm) -> Result<GuestProcs, DrillError> {
    let text = sh(
        vm,
        // Processes may end while the loop runs (its own `tr`s among them): skip them.
        "cut -d' ' -f22 /proc/1/stat; tr '\\0' ' ' < /proc/1/cmdline; echo; \
         for d in /proc/[0-9]*; do c=$(tr '\\0' ' ' 2>/dev/null < $d/cmdline) && \
         echo \"${d#/proc/} $c\"; done; true",
    )?;
    let mut lines = text.lines();
    let pid1_start = lines
        .next()
        .and_then(|l| l.trim().parse().ok())
        .ok_or_else(|| guest_err(vm, format!("cannot read PID1's start time from {text:?}")))?;
    let pid1_cmdline = lines.next().unwrap_or_default().trim().to_owned();
    let mut agents = BTreeMap::new();
    for l in lines {
        let Some((pid, cmd)) = l.split_once(' ') else {
            continue;
        };
        let mut words = cmd.split_whitespace();
        if let (Some("/init"), Some("agent"), Some(kind)) =
            (words.next(), words.next(), words.next())
        {
            if let Ok(pid) = pid.parse() {
                agents.insert(kind.to_owned(), pid);
            }
        }
    }
    Ok(GuestProcs {
        pid1_start,
        pid1_cmdline,
        agents,
    })
}
