//! Choosing the manifest of one platform from an image index (OCI or Docker list),
//! variants included.

use super::format::*;
use super::input::Source;
use super::OciError;

/// Maps Debian and uname architecture names to OCI ones, with a variant where implied.
pub(super) fn oci_arch(arch: &str) -> (&str, Option<&'static str>) {
    match arch {
        "x86_64" => ("amd64", None),
        "aarch64" => ("arm64", None),
        "armhf" => ("arm", Some("v7")),
        "armel" => ("arm", Some("v5")),
        "i386" | "i686" => ("386", None),
        "ppc64el" => ("ppc64le", None),
        a => (a, None),
    }
}

fn platform_str(p: &Platform) -> String {
    match &p.variant {
        Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
        None => format!("{}/{}", p.os, p.architecture),
    }
}

/// Picks the manifest for `platform` (default: the host's, or the only one).
pub(super) fn choose_manifest(
    src: &Source,
    index: &Index,
    platform: Option<(&str, &str)>,
) -> Result<Descriptor, OciError> {
    let mut candidates: Vec<Descriptor> = Vec::new();
    for d in &index.manifests {
        if d.media_type == MT_INDEX || d.media_type == MT_DOCKER_LIST {
            let nested: Index = src.blob_json(&d.digest)?;
            candidates.push(choose_manifest(src, &nested, platform)?);
        } else {
            candidates.push(d.clone());
        }
    }
    let want = platform.map(|(os, arch)| (os.to_string(), oci_arch(arch).0.to_string()));
    let host = (
        std::env::consts::OS.to_string(),
        oci_arch(std::env::consts::ARCH).0.to_string(),
    );
    let matches = |d: &Descriptor, (os, arch): &(String, String)| {
        d.platform
            .as_ref()
            .is_some_and(|p| &p.os == os && oci_arch(&p.architecture).0 == arch)
    };
    let found = match &want {
        Some(w) => candidates
            .iter()
            .find(|d| matches(d, w) || (d.platform.is_none() && candidates.len() == 1)),
        None if candidates.len() == 1 => candidates.first(),
        None => candidates.iter().find(|d| matches(d, &host)),
    };
    found.cloned().ok_or_else(|| OciError::NoPlatform {
        image: src.image().to_path_buf(),
        wanted: want
            .map(|(o, a)| format!("{o}/{a}"))
            .unwrap_or_else(|| "the host".into()),
        available: candidates
            .iter()
            .map(|d| {
                d.platform
                    .as_ref()
                    .map(platform_str)
                    .unwrap_or_else(|| "unspecified".into())
            })
            .collect::<Vec<_>>()
            .join(", "),
    })
}
