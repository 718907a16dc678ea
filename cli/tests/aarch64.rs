//! aarch64 images built on this host and booted under qemu-system-aarch64 (`-M virt`, TCG on
//! an x86_64 host): `uname -m` says aarch64; exit codes, piped stdin, files handed to the guest
//! and the time sync agent work; the data disk keeps what the guest wrote across boots; both
//! transports (vhost-user vsock and virtio-serial) carry the agents; x86_64 binaries run in it
//! through QEMU user emulation.

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const TOOLS: &[&str] = &[
    "qemu-system-aarch64",
    "/usr/bin/rustc",
    "aarch64-linux-gnu-gcc",
    "vhost-device-vsock",
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn run(
    image: &Path,
    home: &Path,
    extra: &[&str],
    cmd: &str,
    stdin: &[u8],
) -> (Option<i32>, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_minke"))
        .arg("run")
        .arg(image)
        .args(["--accel", "tcg", "--name", "arm-guest"])
        .args(extra)
        .args(["--", "sh", "-c", cmd])
        .env("XDG_STATE_HOME", home.join("state"))
        .env("XDG_DATA_HOME", home.join("data"))
        .env(
            "MINKE_CARGO_TARGET_DIR",
            workspace().join("target/reproducible-cargo-target"),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Builds `examples/aarch64.yml` into `out` with `extra` arguments.
fn build_example(out: &Path, extra: &[&str]) {
    let o = Command::new(env!("CARGO_BIN_EXE_minke"))
        .args(["build"])
        .arg(workspace().join("examples/aarch64.yml"))
        .arg("-o")
        .arg(out)
        .args(extra)
        .env(
            "MINKE_CARGO_TARGET_DIR",
            workspace().join("target/reproducible-cargo-target"),
        )
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn an_aarch64_image_boots_and_answers() {
    if !support::require_tools(TOOLS) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    build_example(&out, &[]);
    let manifest = std::fs::read_to_string(out.join("aarch64.manifest.json")).unwrap();
    assert!(manifest.contains("\"arch\": \"aarch64\""), "{manifest}");
    let init = std::fs::read(out.join("aarch64-initrd.img")).unwrap();
    assert!(!init.is_empty());

    let data = tmp.path().join("greeting");
    std::fs::write(&data, "handed over\n").unwrap();
    let host_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let (code, stdout, stderr) = run(
        &out,
        tmp.path(),
        &["--data", data.to_str().unwrap()],
        "uname -m; cat /etc/motd; read line; echo \"stdin: $line\"; cat /run/config/greeting; \
         date +%s; echo kept > /var/kept; sync; exit 7",
        b"from the host\n",
    );
    assert_eq!(code, Some(7), "stdout: {stdout}\nstderr: {stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.first(), Some(&"aarch64"), "{stdout}");
    assert!(stdout.contains("on aarch64"), "{stdout}");
    assert!(stdout.contains("stdin: from the host"), "{stdout}");
    assert!(stdout.contains("handed over"), "{stdout}");
    let guest_now: i64 = lines
        .iter()
        .rev()
        .find_map(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("no date in {stdout}"));
    // The time sync agent reached the host and stepped the guest's clock to the host's.
    let console =
        std::fs::read_to_string(tmp.path().join("state/minke/arm-guest/console.log")).unwrap();
    assert!(
        console.contains("timesync: connected") || console.contains("agent timesync: connected"),
        "{console}"
    );
    assert!(console.contains("timesync: step"), "{console}");
    assert!(
        (guest_now - host_now).abs() < 60,
        "guest clock {guest_now} vs host {host_now}"
    );

    // A second boot, over the virtio-serial transport: the data disk kept the file.
    let (code, stdout, stderr) = run(
        &out,
        tmp.path(),
        &["--transport", "serial"],
        "cat /var/kept",
        b"",
    );
    assert_eq!(code, Some(0), "stdout: {stdout}\nstderr: {stderr}");
    assert_eq!(stdout, "kept\n");
}

/// The binfmt table seen from an arm64 guest: x86_64 binaries run through the arm64 build of
/// QEMU's user emulator, registered by the binfmt agent.
#[test]
fn an_aarch64_guest_runs_x86_64_binaries() {
    if !support::require_tools(TOOLS) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (code, stdout, stderr) = run(
        &workspace().join("examples/aarch64-cross.yml"),
        tmp.path(),
        &[],
        "uname -m; /opt/amd64/bin/busybox uname -m; \
         cat /proc/sys/fs/binfmt_misc/qemu-x86_64 | head -2",
        b"",
    );
    assert_eq!(code, Some(0), "stdout: {stdout}\nstderr: {stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(&lines[..2], ["aarch64", "x86_64"], "{stdout}");
    assert!(
        stdout.contains("interpreter /usr/bin/qemu-x86_64-static"),
        "{stdout}"
    );
}

/// The release formats of an aarch64 image boot straight from Debian's AAVMF firmware under
/// qemu-system-aarch64: the UKI (arm64 systemd stub, the kernel as its `.linux`) started by the
/// firmware itself, the disk from its ESP's `EFI/BOOT/BOOTAA64.EFI`, the ISO from a virtio-scsi
/// CD-ROM (`virt` has no IDE); the exit status comes back through the agent and the release
/// files are the same bytes after the boots.
#[test]
fn aarch64_release_formats_boot_from_uefi_firmware() {
    let mut tools = TOOLS.to_vec();
    tools.extend(["/usr/share/AAVMF/AAVMF_CODE.fd", "xorriso", "mke2fs"]);
    if !support::require_tools(&tools) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    build_example(
        &out,
        &["--format", "uki", "--format", "disk", "--format", "iso"],
    );
    let files: Vec<PathBuf> = ["efi", "img", "iso"]
        .iter()
        .map(|e| out.join(format!("aarch64.{e}")))
        .collect();
    let digest = |p: &Path| std::fs::read(p).unwrap();
    let before: Vec<Vec<u8>> = files.iter().map(|f| digest(f)).collect();
    let cmdline = std::fs::read_to_string(out.join("aarch64-cmdline")).unwrap();
    for file in &files {
        let (code, stdout, stderr) = run(
            file,
            tmp.path(),
            &[],
            "uname -m; test -d /sys/firmware/efi && echo booted-through-uefi; \
             cat /proc/cmdline; exit 7",
            b"",
        );
        let console = std::fs::read_to_string(tmp.path().join("state/minke/arm-guest/console.log"))
            .unwrap_or_default();
        assert_eq!(
            code,
            Some(7),
            "{}: stdout {stdout}\nstderr {stderr}\nconsole:\n{console}",
            file.display()
        );
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.first(), Some(&"aarch64"), "{stdout}");
        assert!(stdout.contains("booted-through-uefi"), "{stdout}");
        // The command line the guest got is the one sealed in the image.
        assert!(stdout.contains(cmdline.trim()), "{stdout}");
    }
    let after: Vec<Vec<u8>> = files.iter().map(|f| digest(f)).collect();
    assert!(before == after, "booting a release file changed it");
}
