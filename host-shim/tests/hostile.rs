//! A hostile guest against the shim, in a test binary of its own: it measures the process's
//! memory, which no other test may share while it does.

mod common;
use common::*;

/// A guest process that sends garbage, an oversize frame and a connection flood to the
/// host's time port is cut off: the shim records the misbehaviour, its memory stays bounded,
/// and this VM and the others keep working.
#[test]
fn hostile_guest_cannot_hurt_the_shim() {
    require_boot!();
    let dir = tempfile::tempdir().unwrap();
    // Another VM of this shim, which must not notice.
    let state = dir.path().join("bystander");
    let bystander = std::thread::spawn(move || boot(config("bystander", &state)));
    let vm = boot(config("hostile", &dir.path().join("state")));
    let rss_kb = || {
        std::fs::read_to_string("/proc/self/status")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let bystander = bystander.join().expect("the bystander VM booted");
    let before = rss_kb();
    let errors_before = vm.timesync_stats().map_or(0, |s| s.errors.len());
    // The shim closes each connection at the first bad byte; whether the guest-side writer
    // notices is up to the vsock backend, so each writer is bounded by `timeout`.
    let port = minke_protocol::TIMESYNC_PORT;
    for script in [
        // Garbage.
        format!("head -c 65536 /dev/urandom | timeout 5 /init vsock 2 {port} >/dev/null"),
        // A frame header announcing 2 GiB, then 64 MiB of it.
        format!("{{ printf '\\377\\377\\377\\177'; head -c 67108864 /dev/zero; }} | timeout 5 /init vsock 2 {port} >/dev/null"),
        // 32 connections at once, each streaming zeros.
        format!("for i in $(seq 32); do timeout 5 /init vsock 2 {port} </dev/zero >/dev/null 2>&1 & done; wait"),
    ] {
        let script = script.as_str();
        let o = vm
            .exec_output(&["sh", "-c", script])
            .unwrap_or_else(|e| {
                panic!(
                    "{script}: {e}\nconsole:\n{}",
                    vm.console_tail(),
                    e = minke_shim::error_chain(&e)
                )
            });
        eprintln!("{script}: exit {}", o.code);
    }
    let stats = vm
        .timesync_stats()
        .expect("the vhost-user transport has a time server");
    assert!(
        stats.errors.len() > errors_before,
        "the misbehaviour is recorded: {stats:?}"
    );
    let grown = rss_kb().saturating_sub(before);
    assert!(grown < 48 << 10, "the shim's RSS grew by {grown} kB");
    assert_eq!(out(&vm, &["echo", "still here"]), "still here\n");
    assert_eq!(out(&bystander, &["echo", "me too"]), "me too\n");
}
