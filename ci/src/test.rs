//! `cargo xtask test`: setup, then formatting, lints and the whole test suite — what CI runs.

use anyhow::Result;
use xshell::{cmd, Shell};

pub fn run(sh: &Shell, args: &[String]) -> Result<()> {
    let quick = args.iter().any(|a| a == "--no-setup");
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
    Ok(())
}
