//! The full-filesystem drill: writes and uploads fail with ENOSPC, nothing temporary is left,
//! the agents keep serving, and removing the filler makes room again.

use minke_shim::{error_chain, Vm};

use crate::{sh, vm_err, DrillError};

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
        .map_err(|e| error_chain(&e));
    let temp_left: Vec<String> = sh(vm, &format!("ls -A {mount}"))?
        .lines()
        .filter(|l| l.contains(".minke-"))
        .map(str::to_owned)
        .collect();
    let agents_work = (|| -> Result<(), String> {
        let o = vm
            .exec_output(&["echo", "alive"])
            .map_err(|e| error_chain(&e))?;
        if o.stdout != b"alive\n" {
            return Err(format!(
                "exec printed {:?}",
                String::from_utf8_lossy(&o.stdout)
            ));
        }
        let p = format!("{elsewhere}/enospc-check");
        vm.put_bytes(b"elsewhere\n", &p, 0o644)
            .map_err(|e| error_chain(&e))?;
        if vm.read_file(&p).map_err(|e| error_chain(&e))? != b"elsewhere\n" {
            return Err(format!("{p} read back differently"));
        }
        if vm.read_file(&kept).map_err(|e| error_chain(&e))? != b"kept\n" {
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
            .map_err(|e| error_chain(&e))?;
        if vm.read_file(&p).map_err(|e| error_chain(&e))? != body {
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
