//! The crash-loop drill: `exec` round trips beside a service PID1 keeps restarting.

use std::time::{Duration, Instant};

use minke_protocol::console::{parse_restart, Ended};
use minke_shim::Vm;

use crate::{guest_err, vm_err, DrillError};

/// What the crash-loop drill measured.
#[derive(Debug, Clone)]
pub struct CrashLoopReport {
    /// Median `exec true` round trip in the VM without crashes.
    pub rtt_quiet: Duration,
    /// Median `exec true` round trip in the VM whose service crash-loops.
    pub rtt_crashing: Duration,
    /// Round trips measured on each side.
    pub execs: usize,
    /// Restart delays PID1 announced for the crashing service during the measurement, in
    /// order (from the console: `NAME exited … restarting in N ms`, see
    /// [`minke_protocol::console::restart_line`]).
    pub restart_delays_ms: Vec<u64>,
}

/// The restart delays PID1 announced for `service` in console text, after the service exited
/// (restarts after a signal killed it are not counted).
pub fn restart_delays(console: &str, service: &str) -> Vec<u64> {
    console
        .lines()
        .filter_map(parse_restart)
        .filter(|r| r.name == service && matches!(r.ended, Ended::Code(_)))
        .map(|r| r.delay_ms)
        .collect()
}

/// Measures `exec true` round trips for `window`, alternating between `quiet` and `crashing`
/// (two VMs of one image, where `service` crash-loops in the second only), so load drift
/// affects both alike.
pub fn crash_loop(
    quiet: &Vm,
    crashing: &Vm,
    service: &str,
    window: Duration,
) -> Result<CrashLoopReport, DrillError> {
    let console_at = std::fs::read_to_string(crashing.console_log())
        .map(|s| s.len())
        .unwrap_or(0);
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let end = Instant::now() + window;
    while Instant::now() < end {
        for (vm, rtts) in [(quiet, &mut a), (crashing, &mut b)] {
            let t = Instant::now();
            let o = vm
                .exec_output(&["true"])
                .map_err(vm_err(vm, "exec `true`"))?;
            rtts.push(t.elapsed());
            if o.code != 0 {
                return Err(guest_err(vm, format!("`true` exited with {}", o.code)));
            }
        }
    }
    let console = std::fs::read_to_string(crashing.console_log()).unwrap_or_default();
    let during = console.get(console_at..).unwrap_or_default();
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v.get(v.len() / 2).copied().unwrap_or_default()
    };
    Ok(CrashLoopReport {
        execs: a.len(),
        rtt_quiet: median(a),
        rtt_crashing: median(b),
        restart_delays_ms: restart_delays(during, service),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use minke_protocol::console::restart_line;

    #[test]
    fn restart_delays_come_from_the_console_lines_of_that_service() {
        let console = format!(
            "[    2.1] minke-init: {}\n\
             ticker: tick\n\
             minke-init: {}\n\
             minke-init: {}\n\
             minke-init: crasher exited with status 1; restarting in garbage\n",
            restart_line("crasher", Ended::Code(1), 100),
            restart_line("other", Ended::Code(1), 100),
            restart_line("crasher", Ended::Code(1), 200),
        );
        assert_eq!(restart_delays(&console, "crasher"), vec![100, 200]);
    }
}
