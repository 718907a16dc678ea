//! Kernel configurations: the requirement fragments under `kernel-config/`, a kernel's own
//! config (a `.config`, Debian's `config-VERSION`, or IKCONFIG embedded in the kernel image),
//! and the check that says, for every requirement, whether the kernel meets it.
//!
//! A fragment is a list of `CONFIG_X=VALUE` and `# CONFIG_X is not set` lines, the format
//! `merge_config.sh` merges. Comment lines starting with `# @` are directives for the check:
//! `@required`, `@required-for FEATURE`, `@advisory` set the severity of the lines that
//! follow, and `@module NAME` names the module that provides the next option when it is `=m`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Why a configuration could not be read.
#[derive(Debug, thiserror::Error)]
pub enum KconfigError {
    /// A file could not be read.
    #[error("cannot read {path}")]
    Io {
        /// File.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// A fragment line is neither an option, a `not set` line, a directive nor a comment.
    #[error("{path}:{line}: {msg}")]
    Fragment {
        /// Fragment file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        msg: String,
    },
    /// No configuration could be found for a kernel image.
    #[error("{0}")]
    NotFound(String),
}

/// A kernel's configuration: option name (with `CONFIG_`) → value (`y`, `m`, `n` for
/// `is not set`, or the literal value).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelConfig {
    /// Options by name.
    pub options: BTreeMap<String, String>,
}

impl KernelConfig {
    /// Parses `.config` text; lines that are neither options nor `is not set` are ignored.
    pub fn parse(text: &str) -> KernelConfig {
        let mut options = BTreeMap::new();
        for line in text.lines() {
            if let Some((name, value)) = parse_option(line.trim_end()) {
                options.insert(name.to_owned(), value.to_owned());
            }
        }
        KernelConfig { options }
    }

    /// The value of `name` (`n` when absent: Kconfig's meaning of a missing line).
    pub fn get(&self, name: &str) -> &str {
        self.options.get(name).map(String::as_str).unwrap_or("n")
    }

    /// Whether the kernel can load modules at all.
    pub fn has_modules(&self) -> bool {
        self.get("CONFIG_MODULES") == "y"
    }
}

/// `CONFIG_X=v` → `(CONFIG_X, v)`; `# CONFIG_X is not set` → `(CONFIG_X, n)`.
fn parse_option(line: &str) -> Option<(&str, &str)> {
    if let Some(rest) = line.strip_prefix("# ") {
        let name = rest.strip_suffix(" is not set")?;
        return valid_name(name).then_some((name, "n"));
    }
    let (name, value) = line.split_once('=')?;
    valid_name(name).then_some((name, value))
}

fn valid_name(name: &str) -> bool {
    name.strip_prefix("CONFIG_").is_some_and(|n| {
        !n.is_empty()
            && n.bytes().all(|b| {
                b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_' || b.is_ascii_lowercase()
            })
    })
}

/// An image feature that makes `@required-for` options required.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Feature {
    /// gzip initramfs.
    Gzip,
    /// zstd initramfs.
    Zstd,
    /// Data disks.
    Disks,
    /// The binfmt agent.
    Binfmt,
    /// Containers.
    Containers,
    /// Host directories shared at run time.
    Shares,
    /// A network card at run time.
    Network,
}

impl Feature {
    fn parse(s: &str) -> Option<Feature> {
        Some(match s {
            "gzip" => Feature::Gzip,
            "zstd" => Feature::Zstd,
            "disks" => Feature::Disks,
            "binfmt" => Feature::Binfmt,
            "containers" => Feature::Containers,
            "shares" => Feature::Shares,
            "network" => Feature::Network,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Feature::Gzip => "gzip",
            Feature::Zstd => "zstd",
            Feature::Disks => "disks",
            Feature::Binfmt => "binfmt",
            Feature::Containers => "containers",
            Feature::Shares => "shares",
            Feature::Network => "network",
        }
    }
}

/// How much a requirement matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The image cannot work without it.
    Required,
    /// Required when the image uses the feature.
    RequiredFor(Feature),
    /// Reported, never fatal.
    Advisory,
}

/// One line of a fragment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    /// `CONFIG_X`.
    pub option: String,
    /// Wanted value: `y`, `n` (not set) or a literal.
    pub want: String,
    /// Module providing it when built as one.
    pub module: Option<String>,
    /// Severity.
    pub severity: Severity,
    /// Fragment file (as given).
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
}

/// Parses fragment text (`path` names it in errors and findings).
pub fn parse_fragment(path: &Path, text: &str) -> Result<Vec<Requirement>, KconfigError> {
    let mut out = Vec::new();
    let mut severity = Severity::Required;
    let mut module: Option<(String, usize)> = None;
    let err = |line: usize, msg: String| KconfigError::Fragment {
        path: path.to_path_buf(),
        line,
        msg,
    };
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line = raw.trim_end();
        if let Some(d) = line.strip_prefix("# @") {
            let mut words = d.split_whitespace();
            match (words.next(), words.next(), words.next()) {
                (Some("required"), None, _) => severity = Severity::Required,
                (Some("advisory"), None, _) => severity = Severity::Advisory,
                (Some("required-for"), Some(f), None) => {
                    severity = Severity::RequiredFor(Feature::parse(f).ok_or_else(|| {
                        err(n, format!("unknown feature {f:?}: use gzip, zstd, disks, binfmt or containers"))
                    })?)
                }
                (Some("module"), Some(m), None) => module = Some((m.to_owned(), n)),
                _ => {
                    return Err(err(
                        n,
                        format!(
                            "unknown directive {line:?}: use `# @required`, `# @required-for FEATURE`, \
                             `# @advisory` or `# @module NAME`"
                        ),
                    ))
                }
            }
            continue;
        }
        let option = parse_option(line);
        if let (None, Some((_, at))) = (option, &module) {
            return Err(err(
                *at,
                "`# @module` must come right before its option".into(),
            ));
        }
        if line.is_empty() {
            continue;
        }
        match option {
            Some((option, want)) => {
                if out.iter().any(|r: &Requirement| r.option == option) {
                    return Err(err(n, format!("{option} appears twice in this fragment")));
                }
                out.push(Requirement {
                    option: option.to_owned(),
                    want: want.to_owned(),
                    module: module.take().map(|(m, _)| m),
                    severity,
                    file: path.to_path_buf(),
                    line: n,
                });
            }
            None if line.starts_with('#') => {}
            None => {
                return Err(err(
                    n,
                    format!(
                        "{line:?} is not `CONFIG_X=VALUE`, `# CONFIG_X is not set` or a comment"
                    ),
                ))
            }
        }
    }
    if let Some((_, at)) = module {
        return Err(err(
            at,
            "`# @module` at the end of the fragment names no option".into(),
        ));
    }
    Ok(out)
}

/// The fragments used when none are named: base, hardening and the architecture's own.
pub fn default_fragments(arch: &str) -> Vec<String> {
    vec!["base".into(), "hardening".into(), format!("{arch}/arch")]
}

/// Resolves fragment names (`base`, `x86_64/arch`) under `dir`, or paths to `.config` files.
pub fn fragment_paths(
    dir: &Path,
    names: &[String],
    base: &Path,
) -> Result<Vec<PathBuf>, KconfigError> {
    names
        .iter()
        .map(|n| {
            let as_path = base.join(n);
            if n.ends_with(".config") && as_path.is_file() {
                return Ok(as_path);
            }
            let p = dir.join(format!("{n}.config"));
            if p.is_file() {
                Ok(p)
            } else {
                Err(KconfigError::NotFound(format!(
                    "kernel config fragment {n:?}: neither {} nor {} exists (fragments are named \
                     like `base` or `x86_64/arch`, or given as a path ending in .config)",
                    p.display(),
                    as_path.display()
                )))
            }
        })
        .collect()
}

/// Reads and concatenates the requirements of several fragments; an option named by two
/// fragments must want the same value.
pub fn requirements(paths: &[PathBuf]) -> Result<Vec<Requirement>, KconfigError> {
    let texts = paths
        .iter()
        .map(|p| {
            std::fs::read_to_string(p)
                .map(|t| (p.clone(), t))
                .map_err(|source| KconfigError::Io {
                    path: p.clone(),
                    source,
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    requirements_of(&texts)
}

/// [`requirements`] of fragments already read: (path for messages, text).
pub fn requirements_of(fragments: &[(PathBuf, String)]) -> Result<Vec<Requirement>, KconfigError> {
    let mut all: Vec<Requirement> = Vec::new();
    for (p, text) in fragments {
        for r in parse_fragment(p, text)? {
            if let Some(prev) = all.iter().find(|x| x.option == r.option) {
                if prev.want != r.want {
                    return Err(KconfigError::Fragment {
                        path: r.file.clone(),
                        line: r.line,
                        msg: format!(
                            "{}={} contradicts {}:{} which wants {}",
                            r.option,
                            r.want,
                            prev.file.display(),
                            prev.line,
                            prev.want
                        ),
                    });
                }
                continue;
            }
            all.push(r);
        }
    }
    Ok(all)
}

/// Where the image's modules stand, for options a kernel builds as modules.
#[derive(Debug, Clone, Default)]
pub struct Modules {
    /// Module names the image carries (`-` and `_` are the same).
    pub in_image: BTreeSet<String>,
    /// Module names the kernel's module tree has, when known.
    pub in_kernel: Option<BTreeSet<String>>,
    /// Whether the image is being built (so a module not in it is an error) or a kernel is
    /// checked on its own.
    pub image_known: bool,
}

/// Normalizes a module name (`virtio-rng` → `virtio_rng`).
pub fn module_key(name: &str) -> String {
    name.replace('-', "_")
}

/// What the kernel does about one requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// `=y` as wanted (or not set, as wanted).
    Ok,
    /// Built as a module that the image carries (or that the kernel has, when checking a
    /// kernel alone).
    Module(String),
    /// Built as a module the image does not carry.
    ModuleNotInImage(String),
    /// `=m`, but the module file is not in the kernel's module tree.
    ModuleMissing(String),
    /// `=m` and no module name is known for it.
    ModuleUnnamed,
    /// Not enabled.
    Missing,
    /// Set although the fragment wants it not set.
    Forbidden(String),
    /// A literal value other than the wanted one.
    Differs(String),
}

/// One line of the report.
#[derive(Debug, Clone)]
pub struct Finding {
    /// The requirement.
    pub req: Requirement,
    /// What the kernel has.
    pub verdict: Verdict,
    /// Whether this finding stops the image from working.
    pub fatal: bool,
}

/// The check's result.
#[derive(Debug, Clone)]
pub struct Report {
    /// Where the kernel's config came from.
    pub config_source: String,
    /// One finding per requirement, in fragment order.
    pub findings: Vec<Finding>,
}

impl Report {
    /// Whether the image cannot work with this kernel.
    pub fn fatal(&self) -> bool {
        self.findings.iter().any(|f| f.fatal)
    }

    /// The findings that are not fine.
    pub fn problems(&self) -> impl Iterator<Item = &Finding> {
        self.findings
            .iter()
            .filter(|f| !matches!(f.verdict, Verdict::Ok | Verdict::Module(_)))
    }

    /// A human-readable table: every requirement, its verdict and the fragment line.
    pub fn render(&self, all: bool) -> String {
        let mut out = format!("kernel config: {}\n", self.config_source);
        let width = self
            .findings
            .iter()
            .map(|f| f.req.option.len() + f.req.want.len() + 1)
            .max()
            .unwrap_or(0);
        let vwidth = self
            .findings
            .iter()
            .map(|f| describe(&f.verdict, &f.req.want).len())
            .max()
            .unwrap_or(0);
        for f in &self.findings {
            let ok = matches!(f.verdict, Verdict::Ok | Verdict::Module(_));
            if ok && !all {
                continue;
            }
            let mark = if f.fatal {
                "error"
            } else if ok {
                "ok"
            } else {
                "warn"
            };
            let want = format!("{}={}", f.req.option, f.req.want);
            let _ = writeln!(
                out,
                "{mark:>5}  {want:<width$}  {:<vwidth$}  {}:{}{}",
                describe(&f.verdict, &f.req.want),
                f.req.file.display(),
                f.req.line,
                match f.req.severity {
                    Severity::Required => String::new(),
                    Severity::RequiredFor(ft) => format!(" (for {})", ft.name()),
                    Severity::Advisory => " (advisory)".into(),
                }
            );
        }
        let fatal = self.findings.iter().filter(|f| f.fatal).count();
        let warn = self.problems().count() - fatal;
        let _ = if fatal > 0 {
            writeln!(
                out,
                "{fatal} required option(s) missing: the image cannot work with this kernel \
                 ({warn} warning(s)); enable them in the kernel, or add the modules to the \
                 spec's `modules:`"
            )
        } else {
            writeln!(
                out,
                "the kernel meets every required option ({warn} warning(s))"
            )
        };
        out
    }
}

fn describe(v: &Verdict, want: &str) -> String {
    match v {
        Verdict::Ok if want == "y" => "built in".into(),
        Verdict::Ok if want == "n" => "not set".into(),
        Verdict::Ok => "as wanted".into(),
        Verdict::Module(m) => format!("module {m}, in the image"),
        Verdict::ModuleNotInImage(m) => format!("module {m}, not in the image"),
        Verdict::ModuleMissing(m) => format!("=m but {m}.ko is not in the kernel's modules"),
        Verdict::ModuleUnnamed => "=m (module name unknown)".into(),
        Verdict::Missing => "missing".into(),
        Verdict::Forbidden(v) => format!("set (={v}), should not be"),
        Verdict::Differs(v) => format!("is {v}"),
    }
}

/// Checks `config` against `reqs` for an image using `features`.
pub fn check(
    config: &KernelConfig,
    config_source: &str,
    reqs: &[Requirement],
    features: &BTreeSet<Feature>,
    modules: &Modules,
) -> Report {
    let findings = reqs
        .iter()
        .map(|r| {
            let have = config.get(&r.option);
            let verdict = match (r.want.as_str(), have) {
                ("n", "n") => Verdict::Ok,
                ("n", v) => Verdict::Forbidden(v.to_owned()),
                ("y" | "m", "y") => Verdict::Ok,
                ("y" | "m", "m") => match &r.module {
                    None => Verdict::ModuleUnnamed,
                    Some(m) => {
                        let key = module_key(m);
                        let in_kernel = modules.in_kernel.as_ref().map(|k| k.contains(&key));
                        if in_kernel == Some(false) {
                            Verdict::ModuleMissing(m.clone())
                        } else if modules.image_known && !modules.in_image.contains(&key) {
                            Verdict::ModuleNotInImage(m.clone())
                        } else {
                            Verdict::Module(m.clone())
                        }
                    }
                },
                ("y" | "m", _) => Verdict::Missing,
                (want, v) if want == v => Verdict::Ok,
                (_, v) => Verdict::Differs(v.to_owned()),
            };
            let applies = match r.severity {
                Severity::Required => true,
                Severity::RequiredFor(f) => features.contains(&f),
                Severity::Advisory => false,
            };
            let broken = matches!(
                verdict,
                Verdict::Missing | Verdict::ModuleMissing(_) | Verdict::ModuleNotInImage(_)
            );
            Finding {
                fatal: applies && broken,
                req: r.clone(),
                verdict,
            }
        })
        .collect();
    Report {
        config_source: config_source.to_owned(),
        findings,
    }
}

/// Every module name under a `lib/modules/VERSION` directory.
pub fn module_names(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Some(name) = p.file_name().and_then(|n| n.to_str()) {
                if let Some(stem) = name.split(".ko").next().filter(|_| name.contains(".ko")) {
                    out.insert(module_key(stem));
                }
            }
        }
    }
    out
}

/// The architecture a kernel's config builds for, when it says.
pub fn arch_of(config: &KernelConfig) -> Option<minke_protocol::arch::Arch> {
    use minke_protocol::arch::Arch;
    if config.get("CONFIG_ARM64") == "y" {
        Some(Arch::Aarch64)
    } else if config.get("CONFIG_X86_64") == "y" {
        Some(Arch::X86_64)
    } else {
        None
    }
}

/// Finds a kernel image's configuration: the file itself when it is a config, the
/// `config-VERSION` beside a `vmlinuz-VERSION`, a `.config` in the same directory, or IKCONFIG
/// embedded in the image. Returns the config and a description of where it came from.
pub fn config_for(path: &Path) -> Result<(KernelConfig, String), KconfigError> {
    let io = |source| KconfigError::Io {
        path: path.to_path_buf(),
        source,
    };
    let bytes = std::fs::read(path).map_err(io)?;
    if looks_like_config(&bytes) {
        let text = String::from_utf8_lossy(&bytes);
        return Ok((KernelConfig::parse(&text), path.display().to_string()));
    }
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut beside = Vec::new();
    for prefix in ["vmlinuz-", "vmlinux-", "bzImage-"] {
        if let Some(ver) = name.strip_prefix(prefix) {
            beside.push(dir.join(format!("config-{ver}")));
        }
    }
    beside.push(dir.join(".config"));
    for c in beside {
        if let Ok(text) = std::fs::read_to_string(&c) {
            if looks_like_config(text.as_bytes()) {
                return Ok((KernelConfig::parse(&text), c.display().to_string()));
            }
        }
    }
    match ikconfig(&bytes) {
        Ok(text) => Ok((
            KernelConfig::parse(&text),
            format!("IKCONFIG embedded in {}", path.display()),
        )),
        Err(why) => Err(KconfigError::NotFound(format!(
            "no configuration for {}: no config-VERSION or .config beside it, and {why}; pass the \
             kernel's .config instead",
            path.display()
        ))),
    }
}

fn looks_like_config(bytes: &[u8]) -> bool {
    let head = &bytes[..bytes.len().min(4096)];
    std::str::from_utf8(head).is_ok_and(|s| {
        s.lines().any(|l| {
            parse_option(l.trim_end()).is_some() || l.starts_with("# Automatically generated")
        })
    })
}

/// Largest decompressed kernel accepted when looking for IKCONFIG.
const MAX_KERNEL: u64 = 256 << 20;

/// What a kernel file without IKCONFIG is told.
const NO_IKCONFIG: &str = "it is neither a bzImage nor an uncompressed kernel (vmlinux, arm64 \
                           Image, or one gzip-compressed) with IKCONFIG";

/// Extracts IKCONFIG (`IKCFG_ST` + gzip + `IKCFG_ED`) from a vmlinux, an arm64 Image (as is or
/// gzip-compressed, as Debian and most boot loaders take it) or a bzImage.
pub fn ikconfig(image: &[u8]) -> Result<String, String> {
    if image.starts_with(&[0x1f, 0x8b]) {
        let mut inflated = Vec::new();
        flate2::read::GzDecoder::new(image)
            .take(MAX_KERNEL)
            .read_to_end(&mut inflated)
            .map_err(|e| format!("it looks gzip-compressed but does not inflate: {e}"))?;
        return find_ikconfig(&inflated)?.ok_or_else(|| NO_IKCONFIG.into());
    }
    // A bzImage's compressed payload may hold the marker as a literal: only a vmlinux (or an
    // already decompressed blob) is searched as is.
    if image.get(0x202..0x206) != Some(b"HdrS") {
        return find_ikconfig(image)?.ok_or_else(|| NO_IKCONFIG.into());
    }
    let payload = bzimage_payload(image)?;
    let vmlinux = decompress_payload(payload)?;
    find_ikconfig(&vmlinux)?
        .ok_or_else(|| "the kernel has no IKCONFIG (CONFIG_IKCONFIG is not set)".into())
}

fn find_ikconfig(bytes: &[u8]) -> Result<Option<String>, String> {
    const ST: &[u8] = b"IKCFG_ST";
    const ED: &[u8] = b"IKCFG_ED";
    // The marker string may also occur elsewhere: the config is the first one followed by
    // valid gzip text up to an end marker.
    let mut from = 0;
    let mut last_err = None;
    while let Some(at) = find(&bytes[from..], ST) {
        let data = &bytes[from + at + ST.len()..];
        from += at + ST.len();
        let Some(end) = find(data, ED) else {
            last_err = Some("IKCONFIG start marker without an end marker".to_owned());
            continue;
        };
        let mut text = String::new();
        match flate2::read::GzDecoder::new(&data[..end])
            .take(16 << 20)
            .read_to_string(&mut text)
        {
            Ok(_) => return Ok(Some(text)),
            Err(e) => last_err = Some(format!("IKCONFIG is not valid gzip text: {e}")),
        }
    }
    last_err.map_or(Ok(None), Err)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The compressed kernel inside a bzImage, from the setup header's payload fields.
pub(crate) fn bzimage_payload(image: &[u8]) -> Result<&[u8], String> {
    let u32_at = |o: usize| {
        image
            .get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    if image.get(0x202..0x206) != Some(b"HdrS") {
        return Err(NO_IKCONFIG.into());
    }
    let version = image
        .get(0x206..0x208)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .unwrap_or(0);
    if version < 0x0208 {
        return Err(format!(
            "its boot protocol {version:#x} predates the payload fields (2.08)"
        ));
    }
    let setup_sects = match image.get(0x1f1).copied().unwrap_or(0) {
        0 => 4,
        n => n as usize,
    };
    let pm_start = (setup_sects + 1) * 512;
    let off = u32_at(0x248).ok_or("truncated setup header")?;
    let len = u32_at(0x24c).ok_or("truncated setup header")?;
    image
        .get(pm_start + off..pm_start + off + len)
        .ok_or_else(|| "the bzImage payload lies outside the file".into())
}

/// Whether [`decompress_payload`] reads this payload's compression (gzip, xz, zstd, lz4).
pub(crate) fn known_payload_compression(p: &[u8]) -> bool {
    p.starts_with(&[0x1f, 0x8b])
        || p.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0])
        || p.starts_with(&[0x28, 0xb5, 0x2f, 0xfd])
        || p.starts_with(&[0x02, 0x21, 0x4c, 0x18])
}

pub(crate) fn decompress_payload(p: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let r = if p.starts_with(&[0x1f, 0x8b]) {
        flate2::read::GzDecoder::new(p)
            .take(MAX_KERNEL)
            .read_to_end(&mut out)
    } else if p.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        xz2::read::XzDecoder::new(p)
            .take(MAX_KERNEL)
            .read_to_end(&mut out)
    } else if p.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        zstd::stream::read::Decoder::new(p)
            .map_err(|e| format!("zstd payload: {e}"))?
            .take(MAX_KERNEL)
            .read_to_end(&mut out)
    } else if p.starts_with(&[0x02, 0x21, 0x4c, 0x18]) {
        return lz4_legacy(p);
    } else {
        return Err(format!(
            "its payload compression (magic {:02x?}) is not gzip, xz, zstd or lz4",
            &p[..p.len().min(4)]
        ));
    };
    // A kernel payload is followed by its size (4 bytes), which the decoders may report as
    // trailing garbage once the stream is complete.
    match r {
        Ok(_) => Ok(out),
        Err(_) if !out.is_empty() => Ok(out),
        Err(e) => Err(format!("cannot decompress the kernel payload: {e}")),
    }
}

/// The lz4 "legacy" frame the kernel's build uses: magic, then blocks of (u32 LE size, data),
/// each decompressing to at most 8 MiB.
fn lz4_legacy(p: &[u8]) -> Result<Vec<u8>, String> {
    const BLOCK: usize = 8 << 20;
    let mut out = Vec::new();
    let mut at = 4;
    let mut buf = vec![0u8; BLOCK];
    while let Some(len) = p.get(at..at + 4) {
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        if len == 0x184c_2102 {
            at += 4; // a concatenated frame's magic
            continue;
        }
        let Some(block) = p.get(at + 4..at + 4 + len) else {
            break;
        };
        match lz4_flex::block::decompress_into(block, &mut buf) {
            Ok(n) => out.extend_from_slice(&buf[..n]),
            // The trailing size field reads as a bogus block: the stream is over.
            Err(_) if !out.is_empty() => break,
            Err(e) => return Err(format!("lz4 payload: {e}")),
        }
        if out.len() as u64 > MAX_KERNEL {
            return Err("the kernel payload decompresses to more than 256 MiB".into());
        }
        at += 4 + len;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reqs(text: &str) -> Vec<Requirement> {
        parse_fragment(Path::new("f.config"), text).unwrap()
    }

    #[test]
    fn fragment_directives_set_severity_and_module() {
        let r = reqs(
            "# comment\nCONFIG_A=y\n# @required-for disks\n# @module virtio_blk\nCONFIG_VIRTIO_BLK=y\n\
             # @advisory\n# CONFIG_KEXEC is not set\nCONFIG_S=\"x\"\n",
        );
        assert_eq!(r.len(), 4);
        assert_eq!((r[0].severity, r[0].line), (Severity::Required, 2));
        assert_eq!(r[1].severity, Severity::RequiredFor(Feature::Disks));
        assert_eq!(r[1].module.as_deref(), Some("virtio_blk"));
        assert_eq!(
            (r[2].want.as_str(), r[2].severity),
            ("n", Severity::Advisory)
        );
        assert_eq!(r[3].want, "\"x\"");
    }

    #[test]
    fn bad_fragments_name_the_line() {
        for (text, line, frag) in [
            ("CONFIG_A=y\nnonsense\n", 2, "is not"),
            ("# @required-for rockets\n", 1, "unknown feature"),
            ("# @frobnicate\n", 1, "unknown directive"),
            ("# @module a\n\nCONFIG_A=y\n", 1, "right before"),
            ("CONFIG_A=y\n# @module a\n", 2, "names no option"),
            ("CONFIG_A=y\nCONFIG_A=m\n", 2, "twice"),
        ] {
            let e = parse_fragment(Path::new("f.config"), text)
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(&format!("f.config:{line}: ")), "{e}");
            assert!(e.contains(frag), "{e}");
        }
    }

    #[test]
    fn verdicts() {
        let r = reqs(
            "CONFIG_Y=y\n# @module vsock\nCONFIG_VSOCKETS=y\n# @module ext4\nCONFIG_EXT4_FS=y\n\
             CONFIG_GONE=y\n# @module gone_mod\nCONFIG_GM=y\n# @advisory\n# CONFIG_KEXEC is not set\n",
        );
        let cfg = KernelConfig::parse(
            "CONFIG_Y=y\nCONFIG_VSOCKETS=m\nCONFIG_EXT4_FS=m\n# CONFIG_GONE is not set\nCONFIG_GM=m\nCONFIG_KEXEC=y\n",
        );
        let modules = Modules {
            in_image: ["vsock".to_string()].into(),
            in_kernel: Some(["vsock".to_string(), "ext4".to_string()].into()),
            image_known: true,
        };
        let rep = check(&cfg, "test", &r, &BTreeSet::new(), &modules);
        let v: Vec<_> = rep
            .findings
            .iter()
            .map(|f| (f.verdict.clone(), f.fatal))
            .collect();
        assert_eq!(
            v,
            vec![
                (Verdict::Ok, false),
                (Verdict::Module("vsock".into()), false),
                (Verdict::ModuleNotInImage("ext4".into()), true),
                (Verdict::Missing, true),
                (Verdict::ModuleMissing("gone_mod".into()), true),
                (Verdict::Forbidden("y".into()), false),
            ]
        );
        assert!(rep.fatal());
        let text = rep.render(false);
        assert!(
            text.contains("CONFIG_GONE=y") && text.contains("f.config:6"),
            "{text}"
        );
        assert!(!text.contains("CONFIG_Y=y"), "{text}");
    }

    #[test]
    fn required_for_applies_only_with_the_feature() {
        let r = reqs("# @required-for zstd\nCONFIG_RD_ZSTD=y\n");
        let cfg = KernelConfig::parse("# CONFIG_RD_ZSTD is not set\n");
        let m = Modules::default();
        assert!(!check(&cfg, "t", &r, &BTreeSet::new(), &m).fatal());
        assert!(check(&cfg, "t", &r, &[Feature::Zstd].into(), &m).fatal());
    }

    #[test]
    fn ikconfig_found_in_a_vmlinux_blob() {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(b"CONFIG_IKCONFIG=y\nCONFIG_VSOCKETS=y\n")
            .unwrap();
        let mut blob = b"\x7fELF junk".to_vec();
        blob.extend_from_slice(b"IKCFG_ST");
        blob.extend_from_slice(&gz.finish().unwrap());
        blob.extend_from_slice(b"IKCFG_ED more");
        let cfg = KernelConfig::parse(&ikconfig(&blob).unwrap());
        assert_eq!(cfg.get("CONFIG_VSOCKETS"), "y");
        assert_eq!(cfg.get("CONFIG_NOPE"), "n");
    }

    #[test]
    fn garbage_images_are_errors_not_panics() {
        for blob in [
            &b""[..],
            b"IKCFG_ST",
            b"IKCFG_STnot gzipIKCFG_ED",
            &[0u8; 0x300][..],
        ] {
            assert!(ikconfig(blob).is_err());
        }
        let mut fake = vec![0u8; 0x1000];
        fake[0x202..0x206].copy_from_slice(b"HdrS");
        fake[0x206] = 0x0f;
        fake[0x207] = 0x02;
        fake[0x248..0x24c].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
        fake[0x24c..0x250].copy_from_slice(&0x100u32.to_le_bytes());
        assert!(ikconfig(&fake).unwrap_err().contains("outside"));
        assert!(lz4_legacy(&[0x02, 0x21, 0x4c, 0x18, 5, 0, 0, 0, 1, 2, 3, 4, 5]).is_err());
    }
}
