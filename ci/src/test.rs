//! `cargo xtask test`: setup, then formatting, lints and the whole test suite — what CI runs.
//! `--kernel` adds the built-kernel stage: a kernel built from kernel-config/ (twice, compared
//! byte for byte), checked, and the boot tests run again on it.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

pub fn run(sh: &Shell, args: &[String]) -> Result<()> {
    let quick = args.iter().any(|a| a == "--no-setup");
    let kernel = args.iter().any(|a| a == "--kernel");
    if let Some(a) = args
        .iter()
        .find(|a| !matches!(a.as_str(), "--no-setup" | "--kernel"))
    {
        bail!("unknown option {a:?}: cargo xtask test [--no-setup] [--kernel]");
    }
    if !quick {
        crate::setup::run(sh)?;
    }
    cmd!(sh, "cargo fmt --all -- --check").run()?;
    cmd!(
        sh,
        "cargo clippy --workspace --all-targets --quiet -- -D warnings"
    )
    .run()?;
    cmd!(sh, "cargo test --workspace -- --test-threads=2").run()?;
    if kernel {
        built_kernel(sh)?;
    }
    Ok(())
}

/// Builds the kernel from kernel-config/ into the usual cache, builds it again from scratch in
/// a fresh cache elsewhere and compares the bzImages, checks its embedded config, then boots
/// every boot test on it.
fn built_kernel(sh: &Shell) -> Result<()> {
    cmd!(sh, "cargo build --quiet --release -p minke").run()?;
    let minke = crate::workspace_root().join("target/release/minke");
    let t = Instant::now();
    let first = cmd!(sh, "{minke} kernel build").read()?;
    let first_time = t.elapsed();
    let image = first
        .lines()
        .next()
        .context("minke kernel build printed nothing")?
        .to_owned();

    let fresh = tempfile::tempdir()?;
    let t = Instant::now();
    let second = {
        let _env = sh.push_env("MINKE_CACHE", fresh.path());
        cmd!(sh, "{minke} kernel build").read()?
    };
    let second_time = t.elapsed();
    let image2 = second
        .lines()
        .next()
        .context("minke kernel build printed nothing")?
        .to_owned();
    let (a, b) = (std::fs::read(&image)?, std::fs::read(&image2)?);
    if a != b {
        bail!("the kernel is not reproducible: {image} and {image2} differ");
    }
    eprintln!(
        "xtask test: kernel built twice, same {} bytes ({:.0} s cached-or-first, {:.0} s from scratch)",
        a.len(),
        first_time.as_secs_f64(),
        second_time.as_secs_f64()
    );
    // The checker reads the built kernel's own embedded config (IKCONFIG inside the bzImage).
    cmd!(sh, "{minke} kernel check {image}").run()?;

    let _env = sh.push_env("MINKE_TEST_KERNEL", "build");
    cmd!(
        sh,
        "cargo test -p minke-shim --test boot -- --test-threads=2"
    )
    .run()?;
    Ok(())
}
