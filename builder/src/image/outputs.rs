//! A built image on disk: its output files, written atomically and only when their bytes
//! changed (the manifest last, so a manifest always describes complete outputs), and opened
//! again by path. Each output format writes its files here.

use std::path::{Path, PathBuf};

use super::manifest::Manifest;
use super::BuildError;
use crate::error::io_err;
use crate::layer::{sha256_file, sha256_hex, write_atomic};

/// A built image.
#[derive(Debug, Clone)]
pub struct Image {
    /// Image name.
    pub name: String,
    /// Output directory.
    pub dir: PathBuf,
    /// `NAME-kernel`.
    pub kernel: PathBuf,
    /// `NAME-initrd.img`.
    pub initrd: PathBuf,
    /// `NAME-cmdline` contents.
    pub cmdline: String,
    /// The manifest.
    pub manifest: Manifest,
    /// The data disks the spec declares (label, size in bytes).
    pub disks: Vec<(String, Option<u64>)>,
    /// The files of the formats the build wrote beyond the image directory (`NAME.tar`,
    /// `NAME.efi`, …), in the order `--format` listed them; empty for an image opened by path.
    pub format_outputs: Vec<PathBuf>,
}

impl Image {
    /// Paths of the four outputs of image `name` in `dir`.
    pub fn paths(dir: &Path, name: &str) -> [PathBuf; 4] {
        [
            dir.join(format!("{name}-kernel")),
            dir.join(format!("{name}-initrd.img")),
            dir.join(format!("{name}-cmdline")),
            dir.join(format!("{name}.manifest.json")),
        ]
    }

    /// Opens a built image: `dir` holds exactly one manifest (or `NAME.manifest.json` is given).
    pub fn open(path: &Path) -> Result<Image, BuildError> {
        let manifest_path = if path.is_dir() {
            let mut found = Vec::new();
            for e in std::fs::read_dir(path).map_err(io_err(path))? {
                let e = e.map_err(io_err(path))?;
                if e.file_name().to_string_lossy().ends_with(".manifest.json") {
                    found.push(e.path());
                }
            }
            found.sort();
            match found.len() {
                1 => found.remove(0),
                0 => {
                    return Err(BuildError::Other(format!(
                        "{} holds no image: run `minke build -o {}` first",
                        path.display(),
                        path.display()
                    )))
                }
                _ => {
                    return Err(BuildError::Other(format!(
                        "{} holds several images; name one manifest file",
                        path.display()
                    )))
                }
            }
        } else {
            path.to_path_buf()
        };
        let bytes = std::fs::read(&manifest_path).map_err(io_err(&manifest_path))?;
        let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| {
            BuildError::Other(format!(
                "{}: not a minke manifest: {e}",
                manifest_path.display()
            ))
        })?;
        let dir = manifest_path
            .parent()
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let [kernel, initrd, _, _] = Image::paths(&dir, &manifest.name);
        let disks = manifest
            .disks
            .iter()
            .map(|d| (d.label.clone(), d.size))
            .collect();
        Ok(Image {
            name: manifest.name.clone(),
            kernel,
            initrd,
            cmdline: manifest.cmdline.clone(),
            dir,
            manifest,
            disks,
            format_outputs: Vec::new(),
        })
    }
}

/// Writes an initrd image's four outputs into `dir` — kernel, initrd, cmdline, manifest — each
/// unless an identical file is already there, the manifest last.
pub(super) fn write_initrd_image(
    dir: &Path,
    manifest: Manifest,
    kernel: &[u8],
    initrd: &[u8],
    sbom: &[u8],
) -> Result<Image, BuildError> {
    let mut manifest_json =
        serde_json::to_vec_pretty(&manifest).map_err(|source| BuildError::Json {
            what: "the manifest",
            source,
        })?;
    manifest_json.push(b'\n');
    let [kp, ip, cp, mp] = Image::paths(dir, &manifest.name);
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    write_if_changed(&kp, kernel, &manifest.kernel.sha256)?;
    write_if_changed(&ip, initrd, &manifest.initrd.sha256)?;
    let cmdline_file = format!("{}\n", manifest.cmdline);
    write_if_changed(
        &cp,
        cmdline_file.as_bytes(),
        &sha256_hex(cmdline_file.as_bytes()),
    )?;
    let sp = dir.join(format!("{}.spdx.json", manifest.name));
    write_if_changed(&sp, sbom, &sha256_hex(sbom))?;
    write_if_changed(&mp, &manifest_json, &sha256_hex(&manifest_json))?;
    let disks = manifest
        .disks
        .iter()
        .map(|d| (d.label.clone(), d.size))
        .collect();
    Ok(Image {
        name: manifest.name.clone(),
        dir: dir.to_path_buf(),
        kernel: kp,
        initrd: ip,
        cmdline: manifest.cmdline.clone(),
        manifest,
        disks,
        format_outputs: Vec::new(),
    })
}

pub(super) fn write_if_changed(path: &Path, bytes: &[u8], sha: &str) -> Result<(), BuildError> {
    if let Ok(md) = std::fs::metadata(path) {
        if md.len() == bytes.len() as u64 && sha256_file(path).ok().as_deref() == Some(sha) {
            return Ok(());
        }
    }
    write_atomic(path, bytes).map_err(io_err(path))?;
    Ok(())
}

/// The output files of `image` in the order a hand-off lists them.
pub fn files_of(image: &Image) -> Vec<PathBuf> {
    let n = &image.name;
    vec![
        image.kernel.clone(),
        image.initrd.clone(),
        image.dir.join(format!("{n}-cmdline")),
        image.dir.join(format!("{n}.manifest.json")),
        image.dir.join(format!("{n}.spdx.json")),
    ]
}

/// `--format tar`: `NAME.tar` beside the image, holding its files for a hand-off (unpacked,
/// it is an image directory `minke run` boots). Reproducible: names in byte order, mode 0644,
/// owner 0, every time `epoch`, no user or group names.
pub fn write_tar(image: &Image, epoch: u64) -> Result<PathBuf, BuildError> {
    let mut files = files_of(image);
    files.sort_by(|a, b| {
        a.as_os_str()
            .as_encoded_bytes()
            .cmp(b.as_os_str().as_encoded_bytes())
    });
    let mut tar = tar::Builder::new(Vec::new());
    tar.mode(tar::HeaderMode::Deterministic);
    for f in &files {
        let bytes = std::fs::read(f).map_err(io_err(f))?;
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(epoch);
        h.set_size(bytes.len() as u64);
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        tar.append_data(&mut h, &name, &bytes[..])
            .map_err(io_err(f))?;
    }
    let bytes = tar.into_inner().map_err(io_err(&image.dir))?;
    let path = image.dir.join(format!("{}.tar", image.name));
    write_if_changed(&path, &bytes, &sha256_hex(&bytes))?;
    Ok(path)
}
