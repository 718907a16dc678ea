//! The kernel an image boots: which one ([`resolve`]: a Debian package, a path, or a kernel
//! built by [`kbuild`] from the fragments), whether it can run the image ([`check`], with its
//! config read and judged by [`kconfig`]), and the closure of the modules the image needs, in
//! load order ([`kmod`]); a bzImage's kernel unpacked for QEMU's direct PVH entry ([`pvh`]).

use std::path::PathBuf;

use crate::spec::SpecError;

pub mod check;
pub mod kbuild;
pub mod kconfig;
pub mod kmod;
pub mod pvh;
pub mod resolve;

pub use check::{
    boots_on_microvm, check_kernel, features, has_network, image_modules, kernel_report,
    microvm_modules, module_closure, net_modules, pci_only_modules, share_kinds, share_modules,
    DEFAULT_MODULES, IMAGE_MODULES, SHARE_MODULES,
};
pub use resolve::{
    is_modules_tree, kbuild_options, kernel_config_dir, kernel_from_package, modules_beside,
    release_from_file_name, resolve_kernel, ResolvedKernel,
};

/// Why a kernel could not be resolved, built, read or judged.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// Invalid spec (`minke kernel check` reads one).
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// The kernel cannot be used, with a message for the user.
    #[error("kernel: {0}")]
    Unusable(String),
    /// A Debian kernel package could not be resolved, fetched or unpacked.
    #[error("cannot get kernel package {package}")]
    Package {
        /// The package name as given.
        package: String,
        /// Why.
        source: crate::sources::deb::DebError,
    },
    /// The kernel could not be built from kernel-config/.
    #[error("cannot build the kernel from kernel-config/")]
    Build(#[source] kbuild::KbuildError),
    /// The kernel-config/ fragments could not be read.
    #[error("cannot read the kernel-config/ fragments")]
    Fragments(#[source] kconfig::KconfigError),
    /// The kernel's own configuration could not be read.
    #[error("cannot read the configuration of kernel {}", image.display())]
    Config {
        /// The kernel image.
        image: PathBuf,
        /// Why.
        source: kconfig::KconfigError,
    },
    /// Module resolution failed.
    #[error("kernel modules: {0}")]
    Modules(String),
    /// The module closure could not be computed from the kernel's modules tree.
    #[error("cannot resolve the image's kernel modules in {}", dir.display())]
    ModuleClosure {
        /// `lib/modules/VERSION`.
        dir: PathBuf,
        /// Why.
        source: kmod::KmodError,
    },
    /// A record could not be encoded.
    #[error("cannot encode {what} as JSON")]
    Json {
        /// Which record.
        what: &'static str,
        /// The encoder's error.
        source: serde_json::Error,
    },
    /// An I/O error on a named path.
    #[error("cannot access {}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

crate::error::into_io_variant!(KernelError);
