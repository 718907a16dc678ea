//! Host directories shared with a guest at run time: the list the host hands the guest, as a
//! firmware config file beside the secret, and PID1 mounts before anything runs.
//!
//! Each share is a virtio-fs device (served by `virtiofsd` on the host) or a 9p device (QEMU's
//! own server), found in the guest by its tag. The list is postcard-encoded; [`decode`] checks
//! every entry, so a guest never mounts at a relative path, at `/`, or from an unknown tag.

use serde::{Deserialize, Serialize};

/// The firmware config name QEMU is given the list under.
pub const FW_CFG_NAME: &str = "opt/minke/shares";
/// Where the guest's `qemu_fw_cfg` driver shows the list.
pub const FW_CFG_SYSFS_PATH: &str = "/sys/firmware/qemu_fw_cfg/by_name/opt/minke/shares/raw";
/// Most shares one VM gets (each is a PCI device and, for virtio-fs, a host process).
pub const MAX_SHARES: usize = 16;
/// Longest guest path accepted.
pub const MAX_PATH: usize = 1024;
/// Prefix of every tag; the share's index follows (`minke0`, `minke1`…).
pub const TAG_PREFIX: &str = "minke";

/// How a share reaches the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShareKind {
    /// virtio-fs (`vhost-user-fs-pci`, served by virtiofsd); mounted as `virtiofs`.
    Virtiofs,
    /// 9p over virtio (`-virtfs`, served by QEMU); mounted as `9p` with `trans=virtio`.
    NineP,
}

impl ShareKind {
    /// The name shown to people (`minke ps`).
    pub fn name(self) -> &'static str {
        match self {
            ShareKind::Virtiofs => "virtiofs",
            ShareKind::NineP => "9p",
        }
    }
}

/// One shared directory as the guest sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Share {
    /// The device's tag (`minke0`…).
    pub tag: String,
    /// Absolute guest path it is mounted at.
    pub path: String,
    /// Mounted read-only (the host side refuses writes as well).
    pub readonly: bool,
    /// The device kind.
    pub kind: ShareKind,
}

/// The tag of the share at `index`.
pub fn tag(index: usize) -> String {
    format!("{TAG_PREFIX}{index}")
}

/// Why a share list was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShareError {
    /// Not a postcard-encoded list.
    #[error("the share list cannot be decoded: {0}")]
    Decode(String),
    /// More than [`MAX_SHARES`].
    #[error("{0} shares, more than the {MAX_SHARES} a VM can have")]
    TooMany(usize),
    /// An entry is unusable.
    #[error("share {index}: {why}")]
    Entry {
        /// Its position.
        index: usize,
        /// What is wrong.
        why: String,
    },
}

/// Checks a guest mount point: absolute, normalized (no `.`, `..` or empty components), not
/// `/`, without NUL, at most [`MAX_PATH`] bytes.
pub fn check_guest_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("guest path {path:?} is not absolute"));
    }
    if path.len() > MAX_PATH {
        return Err(format!("guest path is longer than {MAX_PATH} bytes"));
    }
    if path.contains('\0') {
        return Err("guest path contains a NUL byte".into());
    }
    let parts: Vec<&str> = path[1..].split('/').collect();
    if parts.iter().all(|p| p.is_empty()) {
        return Err("a share cannot be mounted at /".into());
    }
    if parts
        .iter()
        .any(|p| p.is_empty() || *p == "." || *p == "..")
    {
        return Err(format!(
            "guest path {path:?} must be normalized (no `.`, `..`, `//` or trailing `/`)"
        ));
    }
    Ok(())
}

/// The list as bytes for the firmware config file.
pub fn encode(shares: &[Share]) -> Vec<u8> {
    postcard::to_stdvec(shares).unwrap_or_default()
}

/// The list from the firmware config file, every entry checked: at most [`MAX_SHARES`], tags
/// `minke<index>` in order, guest paths as [`check_guest_path`] wants and each used once.
pub fn decode(bytes: &[u8]) -> Result<Vec<Share>, ShareError> {
    let shares: Vec<Share> =
        postcard::from_bytes(bytes).map_err(|e| ShareError::Decode(e.to_string()))?;
    if shares.len() > MAX_SHARES {
        return Err(ShareError::TooMany(shares.len()));
    }
    for (index, s) in shares.iter().enumerate() {
        let bad = |why: String| ShareError::Entry { index, why };
        if s.tag != tag(index) {
            return Err(bad(format!("tag {:?} should be {:?}", s.tag, tag(index))));
        }
        check_guest_path(&s.path).map_err(bad)?;
        if shares[..index].iter().any(|o| o.path == s.path) {
            return Err(bad(format!("{} is shared twice", s.path)));
        }
    }
    Ok(shares)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share(i: usize, path: &str) -> Share {
        Share {
            tag: tag(i),
            path: path.into(),
            readonly: i % 2 == 1,
            kind: ShareKind::Virtiofs,
        }
    }

    #[test]
    fn lists_round_trip() {
        let list = vec![share(0, "/src"), share(1, "/data/in")];
        assert_eq!(decode(&encode(&list)).unwrap(), list);
        assert_eq!(decode(&encode(&[])).unwrap(), vec![]);
    }

    #[test]
    fn bad_entries_are_refused() {
        for path in [
            "src", "/", "//", "/a/../b", "/a/./b", "/a//b", "/a/", "/a\0b",
        ] {
            let e = decode(&encode(&[share(0, path)])).unwrap_err();
            assert!(
                matches!(e, ShareError::Entry { index: 0, .. }),
                "{path:?}: {e}"
            );
        }
        let e = decode(&encode(&[share(1, "/x")])).unwrap_err();
        assert!(e.to_string().contains("tag"), "{e}");
        let e = decode(&encode(&[share(0, "/x"), share(1, "/x")])).unwrap_err();
        assert!(e.to_string().contains("twice"), "{e}");
        let many: Vec<Share> = (0..=MAX_SHARES)
            .map(|i| share(i, &format!("/s{i}")))
            .collect();
        assert_eq!(
            decode(&encode(&many)).unwrap_err(),
            ShareError::TooMany(MAX_SHARES + 1)
        );
    }

    #[test]
    fn garbage_never_panics() {
        let good = encode(&[share(0, "/src"), share(1, "/data")]);
        for cut in 0..good.len() {
            let _ = decode(&good[..cut]);
        }
        for i in 0..good.len() {
            let mut b = good.clone();
            b[i] ^= 0xff;
            let _ = decode(&b);
        }
    }
}
