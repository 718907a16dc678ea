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
pub mod remote;
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

/// A Unix time as UTC calendar parts, for the formats that spell SOURCE_DATE_EPOCH out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Civil {
    /// Year.
    pub year: i64,
    /// Month, 1–12.
    pub month: u32,
    /// Day of the month, 1–31.
    pub day: u32,
    /// Seconds since midnight.
    pub secs: u32,
    /// Days since 1970-01-01 (a Thursday).
    pub days: i64,
}

impl Civil {
    /// The calendar parts of `epoch` (proleptic Gregorian, 400-year eras).
    pub fn of(epoch: u64) -> Civil {
        let days = (epoch / 86_400) as i64;
        let secs = (epoch % 86_400) as u32;
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = yoe + era * 400 + i64::from(month <= 2);
        Civil {
            year,
            month,
            day,
            secs,
            days,
        }
    }
}
