//! `oci:` — the root filesystem of a container image: an OCI image layout or `docker save`
//! tarball on disk (`path:`), or an image in a registry (`image:`), pinned by the spec's lock
//! file and fetched into the cache.

use std::path::PathBuf;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{graft, hash_path, PackageError, SourceCx, TreeSource};
use crate::archive::tree::Tree;
use crate::layer::Cache;
use crate::sources::oci::registry::Pinned;
use crate::sources::oci::Wanted;

/// `oci:` source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OciSource {
    /// OCI layout directory or tarball, or `docker save` tarball (relative to the package
    /// directory, or absolute; `$MINKE_CACHE` is expanded).
    #[serde(default)]
    pub path: Option<String>,
    /// A registry reference (`REGISTRY/NAME:TAG` or `REGISTRY/NAME@sha256:…`).
    #[serde(default)]
    pub image: Option<String>,
    /// Where the root filesystem lands in the image.
    pub dest: String,
    /// Platform to pick from a multi-platform index (`linux/arm64`, `linux/arm/v7`).
    #[serde(default)]
    pub platform: Option<String>,
}

/// Where the image is.
#[derive(Debug)]
pub enum Found {
    /// On disk.
    Path(PathBuf),
    /// In a registry, pinned.
    Registry(Pinned),
}

impl TreeSource for OciSource {
    type Found = Found;

    fn kind(&self) -> &'static str {
        "oci"
    }

    fn hash_inputs(&self, cx: &SourceCx<'_>, key: &mut Sha256) -> Result<Found, PackageError> {
        let platform = match &self.platform {
            Some(p) => Some(Wanted::parse(p).ok_or_else(|| {
                cx.fail(format!(
                    "platform {p:?} is not OS/ARCH or OS/ARCH/VARIANT (linux/arm64, linux/arm/v7)"
                ))
            })?),
            None => None,
        };
        match (&self.path, &self.image) {
            (Some(path), None) => {
                let p = expand(path, cx.outer.cache);
                let src = if p.is_absolute() { p } else { cx.dir.join(p) };
                let sha = hash_path(&src).map_err(|e| {
                    cx.step(format!(
                        "cannot read OCI image {}: build it first (cargo xtask setup makes the demo's)",
                        src.display()
                    ))(e.into())
                })?;
                key.update(format!("oci {sha}\n").as_bytes());
                Ok(Found::Path(src))
            }
            (None, Some(image)) => {
                let plat = platform.as_ref().map(|w| w.to_string());
                let pinned = cx
                    .outer
                    .registry
                    .pin(image, plat.as_deref())
                    .map_err(|e| cx.step(format!("cannot pin {image}"))(e.into()))?;
                key.update(format!("oci-registry {}\n", pinned.digest).as_bytes());
                Ok(Found::Registry(pinned))
            }
            _ => Err(cx.fail("`oci:` needs exactly one of `path:` and `image:`".into())),
        }
    }

    fn components(
        &self,
        _cx: &SourceCx<'_>,
        found: &Found,
    ) -> Result<Vec<crate::layer::Component>, PackageError> {
        Ok(match found {
            Found::Registry(p) => {
                let (repo, _) = p
                    .image
                    .rsplit_once('@')
                    .or_else(|| {
                        p.image
                            .rsplit_once(':')
                            .filter(|(r, tag)| !tag.contains('/') && !r.is_empty())
                    })
                    .unwrap_or((p.image.as_str(), ""));
                let name = repo.rsplit('/').next().unwrap_or(repo);
                vec![crate::layer::Component {
                    kind: "oci".into(),
                    name: p.image.clone(),
                    version: p.digest.clone(),
                    sha256: p.digest.strip_prefix("sha256:").map(str::to_string),
                    purl: Some(format!(
                        "pkg:oci/{name}@{}?repository_url={}",
                        p.digest.replace(':', "%3A"),
                        repo
                    )),
                }]
            }
            Found::Path(path) => vec![crate::layer::Component {
                kind: "oci".into(),
                name: self.path.clone().unwrap_or_default(),
                version: String::new(),
                sha256: crate::layer::sha256_file(path).ok(),
                purl: None,
            }],
        })
    }

    fn build(&self, cx: &SourceCx<'_>, found: Found, tree: &mut Tree) -> Result<(), PackageError> {
        let img = match found {
            Found::Path(src) => {
                (cx.outer.progress)(&format!("unpacking OCI image {}", src.display()));
                let platform = self.platform.as_deref().and_then(Wanted::parse);
                crate::sources::oci::unpack_oci(&src, platform.as_ref()).map_err(|e| {
                    cx.step(format!("cannot unpack OCI image {}", src.display()))(e.into())
                })?
            }
            Found::Registry(pinned) => {
                (cx.outer.progress)(&format!("fetching {} ({})", pinned.image, pinned.digest));
                cx.outer
                    .registry
                    .fetch(&pinned, cx.outer.progress)
                    .map_err(|e| cx.step(format!("cannot fetch {}", pinned.image))(e.into()))?
            }
        };
        graft(tree, &img.tree, &self.dest).map_err(|e| cx.tree_err(e))
    }
}

fn expand(p: &str, cache: &Cache) -> PathBuf {
    PathBuf::from(p.replace("$MINKE_CACHE", &cache.root().to_string_lossy()))
}
