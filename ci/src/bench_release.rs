//! `cargo xtask bench release`: what the release formats and the registry cost, in one run,
//! through the release `minke` a user runs:
//! - each format's build (`minke build --format F` of the default image, caches warm) over
//!   the build of the image directory alone (the initrd and its companions);
//! - `minke push` of the built image to a fresh `docker-registry` on 127.0.0.1 vs `skopeo
//!   copy` of the same artifact from an OCI layout to another fresh one, and `minke pull` into
//!   an empty cache vs `skopeo copy` of it back into a layout (goal ≥ 1× skopeo for both).
//!
//! Medians of alternating rounds.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::bench_registry::LocalRegistry;
use crate::bench_vm::median;

const ROUNDS: usize = 5;

fn run_ok(c: &mut Command) -> Result<Duration> {
    let t = Instant::now();
    let o = c.output().with_context(|| format!("{c:?}"))?;
    let d = t.elapsed();
    if !o.status.success() {
        bail!("{c:?}: {}", String::from_utf8_lossy(&o.stderr));
    }
    Ok(d)
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

pub fn run(sh: &Shell) -> Result<()> {
    cmd!(sh, "cargo build --release -p minke-cli").run()?;
    let minke = crate::workspace_root().join("target/release/minke");
    let tmp = tempfile::tempdir_in(crate::workspace_root().join("target"))?;
    let build = |out: &Path, formats: &[&str]| {
        let mut c = Command::new(&minke);
        c.arg("build").arg("-o").arg(out);
        for f in formats {
            c.args(["--format", f]);
        }
        run_ok(&mut c)
    };
    // Warm every cache (layers, the initrd archive, the kernel) once.
    build(
        &tmp.path().join("warm"),
        &["tar", "uki", "disk", "qcow2", "iso"],
    )?;

    let formats: &[&[&str]] = &[&[], &["tar"], &["uki"], &["disk"], &["qcow2"], &["iso"]];
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); formats.len()];
    for round in 0..ROUNDS {
        for (i, f) in formats.iter().enumerate() {
            let out = tmp.path().join(format!("b{round}-{i}"));
            times[i].push(build(&out, f)?);
            std::fs::remove_dir_all(&out)?;
        }
    }
    let base = secs(median(times[0].clone()));
    println!("build of the default image, warm caches, median of {ROUNDS}:");
    println!("  image directory (initrd) {base:.3} s");
    for (f, t) in formats.iter().zip(&times).skip(1) {
        let t = secs(median(t.clone()));
        println!(
            "  + --format {:<6} {t:.3} s   {:.2}× the image directory alone",
            f[0],
            t / base
        );
    }

    // Push and pull against skopeo, on the same artifact.
    let image = tmp.path().join("warm");
    let reg = LocalRegistry::start(None);
    let first = format!("{}/bench/minke:1", reg.addr);
    run_ok(Command::new(&minke).arg("push").arg(&image).arg(&first))?;
    let layout = tmp.path().join("layout");
    run_ok(
        Command::new("skopeo")
            .args([
                "--insecure-policy",
                "copy",
                "--quiet",
                "--src-tls-verify=false",
            ])
            .arg(format!("docker://{first}"))
            .arg(format!("oci:{}:1", layout.display())),
    )?;
    let size: u64 = std::fs::read_dir(layout.join("blobs/sha256"))?
        .flatten()
        .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .sum();
    let (mut push_m, mut push_s, mut pull_m, mut pull_s) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        // A fresh registry for each push: neither tool finds a blob there already (skopeo
        // would otherwise mount the blobs it remembers from earlier rounds instead of
        // uploading them).
        let (reg_m, reg_s) = (LocalRegistry::start(None), LocalRegistry::start(None));
        let ours = format!("{}/push/default:1", reg_m.addr);
        push_m.push(run_ok(
            Command::new(&minke).arg("push").arg(&image).arg(&ours),
        )?);
        let theirs = format!("{}/push/default:1", reg_s.addr);
        push_s.push(run_ok(
            Command::new("skopeo")
                .args([
                    "--insecure-policy",
                    "copy",
                    "--quiet",
                    "--dest-tls-verify=false",
                ])
                .arg(format!("oci:{}:1", layout.display()))
                .arg(format!("docker://{theirs}")),
        )?);
        let cache = tmp.path().join(format!("pull-cache-{round}"));
        pull_m.push(run_ok(
            Command::new(&minke)
                .arg("pull")
                .arg(&first)
                .arg("-o")
                .arg(tmp.path().join(format!("pulled-{round}")))
                .env("MINKE_CACHE", &cache),
        )?);
        pull_s.push(run_ok(
            Command::new("skopeo")
                .args([
                    "--insecure-policy",
                    "copy",
                    "--quiet",
                    "--src-tls-verify=false",
                ])
                .arg(format!("docker://{first}"))
                .arg(format!(
                    "oci:{}:1",
                    tmp.path().join(format!("skopeo-pulled-{round}")).display()
                )),
        )?);
    }
    let (pm, ps) = (secs(median(push_m)), secs(median(push_s)));
    let (lm, ls) = (secs(median(pull_m)), secs(median(pull_s)));
    println!(
        "the image as an artifact: {:.1} MB, registry on 127.0.0.1, median of {ROUNDS}:",
        size as f64 / 1e6
    );
    println!(
        "  push  minke {pm:.3} s   skopeo copy {ps:.3} s   {:.2}× skopeo (goal ≥ 1×)",
        ps / pm
    );
    println!(
        "  pull  minke {lm:.3} s   skopeo copy {ls:.3} s   {:.2}× skopeo (goal ≥ 1×)",
        ls / lm
    );
    Ok(())
}
