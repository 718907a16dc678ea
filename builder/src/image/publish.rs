//! A built image in a registry, as an OCI artifact: an image manifest whose `artifactType`
//! says minke image, with the empty config and one layer per output file (kernel, initrd,
//! cmdline, manifest, SBOM), each of its own media type and titled with its file name, and
//! annotations for the image's name and its SOURCE_DATE_EPOCH. The manifest's bytes depend
//! only on the files and that time, so the same image pushed twice has the same digest.
//! [`pull`] reads such an artifact back by digest through the cache into an image directory.

use std::path::{Path, PathBuf};

use super::outputs::Image;
use super::BuildError;
use crate::layer::{sha256_file, write_atomic};
use crate::sources::oci::artifact::{ArtifactManifest, Descriptor, CREATED, TITLE};
use crate::sources::oci::registry::{Registry, RegistryError};

/// The `artifactType` of a minke image.
pub const ARTIFACT_TYPE: &str = "application/vnd.minke.image.v1";
pub use crate::sources::oci::artifact::MANIFEST_TYPE;

/// The files of `image` in the artifact, in order, with their media types.
fn parts(image: &Image) -> Vec<(PathBuf, &'static str)> {
    let dir = &image.dir;
    let n = &image.name;
    vec![
        (image.kernel.clone(), "application/vnd.minke.kernel.v1"),
        (image.initrd.clone(), "application/vnd.minke.initrd.v1"),
        (
            dir.join(format!("{n}-cmdline")),
            "application/vnd.minke.cmdline.v1+text",
        ),
        (
            dir.join(format!("{n}.manifest.json")),
            "application/vnd.minke.manifest.v1+json",
        ),
        (dir.join(format!("{n}.spdx.json")), "application/spdx+json"),
    ]
}

fn bad(image: &str, what: String) -> BuildError {
    BuildError::Registry(RegistryError::Bad {
        image: image.into(),
        what,
    })
}

/// Pushes `image` as `reference` (`REGISTRY/NAME:TAG`); returns the manifest's digest.
pub fn push(
    image: &Image,
    reference: &str,
    registry: &Registry,
    epoch: u64,
    progress: &dyn Fn(&str),
) -> Result<String, BuildError> {
    let mut layers = Vec::new();
    let mut uploads = Vec::new();
    for (path, media_type) in parts(image) {
        let size = std::fs::metadata(&path)
            .map_err(crate::error::io_err(&path))?
            .len();
        let digest = format!(
            "sha256:{}",
            sha256_file(&path).map_err(crate::error::io_err(&path))?
        );
        let title = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        uploads.push((path.clone(), digest.clone()));
        layers.push(Descriptor {
            media_type: media_type.into(),
            digest,
            size,
            data: None,
            annotations: [(TITLE.to_string(), title)].into(),
        });
    }
    progress(&format!(
        "pushing {} files of {}",
        uploads.len(),
        image.name
    ));
    registry.push_blobs(reference, &uploads)?;
    let manifest = ArtifactManifest::new(
        ARTIFACT_TYPE,
        layers,
        [
            (TITLE.to_string(), image.name.clone()),
            (CREATED.to_string(), super::sbom::iso8601(epoch)),
        ]
        .into(),
    );
    Ok(manifest.push(registry, reference)?)
}

/// Pulls the minke image `reference` names into `out` (every blob by digest through the
/// cache); returns the image and the manifest's digest.
pub fn pull(
    reference: &str,
    registry: &Registry,
    out: &Path,
    progress: &dyn Fn(&str),
) -> Result<(Image, String), BuildError> {
    let (bytes, digest) = registry.raw_manifest(reference)?;
    let m: ArtifactManifest = serde_json::from_slice(&bytes)
        .map_err(|e| bad(reference, format!("not an image manifest: {e}")))?;
    if m.artifact_type != ARTIFACT_TYPE {
        return Err(bad(
            reference,
            format!(
                "its artifactType is {:?}, not a minke image ({ARTIFACT_TYPE}); push one with `minke push`",
                m.artifact_type
            ),
        ));
    }
    let name = m
        .annotations
        .get(TITLE)
        .cloned()
        .ok_or_else(|| bad(reference, "no image name annotation".into()))?;
    if !crate::spec::valid_name(&name) {
        return Err(bad(reference, format!("{name:?} cannot name an image")));
    }
    let wanted = [
        format!("{name}-kernel"),
        format!("{name}-initrd.img"),
        format!("{name}-cmdline"),
        format!("{name}.manifest.json"),
        format!("{name}.spdx.json"),
    ];
    std::fs::create_dir_all(out).map_err(crate::error::io_err(out))?;
    for l in &m.layers {
        let title = l.annotations.get(TITLE).cloned().unwrap_or_default();
        if !wanted.contains(&title) {
            return Err(bad(
                reference,
                format!("unexpected file {title:?} in the artifact"),
            ));
        }
    }
    let digests: Vec<(String, u64)> = m
        .layers
        .iter()
        .map(|l| (l.digest.clone(), l.size))
        .collect();
    let blobs = registry.blobs(reference, &digests, progress)?;
    let mut manifest_file = None;
    for (l, blob) in m.layers.iter().zip(blobs) {
        let title = l.annotations.get(TITLE).cloned().unwrap_or_default();
        let data = std::fs::read(&blob).map_err(crate::error::io_err(&blob))?;
        let dest = out.join(&title);
        if title.ends_with(".manifest.json") {
            // The manifest goes last: an image directory is complete once it is there.
            manifest_file = Some((dest, data));
            continue;
        }
        write_atomic(&dest, &data).map_err(crate::error::io_err(&dest))?;
    }
    let Some((dest, data)) = manifest_file else {
        return Err(bad(reference, "the artifact has no image manifest".into()));
    };
    write_atomic(&dest, &data).map_err(crate::error::io_err(&dest))?;
    Ok((Image::open(out)?, digest))
}
