//! `minke run -- CMD` end to end: the guest command's exit code becomes minke's, and piped
//! stdin reaches it. Boots the built-in default image under QEMU; skipped when QEMU or
//! vhost-device-vsock is missing.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};

fn can_boot() -> bool {
    support::require_tools(support::BOOT_TOOLS)
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

/// With `--accel auto` and no remembered verdict, `minke run` tries KVM where /dev/kvm opens;
/// where KVM cannot run the guest (as on hosts whose /dev/kvm is unusable) it falls back to
/// TCG with exactly one warning line, remembers that, and says so the next time — and the
/// command's exit code comes back either way.
#[test]
fn kvm_attempt_falls_back_to_tcg() {
    if !can_boot() {
        return;
    }
    let kvm_opens = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    // The verdict lives under XDG_CACHE_HOME; the image cache stays where it is.
    let xdg = tempfile::tempdir().unwrap();
    let cache = std::env::var_os("MINKE_CACHE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("XDG_CACHE_HOME")
                .map(|x| std::path::PathBuf::from(x).join("minke"))
                .unwrap_or_else(|| {
                    std::path::PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/minke")
                })
        });
    let run = |name: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_minke"))
            .args([
                "run", "--name", name, "--accel", "auto", "--", "sh", "-c", "exit 3",
            ])
            .env("XDG_CACHE_HOME", xdg.path())
            .env("MINKE_CACHE", &cache)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let verdict = xdg.path().join("minke/kvm-broken");

    let (code, err) = run("kvm-first");
    assert_eq!(code, Some(3), "{err}");
    let kvm_lines = err.lines().filter(|l| l.contains("KVM")).count();
    if !kvm_opens {
        assert_eq!(kvm_lines, 0, "no /dev/kvm: TCG without a word\n{err}");
        return;
    }
    if !verdict.exists() {
        // KVM really ran the guest.
        assert_eq!(kvm_lines, 0, "{err}");
        return;
    }
    assert_eq!(kvm_lines, 1, "one warning line for the fallback\n{err}");
    assert!(err.contains("falling back to TCG"), "{err}");

    let (code, err) = run("kvm-second");
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("remembered in"), "{err}");
    assert_eq!(
        err.lines().filter(|l| l.contains("KVM")).count(),
        1,
        "{err}"
    );
}

/// `minke run` killed with SIGKILL (no chance to clean up) leaves no QEMU and no vsock backend
/// behind: they are in their own process group and get SIGKILL when the shim dies.
#[test]
fn killing_the_shim_leaves_no_children() {
    if !can_boot() {
        return;
    }
    use std::io::BufRead;
    let state = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_minke"))
        .args(["run", "--name", "shimkill", "--accel", "tcg", "--"])
        .args(["sh", "-c", "echo started; exec sleep 600"])
        .env("XDG_STATE_HOME", state.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Explicit readiness: the guest command runs once it prints.
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "started\n");
    let run: serde_json::Value = serde_json::from_slice(
        &std::fs::read(state.path().join("minke/shimkill/run.json")).unwrap(),
    )
    .unwrap();
    let pids: Vec<u64> = [&run["qemu_pid"], &run["backend_pid"]]
        .iter()
        .filter_map(|v| v.as_u64())
        .collect();
    assert!(!pids.is_empty(), "{run}");
    let alive = |pid: u64| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| !s.contains(") Z") && !s.contains(") X"))
    };
    assert!(pids.iter().all(|p| alive(*p)));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // The kernel delivers the parent-death signal at once; allow a slow machine 30 s.
    let end = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while pids.iter().any(|p| alive(*p)) {
        assert!(
            std::time::Instant::now() < end,
            "still running 30 s after the shim was killed: {:?}",
            pids.iter().filter(|p| alive(**p)).collect::<Vec<_>>()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// `minke run NAME --publish` without CMD serves a guest TCP port on the host until
/// `minke stop NAME` powers the guest off cleanly; the data disk is then consistent.
#[test]
fn publish_then_stop_leaves_a_clean_disk() {
    if !can_boot() {
        return;
    }
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let ws = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    let out = dir.path().join("image");
    let st = Command::new(env!("CARGO_BIN_EXE_minke"))
        .arg("build")
        .arg(ws.join("host-shim/tests/images/boot-test.yml"))
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    // A free host port: bind port 0, read it, release it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let disk = dir.path().join("var.img");
    let env = |c: &mut Command| {
        c.env("XDG_STATE_HOME", dir.path().join("state"));
    };
    let mut run = Command::new(env!("CARGO_BIN_EXE_minke"));
    run.arg("run")
        .arg(&out)
        .args(["--name", "pubstop", "--accel", "tcg", "--publish"])
        .arg(format!("{port}:8080"))
        .arg("--disk")
        .arg(format!("var={},size=64M", disk.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    env(&mut run);
    let mut child = run.spawn().unwrap();
    // Explicit readiness: the published port answers with the guest's page.
    let end = std::time::Instant::now() + std::time::Duration::from_secs(180);
    let page = loop {
        let got = std::net::TcpStream::connect(("127.0.0.1", port)).and_then(|mut s| {
            use std::io::Write;
            s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")?;
            let mut body = String::new();
            s.read_to_string(&mut body)?;
            Ok(body)
        });
        match got {
            Ok(body) if body.contains("hello from the guest") => break body,
            _ => {
                if let Ok(Some(status)) = child.try_wait() {
                    let mut err = String::new();
                    child
                        .stderr
                        .take()
                        .unwrap()
                        .read_to_string(&mut err)
                        .unwrap();
                    panic!("minke run ended early ({status}): {err}");
                }
                assert!(
                    std::time::Instant::now() < end,
                    "the published port never answered"
                );
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    };
    assert!(page.starts_with("HTTP/1."), "{page}");

    let mut stop = Command::new(env!("CARGO_BIN_EXE_minke"));
    stop.args(["stop", "pubstop"]);
    env(&mut stop);
    let o = stop.output().unwrap();
    let said = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && said.contains("powered off"), "{said}");
    let status = child.wait().unwrap();
    assert!(status.success(), "minke run: {status}");
    let fsck = Command::new("e2fsck")
        .arg("-fn")
        .arg(&disk)
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "e2fsck -fn: {}",
        String::from_utf8_lossy(&fsck.stdout)
    );
}

/// `minke exec NAME -- echo X` from the moment `minke run --name NAME` starts, in a tight loop
/// with a short `--timeout`, until 20 successes: every attempt prints X and exits 0, or exits
/// non-zero with a message on stderr; none exits 0 without X. Then `minke stop`.
fn exec_from_launch_never_succeeds_falsely(transport: &str) {
    if !can_boot() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let name = format!("early-{transport}");
    let env = |c: &mut Command| {
        c.env("XDG_STATE_HOME", dir.path().join("state"))
            .env("XDG_DATA_HOME", dir.path().join("data"));
    };
    let mut run = Command::new(env!("CARGO_BIN_EXE_minke"));
    run.args([
        "run",
        "--name",
        &name,
        "--accel",
        "tcg",
        "--transport",
        transport,
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    env(&mut run);
    let mut child = run.spawn().unwrap();
    let (mut ok, mut failed) = (0, 0);
    let end = std::time::Instant::now() + std::time::Duration::from_secs(300);
    while ok < 20 {
        assert!(
            std::time::Instant::now() < end,
            "only {ok} successes ({failed} failures)"
        );
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
            panic!("minke run ended early ({status}): {err}");
        }
        let mut exec = Command::new(env!("CARGO_BIN_EXE_minke"));
        exec.args(["exec", &name, "--timeout", "1", "--", "echo", "X"]);
        env(&mut exec);
        let o = exec.output().unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
        );
        if o.status.success() {
            assert_eq!(
                stdout, "X\n",
                "exit 0 without the guest's answer; stderr {stderr:?}"
            );
            ok += 1;
        } else {
            assert!(
                o.status.code().is_some() && stderr.contains("minke: error:"),
                "a failure without a message: {:?} {stderr:?}",
                o.status
            );
            assert!(stdout.is_empty(), "output from a failed exec: {stdout:?}");
            failed += 1;
        }
    }
    eprintln!("{name}: {ok} successes, {failed} failures before ready, 0 false successes");
    let mut stop = Command::new(env!("CARGO_BIN_EXE_minke"));
    stop.args(["stop", &name]);
    env(&mut stop);
    let o = stop.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(child.wait().unwrap().success());
}

#[test]
fn exec_from_launch_never_succeeds_falsely_over_vsock() {
    exec_from_launch_never_succeeds_falsely("vhost-user");
}

#[test]
fn exec_from_launch_never_succeeds_falsely_over_serial() {
    exec_from_launch_never_succeeds_falsely("serial");
}

fn minke_run_with(name: &str, opts: &[&str], cmd: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_minke"))
        .args(["run", "--name", name, "--accel", "tcg"])
        .args(opts)
        .arg("--")
        .args(cmd)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// On microvm the default image's bzImage (Debian's kernel) is entered through its PVH note:
/// this run unpacks its ELF into the cache (the entry is removed first), and the guest's kernel
/// text lies where that ELF puts it (text randomization is the decompressor's work, which a
/// PVH entry skips; a bzImage boot would put it elsewhere 511 times in 512).
#[test]
fn a_bzimage_boots_on_microvm_through_its_pvh_entry() {
    if !can_boot() {
        return;
    }
    // A first run builds the default image if needed; the second one must unpack its kernel.
    let (code, _, err) = minke_run_with("cli-pvh", &[], &["true"]);
    assert_eq!(code, Some(0), "{err}");
    let cache = minke::layer::Cache::default_location();
    let kernel = cache.dir("images/default/default-kernel");
    let bzimage = std::fs::read(&kernel).unwrap();
    assert!(
        minke::kernel::pvh::is_bzimage(&bzimage),
        "{}",
        kernel.display()
    );
    let elf = minke::kernel::pvh::cache_path(&bzimage, &cache);
    std::fs::remove_file(&elf).unwrap();
    let script = "grep -w _stext /proc/kallsyms; cat /proc/cmdline";
    let (code, out, err) = minke_run_with("cli-pvh", &[], &["sh", "-c", script]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("minke.machine=microvm"), "{out}");
    assert!(
        out.starts_with("ffffffff81000000 T _stext"),
        "the kernel was not entered through its PVH entry:\n{out}"
    );
    let unpacked = std::fs::read(&elf).unwrap();
    assert!(
        minke::kernel::pvh::has_pvh_entry(&unpacked),
        "{} is not a PVH kernel",
        elf.display()
    );
}

/// A host program the image lacks, at a path only this test uses.
fn host_program(dir: &std::path::Path) -> String {
    let p = dir.join("gnu-sha256sum");
    std::fs::copy("/usr/bin/sha256sum", &p).unwrap();
    p.to_string_lossy().into_owned()
}

#[test]
fn a_host_program_the_image_lacks_gets_a_suggestion_and_runs_with_add() {
    if !can_boot() {
        return;
    }
    // Not under /tmp: the guest mounts its own /tmp over whatever the initrd holds there.
    let d = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let prog = host_program(d.path());
    let (code, _, err) = minke_run_with("cli-add-missing", &[], &[&prog, "--version"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!("--add {prog}")) && err.contains("not in the image"),
        "no --add suggestion: {err}"
    );
    // Brought along for one boot, with its shared libraries (GNU coreutils is dynamic).
    let (code, out, err) = minke_run_with("cli-add", &["--add", &prog], &[&prog, "--version"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("GNU coreutils"), "{out}");
    // At another guest path, next to a directory.
    std::fs::create_dir(d.path().join("tree")).unwrap();
    std::fs::write(d.path().join("tree/data"), b"abc").unwrap();
    let (code, out, err) = minke_run_with(
        "cli-add-at",
        &[
            "--add",
            &format!("{prog}:/opt/tools/sum"),
            "--add",
            &format!("{}:/srv/tree", d.path().join("tree").display()),
        ],
        &["/opt/tools/sum", "/srv/tree/data"],
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.starts_with("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
        "{out}"
    );
}

#[test]
fn shares_are_checked_before_qemu_starts() {
    if !can_boot() {
        return;
    }
    let (code, _, err) = minke_run_with(
        "cli-share-missing",
        &["--share", "/no/such/dir:/mnt/x"],
        &["true"],
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("cannot share /no/such/dir"), "{err}");
    assert_eq!(
        err.matches("No such file or directory").count(),
        1,
        "each cause once: {err}"
    );
}

/// `--format tar`: the image's files in one tarball, which, unpacked anywhere, is an image
/// directory that boots.
#[test]
fn the_tar_format_unpacks_into_an_image_that_boots() {
    if !can_boot() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let built = tmp.path().join("built");
    let o = Command::new(env!("CARGO_BIN_EXE_minke"))
        .args(["build", "--format", "tar", "-o"])
        .arg(&built)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let tar = built.join("default.tar");
    assert!(String::from_utf8_lossy(&o.stdout).contains(tar.to_str().unwrap()));
    let unpacked = tmp.path().join("handed-off");
    std::fs::create_dir_all(&unpacked).unwrap();
    let st = Command::new("tar")
        .arg("-xf")
        .arg(&tar)
        .arg("-C")
        .arg(&unpacked)
        .status()
        .unwrap();
    assert!(st.success());
    let o = Command::new(env!("CARGO_BIN_EXE_minke"))
        .arg("run")
        .arg(&unpacked)
        .args([
            "--accel",
            "tcg",
            "--name",
            "from-tar",
            "--",
            "cat",
            "/etc/motd",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("Welcome to a minke guest."));
}
