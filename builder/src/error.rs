//! What the builder's error types share: an `Io { path, source }` variant, which a failed file
//! operation reaches as a [`PathIo`] (`map_err(io_err(path))?` inside the builder).

use std::io;
use std::path::{Path, PathBuf};

/// An I/O error and the path it happened at. Inside the builder it is on its way into a
/// module's error type: `?` turns it into that type's `Io` variant.
#[derive(Debug, thiserror::Error)]
#[error("cannot access {}", path.display())]
pub struct PathIo {
    /// Where.
    pub path: PathBuf,
    /// The OS error.
    #[source]
    pub source: io::Error,
}

/// For callers that report plain I/O errors (the path is left out, as such callers do).
impl From<PathIo> for io::Error {
    fn from(e: PathIo) -> Self {
        e.source
    }
}

/// For `map_err`: the I/O error happened at `path`.
pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> PathIo + '_ {
    move |source| PathIo {
        path: path.to_path_buf(),
        source,
    }
}

/// `impl From<PathIo>` for an error type with an `Io { path, source }` variant, written beside
/// the type: `crate::error::into_io_variant!(MyError);`.
macro_rules! into_io_variant {
    ($($t:ty),+ $(,)?) => {$(
        impl From<$crate::error::PathIo> for $t {
            fn from(e: $crate::error::PathIo) -> Self {
                Self::Io {
                    path: e.path,
                    source: e.source,
                }
            }
        }
    )+};
}
pub(crate) use into_io_variant;
