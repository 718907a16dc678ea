//! A container image the host attached for this boot (`minke run --image`,
//! [`minke_protocol::image`]): its modules are loaded, its read-only disk (found by the serial
//! only the host sets) is mounted, and an overlay with a writable tmpfs layer on top becomes
//! the root the control agent execs into. Mounted before onboot tasks and services.

use std::ffi::CString;
use std::time::{Duration, Instant};

use minke_protocol::config::Module;
use minke_protocol::image::{self, RunImage};
use rustix::mount::MountFlags;

use crate::console::log;
use crate::modules;

/// How long the image's disk may take to appear once virtio-blk is loaded (a loaded 2-core
/// host under TCG shows it in milliseconds).
const DISK_WAIT: Duration = Duration::from_secs(30);

fn read() -> Option<RunImage> {
    let bytes = match std::fs::read(image::FW_CFG_SYSFS_PATH) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            crate::console::loud(format_args!(
                "image: cannot read {}: {e}",
                image::FW_CFG_SYSFS_PATH
            ));
            return None;
        }
    };
    match image::decode(&bytes) {
        Ok(i) => Some(i),
        Err(e) => {
            crate::console::loud(format_args!("image: {e}; not mounted"));
            None
        }
    }
}

/// The whole disk whose virtio serial is the image's, waiting for it to be probed.
fn find_disk() -> Option<String> {
    let end = Instant::now() + DISK_WAIT;
    loop {
        if let Ok(entries) = std::fs::read_dir("/sys/block") {
            let mut names: Vec<String> = entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("vd"))
                .collect();
            names.sort();
            for n in names {
                let serial = std::fs::read_to_string(format!("/sys/block/{n}/serial"));
                if serial.is_ok_and(|s| s.trim() == image::DISK_SERIAL) {
                    let dev =
                        std::fs::read_to_string(format!("/sys/block/{n}/dev")).unwrap_or_default();
                    return Some(crate::disks::dev_node(&n, dev.trim()));
                }
            }
        }
        if Instant::now() > end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn mount_one(src: &str, target: &str, fstype: &str, flags: MountFlags, data: &str) -> bool {
    if let Err(e) = std::fs::create_dir_all(target) {
        crate::console::loud(format_args!("image: cannot create {target}: {e}"));
        return false;
    }
    let data = CString::new(data).unwrap_or_default();
    match rustix::mount::mount(src, target, fstype, flags, &*data) {
        Ok(()) => true,
        Err(e) => {
            crate::console::loud(format_args!("image: mount {fstype} on {target}: {e}"));
            false
        }
    }
}

/// Mounts the run image when the host attached one; returns the mount points made, innermost
/// last (for the unmount at shutdown, which goes in reverse).
pub fn mount(image_modules: &[Module]) -> Vec<String> {
    let Some(img) = read() else {
        return Vec::new();
    };
    let loaded = modules::load_all(image_modules, |_, _| {});
    let failed = loaded
        .iter()
        .filter(|r| **r == modules::Loaded::Failed)
        .count();
    if failed > 0 {
        log!("image: {failed} of {} image modules failed", loaded.len());
    }
    let Some(dev) = find_disk() else {
        crate::console::loud(format_args!(
            "image: no disk with serial {} appeared within {DISK_WAIT:?}",
            image::DISK_SERIAL
        ));
        return Vec::new();
    };
    let mut mounted = Vec::new();
    let ro = MountFlags::RDONLY | MountFlags::NODEV;
    if !mount_one(&dev, image::LOWER, &img.fstype, ro, "") {
        return mounted;
    }
    mounted.push(image::LOWER.to_string());
    if !mount_one("tmpfs", image::RW, "tmpfs", MountFlags::NODEV, "mode=0755") {
        return mounted;
    }
    mounted.push(image::RW.to_string());
    for d in ["upper", "work"] {
        if let Err(e) = std::fs::create_dir(format!("{}/{d}", image::RW)) {
            crate::console::loud(format_args!("image: cannot create {}/{d}: {e}", image::RW));
            return mounted;
        }
    }
    let data = format!(
        "lowerdir={},upperdir={rw}/upper,workdir={rw}/work",
        image::LOWER,
        rw = image::RW
    );
    if !mount_one("overlay", image::ROOT, "overlay", MountFlags::NODEV, &data) {
        return mounted;
    }
    mounted.push(image::ROOT.to_string());
    log!("image ({}) mounted on {}", img.fstype, image::ROOT);
    mounted
}
