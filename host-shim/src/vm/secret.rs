//! The per-VM secret: fresh random bytes for each boot, kept in the state directory (0600) for
//! the processes that attach.

use std::io;
use std::path::Path;

use minke_protocol::Secret;

use super::VmError;
use crate::state::files;

/// A fresh random secret for one boot.
pub(super) fn new_secret() -> Result<Secret, VmError> {
    let b = crate::client::random32().map_err(|source| VmError::Io {
        what: "cannot make the VM's secret (getrandom)".into(),
        source,
    })?;
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
