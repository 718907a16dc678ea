//! `iso`: a hybrid EFI ISO made by xorriso — an El Torito EFI boot image that is also the
//! ESP of the ISO's GPT (so it boots from an optical drive and from a disk or USB stick), a
//! FAT volume holding the image's UKI as `EFI/BOOT/BOOTX64.EFI` (`BOOTAA64.EFI`); the ISO 9660
//! tree carries the manifest and SBOM for whoever mounts it. The boot image lies inside the
//! ISO 9660 volume (a hidden file): El Torito records its size in 512-byte sectors in 16 bits,
//! so one over 32 MiB (Debian's arm64 kernel alone is 27 MiB) is recorded as size 0, and EDK2
//! firmware (OVMF, AAVMF) then takes it to run to the end of the volume — which must hold it. Reproducible: xorriso takes
//! SOURCE_DATE_EPOCH for every date and the volume UUID, Rock Ridge is rationalized (owner
//! 0, modes normalized), and the FAT volume is made as reproducibly as the disk's ESP.

use std::path::PathBuf;
use std::process::Command;

use super::{derived_id, fat, output_path, run_tool, Image, Staged};
use crate::error::io_err;
use crate::image::BuildError;

/// The boot image's name in the ISO 9660 tree (hidden from its directory listings).
const BOOT_IMAGE: &str = "efiboot.img";

/// Writes `NAME.iso` from the image's UKI.
pub fn write_iso(image: &Image, uki: &[u8], epoch: u64) -> Result<PathBuf, BuildError> {
    let id = derived_id(image, "iso-efiboot");
    let efiboot = fat::make(
        &fat::Volume {
            files: vec![(super::efi_arch(super::image_arch(image)?).boot_file, uki)],
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
    let tree = work.path().join("tree");
    std::fs::create_dir(&tree).map_err(io_err(&tree))?;
    let boot_img = tree.join(BOOT_IMAGE);
    std::fs::write(&boot_img, &efiboot).map_err(io_err(&boot_img))?;
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
        .chain([tree.clone()])
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
        .args([
            "-e",
            BOOT_IMAGE,
            "-no-emul-boot",
            "-efi-boot-part",
            "--efi-boot-image",
            "-hide",
            BOOT_IMAGE,
            "-hide-joliet",
            BOOT_IMAGE,
        ])
        .arg(&tree);
    run_tool(c, "iso format")?;
    staged.commit()
}
