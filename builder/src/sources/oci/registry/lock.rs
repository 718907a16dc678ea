//! The lock file beside a spec: every registry reference a build used, resolved to the digest
//! of its platform's image manifest, so that later builds read the same bytes (like
//! Cargo.lock). Written only when a build changed what it records; entries a build no longer
//! used are dropped.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::RegistryError;

const HEADER: &str = "\
# Written by minke: the registry images this spec's build used, each tag resolved to the digest
# of its platform's manifest. Builds use these digests; `minke build --refresh` resolves the
# tags again. Keep it under version control beside the spec.
";

/// One pinned image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// The reference as the package wrote it (`REGISTRY/NAME:TAG`).
    pub image: String,
    /// The platform asked for (`linux/arm64`), or `host` when none was.
    pub platform: String,
    /// The image manifest's digest.
    pub digest: String,
    /// The index the tag named, when it named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    version: u32,
    #[serde(default)]
    images: Vec<Entry>,
}

/// A lock file's entries, and which of them this build used.
#[derive(Debug, Default)]
pub struct Lock {
    path: Option<PathBuf>,
    entries: BTreeMap<(String, String), Entry>,
    loaded: Vec<Entry>,
    used: BTreeSet<(String, String)>,
}

impl Lock {
    /// Reads `path` (absent: empty); `None`: a lock that is never written.
    pub fn load(path: Option<&Path>) -> Result<Lock, RegistryError> {
        let mut lock = Lock {
            path: path.map(Path::to_path_buf),
            ..Lock::default()
        };
        let Some(path) = path else {
            return Ok(lock);
        };
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(lock),
            Err(source) => {
                return Err(RegistryError::Io {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        let file: File = serde_yaml_ng::from_str(&text).map_err(|e| RegistryError::Lock {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        if file.version != 1 {
            return Err(RegistryError::Lock {
                path: path.to_path_buf(),
                reason: format!("version {} is not 1", file.version),
            });
        }
        for e in file.images {
            lock.entries
                .insert((e.image.clone(), e.platform.clone()), e.clone());
            lock.loaded.push(e);
        }
        Ok(lock)
    }

    /// The pinned entry of `image` for `platform`, marked used.
    pub fn get(&mut self, image: &str, platform: &str) -> Option<Entry> {
        let key = (image.to_string(), platform.to_string());
        let e = self.entries.get(&key).cloned();
        if e.is_some() {
            self.used.insert(key);
        }
        e
    }

    /// Records a resolution, marked used.
    pub fn put(&mut self, entry: Entry) {
        let key = (entry.image.clone(), entry.platform.clone());
        self.used.insert(key.clone());
        self.entries.insert(key, entry);
    }

    /// Writes the used entries when they differ from what was read; returns whether it wrote.
    pub fn save(&self) -> Result<bool, RegistryError> {
        let Some(path) = &self.path else {
            return Ok(false);
        };
        let images: Vec<Entry> = self
            .entries
            .iter()
            .filter(|(k, _)| self.used.contains(*k))
            .map(|(_, e)| e.clone())
            .collect();
        let mut loaded = self.loaded.clone();
        loaded.sort_by(|a, b| (&a.image, &a.platform).cmp(&(&b.image, &b.platform)));
        if images == loaded && (path.exists() || images.is_empty()) {
            return Ok(false);
        }
        let body = serde_yaml_ng::to_string(&File { version: 1, images }).map_err(|e| {
            RegistryError::Lock {
                path: path.clone(),
                reason: e.to_string(),
            }
        })?;
        crate::layer::write_atomic(path, format!("{HEADER}{body}").as_bytes()).map_err(
            |source| RegistryError::Io {
                path: path.clone(),
                source,
            },
        )?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(image: &str, d: char) -> Entry {
        Entry {
            image: image.into(),
            platform: "linux/arm64".into(),
            digest: format!("sha256:{}", d.to_string().repeat(64)),
            index: None,
        }
    }

    #[test]
    fn round_trip_prunes_unused_and_writes_only_on_change() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("spec.lock");
        let mut lock = Lock::load(Some(&path)).unwrap();
        assert!(lock.get("r/a:1", "linux/arm64").is_none());
        lock.put(entry("r/b:1", 'b'));
        lock.put(entry("r/a:1", 'a'));
        assert!(lock.save().unwrap());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# Written by minke"), "{text}");
        assert!(text.find("r/a:1").unwrap() < text.find("r/b:1").unwrap());

        // Same uses: nothing written. One fewer: pruned.
        let mut again = Lock::load(Some(&path)).unwrap();
        assert_eq!(again.get("r/a:1", "linux/arm64"), Some(entry("r/a:1", 'a')));
        again.get("r/b:1", "linux/arm64");
        assert!(!again.save().unwrap());
        let mut fewer = Lock::load(Some(&path)).unwrap();
        fewer.get("r/a:1", "linux/arm64");
        assert!(fewer.save().unwrap());
        assert!(!std::fs::read_to_string(&path).unwrap().contains("r/b:1"));

        std::fs::write(&path, "version: 2\n").unwrap();
        let e = Lock::load(Some(&path)).unwrap_err().to_string();
        assert!(e.contains("spec.lock") && e.contains("version 2"), "{e}");
        std::fs::write(&path, "version: 1\nimages: [{image: x}]\n").unwrap();
        assert!(Lock::load(Some(&path)).is_err());
    }
}
