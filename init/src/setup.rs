//! Early system set-up of PID1: pseudo filesystems, console, hostname, loopback, sysctls,
//! rlimits and the cgroup tree the units live in.

use std::os::fd::{AsFd, AsRawFd, IntoRawFd};

use rustix::fs::{Mode, OFlags};
use rustix::mount::MountFlags;

use crate::console::log;
use minke_protocol::config::ImageConfig;

/// Root of the units' cgroups.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup/minke";

struct Mnt {
    src: &'static str,
    target: &'static str,
    fstype: &'static str,
    flags: MountFlags,
    data: &'static std::ffi::CStr,
}

const NOSUID: MountFlags = MountFlags::NOSUID;
const NODEV: MountFlags = MountFlags::NODEV;
const NOEXEC: MountFlags = MountFlags::NOEXEC;

fn early_mounts() -> [Mnt; 8] {
    [
        Mnt {
            src: "devtmpfs",
            target: "/dev",
            fstype: "devtmpfs",
            flags: NOSUID,
            data: c"mode=0755",
        },
        Mnt {
            src: "proc",
            target: "/proc",
            fstype: "proc",
            flags: NOSUID.union(NODEV).union(NOEXEC),
            data: c"",
        },
        Mnt {
            src: "sysfs",
            target: "/sys",
            fstype: "sysfs",
            flags: NOSUID.union(NODEV).union(NOEXEC),
            data: c"",
        },
        Mnt {
            src: "devpts",
            target: "/dev/pts",
            fstype: "devpts",
            flags: NOSUID.union(NOEXEC),
            data: c"gid=5,mode=0620,ptmxmode=0666",
        },
        Mnt {
            src: "shm",
            target: "/dev/shm",
            fstype: "tmpfs",
            flags: NOSUID.union(NODEV),
            data: c"mode=1777",
        },
        Mnt {
            src: "run",
            target: "/run",
            fstype: "tmpfs",
            flags: NOSUID.union(NODEV),
            data: c"mode=0755",
        },
        Mnt {
            src: "tmp",
            target: "/tmp",
            fstype: "tmpfs",
            flags: NOSUID.union(NODEV),
            data: c"mode=1777",
        },
        Mnt {
            src: "cgroup2",
            target: "/sys/fs/cgroup",
            fstype: "cgroup2",
            flags: NOSUID.union(NODEV).union(NOEXEC),
            data: c"nsdelegate",
        },
    ]
}

/// Mounts /dev first and puts the console on fds 0, 1 and 2, then the other pseudo
/// filesystems; RCU grace periods are expedited as soon as /sys is there. Failures are logged;
/// boot goes on. Returns what [`expedite_rcu`] returned.
pub fn mount_early() -> Option<Vec<u8>> {
    let mounts = early_mounts();
    let mut rcu = None;
    for (i, m) in mounts.iter().enumerate() {
        let _ = std::fs::create_dir_all(m.target);
        let res = rustix::mount::mount(m.src, m.target, m.fstype, m.flags, m.data);
        if i == 0 {
            console_on_stdio();
        }
        if m.fstype == "sysfs" && res.is_ok() {
            rcu = expedite_rcu();
        }
        match res {
            Ok(()) | Err(rustix::io::Errno::BUSY) => {}
            Err(e) => log!("mount {} on {}: {e}", m.fstype, m.target),
        }
    }
    for (link, target) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        let _ = std::os::unix::fs::symlink(target, link);
    }
    if std::path::Path::new("/proc/sys/fs/binfmt_misc").exists() {
        mount_binfmt_misc();
    }
    rcu
}

/// The kernel's switch for expedited RCU grace periods.
const RCU_EXPEDITED: &str = "/sys/kernel/rcu_expedited";

/// Makes RCU grace periods expedited for the boot; returns the setting to restore once booted
/// (`None`: nothing to restore).
///
/// Creating cgroups and moving processes into them waits for RCU grace periods, and a normal
/// grace period lasts several scheduler ticks: on one emulated CPU, each unit's start waited
/// about 10 ms for that. An expedited grace period takes a fraction of a millisecond, at the
/// price of interrupting every CPU — fine while booting, not for the workload, hence the
/// restore (as Android does around its boot).
pub fn expedite_rcu() -> Option<Vec<u8>> {
    let old = std::fs::read(RCU_EXPEDITED).ok()?;
    if old.trim_ascii() != b"0" {
        return None;
    }
    std::fs::write(RCU_EXPEDITED, b"1").ok()?;
    Some(old)
}

/// Puts back the RCU setting [`expedite_rcu`] changed.
pub fn restore_rcu(old: &[u8]) {
    if let Err(e) = std::fs::write(RCU_EXPEDITED, old) {
        log!("restore {RCU_EXPEDITED}: {e}");
    }
}

/// Mounts binfmt_misc (once its module is loaded) for the binfmt agent.
pub fn mount_binfmt_misc() {
    let target = "/proc/sys/fs/binfmt_misc";
    if std::path::Path::new(target).join("register").exists() {
        return;
    }
    let flags = NOSUID | NODEV | NOEXEC;
    if let Err(e) = rustix::mount::mount("binfmt_misc", target, "binfmt_misc", flags, c"") {
        if e != rustix::io::Errno::NOENT && e != rustix::io::Errno::NODEV {
            log!("mount binfmt_misc: {e}");
        }
    }
}

fn console_on_stdio() {
    let Ok(fd) = rustix::fs::open(
        "/dev/console",
        OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    ) else {
        return;
    };
    let _ = rustix::stdio::dup2_stdin(fd.as_fd());
    let _ = rustix::stdio::dup2_stdout(fd.as_fd());
    let _ = rustix::stdio::dup2_stderr(fd.as_fd());
    if fd.as_raw_fd() <= 2 {
        // The console landed on a standard descriptor (they were closed): keep it open.
        let _ = fd.into_raw_fd();
    }
}

/// Sysctls set at every boot unless the image's `sysctls:` gives its own value: the kernel's
/// link protections, off by default, without which any guest user can hard-link a file they
/// cannot read (`/etc/shadow`) into a directory of theirs, or have root follow their symlinks
/// and open their fifos and files in sticky world-writable directories.
pub const DEFAULT_SYSCTLS: [(&str, &str); 4] = [
    ("fs.protected_hardlinks", "1"),
    ("fs.protected_symlinks", "1"),
    ("fs.protected_fifos", "1"),
    ("fs.protected_regular", "1"),
];

/// The sysctls to apply, in order: the [`DEFAULT_SYSCTLS`] the config does not set (under any
/// spelling of the key, dotted or with slashes), then the config's own.
pub fn sysctls(cfg: &ImageConfig) -> Vec<(&str, &str)> {
    let configured: Vec<Option<String>> = cfg
        .sysctls
        .keys()
        .map(|k| crate::config::sysctl_path(k))
        .collect();
    DEFAULT_SYSCTLS
        .iter()
        .filter(|(k, _)| !configured.contains(&crate::config::sysctl_path(k)))
        .copied()
        .chain(cfg.sysctls.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .collect()
}

/// Hostname, loopback, sysctls ([`sysctls`]: the defaults, then the config's), rlimits.
pub fn system(cfg: &ImageConfig) {
    if !cfg.hostname.is_empty() {
        if let Err(e) = rustix::system::sethostname(cfg.hostname.as_bytes()) {
            log!("sethostname {:?}: {e}", cfg.hostname);
        }
    }
    if let Err(e) = crate::sys::loopback_up() {
        log!("loopback up: {e}");
    }
    for (key, value) in sysctls(cfg) {
        let Some(path) = crate::config::sysctl_path(key) else {
            log!("sysctl {key:?}: invalid key, skipped");
            continue;
        };
        if let Err(e) = std::fs::write(&path, value.as_bytes()) {
            log!("sysctl {key}={value}: {e}");
        }
    }
    for r in &cfg.rlimits {
        let Some(res) = crate::config::rlimit_resource(&r.resource) else {
            log!("rlimit {:?}: unknown resource, skipped", r.resource);
            continue;
        };
        let lim = rustix::process::Rlimit {
            current: r.soft,
            maximum: r.hard,
        };
        if let Err(e) = rustix::process::setrlimit(res, lim) {
            log!(
                "rlimit {} soft={:?} hard={:?}: {e}",
                r.resource,
                r.soft,
                r.hard
            );
        }
    }
}

/// Creates the cgroup parent of the units and delegates the controllers it can to it.
pub fn cgroups() {
    if let Err(e) = std::fs::create_dir_all(CGROUP_ROOT) {
        log!("create {CGROUP_ROOT}: {e}");
        return;
    }
    let available =
        std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers").unwrap_or_default();
    let enable: Vec<String> = available
        .split_whitespace()
        .filter(|c| matches!(*c, "cpu" | "memory" | "pids" | "io"))
        .map(|c| format!("+{c}"))
        .collect();
    for level in ["/sys/fs/cgroup", CGROUP_ROOT] {
        for c in &enable {
            // One controller per write so one refusal doesn't hide the others.
            let _ = std::fs::write(format!("{level}/cgroup.subtree_control"), c.as_bytes());
        }
    }
}

/// Opens `cgroup.procs` of unit `name`'s cgroup (created if needed) for the child to join.
pub fn unit_cgroup(root: &str, name: &str) -> Option<std::os::fd::OwnedFd> {
    let dir = format!("{root}/{name}");
    if std::fs::create_dir_all(&dir).is_err() {
        return None;
    }
    rustix::fs::open(
        format!("{dir}/cgroup.procs"),
        OFlags::WRONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()
}

/// Kills whatever is left in unit `name`'s cgroup (`cgroup.kill`, Linux ≥ 5.14).
pub fn kill_unit_cgroup(root: &str, name: &str) {
    let _ = std::fs::write(format!("{root}/{name}/cgroup.kill"), b"1");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_early_mount_is_a_known_boot_mount() {
        for m in early_mounts() {
            assert!(
                minke_protocol::BOOT_MOUNTS
                    .iter()
                    .any(|b| m.target == *b || m.target.starts_with(&format!("{b}/"))),
                "{} is mounted at boot but not in minke_protocol::BOOT_MOUNTS",
                m.target
            );
        }
    }

    #[test]
    fn link_protections_are_on_unless_the_image_says_otherwise() {
        let mut cfg = ImageConfig::default();
        assert_eq!(sysctls(&cfg), DEFAULT_SYSCTLS.to_vec());
        for (k, _) in DEFAULT_SYSCTLS {
            assert!(crate::config::sysctl_path(k).is_some(), "{k}");
        }
        // The image's own value wins, whatever the spelling of the key; others are kept.
        cfg.sysctls
            .insert("fs.protected_hardlinks".into(), "0".into());
        cfg.sysctls.insert("fs/protected_fifos".into(), "2".into());
        cfg.sysctls.insert("vm.swappiness".into(), "10".into());
        assert_eq!(
            sysctls(&cfg),
            vec![
                ("fs.protected_symlinks", "1"),
                ("fs.protected_regular", "1"),
                ("fs.protected_hardlinks", "0"),
                ("fs/protected_fifos", "2"),
                ("vm.swappiness", "10"),
            ]
        );
    }
}
