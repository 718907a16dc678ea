//! Child processes (QEMU, the vhost-user backend) that die with the shim: own process group,
//! SIGKILL on parent death, killed on drop.
//!
//! `PR_SET_PDEATHSIG` fires when the *thread* that forked the child ends, not the process. Test
//! harnesses run each test on its own thread, so children are forked by one spawner thread
//! that lives as long as the process.

use std::io;
use std::os::fd::OwnedFd;
use std::process::{Child, Command, ExitStatus};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use rustix::process::{
    kill_process_group, pidfd_open, pidfd_send_signal, test_kill_process, Pid, PidfdFlags, Signal,
};

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
        Ok(Guarded {
            child,
            status: None,
            pidfd,
        })
    }

    /// Sends `sig` to the child, from any thread; never to a process that took its pid after
    /// it was reaped.
    pub(crate) fn signal(&self, sig: Signal) {
        match &self.pidfd {
            Some(fd) => {
                let _ = pidfd_send_signal(fd, sig);
            }
            None if self.status.is_none() => {
                let _ = signal(self.child.id(), sig);
            }
            None => {}
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
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

    /// Kills the child's process group and reaps the child.
    pub(crate) fn kill(&mut self) {
        if self.try_wait().is_some() {
            return;
        }
        if let Some(pgid) = Pid::from_raw(self.child.id() as i32) {
            let _ = kill_process_group(pgid, Signal::KILL);
        }
        let _ = self.child.kill();
        self.status = self.child.wait().ok();
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether a process with this pid exists.
pub(crate) fn alive(pid: u32) -> bool {
    match Pid::from_raw(pid as i32) {
        Some(p) => test_kill_process(p).is_ok() && !is_zombie(pid),
        None => false,
    }
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Sends `sig` to a process (not ours) by pid.
pub(crate) fn signal(pid: u32, sig: Signal) -> io::Result<()> {
    let p = Pid::from_raw(pid as i32).ok_or_else(|| io::Error::other("invalid pid"))?;
    rustix::process::kill_process(p, sig).map_err(io::Error::from)
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
}
