//! The image spec: raw YAML types (unknown fields denied), then validation into a [`Spec`] whose
//! errors name the file, line and column.
//!
//! Configuration moves through two stages: [`RawSpec`] mirrors the YAML exactly (serde,
//! `deny_unknown_fields`, and the source of the JSON schema `minke spec schema` prints), and
//! [`Spec`] is what the rest of the builder consumes: modes parsed, argv checked, `after:`
//! ordered, defaults applied. serde reports syntax and type errors with a position; semantic
//! errors found later are located by looking the offending key and value up in the source.

use std::fmt;
use std::path::{Path, PathBuf};

use minke_protocol::config::AgentKind;

mod locate;
mod raw;
mod validate;

use locate::Source;
pub use raw::*;
pub use validate::{parse_mode, parse_size, parse_user, valid_name};

/// The default spec, embedded so `minke build` works with no argument.
pub const DEFAULT_SPEC: &str = include_str!("../../../examples/default.yml");
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

impl Spec {
    /// The guest architecture (validated, so always one minke knows).
    pub fn arch(&self) -> minke_protocol::arch::Arch {
        minke_protocol::arch::Arch::parse(&self.raw.arch)
            .unwrap_or(minke_protocol::arch::Arch::X86_64)
    }

    /// Makes this an image for `arch` (`minke build --arch`): the kernel package and command
    /// line that were the old architecture's defaults become the new one's; a kernel or
    /// command line the spec chose itself stays.
    pub fn retarget(&mut self, arch: minke_protocol::arch::Arch) {
        let old = self.arch();
        if let RawKernel::Package { package } = &mut self.raw.kernel {
            if package == old.default_kernel_package() {
                *package = arch.default_kernel_package().into();
            }
        }
        if self.raw.cmdline == old.default_cmdline() {
            self.raw.cmdline = arch.default_cmdline().into();
        }
        self.raw.arch = arch.name().into();
    }
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

/// Where minke's own data is — `packages/` (the default packages), `kernel-config/` and
/// `examples/` — and, in a source checkout, the crates of the in-guest binary:
/// 1. `$MINKE_WORKSPACE`, when set;
/// 2. `share/minke` beside the running executable's `bin/` (an unpacked `cargo xtask dist`
///    tarball, or any install that keeps that layout), which holds the in-guest binary
///    prebuilt under `guest/`;
/// 3. the checkout this binary was compiled in (`cargo run`, `cargo install --path`), while
///    it exists.
pub fn workspace_dir() -> PathBuf {
    if let Ok(d) = std::env::var("MINKE_WORKSPACE") {
        return PathBuf::from(d);
    }
    static FOUND: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    FOUND
        .get_or_init(|| {
            let installed = std::env::current_exe()
                .ok()
                .and_then(|exe| Some(exe.parent()?.parent()?.join("share/minke")))
                .filter(|d| d.join("packages").is_dir());
            installed.unwrap_or_else(|| {
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .parent()
                    .map(Path::to_path_buf)
                    .unwrap_or_default()
            })
        })
        .clone()
}

/// Where an installed minke keeps prebuilt in-guest binaries (`DATA/guest/NAME`), used by
/// `cargo:` packages when the data directory is not a source checkout.
pub const PREBUILT_GUEST_DIR: &str = "guest";

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
    validate::validate(raw, &src, base_dir)
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
