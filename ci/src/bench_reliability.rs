//! `cargo xtask bench reliability`: the reliability drills of `minke-drills` on the
//! default image — power cuts, boot–exec–poweroff cycles, a memory hog, full filesystems,
//! killed agents — with every figure printed and none asserted (the boot tests in
//! `host-shim/tests/reliability.rs` assert). `MINKE_TEST_SEED=N` replays the cut moments.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use minke_drills::{self as drills, EnospcReport, GuestProcs};
use minke_shim::{DiskFormat, DiskSpec, Vm, VmConfig};
use xshell::Shell;

use crate::bench_vm::{default_image, median, spec_image};

const POWER_CUTS: usize = 20;
const CYCLES: usize = 50;
/// How long exec round trips are measured beside the crash-looping service: long enough for
/// its restart delay to grow from 100 ms to several seconds.
const CRASH_WINDOW: Duration = Duration::from_secs(30);
/// Fresh VMs whose agents are killed once each (a second kill within 10 s would measure the
/// restart backoff, not the restart).
const AGENT_RUNS: usize = 3;

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}

fn ms_frac(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn boot(template: &VmConfig, name: &str, state: &Path) -> Result<Vm> {
    let mut c = template.clone();
    c.name = name.into();
    c.state_dir = Some(state.to_path_buf());
    let mut vm = Vm::boot(c)?;
    vm.wait_ready(drills::GUEST_TIMEOUT)?;
    Ok(vm)
}

fn same_procs(a: &GuestProcs, b: &GuestProcs) -> &'static str {
    if a == b {
        "unchanged"
    } else {
        "CHANGED"
    }
}

/// The drills, in the order they run; `cargo xtask bench reliability DRILL…` runs a subset.
const DRILLS: &[&str] = &[
    "power", "cycles", "crash", "oom", "enospc", "agents", "booting",
];

pub fn run(sh: &Shell, only: &[String]) -> Result<()> {
    if let Some(bad) = only.iter().find(|d| !DRILLS.contains(&d.as_str())) {
        anyhow::bail!("unknown drill {bad:?}: {}", DRILLS.join(" | "));
    }
    let wanted = |d: &str| only.is_empty() || only.iter().any(|o| o == d);
    let (_, kernel, initrd, cmdline) = default_image(sh, None)?;
    let mut template = VmConfig::new("bench-reliability", &kernel, &initrd);
    template.cmdline = cmdline;
    let tmp = tempfile::tempdir()?;
    let seed = drills::seed_from_env("MINKE_TEST_SEED");
    println!(
        "reliability benchmark (default image; seed {seed}, replay with MINKE_TEST_SEED={seed}):"
    );

    if wanted("power") {
        // Power loss.
        let dir = tmp.path().join("power");
        std::fs::create_dir_all(&dir)?;
        let p = drills::power_loss(&template, &dir, POWER_CUTS, seed, &mut |n, c| {
            println!(
                "  cut {n:2} after {:>7}: {:3} acknowledged ({:4} in all), {:4} found{}",
                ms(c.cut_after),
                c.acked,
                c.acked_total,
                c.found,
                if c.partial_tail {
                    ", one cut short"
                } else {
                    ""
                }
            );
        })?;
        let acked: u64 = p.cuts.iter().map(|c| c.acked).sum();
        let lost: u64 = p
            .cuts
            .iter()
            .map(|c| c.acked_total.saturating_sub(c.found))
            .sum();
        println!(
            "power loss: {} cuts, {acked} records acknowledged, {lost} of them lost; {} records on \
             the disk at the end (the others were cut before their acknowledgement), {} cut short; \
             final power-off {:?}; e2fsck -fn: {} (exit {})",
            p.cuts.len(),
            p.cuts.last().map(|c| c.found).unwrap_or(0),
            p.cuts.iter().filter(|c| c.partial_tail).count(),
            p.poweroff,
            if p.fsck.clean { "clean" } else { "ERRORS" },
            p.fsck.code
        );
        for v in &p.violations {
            println!("  VIOLATION: {v}");
        }
    }

    if wanted("cycles") {
        // Boot–exec–poweroff cycles.
        let dir = tmp.path().join("cycles");
        std::fs::create_dir_all(&dir)?;
        let c = drills::boot_cycles(&template, &dir, CYCLES, &mut |_, _| {})?;
        println!(
            "boot-exec-poweroff: {CYCLES} cycles, median {}, max {}; killed at power-off {}; \
             left: {} state files, {} processes, {} zombies, {} running; descriptors {} -> {}, \
             threads {} -> {} (after the first cycle -> after the last)",
            secs(median(c.walls.clone())),
            secs(c.walls.iter().max().copied().unwrap_or_default()),
            c.not_clean.len(),
            c.leftovers.len(),
            c.processes.len(),
            c.zombies.len(),
            c.still_listed,
            c.fds.0,
            c.fds.1,
            c.threads.0,
            c.threads.1
        );
        for l in c.leftovers.iter().chain(&c.processes) {
            println!("  LEFT: {l}");
        }
    }

    if wanted("crash") {
        // Crash loop: one image, booted twice; only the VM whose command line says `crashloop`
        // runs the crashing service.
        let (_, ckernel, cinitrd, ccmdline) = spec_image(
            sh,
            Some("ci/images/crash-loop.yml"),
            "crash-loop",
            "bench-image-crash-loop",
            None,
        )?;
        let mut quiet = VmConfig::new("bench-crash-quiet", &ckernel, &cinitrd);
        quiet.cmdline = ccmdline.clone();
        let mut crashing = quiet.clone();
        crashing.cmdline = format!("{ccmdline} crashloop");
        let quiet = boot(&quiet, "bench-crash-quiet", &tmp.path().join("crash-quiet"))?;
        let crashing = boot(
            &crashing,
            "bench-crash-loop",
            &tmp.path().join("crash-loop"),
        )?;
        let c = drills::crash_loop(&quiet, &crashing, "crasher", CRASH_WINDOW)?;
        println!(
            "crash loop (a service dying 0.6 s after each start): exec `true` median {} beside it \
             vs {} without ({:+.1} %, target <= +20 %), {} round trips each over {}; {} restarts \
             in that time, delays {:?} ms",
            ms_frac(c.rtt_crashing),
            ms_frac(c.rtt_quiet),
            (c.rtt_crashing.as_secs_f64() / c.rtt_quiet.as_secs_f64().max(1e-9) - 1.0) * 100.0,
            c.execs,
            secs(CRASH_WINDOW),
            c.restart_delays_ms.len(),
            c.restart_delays_ms
        );
        drop((quiet, crashing));
    }

    if wanted("oom") {
        // Memory hog.
        let vm = boot(&template, "bench-oom", &tmp.path().join("oom"))?;
        let o = drills::oom(&vm)?;
        println!(
            "memory hog: exit code {} after {}; {}; PID1 and agents {}; oom_score_adj: agents {:?}, \
             exec'd processes {}",
            o.hog_code,
            secs(o.hog_ran),
            o.kernel_line
                .as_deref()
                .map(|l| l.split_once("] ").map_or(l, |(_, r)| r))
                .map(|l| l.split(" total-vm").next().unwrap_or(l))
                .unwrap_or("no OOM kill in the kernel log"),
            same_procs(&o.before, &o.after),
            o.agents_oom_score_adj,
            o.exec_oom_score_adj
        );
        drop(vm);
    }

    if wanted("enospc") {
        // Full filesystems.
        let mut t = template.clone();
        t.disks = vec![DiskSpec {
            label: "var".into(),
            path: tmp.path().join("enospc-var.img"),
            size: 16 << 20,
            format: DiskFormat::Raw,
        }];
        let vm = boot(&t, "bench-enospc", &tmp.path().join("enospc"))?;
        for (mount, elsewhere) in [("/tmp", "/run"), ("/var", "/tmp")] {
            let e = drills::enospc(&vm, mount, elsewhere)?;
            print_enospc(&e);
        }
        drop(vm);
    }

    if wanted("booting") {
        // Attached execs from the moment of launch, on both transports.
        for (label, transport) in [
            ("vhost-user", minke_shim::Transport::VhostUser),
            ("serial", minke_shim::Transport::Serial),
        ] {
            let mut c = template.clone();
            c.name = format!("booting-{label}");
            c.state_dir = Some(tmp.path().join(format!("booting-{label}")));
            c.transport = transport;
            let r = drills::exec_while_booting(c, 20)?;
            println!(
                "attached exec while booting ({label}): {} attempts from launch, {} errors before \
                 ready, {} successes (first {} after launch), false successes {}",
                r.attempts,
                r.errors,
                r.successes,
                r.first_success.map(secs).unwrap_or_else(|| "-".into()),
                r.false_answers.len()
            );
            for f in &r.false_answers {
                println!("  FALSE ANSWER: {f}");
            }
        }
    }

    if wanted("agents") {
        // Killed agents.
        let mut back: std::collections::BTreeMap<String, Vec<Duration>> = Default::default();
        for i in 0..AGENT_RUNS {
            let mut vm = boot(
                &template,
                "bench-agents",
                &tmp.path().join(format!("agents{i}")),
            )?;
            let a = drills::kill_agents(&mut vm)?;
            for r in &a.restarts {
                back.entry(r.kind.clone()).or_default().push(r.back_after);
            }
            if a.before.pid1_start != a.after.pid1_start || !a.same_qemu {
                println!("  PID1 CHANGED or QEMU ended in run {i}");
            }
        }
        for (kind, times) in back {
            println!(
                "killed {kind} agent serving again after: median {}, max {} ({AGENT_RUNS} runs)",
                ms(median(times.clone())),
                ms(times.iter().max().copied().unwrap_or_default())
            );
        }
    }
    Ok(())
}

fn print_enospc(e: &EnospcReport) {
    let show = |r: &Result<(), String>| match r {
        Ok(()) => "yes".to_owned(),
        Err(e) => format!("NO ({e})"),
    };
    println!(
        "full {}: {} KiB, {} KiB written before ENOSPC; dd: {}; 64 KiB write: {}; upload: {}; \
         temp files left {}; agents work while full: {}; room again after rm: {}",
        e.mount,
        e.size_kib,
        e.filled_kib,
        e.fill.1,
        e.write_full.1,
        match &e.put_full {
            Ok(()) => "SUCCEEDED".to_owned(),
            Err(m) => m.clone(),
        },
        e.temp_left.len(),
        show(&e.agents_work),
        show(&e.recovered)
    );
}
