//! Data disks as both sides make them: the ext4 identity a disk with a given label gets (its
//! filesystem UUID and directory hash seed, derived from the label so the same label gives
//! the same bytes), whether the shim creates it at first boot or the builder writes it as a
//! partition of a disk image, and the size a disk gets when its spec names none.

use sha2::{Digest, Sha256};

/// Size of a data disk whose spec gives none: 256 MiB.
pub const DEFAULT_SIZE: u64 = 256 << 20;

/// The filesystem UUID of the disk labelled `label`.
pub fn uuid_for(label: &str) -> String {
    fmt_uuid(&derive(b"minke-disk-uuid:", label))
}

/// The ext4 directory hash seed of the disk labelled `label`.
pub fn hash_seed_for(label: &str) -> String {
    fmt_uuid(&derive(b"minke-disk-hash-seed:", label))
}

/// mke2fs's options for the disk labelled `label` (after them: the device, and a size where
/// the device is larger than the filesystem). With `E2FSPROGS_FAKE_TIME` set to the one
/// timestamp in the environment, the same label and size give the same bytes.
pub fn mke2fs_args(label: &str, offset: Option<u64>) -> Vec<String> {
    let mut extended = format!("hash_seed={}", hash_seed_for(label));
    if let Some(o) = offset {
        extended.push_str(&format!(",offset={o}"));
    }
    [
        "-q",
        "-F",
        "-t",
        "ext4",
        "-L",
        label,
        "-U",
        &uuid_for(label),
        "-E",
        &extended,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// A v8 (name-derived) UUID's 16 bytes for `label` in the domain `domain`.
pub fn derive(domain: &[u8], label: &str) -> [u8; 16] {
    let d = Sha256::new()
        .chain_update(domain)
        .chain_update(label.as_bytes())
        .finalize();
    let mut u = [0u8; 16];
    u.copy_from_slice(&d[..16]);
    u[6] = (u[6] & 0x0f) | 0x80; // version 8: custom, name-derived
    u[8] = (u[8] & 0x3f) | 0x80; // RFC 4122 variant
    u
}

/// The canonical text form of a UUID.
pub fn fmt_uuid(u: &[u8; 16]) -> String {
    let h: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_derived_from_the_label() {
        assert_eq!(uuid_for("var"), uuid_for("var"));
        assert_ne!(uuid_for("var"), uuid_for("data"));
        assert_ne!(uuid_for("var"), hash_seed_for("var"));
        let u = uuid_for("var");
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "8");
        let a = mke2fs_args("var", Some(1 << 20)).join(" ");
        assert!(
            a.ends_with(&format!(
                "hash_seed={},offset=1048576",
                hash_seed_for("var")
            )),
            "{a}"
        );
    }
}
