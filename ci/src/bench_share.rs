//! `cargo xtask bench share`: a host directory seen from a guest through virtio-fs
//! (virtiofsd) and through 9p (QEMU's server), against the guest's own tmpfs, in one run and
//! on one kernel (Debian's generic kernel, the one with both): writing and reading back a
//! 64 MiB file, and walking a tree of 10,000 small files. Each operation runs in the guest
//! through the agent (an exec costs a few ms, far below these figures); caches are dropped
//! before reads and walks, so they cross the share. A benchmark, not a test: it never fails
//! on a number.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use minke_shim::{ShareBackend, ShareSpec, Vm, VmConfig};
use xshell::Shell;

/// Files in the small-file tree.
const FILES: usize = 10_000;
/// Size of the big file, MiB.
const BIG_MIB: usize = 64;

/// One operation's seconds on each of tmpfs, virtio-fs and 9p.
struct Row {
    what: String,
    secs: [f64; 3],
}

pub fn run(sh: &Shell) -> Result<()> {
    let (_, kernel, initrd, cmdline) = crate::bench_vm::spec_image(
        sh,
        Some("host-shim/tests/images/generic-kernel.yml"),
        "generic-kernel",
        "bench-share-image",
        None,
    )?;
    let tmp = tempfile::tempdir_in(crate::workspace_root().join("target"))?;
    let tree = tmp.path().join("tree");
    make_tree(&tree)?;
    let mut rows: Vec<Row> = ["write 64 MiB", "read 64 MiB", "walk 10,000 files"]
        .iter()
        .map(|w| Row {
            what: w.to_string(),
            secs: [0.0; 3],
        })
        .collect();
    for (col, backend) in [(1, ShareBackend::Virtiofs), (2, ShareBackend::NineP)] {
        let mut cfg = VmConfig::new(format!("bench-share-{col}"), &kernel, &initrd);
        cfg.cmdline = cmdline.clone();
        cfg.state_dir = Some(tmp.path().join(format!("vm{col}")));
        cfg.mem_mib = 1024;
        cfg.share_backend = backend;
        cfg.shares = vec![ShareSpec {
            host: tmp.path().to_path_buf(),
            guest: Some("/share".into()),
            readonly: false,
        }];
        let mut vm = Vm::boot(cfg)?;
        vm.wait_ready(Duration::from_secs(120))?;
        let times = measure(&vm, &format!("/share/big{col}"), "/share/tree")?;
        for (r, t) in rows.iter_mut().zip(times) {
            r.secs[col] = t;
        }
        if col == 1 {
            // tmpfs in the same guest: the tree copied in first (not timed).
            sh_in(&vm, "cp -a /share/tree /tmp/tree")?;
            let times = measure(&vm, "/tmp/big", "/tmp/tree")?;
            for (r, t) in rows.iter_mut().zip(times) {
                r.secs[0] = t;
            }
        }
        vm.poweroff(Duration::from_secs(30))?;
    }
    println!("bench share: Debian generic kernel, TCG, {FILES} files of 1 KiB, {BIG_MIB} MiB file");
    println!(
        "{:<20} {:>10} {:>10} {:>10}   virtio-fs vs 9p",
        "operation", "tmpfs s", "virtiofs s", "9p s"
    );
    for r in &rows {
        println!(
            "{:<20} {:>10.3} {:>10.3} {:>10.3}   {:.2}x",
            r.what,
            r.secs[0],
            r.secs[1],
            r.secs[2],
            r.secs[2] / r.secs[1]
        );
    }
    Ok(())
}

/// Seconds to write `big`, read it back and walk `tree`, caches dropped before the last two.
fn measure(vm: &Vm, big: &str, tree: &str) -> Result<[f64; 3]> {
    let write = timed(
        vm,
        &format!("dd if=/dev/zero of={big} bs=1048576 count={BIG_MIB} conv=fsync 2>/dev/null"),
    )?;
    sh_in(vm, "sync; echo 3 > /proc/sys/vm/drop_caches")?;
    let read = timed(vm, &format!("cat {big} > /dev/null"))?;
    sh_in(vm, "sync; echo 3 > /proc/sys/vm/drop_caches")?;
    let walk = timed(
        vm,
        &format!("test $(find {tree} -type f | wc -l) = {FILES}"),
    )?;
    sh_in(vm, &format!("rm -f {big}"))?;
    Ok([write, read, walk])
}

fn timed(vm: &Vm, script: &str) -> Result<f64> {
    let t = Instant::now();
    sh_in(vm, script)?;
    Ok(t.elapsed().as_secs_f64())
}

fn sh_in(vm: &Vm, script: &str) -> Result<()> {
    let o = vm.exec_output(&["/bin/sh", "-c", script])?;
    if o.code != 0 {
        bail!(
            "`{script}` failed in the guest ({}): {}",
            o.code,
            String::from_utf8_lossy(&o.stderr)
        );
    }
    Ok(())
}

/// `FILES` files of 1 KiB in 100 directories.
fn make_tree(dir: &Path) -> Result<()> {
    let data = vec![b'x'; 1024];
    for d in 0..100 {
        let sub = dir.join(format!("d{d:03}"));
        std::fs::create_dir_all(&sub).with_context(|| format!("creating {}", sub.display()))?;
        for f in 0..FILES / 100 {
            std::fs::write(sub.join(format!("f{f:03}")), &data)?;
        }
    }
    Ok(())
}
