//! The raw stage of a spec: exactly the YAML, unknown fields denied. These types are also the
//! source of the JSON schema `minke spec schema` prints.

use std::collections::BTreeMap;
use std::path::PathBuf;

use minke_protocol::config::{AgentKind, OnFailure, Readiness, Restart};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::archive::compress::Compression;

/// An image spec as written in YAML.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSpec {
    /// Image name; outputs are NAME-kernel, NAME-initrd.img, NAME-cmdline, NAME.manifest.json.
    pub name: String,
    /// Guest architecture: `x86_64` (the default) or `aarch64`; an aarch64 image gets
    /// Debian's arm64 cloud kernel and a ttyAMA0 console unless the spec names others.
    #[serde(default = "default_arch")]
    pub arch: String,
    /// Which kernel to boot.
    #[serde(default)]
    pub kernel: RawKernel,
    /// Kernel command line (default: `minke_protocol::DEFAULT_CMDLINE`).
    #[serde(default = "default_cmdline")]
    pub cmdline: String,
    /// Extra kernel modules to load at boot (their dependencies are added).
    #[serde(default)]
    pub modules: Vec<String>,
    /// Package that provides /init (default `minke-init`).
    #[serde(default = "default_init")]
    pub init: String,
    /// Agents to run: `control`, `timesync`, `binfmt`, `serial`, or `{kind, port}`. `serial`
    /// (the guest end of the virtio-serial transport) is added to any image with `control` or
    /// `timesync` when `transports` includes `serial`, so the image boots whatever transport
    /// the host falls back to.
    #[serde(default)]
    pub agents: Vec<RawAgent>,
    /// Host transports the image answers on: `vsock` and `serial` (default both). Leaving out
    /// `serial` drops the serial agent and virtio_console, for the smallest images; such an
    /// image needs a host with vsock.
    #[serde(default = "default_transports")]
    pub transports: Vec<String>,
    /// Whether `minke run --share` can mount host directories in this image: the share
    /// modules (virtio-fs, and 9p where the kernel has it) come along and are loaded only on a
    /// boot that has shares. Default true; `false` keeps a minimal image smaller.
    #[serde(default = "default_true")]
    pub allow_shares: bool,
    /// Whether `minke run --net user` can give this image a network card: virtio-net comes
    /// along and is loaded only on a boot that has one. Default true; `false` keeps a minimal
    /// image smaller.
    #[serde(default = "default_true")]
    pub allow_network: bool,
    /// Whether `minke run --image REF` can run a container image in this image: virtio-blk,
    /// erofs and overlay come along and are loaded only on a boot that runs one. Default
    /// true; `false` keeps a minimal image smaller.
    #[serde(default = "default_true")]
    pub allow_images: bool,
    /// The network a `minke run` of this image gets unless `--net` says otherwise: `none`
    /// (the default: vsock only) or `user` (user-mode networking).
    #[serde(default)]
    pub network: RawNetwork,
    /// Tasks run in order at boot before services.
    #[serde(default)]
    pub onboot: Vec<RawTask>,
    /// Supervised long-running services.
    #[serde(default)]
    pub services: Vec<RawService>,
    /// Tasks run in order at shutdown.
    #[serde(default)]
    pub onshutdown: Vec<RawTask>,
    /// Individual files, directories and symlinks.
    #[serde(default)]
    pub files: Vec<RawFile>,
    /// Packages (directories under `packages/`) whose files go into the image.
    #[serde(default)]
    pub packages: Vec<RawPackageRef>,
    /// Data disks mounted by the init.
    #[serde(default)]
    pub disks: Vec<RawDisk>,
    /// QEMU user emulators to register with binfmt_misc (`aarch64`, `arm`, `s390x`…).
    #[serde(default)]
    pub binfmt: Vec<String>,
    /// Root filesystems inside the image the control agent can exec into.
    #[serde(default)]
    pub containers: Vec<RawContainer>,
    /// Hostname (default: the image name).
    #[serde(default)]
    pub hostname: Option<String>,
    /// sysctl settings.
    #[serde(default)]
    pub sysctls: BTreeMap<String, String>,
    /// Initramfs compression.
    #[serde(default)]
    pub compression: Compression,
    /// Milliseconds between SIGTERM and SIGKILL at shutdown.
    #[serde(default = "default_grace")]
    pub shutdown_grace_ms: u64,
}

fn default_transports() -> Vec<String> {
    vec!["vsock".into(), "serial".into()]
}

fn default_true() -> bool {
    true
}
fn default_arch() -> String {
    "x86_64".into()
}
fn default_cmdline() -> String {
    minke_protocol::DEFAULT_CMDLINE.into()
}
fn default_init() -> String {
    "minke-init".into()
}
fn default_grace() -> u64 {
    5000
}

/// Kernel selection.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, untagged)]
pub enum RawKernel {
    /// A Debian kernel package, fetched into the cache.
    Package {
        /// Package name, e.g. `linux-image-cloud-amd64`.
        package: String,
    },
    /// A kernel image on disk and its modules directory.
    Path {
        /// Path of the kernel (bzImage, vmlinuz, arm64 Image).
        path: PathBuf,
        /// `lib/modules/VERSION` directory (optional for kernels without modules).
        #[serde(default)]
        modules: Option<PathBuf>,
    },
    /// A kernel built from kernel-config/ fragments.
    Build {
        /// Build options.
        build: RawKernelBuild,
    },
}

impl Default for RawKernel {
    fn default() -> Self {
        RawKernel::Package {
            package: "linux-image-cloud-amd64".into(),
        }
    }
}

/// Options of a kernel built from kernel-config/.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawKernelBuild {
    /// Fragment names under kernel-config/ (default: base).
    #[serde(default)]
    pub fragments: Vec<String>,
    /// Linux source tree (default: Debian's linux-source package).
    #[serde(default)]
    pub source: Option<PathBuf>,
}

/// An agent by name or with options.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum RawAgent {
    /// Just the kind.
    Kind(AgentKind),
    /// Kind and port.
    Full {
        /// Which agent.
        kind: AgentKind,
        /// vsock port.
        #[serde(default)]
        port: Option<u32>,
    },
}

/// The two spellings of an agent, tried in order with errors that name the agent.
impl<'de> Deserialize<'de> for RawAgent {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Full {
            kind: String,
            #[serde(default)]
            port: Option<u32>,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Name(String),
            Full(Full),
        }
        let kind = |name: &str| -> Result<AgentKind, D::Error> {
            match name {
                "control" => Ok(AgentKind::Control),
                "timesync" => Ok(AgentKind::Timesync),
                "binfmt" => Ok(AgentKind::Binfmt),
                "serial" => Ok(AgentKind::Serial),
                other => Err(D::Error::custom(format!(
                    "unknown variant `{other}`: agents are control, timesync, binfmt and serial"
                ))),
            }
        };
        match Either::deserialize(d).map_err(|_| {
            D::Error::custom(
                "an agent is a name (control, timesync, binfmt, serial) or {kind: NAME, port: N}",
            )
        })? {
            Either::Name(n) => Ok(RawAgent::Kind(kind(&n)?)),
            Either::Full(f) => Ok(RawAgent::Full {
                kind: kind(&f.kind)?,
                port: f.port,
            }),
        }
    }
}

/// A run-to-completion task.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTask {
    /// Name for logs.
    pub name: String,
    /// argv (no shell).
    pub command: Vec<String>,
    /// Environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory.
    #[serde(default)]
    pub cwd: Option<String>,
    /// `uid` or `uid:gid`.
    #[serde(default)]
    pub user: Option<String>,
    /// `continue` (default) or `poweroff`.
    #[serde(default)]
    pub on_failure: OnFailure,
    /// Kill after this many milliseconds.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// A supervised service.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    /// Unique name.
    pub name: String,
    /// argv (no shell).
    pub command: Vec<String>,
    /// Environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory.
    #[serde(default)]
    pub cwd: Option<String>,
    /// `uid` or `uid:gid`.
    #[serde(default)]
    pub user: Option<String>,
    /// `no`, `on-failure` (default) or `always`.
    #[serde(default)]
    pub restart: Restart,
    /// Services or agents that must be ready first.
    #[serde(default)]
    pub after: Vec<String>,
    /// `started` (default) or `notify`.
    #[serde(default)]
    pub readiness: Readiness,
    /// Power the guest off when this service ends for good.
    #[serde(default, rename = "exit-on-stop")]
    pub exit_on_stop: bool,
    /// oom_score_adj (-1000..=1000).
    #[serde(default)]
    pub oom_score_adj: i32,
}

/// A file, directory or symlink put into the image.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawFile {
    /// Absolute path in the image.
    pub path: String,
    /// Inline contents.
    #[serde(default)]
    pub contents: Option<String>,
    /// Host file to copy (relative to the spec's directory).
    #[serde(default)]
    pub source: Option<PathBuf>,
    /// Octal permission bits as a string (`"0644"`).
    #[serde(default)]
    pub mode: Option<String>,
    /// Owner.
    #[serde(default)]
    pub uid: u32,
    /// Group.
    #[serde(default)]
    pub gid: u32,
    /// Make a symlink to this target.
    #[serde(default)]
    pub symlink: Option<String>,
    /// Make a directory.
    #[serde(default)]
    pub directory: bool,
}

/// A package by name, optionally allowed to override paths of earlier packages.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum RawPackageRef {
    /// Just the name.
    Name(String),
    /// Name and options.
    Full {
        /// Package name (a directory under packages/).
        name: String,
        /// This package's files win over earlier packages' files at the same path.
        #[serde(default, rename = "override")]
        overrides: bool,
    },
}

/// A data disk.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawDisk {
    /// virtio serial / filesystem label.
    pub label: String,
    /// Mount point.
    pub mountpoint: String,
    /// Filesystem (ext4).
    #[serde(default = "default_fs")]
    pub fstype: String,
    /// Mount options.
    #[serde(default)]
    pub options: String,
    /// Size when the host creates it (`1G`, `512M`).
    #[serde(default)]
    pub size: Option<String>,
}

fn default_fs() -> String {
    "ext4".into()
}

/// A guest's network by default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RawNetwork {
    /// No network card.
    #[default]
    None,
    /// User-mode networking.
    User,
}

/// A container root filesystem.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawContainer {
    /// Name for `--container`.
    pub name: String,
    /// Package providing the root filesystem.
    pub package: String,
}
