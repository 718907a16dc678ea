//! Every raw syscall and `unsafe` block of the agents: AF_VSOCK sockets, the readiness fd,
//! pre-exec hooks of spawned processes (oom_score_adj, session, controlling tty, container
//! namespaces) and adjtimex(2). Everything else in the crate is safe Rust on top of these
//! functions.

use std::ffi::CString;
use std::io;
use std::mem;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

use rustix::fs::{Mode, OFlags};
use rustix::mount::{MountFlags, MountPropagationFlags, UnmountFlags};
use rustix::net::{AddressFamily, SocketFlags, SocketType};

// ---------------------------------------------------------------------------------------------
// vsock

fn sockaddr_vm(cid: u32, port: u32) -> libc::sockaddr_vm {
    // SAFETY: sockaddr_vm is plain old data; all-zero is a valid value (and the zero padding
    // the kernel requires).
    let mut addr: libc::sockaddr_vm = unsafe { mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_cid = cid;
    addr.svm_port = port;
    addr
}

fn vsock_socket() -> io::Result<OwnedFd> {
    Ok(rustix::net::socket_with(
        AddressFamily::VSOCK,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

/// Opens a listening AF_VSOCK stream socket on `port` for any local CID.
pub fn vsock_listen(port: u32) -> io::Result<OwnedFd> {
    let fd = vsock_socket()?;
    let addr = sockaddr_vm(libc::VMADDR_CID_ANY, port);
    // SAFETY: `fd` is an open socket; `addr` is a valid sockaddr_vm that lives across the call
    // and the length passed is its exact size.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_vm).cast(),
            mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    rustix::net::listen(&fd, 128)?;
    Ok(fd)
}

/// Accepts one connection; returns it with the peer's CID and port.
pub fn vsock_accept(listener: BorrowedFd<'_>) -> io::Result<(OwnedFd, u32, u32)> {
    loop {
        let mut addr = sockaddr_vm(0, 0);
        let mut len = mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
        // SAFETY: `listener` is an open socket; `addr`/`len` point to a writable sockaddr_vm
        // and its size, both alive for the call.
        let fd = unsafe {
            libc::accept4(
                listener.as_raw_fd(),
                (&mut addr as *mut libc::sockaddr_vm).cast(),
                &mut len,
                libc::SOCK_CLOEXEC,
            )
        };
        if fd < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        // SAFETY: accept4 just returned this descriptor; nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        return Ok((fd, addr.svm_cid, addr.svm_port));
    }
}

/// Connects an AF_VSOCK stream socket to `cid:port`.
pub fn vsock_connect(cid: u32, port: u32) -> io::Result<OwnedFd> {
    let fd = vsock_socket()?;
    let addr = sockaddr_vm(cid, port);
    // SAFETY: `fd` is an open socket; `addr` is a valid sockaddr_vm alive across the call and
    // the length is its exact size.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_vm).cast(),
            mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

// ---------------------------------------------------------------------------------------------
// readiness fd

/// Takes ownership of the descriptor PID1 named in `MINKE_NOTIFY_FD`, after checking it is
/// open. Returns `None` when it is not.
pub fn take_notify_fd(fd: RawFd) -> Option<OwnedFd> {
    if fd < 0 {
        return None;
    }
    // SAFETY: the borrow lives only for the fcntl call that checks `fd` is open.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    rustix::io::fcntl_getfd(borrowed).ok()?;
    // SAFETY: `fd` is open, and by the readiness contract PID1 handed it to this process for
    // its sole use; it is taken once (the environment variable is read once at start).
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

// ---------------------------------------------------------------------------------------------
// pre-exec hooks

/// What a spawned process needs done between fork and exec.
pub struct ExecHooks {
    /// Make the child the leader of a new session (and so of a new process group).
    pub setsid: bool,
    /// Make stdin (a pty slave) the controlling terminal; requires `setsid`.
    pub ctty: bool,
    /// Run the program inside container namespaces.
    pub container: Option<ContainerPlan>,
    /// Set the child's oom_score_adj to 0: the agents run protected (-1000), and what they
    /// start must not inherit that.
    pub reset_oom_score_adj: bool,
}

/// Everything the container set-up needs, allocated before fork: between fork and exec the
/// child only makes raw syscalls on these prepared strings.
#[derive(Debug)]
pub struct ContainerPlan {
    /// Canonical rootfs directory.
    pub rootfs: CString,
    /// `<rootfs>/dev`, where a small tmpfs is mounted.
    pub dev: CString,
    /// Device nodes to bind-mount: (`/dev/null`, `<rootfs>/dev/null`), …
    pub dev_nodes: Vec<(CString, CString)>,
    /// Symlinks to create: (target, `<rootfs>/dev/fd`), …
    pub dev_links: Vec<(CString, CString)>,
    /// Hostname inside the container.
    pub hostname: Vec<u8>,
    /// Working directory inside the container.
    pub cwd: CString,
    /// User and group ids of the program.
    pub uid: u32,
    /// Group id of the program.
    pub gid: u32,
}

/// Installs `hooks` on `cmd`.
pub fn install_hooks(cmd: &mut Command, hooks: ExecHooks) {
    let mut hooks = hooks;
    // SAFETY: the closure runs in the forked child of a possibly multi-threaded process, where
    // only async-signal-safe operations are allowed. It makes raw syscalls through rustix's
    // linux_raw backend or libc syscall wrappers (open and write of a static path, setsid, ioctl,
    // unshare, mount, pivot_root, fork, waitpid, sigprocmask, close_range, _exit) on strings
    // allocated before the fork, and builds io::Error values only from raw errno numbers: it
    // never allocates, locks or touches state shared with other threads.
    unsafe {
        cmd.pre_exec(move || run_hooks(&mut hooks));
    }
}

fn errno() -> io::Error {
    io::Error::last_os_error()
}

fn run_hooks(h: &mut ExecHooks) -> io::Result<()> {
    if h.reset_oom_score_adj {
        // Raising the value needs no privilege. This runs in a forked child with its own
        // memory: the kernel applies oom_score_adj to every process sharing the memory, so a
        // vfork-style child (posix_spawn) would reset the agent's own protection. Without
        // /proc there is nothing to reset, and the program still runs.
        if let Ok(fd) = rustix::fs::open(
            c"/proc/self/oom_score_adj",
            OFlags::WRONLY | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            let _ = rustix::io::write(&fd, b"0");
        }
    }
    if h.setsid {
        rustix::process::setsid()?;
    }
    if h.ctty {
        // SAFETY: fd 0 is the child's stdin, set up by std before the hooks run; the borrow is
        // used for this one ioctl.
        let stdin = unsafe { BorrowedFd::borrow_raw(0) };
        rustix::process::ioctl_tiocsctty(stdin)?;
    }
    match &h.container {
        None => Ok(()),
        Some(plan) => enter_container(plan),
    }
}

/// Signal mask helpers (in the child only).
fn set_all_signals_blocked(blocked: bool) {
    // SAFETY: `set` is a local sigset_t initialised by sigfillset/sigemptyset before use;
    // sigprocmask only reads it. Both are async-signal-safe.
    unsafe {
        let mut set: libc::sigset_t = mem::zeroed();
        if blocked {
            libc::sigfillset(&mut set);
        } else {
            libc::sigemptyset(&mut set);
        }
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

fn fork() -> io::Result<i32> {
    // SAFETY: called in a single-threaded child between fork and exec; the raw clone with only
    // SIGCHLD is fork(2) and does not run atfork handlers. Both sides only make raw syscalls
    // afterwards.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            libc::SIGCHLD as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if pid < 0 {
        Err(errno())
    } else {
        Ok(pid as i32)
    }
}

fn close_all_fds() {
    // SAFETY: closing every descriptor of this process is what is wanted here: the caller is a
    // waiter process that must not keep pipes, the pty or the spawn error pipe open.
    unsafe {
        libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32);
    }
}

/// Waits for `pid` (reaping any other child on the way) and ends this process with the same
/// exit code, `128 + signal` when it was killed.
fn wait_and_exit(pid: i32) -> ! {
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: `status` is a local the kernel writes to.
        let got = unsafe { libc::waitpid(-1, &mut status, 0) };
        if got < 0 {
            let e = errno();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            // SAFETY: _exit is async-signal-safe and ends the process at once.
            unsafe { libc::_exit(127) }
        }
        if got == pid {
            let code = if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else if libc::WIFSIGNALED(status) {
                128 + libc::WTERMSIG(status)
            } else {
                continue;
            };
            // SAFETY: as above.
            unsafe { libc::_exit(code) }
        }
    }
}

/// The container dance, in the child std forked:
///
/// 1. this process (in the agent's namespaces) blocks every signal, unshares mount, pid, uts
///    and ipc namespaces and forks; it then only waits and mirrors the exit code;
/// 2. the fork is pid 1 of the new pid namespace: it makes mounts private, bind-mounts the
///    rootfs on itself, mounts a tmpfs /dev with bind-mounted device nodes, pivots into the
///    rootfs (`pivot_root(".", ".")` then a lazy unmount of the old root; on the initramfs,
///    where pivot_root is refused, a move of the rootfs over `/` and a chroot), mounts /proc, sets
///    the hostname and forks the program; then it reaps children until the program ends and
///    exits with its code (the kernel then kills what is left in the namespace);
/// 3. the program (pid 2) unblocks signals, changes directory and ids, and returns to std,
///    which execs it.
///
/// Signals sent to the process group reach the program; the two waiters have them blocked.
/// SIGKILL of the group ends all three.
fn enter_container(p: &ContainerPlan) -> io::Result<()> {
    use rustix::thread::UnshareFlags;
    set_all_signals_blocked(true);
    // SAFETY: this process is the single-threaded child of a fork, so no other thread shares
    // (or relies on) its file table, filesystem attributes or namespaces.
    unsafe {
        rustix::thread::unshare_unsafe(
            UnshareFlags::NEWNS
                | UnshareFlags::NEWPID
                | UnshareFlags::NEWUTS
                | UnshareFlags::NEWIPC,
        )?;
    }
    let init = fork()?;
    if init > 0 {
        close_all_fds();
        wait_and_exit(init);
    }
    // pid 1 of the new namespace.
    rustix::mount::mount_change(
        c"/",
        MountPropagationFlags::REC | MountPropagationFlags::PRIVATE,
    )?;
    rustix::mount::mount_bind_recursive(p.rootfs.as_c_str(), p.rootfs.as_c_str())?;
    rustix::mount::mount(
        c"tmpfs",
        p.dev.as_c_str(),
        c"tmpfs",
        MountFlags::NOSUID | MountFlags::NOEXEC,
        c"mode=755,size=64k",
    )?;
    for (src, dst) in &p.dev_nodes {
        match rustix::fs::open(
            dst.as_c_str(),
            OFlags::CREATE | OFlags::WRONLY | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o666),
        ) {
            Ok(fd) => drop(fd),
            Err(_) => continue,
        }
        // A node missing from the agent's /dev is left as an empty file.
        let _ = rustix::mount::mount_bind(src.as_c_str(), dst.as_c_str());
    }
    for (target, link) in &p.dev_links {
        let _ = rustix::fs::symlink(target.as_c_str(), link.as_c_str());
    }
    rustix::process::chdir(p.rootfs.as_c_str())?;
    match rustix::process::pivot_root(c".", c".") {
        Ok(()) => rustix::mount::unmount(c".", UnmountFlags::DETACH)?,
        // The initramfs (rootfs) cannot be pivoted away from: move the container's root over
        // `/` in this private mount namespace and chroot into it, as switch_root does.
        Err(rustix::io::Errno::INVAL) => {
            rustix::mount::mount_move(c".", c"/")?;
            rustix::process::chroot(c".")?;
        }
        Err(e) => return Err(e.into()),
    }
    rustix::process::chdir(c"/")?;
    rustix::mount::mount(
        c"proc",
        c"/proc",
        c"proc",
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        None,
    )?;
    rustix::system::sethostname(&p.hostname)?;
    let prog = fork()?;
    if prog > 0 {
        close_all_fds();
        wait_and_exit(prog);
    }
    // The program.
    set_all_signals_blocked(false);
    rustix::process::chdir(p.cwd.as_c_str())?;
    rustix::thread::set_thread_groups(&[])?;
    rustix::thread::set_thread_gid(rustix::process::Gid::from_raw(p.gid))?;
    rustix::thread::set_thread_uid(rustix::process::Uid::from_raw(p.uid))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// adjtimex

/// Frequency correction to apply: `tick` in microseconds per USER_HZ tick and `freq` in ppm
/// scaled by 2^16 (see adjtimex(2)).
pub fn set_rate(tick: i64, freq: i64) -> io::Result<()> {
    // SAFETY: timex is plain old data; all-zero is valid.
    let mut tx: libc::timex = unsafe { mem::zeroed() };
    tx.modes = libc::ADJ_TICK | libc::ADJ_FREQUENCY;
    tx.tick = tick as libc::c_long;
    tx.freq = freq as libc::c_long;
    // SAFETY: `tx` is a valid, initialised timex the kernel reads and writes during the call.
    let rc = unsafe { libc::adjtimex(&mut tx) };
    if rc < 0 {
        return Err(errno());
    }
    Ok(())
}

/// Steps CLOCK_REALTIME by `offset_ns` atomically (ADJ_SETOFFSET).
pub fn step_clock(offset_ns: i64) -> io::Result<()> {
    // SAFETY: timex is plain old data; all-zero is valid.
    let mut tx: libc::timex = unsafe { mem::zeroed() };
    tx.modes = libc::ADJ_SETOFFSET | libc::ADJ_NANO;
    tx.time.tv_sec = offset_ns.div_euclid(1_000_000_000) as libc::time_t;
    tx.time.tv_usec = offset_ns.rem_euclid(1_000_000_000) as libc::suseconds_t;
    // SAFETY: `tx` is a valid, initialised timex the kernel reads and writes during the call.
    let rc = unsafe { libc::adjtimex(&mut tx) };
    if rc < 0 {
        return Err(errno());
    }
    Ok(())
}
