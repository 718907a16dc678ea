//! The image config (builder → init) and the boot timeline (init → host).
//!
//! The builder resolves a spec into an [`ImageConfig`] and stores it as JSON at
//! [`crate::IMAGE_CONFIG_PATH`] in the initramfs; the init reads it at boot and needs nothing
//! else. Everything here is already resolved: module paths and load order, argv vectors, numeric
//! ids, binfmt magic strings. The init makes no decision the builder could have made.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Everything the init needs to bring the guest up.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageConfig {
    /// Image name (from the spec).
    pub name: String,
    /// Hostname to set.
    pub hostname: String,
    /// Kernel modules, already in load order (dependencies first).
    pub modules: Vec<Module>,
    /// sysctl settings, key in dotted form (`net.ipv4.ip_forward`).
    pub sysctls: BTreeMap<String, String>,
    /// Resource limits applied to PID1 and inherited by its children.
    pub rlimits: Vec<Rlimit>,
    /// Data disks to mount.
    pub disks: Vec<DiskMount>,
    /// Tasks run in order before services start.
    pub onboot: Vec<Task>,
    /// Agents (the same binary as the init) supervised like services.
    pub agents: Vec<Agent>,
    /// Long-running services.
    pub services: Vec<Service>,
    /// Tasks run in order at shutdown, before services are stopped.
    pub onshutdown: Vec<Task>,
    /// binfmt_misc registrations for the binfmt agent.
    pub binfmt: Vec<Binfmt>,
    /// Foreign or native root filesystems the control agent can exec into.
    pub containers: Vec<Container>,
    /// Time between SIGTERM and SIGKILL at shutdown, in milliseconds.
    pub shutdown_grace_ms: u64,
    /// Modules loaded only when the host shares directories with this boot (virtio-fs, 9p),
    /// in load order, none of them in [`ImageConfig::modules`].
    #[serde(default)]
    pub share_modules: Vec<Module>,
    /// Modules loaded only when the host gives the guest a network card (virtio-net), in
    /// load order, none of them in [`ImageConfig::modules`].
    #[serde(default)]
    pub net_modules: Vec<Module>,
    /// Modules loaded only when the host attaches a container image to run
    /// ([`crate::image`]): virtio-blk, erofs, overlay; in load order, none of them in
    /// [`ImageConfig::modules`].
    #[serde(default)]
    pub image_modules: Vec<Module>,
    /// Names of those of [`ImageConfig::modules`] that serve virtio over PCI only: a boot on
    /// QEMU's microvm ([`MICROVM_PARAM`] on the kernel command line) skips them.
    #[serde(default)]
    pub pci_modules: Vec<String>,
    /// Modules loaded only on microvm (virtio over MMIO), in load order, none of them in
    /// [`ImageConfig::modules`].
    #[serde(default)]
    pub microvm_modules: Vec<Module>,
}

/// The kernel command-line word the host adds when the guest boots on QEMU's `microvm`
/// machine: no PCI bus, every virtio device on MMIO.
pub const MICROVM_PARAM: &str = "minke.machine=microvm";

/// One kernel module file inside the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Module {
    /// Module name (`virtio_pci`).
    pub name: String,
    /// Absolute path of the .ko (possibly .ko.xz / .ko.zst) in the image.
    pub path: String,
    /// Parameters passed to finit_module.
    #[serde(default)]
    pub params: String,
}

/// A resource limit (`RLIMIT_NOFILE` → `"nofile"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rlimit {
    /// Lowercase resource name without the `RLIMIT_` prefix.
    pub resource: String,
    /// Soft limit (`None`: unlimited).
    pub soft: Option<u64>,
    /// Hard limit (`None`: unlimited).
    pub hard: Option<u64>,
}

/// A data disk found by virtio serial or filesystem label.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskMount {
    /// Serial (virtio-blk) or filesystem label that identifies the disk.
    pub label: String,
    /// Where to mount it.
    pub mountpoint: String,
    /// Filesystem type (`ext4`).
    pub fstype: String,
    /// Mount data string (`noatime`).
    #[serde(default)]
    pub options: String,
    /// Mount a tmpfs there when the disk is absent (loudly), instead of leaving it unmounted.
    #[serde(default = "yes")]
    pub tmpfs_fallback: bool,
}

fn yes() -> bool {
    true
}

/// What a failing onboot task does.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnFailure {
    /// Log and go on.
    #[default]
    Continue,
    /// Log and power the guest off.
    Poweroff,
}

/// A process description shared by tasks and services.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Command {
    /// Program and arguments (no shell).
    pub argv: Vec<String>,
    /// Environment, in addition to a minimal default `PATH`/`HOME`/`TERM`.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory.
    #[serde(default)]
    pub cwd: Option<String>,
    /// User id.
    #[serde(default)]
    pub uid: u32,
    /// Group id.
    #[serde(default)]
    pub gid: u32,
}

/// A run-to-completion task (onboot / onshutdown).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    /// Name for logs and the boot timeline.
    pub name: String,
    /// What to run.
    pub command: Command,
    /// What a non-zero exit does.
    #[serde(default)]
    pub on_failure: OnFailure,
    /// Kill the task after this long (milliseconds); `None`: no limit.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// Restart policy of a service.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Restart {
    /// Never restart.
    No,
    /// Restart when it exits non-zero or is killed.
    #[default]
    OnFailure,
    /// Always restart.
    Always,
}

/// How the init knows a service is ready (for `after:` ordering and the timeline).
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Readiness {
    /// Ready once started.
    #[default]
    Started,
    /// Ready when it writes a line to the fd named in `MINKE_NOTIFY_FD`.
    Notify,
}

/// A supervised long-running process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    /// Unique name (also the cgroup name).
    pub name: String,
    /// What to run.
    pub command: Command,
    /// Restart policy.
    #[serde(default)]
    pub restart: Restart,
    /// Names of services (or agents) that must be ready first.
    #[serde(default)]
    pub after: Vec<String>,
    /// Readiness protocol.
    #[serde(default)]
    pub readiness: Readiness,
    /// Shut the guest down when this service ends for good.
    #[serde(default)]
    pub exit_on_stop: bool,
    /// oom_score_adj for the process.
    #[serde(default)]
    pub oom_score_adj: i32,
}

/// The agents minke ships inside the init binary.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AgentKind {
    /// exec, files, forward, info, power over vsock.
    Control,
    /// Clock sync with the host.
    Timesync,
    /// binfmt_misc registration of QEMU user emulators.
    Binfmt,
    /// The guest end of the virtio-serial transport (see [`crate::mux`]); idle under vsock.
    Serial,
}

impl AgentKind {
    /// The subcommand name (`minke-init agent control`).
    pub fn name(self) -> &'static str {
        match self {
            AgentKind::Control => "control",
            AgentKind::Timesync => "timesync",
            AgentKind::Binfmt => "binfmt",
            AgentKind::Serial => "serial",
        }
    }
}

/// An agent the init starts and supervises.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Agent {
    /// Which agent.
    pub kind: AgentKind,
    /// vsock port it listens on (control) or connects to on the host (timesync).
    #[serde(default)]
    pub port: Option<u32>,
    /// Agents that must be ready before this one starts (timesync after serial, whose socket
    /// it connects through under the serial transport).
    #[serde(default)]
    pub after: Vec<String>,
}

/// One binfmt_misc registration, already in the kernel's terms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Binfmt {
    /// Entry name (`qemu-aarch64`).
    pub name: String,
    /// Interpreter path in the image.
    pub interpreter: String,
    /// Magic bytes (raw, not escaped).
    pub magic: Vec<u8>,
    /// Mask bytes, same length as `magic`.
    pub mask: Vec<u8>,
    /// Flags (`F`, `P`, `C`, `O`).
    pub flags: String,
}

/// A root filesystem inside the image that execs can be confined to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Container {
    /// Name used in `ExecRequest::container`.
    pub name: String,
    /// Directory holding its root filesystem.
    pub rootfs: String,
}

/// First bytes of [`crate::IMAGE_CONFIG_BIN_PATH`]; the last byte is the encoding's version,
/// raised whenever [`ImageConfig`] changes shape.
pub const CONFIG_MAGIC: &[u8; 8] = b"MINKECF\x01";

/// Why [`ImageConfig::decode`] refused some bytes.
#[derive(Debug, thiserror::Error)]
pub enum ConfigDecodeError {
    /// Not an image config of this encoding version.
    #[error(
        "not an image config of this minke-init (no `MINKECF` header of encoding version {}): \
         rebuild the image with the matching minke",
        CONFIG_MAGIC[7]
    )]
    Magic,
    /// The bytes after the header do not decode.
    #[error("corrupt image config; rebuild the image")]
    Body(#[from] postcard::Error),
}

impl ImageConfig {
    /// The compact form the guest reads ([`crate::IMAGE_CONFIG_BIN_PATH`]): [`CONFIG_MAGIC`]
    /// then postcard. Cheap to decode, and the guest binary needs no JSON parser.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = CONFIG_MAGIC.to_vec();
        // Serialising plain data to a Vec cannot fail.
        out.extend(postcard::to_stdvec(self).unwrap_or_default());
        out
    }

    /// Decodes [`ImageConfig::encode`]'s output; never panics, whatever the bytes.
    pub fn decode(bytes: &[u8]) -> Result<ImageConfig, ConfigDecodeError> {
        let body = bytes
            .strip_prefix(CONFIG_MAGIC.as_slice())
            .ok_or(ConfigDecodeError::Magic)?;
        let (cfg, rest) = postcard::take_from_bytes(body)?;
        if !rest.is_empty() {
            return Err(ConfigDecodeError::Body(
                postcard::Error::DeserializeBadEncoding,
            ));
        }
        Ok(cfg)
    }
}

/// The boot timeline the init writes to [`crate::BOOT_TIMELINE_PATH`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootTimeline {
    /// Events in the order they happened.
    pub events: Vec<BootEvent>,
}

/// One point of the boot timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootEvent {
    /// CLOCK_BOOTTIME in nanoseconds.
    pub boottime_ns: u64,
    /// What happened: `pid1`, `modules`, `disks`, `onboot`, `started:NAME`, `ready:NAME`,
    /// `ready` (every agent ready).
    pub what: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_json_round_trips_and_rejects_unknown_fields() {
        let cfg = ImageConfig {
            name: "t".into(),
            hostname: "t".into(),
            agents: vec![Agent {
                kind: AgentKind::Control,
                port: Some(1024),
                after: vec!["serial".into()],
            }],
            services: vec![Service {
                name: "s".into(),
                command: Command {
                    argv: vec!["/bin/sleep".into(), "1".into()],
                    ..Default::default()
                },
                restart: Restart::Always,
                after: vec!["control".into()],
                readiness: Readiness::Started,
                exit_on_stop: false,
                oom_score_adj: 0,
            }],
            ..Default::default()
        };
        let s = serde_json::to_string(&cfg).unwrap();
        assert_eq!(serde_json::from_str::<ImageConfig>(&s).unwrap(), cfg);
        let bad = s.replacen("\"hostname\"", "\"hostnme\"", 1);
        assert!(serde_json::from_str::<ImageConfig>(&bad).is_err());
        // The compact form the guest reads.
        let bin = cfg.encode();
        assert_eq!(ImageConfig::decode(&bin).unwrap(), cfg);
        assert!(matches!(
            ImageConfig::decode(b"{}"),
            Err(ConfigDecodeError::Magic)
        ));
        for cut in CONFIG_MAGIC.len()..bin.len() {
            assert!(ImageConfig::decode(&bin[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bin.clone();
        longer.push(0);
        assert!(ImageConfig::decode(&longer).is_err());
    }
}
