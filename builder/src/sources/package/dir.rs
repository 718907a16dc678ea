//! `dir:` — a directory beside the definition, read faithfully.

use std::path::PathBuf;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{graft, PackageError, SourceCx, TreeSource};
use crate::archive::tree::Tree;

/// `dir:` source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirSource {
    /// Directory (relative to the package directory).
    pub path: PathBuf,
    /// Where it lands in the image (default `/`).
    #[serde(default)]
    pub dest: Option<String>,
}

impl TreeSource for DirSource {
    /// The directory's tree, read once for the key and the layer alike.
    type Found = Tree;

    fn kind(&self) -> &'static str {
        "dir"
    }

    fn hash_inputs(&self, cx: &SourceCx<'_>, key: &mut Sha256) -> Result<Tree, PackageError> {
        let src = cx.dir.join(&self.path);
        let sub = crate::sources::hostdir::tree_from_dir(&src)
            .map_err(|e| cx.step(format!("cannot read directory {}", src.display()))(e.into()))?;
        let records = crate::layer::records_of(&sub)
            .map_err(|e| cx.step(format!("cannot hash directory {}", src.display()))(e.into()))?;
        for r in records {
            key.update(serde_json::to_vec(&r).unwrap_or_default());
        }
        Ok(sub)
    }

    fn build(&self, cx: &SourceCx<'_>, sub: Tree, tree: &mut Tree) -> Result<(), PackageError> {
        graft(tree, &sub, self.dest.as_deref().unwrap_or("/")).map_err(|e| cx.tree_err(e))
    }
}
