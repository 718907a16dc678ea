//! The build pipeline: spec → layers → merged tree → initrd, kernel, cmdline and manifest.
//!
//! [`build`] is the library entry point the CLI, the tests and xtask call: [`assemble`] resolves
//! and merges everything in memory, the tree is archived (cached by content), and the outputs
//! are written last, each atomically ([`outputs`]), so a failed build leaves no output behind
//! and an interrupted one leaves the previous image intact. [`manifest`] describes an image,
//! [`config`] is what its init reads, [`binfmt`] the foreign-binary table in that config.

use std::path::PathBuf;

use crate::archive::compress::{ArchiveOptions, Compression};
use crate::archive::tree::TreeError;
use crate::epoch_from_env;
use crate::error::io_err;
use crate::kernel::KernelError;
use crate::layer::{records_digest, records_of, sha256_hex, write_atomic, Cache, Record};
pub use crate::sources::oci::registry::{RegistryError, RegistryOptions};
use crate::sources::package::PackageError;
use crate::spec::{self, SpecError};

pub mod addon;
mod assemble;
pub mod binfmt;
pub mod config;
pub mod efi;
pub mod manifest;
pub mod outputs;
pub mod publish;
pub mod sbom;

pub use assemble::{assemble, lock_path, Assembled};
pub use config::image_config;
pub use manifest::{diff, DiskRecord, InitrdRecord, KernelRecord, LayerRef, Manifest};
pub use outputs::Image;

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
    /// How registry images are pinned and fetched.
    pub registry: RegistryOptions,
    /// Output formats beyond the image directory.
    pub formats: Vec<Format>,
    /// A registry repository (`REGISTRY/NAME`) whose shared layer cache is asked before a
    /// layer is produced here.
    pub cache_from: Option<String>,
    /// A registry repository the build's layers are pushed to (those it lacks).
    pub cache_to: Option<String>,
    /// Build for this architecture instead of the spec's (its default kernel and command
    /// line follow, unless the spec names others).
    pub arch: Option<minke_protocol::arch::Arch>,
}

/// An output format of `minke build --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The image directory: kernel, initrd, cmdline, manifest and SBOM (always written).
    Initrd,
    /// `NAME.tar`: those files in one reproducible tarball.
    Tar,
    /// `NAME.efi`: a Unified Kernel Image (EFI stub, kernel, initrd, command line).
    Uki,
    /// `NAME.img`: a raw GPT disk, its EFI system partition booting the UKI, and the data
    /// disks as partitions.
    Disk,
    /// `NAME.qcow2`: that disk as qcow2.
    Qcow2,
    /// `NAME.iso`: a hybrid EFI ISO booting the UKI.
    Iso,
}

impl Format {
    /// Whether UEFI firmware boots it (it carries the UKI).
    pub fn is_efi(self) -> bool {
        matches!(
            self,
            Format::Uki | Format::Disk | Format::Qcow2 | Format::Iso
        )
    }

    /// The file a format writes beside the image, `None` for the image directory itself.
    pub fn extension(self) -> Option<&'static str> {
        match self {
            Format::Initrd => None,
            Format::Tar => Some("tar"),
            Format::Uki => Some("efi"),
            Format::Disk => Some("img"),
            Format::Qcow2 => Some("qcow2"),
            Format::Iso => Some("iso"),
        }
    }
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
            registry: RegistryOptions::default(),
            formats: Vec::new(),
            cache_from: None,
            cache_to: None,
            arch: None,
        }
    }
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
    /// The kernel could not be resolved, built or judged, or cannot run the image.
    #[error(transparent)]
    Kernel(#[from] KernelError),
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
    /// A registry image could not be pinned or its lock file written.
    #[error(transparent)]
    Registry(#[from] RegistryError),
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

crate::error::into_io_variant!(BuildError);

/// Builds the image and writes the four outputs.
pub fn build(opts: &BuildOptions, progress: &dyn Fn(&str)) -> Result<Image, BuildError> {
    let cache_to = opts
        .cache_to
        .as_deref()
        .map(crate::remote::RemoteCache::new)
        .transpose()
        .map_err(|e| BuildError::Other(format!("--cache-to {e}")))?;
    let a = assemble(opts, progress)?;
    // The EFI stub is found (or fetched) once, before anything is written: a build that
    // cannot make its UEFI formats fails without leaving an image behind.
    let stub = opts
        .formats
        .iter()
        .any(|f| f.is_efi())
        .then(|| efi::stub(a.spec.arch(), &opts.cache))
        .transpose()?;
    let compression = opts.compression.unwrap_or(a.spec.raw.compression);
    // Validate binfmt names now that the spec is known to be otherwise sound.
    for arch in &a.spec.raw.binfmt {
        binfmt::check(arch, &a.tree, a.spec.arch()).map_err(BuildError::Other)?;
    }
    let files = records_of(&a.tree).map_err(|source| BuildError::Hash {
        what: "the image's files",
        source,
    })?;
    let initrd = archive_cached(&a, &files, compression, opts, progress)?;
    let kernel = std::fs::read(&a.kernel.image).map_err(io_err(&a.kernel.image))?;
    let manifest = manifest_of(&a, files, &kernel, &initrd, compression, opts.epoch);
    let sha1 = sha1_of_files(&a.tree)?;
    let sbom = sbom::spdx_json(&manifest, &a.owners, &sha1, opts.epoch);
    let mut image = outputs::write_initrd_image(&opts.out_dir, manifest, &kernel, &initrd, &sbom)?;
    image.format_outputs =
        write_formats(&image, &opts.formats, opts.epoch, stub.as_ref(), progress)?;
    if let Some(remote) = cache_to {
        let registry = crate::sources::oci::registry::Registry::new(
            opts.cache.clone(),
            opts.registry.clone(),
            None,
        )?;
        for key in &a.layer_keys {
            remote
                .push(&registry, &opts.cache, key, progress)
                .map_err(|e| {
                    BuildError::Other(format!("--cache-to: {}", minke_protocol::error_chain(&e)))
                })?;
        }
    }
    Ok(image)
}

/// Writes the formats beyond the image directory, each once, in the order given; returns
/// their paths.
pub fn write_formats(
    image: &Image,
    formats: &[Format],
    epoch: u64,
    stub: Option<&efi::Stub>,
    progress: &dyn Fn(&str),
) -> Result<Vec<PathBuf>, BuildError> {
    let mut wanted: Vec<Format> = Vec::new();
    for f in formats {
        if !wanted.contains(f) && *f != Format::Initrd {
            wanted.push(*f);
        }
    }
    let uki = if wanted.iter().any(|f| f.is_efi()) {
        let stub = stub.ok_or_else(|| {
            BuildError::Other("the UEFI formats were asked for without an EFI stub".into())
        })?;
        progress("writing the UKI");
        Some(efi::uki_bytes(image, stub)?)
    } else {
        None
    };
    // The raw disk, made once for `disk` and `qcow2`: committed as NAME.img only when `disk`
    // is asked for; a qcow2-only build converts it and lets it go.
    let mut raw: Option<efi::Staged> = None;
    let mut raw_path: Option<PathBuf> = None;
    let mut out = Vec::new();
    for f in &wanted {
        let uki = uki.as_deref().unwrap_or_default();
        let path = match f {
            Format::Initrd => continue,
            Format::Tar => outputs::write_tar(image, epoch)?,
            Format::Uki => efi::write_uki(image, uki)?,
            Format::Disk | Format::Qcow2 => {
                if raw.is_none() && raw_path.is_none() {
                    progress("writing the disk");
                    raw = Some(efi::disk::write_raw(image, uki, epoch)?);
                }
                if *f == Format::Disk {
                    let committed = match raw.take() {
                        Some(staged) => staged.commit()?,
                        None => raw_path.clone().unwrap_or_default(),
                    };
                    raw_path = Some(committed.clone());
                    committed
                } else {
                    progress("converting the disk to qcow2");
                    let from = match (&raw, &raw_path) {
                        (Some(staged), _) => staged.path().to_path_buf(),
                        (None, Some(p)) => p.clone(),
                        (None, None) => unreachable!("the raw disk was written above"),
                    };
                    efi::disk::write_qcow2(image, &from)?
                }
            }
            Format::Iso => {
                progress("writing the ISO");
                efi::iso::write_iso(image, uki, epoch)?
            }
        };
        out.push(path);
    }
    Ok(out)
}

/// SHA1 of every regular file of `tree`, by manifest path (`/bin/sh`), for the SBOM.
fn sha1_of_files(
    tree: &crate::archive::tree::Tree,
) -> Result<std::collections::BTreeMap<String, String>, BuildError> {
    use sha1::Digest;
    let mut out = std::collections::BTreeMap::new();
    for (path, node) in tree.iter() {
        if let crate::archive::tree::NodeKind::File(data) = &node.kind {
            let mut h = sha1::Sha1::new();
            match data {
                crate::archive::tree::FileData::Inline(b) => h.update(b),
                crate::archive::tree::FileData::Path { path: p, .. } => {
                    let mut f = std::fs::File::open(p).map_err(io_err(p))?;
                    std::io::copy(&mut f, &mut h).map_err(io_err(p))?;
                }
            }
            out.insert(format!("/{path}"), hex::encode(h.finalize()));
        }
    }
    Ok(out)
}

/// The initrd's bytes: from the cache when this tree was archived before with these options
/// (the key is the digest of its records), else archived now and cached.
fn archive_cached(
    a: &Assembled,
    files: &[Record],
    compression: Compression,
    opts: &BuildOptions,
    progress: &dyn Fn(&str),
) -> Result<Vec<u8>, BuildError> {
    let tree_digest = records_digest(files);
    let key =
        sha256_hex(format!("initrd-v1 {tree_digest} {compression:?} {}", opts.epoch).as_bytes());
    let cached = opts.cache.dir("initrd").join(format!("{key}.img"));
    if let Ok(bytes) = std::fs::read(&cached) {
        return Ok(bytes);
    }
    progress("archiving initramfs");
    let archive_opts = ArchiveOptions {
        mtime: opts.epoch as u32,
        compression,
        ..ArchiveOptions::default()
    };
    let bytes =
        crate::archive::compress::archive(&a.tree, &archive_opts).map_err(BuildError::Archive)?;
    write_atomic(&cached, &bytes).map_err(io_err(&cached))?;
    Ok(bytes)
}

/// The manifest of an assembled image with these kernel and initrd bytes.
fn manifest_of(
    a: &Assembled,
    files: Vec<Record>,
    kernel: &[u8],
    initrd: &[u8],
    compression: Compression,
    epoch: u64,
) -> Manifest {
    let kernel_sha = sha256_hex(kernel);
    let initrd_sha = sha256_hex(initrd);
    let cmdline = a.spec.raw.cmdline.trim().to_string();
    let image_digest = sha256_hex(format!("{kernel_sha}\n{initrd_sha}\n{cmdline}\n").as_bytes());
    Manifest {
        name: a.spec.raw.name.clone(),
        arch: a.spec.raw.arch.clone(),
        image_digest,
        kernel: KernelRecord {
            sha256: kernel_sha,
            version: a.kernel.version.clone(),
            source: a.kernel.source.clone(),
        },
        cmdline,
        initrd: InitrdRecord {
            sha256: initrd_sha,
            size: initrd.len() as u64,
            compression,
            mtime: epoch,
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
        shares: a.share_kinds.clone(),
        network: a.network,
        microvm: a.microvm,
        default_network: a.spec.raw.network,
        onshutdown: a
            .spec
            .raw
            .onshutdown
            .iter()
            .map(|t| t.name.clone())
            .collect(),
        files,
    }
}
