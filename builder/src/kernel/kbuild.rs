//! Builds a kernel with no modules from `kernel-config/` fragments: `make tinyconfig`, the
//! fragments merged with the kernel's own `scripts/kconfig/merge_config.sh`, `olddefconfig`,
//! a check that every fragment line survived, then `make bzImage` (x86_64) or `make Image`
//! (aarch64) out of tree, with the cross compiler (`aarch64-linux-gnu-gcc`,
//! `x86_64-linux-gnu-gcc`) when the host is of the other architecture. With CONFIG_PVH the
//! stripped `vmlinux` is kept too: images boot it directly (PVH entry), which skips the
//! bzImage's setup code and decompression.
//!
//! The result is cached under `kernels/built/KEY` where KEY hashes the source, the fragments,
//! the toolchain and SOURCE_DATE_EPOCH. The build is reproducible: the timestamp, user, host
//! and build number the kernel records are fixed, the source is never written to, and the
//! build directory's path depends only on KEY.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use crate::error::io_err;
use crate::fsutil::walk_sorted;
use crate::kernel::kconfig::{self, KernelConfig};
use crate::layer::{sha256_file, Cache};

/// Bumped when the recipe changes, so old cache entries are not reused.
const RECIPE: &str = "minke kernel build 2";

/// Where the Linux source comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Debian's `linux-source-*` package (`/usr/src/linux-source-*.tar.xz`).
    Debian,
    /// An unpacked, unconfigured source tree.
    Dir(PathBuf),
}

/// What to build.
#[derive(Debug, Clone)]
pub struct Options {
    /// Source.
    pub source: Source,
    /// Fragment files, merged in this order.
    pub fragments: Vec<PathBuf>,
    /// `x86_64` or `aarch64`.
    pub arch: String,
    /// SOURCE_DATE_EPOCH, recorded as the build timestamp.
    pub epoch: u64,
    /// Parallel jobs for make.
    pub jobs: usize,
}

/// A built kernel in the cache.
#[derive(Debug, Clone)]
pub struct Built {
    /// The bootable kernel: the bzImage (x86_64) or the uncompressed `Image` (aarch64, which
    /// QEMU and UEFI load as it is).
    pub image: PathBuf,
    /// The uncompressed kernel, stripped, when it has a PVH entry: QEMU boots it directly,
    /// skipping the bzImage's real-mode setup and decompression.
    pub vmlinux: Option<PathBuf>,
    /// Its final `.config`.
    pub config: PathBuf,
    /// `make kernelrelease`.
    pub release: String,
    /// Cache key.
    pub key: String,
    /// Whether it came from the cache.
    pub cached: bool,
}

/// Why a kernel could not be built.
#[derive(Debug, thiserror::Error)]
pub enum KbuildError {
    /// No source found.
    #[error("{0}")]
    Source(String),
    /// A fragment could not be read.
    #[error(transparent)]
    Fragment(#[from] kconfig::KconfigError),
    /// Fragment options that olddefconfig dropped.
    #[error(
        "these fragment options did not survive `make olddefconfig` (their dependencies are not \
         met: add those to a fragment too):\n{0}"
    )]
    Dropped(String),
    /// A build step failed.
    #[error("{step} failed ({status}); the last lines of its output:\n{tail}")]
    Step {
        /// The command.
        step: String,
        /// Exit status.
        status: String,
        /// Its last output lines.
        tail: String,
    },
    /// I/O.
    #[error("cannot access {path}")]
    Io {
        /// Path.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
}

crate::error::into_io_variant!(KbuildError);

/// The newest `/usr/src/linux-source-*.tar.xz`.
pub fn debian_source_tarball() -> Result<PathBuf, KbuildError> {
    let mut found: Vec<PathBuf> = glob::glob("/usr/src/linux-source-*.tar.xz")
        .map_err(|e| KbuildError::Source(e.to_string()))?
        .flatten()
        .collect();
    found.sort_by_key(|p| version_key(&p.to_string_lossy()));
    found.pop().ok_or_else(|| {
        KbuildError::Source(
            "no Linux source: install Debian's source package (`apt-get install linux-source`, \
             or run `cargo xtask setup`) or pass --source DIR"
                .into(),
        )
    })
}

/// Sort key for `linux-source-6.10.tar.xz` > `linux-source-6.9.tar.xz`.
fn version_key(s: &str) -> Vec<u64> {
    s.split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect()
}

/// How one architecture's kernel is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Target {
    /// The kernel's name for it (`ARCH=`).
    kernel_arch: &'static str,
    /// The make target, and where it leaves the kernel in the build tree.
    make_target: &'static str,
    built_at: &'static str,
    /// The name in the cache.
    file: &'static str,
    /// The cross toolchain's prefix, used when the host is of another architecture, and
    /// Debian's package of its compiler.
    cross: &'static str,
    cross_package: &'static str,
}

impl Target {
    fn of(arch: &str) -> Result<Target, KbuildError> {
        match arch {
            "x86_64" => Ok(Target {
                kernel_arch: "x86_64",
                make_target: "bzImage",
                built_at: "arch/x86/boot/bzImage",
                file: "bzImage",
                cross: "x86_64-linux-gnu-",
                cross_package: "gcc-x86-64-linux-gnu",
            }),
            "aarch64" => Ok(Target {
                kernel_arch: "arm64",
                make_target: "Image",
                built_at: "arch/arm64/boot/Image",
                file: "Image",
                cross: "aarch64-linux-gnu-",
                cross_package: "gcc-aarch64-linux-gnu",
            }),
            other => Err(KbuildError::Source(format!(
                "building a kernel for {other} is not supported: minke builds x86_64 and aarch64 \
                 kernels"
            ))),
        }
    }

    /// `CROSS_COMPILE`: empty on a host of the same architecture.
    fn cross_compile(&self, arch: &str) -> &'static str {
        if std::env::consts::ARCH == arch {
            ""
        } else {
            self.cross
        }
    }
}

/// Builds the kernel, or returns the cached one.
pub fn build(opts: &Options, cache: &Cache, progress: &dyn Fn(&str)) -> Result<Built, KbuildError> {
    let target = Target::of(&opts.arch)?;
    let cross = target.cross_compile(&opts.arch);
    if !cross.is_empty()
        && Command::new(format!("{cross}gcc"))
            .arg("--version")
            .output()
            .is_err()
    {
        return Err(KbuildError::Source(format!(
            "building an {} kernel on this host needs the cross compiler {cross}gcc: install \
             Debian's {}",
            opts.arch, target.cross_package
        )));
    }
    // Each fragment is read once: the same bytes are hashed, checked and merged, so an edit
    // during a build cannot slip in under the old key.
    let fragments: Vec<(PathBuf, Vec<u8>)> = opts
        .fragments
        .iter()
        .map(|f| std::fs::read(f).map(|b| (f.clone(), b)).map_err(io_err(f)))
        .collect::<Result<_, _>>()?;
    let reqs = kconfig::requirements_of(
        &fragments
            .iter()
            .map(|(p, b)| (p.clone(), String::from_utf8_lossy(b).into_owned()))
            .collect::<Vec<_>>(),
    )?;
    progress("kernel: hashing the source");
    let (source_id, tree) = match &opts.source {
        Source::Debian => {
            let tarball = debian_source_tarball()?;
            let sha = sha256_file(&tarball).map_err(io_err(&tarball))?;
            (
                format!("debian {} sha256:{sha}", tarball.display()),
                Tree::Tarball(tarball, sha),
            )
        }
        Source::Dir(dir) => {
            for configured in [".config", "include/config"] {
                if dir.join(configured).exists() {
                    return Err(KbuildError::Source(format!(
                        "{} has been configured in place ({configured} exists): run `make mrproper` \
                         there first (minke builds out of tree and never writes to the source)",
                        dir.display()
                    )));
                }
            }
            if !dir.join("scripts/kconfig/merge_config.sh").is_file() {
                return Err(KbuildError::Source(format!(
                    "{} is not a Linux source tree (no scripts/kconfig/merge_config.sh)",
                    dir.display()
                )));
            }
            let sha = hash_tree(dir)?;
            (
                format!("{} tree:{sha}", dir.display()),
                Tree::Dir(dir.clone()),
            )
        }
    };
    let mut h = Sha256::new();
    h.update(format!("{RECIPE}\n{}\n{}\n", opts.arch, opts.epoch));
    if !cross.is_empty() {
        h.update(format!("cross {cross}\n"));
    }
    h.update(source_id.split(' ').next_back().unwrap_or_default());
    for (f, text) in &fragments {
        h.update(format!(
            "\nfragment {} {}\n",
            f.file_name().unwrap_or_default().to_string_lossy(),
            text.len()
        ));
        h.update(text);
    }
    for tool in [format!("{cross}gcc"), format!("{cross}ld"), "make".into()] {
        h.update(format!("\n{}", tool_version(&tool)));
    }
    if !cross.is_empty() {
        // The host compiler builds the kernel's own tools (kconfig, fixdep, …).
        h.update(format!("\nhost {}", tool_version("gcc")));
    }
    let key = hex::encode(h.finalize());
    let out = cache.dir("kernels").join("built").join(&key);
    let record = out.join("release");
    if let Ok(release) = std::fs::read_to_string(&record) {
        return Ok(Built {
            image: out.join(target.file),
            vmlinux: Some(out.join("vmlinux")).filter(|p| p.is_file()),
            config: out.join("config"),
            release: release.trim().to_owned(),
            key,
            cached: true,
        });
    }

    let src = match tree {
        Tree::Tarball(tarball, sha) => unpack_source(&tarball, &sha, cache, progress)?,
        Tree::Dir(d) => d,
    };
    let build = cache.dir("kernels").join("build").join(&key);
    let _ = std::fs::remove_dir_all(&build);
    std::fs::create_dir_all(&build).map_err(io_err(&build))?;
    let make = |args: &[&str]| {
        let mut c = Command::new("make");
        c.arg("-C")
            .arg(&src)
            .arg(format!("O={}", build.display()))
            .arg(format!("ARCH={}", target.kernel_arch));
        if !cross.is_empty() {
            c.arg(format!("CROSS_COMPILE={cross}"));
        }
        c.args(args);
        reproducible_env(&mut c, opts.epoch);
        c
    };

    progress("kernel: make tinyconfig");
    run(make(&["tinyconfig"]), "make tinyconfig", &|_| {})?;
    progress("kernel: merging fragments");
    let frag_dir = build.join("minke-fragments");
    std::fs::create_dir_all(&frag_dir).map_err(io_err(&frag_dir))?;
    let mut copies = Vec::new();
    for (i, (f, text)) in fragments.iter().enumerate() {
        let name = f.file_name().unwrap_or_default().to_string_lossy();
        let copy = frag_dir.join(format!("{i:02}-{name}"));
        std::fs::write(&copy, text).map_err(io_err(&copy))?;
        copies.push(copy);
    }
    let mut merge = Command::new(src.join("scripts/kconfig/merge_config.sh"));
    merge
        .arg("-m")
        .arg("-O")
        .arg(&build)
        .arg(build.join(".config"))
        .args(&copies);
    merge.current_dir(&build);
    reproducible_env(&mut merge, opts.epoch);
    run(merge, "merge_config.sh", &|_| {})?;
    run(make(&["olddefconfig"]), "make olddefconfig", &|_| {})?;
    let cfg_path = build.join(".config");
    let cfg = KernelConfig::parse(&std::fs::read_to_string(&cfg_path).map_err(io_err(&cfg_path))?);
    let dropped = dropped_options(&cfg, &reqs);
    if !dropped.is_empty() {
        return Err(KbuildError::Dropped(dropped));
    }

    let steps_file = cache
        .dir("kernels")
        .join("built")
        .join(match opts.arch.as_str() {
            "x86_64" => "steps".to_owned(),
            other => format!("steps-{other}"),
        });
    let expected: usize = std::fs::read_to_string(&steps_file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1500);
    let count = std::cell::Cell::new(0usize);
    let jobs = format!("-j{}", opts.jobs.max(1));
    let step = format!("make {}", target.make_target);
    run(make(&[&jobs, target.make_target]), &step, &|line| {
        let t = line.trim_start();
        if let Some((tag, what)) = t.split_once(char::is_whitespace) {
            if matches!(
                tag,
                "CC" | "AS" | "LD" | "AR" | "HOSTCC" | "GEN" | "OBJCOPY"
            ) {
                count.set(count.get() + 1);
                progress(&format!(
                    "kernel: [{}/~{expected}] {tag} {}",
                    count.get(),
                    what.trim()
                ));
            }
        }
    })?;
    let release_path = build.join("include/config/kernel.release");
    let release = std::fs::read_to_string(&release_path).map_err(io_err(&release_path))?;

    // Publish atomically: fill a sibling directory, then rename it into place.
    let tmp = out.with_extension("tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
    for (from, to) in [(target.built_at, target.file), (".config", "config")] {
        let f = build.join(from);
        std::fs::copy(&f, tmp.join(to)).map_err(io_err(&f))?;
    }
    if cfg.get("CONFIG_PVH") == "y" {
        let mut strip = Command::new(format!("{cross}objcopy"));
        strip
            .arg("--strip-all")
            .arg(build.join("vmlinux"))
            .arg(tmp.join("vmlinux"));
        run(strip, "objcopy --strip-all vmlinux", &|_| {})?;
    }
    std::fs::write(tmp.join("release"), &release).map_err(io_err(&tmp))?;
    let _ = std::fs::remove_dir_all(&out);
    std::fs::rename(&tmp, &out).map_err(io_err(&out))?;
    let _ = std::fs::write(&steps_file, count.get().to_string());
    let _ = std::fs::remove_dir_all(&build);
    Ok(Built {
        image: out.join(target.file),
        vmlinux: Some(out.join("vmlinux")).filter(|p| p.is_file()),
        config: out.join("config"),
        release: release.trim().to_owned(),
        key,
        cached: false,
    })
}

enum Tree {
    Tarball(PathBuf, String),
    Dir(PathBuf),
}

/// Fragment lines whose option ended up with another value, one per line with file:line.
pub fn dropped_options(cfg: &KernelConfig, reqs: &[kconfig::Requirement]) -> String {
    reqs.iter()
        .filter(|r| cfg.get(&r.option) != r.want)
        .map(|r| {
            format!(
                "  {}={} ({}:{}) is {}\n",
                r.option,
                r.want,
                r.file.display(),
                r.line,
                cfg.get(&r.option)
            )
        })
        .collect()
}

/// Environment that keeps the kernel's build records fixed.
fn reproducible_env(c: &mut Command, epoch: u64) {
    c.env("KBUILD_BUILD_TIMESTAMP", rfc2822(epoch))
        .env("KBUILD_BUILD_USER", "minke")
        .env("KBUILD_BUILD_HOST", "minke")
        .env("KBUILD_BUILD_VERSION", "1")
        .env("SOURCE_DATE_EPOCH", epoch.to_string())
        .env("LC_ALL", "C")
        .env("TZ", "UTC")
        .env_remove("KCONFIG_CONFIG")
        .env_remove("MAKEFLAGS")
        .env_remove("MFLAGS");
}

/// `Thu, 01 Jan 1970 00:00:00 +0000` for a Unix time (what `date -R` prints, and what the
/// kernel's scripts accept).
pub fn rfc2822(epoch: u64) -> String {
    let c = crate::Civil::of(epoch);
    const WD: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MON: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} +0000",
        WD[c.days.rem_euclid(7) as usize],
        c.day,
        MON[(c.month - 1) as usize],
        c.year,
        c.secs / 3600,
        c.secs / 60 % 60,
        c.secs % 60
    )
}

fn tool_version(tool: &str) -> String {
    Command::new(tool)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_owned))
        .unwrap_or_else(|| format!("{tool}: not found"))
}

/// Runs `cmd`, feeding each output line to `line` and keeping the last ones for the error.
fn run(mut cmd: Command, step: &str, line: &dyn Fn(&str)) -> Result<(), KbuildError> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| KbuildError::Step {
            step: step.into(),
            status: format!("could not start: {e}"),
            tail: "(install the kernel build tools: `cargo xtask setup` installs make, gcc, flex, bison, bc and libelf-dev)".into(),
        })?;
    // stderr on its own thread into the same tail, so neither pipe fills up.
    let stderr = child.stderr.take().map(|e| {
        std::thread::spawn(move || {
            // Drain it all (a full pipe would stall make), keeping the last lines.
            let mut last: VecDeque<String> = VecDeque::new();
            for l in BufReader::new(e).lines() {
                let Ok(l) = l else { break };
                if last.len() == 40 {
                    last.pop_front();
                }
                last.push_back(l);
            }
            last.into_iter().collect::<Vec<_>>().join("\n")
        })
    });
    let mut tail: VecDeque<String> = VecDeque::new();
    if let Some(out) = child.stdout.take() {
        for l in BufReader::new(out).lines() {
            let Ok(l) = l else { break };
            line(&l);
            if tail.len() == 40 {
                tail.pop_front();
            }
            tail.push_back(l);
        }
    }
    let status = child.wait().map_err(|e| KbuildError::Step {
        step: step.into(),
        status: e.to_string(),
        tail: String::new(),
    })?;
    let err = stderr.and_then(|t| t.join().ok()).unwrap_or_default();
    if status.success() {
        return Ok(());
    }
    let mut all: Vec<String> = tail.into_iter().collect();
    all.extend(err.lines().map(str::to_owned));
    let n = all.len().saturating_sub(40);
    Err(KbuildError::Step {
        step: step.into(),
        status: status.to_string(),
        tail: all[n..].join("\n"),
    })
}

/// Content hash of a source tree: sorted relative paths, modes, symlink targets and bytes
/// (`.git` skipped).
fn hash_tree(root: &Path) -> Result<String, KbuildError> {
    use std::os::unix::fs::PermissionsExt;
    let mut files: Vec<PathBuf> = walk_sorted(root, |n| n == ".git")?
        .into_iter()
        .filter(|e| !e.file_type.is_dir())
        .map(|e| e.rel)
        .collect();
    files.sort_by(|a, b| hash_order(a, b));
    let mut h = Sha256::new();
    for r in files {
        let p = root.join(&r);
        let md = std::fs::symlink_metadata(&p).map_err(io_err(&p))?;
        h.update(r.to_string_lossy().as_bytes());
        if md.file_type().is_symlink() {
            let t = std::fs::read_link(&p).map_err(io_err(&p))?;
            h.update(b"\0l");
            h.update(t.to_string_lossy().as_bytes());
        } else {
            h.update(format!(
                "\0{:o}\0{}\0",
                md.permissions().mode() & 0o111,
                md.len()
            ));
            let mut f = std::fs::File::open(&p).map_err(io_err(&p))?;
            std::io::copy(&mut f, &mut h).map_err(io_err(&p))?;
        }
    }
    Ok(hex::encode(h.finalize()))
}

/// The order [`hash_tree`] has always fed files in, kept so that kernels built before stay
/// cached: in each directory its files, last name first, then its subdirectories in name order.
fn hash_order(a: &Path, b: &Path) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    let (mut ca, mut cb) = (a.components(), b.components());
    loop {
        match (ca.next(), cb.next()) {
            (Some(x), Some(y)) if x == y => {}
            (Some(x), Some(y)) => {
                let x_is_file = ca.next().is_none();
                let y_is_file = cb.next().is_none();
                return match (x_is_file, y_is_file) {
                    (true, true) => y.cmp(&x),
                    (true, false) => Ordering::Less,
                    (false, true) => Ordering::Greater,
                    (false, false) => x.cmp(&y),
                };
            }
            (x, y) => return x.cmp(&y),
        }
    }
}

/// Unpacks the source tarball into `kernels/source/SHA` once; returns the tree's top directory.
fn unpack_source(
    tarball: &Path,
    sha: &str,
    cache: &Cache,
    progress: &dyn Fn(&str),
) -> Result<PathBuf, KbuildError> {
    let dest = cache.dir("kernels").join("source").join(sha);
    let done = dest.join(".complete");
    if !done.exists() {
        progress(&format!("kernel: unpacking {}", tarball.display()));
        let tmp = dest.with_extension("tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
        let f = std::fs::File::open(tarball).map_err(io_err(tarball))?;
        let mut ar = tar::Archive::new(xz2::read::XzDecoder::new(std::io::BufReader::new(f)));
        ar.set_preserve_permissions(true);
        ar.unpack(&tmp).map_err(io_err(tarball))?;
        std::fs::write(tmp.join(".complete"), b"").map_err(io_err(&tmp))?;
        let _ = std::fs::remove_dir_all(&dest);
        std::fs::rename(&tmp, &dest).map_err(io_err(&dest))?;
    }
    // The tarball holds one top directory (`linux-source-6.1/`).
    let top = std::fs::read_dir(&dest)
        .map_err(io_err(&dest))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.join("Makefile").is_file())
        .ok_or_else(|| {
            KbuildError::Source(format!("{} holds no kernel source tree", tarball.display()))
        })?;
    Ok(top)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_feeds_its_files_last_name_first_then_its_subdirectories() {
        let mut v: Vec<PathBuf> = ["a/b/k", "z/1", "a/a", "x", "a/y", "b"]
            .iter()
            .map(PathBuf::from)
            .collect();
        v.sort_by(|a, b| hash_order(a, b));
        let want: Vec<PathBuf> = ["x", "b", "a/y", "a/a", "a/b/k", "z/1"]
            .iter()
            .map(PathBuf::from)
            .collect();
        assert_eq!(v, want);
    }

    #[test]
    fn each_architecture_has_its_make_target_and_cross_compiler() {
        let x = Target::of("x86_64").unwrap();
        assert_eq!((x.kernel_arch, x.make_target), ("x86_64", "bzImage"));
        let a = Target::of("aarch64").unwrap();
        assert_eq!(
            (a.kernel_arch, a.built_at, a.cross),
            ("arm64", "arch/arm64/boot/Image", "aarch64-linux-gnu-")
        );
        // No cross compiler for the host's own architecture.
        let host = std::env::consts::ARCH;
        assert_eq!(Target::of(host).unwrap().cross_compile(host), "");
        let e = Target::of("s390x").unwrap_err().to_string();
        assert!(e.contains("x86_64 and aarch64"), "{e}");
    }

    #[test]
    fn rfc2822_dates() {
        assert_eq!(rfc2822(0), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(rfc2822(951_782_400), "Tue, 29 Feb 2000 00:00:00 +0000");
        assert_eq!(rfc2822(1_700_000_000), "Tue, 14 Nov 2023 22:13:20 +0000");
    }

    #[test]
    fn newest_source_wins() {
        let mut v = [
            "linux-source-6.9.tar.xz",
            "linux-source-6.10.tar.xz",
            "linux-source-5.19.tar.xz",
        ];
        v.sort_by_key(|s| version_key(s));
        assert_eq!(v[2], "linux-source-6.10.tar.xz");
    }

    #[test]
    fn a_step_with_lots_of_stderr_neither_stalls_nor_loses_its_tail() {
        let mut ok = Command::new("sh");
        ok.args([
            "-c",
            "i=0; while [ $i -lt 200000 ]; do echo warning-line >&2; i=$((i+1)); done; echo done",
        ]);
        let seen = std::cell::Cell::new(0);
        run(ok, "noisy", &|_| seen.set(seen.get() + 1)).unwrap();
        assert_eq!(seen.get(), 1);
        let mut bad = Command::new("sh");
        bad.args(["-c", "echo compiling; echo 'error: it broke' >&2; exit 2"]);
        match run(bad, "broken", &|_| {}) {
            Err(KbuildError::Step { step, tail, .. }) => {
                assert_eq!(step, "broken");
                assert!(
                    tail.contains("compiling") && tail.contains("error: it broke"),
                    "{tail}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn dropped_options_name_the_fragment_line() {
        let reqs = kconfig::parse_fragment(
            Path::new("base.config"),
            "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=y\n",
        )
        .unwrap();
        let cfg = KernelConfig::parse("CONFIG_A=y\nCONFIG_B=y\n");
        let d = dropped_options(&cfg, &reqs);
        assert!(d.contains("CONFIG_B=n (base.config:2) is y"), "{d}");
        assert!(d.contains("CONFIG_C=y (base.config:3) is n"), "{d}");
        assert!(!d.contains("CONFIG_A"), "{d}");
    }
}
