//! `cargo xtask bench boot` and `cargo xtask bench agents`: booted-guest benchmarks, each peer
//! run side by side in the same run. Figures are printed, never asserted.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use minke::archive::tree::{Node, Tree};
use minke_protocol::config::BootTimeline;
use minke_shim::{ExecRequest, Stdin, Vm, VmConfig};
use xshell::{cmd, Shell};

const RUNS: usize = 5;

pub(crate) fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Builds the default image with the workspace's CLI (with another kernel when `kernel` is
/// given, as `minke build --kernel`) into `target/bench-image[-SUFFIX]`; returns the image
/// directory, kernel, initrd and cmdline.
pub(crate) fn default_image(
    sh: &Shell,
    kernel: Option<&str>,
) -> Result<(PathBuf, PathBuf, PathBuf, String)> {
    let dir = match kernel {
        None => "bench-image".to_owned(),
        Some(k) => format!("bench-image-{}", k.replace([':', '/', ','], "-")),
    };
    spec_image(sh, None, "default", &dir, kernel)
}

/// Builds `spec` (a workspace path; the built-in default spec when `None`), whose image is
/// called `name`, into `target/DIR`; returns the image directory, kernel, initrd and cmdline.
pub(crate) fn spec_image(
    sh: &Shell,
    spec: Option<&str>,
    name: &str,
    dir: &str,
    kernel: Option<&str>,
) -> Result<(PathBuf, PathBuf, PathBuf, String)> {
    let out = crate::workspace_root().join("target").join(dir);
    let extra: Vec<String> = kernel
        .map(|k| vec!["--kernel".into(), k.into()])
        .unwrap_or_default();
    let spec: Vec<PathBuf> = spec
        .map(|s| crate::workspace_root().join(s))
        .into_iter()
        .collect();
    cmd!(
        sh,
        "cargo run --quiet --release -p minke-cli -- build {spec...} -o {out} {extra...}"
    )
    .run()?;
    let cmdline = std::fs::read_to_string(out.join(format!("{name}-cmdline")))?
        .trim()
        .to_string();
    Ok((
        out.clone(),
        out.join(format!("{name}-kernel")),
        out.join(format!("{name}-initrd.img")),
        cmdline,
    ))
}

/// The bare baseline: the same kernel with an initramfs whose /init is busybox powering off.
fn baseline_initrd(dir: &Path) -> Result<PathBuf> {
    let busybox =
        std::fs::read("/bin/busybox").context("/bin/busybox (apt-get install busybox-static)")?;
    baseline_initrd_of(dir, busybox, "baseline-initrd.img")
}

/// An initramfs `name` in `dir` whose /init is the static `busybox` powering off at once.
pub(crate) fn baseline_initrd_of(dir: &Path, busybox: Vec<u8>, name: &str) -> Result<PathBuf> {
    let mut t = Tree::new();
    t.insert("bin/busybox", Node::file(0o755, busybox))?;
    t.insert(
        "init",
        Node::file(0o755, &b"#!/bin/busybox sh\n/bin/busybox poweroff -f\n"[..]),
    )?;
    for d in ["dev", "proc", "sys"] {
        t.insert(d, Node::dir(0o755))?;
    }
    let opts = minke::archive::compress::ArchiveOptions::default();
    let bytes = minke::archive::compress::archive(&t, &opts)?;
    let p = dir.join(name);
    std::fs::write(&p, bytes)?;
    Ok(p)
}

/// A bare TCG boot of `kernel` with `initrd` on x86_64's standard machine (q35) or on microvm,
/// with the command line the shim would give it there.
fn qemu_bare(kernel: &Path, initrd: &Path, cmdline: &str, microvm: bool) -> Result<Duration> {
    if !microvm {
        return qemu_bare_for(minke_protocol::arch::Arch::X86_64, kernel, initrd, cmdline);
    }
    let khz = minke_shim::vm::host_tsc_khz().context("this host's TSC rate")?;
    qemu_bare_on(
        minke_protocol::arch::Arch::X86_64,
        &["-machine", "microvm"],
        kernel,
        initrd,
        &format!("{cmdline} pci=off minke.machine=microvm tsc_early_khz={khz}"),
    )
}

/// A bare TCG boot of `kernel` with `initrd` on `arch`'s usual machine, timed to QEMU's exit.
pub(crate) fn qemu_bare_for(
    arch: minke_protocol::arch::Arch,
    kernel: &Path,
    initrd: &Path,
    cmdline: &str,
) -> Result<Duration> {
    let machine: &[&str] = match arch {
        minke_protocol::arch::Arch::X86_64 => &["-machine", "q35"],
        minke_protocol::arch::Arch::Aarch64 => &["-machine", "virt", "-cpu", "max,pauth-impdef=on"],
    };
    qemu_bare_on(arch, machine, kernel, initrd, cmdline)
}

fn qemu_bare_on(
    arch: minke_protocol::arch::Arch,
    machine: &[&str],
    kernel: &Path,
    initrd: &Path,
    cmdline: &str,
) -> Result<Duration> {
    let t = Instant::now();
    let st = Command::new(arch.qemu_system())
        .args(machine)
        .args([
            "-accel",
            "tcg",
            "-m",
            "512M",
            "-nographic",
            "-no-reboot",
            "-nodefaults",
        ])
        .args(["-serial", "null"])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", cmdline])
        .status()?;
    if !st.success() {
        bail!("bare QEMU boot failed");
    }
    Ok(t.elapsed())
}

/// One kernel's boot figures.
struct BootFigures {
    /// Whether minke booted it on microvm (the bare baseline then boots there too).
    microvm: bool,
    /// A bare boot on q35, when minke used microvm.
    bare_q35: Option<Duration>,
    /// `minke run --machine standard -- true` (q35), when minke used microvm.
    run_q35: Option<Duration>,
    bare: Duration,
    run: Duration,
    ready: Duration,
    pid1_wall: Duration,
    pid1_to_ready: Option<Duration>,
    /// PID1 start → the last agent's own readiness moment.
    pid1_to_agents: Option<Duration>,
    timeline: Option<BootTimeline>,
    pid1_rss: String,
}

/// Boots the default image on the Debian cloud kernel and on the kernel built from
/// kernel-config/, side by side in one run (runs interleaved so load drift hits both alike).
pub fn boot(sh: &Shell) -> Result<()> {
    let kernels: [(&str, Option<&str>); 2] = [
        ("Debian cloud kernel", None),
        ("kernel built from kernel-config/", Some("build")),
    ];
    let images = kernels
        .iter()
        .map(|(_, k)| default_image(sh, *k))
        .collect::<Result<Vec<_>>>()?;
    let tmp = tempfile::tempdir()?;
    let base = baseline_initrd(tmp.path())?;
    let minke_bin = crate::workspace_root().join("target/release/minke");
    // virtme-ng boots the same Debian kernel as the first image (the package's vmlinuz, with
    // its modules tree beside it, which vng needs for virtiofs).
    let vng = virtme_ng(sh)?;
    let cloud_vmlinuz = cloud_vmlinuz(&images[0].0)?;
    let mut vng_runs = Vec::new();
    let mut samples: Vec<[Vec<Duration>; 4]> = images.iter().map(|_| Default::default()).collect();
    let microvm: Vec<bool> = images
        .iter()
        .map(|(dir, ..)| {
            let m: minke::image::Manifest =
                serde_json::from_slice(&std::fs::read(dir.join("default.manifest.json"))?)?;
            Ok(m.microvm)
        })
        .collect::<Result<_>>()?;
    let mut bare_q35: Vec<Vec<Duration>> = images.iter().map(|_| Vec::new()).collect();
    let mut run_q35: Vec<Vec<Duration>> = images.iter().map(|_| Vec::new()).collect();
    let mut pid1_to_ready: Vec<Vec<Duration>> = images.iter().map(|_| Vec::new()).collect();
    let mut pid1_to_agents: Vec<Vec<Duration>> = images.iter().map(|_| Vec::new()).collect();
    let mut last: Vec<(Option<BootTimeline>, String)> =
        images.iter().map(|_| (None, String::new())).collect();
    // What `minke run` boots on microvm: a bzImage's kernel unpacked for QEMU's direct (PVH)
    // entry. The bare baseline boots the same file, so the ratio compares like with like.
    let cache = minke::layer::Cache::default_location();
    let pvh: Vec<Option<PathBuf>> = images
        .iter()
        .zip(&microvm)
        .map(|((_, kernel, ..), m)| {
            if !m {
                return Ok(None);
            }
            minke::kernel::pvh::cached(kernel, None, &cache).map_err(|e| anyhow::anyhow!(e))
        })
        .collect::<Result<_>>()?;
    for i in 0..RUNS {
        for (k, (dir, kernel, initrd, cmdline)) in images.iter().enumerate() {
            let [bare, run, ready, pid1] = &mut samples[k];
            let booted = pvh[k].as_ref().unwrap_or(kernel);
            bare.push(qemu_bare(booted, &base, cmdline, microvm[k])?);
            if microvm[k] {
                bare_q35[k].push(qemu_bare(kernel, &base, cmdline, false)?);
            }
            let t = Instant::now();
            let st = Command::new(&minke_bin)
                .arg("run")
                .arg(dir)
                .args(["--name", "bench-run", "--", "true"])
                .status()?;
            if !st.success() {
                bail!("minke run {} -- true failed", dir.display());
            }
            run.push(t.elapsed());
            if microvm[k] {
                let t = Instant::now();
                let st = Command::new(&minke_bin)
                    .arg("run")
                    .arg(dir)
                    .args(["--machine", "standard", "--name", "bench-run", "--", "true"])
                    .status()?;
                if !st.success() {
                    bail!(
                        "minke run --machine standard {} -- true failed",
                        dir.display()
                    );
                }
                run_q35[k].push(t.elapsed());
            }
            if k == 0 {
                vng_runs.push(vng_true(&vng, &cloud_vmlinuz)?);
            }
            let state = tmp.path().join(format!("vm{k}-{i}"));
            let mut cfg = VmConfig::new(format!("bench-boot-{k}-{i}"), kernel, initrd);
            cfg.cmdline = cmdline.clone();
            cfg.microvm_kernel = microvm[k];
            cfg.pvh_kernel = pvh[k].clone();
            cfg.state_dir = Some(state);
            let mut vm = Vm::boot(cfg)?;
            vm.wait_ready(Duration::from_secs(120))?;
            let ready_after = vm.ready_after().unwrap_or_default();
            ready.push(ready_after);
            let info = vm.info()?;
            let tl: BootTimeline = serde_json::from_str(&info.boot_json)?;
            let at = |w: &str| {
                tl.events
                    .iter()
                    .find(|e| e.what == w)
                    .map(|e| e.boottime_ns)
            };
            // The agents' own readiness moments (the last of them), as opposed to `ready`,
            // which also waits for the boot stages.
            let agents_ready = tl
                .events
                .iter()
                .filter(|e| e.what.starts_with("ready:"))
                .map(|e| e.boottime_ns)
                .max();
            if let (Some(a), Some(b)) = (at("pid1"), agents_ready) {
                pid1_to_agents[k].push(Duration::from_nanos(b.saturating_sub(a)));
            }
            if let (Some(a), Some(b)) = (at("pid1"), at("ready")) {
                let d = Duration::from_nanos(b.saturating_sub(a));
                pid1_to_ready[k].push(d);
                // PID1 reached, as wall time from QEMU's start: the host saw "ready" at
                // `ready_after`, and the guest measured PID1 → ready itself.
                pid1.push(ready_after.saturating_sub(d));
            }
            if i + 1 == RUNS {
                // smaps_rollup walks the page tables; VmRSS in status is a per-thread cached
                // approximation that reads far too low for idle processes.
                let rss = vm.exec_output(&[
                    "sh",
                    "-c",
                    "grep -E '^(Rss|Pss):' /proc/1/smaps_rollup | tr -s ' \\n' ' '",
                ])?;
                last[k] = (
                    Some(tl),
                    String::from_utf8_lossy(&rss.stdout).trim().to_owned(),
                );
            }
            vm.poweroff(Duration::from_secs(15))?;
        }
    }
    let figures: Vec<BootFigures> = samples
        .into_iter()
        .zip(pid1_to_ready)
        .zip(pid1_to_agents)
        .zip(last)
        .zip(microvm.iter().zip(bare_q35.into_iter().zip(run_q35)))
        .map(
            |(
                ((([bare, run, ready, pid1], p2r), p2a), (timeline, pid1_rss)),
                (&microvm, (q35, rq35)),
            )| {
                BootFigures {
                    microvm,
                    bare_q35: (!q35.is_empty()).then(|| median(q35)),
                    run_q35: (!rq35.is_empty()).then(|| median(rq35)),
                    bare: median(bare),
                    run: median(run),
                    ready: median(ready),
                    pid1_wall: if pid1.is_empty() {
                        Duration::ZERO
                    } else {
                        median(pid1)
                    },
                    pid1_to_ready: (!p2r.is_empty()).then(|| median(p2r)),
                    pid1_to_agents: (!p2a.is_empty()).then(|| median(p2a)),
                    timeline,
                    pid1_rss,
                }
            },
        )
        .collect();
    println!("boot benchmark (TCG, median of {RUNS}; wall times from QEMU's start):");
    for ((name, _), f) in kernels.iter().zip(&figures) {
        println!(
            "{name} (minke boots it on {}):",
            if f.microvm { "microvm" } else { "q35" }
        );
        println!(
            "  bare baseline (same kernel and machine, busybox /init powers off) {:>8.3} s",
            f.bare.as_secs_f64()
        );
        if let Some(q) = f.run_q35 {
            println!(
                "  minke run --machine standard -- true (q35)              {:>8.3} s  (microvm {:.2}x of it)",
                q.as_secs_f64(),
                f.run.as_secs_f64() / q.as_secs_f64()
            );
        }
        if let Some(q) = f.bare_q35 {
            println!(
                "  bare baseline on q35 (same kernel)                      {:>8.3} s  (minke run -- true {:.2}x)",
                q.as_secs_f64(),
                f.run.as_secs_f64() / q.as_secs_f64()
            );
        }
        println!(
            "  minke run -- true                                       {:>8.3} s  ({:.2}x baseline; target <= 1.15x)",
            f.run.as_secs_f64(),
            f.run.as_secs_f64() / f.bare.as_secs_f64()
        );
        println!(
            "  QEMU start -> PID1                                      {:>8.3} s",
            f.pid1_wall.as_secs_f64()
        );
        println!(
            "  QEMU start -> agent ready                               {:>8.3} s",
            f.ready.as_secs_f64()
        );
        if let Some(d) = f.pid1_to_agents {
            println!("  PID1 start -> all agents ready (boot.json)              {:>8.1} ms  (target <= 30 ms)", d.as_secs_f64() * 1e3);
        }
        if let Some(d) = f.pid1_to_ready {
            println!(
                "  PID1 start -> booted (agents and boot stages)           {:>8.1} ms",
                d.as_secs_f64() * 1e3
            );
        }
        println!("  PID1 {}", f.pid1_rss);
    }
    let vng_median = median(vng_runs);
    println!(
        "virtme-ng on the Debian cloud kernel: vng --disable-kvm -r VMLINUZ -- true  {:>8.3} s  \
         (minke run -- true {:.2}x faster; target >= 2.5x)",
        vng_median.as_secs_f64(),
        vng_median.as_secs_f64() / figures[0].run.as_secs_f64()
    );
    let (deb, built) = (&figures[0], &figures[1]);
    println!("built kernel vs Debian cloud kernel:");
    println!(
        "  QEMU start -> PID1                                      {:>8.2}x  (target <= 0.5x)",
        built.pid1_wall.as_secs_f64() / deb.pid1_wall.as_secs_f64()
    );
    println!(
        "  minke run -- true                                       {:>8.2}x  ({:.3} s; target <= 1.0 s)",
        built.run.as_secs_f64() / deb.run.as_secs_f64(),
        built.run.as_secs_f64()
    );
    let manifest: minke::image::Manifest =
        serde_json::from_slice(&std::fs::read(images[0].0.join("default.manifest.json"))?)?;
    if let Some(init) = manifest.files.iter().find(|f| f.path == "/init") {
        println!(
            "/init (minke-init) size                                   {:>8} bytes",
            init.size.unwrap_or(0)
        );
    }
    for ((name, _), f) in kernels.iter().zip(&figures) {
        if let Some(tl) = &f.timeline {
            println!("boot timeline, {name} (last run; CLOCK_BOOTTIME, and from PID1's start):");
            let t0 = tl
                .events
                .iter()
                .find(|e| e.what == "pid1")
                .map_or(0, |e| e.boottime_ns);
            let ms = |ns: u64| ns as f64 / 1e6;
            for e in &tl.events {
                // An agent's own start-up: from its start to its readiness.
                let own = e.what.strip_prefix("ready:").and_then(|unit| {
                    let started = format!("started:{unit}");
                    tl.events.iter().find(|s| s.what == started).map(|s| {
                        format!(
                            "  ({:.1} ms after its start)",
                            ms(e.boottime_ns.saturating_sub(s.boottime_ns))
                        )
                    })
                });
                println!(
                    "    {:>10.1} ms  {:>+8.1} ms  {}{}",
                    ms(e.boottime_ns),
                    ms(e.boottime_ns.saturating_sub(t0)),
                    e.what,
                    own.unwrap_or_default()
                );
            }
        }
    }
    Ok(())
}

pub fn agents(sh: &Shell) -> Result<()> {
    let (_, kernel, initrd, cmdline) = default_image(sh, None)?;
    let tmp = tempfile::tempdir()?;
    let mut cfg = VmConfig::new("bench-agents", &kernel, &initrd);
    cfg.cmdline = cmdline;
    cfg.state_dir = Some(tmp.path().join("vm"));
    let mut vm = Vm::boot(cfg)?;
    vm.wait_ready(Duration::from_secs(120))?;
    let raw = raw_vsock(&vm)?;
    // exec round trip
    let mut rt = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        let o = vm.exec_output(&["true"])?;
        rt.push(t.elapsed());
        if o.code != 0 {
            bail!("true failed in the guest");
        }
    }
    // Where an exec's time goes: a control connection with a small request (connect,
    // handshake, Info), and an exec whose program does not exist (the whole conversation and
    // the fork, but no program runs).
    let mut info_rt = Vec::new();
    let mut missing_rt = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        vm.info()?;
        info_rt.push(t.elapsed());
        let t = Instant::now();
        if vm.exec_output(&["/nonexistent/program"]).is_ok() {
            bail!("a missing program ran in the guest");
        }
        missing_rt.push(t.elapsed());
    }
    // stdout streaming throughput through exec
    let mb = 64;
    let t = Instant::now();
    let mut sink = Counter(0);
    let req = ExecRequest {
        argv: vec![
            "dd".into(),
            "if=/dev/zero".into(),
            "bs=65536".into(),
            format!("count={}", mb * 16),
        ],
        ..Default::default()
    };
    vm.exec(req, Stdin::Null, &mut sink, &mut std::io::sink())?;
    let exec_tp = sink.0 as f64 / t.elapsed().as_secs_f64() / 1e6;
    // the same bytes through a forwarded TCP connection (vsock stream spliced by the agent)
    let _server = std::thread::scope(|s| -> Result<f64> {
        let h = s.spawn(|| {
            vm.exec_output(&[
                "sh",
                "-c",
                &format!(
                    "dd if=/dev/zero bs=65536 count={} 2>/dev/null | nc -l -p 9000",
                    mb * 16
                ),
            ])
        });
        // Wait for the listener through the agent: connect until it answers.
        let f = vm.forward(
            minke_shim::ForwardListen::Tcp("127.0.0.1:0".parse()?),
            minke_shim::ForwardTarget::Tcp(9000),
        )?;
        let minke_shim::ForwardListen::Tcp(addr) = f.local().clone() else {
            bail!("no tcp")
        };
        let end = Instant::now() + Duration::from_secs(30);
        let tp = loop {
            let mut s = std::net::TcpStream::connect(addr)?;
            let t = Instant::now();
            let n = std::io::copy(&mut s, &mut std::io::sink())?;
            if n > 0 {
                break n as f64 / t.elapsed().as_secs_f64() / 1e6;
            }
            if Instant::now() > end {
                bail!("guest nc never answered");
            }
        };
        let _ = h.join();
        println!("agents benchmark (TCG):");
        println!(
            "  exec `true` round trip       median {:>7.1} ms (target <= 10 ms)",
            median(rt.clone()).as_secs_f64() * 1e3
        );
        println!(
            "    of which: connect + handshake + Info {:>7.1} ms; exec whose program cannot start (fork, failed execve) {:>7.1} ms",
            median(info_rt.clone()).as_secs_f64() * 1e3,
            median(missing_rt.clone()).as_secs_f64() * 1e3
        );
        println!(
            "  raw vsock echo round trip    median {:>7.2} ms (a guest process looping the bytes back)",
            raw.echo.as_secs_f64() * 1e3
        );
        println!(
            "  exec/raw round trip          {:>7.1}x",
            median(rt.clone()).as_secs_f64() / raw.echo.as_secs_f64()
        );
        println!(
            "  raw vsock stream guest->host {:>7.1} MB/s",
            raw.stream_mbs
        );
        println!(
            "  stdout through exec          {exec_tp:>7.1} MB/s  (exec/raw = {:.0} %, target >= 50 %)",
            exec_tp / raw.stream_mbs * 100.0
        );
        println!(
            "  forwarded TCP stream         {tp:>7.1} MB/s  (exec/forward = {:.0} %)",
            exec_tp / tp * 100.0
        );
        Ok(tp)
    })?;
    let rss = vm.exec_output(&["sh", "-c", "for p in $(cd /proc && ls -d [0-9]*); do c=$(tr '\\0' ' ' < /proc/$p/cmdline 2>/dev/null); case \"$c\" in '/init agent'*) echo \"    $c: $(grep -E '^(Rss|Pss):' /proc/$p/smaps_rollup | tr -s ' \\n' ' ')\";; esac; done"])?;
    let rss = String::from_utf8_lossy(&rss.stdout).into_owned();
    let kib = |key: &str| -> u64 {
        rss.lines()
            .filter_map(|l| {
                l.split(key)
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum()
    };
    println!(
        "  agents' memory: Rss {} kB, Pss {} kB together (target <= 4096 kB; forked from PID1, so Rss counts pages shared with it):\n{rss}",
        kib("Rss:"),
        kib("Pss:")
    );

    // Time sync: the steady offsets the agent measures, then a 5 s QMP pause.
    let steady = steady_offsets(&vm, 6)?;
    let worst = steady.iter().fold(0f64, |m, o| m.max(o.abs()));
    println!(
        "  timesync steady offsets (last {} polls): {} ms; max |offset| {worst:.3} ms (target <= 1 ms)",
        steady.len(),
        steady
            .iter()
            .map(|o| format!("{o:+.3}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    match pause_resync(&vm) {
        Ok(r) => print_resync("vhost-user vsock", &r),
        Err(e) => println!("  timesync after a 5 s pause over vhost-user vsock: FAILED ({e})"),
    }
    vm.poweroff(Duration::from_secs(15))?;
    let mut scfg = VmConfig::new("bench-agents-serial", &kernel, &initrd);
    scfg.cmdline = std::fs::read_to_string(
        kernel
            .parent()
            .context("image dir")?
            .join("default-cmdline"),
    )?
    .trim()
    .to_string();
    scfg.state_dir = Some(tmp.path().join("serial"));
    scfg.transport = minke_shim::Transport::Serial;
    let mut svm = Vm::boot(scfg)?;
    svm.wait_ready(Duration::from_secs(120))?;
    match pause_resync(&svm) {
        Ok(r) => print_resync("virtio-serial", &r),
        Err(e) => println!("  timesync after a 5 s pause over virtio-serial: FAILED ({e})"),
    }
    svm.poweroff(Duration::from_secs(15))?;
    Ok(())
}

/// The last `n` offsets the agent measured once it runs steadily (its first measurement, the
/// boot step, is left out); waits for them.
fn steady_offsets(vm: &Vm, n: usize) -> Result<Vec<f64>> {
    let end = Instant::now() + Duration::from_secs(90);
    loop {
        let all = minke_shim::timesync::logged_offsets(&std::fs::read_to_string(vm.console_log())?);
        if all.len() > n {
            return Ok(all[all.len() - n..].to_vec());
        }
        if Instant::now() > end {
            bail!("only {} time sync measurements in 90 s", all.len());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// What the agent did after a 5 s pause.
struct Resync {
    /// The step right after the resume (ms).
    step: f64,
    /// Its next measurement (ms) and when the host saw it, after `cont`.
    after: f64,
    seen_after: Duration,
}

fn print_resync(transport: &str, r: &Resync) {
    println!(
        "  timesync after a 5 s pause over {transport}: stepped {:+.3} ms, then offset {:+.3} ms, \
         logged {:.2} s after the resume (target |offset| <= 5 ms within 3 s)",
        r.step,
        r.after,
        r.seen_after.as_secs_f64()
    );
}

/// Pauses the VM for 5 s (QMP stop/cont) and waits for the agent's step and next measurement.
fn pause_resync(vm: &Vm) -> Result<Resync> {
    let marker = minke_protocol::console::RESUME_RESYNC;
    let before = std::fs::read_to_string(vm.console_log())?
        .matches(marker)
        .count();
    vm.pause()?;
    std::thread::sleep(Duration::from_secs(5));
    let resumed = Instant::now();
    let pushed = vm.resume()?;
    if pushed == 0 {
        bail!("the host had no time sync connection to tell");
    }
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let log = std::fs::read_to_string(vm.console_log())?;
        let tail = log.split(marker).nth(before + 1).unwrap_or("");
        let offs = minke_shim::timesync::logged_offsets(tail);
        if offs.len() >= 2 {
            return Ok(Resync {
                step: offs[0],
                after: offs[1],
                seen_after: resumed.elapsed(),
            });
        }
        if Instant::now() > end {
            bail!("no resync within 30 s of the resume");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Counter(u64);

impl Write for Counter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0 += b.len() as u64;
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Raw vsock figures, without minke's protocol: guest-initiated hybrid vsock connections
/// (`vm.vsock_PORT` in the state dir) served by `minke-init vsock` in the guest.
struct RawVsock {
    echo: Duration,
    stream_mbs: f64,
}

fn raw_vsock(vm: &Vm) -> Result<RawVsock> {
    use std::io::Read;
    use std::os::unix::net::UnixListener;
    let listen = |port: u32| -> Result<UnixListener> {
        let p = vm
            .state_dir()
            .join(format!("{}_{port}", minke_shim::state::files::VSOCK));
        let _ = std::fs::remove_file(&p);
        Ok(UnixListener::bind(&p)?)
    };
    // Echo: the guest tool's output loops back into its input through a FIFO.
    let l = listen(5000)?;
    let echo = std::thread::scope(|s| -> Result<Duration> {
        let guest = s.spawn(|| {
            vm.exec_output(&[
                "sh",
                "-c",
                "rm -f /tmp/echo; mkfifo /tmp/echo; /init vsock 2 5000 0<>/tmp/echo 1>/tmp/echo",
            ])
        });
        let (mut c, _) = l.accept()?;
        let mut rts = Vec::new();
        let mut b = [0u8; 1];
        for i in 0..200u32 {
            let t = Instant::now();
            c.write_all(&[i as u8])?;
            c.read_exact(&mut b)?;
            rts.push(t.elapsed());
        }
        drop(c);
        let _ = guest.join();
        Ok(median(rts))
    })?;
    // Stream: 64 MiB guest -> host.
    let l = listen(5001)?;
    let stream_mbs = std::thread::scope(|s| -> Result<f64> {
        let guest = s.spawn(|| {
            vm.exec_output(&[
                "sh",
                "-c",
                "dd if=/dev/zero bs=65536 count=1024 2>/dev/null | /init vsock 2 5001 >/dev/null",
            ])
        });
        let (c, _) = l.accept()?;
        let t = Instant::now();
        // Count the bytes rather than wait for EOF: the backend does not pass the guest's
        // half-close on to the host socket.
        let n = std::io::copy(&mut (&c).take(64 << 20), &mut std::io::sink())?;
        let secs = t.elapsed().as_secs_f64();
        drop(c);
        let _ = guest.join();
        Ok(n as f64 / secs / 1e6)
    })?;
    Ok(RawVsock { echo, stream_mbs })
}

/// The virtme-ng release the boot bench compares with (pinned: its boot path changes between
/// releases).
const VIRTME_NG_VERSION: &str = "1.42";

/// `vng` from a virtualenv under `target/` (`pip install virtme-ng` on first use).
fn virtme_ng(sh: &Shell) -> Result<PathBuf> {
    let venv = crate::workspace_root().join("target/vng-venv");
    let vng = venv.join("bin/vng");
    if !vng.exists() {
        cmd!(sh, "python3 -m venv {venv}").run()?;
        let pip = venv.join("bin/pip");
        cmd!(sh, "{pip} install --quiet virtme-ng=={VIRTME_NG_VERSION}").run()?;
    }
    Ok(vng)
}

/// The vmlinuz of the Debian kernel package the default image boots, in minke's cache (its
/// `lib/modules` beside it), found through the image manifest's kernel record.
fn cloud_vmlinuz(image_dir: &Path) -> Result<PathBuf> {
    let manifest: minke::image::Manifest =
        serde_json::from_slice(&std::fs::read(image_dir.join("default.manifest.json"))?)?;
    let version = &manifest.kernel.version;
    let kernels = minke::layer::Cache::default_location().dir("kernels");
    for e in std::fs::read_dir(&kernels).with_context(|| format!("{}", kernels.display()))? {
        let p = e?.path().join("boot").join(format!("vmlinuz-{version}"));
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("no cached vmlinuz-{version} under {}", kernels.display())
}

/// One `vng --disable-kvm -r VMLINUZ -- true`, timed. vng's exit status is not the command's
/// on this kernel (it falls back to the console for the script), so the script's own exit
/// line on the console is what proves the run.
fn vng_true(vng: &Path, vmlinuz: &Path) -> Result<Duration> {
    // vng runs its siblings (virtme-run) by name from the venv's bin; virtiofsd comes from
    // `cargo install`.
    let venv_bin = vng.parent().context("vng has no directory")?.to_path_buf();
    let mut dirs = vec![venv_bin];
    dirs.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    let path = std::env::join_paths(dirs)?;
    let t = Instant::now();
    let out = Command::new(vng)
        .args(["--disable-kvm", "--verbose", "-r"])
        .arg(vmlinuz)
        .args(["--", "true"])
        .env("PATH", path)
        .output()?;
    let took = t.elapsed();
    let console = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    if !console.contains("script exited with code 0") {
        bail!(
            "vng did not run `true` ({}):\n{}",
            out.status,
            console
                .lines()
                .rev()
                .take(15)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    Ok(took)
}
