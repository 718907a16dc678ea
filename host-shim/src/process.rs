//! Child processes (QEMU, the vhost-user backend) that die with the shim: own process group,
//! SIGKILL on parent death, killed on drop. And the proof another process needs before it
//! signals them by pid: [`ProcStamp`] (recorded in `run.json`) and [`Proven`].
//!
//! `PR_SET_PDEATHSIG` fires when the *thread* that forked the child ends, not the process. Test
//! harnesses run each test on its own thread, so children are forked by one spawner thread
//! that lives as long as the process.

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use rustix::process::{kill_process_group, pidfd_open, pidfd_send_signal, Pid, PidfdFlags, Signal};

type SpawnJob = (Command, mpsc::Sender<io::Result<Child>>);

fn spawner() -> &'static Mutex<mpsc::Sender<SpawnJob>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnJob>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnJob>();
        std::thread::Builder::new()
            .name("minke-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("cannot start the spawner thread");
        Mutex::new(tx)
    })
}

/// A child in its own process group, killed (with its group) on drop.
#[derive(Debug)]
pub(crate) struct Guarded {
    child: Child,
    status: Option<ExitStatus>,
    /// Names this child and no other, even after it was reaped (`None` on kernels before 5.3).
    pidfd: Option<OwnedFd>,
    /// Taken right after the spawn, while the child could not have been reaped yet.
    stamp: Option<ProcStamp>,
}

impl Guarded {
    /// Spawns `cmd` in a new process group with SIGKILL-on-parent-death.
    pub(crate) fn spawn(mut cmd: Command) -> io::Result<Self> {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
        crate::sys::die_with_parent(&mut cmd);
        let (tx, rx) = mpsc::channel();
        spawner()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send((cmd, tx))
            .map_err(|_| io::Error::other("spawner thread is gone"))?;
        let child = rx
            .recv()
            .map_err(|_| io::Error::other("spawner thread is gone"))??;
        // Opened while the child cannot have been reaped yet, so it names this child.
        let pidfd =
            Pid::from_raw(child.id() as i32).and_then(|p| pidfd_open(p, PidfdFlags::empty()).ok());
        // `spawn` returns once the exec succeeded, so the executable is the program's.
        let stamp = ProcStamp::of(child.id());
        Ok(Guarded {
            child,
            status: None,
            pidfd,
            stamp,
        })
    }

    /// Sends `sig` to the child, from any thread; never to a process that took its pid after
    /// it was reaped.
    pub(crate) fn signal(&self, sig: Signal) {
        match &self.pidfd {
            Some(fd) => {
                let _ = pidfd_send_signal(fd, sig);
            }
            // Not reaped yet, so the pid is still this child's.
            None if self.status.is_none() => {
                if let Some(p) = Pid::from_raw(self.child.id() as i32) {
                    let _ = rustix::process::kill_process(p, sig);
                }
            }
            None => {}
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What proves to another process that a pid is still this child (for `run.json`).
    pub(crate) fn stamp(&self) -> Option<ProcStamp> {
        self.stamp.clone()
    }

    /// The exit status if the child has ended (non-blocking).
    pub(crate) fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Waits up to `timeout` for the child to end.
    pub(crate) fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + timeout;
        if let Some(s) = self.try_wait() {
            return Some(s);
        }
        // The child is not reaped yet, so its pid names it: its pidfd turns readable the
        // moment it exits.
        let pidfd = Pid::from_raw(self.child.id() as i32)
            .and_then(|pid| pidfd_open(pid, PidfdFlags::empty()).ok());
        if let Some(fd) = &pidfd {
            loop {
                let left = end.saturating_duration_since(Instant::now());
                let mut fds = [rustix::event::PollFd::new(fd, rustix::event::PollFlags::IN)];
                let timeout = rustix::event::Timespec {
                    tv_sec: left.as_secs() as i64,
                    tv_nsec: i64::from(left.subsec_nanos()),
                };
                match rustix::event::poll(&mut fds, Some(&timeout)) {
                    Err(rustix::io::Errno::INTR) => continue,
                    Ok(_) => return self.try_wait(),
                    // Polling failed: fall back to looking every few milliseconds.
                    Err(_) => break,
                }
            }
        }
        let mut step = Duration::from_millis(1);
        loop {
            if let Some(s) = self.try_wait() {
                return Some(s);
            }
            let now = Instant::now();
            if now >= end {
                return None;
            }
            std::thread::sleep(step.min(end - now));
            step = (step * 2).min(Duration::from_millis(20));
        }
    }

    /// Kills the child's process group and its own children (which may have left the group
    /// for a session or namespace of their own, as virtiofsd's sandbox does), reaps the child
    /// and waits, bounded, until those children are gone too.
    pub(crate) fn kill(&mut self) {
        if self.try_wait().is_some() {
            return;
        }
        // Each child's pidfd, taken while it is still the child's (checked after opening):
        // from then on it names that process and no later holder of the pid.
        let parent = self.child.id();
        let kids: Vec<OwnedFd> = children_of(parent)
            .into_iter()
            .filter_map(|k| Some((k, Pid::from_raw(k as i32)?)))
            .filter_map(|(k, pid)| {
                let fd = pidfd_open(pid, PidfdFlags::empty()).ok()?;
                // The child may have reaped that one and its pid been reused since the list was
                // read: the pidfd counts only if the process it names is still ours.
                (parent_of(k) == Some(parent)).then_some(fd)
            })
            .collect();
        if let Some(pgid) = Pid::from_raw(self.child.id() as i32) {
            let _ = kill_process_group(pgid, Signal::KILL);
        }
        let _ = self.child.kill();
        for k in &kids {
            let _ = pidfd_send_signal(k, Signal::KILL);
        }
        self.status = self.child.wait().ok();
        for k in &kids {
            // A pidfd turns readable when its process has exited.
            let mut fds = [rustix::event::PollFd::new(k, rustix::event::PollFlags::IN)];
            let timeout = rustix::event::Timespec {
                tv_sec: 5,
                tv_nsec: 0,
            };
            let _ = rustix::event::poll(&mut fds, Some(&timeout));
        }
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The pids whose parent is `pid`, from `/proc/PID/task/*/children`.
fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        let text = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
        out.extend(
            text.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
    }
    out
}

/// The parent pid of `pid` (`PPid:` of `/proc/PID/status`).
fn parent_of(pid: u32) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))?
        .trim()
        .parse()
        .ok()
}

/// Largest pid any Linux kernel hands out (`PID_MAX_LIMIT` on 64-bit).
const PID_MAX_LIMIT: u32 = 4_194_304;

/// Identity of a process beyond its pid, which the kernel reuses: its start time in clock ticks
/// since boot (field 22 of `/proc/PID/stat`, fixed for the process's life and never shared by
/// a later holder of the pid) and the executable it runs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProcStamp {
    /// Start time, clock ticks since boot.
    pub start_ticks: u64,
    /// `/proc/PID/exe` when recorded, if it could be read.
    pub exe: Option<PathBuf>,
}

impl ProcStamp {
    /// The stamp of the process holding `pid` now.
    pub(crate) fn of(pid: u32) -> Option<ProcStamp> {
        let st = read_stat(pid)?;
        Some(ProcStamp {
            start_ticks: st.start_ticks,
            exe: exe_of(pid),
        })
    }
}

/// Why a recorded pid was not signalled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotProven {
    /// The pid cannot name a process.
    #[error("pid {0} is not a valid process id")]
    BadPid(u64),
    /// There is no start time or executable recorded for it (a `run.json` from an older
    /// minke, or edited).
    #[error(
        "pid {0} has no recorded start time and executable, so it cannot be told from a reused pid"
    )]
    NoRecord(u32),
    /// No process holds the pid (or only a zombie).
    #[error("process {0} has exited")]
    Gone(u32),
    /// Another process holds the pid now.
    #[error("pid {0} now belongs to another process (start time or executable differ)")]
    Reused(u32),
    /// The pidfd could not be opened.
    #[error("cannot open a pidfd for process {pid}: {errno}")]
    Pidfd {
        /// Pid.
        pid: u32,
        /// What the kernel said.
        errno: String,
    },
}

/// A process proven to be the one a [`ProcStamp`] recorded, held by a pidfd so a signal can
/// never reach a process that took the pid after the proof.
#[derive(Debug)]
pub(crate) struct Proven {
    pid: u32,
    pidfd: OwnedFd,
}

impl Proven {
    /// Checks that `pid` is a plausible pid, that the process holding it started at the
    /// recorded time and runs the recorded executable, and holds it by a pidfd.
    ///
    /// The pidfd is opened first, then `/proc` is checked: a process that has held the pid
    /// since the recorded start time also held it when the pidfd was opened, so a match proves
    /// the pidfd names it.
    pub(crate) fn prove(pid: u64, stamp: Option<&ProcStamp>) -> Result<Proven, NotProven> {
        let pid = check_pid(pid)?;
        let stamp = stamp.ok_or(NotProven::NoRecord(pid))?;
        let raw = Pid::from_raw(pid as i32).ok_or(NotProven::BadPid(pid.into()))?;
        let pidfd = match pidfd_open(raw, PidfdFlags::empty()) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::SRCH) => return Err(NotProven::Gone(pid)),
            Err(e) => {
                return Err(NotProven::Pidfd {
                    pid,
                    errno: e.to_string(),
                })
            }
        };
        matches(pid, stamp)?;
        Ok(Proven { pid, pidfd })
    }

    /// The proven pid.
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// Sends `sig` to the proven process (a no-op once it has exited).
    pub(crate) fn signal(&self, sig: Signal) -> io::Result<()> {
        match pidfd_send_signal(&self.pidfd, sig) {
            Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// Whether the process recorded as (`pid`, `stamp`) still runs: same start time, same
/// executable, not a zombie. A reused pid is not running.
pub(crate) fn running(pid: u64, stamp: Option<&ProcStamp>) -> bool {
    let Ok(pid) = check_pid(pid) else {
        return false;
    };
    let Some(stamp) = stamp else {
        return false;
    };
    matches(pid, stamp).is_ok()
}

fn check_pid(pid: u64) -> Result<u32, NotProven> {
    let max = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(PID_MAX_LIMIT)
        .min(PID_MAX_LIMIT);
    match u32::try_from(pid) {
        Ok(p) if p > 1 && p <= max => Ok(p),
        _ => Err(NotProven::BadPid(pid)),
    }
}

fn matches(pid: u32, stamp: &ProcStamp) -> Result<(), NotProven> {
    let st = read_stat(pid).ok_or(NotProven::Gone(pid))?;
    if st.state == 'Z' || st.state == 'X' {
        return Err(NotProven::Gone(pid));
    }
    if st.start_ticks != stamp.start_ticks {
        return Err(NotProven::Reused(pid));
    }
    // Start times are public (/proc/PID/stat): the executable must match too, so a forged
    // record cannot name just any process of this user.
    let Some(want) = &stamp.exe else {
        return Err(NotProven::NoRecord(pid));
    };
    // An executable replaced on disk (a package upgrade) reads back as "PATH (deleted)".
    if !exe_of(pid).is_some_and(|now| same_exe(&now, want)) {
        return Err(NotProven::Reused(pid));
    }
    Ok(())
}

fn same_exe(now: &Path, want: &Path) -> bool {
    if now == want {
        return true;
    }
    use std::os::unix::ffi::OsStrExt;
    now.as_os_str()
        .as_bytes()
        .strip_suffix(b" (deleted)")
        .is_some_and(|n| n == want.as_os_str().as_bytes())
}

fn exe_of(pid: u32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/exe")).ok()
}

struct Stat {
    state: char,
    start_ticks: u64,
}

/// Fields 3 (state) and 22 (start time) of `/proc/PID/stat`. The command name (field 2) may
/// hold spaces and parentheses, so fields are counted from its last `)`.
fn read_stat(pid: u32) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

fn parse_stat(s: &str) -> Option<Stat> {
    let (_, rest) = s.rsplit_once(')')?;
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?.chars().next()?;
    // `fields` now starts at field 4; field 22 is 18 further.
    let start_ticks = fields.nth(18)?.parse().ok()?;
    Some(Stat { state, start_ticks })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn signal_reaches_the_child_and_nothing_after_it_was_reaped() {
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let mut g = Guarded::spawn(cmd).unwrap();
        g.signal(Signal::KILL);
        let status = g.wait_timeout(Duration::from_secs(10)).expect("killed");
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        // Reaped: its pid may belong to someone else now; the signal goes nowhere.
        assert!(g.pidfd.is_some(), "pidfd_open failed on this kernel");
        g.signal(Signal::KILL);
    }

    #[test]
    fn stat_fields_are_counted_after_the_last_parenthesis() {
        let line = "42 (a) b (c) S 1 42 42 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 9876 1 2 3";
        let st = parse_stat(line).unwrap();
        assert_eq!((st.state, st.start_ticks), ('S', 9876));
        assert!(parse_stat("42 (x) S 1").is_none());
    }

    #[test]
    fn only_the_recorded_process_is_proven() {
        let mut sleep = Command::new("sleep").arg("1000").spawn().unwrap();
        let pid = u64::from(sleep.id());
        let real = ProcStamp::of(sleep.id()).unwrap();
        assert!(real.exe.as_ref().is_some_and(|e| e.ends_with("sleep")));
        assert_eq!(Proven::prove(pid, Some(&real)).unwrap().pid(), sleep.id());
        // Everything a forged or stale run.json could say about it, and about other pids.
        let older = ProcStamp {
            start_ticks: real.start_ticks - 1,
            ..real.clone()
        };
        let other_exe = ProcStamp {
            exe: Some(PathBuf::from("/usr/bin/qemu-system-x86_64")),
            ..real.clone()
        };
        assert_eq!(
            Proven::prove(pid, None).unwrap_err(),
            NotProven::NoRecord(sleep.id())
        );
        for forged in [&older, &other_exe] {
            assert_eq!(
                Proven::prove(pid, Some(forged)).unwrap_err(),
                NotProven::Reused(sleep.id())
            );
        }
        let me = ProcStamp::of(std::process::id()).unwrap();
        assert!(Proven::prove(std::process::id().into(), Some(&older)).is_err());
        for bad in [
            0,
            1,
            u64::from(u32::MAX),
            u64::from(i32::MAX as u32) + 1,
            4_194_305,
        ] {
            assert_eq!(
                Proven::prove(bad, Some(&me)).unwrap_err(),
                NotProven::BadPid(bad)
            );
            assert!(!running(bad, Some(&me)));
        }
        assert!(running(pid, Some(&real)));
        assert!(!running(pid, Some(&older)));
        // Still alive: nothing above signalled it.
        assert!(sleep.try_wait().unwrap().is_none());
        let _ = sleep.kill();
        let _ = sleep.wait();
        assert!(!running(pid, Some(&real)), "reaped");
    }
}
