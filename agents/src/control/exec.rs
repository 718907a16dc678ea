//! The exec conversation: spawn a process (optionally on a pty, optionally inside a
//! container), stream stdin in and stdout/stderr out, forward signals and window sizes, and
//! report the exit code after all output was sent.
//!
//! One thread per exec, the connection's: after the spawn, a `poll` loop (see [`pump`]) moves
//! host frames to the process's stdin and its output to frames, and notices the exit through
//! a pidfd; no thread is started per exec. Flow control is the transport's: output is written
//! to the host blocking, so a host that reads slowly stalls the process on its pipe. The
//! process leads its own process group (its own session with a pty or in a container), so
//! signals go to the whole group; if the host connection drops before the process ended, the
//! group is killed with SIGKILL.

use std::collections::HashMap;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use minke_protocol::config::Container;
use minke_protocol::image;
use minke_protocol::msg::{ExecRequest, WinSize};
use minke_protocol::wire::{read_frame, write_frame, FrameError, MAX_CHUNK};
use minke_protocol::{GuestMsg, HostMsg};
use rustix::process::{Pid, Signal};

use super::{ControlError, Ctx};
use crate::conn::Conn;
use crate::container;
use crate::sys::{self, ExecHooks};

/// `PATH` of the minimal default environment.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How many stdin chunks may wait for a process that does not read its input.
const STDIN_QUEUE: usize = 64;

/// Runs one exec conversation on `conn` (after the handshake and the `Exec` request).
pub fn exec<C: Conn>(conn: &mut C, req: ExecRequest, ctx: &Ctx) -> Result<(), ControlError> {
    let Some(argv0) = req.argv.first().cloned() else {
        return Err(ControlError::Refused("exec: argv is empty".into()));
    };
    let env = build_env(&req);
    let uid = req.uid.unwrap_or(0);

    let (mut cmd, label, plan) = match &req.container {
        None => {
            let program =
                resolve_program(&argv0, env.get("PATH").map(String::as_str)).ok_or_else(|| {
                    ControlError::Refused(minke_protocol::msg::program_not_found(&argv0))
                })?;
            let mut cmd = Command::new(program);
            let cwd = req.cwd.clone().unwrap_or_else(|| "/".into());
            cmd.current_dir(&cwd);
            let gid = req
                .gid
                .unwrap_or_else(|| primary_gid(Path::new("/etc/passwd"), uid));
            if req.uid.is_some() || req.gid.is_some() {
                cmd.uid(uid).gid(gid);
            }
            (cmd, argv0.clone(), None)
        }
        Some(name) => {
            let run_image;
            let c = match ctx.containers.iter().find(|c| &c.name == name) {
                Some(c) => c,
                None if name == image::CONTAINER && run_image_mounted() => {
                    run_image = Container {
                        name: name.clone(),
                        rootfs: image::ROOT.into(),
                    };
                    &run_image
                }
                None => {
                    return Err(ControlError::Refused(format!(
                        "exec: no container named `{name}` in this image"
                    )))
                }
            };
            let gid = req
                .gid
                .unwrap_or_else(|| primary_gid(&Path::new(&c.rootfs).join("etc/passwd"), uid));
            let plan = container::plan(c, req.cwd.as_deref().unwrap_or("/"), uid, gid)
                .map_err(|e| ControlError::Refused(format!("exec in container `{name}`: {e}")))?;
            // The program is looked up by execvp inside the container, after pivot_root.
            (
                Command::new(&argv0),
                format!("{argv0} (in container `{name}`)"),
                Some(plan),
            )
        }
    };
    cmd.arg0(&argv0).args(&req.argv[1..]).env_clear().envs(&env);

    // Pty or pipes.
    let pty = match req.tty {
        Some(ws) => Some(open_pty(ws).map_err(|e| {
            ControlError::Refused(format!("exec: cannot open a pty: {}", crate::os_msg(&e)))
        })?),
        None => None,
    };
    match &pty {
        Some((_, slave)) => {
            let dup = |f: &OwnedFd| f.try_clone().map(Stdio::from);
            cmd.stdin(dup(slave)?)
                .stdout(dup(slave)?)
                .stderr(dup(slave)?);
        }
        None => {
            cmd.stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
        }
    }
    // A plain exec gets its own process group (signals go to the group), a pty or container
    // exec its own session. In every case the child drops the OOM protection the agent has from
    // PID1 before exec: what exec starts is the OOM killer's to pick, never the agent.
    let session = pty.is_some() || plan.is_some();
    if !session {
        cmd.process_group(0);
    }
    sys::install_hooks(
        &mut cmd,
        ExecHooks {
            setsid: session,
            ctty: pty.is_some(),
            container: plan,
            reset_oom_score_adj: true,
        },
    );

    let spawned = cmd.spawn();
    drop(cmd);
    let master = pty.map(|(m, slave)| {
        drop(slave);
        m
    });
    let mut child =
        spawned.map_err(|e| ControlError::Refused(format!("{label}: {}", crate::os_msg(&e))))?;
    let pid = child.id();
    write_frame(conn, &GuestMsg::Started { pid })?;

    let streams = match master {
        Some(m) => Streams {
            out: Some(m.try_clone()?),
            err: None,
            tty: Some(m.try_clone()?),
            stdin: Some(m),
        },
        None => Streams {
            out: child.stdout.take().map(OwnedFd::from),
            err: child.stderr.take().map(OwnedFd::from),
            stdin: child.stdin.take().map(OwnedFd::from),
            tty: None,
        },
    };
    let code = pump(conn, &mut child, streams)?;
    if let Some(code) = code {
        write_frame(conn, &GuestMsg::Exit { code })?;
    }
    Ok(())
}

/// The process's ends of its stdio: pipes, or the pty master (`stdin`, `out` and `tty` are
/// then handles on the master).
struct Streams {
    stdin: Option<OwnedFd>,
    out: Option<OwnedFd>,
    err: Option<OwnedFd>,
    tty: Option<OwnedFd>,
}

fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    let flags = rustix::fs::fcntl_getfl(fd)?;
    rustix::fs::fcntl_setfl(fd, flags | rustix::fs::OFlags::NONBLOCK)?;
    Ok(())
}

/// Moves bytes between the host connection and the process on this one thread until the
/// process has exited and both output streams reached their end; returns the exit code, or
/// `None` when the host is gone.
///
/// One `poll` covers the host connection, the process's output, its stdin (while bytes wait
/// for it) and a pidfd of the process. Flow control: output is written to the host blocking,
/// so a slow host stalls the process on its full pipe; at most [`STDIN_QUEUE`] chunks wait
/// for a process that does not read, then the host connection is no longer read, so the
/// host's writes block. The process is only signalled before it is reaped, so a signal never
/// reaches a recycled pid; if the host connection ends first, the whole group gets SIGKILL.
fn pump<C: Conn>(
    conn: &mut C,
    child: &mut std::process::Child,
    mut s: Streams,
) -> Result<Option<i32>, ControlError> {
    use rustix::event::{poll, PollFd, PollFlags};
    use std::collections::VecDeque;

    let pgid = Pid::from_child(child);
    for fd in [&s.stdin, &s.out, &s.err].into_iter().flatten() {
        set_nonblocking(fd)?;
    }
    let is_tty = s.tty.is_some();
    // Without pidfds (Linux < 5.3) the exit is noticed by polling with a timeout.
    let mut pidfd = rustix::process::pidfd_open(pgid, rustix::process::PidfdFlags::empty()).ok();
    let idle = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 20_000_000,
    };
    let mut queue: VecDeque<Vec<u8>> = VecDeque::new();
    let mut queued_at = 0usize;
    let mut stdin_eof = false;
    let mut host_open = true;
    let mut host_gone = false;
    let mut code: Option<i32> = None;
    let mut buf = vec![0u8; MAX_CHUNK];
    while code.is_none() || s.out.is_some() || s.err.is_some() {
        if stdin_eof && queue.is_empty() {
            s.stdin = None;
        }
        let read_host = host_open && queue.len() < STDIN_QUEUE;
        let want_stdin = s.stdin.is_some() && !queue.is_empty();
        let (host_ev, stdin_ev, out_ev, err_ev, exit_ev);
        {
            let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(5);
            fn add<'a>(fds: &mut Vec<PollFd<'a>>, fd: Option<PollFd<'a>>) -> Option<usize> {
                fd.map(|fd| {
                    fds.push(fd);
                    fds.len() - 1
                })
            }
            let h = add(
                &mut fds,
                read_host.then(|| PollFd::new(&*conn, PollFlags::IN)),
            );
            let i = add(
                &mut fds,
                s.stdin
                    .as_ref()
                    .filter(|_| want_stdin)
                    .map(|fd| PollFd::new(fd, PollFlags::OUT)),
            );
            let o = add(
                &mut fds,
                s.out.as_ref().map(|fd| PollFd::new(fd, PollFlags::IN)),
            );
            let e = add(
                &mut fds,
                s.err.as_ref().map(|fd| PollFd::new(fd, PollFlags::IN)),
            );
            let x = add(
                &mut fds,
                pidfd
                    .as_ref()
                    .filter(|_| code.is_none())
                    .map(|fd| PollFd::new(fd, PollFlags::IN)),
            );
            let timeout = (pidfd.is_none() && code.is_none()).then_some(&idle);
            match poll(&mut fds, timeout) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(ControlError::Frame(FrameError::Io(e.into()))),
            }
            let ready = |k: Option<usize>| k.is_some_and(|k| !fds[k].revents().is_empty());
            host_ev = ready(h);
            stdin_ev = ready(i);
            out_ev = ready(o);
            err_ev = ready(e);
            exit_ev = ready(x) || (pidfd.is_none() && code.is_none());
        }
        if host_ev {
            match read_frame::<_, HostMsg>(conn) {
                Ok(HostMsg::Stdin(data)) => {
                    if s.stdin.is_some() && !stdin_eof && !data.is_empty() {
                        queue.push_back(data);
                    }
                }
                Ok(HostMsg::StdinEof) if is_tty => {
                    // End of input on a terminal is the VEOF character at the start of a line.
                    queue.push_back(vec![0x04]);
                }
                Ok(HostMsg::StdinEof) => stdin_eof = true,
                Ok(HostMsg::Signal(n)) => match Signal::from_named_raw(n) {
                    Some(sig) if code.is_none() => {
                        let _ = rustix::process::kill_process_group(pgid, sig);
                    }
                    Some(_) => {}
                    None => eprintln!("minke agent control: ignoring unknown signal number {n}"),
                },
                Ok(HostMsg::Resize(ws)) => {
                    if let Some(m) = &s.tty {
                        let _ = rustix::termios::tcsetwinsize(m, winsize(ws));
                    }
                }
                Ok(other) => eprintln!(
                    "minke agent control: ignoring {} during an exec",
                    super::msg_name(&other)
                ),
                Err(e) => {
                    host_open = false;
                    host_gone = true;
                    if !matches!(e, FrameError::Closed) {
                        eprintln!(
                            "minke agent control: exec connection failed: {}",
                            minke_protocol::error_chain(&e)
                        );
                    }
                    if code.is_none() {
                        eprintln!(
                            "minke agent control: host connection dropped, killing process group {}",
                            pgid.as_raw_nonzero()
                        );
                        let _ = rustix::process::kill_process_group(pgid, Signal::KILL);
                    }
                    // Nothing more comes from the host: close the process's stdin.
                    queue.clear();
                    queued_at = 0;
                    stdin_eof = true;
                }
            }
        }
        if stdin_ev {
            if let (Some(fd), Some(chunk)) = (&s.stdin, queue.front()) {
                match rustix::io::write(fd, &chunk[queued_at..]) {
                    Ok(n) => {
                        queued_at += n;
                        if queued_at == chunk.len() {
                            queue.pop_front();
                            queued_at = 0;
                        }
                    }
                    Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => {}
                    Err(_) => {
                        // The process closed its stdin: what else arrives is dropped.
                        s.stdin = None;
                        queue.clear();
                        queued_at = 0;
                    }
                }
            }
        }
        let wraps: [fn(Vec<u8>) -> GuestMsg; 2] = [GuestMsg::Stdout, GuestMsg::Stderr];
        for ((ev, slot), wrap) in [(out_ev, &mut s.out), (err_ev, &mut s.err)]
            .into_iter()
            .zip(wraps)
        {
            let Some(fd) = slot.as_ref().filter(|_| ev) else {
                continue;
            };
            match rustix::io::read(fd, &mut buf[..]) {
                Ok(0) => *slot = None,
                Ok(n) => {
                    // Keep draining after the host is gone, so the process never blocks.
                    if !host_gone && write_frame(conn, &wrap(buf[..n].to_vec())).is_err() {
                        host_gone = true;
                    }
                }
                Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => {}
                // A pty master reads EIO once every slave side is closed.
                Err(_) => *slot = None,
            }
        }
        if exit_ev && code.is_none() {
            let status = if pidfd.is_some() {
                child.wait().map(Some)
            } else {
                child.try_wait()
            };
            match status {
                Ok(Some(st)) => {
                    code = Some(exit_code(st));
                    pidfd = None;
                }
                Ok(None) => {}
                Err(e) => {
                    eprintln!(
                        "minke agent control: wait for pid {} failed: {e}",
                        child.id()
                    );
                    code = Some(-1);
                    pidfd = None;
                }
            }
        }
    }
    Ok(if host_gone { None } else { code })
}

/// Exit code of a finished process: its status, or 128 + the signal that killed it.
pub fn exit_code(status: std::process::ExitStatus) -> i32 {
    match (status.code(), status.signal()) {
        (Some(c), _) => c,
        (None, Some(sig)) => 128 + sig,
        (None, None) => -1,
    }
}

fn winsize(ws: WinSize) -> rustix::termios::Winsize {
    rustix::termios::Winsize {
        ws_row: ws.rows,
        ws_col: ws.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

/// Opens a pty pair with the given size: (master, slave).
fn open_pty(ws: WinSize) -> io::Result<(OwnedFd, OwnedFd)> {
    use rustix::pty::{grantpt, openpt, ptsname, unlockpt, OpenptFlags};
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
    grantpt(&master)?;
    unlockpt(&master)?;
    let name = ptsname(&master, Vec::new())?;
    let slave = rustix::fs::open(
        name.as_c_str(),
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::NOCTTY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    rustix::termios::tcsetwinsize(&slave, winsize(ws))?;
    Ok((master, slave))
}

/// The environment of an exec: a minimal default, then the request's variables.
fn build_env(req: &ExecRequest) -> HashMap<String, String> {
    let mut env = HashMap::new();
    env.insert("PATH".to_string(), DEFAULT_PATH.to_string());
    let home = if req.uid.unwrap_or(0) == 0 {
        "/root"
    } else {
        "/"
    };
    env.insert("HOME".to_string(), home.to_string());
    if req.tty.is_some() {
        env.insert("TERM".to_string(), "xterm-256color".to_string());
    }
    for (k, v) in &req.env {
        env.insert(k.clone(), v.clone());
    }
    env
}

/// Finds `name` like execvp: as is when it contains a `/`, else the first executable regular
/// file in `path`.
pub fn resolve_program(name: &str, path: Option<&str>) -> Option<PathBuf> {
    if name.is_empty() {
        return None;
    }
    if name.contains('/') {
        return Some(PathBuf::from(name));
    }
    for dir in path.unwrap_or(DEFAULT_PATH).split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let cand = Path::new(dir).join(name);
        if rustix::fs::access(&cand, rustix::fs::Access::EXEC_OK).is_ok()
            && std::fs::metadata(&cand)
                .map(|m| m.is_file())
                .unwrap_or(false)
        {
            return Some(cand);
        }
    }
    None
}

/// The primary group of `uid` from a passwd file, or 0.
pub fn primary_gid(passwd: &Path, uid: u32) -> u32 {
    let Ok(text) = std::fs::read_to_string(passwd) else {
        return 0;
    };
    for line in text.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() >= 4 && f[2].parse::<u32>().ok() == Some(uid) {
            return f[3].parse().unwrap_or(0);
        }
    }
    0
}

/// Whether PID1 mounted a run image's root ([`minke_protocol::image`]) in this boot.
fn run_image_mounted() -> bool {
    std::fs::read_to_string("/proc/self/mounts")
        .is_ok_and(|m| m.lines().any(|l| l.split(' ').nth(1) == Some(image::ROOT)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::tests::{connect, test_ctx, tmpdir};
    use minke_protocol::wire::write_frame;
    use std::os::unix::net::UnixStream;
    use std::sync::Arc;

    #[derive(Debug)]
    struct Outcome {
        started: bool,
        stdout: Vec<u8>,
        stderr: Vec<u8>,
        exit: Option<i32>,
        error: Option<String>,
    }

    fn collect(host: &mut UnixStream) -> Outcome {
        let mut o = Outcome {
            started: false,
            stdout: vec![],
            stderr: vec![],
            exit: None,
            error: None,
        };
        loop {
            match read_frame::<_, GuestMsg>(host) {
                Ok(GuestMsg::Started { .. }) => o.started = true,
                Ok(GuestMsg::Stdout(d)) => o.stdout.extend(d),
                Ok(GuestMsg::Stderr(d)) => o.stderr.extend(d),
                Ok(GuestMsg::Exit { code }) => o.exit = Some(code),
                Ok(GuestMsg::Error(e)) => o.error = Some(e),
                Ok(other) => panic!("unexpected {other:?}"),
                Err(_) => return o,
            }
        }
    }

    fn run(argv: &[&str], stdin: Option<&[u8]>) -> Outcome {
        run_req(
            ExecRequest {
                argv: argv.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            },
            stdin,
        )
    }

    fn run_req(req: ExecRequest, stdin: Option<&[u8]>) -> Outcome {
        let dir = tmpdir("exec");
        let mut host = connect(Arc::new(test_ctx(&dir, Arc::default())));
        write_frame(&mut host, &HostMsg::Exec(req)).unwrap();
        if let Some(data) = stdin {
            for chunk in data.chunks(MAX_CHUNK) {
                write_frame(&mut host, &HostMsg::Stdin(chunk.to_vec())).unwrap();
            }
            write_frame(&mut host, &HostMsg::StdinEof).unwrap();
        }
        collect(&mut host)
    }

    #[test]
    fn true_exits_zero() {
        let o = run(&["true"], None);
        assert!(o.started);
        assert_eq!(o.exit, Some(0));
    }

    #[test]
    fn exit_code_is_reported() {
        assert_eq!(run(&["sh", "-c", "exit 42"], None).exit, Some(42));
    }

    #[test]
    fn killed_by_signal_is_128_plus_signal() {
        assert_eq!(run(&["sh", "-c", "kill -9 $$"], None).exit, Some(137));
    }

    #[test]
    fn missing_program_is_an_error() {
        let o = run(&["no-such-program-minke"], None);
        assert!(!o.started);
        assert_eq!(
            o.error.as_deref(),
            Some("no-such-program-minke: no such file or directory")
        );
        let o = run(&["/no/such/path"], None);
        assert_eq!(
            o.error.as_deref(),
            Some("/no/such/path: no such file or directory")
        );
    }

    #[test]
    fn stdin_round_trips_through_cat() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let o = run(&["cat"], Some(&data));
        assert_eq!(o.exit, Some(0));
        assert_eq!(o.stdout.len(), data.len());
        assert!(o.stdout == data);
    }

    #[test]
    fn stdout_and_stderr_env_and_cwd() {
        let o = run_req(
            ExecRequest {
                argv: vec![
                    "sh".into(),
                    "-c".into(),
                    "echo $FOO; pwd; echo err >&2".into(),
                ],
                env: vec![("FOO".into(), "bar".into())],
                cwd: Some("/tmp".into()),
                ..Default::default()
            },
            None,
        );
        assert_eq!(o.exit, Some(0));
        assert_eq!(String::from_utf8_lossy(&o.stdout), "bar\n/tmp\n");
        assert_eq!(o.stderr, b"err\n");
    }

    #[test]
    fn output_is_drained_before_exit() {
        let o = run(&["sh", "-c", "head -c 1000000 /dev/zero"], None);
        assert_eq!(o.exit, Some(0));
        assert_eq!(o.stdout.len(), 1_000_000);
    }

    #[test]
    fn signal_is_forwarded() {
        let dir = tmpdir("sig");
        let mut host = connect(Arc::new(test_ctx(&dir, Arc::default())));
        write_frame(
            &mut host,
            &HostMsg::Exec(ExecRequest {
                argv: vec!["sleep".into(), "30".into()],
                ..Default::default()
            }),
        )
        .unwrap();
        assert!(matches!(
            read_frame::<_, GuestMsg>(&mut host).unwrap(),
            GuestMsg::Started { .. }
        ));
        write_frame(&mut host, &HostMsg::Signal(15)).unwrap();
        assert_eq!(collect(&mut host).exit, Some(143));
    }

    #[test]
    fn host_drop_kills_the_process_group() {
        let dir = tmpdir("drop");
        let marker = dir.join("pid");
        let mut host = connect(Arc::new(test_ctx(&dir, Arc::default())));
        let script = format!("echo $$ > {}; sleep 30", marker.display());
        write_frame(
            &mut host,
            &HostMsg::Exec(ExecRequest {
                argv: vec!["sh".into(), "-c".into(), script],
                ..Default::default()
            }),
        )
        .unwrap();
        assert!(matches!(
            read_frame::<_, GuestMsg>(&mut host).unwrap(),
            GuestMsg::Started { .. }
        ));
        let mut pid = String::new();
        for _ in 0..100 {
            pid = std::fs::read_to_string(&marker).unwrap_or_default();
            if pid.ends_with('\n') {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let pid: i32 = pid.trim().parse().unwrap();
        drop(host);
        for _ in 0..200 {
            let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| !s.contains(") Z "))
                .unwrap_or(false);
            if !alive {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        panic!("process {pid} survived the host connection");
    }

    /// Regression: the agents run with oom_score_adj -1000 (set by PID1) and exec'd programs
    /// inherited it, so the OOM killer could not end a memory hog started by exec and the
    /// guest kernel panicked instead.
    #[test]
    fn exec_does_not_inherit_the_agents_oom_protection() {
        // This process stands in for the agent with a value of its own: 500, as -1000 needs
        // CAP_SYS_RESOURCE. Going back down to 0 needs no privilege when 0 was the value
        // before (the kernel's floor for unprivileged writes is the last privileged value).
        let own = || std::fs::read_to_string("/proc/self/oom_score_adj").unwrap();
        if own().trim() != "0" {
            eprintln!(
                "skipped: this process runs with oom_score_adj {}",
                own().trim()
            );
            return;
        }
        std::fs::write("/proc/self/oom_score_adj", "500").unwrap();
        let o = run(&["cat", "/proc/self/oom_score_adj"], None);
        let p = run_req(
            ExecRequest {
                argv: vec!["cat".into(), "/proc/self/oom_score_adj".into()],
                tty: Some(WinSize { rows: 24, cols: 80 }),
                ..Default::default()
            },
            None,
        );
        let after = own();
        std::fs::write("/proc/self/oom_score_adj", "0").unwrap();
        assert_eq!((o.exit, &o.stdout[..]), (Some(0), &b"0\n"[..]), "{o:?}");
        assert_eq!(p.exit, Some(0), "{p:?}");
        assert_eq!(String::from_utf8_lossy(&p.stdout).trim(), "0", "pty exec");
        assert_eq!(after.trim(), "500", "the spawner's own value changed");
    }

    #[test]
    fn pty_exec_sees_a_terminal_and_resize() {
        let dir = tmpdir("pty");
        let mut host = connect(Arc::new(test_ctx(&dir, Arc::default())));
        write_frame(
            &mut host,
            &HostMsg::Exec(ExecRequest {
                argv: vec![
                    "sh".into(),
                    "-c".into(),
                    "read x; stty size; test -t 0 && echo tty-$x".into(),
                ],
                tty: Some(WinSize { rows: 24, cols: 80 }),
                ..Default::default()
            }),
        )
        .unwrap();
        assert!(matches!(
            read_frame::<_, GuestMsg>(&mut host).unwrap(),
            GuestMsg::Started { .. }
        ));
        write_frame(
            &mut host,
            &HostMsg::Resize(WinSize {
                rows: 30,
                cols: 100,
            }),
        )
        .unwrap();
        write_frame(&mut host, &HostMsg::Stdin(b"ok\n".to_vec())).unwrap();
        let o = collect(&mut host);
        assert_eq!(o.exit, Some(0));
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(out.contains("30 100"), "{out:?}");
        assert!(out.contains("tty-ok"), "{out:?}");
    }

    #[test]
    fn twenty_concurrent_execs() {
        let dir = tmpdir("many");
        let ctx = Arc::new(test_ctx(&dir, Arc::default()));
        let hs: Vec<_> = (0..20)
            .map(|i| {
                let ctx = Arc::clone(&ctx);
                std::thread::spawn(move || {
                    let mut host = connect(ctx);
                    let req = ExecRequest {
                        argv: vec!["sh".into(), "-c".into(), format!("sleep 0.2; echo {i}")],
                        ..Default::default()
                    };
                    write_frame(&mut host, &HostMsg::Exec(req)).unwrap();
                    let o = collect(&mut host);
                    assert_eq!(o.exit, Some(0));
                    assert_eq!(String::from_utf8_lossy(&o.stdout), format!("{i}\n"));
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
    }

    #[test]
    fn primary_gid_from_passwd() {
        let dir = tmpdir("passwd");
        let p = dir.join("passwd");
        std::fs::write(&p, "root:x:0:0::/root:/bin/sh\nwww:x:33:44::/:/bin/false\n").unwrap();
        assert_eq!(primary_gid(&p, 33), 44);
        assert_eq!(primary_gid(&p, 7), 0);
    }
}
