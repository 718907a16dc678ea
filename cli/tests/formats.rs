//! The release formats (`minke build --format uki|disk|qcow2|iso`), each read back by a tool
//! no one here wrote and booted under OVMF, straight from the firmware: no `-kernel` for the
//! disks and the ISO, the UKI started by the firmware itself. A guest booted through UEFI has
//! `/sys/firmware/efi`, which a direct kernel boot never has; the command's exit status comes
//! back through the agent; the release files are the same bytes after the boots.

mod support;

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

fn sha256(p: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(p).unwrap()))
}

fn build_all(out: &Path) -> Vec<PathBuf> {
    let o = Command::new(env!("CARGO_BIN_EXE_minke"))
        .args(["build", "-o"])
        .arg(out)
        .args(["--format", "uki", "--format", "disk", "--format", "qcow2"])
        .args(["--format", "iso"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    let files: Vec<PathBuf> = ["efi", "img", "qcow2", "iso"]
        .iter()
        .map(|e| out.join(format!("default.{e}")))
        .collect();
    for f in &files {
        assert!(
            stdout.contains(f.to_str().unwrap()),
            "minke build does not list {}:\n{stdout}",
            f.display()
        );
    }
    files
}

/// Boots `file` with `minke run`, its state under `state`; returns exit code and stdout.
fn boot(file: &Path, state: &Path, name: &str, transport: &str) -> (Option<i32>, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_minke"))
        .arg("run")
        .arg(file)
        .args(["--accel", "tcg", "--transport", transport, "--name", name])
        .args([
            "--",
            "sh",
            "-c",
            "cat /etc/motd; test -d /sys/firmware/efi && echo booted-through-uefi; \
             cat /proc/cmdline; grep ' /var ' /proc/mounts; exit 7",
        ])
        .env("XDG_STATE_HOME", state.join("state"))
        .env("XDG_DATA_HOME", state.join("data"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let console = std::fs::read_to_string(state.join("state/minke").join(name).join("console.log"))
        .unwrap_or_default();
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        stdout.contains("booted-through-uefi"),
        "{} did not boot through UEFI: stdout {stdout}\nstderr {}\nconsole:\n{console}",
        file.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.code(), stdout)
}

#[test]
fn release_formats_boot_straight_from_uefi_firmware() {
    if !support::require_tools(support::BOOT_TOOLS)
        || !support::require_tools(support::FORMAT_TOOLS)
    {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let files = build_all(&out);
    let before: Vec<String> = files.iter().map(|f| sha256(f)).collect();
    let cmdline = std::fs::read_to_string(out.join("default-cmdline")).unwrap();
    // The UKI over the serial transport (told to the guest through the firmware config, since
    // the command line is sealed in the UKI), the others over vsock.
    for (file, transport) in files.iter().zip(["serial", "auto", "auto", "auto"]) {
        let ext = file.extension().unwrap().to_str().unwrap();
        let (code, stdout) = boot(file, tmp.path(), &format!("fmt-{ext}"), transport);
        assert_eq!(code, Some(7), "{}: {stdout}", file.display());
        assert!(stdout.contains("Welcome to a minke guest."), "{stdout}");
        // The command line the guest got is the one sealed in the image.
        assert!(stdout.contains(cmdline.trim()), "{stdout}");
        if ext == "img" || ext == "qcow2" {
            // The data disk is the disk's own partition, found by its label.
            assert!(stdout.contains("/dev/vda2 /var ext4 rw"), "{stdout}");
        }
    }
    let after: Vec<String> = files.iter().map(|f| sha256(f)).collect();
    assert_eq!(before, after, "booting a release file changed it");
}

/// What the formats hold, read back by other readers: the UKI's PE sections (goblin, through
/// the builder's reader) are the image's kernel, initrd and command line; the disk's GPT
/// (gptman) has an EFI system partition holding that UKI (fatfs) and an ext4 partition named
/// after the data disk that `e2fsck -fn` finds clean; `qemu-img` sees the qcow2 as the same
/// disk; xorriso reports the ISO's El Torito EFI boot image.
#[test]
fn release_formats_hold_the_image() {
    if !support::require_tools(support::FORMAT_TOOLS) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let files = build_all(&out);
    let uki = std::fs::read(&files[0]).unwrap();
    let sections = minke::image::efi::pe::sections(&uki).unwrap();
    let section = |n: &str| {
        sections
            .iter()
            .find(|(name, _)| name == n)
            .map(|(_, d)| d.clone())
            .unwrap_or_else(|| panic!("no {n} section"))
    };
    assert!(section(".linux") == std::fs::read(out.join("default-kernel")).unwrap());
    assert!(section(".initrd") == std::fs::read(out.join("default-initrd.img")).unwrap());
    assert_eq!(
        String::from_utf8(section(".cmdline")).unwrap(),
        std::fs::read_to_string(out.join("default-cmdline"))
            .unwrap()
            .trim_end()
    );
    assert!(String::from_utf8(section(".osrel"))
        .unwrap()
        .contains("ID=minke"));

    let mut disk = std::fs::File::open(&files[1]).unwrap();
    let gpt = gptman::GPT::find_from(&mut disk).unwrap();
    let parts: Vec<_> = gpt.iter().filter(|(_, p)| p.is_used()).collect();
    assert_eq!(parts.len(), 2, "{parts:?}");
    let (_, esp) = parts[0];
    assert_eq!(esp.partition_name.as_str(), "ESP");
    assert_eq!(esp.starting_lba * 512, 1 << 20);
    let read_part = |disk: &mut std::fs::File, p: &gptman::GPTPartitionEntry| {
        let mut b = vec![0u8; ((p.ending_lba - p.starting_lba + 1) * 512) as usize];
        disk.seek(SeekFrom::Start(p.starting_lba * 512)).unwrap();
        disk.read_exact(&mut b).unwrap();
        b
    };
    let esp_bytes = read_part(&mut disk, esp);
    let fs =
        fatfs::FileSystem::new(std::io::Cursor::new(esp_bytes), fatfs::FsOptions::new()).unwrap();
    assert_eq!(fs.fat_type(), fatfs::FatType::Fat32);
    let mut boot = Vec::new();
    fs.root_dir()
        .open_file("EFI/BOOT/BOOTX64.EFI")
        .unwrap()
        .read_to_end(&mut boot)
        .unwrap();
    assert!(boot == uki, "the ESP's BOOTX64.EFI is not the UKI");
    let (_, var) = parts[1];
    assert_eq!(var.partition_name.as_str(), "var");
    let ext4 = tmp.path().join("var.ext4");
    std::fs::write(&ext4, read_part(&mut disk, var)).unwrap();
    let fsck = Command::new("e2fsck")
        .arg("-fn")
        .arg(&ext4)
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "{}",
        String::from_utf8_lossy(&fsck.stdout)
    );

    let cmp = Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "qcow2"])
        .arg(&files[1])
        .arg(&files[2])
        .output()
        .unwrap();
    assert!(
        cmp.status.success(),
        "{}",
        String::from_utf8_lossy(&cmp.stdout)
    );

    let report = Command::new("xorriso")
        .arg("-indev")
        .arg(&files[3])
        .args(["-report_el_torito", "plain"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&report.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("El Torito boot img :   1  UEFI")),
        "{text}{}",
        String::from_utf8_lossy(&report.stderr)
    );
}

/// A build whose UEFI formats cannot be made (no EFI stub where it is told to look) fails
/// before anything is written, naming the stub and how to give one.
#[test]
fn a_missing_efi_stub_fails_the_build_before_it_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let o = Command::new(env!("CARGO_BIN_EXE_minke"))
        .args(["build", "-o"])
        .arg(&out)
        .args(["--format", "uki"])
        .env("MINKE_EFI_STUB_X86_64", tmp.path().join("no-stub"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no-stub") && stderr.contains("MINKE_EFI_STUB_X86_64"),
        "{stderr}"
    );
    assert!(!out.exists(), "the failed build wrote {}", out.display());
}
