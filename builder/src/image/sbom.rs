//! `NAME.spdx.json`: an SPDX 2.3 SBOM of a built image, from what the manifest already knows —
//! the image as a package containing every regular file (with its SHA1 and SHA256, and the
//! layer it came from), the kernel, each layer, and what each layer was made from (Debian
//! packages with version and sha256, the crates compiled into the in-guest binary, container
//! images by digest). Byte-identical across builds: SOURCE_DATE_EPOCH is its creation time,
//! identifiers come from names and sorted positions, and the namespace from the image digest.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};
use sha1::{Digest, Sha1};

use super::manifest::Manifest;
use crate::archive::tree::EntryType;
use crate::layer::Component;

/// `1970-01-01T00:00:00Z` for `epoch` seconds.
pub(crate) fn iso8601(epoch: u64) -> String {
    let c = crate::Civil::of(epoch);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        c.year,
        c.month,
        c.day,
        c.secs / 3600,
        c.secs / 60 % 60,
        c.secs % 60
    )
}

/// An SPDX identifier made of what it may hold (letters, digits, `.`, `-`).
fn spdx_id(prefix: &str, parts: &[&str]) -> String {
    let mut id = String::from(prefix);
    for p in parts {
        id.push('-');
        id.extend(p.chars().map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        }));
    }
    id
}

fn component_package(id: &str, c: &Component) -> Value {
    let mut p = json!({
        "SPDXID": id,
        "name": c.name,
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": "NOASSERTION",
        "copyrightText": "NOASSERTION",
        "comment": format!("{} component", c.kind),
    });
    if !c.version.is_empty() {
        p["versionInfo"] = c.version.clone().into();
    }
    if let Some(sha) = &c.sha256 {
        p["checksums"] = json!([{"algorithm": "SHA256", "checksumValue": sha}]);
    }
    if let Some(purl) = &c.purl {
        p["externalRefs"] = json!([{
            "referenceCategory": "PACKAGE-MANAGER",
            "referenceType": "purl",
            "referenceLocator": purl,
        }]);
    }
    p
}

/// The SBOM of the image `m`: `owners` maps tree paths (no leading `/`) to layer names,
/// `sha1` maps the manifest's file paths to their SHA1 (lowercase hex).
pub fn spdx_json(
    m: &Manifest,
    owners: &BTreeMap<String, String>,
    sha1: &BTreeMap<String, String>,
    epoch: u64,
) -> Vec<u8> {
    let mut packages = Vec::new();
    let mut relationships = vec![json!({
        "spdxElementId": "SPDXRef-DOCUMENT",
        "relationshipType": "DESCRIBES",
        "relatedSpdxElement": "SPDXRef-Image",
    })];
    let mut files = Vec::new();
    let mut file_sha1s = Vec::new();
    for (i, f) in m.files.iter().enumerate() {
        let (EntryType::File, Some(sha256), Some(s1)) = (f.kind, &f.sha256, sha1.get(&f.path))
        else {
            continue;
        };
        let id = format!("SPDXRef-File-{i}");
        let layer = owners
            .get(f.path.trim_start_matches('/'))
            .map(String::as_str)
            .unwrap_or("spec");
        files.push(json!({
            "SPDXID": id,
            "fileName": format!(".{}", f.path),
            "checksums": [
                {"algorithm": "SHA1", "checksumValue": s1},
                {"algorithm": "SHA256", "checksumValue": sha256},
            ],
            "licenseConcluded": "NOASSERTION",
            "copyrightText": "NOASSERTION",
            "comment": format!("from layer {layer}"),
        }));
        relationships.push(json!({
            "spdxElementId": "SPDXRef-Image",
            "relationshipType": "CONTAINS",
            "relatedSpdxElement": id,
        }));
        file_sha1s.push(s1.clone());
    }
    // The package verification code: SHA1 of the files' sorted SHA1s, concatenated.
    file_sha1s.sort();
    let mut h = Sha1::new();
    for s in &file_sha1s {
        h.update(s.as_bytes());
    }
    packages.push(json!({
        "SPDXID": "SPDXRef-Image",
        "name": m.name,
        "versionInfo": format!("sha256:{}", m.image_digest),
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": true,
        "packageVerificationCode": {"packageVerificationCodeValue": hex::encode(h.finalize())},
        "checksums": [{"algorithm": "SHA256", "checksumValue": m.initrd.sha256}],
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": "NOASSERTION",
        "copyrightText": "NOASSERTION",
        "primaryPackagePurpose": "OPERATING-SYSTEM",
        "comment": format!("minke image for {}, initramfs compressed with {:?}", m.arch, m.initrd.compression),
    }));
    packages.push(json!({
        "SPDXID": "SPDXRef-Kernel",
        "name": "linux",
        "versionInfo": m.kernel.version,
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "checksums": [{"algorithm": "SHA256", "checksumValue": m.kernel.sha256}],
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": "NOASSERTION",
        "copyrightText": "NOASSERTION",
        "primaryPackagePurpose": "OPERATING-SYSTEM",
        "comment": format!("kernel: {}", m.kernel.source),
    }));
    relationships.push(json!({
        "spdxElementId": "SPDXRef-Image",
        "relationshipType": "DEPENDS_ON",
        "relatedSpdxElement": "SPDXRef-Kernel",
    }));
    let mut components: BTreeMap<String, &Component> = BTreeMap::new();
    let mut generated: BTreeSet<(String, String)> = BTreeSet::new();
    for (i, l) in m.layers.iter().enumerate() {
        let id = spdx_id("SPDXRef-Layer", &[&i.to_string(), &l.name]);
        packages.push(json!({
            "SPDXID": id,
            "name": l.name,
            "versionInfo": format!("sha256:{}", l.digest),
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": false,
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": "NOASSERTION",
            "copyrightText": "NOASSERTION",
            "comment": "a layer of the image (its digest is the digest of its file records)",
        }));
        relationships.push(json!({
            "spdxElementId": "SPDXRef-Image",
            "relationshipType": "CONTAINS",
            "relatedSpdxElement": id,
        }));
        for c in &l.components {
            let cid = spdx_id("SPDXRef", &[&c.kind, &c.name, &c.version]);
            components.insert(cid.clone(), c);
            generated.insert((id.clone(), cid));
        }
    }
    for (cid, c) in &components {
        packages.push(component_package(cid, c));
    }
    for (layer, cid) in generated {
        relationships.push(json!({
            "spdxElementId": layer,
            "relationshipType": "GENERATED_FROM",
            "relatedSpdxElement": cid,
        }));
    }
    let doc = json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": format!("minke image {}", m.name),
        "documentNamespace": format!("https://minke.invalid/spdx/{}/sha256-{}", m.name, m.image_digest),
        "creationInfo": {
            "created": iso8601(epoch),
            "creators": [format!("Tool: minke-{}", env!("CARGO_PKG_VERSION"))],
        },
        "packages": packages,
        "files": files,
        "relationships": relationships,
    });
    let mut out = serde_json::to_vec_pretty(&doc).unwrap_or_default();
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_ids() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(iso8601(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(
            spdx_id("SPDXRef", &["deb", "libc6", "2.36-9+deb12u4"]),
            "SPDXRef-deb-libc6-2.36-9-deb12u4"
        );
    }
}
