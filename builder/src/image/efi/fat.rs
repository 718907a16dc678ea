//! FAT volumes made reproducibly with the `fatfs` crate: a volume id derived from the image,
//! every directory entry dated SOURCE_DATE_EPOCH (FAT keeps local time with 2-second steps; the
//! date is clamped to FAT's 1980–2107), and files added in byte order of their paths.

use std::io::{Cursor, Write};

use super::BuildError;

/// A FAT time source that always answers the one timestamp.
#[derive(Debug)]
struct Fixed(fatfs::DateTime);

impl fatfs::TimeProvider for Fixed {
    fn get_current_date(&self) -> fatfs::Date {
        self.0.date
    }
    fn get_current_date_time(&self) -> fatfs::DateTime {
        self.0
    }
}

fn fat_time(epoch: u64) -> fatfs::DateTime {
    let c = crate::Civil::of(epoch);
    let (year, month, day, secs) = if c.year < 1980 {
        (1980, 1, 1, 0)
    } else if c.year > 2107 {
        (2107, 12, 31, 86_398)
    } else {
        (c.year as u16, c.month as u16, c.day as u16, c.secs)
    };
    fatfs::DateTime {
        date: fatfs::Date { year, month, day },
        time: fatfs::Time {
            hour: (secs / 3600) as u16,
            min: (secs / 60 % 60) as u16,
            sec: (secs % 60 / 2 * 2) as u16,
            millis: 0,
        },
    }
}

/// What a FAT volume holds and how it is made.
pub struct Volume<'a> {
    /// Files by path (`EFI/BOOT/BOOTX64.EFI`), parents made as needed.
    pub files: Vec<(&'a str, &'a [u8])>,
    /// Volume id (the "serial number" tools show).
    pub id: u32,
    /// Volume label, up to 11 bytes of upper-case ASCII.
    pub label: &'a str,
    /// Smallest size in bytes (rounded up to whole MiB, and grown to fit the files).
    pub min_size: u64,
    /// FAT32 with 512-byte clusters (what an EFI system partition on a disk should be), else
    /// the type the size calls for.
    pub fat32: bool,
}

/// The bytes of the volume.
pub fn make(v: &Volume<'_>, epoch: u64) -> Result<Vec<u8>, BuildError> {
    let err = |what: &str, e: std::io::Error| BuildError::Other(format!("FAT volume: {what}: {e}"));
    let payload: u64 = v.files.iter().map(|(_, d)| d.len() as u64).sum();
    const MIB: u64 = 1 << 20;
    let need = payload + payload / 16 + 2 * MIB;
    let size = need.max(v.min_size).div_ceil(MIB) * MIB;
    let mut label = [b' '; 11];
    for (i, b) in v.label.bytes().take(11).enumerate() {
        label[i] = b.to_ascii_uppercase();
    }
    let mut opts = fatfs::FormatVolumeOptions::new()
        .volume_id(v.id)
        .volume_label(label);
    if v.fat32 {
        opts = opts.fat_type(fatfs::FatType::Fat32).bytes_per_cluster(512);
    }
    let mut disk = Cursor::new(vec![0u8; size as usize]);
    fatfs::format_volume(&mut disk, opts).map_err(|e| err("format", e))?;
    disk.set_position(0);
    let time: &'static Fixed = Box::leak(Box::new(Fixed(fat_time(epoch))));
    {
        let fs = fatfs::FileSystem::new(&mut disk, fatfs::FsOptions::new().time_provider(time))
            .map_err(|e| err("open", e))?;
        let mut files = v.files.clone();
        files.sort_by(|a, b| a.0.cmp(b.0));
        for (path, data) in files {
            let root = fs.root_dir();
            let mut dir = root;
            let mut parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
            let name = parts
                .pop()
                .ok_or_else(|| BuildError::Other("FAT volume: empty path".into()))?;
            for p in parts {
                dir = match dir.open_dir(p) {
                    Ok(d) => d,
                    Err(_) => dir.create_dir(p).map_err(|e| err(path, e))?,
                };
            }
            let mut f = dir.create_file(name).map_err(|e| err(path, e))?;
            f.truncate().map_err(|e| err(path, e))?;
            f.write_all(data).map_err(|e| err(path, e))?;
            f.flush().map_err(|e| err(path, e))?;
        }
        fs.unmount().map_err(|e| err("unmount", e))?;
    }
    Ok(disk.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn volumes_are_reproducible_and_readable() {
        let big = vec![0x5au8; 300_000];
        let v = Volume {
            files: vec![
                ("EFI/BOOT/BOOTX64.EFI", &big),
                ("loader/x.conf", b"timeout 0\n"),
            ],
            id: 0x1234_abcd,
            label: "esp",
            min_size: 0,
            fat32: false,
        };
        let a = make(&v, 1_700_000_000).unwrap();
        let b = make(&v, 1_700_000_000).unwrap();
        assert!(a == b, "same inputs, same bytes");
        assert_ne!(
            a,
            make(&v, 1_700_000_100).unwrap(),
            "the timestamp is the epoch's"
        );
        let fs = fatfs::FileSystem::new(Cursor::new(a), fatfs::FsOptions::new()).unwrap();
        assert_eq!(fs.volume_id(), 0x1234_abcd);
        let mut got = Vec::new();
        fs.root_dir()
            .open_file("EFI/BOOT/BOOTX64.EFI")
            .unwrap()
            .read_to_end(&mut got)
            .unwrap();
        assert!(got == big);
        let e = fs
            .root_dir()
            .open_dir("EFI")
            .unwrap()
            .iter()
            .find(|e| e.as_ref().unwrap().file_name() == "BOOT")
            .unwrap()
            .unwrap();
        let m = e.modified();
        assert_eq!((m.date.year, m.date.month, m.date.day), (2023, 11, 14));
        assert_eq!((m.time.hour, m.time.min, m.time.sec), (22, 13, 20));
    }

    #[test]
    fn an_esp_is_fat32() {
        let v = Volume {
            files: vec![("EFI/BOOT/BOOTX64.EFI", b"x")],
            id: 1,
            label: "ESP",
            min_size: 40 << 20,
            fat32: true,
        };
        let a = make(&v, 1).unwrap();
        assert_eq!(a.len(), 40 << 20);
        let fs = fatfs::FileSystem::new(Cursor::new(a), fatfs::FsOptions::new()).unwrap();
        assert_eq!(fs.fat_type(), fatfs::FatType::Fat32);
    }
}
