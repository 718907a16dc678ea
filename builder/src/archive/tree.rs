//! The in-memory file tree every producer fills and the archiver consumes.
//!
//! Paths are relative to the image root, `/`-separated, without a leading or trailing slash
//! (`bin/sh`, `etc/minke/image.json`); the root itself is never an entry. A [`Tree`] keeps
//! entries in a `BTreeMap`, so iteration is bytewise-sorted and a directory always comes before
//! its contents (a path sorts before every path it prefixes).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Largest file the newc format can describe (32-bit size field).
pub const MAX_FILE_SIZE: u64 = u32::MAX as u64;
/// Longest path the kernel's initramfs unpacker accepts (PATH_MAX, including the NUL).
pub const MAX_PATH_LEN: usize = 4095;

/// Bytes of a regular file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileData {
    /// Held in memory.
    Inline(Arc<[u8]>),
    /// Read from disk when archived; `size` was taken when the entry was added.
    Path {
        /// Where the bytes are.
        path: PathBuf,
        /// Size in bytes.
        size: u64,
    },
}

impl FileData {
    /// Size in bytes.
    pub fn size(&self) -> u64 {
        match self {
            FileData::Inline(b) => b.len() as u64,
            FileData::Path { size, .. } => *size,
        }
    }

    /// Reads the whole content.
    pub fn read(&self) -> std::io::Result<Vec<u8>> {
        match self {
            FileData::Inline(b) => Ok(b.to_vec()),
            FileData::Path { path, .. } => std::fs::read(path),
        }
    }
}

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeKind {
    /// A directory.
    Dir,
    /// A regular file.
    File(FileData),
    /// A symbolic link with this target (kept verbatim).
    Symlink(String),
    /// A hard link to the regular file at this tree path.
    Hardlink(String),
}

/// One entry of the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Permission bits including setuid/setgid/sticky (`0o7777` at most).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Type and payload.
    pub kind: NodeKind,
}

impl Node {
    /// A root-owned directory.
    pub fn dir(mode: u32) -> Node {
        Node {
            mode,
            uid: 0,
            gid: 0,
            kind: NodeKind::Dir,
        }
    }
    /// A root-owned file held in memory.
    pub fn file(mode: u32, data: impl Into<Arc<[u8]>>) -> Node {
        Node {
            mode,
            uid: 0,
            gid: 0,
            kind: NodeKind::File(FileData::Inline(data.into())),
        }
    }
    /// A root-owned copy of the host file at `path`, read when archived, with the permission
    /// bits and size `md` (its metadata) says.
    pub fn host_file(path: PathBuf, md: &std::fs::Metadata) -> Node {
        use std::os::unix::fs::PermissionsExt;
        Node {
            mode: md.permissions().mode() & 0o7777,
            uid: 0,
            gid: 0,
            kind: NodeKind::File(FileData::Path {
                path,
                size: md.len(),
            }),
        }
    }
    /// A root-owned symlink.
    pub fn symlink(target: impl Into<String>) -> Node {
        Node {
            mode: 0o777,
            uid: 0,
            gid: 0,
            kind: NodeKind::Symlink(target.into()),
        }
    }
}

/// Type of an entry as recorded in manifests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryType {
    /// Directory.
    Dir,
    /// Regular file.
    File,
    /// Symbolic link.
    Symlink,
    /// Hard link to another file.
    Hardlink,
}

impl NodeKind {
    /// The manifest type of this kind.
    pub fn entry_type(&self) -> EntryType {
        match self {
            NodeKind::Dir => EntryType::Dir,
            NodeKind::File(_) => EntryType::File,
            NodeKind::Symlink(_) => EntryType::Symlink,
            NodeKind::Hardlink(_) => EntryType::Hardlink,
        }
    }
}

/// Errors when adding to a tree.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    /// The path is empty, absolute after normalization, or has `.`/`..` components.
    #[error("invalid path {0:?}: paths must be relative to the image root without `.` or `..`")]
    BadPath(String),
    /// The path is longer than the kernel accepts.
    #[error("path {path:?} is {len} bytes long; the kernel's initramfs unpacker skips names over {max} bytes")]
    PathTooLong {
        /// The path.
        path: String,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The file does not fit in a newc entry.
    #[error("{path:?} is {size} bytes; the initramfs format holds files below 4 GiB")]
    FileTooLarge {
        /// The path.
        path: String,
        /// Its size.
        size: u64,
    },
}

/// A sorted file tree.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tree {
    entries: BTreeMap<String, Node>,
}

/// Normalizes `/a//b/` to `a/b`; rejects `.` and `..` components and the empty path.
pub fn normalize(path: &str) -> Result<String, TreeError> {
    let mut parts = Vec::new();
    for c in path.split('/') {
        match c {
            "" => {}
            "." | ".." => return Err(TreeError::BadPath(path.to_string())),
            c => parts.push(c),
        }
    }
    if parts.is_empty() {
        return Err(TreeError::BadPath(path.to_string()));
    }
    let p = parts.join("/");
    if p.len() + 1 > MAX_PATH_LEN {
        return Err(TreeError::PathTooLong {
            len: p.len(),
            path: p,
            max: MAX_PATH_LEN,
        });
    }
    Ok(p)
}

impl Tree {
    /// An empty tree.
    pub fn new() -> Tree {
        Tree::default()
    }

    /// Inserts (or replaces) `path`, creating missing parent directories with mode 0755.
    /// Returns the node it replaced, if any.
    pub fn insert(&mut self, path: &str, node: Node) -> Result<Option<Node>, TreeError> {
        let path = normalize(path)?;
        if let NodeKind::File(d) = &node.kind {
            if d.size() > MAX_FILE_SIZE {
                return Err(TreeError::FileTooLarge {
                    path,
                    size: d.size(),
                });
            }
        }
        let mut end = 0;
        while let Some(i) = path[end..].find('/') {
            let parent = &path[..end + i];
            self.entries
                .entry(parent.to_string())
                .or_insert_with(|| Node::dir(0o755));
            end += i + 1;
        }
        Ok(self.entries.insert(path, node))
    }

    /// Looks an entry up by (normalized) path.
    pub fn get(&self, path: &str) -> Option<&Node> {
        self.entries.get(path.trim_matches('/'))
    }

    /// Removes `path` and everything below it.
    pub fn remove_tree(&mut self, path: &str) {
        let path = path.trim_matches('/').to_string();
        let prefix = format!("{path}/");
        self.entries.remove(&path);
        let below: Vec<String> = self
            .entries
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| k.clone())
            .collect();
        for k in below {
            self.entries.remove(&k);
        }
    }

    /// Entries in bytewise path order (parents first).
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Node)> {
        self.entries.iter()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the tree has no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_come_first_and_are_created() {
        let mut t = Tree::new();
        t.insert("/usr/bin/x", Node::file(0o755, &b"x"[..]))
            .unwrap();
        t.insert("usr-local", Node::dir(0o755)).unwrap();
        let paths: Vec<_> = t.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(paths, ["usr", "usr-local", "usr/bin", "usr/bin/x"]);
    }

    #[test]
    fn dot_dot_and_long_names_are_rejected() {
        assert!(matches!(normalize("a/../b"), Err(TreeError::BadPath(_))));
        assert!(matches!(normalize("/"), Err(TreeError::BadPath(_))));
        let long = "a/".repeat(3000);
        assert!(matches!(
            normalize(&long),
            Err(TreeError::PathTooLong { .. })
        ));
    }

    #[test]
    fn remove_tree_removes_only_below() {
        let mut t = Tree::new();
        t.insert("a/b", Node::dir(0o755)).unwrap();
        t.insert("a/b/c", Node::dir(0o755)).unwrap();
        t.insert("a/bc", Node::dir(0o755)).unwrap();
        t.remove_tree("a/b");
        let paths: Vec<_> = t.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(paths, ["a", "a/bc"]);
    }
}
