//! Kernel module closure in load order, read from each module's `.modinfo` section, so a
//! modules tree fresh out of a kernel package (no `modules.dep`) is enough; no depmod is run.
//!
//! Lookup of a name follows modprobe: a module file of that name (`-` and `_` are the same),
//! then a built-in module (`modules.builtin`, which counts as already loaded), then the
//! `alias=` patterns of all modules, then the aliases of built-in modules
//! (`modules.builtin.modinfo`). Hard dependencies (`depends=`) must exist; soft ones
//! (`softdep=pre: … post: …`) are loaded when present and skipped otherwise, as modprobe does.
//!
//! Order: depth-first post-order (soft `pre:` dependencies in their listed order, then hard
//! dependencies sorted by name, then the module, then its `post:` soft dependencies), requested
//! modules in the order given. Every module therefore comes after everything it needs; the
//! result depends only on the modules tree and the request. A cycle of hard dependencies is an
//! error; a soft dependency leading back into the current chain is dropped.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use goblin::elf::Elf;

use crate::fsutil::walk_sorted;

/// Largest decompressed module accepted.
const MAX_MODULE_SIZE: u64 = 512 << 20;

/// Errors of module resolution.
#[derive(Debug, thiserror::Error)]
pub enum KmodError {
    /// A file or directory could not be read.
    #[error("cannot read {path}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A requested module does not exist.
    #[error("module {name} not found in {dir}: check the name (`-` and `_` are the same) and that this kernel builds it")]
    NotFound {
        /// The module.
        name: String,
        /// The modules directory.
        dir: PathBuf,
    },
    /// A dependency named in `.modinfo` does not exist.
    #[error("module {name}, needed by {needed_by}, not found in {dir}: the modules tree is incomplete; unpack the whole kernel package")]
    MissingDependency {
        /// The dependency.
        name: String,
        /// The module depending on it.
        needed_by: String,
        /// The modules directory.
        dir: PathBuf,
    },
    /// Hard dependencies form a cycle.
    #[error("module dependency cycle {}: the modules tree is inconsistent", chain.join(" -> "))]
    Cycle {
        /// The modules of the cycle, the first repeated at the end.
        chain: Vec<String>,
    },
    /// A module is not a valid ELF object.
    #[error("{path} is not a valid kernel module: the file is corrupt")]
    Elf {
        /// The module file.
        path: PathBuf,
        /// goblin's error.
        source: goblin::error::Error,
    },
    /// A module has no `.modinfo` section, or one outside the file.
    #[error(
        "{path} has no readable .modinfo section: the file is not a kernel module or is corrupt"
    )]
    NoModinfo {
        /// The module file.
        path: PathBuf,
    },
    /// A compressed module could not be decompressed.
    #[error("cannot decompress {path}")]
    Decompress {
        /// The module file.
        path: PathBuf,
        /// The decoder's error.
        source: io::Error,
    },
}

crate::error::into_io_variant!(KmodError);

/// The fields of a `.modinfo` section this resolver uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Modinfo {
    /// `name=`, normalized, if present.
    pub name: Option<String>,
    /// `depends=`, normalized, in the listed order.
    pub depends: Vec<String>,
    /// `softdep=pre:` names.
    pub softdep_pre: Vec<String>,
    /// `softdep=post:` names.
    pub softdep_post: Vec<String>,
    /// `alias=` patterns.
    pub aliases: Vec<String>,
}

/// A module of the closure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleInfo {
    /// Normalized name (`_`, not `-`).
    pub name: String,
    /// File, relative to the modules directory (e.g. `kernel/fs/binfmt_misc.ko`).
    pub path: PathBuf,
    /// What its `.modinfo` says.
    pub modinfo: Modinfo,
}

/// A module name with `-` written as `_`, as the kernel and kmod compare them.
pub fn normalize_name(name: &str) -> String {
    name.replace('-', "_")
}

/// An alias with `-` as `_` outside `[...]` brackets (kmod's normalization).
fn normalize_alias(alias: &str) -> String {
    let mut out = String::with_capacity(alias.len());
    let mut in_brackets = false;
    for c in alias.chars() {
        match c {
            '[' => in_brackets = true,
            ']' => in_brackets = false,
            '-' if !in_brackets => {
                out.push('_');
                continue;
            }
            _ => {}
        }
        out.push(c);
    }
    out
}

/// Parses a `.modinfo` section: NUL-separated `key=value` strings. Never fails; entries without
/// `=` and unknown keys are ignored, non-UTF-8 bytes replaced.
pub fn parse_modinfo(section: &[u8]) -> Modinfo {
    let mut info = Modinfo::default();
    for raw in section.split(|&b| b == 0).filter(|s| !s.is_empty()) {
        let entry = String::from_utf8_lossy(raw);
        let Some((key, value)) = entry.split_once('=') else {
            continue;
        };
        match key {
            "name" => info.name = Some(normalize_name(value.trim())),
            "depends" => {
                info.depends.extend(
                    value
                        .split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(normalize_name),
                );
            }
            "softdep" => {
                // "pre: a b post: c"; words before any pre:/post: are ignored, as kmod does.
                let mut list: Option<&mut Vec<String>> = None;
                for word in value.split_whitespace() {
                    match word {
                        "pre:" => list = Some(&mut info.softdep_pre),
                        "post:" => list = Some(&mut info.softdep_post),
                        w => {
                            if let Some(l) = list.as_deref_mut() {
                                l.push(normalize_name(w));
                            }
                        }
                    }
                }
            }
            "alias" => info.aliases.push(value.trim().to_string()),
            _ => {}
        }
    }
    info
}

/// The bytes of the `.modinfo` section of an ELF object.
pub fn modinfo_section(bytes: &[u8]) -> Result<Option<&[u8]>, goblin::error::Error> {
    let elf = Elf::parse(bytes)?;
    for sh in &elf.section_headers {
        if elf.shdr_strtab.get_at(sh.sh_name) == Some(".modinfo") {
            let start = usize::try_from(sh.sh_offset).ok();
            let end = start.and_then(|s| {
                usize::try_from(sh.sh_size)
                    .ok()
                    .and_then(|n| s.checked_add(n))
            });
            return Ok(match (start, end) {
                (Some(s), Some(e)) => bytes.get(s..e),
                _ => None,
            });
        }
    }
    Ok(None)
}

/// Reads a module file (`.ko`, `.ko.xz`, `.ko.zst`, `.ko.gz`), decompressing in memory.
fn read_module(path: &Path) -> Result<Vec<u8>, KmodError> {
    let file = fs::File::open(path).map_err(|source| KmodError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let name = path.to_string_lossy();
    let mut reader: Box<dyn Read> = if name.ends_with(".xz") {
        Box::new(xz2::read::XzDecoder::new_multi_decoder(file))
    } else if name.ends_with(".zst") {
        Box::new(zstd::stream::read::Decoder::new(file).map_err(|source| {
            KmodError::Decompress {
                path: path.to_path_buf(),
                source,
            }
        })?)
    } else if name.ends_with(".gz") {
        Box::new(flate2::read::MultiGzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let mut buf = Vec::new();
    reader
        .by_ref()
        .take(MAX_MODULE_SIZE)
        .read_to_end(&mut buf)
        .map_err(|source| KmodError::Decompress {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(buf)
}

/// Reads and parses the `.modinfo` of a module file.
pub fn read_modinfo(path: &Path) -> Result<Modinfo, KmodError> {
    let bytes = read_module(path)?;
    let section = modinfo_section(&bytes)
        .map_err(|source| KmodError::Elf {
            path: path.to_path_buf(),
            source,
        })?
        .ok_or_else(|| KmodError::NoModinfo {
            path: path.to_path_buf(),
        })?;
    Ok(parse_modinfo(section))
}

/// The module name of a file name, if it is a module (`virtio-blk.ko.xz` → `virtio_blk`).
pub fn module_stem(file_name: &str) -> Option<String> {
    [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .find_map(|ext| file_name.strip_suffix(ext))
        .filter(|s| !s.is_empty())
        .map(normalize_name)
}

/// An indexed modules directory (`lib/modules/<version>`).
#[derive(Debug)]
pub struct ModulesDir {
    dir: PathBuf,
    /// Name → path relative to `dir`.
    files: BTreeMap<String, PathBuf>,
    builtin: BTreeSet<String>,
    /// (normalized alias pattern, builtin module name).
    builtin_aliases: Vec<(String, String)>,
    /// (normalized alias pattern, module name), read on first need.
    aliases: OnceLock<Vec<(String, String)>>,
}

impl ModulesDir {
    /// Indexes the module files below `dir` by name. When two files carry the same name, one
    /// below `updates/` wins, else the first in path order.
    pub fn open(dir: &Path) -> Result<ModulesDir, KmodError> {
        let mut found: Vec<PathBuf> = walk_sorted(dir, |_| false)?
            .into_iter()
            .filter(|e| e.file_type.is_file())
            .map(|e| e.rel)
            .collect();
        found.sort_by_key(|p| (!p.starts_with("updates"), p.clone()));
        let mut files = BTreeMap::new();
        for rel in found {
            if let Some(name) = rel
                .file_name()
                .and_then(|f| f.to_str())
                .and_then(module_stem)
            {
                files.entry(name).or_insert(rel);
            }
        }
        let builtin = match fs::read_to_string(dir.join("modules.builtin")) {
            Ok(text) => text
                .lines()
                .filter_map(|l| {
                    Path::new(l.trim())
                        .file_name()
                        .and_then(|f| f.to_str())
                        .and_then(module_stem)
                })
                .collect(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeSet::new(),
            Err(source) => {
                return Err(KmodError::Io {
                    path: dir.join("modules.builtin"),
                    source,
                })
            }
        };
        let mut builtin_aliases = Vec::new();
        if let Ok(bytes) = fs::read(dir.join("modules.builtin.modinfo")) {
            for raw in bytes.split(|&b| b == 0) {
                let entry = String::from_utf8_lossy(raw);
                if let Some((module, alias)) = entry.split_once(".alias=") {
                    builtin_aliases.push((normalize_alias(alias), normalize_name(module)));
                }
            }
        }
        Ok(ModulesDir {
            dir: dir.to_path_buf(),
            files,
            builtin,
            builtin_aliases,
            aliases: OnceLock::new(),
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether `name` is built into the kernel.
    pub fn is_builtin(&self, name: &str) -> bool {
        self.builtin.contains(&normalize_name(name))
    }

    /// The file of module `name`, relative to the directory.
    pub fn path_of(&self, name: &str) -> Option<&Path> {
        self.files.get(&normalize_name(name)).map(PathBuf::as_path)
    }

    /// (alias pattern, module) of every module; unreadable modules are skipped with a warning.
    fn module_aliases(&self) -> &[(String, String)] {
        self.aliases.get_or_init(|| {
            let mut v = Vec::new();
            for (name, rel) in &self.files {
                match read_modinfo(&self.dir.join(rel)) {
                    Ok(info) => v.extend(
                        info.aliases
                            .iter()
                            .map(|a| (normalize_alias(a), name.clone())),
                    ),
                    Err(e) => tracing::warn!(
                        "skipping module for alias lookup: {}",
                        crate::error_chain(&e)
                    ),
                }
            }
            v
        })
    }

    /// What `name` stands for: `Some(vec![])` when built in, the module names otherwise,
    /// `None` when nothing matches.
    fn lookup(&self, name: &str) -> Result<Option<Vec<String>>, KmodError> {
        let norm = normalize_name(name);
        if self.files.contains_key(&norm) {
            return Ok(Some(vec![norm]));
        }
        if self.builtin.contains(&norm) {
            return Ok(Some(vec![]));
        }
        let alias = normalize_alias(name);
        let matches = |pattern: &str| glob::Pattern::new(pattern).is_ok_and(|p| p.matches(&alias));
        let mods: BTreeSet<String> = self
            .module_aliases()
            .iter()
            .filter(|(p, _)| matches(p))
            .map(|(_, m)| m.clone())
            .collect();
        if !mods.is_empty() {
            return Ok(Some(mods.into_iter().collect()));
        }
        if self.builtin_aliases.iter().any(|(p, _)| matches(p)) {
            return Ok(Some(vec![]));
        }
        Ok(None)
    }

    /// The modules needed to load `names`, each after its dependencies. Built-in modules are
    /// left out. A name that matches nothing is a [`KmodError::NotFound`].
    pub fn closure<S: AsRef<str>>(&self, names: &[S]) -> Result<Vec<ModuleInfo>, KmodError> {
        let mut walk = Walk {
            dir: self,
            state: HashMap::new(),
            stack: Vec::new(),
            out: Vec::new(),
        };
        for name in names {
            let name = name.as_ref();
            let targets = self.lookup(name)?.ok_or_else(|| KmodError::NotFound {
                name: name.to_string(),
                dir: self.dir.clone(),
            })?;
            for t in targets {
                walk.visit(&t, false)?;
            }
        }
        Ok(walk.out)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    InProgress,
    Done,
}

struct Walk<'a> {
    dir: &'a ModulesDir,
    state: HashMap<String, State>,
    stack: Vec<String>,
    out: Vec<ModuleInfo>,
}

impl Walk<'_> {
    /// Visits module `name` (a real module file name). `soft` marks a soft dependency.
    fn visit(&mut self, name: &str, soft: bool) -> Result<(), KmodError> {
        match self.state.get(name) {
            Some(State::Done) => return Ok(()),
            Some(State::InProgress) if soft => {
                tracing::debug!(module = name, "dropping soft dependency that loops back");
                return Ok(());
            }
            Some(State::InProgress) => {
                let start = self.stack.iter().position(|m| m == name).unwrap_or(0);
                let mut chain = self.stack[start..].to_vec();
                chain.push(name.to_string());
                return Err(KmodError::Cycle { chain });
            }
            None => {}
        }
        let Some(rel) = self.dir.path_of(name).map(Path::to_path_buf) else {
            return Err(KmodError::NotFound {
                name: name.to_string(),
                dir: self.dir.dir.clone(),
            });
        };
        let info = read_modinfo(&self.dir.dir.join(&rel))?;
        self.state.insert(name.to_string(), State::InProgress);
        self.stack.push(name.to_string());
        for pre in &info.softdep_pre {
            self.visit_named(pre, true)?;
        }
        let mut deps = info.depends.clone();
        deps.sort();
        deps.dedup();
        for dep in &deps {
            if self.dir.is_builtin(dep) {
                continue;
            }
            if self.dir.path_of(dep).is_none() {
                return Err(KmodError::MissingDependency {
                    name: dep.clone(),
                    needed_by: name.to_string(),
                    dir: self.dir.dir.clone(),
                });
            }
            self.visit(dep, false)?;
        }
        self.stack.pop();
        self.state.insert(name.to_string(), State::Done);
        let post = info.softdep_post.clone();
        self.out.push(ModuleInfo {
            name: name.to_string(),
            path: rel,
            modinfo: info,
        });
        for p in &post {
            self.visit_named(p, true)?;
        }
        Ok(())
    }

    /// Visits whatever a soft dependency name stands for; unknown names are skipped.
    fn visit_named(&mut self, name: &str, soft: bool) -> Result<(), KmodError> {
        match self.dir.lookup(name)? {
            Some(targets) => {
                for t in targets {
                    self.visit(&t, soft)?;
                }
            }
            None => tracing::debug!(module = name, "soft dependency not found; skipped"),
        }
        Ok(())
    }
}

/// The modules needed to load `names` from `modules_dir` (`lib/modules/<version>`), in a valid
/// load order. See [`ModulesDir::closure`].
pub fn closure<S: AsRef<str>>(
    modules_dir: &Path,
    names: &[S],
) -> Result<Vec<ModuleInfo>, KmodError> {
    ModulesDir::open(modules_dir)?.closure(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::deb;
    use std::process::Command;

    #[test]
    fn modinfo_parser_reads_fields() {
        let s = b"license=GPL\0depends=virtio,virtio-ring,\0name=virtio_blk\0softdep=pre: a-b c post: d\0\
                  softdep=crc32\0softdep=pre: e\0alias=virtio:d00000002v*\0vermagic=6.1\0";
        let m = parse_modinfo(s);
        assert_eq!(m.name.as_deref(), Some("virtio_blk"));
        assert_eq!(m.depends, ["virtio", "virtio_ring"]);
        assert_eq!(m.softdep_pre, ["a_b", "c", "e"]);
        assert_eq!(m.softdep_post, ["d"]);
        assert_eq!(m.aliases, ["virtio:d00000002v*"]);
    }

    #[test]
    fn modinfo_parser_survives_garbage() {
        for s in [
            &b""[..],
            b"\0\0\0",
            b"=",
            b"depends=",
            b"softdep=post:",
            b"\xff\xfe=\xff\0name",
            b"depends=,,,",
        ] {
            let _ = parse_modinfo(s);
        }
        assert!(modinfo_section(b"not an elf").is_err());
        let mut elf = b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\x01\0\x3e\0".to_vec();
        elf.resize(64, 0xff);
        assert!(modinfo_section(&elf).is_err() || modinfo_section(&elf).unwrap().is_none());
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("bogus.ko"), b"\x7fELF garbage").unwrap();
        fs::write(dir.path().join("bogus2.ko.xz"), b"not xz").unwrap();
        let md = ModulesDir::open(dir.path()).unwrap();
        assert!(matches!(md.closure(&["bogus"]), Err(KmodError::Elf { .. })));
        assert!(matches!(
            md.closure(&["bogus2"]),
            Err(KmodError::Decompress { .. })
        ));
        match md.closure(&["nothere"]) {
            Err(KmodError::NotFound { name, dir: d }) => {
                assert_eq!(name, "nothere");
                assert_eq!(d, dir.path());
            }
            other => panic!("{other:?}"),
        }
    }

    /// Kernel modules tree unpacked from the cached kernel package, with its version.
    fn kernel() -> Option<(tempfile::TempDir, PathBuf, String)> {
        let Some(debfile) = deb::cached_kernel_deb() else {
            eprintln!(
                "skipped: no kernel .deb in {} (run `cargo xtask setup`)",
                deb::debs_dir().display()
            );
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let k = deb::kernel_from_deb(&debfile, dir.path()).unwrap();
        Some((dir, k.modules_dir, k.version))
    }

    fn modprobe_show_depends(root: &Path, version: &str, name: &str, conf: &Path) -> Vec<String> {
        let out = Command::new("modprobe")
            .arg("-C")
            .arg(conf)
            .args(["--show-depends", "-d"])
            .arg(root)
            .args(["-S", version, name])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "modprobe {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .filter_map(|l| l.trim().strip_prefix("insmod "))
            .map(|p| {
                module_stem(Path::new(p.trim()).file_name().unwrap().to_str().unwrap()).unwrap()
            })
            .collect()
    }

    #[test]
    fn closure_agrees_with_modprobe() {
        let Some((tmp, modules_dir, version)) = kernel() else {
            return;
        };
        let wanted = [
            "vmw_vsock_virtio_transport",
            "virtio_blk",
            "binfmt_misc",
            "crc32c",
            "xts",
            "ext4",
        ];
        let ours = closure(&modules_dir, &wanted).unwrap();
        let names: Vec<&str> = ours.iter().map(|m| m.name.as_str()).collect();
        assert!(
            names.contains(&"virtio_ring")
                && names.contains(&"crc32c_intel")
                && !names.contains(&"ext4")
        );
        for m in &ours {
            assert!(modules_dir.join(&m.path).is_file());
        }
        if Command::new("depmod").arg("--version").output().is_err() {
            eprintln!("skipped the modprobe comparison: kmod is not installed");
            return;
        }
        // depmod and modprobe work on the same tree, after our closure was computed without it.
        let root = tmp.path();
        let st = Command::new("depmod")
            .arg("-b")
            .arg(root)
            .arg(&version)
            .status()
            .unwrap();
        assert!(st.success());
        let conf = tempfile::tempdir().unwrap();
        let mut expected = BTreeSet::new();
        for w in wanted {
            expected.extend(modprobe_show_depends(root, &version, w, conf.path()));
        }
        let got: BTreeSet<String> = names.iter().map(|s| s.to_string()).collect();
        assert_eq!(got, expected);
        // Our order is a valid load order for modprobe's dependency relation (modules.dep).
        let pos: HashMap<&str, usize> = names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
        for (i, n) in names.iter().enumerate() {
            // What modprobe loads before n (post: soft dependencies come after it).
            let list = modprobe_show_depends(root, &version, n, conf.path());
            for dep in list.iter().take_while(|d| d.as_str() != *n) {
                assert!(
                    pos[dep.as_str()] < i,
                    "{dep} must load before {n}: {names:?}"
                );
            }
        }
    }

    #[test]
    fn compressed_modules_and_missing_dependencies() {
        let Some((_tmp, modules_dir, _)) = kernel() else {
            return;
        };
        // Copy a few modules into a fresh tree: xz, zstd, and a `-` spelled name.
        let dir = tempfile::tempdir().unwrap();
        let md = ModulesDir::open(&modules_dir).unwrap();
        for (name, comp) in [("virtio_ring", "xz"), ("virtio", "zst"), ("virtio_blk", "")] {
            let bytes = fs::read(modules_dir.join(md.path_of(name).unwrap())).unwrap();
            let (file, data) = match comp {
                "xz" => {
                    let mut e = xz2::read::XzEncoder::new(&bytes[..], 1);
                    let mut v = Vec::new();
                    e.read_to_end(&mut v).unwrap();
                    (format!("{name}.ko.xz"), v)
                }
                "zst" => (
                    format!("{name}.ko.zst"),
                    zstd::encode_all(&bytes[..], 1).unwrap(),
                ),
                _ => (format!("{}.ko", name.replace('_', "-")), bytes),
            };
            fs::create_dir_all(dir.path().join("kernel/x")).unwrap();
            fs::write(dir.path().join("kernel/x").join(file), data).unwrap();
        }
        let got: Vec<String> = closure(dir.path(), &["virtio-blk"])
            .unwrap()
            .into_iter()
            .map(|m| m.name)
            .collect();
        // virtio and virtio_ring depend on each other one way or the other, depending on the
        // kernel release; virtio_blk needs both, so it comes last.
        let mut set = got.clone();
        set.sort();
        assert_eq!(set, ["virtio", "virtio_blk", "virtio_ring"]);
        assert_eq!(got.last().map(String::as_str), Some("virtio_blk"));
        // virtio_ring missing: the error names it and who needs it.
        fs::remove_file(dir.path().join("kernel/x/virtio_ring.ko.xz")).unwrap();
        match closure(dir.path(), &["virtio_blk"]) {
            Err(KmodError::MissingDependency {
                name, needed_by, ..
            }) => {
                assert_eq!(name, "virtio_ring");
                assert!(needed_by == "virtio" || needed_by == "virtio_blk");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn hard_cycles_are_errors() {
        // Walk's cycle detection, on a synthetic index without files: patch state directly.
        let md = ModulesDir {
            dir: PathBuf::from("/nonexistent"),
            files: BTreeMap::new(),
            builtin: BTreeSet::new(),
            builtin_aliases: Vec::new(),
            aliases: OnceLock::new(),
        };
        let mut w = Walk {
            dir: &md,
            state: HashMap::new(),
            stack: vec!["a".into(), "b".into()],
            out: Vec::new(),
        };
        w.state.insert("a".into(), State::InProgress);
        w.state.insert("b".into(), State::InProgress);
        match w.visit("a", false) {
            Err(KmodError::Cycle { chain }) => assert_eq!(chain, ["a", "b", "a"]),
            other => panic!("{other:?}"),
        }
        assert!(w.visit("a", true).is_ok());
    }
}
