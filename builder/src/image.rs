//! The build pipeline: spec → layers → merged tree → initrd, kernel, cmdline and manifest.
//!
//! [`build`] is the library entry point the CLI, the tests and xtask call. Every output is
//! computed in memory (or in the cache) first and written last, each atomically, so a failed
//! build leaves no output behind and an interrupted one leaves the previous image intact.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use minke_protocol::config::{self as cfg, AgentKind, ImageConfig};
use serde::{Deserialize, Serialize};

use crate::archive::compress::{ArchiveOptions, Compression};
use crate::archive::tree::{FileData, Node, NodeKind, Tree, TreeError};
use crate::error::io_err;
use crate::kernel::{kbuild, kconfig};
use crate::layer::{
    records_digest, records_of, sha256_file, sha256_hex, write_atomic, Cache, Record,
};
use crate::sources::package::{self, PackageError};
use crate::spec::{self, FileWhat, Spec, SpecError};

/// Timestamp used when SOURCE_DATE_EPOCH is unset (2024-01-01T00:00:00Z).
pub const DEFAULT_EPOCH: u64 = 1_704_067_200;

/// Modules every image with a modular kernel gets: virtio PCI, the vsock transport, the
/// ACPI power button with evdev (so PID1 sees QMP `system_powerdown`), and `qemu_fw_cfg` (the
/// per-VM secret reaches PID1 as a firmware config file). `virtio_blk` is added
/// when the spec declares data disks, `binfmt_misc` when the binfmt agent runs and
/// `virtio_console` when the serial agent does (the virtio-serial transport).
pub const DEFAULT_MODULES: &[&str] = &[
    "virtio_pci",
    "vmw_vsock_virtio_transport",
    "button",
    "evdev",
    "qemu_fw_cfg",
];

/// What to build and where.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Spec file; `None` for the embedded default spec.
    pub spec: Option<PathBuf>,
    /// Output directory.
    pub out_dir: PathBuf,
    /// Cache.
    pub cache: Cache,
    /// The one timestamp of every output (SOURCE_DATE_EPOCH).
    pub epoch: u64,
    /// Override of the spec's compression.
    pub compression: Option<Compression>,
    /// Override of the spec's kernel.
    pub kernel: Option<spec::RawKernel>,
}

impl BuildOptions {
    /// Options from the environment: SOURCE_DATE_EPOCH, the default cache.
    pub fn new(spec: Option<PathBuf>, out_dir: PathBuf) -> BuildOptions {
        BuildOptions {
            spec,
            out_dir,
            cache: Cache::default_location(),
            epoch: epoch_from_env(),
            compression: None,
            kernel: None,
        }
    }
}

/// SOURCE_DATE_EPOCH, or [`DEFAULT_EPOCH`].
pub fn epoch_from_env() -> u64 {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_EPOCH)
}

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Invalid spec.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// A package failed.
    #[error(transparent)]
    Package(#[from] PackageError),
    /// The kernel could not be resolved.
    #[error("kernel: {0}")]
    Kernel(String),
    /// A Debian kernel package could not be resolved, fetched or unpacked.
    #[error("cannot get kernel package {package}")]
    KernelPackage {
        /// The package name as given.
        package: String,
        /// Why.
        source: crate::sources::deb::DebError,
    },
    /// The kernel could not be built from kernel-config/.
    #[error("cannot build the kernel from kernel-config/")]
    KernelBuild(#[source] kbuild::KbuildError),
    /// The kernel-config/ fragments could not be read.
    #[error("cannot read the kernel-config/ fragments")]
    Fragments(#[source] kconfig::KconfigError),
    /// The kernel's own configuration could not be read.
    #[error("cannot read the configuration of kernel {}", image.display())]
    KernelConfig {
        /// The kernel image.
        image: PathBuf,
        /// Why.
        source: kconfig::KconfigError,
    },
    /// Module resolution failed.
    #[error("kernel modules: {0}")]
    Modules(String),
    /// The module closure could not be computed from the kernel's modules tree.
    #[error("cannot resolve the image's kernel modules in {}", dir.display())]
    ModuleClosure {
        /// `lib/modules/VERSION`.
        dir: PathBuf,
        /// Why.
        source: crate::kernel::kmod::KmodError,
    },
    /// Two packages write the same path differently.
    #[error("{path} is provided by both {first} and {second} with different contents: remove it from one, or mark {second} with `override: true` in the spec's packages list")]
    Conflict {
        /// The path.
        path: String,
        /// Earlier package.
        first: String,
        /// Later package.
        second: String,
    },
    /// A path problem.
    #[error(transparent)]
    Tree(#[from] TreeError),
    /// Archiving failed.
    #[error("cannot archive the initramfs")]
    Archive(#[source] crate::archive::compress::ArchiveError),
    /// Files could not be read to hash them.
    #[error("cannot hash {what}")]
    Hash {
        /// Which files.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// A record could not be encoded.
    #[error("cannot encode {what} as JSON")]
    Json {
        /// Which record.
        what: &'static str,
        /// The encoder's error.
        source: serde_json::Error,
    },
    /// An I/O error on a named path.
    #[error("cannot access {path}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Anything else, with a message for the user.
    #[error("{0}")]
    Other(String),
}

/// The image manifest (`NAME.manifest.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Image name.
    pub name: String,
    /// Guest architecture.
    pub arch: String,
    /// sha256 over kernel, initrd and cmdline.
    pub image_digest: String,
    /// The kernel.
    pub kernel: KernelRecord,
    /// The kernel command line.
    pub cmdline: String,
    /// The initrd.
    pub initrd: InitrdRecord,
    /// Layers in merge order.
    pub layers: Vec<LayerRef>,
    /// Kernel modules in load order.
    pub modules: Vec<cfg::Module>,
    /// Data disks the image mounts: label and size the host creates them with.
    #[serde(default)]
    pub disks: Vec<DiskRecord>,
    /// Every entry of the initramfs.
    pub files: Vec<Record>,
}

/// A data disk in a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskRecord {
    /// virtio serial / filesystem label.
    pub label: String,
    /// Size in bytes when created, if the spec says.
    pub size: Option<u64>,
}

/// Kernel part of a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelRecord {
    /// sha256 of the kernel image.
    pub sha256: String,
    /// Kernel release (`6.1.0-56-cloud-amd64`), when known.
    pub version: String,
    /// Where it came from (Debian package with its sha256, or a path).
    pub source: String,
}

/// Initrd part of a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitrdRecord {
    /// sha256 of the compressed file.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// Compression.
    pub compression: Compression,
    /// SOURCE_DATE_EPOCH used for every mtime.
    pub mtime: u64,
}

/// A layer in a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRef {
    /// Package name (or `spec` for the spec's own files, `kernel-modules`, `config`).
    pub name: String,
    /// Digest of its records.
    pub digest: String,
}

/// A built image.
#[derive(Debug, Clone)]
pub struct Image {
    /// Image name.
    pub name: String,
    /// Output directory.
    pub dir: PathBuf,
    /// `NAME-kernel`.
    pub kernel: PathBuf,
    /// `NAME-initrd.img`.
    pub initrd: PathBuf,
    /// `NAME-cmdline` contents.
    pub cmdline: String,
    /// The manifest.
    pub manifest: Manifest,
    /// The data disks the spec declares (label, size in bytes).
    pub disks: Vec<(String, Option<u64>)>,
}

impl Image {
    /// Paths of the four outputs of image `name` in `dir`.
    pub fn paths(dir: &Path, name: &str) -> [PathBuf; 4] {
        [
            dir.join(format!("{name}-kernel")),
            dir.join(format!("{name}-initrd.img")),
            dir.join(format!("{name}-cmdline")),
            dir.join(format!("{name}.manifest.json")),
        ]
    }

    /// Opens a built image: `dir` holds exactly one manifest (or `NAME.manifest.json` is given).
    pub fn open(path: &Path) -> Result<Image, BuildError> {
        let manifest_path = if path.is_dir() {
            let mut found = Vec::new();
            for e in std::fs::read_dir(path).map_err(io_err(path))? {
                let e = e.map_err(io_err(path))?;
                if e.file_name().to_string_lossy().ends_with(".manifest.json") {
                    found.push(e.path());
                }
            }
            found.sort();
            match found.len() {
                1 => found.remove(0),
                0 => {
                    return Err(BuildError::Other(format!(
                        "{} holds no image: run `minke build -o {}` first",
                        path.display(),
                        path.display()
                    )))
                }
                _ => {
                    return Err(BuildError::Other(format!(
                        "{} holds several images; name one manifest file",
                        path.display()
                    )))
                }
            }
        } else {
            path.to_path_buf()
        };
        let bytes = std::fs::read(&manifest_path).map_err(io_err(&manifest_path))?;
        let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| {
            BuildError::Other(format!(
                "{}: not a minke manifest: {e}",
                manifest_path.display()
            ))
        })?;
        let dir = manifest_path
            .parent()
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let [kernel, initrd, _, _] = Image::paths(&dir, &manifest.name);
        let disks = manifest
            .disks
            .iter()
            .map(|d| (d.label.clone(), d.size))
            .collect();
        Ok(Image {
            name: manifest.name.clone(),
            kernel,
            initrd,
            cmdline: manifest.cmdline.clone(),
            dir,
            manifest,
            disks,
        })
    }
}

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
) -> Result<ResolvedKernel, BuildError> {
    match &spec.raw.kernel {
        spec::RawKernel::Package { package } => kernel_from_package(package, cache, progress),
        spec::RawKernel::Path { path, modules } => {
            let image = spec.base_dir.join(path);
            if !image.is_file() {
                return Err(BuildError::Kernel(format!(
                    "{} does not exist",
                    image.display()
                )));
            }
            let modules_dir = modules.as_ref().map(|m| spec.base_dir.join(m));
            if let Some(m) = &modules_dir {
                if !m.is_dir() {
                    return Err(BuildError::Kernel(format!(
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
            let built = kbuild::build(&opts, cache, progress).map_err(BuildError::KernelBuild)?;
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
) -> Result<kbuild::Options, BuildError> {
    let names = if fragments.is_empty() {
        kconfig::default_fragments(arch)
    } else {
        fragments.to_vec()
    };
    let dir = kernel_config_dir();
    let fragments = kconfig::fragment_paths(&dir, &names, base).map_err(BuildError::Fragments)?;
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

/// Modules the image needs before the spec's own: the agents' transport, the power button,
/// and what the spec's features use.
fn wanted_modules(spec: &Spec) -> Vec<String> {
    let mut want: Vec<String> = DEFAULT_MODULES.iter().map(|s| s.to_string()).collect();
    if spec.agents.iter().any(|(k, _)| *k == AgentKind::Binfmt) {
        want.push("binfmt_misc".into());
    }
    if spec.agents.iter().any(|(k, _)| *k == AgentKind::Serial) {
        want.push("virtio_console".into());
    }
    if !spec.raw.disks.is_empty() {
        want.push("virtio_blk".into());
    }
    want.extend(spec.raw.modules.iter().cloned());
    want
}

/// The image's modules in load order (empty for a kernel without a modules directory; the
/// spec's own modules must then be built in, which [`kernel_report`] checks).
pub fn module_closure(
    spec: &Spec,
    kernel: &ResolvedKernel,
) -> Result<Vec<crate::kernel::kmod::ModuleInfo>, BuildError> {
    let Some(mdir) = &kernel.modules_dir else {
        return Ok(Vec::new());
    };
    let want = wanted_modules(spec);
    let refs: Vec<&str> = want.iter().map(String::as_str).collect();
    crate::kernel::kmod::closure(mdir, &refs).map_err(|source| BuildError::ModuleClosure {
        dir: mdir.clone(),
        source,
    })
}

/// The image features that make `@required-for` fragment options required.
pub fn features(spec: &Spec, compression: Compression) -> BTreeSet<kconfig::Feature> {
    let mut f = BTreeSet::new();
    match compression {
        Compression::Gzip => f.insert(kconfig::Feature::Gzip),
        Compression::Zstd => f.insert(kconfig::Feature::Zstd),
        Compression::None => false,
    };
    if !spec.raw.disks.is_empty() {
        f.insert(kconfig::Feature::Disks);
    }
    if spec.agents.iter().any(|(k, _)| *k == AgentKind::Binfmt) {
        f.insert(kconfig::Feature::Binfmt);
    }
    if !spec.raw.containers.is_empty() {
        f.insert(kconfig::Feature::Containers);
    }
    f
}

/// Checks the kernel's config against the default fragments for this image. `None` when the
/// kernel's config cannot be found (a bare image without IKCONFIG): that is logged, not fatal.
pub fn kernel_report(
    spec: &Spec,
    kernel: &ResolvedKernel,
    closure: &[crate::kernel::kmod::ModuleInfo],
    compression: Compression,
) -> Result<Option<kconfig::Report>, BuildError> {
    let (config, source) = match &kernel.config {
        Some(c) => kconfig::config_for(c).map_err(|source| BuildError::KernelConfig {
            image: kernel.image.clone(),
            source,
        })?,
        None => match kconfig::config_for(&kernel.image) {
            Ok(x) => x,
            Err(e) if !spec.raw.modules.is_empty() && kernel.modules_dir.is_none() => {
                return Err(BuildError::Modules(format!(
                    "the spec asks for modules {:?} but the kernel has no modules directory, and \
                     its configuration is unknown ({})",
                    spec.raw.modules,
                    crate::error_chain(&e)
                )))
            }
            Err(e) => {
                tracing::warn!(
                    "cannot check the kernel's configuration: {}",
                    crate::error_chain(&e)
                );
                return Ok(None);
            }
        },
    };
    let dir = kernel_config_dir();
    let paths = kconfig::fragment_paths(&dir, &kconfig::default_fragments(&spec.raw.arch), &dir)
        .map_err(BuildError::Fragments)?;
    let mut reqs = kconfig::requirements(&paths).map_err(BuildError::Fragments)?;
    let ws = spec::workspace_dir();
    for r in &mut reqs {
        if let Ok(rel) = r.file.strip_prefix(&ws) {
            r.file = rel.to_path_buf();
        }
    }
    let modules = kconfig::Modules {
        in_image: closure
            .iter()
            .map(|m| kconfig::module_key(&m.name))
            .collect(),
        in_kernel: kernel.modules_dir.as_deref().map(kconfig::module_names),
        image_known: true,
    };
    if kernel.modules_dir.is_none() {
        // The spec's modules must be built in: each must name an option that is =y.
        for m in &spec.raw.modules {
            let key = kconfig::module_key(m);
            let built_in = reqs.iter().any(|r| {
                r.module.as_deref().map(kconfig::module_key).as_deref() == Some(key.as_str())
                    && config.get(&r.option) == "y"
            });
            if !built_in {
                return Err(BuildError::Modules(format!(
                    "the spec asks for module {m:?} but the kernel has no modules directory and \
                     no kernel-config/ option known to provide {m:?} is built in: drop it from \
                     `modules:`, or use a kernel with modules"
                )));
            }
        }
    }
    Ok(Some(kconfig::check(
        &config,
        &source,
        &reqs,
        &features(spec, compression),
        &modules,
    )))
}

/// `minke kernel check`: the report for `kernel` (a file, a Debian package name, or the
/// spec's own kernel when `None`) running the image of `spec` (the default spec when `None`).
pub fn check_kernel(
    spec: Option<&Path>,
    kernel: Option<&str>,
    compression: Option<Compression>,
    cache: &Cache,
    progress: &dyn Fn(&str),
) -> Result<kconfig::Report, BuildError> {
    let spec = spec::load(spec)?;
    let resolved = match kernel {
        None => resolve_kernel(&spec, cache, epoch_from_env(), progress)?,
        Some(k) if Path::new(k).exists() => {
            let image = PathBuf::from(k);
            let version = release_from_file_name(&image).unwrap_or_default();
            let modules_dir = modules_beside(&image, &version);
            ResolvedKernel {
                image,
                modules_dir,
                config: None,
                version,
                source: format!("path {k}"),
            }
        }
        Some(k) if !k.contains('/') => kernel_from_package(k, cache, progress)?,
        Some(k) => return Err(BuildError::Kernel(format!("{k} does not exist"))),
    };
    let closure = module_closure(&spec, &resolved)?;
    let compression = compression.unwrap_or(spec.raw.compression);
    kernel_report(&spec, &resolved, &closure, compression)?.ok_or_else(|| {
        BuildError::Kernel(format!(
            "no configuration found for {}: pass its .config or config-VERSION file",
            resolved.image.display()
        ))
    })
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
                .is_some_and(|n| crate::kernel::kmod::module_stem(n).is_some())
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
) -> Result<ResolvedKernel, BuildError> {
    let k = |source| BuildError::KernelPackage {
        package: package.to_owned(),
        source,
    };
    progress(&format!("resolving kernel package {package}"));
    let real = crate::sources::pins::resolve_kernel(cache, package).map_err(k)?;
    progress(&format!("fetching {real}"));
    let deb = crate::sources::pins::fetch(cache, &real, "amd64").map_err(k)?;
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
            let json = serde_json::to_vec(&r).map_err(|source| BuildError::Json {
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

/// Everything [`build`] computed before writing outputs (exposed for tests and `inspect`).
pub struct Assembled {
    /// The merged tree.
    pub tree: Tree,
    /// The init's config.
    pub config: ImageConfig,
    /// Layers in merge order.
    pub layers: Vec<LayerRef>,
    /// The kernel.
    pub kernel: ResolvedKernel,
    /// The validated spec.
    pub spec: Spec,
}

/// Resolves a spec into the merged tree and config without archiving.
pub fn assemble(opts: &BuildOptions, progress: &dyn Fn(&str)) -> Result<Assembled, BuildError> {
    let mut spec = spec::load(opts.spec.as_deref())?;
    if let Some(k) = &opts.kernel {
        spec.raw.kernel = k.clone();
    }
    let workspace = spec::workspace_dir();
    let search = package::search_path(&spec.base_dir, &workspace);
    let cx = package::Context {
        cache: &opts.cache,
        workspace: &workspace,
        epoch: opts.epoch,
        progress,
    };

    // Packages, init first; the merge order is the spec's.
    let mut names: Vec<(String, bool)> = vec![(spec.raw.init.clone(), false)];
    names.extend(spec.packages.iter().cloned());
    for c in &spec.raw.containers {
        if !names.iter().any(|(n, _)| n == &c.package) {
            names.push((c.package.clone(), false));
        }
    }
    let mut tree = Tree::new();
    let mut owner: BTreeMap<String, String> = BTreeMap::new();
    let mut layers = Vec::new();
    let mut containers = Vec::new();
    for (name, overrides) in &names {
        let pkg = package::load(name, &search)?;
        let layer = package::produce(&pkg, &cx)?;
        merge(&mut tree, &mut owner, &layer.tree, name, *overrides)?;
        layers.push(LayerRef {
            name: name.clone(),
            digest: layer.record.digest.clone(),
        });
        for c in spec.raw.containers.iter().filter(|c| &c.package == name) {
            let rootfs = match &pkg.source {
                package::Source::Oci(o) => Some(o.dest.clone()),
                package::Source::Dir(d) => d.dest.clone(),
                _ => None,
            }
            .ok_or_else(|| {
                BuildError::Other(format!(
                    "container {:?}: package {name} is not an oci or dir package with a dest",
                    c.name
                ))
            })?;
            containers.push(cfg::Container {
                name: c.name.clone(),
                rootfs,
            });
        }
    }

    // Kernel and modules, then the kernel's config checked against what this image needs.
    let kernel = resolve_kernel(&spec, &opts.cache, opts.epoch, progress)?;
    let closure = module_closure(&spec, &kernel)?;
    let compression = opts.compression.unwrap_or(spec.raw.compression);
    if let Some(report) = kernel_report(&spec, &kernel, &closure, compression)? {
        if report.fatal() {
            return Err(BuildError::Kernel(format!(
                "the kernel cannot run this image:\n{}",
                report.render(false)
            )));
        }
    }
    let mut module_list = Vec::new();
    if let Some(mdir) = &kernel.modules_dir {
        let mut mods = Tree::new();
        for m in closure {
            let rel = m.path.to_string_lossy().into_owned();
            let image_path = format!("lib/modules/{}/{rel}", kernel.version);
            let src = mdir.join(&m.path);
            let size = std::fs::metadata(&src).map_err(io_err(&src))?.len();
            mods.insert(
                &image_path,
                Node {
                    mode: 0o644,
                    uid: 0,
                    gid: 0,
                    kind: NodeKind::File(FileData::Path { path: src, size }),
                },
            )?;
            module_list.push(cfg::Module {
                name: m.name.clone(),
                path: format!("/{image_path}"),
                params: String::new(),
            });
        }
        let recs = records_of(&mods).map_err(|source| BuildError::Hash {
            what: "the kernel modules",
            source,
        })?;
        merge(&mut tree, &mut owner, &mods, "kernel-modules", false)?;
        layers.push(LayerRef {
            name: "kernel-modules".into(),
            digest: records_digest(&recs),
        });
    }

    // The spec's own files, then the config.
    let mut own = Tree::new();
    for f in &spec.files {
        let kind = match &f.what {
            FileWhat::Contents(c) => NodeKind::File(FileData::Inline(c.as_bytes().into())),
            FileWhat::Source(p) => {
                let size = std::fs::metadata(p).map_err(io_err(p))?.len();
                NodeKind::File(FileData::Path {
                    path: p.clone(),
                    size,
                })
            }
            FileWhat::Symlink(t) => NodeKind::Symlink(t.clone()),
            FileWhat::Directory => NodeKind::Dir,
        };
        own.insert(
            &f.path,
            Node {
                mode: f.mode,
                uid: f.uid,
                gid: f.gid,
                kind,
            },
        )?;
    }
    for d in [
        "proc",
        "sys",
        "dev",
        "run",
        "tmp",
        "var",
        "root",
        "etc/minke",
    ] {
        if own.get(d).is_none() && tree.get(d).is_none() {
            own.insert(d, Node::dir(if d == "tmp" { 0o1777 } else { 0o755 }))?;
        }
    }
    for d in &spec.raw.disks {
        if own.get(&d.mountpoint).is_none() && tree.get(&d.mountpoint).is_none() {
            own.insert(&d.mountpoint, Node::dir(0o755))?;
        }
    }
    let config = image_config(&spec, module_list, containers);
    // The init and agents read the compact form; the JSON copy is for people and `Info`.
    let json = serde_json::to_vec_pretty(&config).map_err(|source| BuildError::Json {
        what: "the image config",
        source,
    })?;
    own.insert(minke_protocol::IMAGE_CONFIG_PATH, Node::file(0o644, json))?;
    own.insert(
        minke_protocol::IMAGE_CONFIG_BIN_PATH,
        Node::file(0o644, config.encode()),
    )?;
    let recs = records_of(&own).map_err(|source| BuildError::Hash {
        what: "the spec's files",
        source,
    })?;
    // The spec's files may deliberately replace package files.
    merge(&mut tree, &mut owner, &own, "spec", true)?;
    layers.push(LayerRef {
        name: "spec".into(),
        digest: records_digest(&recs),
    });
    Ok(Assembled {
        tree,
        config,
        layers,
        kernel,
        spec,
    })
}

/// Merges `layer` into `tree`; a path written twice with different content is an error unless
/// the later layer overrides. Directories merge (the later one's metadata wins).
fn merge(
    tree: &mut Tree,
    owner: &mut BTreeMap<String, String>,
    layer: &Tree,
    name: &str,
    overrides: bool,
) -> Result<(), BuildError> {
    for (path, node) in layer.iter() {
        if let Some(old) = tree.get(path) {
            let same = match (&old.kind, &node.kind) {
                (NodeKind::Dir, NodeKind::Dir) => true,
                (NodeKind::File(a), NodeKind::File(b)) => old.mode == node.mode && same_data(a, b),
                (a, b) => a == b && old.mode == node.mode,
            };
            if !same && !overrides {
                return Err(BuildError::Conflict {
                    path: format!("/{path}"),
                    first: owner
                        .get(path)
                        .cloned()
                        .unwrap_or_else(|| "an earlier layer".into()),
                    second: name.to_string(),
                });
            }
            if matches!((&old.kind, &node.kind), (NodeKind::Dir, NodeKind::Dir)) && !overrides {
                continue;
            }
        }
        tree.insert(path, node.clone())?;
        owner.insert(path.clone(), name.to_string());
    }
    Ok(())
}

fn same_data(a: &FileData, b: &FileData) -> bool {
    if a == b {
        return true;
    }
    if a.size() != b.size() {
        return false;
    }
    matches!((a.read(), b.read()), (Ok(x), Ok(y)) if x == y)
}

/// Turns the validated spec into the init's config.
pub fn image_config(
    spec: &Spec,
    modules: Vec<cfg::Module>,
    containers: Vec<cfg::Container>,
) -> ImageConfig {
    let raw = &spec.raw;
    let command = |argv: &[String],
                   env: &BTreeMap<String, String>,
                   cwd: &Option<String>,
                   user: &Option<String>| {
        let (uid, gid) = user.as_deref().and_then(spec::parse_user).unwrap_or((0, 0));
        cfg::Command {
            argv: argv.to_vec(),
            env: env.clone(),
            cwd: cwd.clone(),
            uid,
            gid,
        }
    };
    let task = |t: &spec::RawTask| cfg::Task {
        name: t.name.clone(),
        command: command(&t.command, &t.env, &t.cwd, &t.user),
        on_failure: t.on_failure,
        timeout_ms: t.timeout_ms,
    };
    let by_name: BTreeMap<&str, &spec::RawService> =
        raw.services.iter().map(|s| (s.name.as_str(), s)).collect();
    let services = spec
        .service_order
        .iter()
        .filter_map(|n| by_name.get(n.as_str()))
        .map(|s| cfg::Service {
            name: s.name.clone(),
            command: command(&s.command, &s.env, &s.cwd, &s.user),
            restart: s.restart,
            after: s.after.clone(),
            readiness: s.readiness,
            exit_on_stop: s.exit_on_stop,
            oom_score_adj: s.oom_score_adj,
        })
        .collect();
    let agents = spec
        .agents
        .iter()
        .map(|(kind, port)| cfg::Agent {
            kind: *kind,
            port: port.or(match kind {
                AgentKind::Control => Some(minke_protocol::CONTROL_PORT),
                AgentKind::Timesync => Some(minke_protocol::TIMESYNC_PORT),
                AgentKind::Binfmt | AgentKind::Serial => None,
            }),
            // Agents start together; under the serial transport the time sync agent waits
            // for the serial agent's socket itself, so vsock boots don't wait for it.
            after: Vec::new(),
        })
        .collect();
    let binfmt = raw
        .binfmt
        .iter()
        .filter_map(|arch| crate::binfmt::entry(arch))
        .collect();
    ImageConfig {
        name: raw.name.clone(),
        hostname: raw.hostname.clone().unwrap_or_else(|| raw.name.clone()),
        modules,
        sysctls: raw.sysctls.clone(),
        rlimits: vec![cfg::Rlimit {
            resource: "nofile".into(),
            soft: Some(65536),
            hard: Some(65536),
        }],
        disks: raw
            .disks
            .iter()
            .map(|d| cfg::DiskMount {
                label: d.label.clone(),
                mountpoint: d.mountpoint.clone(),
                fstype: d.fstype.clone(),
                options: d.options.clone(),
                tmpfs_fallback: true,
            })
            .collect(),
        onboot: raw.onboot.iter().map(task).collect(),
        agents,
        services,
        onshutdown: raw.onshutdown.iter().map(task).collect(),
        binfmt,
        containers,
        shutdown_grace_ms: raw.shutdown_grace_ms,
    }
}

/// Builds the image and writes the four outputs.
pub fn build(opts: &BuildOptions, progress: &dyn Fn(&str)) -> Result<Image, BuildError> {
    let a = assemble(opts, progress)?;
    let name = a.spec.raw.name.clone();
    let compression = opts.compression.unwrap_or(a.spec.raw.compression);
    // Validate binfmt names now that the spec is known to be otherwise sound.
    for arch in &a.spec.raw.binfmt {
        crate::binfmt::check(arch, &a.tree).map_err(BuildError::Other)?;
    }

    let files = records_of(&a.tree).map_err(|source| BuildError::Hash {
        what: "the image's files",
        source,
    })?;
    let tree_digest = records_digest(&files);
    let key =
        sha256_hex(format!("initrd-v1 {tree_digest} {compression:?} {}", opts.epoch).as_bytes());
    let cached = opts.cache.dir("initrd").join(format!("{key}.img"));
    let initrd = match std::fs::read(&cached) {
        Ok(b) => b,
        Err(_) => {
            progress("archiving initramfs");
            let archive_opts = ArchiveOptions {
                mtime: opts.epoch as u32,
                compression,
                ..ArchiveOptions::default()
            };
            let bytes = crate::archive::compress::archive(&a.tree, &archive_opts)
                .map_err(BuildError::Archive)?;
            write_atomic(&cached, &bytes).map_err(io_err(&cached))?;
            bytes
        }
    };
    let kernel_bytes = std::fs::read(&a.kernel.image).map_err(io_err(&a.kernel.image))?;
    let kernel_sha = sha256_hex(&kernel_bytes);
    let initrd_sha = sha256_hex(&initrd);
    let cmdline = a.spec.raw.cmdline.trim().to_string();
    let image_digest = sha256_hex(format!("{kernel_sha}\n{initrd_sha}\n{cmdline}\n").as_bytes());
    let manifest = Manifest {
        name: name.clone(),
        arch: a.spec.raw.arch.clone(),
        image_digest,
        kernel: KernelRecord {
            sha256: kernel_sha.clone(),
            version: a.kernel.version.clone(),
            source: a.kernel.source.clone(),
        },
        cmdline: cmdline.clone(),
        initrd: InitrdRecord {
            sha256: initrd_sha.clone(),
            size: initrd.len() as u64,
            compression,
            mtime: opts.epoch,
        },
        layers: a.layers.clone(),
        modules: a.config.modules.clone(),
        disks: a
            .spec
            .raw
            .disks
            .iter()
            .map(|d| DiskRecord {
                label: d.label.clone(),
                size: d.size.as_deref().and_then(spec::parse_size),
            })
            .collect(),
        files,
    };
    let mut manifest_json =
        serde_json::to_vec_pretty(&manifest).map_err(|source| BuildError::Json {
            what: "the manifest",
            source,
        })?;
    manifest_json.push(b'\n');

    let [kp, ip, cp, mp] = Image::paths(&opts.out_dir, &name);
    std::fs::create_dir_all(&opts.out_dir).map_err(io_err(&opts.out_dir))?;
    // Write each output unless an identical one is already there; manifest last.
    write_if_changed(&kp, &kernel_bytes, &kernel_sha)?;
    write_if_changed(&ip, &initrd, &initrd_sha)?;
    let cmdline_file = format!("{cmdline}\n");
    write_if_changed(
        &cp,
        cmdline_file.as_bytes(),
        &sha256_hex(cmdline_file.as_bytes()),
    )?;
    write_if_changed(&mp, &manifest_json, &sha256_hex(&manifest_json))?;
    let disks = a
        .spec
        .raw
        .disks
        .iter()
        .map(|d| {
            (
                d.label.clone(),
                d.size.as_deref().and_then(spec::parse_size),
            )
        })
        .collect();
    Ok(Image {
        name,
        dir: opts.out_dir.clone(),
        kernel: kp,
        initrd: ip,
        cmdline,
        manifest,
        disks,
    })
}

fn write_if_changed(path: &Path, bytes: &[u8], sha: &str) -> Result<(), BuildError> {
    if let Ok(md) = std::fs::metadata(path) {
        if md.len() == bytes.len() as u64 && sha256_file(path).ok().as_deref() == Some(sha) {
            return Ok(());
        }
    }
    write_atomic(path, bytes).map_err(io_err(path))?;
    Ok(())
}

/// Describes the differences between two manifests, one line each; empty when equal.
pub fn diff(a: &Manifest, b: &Manifest) -> Vec<String> {
    let mut out = Vec::new();
    if a.kernel != b.kernel {
        out.push(format!(
            "kernel: {} ({}) -> {} ({})",
            a.kernel.version,
            &a.kernel.sha256[..12.min(a.kernel.sha256.len())],
            b.kernel.version,
            &b.kernel.sha256[..12.min(b.kernel.sha256.len())]
        ));
    }
    if a.cmdline != b.cmdline {
        out.push(format!("cmdline: {:?} -> {:?}", a.cmdline, b.cmdline));
    }
    if a.initrd.compression != b.initrd.compression {
        out.push(format!(
            "compression: {:?} -> {:?}",
            a.initrd.compression, b.initrd.compression
        ));
    }
    let am: Vec<&str> = a.modules.iter().map(|m| m.name.as_str()).collect();
    let bm: Vec<&str> = b.modules.iter().map(|m| m.name.as_str()).collect();
    if am != bm {
        out.push(format!("modules: {} -> {}", am.join(","), bm.join(",")));
    }
    let la: BTreeMap<&str, &str> = a
        .layers
        .iter()
        .map(|l| (l.name.as_str(), l.digest.as_str()))
        .collect();
    let lb: BTreeMap<&str, &str> = b
        .layers
        .iter()
        .map(|l| (l.name.as_str(), l.digest.as_str()))
        .collect();
    for (n, d) in &la {
        match lb.get(n) {
            None => out.push(format!("- layer {n}")),
            Some(e) if e != d => out.push(format!("~ layer {n}")),
            _ => {}
        }
    }
    for n in lb.keys().filter(|n| !la.contains_key(*n)) {
        out.push(format!("+ layer {n}"));
    }
    let fa: BTreeMap<&str, &Record> = a.files.iter().map(|r| (r.path.as_str(), r)).collect();
    let fb: BTreeMap<&str, &Record> = b.files.iter().map(|r| (r.path.as_str(), r)).collect();
    for (p, r) in &fa {
        match fb.get(p) {
            None => out.push(format!("- {p}")),
            Some(s) if s != r => {
                let mut what = Vec::new();
                if r.kind != s.kind {
                    what.push(format!("type {:?} -> {:?}", r.kind, s.kind));
                }
                if r.mode != s.mode {
                    what.push(format!("mode {:o} -> {:o}", r.mode, s.mode));
                }
                if (r.uid, r.gid) != (s.uid, s.gid) {
                    what.push(format!("owner {}:{} -> {}:{}", r.uid, r.gid, s.uid, s.gid));
                }
                if r.sha256 != s.sha256 || r.size != s.size {
                    what.push(format!(
                        "content ({} -> {} bytes)",
                        r.size.unwrap_or(0),
                        s.size.unwrap_or(0)
                    ));
                }
                if r.target != s.target {
                    what.push(format!("target {:?} -> {:?}", r.target, s.target));
                }
                out.push(format!("~ {p}: {}", what.join(", ")));
            }
            _ => {}
        }
    }
    for p in fb.keys().filter(|p| !fa.contains_key(*p)) {
        out.push(format!("+ {p}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflicting_layers_are_an_error_unless_overridden() {
        let mut tree = Tree::new();
        let mut owner = BTreeMap::new();
        let mut a = Tree::new();
        a.insert("bin/sh", Node::file(0o755, &b"a"[..])).unwrap();
        let mut b = Tree::new();
        b.insert("bin/sh", Node::file(0o755, &b"b"[..])).unwrap();
        merge(&mut tree, &mut owner, &a, "pa", false).unwrap();
        merge(&mut tree, &mut owner, &a, "pa2", false).unwrap();
        let err = merge(&mut tree, &mut owner, &b, "pb", false).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("/bin/sh") && msg.contains("pa2") && msg.contains("pb"),
            "{msg}"
        );
        merge(&mut tree, &mut owner, &b, "pb", true).unwrap();
        assert_eq!(
            tree.get("bin/sh").unwrap().kind,
            b.get("bin/sh").unwrap().kind
        );
    }

    #[test]
    fn diff_names_changed_files() {
        let rec = |p: &str, sha: &str| Record {
            path: p.into(),
            kind: crate::archive::tree::EntryType::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: Some(1),
            sha256: Some(sha.into()),
            target: None,
        };
        let m = Manifest {
            name: "a".into(),
            arch: "x86_64".into(),
            image_digest: "d".into(),
            kernel: KernelRecord {
                sha256: "k".repeat(64),
                version: "v".into(),
                source: "s".into(),
            },
            cmdline: "c".into(),
            initrd: InitrdRecord {
                sha256: "i".into(),
                size: 1,
                compression: Compression::Gzip,
                mtime: 0,
            },
            layers: vec![],
            modules: vec![],
            disks: vec![],
            files: vec![rec("/a", "1"), rec("/b", "1")],
        };
        let mut n = m.clone();
        n.files = vec![rec("/a", "2"), rec("/c", "1")];
        let d = diff(&m, &n);
        assert_eq!(d, ["~ /a: content (1 -> 1 bytes)", "- /b", "+ /c"]);
        assert!(diff(&m, &m).is_empty());
    }
}
