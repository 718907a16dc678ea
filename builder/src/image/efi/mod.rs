//! The release formats that boot straight from UEFI firmware, each written from a built image
//! and each the same bytes for the same image:
//! - `uki` — `NAME.efi`, a Unified Kernel Image: systemd's EFI stub with the kernel, initrd,
//!   command line, os-release and kernel release as PE sections ([`pe`]);
//! - `disk` — `NAME.img`, a GPT disk with an EFI system partition holding that UKI as
//!   `EFI/BOOT/BOOTX64.EFI` and an ext4 partition for each data disk the spec declares
//!   ([`disk`]), and `qcow2` — `NAME.qcow2`, the same disk converted by `qemu-img`;
//! - `iso` — `NAME.iso`, a hybrid EFI ISO (El Torito and GPT) with the ESP as its boot image,
//!   made by xorriso ([`iso`]).

use std::path::{Path, PathBuf};

use super::outputs::Image;
use super::BuildError;
use crate::error::io_err;

pub mod disk;
pub mod fat;
pub mod iso;
pub mod pe;

/// Where Debian's systemd-boot-efi puts the x86_64 EFI stub.
pub const DEFAULT_STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";

/// The EFI stub to build UKIs from: `$MINKE_EFI_STUB`, else Debian's.
pub fn stub_path() -> PathBuf {
    std::env::var_os("MINKE_EFI_STUB")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STUB))
}

/// The path of `NAME.EXT` beside the image.
pub fn output_path(image: &Image, ext: &str) -> PathBuf {
    image.dir.join(format!("{}.{ext}", image.name))
}

/// The os-release a UKI carries in `.osrel` (what boot menus show).
pub fn os_release(image: &Image) -> String {
    let m = &image.manifest;
    format!(
        "NAME=\"minke\"\nID=minke\nPRETTY_NAME=\"{name} (minke image)\"\nIMAGE_ID={name}\n\
         IMAGE_VERSION={version}\n",
        name = image.name,
        version = &m.initrd.sha256[..m.initrd.sha256.len().min(12)],
    )
}

/// The bytes of the image's UKI.
pub fn uki_bytes(image: &Image) -> Result<Vec<u8>, BuildError> {
    let stub_at = stub_path();
    let stub = std::fs::read(&stub_at).map_err(|e| {
        BuildError::Other(format!(
            "the UKI format needs systemd's EFI stub at {}: {e} (install Debian's \
             systemd-boot-efi, or set MINKE_EFI_STUB to a linuxx64.efi.stub)",
            stub_at.display()
        ))
    })?;
    let kernel = std::fs::read(&image.kernel).map_err(io_err(&image.kernel))?;
    let initrd = std::fs::read(&image.initrd).map_err(io_err(&image.initrd))?;
    let osrel = os_release(image);
    let cmdline = image.cmdline.clone();
    let mut sections: Vec<(&str, &[u8])> = vec![
        (".osrel", osrel.as_bytes()),
        (".cmdline", cmdline.as_bytes()),
    ];
    let uname = image.manifest.kernel.version.clone();
    if !uname.is_empty() {
        sections.push((".uname", uname.as_bytes()));
    }
    // The kernel last: it may need more memory than its section holds once it runs.
    sections.push((".initrd", &initrd));
    sections.push((".linux", &kernel));
    pe::add_sections(&stub, &sections)
        .map_err(|e| BuildError::Other(format!("{}: {e}", stub_at.display())))
}

/// Writes `NAME.efi` beside the image.
pub fn write_uki(image: &Image) -> Result<PathBuf, BuildError> {
    let bytes = uki_bytes(image)?;
    let path = output_path(image, "efi");
    super::outputs::write_if_changed(&path, &bytes, &crate::layer::sha256_hex(&bytes))?;
    Ok(path)
}

/// A stable identity for one image's partition or volume, derived from what the image is.
pub(crate) fn derived_id(image: &Image, what: &str) -> [u8; 16] {
    minke_protocol::disk::derive(
        format!("minke-{what}:").as_bytes(),
        &format!("{}:{}", image.name, image.manifest.initrd.sha256),
    )
}

/// Runs `cmd`, turning a failure into an error that names the command and its output.
pub(crate) fn run_tool(mut cmd: std::process::Command, what: &str) -> Result<(), BuildError> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| {
        BuildError::Other(format!(
            "{what}: cannot run {shown}: {e} (is it installed? `cargo xtask setup` installs it)"
        ))
    })?;
    if out.status.success() {
        return Ok(());
    }
    Err(BuildError::Other(format!(
        "{what}: {shown} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim(),
        String::from_utf8_lossy(&out.stdout).trim()
    )))
}

/// A temporary file beside `path` that becomes `path` on [`Staged::commit`] and is removed
/// otherwise, so a failed format never leaves a half-written output.
pub(crate) struct Staged {
    tmp: Option<tempfile::NamedTempFile>,
    path: PathBuf,
}

impl Staged {
    pub(crate) fn new(path: &Path) -> Result<Staged, BuildError> {
        let dir = path.parent().unwrap_or(Path::new("."));
        let tmp = tempfile::Builder::new()
            .prefix(".minke-")
            .tempfile_in(dir)
            .map_err(io_err(dir))?;
        Ok(Staged {
            tmp: Some(tmp),
            path: path.to_path_buf(),
        })
    }

    pub(crate) fn path(&self) -> &Path {
        self.tmp.as_ref().map(|t| t.path()).unwrap_or(&self.path)
    }

    pub(crate) fn file(&self) -> &std::fs::File {
        self.tmp.as_ref().expect("staged file").as_file()
    }

    /// Gives the output the image's usual mode (0644) and moves it into place.
    pub(crate) fn commit(mut self) -> Result<PathBuf, BuildError> {
        use std::os::unix::fs::PermissionsExt;
        let tmp = self.tmp.take().expect("staged file");
        // By path: a tool (xorriso, qemu-img) may have replaced the file the handle opened.
        std::fs::File::open(tmp.path())
            .and_then(|f| f.sync_all())
            .map_err(io_err(&self.path))?;
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644))
            .map_err(io_err(&self.path))?;
        tmp.persist(&self.path).map_err(|e| BuildError::Io {
            path: self.path.clone(),
            source: e.error,
        })?;
        Ok(self.path.clone())
    }
}
