//! Reproducibility: the default spec built twice — from two copies of the workspace at
//! different paths, with different umask, TZ, LC_ALL, source mtimes and file creation order,
//! and separate caches — gives byte-identical outputs in every format (kernel, initrd,
//! cmdline, manifest, SBOM, tar, UKI, disk, qcow2, ISO), and diffoscope finds nothing
//! between the two.

use std::path::{Path, PathBuf};
use std::process::Command;

const COPIED: &[&str] = &[
    "Cargo.toml",
    "Cargo.lock",
    "init",
    "agents",
    "builder",
    "cli",
    "host-shim",
    "ci",
    "packages",
    "examples",
    "kernel-config",
];

fn copy_tree(src: &Path, dst: &Path, reverse: bool, mtime: &str) {
    let mut entries: Vec<_> = std::fs::read_dir(src)
        .unwrap()
        .map(|e| e.unwrap())
        .collect();
    entries.sort_by_key(|e| e.file_name());
    if reverse {
        entries.reverse();
    }
    for e in entries {
        let name = e.file_name();
        if name == "target" || name == "fuzz" {
            continue;
        }
        let (s, d) = (e.path(), dst.join(&name));
        let ft = e.file_type().unwrap();
        if ft.is_dir() {
            std::fs::create_dir_all(&d).unwrap();
            copy_tree(&s, &d, reverse, mtime);
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&s).unwrap(), &d).unwrap();
        } else {
            std::fs::copy(&s, &d).unwrap();
        }
        let st = Command::new("touch")
            .arg("-h")
            .arg("-d")
            .arg(mtime)
            .arg(&d)
            .status()
            .unwrap();
        assert!(st.success());
    }
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

#[allow(clippy::too_many_arguments)]
/// Builds the default spec (`None`) or a spec of the workspace in every format.
fn build(
    spec: Option<&str>,
    root: &Path,
    reverse: bool,
    mtime: &str,
    umask: &str,
    tz: &str,
    lc: &str,
    target: &Path,
) -> PathBuf {
    let ws = root.join("workspace");
    std::fs::create_dir_all(&ws).unwrap();
    for item in COPIED {
        let s = workspace().join(item);
        let d = ws.join(item);
        if s.is_dir() {
            std::fs::create_dir_all(&d).unwrap();
            copy_tree(&s, &d, reverse, mtime);
        } else {
            std::fs::copy(&s, &d).unwrap();
        }
    }
    let out = root.join("out");
    let mut args = "--format initrd --format tar --format uki --format disk --format qcow2 \
                    --format iso"
        .to_string();
    if let Some(s) = spec {
        args += &format!(" \"{}\"", ws.join(s).display());
    }
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "umask {umask} && exec \"$0\" build -o \"$1\" {args}"
        ))
        .arg(env!("CARGO_BIN_EXE_minke"))
        .arg(&out)
        .current_dir(root)
        .env("MINKE_WORKSPACE", &ws)
        .env("MINKE_CACHE", root.join("cache"))
        .env("MINKE_CARGO_TARGET_DIR", target)
        .env("TZ", tz)
        .env("LC_ALL", lc)
        .env_remove("SOURCE_DATE_EPOCH")
        .status()
        .unwrap();
    assert!(status.success(), "build in {} failed", root.display());
    out
}

#[test]
fn default_image_is_bit_reproducible() {
    // Debian packages are fetched through apt; share the downloaded .debs between the two
    // caches so the test compares builds, not mirror state.
    let tmp = tempfile::tempdir().unwrap();
    let target = workspace().join("target/reproducible-cargo-target");
    let a = tmp.path().join("first/copy");
    let b = tmp.path().join("second-location/elsewhere/copy");
    let out_a = build(
        None,
        &a,
        false,
        "2001-02-03 04:05:06",
        "022",
        "UTC",
        "C",
        &target,
    );
    let out_b = build(
        None,
        &b,
        true,
        "2022-12-31 23:59:59",
        "077",
        "Asia/Kolkata",
        "en_US.UTF-8",
        &target,
    );
    for f in [
        "default-kernel",
        "default-initrd.img",
        "default-cmdline",
        "default.manifest.json",
        "default.spdx.json",
        "default.tar",
        "default.efi",
        "default.img",
        "default.qcow2",
        "default.iso",
    ] {
        let x = std::fs::read(out_a.join(f)).unwrap();
        let y = std::fs::read(out_b.join(f)).unwrap();
        assert!(
            x == y,
            "{f} differs between the two builds (try diffoscope {} {})",
            out_a.join(f).display(),
            out_b.join(f).display()
        );
    }
    // A second opinion from the reproducible-builds tool itself, over the whole directories.
    if support_diffoscope() {
        let o = Command::new("diffoscope")
            .arg("--no-progress")
            .arg("--exclude-directory-metadata=yes")
            .arg(&out_a)
            .arg(&out_b)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "diffoscope found differences:\n{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

/// The aarch64 image (cross-built in-guest binary, Debian's arm64 packages and kernel, the
/// arm64 EFI stub) is byte-identical under the same variation, in every format.
#[test]
fn aarch64_image_is_bit_reproducible() {
    if !support_cross() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let target = workspace().join("target/reproducible-cargo-target");
    let a = tmp.path().join("first/copy");
    let b = tmp.path().join("second-location/elsewhere/copy");
    let spec = Some("examples/aarch64.yml");
    let out_a = build(
        spec,
        &a,
        false,
        "2001-02-03 04:05:06",
        "022",
        "UTC",
        "C",
        &target,
    );
    let out_b = build(
        spec,
        &b,
        true,
        "2022-12-31 23:59:59",
        "077",
        "Asia/Kolkata",
        "en_US.UTF-8",
        &target,
    );
    for f in [
        "aarch64-kernel",
        "aarch64-initrd.img",
        "aarch64-cmdline",
        "aarch64.manifest.json",
        "aarch64.spdx.json",
        "aarch64.tar",
        "aarch64.efi",
        "aarch64.img",
        "aarch64.qcow2",
        "aarch64.iso",
    ] {
        let x = std::fs::read(out_a.join(f)).unwrap();
        let y = std::fs::read(out_b.join(f)).unwrap();
        assert!(x == y, "{f} differs between the two aarch64 builds");
    }
}

/// Whether the aarch64 cross toolchain is here (Debian's rustc and the cross linker).
fn support_cross() -> bool {
    let found = std::path::Path::new("/usr/bin/rustc").exists() && on_path("aarch64-linux-gnu-gcc");
    required_or_skipped(
        found,
        "the aarch64 toolchain is missing (cargo xtask setup installs rustc-web and gcc-aarch64-linux-gnu)",
    )
}

/// Whether diffoscope is installed.
fn support_diffoscope() -> bool {
    required_or_skipped(
        on_path("diffoscope"),
        "diffoscope missing (cargo xtask setup installs diffoscope-minimal)",
    )
}

fn on_path(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `found`, or why not: in CI (`MINKE_REQUIRE_BOOT`) a missing part fails the test instead of
/// skipping it.
fn required_or_skipped(found: bool, why: &str) -> bool {
    if !found {
        if std::env::var("MINKE_REQUIRE_BOOT").is_ok_and(|v| !v.is_empty() && v != "0") {
            panic!("this test must run (MINKE_REQUIRE_BOOT is set) but cannot: {why}");
        }
        eprintln!("SKIPPED (not run, not passed): {why}");
    }
    found
}

/// The SBOM is valid SPDX 2.3 to a real validator (`pyspdxtools` from PyPI's spdx-tools, which
/// `cargo xtask setup` installs under target/), and names what the image is made of.
#[test]
fn the_sbom_passes_an_spdx_validator() {
    let tool = workspace().join("target/spdx-venv/bin/pyspdxtools");
    if !tool.exists() {
        let why = format!("{} missing (cargo xtask setup installs it)", tool.display());
        if std::env::var("MINKE_REQUIRE_BOOT").is_ok_and(|v| !v.is_empty() && v != "0") {
            panic!("this test must run (MINKE_REQUIRE_BOOT is set) but cannot: {why}");
        }
        eprintln!("SKIPPED (not run, not passed): {why}");
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_minke"))
        .arg("build")
        .arg("-o")
        .arg(out.path())
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let sbom = out.path().join("default.spdx.json");
    let o = std::process::Command::new(&tool)
        .arg("-i")
        .arg(&sbom)
        .output()
        .unwrap();
    assert!(
        o.status.success() && o.stdout.is_empty() && o.stderr.is_empty(),
        "pyspdxtools: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let text = std::fs::read_to_string(&sbom).unwrap();
    for needle in [
        "\"spdxVersion\": \"SPDX-2.3\"",
        "pkg:deb/debian/busybox-static@",
        "pkg:cargo/postcard@",
        "\"fileName\": \"./init\"",
        "\"algorithm\": \"SHA1\"",
    ] {
        assert!(text.contains(needle), "the SBOM lacks {needle}");
    }
}
