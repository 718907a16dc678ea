//! PID1's life: early set-up, the boot stages (modules and agents, system, disks, onboot), supervision,
//! and the shutdown sequence — each turn guarded so that a panic is logged and the init goes on,
//! and the guest is powered off cleanly if nothing else works.

use std::panic::{catch_unwind, AssertUnwindSafe};

use minke_protocol::config::{ImageConfig, OnFailure};
use minke_protocol::console::{POWERING_OFF, REBOOTING};
use minke_protocol::{BOOT_TIMELINE_PATH, IMAGE_CONFIG_BIN_PATH};
use rustix::system::RebootCommand;

use crate::console::{self, log};
use crate::shutdown::{Input, PowerAction, Shutdown, Step};
use crate::supervise::{Paths, Supervisor, TaskEnd};
use crate::timeline::{boottime_ns, now_ms, Timeline};
use crate::{config, disks, image, modules, net, setup, shares, sys};

/// Program agents are started from: this very binary.
const SELF_EXE: &str = "/proc/self/exe";
/// More panics than this within [`PANIC_WINDOW_MS`] and the init gives up (powers off).
const PANIC_LIMIT: usize = 20;
const PANIC_WINDOW_MS: u64 = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Kernel modules, then the agents (which need the vsock modules).
    Modules,
    /// Hostname, loopback, sysctls, rlimits, cgroup controllers: beside the starting agents.
    System,
    Disks,
    Onboot(usize),
    Start,
    Running,
    Shutdown(Step),
}

struct Init {
    cfg: ImageConfig,
    sup: Supervisor,
    mounted: Vec<String>,
    shutdown: Shutdown,
    stage: Stage,
}

/// PID1's entry point; never returns.
pub fn pid1() -> ! {
    let t0 = boottime_ns();
    let _ = rustix::process::setsid();
    let mut init = match catch_unwind(|| Init::early(t0)) {
        Ok(init) => init,
        Err(_) => emergency(&[]),
    };
    let mut panics: Vec<u64> = Vec::new();
    loop {
        if catch_unwind(AssertUnwindSafe(|| init.turn())).is_err() {
            let now = now_ms();
            panics.retain(|t| now.saturating_sub(*t) < PANIC_WINDOW_MS);
            panics.push(now);
            log!("internal error during {:?}; going on", init.stage);
            if panics.len() > PANIC_LIMIT {
                log!("too many internal errors");
                emergency(&init.mounted);
            }
            init.after_panic();
        }
    }
}

impl Init {
    fn early(t0: u64) -> Self {
        let rcu_after_boot = setup::mount_early();
        let sigfd = match sys::signalfd() {
            Ok(fd) => Some(fd),
            Err(e) => {
                log!("signalfd: {e}; polling for children instead");
                None
            }
        };
        // Ctrl-Alt-Del sends SIGINT to PID1 (a clean shutdown) instead of an instant reboot.
        let _ = rustix::system::reboot(RebootCommand::CadOff);
        let _ = std::fs::create_dir_all("/run/minke");
        let mut timeline = Timeline::new(Some(BOOT_TIMELINE_PATH));
        timeline.record_at(t0, "pid1");
        timeline.record("mounts");
        let (cfg, ok) = match config::load(IMAGE_CONFIG_BIN_PATH) {
            Ok(cfg) => (cfg, true),
            Err(e) => {
                console::loud(format_args!(
                    "image config: {}",
                    minke_protocol::error_chain(&e)
                ));
                (ImageConfig::default(), false)
            }
        };
        log!("image {:?}", cfg.name);
        let (units, rejected) = config::units(&cfg, SELF_EXE);
        for (name, why) in rejected {
            log!("{name} not started: {why}");
        }
        let mut sup = Supervisor::new(units, sigfd, timeline, Paths::default());
        if let Some(old) = rcu_after_boot {
            sup.when_booted(Box::new(move || setup::restore_rcu(&old)));
        }
        sup.fork_agents(cfg.clone());
        if !ok {
            sup.request(PowerAction::PowerOff);
        }
        let shutdown = Shutdown::new(cfg.onshutdown.len(), cfg.shutdown_grace_ms);
        Init {
            cfg,
            sup,
            mounted: Vec::new(),
            shutdown,
            stage: Stage::Modules,
        }
    }

    /// Runs one step of the current stage and moves on.
    fn turn(&mut self) {
        // Each boot stage names its successor before doing its work, so a panic in it moves on
        // instead of retrying the same step.
        match self.stage {
            Stage::Modules => {
                self.stage = Stage::System;
                // Each module in the timeline: under emulation one can take tens of ms (a device
                // probe, a signature check), and the boot chart shows which.
                let timeline = &mut self.sup.timeline;
                let res = modules::load_all(&modules::for_this_boot(&self.cfg), |m, _| {
                    timeline.record(&format!("module:{}", m.name));
                });
                let failed = res
                    .iter()
                    .filter(|r| **r == modules::Loaded::Failed)
                    .count();
                log!("{} modules loaded, {failed} failed", res.len() - failed);
                setup::mount_binfmt_misc();
                self.sup.timeline.record("modules");
                if !self.sup.has_request() {
                    self.sup.start_agents();
                }
            }
            Stage::System => {
                self.stage = Stage::Disks;
                setup::system(&self.cfg);
                setup::cgroups();
                self.sup.watch_power_buttons();
                self.sup.timeline.record("system");
            }
            Stage::Disks => {
                self.stage = Stage::Onboot(0);
                self.mounted = disks::mount_all(&self.cfg.disks);
                self.sup.timeline.record("disks");
                let shared = shares::mount_all(&self.cfg.share_modules);
                if !shared.is_empty() {
                    self.mounted.extend(shared);
                    self.sup.timeline.record("shares");
                }
                let image = image::mount(&self.cfg.image_modules);
                if !image.is_empty() {
                    self.mounted.extend(image);
                    self.sup.timeline.record("image");
                }
                if net::set_up(&self.cfg.net_modules).is_some() {
                    self.sup.timeline.record("network");
                }
            }
            Stage::Onboot(i) => self.onboot(i),
            Stage::Start => {
                self.stage = Stage::Running;
                if !self.sup.has_request() {
                    self.sup.start();
                }
            }
            Stage::Running => match self.sup.take_request() {
                Some(action) => self.begin_shutdown(action),
                None => self.sup.pump(None),
            },
            Stage::Shutdown(step) => self.shutdown_turn(step),
        }
    }

    fn onboot(&mut self, i: usize) {
        if self.sup.has_request() {
            self.stage = Stage::Running;
            return;
        }
        let Some(task) = self.cfg.onboot.get(i).cloned() else {
            self.stage = Stage::Start;
            self.sup.timeline.record("onboot");
            return;
        };
        self.stage = Stage::Onboot(i + 1);
        let end = self.sup.run_task(&task, true);
        report_task("onboot", &task.name, &end);
        if !end.success() && end != TaskEnd::Aborted && task.on_failure == OnFailure::Poweroff {
            log!(
                "onboot task {} failed and is marked on_failure: poweroff",
                task.name
            );
            self.sup.request(PowerAction::PowerOff);
        }
    }

    fn begin_shutdown(&mut self, action: PowerAction) {
        log!(
            "shutting down ({})",
            if action == PowerAction::Reboot {
                "reboot"
            } else {
                "power off"
            }
        );
        self.sup.stop_all();
        let step = self.shutdown.step(now_ms(), Input::Request(action), true);
        self.stage = Stage::Shutdown(step);
    }

    fn shutdown_turn(&mut self, step: Step) {
        let next = match step {
            Step::Idle => {
                self.stage = Stage::Running;
                return;
            }
            Step::RunTask(i) => {
                let input = match self.cfg.onshutdown.get(i).cloned() {
                    Some(task) => {
                        let end = self.sup.run_task(&task, true);
                        report_task("onshutdown", &task.name, &end);
                        match end {
                            TaskEnd::Aborted => Input::Request(
                                self.sup.take_request().unwrap_or(PowerAction::PowerOff),
                            ),
                            _ => Input::TaskDone,
                        }
                    }
                    None => Input::TaskDone,
                };
                self.shutdown.step(now_ms(), input, true)
            }
            Step::TermAll => {
                if let Err(e) = sys::kill_all(libc::SIGTERM) {
                    log!("SIGTERM to all: {e}");
                }
                self.shutdown.step(now_ms(), Input::Tick, true)
            }
            Step::KillAll => {
                log!("processes left after SIGTERM: sending SIGKILL");
                if let Err(e) = sys::kill_all(libc::SIGKILL) {
                    log!("SIGKILL to all: {e}");
                }
                self.shutdown.step(now_ms(), Input::Tick, true)
            }
            Step::Wait(deadline) => {
                self.sup.pump(Some(deadline));
                let input = self.sup.take_request().map_or(Input::Tick, Input::Request);
                self.shutdown.step(now_ms(), input, self.sup.has_children())
            }
            Step::Finish(action) => finish(action, &self.mounted),
        };
        self.stage = Stage::Shutdown(next);
    }

    /// Where to go on after a panic: boot stages already named their successor and
    /// supervision simply continues; a failing shutdown step kills everything and finishes, a failing
    /// finish to the emergency power off.
    fn after_panic(&mut self) {
        match self.stage {
            Stage::Shutdown(Step::Finish(_)) => emergency(&self.mounted),
            Stage::Shutdown(_) => {
                let _ = sys::kill_all(libc::SIGKILL);
                self.stage = Stage::Shutdown(Step::Finish(self.shutdown.action()));
            }
            _ => {}
        }
    }
}

fn report_task(kind: &str, name: &str, end: &TaskEnd) {
    match end {
        TaskEnd::Exited(0) => {}
        TaskEnd::Exited(code) => log!("{kind} task {name} exited with status {code}"),
        TaskEnd::Signaled(sig) => log!("{kind} task {name} killed by signal {sig}"),
        TaskEnd::TimedOut => log!("{kind} task {name} timed out and was killed"),
        TaskEnd::SpawnFailed(e) => log!("{kind} task {name}: cannot start: {e}"),
        TaskEnd::Aborted => log!("{kind} task {name} cut short by a shutdown request"),
    }
}

/// Sync, unmount the data disks, print the marker and reboot(2). Never returns.
fn finish(action: PowerAction, mounted: &[String]) -> ! {
    rustix::fs::sync();
    disks::unmount_all(mounted);
    rustix::fs::sync();
    let (marker, cmd) = match action {
        PowerAction::PowerOff => (POWERING_OFF, RebootCommand::PowerOff),
        PowerAction::Reboot => (REBOOTING, RebootCommand::Restart),
    };
    console::marker(marker);
    if let Err(e) = rustix::system::reboot(cmd) {
        log!("reboot(2): {e}");
    }
    halt()
}

/// Last resort: kill everything and power off.
fn emergency(mounted: &[String]) -> ! {
    log!("emergency power off");
    let _ = sys::kill_all(libc::SIGKILL);
    finish(PowerAction::PowerOff, mounted)
}

/// If even reboot(2) failed: stay alive, reaping, forever.
fn halt() -> ! {
    loop {
        while let Ok(Some(_)) = rustix::process::wait(rustix::process::WaitOptions::NOHANG) {}
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}
