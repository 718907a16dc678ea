//! How children end: reaping any ended child, whatever its process group or session, and
//! describing its end.

use minke_protocol::console::Ended;
use rustix::io::Errno;
use rustix::process::{WaitOptions, WaitStatus};

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Exited with this code.
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
}

impl From<WaitStatus> for Exit {
    fn from(s: WaitStatus) -> Self {
        match (s.exit_status(), s.terminating_signal()) {
            (Some(code), _) => Exit::Code(code),
            (None, Some(sig)) => Exit::Signal(sig),
            _ => Exit::Code(-1),
        }
    }
}

impl From<Exit> for Ended {
    fn from(e: Exit) -> Self {
        match e {
            Exit::Code(c) => Ended::Code(c),
            Exit::Signal(s) => Ended::Signal(s),
        }
    }
}

/// In the words of the host's contract ([`Ended`]): `exited with status N`, `killed by signal N`.
impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&Ended::from(*self), f)
    }
}

/// Result of one non-blocking wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reaped {
    /// This child ended.
    Exited(i32, Exit),
    /// Children are left, none has ended.
    Alive,
    /// No child at all.
    NoChildren,
}

/// Reaps one ended child of any process group or session (`waitpid(-1, WNOHANG)`).
pub fn reap_next() -> Reaped {
    loop {
        match rustix::process::wait(WaitOptions::NOHANG) {
            Ok(Some((pid, status))) => {
                return Reaped::Exited(pid.as_raw_nonzero().get(), status.into())
            }
            Ok(None) => return Reaped::Alive,
            Err(Errno::INTR) => {}
            Err(_) => return Reaped::NoChildren,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timeline::now_ms;
    use std::process::Command;

    #[test]
    #[allow(clippy::zombie_processes)] // reaped by reap_next, which is what is tested
    fn reaps_children_that_left_our_process_group() {
        // Units call setsid(); waitpid(0, …) would never see them.
        let _guard = crate::sys::CHILDREN_LOCK
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        use std::os::unix::process::CommandExt;
        let child = Command::new("/bin/sh")
            .args(["-c", "exit 7"])
            .process_group(0)
            .spawn()
            .expect("spawn sh");
        let pid = i32::try_from(child.id()).expect("pid");
        let deadline = now_ms() + 10_000;
        loop {
            match reap_next() {
                Reaped::Exited(p, exit) if p == pid => {
                    assert_eq!(exit, Exit::Code(7));
                    break;
                }
                _ => {
                    assert!(now_ms() < deadline, "child never reaped");
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
            }
        }
    }

    #[test]
    fn exit_descriptions() {
        assert_eq!(Exit::Code(3).to_string(), "exited with status 3");
        assert_eq!(Exit::Signal(9).to_string(), "killed by signal 9");
    }
}
