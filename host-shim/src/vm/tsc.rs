//! The rate of the host's time-stamp counter, which a TCG guest's TSC runs at: QEMU answers a
//! guest's RDTSC with the host's counter. A guest on `microvm` has no HPET or ACPI PM timer to
//! calibrate its TSC against, and calibrating against the emulated PIT fails on a loaded host
//! (the kernel then marks the TSC unstable and can hang), so it is told the rate instead
//! (`tsc_early_khz=`). Measured once per host boot and remembered in the cache.

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How long the counter is watched: its reading error (a few microseconds) then costs less
/// than 1e-4 of the rate, which the guest's time sync corrects like any clock drift.
const WINDOW: Duration = Duration::from_millis(50);

/// The host TSC's rate in kHz, or `None` on a host without one (or whose counter does not tick
/// at a plausible rate).
pub fn host_tsc_khz() -> Option<u64> {
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let boot_id = boot_id.trim();
    let path = cache_path();
    if let Some(khz) = path
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|s| parse(&s, boot_id))
    {
        return Some(khz);
    }
    let khz = measure()?;
    if let Some(p) = path {
        if let Some(d) = p.parent() {
            let _ = std::fs::create_dir_all(d);
        }
        let _ = crate::state::write_private(&p, format!("{boot_id} {khz}\n").as_bytes());
    }
    Some(khz)
}

/// `BOOT_ID KHZ`: the rate, if it was measured during this boot of the host.
fn parse(s: &str, boot_id: &str) -> Option<u64> {
    let (id, khz) = s.trim().split_once(' ')?;
    let khz: u64 = khz.parse().ok()?;
    (id == boot_id && plausible(khz)).then_some(khz)
}

fn plausible(khz: u64) -> bool {
    (100_000..=10_000_000).contains(&khz)
}

fn cache_path() -> Option<PathBuf> {
    Some(crate::state::host_cache_dir()?.join("host-tsc-khz"))
}

#[cfg(target_arch = "x86_64")]
fn measure() -> Option<u64> {
    // A counter reading paired with the clock, kept only when both were taken within a few
    // microseconds of each other (no preemption between them).
    let pair = || {
        (0..100).find_map(|_| {
            let before = Instant::now();
            let tsc = crate::sys::rdtsc();
            let after = Instant::now();
            let gap = after - before;
            (gap < Duration::from_micros(5)).then(|| (tsc, before + gap / 2))
        })
    };
    let (t0, i0) = pair()?;
    std::thread::sleep(WINDOW);
    let (t1, i1) = pair()?;
    let secs = (i1 - i0).as_secs_f64();
    let khz = (t1.checked_sub(t0)? as f64 / secs / 1000.0).round() as u64;
    plausible(khz).then_some(khz)
}

#[cfg(not(target_arch = "x86_64"))]
fn measure() -> Option<u64> {
    // Another host's counter is not what an emulated x86_64 guest's RDTSC returns at a known
    // rate.
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remembered_rate_counts_only_for_the_same_host_boot() {
        assert_eq!(parse("abc 2445436\n", "abc"), Some(2445436));
        assert_eq!(parse("abc 2445436\n", "def"), None);
        assert_eq!(parse("abc 12\n", "abc"), None);
        assert_eq!(parse("garbage", "abc"), None);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_measured_rate_is_plausible() {
        let khz = measure().expect("an x86_64 host has a TSC");
        assert!(plausible(khz), "{khz}");
    }
}
