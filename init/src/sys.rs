//! Every `unsafe` of the init: signal mask and signalfd, the child set-up between fork and exec,
//! the fork of an agent that runs without exec (and its command line), and the
//! interface-flags ioctl that brings loopback up. Everything else is safe Rust.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

use rustix::fs::{Mode, OFlags};
use rustix::io::FdFlags;

/// Signals PID1 takes through its signalfd instead of handlers.
pub const HANDLED_SIGNALS: [i32; 7] = [
    libc::SIGCHLD,
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGPWR,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGHUP,
];

/// Size of `struct signalfd_siginfo`.
pub const SIGINFO_SIZE: usize = 128;

/// Blocks [`HANDLED_SIGNALS`] for this (single-threaded) process and returns a non-blocking,
/// close-on-exec signalfd that reports them.
pub fn signalfd() -> io::Result<OwnedFd> {
    let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: `set` is a valid, writable sigset_t; sigemptyset initialises it fully before any
    // read, and sigaddset only receives that initialised set and valid signal numbers.
    let set = unsafe {
        if libc::sigemptyset(set.as_mut_ptr()) != 0 {
            return Err(io::Error::last_os_error());
        }
        for sig in HANDLED_SIGNALS {
            if libc::sigaddset(set.as_mut_ptr(), sig) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        set.assume_init()
    };
    // SAFETY: `set` is an initialised sigset_t that outlives the call; a null old-set pointer is
    // allowed. The process has one thread, so the mask covers every signal delivery.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    // SAFETY: `set` is initialised and only read; fd -1 asks for a new descriptor.
    let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: signalfd returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Signal numbers in a buffer read from a signalfd (`ssi_signo` is the first u32 of each
/// 128-byte record).
pub fn signals_in(buf: &[u8]) -> Vec<i32> {
    buf.chunks_exact(SIGINFO_SIZE)
        .filter_map(|rec| rec.get(..4))
        .filter_map(|b| <[u8; 4]>::try_from(b).ok())
        .map(|b| u32::from_ne_bytes(b) as i32)
        .collect()
}

/// What a child does between fork and exec.
#[derive(Debug, Default)]
pub struct ChildSetup {
    /// `cgroup.procs` of the child's cgroup, opened for writing; the child moves itself there.
    pub cgroup_procs: Option<OwnedFd>,
    /// Value for `/proc/self/oom_score_adj`, already formatted.
    pub oom_score_adj: Option<Vec<u8>>,
    /// A close-on-exec descriptor the child keeps across exec (the readiness pipe).
    pub keep_fd: Option<RawFd>,
}

fn empty_sigset() -> Option<libc::sigset_t> {
    let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset fully initialises the writable `set`; it is read only on success.
    unsafe { (libc::sigemptyset(set.as_mut_ptr()) == 0).then(|| set.assume_init()) }
}

/// Installs `setup` to run in the child: empty signal mask, new session, own cgroup,
/// oom_score_adj, kept fd. (`std::process::Command` itself resets SIGPIPE only.)
pub fn child_setup(cmd: &mut Command, setup: ChildSetup) {
    let ChildSetup {
        cgroup_procs,
        oom_score_adj,
        keep_fd,
    } = setup;
    let empty = empty_sigset();
    let hook = move || -> io::Result<()> {
        // PID1 blocks the signals it reads through its signalfd; the mask is inherited across
        // fork and exec, and std::process::Command does not reset it.
        if let Some(set) = &empty {
            // SAFETY: `set` is an initialised sigset_t owned by this closure; a null old-set
            // pointer is allowed; sigprocmask is async-signal-safe.
            unsafe { libc::sigprocmask(libc::SIG_SETMASK, set, std::ptr::null_mut()) };
        }
        let _ = rustix::process::setsid();
        if let Some(fd) = &cgroup_procs {
            let _ = rustix::io::write(fd, b"0");
        }
        if let Some(v) = &oom_score_adj {
            if let Ok(fd) = rustix::fs::open(
                c"/proc/self/oom_score_adj",
                OFlags::WRONLY | OFlags::CLOEXEC,
                Mode::empty(),
            ) {
                let _ = rustix::io::write(&fd, v);
            }
        }
        if let Some(raw) = keep_fd {
            // SAFETY: `raw` is the write end of a pipe owned by the parent's `Command` set-up,
            // open in this freshly forked child until exec; the borrow ends within this call.
            let fd = unsafe { rustix::fd::BorrowedFd::borrow_raw(raw) };
            rustix::io::fcntl_setfd(fd, FdFlags::empty())?;
        }
        Ok(())
    };
    // SAFETY: the hook runs in the forked child before exec. It only issues raw syscalls
    // (sigprocmask, setsid, write, open of a static path, fcntl, close) on values prepared before the
    // fork; it allocates nothing, takes no lock and touches no shared state, so it is
    // async-signal-safe as `pre_exec` requires.
    unsafe {
        cmd.pre_exec(hook);
    }
}

/// Sends `sig` to every process but PID1 (`kill(-1, sig)`).
pub fn kill_all(sig: i32) -> io::Result<()> {
    // SAFETY: kill(2) takes plain integers and touches no memory of this process.
    if unsafe { libc::kill(-1, sig) } < 0 {
        let e = io::Error::last_os_error();
        // ESRCH: nothing left to signal.
        if e.raw_os_error() != Some(libc::ESRCH) {
            return Err(e);
        }
    }
    Ok(())
}

/// Which side of a [`fork`] this is.
pub enum Forked {
    /// The parent, with the child's pid.
    Parent(i32),
    /// The child.
    Child,
}

/// fork(2). Only for PID1, which never starts a thread: the child then gets a consistent copy
/// of every lock and of the allocator, and may run ordinary Rust code.
pub fn fork() -> io::Result<Forked> {
    // SAFETY: fork has no memory-safety preconditions of its own; what makes using the child
    // sound is that the init is single-threaded (no lock can be held by a thread that does not
    // exist in the child), which the caller relies on and `init.rs` keeps.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent(pid)),
    }
}

/// In a child forked by [`fork`] that will not exec: applies `setup` (signal mask, session,
/// cgroup, oom_score_adj), puts `stdin` and `out` on fds 0, 1 and 2 and the kept descriptor on
/// fd 3, closes every other descriptor PID1 had open, and names the process: comm `name`,
/// /proc/PID/cmdline `argv`. Returns 3 when a descriptor was kept.
pub fn become_forked_child(
    setup: ChildSetup,
    stdin: &OwnedFd,
    out: &OwnedFd,
    name: &str,
    argv: &[String],
) -> Option<RawFd> {
    let ChildSetup {
        cgroup_procs,
        oom_score_adj,
        keep_fd,
    } = setup;
    if let Some(set) = empty_sigset() {
        // SAFETY: `set` is an initialised sigset_t; a null old-set pointer is allowed.
        unsafe { libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) };
    }
    let _ = rustix::process::setsid();
    if let Some(fd) = &cgroup_procs {
        let _ = rustix::io::write(fd, b"0");
    }
    if let Some(v) = &oom_score_adj {
        let _ = std::fs::write("/proc/self/oom_score_adj", v);
    }
    // SAFETY: dup2 onto the standard descriptors and fd 3 only replaces what those numbers
    // referred to; `stdin`, `out` and `keep_fd` are open descriptors of this process, and
    // nothing in the child uses the old fds 0-3 afterwards (they were the console and PID1's
    // own descriptors, which this child never touches again).
    let kept = unsafe {
        libc::dup2(stdin.as_raw_fd(), 0);
        libc::dup2(out.as_raw_fd(), 1);
        libc::dup2(out.as_raw_fd(), 2);
        keep_fd.map(|fd| {
            if fd != 3 {
                libc::dup2(fd, 3);
            }
            3
        })
    };
    let first_closed = if kept.is_some() { 4u32 } else { 3u32 };
    // SAFETY: close_range only closes descriptors; everything from `first_closed` up belongs to
    // PID1's state (signalfd, pipes of other units, log files), which this child never uses.
    unsafe {
        libc::syscall(libc::SYS_close_range, first_closed, u32::MAX, 0u32);
    }
    set_process_name(name, argv);
    kept
}

/// Sets comm to `name` (the agent's) and /proc/self/cmdline to `argv`, so `ps` shows
/// `/init agent control` rather than PID1's command line. Best effort.
fn set_process_name(name: &str, argv: &[String]) {
    if let Ok(c) = std::ffi::CString::new(name) {
        let _ = rustix::thread::set_name(&c);
    }
    let mut block = Vec::new();
    for a in argv {
        block.extend_from_slice(a.as_bytes());
        block.push(0);
    }
    // The kernel reads the command line from this memory for the rest of the process's life.
    let block: &'static [u8] = Vec::leak(block);
    let start = block.as_ptr() as libc::c_ulong;
    let end = start + block.len() as libc::c_ulong;
    // The kernel keeps start < end at every step: a block below the old one (the heap lies
    // below the stack) needs the start moved first, one above it the end.
    for order in [
        [libc::PR_SET_MM_ARG_START, libc::PR_SET_MM_ARG_END],
        [libc::PR_SET_MM_ARG_END, libc::PR_SET_MM_ARG_START],
    ] {
        let mut ok = true;
        for opt in order {
            let addr = if opt == libc::PR_SET_MM_ARG_START {
                start
            } else {
                end
            };
            // SAFETY: PR_SET_MM only records the address of memory this process owns
            // (`block`, leaked so it lives as long as the process); no memory is written.
            let rc = unsafe { libc::prctl(libc::PR_SET_MM, opt as libc::c_ulong, addr, 0, 0) };
            ok &= rc == 0;
        }
        if ok {
            return;
        }
    }
}

/// Sets IFF_UP (and IFF_RUNNING) on the loopback interface.
pub fn loopback_up() -> io::Result<()> {
    use rustix::net::{socket_with, AddressFamily, SocketFlags, SocketType};
    let sock = socket_with(
        AddressFamily::INET,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC,
        None,
    )?;
    // SAFETY: ifreq is plain old data for which all-zero bytes are a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: `sock` is an open socket; `ifr` is a valid, writable ifreq holding a NUL-terminated
    // interface name, as SIOCGIFFLAGS expects; it outlives the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: after SIOCGIFFLAGS the union holds `ifru_flags`, initialised by the kernel (and
    // by the zeroing before); reading and updating that c_short member is sound.
    unsafe {
        ifr.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    }
    // SAFETY: as above; SIOCSIFFLAGS only reads the name and flags from `ifr`.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Tests that spawn or reap children hold this: a `wait(-1)` in one test thread would steal
/// the child another one waits for.
#[cfg(test)]
pub static CHILDREN_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_start_with_an_empty_signal_mask() {
        // Regression: a blocked SIGTERM leaked into services, which then ignored shutdown.
        let _guard = CHILDREN_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
        // SAFETY: test-only; initialises `set`, then blocks SIGTERM in this test thread only.
        unsafe {
            libc::sigemptyset(set.as_mut_ptr());
            libc::sigaddset(set.as_mut_ptr(), libc::SIGTERM);
            libc::pthread_sigmask(libc::SIG_BLOCK, set.as_ptr(), std::ptr::null_mut());
        }
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "grep SigBlk /proc/self/status"]);
        child_setup(&mut cmd, ChildSetup::default());
        let out = cmd.output().expect("run sh");
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(text.trim(), "SigBlk:\t0000000000000000");
    }

    #[test]
    fn signal_numbers_come_from_each_record() {
        let mut buf = vec![0u8; SIGINFO_SIZE * 2];
        buf[..4].copy_from_slice(&17u32.to_ne_bytes());
        buf[SIGINFO_SIZE..SIGINFO_SIZE + 4].copy_from_slice(&15u32.to_ne_bytes());
        assert_eq!(signals_in(&buf), vec![17, 15]);
        assert!(signals_in(&buf[..100]).is_empty());
    }
}
