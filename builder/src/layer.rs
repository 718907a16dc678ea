//! Layers: a package's files as a normalized, content-addressed record, and the on-disk cache
//! that keeps them so an unchanged package is never produced twice.
//!
//! Cache layout under `$XDG_CACHE_HOME/minke/` (or `$MINKE_CACHE`):
//!
//! ```text
//! blobs/sha256/HEX       file contents, named by their sha256
//! layers/KEY.json        a layer: its records (path, type, mode, uid, gid, size, sha256, target)
//! ```
//!
//! `KEY` is the digest of everything that went into producing the layer (package definition,
//! source files, fetched package hashes, toolchain); a layer's own `digest` is the digest of its
//! records, so two inputs that produce the same files give the same layer digest.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::archive::tree::{EntryType, FileData, Node, NodeKind, Tree, TreeError};
use crate::error::io_err;

/// One file of a layer or image, as recorded in layers and manifests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Absolute path in the image.
    pub path: String,
    /// Entry type.
    #[serde(rename = "type")]
    pub kind: EntryType,
    /// Permission bits (octal in JSON would be nicer; kept numeric for tools).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes (files only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// sha256 of the contents (files only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Symlink or hardlink target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

impl Record {
    /// The record of a tree entry without its content fields (size, sha256, target).
    fn metadata(path: &str, node: &Node) -> Record {
        Record {
            path: format!("/{path}"),
            kind: node.kind.entry_type(),
            mode: node.mode,
            uid: node.uid,
            gid: node.gid,
            size: None,
            sha256: None,
            target: None,
        }
    }
}

/// A cached layer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LayerRecord {
    /// Package name.
    pub name: String,
    /// Digest of the inputs (the cache key).
    pub key: String,
    /// Digest of the records.
    pub digest: String,
    /// The files.
    pub records: Vec<Record>,
    /// What the files came from (for the SBOM).
    #[serde(default)]
    pub components: Vec<Component>,
}

/// Something a layer's files came from, as an SBOM lists it: a Debian package, a Rust crate
/// compiled into a binary, a container image, a file taken from the host.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Component {
    /// `deb`, `crate`, `oci` or `file`.
    pub kind: String,
    /// Its name (a package, a crate, an image reference, a host path).
    pub name: String,
    /// Its version (a Debian or crate version, an image digest), or empty.
    #[serde(default)]
    pub version: String,
    /// sha256 of what was taken (the .deb, the crate archive, the file), lowercase hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Package URL (`pkg:deb/debian/NAME@VERSION?arch=ARCH`, `pkg:cargo/NAME@VERSION`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purl: Option<String>,
}

/// A layer ready to merge: its record and its tree (file data pointing at cached blobs).
#[derive(Debug, Clone)]
pub struct Layer {
    /// Name, keys and records.
    pub record: LayerRecord,
    /// The files.
    pub tree: Tree,
}

/// Errors of the layer cache.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// An I/O error on a named path.
    #[error("cannot access {path}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A cached layer is unreadable (it is ignored and rebuilt by callers that can).
    #[error("corrupt cache entry {path}: {message}; delete it and build again")]
    Corrupt {
        /// The path.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A record could not be turned back into a tree.
    #[error(transparent)]
    Tree(#[from] TreeError),
}

crate::error::into_io_variant!(CacheError);

/// Hex sha256 of bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Hex sha256 of a file, streamed.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(hex::encode(h.finalize()))
}

/// Writes `bytes` to `path` atomically: a temp file in the same directory, fsync, rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    // Outputs are world-readable like any other build artifact (tempfile creates 0600).
    let mode = 0o644 & !current_umask();
    std::fs::set_permissions(
        tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(mode),
    )?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// The process umask, read from /proc (reading it with umask(2) would change it).
fn current_umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:").map(|v| v.trim().to_string()))
        })
        .and_then(|v| u32::from_str_radix(&v, 8).ok())
        .unwrap_or(0o022)
}

/// The content-addressed cache.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

impl Cache {
    /// The cache at `root`.
    pub fn at(root: impl Into<PathBuf>) -> Cache {
        Cache { root: root.into() }
    }

    /// `$MINKE_CACHE`, else `$XDG_CACHE_HOME/minke`, else `~/.cache/minke`.
    pub fn default_location() -> Cache {
        if let Some(d) = std::env::var_os("MINKE_CACHE") {
            return Cache::at(d);
        }
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .unwrap_or_else(|| PathBuf::from("/var/cache"));
        Cache::at(base.join("minke"))
    }

    /// Root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A subdirectory of the cache for other producers (debs, kernels, cargo target).
    pub fn dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    fn blob_path(&self, sha: &str) -> PathBuf {
        self.root.join("blobs/sha256").join(sha)
    }

    fn layer_path(&self, key: &str) -> PathBuf {
        self.root.join("layers").join(format!("{key}.json"))
    }

    /// Loads a cached layer by input key; `Ok(None)` when absent or when any blob is missing.
    pub fn load(&self, key: &str) -> Result<Option<Layer>, CacheError> {
        let path = self.layer_path(key);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&path)(e).into()),
        };
        let record: LayerRecord =
            serde_json::from_slice(&bytes).map_err(|e| CacheError::Corrupt {
                path: path.clone(),
                message: e.to_string(),
            })?;
        let mut tree = Tree::new();
        for r in &record.records {
            let kind = match (r.kind, &r.sha256, &r.target, r.size) {
                (EntryType::Dir, ..) => NodeKind::Dir,
                (EntryType::File, Some(sha), _, Some(size)) => {
                    let p = self.blob_path(sha);
                    if !p.exists() {
                        return Ok(None);
                    }
                    NodeKind::File(FileData::Path { path: p, size })
                }
                (EntryType::Symlink, _, Some(t), _) => NodeKind::Symlink(t.clone()),
                (EntryType::Hardlink, _, Some(t), _) => {
                    NodeKind::Hardlink(t.trim_start_matches('/').to_string())
                }
                _ => {
                    return Err(CacheError::Corrupt {
                        path,
                        message: format!("bad record for {}", r.path),
                    })
                }
            };
            tree.insert(
                &r.path,
                Node {
                    mode: r.mode,
                    uid: r.uid,
                    gid: r.gid,
                    kind,
                },
            )?;
        }
        Ok(Some(Layer { record, tree }))
    }

    /// Stores `tree` as the layer `name` under input `key`: copies file contents into blobs,
    /// writes the layer record, and returns the layer with its tree pointing at the blobs.
    pub fn store(
        &self,
        name: &str,
        key: &str,
        tree: &Tree,
        components: Vec<Component>,
    ) -> Result<Layer, CacheError> {
        let mut records = Vec::with_capacity(tree.len());
        let mut out = Tree::new();
        for (path, node) in tree.iter() {
            let mut rec = Record::metadata(path, node);
            let kind = match &node.kind {
                NodeKind::File(data) => {
                    let (sha, size) = self.put_blob(data)?;
                    rec.size = Some(size);
                    rec.sha256 = Some(sha.clone());
                    NodeKind::File(FileData::Path {
                        path: self.blob_path(&sha),
                        size,
                    })
                }
                NodeKind::Symlink(t) => {
                    rec.target = Some(t.clone());
                    node.kind.clone()
                }
                NodeKind::Hardlink(t) => {
                    rec.target = Some(format!("/{t}"));
                    node.kind.clone()
                }
                NodeKind::Dir => NodeKind::Dir,
            };
            out.insert(
                path,
                Node {
                    kind,
                    ..node.clone()
                },
            )?;
            records.push(rec);
        }
        let digest = records_digest(&records);
        let record = LayerRecord {
            name: name.to_string(),
            key: key.to_string(),
            digest,
            records,
            components,
        };
        let path = self.layer_path(key);
        let json = serde_json::to_vec(&record).map_err(|e| CacheError::Corrupt {
            path: path.clone(),
            message: e.to_string(),
        })?;
        write_atomic(&path, &json).map_err(io_err(&path))?;
        Ok(Layer { record, tree: out })
    }

    /// Whether the blob `sha` is in the cache.
    pub fn has_blob(&self, sha: &str) -> bool {
        valid_hex(sha) && self.blob_path(sha).is_file()
    }

    /// The size of the blob `sha`, if the cache has it.
    pub fn blob_len(&self, sha: &str) -> Option<u64> {
        if !valid_hex(sha) {
            return None;
        }
        std::fs::metadata(self.blob_path(sha))
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len())
    }

    /// Removes the stored layer `key` (its blobs stay).
    pub fn remove_record(&self, key: &str) -> Result<(), CacheError> {
        let path = self.layer_path(key);
        std::fs::remove_file(&path).map_err(|e| io_err(&path)(e).into())
    }

    /// The bytes of the blob `sha`.
    pub fn blob_bytes(&self, sha: &str) -> Result<Vec<u8>, CacheError> {
        let p = self.blob_path(sha);
        std::fs::read(&p).map_err(|e| io_err(&p)(e).into())
    }

    /// Stores `bytes` as a blob; returns its sha256.
    pub fn put_blob_bytes(&self, bytes: &[u8]) -> Result<String, CacheError> {
        let sha = sha256_hex(bytes);
        let p = self.blob_path(&sha);
        if !p.exists() {
            write_atomic(&p, bytes).map_err(io_err(&p))?;
        }
        Ok(sha)
    }

    /// The stored JSON of the layer `key`, if any.
    pub fn record_bytes(&self, key: &str) -> Result<Option<Vec<u8>>, CacheError> {
        let path = self.layer_path(key);
        match std::fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path)(e).into()),
        }
    }

    /// Stores the JSON of the layer `key` (its blobs must be in the cache already).
    pub fn put_record(&self, key: &str, json: &[u8]) -> Result<(), CacheError> {
        if !valid_hex(key) {
            return Err(CacheError::Corrupt {
                path: self.root.join("layers"),
                message: format!("{key:?} is not a layer key"),
            });
        }
        let path = self.layer_path(key);
        write_atomic(&path, json).map_err(io_err(&path))?;
        Ok(())
    }

    fn put_blob(&self, data: &FileData) -> Result<(String, u64), CacheError> {
        let owned;
        let bytes: &[u8] = match data {
            FileData::Inline(b) => b,
            FileData::Path { path, .. } => {
                owned = std::fs::read(path).map_err(io_err(path))?;
                &owned
            }
        };
        let sha = sha256_hex(bytes);
        let p = self.blob_path(&sha);
        if !p.exists() {
            write_atomic(&p, bytes).map_err(io_err(&p))?;
        }
        Ok((sha, bytes.len() as u64))
    }
}

/// Whether `s` is a sha256 in lowercase hex (a blob name or a layer key).
fn valid_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Digest of a list of records (canonical JSON, one record per line).
pub fn records_digest(records: &[Record]) -> String {
    let mut h = Sha256::new();
    for r in records {
        // serde_json output of a struct is deterministic (field order is declaration order).
        if let Ok(line) = serde_json::to_vec(r) {
            h.update(&line);
        }
        h.update(b"\n");
    }
    hex::encode(h.finalize())
}

/// Records of a tree whose files are all hashed (reads Path-backed files).
pub fn records_of(tree: &Tree) -> std::io::Result<Vec<Record>> {
    let mut out = Vec::with_capacity(tree.len());
    for (path, node) in tree.iter() {
        let mut rec = Record::metadata(path, node);
        match &node.kind {
            NodeKind::File(FileData::Inline(b)) => {
                rec.size = Some(b.len() as u64);
                rec.sha256 = Some(sha256_hex(b));
            }
            NodeKind::File(FileData::Path { path: p, size }) => {
                rec.size = Some(*size);
                rec.sha256 = Some(blob_sha_from_path(p).map_or_else(|| sha256_file(p), Ok)?);
            }
            NodeKind::Symlink(t) => rec.target = Some(t.clone()),
            NodeKind::Hardlink(t) => rec.target = Some(format!("/{t}")),
            NodeKind::Dir => {}
        }
        out.push(rec);
    }
    Ok(out)
}

/// A cached blob's file name is its sha256: skip rehashing it.
fn blob_sha_from_path(p: &Path) -> Option<String> {
    let parent = p.parent()?;
    if parent.file_name()? != "sha256" || parent.parent()?.file_name()? != "blobs" {
        return None;
    }
    let name = p.file_name()?.to_str()?;
    (name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit())).then(|| name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_then_load_gives_the_same_records() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::at(dir.path());
        let mut t = Tree::new();
        t.insert("bin/x", Node::file(0o755, &b"hello"[..])).unwrap();
        t.insert("bin/y", Node::symlink("x")).unwrap();
        t.insert(
            "bin/z",
            Node {
                mode: 0o755,
                uid: 0,
                gid: 0,
                kind: NodeKind::Hardlink("bin/x".into()),
            },
        )
        .unwrap();
        let stored = cache.store("p", "k1", &t, Vec::new()).unwrap();
        let loaded = cache.load("k1").unwrap().unwrap();
        assert_eq!(stored.record.digest, loaded.record.digest);
        assert_eq!(records_of(&loaded.tree).unwrap(), stored.record.records);
        assert!(cache.load("other").unwrap().is_none());
    }

    #[test]
    fn same_files_same_digest_whatever_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::at(dir.path());
        let mut t = Tree::new();
        t.insert("a", Node::file(0o644, &b"1"[..])).unwrap();
        let a = cache.store("p", "k1", &t, Vec::new()).unwrap();
        let b = cache.store("p", "k2", &t, Vec::new()).unwrap();
        assert_eq!(a.record.digest, b.record.digest);
    }
}
