//! minke's in-guest agents: the control agent (exec, files, forward, info, power over vsock),
//! the time sync agent, the binfmt_misc agent and the serial agent (the guest end of the
//! virtio-serial transport). They are linked into the one in-guest binary
//! (`minke-init`) and run as processes supervised by PID1.
//!
//! Entry points: [`agent_main`], called by `minke-init agent KIND [--port N]`, and
//! [`agent_main_forked`], which PID1 calls in a forked copy of itself (no exec) and which takes
//! the image config PID1 already decoded. Otherwise an agent reads the image config from
//! [`minke_protocol::IMAGE_CONFIG_BIN_PATH`] itself. Each agent reports readiness
//! by writing `READY\n` to the descriptor named in `MINKE_NOTIFY_FD`, then closing it. An
//! agent that has nothing (more) to do exits 0; PID1 restarts only agents that fail.
//!
//! **Invariant:** all `unsafe` code of this crate (AF_VSOCK addresses, pre-exec hooks, the
//! container namespace set-up, adjtimex) lives in `sys.rs`; elsewhere syscalls go through
//! rustix's safe API. The conversation handlers are generic over [`conn::Conn`] and never
//! touch vsock directly, so tests run them over Unix socket pairs, and the serial transport
//! reaches them through Unix sockets ([`conn::HostListener`], [`conn::connect_host`]).

#![deny(unsafe_code)]

pub mod auth;
pub mod binfmt;
pub mod conn;
pub mod container;
pub mod control;
pub mod serial;
#[allow(unsafe_code)] // the one module with raw syscalls, each with a SAFETY comment
mod sys;
pub mod timesync;
pub mod vsockcat;

use std::io::Write;
use std::sync::OnceLock;

use minke_protocol::ImageConfig;

/// Environment variable naming the readiness descriptor PID1 passes to an agent.
pub const NOTIFY_FD_ENV: &str = "MINKE_NOTIFY_FD";

/// Runs the agent named by `args[0]` (`control`, `timesync`, `binfmt`, `serial`) with its options
/// (`--port N`); returns the process exit code.
pub fn agent_main(args: &[String]) -> i32 {
    let Some(kind) = args.first() else {
        eprintln!("minke agent: missing agent name (control, timesync, binfmt or serial)");
        return 2;
    };
    let mut port = None;
    let mut rest = args[1..].iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--port" => match rest.next().and_then(|p| p.parse::<u32>().ok()) {
                Some(p) => port = Some(p),
                None => {
                    eprintln!("minke agent {kind}: --port needs a number");
                    return 2;
                }
            },
            other => {
                eprintln!("minke agent {kind}: unknown argument `{other}`");
                return 2;
            }
        }
    }
    match kind.as_str() {
        "control" => control::run(port.unwrap_or(minke_protocol::CONTROL_PORT)),
        "timesync" => timesync::run(port.unwrap_or(minke_protocol::TIMESYNC_PORT)),
        "binfmt" => binfmt::run(),
        "serial" => serial::run(),
        other => {
            eprintln!(
                "minke agent: unknown agent `{other}` (expected control, timesync, binfmt or serial)"
            );
            2
        }
    }
}

/// The image config handed over by PID1 to a forked agent.
static HANDED_OVER: OnceLock<ImageConfig> = OnceLock::new();

/// [`agent_main`] in a process PID1 forked without exec: `config` is the image config PID1
/// parsed, so the agent does not read it again.
pub fn agent_main_forked(args: &[String], config: ImageConfig) -> i32 {
    let _ = HANDED_OVER.set(config);
    agent_main(args)
}

/// The image config: the one PID1 handed over, else read from its file. An unreadable config
/// is logged and replaced by an empty one so the agents still serve what does not depend on it.
pub(crate) fn load_config(agent: &str) -> ImageConfig {
    if let Some(cfg) = HANDED_OVER.get() {
        return cfg.clone();
    }
    let path = minke_protocol::IMAGE_CONFIG_BIN_PATH;
    match std::fs::read(path) {
        Ok(bytes) => match ImageConfig::decode(&bytes) {
            Ok(cfg) => cfg,
            Err(e) => {
                eprintln!(
                    "minke agent {agent}: {path}: {}",
                    minke_protocol::error_chain(&e)
                );
                ImageConfig::default()
            }
        },
        Err(e) => {
            eprintln!("minke agent {agent}: cannot read {path}: {e}");
            ImageConfig::default()
        }
    }
}

/// Tells PID1 this agent is ready: writes `READY\n` to `$MINKE_NOTIFY_FD` and closes it.
/// Does nothing when the variable is absent (agent started by hand) and only logs failures.
/// Call at most once per process.
pub(crate) fn notify_ready(agent: &str) {
    let Ok(val) = std::env::var(NOTIFY_FD_ENV) else {
        return;
    };
    let Ok(fd) = val.trim().parse::<i32>() else {
        eprintln!("minke agent {agent}: {NOTIFY_FD_ENV}={val:?} is not a descriptor number");
        return;
    };
    let Some(fd) = sys::take_notify_fd(fd) else {
        eprintln!("minke agent {agent}: {NOTIFY_FD_ENV}={fd} is not an open descriptor");
        return;
    };
    // The moment, so the boot timeline shows when the agent was ready even if PID1 was busy
    // with a boot stage when the line arrived.
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    let ns = (now.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(now.tv_nsec as u64);
    let mut file = std::fs::File::from(fd);
    if let Err(e) = file.write_all(format!("READY {ns}\n").as_bytes()) {
        eprintln!("minke agent {agent}: cannot write readiness to fd {val}: {e}");
    }
}

/// An OS error as a short lowercase message (`no such file or directory`).
pub(crate) fn os_msg(e: &std::io::Error) -> String {
    let s = match e.raw_os_error() {
        Some(code) => {
            let full = std::io::Error::from_raw_os_error(code).to_string();
            match full.find(" (os error") {
                Some(i) => full[..i].to_string(),
                None => full,
            }
        }
        None => e.to_string(),
    };
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => s,
    }
}
