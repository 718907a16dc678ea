//! `cargo xtask bench boot` and `cargo xtask bench agents`: booted-guest benchmarks, each peer
//! run side by side in the same run. Figures are printed, never asserted.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use minke::tree::{Node, Tree};
use minke_protocol::config::BootTimeline;
use minke_shim::{ExecRequest, Stdin, Vm, VmConfig};
use xshell::{cmd, Shell};

const RUNS: usize = 5;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Builds the default image with the workspace's CLI and returns (kernel, initrd, cmdline).
fn default_image(sh: &Shell) -> Result<(PathBuf, PathBuf, String)> {
    let out = crate::workspace_root().join("target/bench-image");
    cmd!(sh, "cargo run --quiet --release -p minke -- build -o {out}").run()?;
    let cmdline = std::fs::read_to_string(out.join("default-cmdline"))?
        .trim()
        .to_string();
    Ok((
        out.join("default-kernel"),
        out.join("default-initrd.img"),
        cmdline,
    ))
}

/// The bare baseline: the same kernel with an initramfs whose /init is busybox powering off.
fn baseline_initrd(dir: &Path) -> Result<PathBuf> {
    let busybox =
        std::fs::read("/bin/busybox").context("/bin/busybox (apt-get install busybox-static)")?;
    let mut t = Tree::new();
    t.insert("bin/busybox", Node::file(0o755, busybox))?;
    t.insert(
        "init",
        Node::file(0o755, &b"#!/bin/busybox sh\n/bin/busybox poweroff -f\n"[..]),
    )?;
    for d in ["dev", "proc", "sys"] {
        t.insert(d, Node::dir(0o755))?;
    }
    let opts = minke::compress::ArchiveOptions::default();
    let bytes = minke::compress::archive(&t, &opts)?;
    let p = dir.join("baseline-initrd.img");
    std::fs::write(&p, bytes)?;
    Ok(p)
}

fn qemu_bare(kernel: &Path, initrd: &Path, cmdline: &str) -> Result<Duration> {
    let t = Instant::now();
    let st = Command::new("qemu-system-x86_64")
        .args([
            "-machine",
            "q35",
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

pub fn boot(sh: &Shell) -> Result<()> {
    let (kernel, initrd, cmdline) = default_image(sh)?;
    let tmp = tempfile::tempdir()?;
    let base = baseline_initrd(tmp.path())?;
    let minke_bin = crate::workspace_root().join("target/release/minke");
    let image_dir = crate::workspace_root().join("target/bench-image");
    let (mut bare, mut run, mut ready, mut pid1_to_ready) = (vec![], vec![], vec![], vec![]);
    let mut last_timeline = None;
    for i in 0..RUNS {
        bare.push(qemu_bare(&kernel, &base, &cmdline)?);
        let t = Instant::now();
        let st = Command::new(&minke_bin)
            .arg("run")
            .arg(&image_dir)
            .args(["--name", "bench-run", "--", "true"])
            .status()?;
        if !st.success() {
            bail!("minke run -- true failed");
        }
        run.push(t.elapsed());
        let state = tmp.path().join(format!("vm{i}"));
        let mut cfg = VmConfig::new(format!("bench-boot-{i}"), &kernel, &initrd);
        cfg.cmdline = cmdline.clone();
        cfg.state_dir = Some(state);
        let mut vm = Vm::boot(cfg)?;
        vm.wait_ready(Duration::from_secs(120))?;
        ready.push(vm.ready_after().unwrap_or_default());
        let info = vm.info()?;
        let tl: BootTimeline = serde_json::from_str(&info.boot_json)?;
        let at = |w: &str| {
            tl.events
                .iter()
                .find(|e| e.what == w)
                .map(|e| e.boottime_ns)
        };
        if let (Some(a), Some(b)) = (at("pid1"), at("ready")) {
            pid1_to_ready.push(Duration::from_nanos(b - a));
        }
        if i + 1 == RUNS {
            let rss = vm.exec_output(&["sh", "-c", "grep VmRSS /proc/1/status"])?;
            println!("PID1 {}", String::from_utf8_lossy(&rss.stdout).trim());
            last_timeline = Some(tl);
        }
        vm.poweroff(Duration::from_secs(15))?;
    }
    let (b, r) = (median(bare), median(run));
    println!("boot benchmark (TCG, median of {RUNS}):");
    println!(
        "  bare baseline (same kernel, busybox /init powers off)  {:>8.3} s",
        b.as_secs_f64()
    );
    println!("  minke run -- true                                       {:>8.3} s  ({:.2}x baseline; target <= 1.15x)", r.as_secs_f64(), r.as_secs_f64() / b.as_secs_f64());
    println!(
        "  QEMU start -> agent ready                               {:>8.3} s",
        median(ready).as_secs_f64()
    );
    if !pid1_to_ready.is_empty() {
        println!("  PID1 start -> all agents ready (boot.json)              {:>8.1} ms  (target <= 30 ms)", median(pid1_to_ready).as_secs_f64() * 1e3);
    }
    let manifest: minke::image::Manifest =
        serde_json::from_slice(&std::fs::read(image_dir.join("default.manifest.json"))?)?;
    if let Some(init) = manifest.files.iter().find(|f| f.path == "/init") {
        println!(
            "  /init (minke-init) size                                 {:>8} bytes",
            init.size.unwrap_or(0)
        );
    }
    if let Some(tl) = last_timeline {
        println!("  boot timeline (CLOCK_BOOTTIME):");
        for e in tl.events {
            println!("    {:>10.1} ms  {}", e.boottime_ns as f64 / 1e6, e.what);
        }
    }
    Ok(())
}

pub fn agents(sh: &Shell) -> Result<()> {
    let (kernel, initrd, cmdline) = default_image(sh)?;
    let tmp = tempfile::tempdir()?;
    let mut cfg = VmConfig::new("bench-agents", &kernel, &initrd);
    cfg.cmdline = cmdline;
    cfg.state_dir = Some(tmp.path().join("vm"));
    let mut vm = Vm::boot(cfg)?;
    vm.wait_ready(Duration::from_secs(120))?;
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
        println!("  stdout through exec          {exec_tp:>7.1} MB/s");
        println!("  forwarded TCP stream         {tp:>7.1} MB/s  (exec/forward = {:.0} %, target >= 50 %)", exec_tp / tp * 100.0);
        Ok(tp)
    })?;
    let rss = vm.exec_output(&["sh", "-c", "for p in /proc/[0-9]*; do c=$(cat $p/cmdline 2>/dev/null | tr '\\0' ' '); case \"$c\" in *agent*) grep VmRSS $p/status | sed \"s|^|$c |\";; esac; done"])?;
    println!("  agents' RSS:\n{}", String::from_utf8_lossy(&rss.stdout));
    vm.poweroff(Duration::from_secs(15))?;
    Ok(())
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
