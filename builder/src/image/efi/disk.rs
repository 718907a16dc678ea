//! `disk` and `qcow2`: a GPT disk that boots under UEFI with no `-kernel` — an EFI system
//! partition (FAT32) holding the image's UKI as `EFI/BOOT/BOOTX64.EFI`, then one ext4
//! partition per data disk the spec declares, named by its label (the init finds a data disk
//! by its filesystem label, so a partition serves as well as a disk of its own). Partitions
//! start on MiB boundaries; the disk GUID, the partition GUIDs and the FAT volume id are
//! derived from the image, the ext4 identities from the labels, every timestamp is
//! SOURCE_DATE_EPOCH. The raw file is sparse where the data partitions are empty.

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{derived_id, fat, output_path, run_tool, Image, Staged};
use crate::error::io_err;
use crate::image::BuildError;

const SECTOR: u64 = 512;
const MIB: u64 = 1 << 20;
/// The EFI system partition's type GUID, C12A7328-F81F-11D2-BA4B-00A0C93EC93B, as GPT stores it.
const ESP_TYPE: [u8; 16] = guid_bytes(
    0xC12A7328,
    0xF81F,
    0x11D2,
    [0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E, 0xC9, 0x3B],
);
/// Linux filesystem data, 0FC63DAF-8483-4772-8E79-3D69D8477DE4.
const LINUX_FS_TYPE: [u8; 16] = guid_bytes(
    0x0FC63DAF,
    0x8483,
    0x4772,
    [0x8E, 0x79, 0x3D, 0x69, 0xD8, 0x47, 0x7D, 0xE4],
);
/// Smallest EFI system partition: room for FAT32 with 512-byte clusters.
const MIN_ESP: u64 = 40 * MIB;

/// GPT's mixed-endian GUID layout.
const fn guid_bytes(a: u32, b: u16, c: u16, d: [u8; 8]) -> [u8; 16] {
    let a = a.to_le_bytes();
    let b = b.to_le_bytes();
    let c = c.to_le_bytes();
    [
        a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5], d[6],
        d[7],
    ]
}

/// Where each partition of the disk lies, in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The ESP's offset and size.
    pub esp: (u64, u64),
    /// Each data disk: label, offset, size.
    pub data: Vec<(String, u64, u64)>,
    /// The whole disk's size.
    pub total: u64,
}

/// The layout for an ESP of `esp_size` bytes and the image's data disks.
pub fn layout(esp_size: u64, disks: &[(String, Option<u64>)]) -> Layout {
    let mut at = MIB;
    let esp = (at, esp_size.div_ceil(MIB) * MIB);
    at += esp.1;
    let mut data = Vec::new();
    for (label, size) in disks {
        let size = size
            .unwrap_or(minke_protocol::disk::DEFAULT_SIZE)
            .div_ceil(MIB)
            .max(1)
            * MIB;
        data.push((label.clone(), at, size));
        at += size;
    }
    // The backup GPT (33 sectors) in the last MiB.
    Layout {
        esp,
        data,
        total: at + MIB,
    }
}

/// Writes the raw disk from the image's UKI into a staged file that becomes `NAME.img` when
/// committed (a qcow2-only build converts it and lets it go).
pub(crate) fn write_raw(image: &Image, uki: &[u8], epoch: u64) -> Result<Staged, BuildError> {
    let id = derived_id(image, "esp");
    let esp = fat::make(
        &fat::Volume {
            files: vec![(super::efi_arch(super::image_arch(image)?).boot_file, uki)],
            id: u32::from_le_bytes([id[0], id[1], id[2], id[3]]),
            label: "ESP",
            min_size: MIN_ESP,
            fat32: true,
        },
        epoch,
    )?;
    let l = layout(esp.len() as u64, &image.disks);
    let path = output_path(image, "img");
    let staged = Staged::new(&path)?;
    let p = staged.path().to_path_buf();
    let mut f = staged.file();
    f.set_len(l.total).map_err(io_err(&p))?;
    f.seek(SeekFrom::Start(l.esp.0)).map_err(io_err(&p))?;
    f.write_all(&esp).map_err(io_err(&p))?;
    f.flush().map_err(io_err(&p))?;
    for (label, offset, size) in &l.data {
        mkfs_at(&p, label, *offset, *size, epoch)?;
    }
    write_gpt(image, &l, &p)?;
    Ok(staged)
}

fn mkfs_at(path: &Path, label: &str, offset: u64, size: u64, epoch: u64) -> Result<(), BuildError> {
    let mut c = Command::new("mke2fs");
    // e2fsprogs treats a fake time of 0 as unset.
    c.env("E2FSPROGS_FAKE_TIME", epoch.max(1).to_string())
        .args(minke_protocol::disk::mke2fs_args(label, Some(offset)))
        .arg(path)
        .arg(format!("{}k", size / 1024));
    run_tool(c, &format!("data partition {label}"))
}

fn write_gpt(image: &Image, l: &Layout, path: &Path) -> Result<(), BuildError> {
    let gpt_err = |e: gptman::Error| BuildError::Other(format!("{}: GPT: {e}", path.display()));
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io_err(path))?;
    let mut gpt =
        gptman::GPT::new_from(&mut f, SECTOR, derived_id(image, "gpt-disk")).map_err(gpt_err)?;
    let entry = |type_guid: [u8; 16], unique: [u8; 16], offset: u64, size: u64, name: &str| {
        gptman::GPTPartitionEntry {
            partition_type_guid: type_guid,
            unique_partition_guid: unique,
            starting_lba: offset / SECTOR,
            ending_lba: (offset + size) / SECTOR - 1,
            attribute_bits: 0,
            partition_name: name.into(),
        }
    };
    gpt[1] = entry(
        ESP_TYPE,
        derived_id(image, "gpt-esp"),
        l.esp.0,
        l.esp.1,
        "ESP",
    );
    for (i, (label, offset, size)) in l.data.iter().enumerate() {
        let unique = derived_id(image, &format!("gpt-data-{label}"));
        gpt[i as u32 + 2] = entry(LINUX_FS_TYPE, unique, *offset, *size, label);
    }
    gpt.write_into(&mut f).map_err(gpt_err)?;
    gptman::GPT::write_protective_mbr_into(&mut f, SECTOR).map_err(gpt_err)?;
    f.sync_all().map_err(io_err(path))?;
    Ok(())
}

/// Writes `NAME.qcow2` from the raw disk `raw` with `qemu-img convert`.
pub fn write_qcow2(image: &Image, raw: &Path) -> Result<PathBuf, BuildError> {
    let path = output_path(image, "qcow2");
    let staged = Staged::new(&path)?;
    let mut c = Command::new("qemu-img");
    c.args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
        .arg(raw)
        .arg(staged.path());
    run_tool(c, "qcow2 format")?;
    staged.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_start_on_mib_boundaries_with_room_for_the_backup_table() {
        let l = layout(
            41 * MIB + 3,
            &[("var".into(), Some(100 * MIB + 1)), ("data".into(), None)],
        );
        assert_eq!(l.esp, (MIB, 42 * MIB));
        assert_eq!(l.data[0], ("var".into(), 43 * MIB, 101 * MIB));
        assert_eq!(l.data[1], ("data".into(), 144 * MIB, 256 * MIB));
        assert_eq!(l.total, 401 * MIB);
    }

    #[test]
    fn type_guids_are_stored_mixed_endian() {
        assert_eq!(&ESP_TYPE[..4], &[0x28, 0x73, 0x2A, 0xC1]);
        assert_eq!(
            &ESP_TYPE[8..],
            &[0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E, 0xC9, 0x3B]
        );
    }
}
