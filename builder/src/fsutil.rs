//! Directory trees read in a stable order: what hashes and listings of a tree are built on.

use std::ffi::OsStr;
use std::fs::FileType;
use std::path::{Path, PathBuf};

use crate::error::{io_err, PathIo};

/// An entry [`walk_sorted`] found.
#[derive(Debug, Clone)]
pub struct WalkEntry {
    /// Its path relative to the directory walked.
    pub rel: PathBuf,
    /// Its type (a symlink is a symlink, not what it points to).
    pub file_type: FileType,
}

/// Everything below `root` (not `root` itself), depth first: each directory's entries in byte
/// order of their names, a directory just before what it holds. An entry whose name `skip`
/// accepts is left out, and so is everything under it. Symlinks are listed, never followed. A
/// directory that cannot be read is an error.
pub fn walk_sorted(root: &Path, skip: impl Fn(&OsStr) -> bool) -> Result<Vec<WalkEntry>, PathIo> {
    let mut out = Vec::new();
    walk_into(root, Path::new(""), &skip, &mut out)?;
    Ok(out)
}

fn walk_into(
    root: &Path,
    rel: &Path,
    skip: &dyn Fn(&OsStr) -> bool,
    out: &mut Vec<WalkEntry>,
) -> Result<(), PathIo> {
    let dir = if rel.as_os_str().is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    };
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(io_err(&dir))? {
        let entry = entry.map_err(io_err(&dir))?;
        let name = entry.file_name();
        if skip(&name) {
            continue;
        }
        let file_type = entry.file_type().map_err(io_err(&entry.path()))?;
        entries.push((name, file_type));
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, file_type) in entries {
        let rel = rel.join(name);
        out.push(WalkEntry {
            rel: rel.clone(),
            file_type,
        });
        if file_type.is_dir() {
            walk_into(root, &rel, skip, out)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_first_in_name_order_with_skipped_names_left_out() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        for dir in ["b/d", "a", ".git/x"] {
            std::fs::create_dir_all(r.join(dir)).unwrap();
        }
        for f in ["c", "b/z", "b/d/y", "a/x", ".git/x/f"] {
            std::fs::write(r.join(f), b"").unwrap();
        }
        std::os::unix::fs::symlink("b", r.join("l")).unwrap();
        let got: Vec<(String, bool)> = walk_sorted(r, |n| n == ".git")
            .unwrap()
            .into_iter()
            .map(|e| (e.rel.to_string_lossy().into_owned(), e.file_type.is_dir()))
            .collect();
        let want = [
            ("a", true),
            ("a/x", false),
            ("b", true),
            ("b/d", true),
            ("b/d/y", false),
            ("b/z", false),
            ("c", false),
            ("l", false),
        ];
        assert_eq!(
            got,
            want.map(|(p, d)| (p.to_owned(), d)).to_vec(),
            "sorted, depth first, symlinks not followed"
        );
        let err = walk_sorted(&r.join("missing"), |_| false).unwrap_err();
        assert_eq!(err.path, r.join("missing"));
    }
}
