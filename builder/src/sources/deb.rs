//! Debian packages: fetched with `apt-get download` into minke's cache and unpacked in-process
//! (ar → `data.tar.{xz,zst,gz}` → tar) into [`Tree`]s, plus the kernel files of a kernel package.
//!
//! # Cache layout and keys
//! Packages live in `$XDG_CACHE_HOME/minke/debs/` (default `~/.cache/minke/debs/`) under the
//! file names apt gives them, `NAME_VERSION_ARCH.deb` with the epoch colon written `%3a`.
//! [`fetch`] asks `apt-cache policy` for the candidate version and reuses a cached file with
//! exactly that name, version and architecture; only when apt knows no candidate (no package
//! lists, offline use) does it fall back to the highest cached version of that name.

use std::cell::Cell;
use std::cmp::Ordering;
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::rc::Rc;

use crate::archive::tree::{self, FileData, Node, NodeKind, Tree, TreeError};
use crate::error::io_err;
use crate::layer::sha256_file;

/// Errors of fetching and unpacking Debian packages.
#[derive(Debug, thiserror::Error)]
pub enum DebError {
    /// An apt tool could not be started.
    #[error("cannot run `{tool}`: install apt (Debian/Ubuntu host) or put the .deb into {cache}")]
    AptMissing {
        /// The program.
        tool: &'static str,
        /// The cache directory a .deb could be placed in by hand.
        cache: PathBuf,
        /// Why it could not start.
        source: io::Error,
    },
    /// An apt command exited with failure.
    #[error("`{command}` failed ({status}): {stderr}")]
    AptFailed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it printed on stderr.
        stderr: String,
    },
    /// apt knows no such package and the cache has none.
    #[error("package {name} is unknown to apt and not cached in {cache}: run `apt-get update` or check the name")]
    UnknownPackage {
        /// The package.
        name: String,
        /// The cache directory searched.
        cache: PathBuf,
    },
    /// A meta package did not lead to a versioned kernel image package.
    #[error("cannot find the kernel image package {name} depends on: check the name (e.g. linux-image-cloud-amd64) and run `apt-get update`")]
    NoKernelPackage {
        /// The meta package.
        name: String,
    },
    /// A package name or architecture apt must never see.
    #[error("{problem}")]
    InvalidName {
        /// What is wrong with it.
        problem: String,
    },
    /// `apt-get download` succeeded but left no matching file.
    #[error(
        "`apt-get download {spec}` left no .deb in {dir}: download it by hand into that directory"
    )]
    DownloadMissing {
        /// The package spec.
        spec: String,
        /// Where it should be.
        dir: PathBuf,
    },
    /// A file system operation failed.
    #[error("cannot access {path}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The ar container is malformed.
    #[error("{deb} is not a valid .deb (ar archive)")]
    Ar {
        /// The package file.
        deb: PathBuf,
        /// The reader's error.
        source: io::Error,
    },
    /// The ar container has no data member.
    #[error("{deb} has no data.tar member: it is not a binary Debian package")]
    NoData {
        /// The package file.
        deb: PathBuf,
    },
    /// The data member uses a compression this reader does not know.
    #[error("{deb} has data member {member} with an unsupported compression: only xz, zstd, gzip and none are read")]
    Compression {
        /// The package file.
        deb: PathBuf,
        /// The member's name.
        member: String,
    },
    /// The data tar is malformed or truncated.
    #[error("{deb}: cannot read data.tar")]
    Tar {
        /// The package file.
        deb: PathBuf,
        /// The reader's error.
        source: io::Error,
    },
    /// An entry leaves the package root (absolute or with `..`) or goes through a symlink.
    #[error("{deb} has entry {path:?} outside the package root: refusing to unpack it")]
    Escape {
        /// The package file.
        deb: PathBuf,
        /// The entry.
        path: String,
    },
    /// An entry cannot be represented.
    #[error("{deb}: entry {path:?}: {reason}")]
    BadEntry {
        /// The package file.
        deb: PathBuf,
        /// The entry.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// An entry was refused by the tree.
    #[error("{deb} holds an entry an image cannot hold")]
    Tree {
        /// The package file.
        deb: PathBuf,
        /// The tree's error.
        source: TreeError,
    },
    /// A kernel package lacks an expected file.
    #[error("{deb} is not a kernel image package: {what}")]
    NotKernel {
        /// The package file.
        deb: PathBuf,
        /// What is missing.
        what: String,
    },
}

crate::error::into_io_variant!(DebError);

/// Checks a Debian package name against Debian policy (§5.6.1): at least two characters,
/// lowercase ASCII letters, digits and `+`, `-`, `.`, starting with a letter or digit. Such a
/// name can never be taken for an option (`-o`) or a path (`../x`) by apt or dpkg. The error
/// says what is wrong, for the caller to locate.
pub fn check_package_name(name: &str) -> Result<(), String> {
    let rule = "Debian package names are at least 2 characters of lowercase letters, digits, \
                '+', '-' and '.', starting with a letter or digit";
    let bad = if name.len() < 2 {
        Some("it is too short")
    } else if !name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit()) {
        Some("it does not start with a lowercase letter or digit")
    } else if name.contains(':') {
        Some("an architecture is not part of the name (set `arch:` where it is supported)")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b))
    {
        Some("it holds a character other than a-z, 0-9, '+', '-' and '.'")
    } else {
        None
    };
    match bad {
        Some(why) => Err(format!("{name:?} is not a package name: {why}; {rule}")),
        None => Ok(()),
    }
}

/// Checks a Debian architecture name (`amd64`, `arm64`, `all`, `musl-linux-arm64`): lowercase
/// letters, digits and `-`, starting with a letter or digit.
pub fn check_arch(arch: &str) -> Result<(), String> {
    let ok = arch.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && arch
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{arch:?} is not a Debian architecture: use lowercase letters, digits and '-', \
             starting with a letter or digit (amd64, arm64, all)"
        ))
    }
}

/// [`check_package_name`] and [`check_arch`] as a [`DebError`], for names from outside.
pub fn check_package(name: &str, arch: Option<&str>) -> Result<(), DebError> {
    check_package_name(name)
        .and_then(|()| arch.map_or(Ok(()), check_arch))
        .map_err(|problem| DebError::InvalidName { problem })
}

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

/// The cached Debian kernel image package (`linux-image-<abi>-<flavour>_…_amd64.deb`, the
/// highest version), or the file named by `$MINKE_KERNEL_DEB` when set.
pub fn cached_kernel_deb() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("MINKE_KERNEL_DEB").map(PathBuf::from) {
        return p.is_file().then_some(p);
    }
    let is_kernel = |n: &str| {
        n.strip_prefix("linux-image-")
            .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
            && !n.ends_with("-dbg")
            && !n.ends_with("-unsigned")
    };
    [debs_dir(), cache_dir()]
        .iter()
        .find_map(|d| find_cached_by(d, is_kernel, None, Some("amd64")))
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
    let out = run_apt("apt-cache", &["policy", "--", spec], None, Path::new("")).ok()?;
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
    let version = candidate_version(&spec);
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
            run_apt(
                "apt-get",
                &["download", "-q", "--", &pinned],
                Some(tmp.path()),
                cache_dir,
            )?;
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

fn is_versioned_kernel(name: &str) -> bool {
    name.strip_prefix("linux-image-")
        .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()))
}

/// The versioned kernel image package a meta package stands for:
/// `linux-image-cloud-amd64` → `linux-image-6.1.0-NN-cloud-amd64` (following `apt-cache
/// depends`, through further meta packages if needed). A versioned name is returned as is.
/// Without apt, the highest cached kernel package of the same flavour is taken.
pub fn resolve_kernel_package(name: &str) -> Result<String, DebError> {
    let mut current = name.to_string();
    for _ in 0..4 {
        check_package(&current, None)?;
        if is_versioned_kernel(&current) {
            return Ok(current);
        }
        let out = match run_apt("apt-cache", &["depends", "--", &current], None, &debs_dir()) {
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

/// One entry of a package's data archive, as handed to a sink.
enum Item<'a> {
    Dir,
    File { size: u64, data: &'a mut dyn Read },
    Symlink(String),
    Hardlink(String),
}

/// Receives each entry: path, mode, uid, gid and the entry itself.
type Sink<'s> = dyn FnMut(String, u32, u32, u32, Item<'_>) -> Result<(), DebError> + 's;

/// Turns a tar member name into a tree path; `None` for the root (`./`).
fn member_path(deb: &Path, raw: &[u8]) -> Result<Option<String>, DebError> {
    let s = std::str::from_utf8(raw).map_err(|_| DebError::BadEntry {
        deb: deb.to_path_buf(),
        path: String::from_utf8_lossy(raw).into_owned(),
        reason: "the name is not UTF-8".into(),
    })?;
    if s.starts_with('/') {
        return Err(DebError::Escape {
            deb: deb.to_path_buf(),
            path: s.to_string(),
        });
    }
    let mut parts = Vec::new();
    for c in s.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                return Err(DebError::Escape {
                    deb: deb.to_path_buf(),
                    path: s.to_string(),
                })
            }
            c => parts.push(c),
        }
    }
    if parts.is_empty() {
        return Ok(None);
    }
    tree::normalize(&parts.join("/"))
        .map(Some)
        .map_err(|source| DebError::Tree {
            deb: deb.to_path_buf(),
            source,
        })
}

/// Walks the data archive of `deb`, calling `sink(path, mode, uid, gid, item)` per entry.
fn walk_data(deb: &Path, sink: &mut Sink<'_>) -> Result<(), DebError> {
    let file = File::open(deb).map_err(io_err(deb))?;
    let mut archive = ar::Archive::new(BufReader::new(file));
    let ar_err = |source| DebError::Ar {
        deb: deb.to_path_buf(),
        source,
    };
    while let Some(entry) = archive.next_entry() {
        let entry = entry.map_err(ar_err)?;
        let member = String::from_utf8_lossy(entry.header().identifier()).into_owned();
        let Some(ext) = member.strip_prefix("data.tar") else {
            continue;
        };
        let declared = entry.header().size();
        let count = Rc::new(Cell::new(0u64));
        let entry = CountRead {
            inner: entry,
            count: count.clone(),
        };
        let reader: Box<dyn Read + '_> = match ext {
            "" => Box::new(entry),
            ".xz" => Box::new(xz2::read::XzDecoder::new_multi_decoder(entry)),
            ".zst" => Box::new(zstd::stream::read::Decoder::new(entry).map_err(|source| {
                DebError::Tar {
                    deb: deb.to_path_buf(),
                    source,
                }
            })?),
            ".gz" => Box::new(flate2::read::MultiGzDecoder::new(entry)),
            _ => {
                return Err(DebError::Compression {
                    deb: deb.to_path_buf(),
                    member,
                })
            }
        };
        walk_tar(deb, reader, sink)?;
        if count.get() != declared {
            let msg = format!(
                "member {member} is {} bytes, but its header says {declared}: the file is truncated",
                count.get()
            );
            return Err(DebError::Ar {
                deb: deb.to_path_buf(),
                source: io::Error::new(io::ErrorKind::UnexpectedEof, msg),
            });
        }
        return Ok(());
    }
    Err(DebError::NoData {
        deb: deb.to_path_buf(),
    })
}

fn walk_tar(deb: &Path, reader: Box<dyn Read + '_>, sink: &mut Sink<'_>) -> Result<(), DebError> {
    let tar_err = |source| DebError::Tar {
        deb: deb.to_path_buf(),
        source,
    };
    let mut tar = tar::Archive::new(reader);
    for entry in tar.entries().map_err(tar_err)? {
        let mut entry = entry.map_err(tar_err)?;
        let raw_path = entry.path_bytes().into_owned();
        let Some(path) = member_path(deb, &raw_path)? else {
            continue;
        };
        let header = entry.header();
        let mode = header.mode().map_err(tar_err)? & 0o7777;
        let uid = u32::try_from(header.uid().map_err(tar_err)?).unwrap_or(0);
        let gid = u32::try_from(header.gid().map_err(tar_err)?).unwrap_or(0);
        let kind = header.entry_type();
        let link = || -> Result<String, DebError> {
            let raw = entry.link_name_bytes().ok_or_else(|| DebError::BadEntry {
                deb: deb.to_path_buf(),
                path: path.clone(),
                reason: "link without a target".into(),
            })?;
            String::from_utf8(raw.into_owned()).map_err(|_| DebError::BadEntry {
                deb: deb.to_path_buf(),
                path: path.clone(),
                reason: "link target is not UTF-8".into(),
            })
        };
        let item = match kind {
            tar::EntryType::Directory => Item::Dir,
            tar::EntryType::Symlink => Item::Symlink(link()?),
            tar::EntryType::Link => {
                let target = link()?;
                match member_path(deb, target.as_bytes())? {
                    Some(t) => Item::Hardlink(t),
                    None => {
                        return Err(DebError::Escape {
                            deb: deb.to_path_buf(),
                            path: target,
                        })
                    }
                }
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = entry.size();
                sink(
                    path,
                    mode,
                    uid,
                    gid,
                    Item::File {
                        size,
                        data: &mut entry,
                    },
                )?;
                continue;
            }
            other => {
                tracing::warn!(deb = %deb.display(), path, "skipping tar entry of type {other:?}");
                continue;
            }
        };
        sink(path, mode, uid, gid, item)?;
    }
    // Read to the end, so truncated or corrupt compressed streams are noticed.
    let mut rest = tar.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(tar_err)?;
    Ok(())
}

/// Counts the bytes read through it.
struct CountRead<R> {
    inner: R,
    count: Rc<Cell<u64>>,
}

impl<R: Read> Read for CountRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.set(self.count.get() + n as u64);
        Ok(n)
    }
}

/// Refuses entries below a symlink of the same package (they would be written through it).
fn check_parents(deb: &Path, tree: &Tree, path: &str) -> Result<(), DebError> {
    let mut end = 0;
    while let Some(i) = path[end..].find('/') {
        let parent = &path[..end + i];
        if let Some(Node {
            kind: NodeKind::Symlink(_),
            ..
        }) = tree.get(parent)
        {
            return Err(DebError::Escape {
                deb: deb.to_path_buf(),
                path: path.to_string(),
            });
        }
        end += i + 1;
    }
    Ok(())
}

fn hardlink_target_ok(deb: &Path, tree: &Tree, path: &str, target: &str) -> Result<(), DebError> {
    match tree.get(target) {
        Some(Node {
            kind: NodeKind::File(_),
            ..
        }) => Ok(()),
        _ => Err(DebError::BadEntry {
            deb: deb.to_path_buf(),
            path: path.to_string(),
            reason: format!("hard link to {target:?}, which is not an earlier regular file"),
        }),
    }
}

/// Unpacks the data archive of `deb` into a tree with file contents held in memory. Modes,
/// owners, symlinks and hard links are kept; device nodes and FIFOs are skipped.
pub fn unpack(deb: &Path) -> Result<Tree, DebError> {
    let mut tree = Tree::new();
    walk_data(deb, &mut |path, mode, uid, gid, item| {
        check_parents(deb, &tree, &path)?;
        let kind = match item {
            Item::Dir => NodeKind::Dir,
            Item::Symlink(t) => NodeKind::Symlink(t),
            Item::Hardlink(t) => {
                hardlink_target_ok(deb, &tree, &path, &t)?;
                NodeKind::Hardlink(t)
            }
            Item::File { size, data } => {
                let mut buf = Vec::with_capacity(usize::try_from(size.min(1 << 30)).unwrap_or(0));
                data.read_to_end(&mut buf).map_err(|source| DebError::Tar {
                    deb: deb.to_path_buf(),
                    source,
                })?;
                NodeKind::File(FileData::Inline(buf.into()))
            }
        };
        insert(
            deb,
            &mut tree,
            &path,
            Node {
                mode,
                uid,
                gid,
                kind,
            },
        )
    })?;
    Ok(tree)
}

/// Unpacks the data archive of `deb` below `dest` (created if needed) and returns the tree,
/// whose files point into `dest` ([`FileData::Path`]). Files are written with the owner's
/// default permissions; the tree carries the package's modes and owners. Existing files at the
/// same paths are replaced.
pub fn unpack_to_dir(deb: &Path, dest: &Path) -> Result<Tree, DebError> {
    fs::create_dir_all(dest).map_err(io_err(dest))?;
    let mut tree = Tree::new();
    walk_data(deb, &mut |path, mode, uid, gid, item| {
        check_parents(deb, &tree, &path)?;
        let on_disk = dest.join(&path);
        if let Some(parent) = on_disk.parent() {
            fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        let kind = match item {
            Item::Dir => {
                if fs::symlink_metadata(&on_disk).is_ok_and(|m| !m.is_dir()) {
                    fs::remove_file(&on_disk).map_err(io_err(&on_disk))?;
                }
                fs::create_dir_all(&on_disk).map_err(io_err(&on_disk))?;
                NodeKind::Dir
            }
            Item::Symlink(t) => {
                remove_non_dir(&on_disk)?;
                std::os::unix::fs::symlink(&t, &on_disk).map_err(io_err(&on_disk))?;
                NodeKind::Symlink(t)
            }
            Item::Hardlink(t) => {
                hardlink_target_ok(deb, &tree, &path, &t)?;
                remove_non_dir(&on_disk)?;
                fs::hard_link(dest.join(&t), &on_disk).map_err(io_err(&on_disk))?;
                NodeKind::Hardlink(t)
            }
            Item::File { size, data } => {
                remove_non_dir(&on_disk)?;
                let mut f = File::create(&on_disk).map_err(io_err(&on_disk))?;
                let n = io::copy(data, &mut f).map_err(|source| DebError::Tar {
                    deb: deb.to_path_buf(),
                    source,
                })?;
                f.flush().map_err(io_err(&on_disk))?;
                debug_assert_eq!(n, size);
                NodeKind::File(FileData::Path {
                    path: on_disk,
                    size: n,
                })
            }
        };
        insert(
            deb,
            &mut tree,
            &path,
            Node {
                mode,
                uid,
                gid,
                kind,
            },
        )
    })?;
    Ok(tree)
}

fn insert(deb: &Path, tree: &mut Tree, path: &str, node: Node) -> Result<(), DebError> {
    tree.insert(path, node)
        .map(drop)
        .map_err(|source| DebError::Tree {
            deb: deb.to_path_buf(),
            source,
        })
}

fn remove_non_dir(p: &Path) -> Result<(), DebError> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => Err(DebError::Io {
            path: p.to_path_buf(),
            source: io::Error::new(io::ErrorKind::AlreadyExists, "a directory is in the way"),
        }),
        Ok(_) => Ok(fs::remove_file(p).map_err(io_err(p))?),
        Err(_) => Ok(()),
    }
}

/// The files of a Debian kernel image package, unpacked on disk.
#[derive(Debug, Clone)]
pub struct KernelFiles {
    /// The kernel release, e.g. `6.1.0-56-cloud-amd64`.
    pub version: String,
    /// `boot/vmlinuz-VERSION`.
    pub vmlinuz: PathBuf,
    /// `boot/config-VERSION`.
    pub config: PathBuf,
    /// `lib/modules/VERSION` (or `usr/lib/modules/VERSION` on merged-usr packages).
    pub modules_dir: PathBuf,
    /// Everything the package holds, files pointing below the destination directory.
    pub tree: Tree,
}

/// Unpacks kernel package `deb` into `dest_dir` and locates its kernel, config and modules.
pub fn kernel_from_deb(deb: &Path, dest_dir: &Path) -> Result<KernelFiles, DebError> {
    let tree = unpack_to_dir(deb, dest_dir)?;
    let not_kernel = |what: String| DebError::NotKernel {
        deb: deb.to_path_buf(),
        what,
    };
    let versions: Vec<String> = tree
        .iter()
        .filter(|(_, n)| matches!(n.kind, NodeKind::File(_)))
        .filter_map(|(p, _)| p.strip_prefix("boot/vmlinuz-"))
        .filter(|v| !v.contains('/'))
        .map(str::to_string)
        .collect();
    let version = match versions.as_slice() {
        [v] => v.clone(),
        [] => return Err(not_kernel("it has no boot/vmlinuz-*".into())),
        many => {
            return Err(not_kernel(format!(
                "it has several kernels: {}",
                many.join(", ")
            )))
        }
    };
    let config = format!("boot/config-{version}");
    if tree.get(&config).is_none() {
        return Err(not_kernel(format!("{config} is missing")));
    }
    let modules = [
        format!("lib/modules/{version}"),
        format!("usr/lib/modules/{version}"),
    ]
    .into_iter()
    .find(|m| {
        matches!(
            tree.get(m),
            Some(Node {
                kind: NodeKind::Dir,
                ..
            })
        )
    })
    .ok_or_else(|| not_kernel(format!("lib/modules/{version} is missing")))?;
    Ok(KernelFiles {
        vmlinuz: dest_dir.join(format!("boot/vmlinuz-{version}")),
        config: dest_dir.join(config),
        modules_dir: dest_dir.join(modules),
        version,
        tree,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// Paths listed by `dpkg-deb -c`, normalized like tree paths; `None` without dpkg-deb.
    fn dpkg_listing(deb: &Path) -> Option<BTreeSet<String>> {
        let out = Command::new("dpkg-deb").arg("-c").arg(deb).output().ok()?;
        assert!(out.status.success(), "dpkg-deb -c failed");
        let text = String::from_utf8(out.stdout).unwrap();
        let mut set = BTreeSet::new();
        for line in text.lines() {
            // perms owner size date time path [-> target | link to target]
            let start = line.find("./").expect("path");
            let mut p = &line[start..];
            if let Some(i) = p.find(" -> ").or_else(|| p.find(" link to ")) {
                p = &p[..i];
            }
            let p = p.trim_start_matches("./").trim_end_matches('/');
            if !p.is_empty() {
                set.insert(p.to_string());
            }
        }
        Some(set)
    }

    fn tree_paths(t: &Tree) -> BTreeSet<String> {
        t.iter().map(|(p, _)| p.clone()).collect()
    }

    #[test]
    fn busybox_static_matches_dpkg_deb() {
        let Some(deb) = cached_deb("busybox-static", Some("amd64")) else {
            eprintln!(
                "skipped: busybox-static amd64 .deb not in {} (run `cargo xtask setup`)",
                debs_dir().display()
            );
            return;
        };
        let tree = unpack(&deb).unwrap();
        let Some(expected) = dpkg_listing(&deb) else {
            eprintln!("skipped: dpkg-deb missing");
            return;
        };
        assert_eq!(tree_paths(&tree), expected);
        let bb = tree.get("bin/busybox").unwrap();
        assert_eq!(bb.mode, 0o755);
        assert!(matches!(&bb.kind, NodeKind::File(d) if d.size() > 1_000_000));
    }

    #[test]
    fn kernel_deb_matches_dpkg_deb() {
        let Some(deb) = cached_kernel_deb() else {
            eprintln!(
                "skipped: no kernel .deb in {} (run `cargo xtask setup`)",
                debs_dir().display()
            );
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let k = kernel_from_deb(&deb, dir.path()).unwrap();
        assert!(k.vmlinuz.is_file() && k.config.is_file() && k.modules_dir.is_dir());
        assert!(k.version.contains("cloud-amd64") || !k.version.is_empty());
        if let Some(expected) = dpkg_listing(&deb) {
            assert_eq!(tree_paths(&k.tree), expected);
        }
        let Some(Node {
            kind: NodeKind::File(FileData::Path { path, size }),
            ..
        }) = k.tree.get(&format!("boot/vmlinuz-{}", k.version))
        else {
            panic!("vmlinuz is not a file")
        };
        assert_eq!(fs::metadata(path).unwrap().len(), *size);
    }

    #[test]
    fn garbage_and_truncation_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.deb");
        fs::write(&bad, b"this is not an ar archive at all").unwrap();
        assert!(matches!(unpack(&bad), Err(DebError::Ar { .. })));
        let empty = dir.path().join("empty.deb");
        fs::write(&empty, b"!<arch>\n").unwrap();
        assert!(matches!(unpack(&empty), Err(DebError::NoData { .. })));
        // A real package cut short, at several places.
        let deb = make_deb(
            dir.path(),
            &[
                ("./", None),
                ("./bin/", None),
                ("./bin/x", Some(&b"hello"[..])),
            ],
            "xz",
        );
        let bytes = fs::read(&deb).unwrap();
        for cut in [bytes.len() / 2, bytes.len() - 30, 70, 100] {
            let t = dir.path().join(format!("cut{cut}.deb"));
            fs::write(&t, &bytes[..cut]).unwrap();
            assert!(unpack(&t).is_err(), "cut at {cut} was accepted");
        }
        // Random corruption never panics.
        for i in (8..bytes.len()).step_by(7) {
            let mut b = bytes.clone();
            b[i] ^= 0x5a;
            let t = dir.path().join("flip.deb");
            fs::write(&t, &b).unwrap();
            let _ = unpack(&t);
        }
    }

    fn make_tar(entries: &[(&str, Option<&[u8]>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_mtime(0);
            h.set_uid(0);
            h.set_gid(0);
            match data {
                None => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(0o755);
                    h.set_size(0);
                    b.append_data(&mut h, path, io::empty()).unwrap();
                }
                Some(d) => {
                    h.set_mode(0o644);
                    h.set_size(d.len() as u64);
                    b.append_data(&mut h, path, *d).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    fn make_deb_from_tar(dir: &Path, tar: Vec<u8>, comp: &str) -> PathBuf {
        let (member, data) = match comp {
            "xz" => {
                let mut e = xz2::write::XzEncoder::new(Vec::new(), 6);
                e.write_all(&tar).unwrap();
                ("data.tar.xz", e.finish().unwrap())
            }
            "zst" => ("data.tar.zst", zstd::encode_all(&tar[..], 3).unwrap()),
            "gz" => {
                let mut e =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                e.write_all(&tar).unwrap();
                ("data.tar.gz", e.finish().unwrap())
            }
            _ => ("data.tar", tar),
        };
        let path = dir.join(format!("t-{comp}.deb"));
        let mut ar = ar::Builder::new(File::create(&path).unwrap());
        let mut add = |name: &str, bytes: &[u8]| {
            let h = ar::Header::new(name.as_bytes().to_vec(), bytes.len() as u64);
            ar.append(&h, bytes).unwrap();
        };
        add("debian-binary", b"2.0\n");
        add("control.tar.xz", b"");
        add(member, &data);
        path
    }

    fn make_deb(dir: &Path, entries: &[(&str, Option<&[u8]>)], comp: &str) -> PathBuf {
        make_deb_from_tar(dir, make_tar(entries), comp)
    }

    #[test]
    fn every_compression_unpacks() {
        let dir = tempfile::tempdir().unwrap();
        for comp in ["xz", "zst", "gz", "none"] {
            let deb = make_deb(
                dir.path(),
                &[
                    ("./", None),
                    ("./etc/", None),
                    ("./etc/x.conf", Some(&b"x=1\n"[..])),
                ],
                comp,
            );
            let tree = unpack(&deb).unwrap();
            assert_eq!(
                tree_paths(&tree),
                BTreeSet::from(["etc".to_string(), "etc/x.conf".to_string()])
            );
            let out = dir.path().join(format!("out-{comp}"));
            let t2 = unpack_to_dir(&deb, &out).unwrap();
            assert_eq!(tree_paths(&t2), tree_paths(&tree));
            assert_eq!(fs::read(out.join("etc/x.conf")).unwrap(), b"x=1\n");
        }
    }

    #[test]
    fn escapes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        // The tar crate refuses to write `..`, so patch the name into the header by hand.
        let mut tar = make_tar(&[("./aa/evil", Some(&b"x"[..]))]);
        tar[..9].copy_from_slice(b"./../evil");
        let mut h = tar::Header::from_byte_slice(&tar[..512]).clone();
        h.set_cksum();
        tar[..512].copy_from_slice(h.as_bytes());
        let deb = make_deb_from_tar(dir.path(), tar, "none");
        match unpack(&deb) {
            Err(DebError::Escape { path, .. }) => assert_eq!(path, "./../evil"),
            other => panic!("{other:?}"),
        }
        // A file below a symlink of the same package.
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mode(0o777);
        b.append_link(&mut h, "etc", "/tmp").unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mode(0o644);
        b.append_data(&mut h, "etc/passwd", &b"x"[..]).unwrap();
        let deb = make_deb_from_tar(dir.path(), b.into_inner().unwrap(), "gz");
        assert!(matches!(
            unpack_to_dir(&deb, &dir.path().join("o")),
            Err(DebError::Escape { .. })
        ));
        assert!(!Path::new("/tmp/passwd").exists() || fs::read("/tmp/passwd").unwrap() != b"x");
    }

    #[test]
    fn package_names_follow_debian_policy() {
        for ok in [
            "linux-image-cloud-amd64",
            "linux-image-6.1.0-48-cloud-amd64",
            "libc6",
            "g++",
            "busybox-static",
            "libstdc++6",
            "0ad",
            "xz-utils",
            "a.b",
        ] {
            assert_eq!(check_package_name(ok), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("-o", "does not start"),
            ("-oDir::Etc=/tmp", "does not start"),
            ("a b", "character other than"),
            ("../x", "does not start"),
            ("x/../y", "character other than"),
            ("", "too short"),
            ("a", "too short"),
            ("Libc6", "does not start"),
            ("libC6", "character other than"),
            ("busybox-static:arm64", "architecture"),
            ("+x", "does not start"),
            ("lib_c", "character other than"),
        ] {
            let e = check_package_name(bad).expect_err(bad);
            assert!(
                e.contains(why) && e.contains(&format!("{bad:?}")),
                "{bad}: {e}"
            );
        }
        for ok in ["amd64", "arm64", "all", "musl-linux-arm64"] {
            assert_eq!(check_arch(ok), Ok(()), "{ok}");
        }
        for bad in ["", "-amd64", "AMD64", "amd64 ", "../x", "x/y"] {
            assert!(check_arch(bad).is_err(), "{bad:?}");
        }
        // Refused before apt is asked anything.
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            fetch("-o", None, dir.path()),
            Err(DebError::InvalidName { .. })
        ));
        assert!(matches!(
            fetch("busybox-static", Some("-x"), dir.path()),
            Err(DebError::InvalidName { .. })
        ));
        assert!(matches!(
            resolve_kernel_package("--help"),
            Err(DebError::InvalidName { .. })
        ));
    }

    #[test]
    fn versions_compare_like_dpkg() {
        use Ordering::*;
        for (a, b, o) in [
            ("1.0", "1.0", Equal),
            ("1:1.35.0-4", "1.36", Greater),
            ("6.1.192-2", "6.1.99-1", Greater),
            ("1.0~rc1", "1.0", Less),
            ("1.0a", "1.0", Greater),
            ("1.0-1", "1.0-1+b1", Less),
            ("2.36-9+deb12u4", "2.36-9+deb12u10", Less),
        ] {
            assert_eq!(compare_versions(a, b), o, "{a} vs {b}");
        }
        assert_eq!(
            parse_deb_file_name("busybox-static_1%3a1.35.0-4+deb12u1+b1_amd64.deb"),
            Some((
                "busybox-static".into(),
                "1:1.35.0-4+deb12u1+b1".into(),
                "amd64".into()
            ))
        );
        assert_eq!(parse_deb_file_name("x.deb"), None);
    }

    #[test]
    fn fetch_reuses_the_cached_candidate() {
        let Some(cached) = cached_deb("busybox-static", Some("amd64")) else {
            eprintln!("skipped: busybox-static amd64 .deb not cached");
            return;
        };
        let (_, version, _) =
            parse_deb_file_name(cached.file_name().unwrap().to_str().unwrap()).unwrap();
        if candidate_version("busybox-static:amd64").as_deref() != Some(version.as_str()) {
            eprintln!("skipped: apt's candidate differs from the cached version (would download)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        fs::copy(&cached, dir.path().join(cached.file_name().unwrap())).unwrap();
        let got = fetch("busybox-static", Some("amd64"), dir.path()).unwrap();
        assert_eq!(got.version, version);
        assert_eq!(got.arch, "amd64");
        assert_eq!(got.sha256, sha256_file(&cached).unwrap());
        assert_eq!(got.sha256.len(), 64);
    }

    #[test]
    fn kernel_meta_package_resolves() {
        if candidate_version("linux-image-cloud-amd64").is_none() {
            eprintln!("skipped: apt does not know linux-image-cloud-amd64 here");
            return;
        }
        let name = resolve_kernel_package("linux-image-cloud-amd64").unwrap();
        assert!(
            is_versioned_kernel(&name) && name.ends_with("-cloud-amd64"),
            "{name}"
        );
        assert_eq!(resolve_kernel_package(&name).unwrap(), name);
    }

    #[test]
    fn find_cached_prefers_highest_version_and_all() {
        let dir = tempfile::tempdir().unwrap();
        for f in [
            "a_1.9_amd64.deb",
            "a_1.10_amd64.deb",
            "a_2.0_arm64.deb",
            "b_1_all.deb",
        ] {
            fs::write(dir.path().join(f), b"").unwrap();
        }
        let got = find_cached(dir.path(), "a", None, Some("amd64")).unwrap();
        assert!(got.ends_with("a_1.10_amd64.deb"));
        assert!(find_cached(dir.path(), "b", None, Some("s390x")).is_some());
        assert!(find_cached(dir.path(), "a", Some("1.9"), Some("arm64")).is_none());
    }
}
