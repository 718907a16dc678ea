//! The boot-test harness shared by every boot-test binary (`boot.rs`, `reliability.rs`): the
//! test image, the skip logic, VM configs, booting with explicit readiness, and exec helpers.
//!
//! The image comes from [`test_image`]: `MINKE_TEST_IMAGE=DIR/NAME` names builder output
//! (`NAME-kernel`, `NAME-initrd.img`, optional `NAME-cmdline`); otherwise the harness builds
//! `tests/images/boot-test.yml` with this workspace's `minke build`. `MINKE_TEST_KERNEL`
//! boots every image on another kernel (see [`test_kernel`]).

// Each test binary compiles its own copy of this module and uses only part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use minke_shim::binaries::{self, Tool};
use minke_shim::{Accel, Transport, Vm, VmConfig};

/// Generous: a loaded 2-core machine under TCG boots in ~3 s, allow ten times that.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A bootable image.
#[derive(Debug, Clone)]
pub struct TestImage {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub cmdline: Option<String>,
    /// Its manifest says the kernel boots on QEMU's microvm.
    pub microvm: bool,
}

impl TestImage {
    /// The image `minke build` wrote at `DIR/NAME` (`prefix`).
    pub fn at(prefix: &str) -> TestImage {
        let p = prefix;
        let manifest: Option<serde_json::Value> = std::fs::read(format!("{p}.manifest.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        TestImage {
            kernel: format!("{p}-kernel").into(),
            initrd: format!("{p}-initrd.img").into(),
            cmdline: std::fs::read_to_string(format!("{p}-cmdline"))
                .ok()
                .map(|s| s.trim().to_string()),
            microvm: manifest
                .and_then(|m| m.get("microvm").and_then(|v| v.as_bool()))
                .unwrap_or(false),
        }
    }

    /// A config booting this image (the machine left to the shim, as `minke run` does).
    pub fn config(&self, name: &str) -> VmConfig {
        let mut c = VmConfig::new(name, &self.kernel, &self.initrd);
        if let Some(cl) = &self.cmdline {
            c.cmdline = cl.clone();
        }
        c.microvm_kernel = self.microvm;
        // On microvm `minke run` enters a bzImage through its PVH note; so do the tests.
        if self.microvm && test_arch() == minke_protocol::arch::Arch::X86_64 {
            let cache = minke::layer::Cache::default_location();
            c.pvh_kernel = minke::kernel::pvh::cached(&self.kernel, None, &cache)
                .unwrap_or_else(|e| panic!("the PVH kernel of {}: {e}", self.kernel.display()));
        }
        c
    }
}

/// The guest architecture the tests build and boot: `MINKE_TEST_ARCH` (x86_64 or aarch64),
/// else x86_64.
pub fn test_arch() -> minke_protocol::arch::Arch {
    std::env::var("MINKE_TEST_ARCH")
        .ok()
        .filter(|a| !a.is_empty())
        .map(|a| {
            minke_protocol::arch::Arch::parse(&a)
                .unwrap_or_else(|| panic!("MINKE_TEST_ARCH={a}: write x86_64 or aarch64"))
        })
        .unwrap_or(minke_protocol::arch::Arch::X86_64)
}

/// The image under test, or why there is none.
pub fn test_image() -> Result<TestImage, String> {
    static IMAGE: OnceLock<Result<TestImage, String>> = OnceLock::new();
    IMAGE.get_or_init(find_image).clone()
}

fn find_image() -> Result<TestImage, String> {
    let prefix = match std::env::var_os("MINKE_TEST_IMAGE") {
        Some(p) => PathBuf::from(p).to_string_lossy().into_owned(),
        None => build_test_image()?,
    };
    let img = TestImage::at(&prefix);
    if img.kernel.exists() && img.initrd.exists() {
        Ok(img)
    } else {
        Err(format!(
            "{prefix}-kernel or {prefix}-initrd.img missing: build the image with `minke build`"
        ))
    }
}

/// Builds `tests/images/boot-test.yml` with the `minke` CLI of this workspace (through the
/// layer cache, so only the first run pays) and returns its output prefix.
fn build_test_image() -> Result<String, String> {
    build_image("host-shim/tests/images/boot-test.yml", "boot-test")
}

/// The kernel the images boot instead of their spec's, from `MINKE_TEST_KERNEL` (a
/// `minke build --kernel` value: `build` boots every test on a kernel built from
/// kernel-config/, with no modules).
pub fn test_kernel() -> Option<String> {
    std::env::var("MINKE_TEST_KERNEL")
        .ok()
        .filter(|k| !k.is_empty())
}

/// Whether the images boot a kernel without modules: one built from kernel-config/, or a
/// kernel image given by path (such as a bzImage built by `minke kernel build`).
pub fn modules_built_in() -> bool {
    test_kernel().is_some_and(|k| !k.starts_with("package:"))
}

/// Builds a spec of this workspace (path relative to the workspace root) with `minke build`;
/// returns the output prefix `DIR/NAME`.
pub fn build_image(spec: &str, name: &str) -> Result<String, String> {
    let ws = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or("no workspace")?;
    let spec = ws.join(spec);
    let kernel = test_kernel();
    let suffix = if kernel.is_some() {
        "-other-kernel"
    } else {
        ""
    };
    let arch = test_arch();
    let arch_suffix = match arch {
        minke_protocol::arch::Arch::X86_64 => String::new(),
        other => format!("-{other}"),
    };
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("{name}-image{suffix}{arch_suffix}"));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut c = Command::new(cargo);
    c.current_dir(ws)
        .args(["run", "--quiet", "-p", "minke-cli", "--", "build"])
        .arg(&spec)
        .arg("-o")
        .arg(&out);
    if let Some(k) = kernel {
        c.arg("--kernel").arg(k);
    }
    c.args(["--arch", arch.name()]);
    run(&mut c).map_err(|e| format!("cannot build {}: {e}", spec.display()))?;
    Ok(out.join(name).to_string_lossy().into_owned())
}

fn run(c: &mut Command) -> Result<String, String> {
    let o = c.output().map_err(|e| format!("{c:?}: {e}"))?;
    if !o.status.success() {
        return Err(format!("{c:?}: {}", String::from_utf8_lossy(&o.stderr)));
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// Why boot tests cannot run here, if they cannot.
pub fn skip_reason() -> Option<String> {
    for t in [Tool::QemuSystemFor(test_arch()), Tool::VhostDeviceVsock] {
        if let Err(e) = binaries::find(t) {
            return Some(e.to_string());
        }
    }
    test_image().err()
}

/// Why the serial-transport tests cannot run here (they need no vhost-device-vsock).
pub fn serial_skip_reason() -> Option<String> {
    if let Err(e) = binaries::find(Tool::QemuSystemFor(test_arch())) {
        return Some(e.to_string());
    }
    test_image().err()
}

/// Set (to anything but `0`) by `cargo xtask test`: a boot test that cannot run fails.
pub const REQUIRE_BOOT_ENV: &str = "MINKE_REQUIRE_BOOT";

/// What a test that cannot boot does: under [`REQUIRE_BOOT_ENV`] (CI) it fails, saying why;
/// otherwise (a developer's plain `cargo test`) it says loudly that it skipped and returns.
pub fn cannot_boot(why: &str) {
    if std::env::var(REQUIRE_BOOT_ENV).is_ok_and(|v| !v.is_empty() && v != "0") {
        panic!("this boot test must run ({REQUIRE_BOOT_ENV} is set) but cannot: {why}");
    }
    eprintln!("SKIPPED (not run, not passed): {why}");
}

/// Returns from the test when boot tests cannot run here, or fails it under
/// [`REQUIRE_BOOT_ENV`]; `require_boot!(serial)` for the tests that need no vsock backend.
macro_rules! require_boot {
    () => {
        if let Some(why) = $crate::common::skip_reason() {
            $crate::common::cannot_boot(&why);
            return;
        }
    };
    (serial) => {
        if let Some(why) = $crate::common::serial_skip_reason() {
            $crate::common::cannot_boot(&why);
            return;
        }
    };
}
pub(crate) use require_boot;

/// A config for the test image: TCG, vhost-user vsock, state in `state`.
pub fn config(name: &str, state: &Path) -> VmConfig {
    let img = test_image().expect("checked by require_boot");
    let mut c = img.config(name);
    c.state_dir = Some(state.to_path_buf());
    c.transport = Transport::VhostUser;
    c.accel = Accel::Tcg;
    c.arch = test_arch();
    c
}

/// Boots `c` and waits for the agent's handshake; panics with the console log on failure.
pub fn boot(c: VmConfig) -> Vm {
    let t0 = Instant::now();
    let mut vm =
        Vm::boot(c).unwrap_or_else(|e| panic!("boot failed: {e}", e = minke_shim::error_chain(&e)));
    vm.wait_ready(READY_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}", e = minke_shim::error_chain(&e)));
    eprintln!(
        "{}: QEMU start → agent ready {:?} (boot() call to ready {:?}, {:?})",
        vm.name(),
        vm.ready_after().unwrap(),
        t0.elapsed(),
        vm.accel()
    );
    vm
}

/// Runs `argv`, expects exit code 0 and returns its stdout; panics with the console log when
/// the exec fails.
pub fn out(vm: &Vm, argv: &[&str]) -> String {
    let o = vm.exec_output(argv).unwrap_or_else(|e| {
        panic!(
            "{argv:?}: {e}\nconsole:\n{}",
            vm.console_tail(),
            e = minke_shim::error_chain(&e)
        )
    });
    assert_eq!(
        o.code,
        0,
        "{argv:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}
