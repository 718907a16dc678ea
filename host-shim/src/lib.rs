//! minke's host shim: boots an image under QEMU, connects to its agents over vsock (or
//! virtio-serial), and exposes one `Vm` API used by `minke run` and by tests.
//!
//! **Invariant:** this crate is the only one that knows QMP and QEMU command lines.
//!
//! - [`vm`]: [`Vm`] — boot, wait for the agents, exec, files, forward, pause/resume, power off;
//!   attach to a VM booted by another process;
//! - [`config`]: [`VmConfig`] and its parts;
//! - [`console`]: the guest console written to `console.log` with a cap;
//! - [`qemu`]: command lines of QEMU and the vsock backend;
//! - [`qmp`]: QEMU's control protocol;
//! - [`transport`]: byte streams to guest ports (hybrid vsock, kernel vsock, virtio-serial);
//! - [`serial`]: the host end of the virtio-serial transport (the stream multiplexer on
//!   QEMU's `serial.sock`);
//! - [`client`]: the host's half of each control-agent conversation;
//! - [`timesync`]: the host's time server;
//! - [`forward`]: host listeners piped into the guest;
//! - [`getfiles`]: copying out of a guest safely ([`getfiles::GetOptions`]);
//! - [`process`]: child processes, and proving a recorded pid before signalling it;
//! - [`disk`]: reproducible ext4 data disks;
//! - [`state`]: per-VM state directories and `minke ps`;
//! - [`reliability`]: the reliability drills (power cuts, killed agents, memory and disk
//!   pressure, boot cycles) the boot tests assert on and `cargo xtask bench reliability` prints;
//! - [`chart`]: boot chart SVG;
//! - [`binaries`]: finding host programs.

pub mod binaries;
pub mod chart;
pub mod client;
pub mod config;
pub mod console;
pub mod disk;
pub mod forward;
pub mod getfiles;
pub mod process;
pub mod qemu;
pub mod qmp;
pub mod reliability;
pub mod serial;
pub mod state;
mod sys;
pub mod timesync;
pub mod transport;
pub mod vm;

pub use chart::boot_chart_svg;
pub use client::{Output, Stdin};
pub use config::{Accel, DiskFormat, DiskSpec, Transport, VmConfig};
pub use forward::{ForwardListen, Forwarder};
pub use minke_protocol::msg::{ExecRequest, ForwardTarget, InfoReply};
pub use state::{list_vms, VmEntry};
pub use vm::{PowerOff, Vm, VmError, ATTACH_TIMEOUT};
