//! `minke run -- CMD` end to end: the guest command's exit code becomes minke's, and piped
//! stdin reaches it. Boots the built-in default image under QEMU; skipped when QEMU or
//! vhost-device-vsock is missing.

use std::io::Write;
use std::process::{Command, Stdio};

fn can_boot() -> bool {
    let found = |bin: &str| {
        Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {bin}"))
            .output()
            .is_ok_and(|o| o.status.success())
            || std::env::var_os("HOME").is_some_and(|h| {
                std::path::Path::new(&h)
                    .join(".cargo/bin")
                    .join(bin)
                    .exists()
            })
    };
    let ok = found("qemu-system-x86_64") && found("vhost-device-vsock");
    if !ok {
        eprintln!("skipped: qemu-system-x86_64 or vhost-device-vsock missing (cargo xtask setup installs them)");
    }
    ok
}

fn minke_run(name: &str, cmd: &[&str], stdin: Option<&[u8]>) -> (Option<i32>, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_minke"))
        .args(["run", "--name", name, "--accel", "tcg", "--"])
        .args(cmd)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(bytes) = stdin {
        let mut s = child.stdin.take().unwrap();
        s.write_all(bytes).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn exit_codes_come_back() {
    if !can_boot() {
        return;
    }
    for (i, (cmd, want)) in [
        ("exit 0", 0),
        ("exit 1", 1),
        ("exit 42", 42),
        ("kill -9 $$", 137),
    ]
    .into_iter()
    .enumerate()
    {
        let (code, _, err) = minke_run(&format!("cli-exit-{i}"), &["sh", "-c", cmd], None);
        assert_eq!(code, Some(want), "`{cmd}`: {err}");
    }
}

#[test]
fn piped_stdin_arrives() {
    if !can_boot() {
        return;
    }
    let (code, out, err) = minke_run("cli-stdin", &["cat"], Some(b"through the guest\n"));
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out, "through the guest\n");
}
