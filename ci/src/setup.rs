//! `cargo xtask setup`: installs what the project needs on a Debian/Ubuntu machine,
//! idempotently, and quickly when everything is already there, saying what it installs.
//! Packages of other architectures (the cross-arch containers' busybox) are not installed
//! here: the builder fetches them through a private apt root, so the host's dpkg keeps its
//! architectures.

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

/// Debian packages and a command (or a path pattern, when it starts with `/`) each provides,
/// checked to skip apt when all are present.
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
    // fsck.erofs and dump.erofs check the EROFS writer's images in its tests.
    ("erofs-utils", "fsck.erofs"),
    ("busybox-static", "busybox"),
    ("xz-utils", "xz"),
    ("socat", "socat"),
    // `minke kernel build`: the source and what building a kernel takes.
    ("linux-source", "/usr/src/linux-source-*.tar.xz"),
    ("make", "make"),
    ("gcc", "gcc"),
    ("bc", "bc"),
    ("bison", "bison"),
    ("flex", "flex"),
    ("lz4", "lz4"),
    ("libelf-dev", "/usr/include/libelf.h"),
    ("libssl-dev", "/usr/include/openssl/ssl.h"),
    // What `cargo install virtiofsd` links against.
    ("libseccomp-dev", "/usr/include/seccomp.h"),
    ("libcap-ng-dev", "/usr/include/cap-ng.h"),
    // User-mode networking without root (`minke run --net user`).
    ("passt", "passt"),
    // Registry tests: a real registry, a real client filling it, basic auth's password file.
    ("docker-registry", "docker-registry"),
    ("skopeo", "skopeo"),
    ("apache2-utils", "htpasswd"),
    // Release formats: the EFI stub a UKI is made of, the firmware that boots UKIs, disks and
    // ISOs under QEMU, the ISO writer, and the tool that compares two builds' outputs.
    (
        "systemd-boot-efi",
        "/usr/lib/systemd/boot/efi/linuxx64.efi.stub",
    ),
    ("ovmf", "/usr/share/ovmf/OVMF.fd"),
    ("xorriso", "xorriso"),
    ("diffoscope-minimal", "diffoscope"),
    // aarch64 guests: their emulator, and what cross-builds the in-guest binary — Debian's
    // rustc (its aarch64 standard library is fetched by the builder, not installed) and the
    // cross linker with its static C library.
    ("qemu-system-arm", "qemu-system-aarch64"),
    // The firmware that boots aarch64 release formats (AAVMF).
    ("qemu-efi-aarch64", "/usr/share/AAVMF/AAVMF_CODE.fd"),
    ("rustc-web", "/usr/bin/rustc"),
    ("gcc-aarch64-linux-gnu", "aarch64-linux-gnu-gcc"),
    ("libc6-dev-arm64-cross", "/usr/aarch64-linux-gnu/lib/libc.a"),
];

/// Tools installed with `cargo install --locked`: (crate, binary).
const CARGO: &[(&str, &str)] = &[
    ("vhost-device-vsock", "vhost-device-vsock"),
    ("threecpio", "3cpio"),
    // Shared directories (virtio-fs); not packaged in Debian 12.
    ("virtiofsd", "virtiofsd"),
];

fn have(sh: &Shell, bin: &str) -> bool {
    if bin.starts_with('/') {
        return glob::glob(bin).is_ok_and(|mut g| g.next().is_some());
    }
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
    cmd!(sh, "cargo run --quiet -p minke-cli -- kernel modules --kernel linux-image-cloud-amd64 --closure virtio_pci")
        .quiet()
        .ignore_stdout()
        .run()
        .context("fetching the default kernel")?;
    arm64_rootfs().context("making the arm64 container image of the cross-arch demo")?;
    spdx_validator(sh).context("installing the SPDX validator (pip install spdx-tools)")?;
    eprintln!("xtask setup: done");
    Ok(())
}

/// Where the SBOM tests find a real SPDX validator: `pyspdxtools` from PyPI's spdx-tools, in
/// a virtual environment of its own under target/.
pub fn spdx_validator_path() -> std::path::PathBuf {
    crate::workspace_root().join("target/spdx-venv/bin/pyspdxtools")
}

fn spdx_validator(sh: &Shell) -> Result<()> {
    let tool = spdx_validator_path();
    if tool.exists() {
        return Ok(());
    }
    let venv = tool
        .parent()
        .and_then(|p| p.parent())
        .context("venv path")?;
    eprintln!(
        "xtask setup: pip install spdx-tools (into {})",
        venv.display()
    );
    cmd!(sh, "python3 -m venv {venv}").run()?;
    let pip = venv.join("bin/pip");
    cmd!(sh, "{pip} install --quiet spdx-tools").run()?;
    Ok(())
}

fn apt(sh: &Shell) -> Result<()> {
    let missing: Vec<&str> = APT
        .iter()
        .filter(|(_, bin)| !have(sh, bin))
        .map(|(p, _)| *p)
        .collect();
    if missing.is_empty() {
        eprintln!(
            "xtask setup: the {} Debian packages the project needs are installed",
            APT.len()
        );
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing packages {missing:?}: run as root, or install them with `sudo apt-get install --no-install-recommends {}`",
            missing.join(" ")
        );
    }
    eprintln!("xtask setup: apt-get install {}", missing.join(" "));
    let _env = sh.push_env("DEBIAN_FRONTEND", "noninteractive");
    // A mirror mid-sync can fail one index (a foreign arch's, say) while the rest is fine:
    // carry on and let the install say whether what we need is there.
    if let Err(e) = cmd!(sh, "apt-get update -qq").run() {
        eprintln!("xtask setup: warning: apt-get update: {e}; continuing with the indexes apt has");
    }
    if !missing.is_empty() {
        cmd!(
            sh,
            "apt-get install -y -qq --no-install-recommends {missing...}"
        )
        .run()
        .context("apt-get install")?;
    }
    // Installing Debian's qemu-system-x86 removes a newer qemu-utils (from backports) that
    // does not match it: a second pass installs the matching one.
    let again: Vec<&str> = APT
        .iter()
        .filter(|(_, bin)| !have(sh, bin))
        .map(|(p, _)| *p)
        .collect();
    if !again.is_empty() {
        eprintln!(
            "xtask setup: apt-get install {} (second pass)",
            again.join(" ")
        );
        cmd!(
            sh,
            "apt-get install -y -qq --no-install-recommends {again...}"
        )
        .run()
        .context("apt-get install")?;
    }
    Ok(())
}

/// The cross-arch demo's arm64 container: an OCI image layout made from Debian's arm64
/// busybox-static, in the cache where `packages/arm64-busybox-rootfs` finds it.
fn arm64_rootfs() -> Result<()> {
    use minke::archive::tree::{Node, Tree};
    let cache = minke::layer::Cache::default_location();
    let dest = cache.dir("oci").join("arm64-busybox");
    if dest.join("index.json").exists() {
        return Ok(());
    }
    eprintln!("xtask setup: arm64 container image");
    let deb = minke::sources::deb::pins::fetch(&cache, "busybox-static", "arm64")?;
    let full = minke::sources::deb::unpack(&deb.path)?;
    let busybox = full
        .get("bin/busybox")
        .cloned()
        .context("busybox-static:arm64 has no bin/busybox")?;
    let mut tree = Tree::new();
    tree.insert("bin/busybox", busybox)?;
    for applet in [
        "sh", "uname", "ls", "cat", "echo", "ps", "hostname", "id", "true", "false", "env",
        "sleep", "mount",
    ] {
        tree.insert(&format!("bin/{applet}"), Node::symlink("busybox"))?;
    }
    for d in ["proc", "dev", "tmp", "etc", "root"] {
        tree.insert(d, Node::dir(if d == "tmp" { 0o1777 } else { 0o755 }))?;
    }
    tree.insert(
        "etc/passwd",
        Node::file(0o644, &b"root:x:0:0:root:/root:/bin/sh\n"[..]),
    )?;
    tree.insert("etc/hostname", Node::file(0o644, &b"arm64\n"[..]))?;
    let tmp = cache.dir("oci").join(".arm64-busybox.tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    minke::sources::oci::write_oci_layout(&tmp, &tree, "arm64")?;
    std::fs::rename(&tmp, &dest)?;
    Ok(())
}
