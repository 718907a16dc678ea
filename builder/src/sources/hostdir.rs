//! Reads a directory of the host into a [`Tree`] faithfully: permission bits, symlinks (kept
//! verbatim) and hard links; owners become root.
//!
//! Files are not read: they become [`FileData::Path`] entries with the size seen now, read when
//! archived. Files sharing a (device, inode) become one [`NodeKind::File`] at the bytewise
//! smallest path and [`NodeKind::Hardlink`]s to it from the others. Devices, FIFOs and sockets
//! are errors. Directory order never matters: the tree sorts.

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::archive::tree::{FileData, Node, NodeKind, Tree, TreeError};
use crate::error::io_err;
use crate::fsutil::walk_sorted;

/// Why a host directory could not be read into a tree.
#[derive(Debug, thiserror::Error)]
pub enum HostDirError {
    /// An OS call failed.
    #[error("cannot read {path}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A name or symlink target is not UTF-8.
    #[error("{path} has a name or symlink target that is not UTF-8: rename it or leave it out")]
    NotUtf8 {
        /// The path.
        path: PathBuf,
    },
    /// A device, FIFO or socket.
    #[error("{path} is a {kind}; images hold only directories, regular files and symlinks: leave it out")]
    Unsupported {
        /// The path.
        path: PathBuf,
        /// What it is.
        kind: &'static str,
    },
    /// The tree refused an entry (name too long, file too large).
    #[error("cannot add {path} to the image")]
    Tree {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: TreeError,
    },
}

crate::error::into_io_variant!(HostDirError);

/// Reads everything below `dir` (not `dir` itself) into a tree with uid/gid 0.
pub fn tree_from_dir(dir: &Path) -> Result<Tree, HostDirError> {
    let mut tree = Tree::new();
    // (dev, ino) -> tree paths of files with more than one link.
    let mut links: HashMap<(u64, u64), Vec<String>> = HashMap::new();
    for entry in walk_sorted(dir, |_| false)? {
        let path = dir.join(&entry.rel);
        let tree_path = entry
            .rel
            .into_os_string()
            .into_string()
            .map_err(|_| HostDirError::NotUtf8 { path: path.clone() })?;
        let md = std::fs::symlink_metadata(&path).map_err(io_err(&path))?;
        let ft = md.file_type();
        let mode = md.mode() & 0o7777;
        let kind = if ft.is_dir() {
            NodeKind::Dir
        } else if ft.is_file() {
            if md.nlink() > 1 {
                links
                    .entry((md.dev(), md.ino()))
                    .or_default()
                    .push(tree_path.clone());
            }
            NodeKind::File(FileData::Path {
                path: path.clone(),
                size: md.len(),
            })
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&path).map_err(io_err(&path))?;
            let target = target
                .into_os_string()
                .into_string()
                .map_err(|_| HostDirError::NotUtf8 { path: path.clone() })?;
            NodeKind::Symlink(target)
        } else {
            let kind = if ft.is_block_device() {
                "block device"
            } else if ft.is_char_device() {
                "character device"
            } else if ft.is_fifo() {
                "FIFO"
            } else {
                "socket"
            };
            return Err(HostDirError::Unsupported { path, kind });
        };
        tree.insert(
            &tree_path,
            Node {
                mode,
                uid: 0,
                gid: 0,
                kind,
            },
        )
        .map_err(|source| HostDirError::Tree {
            path: path.clone(),
            source,
        })?;
    }
    for (_, mut paths) in links {
        if paths.len() < 2 {
            continue;
        }
        paths.sort();
        let first = paths[0].clone();
        for p in &paths[1..] {
            let mode = tree.get(p).map_or(0o644, |n| n.mode);
            let node = Node {
                mode,
                uid: 0,
                gid: 0,
                kind: NodeKind::Hardlink(first.clone()),
            };
            tree.insert(p, node).map_err(|source| HostDirError::Tree {
                path: dir.join(p),
                source,
            })?;
        }
    }
    Ok(tree)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn reads_modes_symlinks_and_hardlinks() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir_all(r.join("usr/bin")).unwrap();
        std::fs::write(r.join("usr/bin/tool"), b"abc").unwrap();
        std::fs::set_permissions(
            r.join("usr/bin/tool"),
            std::fs::Permissions::from_mode(0o4750),
        )
        .unwrap();
        std::fs::hard_link(r.join("usr/bin/tool"), r.join("a-first")).unwrap();
        std::fs::hard_link(r.join("usr/bin/tool"), r.join("z")).unwrap();
        std::os::unix::fs::symlink("usr/bin/tool", r.join("link")).unwrap();
        std::fs::set_permissions(r.join("usr"), std::fs::Permissions::from_mode(0o700)).unwrap();

        let t = tree_from_dir(r).unwrap();
        let paths: Vec<_> = t.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            ["a-first", "link", "usr", "usr/bin", "usr/bin/tool", "z"]
        );
        assert_eq!(t.get("usr").unwrap().mode, 0o700);
        let first = t.get("a-first").unwrap();
        assert_eq!(first.mode, 0o4750);
        assert!(matches!(
            &first.kind,
            NodeKind::File(FileData::Path { size: 3, .. })
        ));
        assert_eq!(
            t.get("usr/bin/tool").unwrap().kind,
            NodeKind::Hardlink("a-first".into())
        );
        assert_eq!(
            t.get("z").unwrap().kind,
            NodeKind::Hardlink("a-first".into())
        );
        assert_eq!(
            t.get("link").unwrap().kind,
            NodeKind::Symlink("usr/bin/tool".into())
        );
        assert!(t.iter().all(|(_, n)| n.uid == 0 && n.gid == 0));
        // And it archives.
        let bytes = crate::archive::cpio::Plan::new(&t, 0, 1)
            .unwrap()
            .to_vec()
            .unwrap();
        let entries = crate::archive::cpio::read(&bytes).unwrap();
        assert_eq!(
            entries
                .iter()
                .filter(|e| e.file_type() == crate::archive::cpio::S_IFREG && e.nlink == 3)
                .count(),
            3
        );
    }

    #[test]
    fn fifos_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("p");
        let ok = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return;
        }
        let e = tree_from_dir(d.path()).unwrap_err();
        assert!(
            matches!(e, HostDirError::Unsupported { kind: "FIFO", .. }),
            "{e}"
        );
    }

    #[test]
    fn missing_dir_keeps_the_os_error() {
        let e = tree_from_dir(Path::new("/nonexistent/minke")).unwrap_err();
        let HostDirError::Io { source, .. } = &e else {
            panic!("{e}")
        };
        assert_eq!(source.kind(), io::ErrorKind::NotFound);
    }
}
