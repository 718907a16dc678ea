//! A container image run without rebuilding the guest's (`minke run --image REF`): the host
//! attaches the image's root filesystem as a read-only virtio disk and says so in a firmware
//! config file; PID1 mounts it under an overlay with a writable tmpfs layer before anything
//! runs, and the control agent execs into it as the container [`CONTAINER`].

use serde::{Deserialize, Serialize};

/// The firmware config name QEMU is given the description under.
pub const FW_CFG_NAME: &str = "opt/minke/image";
/// Where the guest's `qemu_fw_cfg` driver shows it.
pub const FW_CFG_SYSFS_PATH: &str = "/sys/firmware/qemu_fw_cfg/by_name/opt/minke/image/raw";
/// The virtio-blk serial of the disk holding the image (only the host sets serials).
pub const DISK_SERIAL: &str = "minke-image";
/// The container name execs use to run in the image.
pub const CONTAINER: &str = "image";
/// The image's read-only root filesystem.
pub const LOWER: &str = "/run/minke/image/lower";
/// The tmpfs holding the overlay's writable layer and work directory.
pub const RW: &str = "/run/minke/image/rw";
/// The merged root the container runs in.
pub const ROOT: &str = "/run/minke/image/root";

/// Filesystems a run image may have.
pub const FSTYPES: &[&str] = &["erofs"];

/// What the host tells PID1 about the run image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunImage {
    /// The disk's filesystem (one of [`FSTYPES`]).
    pub fstype: String,
}

/// Why the description was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    /// Not postcard.
    #[error("the run image description cannot be decoded: {0}")]
    Decode(String),
    /// A filesystem the guest does not mount for images.
    #[error("run image filesystem {0:?} is not one of {FSTYPES:?}")]
    Fstype(String),
}

/// Bytes for the firmware config file.
pub fn encode(image: &RunImage) -> Vec<u8> {
    postcard::to_stdvec(image).unwrap_or_default()
}

/// The description, checked.
pub fn decode(bytes: &[u8]) -> Result<RunImage, ImageError> {
    let img: RunImage =
        postcard::from_bytes(bytes).map_err(|e| ImageError::Decode(e.to_string()))?;
    if !FSTYPES.contains(&img.fstype.as_str()) {
        return Err(ImageError::Fstype(img.fstype));
    }
    Ok(img)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let img = RunImage {
            fstype: "erofs".into(),
        };
        assert_eq!(decode(&encode(&img)).unwrap(), img);
        let bad = RunImage {
            fstype: "ext4".into(),
        };
        assert!(matches!(decode(&encode(&bad)), Err(ImageError::Fstype(_))));
        assert!(decode(&[0xff; 3]).is_err());
    }
}
