//! Images from registries (the OCI distribution API, through `oci-client`): a reference
//! (`REGISTRY/NAME:TAG` or `…@sha256:…`) and a platform are pinned to the digest of one image
//! manifest — from the spec's [`lock`] file when it has the pair, else resolved once and
//! recorded there — and every blob the image needs is fetched, verified against its digest
//! and kept in the content-addressed cache (`CACHE/blobs/sha256/HEX`), which build and run
//! share. A build with its lock file and a warm cache makes no network request.
//!
//! Transport: HTTPS, except for registries on a loopback address (`127.0.0.0/8`, `::1`,
//! `localhost`) and those the user names as insecure, which are spoken to over plain HTTP.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::{Digest, Sha256};

use super::format::{Index, Manifest, MT_DOCKER_LIST, MT_INDEX};
use super::platform::{choose_manifest, Wanted};
use super::{OciError, OciImage};
use crate::layer::Cache;

mod auth;
pub mod lock;

use lock::{Entry, Lock};

/// Media types asked for when reading a manifest by tag or digest.
const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// Largest manifest or index accepted.
const MAX_MANIFEST: usize = 4 << 20;

/// Why an image could not be pinned or fetched.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The reference does not parse.
    #[error("{image:?} is not an image reference ({reason}): write REGISTRY/NAME:TAG or REGISTRY/NAME@sha256:DIGEST")]
    Reference {
        /// As written.
        image: String,
        /// The parser's complaint.
        reason: String,
    },
    /// The platform does not parse.
    #[error(
        "{0:?} is not a platform: write OS/ARCH or OS/ARCH/VARIANT (linux/arm64, linux/arm/v7)"
    )]
    Platform(String),
    /// A request to the registry failed.
    #[error("cannot {what} {image}: {reason}{hint}")]
    Pull {
        /// What was asked.
        what: &'static str,
        /// The reference.
        image: String,
        /// The client's error.
        reason: String,
        /// What the user can do.
        hint: &'static str,
    },
    /// The registry has no such manifest (tag, digest or repository unknown).
    #[error("{image}: the registry has no such image ({reason})")]
    NotFound {
        /// The reference.
        image: String,
        /// The registry's words.
        reason: String,
    },
    /// What the registry sent is not what was asked for.
    #[error("{image}: {what}")]
    Bad {
        /// The reference.
        image: String,
        /// What is wrong.
        what: String,
    },
    /// The credentials could not be read.
    #[error("cannot read the credentials for {registry}: {reason}: fix the entry in $REGISTRY_AUTH_FILE or ~/.docker/config.json")]
    Credentials {
        /// The registry.
        registry: String,
        /// Why.
        reason: String,
    },
    /// The lock file is malformed.
    #[error("lock file {path}: {reason}: fix it, or delete it and build again to re-resolve every image")]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A local file could not be read or written.
    #[error("cannot access {path}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The stored image could not be unpacked.
    #[error(transparent)]
    Oci(#[from] OciError),
}

/// How registries are spoken to.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// Resolve tags again instead of using the lock file's digests.
    pub refresh: bool,
    /// Registries (`HOST[:PORT]`) spoken to over plain HTTP although not on loopback.
    pub insecure: Vec<String>,
    /// Credentials file (Docker's `config.json` format); `None`: `$REGISTRY_AUTH_FILE`, else
    /// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
    pub auth_file: Option<PathBuf>,
}

/// An image pinned to one manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pinned {
    /// The reference as written.
    pub image: String,
    /// The platform asked for, or `host`.
    pub platform: String,
    /// The image manifest's digest (`sha256:…`).
    pub digest: String,
}

/// Pins and fetches registry images for one build or run.
pub struct Registry {
    cache: Cache,
    opts: RegistryOptions,
    lock: Mutex<Lock>,
    net: Mutex<Option<Net>>,
}

/// The network side, made on first use: one client per registry host.
struct Net {
    rt: tokio::runtime::Runtime,
    clients: HashMap<String, Client>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

/// Whether `registry` (`HOST[:PORT]`) is on this machine's loopback.
fn is_loopback(registry: &str) -> bool {
    let host = match registry.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => registry.rsplit_once(':').map_or(registry, |(h, _)| h),
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The hex of a well-formed `sha256:` digest.
fn hex_of(digest: &str) -> Option<&str> {
    digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')))
}

impl Registry {
    /// A registry session over `cache`, pinning through the lock file at `lock` (`None`: the
    /// built-in spec, whose pins are not kept).
    pub fn new(
        cache: Cache,
        opts: RegistryOptions,
        lock: Option<&Path>,
    ) -> Result<Registry, RegistryError> {
        Ok(Registry {
            cache,
            opts,
            lock: Mutex::new(Lock::load(lock)?),
            net: Mutex::new(None),
        })
    }

    /// Writes the lock file when this session changed what it records.
    pub fn save_lock(&self) -> Result<bool, RegistryError> {
        self.lock.lock().unwrap_or_else(|p| p.into_inner()).save()
    }

    fn reference(image: &str) -> Result<Reference, RegistryError> {
        image
            .parse()
            .map_err(|e: oci_client::ParseError| RegistryError::Reference {
                image: image.to_string(),
                reason: e.to_string(),
            })
    }

    /// The manifest digest `image` has for `platform`: the lock file's, else resolved now
    /// (and recorded).
    pub fn pin(&self, image: &str, platform: Option<&str>) -> Result<Pinned, RegistryError> {
        let want = match platform {
            Some(p) => Some(Wanted::parse(p).ok_or_else(|| RegistryError::Platform(p.into()))?),
            None => None,
        };
        let plat = want.as_ref().map_or("host".to_string(), |w| w.to_string());
        let reference = Self::reference(image)?;
        if !self.opts.refresh {
            let locked = self
                .lock
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(image, &plat);
            if let Some(e) = locked {
                return Ok(Pinned {
                    image: image.into(),
                    platform: plat,
                    digest: e.digest,
                });
            }
        }
        let (digest, index) = self.resolve(image, &reference, want.as_ref())?;
        self.lock
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .put(Entry {
                image: image.into(),
                platform: plat.clone(),
                digest: digest.clone(),
                index,
            });
        Ok(Pinned {
            image: image.into(),
            platform: plat,
            digest,
        })
    }

    /// Asks the registry: the platform's manifest digest, and the index's when the reference
    /// named one. Both documents are verified and stored.
    fn resolve(
        &self,
        image: &str,
        reference: &Reference,
        want: Option<&Wanted>,
    ) -> Result<(String, Option<String>), RegistryError> {
        let bytes = self.manifest(image, reference, reference.digest())?;
        let top = sha256_digest(&bytes);
        if !is_index(&bytes) {
            return Ok((top, None));
        }
        let index: Index = parse(image, "index", &bytes)?;
        let mut nested = |digest: &str| -> Result<Index, OciError> {
            let b =
                self.manifest(image, reference, Some(digest))
                    .map_err(|e| OciError::Malformed {
                        image: image.into(),
                        what: e.to_string(),
                    })?;
            serde_json::from_slice(&b).map_err(|source| OciError::Json {
                image: image.into(),
                what: format!("index {digest}"),
                source,
            })
        };
        let chosen = choose_manifest(Path::new(image), &index, want, &mut nested)?;
        let b = self.manifest(image, reference, Some(&chosen.digest))?;
        if is_index(&b) {
            return Err(RegistryError::Bad {
                image: image.into(),
                what: format!(
                    "{} is an index where an image manifest belongs",
                    chosen.digest
                ),
            });
        }
        Ok((chosen.digest, Some(top)))
    }

    /// A manifest or index by tag (`digest` `None`) or digest: from the cache when held, else
    /// from the registry, checked against the digest asked for, and stored.
    fn manifest(
        &self,
        image: &str,
        reference: &Reference,
        digest: Option<&str>,
    ) -> Result<Vec<u8>, RegistryError> {
        if let Some(d) = digest {
            let hex = hex_of(d).ok_or_else(|| RegistryError::Bad {
                image: image.into(),
                what: format!("{d:?} is not a sha256 digest"),
            })?;
            if let Ok(b) = std::fs::read(self.blob_path(hex)) {
                if sha256_digest(&b) == d {
                    return Ok(b);
                }
            }
        }
        let target = match digest {
            Some(d) => Reference::with_digest(
                reference.registry().to_string(),
                reference.repository().to_string(),
                d.to_string(),
            ),
            None => reference.clone(),
        };
        let (bytes, _) = self.net(image, reference, "read the manifest of", |c, auth| {
            Box::pin(async move {
                c.pull_manifest_raw(&target, &auth, MANIFEST_TYPES)
                    .await
                    .map(|(b, d)| (b.to_vec(), d))
            })
        })?;
        if bytes.len() > MAX_MANIFEST {
            return Err(RegistryError::Bad {
                image: image.into(),
                what: format!("a manifest of {} bytes is larger than allowed", bytes.len()),
            });
        }
        let actual = sha256_digest(&bytes);
        if let Some(d) = digest {
            if actual != d {
                return Err(RegistryError::Bad {
                    image: image.into(),
                    what: format!("the registry sent {actual} for {d}: refusing it"),
                });
            }
        }
        self.store(&actual, &bytes)?;
        Ok(bytes)
    }

    fn blob_path(&self, hex: &str) -> PathBuf {
        self.cache.root().join("blobs/sha256").join(hex)
    }

    fn store(&self, digest: &str, bytes: &[u8]) -> Result<(), RegistryError> {
        let hex = hex_of(digest).unwrap_or_default();
        let path = self.blob_path(hex);
        crate::layer::write_atomic(&path, bytes)
            .map_err(|source| RegistryError::Io { path, source })
    }

    /// Runs one request against the registry `reference` names, with its credentials.
    fn net<T>(
        &self,
        image: &str,
        reference: &Reference,
        what: &'static str,
        call: impl FnOnce(
            Client,
            RegistryAuth,
        ) -> std::pin::Pin<
            Box<
                dyn std::future::Future<
                    Output = Result<T, oci_client::errors::OciDistributionError>,
                >,
            >,
        >,
    ) -> Result<T, RegistryError> {
        let registry = reference.resolve_registry().to_string();
        let auth = auth::for_registry(reference.registry(), self.opts.auth_file.as_deref())?;
        let mut guard = self.net.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            // Two workers: blobs arrive at once, and hashing them uses both cores of a small
            // machine.
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(|source| RegistryError::Io {
                    path: "tokio runtime".into(),
                    source,
                })?;
            // ring rather than aws-lc-rs: no C/cmake build for the whole tool, at the price of
            // classical (not post-quantum) key exchange for image pulls, whose content is
            // checked against digests anyway. The first install in a process wins.
            #[allow(deprecated)]
            let _ = rustls::crypto::ring::default_provider().install_default();
            *guard = Some(Net {
                rt,
                clients: HashMap::new(),
            });
        }
        let net = guard.as_mut().expect("set above");
        let plain = is_loopback(&registry)
            || self
                .opts
                .insecure
                .iter()
                .any(|r| *r == registry || *r == reference.registry());
        let client = net
            .clients
            .entry(registry.clone())
            .or_insert_with(|| {
                Client::new(ClientConfig {
                    protocol: if plain {
                        ClientProtocol::Http
                    } else {
                        ClientProtocol::Https
                    },
                    platform_resolver: None,
                    connect_timeout: Some(std::time::Duration::from_secs(30)),
                    read_timeout: Some(std::time::Duration::from_secs(120)),
                    user_agent: concat!("minke/", env!("CARGO_PKG_VERSION")),
                    ..ClientConfig::default()
                })
            })
            .clone();
        net.rt.block_on(call(client, auth)).map_err(|e| {
            use oci_client::errors::{OciDistributionError as E, OciErrorCode as C};
            let reason = error_chain(&e);
            let unknown = match &e {
                E::ImageManifestNotFoundError(_) => true,
                E::ServerError { code, .. } => *code == 404,
                E::RegistryError { envelope, .. } => envelope.errors.iter().any(|x| {
                    matches!(x.code, C::ManifestUnknown | C::NameUnknown | C::NotFound)
                }),
                _ => false,
            };
            if unknown {
                return RegistryError::NotFound {
                    image: image.to_string(),
                    reason,
                };
            }
            let hint = if reason.contains("InvalidContentType")
                || reason.contains("invalid HTTP version")
                || reason.contains("record overflow")
                || reason.contains("corrupt message")
            {
                ": if this registry speaks plain HTTP, name it with --insecure-registry"
            } else if matches!(e, oci_client::errors::OciDistributionError::DigestError(_)) {
                ": the bytes do not match the digest that names them; refusing them (nothing was kept)"
            } else if matches!(
                e,
                oci_client::errors::OciDistributionError::AuthenticationFailure(_)
                    | oci_client::errors::OciDistributionError::UnauthorizedError { .. }
            ) {
                ": log in (credentials from $REGISTRY_AUTH_FILE or ~/.docker/config.json)"
            } else {
                ""
            };
            RegistryError::Pull {
                what,
                image: image.to_string(),
                reason,
                hint,
            }
        })
    }

    /// Fetches what `pinned` needs into the cache (nothing when it is all there) and unpacks it.
    pub fn fetch(
        &self,
        pinned: &Pinned,
        progress: &dyn Fn(&str),
    ) -> Result<OciImage, RegistryError> {
        self.download(pinned, progress)?;
        Ok(super::unpack_manifest(self.cache.root(), &pinned.digest)?)
    }

    /// Fetches what `pinned` needs into the cache: its manifest, config and layers, each
    /// verified against its digest; nothing for what the cache holds.
    pub fn download(&self, pinned: &Pinned, progress: &dyn Fn(&str)) -> Result<(), RegistryError> {
        let image = pinned.image.as_str();
        let reference = Self::reference(image)?;
        let bytes = self.manifest(image, &reference, Some(&pinned.digest))?;
        let manifest: Manifest = parse(image, "manifest", &bytes)?;
        let mut wanted = Vec::new();
        for d in std::iter::once(&manifest.config).chain(&manifest.layers) {
            if d.media_type.contains("nondistributable") || d.media_type.contains("foreign") {
                return Err(RegistryError::Bad {
                    image: image.into(),
                    what: format!("layer {} is non-distributable ({}): it cannot be pulled from this registry", d.digest, d.media_type),
                });
            }
            let hex = hex_of(&d.digest).ok_or_else(|| RegistryError::Bad {
                image: image.into(),
                what: format!("{:?} is not a sha256 digest", d.digest),
            })?;
            let path = self.blob_path(hex);
            if !path.is_file() && !wanted.iter().any(|(p, _)| p == &path) {
                progress(&format!("pulling {image}: {} ({} bytes)", d.digest, d.size));
                wanted.push((path, d.digest.clone()));
            }
        }
        self.fetch_blobs(image, &reference, wanted)
    }

    /// Fetches `blobs` (cache path, digest) of `image` at once, each into a temporary file
    /// beside its place that becomes it only when all arrived. `oci-client` hashes each
    /// stream as it arrives and refuses one that does not match its digest.
    fn fetch_blobs(
        &self,
        image: &str,
        reference: &Reference,
        blobs: Vec<(PathBuf, String)>,
    ) -> Result<(), RegistryError> {
        if blobs.is_empty() {
            return Ok(());
        }
        let mut pending = Vec::new();
        let mut files = Vec::new();
        for (path, digest) in blobs {
            let dir = path
                .parent()
                .expect("blob paths have a parent")
                .to_path_buf();
            std::fs::create_dir_all(&dir).map_err(|source| RegistryError::Io {
                path: dir.clone(),
                source,
            })?;
            let tmp =
                tempfile::NamedTempFile::new_in(&dir).map_err(|source| RegistryError::Io {
                    path: dir.clone(),
                    source,
                })?;
            let file = tmp.reopen().map_err(|source| RegistryError::Io {
                path: tmp.path().to_path_buf(),
                source,
            })?;
            files.push((file, digest));
            pending.push((tmp, path));
        }
        let target = reference.clone();
        self.net(image, reference, "pull a blob of", move |c, auth| {
            Box::pin(async move {
                c.store_auth_if_needed(target.resolve_registry(), &auth)
                    .await;
                let mut set = tokio::task::JoinSet::new();
                for (file, digest) in files {
                    let (c, target) = (c.clone(), target.clone());
                    set.spawn(async move {
                        let mut out = tokio::io::BufWriter::with_capacity(
                            1 << 20,
                            tokio::fs::File::from_std(file),
                        );
                        c.pull_blob(&target, digest.as_str(), &mut out).await?;
                        tokio::io::AsyncWriteExt::flush(&mut out).await?;
                        Ok::<(), oci_client::errors::OciDistributionError>(())
                    });
                }
                join_all(set).await
            })
        })?;
        for (tmp, path) in pending {
            tmp.persist(&path).map_err(|e| RegistryError::Io {
                path: path.clone(),
                source: e.error,
            })?;
        }
        Ok(())
    }

    /// The blob `digest` of `image` in the cache: fetched and verified unless already there.
    pub fn blob(
        &self,
        image: &str,
        digest: &str,
        size: u64,
        progress: &dyn Fn(&str),
    ) -> Result<PathBuf, RegistryError> {
        let reference = Self::reference(image)?;
        let hex = hex_of(digest).ok_or_else(|| RegistryError::Bad {
            image: image.into(),
            what: format!("{digest:?} is not a sha256 digest"),
        })?;
        let path = self.blob_path(hex);
        if !path.is_file() {
            progress(&format!("pulling {image}: {digest} ({size} bytes)"));
            self.fetch_blobs(image, &reference, vec![(path.clone(), digest.to_string())])?;
        }
        Ok(path)
    }

    /// The blobs `wanted` (digest, size) of `image` in the cache, in that order: those missing
    /// fetched at once and verified.
    pub fn blobs(
        &self,
        image: &str,
        wanted: &[(String, u64)],
        progress: &dyn Fn(&str),
    ) -> Result<Vec<PathBuf>, RegistryError> {
        let reference = Self::reference(image)?;
        let mut paths = Vec::new();
        let mut missing = Vec::new();
        for (digest, size) in wanted {
            let hex = hex_of(digest).ok_or_else(|| RegistryError::Bad {
                image: image.into(),
                what: format!("{digest:?} is not a sha256 digest"),
            })?;
            let path = self.blob_path(hex);
            if !path.is_file() && !missing.iter().any(|(p, _)| *p == path) {
                progress(&format!("pulling {image}: {digest} ({size} bytes)"));
                missing.push((path.clone(), digest.clone()));
            }
            paths.push(path);
        }
        self.fetch_blobs(image, &reference, missing)?;
        Ok(paths)
    }

    /// Uploads the files `blobs` (path, digest) to `image`'s repository, those it lacks, all
    /// at once.
    pub fn push_blobs(
        &self,
        image: &str,
        blobs: &[(PathBuf, String)],
    ) -> Result<(), RegistryError> {
        let reference = Self::reference(image)?;
        let mut bodies = Vec::new();
        for (path, digest) in blobs {
            let bytes = std::fs::read(path).map_err(|source| RegistryError::Io {
                path: path.clone(),
                source,
            })?;
            if sha256_digest(&bytes) != *digest {
                return Err(RegistryError::Bad {
                    image: image.into(),
                    what: format!("{} is not {digest}", path.display()),
                });
            }
            bodies.push((bytes, digest.clone()));
        }
        let target = reference.clone();
        self.net(image, &reference, "push blobs to", move |c, auth| {
            Box::pin(async move {
                c.store_auth_if_needed(target.resolve_registry(), &auth)
                    .await;
                c.auth(&target, &auth, oci_client::RegistryOperation::Push)
                    .await?;
                let mut set = tokio::task::JoinSet::new();
                for (bytes, digest) in bodies {
                    let (c, target) = (c.clone(), target.clone());
                    set.spawn(async move {
                        if !c.blob_exists(&target, &digest).await? {
                            c.push_blob(&target, bytes, &digest).await?;
                        }
                        Ok::<(), oci_client::errors::OciDistributionError>(())
                    });
                }
                join_all(set).await
            })
        })
    }

    /// The raw manifest `image` names (by tag or digest), verified when named by digest, and
    /// its digest.
    pub fn raw_manifest(&self, image: &str) -> Result<(Vec<u8>, String), RegistryError> {
        let reference = Self::reference(image)?;
        let bytes = self.manifest(image, &reference, reference.digest())?;
        let digest = sha256_digest(&bytes);
        Ok((bytes, digest))
    }

    /// Uploads the file `path` as the blob `digest` of `image`'s repository, unless the
    /// registry has it already.
    pub fn push_blob(&self, image: &str, path: &Path, digest: &str) -> Result<(), RegistryError> {
        if self.has_blob(image, digest)? {
            return Ok(());
        }
        let bytes = std::fs::read(path).map_err(|source| RegistryError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        self.push_blob_bytes(image, &bytes, digest)
    }

    fn has_blob(&self, image: &str, digest: &str) -> Result<bool, RegistryError> {
        let reference = Self::reference(image)?;
        let target = reference.clone();
        let wanted = digest.to_string();
        self.net(image, &reference, "ask for a blob of", move |c, auth| {
            Box::pin(async move {
                c.store_auth_if_needed(target.resolve_registry(), &auth)
                    .await;
                c.auth(&target, &auth, oci_client::RegistryOperation::Push)
                    .await?;
                c.blob_exists(&target, &wanted).await
            })
        })
    }

    /// Uploads `bytes` as the blob `digest` of `image`'s repository.
    pub fn push_blob_bytes(
        &self,
        image: &str,
        bytes: &[u8],
        digest: &str,
    ) -> Result<(), RegistryError> {
        let reference = Self::reference(image)?;
        if sha256_digest(bytes) != digest {
            return Err(RegistryError::Bad {
                image: image.into(),
                what: format!("the bytes to push are not {digest}"),
            });
        }
        let bytes = bytes.to_vec();
        let target = reference.clone();
        let wanted = digest.to_string();
        self.net(image, &reference, "push a blob to", move |c, _| {
            Box::pin(async move { c.push_blob(&target, bytes, &wanted).await.map(|_| ()) })
        })
    }

    /// Uploads `bytes` as the manifest `image` names (its tag), with `media_type`; returns
    /// its digest.
    pub fn push_manifest(
        &self,
        image: &str,
        bytes: &[u8],
        media_type: &'static str,
    ) -> Result<String, RegistryError> {
        let reference = Self::reference(image)?;
        let target = reference.clone();
        let body = bytes.to_vec();
        self.net(image, &reference, "push the manifest of", move |c, _| {
            Box::pin(async move {
                c.push_manifest_raw(&target, body, http::HeaderValue::from_static(media_type))
                    .await
                    .map(|_| ())
            })
        })?;
        Ok(sha256_digest(bytes))
    }
}

/// Waits for every transfer of `set`; the first failure (or a task that did not finish) is the
/// answer.
async fn join_all(
    mut set: tokio::task::JoinSet<Result<(), oci_client::errors::OciDistributionError>>,
) -> Result<(), oci_client::errors::OciDistributionError> {
    while let Some(r) = set.join_next().await {
        r.map_err(|e| {
            oci_client::errors::OciDistributionError::GenericError(Some(e.to_string()))
        })??;
    }
    Ok(())
}

impl RegistryError {
    /// Whether the registry said it has no such image (as opposed to failing to answer).
    pub fn is_not_found(&self) -> bool {
        matches!(self, RegistryError::NotFound { .. })
    }
}

fn is_index(bytes: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType", default)]
        media_type: Option<String>,
        #[serde(default)]
        manifests: Option<serde_json::Value>,
    }
    match serde_json::from_slice::<Probe>(bytes) {
        Ok(p) => match p.media_type.as_deref() {
            Some(MT_INDEX) | Some(MT_DOCKER_LIST) => true,
            Some(_) => false,
            None => p.manifests.is_some(),
        },
        Err(_) => false,
    }
}

fn parse<T: serde::de::DeserializeOwned>(
    image: &str,
    what: &str,
    bytes: &[u8],
) -> Result<T, RegistryError> {
    serde_json::from_slice(bytes).map_err(|e| RegistryError::Bad {
        image: image.into(),
        what: format!("the {what} is not valid JSON of the expected shape: {e}"),
    })
}

/// An error and its causes on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registries_are_recognised() {
        for r in [
            "127.0.0.1:5000",
            "localhost:5000",
            "[::1]:5000",
            "localhost",
            "127.1.2.3",
        ] {
            assert!(is_loopback(r), "{r}");
        }
        for r in ["registry.example:5000", "10.0.2.2:5000", "docker.io"] {
            assert!(!is_loopback(r), "{r}");
        }
    }

    #[test]
    fn index_detection() {
        assert!(is_index(
            br#"{"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#
        ));
        assert!(is_index(br#"{"schemaVersion":2,"manifests":[]}"#));
        assert!(!is_index(br#"{"schemaVersion":2,"config":{},"layers":[]}"#));
        assert!(!is_index(b"not json"));
    }
}
