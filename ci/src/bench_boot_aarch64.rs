//! `cargo xtask bench boot --arch aarch64`: the aarch64 image of `examples/aarch64.yml` under
//! qemu-system-aarch64 (`-M virt`; TCG on an x86_64 host), on Debian's arm64 cloud kernel and
//! on the arm64 kernel built from kernel-config/, in one run and alternating:
//! - a bare boot of the same arm64 kernel with an initramfs whose /init is Debian's arm64
//!   busybox powering off (the floor any tool sits on);
//! - `minke run IMAGE -- true` (boot, exec, clean power-off), over that bare boot;
//! - an exec round trip (`true`) on a booted VM.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use minke::archive::tree::NodeKind;
use minke_protocol::arch::Arch;
use minke_shim::{Vm, VmConfig};
use xshell::Shell;

use crate::bench_vm::{median, qemu_bare_for, spec_image};

const RUNS: usize = 5;
const EXECS: usize = 30;

/// An initramfs whose /init is Debian's arm64 busybox, powering off at once.
fn baseline_initrd(dir: &Path) -> Result<PathBuf> {
    let cache = minke::layer::Cache::default_location();
    let deb = minke::sources::deb::pins::fetch(&cache, "busybox-static", "arm64")?;
    let full = minke::sources::deb::unpack(&deb.path)?;
    let busybox = match &full.get("bin/busybox").context("no bin/busybox")?.kind {
        NodeKind::File(d) => d.read()?,
        _ => bail!("bin/busybox is not a file"),
    };
    crate::bench_vm::baseline_initrd_of(dir, busybox, "baseline-arm64-initrd.img")
}

pub fn run(sh: &Shell) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let base = baseline_initrd(tmp.path())?;
    for (label, kernel, dir) in [
        ("Debian's arm64 cloud kernel", None, "bench-image-aarch64"),
        (
            "the arm64 kernel built from kernel-config/",
            Some("build"),
            "bench-image-aarch64-built",
        ),
    ] {
        let image = spec_image(sh, Some("examples/aarch64.yml"), "aarch64", dir, kernel)?;
        one_kernel(label, image, &base, tmp.path())?;
    }
    Ok(())
}

fn one_kernel(
    label: &str,
    (dir, kernel, initrd, cmdline): (PathBuf, PathBuf, PathBuf, String),
    base: &Path,
    tmp: &Path,
) -> Result<()> {
    let minke = crate::workspace_root().join("target/release/minke");
    let (mut bare, mut runs, mut ready, mut execs) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..RUNS {
        bare.push(qemu_bare_for(Arch::Aarch64, &kernel, base, &cmdline)?);
        let t = Instant::now();
        let st = Command::new(&minke)
            .arg("run")
            .arg(&dir)
            .args(["--accel", "tcg", "--name", "bench-arm", "--", "true"])
            .status()?;
        if !st.success() {
            bail!("minke run {} -- true failed", dir.display());
        }
        runs.push(t.elapsed());
        let mut cfg = VmConfig::new(format!("bench-arm-{i}"), &kernel, &initrd);
        cfg.cmdline = cmdline.clone();
        cfg.arch = Arch::Aarch64;
        cfg.accel = minke_shim::Accel::Tcg;
        cfg.state_dir = Some(tmp.join(format!("vm{i}")));
        let mut vm = Vm::boot(cfg)?;
        vm.wait_ready(Duration::from_secs(120))?;
        ready.push(vm.ready_after().unwrap_or_default());
        for _ in 0..EXECS {
            let t = Instant::now();
            let o = vm.exec_output(&["true"])?;
            if o.code != 0 {
                bail!("exec true gave {:?}", o.code);
            }
            execs.push(t.elapsed());
        }
        vm.poweroff(Duration::from_secs(30))?;
    }
    let s = |d: Duration| d.as_secs_f64();
    let (b, r) = (s(median(bare)), s(median(runs)));
    println!(
        "aarch64 guest on {label}, this {} host, TCG, median of {RUNS}:",
        std::env::consts::ARCH
    );
    println!("  bare busybox boot of the arm64 kernel   {b:.3} s");
    println!(
        "  minke run -- true                       {r:.3} s   {:.2}× bare",
        r / b
    );
    println!(
        "  QEMU start → agent ready                {:.3} s",
        s(median(ready))
    );
    println!(
        "  exec round trip (true), median of {}    {:.1} ms",
        RUNS * EXECS,
        s(median(execs)) * 1e3
    );
    Ok(())
}
