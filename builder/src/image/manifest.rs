//! The image manifest (`NAME.manifest.json`): what an image is made of, file by file, and the
//! differences between two manifests (`minke diff`).

use std::collections::BTreeMap;

use minke_protocol::config as cfg;
use serde::{Deserialize, Serialize};

use crate::archive::compress::Compression;
use crate::layer::Record;

/// The image manifest (`NAME.manifest.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Image name.
    pub name: String,
    /// Guest architecture.
    pub arch: String,
    /// sha256 over kernel, initrd and cmdline.
    pub image_digest: String,
    /// The kernel.
    pub kernel: KernelRecord,
    /// The kernel command line.
    pub cmdline: String,
    /// The initrd.
    pub initrd: InitrdRecord,
    /// Layers in merge order.
    pub layers: Vec<LayerRef>,
    /// Kernel modules in load order.
    pub modules: Vec<cfg::Module>,
    /// Data disks the image mounts: label and size the host creates them with.
    #[serde(default)]
    pub disks: Vec<DiskRecord>,
    /// The kinds of host directory share a boot can mount (`virtiofs`, `9p`); empty when
    /// the spec says `allow_shares: false` or the kernel has neither.
    #[serde(default)]
    pub shares: Vec<String>,
    /// Whether a boot can take a network card (`minke run --net user`).
    #[serde(default)]
    pub network: bool,
    /// Whether the kernel boots on QEMU's `microvm` machine (ACPI built in, virtio-mmio built in
    /// or carried as a module): `minke run` then prefers it.
    #[serde(default)]
    pub microvm: bool,
    /// The image's onshutdown tasks, by name: a stop must let the guest run them.
    #[serde(default)]
    pub onshutdown: Vec<String>,
    /// The network a `minke run` gives unless told otherwise (`none` or `user`).
    #[serde(default)]
    pub default_network: crate::spec::RawNetwork,
    /// Every entry of the initramfs.
    pub files: Vec<Record>,
}

/// A data disk in a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskRecord {
    /// virtio serial / filesystem label.
    pub label: String,
    /// Size in bytes when created, if the spec says.
    pub size: Option<u64>,
}

/// Kernel part of a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelRecord {
    /// sha256 of the kernel image.
    pub sha256: String,
    /// Kernel release (`6.1.0-56-cloud-amd64`), when known.
    pub version: String,
    /// Where it came from (Debian package with its sha256, or a path).
    pub source: String,
}

/// Initrd part of a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitrdRecord {
    /// sha256 of the compressed file.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// Compression.
    pub compression: Compression,
    /// SOURCE_DATE_EPOCH used for every mtime.
    pub mtime: u64,
}

/// A layer in a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRef {
    /// Package name (or `spec` for the spec's own files, `kernel-modules`, `config`).
    pub name: String,
    /// Digest of its records.
    pub digest: String,
    /// What its files came from (Debian packages, crates, images), for the SBOM.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub components: Vec<crate::layer::Component>,
}

/// Describes the differences between two manifests, one line each; empty when equal.
pub fn diff(a: &Manifest, b: &Manifest) -> Vec<String> {
    let mut out = Vec::new();
    if a.kernel != b.kernel {
        out.push(format!(
            "kernel: {} ({}) -> {} ({})",
            a.kernel.version,
            &a.kernel.sha256[..12.min(a.kernel.sha256.len())],
            b.kernel.version,
            &b.kernel.sha256[..12.min(b.kernel.sha256.len())]
        ));
    }
    if a.cmdline != b.cmdline {
        out.push(format!("cmdline: {:?} -> {:?}", a.cmdline, b.cmdline));
    }
    if a.initrd.compression != b.initrd.compression {
        out.push(format!(
            "compression: {:?} -> {:?}",
            a.initrd.compression, b.initrd.compression
        ));
    }
    let am: Vec<&str> = a.modules.iter().map(|m| m.name.as_str()).collect();
    let bm: Vec<&str> = b.modules.iter().map(|m| m.name.as_str()).collect();
    if am != bm {
        out.push(format!("modules: {} -> {}", am.join(","), bm.join(",")));
    }
    let la: BTreeMap<&str, &str> = a
        .layers
        .iter()
        .map(|l| (l.name.as_str(), l.digest.as_str()))
        .collect();
    let lb: BTreeMap<&str, &str> = b
        .layers
        .iter()
        .map(|l| (l.name.as_str(), l.digest.as_str()))
        .collect();
    for (n, d) in &la {
        match lb.get(n) {
            None => out.push(format!("- layer {n}")),
            Some(e) if e != d => out.push(format!("~ layer {n}")),
            _ => {}
        }
    }
    for n in lb.keys().filter(|n| !la.contains_key(*n)) {
        out.push(format!("+ layer {n}"));
    }
    let fa: BTreeMap<&str, &Record> = a.files.iter().map(|r| (r.path.as_str(), r)).collect();
    let fb: BTreeMap<&str, &Record> = b.files.iter().map(|r| (r.path.as_str(), r)).collect();
    for (p, r) in &fa {
        match fb.get(p) {
            None => out.push(format!("- {p}")),
            Some(s) if s != r => {
                let mut what = Vec::new();
                if r.kind != s.kind {
                    what.push(format!("type {:?} -> {:?}", r.kind, s.kind));
                }
                if r.mode != s.mode {
                    what.push(format!("mode {:o} -> {:o}", r.mode, s.mode));
                }
                if (r.uid, r.gid) != (s.uid, s.gid) {
                    what.push(format!("owner {}:{} -> {}:{}", r.uid, r.gid, s.uid, s.gid));
                }
                if r.sha256 != s.sha256 || r.size != s.size {
                    what.push(format!(
                        "content ({} -> {} bytes)",
                        r.size.unwrap_or(0),
                        s.size.unwrap_or(0)
                    ));
                }
                if r.target != s.target {
                    what.push(format!("target {:?} -> {:?}", r.target, s.target));
                }
                out.push(format!("~ {p}: {}", what.join(", ")));
            }
            _ => {}
        }
    }
    for p in fb.keys().filter(|p| !fa.contains_key(*p)) {
        out.push(format!("+ {p}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::compress::Compression;

    #[test]
    fn diff_names_changed_files() {
        let rec = |p: &str, sha: &str| Record {
            path: p.into(),
            kind: crate::archive::tree::EntryType::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: Some(1),
            sha256: Some(sha.into()),
            target: None,
        };
        let m = Manifest {
            name: "a".into(),
            arch: "x86_64".into(),
            image_digest: "d".into(),
            kernel: KernelRecord {
                sha256: "k".repeat(64),
                version: "v".into(),
                source: "s".into(),
            },
            cmdline: "c".into(),
            initrd: InitrdRecord {
                sha256: "i".into(),
                size: 1,
                compression: Compression::Gzip,
                mtime: 0,
            },
            layers: vec![],
            modules: vec![],
            disks: vec![],
            shares: vec![],
            microvm: false,
            network: false,
            default_network: Default::default(),
            onshutdown: vec![],
            files: vec![rec("/a", "1"), rec("/b", "1")],
        };
        let mut n = m.clone();
        n.files = vec![rec("/a", "2"), rec("/c", "1")];
        let d = diff(&m, &n);
        assert_eq!(d, ["~ /a: content (1 -> 1 bytes)", "- /b", "+ /c"]);
        assert!(diff(&m, &m).is_empty());
    }
}
