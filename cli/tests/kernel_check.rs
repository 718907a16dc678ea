//! `minke kernel check` against the real Debian cloud kernel's config (fetched into the cache
//! by `cargo xtask setup`), and against that config with vsock switched off.

use std::path::Path;
use std::process::Command;

use minke::kernel;
use minke::kernel::kconfig::{Report, Verdict};
use minke::layer::Cache;

fn verdict<'a>(r: &'a Report, option: &str) -> (&'a Verdict, bool) {
    let f = r
        .findings
        .iter()
        .find(|f| f.req.option == option)
        .unwrap_or_else(|| panic!("{option} is not in the report:\n{}", r.render(true)));
    (&f.verdict, f.fatal)
}

#[test]
fn debian_cloud_kernel_verdicts() {
    let r = kernel::check_kernel(None, None, None, &Cache::default_location(), &|_| {}).unwrap();
    let text = r.render(true);
    assert!(!r.fatal(), "{text}");
    assert!(r.config_source.contains("config-"), "{text}");
    // Modules the default image carries.
    for (opt, module) in [
        ("CONFIG_VSOCKETS", "vsock"),
        ("CONFIG_VIRTIO_VSOCKETS", "vmw_vsock_virtio_transport"),
        ("CONFIG_VIRTIO_PCI", "virtio_pci"),
        ("CONFIG_VIRTIO_BLK", "virtio_blk"),
        ("CONFIG_ACPI_BUTTON", "button"),
    ] {
        assert_eq!(
            verdict(&r, opt),
            (&Verdict::Module(module.into()), false),
            "{text}"
        );
    }
    // Built in.
    for opt in [
        "CONFIG_EXT4_FS",
        "CONFIG_UNIX",
        "CONFIG_SERIAL_8250_CONSOLE",
        "CONFIG_RD_GZIP",
    ] {
        assert_eq!(verdict(&r, opt), (&Verdict::Ok, false), "{opt}\n{text}");
    }
    // Modules the default image does not load (it has no binfmt agent): reported, not fatal.
    assert_eq!(
        verdict(&r, "CONFIG_BINFMT_MISC"),
        (&Verdict::ModuleNotInImage("binfmt_misc".into()), false)
    );
    // Debian's choices that the hardening fragment forbids, and no IKCONFIG: advisory.
    assert_eq!(
        verdict(&r, "CONFIG_KEXEC"),
        (&Verdict::Forbidden("y".into()), false)
    );
    assert_eq!(verdict(&r, "CONFIG_IKCONFIG"), (&Verdict::Missing, false));
    assert_eq!(verdict(&r, "CONFIG_COMPAT_BRK"), (&Verdict::Ok, false));
    // Every line names its fragment.
    assert!(text.contains("kernel-config/base.config:"), "{text}");
}

#[test]
fn a_kernel_without_vsock_fails_the_check_with_the_fragment_line() {
    let cache = Cache::default_location();
    let real = kernel::check_kernel(None, None, None, &cache, &|_| {})
        .unwrap()
        .config_source;
    let text = std::fs::read_to_string(&real).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cut: String = text
        .lines()
        .map(|l| {
            if l.starts_with("CONFIG_VSOCKETS=") {
                "# CONFIG_VSOCKETS is not set".to_owned()
            } else {
                l.to_owned()
            }
        })
        .map(|l| l + "\n")
        .collect();
    let cfg = dir.path().join("config-novsock");
    std::fs::write(&cfg, cut).unwrap();

    let r = kernel::check_kernel(None, cfg.to_str(), None, &cache, &|_| {}).unwrap();
    assert!(r.fatal());
    assert_eq!(verdict(&r, "CONFIG_VSOCKETS"), (&Verdict::Missing, true));

    let out = Command::new(env!("CARGO_BIN_EXE_minke"))
        .args(["kernel", "check"])
        .arg(&cfg)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let line = stdout
        .lines()
        .find(|l| l.contains("CONFIG_VSOCKETS=y"))
        .unwrap_or("");
    assert!(
        line.starts_with("error")
            && line.contains("missing")
            && line.contains("kernel-config/base.config:"),
        "{stdout}"
    );
    assert!(stdout.contains("cannot work"), "{stdout}");
}

#[test]
fn build_refuses_a_kernel_that_cannot_run_the_image() {
    // The corpus case builds the minimal image against a kernel whose config lacks vsock; the
    // bad-spec harness checks the exit code and that no output is written, this checks the
    // report's content.
    let spec = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../builder/tests/bad-specs/kernel-without-vsock.yml");
    let out = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_minke"))
        .arg("build")
        .arg(&spec)
        .arg("-o")
        .arg(out.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    for want in [
        "CONFIG_VSOCKETS=y",
        "CONFIG_VIRTIO_VSOCKETS=y",
        "kernel-config/base.config:",
        "cannot run this image",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
}
