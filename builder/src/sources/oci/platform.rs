//! Platforms (`linux/arm64`, `linux/arm/v7`) and choosing the manifest of one from an image
//! index (OCI or Docker list), variants included.

use std::path::Path;

use super::format::*;
use super::OciError;

/// Maps Debian and uname architecture names to OCI ones, with a variant where implied.
pub(crate) fn oci_arch(arch: &str) -> (&str, Option<&'static str>) {
    match arch {
        "x86_64" => ("amd64", None),
        "aarch64" => ("arm64", None),
        "armhf" | "armv7l" => ("arm", Some("v7")),
        "armel" => ("arm", Some("v5")),
        "i386" | "i686" => ("386", None),
        "ppc64el" => ("ppc64le", None),
        a => (a, None),
    }
}

/// A wanted platform: `OS/ARCH[/VARIANT]`, architectures in OCI, Debian or uname spelling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// `linux`.
    pub os: String,
    /// OCI architecture (`amd64`, `arm64`, `arm`, `s390x`, …).
    pub arch: String,
    /// Variant (`v7`), given or implied by the architecture's name.
    pub variant: Option<String>,
}

impl Wanted {
    /// Parses `OS/ARCH[/VARIANT]`; `None` when it has another shape.
    pub fn parse(s: &str) -> Option<Wanted> {
        let mut parts = s.split('/');
        let os = parts.next().filter(|p| !p.is_empty())?;
        let arch = parts.next().filter(|p| !p.is_empty())?;
        let variant = parts.next();
        if parts.next().is_some() || variant == Some("") {
            return None;
        }
        let (arch, implied) = oci_arch(arch);
        Some(Wanted {
            os: os.to_string(),
            arch: arch.to_string(),
            variant: variant.map(str::to_string).or(implied.map(str::to_string)),
        })
    }

    /// The machine this runs on.
    pub fn host() -> Wanted {
        let (arch, variant) = oci_arch(std::env::consts::ARCH);
        Wanted {
            os: std::env::consts::OS.to_string(),
            arch: arch.to_string(),
            variant: variant.map(str::to_string),
        }
    }

    /// Whether an image of `os`/`arch`/`variant` runs as this platform. An unstated variant on
    /// either side matches; arm64's `v8` is its only variant and equals none.
    pub(super) fn matches(&self, os: &str, arch: &str, variant: Option<&str>) -> bool {
        let norm = |v: Option<&str>| match (self.arch.as_str(), v) {
            ("arm64", Some("v8")) => None,
            (_, v) => v.map(str::to_string),
        };
        os == self.os
            && oci_arch(arch).0 == self.arch
            && match (norm(self.variant.as_deref()), norm(variant)) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }
}

impl std::fmt::Display for Wanted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.variant {
            Some(v) => write!(f, "{}/{}/{v}", self.os, self.arch),
            None => write!(f, "{}/{}", self.os, self.arch),
        }
    }
}

fn platform_str(p: &Platform) -> String {
    match &p.variant {
        Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
        None => format!("{}/{}", p.os, p.architecture),
    }
}

/// Picks the manifest for `platform` (default: the host's, or the only one) from `index`;
/// nested indexes are read through `nested` (by digest). An exact variant wins over an
/// unstated one.
pub(super) fn choose_manifest(
    image: &Path,
    index: &Index,
    platform: Option<&Wanted>,
    nested: &mut dyn FnMut(&str) -> Result<Index, OciError>,
) -> Result<Descriptor, OciError> {
    let mut candidates: Vec<Descriptor> = Vec::new();
    for d in &index.manifests {
        if d.media_type == MT_INDEX || d.media_type == MT_DOCKER_LIST {
            let inner = nested(&d.digest)?;
            candidates.push(choose_manifest(image, &inner, platform, nested)?);
        } else {
            candidates.push(d.clone());
        }
    }
    let host = Wanted::host();
    let want = platform.unwrap_or(&host);
    let fits = |d: &&Descriptor| {
        d.platform
            .as_ref()
            .is_some_and(|p| want.matches(&p.os, &p.architecture, p.variant.as_deref()))
    };
    let exact = |d: &&Descriptor| {
        fits(d) && d.platform.as_ref().and_then(|p| p.variant.as_deref()) == want.variant.as_deref()
    };
    let found = if platform.is_none() && candidates.len() == 1 {
        candidates.first()
    } else {
        candidates
            .iter()
            .find(exact)
            .or_else(|| candidates.iter().find(fits))
            .or_else(|| {
                candidates
                    .first()
                    .filter(|d| candidates.len() == 1 && d.platform.is_none())
            })
    };
    found.cloned().ok_or_else(|| OciError::NoPlatform {
        image: image.to_path_buf(),
        wanted: match platform {
            Some(w) => w.to_string(),
            None => format!("the host ({host})"),
        },
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

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(arch: &str, variant: Option<&str>, n: u8) -> Descriptor {
        Descriptor {
            media_type: MT_MANIFEST.into(),
            digest: format!("sha256:{}", format!("{n:02x}").repeat(32)),
            size: 1,
            platform: Some(Platform {
                architecture: arch.into(),
                os: "linux".into(),
                variant: variant.map(Into::into),
            }),
        }
    }

    #[test]
    fn variants_pick_the_right_arm() {
        let index = Index {
            schema_version: 2,
            media_type: None,
            manifests: vec![
                desc("arm", Some("v6"), 1),
                desc("arm", Some("v7"), 2),
                desc("arm64", Some("v8"), 3),
                desc("s390x", None, 4),
            ],
        };
        let pick = |p: &str| {
            let w = Wanted::parse(p).unwrap();
            choose_manifest(Path::new("i"), &index, Some(&w), &mut |_| unreachable!())
                .map(|d| d.digest[7..9].to_string())
        };
        assert_eq!(pick("linux/arm/v7").unwrap(), "02");
        assert_eq!(pick("linux/armhf").unwrap(), "02");
        assert_eq!(pick("linux/arm/v6").unwrap(), "01");
        assert_eq!(pick("linux/arm64").unwrap(), "03");
        assert_eq!(pick("linux/aarch64").unwrap(), "03");
        assert_eq!(pick("linux/s390x").unwrap(), "04");
        let e = pick("linux/riscv64").unwrap_err().to_string();
        assert!(
            e.contains("linux/arm/v7") && e.contains("linux/riscv64"),
            "{e}"
        );
        assert!(Wanted::parse("linux").is_none());
        assert!(Wanted::parse("linux/arm/").is_none());
        assert!(Wanted::parse("linux/arm/v7/x").is_none());
    }
}
