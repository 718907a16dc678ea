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
//! - [`chart`]: boot chart SVG;
//! - [`binaries`]: finding host programs.
//!
//! The reliability drills the boot tests assert on live in the dev-only crate `minke-drills`
//! (`host-shim/drills`), built on this API.

#![deny(unsafe_code)]

pub mod binaries;
pub mod chart;
pub mod client;
pub mod config;
pub mod console;
pub mod disk;
pub mod forward;
pub mod getfiles;
pub mod net;
pub mod process;
pub mod qemu;
pub mod qmp;
pub mod serial;
pub mod share;
pub mod state;
#[allow(unsafe_code)] // the one module with raw syscalls, each with a SAFETY comment
mod sys;
pub mod timesync;
pub mod transport;
pub mod vm;

pub use chart::boot_chart_svg;
pub use client::{Output, Stdin};
pub use config::{
    Accel, DiskFormat, DiskSpec, EfiBoot, EfiMedium, Machine, NetBackend, NetMode, ShareBackend,
    ShareSpec, Transport, VmConfig,
};
pub use forward::{ForwardListen, Forwarder};
pub use minke_protocol::msg::{ExecRequest, ForwardTarget, InfoReply};
pub use state::{list_vms, VmEntry};
pub use vm::{PowerOff, Vm, VmError, ATTACH_TIMEOUT};

pub use minke_protocol::error_chain;

#[cfg(test)]
mod tests {
    use std::error::Error;
    use std::io;
    use std::path::PathBuf;

    use minke_protocol::FrameError;

    use super::error_chain;
    use crate::client::AgentError;
    use crate::qmp::QmpError;
    use crate::state::StateError;
    use crate::transport::ConnectError;
    use crate::VmError;

    /// The lines `minke` prints for `e`: the message, then each cause.
    fn printed(e: &dyn Error) -> Vec<String> {
        let mut lines = vec![e.to_string()];
        let mut cause = e.source();
        while let Some(c) = cause {
            lines.push(c.to_string());
            cause = c.source();
        }
        lines
    }

    fn os(code: i32) -> io::Error {
        io::Error::from_raw_os_error(code)
    }

    #[test]
    fn each_cause_is_printed_once() {
        let enoent = os(libc::ENOENT).to_string();
        let epipe = os(libc::EPIPE).to_string();
        let agent = |e: io::Error| VmError::Agent(AgentError::Frame(FrameError::Io(e)));
        let cases: Vec<(Box<dyn Error>, &str)> = vec![
            (Box::new(agent(os(libc::ENOENT))), &enoent),
            (Box::new(agent(os(libc::EPIPE))), &epipe),
            (
                Box::new(VmError::Connect(ConnectError::Socket {
                    path: PathBuf::from("/run/vm/vm.vsock"),
                    source: os(libc::ENOENT),
                })),
                &enoent,
            ),
            (
                Box::new(VmError::Connect(ConnectError::Serial {
                    port: 1024,
                    source: minke_mux::OpenError::Local(os(libc::EPIPE)),
                })),
                &epipe,
            ),
            (
                Box::new(VmError::Qmp(QmpError::Connect {
                    path: PathBuf::from("/run/vm/qmp.sock"),
                    source: os(libc::ENOENT),
                })),
                &enoent,
            ),
            (
                Box::new(VmError::State(StateError::Io {
                    path: PathBuf::from("/run/vm/run.json"),
                    source: os(libc::ENOENT),
                })),
                &enoent,
            ),
            (
                Box::new(VmError::Spawn {
                    what: "qemu-system-x86_64".into(),
                    source: os(libc::ENOENT),
                }),
                &enoent,
            ),
        ];
        for (e, leaf) in cases {
            let lines = printed(e.as_ref());
            assert!(lines.len() >= 2, "{lines:?}");
            assert_eq!(lines.last().map(String::as_str), Some(leaf), "{lines:?}");
            for (i, a) in lines.iter().enumerate() {
                for (j, b) in lines.iter().enumerate() {
                    assert!(
                        i == j || !a.contains(b.as_str()),
                        "line {i} repeats {j}: {lines:?}"
                    );
                }
            }
            let one_line = error_chain(e.as_ref());
            assert_eq!(one_line, lines.join(": "));
            assert_eq!(one_line.matches(leaf).count(), 1, "{one_line}");
        }
    }

    #[test]
    fn a_nested_agent_error_reads_as_one_line() {
        let e = VmError::Agent(AgentError::Frame(FrameError::Io(os(libc::EPIPE))));
        assert_eq!(
            error_chain(&e),
            format!(
                "talking to the guest agent failed: transport error: {}",
                os(libc::EPIPE)
            )
        );
    }
}
