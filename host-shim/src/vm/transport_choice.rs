//! The transport choice: kernel vhost-vsock, else vhost-user vsock, else virtio-serial (with
//! one warning), or the one the configuration names.

use super::accel::{can_open_rw, warn_once};
use super::VmError;
use crate::binaries::{self, Tool};
use crate::config::Transport;
use crate::state::UsedTransport;

/// First guest CID tried with kernel vhost-vsock; the pid spreads concurrent shims apart.
fn first_cid() -> u32 {
    3 + std::process::id() % 100_000
}

pub(super) fn resolve_transport(t: Transport) -> Result<UsedTransport, VmError> {
    let kernel = || can_open_rw("/dev/vhost-vsock");
    match t {
        Transport::VhostKernel => kernel()
            .map(|()| UsedTransport::VhostKernel { cid: first_cid() })
            .map_err(|e| VmError::VhostKernel(format!("/dev/vhost-vsock: {e}"))),
        Transport::VhostUser => {
            binaries::find(Tool::VhostDeviceVsock)?;
            Ok(UsedTransport::VhostUser)
        }
        Transport::Serial => Ok(UsedTransport::Serial),
        Transport::Auto => {
            if kernel().is_ok() {
                Ok(UsedTransport::VhostKernel { cid: first_cid() })
            } else if binaries::find(Tool::VhostDeviceVsock).is_ok() {
                Ok(UsedTransport::VhostUser)
            } else {
                warn_once(
                    "warning: no vsock transport (no /dev/vhost-vsock, no vhost-device-vsock): using \
                     virtio-serial; install vhost-device-vsock with `cargo install --locked vhost-device-vsock`",
                );
                Ok(UsedTransport::Serial)
            }
        }
    }
}
