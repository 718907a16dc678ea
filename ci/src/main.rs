//! `cargo xtask`: the project's only script language (setup, test, demo, bench, fuzz).
//!
//! Each task is a module; every task runs from the workspace root through one xshell `Shell`.
//! `cargo xtask test` is exactly what CI runs.

#![forbid(unsafe_code)]

mod bench_boot_aarch64;
mod bench_build;
mod bench_registry;
mod bench_release;
mod bench_reliability;
mod bench_share;
mod bench_vm;
mod ci_example;
mod demo;
mod dist;
mod fuzz;
mod setup;
mod test;
mod tidy;

use std::path::PathBuf;

use anyhow::{bail, Result};
use xshell::Shell;

const USAGE: &str = "\
usage: cargo xtask <task> [options]

tasks:
  setup              install what the project needs (apt packages, cargo tools, default kernel)
  test               setup, then formatting, lints and the whole test suite (what CI runs)
  demo               build the default image, boot it, run commands in it
  dist               target/dist/minke-VERSION-x86_64-linux.tar.gz: minke, installable anywhere
  bench <what>       benchmarks: build | boot | agents | share | registry | release | reliability [DRILL…]
  fuzz [--time N]    run every fuzz target for N seconds (default 10)
";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let sh = Shell::new()?;
    sh.change_dir(workspace_root());
    let rest = args.get(1..).unwrap_or_default();
    match args.first().map(String::as_str) {
        Some("setup") => setup::run(&sh),
        Some("test") => test::run(&sh, rest),
        Some("fuzz") => fuzz::run(&sh, rest),
        Some("demo") => demo::run(&sh),
        Some("dist") => dist::run(&sh, rest),
        Some("bench") => match rest.first().map(String::as_str) {
            Some("build") => bench_build::run(&sh),
            Some("boot") => match rest.get(1..).unwrap_or_default() {
                [] => bench_vm::boot(&sh),
                [flag, arch] if flag == "--arch" && arch == "aarch64" => {
                    bench_boot_aarch64::run(&sh)
                }
                [flag, arch] if flag == "--arch" && arch == "x86_64" => bench_vm::boot(&sh),
                other => bail!("cargo xtask bench boot [--arch x86_64|aarch64], not {other:?}"),
            },
            Some("agents") => bench_vm::agents(&sh),
            Some("share") => bench_share::run(&sh),
            Some("registry") => bench_registry::run(&sh),
            Some("release") => bench_release::run(&sh),
            Some("reliability") => bench_reliability::run(&sh, &rest[1..]),
            other => {
                bail!("unknown benchmark {other:?}: build | boot | agents | share | registry | release | reliability")
            }
        },
        Some("-h" | "--help" | "help") | None => {
            print!("{USAGE}");
            Ok(())
        }
        Some(other) => bail!("unknown task {other:?}\n{USAGE}"),
    }
}

/// The workspace root (this crate lives in `ci/`).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}
