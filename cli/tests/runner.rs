//! `cargo test` through `minke run --runner` (cargo's `target.<triple>.runner`): the example
//! crate `examples/runner-demo` runs its tests in a guest of the default image — they read a
//! fixture through the shared crate directory and check that PID 1 is minke's init — and a
//! failing test's status comes back as cargo's failure.

mod support;

use std::path::Path;
use std::process::Command;

/// `cargo test` of the example crate with `minke` first in PATH, as its `.cargo/config.toml`
/// expects; returns the exit code and the combined output.
fn cargo_test_demo(extra: &[&str]) -> (Option<i32>, String) {
    let ws = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let demo = ws.join("examples/runner-demo");
    let minke = Path::new(env!("CARGO_BIN_EXE_minke"));
    let path = format!(
        "{}:{}",
        minke.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut c = Command::new(cargo);
    // The outer cargo's variables describe minke-cli, not the demo crate.
    for (k, _) in std::env::vars() {
        if k.starts_with("CARGO_") && k != "CARGO_HOME" {
            c.env_remove(k);
        }
    }
    let out = c
        .current_dir(&demo)
        .env("PATH", path)
        .env(
            "CARGO_TARGET_DIR",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("runner-demo"),
        )
        .args(["test", "--quiet"])
        .args(extra)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

fn can_boot() -> bool {
    support::require_tools(&["qemu-system-x86_64", "vhost-device-vsock", "virtiofsd"])
}

#[test]
fn cargo_test_runs_in_a_guest_and_failures_come_back() {
    if !can_boot() {
        return;
    }
    let (code, out) = cargo_test_demo(&[]);
    assert_eq!(
        code,
        Some(0),
        "cargo test through the runner failed:\n{out}"
    );
    assert!(
        out.contains("3 passed"),
        "the three guest tests did not all run:\n{out}"
    );
    let (code, out) = cargo_test_demo(&["--features", "fail"]);
    assert_ne!(code, Some(0), "a failing guest test passed:\n{out}");
    assert!(
        out.contains("fails_on_purpose") && out.contains("FAILED"),
        "the failure is not reported:\n{out}"
    );
}
