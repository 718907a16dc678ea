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

/// Hands `fd` to the child as its descriptor `target`, open across exec (every other
/// descriptor of this process is close-on-exec). `fd` must stay open until the spawn returns.
pub(crate) fn inherit_fd_as(cmd: &mut Command, fd: std::os::fd::RawFd, target: std::os::fd::RawFd) {
    // SAFETY: the closure runs in the forked child before exec and makes only dup2 or fcntl
    // calls on descriptor numbers, which are async-signal-safe and touch no state shared with
    // other threads of the parent. dup2 leaves `target` without close-on-exec; when `fd` is
    // already `target`, the flag is cleared by fcntl instead.
    unsafe {
        cmd.pre_exec(move || {
            let r = if fd == target {
                libc::fcntl(fd, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, target)
            };
            if r < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The host CPU's time-stamp counter.
#[cfg(target_arch = "x86_64")]
pub(crate) fn rdtsc() -> u64 {
    // SAFETY: RDTSC reads a counter every x86_64 CPU has; it touches no memory, and user mode
    // may run it unless the kernel set CR4.TSD, which Linux does only for seccomp-strict tasks
    // (then the process would already be unable to run QEMU).
    unsafe { core::arch::x86_64::_rdtsc() }
}
