//! The OCI image-spec and Docker JSON documents minke reads and writes, and their media types.

use serde::{Deserialize, Serialize};

pub(super) const MT_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub(super) const MT_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(super) const MT_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub(super) const MT_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub(super) const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Largest JSON document (index, manifest, config) read.
pub(super) const MAX_JSON: u64 = 16 << 20;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(super) struct Platform {
    pub(super) architecture: String,
    pub(super) os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) variant: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub(super) media_type: String,
    pub(super) digest: String,
    pub(super) size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) platform: Option<Platform>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Index {
    #[serde(rename = "schemaVersion")]
    pub(super) schema_version: u32,
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    pub(super) media_type: Option<String>,
    pub(super) manifests: Vec<Descriptor>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Manifest {
    #[serde(rename = "schemaVersion")]
    pub(super) schema_version: u32,
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    pub(super) media_type: Option<String>,
    pub(super) config: Descriptor,
    pub(super) layers: Vec<Descriptor>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct RootFs {
    #[serde(rename = "type")]
    pub(super) kind: String,
    pub(super) diff_ids: Vec<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct ImageConfig {
    #[serde(default)]
    pub(super) architecture: String,
    #[serde(default)]
    pub(super) os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) variant: Option<String>,
    #[serde(default)]
    pub(super) config: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    pub(super) rootfs: RootFs,
}

#[derive(Debug, Deserialize)]
pub(super) struct DockerManifest {
    #[serde(rename = "Config")]
    pub(super) config: String,
    #[serde(rename = "Layers")]
    pub(super) layers: Vec<String>,
}
