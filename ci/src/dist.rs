//! `cargo xtask dist`: minke as a self-contained tarball — `bin/minke`, and under
//! `share/minke/` the default packages, the kernel-config fragments, the examples and the
//! in-guest binary prebuilt for each architecture (`guest/minke-init`,
//! `guest/aarch64/minke-init`) — which works unpacked anywhere, with no
//! checkout. Reproducible: the files git tracks, in byte order, every timestamp
//! SOURCE_DATE_EPOCH, owners 0, modes 0755 or 0644.
//!
//! [`check`] is the test `cargo xtask test` runs on it: the tarball unpacked in a temporary
//! directory, the checkout hidden from it (an empty directory mounted over it in a private
//! mount namespace), then the default image and a user's spec with its own package built and
//! booted through the unpacked `minke`.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

/// The directories of the checkout a dist carries under `share/minke/`.
const DATA: &[&str] = &["packages", "kernel-config", "examples"];

pub fn run(sh: &Shell, args: &[String]) -> Result<()> {
    match args.first().map(String::as_str) {
        None => {}
        Some("--check") => return check(sh),
        Some(a) => bail!("unknown option {a:?}: cargo xtask dist [--check]"),
    }
    cmd!(sh, "cargo build --quiet --release -p minke-cli").run()?;
    let minke = crate::workspace_root().join("target/release/minke");
    let out = crate::workspace_root().join("target/dist");
    let tarball = make(sh, &minke, &out)?;
    println!("{}", tarball.display());
    Ok(())
}

/// Writes `OUT/minke-VERSION-x86_64-linux.tar.gz` around the `minke` binary `minke`.
pub fn make(sh: &Shell, minke: &Path, out: &Path) -> Result<PathBuf> {
    let ws = crate::workspace_root();
    let epoch = minke::epoch_from_env();
    let version = env!("CARGO_PKG_VERSION");
    let top = format!("minke-{version}-x86_64-linux");
    let cache = minke::layer::Cache::default_location();
    // The in-guest binary for every architecture, with what the SBOM of an image built by
    // this install lists for it: x86_64's in `guest/`, another's in `guest/ARCH/`.
    let mut files: Vec<(String, PathBuf, bool)> =
        vec![(format!("{top}/bin/minke"), minke.to_path_buf(), true)];
    let mut lists = Vec::new();
    for arch in minke_protocol::arch::Arch::ALL {
        eprintln!("xtask dist: the in-guest binary for {arch} (guest profile, static)");
        let init = minke::sources::package::build_guest_binary(
            &ws,
            &cache.dir("cargo-target"),
            epoch,
            "minke-init",
            "minke-init",
            arch,
        )
        .map_err(anyhow::Error::msg)?;
        let crates = minke::sources::package::crate_components(&ws, "minke-init", arch)
            .map_err(anyhow::Error::msg)?;
        let list = tmp_file(out, &serde_json::to_vec_pretty(&crates)?)?;
        let dir = match arch {
            minke_protocol::arch::Arch::X86_64 => format!("{top}/share/minke/guest"),
            other => format!("{top}/share/minke/guest/{other}"),
        };
        files.push((format!("{dir}/minke-init"), init, true));
        files.push((
            format!("{dir}/minke-init.components.json"),
            list.path().to_path_buf(),
            false,
        ));
        lists.push(list);
    }
    let listed = cmd!(sh, "git ls-files -z {DATA...}").read()?;
    for rel in listed.split('\0').filter(|r| !r.is_empty()) {
        let src = ws.join(rel);
        let md = std::fs::symlink_metadata(&src).with_context(|| format!("{}", src.display()))?;
        if !md.is_file() {
            continue;
        }
        let exec = std::os::unix::fs::PermissionsExt::mode(&md.permissions()) & 0o111 != 0;
        files.push((format!("{top}/share/minke/{rel}"), src, exec));
    }
    files.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));

    std::fs::create_dir_all(out)?;
    let path = out.join(format!("{top}.tar.gz"));
    let tmp = tempfile::NamedTempFile::new_in(out)?;
    let gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(tmp.reopen()?, flate2::Compression::new(9));
    let mut tar = tar::Builder::new(gz);
    tar.mode(tar::HeaderMode::Deterministic);
    let mut dirs_done: std::collections::BTreeSet<String> = Default::default();
    for (name, src, exec) in &files {
        // Parent directories first, once each.
        let mut parent = String::new();
        for part in name
            .split('/')
            .collect::<Vec<_>>()
            .split_last()
            .map(|x| x.1)
            .unwrap_or(&[])
        {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(part);
            if dirs_done.insert(parent.clone()) {
                let mut h = header(epoch, 0o755);
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                tar.append_data(&mut h, format!("{parent}/"), std::io::empty())?;
            }
        }
        let bytes = std::fs::read(src).with_context(|| format!("{}", src.display()))?;
        let mut h = header(epoch, if *exec { 0o755 } else { 0o644 });
        h.set_size(bytes.len() as u64);
        tar.append_data(&mut h, name, &bytes[..])?;
    }
    let mut gz = tar.into_inner()?;
    gz.flush()?;
    gz.finish()?.sync_all()?;
    tmp.persist(&path).map_err(|e| e.error)?;
    Ok(path)
}

fn tmp_file(dir: &Path, bytes: &[u8]) -> Result<tempfile::NamedTempFile> {
    std::fs::create_dir_all(dir)?;
    let mut f = tempfile::NamedTempFile::new_in(dir)?;
    f.write_all(bytes)?;
    Ok(f)
}

fn header(epoch: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_mtime(epoch);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mode(mode);
    h
}

/// The dist of the workspace's debug `minke` (what the test suite built), twice to compare
/// bytes, then unpacked and used with the checkout out of sight.
pub fn check(sh: &Shell) -> Result<()> {
    cmd!(sh, "cargo build --quiet -p minke-cli").run()?;
    let ws = crate::workspace_root();
    let minke = ws.join("target/debug/minke");
    // Outside the checkout, which is hidden below.
    let tmp = tempfile::tempdir()?;
    let a = make(sh, &minke, &tmp.path().join("a"))?;
    let b = {
        let _e = sh.push_env("TZ", "Pacific/Kiritimati");
        make(sh, &minke, &tmp.path().join("b"))?
    };
    if std::fs::read(&a)? != std::fs::read(&b)? {
        bail!(
            "two dist tarballs of the same inputs differ: {} {}",
            a.display(),
            b.display()
        );
    }
    let inst = tmp.path().join("inst");
    std::fs::create_dir_all(&inst)?;
    cmd!(sh, "tar -xzf {a} -C {inst}").run()?;
    let top = std::fs::read_dir(&inst)?
        .flatten()
        .next()
        .context("the tarball is empty")?
        .path();
    let bin = top.join("bin/minke");

    // A user's project: a spec with its own package, elsewhere.
    let proj = tmp.path().join("proj");
    std::fs::create_dir_all(proj.join("packages/hello/files"))?;
    std::fs::write(
        proj.join("packages/hello/package.yml"),
        "description: a user's own files\ndir:\n  path: files\n  dest: /opt/hello\n",
    )?;
    std::fs::write(
        proj.join("packages/hello/files/greeting"),
        "hello from a user package\n",
    )?;
    std::fs::write(
        proj.join("proj.yml"),
        "name: proj\nkernel:\n  package: linux-image-cloud-amd64\nagents: [control]\npackages:\n  - busybox-static\n  - hello\n",
    )?;
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty)?;
    let script = format!(
        "set -e\n\
         mount --bind '{empty}' '{ws}'\n\
         test ! -e '{ws}/Cargo.toml'\n\
         cd '{proj}'\n\
         '{bin}' build proj.yml -o out >/dev/null\n\
         '{bin}' run out --accel tcg --name dist-proj -- cat /opt/hello/greeting\n\
         '{bin}' run --accel tcg --name dist-default -- uname -s\n\
         '{bin}' run '{top}/share/minke/examples/aarch64.yml' --accel tcg --name dist-arm -- uname -m\n",
        empty = empty.display(),
        ws = ws.display(),
        proj = proj.display(),
        bin = bin.display(),
        top = top.display(),
    );
    let out = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .env_remove("MINKE_WORKSPACE")
        .env_remove("CARGO_MANIFEST_DIR")
        .output()
        .context("unshare (util-linux)")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || stdout != "hello from a user package\nLinux\naarch64\n" {
        bail!(
            "the unpacked dist failed with the checkout hidden ({}):\nstdout: {stdout}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    eprintln!("xtask dist check: the unpacked tarball built and ran a user's spec, the default image and the aarch64 example with the checkout hidden");
    run_ci_example(&a, tmp.path(), &empty)?;
    Ok(())
}

/// Runs the example CI workflow's steps with the checkout hidden: it installs minke from the
/// tarball `dist` (through its own download step), builds, boots and pushes to a registry on
/// 127.0.0.1 that demands the credentials the workflow's secret gives, in a home directory of
/// its own (sharing this machine's download cache).
fn run_ci_example(dist: &Path, tmp: &Path, empty: &Path) -> Result<()> {
    use crate::ci_example as ci;
    let ws = crate::workspace_root();
    let work = tmp.join("ci-workspace");
    ci::copy_example(&ws, &work)?;
    // A registry that demands credentials: the workflow's credentials step must work.
    let creds = "ci:token-for-the-example";
    let registry = crate::bench_registry::LocalRegistry::start(Some(creds));
    let auth = std::process::Command::new("base64")
        .arg("-w0")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write as _;
            c.stdin.take().expect("piped").write_all(creds.as_bytes())?;
            c.wait_with_output()
        })
        .context("base64 (coreutils)")?;
    let steps = ci::read_steps(&ws, String::from_utf8_lossy(&auth.stdout).trim())?;
    let runner = tmp.join("ci-runner");
    let home = tmp.join("ci-home");
    std::fs::create_dir_all(&home)?;
    let script = ci::script(&steps, &work, &runner, &ci::settings(dist, &registry.addr));
    let script_path = tmp.join("ci-steps.sh");
    std::fs::write(&script_path, &script)?;
    let hide = format!(
        "mount --bind '{}' '{}' && exec bash '{}'",
        empty.display(),
        ws.display(),
        script_path.display()
    );
    eprintln!(
        "xtask dist check: running the {} steps of {}/workflow.yml",
        steps.len(),
        ci::EXAMPLE
    );
    let out = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &hide])
        .env_remove("MINKE_WORKSPACE")
        .env_remove("CARGO_MANIFEST_DIR")
        .env("HOME", &home)
        .env(
            "MINKE_CACHE",
            minke::layer::Cache::default_location().root(),
        )
        .stdin(std::process::Stdio::null())
        .output()
        .context("unshare (util-linux)")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "the example CI workflow failed ({}):\nstdout: {stdout}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    ci::check_outcome(&stdout, &work)?;
    eprintln!(
        "xtask dist check: the example CI workflow installed minke, built, booted and pushed"
    );
    Ok(())
}
