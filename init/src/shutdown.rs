//! The shutdown sequence as a state machine without syscalls: onshutdown tasks in order,
//! SIGTERM to everything, SIGKILL after the grace period, then power off or reboot. A second
//! request while shutting down skips ahead (tasks → SIGTERM → SIGKILL → the end).

/// How the guest ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerAction {
    /// reboot(2) with `LINUX_REBOOT_CMD_POWER_OFF`.
    PowerOff,
    /// reboot(2) with `LINUX_REBOOT_CMD_RESTART`.
    Reboot,
}

/// How long to wait for processes to die after SIGKILL before giving up on them.
pub const KILL_WAIT_MS: u64 = 2_000;

/// What happened since the last step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// A shutdown was requested (first time: start; again: hurry).
    Request(PowerAction),
    /// The onshutdown task last asked for has finished (or was killed).
    TaskDone,
    /// Time passed or children exited.
    Tick,
}

/// What the driver must do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing: no shutdown in progress.
    Idle,
    /// Run onshutdown task `i`, then report [`Input::TaskDone`].
    RunTask(usize),
    /// Send SIGTERM to every process, then report [`Input::Tick`].
    TermAll,
    /// Send SIGKILL to every process, then report [`Input::Tick`].
    KillAll,
    /// Reap and wait until the deadline (milliseconds) or until no child is left.
    Wait(u64),
    /// Sync, unmount, print the marker and call reboot(2).
    Finish(PowerAction),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    Tasks { current: usize },
    Term { deadline: u64 },
    Kill { deadline: u64 },
    Done,
}

/// Shutdown progress.
#[derive(Debug, Clone)]
pub struct Shutdown {
    phase: Phase,
    action: PowerAction,
    tasks: usize,
    grace_ms: u64,
}

impl Shutdown {
    /// A machine for `tasks` onshutdown tasks and a SIGTERM→SIGKILL grace of `grace_ms`.
    pub fn new(tasks: usize, grace_ms: u64) -> Self {
        Shutdown {
            phase: Phase::Running,
            action: PowerAction::PowerOff,
            tasks,
            grace_ms,
        }
    }

    /// Whether a shutdown has started.
    #[cfg(test)]
    pub fn started(&self) -> bool {
        self.phase != Phase::Running
    }

    /// The action chosen by the first request.
    pub fn action(&self) -> PowerAction {
        self.action
    }

    /// Advances at time `now` (ms) given `input`; `children` says whether any process is left.
    pub fn step(&mut self, now: u64, input: Input, children: bool) -> Step {
        match (self.phase, input) {
            (Phase::Running, Input::Request(action)) => {
                self.action = action;
                self.start_task(0, now)
            }
            (Phase::Running, _) => Step::Idle,
            (Phase::Tasks { current }, Input::TaskDone) => self.start_task(current + 1, now),
            (Phase::Tasks { .. }, Input::Request(_)) => self.term(now),
            (Phase::Tasks { current }, Input::Tick) => Step::RunTask(current),
            (Phase::Term { .. }, Input::Request(_)) => self.kill(now),
            (Phase::Term { deadline }, _) => {
                if !children {
                    self.finish()
                } else if now >= deadline {
                    self.kill(now)
                } else {
                    Step::Wait(deadline)
                }
            }
            (Phase::Kill { deadline }, Input::Tick | Input::TaskDone) => {
                if !children || now >= deadline {
                    self.finish()
                } else {
                    Step::Wait(deadline)
                }
            }
            (Phase::Kill { .. }, Input::Request(_)) | (Phase::Done, _) => self.finish(),
        }
    }

    fn start_task(&mut self, i: usize, now: u64) -> Step {
        if i < self.tasks {
            self.phase = Phase::Tasks { current: i };
            Step::RunTask(i)
        } else {
            self.term(now)
        }
    }

    fn term(&mut self, now: u64) -> Step {
        self.phase = Phase::Term {
            deadline: now.saturating_add(self.grace_ms),
        };
        Step::TermAll
    }

    fn kill(&mut self, now: u64) -> Step {
        self.phase = Phase::Kill {
            deadline: now.saturating_add(KILL_WAIT_MS),
        };
        Step::KillAll
    }

    fn finish(&mut self) -> Step {
        self.phase = Phase::Done;
        Step::Finish(self.action)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use PowerAction::*;

    #[test]
    fn idle_until_requested() {
        let mut s = Shutdown::new(1, 100);
        assert_eq!(s.step(0, Input::Tick, true), Step::Idle);
        assert!(!s.started());
    }

    #[test]
    fn full_sequence_with_stubborn_children() {
        let mut s = Shutdown::new(2, 5000);
        assert_eq!(s.step(10, Input::Request(Reboot), true), Step::RunTask(0));
        assert!(s.started());
        assert_eq!(s.step(20, Input::TaskDone, true), Step::RunTask(1));
        assert_eq!(s.step(30, Input::TaskDone, true), Step::TermAll);
        assert_eq!(s.step(30, Input::Tick, true), Step::Wait(5030));
        assert_eq!(s.step(4000, Input::Tick, true), Step::Wait(5030));
        assert_eq!(s.step(5030, Input::Tick, true), Step::KillAll);
        assert_eq!(
            s.step(5030, Input::Tick, true),
            Step::Wait(5030 + KILL_WAIT_MS)
        );
        assert_eq!(s.step(5100, Input::Tick, false), Step::Finish(Reboot));
        assert_eq!(s.step(5200, Input::Tick, false), Step::Finish(Reboot));
    }

    #[test]
    fn children_that_leave_on_sigterm_end_it_early() {
        let mut s = Shutdown::new(0, 5000);
        assert_eq!(s.step(0, Input::Request(PowerOff), true), Step::TermAll);
        assert_eq!(s.step(1, Input::Tick, false), Step::Finish(PowerOff));
    }

    #[test]
    fn a_second_request_hurries_each_phase_and_keeps_the_first_action() {
        let mut s = Shutdown::new(3, 5000);
        assert_eq!(s.step(0, Input::Request(PowerOff), true), Step::RunTask(0));
        assert_eq!(s.step(1, Input::Request(Reboot), true), Step::TermAll);
        assert_eq!(s.step(2, Input::Request(Reboot), true), Step::KillAll);
        assert_eq!(
            s.step(3, Input::Request(Reboot), true),
            Step::Finish(PowerOff)
        );
    }

    #[test]
    fn unkillable_children_do_not_hold_the_shutdown() {
        let mut s = Shutdown::new(0, 100);
        s.step(0, Input::Request(PowerOff), true);
        assert_eq!(s.step(100, Input::Tick, true), Step::KillAll);
        assert_eq!(
            s.step(100 + KILL_WAIT_MS, Input::Tick, true),
            Step::Finish(PowerOff)
        );
    }
}
