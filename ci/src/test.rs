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
    // The boot tests use the default image, built here once through the CLI.
    let image_dir = crate::workspace_root().join("target/minke-test-image");
    cmd!(sh, "cargo run --quiet -p minke -- build -o {image_dir}").run()?;
    let _img = sh.push_env("MINKE_TEST_IMAGE", &image_dir);
    cmd!(sh, "cargo test --workspace -- --test-threads=2").run()?;
    Ok(())
}
