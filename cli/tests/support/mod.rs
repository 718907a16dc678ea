//! Shared parts of the CLI tests.

#![allow(dead_code)]

pub mod registry;

use std::path::Path;
use std::process::Command;

/// Whether every one of `tools` is installed (on PATH or in `~/.cargo/bin`). When one is
/// missing the test cannot run: under `MINKE_REQUIRE_BOOT` (set by `cargo xtask test`, so in
/// CI) that fails it; otherwise it says loudly that it skipped.
pub fn require_tools(tools: &[&str]) -> bool {
    let found = |bin: &&str| {
        if bin.starts_with('/') {
            return Path::new(bin).exists();
        }
        Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {bin}"))
            .output()
            .is_ok_and(|o| o.status.success())
            || std::env::var_os("HOME")
                .is_some_and(|h| Path::new(&h).join(".cargo/bin").join(bin).exists())
    };
    let missing: Vec<&str> = tools.iter().filter(|t| !found(t)).copied().collect();
    if missing.is_empty() {
        return true;
    }
    let why = format!(
        "{} missing (cargo xtask setup installs them)",
        missing.join(", ")
    );
    if std::env::var("MINKE_REQUIRE_BOOT").is_ok_and(|v| !v.is_empty() && v != "0") {
        panic!("this test must run (MINKE_REQUIRE_BOOT is set) but cannot: {why}");
    }
    eprintln!("SKIPPED (not run, not passed): {why}");
    false
}

/// What the release formats need beyond a boot: the EFI stub, the firmware, the ISO writer.
pub const FORMAT_TOOLS: &[&str] = &[
    "/usr/lib/systemd/boot/efi/linuxx64.efi.stub",
    "/usr/share/ovmf/OVMF.fd",
    "xorriso",
    "qemu-img",
    "mke2fs",
    "e2fsck",
];

/// What a boot through the `minke` CLI needs.
pub const BOOT_TOOLS: &[&str] = &["qemu-system-x86_64", "vhost-device-vsock"];
