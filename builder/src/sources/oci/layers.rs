//! Applying a layer onto the tree built so far: every blob checked against its digest (and the
//! config's `diff_ids`), overlay whiteouts and opaque directories honoured, paths kept inside.

use std::cell::RefCell;
use std::io::{self, BufRead, BufReader, Read};
use std::rc::Rc;

use sha2::{Digest, Sha256};

use crate::archive::tree::{self, FileData, Node, NodeKind, Tree, TreeError};

use super::input::Source;
use super::OciError;

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

/// One entry's effect on the layers below.
pub(super) enum Change {
    Whiteout(String),
    Opaque(String),
    Put(String, Node),
}

pub(super) fn apply_layer(
    src: &Source,
    blob: &str,
    name: &str,
    media_type: &str,
    diff_id: Option<&str>,
    tree: &mut Tree,
) -> Result<(), OciError> {
    let changes = read_layer(src, blob, name, media_type, diff_id)?;
    apply_changes(src, blob, changes, tree)
}

/// Reads a layer into its changes, checked against `diff_id` (the digest of the
/// uncompressed tar) before anything is applied. Layers can be read in parallel.
pub(super) fn read_layer(
    src: &Source,
    blob: &str,
    name: &str,
    media_type: &str,
    diff_id: Option<&str>,
) -> Result<Vec<Change>, OciError> {
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
    Ok(changes)
}

/// Applies a layer's changes onto the tree of the layers below it.
pub(super) fn apply_changes(
    src: &Source,
    blob: &str,
    changes: Vec<Change>,
    tree: &mut Tree,
) -> Result<(), OciError> {
    let image = src.image().to_path_buf();
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
pub(super) fn put(tree: &mut Tree, path: &str, node: Node) -> Result<(), TreeError> {
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
