//! Runs `examples/ci/workflow.yml` here, step by step as a CI runner would, so the workflow a
//! user copies is known to work: each `run:` step in bash (`-e`, pipefail), in a copy of
//! `examples/ci` as the workspace, with the workflow's, the job's and the step's `env:`;
//! `$GITHUB_PATH` and `$GITHUB_ENV` carry over to later steps as on GitHub; `${{ … }}`
//! expressions are given the values of this run (`github.sha`, the registry's credentials as
//! the secret). The steps that use actions (checkout, upload) are what the copy and the test's
//! own checks stand for. The settings point at this machine: MINKE_DIST_URL at the dist
//! tarball under test (`file://`), REGISTRY at a `docker-registry` on 127.0.0.1 demanding
//! basic auth; `sudo` runs its command as is (the test runs as root), but `apt-get install`
//! only checks that the named packages are installed.

use std::path::Path;

use anyhow::{bail, Context, Result};

/// The workflow and its project, relative to the workspace.
pub const EXAMPLE: &str = "examples/ci";

/// One `run:` step: its name, its environment, its script.
#[derive(Debug)]
pub struct Step {
    pub name: String,
    pub env: Vec<(String, String)>,
    pub run: String,
}

/// The `run:` steps of the workflow's one job, with the workflow's and job's `env:` folded
/// into each step's (later levels win), and `${{ … }}` replaced through `expr`.
pub fn steps(workflow: &str, expr: &dyn Fn(&str) -> String) -> Result<Vec<Step>> {
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(workflow)?;
    let env_of = |v: &serde_yaml_ng::Value| -> Vec<(String, String)> {
        v.get("env")
            .and_then(|e| e.as_mapping())
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| {
                        let v = match v {
                            serde_yaml_ng::Value::String(s) => s.clone(),
                            other => serde_yaml_ng::to_string(other).ok()?.trim().to_string(),
                        };
                        Some((k.as_str()?.to_string(), substitute(&v, expr)))
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let jobs = doc
        .get("jobs")
        .and_then(|j| j.as_mapping())
        .context("the workflow has no jobs")?;
    if jobs.len() != 1 {
        bail!(
            "the example workflow should have one job, it has {}",
            jobs.len()
        );
    }
    let job = jobs.values().next().context("no job")?;
    let mut base = env_of(&doc);
    base.extend(env_of(job));
    let mut out = Vec::new();
    for s in job
        .get("steps")
        .and_then(|s| s.as_sequence())
        .context("the job has no steps")?
    {
        let Some(run) = s.get("run").and_then(|r| r.as_str()) else {
            continue;
        };
        let mut env = base.clone();
        env.extend(env_of(s));
        out.push(Step {
            name: s
                .get("name")
                .and_then(|n| n.as_str())
                .unwrap_or("(unnamed)")
                .to_string(),
            env,
            run: substitute(run, expr),
        });
    }
    Ok(out)
}

fn substitute(s: &str, expr: &dyn Fn(&str) -> String) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("${{") {
        out.push_str(&rest[..i]);
        match rest[i..].find("}}") {
            Some(j) => {
                out.push_str(&expr(rest[i + 3..i + j].trim()));
                rest = &rest[i + j + 2..];
            }
            None => {
                out.push_str(&rest[i..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// The runner's `sudo`: the command as is, except that apt-get only checks that the packages a
/// step installs are installed here (`cargo xtask setup` installed them), leaving this
/// machine's packages as they are.
const SUDO: &str = r#"#!/bin/sh
if [ "$1" = apt-get ]; then
  shift
  case "$1" in
    update) exit 0 ;;
    install) shift; exec dpkg-query -W $(printf '%s\n' "$@" | grep -v '^-') >/dev/null ;;
  esac
  echo "sudo apt-get $*: not run here" >&2; exit 1
fi
exec "$@"
"#;

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// A bash script that runs `steps` in order in `workspace`, as a runner would.
pub fn script(
    steps: &[Step],
    workspace: &Path,
    runner: &Path,
    settings: &[(&str, String)],
) -> String {
    let mut s = String::from("set -e\n");
    let w = workspace.display().to_string();
    let r = runner.display().to_string();
    s.push_str(&format!(
        "export GITHUB_WORKSPACE={w} RUNNER_TEMP={r}/temp GITHUB_SHA=0123456789abcdef0123456789abcdef01234567 CI=true\n\
         export GITHUB_PATH={r}/path GITHUB_ENV={r}/env\n\
         mkdir -p \"$RUNNER_TEMP\" {r}/bin && : > \"$GITHUB_PATH\" && : > \"$GITHUB_ENV\"\n\
         cat > {r}/bin/sudo <<'SUDO'\n{sudo}SUDO\n\
         chmod +x {r}/bin/sudo\n\
         export PATH={r}/bin:$PATH\n",
        w = quote(&w),
        r = quote(&r),
        sudo = SUDO,
    ));
    for (k, v) in settings {
        s.push_str(&format!("export {k}={}\n", quote(v)));
    }
    for st in steps {
        s.push_str(&format!(
            "echo {} >&2\n",
            quote(&format!("== step: {}", st.name))
        ));
        s.push_str("(\n  cd \"$GITHUB_WORKSPACE\"\n");
        s.push_str("  while IFS= read -r p; do [ -n \"$p\" ] && PATH=\"$p:$PATH\"; done < \"$GITHUB_PATH\"\n");
        s.push_str("  while IFS= read -r kv; do [ -n \"$kv\" ] && export \"$kv\"; done < \"$GITHUB_ENV\"\n");
        for (k, v) in &st.env {
            // The settings of this run stand for the workflow's own.
            if settings.iter().any(|(sk, _)| sk == k) {
                continue;
            }
            s.push_str(&format!("  export {k}={}\n", quote(v)));
        }
        // As GitHub runs a `run:` step: bash without profiles, -e and pipefail.
        s.push_str(&format!(
            "  exec bash --noprofile --norc -eo pipefail -c {}\n)\n",
            quote(&st.run)
        ));
    }
    s
}

/// Copies the example project into `dest` (files git would see: no build outputs).
pub fn copy_example(ws: &Path, dest: &Path) -> Result<()> {
    let src = ws.join(EXAMPLE);
    let skip = |n: &std::ffi::OsStr| n == "out";
    for e in minke::fsutil::walk_sorted(&src, skip)? {
        let to = dest.join(&e.rel);
        if e.file_type.is_dir() {
            std::fs::create_dir_all(&to)?;
        } else {
            if let Some(p) = to.parent() {
                std::fs::create_dir_all(p)?;
            }
            std::fs::copy(src.join(&e.rel), &to)?;
        }
    }
    Ok(())
}

/// The workflow's settings for a run on this machine.
pub fn settings(dist: &Path, registry: &str) -> Vec<(&'static str, String)> {
    vec![
        ("MINKE_DIST_URL", format!("file://{}", dist.display())),
        ("REGISTRY", format!("{registry}/example")),
    ]
}

/// Values of `${{ … }}` for a local run, with `registry_auth` as the secret REGISTRY_AUTH.
pub fn local_expr(e: &str, registry_auth: &str) -> String {
    match e {
        "github.sha" => "0123456789abcdef0123456789abcdef01234567".into(),
        "secrets.REGISTRY_AUTH" => registry_auth.into(),
        _ => String::new(),
    }
}

/// The steps as `(name, run)` with their environment, read from the checkout; the secret
/// REGISTRY_AUTH is `registry_auth` (base64 of USER:TOKEN, or empty).
pub fn read_steps(ws: &Path, registry_auth: &str) -> Result<Vec<Step>> {
    let path = ws.join(EXAMPLE).join("workflow.yml");
    let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    steps(&text, &|e| local_expr(e, registry_auth))
}

/// What a run of the steps must have left: the image, its UEFI disk, the self-test's words
/// from both boots, the image in the registry.
pub fn check_outcome(stdout: &str, workspace: &Path) -> Result<()> {
    let passes = stdout.matches("app selftest passed").count();
    if passes != 2 {
        bail!("the self-test passed {passes} times, not twice (direct and UEFI boots):\n{stdout}");
    }
    for f in [
        "app-initrd.img",
        "app.qcow2",
        "app.manifest.json",
        "app.spdx.json",
    ] {
        if !workspace.join("out").join(f).is_file() {
            bail!("the workflow's build left no out/{f}");
        }
    }
    let pushed = stdout.lines().any(|l| l.contains("@sha256:"));
    if !pushed {
        bail!("the push step printed no digest:\n{stdout}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_workflow_reads_as_run_steps() {
        let steps = read_steps(&crate::workspace_root(), "").unwrap();
        let names: Vec<&str> = steps.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "Install QEMU and the UEFI parts",
                "Install minke",
                "Registry credentials",
                "Build",
                "Boot test",
                "Push"
            ]
        );
        let creds = &steps[2];
        assert!(creds
            .env
            .iter()
            .any(|(k, v)| k == "REGISTRY_AUTH" && v.is_empty()));
        assert!(creds
            .env
            .iter()
            .any(|(k, v)| k == "SOURCE_DATE_EPOCH" && v == "1700000000"));
    }

    #[test]
    fn expressions_are_substituted() {
        assert_eq!(
            substitute("a ${{ github.sha }} b ${{secrets.X}}c", &|e| format!(
                "<{e}>"
            )),
            "a <github.sha> b <secrets.X>c"
        );
    }
}
