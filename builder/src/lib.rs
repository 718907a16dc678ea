//! minke's image library: turns a spec into a bit-reproducible kernel + initramfs + manifest.
//!
//! The stages, in the order data flows through them: [`spec`] (parse and validate), packages
//! turned into trees by their [`sources`] (Debian, host ELF closure, directory, OCI image,
//! cargo), cached as [`layer`]s, the [`kernel`] checked or built and its modules resolved, and
//! the merged tree made into the initrd by [`archive`]. [`image`] runs that pipeline and
//! writes the outputs.

#![forbid(unsafe_code)]

pub mod archive;
pub mod error;
pub mod fsutil;
pub mod fuzzing;
pub mod image;
pub mod kernel;
pub mod layer;
pub mod sources;
pub mod spec;

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

/// Timestamp used when SOURCE_DATE_EPOCH is unset (2024-01-01T00:00:00Z).
pub const DEFAULT_EPOCH: u64 = 1_704_067_200;

/// SOURCE_DATE_EPOCH, or [`DEFAULT_EPOCH`].
pub fn epoch_from_env() -> u64 {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_EPOCH)
}
