//! `cargo xtask setup`: installs what the project needs on a Debian/Ubuntu machine,
//! idempotently, and quickly when everything is already there.

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

/// Debian packages and a command each provides (checked to skip apt when all are present).
const APT: &[(&str, &str)] = &[
    ("qemu-system-x86", "qemu-system-x86_64"),
    ("qemu-utils", "qemu-img"),
    ("qemu-user-static", "qemu-aarch64-static"),
    ("cpio", "cpio"),
    ("libarchive-tools", "bsdtar"),
    ("pigz", "pigz"),
    ("zstd", "zstd"),
    ("kmod", "depmod"),
    ("pax-utils", "lddtree"),
    ("e2fsprogs", "mke2fs"),
    ("busybox-static", "busybox"),
    ("xz-utils", "xz"),
    ("socat", "socat"),
];

/// Tools installed with `cargo install --locked`: (crate, binary).
const CARGO: &[(&str, &str)] = &[
    ("vhost-device-vsock", "vhost-device-vsock"),
    ("threecpio", "3cpio"),
];

/// Foreign Debian architectures whose busybox-static the cross-arch tests fetch.
pub const FOREIGN_ARCHES: &[&str] = &["arm64", "armhf", "s390x"];

fn have(sh: &Shell, bin: &str) -> bool {
    cmd!(sh, "sh -c 'command -v \"$0\"' {bin}")
        .quiet()
        .ignore_stdout()
        .ignore_stderr()
        .run()
        .is_ok()
        || cargo_bin(bin).exists()
}

/// `~/.cargo/bin/NAME` (or under $CARGO_HOME).
pub fn cargo_bin(name: &str) -> std::path::PathBuf {
    let home = std::env::var("CARGO_HOME")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| {
            std::path::PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cargo")
        });
    home.join("bin").join(name)
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

pub fn run(sh: &Shell) -> Result<()> {
    apt(sh)?;
    for (krate, bin) in CARGO {
        if !have(sh, bin) {
            eprintln!("xtask setup: cargo install --locked {krate}");
            cmd!(sh, "cargo install --locked {krate}")
                .run()
                .with_context(|| format!("installing {krate}"))?;
        }
    }
    // The default kernel, into the cache, through the builder itself.
    eprintln!("xtask setup: default kernel");
    cmd!(sh, "cargo run --quiet -p minke -- kernel modules --kernel linux-image-cloud-amd64 --closure virtio_pci")
        .quiet()
        .ignore_stdout()
        .run()
        .context("fetching the default kernel")?;
    eprintln!("xtask setup: done");
    Ok(())
}

fn apt(sh: &Shell) -> Result<()> {
    let missing: Vec<&str> = APT
        .iter()
        .filter(|(_, bin)| !have(sh, bin))
        .map(|(p, _)| *p)
        .collect();
    let arches = cmd!(sh, "dpkg --print-foreign-architectures")
        .read()
        .unwrap_or_default();
    let missing_arches: Vec<&str> = FOREIGN_ARCHES
        .iter()
        .copied()
        .filter(|a| !arches.lines().any(|l| l == *a))
        .collect();
    if missing.is_empty() && missing_arches.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing packages {missing:?}: run as root, or install them with `sudo apt-get install --no-install-recommends {}`",
            missing.join(" ")
        );
    }
    for a in &missing_arches {
        cmd!(sh, "dpkg --add-architecture {a}").run()?;
    }
    eprintln!("xtask setup: apt-get install {}", missing.join(" "));
    let _env = sh.push_env("DEBIAN_FRONTEND", "noninteractive");
    cmd!(sh, "apt-get update -qq")
        .run()
        .context("apt-get update")?;
    if !missing.is_empty() {
        cmd!(
            sh,
            "apt-get install -y -qq --no-install-recommends {missing...}"
        )
        .run()
        .context("apt-get install")?;
    }
    Ok(())
}
