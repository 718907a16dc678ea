//! What minke creates for a VM is private to its user whatever the umask. A test binary of its
//! own, with one test: the umask is process-wide.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use minke_shim::binaries::{self, Tool};
use minke_shim::console::ConsoleLog;
use minke_shim::{disk, state, DiskFormat, DiskSpec};
use rustix::fs::Mode;

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

#[test]
fn state_files_and_disks_are_private_under_umask_000() {
    let old = rustix::process::umask(Mode::empty());
    let d = tempfile::tempdir().unwrap();

    // A new state directory and its parents; an existing open one is tightened.
    let dir = d.path().join("minke/web");
    state::ensure_private_dir(&dir).unwrap();
    assert_eq!((mode(&d.path().join("minke")), mode(&dir)), (0o700, 0o700));
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    state::ensure_private_dir(&dir).unwrap();
    assert_eq!(mode(&dir), 0o700);

    // Logs (an existing world-readable one too), records, the console.
    std::fs::write(dir.join("qemu.log"), "old").unwrap();
    std::fs::set_permissions(dir.join("qemu.log"), std::fs::Permissions::from_mode(0o666)).unwrap();
    drop(state::create_private(&dir.join("qemu.log")).unwrap());
    drop(state::create_private(&dir.join("vsock-backend.log")).unwrap());
    state::write_private(&dir.join("run.json"), b"{}").unwrap();
    state::write_private(&dir.join("boot.json"), b"{}").unwrap();
    ConsoleLog::start(&dir, std::io::Cursor::new(b"minke: ready\n".to_vec()))
        .unwrap()
        .finish()
        .unwrap();
    for f in [
        "qemu.log",
        "vsock-backend.log",
        "run.json",
        "boot.json",
        "console.log",
    ] {
        assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
    }
    assert_eq!(
        std::fs::read(dir.join("qemu.log")).unwrap(),
        b"",
        "truncated"
    );

    // A data disk and the directories made for it.
    if binaries::find(Tool::Mke2fs).is_ok() {
        let spec = DiskSpec {
            label: "var".into(),
            path: d.path().join("disks/web/var.img"),
            size: 8 << 20,
            format: DiskFormat::Raw,
        };
        assert!(disk::ensure(&spec).unwrap());
        assert_eq!(mode(&spec.path), 0o600);
        assert_eq!(mode(&d.path().join("disks")), 0o700);
        assert_eq!(mode(&d.path().join("disks/web")), 0o700);
        assert_eq!(
            std::fs::read_dir(d.path().join("disks/web"))
                .unwrap()
                .count(),
            1
        );
    } else {
        eprintln!("disk part skipped: mke2fs not installed");
    }
    rustix::process::umask(old);
}
