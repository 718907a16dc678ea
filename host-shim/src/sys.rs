//! The crate's only unsafe code: child-process setup that must run between fork and exec.

use std::os::unix::process::CommandExt;
use std::process::Command;

use rustix::process::{getppid, set_parent_process_death_signal, Pid, Signal};

/// Makes the child receive SIGKILL when the thread that spawned it exits, and fails the spawn
/// if that parent is already gone (the fork raced with its exit).
pub(crate) fn die_with_parent(cmd: &mut Command) {
    let parent = Pid::from_raw(std::process::id() as i32);
    // SAFETY: the closure runs in the forked child before exec. It only makes two raw syscalls
    // (prctl and getppid) through rustix, which allocate nothing, take no locks and touch no
    // state shared with other threads of the parent, so it is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            set_parent_process_death_signal(Some(Signal::KILL))?;
            if getppid() != parent {
                return Err(std::io::Error::other("parent exited during spawn"));
            }
            Ok(())
        });
    }
}
