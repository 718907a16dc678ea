//! Everything an image holds, resolved and merged in memory: the packages' layers in the spec's
//! order, the kernel and its module closure (checked against the image's needs), the spec's own
//! files and the image config. Nothing is written here.

use std::collections::BTreeMap;

use minke_protocol::config::{self as cfg, ImageConfig};

use super::config::image_config;
use super::manifest::LayerRef;
use super::{BuildError, BuildOptions};
use crate::archive::tree::{FileData, Node, NodeKind, Tree};
use crate::error::io_err;
use crate::kernel::{self, KernelError, ResolvedKernel};
use crate::layer::{records_digest, records_of};
use crate::sources::oci::registry::Registry;
use crate::sources::package;
use crate::spec::{self, FileWhat, Spec};

/// Everything [`build`] computed before writing outputs (exposed for tests and `inspect`).
pub struct Assembled {
    /// The merged tree.
    pub tree: Tree,
    /// The init's config.
    pub config: ImageConfig,
    /// Layers in merge order.
    pub layers: Vec<LayerRef>,
    /// The kernel.
    pub kernel: ResolvedKernel,
    /// The validated spec.
    pub spec: Spec,
    /// The kinds of share a boot can mount (see [`kernel::share_kinds`]).
    pub share_kinds: Vec<String>,
    /// Whether a boot can take a network card (see [`kernel::has_network`]).
    pub network: bool,
    /// Whether the kernel boots on QEMU's microvm (see [`kernel::boots_on_microvm`]).
    pub microvm: bool,
    /// Which layer each path of the tree comes from.
    pub owners: BTreeMap<String, String>,
    /// The cache keys of the packages' layers (what `--cache-to` shares).
    pub layer_keys: Vec<String>,
}

/// When a carried module is loaded.
#[derive(Clone, Copy)]
enum OnDemand {
    /// At every boot.
    Always,
    /// When the host shares directories.
    Shares,
    /// When the host gives a network card.
    Network,
    /// When the host attaches a container image to run.
    Image,
    /// When the guest boots on QEMU's microvm.
    Microvm,
}

/// The lock file of the spec at `spec`: `NAME.lock` beside `NAME.yml`.
pub fn lock_path(spec: &std::path::Path) -> std::path::PathBuf {
    spec.with_extension("lock")
}

/// Resolves a spec into the merged tree and config without archiving.
pub fn assemble(opts: &BuildOptions, progress: &dyn Fn(&str)) -> Result<Assembled, BuildError> {
    let mut spec = spec::load(opts.spec.as_deref())?;
    if let Some(a) = opts.arch {
        spec.retarget(a);
    }
    if let Some(k) = &opts.kernel {
        spec.raw.kernel = k.clone();
    }
    let workspace = spec::workspace_dir();
    let search = package::search_path(&spec.base_dir, &workspace);
    let lock = opts.spec.as_deref().map(lock_path);
    let registry = Registry::new(opts.cache.clone(), opts.registry.clone(), lock.as_deref())?;
    let cache_from = opts
        .cache_from
        .as_deref()
        .map(crate::remote::RemoteCache::new)
        .transpose()
        .map_err(|e| BuildError::Other(format!("--cache-from {e}")))?;
    let cx = package::Context {
        cache: &opts.cache,
        workspace: &workspace,
        epoch: opts.epoch,
        progress,
        registry: &registry,
        cache_from: cache_from.as_ref(),
        arch: spec.arch(),
    };

    // Packages, init first; the merge order is the spec's.
    let mut names: Vec<(String, bool)> = vec![(spec.raw.init.clone(), false)];
    names.extend(spec.packages.iter().cloned());
    for c in &spec.raw.containers {
        if !names.iter().any(|(n, _)| n == &c.package) {
            names.push((c.package.clone(), false));
        }
    }
    let mut tree = Tree::new();
    let mut owner: BTreeMap<String, String> = BTreeMap::new();
    let mut layers = Vec::new();
    let mut layer_keys = Vec::new();
    let mut containers = Vec::new();
    for (name, overrides) in &names {
        let pkg = package::load(name, &search)?;
        let layer = package::produce(&pkg, &cx)?;
        layer_keys.push(layer.record.key.clone());
        merge(&mut tree, &mut owner, &layer.tree, name, *overrides)?;
        layers.push(LayerRef {
            name: name.clone(),
            digest: layer.record.digest.clone(),
            components: layer.record.components.clone(),
        });
        for c in spec.raw.containers.iter().filter(|c| &c.package == name) {
            let rootfs = match &pkg.source {
                package::Source::Oci(o) => Some(o.dest.clone()),
                package::Source::Dir(d) => d.dest.clone(),
                _ => None,
            }
            .ok_or_else(|| {
                BuildError::Other(format!(
                    "container {:?}: package {name} is not an oci or dir package with a dest",
                    c.name
                ))
            })?;
            containers.push(cfg::Container {
                name: c.name.clone(),
                rootfs,
            });
        }
    }

    if registry.save_lock()? {
        if let Some(l) = &lock {
            progress(&format!("wrote {}", l.display()));
        }
    }

    // Kernel and modules, then the kernel's config checked against what this image needs.
    let kernel = kernel::resolve_kernel(&spec, &opts.cache, opts.epoch, progress)?;
    let closure = kernel::module_closure(&spec, &kernel)?;
    let share_closure = kernel::share_modules(&spec, &kernel, &closure)?;
    let before_net: Vec<_> = closure.iter().chain(&share_closure).cloned().collect();
    let net_closure = kernel::net_modules(&spec, &kernel, &before_net)?;
    let before_images: Vec<_> = before_net.iter().chain(&net_closure).cloned().collect();
    let image_closure = kernel::image_modules(&spec, &kernel, &before_images)?;
    let before_microvm: Vec<_> = before_images
        .iter()
        .chain(&image_closure)
        .cloned()
        .collect();
    let microvm_closure = if spec.arch() == minke_protocol::arch::Arch::X86_64 {
        kernel::microvm_modules(&kernel, &before_microvm)?
    } else {
        Vec::new()
    };
    let pci_modules = kernel::pci_only_modules(&spec, &kernel, &closure)?;
    let compression = opts.compression.unwrap_or(spec.raw.compression);
    let carried: Vec<_> = before_images
        .iter()
        .chain(&image_closure)
        .cloned()
        .collect();
    let share_kinds = kernel::share_kinds(&spec, &kernel, &carried);
    let network = kernel::has_network(&spec, &kernel, &carried);
    let microvm = kernel::boots_on_microvm(spec.arch(), &kernel, &microvm_closure);
    if let Some(report) = kernel::kernel_report(&spec, &kernel, &carried, compression)? {
        if report.fatal() {
            return Err(BuildError::Kernel(KernelError::Unusable(format!(
                "the kernel cannot run this image:\n{}",
                report.render(false)
            ))));
        }
    }
    let mut module_list = Vec::new();
    let mut share_list = Vec::new();
    let mut net_list = Vec::new();
    let mut image_list = Vec::new();
    let mut microvm_list = Vec::new();
    if let Some(mdir) = &kernel.modules_dir {
        let mut mods = Tree::new();
        let on_boot = closure.iter().map(|m| (m, OnDemand::Always));
        let on_share = share_closure.iter().map(|m| (m, OnDemand::Shares));
        let on_net = net_closure.iter().map(|m| (m, OnDemand::Network));
        let on_image = image_closure.iter().map(|m| (m, OnDemand::Image));
        let on_microvm = microvm_closure.iter().map(|m| (m, OnDemand::Microvm));
        for (m, when) in on_boot
            .chain(on_share)
            .chain(on_net)
            .chain(on_image)
            .chain(on_microvm)
        {
            let rel = m.path.to_string_lossy().into_owned();
            let image_path = format!("lib/modules/{}/{rel}", kernel.version);
            let src = mdir.join(&m.path);
            let size = std::fs::metadata(&src).map_err(io_err(&src))?.len();
            mods.insert(
                &image_path,
                Node {
                    mode: 0o644,
                    uid: 0,
                    gid: 0,
                    kind: NodeKind::File(FileData::Path { path: src, size }),
                },
            )?;
            let module = cfg::Module {
                name: m.name.clone(),
                path: format!("/{image_path}"),
                params: String::new(),
            };
            match when {
                OnDemand::Always => module_list.push(module),
                OnDemand::Shares => share_list.push(module),
                OnDemand::Network => net_list.push(module),
                OnDemand::Image => image_list.push(module),
                OnDemand::Microvm => microvm_list.push(module),
            }
        }
        let recs = records_of(&mods).map_err(|source| BuildError::Hash {
            what: "the kernel modules",
            source,
        })?;
        merge(&mut tree, &mut owner, &mods, "kernel-modules", false)?;
        layers.push(LayerRef {
            name: "kernel-modules".into(),
            digest: records_digest(&recs),
            components: Vec::new(),
        });
    }

    // The spec's own files, then the config.
    let mut own = Tree::new();
    for f in &spec.files {
        let kind = match &f.what {
            FileWhat::Contents(c) => NodeKind::File(FileData::Inline(c.as_bytes().into())),
            FileWhat::Source(p) => {
                let size = std::fs::metadata(p).map_err(io_err(p))?.len();
                NodeKind::File(FileData::Path {
                    path: p.clone(),
                    size,
                })
            }
            FileWhat::Symlink(t) => NodeKind::Symlink(t.clone()),
            FileWhat::Directory => NodeKind::Dir,
        };
        own.insert(
            &f.path,
            Node {
                mode: f.mode,
                uid: f.uid,
                gid: f.gid,
                kind,
            },
        )?;
    }
    for d in [
        "proc",
        "sys",
        "dev",
        "run",
        "tmp",
        "var",
        "root",
        "etc/minke",
    ] {
        if own.get(d).is_none() && tree.get(d).is_none() {
            own.insert(d, Node::dir(if d == "tmp" { 0o1777 } else { 0o755 }))?;
        }
    }
    for d in &spec.raw.disks {
        if own.get(&d.mountpoint).is_none() && tree.get(&d.mountpoint).is_none() {
            own.insert(&d.mountpoint, Node::dir(0o755))?;
        }
    }
    let mut config = image_config(&spec, module_list, containers);
    config.share_modules = share_list;
    config.net_modules = net_list;
    config.image_modules = image_list;
    config.microvm_modules = microvm_list;
    config.pci_modules = pci_modules;
    // The init and agents read the compact form; the JSON copy is for people and `Info`.
    let json = serde_json::to_vec_pretty(&config).map_err(|source| BuildError::Json {
        what: "the image config",
        source,
    })?;
    own.insert(minke_protocol::IMAGE_CONFIG_PATH, Node::file(0o644, json))?;
    own.insert(
        minke_protocol::IMAGE_CONFIG_BIN_PATH,
        Node::file(0o644, config.encode()),
    )?;
    let recs = records_of(&own).map_err(|source| BuildError::Hash {
        what: "the spec's files",
        source,
    })?;
    // The spec's files may deliberately replace package files.
    merge(&mut tree, &mut owner, &own, "spec", true)?;
    layers.push(LayerRef {
        name: "spec".into(),
        digest: records_digest(&recs),
        components: Vec::new(),
    });
    Ok(Assembled {
        layer_keys,
        owners: owner,
        share_kinds,
        network,
        microvm,
        tree,
        config,
        layers,
        kernel,
        spec,
    })
}

/// Merges `layer` into `tree`; a path written twice with different content is an error unless
/// the later layer overrides. Directories merge (the later one's metadata wins).
fn merge(
    tree: &mut Tree,
    owner: &mut BTreeMap<String, String>,
    layer: &Tree,
    name: &str,
    overrides: bool,
) -> Result<(), BuildError> {
    for (path, node) in layer.iter() {
        if let Some(old) = tree.get(path) {
            let same = match (&old.kind, &node.kind) {
                (NodeKind::Dir, NodeKind::Dir) => true,
                (NodeKind::File(a), NodeKind::File(b)) => old.mode == node.mode && same_data(a, b),
                (a, b) => a == b && old.mode == node.mode,
            };
            if !same && !overrides {
                return Err(BuildError::Conflict {
                    path: format!("/{path}"),
                    first: owner
                        .get(path)
                        .cloned()
                        .unwrap_or_else(|| "an earlier layer".into()),
                    second: name.to_string(),
                });
            }
            if matches!((&old.kind, &node.kind), (NodeKind::Dir, NodeKind::Dir)) && !overrides {
                continue;
            }
        }
        tree.insert(path, node.clone())?;
        owner.insert(path.clone(), name.to_string());
    }
    Ok(())
}

fn same_data(a: &FileData, b: &FileData) -> bool {
    if a == b {
        return true;
    }
    if a.size() != b.size() {
        return false;
    }
    matches!((a.read(), b.read()), (Ok(x), Ok(y)) if x == y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn conflicting_layers_are_an_error_unless_overridden() {
        let mut tree = Tree::new();
        let mut owner = BTreeMap::new();
        let mut a = Tree::new();
        a.insert("bin/sh", Node::file(0o755, &b"a"[..])).unwrap();
        let mut b = Tree::new();
        b.insert("bin/sh", Node::file(0o755, &b"b"[..])).unwrap();
        merge(&mut tree, &mut owner, &a, "pa", false).unwrap();
        merge(&mut tree, &mut owner, &a, "pa2", false).unwrap();
        let err = merge(&mut tree, &mut owner, &b, "pb", false).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("/bin/sh") && msg.contains("pa2") && msg.contains("pb"),
            "{msg}"
        );
        merge(&mut tree, &mut owner, &b, "pb", true).unwrap();
        assert_eq!(
            tree.get("bin/sh").unwrap().kind,
            b.get("bin/sh").unwrap().kind
        );
    }
}
