//! minke's image library: turns a spec into a bit-reproducible kernel + initramfs + manifest.
//!
//! The stages, in the order data flows through them: [`spec`] (parse and validate),
//! packages resolved into [`tree`]s by [`deb`], [`elf`], [`oci`] and the cargo producer,
//! cached as layers, kernel modules resolved by [`kmod`], and the merged tree archived by
//! [`cpio`] and [`compress`] into the initrd.

#![forbid(unsafe_code)]

pub mod binfmt;
pub mod compress;
pub mod cpio;
pub mod deb;
pub mod elf;
pub mod fuzzing;
pub mod hostdir;
pub mod image;
pub mod kbuild;
pub mod kconfig;
pub mod kmod;
pub mod layer;
pub mod oci;
pub mod package;
pub mod pins;
pub mod spec;
pub mod tree;

/// An error and its causes on one line, `outer: cause: root cause`, for a log line or a message
/// that must stand alone (the CLI prints an error's causes on lines of their own instead).
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}
