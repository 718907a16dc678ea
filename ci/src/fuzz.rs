//! `cargo xtask fuzz [--time SECONDS] [--runs N] [TARGET…]`: runs every cargo-fuzz target (or
//! the named ones) for a bounded time or number of runs and reports the executions done.

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

/// Every fuzz target under fuzz/fuzz_targets.
pub const TARGETS: &[&str] = &[
    "frame_decoder",
    "mux_decoder",
    "spec_parser",
    "package_parser",
    "modinfo_parser",
    "elf_resolver",
    "cpio_reader",
    "kernel_config",
    "image_config",
];

pub fn run(sh: &Shell, args: &[String]) -> Result<()> {
    let mut time = 10u64;
    let mut runs: Option<u64> = None;
    let mut targets = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--time" => time = it.next().context("--time needs seconds")?.parse()?,
            "--runs" => runs = Some(it.next().context("--runs needs a count")?.parse()?),
            t if TARGETS.contains(&t) => targets.push(t.to_string()),
            other => bail!(
                "unknown fuzz argument {other:?}; targets: {}",
                TARGETS.join(", ")
            ),
        }
    }
    if targets.is_empty() {
        targets = TARGETS.iter().map(|s| s.to_string()).collect();
    }
    if !crate::setup::cargo_bin("cargo-fuzz").exists() {
        cmd!(sh, "cargo install --locked cargo-fuzz")
            .run()
            .context("installing cargo-fuzz")?;
    }
    let root = sh.current_dir();
    let _dir = sh.push_dir("fuzz");
    // No sanitizer: every decoder is safe Rust, so what the fuzzer hunts is panics, overflows
    // (debug assertions stay on) and runaway allocation, which libFuzzer catches by itself; an
    // uninstrumented build runs about twice as many inputs in the same time.
    cmd!(sh, "cargo +nightly fuzz build --sanitizer none")
        .run()
        .context("building fuzz targets (needs the nightly toolchain)")?;
    let mut report = Vec::new();
    for t in &targets {
        let corpus = format!("corpus/{t}");
        sh.create_dir(&corpus)?;
        seed(sh, &root, t, &corpus)?;
        let limit = match runs {
            Some(n) => format!("-runs={n}"),
            None => format!("-max_total_time={time}"),
        };
        let max_len = max_len(t).to_string();
        let out = cmd!(
            sh,
            "cargo +nightly fuzz run --sanitizer none {t} {corpus} -- {limit} -max_len={max_len} -rss_limit_mb=2048 -print_final_stats=1"
        )
        .ignore_status()
        .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        let execs = stderr
            .lines()
            .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| "?".into());
        if !out.status.success() {
            eprintln!("{stderr}");
            bail!("fuzz target {t} found a crash (artifacts in fuzz/artifacts/{t}); turn it into a regression test");
        }
        report.push(format!("{t:<16} {execs:>12} executions"));
    }
    println!("fuzz results (-runs counts every input run, seeds included):");
    for r in report {
        println!("  {r}");
    }
    Ok(())
}

/// The longest input worth mutating: enough for any real header, spec or record, small enough
/// that a run does not spend its time copying megabytes.
fn max_len(target: &str) -> usize {
    match target {
        // Real ELF files and IKCONFIG-bearing images need room for their headers and tables.
        "elf_resolver" | "kernel_config" => 64 * 1024,
        _ => 8 * 1024,
    }
}

/// Starts a target's corpus from real inputs in the repository, so the fuzzer begins at valid
/// structure instead of rediscovering YAML or ELF from nothing. Seeds are copied once.
fn seed(sh: &Shell, root: &std::path::Path, target: &str, corpus: &str) -> Result<()> {
    let mut files: Vec<std::path::PathBuf> = Vec::new();
    let ls = |dir: &str, ext: &str| -> Vec<std::path::PathBuf> {
        let dir = root.join(dir);
        minke::fsutil::walk_sorted(&dir, |_| false)
            .unwrap_or_default()
            .into_iter()
            .filter(|e| !e.file_type.is_dir() && e.rel.extension().is_some_and(|x| x == ext))
            .map(|e| dir.join(e.rel))
            .collect()
    };
    match target {
        "spec_parser" => files.extend(ls("examples", "yml")),
        "package_parser" => files.extend(ls("packages", "yml")),
        "kernel_config" => files.extend(ls("kernel-config", "config")),
        "image_config" => {
            // A config with every kind of entry, as the builder encodes it.
            let dest = root.join("fuzz").join(corpus).join("seed-image.cfg");
            if !dest.exists() {
                let cfg: minke_protocol::ImageConfig = serde_json::from_str(SEED_CONFIG)
                    .context("the image_config seed is not an image config")?;
                std::fs::write(&dest, cfg.encode())
                    .with_context(|| format!("writing {}", dest.display()))?;
            }
        }
        // A small static executable and a small shared library with a DT_NEEDED entry.
        "elf_resolver" => files.extend(
            ["/usr/bin/true", "/usr/lib/x86_64-linux-gnu/libattr.so.1"]
                .iter()
                .map(std::path::PathBuf::from)
                .filter(|p| p.exists()),
        ),
        _ => {}
    }
    for f in files {
        let name = f
            .strip_prefix(root)
            .unwrap_or(&f)
            .to_string_lossy()
            .replace('/', "_");
        let dest = std::path::Path::new(corpus).join(format!("seed-{name}"));
        if !sh.path_exists(&dest) {
            let dest = sh.current_dir().join(&dest);
            let data =
                std::fs::read(&f).with_context(|| format!("reading seed {}", f.display()))?;
            let data = &data[..data.len().min(max_len(target))];
            std::fs::write(&dest, data).with_context(|| format!("writing {}", dest.display()))?;
        }
    }
    Ok(())
}

/// The `image_config` seed (JSON of `minke_protocol::ImageConfig`, encoded before use).
const SEED_CONFIG: &str = r#"{"name":"seed","hostname":"seed","modules":[{"name":"vsock","path":"/lib/modules/vsock.ko"},{"name":"vmw_vsock_virtio_transport","path":"/lib/modules/t.ko","params":"x=1"}],
  "sysctls":{"vm.swappiness":"0"},"rlimits":[{"resource":"nofile","soft":1024,"hard":4096}],
  "disks":[{"label":"var","mountpoint":"/var","fstype":"ext4"}],
  "onboot":[{"name":"prep","command":{"argv":["/bin/sh","-c","true"],"env":{"A":"1"}},"on_failure":"poweroff","timeout_ms":5000}],
  "agents":[{"kind":"control","port":1024},{"kind":"timesync","after":["serial"]},{"kind":"serial"},{"kind":"binfmt"}],
  "services":[{"name":"web","command":{"argv":["/bin/httpd","-f"],"cwd":"/www","uid":1,"gid":1},
    "restart":"always","after":["control"],"readiness":"notify","exit_on_stop":true,"oom_score_adj":100}],
  "onshutdown":[],"binfmt":[{"name":"qemu-aarch64","interpreter":"/usr/bin/qemu-aarch64-static",
    "magic":[127,69,76,70],"mask":[255,255,255,255],"flags":"F"}],
  "containers":[{"name":"arm64","rootfs":"/containers/arm64"}],"shutdown_grace_ms":3000}"#;

#[cfg(test)]
mod tests {
    #[test]
    fn the_image_config_seed_is_an_image_config() {
        let cfg: minke_protocol::ImageConfig =
            serde_json::from_str(super::SEED_CONFIG).expect("seed parses");
        assert_eq!(
            minke_protocol::ImageConfig::decode(&cfg.encode()).unwrap(),
            cfg
        );
        assert!(!cfg.services.is_empty() && !cfg.binfmt.is_empty());
    }
}
