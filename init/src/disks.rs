//! Data disks: find the virtio disk whose serial or ext4 label matches, mount it, or mount a
//! tmpfs in its place (loudly); unmount them at shutdown.

use std::ffi::CString;
use std::io::Read;

use rustix::mount::MountFlags;

use crate::console::log;
use minke_protocol::config::DiskMount;

/// How long to wait for block devices to show up in /sys/block.
pub const DISK_WAIT_MS: u64 = 2_000;
/// Pause between two scans of /sys/block while waiting.
const DISK_POLL_MS: u64 = 20;

const SB_OFFSET: usize = 1024;
const SB_MAGIC_AT: usize = SB_OFFSET + 56;
const SB_LABEL_AT: usize = SB_OFFSET + 120;
const EXT_MAGIC: u16 = 0xEF53;

/// The volume label of an ext2/3/4 filesystem whose first 2 KiB are `head`.
pub fn ext4_label(head: &[u8]) -> Option<String> {
    let magic = head.get(SB_MAGIC_AT..SB_MAGIC_AT + 2)?;
    if u16::from_le_bytes([*magic.first()?, *magic.get(1)?]) != EXT_MAGIC {
        return None;
    }
    let raw = head.get(SB_LABEL_AT..SB_LABEL_AT + 16)?;
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    let label = String::from_utf8_lossy(raw.get(..end)?).into_owned();
    (!label.is_empty()).then_some(label)
}

/// A block device (disk or partition) seen in /sys/block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockDev {
    /// Kernel name (`vda`, `vda1`).
    pub name: String,
    /// `major:minor`.
    pub devno: String,
    /// virtio serial of the disk (also reported for its partitions).
    pub serial: Option<String>,
    /// ext filesystem label.
    pub label: Option<String>,
}

/// The device matching `label`: a serial match wins over a filesystem label.
pub fn pick<'a>(devs: &'a [BlockDev], label: &str) -> Option<&'a BlockDev> {
    devs.iter()
        .find(|d| {
            d.serial.as_deref() == Some(label)
                && !d.name.chars().last().is_some_and(|c| c.is_ascii_digit())
        })
        .or_else(|| devs.iter().find(|d| d.label.as_deref() == Some(label)))
}

/// Splits a mount option string into flags and the data string for the filesystem.
pub fn split_options(options: &str) -> (MountFlags, String) {
    let mut flags = MountFlags::empty();
    let mut data = Vec::new();
    for opt in options.split(',').map(str::trim).filter(|o| !o.is_empty()) {
        match opt {
            "ro" => flags |= MountFlags::RDONLY,
            "rw" | "defaults" => {}
            "nosuid" => flags |= MountFlags::NOSUID,
            "nodev" => flags |= MountFlags::NODEV,
            "noexec" => flags |= MountFlags::NOEXEC,
            "noatime" => flags |= MountFlags::NOATIME,
            "nodiratime" => flags |= MountFlags::NODIRATIME,
            "relatime" => flags |= MountFlags::RELATIME,
            "sync" => flags |= MountFlags::SYNCHRONOUS,
            "dirsync" => flags |= MountFlags::DIRSYNC,
            other => data.push(other),
        }
    }
    (flags, data.join(","))
}

fn read_trim(path: &str) -> Option<String> {
    let s = std::fs::read_to_string(path).ok()?;
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_owned())
}

fn read_label(dev: &str) -> Option<String> {
    let mut head = vec![0u8; 2048];
    let mut f = std::fs::File::open(dev).ok()?;
    f.read_exact(&mut head).ok()?;
    ext4_label(&head)
}

/// Makes sure `/dev/NAME` exists (devtmpfs normally creates it) and returns its path.
pub fn dev_node(name: &str, devno: &str) -> String {
    let path = format!("/dev/{name}");
    if std::path::Path::new(&path).exists() {
        return path;
    }
    let mut parts = devno.split(':').map(|p| p.trim().parse::<u32>());
    if let (Some(Ok(major)), Some(Ok(minor))) = (parts.next(), parts.next()) {
        let dev = rustix::fs::makedev(major, minor);
        let mode = rustix::fs::Mode::from_raw_mode(0o600);
        let _ = rustix::fs::mknodat(
            rustix::fs::CWD,
            &*path,
            rustix::fs::FileType::BlockDevice,
            mode,
            dev,
        );
    }
    path
}

/// Scans /sys/block for virtio (and other) disks and their partitions.
pub fn scan() -> Vec<BlockDev> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return out;
    };
    let mut disks: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    disks.sort();
    for disk in disks
        .iter()
        .filter(|d| !d.starts_with("loop") && !d.starts_with("ram"))
    {
        let base = format!("/sys/block/{disk}");
        let serial = read_trim(&format!("{base}/serial"));
        let mut names = vec![disk.clone()];
        if let Ok(sub) = std::fs::read_dir(&base) {
            let mut parts: Vec<String> = sub
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| {
                    n.starts_with(disk.as_str())
                        && std::path::Path::new(&format!("{base}/{n}/partition")).exists()
                })
                .collect();
            parts.sort();
            names.extend(parts);
        }
        for name in names {
            let sys = if &name == disk {
                base.clone()
            } else {
                format!("{base}/{name}")
            };
            let devno = read_trim(&format!("{sys}/dev")).unwrap_or_default();
            let node = dev_node(&name, &devno);
            let label = read_label(&node);
            out.push(BlockDev {
                name,
                devno,
                serial: serial.clone(),
                label,
            });
        }
    }
    out
}

/// Number of virtio block devices on the virtio bus (device id 2), i.e. the `vd*` disks that
/// will show up once virtio_blk has probed them.
fn virtio_disks() -> usize {
    let Ok(entries) = std::fs::read_dir("/sys/bus/virtio/devices") else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| {
            let id = std::fs::read_to_string(e.path().join("device")).unwrap_or_default();
            id.trim() == "0x0002"
        })
        .count()
}

fn is_whole_vd(name: &str) -> bool {
    name.starts_with("vd") && !name.ends_with(|c: char| c.is_ascii_digit())
}

/// Mounts `disks`; returns the mountpoints mounted (disk or tmpfs) for unmounting at shutdown.
pub fn mount_all(disks: &[DiskMount]) -> Vec<String> {
    let mut mounted = Vec::new();
    if disks.is_empty() {
        return mounted;
    }
    // Devices may appear shortly after virtio_blk is loaded: poll, bounded, and only while
    // some virtio disk on the bus has no block device yet.
    let deadline = crate::timeline::now_ms() + DISK_WAIT_MS;
    let expected = virtio_disks();
    let mut devs = scan();
    while !disks.iter().all(|d| pick(&devs, &d.label).is_some())
        && devs.iter().filter(|d| is_whole_vd(&d.name)).count() < expected
        && crate::timeline::now_ms() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(DISK_POLL_MS));
        devs = scan();
    }
    for d in disks {
        if let Err(e) = std::fs::create_dir_all(&d.mountpoint) {
            log!("disk {}: cannot create {}: {e}", d.label, d.mountpoint);
            continue;
        }
        match pick(&devs, &d.label) {
            Some(dev) => {
                let src = format!("/dev/{}", dev.name);
                let (flags, data) = split_options(&d.options);
                let data = CString::new(data).unwrap_or_default();
                match rustix::mount::mount(&*src, &*d.mountpoint, &*d.fstype, flags, &*data) {
                    Ok(()) => {
                        log!("disk {}: {src} mounted on {}", d.label, d.mountpoint);
                        mounted.push(d.mountpoint.clone());
                    }
                    Err(e) => {
                        log!(
                            "disk {}: mount {src} ({}) on {}: {e}",
                            d.label,
                            d.fstype,
                            d.mountpoint
                        );
                        fallback(d, &mut mounted);
                    }
                }
            }
            None => {
                crate::console::loud(format_args!("disk {:?} not found", d.label));
                fallback(d, &mut mounted);
            }
        }
    }
    mounted
}

fn fallback(d: &DiskMount, mounted: &mut Vec<String>) {
    if !d.tmpfs_fallback {
        crate::console::loud(format_args!("{} left unmounted", d.mountpoint));
        return;
    }
    let flags = MountFlags::NOSUID | MountFlags::NODEV;
    match rustix::mount::mount("tmpfs", &*d.mountpoint, "tmpfs", flags, c"mode=0755") {
        Ok(()) => {
            crate::console::loud(format_args!(
                "{} is a TMPFS: data written there is lost at power off",
                d.mountpoint
            ));
            mounted.push(d.mountpoint.clone());
        }
        Err(e) => log!("tmpfs on {}: {e}", d.mountpoint),
    }
}

/// Unmounts `mounted` in reverse order (lazily if busy).
pub fn unmount_all(mounted: &[String]) {
    use rustix::mount::UnmountFlags;
    for m in mounted.iter().rev() {
        if let Err(e) = rustix::mount::unmount(&**m, UnmountFlags::empty()) {
            log!("unmount {m}: {e}; detaching");
            let _ = rustix::mount::unmount(&**m, UnmountFlags::DETACH);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sb(label: &[u8], magic: u16) -> Vec<u8> {
        let mut head = vec![0u8; 2048];
        head[SB_MAGIC_AT..SB_MAGIC_AT + 2].copy_from_slice(&magic.to_le_bytes());
        head[SB_LABEL_AT..SB_LABEL_AT + label.len()].copy_from_slice(label);
        head
    }

    #[test]
    fn label_from_superblock() {
        assert_eq!(ext4_label(&sb(b"var", EXT_MAGIC)).as_deref(), Some("var"));
        assert_eq!(
            ext4_label(&sb(b"sixteen-chars-xx", EXT_MAGIC)).as_deref(),
            Some("sixteen-chars-xx")
        );
        assert_eq!(ext4_label(&sb(b"var", 0x1234)), None);
        assert_eq!(ext4_label(&sb(b"", EXT_MAGIC)), None);
        assert_eq!(ext4_label(&[0u8; 100]), None);
    }

    fn dev(name: &str, serial: Option<&str>, label: Option<&str>) -> BlockDev {
        BlockDev {
            name: name.into(),
            devno: String::new(),
            serial: serial.map(Into::into),
            label: label.map(Into::into),
        }
    }

    #[test]
    fn serial_beats_label_and_partitions_match_by_label() {
        let devs = [
            dev("vda", None, Some("var")),
            dev("vdb", Some("var"), None),
            dev("vdc", Some("data"), None),
            dev("vdc1", Some("data"), Some("logs")),
        ];
        assert_eq!(pick(&devs, "var").map(|d| d.name.as_str()), Some("vdb"));
        assert_eq!(pick(&devs, "data").map(|d| d.name.as_str()), Some("vdc"));
        assert_eq!(pick(&devs, "logs").map(|d| d.name.as_str()), Some("vdc1"));
        assert!(pick(&devs, "none").is_none());
    }

    #[test]
    fn options_split_into_flags_and_data() {
        let (f, d) = split_options("ro,noatime,errors=remount-ro, nosuid ,data=ordered");
        assert_eq!(
            f,
            MountFlags::RDONLY | MountFlags::NOATIME | MountFlags::NOSUID
        );
        assert_eq!(d, "errors=remount-ro,data=ordered");
        assert_eq!(split_options(""), (MountFlags::empty(), String::new()));
    }
}
