//! The contracts between minke's host and guest: every value that crosses a process or machine
//! boundary is defined here and nowhere else.
//!
//! - [`auth`]: the per-VM secret and the proofs of it that open every conversation;
//! - [`wire`]: framing and the versioned handshake of the host↔guest protocol;
//! - [`msg`]: the messages carried in those frames;
//! - [`mux`]: the stream multiplexer that carries many such connections over the one
//!   virtio-serial port of the serial transport;
//! - [`console`]: the console lines PID1 and the agents print that the host reads, whose
//!   wording is therefore part of the contract;
//! - [`net`]: the network interface the host configures for a guest it gives a network card;
//! - [`shares`]: the host directories shared with a guest at run time, as the host hands
//!   them to PID1;
//! - [`config`]: the image config the builder writes for the init (`/etc/minke/image.cfg`, with
//!   a JSON copy at `/etc/minke/image.json` for people), and the boot timeline the init
//!   writes to `/run/minke/boot.json`.
//!
//! **Invariant:** this crate does no I/O of its own. It encodes and decodes bytes, and its frame
//! helpers are generic over `std::io::Read`/`Write` so callers choose the transport (vsock,
//! vhost-user hybrid vsock, virtio-serial, or an in-memory pipe in tests).

#![forbid(unsafe_code)]

/// Directories PID1 mounts a filesystem over early in boot: whatever the initramfs holds
/// below them is hidden from then on, so nothing meant to be seen may be put there.
pub const BOOT_MOUNTS: &[&str] = &["/dev", "/proc", "/sys", "/run", "/tmp"];

pub mod arch;
pub mod auth;
pub mod config;
pub mod console;
pub mod disk;
pub mod image;
pub mod msg;
pub mod mux;
pub mod net;
pub mod shares;
pub mod wire;

pub use auth::{Purpose, Secret};
pub use config::ImageConfig;
pub use msg::{GuestMsg, HostMsg};
pub use wire::{read_frame, write_frame, FrameError, MAX_FRAME, PROTOCOL_VERSION};

/// Default vsock port of the control agent (host connects to the guest).
///
/// A guest process that takes this port while the agent restarts cannot pose as the agent:
/// its `Welcome` would have to prove the VM's secret over the host's nonce. (A port below
/// 1024, which only a privileged guest process may bind, would also keep it from seeing the
/// host's `Hello`; with vhost-device-vsock 0.3.0 a host connection to such a port was closed
/// at once about one time in three while a guest process connected to it, so the port stays.)
pub const CONTROL_PORT: u32 = 1024;
/// Default vsock port of the time sync service (guest connects to the host): 2^31 + 1025.
///
/// High on purpose. vhost-device-vsock (0.3.0, the newest) numbers the host end of each
/// host-initiated connection 0, 1, 2, … and, once that counter meets the host port of a
/// guest-initiated connection that is still open, refuses every later connection for good
/// (`NoFreeLocalPort`). With the time sync connection on port 1025, a VM stopped answering
/// after about a thousand execs; this port is two billion connections away.
pub const TIMESYNC_PORT: u32 = 0x8000_0401;
/// The kernel command line of an image whose spec names none (and of a VM booted without one).
///
/// - `cryptomgr.notests` skips the kernel's self-tests of its crypto algorithms, which a Debian
///   kernel runs at boot for every algorithm it registers: about 0.35 s of a 2 s boot under
///   TCG. Kernels built from kernel-config/ have no crypto manager and ignore it.
/// - `i8042.noaux` leaves the PS/2 mouse port of the emulated keyboard controller alone. A
///   kernel with the PS/2 mouse driver built in otherwise probes it for about 0.4 s in the
///   background, just when the first command runs (`minke run -- true` took 0.14 s longer on
///   the built kernel). The keyboard port stays, for QEMU's `sendkey`.
/// - `noreplace-smp` keeps the `lock` prefixes of an SMP kernel booted on one CPU. Without it
///   the kernel rewrites every one of them in its text, one patched byte at a time, each write
///   flushing what QEMU has translated: about 0.4 s of a TCG boot of Debian's kernel and 0.1 s
///   of the built one. A locked instruction on one CPU costs a few cycles more; nothing else
///   changes (a guest with more CPUs keeps them anyway).
pub const DEFAULT_CMDLINE: &str =
    "console=ttyS0 quiet panic=-1 cryptomgr.notests i8042.noaux noreplace-smp";
/// vsock CID of the host, the only peer the control agent accepts.
pub const HOST_CID: u32 = 2;
/// Where the builder puts the image config the init and agents read (see
/// [`ImageConfig::encode`]).
pub const IMAGE_CONFIG_BIN_PATH: &str = "/etc/minke/image.cfg";
/// Where the builder puts the same image config as JSON, for people and `Info`.
pub const IMAGE_CONFIG_PATH: &str = "/etc/minke/image.json";
/// Where the init records the boot timeline.
pub const BOOT_TIMELINE_PATH: &str = "/run/minke/boot.json";
/// Where runtime config sent by the host at boot lands.
pub const RUNTIME_CONFIG_DIR: &str = "/run/config";
/// An error and each of its causes, joined with ": " on one line: for logs that show no
/// chain of their own (errors here keep their cause as `source()`, not in their message).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

/// Line the init prints on the console once every agent is ready.
pub const READY_MARKER: &str = "minke: ready";
