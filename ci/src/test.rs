//! `cargo xtask test`: setup, then formatting, lints, the whole test suite and a few seconds of
//! every fuzz target — what CI runs.
//! `--kernel` adds the built-kernel stage: an x86_64 and an aarch64 kernel built from
//! kernel-config/ (each twice, compared byte for byte), checked, and the boot tests run again on
//! them.

use std::time::Instant;

use anyhow::{bail, Result};
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
    // A boot test that cannot run fails here instead of passing as skipped.
    let _require = sh.push_env("MINKE_REQUIRE_BOOT", "1");
    cmd!(sh, "cargo test --workspace -- --test-threads=2").run()?;
    aarch64_boot_tests(sh, &[])?;
    // minke as a user installs it: the dist tarball, used with the checkout out of sight.
    crate::dist::check(sh)?;
    // Every cargo-fuzz target, briefly: the coverage-guided runs start from the repository's
    // seeds, so even a few seconds exercise each decoder past its headers.
    if cmd!(sh, "cargo +nightly --version")
        .quiet()
        .ignore_stdout()
        .ignore_stderr()
        .run()
        .is_ok()
    {
        crate::fuzz::run(sh, &["--time".to_owned(), "5".to_owned()])?;
    } else {
        bail!(
            "the fuzz targets cannot run: no nightly toolchain (cargo-fuzz needs one; \
             `rustup toolchain install nightly`)"
        );
    }
    if kernel {
        built_kernel(sh)?;
    }
    Ok(())
}

/// The boot tests that do not depend on the guest's architecture, again on an aarch64 image
/// (the harness's `MINKE_TEST_ARCH` switch): exec with exit codes and stdin over both
/// transports, files, time sync and boot info, the data disk across a reboot, power-off,
/// shares, user networking, killed agents.
pub const AARCH64_BOOT_TESTS: &[&str] = &[
    "exec_codes_streams_and_runtime_config",
    "exec_streams_stdin_both_ways",
    "files_and_trees_round_trip",
    "info_logs_timesync_and_boot_chart",
    "poweroff_is_clean",
    "powerdown_runs_onshutdown_and_data_survives_reboot",
    "serial_exec_exit_codes_and_stdin",
    "serial_files_round_trip",
    "data_disk_is_attached_with_its_label_as_serial",
    "shares_read_write_own_and_refuse_what_they_should",
    "user_network_reaches_the_host_over_passt_and_slirp",
];

/// What the aarch64 subset adds on the built kernel: Debian's arm64 cloud kernel has no GPIO
/// keys driver, so only a kernel built from kernel-config/ has `virt`'s power button.
const AARCH64_BUILT_KERNEL_TESTS: &[&str] = &["power_button_powers_off_cleanly"];

fn aarch64_boot_tests(sh: &Shell, extra: &[&str]) -> Result<()> {
    let _arch = sh.push_env("MINKE_TEST_ARCH", "aarch64");
    let tests: Vec<&str> = AARCH64_BOOT_TESTS.iter().chain(extra).copied().collect();
    eprintln!(
        "xtask test: {} boot tests on an aarch64 guest",
        tests.len() + 1
    );
    let names = &tests;
    let boot = cmd!(
        sh,
        "cargo test -p minke-shim --test boot -- --exact --test-threads=2 {names...}"
    )
    .read()?;
    let reliability = cmd!(
        sh,
        "cargo test -p minke-shim --test reliability -- --exact killed_agents_come_back"
    )
    .read()?;
    // A misspelt name would select nothing and pass: every one must have run.
    for (out, n) in [(&boot, tests.len()), (&reliability, 1)] {
        println!("{out}");
        if !out.contains(&format!("test result: ok. {n} passed")) {
            bail!("the aarch64 boot tests did not all run and pass:\n{out}");
        }
    }
    Ok(())
}

/// For each architecture: builds the kernel from kernel-config/ into the usual cache, builds it
/// again from scratch in a fresh cache elsewhere and compares the outputs, checks its embedded
/// config; then boots every boot test on the x86_64 one and the aarch64 subset on the other.
fn built_kernel(sh: &Shell) -> Result<()> {
    cmd!(sh, "cargo build --quiet --release -p minke-cli").run()?;
    for arch in ["x86_64", "aarch64"] {
        built_kernel_of(sh, arch)?;
    }
    let _env = sh.push_env("MINKE_TEST_KERNEL", "build");
    cmd!(
        sh,
        "cargo test -p minke-shim --test boot -- --test-threads=2"
    )
    .run()?;
    aarch64_boot_tests(sh, AARCH64_BUILT_KERNEL_TESTS)?;
    Ok(())
}

fn built_kernel_of(sh: &Shell, arch: &str) -> Result<()> {
    let minke = crate::workspace_root().join("target/release/minke");
    // `minke kernel build` prints the kernel, the PVH vmlinux when there is one, then the
    // release: every line but the last is an output path.
    let build = |cache: Option<&std::path::Path>| -> Result<(Vec<String>, f64)> {
        let _env = cache.map(|c| sh.push_env("MINKE_CACHE", c));
        let t = Instant::now();
        let out = cmd!(sh, "{minke} kernel build --arch {arch}").read()?;
        let lines: Vec<String> = out.lines().map(str::to_owned).collect();
        let paths = lines[..lines.len().saturating_sub(1)].to_vec();
        if paths.is_empty() {
            bail!("minke kernel build printed no output path");
        }
        Ok((paths, t.elapsed().as_secs_f64()))
    };
    let (first, first_time) = build(None)?;
    let fresh = tempfile::tempdir()?;
    let (second, second_time) = build(Some(fresh.path()))?;
    if first.len() != second.len() {
        bail!("the two kernel builds produced different outputs: {first:?} vs {second:?}");
    }
    for (x, y) in first.iter().zip(&second) {
        if std::fs::read(x)? != std::fs::read(y)? {
            bail!("the kernel is not reproducible: {x} and {y} differ");
        }
    }
    eprintln!(
        "xtask test: {arch} kernel built twice, same bytes for {} ({first_time:.0} s \
         cached-or-first, {second_time:.0} s from scratch)",
        first.join(", ")
    );
    // The checker reads the built kernel's own embedded config (IKCONFIG inside the kernel)
    // and judges it for the architecture that config names.
    let image = &first[0];
    cmd!(sh, "{minke} kernel check {image}").run()?;
    Ok(())
}
