//! The per-VM secret: fresh random bytes for each boot, kept in the state directory (0600) for
//! the processes that attach.

use std::io;
use std::path::Path;

use minke_protocol::Secret;

use super::VmError;
use crate::qemu::files;

/// A fresh random secret for one boot.
pub(super) fn new_secret() -> Result<Secret, VmError> {
    let mut b = [0u8; minke_protocol::auth::SECRET_LEN];
    let mut filled = 0;
    while filled < b.len() {
        match rustix::rand::getrandom(&mut b[filled..], rustix::rand::GetRandomFlags::empty()) {
            Ok(n) => filled += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                return Err(VmError::Io {
                    what: "cannot make the VM's secret (getrandom)".into(),
                    source: e.into(),
                })
            }
        }
    }
    Secret::from_bytes(&b).map_err(|e| VmError::Io {
        what: "cannot make the VM's secret".into(),
        source: io::Error::other(e),
    })
}

/// The secret of the VM whose state directory is `dir`, written there by its booting process.
pub(super) fn read_secret(dir: &Path) -> Result<Secret, VmError> {
    let p = dir.join(files::SECRET);
    let bytes = std::fs::read(&p).map_err(|source| VmError::Io {
        what: format!(
            "cannot read the VM's secret {} (only the user who booted the VM can attach to it)",
            p.display()
        ),
        source,
    })?;
    Secret::from_bytes(&bytes).map_err(|e| VmError::Io {
        what: format!("{} is damaged", p.display()),
        source: io::Error::other(e),
    })
}
