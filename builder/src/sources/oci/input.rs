//! Where an image is read from: an OCI layout directory, a tar of one, or a `docker save`
//! tarball; members are found by name and blobs by digest.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::io_err;

use super::format::*;
use super::OciError;

/// Where the members of an image are read from.
pub(super) enum Source {
    Dir(PathBuf),
    /// A tar file: member name → (data offset, size) or symlink target member.
    Tar(PathBuf, HashMap<String, Member>),
}

pub(super) enum Member {
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
    pub(super) fn open_tar(path: &Path) -> Result<Source, OciError> {
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

    pub(super) fn image(&self) -> &Path {
        match self {
            Source::Dir(p) | Source::Tar(p, _) => p,
        }
    }

    pub(super) fn exists(&self, name: &str) -> bool {
        match self {
            Source::Dir(d) => d.join(name).is_file(),
            Source::Tar(_, m) => m.contains_key(name),
        }
    }

    pub(super) fn open(&self, name: &str) -> Result<Box<dyn Read>, OciError> {
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
    pub(super) fn read_small(&self, name: &str) -> Result<Vec<u8>, OciError> {
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

    pub(super) fn json<T: serde::de::DeserializeOwned>(
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
    pub(super) fn hex_of(&self, digest: &str) -> Result<String, OciError> {
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

    pub(super) fn check(
        &self,
        blob: &str,
        expected_hex: &str,
        actual: &[u8],
    ) -> Result<(), OciError> {
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
    pub(super) fn blob_json<T: serde::de::DeserializeOwned>(
        &self,
        digest: &str,
    ) -> Result<T, OciError> {
        let hex = self.hex_of(digest)?;
        let name = format!("blobs/sha256/{hex}");
        let bytes = self.read_small(&name)?;
        self.check(digest, &hex, &Sha256::digest(&bytes))?;
        self.json(digest, &bytes)
    }

    /// Streams a blob through sha256 and compares.
    pub(super) fn verify_blob(&self, name: &str, expected_hex: &str) -> Result<(), OciError> {
        let mut h = Sha256::new();
        io::copy(&mut self.open(name)?, &mut h).map_err(|source| OciError::Io {
            path: self.image().join(name),
            source,
        })?;
        self.check(name, expected_hex, &h.finalize())
    }
}

/// The sha256 a docker-save member name carries (`<hex>.json`, `blobs/sha256/<hex>`).
pub(super) fn blob_hex_of_name(name: &str) -> Option<String> {
    let base = name.rsplit('/').next()?;
    let hex = base.strip_suffix(".json").unwrap_or(base);
    (hex.len() == 64 && hex.bytes().all(|c| c.is_ascii_hexdigit()))
        .then(|| hex.to_ascii_lowercase())
}
