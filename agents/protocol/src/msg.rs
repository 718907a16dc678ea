//! The messages of the host↔guest protocol, one enum per direction.
//!
//! Conversations, each on its own connection after the handshake
//! (`Hello` → `Welcome` | `Error`):
//!
//! - **exec** (control port): host `Exec`; guest `Started { pid }` or `Error`; then host
//!   `Stdin`/`StdinEof`/`Signal`/`Resize` and guest `Stdout`/`Stderr` in any order; the guest
//!   ends with `Exit { code }` (128 + signal number when killed by a signal) after all output.
//! - **put** (control port): host `PutFile`/`PutTree`, then `Data` chunks, then `End`; guest
//!   `Ok` once the file or tree is in place (atomically) or `Error`.
//! - **get** (control port): host `GetFile`/`GetTree`; guest `Data` chunks then `End`, or
//!   `Error`. Trees travel as a tar stream.
//! - **forward** (control port): host `Forward(target)`; guest `Ok` once connected to the target
//!   or `Error`; after `Ok` the connection carries raw bytes both ways, no more frames.
//! - **info**, **logs**, **power** (control port): one request, one reply (`Logs` replies with
//!   `Data` chunks then `End`).
//! - **timesync** (time port, guest connects to host): guest `TimeRequest`; host `TimeReply`
//!   with its receive and send times. The host may push `Resumed` at any time after the
//!   handshake to ask for an immediate resync.
//!
//! Every `Hello` carries a proof of the VM's secret (see [`crate::auth`]); a connection whose
//! proof does not verify is refused with `Error`.

use serde::{Deserialize, Serialize};

/// Messages sent by the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HostMsg {
    /// Opens a connection to the control agent.
    Hello {
        /// Protocol version the host speaks.
        version: u32,
        /// Free-form client name for logs.
        client: String,
        /// Fresh random bytes the agent's proof must cover.
        nonce: [u8; crate::auth::SECRET_LEN],
        /// The host's proof of the VM's secret over `nonce` ([`crate::Purpose::Control`]).
        proof: crate::auth::Proof,
    },
    /// Answers a guest-initiated connection's `Hello` (time sync).
    Welcome {
        /// Protocol version the host speaks.
        version: u32,
        /// The host's proof of the VM's secret over the guest's nonce
        /// ([`crate::Purpose::TimeHost`]).
        proof: crate::auth::Proof,
    },
    /// Refusal or failure, with a message for the user.
    Error(String),
    /// Run a process.
    Exec(ExecRequest),
    /// Bytes for the process's stdin (or the pty).
    Stdin(Vec<u8>),
    /// Closes the process's stdin.
    StdinEof,
    /// Send this signal number to the process.
    Signal(i32),
    /// The terminal's size changed (pty execs only).
    Resize(WinSize),
    /// Write one file at `path`, atomically, with `mode`; `Data`… `End` follow.
    PutFile {
        /// Absolute guest path.
        path: String,
        /// Permission bits.
        mode: u32,
    },
    /// Unpack a tar stream under directory `dest` (created if missing); `Data`… `End` follow.
    PutTree {
        /// Absolute guest directory.
        dest: String,
    },
    /// Read one file.
    GetFile {
        /// Absolute guest path.
        path: String,
    },
    /// Read a directory tree as a tar stream.
    GetTree {
        /// Absolute guest directory.
        path: String,
    },
    /// A chunk of a file or tar stream.
    Data(Vec<u8>),
    /// End of a `Data` stream.
    End,
    /// Connect this connection to a guest socket.
    Forward(ForwardTarget),
    /// Ask for agent and boot information.
    Info,
    /// Ask for the log ring buffer (of one service, or of all).
    Logs {
        /// Service name; `None` for every service.
        service: Option<String>,
    },
    /// Ask PID1 to power off or reboot.
    Power(PowerAction),
    /// Answer to [`GuestMsg::TimeRequest`]: host CLOCK_REALTIME in nanoseconds since the epoch.
    TimeReply {
        /// Sequence number copied from the request.
        seq: u64,
        /// Guest send time copied from the request (t1).
        t1: i64,
        /// Host receive time (t2).
        t2: i64,
        /// Host send time (t3).
        t3: i64,
    },
    /// The VM was just resumed after a pause: resync now.
    Resumed,
}

/// Messages sent by the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GuestMsg {
    /// Opens a guest-initiated connection (time sync).
    Hello {
        /// Protocol version the guest speaks.
        version: u32,
        /// Free-form agent name.
        client: String,
        /// Fresh random bytes the host's proof must cover.
        nonce: [u8; crate::auth::SECRET_LEN],
        /// The guest's proof of the VM's secret over `nonce` ([`crate::Purpose::TimeGuest`]).
        proof: crate::auth::Proof,
    },
    /// Accepts the host's `Hello`.
    Welcome {
        /// Protocol version the agent speaks.
        version: u32,
        /// Version of the in-guest binary.
        agent: String,
        /// The agent's proof of the VM's secret over the host's nonce
        /// ([`crate::Purpose::ControlAgent`]).
        proof: crate::auth::Proof,
    },
    /// Refusal or failure, with a message for the user.
    Error(String),
    /// Generic success.
    Ok,
    /// The exec'd process started.
    Started {
        /// Its guest pid.
        pid: u32,
    },
    /// Bytes the process wrote to stdout (or the pty).
    Stdout(Vec<u8>),
    /// Bytes the process wrote to stderr.
    Stderr(Vec<u8>),
    /// The process ended; all its output was sent before.
    Exit {
        /// Exit code, or 128 + signal number.
        code: i32,
    },
    /// A chunk of a file, tar stream or log.
    Data(Vec<u8>),
    /// End of a `Data` stream.
    End,
    /// Reply to [`HostMsg::Info`].
    Info(InfoReply),
    /// Time sync request; `t1` is guest CLOCK_REALTIME in ns when sent.
    TimeRequest {
        /// Sequence number echoed in the reply.
        seq: u64,
        /// Guest send time (t1).
        t1: i64,
    },
}

/// What to run and how.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// Program and arguments; never interpreted by a shell. `argv[0]` is looked up in `PATH`
    /// when it contains no `/`.
    pub argv: Vec<String>,
    /// Extra environment (added to a minimal default one).
    pub env: Vec<(String, String)>,
    /// Working directory (default `/`).
    pub cwd: Option<String>,
    /// User id (default 0).
    pub uid: Option<u32>,
    /// Group id (default the user's, or 0).
    pub gid: Option<u32>,
    /// Allocate a pty of this size; stdout and stderr are then merged.
    pub tty: Option<WinSize>,
    /// Run inside this container of the image (see [`crate::config::Container`]).
    pub container: Option<String>,
}

/// Terminal size.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WinSize {
    /// Rows.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

/// Where a forwarded connection goes inside the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ForwardTarget {
    /// A TCP port on the guest's loopback.
    Tcp(u16),
    /// A Unix stream socket path.
    Unix(String),
}

/// Power request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PowerAction {
    /// Clean shutdown, then power off.
    Poweroff,
    /// Clean shutdown, then reboot.
    Reboot,
}

/// Reply to [`HostMsg::Info`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InfoReply {
    /// Version of the in-guest binary.
    pub agent: String,
    /// `uname -r` of the guest kernel.
    pub kernel: String,
    /// Contents of `/run/minke/boot.json` (a [`crate::config::BootTimeline`]).
    pub boot_json: String,
    /// The image config the init is running with (`/etc/minke/image.json`).
    pub config_json: String,
    /// Guest CLOCK_BOOTTIME in nanoseconds.
    pub boottime_ns: u64,
}

/// The `Error` an exec answers when its program is not in the guest; the host compares
/// against it to suggest bringing the program along (`minke run --add`).
pub fn program_not_found(argv0: &str) -> String {
    format!("{argv0}: no such file or directory")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_round_trips() {
        let host = [
            HostMsg::Hello {
                version: 1,
                client: "c".into(),
                nonce: [5; 32],
                proof: [3; 32],
            },
            HostMsg::Welcome {
                version: 1,
                proof: [4; 32],
            },
            HostMsg::Error("e".into()),
            HostMsg::Exec(ExecRequest {
                argv: vec!["a".into()],
                env: vec![("K".into(), "V".into())],
                cwd: Some("/".into()),
                uid: Some(1),
                gid: Some(2),
                tty: Some(WinSize { rows: 24, cols: 80 }),
                container: Some("arm64".into()),
            }),
            HostMsg::Stdin(vec![0; 3]),
            HostMsg::StdinEof,
            HostMsg::Signal(15),
            HostMsg::Resize(WinSize { rows: 1, cols: 2 }),
            HostMsg::PutFile {
                path: "/a".into(),
                mode: 0o644,
            },
            HostMsg::PutTree { dest: "/d".into() },
            HostMsg::GetFile { path: "/a".into() },
            HostMsg::GetTree { path: "/d".into() },
            HostMsg::Data(vec![1]),
            HostMsg::End,
            HostMsg::Forward(ForwardTarget::Tcp(80)),
            HostMsg::Forward(ForwardTarget::Unix("/run/s".into())),
            HostMsg::Info,
            HostMsg::Logs { service: None },
            HostMsg::Power(PowerAction::Reboot),
            HostMsg::TimeReply {
                seq: 1,
                t1: -1,
                t2: 2,
                t3: 3,
            },
            HostMsg::Resumed,
        ];
        for m in host {
            let b = postcard::to_stdvec(&m).unwrap();
            assert_eq!(postcard::from_bytes::<HostMsg>(&b).unwrap(), m);
        }
        let guest = [
            GuestMsg::Hello {
                version: 1,
                client: "t".into(),
                nonce: [1; 32],
                proof: [2; 32],
            },
            GuestMsg::Welcome {
                version: 1,
                agent: "0.1".into(),
                proof: [6; 32],
            },
            GuestMsg::Error("x".into()),
            GuestMsg::Ok,
            GuestMsg::Started { pid: 9 },
            GuestMsg::Stdout(vec![1]),
            GuestMsg::Stderr(vec![2]),
            GuestMsg::Exit { code: 137 },
            GuestMsg::Data(vec![]),
            GuestMsg::End,
            GuestMsg::Info(InfoReply::default()),
            GuestMsg::TimeRequest { seq: 3, t1: 4 },
        ];
        for m in guest {
            let b = postcard::to_stdvec(&m).unwrap();
            assert_eq!(postcard::from_bytes::<GuestMsg>(&b).unwrap(), m);
        }
    }
}
