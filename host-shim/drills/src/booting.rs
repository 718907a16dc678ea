//! Execs through attached handles while the guest boots: each either answers or fails, never
//! a false exit status.

use std::time::{Duration, Instant};

use minke_shim::{Vm, VmConfig};

use crate::{boot, guest_err, DrillError, GUEST_TIMEOUT};

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
