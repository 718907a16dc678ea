//! `oci:` — the root filesystem of an OCI image layout or `docker save` tarball.

use std::path::PathBuf;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{graft, hash_path, PackageError, SourceCx, TreeSource};
use crate::archive::tree::Tree;
use crate::layer::Cache;

/// `oci:` source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OciSource {
    /// OCI layout directory or tarball, or `docker save` tarball (relative to the package
    /// directory, or absolute; `$MINKE_CACHE` is expanded).
    pub path: String,
    /// Where the root filesystem lands in the image.
    pub dest: String,
    /// Platform to pick from a multi-platform index (`linux/arm64`).
    #[serde(default)]
    pub platform: Option<String>,
}

impl TreeSource for OciSource {
    /// The image's resolved path.
    type Found = PathBuf;

    fn kind(&self) -> &'static str {
        "oci"
    }

    fn hash_inputs(&self, cx: &SourceCx<'_>, key: &mut Sha256) -> Result<PathBuf, PackageError> {
        let p = expand(&self.path, cx.outer.cache);
        let src = if p.is_absolute() { p } else { cx.dir.join(p) };
        let sha = hash_path(&src).map_err(|e| {
            cx.step(format!(
                "cannot read OCI image {}: build it first (cargo xtask setup makes the demo's)",
                src.display()
            ))(e.into())
        })?;
        key.update(format!("oci {sha}\n").as_bytes());
        Ok(src)
    }

    fn build(&self, cx: &SourceCx<'_>, src: PathBuf, tree: &mut Tree) -> Result<(), PackageError> {
        (cx.outer.progress)(&format!("unpacking OCI image {}", src.display()));
        let platform = self.platform.as_deref().and_then(|p| p.split_once('/'));
        let img = crate::sources::oci::unpack_oci(&src, platform)
            .map_err(|e| cx.step(format!("cannot unpack OCI image {}", src.display()))(e.into()))?;
        graft(tree, &img.tree, &self.dest).map_err(|e| cx.tree_err(e))
    }
}

fn expand(p: &str, cache: &Cache) -> PathBuf {
    PathBuf::from(p.replace("$MINKE_CACHE", &cache.root().to_string_lossy()))
}
