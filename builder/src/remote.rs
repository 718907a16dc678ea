//! The layer cache shared through a registry (`minke build --cache-from REF --cache-to REF`),
//! so a fleet of CI runners builds each layer once.
//!
//! A layer travels as an OCI artifact (`artifactType` [`ARTIFACT_TYPE`]) tagged by its input
//! key, `REF:layer-KEY`: its record (the layer's JSON, as `layers/KEY.json` holds it) and one
//! tarball of the blobs its files point at, each entry named by its sha256. The same layer
//! gives the same manifest, so runners racing to push it agree. What comes back is checked
//! before it enters the local cache: the record must be for the key asked, its digest must be
//! the digest of its records, every file record must name a blob of its size, and every blob
//! must hash to its name, so nothing a record does not name gets in and nothing half-formed
//! stops a later build. What a record says, though, is whoever pushed it: anyone who can push
//! to the repository can offer a layer for any key, so trust it as you trust the runners that
//! push to it. A cache that cannot be reached makes the build produce the layer itself, with a
//! warning.

use std::collections::BTreeSet;
use std::io::Read;

use crate::layer::{records_digest, sha256_hex, Cache, LayerRecord};
use crate::sources::oci::artifact::{ArtifactManifest, Descriptor, TITLE};
use crate::sources::oci::registry::{Registry, RegistryError};

/// The `artifactType` of a cached layer.
pub const ARTIFACT_TYPE: &str = "application/vnd.minke.layer.v1";
const RECORD_TYPE: &str = "application/vnd.minke.layer.record.v1+json";
const BLOBS_TYPE: &str = "application/vnd.minke.layer.blobs.v1.tar";
/// The tag of the layer with input key `key`.
pub fn tag(key: &str) -> String {
    format!("layer-{key}")
}

/// A registry repository (`REGISTRY/NAME`, no tag) holding cached layers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteCache {
    repository: String,
}

/// What went wrong with a remote cache.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The registry failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// What it offered is not a layer for this key.
    #[error("{reference}: {what}")]
    Bad {
        /// The layer's reference.
        reference: String,
        /// What is wrong.
        what: String,
    },
    /// The local cache failed.
    #[error(transparent)]
    Cache(#[from] crate::layer::CacheError),
}

impl RemoteCache {
    /// The cache at `repository`; a tag or digest in it is refused (each layer has its tag).
    pub fn new(repository: &str) -> Result<RemoteCache, String> {
        let last = repository.rsplit('/').next().unwrap_or_default();
        if !repository.contains('/') || last.contains(':') || repository.contains('@') {
            return Err(format!(
                "{repository:?}: name a repository, REGISTRY/NAME, without a tag or digest \
                 (each layer is pushed under a tag of its own)"
            ));
        }
        Ok(RemoteCache {
            repository: repository.to_string(),
        })
    }

    fn reference(&self, key: &str) -> String {
        format!("{}:{}", self.repository, tag(key))
    }

    /// Fetches the layer `key` into `cache` if the remote has it; `Ok(false)` when it has not.
    pub fn fetch(
        &self,
        registry: &Registry,
        cache: &Cache,
        key: &str,
        progress: &dyn Fn(&str),
    ) -> Result<bool, RemoteError> {
        let reference = self.reference(key);
        let bytes = match registry.raw_manifest(&reference) {
            Ok((b, _)) => b,
            Err(e) if e.is_not_found() => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        let bad = |what: String| RemoteError::Bad {
            reference: reference.clone(),
            what,
        };
        let m: ArtifactManifest = serde_json::from_slice(&bytes)
            .map_err(|e| bad(format!("not an artifact manifest: {e}")))?;
        if m.artifact_type != ARTIFACT_TYPE {
            return Err(bad(format!(
                "its artifactType is {:?}, not a minke layer",
                m.artifact_type
            )));
        }
        let part = |media: &str| {
            m.layers
                .iter()
                .find(|l| l.media_type == media)
                .ok_or_else(|| bad(format!("no {media} layer")))
        };
        let (record_d, blobs_d) = (part(RECORD_TYPE)?, part(BLOBS_TYPE)?);
        progress(&format!(
            "fetching cached layer {key:.12} from {}",
            self.repository
        ));
        let record_path = registry.blob(&reference, &record_d.digest, record_d.size, &|_| {})?;
        let record_bytes =
            std::fs::read(&record_path).map_err(|e| bad(format!("cannot read its record: {e}")))?;
        let record: LayerRecord = serde_json::from_slice(&record_bytes)
            .map_err(|e| bad(format!("its record is not a layer: {e}")))?;
        if record.key != key {
            return Err(bad(format!(
                "it holds the layer of key {}, not {key}",
                record.key
            )));
        }
        if records_digest(&record.records) != record.digest {
            return Err(bad("its record's digest does not match its files".into()));
        }
        let needed: BTreeSet<&str> = record
            .records
            .iter()
            .filter_map(|r| r.sha256.as_deref())
            .collect();
        let missing: BTreeSet<&str> = needed
            .iter()
            .copied()
            .filter(|s| !cache.has_blob(s))
            .collect();
        if !missing.is_empty() {
            let tar_path = registry.blob(&reference, &blobs_d.digest, blobs_d.size, &|_| {})?;
            let f = std::fs::File::open(&tar_path)
                .map_err(|e| bad(format!("cannot read its blobs: {e}")))?;
            let mut ar = tar::Archive::new(f);
            let entries = ar
                .entries()
                .map_err(|e| bad(format!("its blobs are not a tarball: {e}")))?;
            for entry in entries {
                let mut entry = entry.map_err(|e| bad(format!("its blobs tarball: {e}")))?;
                let name = entry
                    .path()
                    .map_err(|e| bad(format!("its blobs tarball: {e}")))?
                    .to_string_lossy()
                    .into_owned();
                if !missing.contains(name.as_str()) {
                    continue;
                }
                let mut data = Vec::new();
                entry
                    .read_to_end(&mut data)
                    .map_err(|e| bad(format!("its blobs tarball: {e}")))?;
                if sha256_hex(&data) != name {
                    return Err(bad(format!("blob {name} does not match its digest")));
                }
                cache.put_blob_bytes(&data)?;
            }
            if let Some(s) = needed.iter().find(|s| !cache.has_blob(s)) {
                return Err(bad(format!("its blobs tarball lacks {s}")));
            }
        }
        // Every file record must name a blob of its size: a record the cache cannot load
        // would stop every later build instead of costing one local build.
        for r in &record.records {
            if r.kind != crate::archive::tree::EntryType::File {
                continue;
            }
            let (Some(sha), Some(size)) = (r.sha256.as_deref(), r.size) else {
                return Err(bad(format!("its record of {} has no content", r.path)));
            };
            if cache.blob_len(sha) != Some(size) {
                return Err(bad(format!(
                    "its record of {} says {size} bytes, its blob {sha} differs",
                    r.path
                )));
            }
        }
        cache.put_record(key, &record_bytes)?;
        if cache.load(key).ok().flatten().is_none() {
            let _ = cache.remove_record(key);
            return Err(bad("the local cache cannot load the layer it holds".into()));
        }
        Ok(true)
    }

    /// Pushes the local layer `key` unless the remote has it; returns whether it pushed.
    pub fn push(
        &self,
        registry: &Registry,
        cache: &Cache,
        key: &str,
        progress: &dyn Fn(&str),
    ) -> Result<bool, RemoteError> {
        let reference = self.reference(key);
        match registry.raw_manifest(&reference) {
            Ok(_) => return Ok(false),
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
        let Some(record_bytes) = cache.record_bytes(key)? else {
            return Err(RemoteError::Bad {
                reference,
                what: "the local cache has no such layer".into(),
            });
        };
        let record: LayerRecord =
            serde_json::from_slice(&record_bytes).map_err(|e| RemoteError::Bad {
                reference: reference.clone(),
                what: format!("the local record is not a layer: {e}"),
            })?;
        progress(&format!(
            "pushing layer {} ({key:.12}) to {}",
            record.name, self.repository
        ));
        let blobs: BTreeSet<&str> = record
            .records
            .iter()
            .filter_map(|r| r.sha256.as_deref())
            .collect();
        let mut tar = tar::Builder::new(Vec::new());
        tar.mode(tar::HeaderMode::Deterministic);
        for sha in blobs {
            let data = cache.blob_bytes(sha)?;
            let mut h = tar::Header::new_ustar();
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            h.set_mtime(0);
            tar.append_data(&mut h, sha, &data[..]).map_err(|source| {
                crate::layer::CacheError::Io {
                    path: cache.root().to_path_buf(),
                    source,
                }
            })?;
        }
        let tar_bytes = tar
            .into_inner()
            .map_err(|source| crate::layer::CacheError::Io {
                path: cache.root().to_path_buf(),
                source,
            })?;
        let mut layers = Vec::new();
        for (bytes, media, title) in [
            (&record_bytes, RECORD_TYPE, format!("{key}.json")),
            (&tar_bytes, BLOBS_TYPE, format!("{key}.tar")),
        ] {
            let digest = format!("sha256:{}", sha256_hex(bytes));
            registry.push_blob_bytes(&reference, bytes, &digest)?;
            layers.push(Descriptor {
                media_type: media.into(),
                digest,
                size: bytes.len() as u64,
                data: None,
                annotations: [(TITLE.to_string(), title)].into(),
            });
        }
        let manifest = ArtifactManifest::new(
            ARTIFACT_TYPE,
            layers,
            [(TITLE.to_string(), record.name.clone())].into(),
        );
        manifest.push(registry, &reference)?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cache_is_a_repository_without_a_tag() {
        RemoteCache::new("127.0.0.1:5000/ci/cache").unwrap();
        for bad in [
            "cache",
            "127.0.0.1:5000/cache:tag",
            "r.example/cache@sha256:00",
        ] {
            assert!(RemoteCache::new(bad).is_err(), "{bad}");
        }
        assert_eq!(
            RemoteCache::new("r.example/c").unwrap().reference("ab"),
            "r.example/c:layer-ab"
        );
    }
}
