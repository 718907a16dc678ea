//! The kernel files of a Debian kernel image package: its release, `vmlinuz`, config and
//! modules tree, after unpacking it onto disk.

use std::path::{Path, PathBuf};

use crate::archive::tree::{Node, NodeKind, Tree};

use super::unpack::unpack_to_dir;
use super::DebError;

/// The files of a Debian kernel image package, unpacked on disk.
#[derive(Debug, Clone)]
pub struct KernelFiles {
    /// The kernel release, e.g. `6.1.0-56-cloud-amd64`.
    pub version: String,
    /// `boot/vmlinuz-VERSION`.
    pub vmlinuz: PathBuf,
    /// `boot/config-VERSION`.
    pub config: PathBuf,
    /// `lib/modules/VERSION` (or `usr/lib/modules/VERSION` on merged-usr packages).
    pub modules_dir: PathBuf,
    /// Everything the package holds, files pointing below the destination directory.
    pub tree: Tree,
}

/// Unpacks kernel package `deb` into `dest_dir` and locates its kernel, config and modules.
pub fn kernel_from_deb(deb: &Path, dest_dir: &Path) -> Result<KernelFiles, DebError> {
    let tree = unpack_to_dir(deb, dest_dir)?;
    let not_kernel = |what: String| DebError::NotKernel {
        deb: deb.to_path_buf(),
        what,
    };
    let versions: Vec<String> = tree
        .iter()
        .filter(|(_, n)| matches!(n.kind, NodeKind::File(_)))
        .filter_map(|(p, _)| p.strip_prefix("boot/vmlinuz-"))
        .filter(|v| !v.contains('/'))
        .map(str::to_string)
        .collect();
    let version = match versions.as_slice() {
        [v] => v.clone(),
        [] => return Err(not_kernel("it has no boot/vmlinuz-*".into())),
        many => {
            return Err(not_kernel(format!(
                "it has several kernels: {}",
                many.join(", ")
            )))
        }
    };
    let config = format!("boot/config-{version}");
    if tree.get(&config).is_none() {
        return Err(not_kernel(format!("{config} is missing")));
    }
    let modules = [
        format!("lib/modules/{version}"),
        format!("usr/lib/modules/{version}"),
    ]
    .into_iter()
    .find(|m| {
        matches!(
            tree.get(m),
            Some(Node {
                kind: NodeKind::Dir,
                ..
            })
        )
    })
    .ok_or_else(|| not_kernel(format!("lib/modules/{version} is missing")))?;
    Ok(KernelFiles {
        vmlinuz: dest_dir.join(format!("boot/vmlinuz-{version}")),
        config: dest_dir.join(config),
        modules_dir: dest_dir.join(modules),
        version,
        tree,
    })
}
