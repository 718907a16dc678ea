//! apt as a package source: candidate versions (`apt-cache policy`), downloads (`apt-get
//! download`) into minke's cache with reuse of a cached file of the same name, version and
//! architecture, kernel meta-package resolution, and Debian's version order. Packages of
//! another architecture than the host's come through a private apt root of their own (the
//! host's sources, that architecture only), never through the host's dpkg configuration.

use std::cmp::Ordering;
use std::fs::{self};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::io_err;
use crate::layer::sha256_file;

use super::{check_package, DebError};

/// minke's cache directory: `$XDG_CACHE_HOME/minke`, else `$HOME/.cache/minke`.
pub fn cache_dir() -> PathBuf {
    match std::env::var_os("XDG_CACHE_HOME").map(PathBuf::from) {
        Some(p) if p.is_absolute() => p.join("minke"),
        _ => match std::env::var_os("HOME") {
            Some(h) if !h.is_empty() => PathBuf::from(h).join(".cache/minke"),
            _ => std::env::temp_dir().join("minke-cache"),
        },
    }
}

/// Where fetched packages are kept: `cache_dir()/debs`.
pub fn debs_dir() -> PathBuf {
    cache_dir().join("debs")
}

/// A package file in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedDeb {
    /// The .deb file.
    pub path: PathBuf,
    /// Package name.
    pub name: String,
    /// Exact version (with epoch, decoded).
    pub version: String,
    /// Architecture from the file name (`amd64`, `arm64`, `all`, …).
    pub arch: String,
    /// sha256 of the file, lowercase hex.
    pub sha256: String,
}

/// Splits `NAME_VERSION_ARCH.deb` into its parts, decoding `%3a` in the version.
pub fn parse_deb_file_name(file_name: &str) -> Option<(String, String, String)> {
    let stem = file_name.strip_suffix(".deb")?;
    let mut parts = stem.split('_');
    let (name, version, arch) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || name.is_empty() || version.is_empty() || arch.is_empty() {
        return None;
    }
    Some((
        name.to_string(),
        version.replace("%3a", ":").replace("%3A", ":"),
        arch.to_string(),
    ))
}

/// The cached .deb with this name (and exact version / architecture when given; `all` packages
/// match any architecture), the highest version when several match.
pub fn find_cached(
    dir: &Path,
    name: &str,
    version: Option<&str>,
    arch: Option<&str>,
) -> Option<PathBuf> {
    find_cached_by(dir, |n| n == name, version, arch)
}

fn find_cached_by(
    dir: &Path,
    name_ok: impl Fn(&str) -> bool,
    version: Option<&str>,
    arch: Option<&str>,
) -> Option<PathBuf> {
    let mut best: Option<(String, String, PathBuf)> = None;
    for entry in fs::read_dir(dir).ok()?.flatten() {
        let file_name = entry.file_name();
        let Some((n, v, a)) = file_name.to_str().and_then(parse_deb_file_name) else {
            continue;
        };
        if !name_ok(&n) || version.is_some_and(|want| want != v) {
            continue;
        }
        if arch.is_some_and(|want| want != a && a != "all") {
            continue;
        }
        let better = match &best {
            None => true,
            Some((bv, bn, _)) => match compare_versions(&v, bv) {
                Ordering::Greater => true,
                Ordering::Equal => n > *bn,
                Ordering::Less => false,
            },
        };
        if better {
            best = Some((v, n, entry.path()));
        }
    }
    best.map(|(_, _, p)| p)
}

/// A cached package by name (any version, highest first), looked up in [`debs_dir`] and then in
/// [`cache_dir`]. Tests use it to find inputs that `cargo xtask setup` fetched.
pub fn cached_deb(name: &str, arch: Option<&str>) -> Option<PathBuf> {
    [debs_dir(), cache_dir()]
        .iter()
        .find_map(|d| find_cached(d, name, None, arch))
}

/// The cached Debian cloud kernel image package (`linux-image-<abi>-cloud-amd64_…_amd64.deb`,
/// the highest version: what `cargo xtask setup` fetches, and what tests compare modules of),
/// or the file named by `$MINKE_KERNEL_DEB` when set. Other flavours in the cache (the
/// generic kernel some images boot) are not it.
pub fn cached_kernel_deb() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("MINKE_KERNEL_DEB").map(PathBuf::from) {
        return p.is_file().then_some(p);
    }
    let is_kernel = |n: &str| {
        n.strip_prefix("linux-image-")
            .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
            && n.ends_with("-cloud-amd64")
    };
    [debs_dir(), cache_dir()]
        .iter()
        .find_map(|d| find_cached_by(d, is_kernel, None, Some("amd64")))
}

/// The host's own Debian architecture (`dpkg --print-architecture`), if dpkg answers.
fn host_arch() -> Option<&'static str> {
    static ARCH: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    ARCH.get_or_init(|| {
        let out = Command::new("dpkg")
            .arg("--print-architecture")
            .output()
            .ok()?;
        let a = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (out.status.success() && !a.is_empty()).then_some(a)
    })
    .as_deref()
}

/// How long a private apt root's package lists are used before they are fetched again.
const LISTS_TTL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// apt's options for packages of `arch`: none for the host's own architecture; for another,
/// a private apt root under `root/ARCH` (its own package lists, an empty dpkg status, no
/// lock on the host's apt), with the host's sources and keyrings and `arch` as the only
/// architecture — so a foreign package is fetched without `dpkg --add-architecture` or
/// root. The lists are fetched the first time, then again after a day or with
/// `MINKE_REFRESH`.
fn apt_options(arch: Option<&str>, root: &Path) -> Result<Vec<String>, DebError> {
    let Some(arch) = arch.filter(|a| Some(*a) != host_arch() && *a != "all") else {
        return Ok(Vec::new());
    };
    let dir = root.join(arch);
    for d in ["state/lists/partial", "cache/archives/partial"] {
        fs::create_dir_all(dir.join(d)).map_err(io_err(&dir.join(d)))?;
    }
    let status = dir.join("status");
    if !status.exists() {
        fs::write(&status, b"").map_err(io_err(&status))?;
    }
    let p = |x: &Path| x.display().to_string();
    let opts: Vec<String> = [
        format!("Dir::State={}", p(&dir.join("state"))),
        format!("Dir::State::status={}", p(&status)),
        format!("Dir::Cache={}", p(&dir.join("cache"))),
        format!("APT::Architecture={arch}"),
        format!("APT::Architectures={arch}"),
        "Debug::NoLocking=true".into(),
        "Acquire::Languages=none".into(),
        "APT::Sandbox::User=root".into(),
    ]
    .into_iter()
    .flat_map(|o| ["-o".to_string(), o])
    .collect();
    let stamp = dir.join("state/lists/.minke-updated");
    let fresh = fs::metadata(&stamp)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age < LISTS_TTL);
    let refresh = std::env::var_os("MINKE_REFRESH").is_some_and(|v| !v.is_empty() && v != "0");
    if !fresh || refresh {
        // One update at a time per root (apt's own lock is off: the root is ours).
        let lock_path = dir.join("lock");
        let lock = fs::File::create(&lock_path).map_err(io_err(&lock_path))?;
        lock.lock().map_err(io_err(&lock_path))?;
        let mut args: Vec<&str> = opts.iter().map(String::as_str).collect();
        args.extend(["update", "-qq"]);
        run_apt("apt-get", &args, None, root)?;
        // apt-get update succeeds even when an index failed to download: only lists that
        // arrived (`…_Packages`, compressed or not) make the root fresh.
        let lists = dir.join("state/lists");
        let has_packages = fs::read_dir(&lists)
            .map_err(io_err(&lists))?
            .flatten()
            .any(|e| e.file_name().to_string_lossy().contains("_Packages"));
        if !has_packages {
            return Err(DebError::NoLists {
                arch: arch.to_string(),
                dir: dir.clone(),
            });
        }
        fs::write(&stamp, b"").map_err(io_err(&stamp))?;
    }
    Ok(opts)
}

fn run_apt(
    tool: &'static str,
    args: &[&str],
    cwd: Option<&Path>,
    cache: &Path,
) -> Result<String, DebError> {
    let mut cmd = Command::new(tool);
    cmd.args(args).env("LC_ALL", "C");
    if let Some(d) = cwd {
        cmd.current_dir(d);
    }
    let out = cmd.output().map_err(|source| DebError::AptMissing {
        tool,
        cache: cache.to_path_buf(),
        source,
    })?;
    if !out.status.success() {
        return Err(DebError::AptFailed {
            command: format!("{tool} {}", args.join(" ")),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The version apt would install for `spec` (`NAME` or `NAME:ARCH`), `None` when apt has no
/// candidate or cannot be asked.
pub fn candidate_version(spec: &str) -> Option<String> {
    candidate_with(spec, &[])
}

fn candidate_with(spec: &str, opts: &[String]) -> Option<String> {
    let mut args: Vec<&str> = opts.iter().map(String::as_str).collect();
    args.extend(["policy", "--", spec]);
    let out = run_apt("apt-cache", &args, None, Path::new("")).ok()?;
    out.lines()
        .find_map(|l| l.trim().strip_prefix("Candidate:"))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty() && v != "(none)")
}

/// Fetches package `name` (for `arch`, default the host's) into `cache_dir`, reusing a cached
/// file of the candidate version. Runs `apt-get download` in a temporary directory inside
/// `cache_dir` and moves the result into place, so an interrupted download leaves no partial
/// file under a final name. apt's warnings on stderr (e.g. "unsandboxed" as root) are ignored;
/// only the exit status counts.
pub fn fetch(name: &str, arch: Option<&str>, cache_dir: &Path) -> Result<FetchedDeb, DebError> {
    check_package(name, arch)?;
    fs::create_dir_all(cache_dir).map_err(io_err(cache_dir))?;
    let spec = match arch {
        Some(a) => format!("{name}:{a}"),
        None => name.to_string(),
    };
    let apt_root = cache_dir
        .parent()
        .map(|p| p.join("apt"))
        .unwrap_or_else(|| cache_dir.join("apt"));
    let opts = apt_options(arch, &apt_root)?;
    let version = candidate_with(&spec, &opts);
    let found = match &version {
        Some(v) => find_cached(cache_dir, name, Some(v), arch),
        None => find_cached(cache_dir, name, None, arch),
    };
    let path = match (found, version) {
        (Some(p), _) => p,
        (None, None) => {
            return Err(DebError::UnknownPackage {
                name: spec,
                cache: cache_dir.to_path_buf(),
            });
        }
        (None, Some(v)) => {
            let tmp = tempfile::Builder::new()
                .prefix(".download-")
                .tempdir_in(cache_dir)
                .map_err(io_err(cache_dir))?;
            let pinned = format!("{spec}={v}");
            let mut args: Vec<&str> = opts.iter().map(String::as_str).collect();
            args.extend(["download", "-q", "--", &pinned]);
            run_apt("apt-get", &args, Some(tmp.path()), cache_dir)?;
            let got = find_cached(tmp.path(), name, Some(&v), arch).ok_or_else(|| {
                DebError::DownloadMissing {
                    spec: pinned.clone(),
                    dir: cache_dir.to_path_buf(),
                }
            })?;
            let file_name = got
                .file_name()
                .map(|f| f.to_os_string())
                .unwrap_or_default();
            let dest = cache_dir.join(file_name);
            fs::rename(&got, &dest).map_err(io_err(&dest))?;
            dest
        }
    };
    let file_name = path
        .file_name()
        .and_then(|f| f.to_str())
        .unwrap_or_default();
    let (name, version, arch) =
        parse_deb_file_name(file_name).ok_or_else(|| DebError::DownloadMissing {
            spec: spec.clone(),
            dir: cache_dir.to_path_buf(),
        })?;
    let sha256 = sha256_file(&path).map_err(io_err(&path))?;
    Ok(FetchedDeb {
        path,
        name,
        version,
        arch,
        sha256,
    })
}

pub(super) fn is_versioned_kernel(name: &str) -> bool {
    name.strip_prefix("linux-image-")
        .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()))
}

/// The versioned kernel image package a meta package stands for:
/// `linux-image-cloud-amd64` → `linux-image-6.1.0-NN-cloud-amd64` (following `apt-cache
/// depends`, through further meta packages if needed). A versioned name is returned as is.
/// Without apt, the highest cached kernel package of the same flavour is taken.
pub fn resolve_kernel_package(name: &str) -> Result<String, DebError> {
    let mut current = name.to_string();
    let debs = debs_dir();
    let apt_root = debs.parent().map(|p| p.join("apt")).unwrap_or_default();
    let opts = apt_options(Some(kernel_package_arch(name)), &apt_root)?;
    for _ in 0..4 {
        check_package(&current, None)?;
        if is_versioned_kernel(&current) {
            return Ok(current);
        }
        let mut args: Vec<&str> = opts.iter().map(String::as_str).collect();
        args.extend(["depends", "--", &current]);
        let out = match run_apt("apt-cache", &args, None, &debs) {
            Ok(o) => o,
            Err(e @ DebError::AptMissing { .. }) => return cached_kernel_of_flavour(name).ok_or(e),
            Err(e) => return Err(e),
        };
        let deps: Vec<String> = out
            .lines()
            .filter_map(|l| l.trim().trim_start_matches('|').strip_prefix("Depends:"))
            .map(|d| d.trim().trim_matches(|c| c == '<' || c == '>').to_string())
            .filter(|d| d.starts_with("linux-image-"))
            .collect();
        current = match deps
            .iter()
            .find(|d| is_versioned_kernel(d))
            .or(deps.first())
        {
            Some(d) => d.clone(),
            None => {
                return cached_kernel_of_flavour(name).ok_or(DebError::NoKernelPackage {
                    name: name.to_string(),
                })
            }
        };
    }
    Err(DebError::NoKernelPackage {
        name: name.to_string(),
    })
}

/// The Debian architecture of a kernel package, from its flavour (`linux-image-cloud-arm64`,
/// `linux-image-6.1.0-57-arm64`): arm64 when the name says so, else amd64.
pub fn kernel_package_arch(name: &str) -> &'static str {
    if name.ends_with("arm64") {
        "arm64"
    } else {
        "amd64"
    }
}

fn cached_kernel_of_flavour(meta: &str) -> Option<String> {
    let flavour = meta.strip_prefix("linux-image-")?;
    let ok = |n: &str| is_versioned_kernel(n) && n.ends_with(&format!("-{flavour}"));
    let p = find_cached_by(&debs_dir(), ok, None, None)?;
    parse_deb_file_name(p.file_name()?.to_str()?).map(|(n, _, _)| n)
}

/// Compares two Debian version strings (`[epoch:]upstream[-revision]`) as dpkg does.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    fn split(v: &str) -> (u64, &str, &str) {
        let (epoch, rest) = match v.split_once(':') {
            Some((e, r)) if e.bytes().all(|c| c.is_ascii_digit()) => (e.parse().unwrap_or(0), r),
            _ => (0, v),
        };
        match rest.rsplit_once('-') {
            Some((u, r)) => (epoch, u, r),
            None => (epoch, rest, ""),
        }
    }
    fn order(c: Option<u8>) -> i32 {
        match c {
            None => 0,
            Some(b'~') => -1,
            Some(c) if c.is_ascii_digit() => 0,
            Some(c) if c.is_ascii_alphabetic() => i32::from(c),
            Some(c) => i32::from(c) + 256,
        }
    }
    fn verrevcmp(a: &[u8], b: &[u8]) -> Ordering {
        let (mut i, mut j) = (0, 0);
        while i < a.len() || j < b.len() {
            while (i < a.len() && !a[i].is_ascii_digit()) || (j < b.len() && !b[j].is_ascii_digit())
            {
                let ac = order(a.get(i).copied().filter(|c| !c.is_ascii_digit()));
                let bc = order(b.get(j).copied().filter(|c| !c.is_ascii_digit()));
                if ac != bc {
                    return ac.cmp(&bc);
                }
                if i < a.len() && !a[i].is_ascii_digit() {
                    i += 1;
                }
                if j < b.len() && !b[j].is_ascii_digit() {
                    j += 1;
                }
            }
            while i < a.len() && a[i] == b'0' {
                i += 1;
            }
            while j < b.len() && b[j] == b'0' {
                j += 1;
            }
            let si = i;
            while i < a.len() && a[i].is_ascii_digit() {
                i += 1;
            }
            let sj = j;
            while j < b.len() && b[j].is_ascii_digit() {
                j += 1;
            }
            let (da, db) = (&a[si..i], &b[sj..j]);
            match da.len().cmp(&db.len()).then_with(|| da.cmp(db)) {
                Ordering::Equal => {}
                o => return o,
            }
        }
        Ordering::Equal
    }
    let (ea, ua, ra) = split(a);
    let (eb, ub, rb) = split(b);
    ea.cmp(&eb)
        .then_with(|| verrevcmp(ua.as_bytes(), ub.as_bytes()))
        .then_with(|| verrevcmp(ra.as_bytes(), rb.as_bytes()))
}
