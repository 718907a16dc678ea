//! Kernel modules, loaded in the order the builder resolved with finit_module(2).

use std::ffi::CString;

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

use crate::console::log;
use minke_protocol::config::{ImageConfig, Module, MICROVM_PARAM};

/// `MODULE_INIT_COMPRESSED_FILE`: the kernel decompresses the file (CONFIG_MODULE_DECOMPRESS).
const MODULE_INIT_COMPRESSED_FILE: i32 = 4;

/// Outcome of loading one module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loaded {
    /// Inserted now.
    Inserted,
    /// Was already there (built in or loaded before).
    AlreadyThere,
    /// Failed; logged.
    Failed,
}

/// Whether a module file is compressed, judged by its name.
pub fn is_compressed(path: &str) -> bool {
    [".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .any(|s| path.ends_with(s))
}

/// The modules this boot loads before the agents start: the image's boot modules, except, on
/// QEMU's microvm ([`MICROVM_PARAM`] on the kernel command line), those that serve virtio over
/// PCI only, which are replaced by the image's microvm modules (virtio over MMIO).
pub fn for_this_boot(cfg: &ImageConfig) -> Vec<Module> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    select(cfg, cmdline.split_whitespace().any(|w| w == MICROVM_PARAM))
}

fn select(cfg: &ImageConfig, microvm: bool) -> Vec<Module> {
    if !microvm {
        return cfg.modules.clone();
    }
    cfg.modules
        .iter()
        .filter(|m| !cfg.pci_modules.contains(&m.name))
        .chain(&cfg.microvm_modules)
        .cloned()
        .collect()
}

/// Loads `modules` in order, calling `done` after each; a failure is logged and the next module
/// is tried.
pub fn load_all(modules: &[Module], mut done: impl FnMut(&Module, Loaded)) -> Vec<Loaded> {
    modules
        .iter()
        .map(|m| {
            let res = load(m);
            done(m, res);
            res
        })
        .collect()
}

fn load(m: &Module) -> Loaded {
    let fd = match rustix::fs::open(&*m.path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()) {
        Ok(fd) => fd,
        Err(e) => {
            log!("module {}: cannot open {}: {e}", m.name, m.path);
            return Loaded::Failed;
        }
    };
    let Ok(params) = CString::new(m.params.as_bytes()) else {
        log!("module {}: parameters contain a NUL byte", m.name);
        return Loaded::Failed;
    };
    let compressed = is_compressed(&m.path);
    let flags = if compressed {
        MODULE_INIT_COMPRESSED_FILE
    } else {
        0
    };
    match rustix::system::finit_module(&fd, &params, flags) {
        Ok(()) => Loaded::Inserted,
        Err(Errno::EXIST) => Loaded::AlreadyThere,
        Err(e @ (Errno::INVAL | Errno::OPNOTSUPP)) if compressed => {
            log!(
                "module {}: kernel refused compressed {} ({e}): it lacks CONFIG_MODULE_DECOMPRESS, ship the module uncompressed",
                m.name, m.path
            );
            Loaded::Failed
        }
        Err(e) => {
            log!("module {}: {e}", m.name);
            Loaded::Failed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn microvm_boots_skip_the_pci_modules_and_load_mmio() {
        let m = |n: &str| Module {
            name: n.into(),
            path: format!("/lib/modules/{n}.ko"),
            params: String::new(),
        };
        let cfg = ImageConfig {
            modules: vec![m("virtio"), m("virtio_pci"), m("vsock")],
            pci_modules: vec!["virtio_pci".into()],
            microvm_modules: vec![m("virtio_mmio")],
            ..Default::default()
        };
        let names = |v: Vec<Module>| v.into_iter().map(|m| m.name).collect::<Vec<_>>();
        assert_eq!(
            names(select(&cfg, false)),
            ["virtio", "virtio_pci", "vsock"]
        );
        assert_eq!(
            names(select(&cfg, true)),
            ["virtio", "vsock", "virtio_mmio"]
        );
    }

    #[test]
    fn compressed_names() {
        assert!(is_compressed("/lib/modules/a.ko.xz"));
        assert!(is_compressed("/lib/modules/a.ko.zst"));
        assert!(!is_compressed("/lib/modules/a.ko"));
    }

    #[test]
    fn a_missing_module_file_fails_without_panicking() {
        let m = Module {
            name: "nope".into(),
            path: "/nonexistent/nope.ko".into(),
            params: String::new(),
        };
        let mut seen = Vec::new();
        let res = load_all(&[m], |m, r| seen.push((m.name.clone(), r)));
        assert_eq!(res, vec![Loaded::Failed]);
        assert_eq!(seen, vec![("nope".to_owned(), Loaded::Failed)]);
    }
}
