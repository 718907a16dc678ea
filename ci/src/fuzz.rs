//! `cargo xtask fuzz [--time SECONDS] [--runs N] [TARGET…]`: runs every cargo-fuzz target (or
//! the named ones) for a bounded time or number of runs and reports the executions done.

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

/// Every fuzz target under fuzz/fuzz_targets.
pub const TARGETS: &[&str] = &[
    "frame_decoder",
    "mux_decoder",
    "spec_parser",
    "package_parser",
    "modinfo_parser",
    "elf_resolver",
    "cpio_reader",
    "kernel_config",
];

pub fn run(sh: &Shell, args: &[String]) -> Result<()> {
    let mut time = 10u64;
    let mut runs: Option<u64> = None;
    let mut targets = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--time" => time = it.next().context("--time needs seconds")?.parse()?,
            "--runs" => runs = Some(it.next().context("--runs needs a count")?.parse()?),
            t if TARGETS.contains(&t) => targets.push(t.to_string()),
            other => bail!(
                "unknown fuzz argument {other:?}; targets: {}",
                TARGETS.join(", ")
            ),
        }
    }
    if targets.is_empty() {
        targets = TARGETS.iter().map(|s| s.to_string()).collect();
    }
    if !crate::setup::cargo_bin("cargo-fuzz").exists() {
        cmd!(sh, "cargo install --locked cargo-fuzz")
            .run()
            .context("installing cargo-fuzz")?;
    }
    let _dir = sh.push_dir("fuzz");
    cmd!(sh, "cargo +nightly fuzz build")
        .run()
        .context("building fuzz targets (needs the nightly toolchain)")?;
    let mut report = Vec::new();
    for t in &targets {
        let corpus = format!("corpus/{t}");
        sh.create_dir(&corpus)?;
        let limit = match runs {
            Some(n) => format!("-runs={n}"),
            None => format!("-max_total_time={time}"),
        };
        let out = cmd!(
            sh,
            "cargo +nightly fuzz run {t} {corpus} -- {limit} -print_final_stats=1"
        )
        .ignore_status()
        .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        let execs = stderr
            .lines()
            .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| "?".into());
        if !out.status.success() {
            eprintln!("{stderr}");
            bail!("fuzz target {t} found a crash (artifacts in fuzz/artifacts/{t}); turn it into a regression test");
        }
        report.push(format!("{t:<16} {execs:>12} executions"));
    }
    println!("fuzz results:");
    for r in report {
        println!("  {r}");
    }
    Ok(())
}
