//! One entry point per decoder of untrusted input, shared by the cargo-fuzz targets in `fuzz/`
//! (coverage-guided, `cargo xtask fuzz`) and the seeded mutation test that CI runs
//! (`builder/tests/decoder_smoke.rs`). Each must return for any input, never panic.

use std::path::Path;

/// Spec YAML.
pub fn spec_parser(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::spec::parse(text, "fuzz.yml", Path::new("/nonexistent"));
    }
}

/// Package definition YAML.
pub fn package_parser(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::sources::package::parse("fuzz", Path::new("/nonexistent"), text);
    }
}

/// `.modinfo` records, raw and from an ELF module's section.
pub fn modinfo_parser(data: &[u8]) {
    let _ = crate::kernel::kmod::parse_modinfo(data);
    if let Ok(Some(section)) = crate::kernel::kmod::modinfo_section(data) {
        let _ = crate::kernel::kmod::parse_modinfo(section);
    }
}

/// The ELF dependency resolver on one (possibly mutated) binary in an empty root.
pub fn elf_resolver(data: &[u8]) {
    let Ok(root) = tempfile::tempdir() else {
        return;
    };
    elf_resolver_in(root.path(), data);
}

/// [`elf_resolver`] in a root the caller keeps across runs (a fuzzer saves a directory
/// creation and removal per input). Only `ROOT/bin` is written.
pub fn elf_resolver_in(root: &Path, data: &[u8]) {
    let bin = root.join("bin");
    if std::fs::write(&bin, data).is_err() {
        return;
    }
    let _ = crate::sources::elf::closure(root, &[bin], &crate::sources::elf::Options::default());
}

/// The newc reader `minke inspect` uses.
pub fn cpio_reader(data: &[u8]) {
    let _ = crate::archive::cpio::read(data);
}

/// A kernel's configuration: IKCONFIG in a bzImage or vmlinux, `.config` text, fragments.
pub fn kernel_config(data: &[u8]) {
    let _ = crate::kernel::kconfig::ikconfig(data);
    let text = String::from_utf8_lossy(data);
    let _ = crate::kernel::kconfig::KernelConfig::parse(&text);
    let _ = crate::kernel::kconfig::parse_fragment(Path::new("fuzz.config"), &text);
}

/// The image config the guest's init and agents decode (`/etc/minke/image.cfg`).
pub fn image_config(data: &[u8]) {
    let _ = minke_protocol::ImageConfig::decode(data);
}
