//! What `minke` prints when it fails: `minke: error: MESSAGE` and one `caused by: CAUSE` line
//! per cause, each cause said once (no message repeating its cause, no position said twice),
//! and exit code 1.

use std::process::Command;

/// Runs `minke ARGS`; returns the exit code and the error chain's lines (the message, then
/// each cause), having checked stderr has that shape.
fn fails(args: &[&str]) -> (Option<i32>, Vec<String>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_minke"))
        .args(args)
        .env("MINKE_LOG", "off")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let mut chain = Vec::new();
    for line in stderr.lines() {
        if let Some(m) = line.strip_prefix("minke: error: ") {
            assert!(chain.is_empty(), "two error lines:\n{stderr}");
            chain.push(m.to_owned());
        } else if let Some(c) = line.strip_prefix("  caused by: ") {
            assert!(!chain.is_empty(), "a cause before the error:\n{stderr}");
            chain.push(c.to_owned());
        }
    }
    assert!(!chain.is_empty(), "no `minke: error:` line:\n{stderr}");
    (out.status.code(), chain, stderr)
}

/// Each text occurs exactly once in stderr, and no line of the chain repeats another.
fn each_once(chain: &[String], stderr: &str, texts: &[&str]) {
    for t in texts {
        assert_eq!(
            stderr.matches(t).count(),
            1,
            "{t:?} should appear exactly once in:\n{stderr}"
        );
    }
    for (i, a) in chain.iter().enumerate() {
        for (j, b) in chain.iter().enumerate() {
            assert!(
                i == j || !a.contains(b.as_str()),
                "line {i} repeats cause {j}:\n{stderr}"
            );
        }
    }
}

#[test]
fn a_missing_spec_says_the_os_error_once() {
    let (code, chain, stderr) = fails(&["build", "/nonexistent.yml"]);
    assert_eq!(code, Some(1), "{stderr}");
    each_once(
        &chain,
        &stderr,
        &["/nonexistent.yml", "No such file or directory (os error 2)"],
    );
    assert_eq!(chain.len(), 2, "{stderr}");
}

#[test]
fn a_bad_field_says_its_position_once() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("bad.yml");
    std::fs::write(&spec, "name: x\nagents: [control]\nkernal: {}\n").unwrap();
    let (code, chain, stderr) = fails(&["build", spec.to_str().unwrap(), "-o", "/nonexistent"]);
    assert_eq!(code, Some(1), "{stderr}");
    each_once(
        &chain,
        &stderr,
        &["bad.yml:3:1: ", "unknown field `kernal`"],
    );
    assert!(!stderr.contains("line 3"), "position said twice:\n{stderr}");
}

#[test]
fn a_bad_package_name_is_located_and_never_reaches_apt() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("k.yml");
    std::fs::write(&spec, "name: x\nkernel:\n  package: \"-oDir=/x\"\n").unwrap();
    let (code, chain, stderr) = fails(&["build", spec.to_str().unwrap(), "-o", "/nonexistent"]);
    assert_eq!(code, Some(1), "{stderr}");
    each_once(
        &chain,
        &stderr,
        &["k.yml:3:", "\"-oDir=/x\" is not a package name"],
    );

    // Names from the command line are checked as well.
    let (code, chain, stderr) = fails(&["kernel", "modules", "--kernel=-o", "--closure", "vsock"]);
    assert_eq!(code, Some(1), "{stderr}");
    each_once(&chain, &stderr, &["\"-o\" is not a package name"]);
}
