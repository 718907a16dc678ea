//! The release formats that boot straight from UEFI firmware, each written from a built image
//! and each the same bytes for the same image:
//! - `uki` — `NAME.efi`, a Unified Kernel Image: systemd's EFI stub with the kernel, initrd,
//!   command line, os-release and kernel release as PE sections ([`pe`]);
//! - `disk` — `NAME.img`, a GPT disk with an EFI system partition holding that UKI as the
//!   removable-media boot file (`EFI/BOOT/BOOTX64.EFI`, `BOOTAA64.EFI` for aarch64) and an ext4
//!   partition for each data disk the spec declares
//!   ([`disk`]), and `qcow2` — `NAME.qcow2`, the same disk converted by `qemu-img`;
//! - `iso` — `NAME.iso`, a hybrid EFI ISO (El Torito and GPT) with the ESP as its boot image,
//!   made by xorriso ([`iso`]).
//!
//! The stub is systemd's `linuxx64.efi.stub` or `linuxaa64.efi.stub`: from the installed
//! `systemd-boot-efi` for the host's architecture, and for the other one from Debian's package
//! of that architecture, downloaded through the private apt root (never installed).

use std::path::{Path, PathBuf};

use minke_protocol::arch::Arch;

use super::outputs::Image;
use super::BuildError;
use crate::error::io_err;
use crate::layer::Cache;

pub mod disk;
pub mod fat;
pub mod iso;
pub mod pe;

/// Where Debian's systemd-boot-efi puts its EFI stubs.
const STUB_DIR: &str = "usr/lib/systemd/boot/efi";

/// What the UEFI formats need to know of an architecture.
#[derive(Debug, Clone, Copy)]
pub struct EfiArch {
    /// systemd's stub for it.
    pub stub: &'static str,
    /// The file UEFI firmware boots from removable media.
    pub boot_file: &'static str,
    /// The PE/COFF machine of its EFI applications.
    pub pe_machine: u16,
}

/// [`EfiArch`] of `arch`.
pub fn efi_arch(arch: Arch) -> EfiArch {
    match arch {
        Arch::X86_64 => EfiArch {
            stub: "linuxx64.efi.stub",
            boot_file: "EFI/BOOT/BOOTX64.EFI",
            pe_machine: 0x8664,
        },
        Arch::Aarch64 => EfiArch {
            stub: "linuxaa64.efi.stub",
            boot_file: "EFI/BOOT/BOOTAA64.EFI",
            pe_machine: 0xaa64,
        },
    }
}

/// The architecture of a built image (its manifest says it).
pub fn image_arch(image: &Image) -> Result<Arch, BuildError> {
    Arch::parse(&image.manifest.arch).ok_or_else(|| {
        BuildError::Other(format!(
            "image {} is for {:?}, an architecture minke has no UEFI formats for",
            image.name, image.manifest.arch
        ))
    })
}

/// An EFI stub's bytes, and where they came from.
#[derive(Debug, Clone)]
pub struct Stub {
    /// The stub.
    pub bytes: Vec<u8>,
    /// The file or package it was read from.
    pub from: PathBuf,
}

/// The EFI stub to build `arch`'s UKIs from, and where it came from: `$MINKE_EFI_STUB_ARCH`
/// (`MINKE_EFI_STUB_X86_64`, `MINKE_EFI_STUB_AARCH64`) when set; for the host's architecture
/// `$MINKE_EFI_STUB`, else the installed systemd-boot-efi's; for another one, Debian's
/// systemd-boot-efi of that architecture, fetched into the cache.
pub fn stub(arch: Arch, cache: &Cache) -> Result<Stub, BuildError> {
    let name = efi_arch(arch).stub;
    let own = format!("MINKE_EFI_STUB_{}", arch.name().to_ascii_uppercase());
    let host = Arch::host() == Some(arch);
    let given = std::env::var_os(&own)
        .or_else(|| host.then(|| std::env::var_os("MINKE_EFI_STUB")).flatten());
    if given.is_some() || host {
        let at = given
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new("/").join(STUB_DIR).join(name));
        let bytes = std::fs::read(&at).map_err(|e| {
            BuildError::Other(format!(
                "the UKI format needs systemd's EFI stub at {}: {e} (install Debian's \
                 systemd-boot-efi, or set {own} to a {name})",
                at.display()
            ))
        })?;
        return Ok(Stub { bytes, from: at });
    }
    let deb = crate::sources::deb::pins::fetch(cache, "systemd-boot-efi", arch.debian()).map_err(
        |e| {
            BuildError::Other(format!(
                "the UKI format for {arch} needs systemd's {name}, from Debian's \
                 systemd-boot-efi:{}: {e}",
                arch.debian()
            ))
        },
    )?;
    let debs = cache.dir("debs");
    let tmp = tempfile::Builder::new()
        .prefix(".minke-stub-")
        .tempdir_in(&debs)
        .map_err(io_err(&debs))?;
    crate::sources::deb::unpack_to_dir(&deb.path, tmp.path())
        .map_err(|e| BuildError::Other(format!("{}: {e}", deb.path.display())))?;
    let inside = tmp.path().join(STUB_DIR).join(name);
    // The package's own file, never what a link in it points at.
    if !std::fs::symlink_metadata(&inside).is_ok_and(|m| m.file_type().is_file()) {
        return Err(BuildError::Other(format!(
            "{} has no regular file {STUB_DIR}/{name}",
            deb.path.display()
        )));
    }
    let bytes = std::fs::read(&inside).map_err(|e| {
        BuildError::Other(format!(
            "{} has no {STUB_DIR}/{name}: {e}",
            deb.path.display()
        ))
    })?;
    Ok(Stub {
        bytes,
        from: deb.path,
    })
}

/// The kernel as a UKI carries it: an EFI application the stub can start. A gzip-compressed
/// kernel (an arm64 `Image.gz`, which boot loaders such as GRUB inflate; systemd's stub does
/// not) is inflated; anything else goes in as it is (Debian's arm64 `vmlinuz` is already an
/// uncompressed `Image` with its EFI stub).
fn uki_kernel(kernel: Vec<u8>, path: &Path) -> Result<Vec<u8>, BuildError> {
    use std::io::Read;
    if !kernel.starts_with(&[0x1f, 0x8b]) {
        return Ok(kernel);
    }
    const LIMIT: u64 = 512 << 20;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(&kernel[..])
        .take(LIMIT + 1)
        .read_to_end(&mut out)
        .map_err(|e| BuildError::Other(format!("{}: cannot inflate it: {e}", path.display())))?;
    if out.len() as u64 > LIMIT {
        return Err(BuildError::Other(format!(
            "{}: inflates to over {} MiB, more than any kernel",
            path.display(),
            LIMIT >> 20
        )));
    }
    Ok(out)
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

/// The bytes of the image's UKI, made on `stub` (from [`stub`] for the image's architecture).
pub fn uki_bytes(image: &Image, stub: &Stub) -> Result<Vec<u8>, BuildError> {
    let arch = image_arch(image)?;
    let kernel = uki_kernel(
        std::fs::read(&image.kernel).map_err(io_err(&image.kernel))?,
        &image.kernel,
    )?;
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
    pe::add_sections(&stub.bytes, &sections, efi_arch(arch).pe_machine)
        .map_err(|e| BuildError::Other(format!("{}: {e}", stub.from.display())))
}

/// Writes `NAME.efi` beside the image from its UKI's bytes ([`uki_bytes`]).
pub fn write_uki(image: &Image, bytes: &[u8]) -> Result<PathBuf, BuildError> {
    let path = output_path(image, "efi");
    super::outputs::write_if_changed(&path, bytes, &crate::layer::sha256_hex(bytes))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gzip_kernel_goes_into_the_uki_inflated_and_others_as_they_are() {
        use std::io::Write;
        let image = b"MZ\0\0an arm64 Image with its EFI stub".repeat(100);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&image).unwrap();
        let gz = gz.finish().unwrap();
        let p = Path::new("vmlinuz");
        assert_eq!(uki_kernel(gz.clone(), p).unwrap(), image);
        assert_eq!(uki_kernel(image.clone(), p).unwrap(), image);
        let e = uki_kernel(gz[..gz.len() / 2].to_vec(), p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("vmlinuz: cannot inflate"), "{e}");
    }

    #[test]
    fn each_architecture_boots_from_its_own_file() {
        assert_eq!(efi_arch(Arch::X86_64).boot_file, "EFI/BOOT/BOOTX64.EFI");
        let a = efi_arch(Arch::Aarch64);
        assert_eq!(
            (a.boot_file, a.stub, a.pe_machine),
            ("EFI/BOOT/BOOTAA64.EFI", "linuxaa64.efi.stub", 0xaa64)
        );
    }
}
