//! Which kernel an image boots: a Debian kernel package fetched and unpacked into the cache, a
//! kernel file given by path (its modules tree found beside it), or a kernel built from the
//! `kernel-config/` fragments.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{kbuild, kconfig, kmod, KernelError};
use crate::error::io_err;
use crate::layer::{write_atomic, Cache};
use crate::spec::{self, Spec};

/// Kernel resolved into the cache.
#[derive(Debug, Clone)]
pub struct ResolvedKernel {
    /// Kernel image.
    pub image: PathBuf,
    /// `lib/modules/VERSION`, if the kernel has modules.
    pub modules_dir: Option<PathBuf>,
    /// `config-VERSION`, when known.
    pub config: Option<PathBuf>,
    /// Release string.
    pub version: String,
    /// Provenance for the manifest.
    pub source: String,
}

/// Resolves the spec's kernel: fetches and unpacks a Debian package into the cache, or builds
/// one from kernel-config/ fragments (cached too).
pub fn resolve_kernel(
    spec: &Spec,
    cache: &Cache,
    epoch: u64,
    progress: &dyn Fn(&str),
) -> Result<ResolvedKernel, KernelError> {
    match &spec.raw.kernel {
        spec::RawKernel::Package { package } => kernel_from_package(package, cache, progress),
        spec::RawKernel::Path { path, modules } => {
            let image = spec.base_dir.join(path);
            if !image.is_file() {
                return Err(KernelError::Unusable(format!(
                    "{} does not exist",
                    image.display()
                )));
            }
            let modules_dir = modules.as_ref().map(|m| spec.base_dir.join(m));
            if let Some(m) = &modules_dir {
                if !m.is_dir() {
                    return Err(KernelError::Unusable(format!(
                        "modules directory {} does not exist",
                        m.display()
                    )));
                }
            }
            let (modules_dir, version) = match modules_dir {
                Some(m) => {
                    let version = m
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    (Some(m), version)
                }
                None => {
                    let version = release_from_file_name(&image).unwrap_or_default();
                    (modules_beside(&image, &version), version)
                }
            };
            Ok(ResolvedKernel {
                image,
                modules_dir,
                config: None,
                version,
                source: format!("path {}", path.display()),
            })
        }
        spec::RawKernel::Build { build } => {
            let opts = kbuild_options(
                build.source.as_ref().map(|s| spec.base_dir.join(s)),
                &build.fragments,
                &spec.raw.arch,
                &spec.base_dir,
                epoch,
            )?;
            let built = kbuild::build(&opts, cache, progress).map_err(KernelError::Build)?;
            Ok(ResolvedKernel {
                image: built.vmlinux.unwrap_or(built.image),
                modules_dir: None,
                config: Some(built.config),
                version: built.release,
                source: format!("built from kernel-config (key {})", built.key),
            })
        }
    }
}

/// Options for building a kernel: fragment names resolved under the workspace's
/// kernel-config/ (or as paths relative to `base`), default fragments when none are named.
pub fn kbuild_options(
    source: Option<PathBuf>,
    fragments: &[String],
    arch: &str,
    base: &Path,
    epoch: u64,
) -> Result<kbuild::Options, KernelError> {
    let names = if fragments.is_empty() {
        kconfig::default_fragments(arch)
    } else {
        fragments.to_vec()
    };
    let dir = kernel_config_dir();
    let fragments = kconfig::fragment_paths(&dir, &names, base).map_err(KernelError::Fragments)?;
    Ok(kbuild::Options {
        source: source
            .map(kbuild::Source::Dir)
            .unwrap_or(kbuild::Source::Debian),
        fragments,
        arch: arch.to_owned(),
        epoch,
        jobs: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
    })
}

/// The workspace's kernel-config/ directory.
pub fn kernel_config_dir() -> PathBuf {
    spec::workspace_dir().join("kernel-config")
}

/// The release in a kernel file's name: `vmlinuz-VERSION`, `vmlinux-VERSION`,
/// `bzImage-VERSION` or `config-VERSION` (as /boot and an unpacked kernel package name them).
pub fn release_from_file_name(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    ["vmlinuz-", "vmlinux-", "bzImage-", "config-"]
        .iter()
        .find_map(|p| name.strip_prefix(p))
        .filter(|v| !v.is_empty() && !v.contains('/'))
        .map(str::to_owned)
}

/// The modules tree of the kernel file `image` whose release is `version`, when one is found
/// beside it: `../lib/modules/VERSION` from the file's directory (an unpacked kernel package,
/// or a root filesystem's /boot), or `/lib/modules/VERSION` when VERSION is the running
/// kernel's. A kernel so found is judged like its package: the image carries the modules the
/// builder's closure takes from that tree.
pub fn modules_beside(image: &Path, version: &str) -> Option<PathBuf> {
    if version.is_empty() {
        return None;
    }
    let parent = match image.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut candidates = vec![parent.join("../lib/modules").join(version)];
    let running = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    if running.trim() == version {
        candidates.push(Path::new("/lib/modules").join(version));
    }
    candidates.into_iter().find(|d| is_modules_tree(d))
}

/// Whether `dir` is a `lib/modules/VERSION` tree: it has a `kernel/` subtree, a `modules.dep`,
/// or any module file. A kernel package ships no `modules.dep` (depmod runs on install), and
/// the module resolver needs none.
pub fn is_modules_tree(dir: &Path) -> bool {
    if !dir.is_dir() {
        return false;
    }
    if dir.join("kernel").is_dir() || dir.join("modules.dep").is_file() {
        return true;
    }
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(t) = e.file_type() else { continue };
            if t.is_dir() {
                stack.push(e.path());
            } else if e
                .file_name()
                .to_str()
                .is_some_and(|n| kmod::module_stem(n).is_some())
            {
                return true;
            }
        }
    }
    false
}

/// Fetches a Debian kernel package (meta packages resolved) and unpacks it into the cache.
pub fn kernel_from_package(
    package: &str,
    cache: &Cache,
    progress: &dyn Fn(&str),
) -> Result<ResolvedKernel, KernelError> {
    let k = |source| KernelError::Package {
        package: package.to_owned(),
        source,
    };
    progress(&format!("resolving kernel package {package}"));
    let real = crate::sources::deb::pins::resolve_kernel(cache, package).map_err(k)?;
    progress(&format!("fetching {real}"));
    let arch = crate::sources::deb::kernel_package_arch(&real);
    let deb = crate::sources::deb::pins::fetch(cache, &real, arch).map_err(k)?;
    let sha = deb.sha256.clone();
    let dest = cache.dir("kernels").join(&sha);
    let record_path = dest.join("kernel.json");
    let record: KernelDirRecord = match std::fs::read(&record_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
    {
        Some(r) => r,
        None => {
            progress(&format!("unpacking {real}"));
            let _ = std::fs::remove_dir_all(&dest);
            let files = crate::sources::deb::kernel_from_deb(&deb.path, &dest).map_err(k)?;
            let r = KernelDirRecord {
                version: files.version,
                vmlinuz: rel(&dest, &files.vmlinuz),
                config: rel(&dest, &files.config),
                modules_dir: rel(&dest, &files.modules_dir),
            };
            let json = serde_json::to_vec(&r).map_err(|source| KernelError::Json {
                what: "the kernel record",
                source,
            })?;
            write_atomic(&record_path, &json).map_err(io_err(&record_path))?;
            r
        }
    };
    Ok(ResolvedKernel {
        image: dest.join(&record.vmlinuz),
        modules_dir: Some(dest.join(&record.modules_dir)),
        config: Some(dest.join(&record.config)),
        version: record.version,
        source: format!("debian {real} sha256:{sha}"),
    })
}

/// What an unpacked kernel package in the cache holds (paths relative to its directory).
#[derive(Debug, Serialize, Deserialize)]
struct KernelDirRecord {
    version: String,
    vmlinuz: PathBuf,
    config: PathBuf,
    modules_dir: PathBuf,
}

fn rel(base: &Path, p: &Path) -> PathBuf {
    p.strip_prefix(base).unwrap_or(p).to_path_buf()
}
