//! `deb:` — files from a Debian package, fetched through the remembered apt resolutions.

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{PackageError, SourceCx, TreeSource};
use crate::archive::tree::{NodeKind, Tree};

/// `deb:` source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DebSource {
    /// Debian package name.
    pub name: String,
    /// Debian architecture (default: the image's, `amd64`).
    #[serde(default)]
    pub arch: Option<String>,
    /// Paths (or directory prefixes) to keep; everything when empty.
    #[serde(default)]
    pub include: Vec<String>,
    /// Prefix in the image under which the package's files land (default `/`).
    #[serde(default)]
    pub dest: Option<String>,
}

impl TreeSource for DebSource {
    /// The downloaded `.deb`.
    type Found = crate::sources::deb::FetchedDeb;

    fn kind(&self) -> &'static str {
        "deb"
    }

    fn hash_inputs(
        &self,
        cx: &SourceCx<'_>,
        key: &mut Sha256,
    ) -> Result<crate::sources::deb::FetchedDeb, PackageError> {
        let arch = self
            .arch
            .clone()
            .unwrap_or_else(|| cx.outer.arch.debian().into());
        (cx.outer.progress)(&format!("fetching {}:{arch}", self.name));
        let fetched =
            crate::sources::deb::pins::fetch(cx.outer.cache, &self.name, &arch).map_err(|e| {
                cx.step(format!("cannot fetch Debian package {}:{arch}", self.name))(e.into())
            })?;
        key.update(b"deb ");
        key.update(fetched.sha256.as_bytes());
        Ok(fetched)
    }

    fn components(
        &self,
        _cx: &SourceCx<'_>,
        deb: &crate::sources::deb::FetchedDeb,
    ) -> Result<Vec<crate::layer::Component>, PackageError> {
        Ok(vec![crate::sources::deb::component(deb)])
    }

    fn build(
        &self,
        cx: &SourceCx<'_>,
        deb: crate::sources::deb::FetchedDeb,
        tree: &mut Tree,
    ) -> Result<(), PackageError> {
        let deb = deb.path;
        (cx.outer.progress)(&format!("unpacking {}", self.name));
        let full = crate::sources::deb::unpack(&deb)
            .map_err(|e| cx.step(format!("cannot unpack {}", deb.display()))(e.into()))?;
        let dest = self.dest.clone().unwrap_or_default();
        for (path, node) in full.iter() {
            let keep = self.include.is_empty()
                || self.include.iter().any(|i| {
                    let i = i.trim_matches('/');
                    path == i || path.starts_with(&format!("{i}/"))
                });
            let dir_of_subset = matches!(node.kind, NodeKind::Dir) && !self.include.is_empty();
            if keep && !dir_of_subset {
                tree.insert(&format!("{dest}/{path}"), node.clone())
                    .map_err(|e| cx.tree_err(e))?;
            }
        }
        for i in &self.include {
            if full.get(i.trim_matches('/')).is_none() {
                return Err(cx.fail(format!(
                    "{i} is not in Debian package {}; check the include list in {}",
                    self.name,
                    cx.dir.join("package.yml").display()
                )));
            }
        }
        Ok(())
    }
}
