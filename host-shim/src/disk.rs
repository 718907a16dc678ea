//! Data disks: created and formatted ext4 on first use, reproducibly (fixed UUID and hash seed
//! derived from the label, fixed timestamps). A new image is mode 0600 and the directories
//! created for it 0700, whatever the umask: a disk holds the guest's data.

use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::binaries::{self, NotFound, Tool};
use crate::config::{DiskFormat, DiskSpec};

/// A data disk could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// A needed program is missing.
    #[error(transparent)]
    Tool(#[from] NotFound),
    /// Creating the file failed.
    #[error("cannot create disk image {path}")]
    Create {
        /// Image path.
        path: PathBuf,
        /// OS error.
        source: io::Error,
    },
    /// A tool ran and failed.
    #[error("`{command}` failed: {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// Its stderr (or the spawn error).
        stderr: String,
    },
    /// The label cannot be used as a virtio serial and ext4 label.
    #[error("disk label {0:?} must be 1-16 characters of [A-Za-z0-9_-]")]
    BadLabel(String),
}

pub use minke_protocol::disk::{hash_seed_for, uuid_for};

fn check_label(label: &str) -> Result<(), DiskError> {
    let ok = !label.is_empty()
        && label.len() <= 16
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(DiskError::BadLabel(label.into()))
    }
}

/// Creates and formats the disk unless its image already exists. Returns whether it was created.
pub fn ensure(d: &DiskSpec) -> Result<bool, DiskError> {
    check_label(&d.label)?;
    if d.path.exists() {
        return Ok(false);
    }
    let create = |source| DiskError::Create {
        path: d.path.clone(),
        source,
    };
    if let Some(dir) = d.path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(create)?;
    }
    let dir = match d.path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let stem = d
        .path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Format a raw file under a fresh temporary name (created exclusively, mode 0600), then
    // convert or rename, so a failure never leaves a half-made disk at the final path.
    let (f, tmp) = crate::state::create_temp_in(dir, &stem).map_err(create)?;
    let res = (|| {
        f.set_len(d.size).map_err(create)?;
        drop(f);
        mkfs(&tmp, &d.label)?;
        match d.format {
            DiskFormat::Raw => std::fs::rename(&tmp, &d.path).map_err(create),
            DiskFormat::Qcow2 => {
                // qemu-img creates the output with the umask's mode: make it 0600 first.
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&d.path)
                    .map_err(create)?;
                let qemu_img = binaries::find(Tool::QemuImg)?;
                let mut c = Command::new(qemu_img);
                c.args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
                    .arg(&tmp)
                    .arg(&d.path);
                let r = run(c).and_then(|()| {
                    std::fs::set_permissions(&d.path, std::fs::Permissions::from_mode(0o600))
                        .map_err(create)
                });
                if r.is_err() {
                    let _ = std::fs::remove_file(&d.path);
                }
                r
            }
        }
    })();
    let _ = std::fs::remove_file(&tmp);
    res.map(|()| true)
}

/// What `e2fsck -fn` said about a disk image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fsck {
    /// Exit code 0: no errors, nothing to fix.
    pub clean: bool,
    /// e2fsck's exit code.
    pub code: i32,
    /// Its stdout and stderr.
    pub output: String,
}

/// Checks the ext4 image at `path` with `e2fsck -fn` (forced, read-only: it never changes the
/// image). The image must not be in use by a running VM.
pub fn check(path: &Path) -> Result<Fsck, DiskError> {
    let e2fsck = binaries::find(Tool::E2fsck)?;
    let mut c = Command::new(e2fsck);
    c.arg("-fn").arg(path);
    let out = c.output().map_err(|e| DiskError::Failed {
        command: format!("{c:?}"),
        stderr: e.to_string(),
    })?;
    let code = out.status.code().unwrap_or(-1);
    Ok(Fsck {
        clean: code == 0,
        code,
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    })
}

fn mkfs(path: &Path, label: &str) -> Result<(), DiskError> {
    let mke2fs = binaries::find(Tool::Mke2fs)?;
    let mut c = Command::new(mke2fs);
    // e2fsprogs treats a fake time of 0 as unset, hence the fallback of 1.
    let fake_time = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .filter(|v| v.parse::<u64>().is_ok_and(|n| n > 0))
        .ok_or(());
    let fake_time = fake_time.unwrap_or_else(|_| "1".into());
    c.env("E2FSPROGS_FAKE_TIME", fake_time)
        .args(minke_protocol::disk::mke2fs_args(label, None))
        .arg(path);
    run(c)
}

fn run(mut c: Command) -> Result<(), DiskError> {
    let command = format!("{c:?}");
    let out = c.output().map_err(|e| DiskError::Failed {
        command: command.clone(),
        stderr: e.to_string(),
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(DiskError::Failed {
            command,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_labels_are_rejected() {
        for l in ["", "a b", "waytoolonglabel_xx", "x/y"] {
            assert!(check_label(l).is_err(), "{l}");
        }
        check_label("var-1_a").unwrap();
    }

    #[test]
    fn raw_disk_is_reproducible_ext4() {
        if binaries::find(Tool::Mke2fs).is_err() {
            eprintln!("skipped: mke2fs not installed");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let mk = |n: &str| {
            let d = DiskSpec {
                label: "var".into(),
                path: dir.path().join(n),
                size: 8 << 20,
                format: DiskFormat::Raw,
            };
            assert!(ensure(&d).unwrap());
            assert!(!ensure(&d).unwrap(), "second use keeps the disk");
            std::fs::read(&d.path).unwrap()
        };
        let (a, b) = (mk("a.img"), mk("b.img"));
        assert!(a == b, "same label, same size: same bytes");
        if binaries::find(Tool::E2fsck).is_ok() {
            let fsck = check(&dir.path().join("a.img")).unwrap();
            assert!(fsck.clean, "{}", fsck.output);
            // A damaged superblock magic is found (read-only check: the image is unchanged).
            let bad = dir.path().join("bad.img");
            let mut bytes = a.clone();
            bytes[1024 + 0x38] ^= 0xff;
            std::fs::write(&bad, &bytes).unwrap();
            let fsck = check(&bad).unwrap();
            assert!(!fsck.clean, "{}", fsck.output);
            assert!(
                std::fs::read(&bad).unwrap() == bytes,
                "e2fsck -n changed the image"
            );
        }
    }
}
