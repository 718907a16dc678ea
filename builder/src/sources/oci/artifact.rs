//! OCI artifacts (image-spec 1.1): an image manifest with an `artifactType`, the empty config
//! and layers of minke's own media types — how a built image (`image::publish`) and a cached
//! layer (`crate::remote`) travel through a registry. The JSON's bytes depend only on what
//! the caller gives, so the same content has the same manifest digest.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::registry::{Registry, RegistryError};

/// The manifest's own media type.
pub const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// The empty config of an artifact.
pub const EMPTY_TYPE: &str = "application/vnd.oci.empty.v1+json";
/// The digest of the empty config, `{}`.
pub const EMPTY_DIGEST: &str =
    "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";
/// A layer's (or the artifact's) title annotation.
pub const TITLE: &str = "org.opencontainers.image.title";
/// The artifact's creation time annotation.
pub const CREATED: &str = "org.opencontainers.image.created";

/// A content descriptor.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Descriptor {
    /// Media type.
    #[serde(rename = "mediaType")]
    pub media_type: String,
    /// `sha256:HEX`.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
    /// Embedded data (base64), for the empty config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An artifact's image manifest.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArtifactManifest {
    /// Always 2.
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    /// [`MANIFEST_TYPE`].
    #[serde(rename = "mediaType")]
    pub media_type: String,
    /// What kind of artifact.
    #[serde(rename = "artifactType", default)]
    pub artifact_type: String,
    /// The empty config.
    pub config: Descriptor,
    /// The content.
    pub layers: Vec<Descriptor>,
    /// Annotations.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

impl ArtifactManifest {
    /// An artifact of `artifact_type` with `layers` and the empty config.
    pub fn new(
        artifact_type: &str,
        layers: Vec<Descriptor>,
        annotations: BTreeMap<String, String>,
    ) -> ArtifactManifest {
        ArtifactManifest {
            schema_version: 2,
            media_type: MANIFEST_TYPE.into(),
            artifact_type: artifact_type.into(),
            config: Descriptor {
                media_type: EMPTY_TYPE.into(),
                digest: EMPTY_DIGEST.into(),
                size: 2,
                data: Some("e30=".into()),
                annotations: BTreeMap::new(),
            },
            layers,
            annotations,
        }
    }

    /// Pushes the empty config and the manifest as `reference` (its layers must be pushed
    /// already); returns the manifest's digest.
    pub fn push(&self, registry: &Registry, reference: &str) -> Result<String, RegistryError> {
        registry.push_blob_bytes(reference, b"{}", EMPTY_DIGEST)?;
        let bytes = serde_json::to_vec(self).map_err(|e| RegistryError::Bad {
            image: reference.into(),
            what: format!("cannot encode the artifact manifest: {e}"),
        })?;
        registry.push_manifest(reference, &bytes, MANIFEST_TYPE)
    }
}
