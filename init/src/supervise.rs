//! The supervisor: one event loop (poll on the signalfd, power buttons and the children's pipes,
//! with timers) that starts units in `after:` order, tracks readiness, forwards output, reaps
//! every zombie, restarts with backoff, and runs run-to-completion tasks.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;

use rustix::io::Errno;

use crate::backoff::{should_restart, Backoff};
use crate::config::{self, UnitSpec};
use crate::console::{self, log, ServiceConsole};
use crate::logring::{LineSplitter, LogFile, LOG_DIR, LOG_MAX};
use crate::order;
use crate::reap::{reap_next, Exit, Reaped};
use crate::setup::CGROUP_ROOT;
use crate::shutdown::PowerAction;
use crate::spawn;
use crate::timeline::boottime_ns;
use crate::timeline::{now_ms, Timeline};
use minke_protocol::config::{Readiness, Task};
use minke_protocol::console::restart_line;

/// How often to look for power button devices, and for how long after the modules are loaded
/// (buttons probe asynchronously, and a machine may have more than one).
const BUTTON_SCAN_EVERY_MS: u64 = 500;
const BUTTON_SCAN_FOR_MS: u64 = 10_000;
/// Bytes read from one pipe per loop turn, so a chatty child can't starve the others.
const READ_BUDGET: usize = 64 * 1024;

/// Where a unit is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Waiting for the units it runs `after:`.
    Waiting,
    /// Never started (unknown dependency or cycle).
    Blocked(String),
    /// Running as `pid` since `since_ms`.
    Running {
        /// Process id.
        pid: i32,
        /// CLOCK_MONOTONIC ms of the start.
        since_ms: u64,
    },
    /// Waiting to be restarted at `until_ms`.
    Backoff {
        /// CLOCK_MONOTONIC ms of the restart.
        until_ms: u64,
    },
    /// Ended for good.
    Stopped,
}

/// A supervised agent or service.
#[derive(Debug)]
pub struct Unit {
    /// What to run.
    pub spec: UnitSpec,
    /// Current state.
    pub state: State,
    /// Has been ready at least once (releases its `after:` dependents).
    pub ready: bool,
    backoff: Backoff,
    starts: u64,
}

/// How a run-to-completion task ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskEnd {
    /// Exited with this code.
    Exited(i32),
    /// Killed by this signal.
    Signaled(i32),
    /// Ran past its timeout and was killed.
    TimedOut,
    /// Could not be started.
    SpawnFailed(String),
    /// A shutdown request cut it short.
    Aborted,
}

impl TaskEnd {
    /// Exit code 0.
    pub fn success(&self) -> bool {
        *self == TaskEnd::Exited(0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PipeKind {
    Output,
    Notify { pid: i32 },
}

#[derive(Debug)]
struct Pipe {
    fd: OwnedFd,
    name: String,
    kind: PipeKind,
    lines: LineSplitter,
}

/// Where the supervisor puts things (tests point these away from the host's).
#[derive(Debug, Clone)]
pub struct Paths {
    /// Directory of the per-unit logs.
    pub log_dir: String,
    /// Parent of the units' cgroups (`None`: leave cgroups alone).
    pub cgroup_root: Option<String>,
    /// Copy service output to /dev/console (otherwise to stderr).
    pub console: bool,
}

impl Default for Paths {
    fn default() -> Self {
        Paths {
            log_dir: LOG_DIR.to_owned(),
            cgroup_root: Some(CGROUP_ROOT.to_owned()),
            console: true,
        }
    }
}

/// What to do once booted (see [`Supervisor::when_booted`]).
struct WhenBooted(Box<dyn FnOnce()>);

impl std::fmt::Debug for WhenBooted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WhenBooted")
    }
}

/// The supervisor.
#[derive(Debug)]
pub struct Supervisor {
    paths: Paths,
    /// Agents and services.
    pub units: Vec<Unit>,
    start_order: Vec<usize>,
    pipes: Vec<Pipe>,
    sigfd: Option<OwnedFd>,
    buttons: Vec<(u32, OwnedFd)>,
    button_scan_until: u64,
    next_button_scan: u64,
    console: ServiceConsole,
    logs: BTreeMap<String, LogFile>,
    /// Boot timeline.
    pub timeline: Timeline,
    requests: Vec<PowerAction>,
    task_pid: Option<i32>,
    task_exit: Option<Exit>,
    children: bool,
    /// Agents may start (the transport's modules are loaded).
    agents_started: bool,
    /// Every unit may start (boot stages done).
    started: bool,
    stopping: bool,
    ready_announced: bool,
    /// Run once booted, before the marker.
    when_booted: Option<WhenBooted>,
    /// Set: agents of this binary run as forked copies of PID1 (no exec), handed this config.
    agent_config: Option<minke_protocol::ImageConfig>,
    /// Whether the host chose the virtio-serial transport (asked when the serial agent is due).
    serial_transport: fn() -> bool,
}

impl Supervisor {
    /// A supervisor for `units`, reading signals from `sigfd`.
    pub fn new(
        units: Vec<UnitSpec>,
        sigfd: Option<OwnedFd>,
        timeline: Timeline,
        paths: Paths,
    ) -> Self {
        let names: Vec<(&str, &[String])> = units
            .iter()
            .map(|u| (u.name.as_str(), u.after.as_slice()))
            .collect();
        let ord = order::order(&names);
        let mut units: Vec<Unit> = units
            .into_iter()
            .map(|spec| Unit {
                spec,
                state: State::Waiting,
                ready: false,
                backoff: Backoff::default(),
                starts: 0,
            })
            .collect();
        for (i, why) in &ord.blocked {
            if let Some(u) = units.get_mut(*i) {
                log!("{} not started: {why}", u.spec.name);
                u.state = State::Blocked(why.to_string());
            }
        }
        let _ = std::fs::create_dir_all(&paths.log_dir);
        let console = if paths.console {
            ServiceConsole::open()
        } else {
            ServiceConsole::default()
        };
        Supervisor {
            units,
            start_order: ord.start,
            pipes: Vec::new(),
            sigfd,
            buttons: Vec::new(),
            button_scan_until: 0,
            next_button_scan: 0,
            console,
            paths,
            logs: BTreeMap::new(),
            timeline,
            requests: Vec::new(),
            task_pid: None,
            task_exit: None,
            children: true,
            agents_started: false,
            started: false,
            stopping: false,
            ready_announced: false,
            when_booted: None,
            agent_config: None,
            serial_transport: minke_agents::conn::serial_transport,
        }
    }

    /// Queues a shutdown request (from a signal, the button, a task or a unit).
    pub fn request(&mut self, action: PowerAction) {
        self.requests.push(action);
    }

    /// Takes the oldest pending shutdown request.
    pub fn take_request(&mut self) -> Option<PowerAction> {
        (!self.requests.is_empty()).then(|| self.requests.remove(0))
    }

    /// Whether a shutdown request is pending.
    pub fn has_request(&self) -> bool {
        !self.requests.is_empty()
    }

    /// Whether any child process was left at the last reap.
    pub fn has_children(&self) -> bool {
        self.children
    }

    /// Starts looking for power buttons (after evdev and button are loaded).
    pub fn watch_power_buttons(&mut self) {
        let now = now_ms();
        self.button_scan_until = now + BUTTON_SCAN_FOR_MS;
        self.scan_buttons(now);
    }

    fn scan_buttons(&mut self, now: u64) {
        let known: Vec<u32> = self.buttons.iter().map(|(n, _)| *n).collect();
        for (n, fd) in crate::power::open_buttons(&known) {
            log!("watching power button /dev/input/event{n}");
            self.buttons.push((n, fd));
        }
        self.next_button_scan = now + BUTTON_SCAN_EVERY_MS;
    }

    /// Runs the agents of this binary as forked copies of PID1 that call the agent's entry
    /// point, instead of exec'ing the binary again: no program load, no new translation under
    /// an emulator, no second parse of the image config (`cfg` is handed over).
    pub fn fork_agents(&mut self, cfg: minke_protocol::ImageConfig) {
        self.agent_config = Some(cfg);
    }

    /// Lets the agents start now, while the init goes on with disks and onboot tasks: they
    /// need only the modules, and their start-up overlaps the rest of the boot.
    pub fn start_agents(&mut self) {
        self.agents_started = true;
        self.tick(now_ms());
    }

    /// Lets every unit start (in `after:` order) from the next loop turn on.
    pub fn start(&mut self) {
        self.agents_started = true;
        self.started = true;
        self.tick(now_ms());
    }

    /// Runs `f` once booted, right before `minke: ready` is printed.
    pub fn when_booted(&mut self, f: Box<dyn FnOnce()>) {
        self.when_booted = Some(WhenBooted(f));
    }

    /// Stops supervising: nothing starts or restarts any more; pending restarts are dropped.
    pub fn stop_all(&mut self) {
        self.stopping = true;
        for u in &mut self.units {
            if matches!(u.state, State::Waiting | State::Backoff { .. }) {
                u.state = State::Stopped;
            }
        }
    }

    /// One turn of the event loop: wait for fds or the next timer (at most until `deadline`),
    /// handle what happened, reap, then start and restart what is due.
    pub fn pump(&mut self, deadline: Option<u64>) {
        let now = now_ms();
        let mut wake = deadline;
        let mut earliest = |t: u64| wake = Some(wake.map_or(t, |w| w.min(t)));
        if self.started && !self.stopping {
            for u in &self.units {
                if let State::Backoff { until_ms } = u.state {
                    earliest(until_ms);
                }
            }
        }
        if now < self.button_scan_until {
            earliest(self.next_button_scan);
        }
        if self.sigfd.is_none() {
            earliest(now + 1000);
        }
        let timeout = wake.map(|w| {
            let ms = w.saturating_sub(now);
            rustix::event::Timespec {
                tv_sec: (ms / 1000) as i64,
                tv_nsec: ((ms % 1000) * 1_000_000) as i64,
            }
        });

        // About to wait: the timeline file catches up with what happened since the last wait.
        self.timeline.flush();
        use rustix::event::{PollFd, PollFlags};
        let ready: Vec<(usize, PollFlags)> = {
            let mut fds: Vec<PollFd<'_>> =
                Vec::with_capacity(1 + self.buttons.len() + self.pipes.len());
            let inp = PollFlags::IN;
            if let Some(s) = &self.sigfd {
                fds.push(PollFd::new(s, inp));
            }
            fds.extend(self.buttons.iter().map(|(_, fd)| PollFd::new(fd, inp)));
            fds.extend(self.pipes.iter().map(|p| PollFd::new(&p.fd, inp)));
            match rustix::event::poll(&mut fds, timeout.as_ref()) {
                Ok(_) | Err(Errno::INTR) => {}
                Err(e) => {
                    log!("poll: {e}");
                    // Don't spin on a persistent failure.
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
            }
            fds.iter()
                .enumerate()
                .map(|(i, f)| (i, f.revents()))
                .filter(|(_, r)| !r.is_empty())
                .collect()
        };
        let off_buttons = usize::from(self.sigfd.is_some());
        let off_pipes = off_buttons + self.buttons.len();
        let mut dead_pipes = Vec::new();
        let mut dead_buttons = Vec::new();
        for (i, _rev) in ready {
            if i < off_buttons {
                self.read_signals();
            } else if i < off_pipes {
                if !self.read_button(i - off_buttons) {
                    dead_buttons.push(i - off_buttons);
                }
            } else if !self.read_pipe(i - off_pipes) {
                dead_pipes.push(i - off_pipes);
            }
        }
        for i in dead_pipes.into_iter().rev() {
            if i < self.pipes.len() {
                let mut p = self.pipes.remove(i);
                let mut lines = std::mem::take(&mut p.lines);
                lines.finish(&mut |l| self.on_line(&p.name, p.kind, l));
            }
        }
        for i in dead_buttons.into_iter().rev() {
            if i < self.buttons.len() {
                self.buttons.remove(i);
            }
        }
        self.reap();
        self.tick(now_ms());
    }

    fn read_signals(&mut self) {
        let mut buf = [0u8; crate::sys::SIGINFO_SIZE * 8];
        loop {
            let Some(fd) = &self.sigfd else { return };
            match rustix::io::read(fd, &mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    for sig in crate::sys::signals_in(buf.get(..n).unwrap_or_default()) {
                        self.on_signal(sig);
                    }
                }
            }
        }
    }

    fn on_signal(&mut self, sig: i32) {
        match sig {
            libc::SIGCHLD => {}
            libc::SIGUSR1 => {
                log!("reboot requested (SIGUSR1)");
                self.request(PowerAction::Reboot);
            }
            libc::SIGTERM | libc::SIGINT | libc::SIGPWR | libc::SIGUSR2 => {
                log!("power off requested (signal {sig})");
                self.request(PowerAction::PowerOff);
            }
            other => log!("signal {other} ignored"),
        }
    }

    /// Reads a power button; false when the device is gone.
    fn read_button(&mut self, i: usize) -> bool {
        let Some((_, fd)) = self.buttons.get(i) else {
            return false;
        };
        let mut buf = [0u8; crate::power::EVENT_SIZE * 16];
        match rustix::io::read(fd, &mut buf) {
            Ok(0) => false,
            Ok(n) => {
                if crate::power::has_power_press(buf.get(..n).unwrap_or_default()) {
                    log!("power button pressed");
                    self.request(PowerAction::PowerOff);
                }
                true
            }
            Err(Errno::AGAIN | Errno::INTR) => true,
            Err(_) => false,
        }
    }

    /// Reads a child's pipe; false at end of file.
    fn read_pipe(&mut self, i: usize) -> bool {
        let mut buf = [0u8; 4096];
        let mut total = 0;
        while total < READ_BUDGET {
            let Some(p) = self.pipes.get_mut(i) else {
                return false;
            };
            match rustix::io::read(&p.fd, &mut buf) {
                Ok(0) => return false,
                Ok(n) => {
                    total += n;
                    let (name, kind) = (p.name.clone(), p.kind);
                    let mut lines = std::mem::take(&mut p.lines);
                    lines.feed(buf.get(..n).unwrap_or_default(), &mut |l| {
                        self.on_line(&name, kind, l)
                    });
                    if let Some(p) = self.pipes.get_mut(i) {
                        p.lines = lines;
                    }
                }
                Err(Errno::AGAIN) => return true,
                Err(Errno::INTR) => {}
                Err(_) => return false,
            }
        }
        true
    }

    fn on_line(&mut self, name: &str, kind: PipeKind, line: &[u8]) {
        match kind {
            PipeKind::Output => {
                self.console.service_line(name, line);
                self.logs
                    .entry(name.to_owned())
                    .or_insert_with(|| LogFile::new(&self.paths.log_dir, name, LOG_MAX))
                    .append(line);
            }
            PipeKind::Notify { pid } => {
                let current = self.units.iter().position(|u| {
                    u.spec.name == name
                        && matches!(u.state, State::Running { pid: p, .. } if p == pid)
                });
                if let Some(i) = current {
                    self.mark_ready_at(i, ready_moment(line, boottime_ns()));
                }
            }
        }
    }

    fn mark_ready(&mut self, i: usize) {
        self.mark_ready_at(i, boottime_ns());
    }

    /// Marks unit `i` ready as of `at` (CLOCK_BOOTTIME ns).
    fn mark_ready_at(&mut self, i: usize, at: u64) {
        let Some(u) = self.units.get_mut(i) else {
            return;
        };
        if u.ready {
            return;
        }
        u.ready = true;
        let name = u.spec.name.clone();
        self.timeline.record_at(at, &format!("ready:{name}"));
    }

    /// Reaps every exited child; orphans are reaped and forgotten.
    fn reap(&mut self) {
        loop {
            match reap_next() {
                Reaped::Exited(pid, exit) => self.on_exit(pid, exit),
                Reaped::Alive => {
                    self.children = true;
                    return;
                }
                Reaped::NoChildren => {
                    self.children = false;
                    return;
                }
            }
        }
    }

    fn on_exit(&mut self, pid: i32, status: Exit) {
        if self.task_pid == Some(pid) {
            self.task_pid = None;
            self.task_exit = Some(status);
            return;
        }
        self.drain_notify(pid);
        let Some(i) = self
            .units
            .iter()
            .position(|u| matches!(u.state, State::Running { pid: p, .. } if p == pid))
        else {
            return;
        };
        let now = now_ms();
        let stopping = self.stopping;
        let Some(u) = self.units.get_mut(i) else {
            return;
        };
        let since = match u.state {
            State::Running { since_ms, .. } => since_ms,
            _ => now,
        };
        let how = status;
        let success = status == Exit::Code(0);
        if stopping {
            u.state = State::Stopped;
            return;
        }
        if should_restart(u.spec.restart, success) {
            let delay = u.backoff.delay_after(now.saturating_sub(since));
            log!("{}", restart_line(&u.spec.name, how.into(), delay));
            if let Some(root) = &self.paths.cgroup_root {
                crate::setup::kill_unit_cgroup(root, &u.spec.name);
            }
            u.state = State::Backoff {
                until_ms: now + delay,
            };
        } else {
            log!("{} {how}; not restarted", u.spec.name);
            u.state = State::Stopped;
            if u.spec.exit_on_stop {
                log!("{} was marked exit_on_stop: powering off", u.spec.name);
                self.requests.push(PowerAction::PowerOff);
            }
        }
    }

    /// Reads what an exited unit left in its readiness pipe while it still counts as running:
    /// a unit may report ready and exit at once (an agent with nothing more to do), and its
    /// exit can be reaped before the pipe is polled.
    fn drain_notify(&mut self, pid: i32) {
        for i in 0..self.pipes.len() {
            if self
                .pipes
                .get(i)
                .is_some_and(|p| p.kind == PipeKind::Notify { pid })
            {
                // End of file is noticed, and the pipe dropped, by the next poll.
                let _ = self.read_pipe(i);
            }
        }
    }

    /// Starts what is due: restarts whose delay passed, waiting units whose dependencies are
    /// ready; announces `ready` once every agent is.
    fn tick(&mut self, now: u64) {
        if now < self.button_scan_until && now >= self.next_button_scan {
            self.scan_buttons(now);
        }
        if !self.agents_started || self.stopping {
            return;
        }
        let order = self.start_order.clone();
        for i in order {
            if !self.started && !self.units.get(i).is_some_and(|u| u.spec.agent) {
                continue;
            }
            let due = match self.units.get(i).map(|u| &u.state) {
                Some(State::Backoff { until_ms }) => *until_ms <= now,
                Some(State::Waiting) => self.deps_ready(i),
                _ => false,
            };
            if due {
                self.start_unit(i);
            }
        }
        // Ready means booted: every agent ready and the boot stages (disks, onboot) done.
        if self.started
            && !self.ready_announced
            && self.units.iter().filter(|u| u.spec.agent).all(|u| u.ready)
        {
            self.ready_announced = true;
            self.timeline.record("ready");
            // The host reads the timeline as soon as it sees the marker.
            self.timeline.flush();
            if let Some(WhenBooted(f)) = self.when_booted.take() {
                f();
            }
            // Tagged with the VM secret: a service printing the marker does not forge it.
            match minke_agents::auth::secret() {
                Ok(secret) => console::marker(&secret.ready_line()),
                Err(why) => {
                    console::loud(format_args!("{why}"));
                    console::marker(minke_protocol::READY_MARKER);
                }
            }
        }
    }

    fn deps_ready(&self, i: usize) -> bool {
        let Some(u) = self.units.get(i) else {
            return false;
        };
        u.spec
            .after
            .iter()
            .all(|dep| self.units.iter().any(|d| &d.spec.name == dep && d.ready))
    }

    fn start_unit(&mut self, i: usize) {
        let Some(spec) = self.units.get(i).map(|u| u.spec.clone()) else {
            return;
        };
        if is_serial_agent(&spec) && !(self.serial_transport)() {
            // Under vsock the serial agent would report ready and exit at once: one process
            // fewer competes for the booting guest's CPU. It counts as ready (its dependents
            // start) and as ended for good.
            if let Some(u) = self.units.get_mut(i) {
                u.state = State::Stopped;
            }
            self.mark_ready(i);
            return;
        }
        let now = now_ms();
        match self.spawn(&spec, spec.readiness == Readiness::Notify) {
            Ok(pid) => {
                let Some(u) = self.units.get_mut(i) else {
                    return;
                };
                u.state = State::Running { pid, since_ms: now };
                u.starts += 1;
                if u.starts == 1 {
                    self.timeline.record(&format!("started:{}", spec.name));
                }
                if spec.readiness == Readiness::Started {
                    self.mark_ready(i);
                }
            }
            Err(e) => {
                log!("{}: cannot start {}: {e}", spec.name, spec.program());
                // Count it as a failed run so the restart policy and backoff apply.
                if let Some(u) = self.units.get_mut(i) {
                    u.state = State::Running {
                        pid: -1,
                        since_ms: now,
                    };
                }
                self.on_exit(-1, Exit::Code(127));
            }
        }
    }

    /// Starts `spec` (see [`spawn::start`]) and watches its pipes.
    fn spawn(&mut self, spec: &UnitSpec, notify: bool) -> std::io::Result<i32> {
        let setup = self.child_setup(spec);
        let started = spawn::start(spec, setup, notify, self.agent_config.as_ref())?;
        self.watch_pipes(&spec.name, started.pid, started.out, started.notify);
        Ok(started.pid)
    }

    /// What a child gets set up with before it runs: its cgroup and oom_score_adj.
    fn child_setup(&self, spec: &UnitSpec) -> crate::sys::ChildSetup {
        crate::sys::ChildSetup {
            cgroup_procs: self
                .paths
                .cgroup_root
                .as_deref()
                .and_then(|root| crate::setup::unit_cgroup(root, &spec.name)),
            oom_score_adj: spec.oom_score_adj.map(|v| v.to_string().into_bytes()),
            keep_fd: None,
        }
    }

    /// Reads the output pipe (and the readiness pipe) of the unit just started as `pid`.
    fn watch_pipes(&mut self, name: &str, pid: i32, out_r: OwnedFd, notify_r: Option<OwnedFd>) {
        self.pipes.push(Pipe {
            fd: out_r,
            name: name.to_owned(),
            kind: PipeKind::Output,
            lines: LineSplitter::default(),
        });
        if let Some(r) = notify_r {
            self.pipes.push(Pipe {
                fd: r,
                name: name.to_owned(),
                kind: PipeKind::Notify { pid },
                lines: LineSplitter::default(),
            });
        }
    }

    /// Runs a task to completion (honouring its timeout). With `abortable`, a shutdown request
    /// kills it early.
    pub fn run_task(&mut self, task: &Task, abortable: bool) -> TaskEnd {
        let spec = config::task_unit(task);
        if !config::valid_name(&spec.name) || spec.program().is_empty() {
            return TaskEnd::SpawnFailed("invalid name or empty argv".to_owned());
        }
        self.task_exit = None;
        let pid = match self.spawn(&spec, false) {
            Ok(pid) => pid,
            Err(e) => return TaskEnd::SpawnFailed(e.to_string()),
        };
        self.task_pid = Some(pid);
        let deadline = task.timeout_ms.map(|t| now_ms().saturating_add(t));
        loop {
            if let Some(status) = self.task_exit.take() {
                return match status {
                    Exit::Code(code) => TaskEnd::Exited(code),
                    Exit::Signal(sig) => TaskEnd::Signaled(sig),
                };
            }
            let timed_out = deadline.is_some_and(|d| now_ms() >= d);
            if timed_out || (abortable && self.has_request()) {
                self.kill_task(&spec.name, pid);
                return if timed_out {
                    TaskEnd::TimedOut
                } else {
                    TaskEnd::Aborted
                };
            }
            self.pump(deadline);
        }
    }

    fn kill_task(&mut self, name: &str, pid: i32) {
        if let Some(root) = &self.paths.cgroup_root {
            crate::setup::kill_unit_cgroup(root, name);
        }
        if let Some(p) = rustix::process::Pid::from_raw(pid) {
            let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
        }
        let until = now_ms() + 2_000;
        while self.task_pid.is_some() && now_ms() < until {
            self.pump(Some(until));
        }
        self.task_pid = None;
        self.task_exit = None;
    }
}

/// When a readiness line says the unit was ready: `READY <CLOCK_BOOTTIME ns>` gives the moment
/// itself (PID1 may read the line later, after a boot stage); any other line, or a moment not
/// in the past, counts as `now`.
fn ready_moment(line: &[u8], now: u64) -> u64 {
    std::str::from_utf8(line)
        .ok()
        .and_then(|l| l.trim().strip_prefix("READY "))
        .and_then(|t| t.trim().parse::<u64>().ok())
        .filter(|&t| t <= now)
        .unwrap_or(now)
}

/// Whether `spec` is the serial agent, whose only job is the virtio-serial transport. Whether
/// that transport is in use is asked when agents start, after the modules that let it be read
/// from the firmware config are loaded.
fn is_serial_agent(spec: &UnitSpec) -> bool {
    matches!(
        spec.launch,
        config::Launch::Agent {
            kind: minke_protocol::config::AgentKind::Serial,
            ..
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use minke_protocol::config::Restart;

    #[test]
    fn readiness_lines_may_carry_their_moment() {
        assert_eq!(ready_moment(b"READY 1234", 5000), 1234);
        assert_eq!(ready_moment(b"READY 1234\r", 5000), 1234);
        assert_eq!(ready_moment(b"READY", 5000), 5000);
        assert_eq!(ready_moment(b"ready now", 5000), 5000);
        // A moment in the future is not believed.
        assert_eq!(ready_moment(b"READY 9999", 5000), 5000);
        assert_eq!(ready_moment(b"READY -1", 5000), 5000);
    }

    fn sh(name: &str, script: &str, restart: Restart, after: &[&str]) -> UnitSpec {
        let svc = minke_protocol::config::Service {
            name: name.into(),
            command: minke_protocol::config::Command {
                argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
                ..Default::default()
            },
            restart,
            after: after.iter().map(|a| (*a).to_owned()).collect(),
            readiness: Readiness::Started,
            exit_on_stop: false,
            oom_score_adj: 0,
        };
        config::service_unit(&svc)
    }

    #[test]
    fn a_crash_loop_backs_off_while_other_units_keep_running() {
        let _guard = crate::sys::CHILDREN_LOCK
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let dir = std::env::temp_dir().join(format!("minke-init-sup-{}", std::process::id()));
        let paths = Paths {
            log_dir: dir.to_string_lossy().into_owned(),
            cgroup_root: None,
            console: false,
        };
        let units = vec![
            sh(
                "late",
                "echo late; exec sleep 30",
                Restart::Always,
                &["steady"],
            ),
            sh("crashy", "exit 3", Restart::OnFailure, &[]),
            sh("steady", "echo up; exec sleep 30", Restart::Always, &[]),
        ];
        let mut sup = Supervisor::new(units, None, Timeline::new(None), paths);
        sup.start();
        let first_pid = |sup: &Supervisor, i: usize| match sup.units[i].state {
            State::Running { pid, .. } => pid,
            _ => 0,
        };
        let steady_pid = first_pid(&sup, 2);
        assert!(steady_pid > 0, "steady runs at once");
        let t0 = now_ms();
        while now_ms() < t0 + 1_650 {
            sup.pump(Some(now_ms() + 20));
        }
        // 100 + 200 + 400 + 800 ms of backoff fit in 1.65 s: 5 starts (fewer on a slow
        // machine); without backoff it would be dozens.
        let crashy = &sup.units[1];
        assert!(
            (3..=5).contains(&crashy.starts),
            "crashy started {} times",
            crashy.starts
        );
        assert!(matches!(
            crashy.state,
            State::Backoff { .. } | State::Running { .. }
        ));
        assert_eq!(sup.units[2].starts, 1);
        assert_eq!(first_pid(&sup, 2), steady_pid, "steady was left alone");
        assert_eq!(sup.units[0].starts, 1, "late started once steady was ready");
        assert!(matches!(sup.units[0].state, State::Running { .. }));
        let log = std::fs::read_to_string(dir.join("steady")).unwrap_or_default();
        assert_eq!(log, "up\n");

        sup.stop_all();
        for i in [0, 2] {
            if let Some(pid) = rustix::process::Pid::from_raw(first_pid(&sup, i)) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
        let until = now_ms() + 5_000;
        while sup.has_children() && now_ms() < until {
            sup.pump(Some(now_ms() + 20));
        }
        assert!(sup.units.iter().all(|u| u.state == State::Stopped));
        std::fs::remove_dir_all(&dir).ok();
    }

    /// Regression: an agent that reports ready and exits 0 at once (binfmt, or the serial agent
    /// when it is started anyway) was never marked ready when its exit was reaped before its readiness pipe was
    /// read, so the `ready` marker never came and units after it never started.
    #[test]
    fn ready_then_exit_counts_as_ready_whatever_is_seen_first() {
        let _guard = crate::sys::CHILDREN_LOCK
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let dir = std::env::temp_dir().join(format!("minke-init-notify-{}", std::process::id()));
        let paths = Paths {
            log_dir: dir.to_string_lossy().into_owned(),
            cgroup_root: None,
            console: false,
        };
        let mut quick = sh(
            "quick",
            "echo READY >&\"$MINKE_NOTIFY_FD\"; exit 0",
            Restart::OnFailure,
            &[],
        );
        quick.readiness = Readiness::Notify;
        quick.agent = true;
        let later = sh("later", "exit 0", Restart::No, &["quick"]);
        let mut sup = Supervisor::new(vec![quick, later], None, Timeline::new(None), paths);
        sup.start();
        let State::Running { pid, .. } = sup.units[0].state else {
            panic!("quick did not start: {:?}", sup.units[0].state);
        };
        // Wait until it has written and exited (a zombie), then reap before reading any pipe.
        let deadline = now_ms() + 10_000;
        while !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z")
        {
            assert!(now_ms() < deadline, "quick never exited");
            std::thread::yield_now();
        }
        sup.reap();
        assert!(
            sup.units[0].ready,
            "the readiness line before the exit was lost"
        );
        assert_eq!(sup.units[0].state, State::Stopped);
        sup.tick(now_ms());
        assert_eq!(sup.units[1].starts, 1, "the unit after it starts");
        let until = now_ms() + 5_000;
        while sup.has_children() && now_ms() < until {
            sup.pump(Some(now_ms() + 20));
        }
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn agents_start_before_services_and_ready_waits_for_both() {
        let _guard = crate::sys::CHILDREN_LOCK
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let dir = std::env::temp_dir().join(format!("minke-init-agents-{}", std::process::id()));
        let paths = Paths {
            log_dir: dir.to_string_lossy().into_owned(),
            cgroup_root: None,
            console: false,
        };
        let mut agent = sh("agent", "exec sleep 30", Restart::Always, &[]);
        agent.agent = true;
        let units = vec![sh("svc", "exec sleep 30", Restart::Always, &[]), agent];
        let mut sup = Supervisor::new(units, None, Timeline::new(None), paths);
        let booted = std::rc::Rc::new(std::cell::Cell::new(0));
        let seen = std::rc::Rc::clone(&booted);
        sup.when_booted(Box::new(move || seen.set(seen.get() + 1)));
        sup.start_agents();
        assert!(
            matches!(sup.units[1].state, State::Running { .. }),
            "the agent starts early"
        );
        assert_eq!(
            sup.units[0].state,
            State::Waiting,
            "services wait for the boot stages"
        );
        assert!(sup.units[1].ready);
        assert!(
            !sup.ready_announced,
            "not ready before the boot stages are done"
        );
        assert_eq!(booted.get(), 0);
        sup.start();
        assert!(matches!(sup.units[0].state, State::Running { .. }));
        assert!(sup.ready_announced);
        sup.tick(now_ms());
        assert_eq!(booted.get(), 1, "run once, when booted");

        sup.stop_all();
        for u in &sup.units {
            if let State::Running { pid, .. } = u.state {
                if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                }
            }
        }
        let until = now_ms() + 5_000;
        while sup.has_children() && now_ms() < until {
            sup.pump(Some(now_ms() + 20));
        }
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn the_serial_agent_is_not_started_under_vsock_but_releases_its_dependents() {
        let _guard = crate::sys::CHILDREN_LOCK
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let dir = std::env::temp_dir().join(format!("minke-init-serial-{}", std::process::id()));
        let paths = Paths {
            log_dir: dir.to_string_lossy().into_owned(),
            cgroup_root: None,
            console: false,
        };
        let serial = config::agent_unit(
            &minke_protocol::config::Agent {
                kind: minke_protocol::config::AgentKind::Serial,
                port: None,
                after: Vec::new(),
            },
            "/nonexistent/minke-init",
        );
        let mut timesync = sh("timesync", "exit 0", Restart::No, &["serial"]);
        timesync.agent = true;
        let mut sup = Supervisor::new(vec![serial, timesync], None, Timeline::new(None), paths);
        sup.serial_transport = || false;
        sup.start_agents();
        assert_eq!(
            sup.units[0].state,
            State::Stopped,
            "not started, not restarted"
        );
        assert!(sup.units[0].ready, "it counts as ready");
        assert_eq!(sup.units[0].starts, 0);
        assert_eq!(sup.units[1].starts, 1, "its dependent starts");
        let until = now_ms() + 5_000;
        while sup.has_children() && now_ms() < until {
            sup.pump(Some(now_ms() + 20));
        }
        std::fs::remove_dir_all(&dir).ok();
    }
}
