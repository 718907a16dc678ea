//! A kernel given as a file whose modules tree lies beside it (an unpacked Debian kernel
//! package: `root/boot/vmlinuz-V` and `root/lib/modules/V`, with no `modules.dep`) is judged
//! like the package: a module the builder would put in the image counts as carried.
//!
//! Needs the Debian kernel package in the cache (`cargo xtask setup` fetches it). Without it
//! the test fails when `MINKE_REQUIRE_BOOT=1` (as `cargo xtask test` sets) and is skipped,
//! loudly, otherwise.

use std::path::{Path, PathBuf};
use std::process::Command;

use minke::kernel;
use minke::kernel::kconfig::{Report, Verdict};
use minke::layer::Cache;

/// `root/` of the unpacked cached kernel package in `dir`, and the kernel's release.
fn unpacked_kernel(dir: &Path) -> Option<(PathBuf, String)> {
    let Some(deb) = minke::sources::deb::cached_kernel_deb() else {
        let msg = format!(
            "no Debian kernel package (linux-image-*-cloud-amd64) in {}: run `cargo xtask setup`",
            minke::sources::deb::debs_dir().display()
        );
        if std::env::var_os("MINKE_REQUIRE_BOOT").is_some_and(|v| v == "1") {
            panic!("{msg}");
        }
        eprintln!("skipped: {msg}");
        return None;
    };
    let root = dir.join("root");
    let files = minke::sources::deb::kernel_from_deb(&deb, &root).unwrap();
    assert_eq!(
        files.modules_dir,
        root.join("lib/modules").join(&files.version)
    );
    assert!(
        !files.modules_dir.join("modules.dep").exists(),
        "a kernel package ships no modules.dep; this test is about that case"
    );
    Some((root, files.version))
}

fn module_verdict<'a>(r: &'a Report, option: &str) -> &'a Verdict {
    &r.findings
        .iter()
        .find(|f| f.req.option == option)
        .unwrap_or_else(|| panic!("{option} is not in the report:\n{}", r.render(true)))
        .verdict
}

#[test]
fn a_kernel_file_with_its_modules_beside_it_passes_like_its_package() {
    let dir = tempfile::tempdir().unwrap();
    let Some((root, version)) = unpacked_kernel(dir.path()) else {
        return;
    };
    let vmlinuz = root.join("boot").join(format!("vmlinuz-{version}"));
    let cache = Cache::default_location();

    // The library: the tree beside the file is found and the image's closure counts.
    let r = kernel::check_kernel(None, vmlinuz.to_str(), None, &cache, &|_| {}).unwrap();
    let text = r.render(true);
    assert!(!r.fatal(), "{text}");
    assert!(
        !r.findings
            .iter()
            .any(|f| matches!(f.verdict, Verdict::ModuleNotInImage(_)) && f.fatal),
        "{text}"
    );
    for (opt, module) in [
        ("CONFIG_VSOCKETS", "vsock"),
        ("CONFIG_VIRTIO_VSOCKETS", "vmw_vsock_virtio_transport"),
    ] {
        assert_eq!(
            module_verdict(&r, opt),
            &Verdict::Module(module.into()),
            "{text}"
        );
    }

    // The command: exit 0, the verdict passes, nothing reported "not in the image".
    let out = Command::new(env!("CARGO_BIN_EXE_minke"))
        .args(["kernel", "check"])
        .arg(&vmlinuz)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("the kernel meets every required option"),
        "{stdout}"
    );
    assert!(!stdout.lines().any(|l| l.starts_with("error")), "{stdout}");

    // A spec naming the file (no `modules:`) finds the same tree.
    let spec = dir.path().join("k.yml");
    std::fs::write(
        &spec,
        format!("name: k\nkernel:\n  path: root/boot/vmlinuz-{version}\n"),
    )
    .unwrap();
    let s = minke::spec::load(Some(&spec)).unwrap();
    let k = kernel::resolve_kernel(&s, &cache, 0, &|_| {}).unwrap();
    assert_eq!(k.version, version);
    assert_eq!(
        k.modules_dir.as_deref().map(|p| p.canonicalize().unwrap()),
        Some(
            root.join("lib/modules")
                .join(&version)
                .canonicalize()
                .unwrap()
        )
    );
    let r = kernel::check_kernel(Some(&spec), None, None, &cache, &|_| {}).unwrap();
    assert!(!r.fatal(), "{}", r.render(true));
}

#[test]
fn the_same_kernel_without_its_modules_tree_does_not_pass() {
    let dir = tempfile::tempdir().unwrap();
    let Some((root, version)) = unpacked_kernel(dir.path()) else {
        return;
    };
    // The kernel and its config alone, no lib/modules beside them.
    let bare = dir.path().join("bare/boot");
    std::fs::create_dir_all(&bare).unwrap();
    for f in [format!("vmlinuz-{version}"), format!("config-{version}")] {
        std::fs::copy(root.join("boot").join(&f), bare.join(&f)).unwrap();
    }
    let r = kernel::check_kernel(
        None,
        bare.join(format!("vmlinuz-{version}")).to_str(),
        None,
        &Cache::default_location(),
        &|_| {},
    )
    .unwrap();
    assert!(r.fatal(), "{}", r.render(true));
    assert_eq!(
        module_verdict(&r, "CONFIG_VSOCKETS"),
        &Verdict::ModuleNotInImage("vsock".into())
    );
}
