//! The reliability drills: power cuts under a writer that fsyncs, agents killed inside the
//! guest, a memory hog, full filesystems, and boot–exec–poweroff cycles. Each drill drives
//! guests through [`Vm`] and returns what it measured — a lost record or a leaked process is a
//! figure in the report, not an error — so the boot tests (`tests/reliability.rs`) assert on
//! the reports and `cargo xtask bench reliability` prints them. Errors are for drills that
//! could not run (a boot that failed, an exec that broke); they carry the console log tail.
//!
//! The drills need an image with busybox (`sh`, `awk`, `dd`, `df`, `sync`, `truncate`, `kill`,
//! `dmesg`) and, for the power cut, a data disk labelled `var` mounted on `/var`.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::config::{DiskFormat, DiskSpec, VmConfig};
use crate::disk::{self, DiskError, Fsck};
use crate::qemu::files;
use crate::vm::{PowerOff, Vm, VmError};
use crate::{ExecRequest, Stdin};

/// How long a drill waits for anything the guest does (a boot, an agent's restart, the
/// writer's first record): generous, a loaded 2-core machine under TCG.
pub const GUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a guest gets to power off cleanly.
pub const POWEROFF_GRACE: Duration = Duration::from_secs(30);

/// The files a state directory keeps after its VM is gone: the logs of the last run.
pub const KEPT_AFTER_POWEROFF: [&str; 5] = [
    files::CONSOLE,
    files::QEMU_LOG,
    files::BACKEND_LOG,
    files::BOOT_JSON,
    crate::state::LOCK_FILE,
];

/// A drill could not run.
#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    /// A VM operation failed.
    #[error("{what}{console}")]
    Vm {
        /// What the drill was doing.
        what: String,
        /// The shim's error.
        source: Box<VmError>,
        /// The console log tail (with a heading), or empty when the error has it already.
        console: String,
    },
    /// The guest did something the drill cannot go on from.
    #[error("{what}\nconsole log tail:\n{console}")]
    Guest {
        /// What happened.
        what: String,
        /// The console log tail.
        console: String,
    },
    /// A disk image could not be checked.
    #[error(transparent)]
    Disk(#[from] DiskError),
}

fn vm_err(vm: &Vm, what: impl Into<String>) -> impl FnOnce(VmError) -> DrillError {
    let what = what.into();
    let console = vm.console_tail();
    move |source| {
        let console = if crate::error_chain(&source).contains("console log tail") {
            String::new()
        } else {
            format!("\nconsole log tail:\n{console}")
        };
        DrillError::Vm {
            what,
            source: Box::new(source),
            console,
        }
    }
}

fn guest_err(vm: &Vm, what: impl Into<String>) -> DrillError {
    DrillError::Guest {
        what: what.into(),
        console: vm.console_tail(),
    }
}

/// The seed named by the environment variable `var` (to replay a run), or a fresh one.
pub fn seed_from_env(var: &str) -> u64 {
    if let Some(s) = std::env::var(var).ok().and_then(|v| v.trim().parse().ok()) {
        return s;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    fastrand::Rng::with_seed(now ^ u64::from(std::process::id()) << 32).u64(..)
}

/// Runs `sh -c script` in the guest; its stdout if it exits 0.
fn sh(vm: &Vm, script: &str) -> Result<String, DrillError> {
    let o = vm
        .exec_output(&["sh", "-c", script])
        .map_err(vm_err(vm, format!("exec `{script}`")))?;
    if o.code != 0 {
        return Err(guest_err(
            vm,
            format!(
                "`{script}` exited with {}: {}",
                o.code,
                String::from_utf8_lossy(&o.stderr).trim()
            ),
        ));
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

// ---------------------------------------------------------------------------------------------
// Crash loop

/// What the crash-loop drill measured.
#[derive(Debug, Clone)]
pub struct CrashLoopReport {
    /// Median `exec true` round trip in the VM without crashes.
    pub rtt_quiet: Duration,
    /// Median `exec true` round trip in the VM whose service crash-loops.
    pub rtt_crashing: Duration,
    /// Round trips measured on each side.
    pub execs: usize,
    /// Restart delays PID1 announced for the crashing service during the measurement, in
    /// order (from the console: `NAME exited … restarting in N ms`).
    pub restart_delays_ms: Vec<u64>,
}

/// The restart delays PID1 announced for `service` in console text.
pub fn restart_delays(console: &str, service: &str) -> Vec<u64> {
    let exited = format!("{service} exited");
    console
        .lines()
        .filter(|l| l.contains(&exited))
        .filter_map(|l| {
            l.rsplit_once("restarting in ")?
                .1
                .trim()
                .trim_end_matches("ms")
                .trim()
                .parse()
                .ok()
        })
        .collect()
}

/// Measures `exec true` round trips for `window`, alternating between `quiet` and `crashing`
/// (two VMs of one image, where `service` crash-loops in the second only), so load drift
/// affects both alike.
pub fn crash_loop(
    quiet: &Vm,
    crashing: &Vm,
    service: &str,
    window: Duration,
) -> Result<CrashLoopReport, DrillError> {
    let console_at = std::fs::read_to_string(crashing.console_log())
        .map(|s| s.len())
        .unwrap_or(0);
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let end = Instant::now() + window;
    while Instant::now() < end {
        for (vm, rtts) in [(quiet, &mut a), (crashing, &mut b)] {
            let t = Instant::now();
            let o = vm
                .exec_output(&["true"])
                .map_err(vm_err(vm, "exec `true`"))?;
            rtts.push(t.elapsed());
            if o.code != 0 {
                return Err(guest_err(vm, format!("`true` exited with {}", o.code)));
            }
        }
    }
    let console = std::fs::read_to_string(crashing.console_log()).unwrap_or_default();
    let during = console.get(console_at..).unwrap_or_default();
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v.get(v.len() / 2).copied().unwrap_or_default()
    };
    Ok(CrashLoopReport {
        execs: a.len(),
        rtt_quiet: median(a),
        rtt_crashing: median(b),
        restart_delays_ms: restart_delays(during, service),
    })
}

// ---------------------------------------------------------------------------------------------
// Guest processes

/// PID1's identity and the agents' pids, as the guest's /proc shows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestProcs {
    /// PID1's start time (clock ticks after boot): the same value means the same PID1.
    pub pid1_start: u64,
    /// PID1's command line.
    pub pid1_cmdline: String,
    /// Agent kind (`control`, `timesync`…) → pid.
    pub agents: BTreeMap<String, u32>,
}

impl GuestProcs {
    /// The pid of agent `kind`, or 0.
    pub fn agent(&self, kind: &str) -> u32 {
        self.agents.get(kind).copied().unwrap_or(0)
    }
}

/// Reads PID1's start time and the agents' pids (processes running `/init agent KIND`).
pub fn guest_procs(vm: &Vm) -> Result<GuestProcs, DrillError> {
    let text = sh(
        vm,
        // Processes may end while the loop runs (its own `tr`s among them): skip them.
        "cut -d' ' -f22 /proc/1/stat; tr '\\0' ' ' < /proc/1/cmdline; echo; \
         for d in /proc/[0-9]*; do c=$(tr '\\0' ' ' 2>/dev/null < $d/cmdline) && \
         echo \"${d#/proc/} $c\"; done; true",
    )?;
    let mut lines = text.lines();
    let pid1_start = lines
        .next()
        .and_then(|l| l.trim().parse().ok())
        .ok_or_else(|| guest_err(vm, format!("cannot read PID1's start time from {text:?}")))?;
    let pid1_cmdline = lines.next().unwrap_or_default().trim().to_owned();
    let mut agents = BTreeMap::new();
    for l in lines {
        let Some((pid, cmd)) = l.split_once(' ') else {
            continue;
        };
        let mut words = cmd.split_whitespace();
        if let (Some("/init"), Some("agent"), Some(kind)) =
            (words.next(), words.next(), words.next())
        {
            if let Ok(pid) = pid.parse() {
                agents.insert(kind.to_owned(), pid);
            }
        }
    }
    Ok(GuestProcs {
        pid1_start,
        pid1_cmdline,
        agents,
    })
}

// ---------------------------------------------------------------------------------------------
// Power loss

/// Where the power-loss writer appends its records.
pub const RECORDS_PATH: &str = "/var/records";

/// Filler that makes each record 64 bytes or more, so a cut can land inside one.
const RECORD_PAD: &str = "................................................";

fn record_line(n: u64) -> String {
    format!("record {n} {RECORD_PAD}")
}

/// The writer: truncates the file to its complete records, then appends record after record,
/// fsyncing the file after each and only then printing its number.
fn writer_script(len: usize, next: u64) -> String {
    format!(
        "f={RECORDS_PATH}; truncate -s {len} $f || exit 101; n={next}; \
         while :; do echo \"record $n {RECORD_PAD}\" >> $f || exit 102; \
         sync $f || exit 103; echo $n; n=$((n + 1)); done"
    )
}

/// What a boot found in the records file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Complete, correct records at the start of the file (`record 0` … `record N-1`).
    pub complete: u64,
    /// Their length in bytes.
    pub complete_len: usize,
    /// Bytes after them without a final newline: a record cut short.
    pub partial: bool,
    /// A complete line that is not the record expected there.
    pub bad_line: Option<String>,
}

/// Reads the records file's bytes: complete records must be `record 0`, `record 1`, … in order;
/// an unterminated last line is a record cut short.
pub fn check_records(data: &[u8]) -> Found {
    let mut found = Found {
        complete: 0,
        complete_len: 0,
        partial: false,
        bad_line: None,
    };
    let mut rest = data;
    while !rest.is_empty() {
        let Some(end) = rest.iter().position(|&b| b == b'\n') else {
            found.partial = true;
            break;
        };
        let line = &rest[..end];
        if line != record_line(found.complete).as_bytes() {
            let shown: String = String::from_utf8_lossy(line).chars().take(80).collect();
            found.bad_line = Some(format!(
                "line {} is {shown:?}, expected {:?}",
                found.complete + 1,
                record_line(found.complete)
            ));
            break;
        }
        found.complete += 1;
        found.complete_len += end + 1;
        rest = &rest[end + 1..];
    }
    found
}

/// One power cut and what the next boot found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PowerCut {
    /// Records acknowledged to the host before this cut, over all cuts so far: the next boot
    /// must find at least these.
    pub acked_total: u64,
    /// Records acknowledged in the boot that was cut.
    pub acked: u64,
    /// Time from the writer's first acknowledgement to the cut.
    pub cut_after: Duration,
    /// Complete records the next boot found.
    pub found: u64,
    /// The next boot found a record cut short after the complete ones.
    pub partial_tail: bool,
}

/// What [`power_loss`] measured.
#[derive(Debug, Clone)]
pub struct PowerLossReport {
    /// The seed of the cut moments.
    pub seed: u64,
    /// Every cut, in order.
    pub cuts: Vec<PowerCut>,
    /// Acknowledged records not found, wrong lines: empty when every promise held.
    pub violations: Vec<String>,
    /// How the last boot ended.
    pub poweroff: PowerOff,
    /// `e2fsck -fn` on the image after that clean power-off.
    pub fsck: Fsck,
}

/// Sends each number the writer prints to the drill as it arrives.
struct AckSink {
    line: Vec<u8>,
    tx: mpsc::Sender<Ack>,
}

impl Write for AckSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        for &b in buf {
            if b != b'\n' {
                self.line.push(b);
                continue;
            }
            let s = String::from_utf8_lossy(&self.line).into_owned();
            let _ = self.tx.send(s.trim().parse().map_err(|_| s));
            self.line.clear();
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Power loss on a data disk, `cycles` times: a guest appends numbered records to
/// [`RECORDS_PATH`] on a fresh raw disk `dir/var.img`, fsyncing each before printing its
/// number; after a random delay (from `seed`) the host SIGKILLs QEMU and the vsock backend;
/// the next boot (on the same disk) checks that every record acknowledged before the cut is
/// there, then writes on. The last boot powers off cleanly and the image is checked with
/// `e2fsck -fn`. `template` gives the image and machine; each boot's state is `dir/bN`.
/// `progress` hears each cut once it was checked.
pub fn power_loss(
    template: &VmConfig,
    dir: &Path,
    cycles: usize,
    seed: u64,
    progress: &mut dyn FnMut(usize, &PowerCut),
) -> Result<PowerLossReport, DrillError> {
    // Seeded, so the cut moments replay from the printed seed.
    let mut rng = fastrand::Rng::with_seed(seed);
    let disk = DiskSpec {
        label: "var".into(),
        path: dir.join("var.img"),
        size: 32 << 20,
        format: DiskFormat::Raw,
    };
    let _ = std::fs::remove_file(&disk.path);
    let boot_no = |n: usize| {
        let mut cfg = template.clone();
        cfg.name = format!("power-{n}");
        cfg.state_dir = Some(dir.join(format!("b{n}")));
        cfg.disks = vec![disk.clone()];
        boot(cfg)
    };
    let mut cuts: Vec<PowerCut> = Vec::new();
    let mut violations = Vec::new();
    let (mut len, mut next) = (0usize, 0u64);
    let mut vm = boot_no(0)?;
    for n in 1..=cycles {
        let delay = Duration::from_millis(rng.u64(..1500));
        let (acks, cut_after) = write_until_cut(&mut vm, len, next, delay)?;
        let mut expect = next;
        for a in &acks {
            match a {
                Ok(k) if *k == expect => expect += 1,
                other => violations.push(format!(
                    "cut {n}: the writer printed {other:?}, expected {expect}"
                )),
            }
        }
        let mut cut = PowerCut {
            acked_total: expect,
            acked: expect - next,
            cut_after,
            found: 0,
            partial_tail: false,
        };
        vm = boot_no(n)?;
        let data = vm.read_file(RECORDS_PATH).map_err(vm_err(
            &vm,
            format!("after cut {n}: reading {RECORDS_PATH}"),
        ))?;
        let found = check_records(&data);
        cut.found = found.complete;
        cut.partial_tail = found.partial;
        if let Some(bad) = &found.bad_line {
            violations.push(format!("after cut {n}: {bad}"));
        }
        if found.complete < cut.acked_total {
            violations.push(format!(
                "after cut {n}: {} records acknowledged, {} found",
                cut.acked_total, found.complete
            ));
        }
        (len, next) = (found.complete_len, found.complete);
        progress(n, &cut);
        cuts.push(cut);
    }
    let poweroff = vm
        .poweroff(POWEROFF_GRACE)
        .map_err(vm_err(&vm, "power off"))?;
    drop(vm);
    let fsck = disk::check(&disk.path)?;
    Ok(PowerLossReport {
        seed,
        cuts,
        violations,
        poweroff,
        fsck,
    })
}

/// Boots `cfg` and waits for its agents.
fn boot(cfg: VmConfig) -> Result<Vm, DrillError> {
    let name = cfg.name.clone();
    let mut vm = Vm::boot(cfg).map_err(|source| DrillError::Vm {
        what: format!("{name}: boot"),
        source: Box::new(source),
        console: String::new(),
    })?;
    vm.wait_ready(GUEST_TIMEOUT)
        .map_err(vm_err(&vm, format!("{name}: waiting for the agents")))?;
    Ok(vm)
}

/// A line the writer printed: a record number, or the line itself when it is not one.
type Ack = Result<u64, String>;

/// Runs the writer, waits for its first acknowledgement, waits `delay` more, then cuts the
/// power. Returns every line the writer printed and the time from the first acknowledgement
/// to the cut.
fn write_until_cut(
    vm: &mut Vm,
    len: usize,
    next: u64,
    delay: Duration,
) -> Result<(Vec<Ack>, Duration), DrillError> {
    let (tx, rx) = mpsc::channel();
    let req = ExecRequest {
        argv: vec!["sh".into(), "-c".into(), writer_script(len, next)],
        ..Default::default()
    };
    let shared: &Vm = vm;
    let (first, ended, cut_after) = std::thread::scope(|s| {
        let writer = s.spawn(move || {
            let mut sink = AckSink {
                line: Vec::new(),
                tx,
            };
            let mut err = Vec::new();
            let r = shared.exec(req, Stdin::Null, &mut sink, &mut err);
            (r, String::from_utf8_lossy(&err).into_owned())
        });
        let first = rx.recv_timeout(GUEST_TIMEOUT);
        let mut cut_after = Duration::ZERO;
        if first.is_ok() {
            let t = Instant::now();
            std::thread::sleep(delay);
            cut_after = t.elapsed();
        }
        // The power cut: QEMU and the vsock backend die at once (the exec then fails).
        shared.power_cut();
        let ended = writer.join().unwrap_or_else(|_| {
            (
                Err(VmError::Io {
                    what: "the writer thread panicked".into(),
                    source: io::Error::other("panic"),
                }),
                String::new(),
            )
        });
        (first, ended, cut_after)
    });
    let console = vm.console_tail();
    vm.kill();
    let first = match first {
        Ok(a) => a,
        Err(_) => {
            let (r, err) = ended;
            return Err(DrillError::Guest {
                what: format!(
                    "the writer acknowledged no record within {GUEST_TIMEOUT:?} (exec: {r:?}, stderr: {})",
                    err.trim()
                ),
                console,
            });
        }
    };
    if let (Ok(code), err) = &ended {
        return Err(DrillError::Guest {
            what: format!(
                "the writer exited with {code} before the power cut: {}",
                err.trim()
            ),
            console,
        });
    }
    let mut acks = vec![first];
    acks.extend(rx.try_iter());
    Ok((acks, cut_after))
}

// ---------------------------------------------------------------------------------------------
// Agents killed

/// One agent killed and brought back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRestart {
    /// Agent kind.
    pub kind: String,
    /// Its pid before the kill.
    pub old_pid: u32,
    /// Its pid after.
    pub new_pid: u32,
    /// From the kill to the agent serving again (the host sees its connection or handshake).
    pub back_after: Duration,
}

/// What [`kill_agents`] measured.
#[derive(Debug, Clone)]
pub struct AgentsReport {
    /// PID1 and the agents before the kills.
    pub before: GuestProcs,
    /// After both agents came back.
    pub after: GuestProcs,
    /// The time sync agent, then the control agent.
    pub restarts: Vec<AgentRestart>,
    /// QEMU still runs the same guest (no reboot: `-no-reboot` would have ended it).
    pub same_qemu: bool,
    /// What an exec printed afterwards (`alive`).
    pub exec_after: String,
}

/// Kills the time sync agent, then the control agent (with SIGKILL, from inside the guest) and
/// waits for PID1 to bring each back: the time sync agent is back when the host's time server
/// sees a new connection, the control agent when [`Vm::wait_ready`] completes a handshake.
/// Needs the booting handle of a VM with both agents.
pub fn kill_agents(vm: &mut Vm) -> Result<AgentsReport, DrillError> {
    let before = guest_procs(vm)?;
    let mut restarts = Vec::new();

    let connections = |vm: &Vm| vm.timesync_stats().map(|s| s.connections).unwrap_or(0);
    let deadline = Instant::now() + GUEST_TIMEOUT;
    while connections(vm) == 0 {
        if Instant::now() > deadline {
            return Err(guest_err(
                vm,
                "the time sync agent never connected to the host",
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let old = before.agent("timesync");
    if old == 0 || before.agent("control") == 0 {
        return Err(guest_err(
            vm,
            format!(
                "the guest runs no time sync or control agent: {:?}",
                before.agents
            ),
        ));
    }
    let c0 = connections(vm);
    let t = Instant::now();
    sh(vm, &format!("kill -9 {old}"))?;
    while connections(vm) == c0 {
        if t.elapsed() > GUEST_TIMEOUT {
            return Err(guest_err(
                vm,
                format!(
                    "the time sync agent did not reconnect within {GUEST_TIMEOUT:?} of SIGKILL"
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let back_after = t.elapsed();
    restarts.push(AgentRestart {
        kind: "timesync".into(),
        old_pid: old,
        new_pid: guest_procs(vm)?.agent("timesync"),
        back_after,
    });

    // The exec that kills the control agent dies with it (PID1 also kills the rest of the
    // agent's cgroup): its connection breaks, or at best it reports `kill`'s success.
    let old = before.agent("control");
    let t = Instant::now();
    match vm.exec_output(&["kill", "-9", &old.to_string()]) {
        Err(_) => {}
        Ok(o) if o.code == 0 || o.code == 128 + 9 => {}
        Ok(o) => {
            return Err(guest_err(
                vm,
                format!(
                    "kill -9 {old} exited with {}: {}",
                    o.code,
                    String::from_utf8_lossy(&o.stderr).trim()
                ),
            ))
        }
    }
    vm.wait_ready(GUEST_TIMEOUT)
        .map_err(vm_err(vm, "waiting for the restarted control agent"))?;
    let back_after = t.elapsed();
    let after = guest_procs(vm)?;
    restarts.push(AgentRestart {
        kind: "control".into(),
        old_pid: old,
        new_pid: after.agent("control"),
        back_after,
    });
    let same_qemu = vm.is_running();
    let exec_after = sh(vm, "echo alive")?;
    Ok(AgentsReport {
        before,
        after,
        restarts,
        same_qemu,
        exec_after,
    })
}

// ---------------------------------------------------------------------------------------------
// Memory hog

/// What [`oom`] measured.
#[derive(Debug, Clone)]
pub struct OomReport {
    /// PID1 and the agents before the hog.
    pub before: GuestProcs,
    /// After it.
    pub after: GuestProcs,
    /// oom_score_adj of each agent.
    pub agents_oom_score_adj: BTreeMap<String, i32>,
    /// oom_score_adj of a process started by exec (the agents' protection must not leak).
    pub exec_oom_score_adj: i32,
    /// The hog's pid.
    pub hog_pid: u32,
    /// The hog's exit code (137: killed by SIGKILL).
    pub hog_code: i32,
    /// How long the hog lived.
    pub hog_ran: Duration,
    /// The kernel's `Killed process` line, if any.
    pub kernel_line: Option<String>,
    /// What an exec printed afterwards (`alive`).
    pub exec_after: String,
}

/// The hog: awk keeps 1 MiB strings in an array until the OOM killer ends it. Small steps, each
/// touched, so the kernel's OOM killer acts rather than one large allocation failing.
const HOG: &str =
    "BEGIN { s = \"x\"; for (k = 0; k < 20; k++) s = s s; for (i = 0; ; i++) a[i] = s i }";

/// Runs a memory hog through exec and checks who the OOM killer picked.
pub fn oom(vm: &Vm) -> Result<OomReport, DrillError> {
    let before = guest_procs(vm)?;
    let mut script = String::from("cat /proc/self/oom_score_adj");
    for (kind, pid) in &before.agents {
        script.push_str(&format!("; echo {kind} $(cat /proc/{pid}/oom_score_adj)"));
    }
    let text = sh(vm, &script)?;
    let mut lines = text.lines();
    let exec_oom_score_adj = lines
        .next()
        .and_then(|l| l.trim().parse().ok())
        .ok_or_else(|| guest_err(vm, format!("cannot read oom_score_adj from {text:?}")))?;
    let agents_oom_score_adj = lines
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_owned(), v.trim().parse().ok()?))
        })
        .collect();
    let t = Instant::now();
    // The shell prints its pid, then becomes the hog (applets run without links from sh).
    let o = vm
        .exec_output(&["sh", "-c", &format!("echo $$; exec awk '{HOG}'")])
        .map_err(vm_err(vm, "exec of the memory hog"))?;
    let hog_ran = t.elapsed();
    let hog_pid = String::from_utf8_lossy(&o.stdout)
        .trim()
        .parse()
        .map_err(|_| guest_err(vm, format!("the hog printed {:?}", o.stdout)))?;
    let kernel_line = sh(vm, "dmesg | grep 'Killed process' | tail -n 1")?
        .lines()
        .next()
        .map(str::to_owned);
    let after = guest_procs(vm)?;
    let exec_after = sh(vm, "echo alive")?;
    Ok(OomReport {
        before,
        after,
        agents_oom_score_adj,
        exec_oom_score_adj,
        hog_pid,
        hog_code: o.code,
        hog_ran,
        kernel_line,
        exec_after,
    })
}

// ---------------------------------------------------------------------------------------------
// Full filesystems

/// What [`enospc`] measured on one mount.
#[derive(Debug, Clone)]
pub struct EnospcReport {
    /// The filesystem filled.
    pub mount: String,
    /// Its size (`df`, KiB).
    pub size_kib: u64,
    /// How much the filler wrote before the error (KiB).
    pub filled_kib: u64,
    /// The filler's (`dd`) exit code and last stderr line.
    pub fill: (i32, String),
    /// A 64 KiB write (`dd`) to a new file on the full filesystem: exit code and error line.
    pub write_full: (i32, String),
    /// The agent's file upload to the full filesystem: `Err` with its message.
    pub put_full: Result<(), String>,
    /// Temporary upload files left on the full filesystem.
    pub temp_left: Vec<String>,
    /// While full: an exec, an upload elsewhere, a download from the full filesystem worked.
    pub agents_work: Result<(), String>,
    /// After removing the filler: an upload to the filesystem and its download back worked.
    pub recovered: Result<(), String>,
}

/// Fills `mount` with `dd` until it fails, then checks that writes fail with ENOSPC, that the
/// agents keep serving, and that removing the filler makes room again. `elsewhere` is a
/// writable directory on another filesystem.
pub fn enospc(vm: &Vm, mount: &str, elsewhere: &str) -> Result<EnospcReport, DrillError> {
    let kept = format!("{mount}/kept");
    vm.put_bytes(b"kept\n", &kept, 0o644)
        .map_err(vm_err(vm, format!("upload to {kept}")))?;
    let fill = vm
        .exec_output(&["dd", "if=/dev/zero", &format!("of={mount}/fill"), "bs=1M"])
        .map_err(vm_err(vm, format!("exec of dd into {mount}")))?;
    let fill = (
        fill.code,
        String::from_utf8_lossy(&fill.stderr)
            .lines()
            .find(|l| l.contains("dd:"))
            .unwrap_or_default()
            .to_owned(),
    );
    // Space the filesystem held back while dd ran (ext4's delayed allocation reserves more
    // than it finally uses) comes free once the data is written: take it too.
    sh(
        vm,
        &format!("sync; dd if=/dev/zero of={mount}/fill2 bs=4k 2>/dev/null; sync; true"),
    )?;
    let sizes = sh(
        vm,
        &format!(
            "df -k {mount} | tail -n 1; du -ck {mount}/fill {mount}/fill2 | tail -n 1 | cut -f1"
        ),
    )?;
    let mut nums = sizes
        .split_whitespace()
        .filter_map(|w| w.parse::<u64>().ok());
    let size_kib = nums.next().unwrap_or(0);
    let filled_kib = sizes
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0);
    let w = vm
        .exec_output(&[
            "dd",
            "if=/dev/zero",
            &format!("of={mount}/more"),
            "bs=64k",
            "count=1",
        ])
        .map_err(vm_err(vm, "exec of a write"))?;
    let write_full = (
        w.code,
        String::from_utf8_lossy(&w.stderr)
            .lines()
            .find(|l| l.contains("dd:"))
            .unwrap_or_default()
            .to_owned(),
    );
    let put_full = vm
        .put_bytes(&[7u8; 64 << 10], &format!("{mount}/upload"), 0o644)
        .map_err(|e| crate::error_chain(&e));
    let temp_left: Vec<String> = sh(vm, &format!("ls -A {mount}"))?
        .lines()
        .filter(|l| l.contains(".minke-"))
        .map(str::to_owned)
        .collect();
    let agents_work = (|| -> Result<(), String> {
        let o = vm
            .exec_output(&["echo", "alive"])
            .map_err(|e| crate::error_chain(&e))?;
        if o.stdout != b"alive\n" {
            return Err(format!(
                "exec printed {:?}",
                String::from_utf8_lossy(&o.stdout)
            ));
        }
        let p = format!("{elsewhere}/enospc-check");
        vm.put_bytes(b"elsewhere\n", &p, 0o644)
            .map_err(|e| crate::error_chain(&e))?;
        if vm.read_file(&p).map_err(|e| crate::error_chain(&e))? != b"elsewhere\n" {
            return Err(format!("{p} read back differently"));
        }
        if vm.read_file(&kept).map_err(|e| crate::error_chain(&e))? != b"kept\n" {
            return Err(format!("{kept} read back differently"));
        }
        Ok(())
    })();
    sh(
        vm,
        &format!("rm -f {mount}/fill {mount}/fill2 {mount}/more"),
    )?;
    let recovered = (|| -> Result<(), String> {
        let p = format!("{mount}/upload");
        let body = vec![7u8; 64 << 10];
        vm.put_bytes(&body, &p, 0o644)
            .map_err(|e| crate::error_chain(&e))?;
        if vm.read_file(&p).map_err(|e| crate::error_chain(&e))? != body {
            return Err(format!("{p} read back differently"));
        }
        Ok(())
    })();
    sh(
        vm,
        &format!("rm -f {mount}/upload {kept} {elsewhere}/enospc-check"),
    )?;
    Ok(EnospcReport {
        mount: mount.to_owned(),
        size_kib,
        filled_kib,
        fill,
        write_full,
        put_full,
        temp_left,
        agents_work,
        recovered,
    })
}

// ---------------------------------------------------------------------------------------------
// Boot–exec–poweroff cycles

/// What [`boot_cycles`] measured.
#[derive(Debug, Clone)]
pub struct CyclesReport {
    /// Wall time of each cycle (boot, ready, one exec, power off).
    pub walls: Vec<Duration>,
    /// Cycles whose guest did not power off within the grace period and was killed.
    pub not_clean: Vec<usize>,
    /// Files left in state directories besides [`KEPT_AFTER_POWEROFF`] (`cN/NAME`).
    pub leftovers: Vec<String>,
    /// VMs still listed as running under `dir`.
    pub still_listed: usize,
    /// Host processes alive afterwards whose command line mentions `dir` (`PID CMDLINE`).
    pub processes: Vec<String>,
    /// Children of this process left as zombies.
    pub zombies: Vec<u32>,
    /// This process's open descriptors after the first cycle and after the last.
    pub fds: (usize, usize),
    /// This process's threads after the first cycle and after the last.
    pub threads: (usize, usize),
}

fn count_dir(p: &str) -> usize {
    std::fs::read_dir(p).map(|d| d.count()).unwrap_or(0)
}

/// `n` cycles of boot, wait for the agents, one exec, clean power off, each in a fresh state
/// directory `dir/cN`; then looks for what they left: files in the state directories, host
/// processes, zombies, descriptors and threads of this process. The first cycle sets the
/// baseline of descriptors and threads (it also starts what lives as long as the process).
pub fn boot_cycles(
    template: &VmConfig,
    dir: &Path,
    n: usize,
    progress: &mut dyn FnMut(usize, Duration),
) -> Result<CyclesReport, DrillError> {
    let mut walls = Vec::with_capacity(n);
    let mut not_clean = Vec::new();
    let mut leftovers = Vec::new();
    let mut base = (0, 0);
    for i in 0..n {
        let t = Instant::now();
        let mut cfg = template.clone();
        cfg.name = format!("cycle-{i}");
        let state = dir.join(format!("c{i}"));
        cfg.state_dir = Some(state.clone());
        let mut vm = boot(cfg)?;
        let o = sh(&vm, &format!("echo cycle {i}"))?;
        if o != format!("cycle {i}\n") {
            return Err(guest_err(&vm, format!("echo printed {o:?}")));
        }
        match vm
            .poweroff(POWEROFF_GRACE)
            .map_err(vm_err(&vm, "power off"))?
        {
            PowerOff::Clean => {}
            PowerOff::Killed => not_clean.push(i),
        }
        drop(vm);
        let wall = t.elapsed();
        walls.push(wall);
        progress(i, wall);
        leftovers.extend(leftover_files(&state, &format!("c{i}")));
        if i == 0 {
            base = (count_dir("/proc/self/fd"), count_dir("/proc/self/task"));
        }
    }
    Ok(CyclesReport {
        walls,
        not_clean,
        leftovers,
        still_listed: crate::state::list_vms_in(dir).map(|l| l.len()).unwrap_or(0),
        processes: processes_mentioning(dir),
        zombies: zombie_children(),
        fds: (base.0, count_dir("/proc/self/fd")),
        threads: (base.1, count_dir("/proc/self/task")),
    })
}

fn leftover_files(state: &Path, label: &str) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(state) else {
        return Vec::new();
    };
    let mut out: Vec<String> = rd
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !KEPT_AFTER_POWEROFF.contains(&n.as_str()))
        .map(|n| format!("{label}/{n}"))
        .collect();
    out.sort();
    out
}

/// Live host processes whose command line mentions `dir` (`PID CMDLINE`).
pub fn processes_mentioning(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    let mut out = Vec::new();
    for (pid, stat, cmdline) in host_processes() {
        let zombie = stat_field(&stat, 3).is_some_and(|s| s == "Z");
        if !zombie && cmdline.contains(&needle) {
            out.push(format!("{pid} {cmdline}"));
        }
    }
    out
}

/// Children of this process that exited and were never reaped.
pub fn zombie_children() -> Vec<u32> {
    let me = std::process::id().to_string();
    host_processes()
        .into_iter()
        .filter(|(_, stat, _)| {
            stat_field(stat, 3) == Some("Z") && stat_field(stat, 4) == Some(me.as_str())
        })
        .map(|(pid, _, _)| pid)
        .collect()
}

/// Field `n` (1-based, as in proc(5)) of a `/proc/PID/stat` line; the command name may hold
/// spaces, so fields from 3 on are counted after its closing parenthesis.
fn stat_field(stat: &str, n: usize) -> Option<&str> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(n.checked_sub(3)?)
}

fn host_processes() -> Vec<(u32, String, String)> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let p = PathBuf::from("/proc").join(pid.to_string());
            let stat = std::fs::read_to_string(p.join("stat")).ok()?;
            let cmdline = std::fs::read(p.join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            Some((pid, stat, cmdline.trim().to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(n: u64) -> String {
        (0..n).map(|i| record_line(i) + "\n").collect()
    }

    #[test]
    fn complete_records_are_counted() {
        let f = check_records(records(3).as_bytes());
        assert_eq!(
            f,
            Found {
                complete: 3,
                complete_len: records(3).len(),
                partial: false,
                bad_line: None
            }
        );
        assert_eq!(check_records(b"").complete, 0);
    }

    #[test]
    fn a_record_cut_short_is_a_partial_tail() {
        let mut d = records(2);
        d.push_str("record 2 ....");
        let f = check_records(d.as_bytes());
        assert_eq!((f.complete, f.partial, f.bad_line), (2, true, None));
        assert_eq!(f.complete_len, records(2).len());
    }

    #[test]
    fn a_wrong_line_stops_the_count() {
        let mut d = records(2);
        d.push_str("record 5 x\n");
        d.push_str(&(record_line(3) + "\n"));
        let f = check_records(d.as_bytes());
        assert_eq!(f.complete, 2);
        assert!(f.bad_line.unwrap().contains("line 3"));
        let f = check_records(b"\0\0\0\n");
        assert_eq!(f.complete, 0);
        assert!(f.bad_line.is_some());
    }

    #[test]
    fn the_writer_acknowledges_only_after_fsync() {
        let s = writer_script(128, 2);
        let (append, sync, ack) = (
            s.find(">> $f").unwrap(),
            s.find("sync $f").unwrap(),
            s.find("echo $n").unwrap(),
        );
        assert!(append < sync && sync < ack, "{s}");
        assert!(
            s.contains("truncate -s 128 $f") && s.contains("n=2;"),
            "{s}"
        );
    }

    #[test]
    fn acks_are_parsed_line_by_line() {
        let (tx, rx) = mpsc::channel();
        let mut sink = AckSink {
            line: Vec::new(),
            tx,
        };
        sink.write_all(b"0\n1").unwrap();
        sink.write_all(b"2\nx\n").unwrap();
        let got: Vec<_> = rx.try_iter().collect();
        assert_eq!(got, [Ok(0), Ok(12), Err("x".to_string())]);
    }

    #[test]
    fn restart_delays_come_from_the_console_lines_of_that_service() {
        let console =
            "[    2.1] minke: crasher exited with code 1 after 612 ms; restarting in 100 ms\n\
                       ticker: tick\n\
                       minke: other exited with code 1 after 3 ms; restarting in 100 ms\n\
                       minke: crasher exited with code 1 after 601 ms; restarting in 200 ms\n\
                       minke: crasher exited with code 1 after 1 ms; restarting in garbage\n";
        assert_eq!(restart_delays(console, "crasher"), vec![100, 200]);
    }

    #[test]
    fn stat_fields_count_after_the_command_name() {
        let stat = "42 (a (b) c) Z 17 42 42 0";
        assert_eq!(stat_field(stat, 3), Some("Z"));
        assert_eq!(stat_field(stat, 4), Some("17"));
        assert_eq!(stat_field(stat, 2), None);
    }

    #[test]
    fn state_dir_leftovers_ignore_the_logs() {
        let d = tempfile::tempdir().unwrap();
        for f in KEPT_AFTER_POWEROFF
            .iter()
            .chain(&["run.json", "vm.vsock_1025"])
        {
            std::fs::write(d.path().join(f), "").unwrap();
        }
        assert_eq!(
            leftover_files(d.path(), "c0"),
            ["c0/run.json", "c0/vm.vsock_1025"]
        );
    }
}

/// What [`exec_while_booting`] saw.
#[derive(Debug, Clone, Default)]
pub struct BootingExecReport {
    /// Attempts made, from the launch until the last success.
    pub attempts: u32,
    /// Attempts that printed `X` and exited 0.
    pub successes: u32,
    /// Attempts that failed with an error (the guest was not up yet, or not ready).
    pub errors: u32,
    /// Attempts that reported an exit status without the guest's answer: `echo X` exiting
    /// with another code, or 0 without printing `X` (each described). Must stay empty.
    pub false_answers: Vec<String>,
    /// Launch to the first success.
    pub first_success: Option<Duration>,
}

/// Boots `cfg` on a thread and, from the moment of launch, runs `echo X` through attached
/// handles in two tight loops at once — one attaching with [`Vm::attach_dir_now`] and
/// running at once, without waiting for readiness (the raw window in which the guest comes
/// up), one through [`Vm::attach_dir_within`], which waits — until `successes` of them
/// printed X. Each attempt must either print X with 0 or fail with an error.
pub fn exec_while_booting(cfg: VmConfig, successes: u32) -> Result<BootingExecReport, DrillError> {
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::SeqCst};
    use std::sync::Mutex;
    let Some(state) = cfg.state_dir.clone() else {
        return Err(DrillError::Guest {
            what: "exec_while_booting needs a VmConfig with a state_dir".into(),
            console: String::new(),
        });
    };
    let start = Instant::now();
    let deadline = start + GUEST_TIMEOUT * 2;
    let (attempts, ok, errors) = (AtomicU32::new(0), AtomicU32::new(0), AtomicU32::new(0));
    let false_answers = Mutex::new(Vec::new());
    let first = Mutex::new(None);
    let stop = AtomicBool::new(false);
    let attempt = |wait: bool| {
        let n = attempts.fetch_add(1, SeqCst) + 1;
        let vm = if wait {
            Vm::attach_dir_within(&state, GUEST_TIMEOUT)
        } else {
            Vm::attach_dir_now(&state, Duration::from_millis(1))
        };
        match vm.and_then(|vm| vm.exec_output(&["echo", "X"])) {
            Ok(o) if o.code == 0 && o.stdout == b"X\n" => {
                if ok.fetch_add(1, SeqCst) + 1 >= successes {
                    stop.store(true, SeqCst);
                }
                first
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_or_insert_with(|| start.elapsed());
            }
            Ok(o) => false_answers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(format!(
                    "attempt {n}: exit {} with stdout {:?} and stderr {:?}",
                    o.code,
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                )),
            Err(_) => {
                errors.fetch_add(1, SeqCst);
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    };
    let booted = std::thread::scope(|s| {
        let booter = s.spawn(|| {
            let vm = boot(cfg);
            if vm.is_err() {
                stop.store(true, SeqCst);
            }
            vm
        });
        let looper = |wait: bool| {
            let attempt = &attempt;
            let stop = &stop;
            move || {
                while !stop.load(SeqCst) && Instant::now() < deadline {
                    attempt(wait);
                }
            }
        };
        let raw = s.spawn(looper(false));
        looper(true)();
        let _ = raw.join();
        booter.join()
    });
    let vm = booted.map_err(|_| DrillError::Guest {
        what: "the boot thread panicked".into(),
        console: String::new(),
    })??;
    let r = BootingExecReport {
        attempts: attempts.into_inner(),
        successes: ok.into_inner(),
        errors: errors.into_inner(),
        false_answers: false_answers
            .into_inner()
            .unwrap_or_else(|p| p.into_inner()),
        first_success: first.into_inner().unwrap_or_else(|p| p.into_inner()),
    };
    if r.successes < successes {
        return Err(guest_err(
            &vm,
            format!(
                "only {} of {successes} execs answered within {:?} ({} attempts)",
                r.successes,
                GUEST_TIMEOUT * 2,
                r.attempts
            ),
        ));
    }
    Ok(r)
}
