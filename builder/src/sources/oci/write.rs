//! A tree written as a reproducible single-layer OCI image layout (fixed timestamps, sorted
//! entries, digests over exact bytes).

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::Path;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::archive::tree::{FileData, NodeKind, Tree};
use crate::error::io_err;

use super::format::*;
use super::platform::oci_arch;
use super::OciError;

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
