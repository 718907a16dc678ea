//! Host directories shared with this boot: the list the host put in the firmware config
//! ([`minke_protocol::shares`]), mounted before onboot tasks and services run, so every
//! command the host starts sees them. The share modules are loaded only when there is a list.

use std::ffi::CString;

use minke_protocol::config::Module;
use minke_protocol::shares::{self, Share, ShareKind};
use rustix::mount::MountFlags;

use crate::console::log;
use crate::modules;

/// The host's share list: empty when it gave none (no firmware config file), or a refusal
/// said on the console when the list cannot be used.
fn read_list() -> Vec<Share> {
    let bytes = match std::fs::read(shares::FW_CFG_SYSFS_PATH) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            crate::console::loud(format_args!(
                "shares: cannot read {}: {e}",
                shares::FW_CFG_SYSFS_PATH
            ));
            return Vec::new();
        }
    };
    match shares::decode(&bytes) {
        Ok(list) => list,
        Err(e) => {
            crate::console::loud(format_args!("shares: {e}; none mounted"));
            Vec::new()
        }
    }
}

/// The filesystem type and mount data of a share.
fn fs_of(s: &Share) -> (&'static str, &'static str) {
    match s.kind {
        ShareKind::Virtiofs => ("virtiofs", ""),
        ShareKind::NineP => ("9p", "trans=virtio,version=9p2000.L,msize=512000"),
    }
}

/// Mounts every share the host gave; returns the mount points made (for the unmount at
/// shutdown).
pub fn mount_all(share_modules: &[Module]) -> Vec<String> {
    let list = read_list();
    let mut mounted = Vec::new();
    if list.is_empty() {
        return mounted;
    }
    let loaded = modules::load_all(share_modules, |_, _| {});
    let failed = loaded
        .iter()
        .filter(|r| **r == modules::Loaded::Failed)
        .count();
    if failed > 0 {
        log!("shares: {failed} of {} share modules failed", loaded.len());
    }
    for s in &list {
        if let Err(e) = std::fs::create_dir_all(&s.path) {
            crate::console::loud(format_args!(
                "share {}: cannot create {}: {e}",
                s.tag, s.path
            ));
            continue;
        }
        let (fstype, data) = fs_of(s);
        let mut flags = MountFlags::NOSUID | MountFlags::NODEV;
        if s.readonly {
            flags |= MountFlags::RDONLY;
        }
        let data = CString::new(data).unwrap_or_default();
        match rustix::mount::mount(&*s.tag, &*s.path, fstype, flags, &*data) {
            Ok(()) => {
                log!(
                    "share {} ({}{}) mounted on {}",
                    s.tag,
                    s.kind.name(),
                    if s.readonly { ", read-only" } else { "" },
                    s.path
                );
                mounted.push(s.path.clone());
            }
            Err(e) => crate::console::loud(format_args!(
                "share {}: mount {fstype} on {}: {e}",
                s.tag, s.path
            )),
        }
    }
    mounted
}
