//! `iso`: a hybrid EFI ISO made by xorriso — an El Torito EFI boot image that is also the
//! ESP of the ISO's GPT (so it boots from an optical drive and from a disk or USB stick), a
//! FAT volume holding the image's UKI as `EFI/BOOT/BOOTX64.EFI`; the ISO 9660 tree carries
//! the manifest and SBOM for whoever mounts it. Reproducible: xorriso takes
//! SOURCE_DATE_EPOCH for every date and the volume UUID, Rock Ridge is rationalized (owner
//! 0, modes normalized), and the FAT volume is made as reproducibly as the disk's ESP.

use std::path::PathBuf;
use std::process::Command;

use super::{derived_id, fat, output_path, run_tool, Image, Staged};
use crate::error::io_err;
use crate::image::BuildError;

/// Writes `NAME.iso` from the image's UKI.
pub fn write_iso(image: &Image, uki: &[u8], epoch: u64) -> Result<PathBuf, BuildError> {
    let id = derived_id(image, "iso-efiboot");
    let efiboot = fat::make(
        &fat::Volume {
            files: vec![("EFI/BOOT/BOOTX64.EFI", uki)],
            id: u32::from_le_bytes([id[0], id[1], id[2], id[3]]),
            label: "MINKE_EFI",
            min_size: 0,
            fat32: false,
        },
        epoch,
    )?;
    let work = tempfile::Builder::new()
        .prefix(".minke-iso-")
        .tempdir_in(&image.dir)
        .map_err(io_err(&image.dir))?;
    let boot_img = work.path().join("efiboot.img");
    std::fs::write(&boot_img, &efiboot).map_err(io_err(&boot_img))?;
    let tree = work.path().join("tree");
    std::fs::create_dir(&tree).map_err(io_err(&tree))?;
    for f in [
        image.dir.join(format!("{}.manifest.json", image.name)),
        image.dir.join(format!("{}.spdx.json", image.name)),
    ] {
        if let Some(n) = f.file_name() {
            std::fs::copy(&f, tree.join(n)).map_err(io_err(&f))?;
        }
    }
    // xorriso dates files by SOURCE_DATE_EPOCH, but the root directory by its own mtime.
    let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(epoch);
    for p in std::fs::read_dir(&tree)
        .map_err(io_err(&tree))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .chain([tree.clone(), boot_img.clone()])
    {
        std::fs::File::open(&p)
            .and_then(|f| f.set_modified(when))
            .map_err(io_err(&p))?;
    }
    let path = output_path(image, "iso");
    let staged = Staged::new(&path)?;
    // xorriso refuses to write over an existing file it did not make.
    std::fs::remove_file(staged.path()).map_err(io_err(staged.path()))?;
    let volid: String = format!("MINKE_{}", image.name)
        .to_ascii_uppercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(32)
        .collect();
    let mut c = Command::new("xorriso");
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("SOURCE_DATE_EPOCH", epoch.to_string())
        .env("LC_ALL", "C")
        .env("TZ", "UTC")
        .args([
            "-as",
            "mkisofs",
            "-quiet",
            "-iso-level",
            "3",
            "-r",
            "-J",
            "-joliet-long",
        ])
        .args(["-V", &volid, "-o"])
        .arg(staged.path())
        .arg("-append_partition")
        .arg("2")
        .arg("0xef")
        .arg(&boot_img)
        .args([
            "-appended_part_as_gpt",
            "-e",
            "--interval:appended_partition_2:all::",
            "-no-emul-boot",
        ])
        .arg(&tree);
    run_tool(c, "iso format")?;
    staged.commit()
}
