//! What to boot and how: [`VmConfig`] and its parts.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use minke_protocol::DEFAULT_CMDLINE;

/// Everything [`crate::Vm::boot`] needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmConfig {
    /// Kernel image (a bzImage or vmlinux, an arm64 Image).
    pub kernel: PathBuf,
    /// Initramfs.
    pub initrd: PathBuf,
    /// Kernel command line ([`DEFAULT_CMDLINE`] is a good start).
    pub cmdline: String,
    /// Guest memory in MiB.
    pub mem_mib: u32,
    /// Virtual CPUs.
    pub cpus: u32,
    /// VM name: names its state directory, so two VMs with different names never clash.
    pub name: String,
    /// State directory; `None`: `$XDG_STATE_HOME/minke/NAME` (fallback `~/.local/state`).
    pub state_dir: Option<PathBuf>,
    /// Data disks (created and formatted ext4 on first use).
    pub disks: Vec<DiskSpec>,
    /// `(host_port, guest_port)`: host 127.0.0.1 TCP ports forwarded to guest TCP ports.
    pub publish: Vec<(u16, u16)>,
    /// How host and guest agents talk.
    pub transport: Transport,
    /// Accelerator.
    pub accel: Accel,
    /// Copy the serial console to the shim's stdout as well as to `console.log`.
    pub console_to_terminal: bool,
    /// Archives appended to the initrd for this boot (uncompressed newc, such as
    /// `minke run --add` makes): the kernel unpacks them after the image's, over its files.
    pub extra_initrds: Vec<PathBuf>,
    /// A container image's root filesystem (an EROFS image, such as `minke run --image`
    /// writes) attached read-only for this boot; the guest mounts it under an overlay and
    /// execs into it as the container `image` (see `minke_protocol::image`).
    pub run_image: Option<PathBuf>,
    /// The guest's network card.
    pub net: NetMode,
    /// Who serves a user-mode network.
    pub net_backend: NetBackend,
    /// Host directories shared with the guest, mounted before anything runs there.
    pub shares: Vec<ShareSpec>,
    /// How shares reach the guest.
    pub share_backend: ShareBackend,
    /// The kinds of share the guest can mount (an image's manifest says); `None`: unknown, so
    /// any is tried.
    pub guest_share_kinds: Option<Vec<minke_protocol::shares::ShareKind>>,
    /// Runtime config sent to the guest's `/run/config` right after it is ready:
    /// `(file name, contents)`; `minke run --env`/`--data` end up here.
    pub runtime_config: Vec<(String, Vec<u8>)>,
    /// The guest's architecture (an image's manifest says): which QEMU, which machine.
    pub arch: minke_protocol::arch::Arch,
    /// Boot through UEFI firmware from a release format (a UKI, a disk, an ISO) instead of
    /// handing QEMU the kernel and initrd: the kernel, initrd and command line are then the
    /// medium's own, and `kernel`/`initrd`/`cmdline`/`extra_initrds` are not used.
    pub efi: Option<EfiBoot>,
    /// Which QEMU machine boots the guest.
    pub machine: Machine,
    /// The kernel boots on QEMU's `microvm` machine (an image's manifest says): ACPI built in,
    /// virtio over MMIO built in or carried as a module. [`Machine::Auto`] then prefers it.
    pub microvm_kernel: bool,
    /// The same kernel as an ELF with a PVH entry point (x86_64), booted in its place on
    /// `microvm`: QEMU loads it and jumps in, skipping the firmware's real-mode start and the
    /// bzImage's decompressor (see `minke::kernel::pvh`).
    pub pvh_kernel: Option<PathBuf>,
}

/// Which QEMU machine boots the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Machine {
    /// `microvm` for a direct kernel boot of an x86_64 guest whose kernel can
    /// ([`VmConfig::microvm_kernel`]) and whose devices fit its virtio-mmio slots; otherwise
    /// the architecture's standard machine.
    Auto,
    /// The standard machine: `q35` on x86_64, `virt` on aarch64 (PCIe, firmware tables).
    Standard,
    /// QEMU's `microvm` (x86_64 only): no PCI, no firmware to probe, virtio over MMIO.
    Microvm,
}

/// A boot through UEFI firmware.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EfiBoot {
    /// The firmware image (OVMF's combined code and variables, such as Debian's
    /// `/usr/share/ovmf/OVMF.fd`; for aarch64 the code, `/usr/share/AAVMF/AAVMF_CODE.fd`).
    pub firmware: PathBuf,
    /// What the firmware boots.
    pub medium: EfiMedium,
}

/// Where the firmware finds the EFI application to start. The medium is never written: disks
/// and ISOs are attached read-only or with a throw-away overlay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EfiMedium {
    /// A Unified Kernel Image the firmware loads and starts itself (QEMU's `-kernel` under
    /// OVMF: no bootloader, no Linux boot protocol from QEMU).
    Uki(PathBuf),
    /// A disk with an EFI system partition (`EFI/BOOT/BOOTX64.EFI`, `BOOTAA64.EFI`), as the
    /// first boot device.
    Disk {
        /// The disk image.
        path: PathBuf,
        /// Its format.
        format: DiskFormat,
    },
    /// A bootable ISO on a CD-ROM drive.
    Cdrom(PathBuf),
}

/// Where Debian's `ovmf` package puts the x86_64 firmware.
pub const DEFAULT_OVMF: &str = "/usr/share/ovmf/OVMF.fd";
/// Where Debian's `qemu-efi-aarch64` package puts the aarch64 firmware's code (its variable
/// store starts blank on every boot: nothing a boot writes there is kept).
pub const DEFAULT_AAVMF: &str = "/usr/share/AAVMF/AAVMF_CODE.fd";

/// The UEFI firmware an `arch` guest boots with when none is named.
pub fn default_firmware(arch: minke_protocol::arch::Arch) -> &'static str {
    match arch {
        minke_protocol::arch::Arch::X86_64 => DEFAULT_OVMF,
        minke_protocol::arch::Arch::Aarch64 => DEFAULT_AAVMF,
    }
}

impl VmConfig {
    /// A config with defaults for everything but the image.
    pub fn new(
        name: impl Into<String>,
        kernel: impl Into<PathBuf>,
        initrd: impl Into<PathBuf>,
    ) -> Self {
        VmConfig {
            kernel: kernel.into(),
            initrd: initrd.into(),
            cmdline: DEFAULT_CMDLINE.into(),
            mem_mib: 512,
            cpus: 1,
            name: name.into(),
            state_dir: None,
            disks: Vec::new(),
            publish: Vec::new(),
            transport: Transport::Auto,
            accel: Accel::Auto,
            console_to_terminal: false,
            extra_initrds: Vec::new(),
            run_image: None,
            net: NetMode::None,
            net_backend: NetBackend::Auto,
            shares: Vec::new(),
            share_backend: ShareBackend::Auto,
            guest_share_kinds: None,
            runtime_config: Vec::new(),
            efi: None,
            arch: minke_protocol::arch::Arch::X86_64,
            machine: Machine::Auto,
            microvm_kernel: false,
            pvh_kernel: None,
        }
    }
}

/// The guest's network card.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NetMode {
    /// None: the guest talks to the host over vsock only.
    None,
    /// User-mode networking: outbound connections through the host's sockets, the host's
    /// loopback at the gateway address, no root needed.
    User,
}

/// Who serves user-mode networking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NetBackend {
    /// passt when installed, else QEMU's slirp.
    Auto,
    /// passt only.
    Passt,
    /// QEMU's slirp only.
    Slirp,
}

/// A host directory shared with the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareSpec {
    /// The host directory (must exist).
    pub host: PathBuf,
    /// Absolute guest path it is mounted at; `None`: the host directory's own path (with
    /// symlinks resolved).
    pub guest: Option<String>,
    /// Read-only: refused by the host side, and mounted read-only in the guest.
    pub readonly: bool,
}

impl ShareSpec {
    /// Parses `HOST_DIR[:GUEST_DIR][:ro|:rw]` (the guest path defaults to the host directory's
    /// own path; a host path with `:` in it cannot be given this way).
    pub fn parse(s: &str) -> Result<ShareSpec, String> {
        let mut parts: Vec<&str> = s.split(':').collect();
        let readonly = match parts.last() {
            Some(&"ro") if parts.len() > 1 => {
                parts.pop();
                true
            }
            Some(&"rw") if parts.len() > 1 => {
                parts.pop();
                false
            }
            _ => false,
        };
        let (host, guest) = match parts.as_slice() {
            [h] => (*h, None),
            [h, g] => (*h, Some(*g)),
            _ => {
                return Err(format!(
                    "share {s:?}: use HOST_DIR[:GUEST_DIR][:ro] (a path with `:` cannot be shared)"
                ))
            }
        };
        if host.is_empty() {
            return Err(format!("share {s:?} names no host directory"));
        }
        Ok(ShareSpec {
            host: PathBuf::from(host),
            guest: guest.map(str::to_owned),
            readonly,
        })
    }
}

/// How shares reach the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShareBackend {
    /// virtio-fs when virtiofsd is installed, else 9p (which needs a guest kernel with 9p).
    Auto,
    /// virtio-fs only (needs virtiofsd on the host).
    Virtiofs,
    /// 9p only (QEMU serves it; the guest kernel needs 9p and 9pnet_virtio).
    NineP,
}

/// A data disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskSpec {
    /// Filesystem label and virtio-blk serial (what the init mounts by).
    pub label: String,
    /// Image file on the host.
    pub path: PathBuf,
    /// Size in bytes when it has to be created.
    pub size: u64,
    /// Image format.
    pub format: DiskFormat,
}

/// Disk image format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DiskFormat {
    /// Plain bytes.
    Raw,
    /// QEMU copy-on-write.
    Qcow2,
}

impl DiskFormat {
    /// QEMU's name for it.
    pub fn qemu_name(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        }
    }
}

/// Host↔guest transport choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Transport {
    /// Best available: kernel vhost-vsock, then vhost-user, then virtio-serial.
    Auto,
    /// `vhost-vsock-pci` (needs a working `/dev/vhost-vsock`).
    VhostKernel,
    /// `vhost-user-vsock-pci` served by `vhost-device-vsock`.
    VhostUser,
    /// One virtio-serial port carrying multiplexed connections.
    Serial,
}

/// Accelerator choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Accel {
    /// KVM when it can really run this guest, TCG otherwise.
    Auto,
    /// KVM only.
    Kvm,
    /// TCG only.
    Tcg,
}
