//! Starting one unit's process, as its [`Launch`] says: the output pipe (and the readiness
//! pipe of a `notify` unit), then either an exec of its program or, for an agent of this
//! binary, a forked copy of PID1 that calls the agent's entry point.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::process::{Command, Stdio};

use minke_protocol::config::AgentKind;
use minke_protocol::ImageConfig;

use crate::config::{Launch, UnitSpec, NOTIFY_ENV};
use crate::sys::{ChildSetup, Forked};

/// A started unit: its pid and the read ends PID1 watches.
#[derive(Debug)]
pub struct Started {
    /// Process id.
    pub pid: i32,
    /// Read end of its stdout and stderr.
    pub out: OwnedFd,
    /// Read end of its readiness pipe, if it has one.
    pub notify: Option<OwnedFd>,
}

/// Starts `spec` with `setup` (cgroup, oom_score_adj), its output on a pipe and, with
/// `notify`, a readiness pipe named in [`NOTIFY_ENV`]. An agent runs in a forked copy of PID1
/// handed `agent_config` when there is one, and is executed otherwise.
pub fn start(
    spec: &UnitSpec,
    setup: ChildSetup,
    notify: bool,
    agent_config: Option<&ImageConfig>,
) -> std::io::Result<Started> {
    let io = UnitIo::new(setup, notify)?;
    match (&spec.launch, agent_config) {
        (Launch::Agent { kind, args, .. }, Some(cfg)) => fork_agent(spec, *kind, args, cfg, io),
        _ => exec(spec, io),
    }
}

/// A unit's pipes as it starts: output (read end for PID1, write end for the child), the
/// readiness pipe if it has one, and the child's set-up, which keeps the readiness write end.
struct UnitIo {
    out_r: OwnedFd,
    out_w: OwnedFd,
    notify: Option<(OwnedFd, OwnedFd)>,
    setup: ChildSetup,
}

impl UnitIo {
    fn new(mut setup: ChildSetup, notify: bool) -> std::io::Result<UnitIo> {
        use rustix::pipe::{pipe_with, PipeFlags};
        let (out_r, out_w) = pipe_with(PipeFlags::CLOEXEC)?;
        set_nonblock(&out_r)?;
        let notify = if notify {
            let (r, w) = pipe_with(PipeFlags::CLOEXEC)?;
            set_nonblock(&r)?;
            setup.keep_fd = Some(w.as_raw_fd());
            Some((r, w))
        } else {
            None
        };
        Ok(UnitIo {
            out_r,
            out_w,
            notify,
            setup,
        })
    }
}

fn set_nonblock(fd: &OwnedFd) -> std::io::Result<()> {
    let fl = rustix::fs::fcntl_getfl(fd.as_fd())?;
    rustix::fs::fcntl_setfl(fd.as_fd(), fl | rustix::fs::OFlags::NONBLOCK)?;
    Ok(())
}

/// Executes the unit's program with its argv, user, group, environment and directory.
fn exec(spec: &UnitSpec, io: UnitIo) -> std::io::Result<Started> {
    let argv = spec.argv();
    let mut cmd = Command::new(spec.program());
    {
        use std::os::unix::process::CommandExt;
        if let Some(a0) = argv.first() {
            cmd.arg0(a0);
        }
        if spec.gid != 0 {
            cmd.gid(spec.gid);
        }
        if spec.uid != 0 {
            cmd.uid(spec.uid);
        }
    }
    cmd.args(argv.iter().skip(1))
        .env_clear()
        .envs(&spec.env)
        .current_dir(&spec.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::from(io.out_w.try_clone()?))
        .stderr(Stdio::from(io.out_w.try_clone()?));
    let UnitIo {
        out_r,
        out_w,
        notify,
        setup,
    } = io;
    if let Some((_, w)) = &notify {
        cmd.env(NOTIFY_ENV, w.as_raw_fd().to_string());
    }
    crate::sys::child_setup(&mut cmd, setup);
    let child = cmd.spawn();
    drop(cmd);
    drop(out_w);
    let pid = i32::try_from(child?.id()).unwrap_or(-1);
    if let Some(v) = spec.oom_score_adj {
        let _ = std::fs::write(format!("/proc/{pid}/oom_score_adj"), v.to_string());
    }
    Ok(Started {
        pid,
        out: out_r,
        notify: notify.map(|(r, _)| r),
    })
}

/// Starts agent `kind` with `args` in a forked copy of PID1 that is handed `cfg` (see
/// `Supervisor::fork_agents`); the child gets what an executed unit gets: its cgroup,
/// session, oom_score_adj, environment, stdin on /dev/null, output on the unit's pipe, the
/// readiness pipe as fd 3.
fn fork_agent(
    spec: &UnitSpec,
    kind: AgentKind,
    args: &[String],
    cfg: &ImageConfig,
    io: UnitIo,
) -> std::io::Result<Started> {
    let devnull = rustix::fs::open(
        "/dev/null",
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    let UnitIo {
        out_r,
        out_w,
        notify,
        setup,
    } = io;
    // The entry point's arguments: the kind, then its own (`control --port 1024`).
    let agent_args: Vec<String> = std::iter::once(kind.name().to_owned())
        .chain(args.iter().cloned())
        .collect();
    let cfg = cfg.clone();
    match crate::sys::fork()? {
        Forked::Child => {
            let kept =
                crate::sys::become_forked_child(setup, &devnull, &out_w, kind.name(), &spec.argv());
            for (k, _) in std::env::vars_os() {
                std::env::remove_var(k);
            }
            for (k, v) in &spec.env {
                std::env::set_var(k, v);
            }
            if let Some(fd) = kept {
                std::env::set_var(NOTIFY_ENV, fd.to_string());
            }
            let _ = std::env::set_current_dir(&spec.cwd);
            // Never back into PID1's loop, not even by a panic (the loop would catch it
            // and this copy would carry on as a second init).
            let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                minke_agents::agent_main_forked(&agent_args, cfg)
            }))
            .unwrap_or(101);
            std::process::exit(code)
        }
        Forked::Parent(pid) => {
            drop(out_w);
            Ok(Started {
                pid,
                out: out_r,
                notify: notify.map(|(r, _)| r),
            })
        }
    }
}
