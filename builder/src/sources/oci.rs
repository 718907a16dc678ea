//! Container images as package sources: OCI image layouts (a directory or a tar of one) and
//! `docker save` tarballs unpacked into a [`Tree`], and single-layer OCI layouts written
//! reproducibly from a tree.
//!
//! Every blob is checked against its sha256 digest before use (layers also against the
//! config's `diff_ids`, the digests of the uncompressed tars). Layers are applied in order
//! with overlay whiteouts: `DIR/.wh.NAME` removes `NAME` from lower layers and
//! `DIR/.wh..wh..opq` empties `DIR` of what lower layers put there. File contents are held in
//! memory.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::archive::tree::{self, FileData, Node, NodeKind, Tree, TreeError};
use crate::error::io_err;

const MT_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MT_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MT_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MT_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Largest JSON document (index, manifest, config) read.
const MAX_JSON: u64 = 16 << 20;

/// Errors of reading and writing images.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// A file could not be read or written.
    #[error("cannot access {path}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The input is none of the accepted formats.
    #[error("{path} is neither an OCI image layout (oci-layout, index.json) nor a `docker save` tarball (manifest.json): give one of those")]
    NotAnImage {
        /// The input.
        path: PathBuf,
    },
    /// A JSON document is malformed.
    #[error("{image}: {what} is not valid JSON of the expected shape")]
    Json {
        /// The input.
        image: PathBuf,
        /// Which document.
        what: String,
        /// serde's error.
        source: serde_json::Error,
    },
    /// A referenced blob is absent.
    #[error("{image}: blob {blob} is missing: the image is incomplete; export it again")]
    MissingBlob {
        /// The input.
        image: PathBuf,
        /// The blob.
        blob: String,
    },
    /// A digest is malformed or uses another algorithm.
    #[error("{image}: digest {digest:?} is not a sha256 digest: only sha256 images are supported")]
    BadDigest {
        /// The input.
        image: PathBuf,
        /// The digest.
        digest: String,
    },
    /// A blob's content does not match its digest.
    #[error("{image}: blob {blob} has sha256:{actual}, expected {expected}: the image is corrupt; export it again")]
    DigestMismatch {
        /// The input.
        image: PathBuf,
        /// The blob.
        blob: String,
        /// The digest it should have.
        expected: String,
        /// The hex sha256 it has.
        actual: String,
    },
    /// No manifest matches the wanted platform.
    #[error(
        "{image} has no image for {wanted} (it has: {available}): choose one of those platforms"
    )]
    NoPlatform {
        /// The input.
        image: PathBuf,
        /// The wanted platform, or "the host" when none was given.
        wanted: String,
        /// The platforms present.
        available: String,
    },
    /// A layer's media type is not a tar layer.
    #[error("{image}: layer {blob} has media type {media_type}, which is not a tar layer")]
    MediaType {
        /// The input.
        image: PathBuf,
        /// The blob.
        blob: String,
        /// Its media type.
        media_type: String,
    },
    /// A layer is not a readable tar.
    #[error("{image}: layer {blob} cannot be read")]
    Layer {
        /// The input.
        image: PathBuf,
        /// The blob.
        blob: String,
        /// The reader's error.
        source: io::Error,
    },
    /// A layer entry leaves the root.
    #[error(
        "{image}: layer {blob} has entry {path:?} outside the image root: refusing to unpack it"
    )]
    Escape {
        /// The input.
        image: PathBuf,
        /// The blob.
        blob: String,
        /// The entry.
        path: String,
    },
    /// The tree refused an entry.
    #[error("{image}: layer {blob} holds an entry an image cannot hold")]
    Tree {
        /// The input.
        image: PathBuf,
        /// The blob.
        blob: String,
        /// The tree's error.
        source: TreeError,
    },
}

crate::error::into_io_variant!(OciError);

/// An unpacked image.
#[derive(Debug, Clone)]
pub struct OciImage {
    /// The merged root file system.
    pub tree: Tree,
    /// The config's `architecture` (OCI names: `amd64`, `arm64`, `arm`, `s390x`, …).
    pub architecture: String,
    /// The config's `os`.
    pub os: String,
    /// The config's `variant`, if any (e.g. `v7`).
    pub variant: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Platform {
    architecture: String,
    os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    variant: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    platform: Option<Platform>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Index {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    media_type: Option<String>,
    manifests: Vec<Descriptor>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    media_type: Option<String>,
    config: Descriptor,
    layers: Vec<Descriptor>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct RootFs {
    #[serde(rename = "type")]
    kind: String,
    diff_ids: Vec<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct ImageConfig {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    variant: Option<String>,
    #[serde(default)]
    config: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    rootfs: RootFs,
}

#[derive(Debug, Deserialize)]
struct DockerManifest {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

/// Where the members of an image are read from.
enum Source {
    Dir(PathBuf),
    /// A tar file: member name → (data offset, size) or symlink target member.
    Tar(PathBuf, HashMap<String, Member>),
}

enum Member {
    File(u64, u64),
    Link(String),
}

/// `a/./b/../c` → `a/c`; `None` when it climbs out.
fn clean_member(name: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for c in name.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    Some(parts.join("/"))
}

impl Source {
    fn open_tar(path: &Path) -> Result<Source, OciError> {
        let mut members = HashMap::new();
        let mut ar = tar::Archive::new(File::open(path).map_err(io_err(path))?);
        for entry in ar.entries_with_seek().map_err(io_err(path))? {
            let entry = entry.map_err(io_err(path))?;
            let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let Some(name) = clean_member(&name) else {
                continue;
            };
            match entry.header().entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    members.insert(name, Member::File(entry.raw_file_position(), entry.size()));
                }
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    let Some(target) = entry.link_name_bytes() else {
                        continue;
                    };
                    let target = String::from_utf8_lossy(&target).into_owned();
                    let joined = if entry.header().entry_type() == tar::EntryType::Symlink {
                        match name.rsplit_once('/') {
                            Some((dir, _)) => format!("{dir}/{target}"),
                            None => target,
                        }
                    } else {
                        target
                    };
                    if let Some(t) = clean_member(&joined) {
                        members.insert(name, Member::Link(t));
                    }
                }
                _ => {}
            }
        }
        Ok(Source::Tar(path.to_path_buf(), members))
    }

    fn image(&self) -> &Path {
        match self {
            Source::Dir(p) | Source::Tar(p, _) => p,
        }
    }

    fn exists(&self, name: &str) -> bool {
        match self {
            Source::Dir(d) => d.join(name).is_file(),
            Source::Tar(_, m) => m.contains_key(name),
        }
    }

    fn open(&self, name: &str) -> Result<Box<dyn Read>, OciError> {
        let missing = || OciError::MissingBlob {
            image: self.image().to_path_buf(),
            blob: name.to_string(),
        };
        match self {
            Source::Dir(d) => {
                let clean = clean_member(name).ok_or_else(missing)?;
                let p = d.join(clean);
                match File::open(&p) {
                    Ok(f) => Ok(Box::new(BufReader::new(f))),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Err(missing()),
                    Err(source) => Err(OciError::Io { path: p, source }),
                }
            }
            Source::Tar(path, members) => {
                let mut key = name.to_string();
                for _ in 0..8 {
                    match members.get(&key) {
                        Some(Member::File(off, size)) => {
                            let mut f = File::open(path).map_err(io_err(path))?;
                            f.seek(SeekFrom::Start(*off)).map_err(io_err(path))?;
                            return Ok(Box::new(BufReader::new(f).take(*size)));
                        }
                        Some(Member::Link(t)) => key = t.clone(),
                        None => break,
                    }
                }
                Err(missing())
            }
        }
    }

    /// Reads a small member whole.
    fn read_small(&self, name: &str) -> Result<Vec<u8>, OciError> {
        let mut buf = Vec::new();
        self.open(name)?
            .take(MAX_JSON)
            .read_to_end(&mut buf)
            .map_err(|source| OciError::Io {
                path: self.image().join(name),
                source,
            })?;
        Ok(buf)
    }

    fn json<T: serde::de::DeserializeOwned>(
        &self,
        what: &str,
        bytes: &[u8],
    ) -> Result<T, OciError> {
        serde_json::from_slice(bytes).map_err(|source| OciError::Json {
            image: self.image().to_path_buf(),
            what: what.to_string(),
            source,
        })
    }

    /// The hex of a `sha256:` digest, checked.
    fn hex_of(&self, digest: &str) -> Result<String, OciError> {
        match digest.strip_prefix("sha256:") {
            Some(h) if h.len() == 64 && h.bytes().all(|c| c.is_ascii_hexdigit()) => {
                Ok(h.to_ascii_lowercase())
            }
            _ => Err(OciError::BadDigest {
                image: self.image().to_path_buf(),
                digest: digest.to_string(),
            }),
        }
    }

    fn check(&self, blob: &str, expected_hex: &str, actual: &[u8]) -> Result<(), OciError> {
        let actual = hex::encode(actual);
        if actual != expected_hex {
            return Err(OciError::DigestMismatch {
                image: self.image().to_path_buf(),
                blob: blob.to_string(),
                expected: format!("sha256:{expected_hex}"),
                actual,
            });
        }
        Ok(())
    }

    /// Reads and verifies a JSON blob by digest.
    fn blob_json<T: serde::de::DeserializeOwned>(&self, digest: &str) -> Result<T, OciError> {
        let hex = self.hex_of(digest)?;
        let name = format!("blobs/sha256/{hex}");
        let bytes = self.read_small(&name)?;
        self.check(digest, &hex, &Sha256::digest(&bytes))?;
        self.json(digest, &bytes)
    }

    /// Streams a blob through sha256 and compares.
    fn verify_blob(&self, name: &str, expected_hex: &str) -> Result<(), OciError> {
        let mut h = Sha256::new();
        io::copy(&mut self.open(name)?, &mut h).map_err(|source| OciError::Io {
            path: self.image().join(name),
            source,
        })?;
        self.check(name, expected_hex, &h.finalize())
    }
}

/// Maps Debian and uname architecture names to OCI ones, with a variant where implied.
fn oci_arch(arch: &str) -> (&str, Option<&'static str>) {
    match arch {
        "x86_64" => ("amd64", None),
        "aarch64" => ("arm64", None),
        "armhf" => ("arm", Some("v7")),
        "armel" => ("arm", Some("v5")),
        "i386" | "i686" => ("386", None),
        "ppc64el" => ("ppc64le", None),
        a => (a, None),
    }
}

fn platform_str(p: &Platform) -> String {
    match &p.variant {
        Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
        None => format!("{}/{}", p.os, p.architecture),
    }
}

/// Picks the manifest for `platform` (default: the host's, or the only one).
fn choose_manifest(
    src: &Source,
    index: &Index,
    platform: Option<(&str, &str)>,
) -> Result<Descriptor, OciError> {
    let mut candidates: Vec<Descriptor> = Vec::new();
    for d in &index.manifests {
        if d.media_type == MT_INDEX || d.media_type == MT_DOCKER_LIST {
            let nested: Index = src.blob_json(&d.digest)?;
            candidates.push(choose_manifest(src, &nested, platform)?);
        } else {
            candidates.push(d.clone());
        }
    }
    let want = platform.map(|(os, arch)| (os.to_string(), oci_arch(arch).0.to_string()));
    let host = (
        std::env::consts::OS.to_string(),
        oci_arch(std::env::consts::ARCH).0.to_string(),
    );
    let matches = |d: &Descriptor, (os, arch): &(String, String)| {
        d.platform
            .as_ref()
            .is_some_and(|p| &p.os == os && oci_arch(&p.architecture).0 == arch)
    };
    let found = match &want {
        Some(w) => candidates
            .iter()
            .find(|d| matches(d, w) || (d.platform.is_none() && candidates.len() == 1)),
        None if candidates.len() == 1 => candidates.first(),
        None => candidates.iter().find(|d| matches(d, &host)),
    };
    found.cloned().ok_or_else(|| OciError::NoPlatform {
        image: src.image().to_path_buf(),
        wanted: want
            .map(|(o, a)| format!("{o}/{a}"))
            .unwrap_or_else(|| "the host".into()),
        available: candidates
            .iter()
            .map(|d| {
                d.platform
                    .as_ref()
                    .map(platform_str)
                    .unwrap_or_else(|| "unspecified".into())
            })
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// Unpacks the image at `path` (an OCI layout directory, an OCI layout tar, or a `docker save`
/// tar) for `platform` (`(os, arch)`, e.g. `("linux", "arm64")`; Debian names like `armhf` are
/// accepted). Without a platform, an index with several images yields the host's.
pub fn unpack_oci(path: &Path, platform: Option<(&str, &str)>) -> Result<OciImage, OciError> {
    let src = if path.is_dir() {
        Source::Dir(path.to_path_buf())
    } else {
        Source::open_tar(path)?
    };
    if src.exists("index.json") {
        let index: Index = src.json("index.json", &src.read_small("index.json")?)?;
        let desc = choose_manifest(&src, &index, platform)?;
        let manifest: Manifest = src.blob_json(&desc.digest)?;
        let config: ImageConfig = src.blob_json(&manifest.config.digest)?;
        let mut tree = Tree::new();
        for (i, layer) in manifest.layers.iter().enumerate() {
            let hex = src.hex_of(&layer.digest)?;
            let name = format!("blobs/sha256/{hex}");
            src.verify_blob(&name, &hex)?;
            let diff_id = config.rootfs.diff_ids.get(i).map(String::as_str);
            apply_layer(
                &src,
                &layer.digest,
                &name,
                &layer.media_type,
                diff_id,
                &mut tree,
            )?;
        }
        Ok(OciImage {
            tree,
            architecture: config.architecture,
            os: config.os,
            variant: config.variant,
        })
    } else if src.exists("manifest.json") {
        let entries: Vec<DockerManifest> =
            src.json("manifest.json", &src.read_small("manifest.json")?)?;
        let pick = |e: &&DockerManifest| -> Result<bool, OciError> {
            let Some((os, arch)) = platform else {
                return Ok(true);
            };
            let c: ImageConfig = src.json(&e.config, &src.read_small(&e.config)?)?;
            Ok(c.os == os && oci_arch(&c.architecture).0 == oci_arch(arch).0)
        };
        let mut chosen = None;
        for e in &entries {
            if pick(&e)? {
                chosen = Some(e);
                break;
            }
        }
        let Some(entry) = chosen else {
            return Err(OciError::NoPlatform {
                image: path.to_path_buf(),
                wanted: platform
                    .map(|(o, a)| format!("{o}/{a}"))
                    .unwrap_or_default(),
                available: format!("{} image(s) of other platforms", entries.len()),
            });
        };
        let bytes = src.read_small(&entry.config)?;
        if let Some(hex) = blob_hex_of_name(&entry.config) {
            src.check(&entry.config, &hex, &Sha256::digest(&bytes))?;
        }
        let config: ImageConfig = src.json(&entry.config, &bytes)?;
        let mut tree = Tree::new();
        for (i, layer) in entry.layers.iter().enumerate() {
            if let Some(hex) = blob_hex_of_name(layer).filter(|_| layer.starts_with("blobs/")) {
                src.verify_blob(layer, &hex)?;
            }
            let diff_id = config.rootfs.diff_ids.get(i).map(String::as_str);
            apply_layer(&src, layer, layer, "", diff_id, &mut tree)?;
        }
        Ok(OciImage {
            tree,
            architecture: config.architecture,
            os: config.os,
            variant: config.variant,
        })
    } else {
        Err(OciError::NotAnImage {
            path: path.to_path_buf(),
        })
    }
}

/// The sha256 a docker-save member name carries (`<hex>.json`, `blobs/sha256/<hex>`).
fn blob_hex_of_name(name: &str) -> Option<String> {
    let base = name.rsplit('/').next()?;
    let hex = base.strip_suffix(".json").unwrap_or(base);
    (hex.len() == 64 && hex.bytes().all(|c| c.is_ascii_hexdigit()))
        .then(|| hex.to_ascii_lowercase())
}

/// A reader that feeds what passes through into a shared sha256.
struct HashRead<R> {
    inner: R,
    hash: Rc<RefCell<Sha256>>,
}

impl<R: Read> Read for HashRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.borrow_mut().update(&buf[..n]);
        Ok(n)
    }
}

enum Change {
    Whiteout(String),
    Opaque(String),
    Put(String, Node),
}

fn apply_layer(
    src: &Source,
    blob: &str,
    name: &str,
    media_type: &str,
    diff_id: Option<&str>,
    tree: &mut Tree,
) -> Result<(), OciError> {
    let image = src.image().to_path_buf();
    let layer_err = |source| OciError::Layer {
        image: image.clone(),
        blob: blob.to_string(),
        source,
    };
    if !media_type.is_empty() && !media_type.contains("tar") {
        return Err(OciError::MediaType {
            image: image.clone(),
            blob: blob.to_string(),
            media_type: media_type.into(),
        });
    }
    let mut raw = BufReader::new(src.open(name)?);
    let head = raw.fill_buf().map_err(layer_err)?;
    let (gzip, zstd) = (
        head.starts_with(&[0x1f, 0x8b]),
        head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]),
    );
    let decoded: Box<dyn Read> = if gzip {
        Box::new(flate2::read::MultiGzDecoder::new(raw))
    } else if zstd {
        Box::new(zstd::stream::read::Decoder::with_buffer(raw).map_err(layer_err)?)
    } else {
        Box::new(raw)
    };
    let hash = Rc::new(RefCell::new(Sha256::new()));
    let mut archive = tar::Archive::new(HashRead {
        inner: decoded,
        hash: hash.clone(),
    });
    let mut changes = Vec::new();
    for entry in archive.entries().map_err(layer_err)? {
        let mut entry = entry.map_err(layer_err)?;
        let raw_path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let escape = || OciError::Escape {
            image: image.clone(),
            blob: blob.to_string(),
            path: raw_path.clone(),
        };
        let Some(path) = entry_path(&raw_path).map_err(|_| escape())? else {
            continue;
        };
        let (dir, base) = match path.rsplit_once('/') {
            Some((d, b)) => (d.to_string(), b),
            None => (String::new(), path.as_str()),
        };
        if base == ".wh..wh..opq" {
            changes.push(Change::Opaque(dir));
            continue;
        }
        if base.starts_with(".wh..wh.") {
            continue;
        }
        if let Some(gone) = base.strip_prefix(".wh.") {
            let gone = if dir.is_empty() {
                gone.to_string()
            } else {
                format!("{dir}/{gone}")
            };
            changes.push(Change::Whiteout(gone));
            continue;
        }
        let h = entry.header();
        let mode = h.mode().map_err(layer_err)? & 0o7777;
        let uid = u32::try_from(h.uid().map_err(layer_err)?).unwrap_or(0);
        let gid = u32::try_from(h.gid().map_err(layer_err)?).unwrap_or(0);
        let link = entry
            .link_name_bytes()
            .map(|b| String::from_utf8_lossy(&b).into_owned());
        let kind = match h.entry_type() {
            tar::EntryType::Directory => NodeKind::Dir,
            tar::EntryType::Symlink => NodeKind::Symlink(link.unwrap_or_default()),
            tar::EntryType::Link => {
                let target = link.unwrap_or_default();
                match entry_path(&target) {
                    Ok(Some(t)) => NodeKind::Hardlink(t),
                    _ => {
                        return Err(OciError::Escape {
                            image: image.clone(),
                            blob: blob.to_string(),
                            path: target,
                        })
                    }
                }
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let mut data = Vec::new();
                entry.read_to_end(&mut data).map_err(layer_err)?;
                NodeKind::File(FileData::Inline(data.into()))
            }
            other => {
                tracing::warn!(blob, path, "skipping layer entry of type {other:?}");
                continue;
            }
        };
        changes.push(Change::Put(
            path,
            Node {
                mode,
                uid,
                gid,
                kind,
            },
        ));
    }
    // Hash the rest of the uncompressed stream (end-of-archive blocks, padding).
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(layer_err)?;
    drop(rest);
    if let Some(expected) = diff_id {
        let hex = src.hex_of(expected)?;
        let actual = Rc::try_unwrap(hash)
            .map(|c| c.into_inner().finalize())
            .map_err(|_| layer_err(io::Error::other("internal: layer hasher still shared")))?;
        src.check(&format!("{blob} (uncompressed, diff_id)"), &hex, &actual)?;
    }
    // Whiteouts apply to lower layers only, so they go first.
    for c in &changes {
        match c {
            Change::Opaque(dir) if dir.is_empty() => *tree = Tree::new(),
            Change::Opaque(dir) => {
                let keep = tree.get(dir).cloned();
                tree.remove_tree(dir);
                if let Some(node) = keep {
                    put(tree, dir, node).map_err(|source| OciError::Tree {
                        image: image.clone(),
                        blob: blob.into(),
                        source,
                    })?;
                }
            }
            Change::Whiteout(p) => tree.remove_tree(p),
            Change::Put(..) => {}
        }
    }
    for c in changes {
        if let Change::Put(path, node) = c {
            put(tree, &path, node).map_err(|source| OciError::Tree {
                image: image.clone(),
                blob: blob.into(),
                source,
            })?;
        }
    }
    Ok(())
}

/// A layer member name as a tree path; `None` for the root; `Err` when it escapes.
fn entry_path(raw: &str) -> Result<Option<String>, ()> {
    if raw.starts_with('/') {
        return Err(());
    }
    let mut parts = Vec::new();
    for c in raw.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err(()),
            c => parts.push(c),
        }
    }
    Ok((!parts.is_empty()).then(|| parts.join("/")))
}

/// Inserts with overlay semantics: a non-directory replaces whatever was there (subtree
/// included); a directory over a directory keeps the children; non-directories in the way of
/// the parents are replaced by directories.
fn put(tree: &mut Tree, path: &str, node: Node) -> Result<(), TreeError> {
    let path = tree::normalize(path)?;
    let mut end = 0;
    while let Some(i) = path[end..].find('/') {
        let parent = &path[..end + i];
        if tree.get(parent).is_some_and(|n| n.kind != NodeKind::Dir) {
            tree.remove_tree(parent);
        }
        end += i + 1;
    }
    let replace_subtree =
        tree.get(&path).is_some_and(|old| old.kind == NodeKind::Dir) && node.kind != NodeKind::Dir;
    if replace_subtree {
        tree.remove_tree(&path);
    }
    tree.insert(&path, node)?;
    Ok(())
}

/// A writer that feeds what passes through into a sha256 and counts bytes.
struct HashWrite<W> {
    inner: W,
    hash: Sha256,
    len: u64,
}

impl<W: Write> Write for HashWrite<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn write_layer_tar<W: Write>(tree: &Tree, out: W) -> io::Result<W> {
    let mut b = tar::Builder::new(out);
    for (path, node) in tree.iter() {
        let mut h = tar::Header::new_ustar();
        h.set_mode(node.mode);
        h.set_uid(u64::from(node.uid));
        h.set_gid(u64::from(node.gid));
        h.set_mtime(0);
        h.set_size(0);
        match &node.kind {
            NodeKind::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                b.append_data(&mut h, format!("{path}/"), io::empty())?;
            }
            NodeKind::File(data) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(data.size());
                match data {
                    FileData::Inline(bytes) => b.append_data(&mut h, path, &bytes[..])?,
                    FileData::Path { path: src, size } => {
                        let f = File::open(src)?;
                        b.append_data(&mut h, path, f.take(*size))?
                    }
                }
            }
            NodeKind::Symlink(target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                b.append_link(&mut h, path, target)?;
            }
            NodeKind::Hardlink(target) => {
                h.set_entry_type(tar::EntryType::Link);
                b.append_link(&mut h, path, target)?;
            }
        }
    }
    b.into_inner()
}

fn write_blob(blobs: &Path, bytes: &[u8]) -> Result<(String, u64), OciError> {
    let hex = hex::encode(Sha256::digest(bytes));
    let p = blobs.join(&hex);
    fs::write(&p, bytes).map_err(|source| OciError::Io { path: p, source })?;
    Ok((format!("sha256:{hex}"), bytes.len() as u64))
}

/// Writes `tree` as a single-layer OCI image layout in `dir` (created if needed) for `arch`
/// (OCI or Debian name: `amd64`, `arm64`, `armhf`, `s390x`, …; os `linux`). The output is
/// reproducible: entries in tree order, mtimes 0, no creation date, gzip without timestamp.
/// Returns the manifest digest.
pub fn write_oci_layout(dir: &Path, tree: &Tree, arch: &str) -> Result<String, OciError> {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).map_err(|source| OciError::Io {
        path: blobs.clone(),
        source,
    })?;
    // Layer: tar → (diff_id hash) → gzip → (digest hash) → temporary file, renamed by digest.
    let tmp = tempfile::NamedTempFile::new_in(&blobs).map_err(io_err(&blobs))?;
    let file = tmp.as_file().try_clone().map_err(io_err(tmp.path()))?;
    let outer = HashWrite {
        inner: io::BufWriter::new(file),
        hash: Sha256::new(),
        len: 0,
    };
    let gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(outer, flate2::Compression::new(6));
    let inner = HashWrite {
        inner: gz,
        hash: Sha256::new(),
        len: 0,
    };
    let inner = write_layer_tar(tree, inner).map_err(io_err(tmp.path()))?;
    let diff_id = format!("sha256:{}", hex::encode(inner.hash.finalize()));
    let mut outer = inner.inner.finish().map_err(io_err(tmp.path()))?;
    outer.flush().map_err(io_err(tmp.path()))?;
    let layer_digest = format!("sha256:{}", hex::encode(outer.hash.clone().finalize()));
    let layer_size = outer.len;
    drop(outer);
    let layer_path = blobs.join(&layer_digest["sha256:".len()..]);
    tmp.persist(&layer_path).map_err(|e| OciError::Io {
        path: layer_path.clone(),
        source: e.error,
    })?;

    let (architecture, variant) = oci_arch(arch);
    let config = ImageConfig {
        architecture: architecture.to_string(),
        os: "linux".into(),
        variant: variant.map(str::to_string),
        config: serde_json::Map::new(),
        rootfs: RootFs {
            kind: "layers".into(),
            diff_ids: vec![diff_id],
        },
    };
    let (config_digest, config_size) = write_blob(&blobs, &to_json(&config))?;
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(MT_MANIFEST.into()),
        config: Descriptor {
            media_type: MT_CONFIG.into(),
            digest: config_digest,
            size: config_size,
            platform: None,
        },
        layers: vec![Descriptor {
            media_type: MT_LAYER_GZIP.into(),
            digest: layer_digest,
            size: layer_size,
            platform: None,
        }],
    };
    let (manifest_digest, manifest_size) = write_blob(&blobs, &to_json(&manifest))?;
    let index = Index {
        schema_version: 2,
        media_type: Some(MT_INDEX.into()),
        manifests: vec![Descriptor {
            media_type: MT_MANIFEST.into(),
            digest: manifest_digest.clone(),
            size: manifest_size,
            platform: Some(Platform {
                architecture: architecture.into(),
                os: "linux".into(),
                variant: variant.map(str::to_string),
            }),
        }],
    };
    let p = dir.join("index.json");
    fs::write(&p, to_json(&index)).map_err(io_err(&p))?;
    let p = dir.join("oci-layout");
    fs::write(&p, br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(io_err(&p))?;
    Ok(manifest_digest)
}

/// Serializes a layout document (these types cannot fail to serialize).
fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    enum E<'a> {
        D(&'a str),
        F(&'a str, &'a [u8]),
        L(&'a str, &'a str),
    }

    fn layer(entries: &[E<'_>]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for e in entries {
            let mut h = tar::Header::new_gnu();
            h.set_mtime(0);
            h.set_uid(0);
            h.set_gid(0);
            match e {
                E::D(p) => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(0o755);
                    h.set_size(0);
                    b.append_data(&mut h, p, io::empty()).unwrap();
                }
                E::F(p, d) => {
                    h.set_mode(0o644);
                    h.set_size(d.len() as u64);
                    b.append_data(&mut h, p, *d).unwrap();
                }
                E::L(p, t) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_mode(0o777);
                    h.set_size(0);
                    b.append_link(&mut h, p, t).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    fn gzip(b: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(b).unwrap();
        e.finish().unwrap()
    }

    fn sha(b: &[u8]) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(b)))
    }

    fn base_and_top() -> (Vec<u8>, Vec<u8>) {
        let base = layer(&[
            E::D("bin"),
            E::F("bin/sh", b"shell"),
            E::F("bin/gone", b"x"),
            E::D("etc"),
            E::D("etc/conf.d"),
            E::F("etc/conf.d/old", b"old"),
            E::F("etc/hosts", b"127.0.0.1"),
            E::L("usr/bin", "../bin"),
        ]);
        let top = layer(&[
            E::F("bin/.wh.gone", b""),
            E::D("etc/conf.d"),
            E::F("etc/conf.d/new", b"new"),
            E::F("etc/conf.d/.wh..wh..opq", b""),
            E::F("etc/hosts", b"::1"),
        ]);
        (base, top)
    }

    /// An OCI layout of the two layers (gzip + zstd), optionally as a nested index.
    fn write_layout(dir: &Path, arch: &str, nested: bool) {
        let (base, top) = base_and_top();
        let blobs = dir.join("blobs/sha256");
        fs::create_dir_all(&blobs).unwrap();
        let put = |b: &[u8]| {
            let d = sha(b);
            fs::write(blobs.join(&d[7..]), b).unwrap();
            d
        };
        let l1 = gzip(&base);
        let l2 = zstd::encode_all(&top[..], 3).unwrap();
        let config = serde_json::json!({
            "architecture": arch, "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [sha(&base), sha(&top)]}
        });
        let config = serde_json::to_vec(&config).unwrap();
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MT_MANIFEST,
            "config": {"mediaType": MT_CONFIG, "digest": put(&config), "size": config.len()},
            "layers": [
                {"mediaType": MT_LAYER_GZIP, "digest": put(&l1), "size": l1.len()},
                {"mediaType": "application/vnd.oci.image.layer.v1.tar+zstd", "digest": put(&l2), "size": l2.len()},
            ]
        });
        let manifest = serde_json::to_vec(&manifest).unwrap();
        let md = put(&manifest);
        let other = serde_json::json!({"mediaType": MT_MANIFEST, "digest": format!("sha256:{}", "0".repeat(64)), "size": 1,
            "platform": {"architecture": "s390x", "os": "linux"}});
        let mine = serde_json::json!({"mediaType": MT_MANIFEST, "digest": md, "size": manifest.len(),
            "platform": {"architecture": arch, "os": "linux"}});
        let inner = serde_json::json!({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": [other, mine]});
        let index = if nested {
            let inner = serde_json::to_vec(&inner).unwrap();
            serde_json::json!({"schemaVersion": 2, "manifests": [{"mediaType": MT_INDEX, "digest": put(&inner), "size": inner.len()}]})
        } else {
            inner
        };
        fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
        fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    }

    fn check_merged(img: &OciImage) {
        let paths: Vec<&str> = img.tree.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "bin",
                "bin/sh",
                "etc",
                "etc/conf.d",
                "etc/conf.d/new",
                "etc/hosts",
                "usr",
                "usr/bin"
            ]
        );
        let file = |p: &str| match &img.tree.get(p).unwrap().kind {
            NodeKind::File(d) => d.read().unwrap(),
            k => panic!("{p}: {k:?}"),
        };
        assert_eq!(file("etc/hosts"), b"::1");
        assert_eq!(file("etc/conf.d/new"), b"new");
        assert_eq!(
            img.tree.get("usr/bin").unwrap().kind,
            NodeKind::Symlink("../bin".into())
        );
    }

    fn tar_dir(dir: &Path, out: &Path) {
        let mut b = tar::Builder::new(File::create(out).unwrap());
        b.append_dir_all(".", dir).unwrap();
        b.finish().unwrap();
    }

    #[test]
    fn oci_layout_dir_and_tar_with_whiteouts() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("layout");
        write_layout(&dir, "arm64", false);
        let img = unpack_oci(&dir, Some(("linux", "aarch64"))).unwrap();
        assert_eq!(img.architecture, "arm64");
        check_merged(&img);
        let err = unpack_oci(&dir, Some(("linux", "riscv64"))).unwrap_err();
        assert!(matches!(err, OciError::NoPlatform { .. }), "{err}");
        // The s390x entry points to a missing manifest.
        assert!(matches!(
            unpack_oci(&dir, Some(("linux", "s390x"))),
            Err(OciError::MissingBlob { .. })
        ));
        let tarball = tmp.path().join("layout.tar");
        tar_dir(&dir, &tarball);
        check_merged(&unpack_oci(&tarball, Some(("linux", "arm64"))).unwrap());

        let nested = tmp.path().join("nested");
        write_layout(&nested, "arm64", true);
        check_merged(&unpack_oci(&nested, Some(("linux", "arm64"))).unwrap());
    }

    #[test]
    fn docker_save_tarball() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("save");
        let (base, top) = base_and_top();
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [sha(&base), sha(&top)]}
        }))
        .unwrap();
        let cfg_name = format!("{}.json", &sha(&config)[7..]);
        fs::create_dir_all(dir.join("aaa")).unwrap();
        fs::create_dir_all(dir.join("bbb")).unwrap();
        fs::write(dir.join(&cfg_name), &config).unwrap();
        fs::write(dir.join("aaa/layer.tar"), &base).unwrap();
        fs::write(dir.join("bbb/layer.tar"), &top).unwrap();
        let manifest = serde_json::json!([{"Config": cfg_name, "RepoTags": ["x:latest"], "Layers": ["aaa/layer.tar", "bbb/layer.tar"]}]);
        fs::write(
            dir.join("manifest.json"),
            serde_json::to_vec(&manifest).unwrap(),
        )
        .unwrap();
        let tarball = tmp.path().join("save.tar");
        tar_dir(&dir, &tarball);
        let img = unpack_oci(&tarball, None).unwrap();
        assert_eq!(img.architecture, "amd64");
        check_merged(&img);
        // A layer that does not match its diff_id.
        fs::write(dir.join("bbb/layer.tar"), layer(&[E::F("evil", b"x")])).unwrap();
        tar_dir(&dir, &tarball);
        match unpack_oci(&tarball, None) {
            Err(OciError::DigestMismatch { blob, .. }) => {
                assert!(blob.contains("bbb/layer.tar"), "{blob}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn digest_mismatch_names_the_blob() {
        let tmp = tempfile::tempdir().unwrap();
        write_layout(tmp.path(), "amd64", false);
        // Corrupt the first layer blob (gzip, the larger of the two layer files is irrelevant).
        let idx: Index =
            serde_json::from_slice(&fs::read(tmp.path().join("index.json")).unwrap()).unwrap();
        let md = &idx.manifests[1].digest;
        let m: Manifest = serde_json::from_slice(
            &fs::read(tmp.path().join("blobs/sha256").join(&md[7..])).unwrap(),
        )
        .unwrap();
        let victim = tmp
            .path()
            .join("blobs/sha256")
            .join(&m.layers[0].digest[7..]);
        let mut bytes = fs::read(&victim).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&victim, bytes).unwrap();
        match unpack_oci(tmp.path(), Some(("linux", "amd64"))) {
            Err(OciError::DigestMismatch { blob, .. }) => {
                assert!(blob.contains(&m.layers[0].digest[7..]))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn escapes_and_garbage_are_errors() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(matches!(
            unpack_oci(tmp.path(), None),
            Err(OciError::NotAnImage { .. })
        ));
        let junk = tmp.path().join("junk.tar");
        fs::write(&junk, vec![0x42; 2000]).unwrap();
        assert!(unpack_oci(&junk, None).is_err());
        // A layer with `../x` in an otherwise valid layout.
        let mut evil = layer(&[E::F("aa/x", b"x")]);
        evil[..4].copy_from_slice(b"../x");
        let mut h = tar::Header::from_byte_slice(&evil[..512]).clone();
        h.set_cksum();
        evil[..512].copy_from_slice(h.as_bytes());
        let mut tree = Tree::new();
        tree.insert("etc/motd", Node::file(0o644, &b"hi"[..]))
            .unwrap();
        let dir = tmp.path().join("l");
        write_oci_layout(&dir, &tree, "amd64").unwrap();
        // Swap the layer for the evil one, with matching digests everywhere.
        let blobs = dir.join("blobs/sha256");
        let d = sha(&evil);
        fs::write(blobs.join(&d[7..]), &evil).unwrap();
        let config =
            serde_json::to_vec(&serde_json::json!({"architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [d]}}))
            .unwrap();
        let cd = sha(&config);
        fs::write(blobs.join(&cd[7..]), &config).unwrap();
        let manifest = serde_json::to_vec(&serde_json::json!({"schemaVersion": 2,
            "config": {"mediaType": MT_CONFIG, "digest": cd, "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": evil.len()}]})).unwrap();
        let mdg = sha(&manifest);
        fs::write(blobs.join(&mdg[7..]), &manifest).unwrap();
        let index = serde_json::json!({"schemaVersion": 2, "manifests": [{"mediaType": MT_MANIFEST, "digest": mdg, "size": manifest.len()}]});
        fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
        match unpack_oci(&dir, None) {
            Err(OciError::Escape { path, .. }) => assert_eq!(path, "../x"),
            other => panic!("{other:?}"),
        }
        // A malformed digest is refused before touching the file system.
        let index = serde_json::json!({"schemaVersion": 2, "manifests": [{"mediaType": MT_MANIFEST, "digest": "sha256:../../etc/passwd", "size": 1}]});
        fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
        assert!(matches!(
            unpack_oci(&dir, None),
            Err(OciError::BadDigest { .. })
        ));
    }

    #[test]
    fn written_layout_round_trips_reproducibly() {
        let mut tree = Tree::new();
        tree.insert(
            "bin/busybox",
            Node {
                mode: 0o755,
                uid: 0,
                gid: 0,
                kind: NodeKind::File(FileData::Inline((&b"\x7fELF..."[..]).into())),
            },
        )
        .unwrap();
        tree.insert("bin/sh", Node::symlink("busybox")).unwrap();
        tree.insert(
            "bin/ash",
            Node {
                mode: 0o755,
                uid: 0,
                gid: 0,
                kind: NodeKind::Hardlink("bin/busybox".into()),
            },
        )
        .unwrap();
        tree.insert(
            "tmp",
            Node {
                mode: 0o1777,
                uid: 0,
                gid: 0,
                kind: NodeKind::Dir,
            },
        )
        .unwrap();
        tree.insert(
            "home/user",
            Node {
                mode: 0o700,
                uid: 1000,
                gid: 1000,
                kind: NodeKind::Dir,
            },
        )
        .unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let a = tmp.path().join("a");
        let b = tmp.path().join("b");
        let da = write_oci_layout(&a, &tree, "armhf").unwrap();
        let db = write_oci_layout(&b, &tree, "armhf").unwrap();
        assert_eq!(da, db);
        assert_eq!(
            fs::read(a.join("index.json")).unwrap(),
            fs::read(b.join("index.json")).unwrap()
        );
        let img = unpack_oci(&a, Some(("linux", "arm"))).unwrap();
        assert_eq!(
            (img.architecture.as_str(), img.variant.as_deref()),
            ("arm", Some("v7"))
        );
        assert_eq!(img.tree, tree);
    }
}
