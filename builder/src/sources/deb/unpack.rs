//! A package's data archive read in-process: ar → `data.tar.{xz,zst,gz}` → tar, into a
//! [`Tree`] or onto disk, refusing entries that would escape or alias.

use std::cell::Cell;
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::path::Path;
use std::rc::Rc;

use crate::archive::tree::{self, FileData, Node, NodeKind, Tree};
use crate::error::io_err;

use super::DebError;

/// One entry of a package's data archive, as handed to a sink.
enum Item<'a> {
    Dir,
    File { size: u64, data: &'a mut dyn Read },
    Symlink(String),
    Hardlink(String),
}

/// Receives each entry: path, mode, uid, gid and the entry itself.
type Sink<'s> = dyn FnMut(String, u32, u32, u32, Item<'_>) -> Result<(), DebError> + 's;

/// Turns a tar member name into a tree path; `None` for the root (`./`).
fn member_path(deb: &Path, raw: &[u8]) -> Result<Option<String>, DebError> {
    let s = std::str::from_utf8(raw).map_err(|_| DebError::BadEntry {
        deb: deb.to_path_buf(),
        path: String::from_utf8_lossy(raw).into_owned(),
        reason: "the name is not UTF-8".into(),
    })?;
    if s.starts_with('/') {
        return Err(DebError::Escape {
            deb: deb.to_path_buf(),
            path: s.to_string(),
        });
    }
    let mut parts = Vec::new();
    for c in s.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                return Err(DebError::Escape {
                    deb: deb.to_path_buf(),
                    path: s.to_string(),
                })
            }
            c => parts.push(c),
        }
    }
    if parts.is_empty() {
        return Ok(None);
    }
    tree::normalize(&parts.join("/"))
        .map(Some)
        .map_err(|source| DebError::Tree {
            deb: deb.to_path_buf(),
            source,
        })
}

/// Walks the data archive of `deb`, calling `sink(path, mode, uid, gid, item)` per entry.
fn walk_data(deb: &Path, sink: &mut Sink<'_>) -> Result<(), DebError> {
    let file = File::open(deb).map_err(io_err(deb))?;
    let mut archive = ar::Archive::new(BufReader::new(file));
    let ar_err = |source| DebError::Ar {
        deb: deb.to_path_buf(),
        source,
    };
    while let Some(entry) = archive.next_entry() {
        let entry = entry.map_err(ar_err)?;
        let member = String::from_utf8_lossy(entry.header().identifier()).into_owned();
        let Some(ext) = member.strip_prefix("data.tar") else {
            continue;
        };
        let declared = entry.header().size();
        let count = Rc::new(Cell::new(0u64));
        let entry = CountRead {
            inner: entry,
            count: count.clone(),
        };
        let reader: Box<dyn Read + '_> = match ext {
            "" => Box::new(entry),
            ".xz" => Box::new(xz2::read::XzDecoder::new_multi_decoder(entry)),
            ".zst" => Box::new(zstd::stream::read::Decoder::new(entry).map_err(|source| {
                DebError::Tar {
                    deb: deb.to_path_buf(),
                    source,
                }
            })?),
            ".gz" => Box::new(flate2::read::MultiGzDecoder::new(entry)),
            _ => {
                return Err(DebError::Compression {
                    deb: deb.to_path_buf(),
                    member,
                })
            }
        };
        walk_tar(deb, reader, sink)?;
        if count.get() != declared {
            let msg = format!(
                "member {member} is {} bytes, but its header says {declared}: the file is truncated",
                count.get()
            );
            return Err(DebError::Ar {
                deb: deb.to_path_buf(),
                source: io::Error::new(io::ErrorKind::UnexpectedEof, msg),
            });
        }
        return Ok(());
    }
    Err(DebError::NoData {
        deb: deb.to_path_buf(),
    })
}

fn walk_tar(deb: &Path, reader: Box<dyn Read + '_>, sink: &mut Sink<'_>) -> Result<(), DebError> {
    let tar_err = |source| DebError::Tar {
        deb: deb.to_path_buf(),
        source,
    };
    let mut tar = tar::Archive::new(reader);
    for entry in tar.entries().map_err(tar_err)? {
        let mut entry = entry.map_err(tar_err)?;
        let raw_path = entry.path_bytes().into_owned();
        let Some(path) = member_path(deb, &raw_path)? else {
            continue;
        };
        let header = entry.header();
        let mode = header.mode().map_err(tar_err)? & 0o7777;
        let uid = u32::try_from(header.uid().map_err(tar_err)?).unwrap_or(0);
        let gid = u32::try_from(header.gid().map_err(tar_err)?).unwrap_or(0);
        let kind = header.entry_type();
        let link = || -> Result<String, DebError> {
            let raw = entry.link_name_bytes().ok_or_else(|| DebError::BadEntry {
                deb: deb.to_path_buf(),
                path: path.clone(),
                reason: "link without a target".into(),
            })?;
            String::from_utf8(raw.into_owned()).map_err(|_| DebError::BadEntry {
                deb: deb.to_path_buf(),
                path: path.clone(),
                reason: "link target is not UTF-8".into(),
            })
        };
        let item = match kind {
            tar::EntryType::Directory => Item::Dir,
            tar::EntryType::Symlink => Item::Symlink(link()?),
            tar::EntryType::Link => {
                let target = link()?;
                match member_path(deb, target.as_bytes())? {
                    Some(t) => Item::Hardlink(t),
                    None => {
                        return Err(DebError::Escape {
                            deb: deb.to_path_buf(),
                            path: target,
                        })
                    }
                }
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = entry.size();
                sink(
                    path,
                    mode,
                    uid,
                    gid,
                    Item::File {
                        size,
                        data: &mut entry,
                    },
                )?;
                continue;
            }
            other => {
                tracing::warn!(deb = %deb.display(), path, "skipping tar entry of type {other:?}");
                continue;
            }
        };
        sink(path, mode, uid, gid, item)?;
    }
    // Read to the end, so truncated or corrupt compressed streams are noticed.
    let mut rest = tar.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(tar_err)?;
    Ok(())
}

/// Counts the bytes read through it.
struct CountRead<R> {
    inner: R,
    count: Rc<Cell<u64>>,
}

impl<R: Read> Read for CountRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.set(self.count.get() + n as u64);
        Ok(n)
    }
}

/// Refuses entries below a symlink of the same package (they would be written through it).
fn check_parents(deb: &Path, tree: &Tree, path: &str) -> Result<(), DebError> {
    let mut end = 0;
    while let Some(i) = path[end..].find('/') {
        let parent = &path[..end + i];
        if let Some(Node {
            kind: NodeKind::Symlink(_),
            ..
        }) = tree.get(parent)
        {
            return Err(DebError::Escape {
                deb: deb.to_path_buf(),
                path: path.to_string(),
            });
        }
        end += i + 1;
    }
    Ok(())
}

fn hardlink_target_ok(deb: &Path, tree: &Tree, path: &str, target: &str) -> Result<(), DebError> {
    match tree.get(target) {
        Some(Node {
            kind: NodeKind::File(_),
            ..
        }) => Ok(()),
        _ => Err(DebError::BadEntry {
            deb: deb.to_path_buf(),
            path: path.to_string(),
            reason: format!("hard link to {target:?}, which is not an earlier regular file"),
        }),
    }
}

/// Unpacks the data archive of `deb` into a tree with file contents held in memory. Modes,
/// owners, symlinks and hard links are kept; device nodes and FIFOs are skipped.
pub fn unpack(deb: &Path) -> Result<Tree, DebError> {
    let mut tree = Tree::new();
    walk_data(deb, &mut |path, mode, uid, gid, item| {
        check_parents(deb, &tree, &path)?;
        let kind = match item {
            Item::Dir => NodeKind::Dir,
            Item::Symlink(t) => NodeKind::Symlink(t),
            Item::Hardlink(t) => {
                hardlink_target_ok(deb, &tree, &path, &t)?;
                NodeKind::Hardlink(t)
            }
            Item::File { size, data } => {
                let mut buf = Vec::with_capacity(usize::try_from(size.min(1 << 30)).unwrap_or(0));
                data.read_to_end(&mut buf).map_err(|source| DebError::Tar {
                    deb: deb.to_path_buf(),
                    source,
                })?;
                NodeKind::File(FileData::Inline(buf.into()))
            }
        };
        insert(
            deb,
            &mut tree,
            &path,
            Node {
                mode,
                uid,
                gid,
                kind,
            },
        )
    })?;
    Ok(tree)
}

/// Unpacks the data archive of `deb` below `dest` (created if needed) and returns the tree,
/// whose files point into `dest` ([`FileData::Path`]). Files are written with the owner's
/// default permissions; the tree carries the package's modes and owners. Existing files at the
/// same paths are replaced.
pub fn unpack_to_dir(deb: &Path, dest: &Path) -> Result<Tree, DebError> {
    fs::create_dir_all(dest).map_err(io_err(dest))?;
    let mut tree = Tree::new();
    walk_data(deb, &mut |path, mode, uid, gid, item| {
        check_parents(deb, &tree, &path)?;
        let on_disk = dest.join(&path);
        if let Some(parent) = on_disk.parent() {
            fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        let kind = match item {
            Item::Dir => {
                if fs::symlink_metadata(&on_disk).is_ok_and(|m| !m.is_dir()) {
                    fs::remove_file(&on_disk).map_err(io_err(&on_disk))?;
                }
                fs::create_dir_all(&on_disk).map_err(io_err(&on_disk))?;
                NodeKind::Dir
            }
            Item::Symlink(t) => {
                remove_non_dir(&on_disk)?;
                std::os::unix::fs::symlink(&t, &on_disk).map_err(io_err(&on_disk))?;
                NodeKind::Symlink(t)
            }
            Item::Hardlink(t) => {
                hardlink_target_ok(deb, &tree, &path, &t)?;
                remove_non_dir(&on_disk)?;
                fs::hard_link(dest.join(&t), &on_disk).map_err(io_err(&on_disk))?;
                NodeKind::Hardlink(t)
            }
            Item::File { size, data } => {
                remove_non_dir(&on_disk)?;
                let mut f = File::create(&on_disk).map_err(io_err(&on_disk))?;
                let n = io::copy(data, &mut f).map_err(|source| DebError::Tar {
                    deb: deb.to_path_buf(),
                    source,
                })?;
                f.flush().map_err(io_err(&on_disk))?;
                debug_assert_eq!(n, size);
                NodeKind::File(FileData::Path {
                    path: on_disk,
                    size: n,
                })
            }
        };
        insert(
            deb,
            &mut tree,
            &path,
            Node {
                mode,
                uid,
                gid,
                kind,
            },
        )
    })?;
    Ok(tree)
}

fn insert(deb: &Path, tree: &mut Tree, path: &str, node: Node) -> Result<(), DebError> {
    tree.insert(path, node)
        .map(drop)
        .map_err(|source| DebError::Tree {
            deb: deb.to_path_buf(),
            source,
        })
}

fn remove_non_dir(p: &Path) -> Result<(), DebError> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => Err(DebError::Io {
            path: p.to_path_buf(),
            source: io::Error::new(io::ErrorKind::AlreadyExists, "a directory is in the way"),
        }),
        Ok(_) => Ok(fs::remove_file(p).map_err(io_err(p))?),
        Err(_) => Ok(()),
    }
}
