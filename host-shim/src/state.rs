//! Per-VM state directories: where they are, what a running VM records there, and listing them
//! for `minke ps`.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::qemu::{files, UsedAccel, UsedTransport};

/// A state directory problem.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Neither `XDG_STATE_HOME` nor `HOME` is set.
    #[error("cannot find a state directory: set XDG_STATE_HOME or HOME")]
    NoHome,
    /// A file in the state directory could not be read or written.
    #[error("{path}: {source}")]
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
    /// A VM of that name is already running.
    #[error("a VM named {name:?} is already running (pid {pid}): stop it or pick another name")]
    Busy {
        /// Name.
        name: String,
        /// Its QEMU pid.
        pid: u32,
    },
    /// A socket path would exceed the kernel's limit.
    #[error("socket path {0} is longer than 107 bytes: use a shorter state directory or VM name")]
    PathTooLong(PathBuf),
}

/// What a running VM records in `run.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunInfo {
    /// VM name.
    pub name: String,
    /// QEMU's pid.
    pub qemu_pid: u32,
    /// The vsock backend's pid, if any.
    pub backend_pid: Option<u32>,
    /// The pid of the shim that owns the VM.
    pub shim_pid: u32,
    /// Accelerator in use.
    pub accel: UsedAccel,
    /// Transport in use.
    pub transport: UsedTransport,
    /// Host ports published to guest ports.
    pub publish: Vec<(u16, u16)>,
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
    let p = dir.join(files::RUN);
    let tmp = dir.join(".run.json.tmp");
    let body = serde_json::to_vec_pretty(run).expect("RunInfo serializes");
    std::fs::write(&tmp, body).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, &p).map_err(io_err(&p))
}

/// Whether the VM recorded in `dir` is still running (its QEMU process is alive and is QEMU).
pub fn is_running(run: &RunInfo) -> bool {
    crate::process::alive(run.qemu_pid)
        && std::fs::read(format!("/proc/{}/cmdline", run.qemu_pid))
            .map(|c| c.windows(4).any(|w| w == b"qemu"))
            .unwrap_or(false)
}

/// Removes what a dead VM left: `run.json` and sockets (logs stay for `minke logs`).
pub fn clean_stale(dir: &Path) {
    for f in [
        files::RUN,
        files::QMP,
        files::VHU,
        files::VSOCK,
        files::SERIAL,
    ] {
        let _ = std::fs::remove_file(dir.join(f));
    }
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_name()
                .to_string_lossy()
                .starts_with(&format!("{}_", files::VSOCK))
            {
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

/// Fails when a socket in `dir` named `file` would be too long for `sockaddr_un`.
pub(crate) fn check_socket_path(dir: &Path, file: &str) -> Result<PathBuf, StateError> {
    let p = dir.join(file);
    if p.as_os_str().len() > 107 {
        return Err(StateError::PathTooLong(p));
    }
    Ok(p)
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
                shim_pid: std::process::id(),
                accel: UsedAccel::Tcg,
                transport: UsedTransport::VhostUser,
                publish: vec![],
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
        // Until the child has exec'd, its cmdline is still this test binary's.
        let cmdline = format!("/proc/{}/cmdline", live.id());
        let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !std::fs::read(&cmdline).is_ok_and(|c| c.windows(4).any(|w| w == b"qemu")) {
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
}
