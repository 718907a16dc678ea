//! Malformed specs and packages: each file in `builder/tests/bad-specs/` (the library's corpus,
//! also seeds of its decoder test) must make `minke build` fail with a clear error, a non-zero
//! exit code, and no output files.
//!
//! Each case's first line is `# error: TEXT`: the text the error must contain. Spec-level
//! errors (every case not named `package-*`, `missing-*`, `kernel-*` or `*-binfmt`) must also
//! name the spec file with a line number.

use std::path::{Path, PathBuf};
use std::process::Command;

fn cases_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../builder/tests/bad-specs")
}

fn check(case: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(case).map_err(|e| e.to_string())?;
    let expected = text
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("# error: "))
        .ok_or_else(|| format!("{}: first line must be `# error: TEXT`", case.display()))?;
    let out_dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let out = Command::new(env!("CARGO_BIN_EXE_minke"))
        .arg("build")
        .arg(case)
        .arg("-o")
        .arg(out_dir.path())
        .output()
        .map_err(|e| e.to_string())?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let name = case
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let stem = name.trim_end_matches(".yml");
    if out.status.code() != Some(1) {
        return Err(format!(
            "{name}: exit status {:?}, want 1; stderr:\n{stderr}",
            out.status.code()
        ));
    }
    if !stderr.contains(expected) {
        return Err(format!(
            "{name}: error does not mention {expected:?}:\n{stderr}"
        ));
    }
    let spec_level = !(stem.starts_with("package-")
        || stem.starts_with("missing-")
        || stem.starts_with("kernel-")
        || stem.ends_with("-binfmt"));
    if spec_level {
        let at = format!("{name}:");
        let located = stderr.match_indices(&at).any(|(i, _)| {
            stderr[i + at.len()..]
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_digit() && c != '0')
        });
        if !located {
            return Err(format!(
                "{name}: error does not name {name}:LINE:\n{stderr}"
            ));
        }
    }
    if stderr.contains("panicked") {
        return Err(format!("{name}: panic:\n{stderr}"));
    }
    let left: Vec<_> = std::fs::read_dir(out_dir.path())
        .map_err(|e| e.to_string())?
        .collect();
    if !left.is_empty() {
        return Err(format!("{name}: output files left behind: {left:?}"));
    }
    Ok(())
}

#[test]
fn every_malformed_spec_fails_cleanly() {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(cases_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml"))
        .collect();
    cases.sort();
    assert!(cases.len() >= 30, "the corpus shrank to {}", cases.len());
    let failures: Vec<String> = cases.iter().filter_map(|c| check(c).err()).collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}
