//! minke-init: PID1 of a minke guest and, under the `agent` subcommand, each in-guest agent.
//!
//! # One binary, several faces
//! - As PID1 (`/init`): brings the guest up from `/etc/minke/image.cfg` and supervises it; it
//!   never exits and never panics out (see [`init`]).
//! - `minke-init agent KIND [--port N]`, or argv\[0\] basename `minke-agent-KIND`: runs that agent
//!   (`minke_agents::agent_main`) as an ordinary process.
//!
//! # Contracts with the agents and the host
//! - **Power**: PID1 powers the guest off on SIGUSR2, SIGTERM, SIGINT (also Ctrl-Alt-Del) or
//!   SIGPWR, on a KEY_POWER press of a power button (an evdev device with that key that is not
//!   a keyboard: the ACPI button, arm64 `virt`'s GPIO key; QMP `system_powerdown` presses
//!   them), and when a service marked `exit_on_stop` ends for good; it reboots on
//!   SIGUSR1. A second request during shutdown skips ahead. The last console line before
//!   reboot(2) is `minke: powering off` or `minke: rebooting`.
//! - **Readiness**: an agent (and a service with `readiness: notify`) finds the number of an
//!   inherited pipe descriptor in `MINKE_NOTIFY_FD`; it writes one line (`READY\n`) there once it
//!   serves, then closes it. Any complete line counts; `READY <ns>` also gives the moment
//!   (CLOCK_BOOTTIME), which the boot timeline then records instead of when PID1 read it.
//!   `minke: ready` is printed once every agent has been ready and the boot stages are done.
//! - **Children**: each unit runs in its own session and in cgroup `/sys/fs/cgroup/minke/NAME`,
//!   stdin on /dev/null, stdout and stderr on a pipe that PID1 copies line by line to the
//!   console (`NAME: line`) and to `/run/minke/log/NAME` (at most 64 KiB; the previous part is
//!   `NAME.1`). Agents get oom_score_adj -1000, which their own children inherit unless reset.
//! - **Timeline**: `/run/minke/boot.json` (`BootTimeline`), rewritten atomically whenever PID1
//!   is about to wait with new events, and before `minke: ready` is printed.
//!
//! # Map
//! - [`init`]: PID1's life: early set-up, the boot stages, the shutdown sequence
//!   ([`shutdown`]), the last resort. It reads [`config`], which turns the image config into
//!   units, each with its [`config::Launch`]: exec a program, or run an agent of this binary.
//! - [`supervise`]: the event loop over the units and tasks. It starts processes through
//!   [`spawn`] (exec, or a forked copy of PID1 for an agent), reaps them with [`reap`],
//!   restarts them as [`backoff`] says, orders them with [`order`], and copies their output to
//!   [`console`] and to the logs of [`logring`].
//! - [`setup`], [`modules`], [`disks`], [`power`], [`timeline`]: the system's set-up, kernel
//!   modules, data disks, power buttons and the boot timeline.
//! - [`sys`]: the raw syscalls, the only `unsafe` code.

#![deny(unsafe_code)]

mod backoff;
mod config;
mod console;
mod disks;
mod image;
mod init;
mod logring;
mod modules;
mod net;
mod order;
mod power;
mod reap;
mod setup;
mod shares;
mod shutdown;
mod spawn;
mod supervise;
#[allow(unsafe_code)] // the one module with raw syscalls, each with a SAFETY comment
mod sys;
mod timeline;

fn main() {
    if rustix::process::getpid().is_init() {
        init::pid1();
    }
    let args: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    std::process::exit(run(&args));
}

/// Dispatches a non-PID1 invocation; returns the exit code.
fn run(args: &[String]) -> i32 {
    let argv0 = args.first().map(String::as_str).unwrap_or_default();
    let base = argv0.rsplit('/').next().unwrap_or(argv0);
    if let Some(kind) = base.strip_prefix("minke-agent-") {
        let mut agent_args = vec![kind.to_owned()];
        agent_args.extend(args.iter().skip(1).cloned());
        return agent(&agent_args);
    }
    match args.get(1).map(String::as_str) {
        Some("agent") => agent(args.get(2..).unwrap_or_default()),
        Some("vsock") => minke_agents::vsockcat::main(args.get(2..).unwrap_or_default()),
        Some("--version") => {
            println!("minke-init {}", env!("CARGO_PKG_VERSION"));
            0
        }
        _ => {
            eprintln!(
                "minke-init: runs as PID1 of a minke guest; otherwise: minke-init agent KIND [--port N] | minke-init vsock CID PORT"
            );
            2
        }
    }
}

/// The agents' entry point (argv after `agent`: `["control", "--port", "1024"]`).
fn agent(args: &[String]) -> i32 {
    minke_agents::agent_main(args)
}
