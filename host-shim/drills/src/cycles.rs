//! The boot–exec–poweroff cycles drill, and what cycles may leave behind on the host: files in
//! state directories, processes, zombies, descriptors, threads.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use minke_shim::{state, PowerOff, VmConfig};

use crate::{boot, guest_err, sh, vm_err, DrillError, KEPT_AFTER_POWEROFF, POWEROFF_GRACE};

/// What [`boot_cycles`] measured.
#[derive(Debug, Clone)]
pub struct CyclesReport {
    /// Wall time of each cycle (boot, ready, one exec, power off).
    pub walls: Vec<Duration>,
    /// Cycles whose guest did not power off within the grace period and was killed.
    pub not_clean: Vec<usize>,
    /// Files left in state directories besides [`KEPT_AFTER_POWEROFF`] (`cN/NAME`).
    pub leftovers: Vec<String>,
    /// VMs still listed as running under `dir`.
    pub still_listed: usize,
    /// Host processes alive afterwards whose command line mentions `dir` (`PID CMDLINE`).
    pub processes: Vec<String>,
    /// Children of this process left as zombies.
    pub zombies: Vec<u32>,
    /// This process's open descriptors after the first cycle and after the last.
    pub fds: (usize, usize),
    /// This process's threads after the first cycle and after the last.
    pub threads: (usize, usize),
}

fn count_dir(p: &str) -> usize {
    std::fs::read_dir(p).map(|d| d.count()).unwrap_or(0)
}

/// `n` cycles of boot, wait for the agents, one exec, clean power off, each in a fresh state
/// directory `dir/cN`; then looks for what they left: files in the state directories, host
/// processes, zombies, descriptors and threads of this process. The first cycle sets the
/// baseline of descriptors and threads (it also starts what lives as long as the process).
pub fn boot_cycles(
    template: &VmConfig,
    dir: &Path,
    n: usize,
    progress: &mut dyn FnMut(usize, Duration),
) -> Result<CyclesReport, DrillError> {
    let mut walls = Vec::with_capacity(n);
    let mut not_clean = Vec::new();
    let mut leftovers = Vec::new();
    let mut base = (0, 0);
    for i in 0..n {
        let t = Instant::now();
        let mut cfg = template.clone();
        cfg.name = format!("cycle-{i}");
        let state = dir.join(format!("c{i}"));
        cfg.state_dir = Some(state.clone());
        let mut vm = boot(cfg)?;
        let o = sh(&vm, &format!("echo cycle {i}"))?;
        if o != format!("cycle {i}\n") {
            return Err(guest_err(&vm, format!("echo printed {o:?}")));
        }
        match vm
            .poweroff(POWEROFF_GRACE)
            .map_err(vm_err(&vm, "power off"))?
        {
            PowerOff::Clean => {}
            PowerOff::Killed => not_clean.push(i),
        }
        drop(vm);
        let wall = t.elapsed();
        walls.push(wall);
        progress(i, wall);
        leftovers.extend(leftover_files(&state, &format!("c{i}")));
        if i == 0 {
            base = (count_dir("/proc/self/fd"), count_dir("/proc/self/task"));
        }
    }
    Ok(CyclesReport {
        walls,
        not_clean,
        leftovers,
        still_listed: state::list_vms_in(dir).map(|l| l.len()).unwrap_or(0),
        processes: processes_mentioning(dir),
        zombies: zombie_children(),
        fds: (base.0, count_dir("/proc/self/fd")),
        threads: (base.1, count_dir("/proc/self/task")),
    })
}

fn leftover_files(state: &Path, label: &str) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(state) else {
        return Vec::new();
    };
    let mut out: Vec<String> = rd
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !KEPT_AFTER_POWEROFF.contains(&n.as_str()))
        .map(|n| format!("{label}/{n}"))
        .collect();
    out.sort();
    out
}

/// Live host processes whose command line mentions `dir` (`PID CMDLINE`).
pub fn processes_mentioning(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    let mut out = Vec::new();
    for (pid, stat, cmdline) in host_processes() {
        let zombie = stat_field(&stat, 3).is_some_and(|s| s == "Z");
        if !zombie && cmdline.contains(&needle) {
            out.push(format!("{pid} {cmdline}"));
        }
    }
    out
}

/// Children of this process that exited and were never reaped.
pub fn zombie_children() -> Vec<u32> {
    let me = std::process::id().to_string();
    host_processes()
        .into_iter()
        .filter(|(_, stat, _)| {
            stat_field(stat, 3) == Some("Z") && stat_field(stat, 4) == Some(me.as_str())
        })
        .map(|(pid, _, _)| pid)
        .collect()
}

/// Field `n` (1-based, as in proc(5)) of a `/proc/PID/stat` line; the command name may hold
/// spaces, so fields from 3 on are counted after its closing parenthesis.
fn stat_field(stat: &str, n: usize) -> Option<&str> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(n.checked_sub(3)?)
}

fn host_processes() -> Vec<(u32, String, String)> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let p = PathBuf::from("/proc").join(pid.to_string());
            let stat = std::fs::read_to_string(p.join("stat")).ok()?;
            let cmdline = std::fs::read(p.join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            Some((pid, stat, cmdline.trim().to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_count_after_the_command_name() {
        let stat = "42 (a (b) c) Z 17 42 42 0";
        assert_eq!(stat_field(stat, 3), Some("Z"));
        assert_eq!(stat_field(stat, 4), Some("17"));
        assert_eq!(stat_field(stat, 2), None);
    }

    #[test]
    fn state_dir_leftovers_ignore_the_logs() {
        let d = tempfile::tempdir().unwrap();
        for f in KEPT_AFTER_POWEROFF
            .iter()
            .chain(&["run.json", "vm.vsock_1025"])
        {
            std::fs::write(d.path().join(f), "").unwrap();
        }
        assert_eq!(
            leftover_files(d.path(), "c0"),
            ["c0/run.json", "c0/vm.vsock_1025"]
        );
    }
}
