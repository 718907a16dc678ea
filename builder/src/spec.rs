//! The image spec: raw YAML types (unknown fields denied), then validation into a [`Spec`] whose
//! errors name the file, line and column.
//!
//! Configuration moves through two stages: [`RawSpec`] mirrors the YAML exactly (serde,
//! `deny_unknown_fields`, and the source of the JSON schema `minke spec schema` prints), and
//! [`Spec`] is what the rest of the builder consumes: modes parsed, argv checked, `after:`
//! ordered, defaults applied. serde reports syntax and type errors with a position; semantic
//! errors found later are located by looking the offending key and value up in the source.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use minke_protocol::config::{AgentKind, OnFailure, Readiness, Restart};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::archive::compress::Compression;

/// The default spec, embedded so `minke build` works with no argument.
pub const DEFAULT_SPEC: &str = include_str!("../../examples/default.yml");
/// Name shown in errors for the embedded default spec.
pub const DEFAULT_SPEC_NAME: &str = "examples/default.yml (built in)";

/// Where an error is in a spec file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// File name as given by the user.
    pub file: String,
    /// 1-based line; 0 when unknown.
    pub line: usize,
    /// 1-based column; 0 when unknown.
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (0, _) => write!(f, "{}", self.file),
            (l, 0) => write!(f, "{}:{l}", self.file),
            (l, c) => write!(f, "{}:{l}:{c}", self.file),
        }
    }
}

/// A spec that could not be read or is invalid.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The file could not be read.
    #[error("cannot read spec {path}")]
    Read {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// YAML syntax or type error, or an invalid value.
    #[error("{at}: {message}")]
    Invalid {
        /// Where.
        at: Location,
        /// What was expected.
        message: String,
    },
}

// ---------------------------------------------------------------------------------------------
// Raw stage: exactly the YAML.

/// An image spec as written in YAML.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSpec {
    /// Image name; outputs are NAME-kernel, NAME-initrd.img, NAME-cmdline, NAME.manifest.json.
    pub name: String,
    /// Guest architecture (only `x86_64` today).
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
        /// Path of the bzImage/vmlinuz.
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

/// A container root filesystem.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawContainer {
    /// Name for `--container`.
    pub name: String,
    /// Package providing the root filesystem.
    pub package: String,
}

// ---------------------------------------------------------------------------------------------
// Validated stage.

/// A validated spec.
#[derive(Debug, Clone)]
pub struct Spec {
    /// The raw spec it came from (defaults applied).
    pub raw: RawSpec,
    /// File name for messages.
    pub file: String,
    /// Directory relative paths resolve against.
    pub base_dir: PathBuf,
    /// Agents with their ports resolved, sorted by kind.
    pub agents: Vec<(AgentKind, Option<u32>)>,
    /// Files with modes parsed.
    pub files: Vec<FileEntry>,
    /// Package references.
    pub packages: Vec<(String, bool)>,
    /// Services in a valid start order (dependencies first).
    pub service_order: Vec<String>,
}

/// A validated file entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// Path in the image (absolute).
    pub path: String,
    /// What it is.
    pub what: FileWhat,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
}

/// Content of a validated file entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileWhat {
    /// Inline text.
    Contents(String),
    /// Copy of a host file (absolute path).
    Source(PathBuf),
    /// Symlink.
    Symlink(String),
    /// Directory.
    Directory,
}

/// Parses `uid` or `uid:gid`.
pub fn parse_user(s: &str) -> Option<(u32, u32)> {
    match s.split_once(':') {
        Some((u, g)) => Some((u.parse().ok()?, g.parse().ok()?)),
        None => {
            let u = s.parse().ok()?;
            Some((u, u))
        }
    }
}

/// Parses an octal mode string (`"0755"`, `"755"`, `"0o755"`).
pub fn parse_mode(s: &str) -> Option<u32> {
    let t = s.trim();
    let t = t.strip_prefix("0o").unwrap_or(t);
    if t.is_empty() || t.len() > 5 {
        return None;
    }
    let m = u32::from_str_radix(t, 8).ok()?;
    (m <= 0o7777).then_some(m)
}

struct Source<'a> {
    file: &'a str,
    text: &'a str,
}

impl Source<'_> {
    /// Locates the first line holding `key:` followed by `value` (or just `key:` when `value` is
    /// empty), for errors found after parsing.
    fn locate(&self, key: &str, value: &str) -> Location {
        let mut line = 0;
        for (i, l) in self.text.lines().enumerate() {
            let t = l.trim_start().trim_start_matches("- ");
            if let Some(rest) = t
                .strip_prefix(key)
                .and_then(|r| r.trim_start().strip_prefix(':'))
            {
                let rest = rest.trim().trim_matches(|c| c == '"' || c == '\'');
                if value.is_empty() || rest == value || rest.contains(value) {
                    line = i + 1;
                    break;
                }
            }
            if line == 0 && !value.is_empty() && l.contains(value) && l.contains(key) {
                line = i + 1;
            }
        }
        let column = if line > 0 {
            self.text
                .lines()
                .nth(line - 1)
                .map_or(0, |l| l.find(key).map_or(1, |c| c + 1))
        } else {
            0
        };
        Location {
            file: self.file.to_string(),
            line,
            column,
        }
    }

    fn err(&self, key: &str, value: &str, message: impl Into<String>) -> SpecError {
        SpecError::Invalid {
            at: self.locate(key, value),
            message: message.into(),
        }
    }
}

/// Reads and validates a spec file; `None` means the embedded default spec.
pub fn load(path: Option<&Path>) -> Result<Spec, SpecError> {
    match path {
        None => parse(
            DEFAULT_SPEC,
            DEFAULT_SPEC_NAME,
            &workspace_dir().join("examples"),
        ),
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|source| SpecError::Read {
                path: p.to_path_buf(),
                source,
            })?;
            let base = p.parent().map(Path::to_path_buf).unwrap_or_default();
            let base = if base.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                base
            };
            parse(&text, &p.display().to_string(), &base)
        }
    }
}

/// The workspace this binary was built from (where `packages/` and the in-guest crates live).
pub fn workspace_dir() -> PathBuf {
    if let Ok(d) = std::env::var("MINKE_WORKSPACE") {
        return PathBuf::from(d);
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Parses and validates spec text.
pub fn parse(text: &str, file: &str, base_dir: &Path) -> Result<Spec, SpecError> {
    let src = Source { file, text };
    let raw: RawSpec = serde_yaml_ng::from_str(text).map_err(|e| {
        let (line, column, message) = yaml_error(&e);
        SpecError::Invalid {
            at: Location {
                file: file.to_string(),
                line,
                column,
            },
            message,
        }
    })?;
    validate(raw, &src, base_dir)
}

/// A YAML error as (line, column, message without the position): the caller prints the
/// position as `file:line:column`, so serde's own " at line L column C" would say it twice.
/// Line and column are 0 when unknown (the message is then whole).
pub fn yaml_error(e: &serde_yaml_ng::Error) -> (usize, usize, String) {
    let message = e.to_string();
    match e.location() {
        Some(l) => {
            let (line, column) = (l.line(), l.column());
            let at = format!(" at line {line} column {column}");
            (line, column, message.replacen(&at, "", 1))
        }
        None => (0, 0, message),
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && !s.starts_with('.')
}

fn validate(raw: RawSpec, src: &Source<'_>, base_dir: &Path) -> Result<Spec, SpecError> {
    if !valid_name(&raw.name) {
        return Err(src.err(
            "name",
            &raw.name,
            format!(
                "invalid image name {:?}: use 1-64 letters, digits, '-', '_' or '.'",
                raw.name
            ),
        ));
    }
    if raw.arch != "x86_64" {
        return Err(src.err(
            "arch",
            &raw.arch,
            format!(
                "unsupported arch {:?}: only x86_64 guests are supported",
                raw.arch
            ),
        ));
    }
    if let RawKernel::Package { package } = &raw.kernel {
        if let Err(problem) = crate::sources::deb::check_package_name(package) {
            return Err(src.err("package", package, format!("kernel package: {problem}")));
        }
    }
    if !valid_name(&raw.init) {
        return Err(src.err(
            "init",
            &raw.init,
            format!("invalid init package name {:?}", raw.init),
        ));
    }
    // Agents.
    let mut agents = BTreeMap::new();
    for a in &raw.agents {
        let (kind, port) = match a {
            RawAgent::Kind(k) => (*k, None),
            RawAgent::Full { kind, port } => (*kind, *port),
        };
        if agents.insert(kind, port).is_some() {
            return Err(src.err(
                "agents",
                "",
                format!("agent {} is listed twice", kind.name()),
            ));
        }
        if let Some(p) = port {
            if p == 0 || p == u32::MAX {
                return Err(src.err("port", &p.to_string(), format!("invalid vsock port {p}")));
            }
        }
    }
    if !raw.binfmt.is_empty() && !agents.contains_key(&AgentKind::Binfmt) {
        agents.insert(AgentKind::Binfmt, None);
    }
    // The host falls back to virtio-serial when it has no vsock: whatever talks to the host
    // needs the serial agent then.
    for t in &raw.transports {
        if t != "vsock" && t != "serial" {
            return Err(src.err(
                "transports",
                t,
                format!("unknown transport {t:?}: use vsock or serial"),
            ));
        }
    }
    let serial = raw.transports.iter().any(|t| t == "serial");
    if serial
        && (agents.contains_key(&AgentKind::Control) || agents.contains_key(&AgentKind::Timesync))
    {
        agents.entry(AgentKind::Serial).or_insert(None);
    }
    // Modules.
    for m in &raw.modules {
        if m.is_empty() || m.contains('/') || m.contains(char::is_whitespace) {
            return Err(src.err("modules", m, format!("invalid module name {m:?}")));
        }
    }
    // Tasks and services.
    let mut names = BTreeSet::new();
    for t in raw.onboot.iter().chain(&raw.onshutdown) {
        check_command(
            src,
            &t.name,
            &t.command,
            t.user.as_deref(),
            t.cwd.as_deref(),
        )?;
    }
    for s in &raw.services {
        if !valid_name(&s.name) {
            return Err(src.err(
                "name",
                &s.name,
                format!("invalid service name {:?}", s.name),
            ));
        }
        if agents.keys().any(|k| k.name() == s.name) {
            return Err(src.err(
                "name",
                &s.name,
                format!("service name {:?} is taken by an agent", s.name),
            ));
        }
        if !names.insert(s.name.clone()) {
            return Err(src.err(
                "name",
                &s.name,
                format!("service {:?} is defined twice", s.name),
            ));
        }
        check_command(
            src,
            &s.name,
            &s.command,
            s.user.as_deref(),
            s.cwd.as_deref(),
        )?;
        if !(-1000..=1000).contains(&s.oom_score_adj) {
            return Err(src.err(
                "oom_score_adj",
                &s.oom_score_adj.to_string(),
                "oom_score_adj must be within -1000..=1000",
            ));
        }
    }
    let service_order = order_services(&raw.services, &agents, src)?;
    // Files.
    let mut files = Vec::new();
    let mut seen = BTreeSet::new();
    for f in &raw.files {
        if !f.path.starts_with('/') || crate::archive::tree::normalize(&f.path).is_err() {
            return Err(src.err("path", &f.path, format!("file path {:?} must be absolute, without `.` or `..`, and shorter than PATH_MAX", f.path)));
        }
        if !seen.insert(f.path.trim_end_matches('/').to_string()) {
            return Err(src.err(
                "path",
                &f.path,
                format!("file {:?} is listed twice", f.path),
            ));
        }
        let n = [
            f.contents.is_some(),
            f.source.is_some(),
            f.symlink.is_some(),
            f.directory,
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if n != 1 {
            return Err(src.err(
                "path",
                &f.path,
                format!(
                    "file {:?} needs exactly one of contents, source, symlink or directory: true",
                    f.path
                ),
            ));
        }
        let mode = match &f.mode {
            None if f.directory => 0o755,
            None if f.symlink.is_some() => 0o777,
            None => 0o644,
            Some(m) => parse_mode(m).ok_or_else(|| src.err("mode", m, format!("invalid mode {m:?} for {:?}: use an octal string such as \"0644\" (at most 07777)", f.path)))?,
        };
        let what = if let Some(c) = &f.contents {
            FileWhat::Contents(c.clone())
        } else if let Some(s) = &f.source {
            let p = base_dir.join(s);
            match std::fs::metadata(&p) {
                Ok(md) if md.is_file() => {}
                Ok(_) => {
                    return Err(src.err(
                        "source",
                        &s.display().to_string(),
                        format!("source {} is not a regular file", p.display()),
                    ))
                }
                Err(e) => {
                    return Err(src.err(
                        "source",
                        &s.display().to_string(),
                        format!("cannot read source {}: {e}", p.display()),
                    ))
                }
            }
            FileWhat::Source(p)
        } else if let Some(t) = &f.symlink {
            if t.is_empty() {
                return Err(src.err(
                    "symlink",
                    "",
                    format!("empty symlink target for {:?}", f.path),
                ));
            }
            FileWhat::Symlink(t.clone())
        } else {
            FileWhat::Directory
        };
        files.push(FileEntry {
            path: f.path.clone(),
            what,
            mode,
            uid: f.uid,
            gid: f.gid,
        });
    }
    // Packages.
    let mut packages = Vec::new();
    let mut pk = BTreeSet::new();
    for p in &raw.packages {
        let (name, ov) = match p {
            RawPackageRef::Name(n) => (n.clone(), false),
            RawPackageRef::Full { name, overrides } => (name.clone(), *overrides),
        };
        if !valid_name(&name) {
            return Err(src.err("packages", &name, format!("invalid package name {name:?}")));
        }
        if !pk.insert(name.clone()) {
            return Err(src.err(
                "packages",
                &name,
                format!("package {name:?} is listed twice"),
            ));
        }
        packages.push((name, ov));
    }
    // Disks.
    let mut labels = BTreeSet::new();
    for d in &raw.disks {
        if !valid_name(&d.label) || d.label.len() > 16 {
            return Err(src.err(
                "label",
                &d.label,
                format!(
                    "invalid disk label {:?}: 1-16 letters, digits, '-', '_'",
                    d.label
                ),
            ));
        }
        if !labels.insert(d.label.clone()) {
            return Err(src.err(
                "label",
                &d.label,
                format!("disk {:?} is listed twice", d.label),
            ));
        }
        if !d.mountpoint.starts_with('/') || d.mountpoint == "/" {
            return Err(src.err(
                "mountpoint",
                &d.mountpoint,
                format!(
                    "disk mountpoint {:?} must be an absolute path other than /",
                    d.mountpoint
                ),
            ));
        }
        if d.fstype != "ext4" {
            return Err(src.err(
                "fstype",
                &d.fstype,
                format!(
                    "unsupported filesystem {:?}: only ext4 data disks are supported",
                    d.fstype
                ),
            ));
        }
        if let Some(s) = &d.size {
            if parse_size(s).is_none() {
                return Err(src.err(
                    "size",
                    s,
                    format!("invalid disk size {s:?}: use a number with K, M or G"),
                ));
            }
        }
    }
    for c in &raw.containers {
        if !valid_name(&c.name) {
            return Err(src.err(
                "name",
                &c.name,
                format!("invalid container name {:?}", c.name),
            ));
        }
    }
    for (k, v) in &raw.sysctls {
        if k.is_empty() || k.contains('/') || k.contains("..") || v.contains('\n') {
            return Err(src.err(k, v, format!("invalid sysctl {k:?}")));
        }
    }
    Ok(Spec {
        agents: agents.into_iter().collect(),
        raw,
        file: src.file.to_string(),
        base_dir: base_dir.to_path_buf(),
        files,
        packages,
        service_order,
    })
}

/// Parses `512M`, `1G`, `4096` (bytes) into bytes.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mul) = match s.char_indices().last()? {
        (i, 'K' | 'k') => (&s[..i], 1u64 << 10),
        (i, 'M' | 'm') => (&s[..i], 1 << 20),
        (i, 'G' | 'g') => (&s[..i], 1 << 30),
        (i, 'T' | 't') => (&s[..i], 1 << 40),
        _ => (s, 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mul).filter(|n| *n > 0)
}

fn check_command(
    src: &Source<'_>,
    name: &str,
    argv: &[String],
    user: Option<&str>,
    cwd: Option<&str>,
) -> Result<(), SpecError> {
    if name.is_empty() {
        return Err(src.err("name", "", "a task or service has an empty name"));
    }
    if argv.is_empty() || argv[0].is_empty() {
        return Err(src.err("name", name, format!("{name:?} has an empty command: give argv as a list, e.g. [\"/bin/sh\", \"-c\", \"...\"]")));
    }
    if argv.iter().any(|a| a.contains('\0')) {
        return Err(src.err(
            "name",
            name,
            format!("{name:?}: command arguments cannot contain NUL bytes"),
        ));
    }
    if let Some(u) = user {
        if parse_user(u).is_none() {
            return Err(src.err(
                "user",
                u,
                format!("invalid user {u:?} for {name:?}: use a numeric uid or uid:gid"),
            ));
        }
    }
    if let Some(c) = cwd {
        if !c.starts_with('/') {
            return Err(src.err("cwd", c, format!("cwd {c:?} of {name:?} must be absolute")));
        }
    }
    Ok(())
}

/// Orders services so every `after:` dependency comes first; unknown names and cycles are
/// errors. Agents count as already-known names.
fn order_services(
    services: &[RawService],
    agents: &BTreeMap<AgentKind, Option<u32>>,
    src: &Source<'_>,
) -> Result<Vec<String>, SpecError> {
    let known: BTreeSet<&str> = services
        .iter()
        .map(|s| s.name.as_str())
        .chain(agents.keys().map(|k| k.name()))
        .collect();
    for s in services {
        for a in &s.after {
            if !known.contains(a.as_str()) {
                return Err(src.err("after", a, format!("service {:?} starts after {a:?}, which is neither a service nor an agent of this image", s.name)));
            }
        }
    }
    let by_name: BTreeMap<&str, &RawService> =
        services.iter().map(|s| (s.name.as_str(), s)).collect();
    let mut state: BTreeMap<&str, u8> = BTreeMap::new(); // 1 visiting, 2 done
    let mut order = Vec::new();
    fn visit<'a>(
        n: &'a str,
        by_name: &BTreeMap<&'a str, &'a RawService>,
        state: &mut BTreeMap<&'a str, u8>,
        order: &mut Vec<String>,
        path: &mut Vec<&'a str>,
    ) -> Result<(), Vec<String>> {
        match state.get(n) {
            Some(2) => return Ok(()),
            Some(1) => {
                let start = path.iter().position(|p| *p == n).unwrap_or(0);
                let mut cycle: Vec<String> = path[start..].iter().map(|s| s.to_string()).collect();
                cycle.push(n.to_string());
                return Err(cycle);
            }
            _ => {}
        }
        let Some(s) = by_name.get(n) else {
            return Ok(());
        }; // an agent
        state.insert(n, 1);
        path.push(n);
        for a in &s.after {
            visit(a, by_name, state, order, path)?;
        }
        path.pop();
        state.insert(n, 2);
        order.push(n.to_string());
        Ok(())
    }
    for s in services {
        let mut path = Vec::new();
        visit(&s.name, &by_name, &mut state, &mut order, &mut path).map_err(|cycle| {
            src.err(
                "after",
                "",
                format!(
                    "services depend on each other in a cycle: {}",
                    cycle.join(" -> ")
                ),
            )
        })?;
    }
    Ok(order)
}

/// The JSON schema of the spec, for editors.
pub fn schema_json() -> String {
    let schema = schemars::schema_for!(RawSpec);
    serde_json::to_string_pretty(&schema).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_err(yaml: &str, line: usize, needle: &str) {
        let err = parse(yaml, "t.yml", Path::new(".")).expect_err("spec should be rejected");
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!("t.yml:{line}")),
            "wrong location in {msg:?} (want line {line})"
        );
        assert!(msg.contains(needle), "{msg:?} does not mention {needle:?}");
    }

    #[test]
    fn default_spec_is_valid() {
        let s = parse(
            DEFAULT_SPEC,
            "default.yml",
            &workspace_dir().join("examples"),
        )
        .unwrap();
        assert_eq!(s.raw.name, "default");
        assert!(s.agents.iter().any(|(k, _)| *k == AgentKind::Control));
    }

    #[test]
    fn unknown_key_names_line_and_column() {
        check_err("name: x\nkernal: {}\n", 2, "unknown field `kernal`");
    }

    #[test]
    fn yaml_errors_state_their_position_once() {
        for (yaml, at) in [
            ("name: x\nkernal: {}\n", "t.yml:2:1: unknown field `kernal`"),
            ("name: x\nshutdown_grace_ms: soon\n", "t.yml:2:20: "),
            ("name: x\nservices: [\n  - {name: a\n", "t.yml:3:"),
        ] {
            let msg = parse(yaml, "t.yml", Path::new("."))
                .unwrap_err()
                .to_string();
            assert!(msg.starts_with(at), "{msg:?} does not start with {at:?}");
            assert!(!msg.contains(" at line "), "{msg}");
        }
    }

    #[test]
    fn kernel_package_must_be_a_debian_name() {
        check_err(
            "name: x\nkernel:\n  package: \"-oAPT::Get=1\"\n",
            3,
            "kernel package: \"-oAPT::Get=1\" is not a package name",
        );
        check_err(
            "name: x\nkernel: {package: Linux-Image}\n",
            2,
            "is not a package name",
        );
        parse(
            "name: x\nkernel: {package: linux-image-6.1.0-48-cloud-amd64}\n",
            "t.yml",
            Path::new("."),
        )
        .unwrap();
    }

    #[test]
    fn yaml_syntax_error_names_line() {
        check_err(
            "name: x\nservices: [\n  - {name: a\n",
            3,
            "did not find expected",
        );
    }

    #[test]
    fn wrong_type_names_line() {
        check_err("name: x\nmodules: 3\n", 2, "invalid type");
    }

    #[test]
    fn bad_mode() {
        check_err(
            "name: x\nfiles:\n  - path: /a\n    contents: hi\n    mode: \"0999\"\n",
            5,
            "invalid mode",
        );
    }

    #[test]
    fn relative_file_path() {
        check_err(
            "name: x\nfiles:\n  - path: etc/a\n    contents: hi\n",
            3,
            "must be absolute",
        );
    }

    #[test]
    fn missing_source() {
        check_err(
            "name: x\nfiles:\n  - path: /a\n    source: nope.txt\n",
            4,
            "cannot read source",
        );
    }

    #[test]
    fn two_kinds_of_content() {
        check_err(
            "name: x\nfiles:\n  - path: /a\n    contents: hi\n    symlink: /b\n",
            3,
            "exactly one of",
        );
    }

    #[test]
    fn cycle_in_after() {
        let y = "name: x\nservices:\n  - name: a\n    command: [/bin/a]\n    after: [b]\n  - name: b\n    command: [/bin/b]\n    after: [a]\n";
        check_err(y, 5, "cycle: a -> b -> a");
    }

    #[test]
    fn unknown_after() {
        check_err(
            "name: x\nservices:\n  - name: a\n    command: [/bin/a]\n    after: [ghost]\n",
            5,
            "ghost",
        );
    }

    #[test]
    fn empty_command() {
        check_err(
            "name: x\nservices:\n  - name: a\n    command: []\n",
            3,
            "empty command",
        );
    }

    #[test]
    fn bad_user() {
        check_err(
            "name: x\nservices:\n  - name: a\n    command: [/bin/a]\n    user: root\n",
            5,
            "numeric uid",
        );
    }

    #[test]
    fn bad_restart() {
        check_err(
            "name: x\nservices:\n  - name: a\n    command: [/bin/a]\n    restart: sometimes\n",
            5,
            "unknown variant",
        );
    }

    #[test]
    fn duplicate_service() {
        check_err(
            "name: x\nservices:\n  - name: a\n    command: [/a]\n  - name: a\n    command: [/a]\n",
            3,
            "defined twice",
        );
    }

    #[test]
    fn bad_arch() {
        check_err("name: x\narch: riscv64\n", 2, "unsupported arch");
    }

    #[test]
    fn bad_name() {
        check_err("name: \"a/b\"\n", 1, "invalid image name");
    }

    #[test]
    fn bad_disk() {
        check_err(
            "name: x\ndisks:\n  - label: var\n    mountpoint: /\n",
            4,
            "mountpoint",
        );
        check_err(
            "name: x\ndisks:\n  - label: var\n    mountpoint: /var\n    fstype: xfs\n",
            5,
            "only ext4",
        );
        check_err(
            "name: x\ndisks:\n  - label: var\n    mountpoint: /var\n    size: lots\n",
            5,
            "invalid disk size",
        );
    }

    #[test]
    fn path_too_long() {
        let p = format!("/{}", "a/".repeat(2100));
        check_err(
            &format!("name: x\nfiles:\n  - path: {p}\n    contents: x\n"),
            3,
            "PATH_MAX",
        );
    }

    #[test]
    fn serial_agent_comes_with_the_agents_that_talk_to_the_host() {
        let agents = |y: &str| {
            let s = parse(y, "t.yml", Path::new(".")).unwrap();
            s.agents.iter().map(|(k, _)| k.name()).collect::<Vec<_>>()
        };
        assert_eq!(
            agents("name: x\nagents: [timesync, control]\n"),
            ["control", "timesync", "serial"]
        );
        assert_eq!(
            agents("name: x\nagents: [control, serial]\n"),
            ["control", "serial"]
        );
        assert!(agents("name: x\nagents: [binfmt]\n") == ["binfmt"]);
        assert!(agents("name: x\n").is_empty());
    }

    #[test]
    fn bad_agent() {
        check_err("name: x\nagents: [control, sshd]\n", 2, "");
    }

    #[test]
    fn services_are_ordered() {
        let y = "name: x\nagents: [control]\nservices:\n  - name: web\n    command: [/w]\n    after: [db, control]\n  - name: db\n    command: [/d]\n";
        let s = parse(y, "t.yml", Path::new(".")).unwrap();
        assert_eq!(s.service_order, ["db", "web"]);
    }

    #[test]
    fn modes_and_sizes_parse() {
        assert_eq!(parse_mode("0755"), Some(0o755));
        assert_eq!(parse_mode("4755"), Some(0o4755));
        assert_eq!(parse_mode("0o644"), Some(0o644));
        assert_eq!(parse_mode("17777"), None);
        assert_eq!(parse_mode("abc"), None);
        assert_eq!(parse_size("1G"), Some(1 << 30));
        assert_eq!(parse_size("0"), None);
        assert_eq!(parse_user("1000:100"), Some((1000, 100)));
    }
}
