//! `host:` — host files, and host binaries with their shared-library closure.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{PackageError, SourceCx, TreeSource};
use crate::archive::tree::{Node, Tree};
use crate::layer::sha256_file;
use crate::sources::elf::{self, Closure};

/// `host:` source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostSource {
    /// ELF binaries, copied with their shared-library closure.
    #[serde(default)]
    pub binaries: Vec<PathBuf>,
    /// Plain files copied as they are.
    #[serde(default)]
    pub files: Vec<PathBuf>,
}

impl TreeSource for HostSource {
    /// The binaries' resolved closure.
    type Found = Closure;

    fn kind(&self) -> &'static str {
        "host"
    }

    fn hash_inputs(&self, cx: &SourceCx<'_>, key: &mut Sha256) -> Result<Closure, PackageError> {
        for b in self.binaries.iter().chain(&self.files) {
            let sha = sha256_file(b)
                .map_err(|e| cx.step(format!("cannot read {}", b.display()))(e.into()))?;
            key.update(format!("{} {sha}\n", b.display()).as_bytes());
        }
        // The closure depends on the host's libraries too: resolve first (cheap), hash it.
        let closure = elf::closure(Path::new("/"), &self.binaries, &elf::Options::default())
            .map_err(|e| {
                cx.step("cannot resolve the binaries' shared libraries".into())(e.into())
            })?;
        for p in &closure.files {
            let sha = sha256_file(p)
                .map_err(|e| cx.step(format!("cannot read {}", p.display()))(e.into()))?;
            key.update(format!("{} {sha}\n", p.display()).as_bytes());
        }
        Ok(closure)
    }

    fn build(
        &self,
        cx: &SourceCx<'_>,
        closure: Closure,
        tree: &mut Tree,
    ) -> Result<(), PackageError> {
        closure
            .add_to_tree(Path::new("/"), tree)
            .map_err(|e| cx.step("cannot add the binaries and their libraries".into())(e.into()))?;
        for f in &self.files {
            let md = std::fs::metadata(f)
                .map_err(|e| cx.step(format!("cannot read {}", f.display()))(e.into()))?;
            tree.insert(&f.to_string_lossy(), Node::host_file(f.clone(), &md))
                .map_err(|e| cx.tree_err(e))?;
        }
        Ok(())
    }
}
