//! The reliability suite: power cuts under a writer that fsyncs, agents killed inside the guest,
//! a memory hog, full filesystems, and 50 boot–exec–poweroff cycles. The drills are the
//! `minke-drills` crate (which `cargo xtask bench reliability` prints); these tests assert
//! on their reports. Each test boots its own guests (they all disturb them). Random moments
//! come from a seed printed at the start: `MINKE_TEST_SEED=N` replays a run.

use std::time::Duration;

mod common;
use common::*;

use minke_drills::{self as drills, PowerCut};
use minke_protocol::console::{parse_restart, Ended};
use minke_shim::{DiskFormat, DiskSpec, PowerOff};

/// Power cuts at random moments while a guest appends and fsyncs numbered records to a data
/// disk: every record acknowledged to the host before a cut is there at the next boot (a
/// record cut short may follow them), and after a clean power-off e2fsck finds nothing.
#[test]
fn power_loss_keeps_every_acknowledged_record() {
    require_boot!();
    let seed = drills::seed_from_env("MINKE_TEST_SEED");
    eprintln!("power loss: seed {seed} (replay with MINKE_TEST_SEED={seed})");
    let dir = tempfile::tempdir().unwrap();
    let template = config("power", &dir.path().join("unused"));
    let report = drills::power_loss(&template, dir.path(), 20, seed, &mut |n, c: &PowerCut| {
        eprintln!(
            "power loss: cut {n:2} after {:4} ms: {:3} records acknowledged in this boot, \
                 {:4} in all, {:4} found at the next boot{}",
            c.cut_after.as_millis(),
            c.acked,
            c.acked_total,
            c.found,
            if c.partial_tail {
                " (+ one cut short)"
            } else {
                ""
            }
        )
    })
    .unwrap_or_else(|e| panic!("seed {seed}: {e}", e = minke_shim::error_chain(&e)));
    assert_eq!(report.cuts.len(), 20);
    assert!(
        report.violations.is_empty(),
        "seed {seed}: {:#?}",
        report.violations
    );
    assert!(
        report.cuts.iter().all(|c| c.acked > 0),
        "seed {seed}: a boot acknowledged nothing: {:?}",
        report.cuts
    );
    assert_eq!(report.poweroff, PowerOff::Clean, "seed {seed}");
    assert!(
        report.fsck.clean,
        "seed {seed}: e2fsck -fn exited with {}:\n{}",
        report.fsck.code, report.fsck.output
    );
}

/// SIGKILL to the time sync agent and then to the control agent: PID1 brings both back with new
/// pids, without a reboot, and stays the same PID1; execs work again.
#[test]
fn killed_agents_come_back() {
    require_boot!();
    let dir = tempfile::tempdir().unwrap();
    let mut vm = boot(config("agents", dir.path()));
    let r = drills::kill_agents(&mut vm)
        .unwrap_or_else(|e| panic!("{e}", e = minke_shim::error_chain(&e)));
    for a in &r.restarts {
        eprintln!(
            "{} agent: pid {} killed, pid {} serving {:?} later",
            a.kind, a.old_pid, a.new_pid, a.back_after
        );
        assert!(
            a.new_pid != 0 && a.new_pid != a.old_pid,
            "{a:?}\n{}",
            vm.console_tail()
        );
    }
    assert_eq!(r.before.pid1_start, r.after.pid1_start, "PID1 changed");
    assert_eq!(r.after.pid1_cmdline, "/init");
    assert!(r.same_qemu, "QEMU ended: {}", vm.console_tail());
    assert_eq!(r.exec_after, "alive\n");
    let console = std::fs::read_to_string(vm.console_log()).unwrap_or_default();
    for kind in ["timesync", "control"] {
        assert!(
            console
                .lines()
                .filter_map(parse_restart)
                .any(|r| r.name == kind && r.ended == Ended::Signal(9)),
            "no restart of {kind} on the console:\n{}",
            vm.console_tail()
        );
    }
}

/// A memory hog started by exec is the one the OOM killer ends; PID1 and the agents keep their
/// pids (they are protected, and their protection does not pass on to what exec starts).
#[test]
fn memory_hog_is_oom_killed_not_pid1_or_the_agents() {
    require_boot!();
    let dir = tempfile::tempdir().unwrap();
    let mut c = config("oom", dir.path());
    c.mem_mib = 256; // less for the hog to fill under TCG
    let vm = boot(c);
    let r = drills::oom(&vm).unwrap_or_else(|e| panic!("{e}", e = minke_shim::error_chain(&e)));
    eprintln!(
        "memory hog: exit code {} after {:?}; kernel: {}",
        r.hog_code,
        r.hog_ran,
        r.kernel_line.as_deref().unwrap_or("-")
    );
    assert_eq!(
        r.agents_oom_score_adj.keys().collect::<Vec<_>>(),
        ["control", "timesync"]
    );
    assert!(
        r.agents_oom_score_adj.values().all(|&v| v == -1000),
        "{:?}",
        r.agents_oom_score_adj
    );
    assert_eq!(
        r.exec_oom_score_adj, 0,
        "exec inherits the agent's protection"
    );
    assert_eq!(r.hog_code, 128 + 9, "{}", vm.console_tail());
    let line = r.kernel_line.unwrap_or_default();
    assert!(
        line.contains(&format!("Killed process {} ", r.hog_pid)),
        "the OOM killer's victim: {line:?}, the hog: {}",
        r.hog_pid
    );
    assert_eq!(r.before, r.after, "PID1 or an agent changed");
    assert_eq!(r.exec_after, "alive\n");
}

/// Full /tmp (tmpfs) and full /var (the data disk): writes fail with ENOSPC, an upload fails
/// with that message and leaves no temporary file, the agents keep serving, and removing the
/// filler makes room again.
#[test]
fn full_filesystems_fail_writes_not_the_agents() {
    require_boot!();
    let dir = tempfile::tempdir().unwrap();
    let mut c = config("enospc", &dir.path().join("state"));
    c.disks.push(DiskSpec {
        label: "var".into(),
        path: dir.path().join("var.img"),
        size: 16 << 20,
        format: DiskFormat::Raw,
    });
    let vm = boot(c);
    let mem_kib: u64 = out(&vm, &["sh", "-c", "grep MemTotal /proc/meminfo"])
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap();
    for (mount, elsewhere) in [("/tmp", "/run"), ("/var", "/tmp")] {
        let r = drills::enospc(&vm, mount, elsewhere)
            .unwrap_or_else(|e| panic!("{e}", e = minke_shim::error_chain(&e)));
        eprintln!(
            "{mount}: {} KiB, filled {} KiB; dd: {:?}; write: {:?}; upload: {:?}",
            r.size_kib, r.filled_kib, r.fill, r.write_full, r.put_full
        );
        let enospc = |s: &str| s.to_lowercase().contains("no space left on device");
        assert!(
            r.fill.0 != 0 && enospc(&r.fill.1),
            "{mount}: dd {:?}",
            r.fill
        );
        assert!(
            r.write_full.0 != 0 && enospc(&r.write_full.1),
            "{mount}: 64 KiB write {:?}",
            r.write_full
        );
        match &r.put_full {
            Err(e) => assert!(enospc(e), "{mount}: upload failed with {e}"),
            Ok(()) => panic!("{mount}: an upload to the full filesystem succeeded"),
        }
        assert!(r.temp_left.is_empty(), "{mount}: left {:?}", r.temp_left);
        assert_eq!(r.agents_work, Ok(()), "{mount}\n{}", vm.console_tail());
        assert_eq!(r.recovered, Ok(()), "{mount}");
        assert!(
            r.filled_kib + 1024 >= r.size_kib * 9 / 10,
            "{mount}: filled {} of {} KiB",
            r.filled_kib,
            r.size_kib
        );
        if mount == "/tmp" {
            // tmpfs without size= is bounded at half the memory.
            assert!(
                r.size_kib <= mem_kib / 2 + 1024,
                "/tmp is {} KiB of {mem_kib} KiB of memory",
                r.size_kib
            );
        }
    }
}

/// 50 × (boot, one exec, power off) in fresh state directories: every power-off is clean, and
/// nothing is left — no QEMU or vsock backend, no zombie, nothing in the state directories but
/// the logs, no descriptor or thread of this process.
#[test]
fn fifty_boot_exec_poweroff_cycles_leak_nothing() {
    require_boot!();
    let dir = tempfile::tempdir().unwrap();
    let template = config("cycle", &dir.path().join("unused"));
    let n = 50;
    let r = drills::boot_cycles(&template, dir.path(), n, &mut |i, t: Duration| {
        if i % 10 == 9 {
            eprintln!("cycles: {} done, the last took {t:?}", i + 1);
        }
    })
    .unwrap_or_else(|e| panic!("{e}", e = minke_shim::error_chain(&e)));
    let mut walls = r.walls.clone();
    walls.sort();
    eprintln!(
        "cycles: {n}, median {:?}, max {:?}; descriptors {:?}, threads {:?}",
        walls[walls.len() / 2],
        walls[walls.len() - 1],
        r.fds,
        r.threads
    );
    assert!(
        r.not_clean.is_empty(),
        "killed, not powered off: {:?}",
        r.not_clean
    );
    assert!(r.leftovers.is_empty(), "{:?}", r.leftovers);
    assert_eq!(r.still_listed, 0);
    assert!(r.processes.is_empty(), "{:#?}", r.processes);
    assert!(r.zombies.is_empty(), "{:?}", r.zombies);
    // Other tests of this binary run beside this one and hold a few descriptors and threads
    // of their own at any moment; a leak of one per cycle would add 49.
    let slack = 24;
    assert!(
        r.fds.1 <= r.fds.0 + slack,
        "descriptors: {} after the first cycle, {} after the last",
        r.fds.0,
        r.fds.1
    );
    assert!(
        r.threads.1 <= r.threads.0 + slack,
        "threads: {} after the first cycle, {} after the last",
        r.threads.0,
        r.threads.1
    );
}
