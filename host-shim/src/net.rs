//! User-mode networking for a guest (`minke run --net user`), with no root on the host: passt
//! (one process per VM, on a Unix socket QEMU's `-netdev stream` connects to) where it is
//! installed, else QEMU's built-in slirp. Both get the same addresses
//! ([`minke_protocol::net::NetConfig`]), which PID1 reads from a firmware config file and
//! sets up itself; the gateway address reaches the host's own loopback.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use minke_protocol::net::{self as contract, NetConfig};

use crate::binaries::{self, NotFound, Tool};
use crate::config::{NetBackend, NetMode};
use crate::process::Guarded;
pub use crate::state::UsedNet;
use crate::state::{self, files, StateError};

/// Why networking could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// passt was asked for and is missing.
    #[error(transparent)]
    Tool(#[from] NotFound),
    /// A state file could not be written.
    #[error(transparent)]
    State(#[from] StateError),
    /// passt could not be started.
    #[error("cannot start {}", bin.display())]
    Spawn {
        /// The program.
        bin: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// passt exited at once.
    #[error("passt exited ({status}) at start; it said:\n{log}")]
    Startup {
        /// Its exit status.
        status: String,
        /// The end of its log.
        log: String,
    },
}

/// Networking decided for a boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetPlan {
    /// Who serves it.
    pub used: UsedNet,
    /// The guest's addresses.
    pub config: NetConfig,
}

/// Decides networking for `mode`: none, or passt when installed (or asked for), else slirp.
pub fn plan(mode: NetMode, backend: NetBackend) -> Result<Option<NetPlan>, NetError> {
    if mode == NetMode::None {
        return Ok(None);
    }
    let used = match backend {
        NetBackend::Passt => {
            binaries::find(Tool::Passt)?;
            UsedNet::Passt
        }
        NetBackend::Slirp => UsedNet::Slirp,
        NetBackend::Auto => match binaries::find(Tool::Passt) {
            Ok(_) => UsedNet::Passt,
            Err(_) => UsedNet::Slirp,
        },
    };
    Ok(Some(NetPlan {
        used,
        config: NetConfig::default(),
    }))
}

/// Writes the configuration PID1 reads (0600, handed to QEMU by file).
pub(crate) fn write_config(state: &Path, plan: &NetPlan) -> Result<(), NetError> {
    state::write_private(&state.join(files::NET), &plan.config.encode())?;
    Ok(())
}

/// passt's arguments: the connected socket it is handed as descriptor [`PASST_FD`], IPv4
/// only, the plan's addresses, DNS queries to the guest's name server forwarded to the
/// host's, no ports forwarded into the guest (minke's own forwards go over vsock).
pub(crate) fn passt_args(plan: &NetPlan) -> Vec<String> {
    let c = &plan.config;
    vec![
        "--foreground".into(),
        "--stderr".into(),
        "--ipv4-only".into(),
        format!("--fd={PASST_FD}"),
        format!("--address={}", c.address),
        format!("--netmask={}", c.prefix),
        format!("--gateway={}", c.gateway),
        format!("--dns-forward={}", c.dns),
        "--tcp-ports=none".into(),
        "--udp-ports=none".into(),
    ]
}

/// The descriptor passt and QEMU each get their end of the socket pair as.
pub(crate) const PASST_FD: i32 = 3;

/// passt serving one QEMU, and the end of their socket pair QEMU gets: a socket pair, not a
/// socket in the file system, so no other process can take QEMU's place (passt drops root,
/// and would serve whoever connected first).
#[derive(Debug)]
pub(crate) struct Passt {
    /// The passt process (killed on drop).
    process: Guarded,
    /// QEMU's end, handed to it as [`PASST_FD`].
    pub(crate) qemu_end: OwnedFd,
}

/// Starts passt when the plan uses it.
pub(crate) fn start(state: &Path, plan: Option<&NetPlan>) -> Result<Option<Passt>, NetError> {
    let Some(plan) = plan.filter(|p| p.used == UsedNet::Passt) else {
        return Ok(None);
    };
    let bin = binaries::find(Tool::Passt)?;
    let spawn_err = |source| NetError::Spawn {
        bin: bin.clone(),
        source,
    };
    let (passt_end, qemu_end) = rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::STREAM,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| spawn_err(e.into()))?;
    let log_path = state.join(files::NET_LOG);
    let log = state::create_private(&log_path)?;
    let log2 = log.try_clone().map_err(spawn_err)?;
    let mut cmd = Command::new(&bin);
    cmd.args(passt_args(plan))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    crate::sys::inherit_fd_as(&mut cmd, passt_end.as_raw_fd(), PASST_FD);
    let mut process = Guarded::spawn(cmd).map_err(spawn_err)?;
    drop(passt_end);
    if let Some(status) = process.try_wait() {
        return Err(NetError::Startup {
            status: status.to_string(),
            log: state::tail(&log_path, 10),
        });
    }
    Ok(Some(Passt { process, qemu_end }))
}

impl Passt {
    /// Fails if passt has exited (say, at start, over an option or its sandbox), with what
    /// it said.
    pub(crate) fn check_running(&mut self, state: &Path) -> Result<(), NetError> {
        match self.process.try_wait() {
            None => Ok(()),
            Some(status) => Err(NetError::Startup {
                status: status.to_string(),
                log: state::tail(&state.join(files::NET_LOG), 10),
            }),
        }
    }
}

/// QEMU's arguments: a virtio-net card on passt's socket or on slirp, and the configuration
/// for PID1 as a firmware config file.
pub(crate) fn qemu_args(
    state: &Path,
    machine: crate::state::UsedMachine,
    plan: Option<&NetPlan>,
) -> Vec<String> {
    let Some(plan) = plan else {
        return Vec::new();
    };
    let comma = |p: &Path| p.display().to_string().replace(',', ",,");
    let c = &plan.config;
    let netdev = match plan.used {
        UsedNet::Passt => format!("stream,id=net0,server=off,addr.type=fd,addr.str={PASST_FD}"),
        UsedNet::Slirp => format!(
            "user,id=net0,ipv6=off,net={}/{},host={},dns={},dhcpstart={}",
            network_of(c),
            c.prefix,
            c.gateway,
            c.dns,
            c.address
        ),
    };
    vec![
        "-netdev".into(),
        netdev,
        "-device".into(),
        format!("{},netdev=net0", machine.virtio("virtio-net")),
        "-fw_cfg".into(),
        format!(
            "name={},file={}",
            contract::FW_CFG_NAME,
            comma(&state.join(files::NET))
        ),
    ]
}

fn network_of(c: &NetConfig) -> std::net::Ipv4Addr {
    let mask = u32::MAX
        .checked_shl(32u32.saturating_sub(u32::from(c.prefix)))
        .unwrap_or(0);
    std::net::Ipv4Addr::from(u32::from(c.address) & mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_lines_for_each_backend() {
        let st = Path::new("/st");
        let p = |used| NetPlan {
            used,
            config: NetConfig::default(),
        };
        let a = qemu_args(st, crate::state::UsedMachine::Q35, Some(&p(UsedNet::Passt))).join(" ");
        assert!(a.contains("-netdev stream,id=net0,server=off,addr.type=fd,addr.str=3 -device virtio-net-pci,netdev=net0"), "{a}");
        assert!(a.contains("-fw_cfg name=opt/minke/net,file=/st/net"), "{a}");
        let s = qemu_args(st, crate::state::UsedMachine::Q35, Some(&p(UsedNet::Slirp))).join(" ");
        assert!(s.contains("-netdev user,id=net0,ipv6=off,net=10.0.2.0/24,host=10.0.2.2,dns=10.0.2.3,dhcpstart=10.0.2.15"), "{s}");
        assert!(qemu_args(st, crate::state::UsedMachine::Q35, None).is_empty());
        let pa = passt_args(&p(UsedNet::Passt));
        assert!(pa.contains(&"--fd=3".to_owned()), "{pa:?}");
        assert!(pa.contains(&"--tcp-ports=none".to_owned()), "{pa:?}");
        assert_eq!(plan(NetMode::None, NetBackend::Auto).unwrap(), None);
        assert_eq!(
            plan(NetMode::User, NetBackend::Slirp)
                .unwrap()
                .unwrap()
                .used,
            UsedNet::Slirp
        );
    }
}
