//! Container images as package sources: OCI image layouts (a directory or a tar of one) and
//! `docker save` tarballs unpacked into a [`Tree`], and single-layer OCI layouts written
//! reproducibly from a tree.
//!
//! Every blob is checked against its sha256 digest before use (layers also against the
//! config's `diff_ids`, the digests of the uncompressed tars). Layers are applied in order
//! with overlay whiteouts: `DIR/.wh.NAME` removes `NAME` from lower layers and
//! `DIR/.wh..wh..opq` empties `DIR` of what lower layers put there. File contents are held in
//! memory.
//!
//! [`format`] holds the OCI and Docker JSON documents and media types, [`input`] reads an
//! image from a layout directory, a tar of one or a `docker save` tarball, [`platform`] picks
//! the manifest for an architecture from an index, [`layers`] applies layers with their
//! whiteouts, and [`write`] writes a single-layer layout from a tree.

use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::archive::tree::{Tree, TreeError};

pub mod artifact;
mod format;
mod input;
mod layers;
mod platform;
pub mod registry;
mod write;

use format::*;
use input::{blob_hex_of_name, Source};
use layers::{apply_changes, apply_layer, read_layer};
use platform::choose_manifest;
pub use platform::Wanted;
pub use write::write_oci_layout;

/// Errors of reading and writing images.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// A file could not be read or written.
    #[error("cannot access {path}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The input is none of the accepted formats.
    #[error("{path} is neither an OCI image layout (oci-layout, index.json) nor a `docker save` tarball (manifest.json): give one of those")]
    NotAnImage {
        /// The input.
        path: PathBuf,
    },
    /// A JSON document is malformed.
    #[error("{image}: {what} is not valid JSON of the expected shape")]
    Json {
        /// The input.
        image: PathBuf,
        /// Which document.
        what: String,
        /// serde's error.
        source: serde_json::Error,
    },
    /// A referenced blob is absent.
    #[error("{image}: blob {blob} is missing: the image is incomplete; export it again")]
    MissingBlob {
        /// The input.
        image: PathBuf,
        /// The blob.
        blob: String,
    },
    /// A digest is malformed or uses another algorithm.
    #[error("{image}: digest {digest:?} is not a sha256 digest: only sha256 images are supported")]
    BadDigest {
        /// The input.
        image: PathBuf,
        /// The digest.
        digest: String,
    },
    /// A blob's content does not match its digest.
    #[error("{image}: blob {blob} has sha256:{actual}, expected {expected}: the image is corrupt; export it again")]
    DigestMismatch {
        /// The input.
        image: PathBuf,
        /// The blob.
        blob: String,
        /// The digest it should have.
        expected: String,
        /// The hex sha256 it has.
        actual: String,
    },
    /// No manifest matches the wanted platform.
    #[error(
        "{image} has no image for {wanted} (it has: {available}): choose one of those platforms"
    )]
    NoPlatform {
        /// The input.
        image: PathBuf,
        /// The wanted platform, or "the host" when none was given.
        wanted: String,
        /// The platforms present.
        available: String,
    },
    /// A document contradicts itself.
    #[error("{image}: {what}: the image is malformed")]
    Malformed {
        /// The input.
        image: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// A layer's media type is not a tar layer.
    #[error("{image}: layer {blob} has media type {media_type}, which is not a tar layer")]
    MediaType {
        /// The input.
        image: PathBuf,
        /// The blob.
        blob: String,
        /// Its media type.
        media_type: String,
    },
    /// A layer is not a readable tar.
    #[error("{image}: layer {blob} cannot be read")]
    Layer {
        /// The input.
        image: PathBuf,
        /// The blob.
        blob: String,
        /// The reader's error.
        source: io::Error,
    },
    /// A layer entry leaves the root.
    #[error(
        "{image}: layer {blob} has entry {path:?} outside the image root: refusing to unpack it"
    )]
    Escape {
        /// The input.
        image: PathBuf,
        /// The blob.
        blob: String,
        /// The entry.
        path: String,
    },
    /// The tree refused an entry.
    #[error("{image}: layer {blob} holds an entry an image cannot hold")]
    Tree {
        /// The input.
        image: PathBuf,
        /// The blob.
        blob: String,
        /// The tree's error.
        source: TreeError,
    },
}

crate::error::into_io_variant!(OciError);

/// An unpacked image.
#[derive(Debug, Clone)]
pub struct OciImage {
    /// The merged root file system.
    pub tree: Tree,
    /// The config's `architecture` (OCI names: `amd64`, `arm64`, `arm`, `s390x`, …).
    pub architecture: String,
    /// The config's `os`.
    pub os: String,
    /// The config's `variant`, if any (e.g. `v7`).
    pub variant: Option<String>,
    /// How the image asks to be run.
    pub run: RunConfig,
}

/// The part of an image's config that says how to run it (`config` in the OCI image config).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RunConfig {
    /// `Entrypoint`.
    #[serde(default)]
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    #[serde(default)]
    pub cmd: Vec<String>,
    /// `Env` (`KEY=VALUE`).
    #[serde(default)]
    pub env: Vec<String>,
    /// `WorkingDir` (empty: `/`).
    #[serde(default)]
    pub working_dir: String,
    /// `User` (`NAME`, `UID`, `UID:GID`, `NAME:GROUP`; empty: root).
    #[serde(default)]
    pub user: String,
}

impl RunConfig {
    fn of(config: &serde_json::Map<String, serde_json::Value>) -> RunConfig {
        let strings = |k: &str| -> Vec<String> {
            config
                .get(k)
                .and_then(|v| v.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        let string = |k: &str| {
            config
                .get(k)
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_string()
        };
        RunConfig {
            entrypoint: strings("Entrypoint"),
            cmd: strings("Cmd"),
            env: strings("Env"),
            working_dir: string("WorkingDir"),
            user: string("User"),
        }
    }
}

/// Unpacks the image at `path` (an OCI layout directory, an OCI layout tar, or a `docker save`
/// tar) for `platform`. Without a platform, an index with several images yields the host's.
pub fn unpack_oci(path: &Path, platform: Option<&Wanted>) -> Result<OciImage, OciError> {
    let src = if path.is_dir() {
        Source::Dir(path.to_path_buf())
    } else {
        Source::open_tar(path)?
    };
    if src.exists("index.json") {
        let index: Index = src.json("index.json", &src.read_small("index.json")?)?;
        let desc = choose_manifest(src.image(), &index, platform, &mut |d| src.blob_json(d))?;
        unpack_manifest_in(&src, &desc.digest, true)
    } else if src.exists("manifest.json") {
        let entries: Vec<DockerManifest> =
            src.json("manifest.json", &src.read_small("manifest.json")?)?;
        let pick = |e: &&DockerManifest| -> Result<bool, OciError> {
            let Some(want) = platform else {
                return Ok(true);
            };
            let c: ImageConfig = src.json(&e.config, &src.read_small(&e.config)?)?;
            Ok(want.matches(&c.os, &c.architecture, c.variant.as_deref()))
        };
        let mut chosen = None;
        for e in &entries {
            if pick(&e)? {
                chosen = Some(e);
                break;
            }
        }
        let Some(entry) = chosen else {
            return Err(OciError::NoPlatform {
                image: path.to_path_buf(),
                wanted: platform.map(|w| w.to_string()).unwrap_or_default(),
                available: format!("{} image(s) of other platforms", entries.len()),
            });
        };
        let bytes = src.read_small(&entry.config)?;
        if let Some(hex) = blob_hex_of_name(&entry.config) {
            src.check(&entry.config, &hex, &Sha256::digest(&bytes))?;
        }
        let config: ImageConfig = src.json(&entry.config, &bytes)?;
        let mut tree = Tree::new();
        for (i, layer) in entry.layers.iter().enumerate() {
            if let Some(hex) = blob_hex_of_name(layer).filter(|_| layer.starts_with("blobs/")) {
                src.verify_blob(layer, &hex)?;
            }
            let diff_id = config.rootfs.diff_ids.get(i).map(String::as_str);
            apply_layer(&src, layer, layer, "", diff_id, &mut tree)?;
        }
        Ok(image_of(tree, config))
    } else {
        Err(OciError::NotAnImage {
            path: path.to_path_buf(),
        })
    }
}

/// Unpacks the image whose manifest has `digest` from minke's cache (`DIR/blobs/sha256/…`,
/// which a registry pull fills with blobs verified as they arrived). The manifest and config
/// are checked against their digests again, and each layer's uncompressed bytes against the
/// config's `diff_ids`; the compressed layer files are not hashed a second time.
pub fn unpack_manifest(store: &Path, digest: &str) -> Result<OciImage, OciError> {
    unpack_manifest_in(&Source::Dir(store.to_path_buf()), digest, false)
}

fn unpack_manifest_in(
    src: &Source,
    digest: &str,
    verify_blobs: bool,
) -> Result<OciImage, OciError> {
    let manifest: Manifest = src.blob_json(digest)?;
    let config: ImageConfig = src.blob_json(&manifest.config.digest)?;
    if config.rootfs.diff_ids.len() != manifest.layers.len() {
        return Err(OciError::Malformed {
            image: src.image().to_path_buf(),
            what: format!(
                "manifest {digest}: its config lists {} layer digests for {} layers",
                config.rootfs.diff_ids.len(),
                manifest.layers.len()
            ),
        });
    }
    // Layers are read (decompressed, parsed, checked) on as many threads as there are
    // cores, then applied in order.
    let read = |i: usize| -> Result<Vec<layers::Change>, OciError> {
        let layer = &manifest.layers[i];
        let hex = src.hex_of(&layer.digest)?;
        let name = format!("blobs/sha256/{hex}");
        if verify_blobs {
            src.verify_blob(&name, &hex)?;
        }
        let diff_id = config.rootfs.diff_ids.get(i).map(String::as_str);
        read_layer(src, &layer.digest, &name, &layer.media_type, diff_id)
    };
    let n = manifest.layers.len();
    let threads = std::thread::available_parallelism()
        .map(|t| t.get())
        .unwrap_or(1)
        .min(n.max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut results: Vec<Option<Result<Vec<layers::Change>, OciError>>> =
        (0..n).map(|_| None).collect();
    let slots = std::sync::Mutex::new(&mut results);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if i >= n {
                    break;
                }
                let r = read(i);
                slots.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(r);
            });
        }
    });
    let mut tree = Tree::new();
    for (i, r) in results.into_iter().enumerate() {
        let changes = r.unwrap_or_else(|| {
            Err(OciError::Malformed {
                image: src.image().to_path_buf(),
                what: format!("layer {i} was not read"),
            })
        })?;
        apply_changes(src, &manifest.layers[i].digest, changes, &mut tree)?;
    }
    Ok(image_of(tree, config))
}

fn image_of(tree: Tree, config: ImageConfig) -> OciImage {
    OciImage {
        tree,
        run: RunConfig::of(&config.config),
        architecture: config.architecture,
        os: config.os,
        variant: config.variant,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::tree::{FileData, Node, NodeKind};
    use std::fs::{self, File};
    use std::io::Write;

    enum E<'a> {
        D(&'a str),
        F(&'a str, &'a [u8]),
        L(&'a str, &'a str),
    }

    fn layer(entries: &[E<'_>]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for e in entries {
            let mut h = tar::Header::new_gnu();
            h.set_mtime(0);
            h.set_uid(0);
            h.set_gid(0);
            match e {
                E::D(p) => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(0o755);
                    h.set_size(0);
                    b.append_data(&mut h, p, io::empty()).unwrap();
                }
                E::F(p, d) => {
                    h.set_mode(0o644);
                    h.set_size(d.len() as u64);
                    b.append_data(&mut h, p, *d).unwrap();
                }
                E::L(p, t) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_mode(0o777);
                    h.set_size(0);
                    b.append_link(&mut h, p, t).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    fn gzip(b: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(b).unwrap();
        e.finish().unwrap()
    }

    fn sha(b: &[u8]) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(b)))
    }

    fn base_and_top() -> (Vec<u8>, Vec<u8>) {
        let base = layer(&[
            E::D("bin"),
            E::F("bin/sh", b"shell"),
            E::F("bin/gone", b"x"),
            E::D("etc"),
            E::D("etc/conf.d"),
            E::F("etc/conf.d/old", b"old"),
            E::F("etc/hosts", b"127.0.0.1"),
            E::L("usr/bin", "../bin"),
        ]);
        let top = layer(&[
            E::F("bin/.wh.gone", b""),
            E::D("etc/conf.d"),
            E::F("etc/conf.d/new", b"new"),
            E::F("etc/conf.d/.wh..wh..opq", b""),
            E::F("etc/hosts", b"::1"),
        ]);
        (base, top)
    }

    /// An OCI layout of the two layers (gzip + zstd), optionally as a nested index.
    fn write_layout(dir: &Path, arch: &str, nested: bool) {
        let (base, top) = base_and_top();
        let blobs = dir.join("blobs/sha256");
        fs::create_dir_all(&blobs).unwrap();
        let put = |b: &[u8]| {
            let d = sha(b);
            fs::write(blobs.join(&d[7..]), b).unwrap();
            d
        };
        let l1 = gzip(&base);
        let l2 = zstd::encode_all(&top[..], 3).unwrap();
        let config = serde_json::json!({
            "architecture": arch, "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [sha(&base), sha(&top)]}
        });
        let config = serde_json::to_vec(&config).unwrap();
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MT_MANIFEST,
            "config": {"mediaType": MT_CONFIG, "digest": put(&config), "size": config.len()},
            "layers": [
                {"mediaType": MT_LAYER_GZIP, "digest": put(&l1), "size": l1.len()},
                {"mediaType": "application/vnd.oci.image.layer.v1.tar+zstd", "digest": put(&l2), "size": l2.len()},
            ]
        });
        let manifest = serde_json::to_vec(&manifest).unwrap();
        let md = put(&manifest);
        let other = serde_json::json!({"mediaType": MT_MANIFEST, "digest": format!("sha256:{}", "0".repeat(64)), "size": 1,
            "platform": {"architecture": "s390x", "os": "linux"}});
        let mine = serde_json::json!({"mediaType": MT_MANIFEST, "digest": md, "size": manifest.len(),
            "platform": {"architecture": arch, "os": "linux"}});
        let inner = serde_json::json!({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": [other, mine]});
        let index = if nested {
            let inner = serde_json::to_vec(&inner).unwrap();
            serde_json::json!({"schemaVersion": 2, "manifests": [{"mediaType": MT_INDEX, "digest": put(&inner), "size": inner.len()}]})
        } else {
            inner
        };
        fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
        fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    }

    fn check_merged(img: &OciImage) {
        let paths: Vec<&str> = img.tree.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "bin",
                "bin/sh",
                "etc",
                "etc/conf.d",
                "etc/conf.d/new",
                "etc/hosts",
                "usr",
                "usr/bin"
            ]
        );
        let file = |p: &str| match &img.tree.get(p).unwrap().kind {
            NodeKind::File(d) => d.read().unwrap(),
            k => panic!("{p}: {k:?}"),
        };
        assert_eq!(file("etc/hosts"), b"::1");
        assert_eq!(file("etc/conf.d/new"), b"new");
        assert_eq!(
            img.tree.get("usr/bin").unwrap().kind,
            NodeKind::Symlink("../bin".into())
        );
    }

    fn tar_dir(dir: &Path, out: &Path) {
        let mut b = tar::Builder::new(File::create(out).unwrap());
        b.append_dir_all(".", dir).unwrap();
        b.finish().unwrap();
    }

    #[test]
    fn oci_layout_dir_and_tar_with_whiteouts() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("layout");
        write_layout(&dir, "arm64", false);
        let img = unpack_oci(&dir, Some(&Wanted::parse("linux/aarch64").unwrap())).unwrap();
        assert_eq!(img.architecture, "arm64");
        check_merged(&img);
        let err = unpack_oci(&dir, Some(&Wanted::parse("linux/riscv64").unwrap())).unwrap_err();
        assert!(matches!(err, OciError::NoPlatform { .. }), "{err}");
        // The s390x entry points to a missing manifest.
        assert!(matches!(
            unpack_oci(&dir, Some(&Wanted::parse("linux/s390x").unwrap())),
            Err(OciError::MissingBlob { .. })
        ));
        let tarball = tmp.path().join("layout.tar");
        tar_dir(&dir, &tarball);
        check_merged(&unpack_oci(&tarball, Some(&Wanted::parse("linux/arm64").unwrap())).unwrap());

        let nested = tmp.path().join("nested");
        write_layout(&nested, "arm64", true);
        check_merged(&unpack_oci(&nested, Some(&Wanted::parse("linux/arm64").unwrap())).unwrap());
    }

    #[test]
    fn docker_save_tarball() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("save");
        let (base, top) = base_and_top();
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [sha(&base), sha(&top)]}
        }))
        .unwrap();
        let cfg_name = format!("{}.json", &sha(&config)[7..]);
        fs::create_dir_all(dir.join("aaa")).unwrap();
        fs::create_dir_all(dir.join("bbb")).unwrap();
        fs::write(dir.join(&cfg_name), &config).unwrap();
        fs::write(dir.join("aaa/layer.tar"), &base).unwrap();
        fs::write(dir.join("bbb/layer.tar"), &top).unwrap();
        let manifest = serde_json::json!([{"Config": cfg_name, "RepoTags": ["x:latest"], "Layers": ["aaa/layer.tar", "bbb/layer.tar"]}]);
        fs::write(
            dir.join("manifest.json"),
            serde_json::to_vec(&manifest).unwrap(),
        )
        .unwrap();
        let tarball = tmp.path().join("save.tar");
        tar_dir(&dir, &tarball);
        let img = unpack_oci(&tarball, None).unwrap();
        assert_eq!(img.architecture, "amd64");
        check_merged(&img);
        // A layer that does not match its diff_id.
        fs::write(dir.join("bbb/layer.tar"), layer(&[E::F("evil", b"x")])).unwrap();
        tar_dir(&dir, &tarball);
        match unpack_oci(&tarball, None) {
            Err(OciError::DigestMismatch { blob, .. }) => {
                assert!(blob.contains("bbb/layer.tar"), "{blob}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn digest_mismatch_names_the_blob() {
        let tmp = tempfile::tempdir().unwrap();
        write_layout(tmp.path(), "amd64", false);
        // Corrupt the first layer blob (gzip, the larger of the two layer files is irrelevant).
        let idx: Index =
            serde_json::from_slice(&fs::read(tmp.path().join("index.json")).unwrap()).unwrap();
        let md = &idx.manifests[1].digest;
        let m: Manifest = serde_json::from_slice(
            &fs::read(tmp.path().join("blobs/sha256").join(&md[7..])).unwrap(),
        )
        .unwrap();
        let victim = tmp
            .path()
            .join("blobs/sha256")
            .join(&m.layers[0].digest[7..]);
        let mut bytes = fs::read(&victim).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&victim, bytes).unwrap();
        match unpack_oci(tmp.path(), Some(&Wanted::parse("linux/amd64").unwrap())) {
            Err(OciError::DigestMismatch { blob, .. }) => {
                assert!(blob.contains(&m.layers[0].digest[7..]))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn escapes_and_garbage_are_errors() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(matches!(
            unpack_oci(tmp.path(), None),
            Err(OciError::NotAnImage { .. })
        ));
        let junk = tmp.path().join("junk.tar");
        fs::write(&junk, vec![0x42; 2000]).unwrap();
        assert!(unpack_oci(&junk, None).is_err());
        // A layer with `../x` in an otherwise valid layout.
        let mut evil = layer(&[E::F("aa/x", b"x")]);
        evil[..4].copy_from_slice(b"../x");
        let mut h = tar::Header::from_byte_slice(&evil[..512]).clone();
        h.set_cksum();
        evil[..512].copy_from_slice(h.as_bytes());
        let mut tree = Tree::new();
        tree.insert("etc/motd", Node::file(0o644, &b"hi"[..]))
            .unwrap();
        let dir = tmp.path().join("l");
        write_oci_layout(&dir, &tree, "amd64").unwrap();
        // Swap the layer for the evil one, with matching digests everywhere.
        let blobs = dir.join("blobs/sha256");
        let d = sha(&evil);
        fs::write(blobs.join(&d[7..]), &evil).unwrap();
        let config =
            serde_json::to_vec(&serde_json::json!({"architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [d]}}))
            .unwrap();
        let cd = sha(&config);
        fs::write(blobs.join(&cd[7..]), &config).unwrap();
        let manifest = serde_json::to_vec(&serde_json::json!({"schemaVersion": 2,
            "config": {"mediaType": MT_CONFIG, "digest": cd, "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": evil.len()}]})).unwrap();
        let mdg = sha(&manifest);
        fs::write(blobs.join(&mdg[7..]), &manifest).unwrap();
        let index = serde_json::json!({"schemaVersion": 2, "manifests": [{"mediaType": MT_MANIFEST, "digest": mdg, "size": manifest.len()}]});
        fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
        match unpack_oci(&dir, None) {
            Err(OciError::Escape { path, .. }) => assert_eq!(path, "../x"),
            other => panic!("{other:?}"),
        }
        // A malformed digest is refused before touching the file system.
        let index = serde_json::json!({"schemaVersion": 2, "manifests": [{"mediaType": MT_MANIFEST, "digest": "sha256:../../etc/passwd", "size": 1}]});
        fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
        assert!(matches!(
            unpack_oci(&dir, None),
            Err(OciError::BadDigest { .. })
        ));
    }

    #[test]
    fn written_layout_round_trips_reproducibly() {
        let mut tree = Tree::new();
        tree.insert(
            "bin/busybox",
            Node {
                mode: 0o755,
                uid: 0,
                gid: 0,
                kind: NodeKind::File(FileData::Inline((&b"\x7fELF..."[..]).into())),
            },
        )
        .unwrap();
        tree.insert("bin/sh", Node::symlink("busybox")).unwrap();
        tree.insert(
            "bin/ash",
            Node {
                mode: 0o755,
                uid: 0,
                gid: 0,
                kind: NodeKind::Hardlink("bin/busybox".into()),
            },
        )
        .unwrap();
        tree.insert(
            "tmp",
            Node {
                mode: 0o1777,
                uid: 0,
                gid: 0,
                kind: NodeKind::Dir,
            },
        )
        .unwrap();
        tree.insert(
            "home/user",
            Node {
                mode: 0o700,
                uid: 1000,
                gid: 1000,
                kind: NodeKind::Dir,
            },
        )
        .unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let a = tmp.path().join("a");
        let b = tmp.path().join("b");
        let da = write_oci_layout(&a, &tree, "armhf").unwrap();
        let db = write_oci_layout(&b, &tree, "armhf").unwrap();
        assert_eq!(da, db);
        assert_eq!(
            fs::read(a.join("index.json")).unwrap(),
            fs::read(b.join("index.json")).unwrap()
        );
        let img = unpack_oci(&a, Some(&Wanted::parse("linux/arm").unwrap())).unwrap();
        assert_eq!(
            (img.architecture.as_str(), img.variant.as_deref()),
            ("arm", Some("v7"))
        );
        assert_eq!(img.tree, tree);
    }
}
