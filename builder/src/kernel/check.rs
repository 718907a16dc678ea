//! Whether a kernel can run an image: the modules the image needs (in load order) and the
//! kernel's config judged against the `kernel-config/` fragments for the image's features.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use minke_protocol::config::AgentKind;

use super::resolve::{
    kernel_config_dir, kernel_from_package, modules_beside, release_from_file_name, resolve_kernel,
    ResolvedKernel,
};
use super::{kconfig, kmod, KernelError};
use crate::archive::compress::Compression;
use crate::layer::Cache;
use crate::spec::{self, Spec};

/// Modules every image with a modular kernel gets: virtio PCI, the vsock transport, the
/// ACPI power button with evdev (so PID1 sees QMP `system_powerdown`), and `qemu_fw_cfg` (the
/// per-VM secret reaches PID1 as a firmware config file). `virtio_blk` is added
/// when the spec declares data disks, `binfmt_misc` when the binfmt agent runs and
/// `virtio_console` when the serial agent does (the virtio-serial transport).
pub const DEFAULT_MODULES: &[&str] = &[
    "virtio_pci",
    "vmw_vsock_virtio_transport",
    "button",
    "evdev",
    "qemu_fw_cfg",
];

/// The GPIO controller and GPIO key driver through which `virt`'s power button reaches an
/// arm64 guest booted with a device tree; carried when the kernel has them as modules.
const ARM64_POWER_KEY_MODULES: &[&str] = &["gpio_pl061", "gpio_keys"];

/// Modules the image needs before the spec's own: the agents' transport, the power button,
/// and what the spec's features use.
fn wanted_modules(spec: &Spec) -> Vec<String> {
    let mut want: Vec<String> = DEFAULT_MODULES.iter().map(|s| s.to_string()).collect();
    if spec.agents.iter().any(|(k, _)| *k == AgentKind::Binfmt) {
        want.push("binfmt_misc".into());
    }
    if spec.agents.iter().any(|(k, _)| *k == AgentKind::Serial) {
        want.push("virtio_console".into());
    }
    if !spec.raw.disks.is_empty() {
        want.push("virtio_blk".into());
    }
    want.extend(spec.raw.modules.iter().cloned());
    want
}

/// The image's modules in load order (empty for a kernel without a modules directory; the
/// spec's own modules must then be built in, which [`kernel_report`] checks).
pub fn module_closure(
    spec: &Spec,
    kernel: &ResolvedKernel,
) -> Result<Vec<kmod::ModuleInfo>, KernelError> {
    let Some(mdir) = &kernel.modules_dir else {
        return Ok(Vec::new());
    };
    let mut want = wanted_modules(spec);
    if spec.raw.arch == "aarch64" {
        // The power button of an arm64 direct boot, where the kernel has it as a module
        // (Debian's generic kernel; the cloud kernel has no gpio-keys at all).
        let present = kconfig::module_names(mdir);
        want.extend(
            ARM64_POWER_KEY_MODULES
                .iter()
                .filter(|m| present.contains(&kconfig::module_key(m)))
                .map(|m| m.to_string()),
        );
    }
    let refs: Vec<&str> = want.iter().map(String::as_str).collect();
    kmod::closure(mdir, &refs).map_err(|source| KernelError::ModuleClosure {
        dir: mdir.clone(),
        source,
    })
}

/// Modules a boot loads only when the host shares directories with it: virtio-fs, and 9p over
/// virtio where the kernel has it (the 9p fallback of hosts without virtiofsd), in load order,
/// without those already in `closure`. Empty when the spec does not allow shares or the kernel
/// has no modules directory (whatever it supports is then built in, as the config check says).
pub fn share_modules(
    spec: &Spec,
    kernel: &ResolvedKernel,
    closure: &[kmod::ModuleInfo],
) -> Result<Vec<kmod::ModuleInfo>, KernelError> {
    on_demand(spec.raw.allow_shares, kernel, SHARE_MODULES, closure)
}

/// Modules a boot loads only when the host gives it a network card (virtio-net), in load
/// order, without those already in `closure`; empty when the spec does not allow networking
/// or the kernel has no modules directory.
pub fn net_modules(
    spec: &Spec,
    kernel: &ResolvedKernel,
    closure: &[kmod::ModuleInfo],
) -> Result<Vec<kmod::ModuleInfo>, KernelError> {
    on_demand(spec.raw.allow_network, kernel, &["virtio_net"], closure)
}

/// The modules [`image_modules`] starts from.
pub const IMAGE_MODULES: &[&str] = &["virtio_blk", "erofs", "overlay"];

/// Modules a boot loads only when the host attaches a container image to run (virtio-blk,
/// erofs, overlay), in load order, without those already in `closure`; empty when the spec
/// does not allow run images or the kernel has no modules directory.
pub fn image_modules(
    spec: &Spec,
    kernel: &ResolvedKernel,
    closure: &[kmod::ModuleInfo],
) -> Result<Vec<kmod::ModuleInfo>, KernelError> {
    on_demand(spec.raw.allow_images, kernel, IMAGE_MODULES, closure)
}

/// The closure of those of `names` the kernel's modules tree has, without what `closure`
/// already holds; empty unless `allowed` and the kernel has modules.
fn on_demand(
    allowed: bool,
    kernel: &ResolvedKernel,
    names: &[&str],
    closure: &[kmod::ModuleInfo],
) -> Result<Vec<kmod::ModuleInfo>, KernelError> {
    let Some(mdir) = kernel.modules_dir.as_ref().filter(|_| allowed) else {
        return Ok(Vec::new());
    };
    let present = kconfig::module_names(mdir);
    let want: Vec<&str> = names
        .iter()
        .copied()
        .filter(|m| present.contains(&kconfig::module_key(m)))
        .collect();
    if want.is_empty() {
        return Ok(Vec::new());
    }
    let all = kmod::closure(mdir, &want).map_err(|source| KernelError::ModuleClosure {
        dir: mdir.clone(),
        source,
    })?;
    Ok(all
        .into_iter()
        .filter(|m| !closure.iter().any(|c| c.name == m.name))
        .collect())
}

/// What a boot's kernel can do, module by module: a module the image carries, or, for a
/// kernel without modules, an option its config builds in (the config read once, and none
/// counted when it is unknown).
struct Support<'a> {
    kernel: &'a ResolvedKernel,
    carried: &'a [kmod::ModuleInfo],
    config: std::cell::OnceCell<Option<kconfig::KernelConfig>>,
}

impl<'a> Support<'a> {
    fn new(kernel: &'a ResolvedKernel, carried: &'a [kmod::ModuleInfo]) -> Self {
        Support {
            kernel,
            carried,
            config: std::cell::OnceCell::new(),
        }
    }

    fn has(&self, module: &str, option: &str) -> bool {
        if self.kernel.modules_dir.is_some() && self.carried.iter().any(|m| m.name == module) {
            return true;
        }
        self.built_in(option)
    }

    /// Whether the kernel's config builds `option` in (false when the config is unknown).
    fn built_in(&self, option: &str) -> bool {
        self.config
            .get_or_init(|| {
                let path = self.kernel.config.as_deref().unwrap_or(&self.kernel.image);
                kconfig::config_for(path).ok().map(|(c, _)| c)
            })
            .as_ref()
            .is_some_and(|c| c.get(option) == "y")
    }
}

/// Whether a boot of this image can take a network card: the spec allows it and virtio-net
/// is carried (or, for a kernel without modules, built in).
pub fn has_network(spec: &Spec, kernel: &ResolvedKernel, carried: &[kmod::ModuleInfo]) -> bool {
    spec.raw.allow_network && Support::new(kernel, carried).has("virtio_net", "CONFIG_VIRTIO_NET")
}

/// Whether the kernel boots on QEMU's x86_64 `microvm` machine: ACPI built in (it describes
/// microvm's devices, its power button and fw_cfg) and virtio over MMIO built in or among the
/// modules the image carries for it (`microvm_modules`, from [`microvm_modules`]).
pub fn boots_on_microvm(
    arch: minke_protocol::arch::Arch,
    kernel: &ResolvedKernel,
    microvm_modules: &[kmod::ModuleInfo],
) -> bool {
    if arch != minke_protocol::arch::Arch::X86_64 {
        return false;
    }
    let support = Support::new(kernel, microvm_modules);
    support.built_in("CONFIG_ACPI") && support.has("virtio_mmio", "CONFIG_VIRTIO_MMIO")
}

/// Modules a boot on QEMU's microvm loads besides the boot modules: virtio over MMIO where the
/// kernel has it as a module, in load order, without those already in `closure`.
pub fn microvm_modules(
    kernel: &ResolvedKernel,
    closure: &[kmod::ModuleInfo],
) -> Result<Vec<kmod::ModuleInfo>, KernelError> {
    on_demand(true, kernel, &["virtio_mmio"], closure)
}

/// The names of the boot modules (`closure`) that only virtio over PCI needs, which a boot on
/// microvm skips: those the image's wanted modules no longer pull in without `virtio_pci`.
pub fn pci_only_modules(
    spec: &Spec,
    kernel: &ResolvedKernel,
    closure: &[kmod::ModuleInfo],
) -> Result<Vec<String>, KernelError> {
    let Some(mdir) = &kernel.modules_dir else {
        return Ok(Vec::new());
    };
    if !closure.iter().any(|m| m.name == "virtio_pci") {
        return Ok(Vec::new());
    }
    let want: Vec<String> = wanted_modules(spec)
        .into_iter()
        .filter(|m| m != "virtio_pci")
        .collect();
    let refs: Vec<&str> = want.iter().map(String::as_str).collect();
    let without = kmod::closure(mdir, &refs).map_err(|source| KernelError::ModuleClosure {
        dir: mdir.clone(),
        source,
    })?;
    Ok(closure
        .iter()
        .filter(|m| !without.iter().any(|w| w.name == m.name))
        .map(|m| m.name.clone())
        .collect())
}

/// The kinds of share (`virtiofs`, `9p`) a boot of this image can mount: those whose modules
/// the image carries, or, for a kernel without modules, those its config builds in (none
/// when that config is unknown, or when the spec does not allow shares).
pub fn share_kinds(
    spec: &Spec,
    kernel: &ResolvedKernel,
    carried: &[kmod::ModuleInfo],
) -> Vec<String> {
    if !spec.raw.allow_shares {
        return Vec::new();
    }
    let support = Support::new(kernel, carried);
    let mut kinds = Vec::new();
    if support.has("virtiofs", "CONFIG_VIRTIO_FS") {
        kinds.push("virtiofs".to_owned());
    }
    if support.has("9p", "CONFIG_9P_FS") && support.has("9pnet_virtio", "CONFIG_NET_9P_VIRTIO") {
        kinds.push("9p".to_owned());
    }
    kinds
}

/// The modules [`share_modules`] starts from, where the kernel has them.
pub const SHARE_MODULES: &[&str] = &["virtiofs", "9pnet_virtio", "9p"];

/// The image features that make `@required-for` fragment options required.
pub fn features(spec: &Spec, compression: Compression) -> BTreeSet<kconfig::Feature> {
    let mut f = BTreeSet::new();
    match compression {
        Compression::Gzip => f.insert(kconfig::Feature::Gzip),
        Compression::Zstd => f.insert(kconfig::Feature::Zstd),
        Compression::None => false,
    };
    if !spec.raw.disks.is_empty() {
        f.insert(kconfig::Feature::Disks);
    }
    if spec.agents.iter().any(|(k, _)| *k == AgentKind::Binfmt) {
        f.insert(kconfig::Feature::Binfmt);
    }
    if !spec.raw.containers.is_empty() {
        f.insert(kconfig::Feature::Containers);
    }
    if spec.raw.allow_shares {
        f.insert(kconfig::Feature::Shares);
    }
    if spec.raw.allow_network {
        f.insert(kconfig::Feature::Network);
    }
    f
}

/// Checks the kernel's config against the default fragments for this image. `None` when the
/// kernel's config cannot be found (a bare image without IKCONFIG): that is logged, not fatal.
pub fn kernel_report(
    spec: &Spec,
    kernel: &ResolvedKernel,
    closure: &[kmod::ModuleInfo],
    compression: Compression,
) -> Result<Option<kconfig::Report>, KernelError> {
    let (config, source) = match &kernel.config {
        Some(c) => kconfig::config_for(c).map_err(|source| KernelError::Config {
            image: kernel.image.clone(),
            source,
        })?,
        None => match kconfig::config_for(&kernel.image) {
            Ok(x) => x,
            Err(e) if !spec.raw.modules.is_empty() && kernel.modules_dir.is_none() => {
                return Err(KernelError::Modules(format!(
                    "the spec asks for modules {:?} but the kernel has no modules directory, and \
                     its configuration is unknown ({})",
                    spec.raw.modules,
                    crate::error_chain(&e)
                )))
            }
            Err(e) => {
                tracing::warn!(
                    "cannot check the kernel's configuration: {}",
                    crate::error_chain(&e)
                );
                return Ok(None);
            }
        },
    };
    if let Some(arch) = kconfig::arch_of(&config).filter(|a| *a != spec.arch()) {
        return Err(KernelError::Unusable(format!(
            "{} is an {arch} kernel (its configuration says so) and the image is for {}: use \
             a kernel of that architecture, or set `arch: {arch}` in the spec",
            kernel.image.display(),
            spec.arch()
        )));
    }
    let dir = kernel_config_dir();
    let paths = kconfig::fragment_paths(&dir, &kconfig::default_fragments(&spec.raw.arch), &dir)
        .map_err(KernelError::Fragments)?;
    let mut reqs = kconfig::requirements(&paths).map_err(KernelError::Fragments)?;
    let ws = spec::workspace_dir();
    for r in &mut reqs {
        if let Ok(rel) = r.file.strip_prefix(&ws) {
            r.file = rel.to_path_buf();
        }
    }
    let modules = kconfig::Modules {
        in_image: closure
            .iter()
            .map(|m| kconfig::module_key(&m.name))
            .collect(),
        in_kernel: kernel.modules_dir.as_deref().map(kconfig::module_names),
        image_known: true,
    };
    if kernel.modules_dir.is_none() {
        // The spec's modules must be built in: each must name an option that is =y.
        for m in &spec.raw.modules {
            let key = kconfig::module_key(m);
            let built_in = reqs.iter().any(|r| {
                r.module.as_deref().map(kconfig::module_key).as_deref() == Some(key.as_str())
                    && config.get(&r.option) == "y"
            });
            if !built_in {
                return Err(KernelError::Modules(format!(
                    "the spec asks for module {m:?} but the kernel has no modules directory and \
                     no kernel-config/ option known to provide {m:?} is built in: drop it from \
                     `modules:`, or use a kernel with modules"
                )));
            }
        }
    }
    Ok(Some(kconfig::check(
        &config,
        &source,
        &reqs,
        &features(spec, compression),
        &modules,
    )))
}

/// `minke kernel check`: the report for `kernel` (a file, a Debian package name, or the
/// spec's own kernel when `None`) running the image of `spec` (the default spec when `None`;
/// then a kernel file is judged for the architecture its configuration names).
pub fn check_kernel(
    spec_path: Option<&Path>,
    kernel: Option<&str>,
    compression: Option<Compression>,
    cache: &Cache,
    progress: &dyn Fn(&str),
) -> Result<kconfig::Report, KernelError> {
    let mut spec = spec::load(spec_path)?;
    let resolved = match kernel {
        None => resolve_kernel(&spec, cache, crate::epoch_from_env(), progress)?,
        Some(k) if Path::new(k).exists() => {
            let image = PathBuf::from(k);
            if spec_path.is_none() {
                if let Some(arch) = kconfig::config_for(&image)
                    .ok()
                    .and_then(|(c, _)| kconfig::arch_of(&c))
                {
                    spec.retarget(arch);
                }
            }
            let version = release_from_file_name(&image).unwrap_or_default();
            let modules_dir = modules_beside(&image, &version);
            ResolvedKernel {
                image,
                modules_dir,
                config: None,
                version,
                source: format!("path {k}"),
            }
        }
        Some(k) if !k.contains('/') => kernel_from_package(k, cache, progress)?,
        Some(k) => return Err(KernelError::Unusable(format!("{k} does not exist"))),
    };
    let mut closure = module_closure(&spec, &resolved)?;
    let shares = share_modules(&spec, &resolved, &closure)?;
    closure.extend(shares);
    let net = net_modules(&spec, &resolved, &closure)?;
    closure.extend(net);
    let images = image_modules(&spec, &resolved, &closure)?;
    closure.extend(images);
    let compression = compression.unwrap_or(spec.raw.compression);
    kernel_report(&spec, &resolved, &closure, compression)?.ok_or_else(|| {
        KernelError::Unusable(format!(
            "no configuration found for {}: pass its .config or config-VERSION file",
            resolved.image.display()
        ))
    })
}
