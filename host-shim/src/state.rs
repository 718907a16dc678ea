//! Per-VM state directories: where they are, what a running VM records there, and listing them
//! for `minke ps`.
//!
//! Other local users must not read a VM's logs, reach its sockets or forge its records: the
//! state directories are 0700 (created so, tightened when they exist) and every file minke
//! writes there is created 0600 whatever the umask ([`create_private`], [`write_private`]).
//! The booting process holds an exclusive lock on `lock` for the VM's life ([`VmLock`]), so two
//! boots of one name cannot race.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::process::ProcStamp;

/// File names inside a VM's state directory.
pub mod files {
    /// QMP socket.
    pub const QMP: &str = "qmp.sock";
    /// vhost-user control socket between QEMU and the vsock backend.
    pub const VHU: &str = "vhu.sock";
    /// Hybrid vsock socket (host→guest `CONNECT`; guest→host `vm.vsock_PORT`).
    pub const VSOCK: &str = "vm.vsock";
    /// virtio-serial socket (multiplexed transport).
    pub const SERIAL: &str = "serial.sock";
    /// Serial console output.
    pub const CONSOLE: &str = "console.log";
    /// The socket QEMU writes the console to; the shim reads it into [`CONSOLE`].
    pub const CONSOLE_SOCKET: &str = "console.sock";
    /// QEMU's own stderr.
    pub const QEMU_LOG: &str = "qemu.log";
    /// The vsock backend's output.
    pub const BACKEND_LOG: &str = "vsock-backend.log";
    /// Pids and transport of a running VM ([`crate::state::RunInfo`]).
    pub const RUN: &str = "run.json";
    /// Copy of the guest boot timeline.
    pub const BOOT_JSON: &str = "boot.json";
    /// The VM's secret (0600), handed to QEMU as a firmware config file and read by
    /// attached processes to prove themselves (see `minke_protocol::auth`).
    pub const SECRET: &str = "secret";
    /// Written by the booting process once the guest is ready (the tagged ready line), so
    /// attached processes see readiness even after the console log rotated.
    pub const READY: &str = "ready";
    /// The initrd of a boot with extra archives (the image's with them appended).
    pub const INITRD: &str = "initrd.img";
    /// The network configuration handed to the guest (0600; see `minke_protocol::net`).
    pub const NET: &str = "net";
    /// passt's log.
    pub const NET_LOG: &str = "passt.log";
    /// The share list handed to the guest (0600; see `minke_protocol::shares`).
    pub const SHARES: &str = "shares";
    /// The run image's description handed to the guest (0600; see `minke_protocol::image`).
    pub const IMAGE: &str = "image";
    /// Prefix of each virtiofsd's socket and log (`fs0.sock`, `fs0.log`).
    pub const FS_PREFIX: &str = "fs";
}

/// A share checked and resolved: the host directory with symlinks resolved, and the guest's
/// view of it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Planned {
    /// The host directory, canonical.
    pub host: PathBuf,
    /// What the guest is told.
    pub share: minke_protocol::shares::Share,
}

/// The user-mode network stack serving a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum UsedNet {
    /// passt, a process of its own.
    Passt,
    /// QEMU's slirp.
    Slirp,
}

impl UsedNet {
    /// The name shown to people (`minke ps`).
    pub fn name(self) -> &'static str {
        match self {
            UsedNet::Passt => "passt",
            UsedNet::Slirp => "slirp",
        }
    }
}

/// The QEMU machine actually used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum UsedMachine {
    /// x86_64's standard machine (PCIe).
    Q35,
    /// aarch64's standard machine (PCIe).
    Virt,
    /// x86_64's `microvm` (virtio over MMIO).
    Microvm,
}

impl UsedMachine {
    /// QEMU's name for it (also what `minke ps` shows).
    pub fn name(self) -> &'static str {
        match self {
            UsedMachine::Q35 => "q35",
            UsedMachine::Virt => "virt",
            UsedMachine::Microvm => "microvm",
        }
    }

    /// A virtio device's QEMU name on this machine's bus: `virtio-blk` becomes
    /// `virtio-blk-pci` on a PCI machine and `virtio-blk-device` (virtio-mmio) on microvm.
    pub fn virtio(self, device: &str) -> String {
        match self {
            UsedMachine::Q35 | UsedMachine::Virt => format!("{device}-pci"),
            UsedMachine::Microvm => format!("{device}-device"),
        }
    }
}

/// Accelerator actually used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum UsedAccel {
    /// Hardware virtualization.
    Kvm,
    /// Software emulation.
    Tcg,
}

/// Transport actually used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum UsedTransport {
    /// Kernel vhost-vsock with this guest CID.
    VhostKernel {
        /// Guest CID.
        cid: u32,
    },
    /// vhost-user vsock (hybrid vsock sockets in the state dir).
    VhostUser,
    /// virtio-serial with the connection multiplexer.
    Serial,
}

/// The lock file a booting process holds for the VM's life.
pub const LOCK_FILE: &str = "lock";

/// A state directory problem.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Neither `XDG_STATE_HOME` nor `HOME` is set.
    #[error("cannot find a state directory: set XDG_STATE_HOME or HOME")]
    NoHome,
    /// A file in the state directory could not be read or written.
    #[error("{path}")]
    Io {
        /// File.
        path: PathBuf,
        /// OS error.
        source: io::Error,
    },
    /// The name cannot be a directory name.
    #[error("VM name {0:?} must be 1-64 characters of [A-Za-z0-9._-], not starting with '.'")]
    BadName(String),
    /// No running VM of that name.
    #[error("no running VM named {0:?} (see `minke ps`)")]
    NotRunning(String),
    /// A VM of that name is already running (or booting).
    #[error("a VM named {name:?} is already running{}: stop it or pick another name", busy_pid(.pid))]
    Busy {
        /// Name.
        name: String,
        /// Its QEMU pid, when it recorded one.
        pid: Option<u32>,
    },
    /// A directory or file is not private to this user.
    #[error("{path}: {why}; remove it or choose another state directory")]
    NotPrivate {
        /// The path.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// A pid recorded in `run.json` was not signalled: nothing proves it is still this VM's.
    #[error("did not signal {what} (recorded pid {pid}): run.json does not prove that pid is still this VM's; if the VM still runs, stop it from the process that booted it")]
    Unproven {
        /// Which process.
        what: &'static str,
        /// The recorded pid.
        pid: u64,
        /// Why the proof failed.
        source: crate::process::NotProven,
    },
    /// A socket path would exceed the kernel's limit.
    #[error("socket path {0} is longer than 107 bytes: use a shorter state directory or VM name")]
    PathTooLong(PathBuf),
}

fn busy_pid(pid: &Option<u32>) -> String {
    pid.map(|p| format!(" (QEMU pid {p})")).unwrap_or_default()
}

/// What a running VM records in `run.json`.
///
/// The file is input from disk: nothing in it is signalled unless the process holding a
/// recorded pid is proven to be the recorded one (see [`ProcStamp`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunInfo {
    /// VM name.
    pub name: String,
    /// QEMU's pid.
    pub qemu_pid: u32,
    /// The vsock backend's pid, if any.
    pub backend_pid: Option<u32>,
    /// What proves `qemu_pid` still names this VM's QEMU.
    #[serde(default)]
    pub qemu_stamp: Option<ProcStamp>,
    /// What proves `backend_pid` still names this VM's vsock backend.
    #[serde(default)]
    pub backend_stamp: Option<ProcStamp>,
    /// The pid of the shim that owns the VM.
    pub shim_pid: u32,
    /// Accelerator in use.
    pub accel: UsedAccel,
    /// QEMU machine in use (absent in the records of older versions).
    #[serde(default)]
    pub machine: Option<UsedMachine>,
    /// Transport in use.
    pub transport: UsedTransport,
    /// Host ports published to guest ports.
    pub publish: Vec<(u16, u16)>,
    /// Host directories shared with the guest.
    #[serde(default)]
    pub shares: Vec<Planned>,
    /// Who serves the guest's network, if it has one.
    #[serde(default)]
    pub net: Option<UsedNet>,
    /// Start time, seconds since the epoch.
    pub started_unix: u64,
}

/// A running VM as listed by [`list_vms`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmEntry {
    /// Its state directory.
    pub state_dir: PathBuf,
    /// What it recorded.
    pub run: RunInfo,
}

/// `$XDG_STATE_HOME/minke` (fallback `~/.local/state/minke`).
pub fn state_root() -> Result<PathBuf, StateError> {
    if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|x| !x.is_empty()) {
        return Ok(PathBuf::from(x).join("minke"));
    }
    let home = std::env::var_os("HOME")
        .filter(|x| !x.is_empty())
        .ok_or(StateError::NoHome)?;
    Ok(PathBuf::from(home).join(".local/state/minke"))
}

/// Where the shim remembers what it learnt about this host (whether KVM works, the TSC's rate):
/// `$XDG_CACHE_HOME/minke` (fallback `~/.cache/minke`).
pub(crate) fn host_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|x| !x.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("minke"))
}

/// Checks that `name` is usable as a directory name.
pub fn check_name(name: &str) -> Result<(), StateError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(StateError::BadName(name.into()))
    }
}

/// The state directory of VM `name`.
pub fn state_dir(name: &str) -> Result<PathBuf, StateError> {
    check_name(name)?;
    Ok(state_root()?.join(name))
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads `run.json` of a state directory.
pub fn read_run(dir: &Path) -> Result<RunInfo, StateError> {
    let p = dir.join(files::RUN);
    let s = std::fs::read(&p).map_err(io_err(&p))?;
    serde_json::from_slice(&s).map_err(|e| StateError::Io {
        path: p,
        source: io::Error::new(io::ErrorKind::InvalidData, e),
    })
}

pub(crate) fn write_run(dir: &Path, run: &RunInfo) -> Result<(), StateError> {
    let body = serde_json::to_vec_pretty(run).expect("RunInfo serializes");
    write_private(&dir.join(files::RUN), &body)
}

/// Whether the VM recorded in `run` is still running: its QEMU process holds the recorded pid
/// with the recorded start time and executable (a reused pid is not running), and is QEMU.
pub fn is_running(run: &RunInfo) -> bool {
    crate::process::running(run.qemu_pid.into(), run.qemu_stamp.as_ref())
        && std::fs::read(format!("/proc/{}/cmdline", run.qemu_pid))
            .map(|c| c.windows(4).any(|w| w == b"qemu"))
            .unwrap_or(false)
}

/// Removes what a dead VM left: `run.json` and sockets (logs stay for `minke logs`). Does
/// nothing while a process holds the VM's lock (it is booting or still owns the VM): the
/// files are removed only while this process holds the lock itself, so a boot starting at
/// the same moment never loses its own.
pub fn clean_stale(dir: &Path) {
    let Ok(f) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(dir.join(LOCK_FILE))
    else {
        // No lock file: no minke of this kind ever booted here, or it is gone with the VM.
        remove_stale_files(dir);
        return;
    };
    if rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_ok() {
        remove_stale_files(dir);
        // Dropping `f` releases the lock.
    }
}

/// [`clean_stale`] without the lock check, for the process that holds the lock.
pub(crate) fn remove_stale_files(dir: &Path) {
    for f in [
        files::RUN,
        files::QMP,
        files::VHU,
        files::VSOCK,
        files::SERIAL,
        files::SECRET,
        files::READY,
        files::SHARES,
        files::IMAGE,
        files::INITRD,
        files::NET,
        files::CONSOLE_SOCKET,
    ] {
        let _ = std::fs::remove_file(dir.join(f));
    }
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let share_socket = name.starts_with(files::FS_PREFIX) && name.ends_with(".sock");
            if name.starts_with(&format!("{}_", files::VSOCK)) || share_socket {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// Running VMs under [`state_root`], sorted by name; stale entries are cleaned on the way.
pub fn list_vms() -> Result<Vec<VmEntry>, StateError> {
    list_vms_in(&state_root()?)
}

/// Running VMs under `root`.
pub fn list_vms_in(root: &Path) -> Result<Vec<VmEntry>, StateError> {
    let rd = match std::fs::read_dir(root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(root)(e)),
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let dir = e.path();
        if !dir.join(files::RUN).exists() {
            continue;
        }
        match read_run(&dir) {
            Ok(run) if is_running(&run) => out.push(VmEntry {
                state_dir: dir,
                run,
            }),
            _ => clean_stale(&dir),
        }
    }
    out.sort_by(|a, b| a.run.name.cmp(&b.run.name));
    Ok(out)
}

/// Creates `dir` (and missing parents) with mode 0700, or tightens it to 0700 if it exists.
/// Fails if it is not a directory owned by this user: its files would not be private.
pub fn ensure_private_dir(dir: &Path) -> Result<(), StateError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err(dir))?;
    let d = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(dir)
        .map_err(io_err(dir))?;
    make_private(&d, dir, 0o700)
}

/// Fails unless `dir` is a directory of this user that no one else can write or enter: what
/// an attaching process reads there (`run.json`, the secret, sockets) is then the booting
/// process's and nobody else's.
pub(crate) fn check_private_dir(dir: &Path) -> Result<(), StateError> {
    let st = rustix::fs::stat(dir).map_err(|e| io_err(dir)(e.into()))?;
    let me = rustix::process::geteuid().as_raw();
    let why = if st.st_uid != me {
        format!("owned by uid {}, not by this user (uid {me})", st.st_uid)
    } else if st.st_mode & 0o077 != 0 {
        format!("mode {:o}: other users can reach it", st.st_mode & 0o7777)
    } else {
        return Ok(());
    };
    Err(StateError::NotPrivate {
        path: dir.to_path_buf(),
        why,
    })
}

/// Checks that the open file or directory `f` (at `path`) belongs to this user and sets its
/// permission bits to exactly `mode`.
fn make_private(f: &File, path: &Path, mode: u32) -> Result<(), StateError> {
    let st = rustix::fs::fstat(f.as_fd()).map_err(|e| io_err(path)(e.into()))?;
    let me = rustix::process::geteuid().as_raw();
    if st.st_uid != me {
        return Err(StateError::NotPrivate {
            path: path.to_path_buf(),
            why: format!("owned by uid {}, not by this user (uid {me})", st.st_uid),
        });
    }
    if st.st_mode & 0o7777 != mode {
        f.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(io_err(path))?;
    }
    Ok(())
}

/// Opens `path` for writing, truncated, mode 0600 whatever the umask (an existing file is
/// tightened to 0600; a symlink at `path` is refused, never followed). For logs and any other
/// file minke creates in a state directory.
pub fn create_private(path: &Path) -> Result<File, StateError> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(io_err(path))?;
    make_private(&f, path, 0o600)?;
    Ok(f)
}

/// Creates a new file with a random name beginning with `.{stem}.` in `dir`, exclusively
/// (`O_EXCL`: never an existing file or a symlink planted there) and mode 0600. The caller
/// renames it into place or removes it.
pub fn create_temp_in(dir: &Path, stem: &str) -> io::Result<(File, PathBuf)> {
    let mut last = None;
    for _ in 0..64 {
        let p = dir.join(format!(".{stem}.{:016x}.tmp", random_u64()));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&p)
        {
            Ok(f) => return Ok((f, p)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no free temporary name")))
}

/// A random number for a temporary name, from the kernel (`getrandom`); should that fail, from
/// the standard library's per-process random hash keys. `O_EXCL` makes a repeat harmless.
fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    loop {
        match rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty()) {
            Ok(8) => return u64::from_ne_bytes(b),
            Err(rustix::io::Errno::INTR) => {}
            _ => break,
        }
    }
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

/// Replaces `path` atomically with `bytes` in a file of mode 0600 (written under an exclusive
/// temporary name in the same directory, then renamed). For `run.json`, `boot.json` and any
/// secret a state directory holds.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let stem = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (mut f, tmp) = create_temp_in(dir, &stem).map_err(io_err(path))?;
    let res = f
        .write_all(bytes)
        .and_then(|()| f.sync_data())
        .map_err(io_err(&tmp))
        .and_then(|()| std::fs::rename(&tmp, path).map_err(io_err(path)));
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

/// The exclusive lock on a VM's state directory, held by the process that booted the VM for
/// as long as it owns the VM; released when dropped (or when that process dies).
#[derive(Debug)]
pub struct VmLock {
    _file: File,
}

/// Takes the lock of the state directory `dir` at once, or fails with [`StateError::Busy`].
pub(crate) fn lock_vm(dir: &Path, name: &str) -> Result<VmLock, StateError> {
    let p = dir.join(LOCK_FILE);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&p)
        .map_err(io_err(&p))?;
    make_private(&f, &p, 0o600)?;
    // Another minke may hold the lock for a moment to look (`minke ps`, an attach, a stale
    // clean-up): a short wait tells that from a VM that owns it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(500);
    loop {
        match rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(VmLock { _file: f }),
            Err(rustix::io::Errno::WOULDBLOCK) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(rustix::io::Errno::WOULDBLOCK) => {
                return Err(StateError::Busy {
                    name: name.into(),
                    pid: read_run(dir).ok().map(|r| r.qemu_pid),
                })
            }
            Err(e) => return Err(io_err(&p)(e.into())),
        }
    }
}

/// Whether some process holds the lock of `dir` (a VM booting or running there).
pub fn lock_held(dir: &Path) -> bool {
    let Ok(f) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(dir.join(LOCK_FILE))
    else {
        return false;
    };
    matches!(
        rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockShared),
        Err(rustix::io::Errno::WOULDBLOCK)
    )
}

/// Prepares the state directory `dir` of VM `name` for a boot: private (and so is minke's
/// state root when `dir` lies in it), locked for this process, no VM of an older minke running
/// there, stale sockets and records removed.
pub(crate) fn prepare_boot(dir: &Path, name: &str) -> Result<VmLock, StateError> {
    if let (Ok(root), Some(parent)) = (state_root(), dir.parent()) {
        if parent == root {
            ensure_private_dir(&root)?;
        }
    }
    ensure_private_dir(dir)?;
    let lock = lock_vm(dir, name)?;
    if let Ok(run) = read_run(dir) {
        if is_running(&run) {
            return Err(StateError::Busy {
                name: name.into(),
                pid: Some(run.qemu_pid),
            });
        }
    }
    remove_stale_files(dir);
    Ok(lock)
}

/// Fails when a socket in `dir` named `file` would be too long for `sockaddr_un`.
pub(crate) fn check_socket_path(dir: &Path, file: &str) -> Result<PathBuf, StateError> {
    let p = dir.join(file);
    if p.as_os_str().len() > 107 {
        return Err(StateError::PathTooLong(p));
    }
    Ok(p)
}

/// The last `n` lines of a file (reads at most the last 64 KiB).
pub(crate) fn tail(path: &Path, n: usize) -> String {
    let Ok(mut f) = File::open(path) else {
        return format!("({} not readable)", path.display());
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let s = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for bad in ["", ".x", "a/b", "a b", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        check_name("web-1.test_2").unwrap();
    }

    #[test]
    fn list_reports_live_vms_and_cleans_dead_ones() {
        let root = tempfile::tempdir().unwrap();
        let mk = |name: &str, pid: u32| {
            let d = root.path().join(name);
            std::fs::create_dir_all(&d).unwrap();
            let run = RunInfo {
                name: name.into(),
                qemu_pid: pid,
                backend_pid: None,
                qemu_stamp: ProcStamp::of(pid),
                backend_stamp: None,
                shim_pid: std::process::id(),
                accel: UsedAccel::Tcg,
                machine: None,
                transport: UsedTransport::VhostUser,
                publish: vec![],
                shares: vec![],
                net: None,
                started_unix: 0,
            };
            write_run(&d, &run).unwrap();
            std::fs::write(d.join(files::CONSOLE), "log").unwrap();
            std::fs::write(d.join("vm.vsock_1025"), "").unwrap();
            d
        };
        // A live process whose cmdline mentions qemu stands in for QEMU.
        let mut live = std::process::Command::new("bash")
            .args(["-c", "exec -a qemu-fake sleep 30"])
            .spawn()
            .unwrap();
        // Until bash has exec'd sleep, the recorded executable would be bash's (and bash's
        // cmdline mentions qemu too).
        let exe = format!("/proc/{}/exe", live.id());
        let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !std::fs::read_link(&exe).is_ok_and(|e| e.ends_with("sleep")) {
            assert!(
                std::time::Instant::now() < end,
                "the stand-in process never exec'd"
            );
            std::thread::yield_now();
        }
        mk("alive", live.id());
        let dead = mk("dead", u32::MAX / 2);
        let list = list_vms_in(root.path()).unwrap();
        let _ = live.kill();
        let _ = live.wait();
        assert_eq!(
            list.iter().map(|e| e.run.name.as_str()).collect::<Vec<_>>(),
            ["alive"]
        );
        assert!(!dead.join(files::RUN).exists(), "stale run.json removed");
        assert!(
            !dead.join("vm.vsock_1025").exists(),
            "stale sockets removed"
        );
        assert!(dead.join(files::CONSOLE).exists(), "logs kept");
    }

    #[test]
    fn a_reused_pid_is_not_a_running_vm() {
        let mut sleep = std::process::Command::new("sleep")
            .arg("1000")
            .spawn()
            .unwrap();
        let real = ProcStamp::of(sleep.id()).unwrap();
        let run = |pid: u32, stamp: Option<ProcStamp>| RunInfo {
            name: "x".into(),
            qemu_pid: pid,
            backend_pid: None,
            qemu_stamp: stamp,
            backend_stamp: None,
            shim_pid: 0,
            accel: UsedAccel::Tcg,
            machine: None,
            transport: UsedTransport::Serial,
            publish: vec![],
            shares: vec![],
            net: None,
            started_unix: 0,
        };
        let older = ProcStamp {
            start_ticks: real.start_ticks.saturating_sub(1),
            exe: None,
        };
        for (pid, stamp) in [
            (sleep.id(), None),
            (sleep.id(), Some(older)),
            (std::process::id(), ProcStamp::of(std::process::id())),
            (u32::MAX, Some(real.clone())),
            (1, ProcStamp::of(1)),
            (0, Some(real)),
        ] {
            assert!(!is_running(&run(pid, stamp.clone())), "{pid} {stamp:?}");
        }
        let _ = sleep.kill();
        let _ = sleep.wait();
    }

    #[test]
    fn a_second_lock_of_one_state_dir_fails_at_once() {
        let d = tempfile::tempdir().unwrap();
        assert!(!lock_held(d.path()));
        let first = lock_vm(d.path(), "web").unwrap();
        assert!(lock_held(d.path()));
        let t = std::time::Instant::now();
        match lock_vm(d.path(), "web") {
            Err(StateError::Busy { name, pid: None }) => assert_eq!(name, "web"),
            other => panic!("{other:?}"),
        }
        assert!(t.elapsed() < std::time::Duration::from_secs(1));
        assert!(matches!(
            prepare_boot(d.path(), "web"),
            Err(StateError::Busy { .. })
        ));
        // A held lock keeps `minke ps` from cleaning a VM that is still booting.
        std::fs::write(d.path().join(files::RUN), b"{}").unwrap();
        clean_stale(d.path());
        assert!(d.path().join(files::RUN).exists());
        drop(first);
        assert!(!lock_held(d.path()));
        let _again = prepare_boot(d.path(), "web").unwrap();
        assert!(!d.path().join(files::RUN).exists(), "stale record removed");
    }

    #[test]
    fn private_files_replace_symlinks_instead_of_following_them() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        std::os::unix::fs::symlink(&victim, d.path().join("qemu.log")).unwrap();
        assert!(create_private(&d.path().join("qemu.log")).is_err());
        std::os::unix::fs::symlink(&victim, d.path().join("run.json")).unwrap();
        write_private(&d.path().join("run.json"), b"new").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert_eq!(std::fs::read(d.path().join("run.json")).unwrap(), b"new");
        let names: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 3, "no temporary file left: {names:?}");
    }
}
