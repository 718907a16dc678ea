//! Shared-library closure of dynamically linked ELF binaries, found by reading ELF headers and
//! searching the way glibc's ld.so does, without running any loader.
//!
//! # Search rules (glibc's, for a library name without `/`)
//! 1. When the object that needs the library has no `DT_RUNPATH`: the `DT_RPATH` of that
//!    object, then of the object that loaded it, and so on up to the executable (an object with
//!    `DT_RUNPATH` has its `DT_RPATH` ignored).
//! 2. `LD_LIBRARY_PATH`: deliberately ignored (the image must not depend on the build shell).
//! 3. The `DT_RUNPATH` of the needing object only (not inherited).
//! 4. The directories of `/etc/ld.so.conf` (with `include` globs, expanded in sorted order),
//!    standing in for `ld.so.cache`, which is built from them.
//! 5. The system directories: `/lib/<triplet>` and `/usr/lib/<triplet>` on Debian multiarch
//!    roots (`/lib64`, `/usr/lib64` for 64-bit objects elsewhere), then `/lib` and `/usr/lib`.
//!
//! Dependencies are loaded breadth-first and a name already loaded (by name or `DT_SONAME`) is
//! not searched again, so the first object to need a library decides where it comes from, as
//! in ld.so. Candidates of another ELF class, byte order or machine are skipped. `$ORIGIN` is the
//! directory of the executable after resolving symlinks, and for a library the directory it was
//! found in; `$LIB` is `lib/<triplet>` on Debian multiarch roots (what Debian's glibc uses),
//! else `lib64`/`lib`; `$PLATFORM` is the machine name (`x86_64`, `aarch64`, …). Hardware
//! capability subdirectories (`glibc-hwcaps/…`, `tls/…`) are not searched, so the result does
//! not depend on the build host's CPU; empty RPATH entries (the current directory) are ignored.
//!
//! All paths are image paths below `root` (`/` for the host); symlinks met on the way (including
//! merged-usr directory links such as `/lib → usr/lib`) are resolved inside `root` and recorded,
//! so the image can reproduce every path exactly as found.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fs;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

use goblin::elf::{header, Elf};

use crate::archive::tree::{FileData, Node, NodeKind, Tree, TreeError};

/// Errors of the closure computation.
#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    /// A file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A file is not valid ELF.
    #[error("{path} is not a valid ELF file: give a compiled binary, not a script")]
    Parse {
        /// The path.
        path: PathBuf,
        /// goblin's error.
        source: goblin::error::Error,
    },
    /// A needed library was found nowhere.
    #[error("library {name} needed by {needed_by} not found in its RPATH/RUNPATH, ld.so.conf or the system directories{root}: install the package that provides it")]
    MissingLibrary {
        /// The `DT_NEEDED` name.
        name: String,
        /// The object that needs it (image path).
        needed_by: PathBuf,
        /// ` under ROOT` for foreign roots, else empty.
        root: String,
    },
    /// The program interpreter is missing or unusable.
    #[error(
        "interpreter {interp} of {binary} {problem}: install the C library for that architecture"
    )]
    Interpreter {
        /// The `PT_INTERP` path.
        interp: PathBuf,
        /// The binary.
        binary: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The tree refused an entry.
    #[error("cannot add {path} to the image")]
    Tree {
        /// The image path.
        path: String,
        /// The tree's error.
        source: TreeError,
    },
    /// The tree already has something else at a path the closure needs.
    #[error("{path} is already in the image as {existing}, but the library closure needs {wanted} there: remove one of the two sources")]
    Conflict {
        /// The image path.
        path: String,
        /// What the tree has.
        existing: String,
        /// What the closure needs.
        wanted: String,
    },
}

/// Tuning of the search.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Extra image directories searched after ld.so.conf and before the system directories.
    pub extra_dirs: Vec<PathBuf>,
    /// Do not read `/etc/ld.so.conf` of the root.
    pub ignore_ld_so_conf: bool,
}

/// One library of the closure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Library {
    /// The `DT_NEEDED` name it was looked up by.
    pub name: String,
    /// The first object that needed it (image path as found).
    pub needed_by: PathBuf,
    /// The image path after resolving symlinks.
    pub real: PathBuf,
}

/// The files a set of binaries needs at run time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Closure {
    /// Program interpreters (`PT_INTERP`) as written in the binaries.
    pub interpreters: BTreeSet<PathBuf>,
    /// Libraries by the image path they were found at (e.g. `/lib/x86_64-linux-gnu/libc.so.6`).
    pub libraries: BTreeMap<PathBuf, Library>,
    /// Regular files to copy, by real image path (all symlinks resolved).
    pub files: BTreeSet<PathBuf>,
    /// Symlinks met while resolving: their location (parent directories resolved) → target,
    /// verbatim.
    pub symlinks: BTreeMap<PathBuf, String>,
}

impl Closure {
    /// Interpreters and libraries as found, sorted and unique (what `minke elf deps` prints).
    pub fn paths(&self) -> Vec<PathBuf> {
        let set: BTreeSet<&PathBuf> = self
            .interpreters
            .iter()
            .chain(self.libraries.keys())
            .collect();
        set.into_iter().cloned().collect()
    }

    /// Adds the closure to `tree`: symlinks as symlinks, files as [`FileData::Path`] read from
    /// `root` (root-owned, with the file's permission bits). Entries already in the tree with the
    /// same content are left alone; anything else at those paths is a [`ElfError::Conflict`].
    /// The binaries themselves are not added.
    pub fn add_to_tree(&self, root: &Path, tree: &mut Tree) -> Result<(), ElfError> {
        for (at, target) in &self.symlinks {
            put(tree, at, Node::symlink(target.clone()))?;
        }
        for real in &self.files {
            let host = host_path(root, real);
            let md = fs::metadata(&host).map_err(|source| ElfError::Read {
                path: host.clone(),
                source,
            })?;
            put(tree, real, Node::host_file(host, &md))?;
        }
        Ok(())
    }
}

fn describe(n: &Node) -> String {
    match &n.kind {
        NodeKind::Dir => "a directory".into(),
        NodeKind::File(FileData::Path { path, .. }) => format!("file {}", path.display()),
        NodeKind::File(FileData::Inline(_)) => "a file".into(),
        NodeKind::Symlink(t) => format!("a symlink to {t}"),
        NodeKind::Hardlink(t) => format!("a hard link to {t}"),
    }
}

fn put(tree: &mut Tree, at: &Path, node: Node) -> Result<(), ElfError> {
    let path = at.to_string_lossy().trim_start_matches('/').to_string();
    if let Some(existing) = tree.get(&path) {
        let same = match (&existing.kind, &node.kind) {
            (
                NodeKind::File(FileData::Path { path: a, .. }),
                NodeKind::File(FileData::Path { path: b, .. }),
            ) => a == b,
            (a, b) => a == b,
        };
        if same {
            return Ok(());
        }
        return Err(ElfError::Conflict {
            path,
            existing: describe(existing),
            wanted: describe(&node),
        });
    }
    tree.insert(&path, node)
        .map_err(|source| ElfError::Tree { path, source })?;
    Ok(())
}

/// The host path of image path `p` below `root`.
fn host_path(root: &Path, p: &Path) -> PathBuf {
    root.join(p.strip_prefix("/").unwrap_or(p))
}

/// A path resolved inside a root.
#[derive(Debug)]
struct Resolved {
    real: PathBuf,
    links: Vec<(PathBuf, String)>,
}

/// Resolves image path `path` physically inside `root` (absolute symlink targets restart at
/// `root`, `..` never climbs above it), recording every symlink followed.
fn resolve(root: &Path, path: &Path) -> io::Result<Resolved> {
    let mut real = PathBuf::from("/");
    let mut links = Vec::new();
    let mut pending: VecDeque<String> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    let mut hops = 0;
    while let Some(c) = pending.pop_front() {
        if c == ".." {
            real.pop();
            continue;
        }
        if c == "." || c.is_empty() {
            continue;
        }
        let candidate = real.join(&c);
        let host = host_path(root, &candidate);
        let md = fs::symlink_metadata(&host)?;
        if !md.file_type().is_symlink() {
            real = candidate;
            continue;
        }
        hops += 1;
        if hops > 40 {
            return Err(io::Error::other(format!(
                "too many levels of symbolic links at {}",
                candidate.display()
            )));
        }
        let target = fs::read_link(&host)?;
        let target_str = target
            .to_str()
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, "symlink target is not UTF-8")
            })?
            .to_string();
        links.push((candidate, target_str.clone()));
        if target.is_absolute() {
            real = PathBuf::from("/");
        }
        for part in target_str.split('/').rev() {
            if !part.is_empty() {
                pending.push_front(part.to_string());
            }
        }
    }
    Ok(Resolved { real, links })
}

/// What the search needs of an object.
struct Obj {
    /// Image path as found.
    path: PathBuf,
    /// `$ORIGIN`.
    origin: PathBuf,
    needed: Vec<String>,
    rpath: Vec<String>,
    runpath: Option<Vec<String>>,
    loader: Option<usize>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct Kind {
    is_64: bool,
    little: bool,
    machine: u16,
}

struct Parsed {
    kind: Kind,
    interp: Option<String>,
    needed: Vec<String>,
    rpath: Vec<String>,
    runpath: Option<Vec<String>>,
    soname: Option<String>,
}

fn read_file(path: &Path) -> Result<Vec<u8>, ElfError> {
    fs::read(path).map_err(|source| ElfError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn split_paths(list: &[&str]) -> Vec<String> {
    list.iter()
        .flat_map(|s| s.split(':'))
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

fn parse(host: &Path, bytes: &[u8]) -> Result<Parsed, ElfError> {
    let elf = Elf::parse(bytes).map_err(|source| ElfError::Parse {
        path: host.to_path_buf(),
        source,
    })?;
    let runpath = split_paths(&elf.runpaths);
    Ok(Parsed {
        kind: Kind {
            is_64: elf.is_64,
            little: elf.little_endian,
            machine: elf.header.e_machine,
        },
        interp: elf.interpreter.map(str::to_string),
        needed: elf.libraries.iter().map(|s| s.to_string()).collect(),
        // An object with DT_RUNPATH has its DT_RPATH ignored.
        rpath: if elf.runpaths.is_empty() {
            split_paths(&elf.rpaths)
        } else {
            Vec::new()
        },
        runpath: (!elf.runpaths.is_empty()).then_some(runpath),
        soname: elf.soname.map(str::to_string),
    })
}

/// Reads only the ELF header of a candidate library; `None` if it is not ELF.
fn peek_kind(host: &Path) -> Option<Kind> {
    let mut buf = [0u8; 64];
    let mut f = fs::File::open(host).ok()?;
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(_) => return None,
        }
    }
    let h = Elf::parse_header(&buf[..n]).ok()?;
    Some(Kind {
        is_64: h.e_ident[header::EI_CLASS] == header::ELFCLASS64,
        little: h.e_ident[header::EI_DATA] == header::ELFDATA2LSB,
        machine: h.e_machine,
    })
}

/// Debian's multiarch triplet and the `$PLATFORM` value for a machine.
fn arch_names(k: Kind) -> (Option<&'static str>, &'static str) {
    match (k.machine, k.is_64, k.little) {
        (header::EM_X86_64, true, _) => (Some("x86_64-linux-gnu"), "x86_64"),
        (header::EM_X86_64, false, _) => (Some("x86_64-linux-gnux32"), "x86_64"),
        (header::EM_386, _, _) => (Some("i386-linux-gnu"), "i686"),
        (header::EM_AARCH64, _, true) => (Some("aarch64-linux-gnu"), "aarch64"),
        (header::EM_AARCH64, _, false) => (Some("aarch64_be-linux-gnu"), "aarch64_be"),
        (header::EM_ARM, _, _) => (Some("arm-linux-gnueabihf"), "v7l"),
        (header::EM_S390, true, _) => (Some("s390x-linux-gnu"), "s390x"),
        (header::EM_PPC64, _, true) => (Some("powerpc64le-linux-gnu"), "powerpc64le"),
        (header::EM_PPC64, _, false) => (Some("powerpc64-linux-gnu"), "powerpc64"),
        (header::EM_RISCV, true, _) => (Some("riscv64-linux-gnu"), "riscv64"),
        (header::EM_MIPS, _, _) => (None, "mips"),
        _ => (None, ""),
    }
}

/// Search context of one root and one ELF kind.
struct Search<'a> {
    root: &'a Path,
    kind: Kind,
    lib: String,
    platform: &'static str,
    dirs: Vec<PathBuf>,
}

impl<'a> Search<'a> {
    fn new(root: &'a Path, kind: Kind, opts: &Options) -> Search<'a> {
        let (triplet, platform) = arch_names(kind);
        let multiarch = triplet.filter(|t| {
            resolve(root, &Path::new("/lib").join(t))
                .is_ok_and(|r| host_path(root, &r.real).is_dir())
                || resolve(root, &Path::new("/usr/lib").join(t))
                    .is_ok_and(|r| host_path(root, &r.real).is_dir())
        });
        let lib = match multiarch {
            Some(t) => format!("lib/{t}"),
            None if kind.is_64 => "lib64".into(),
            None => "lib".into(),
        };
        let mut dirs = Vec::new();
        if !opts.ignore_ld_so_conf {
            read_ld_so_conf(root, Path::new("/etc/ld.so.conf"), 0, &mut dirs);
        }
        dirs.extend(opts.extra_dirs.iter().cloned());
        match multiarch {
            Some(t) => dirs.extend([Path::new("/lib").join(t), Path::new("/usr/lib").join(t)]),
            None if kind.is_64 => {
                dirs.extend([PathBuf::from("/lib64"), PathBuf::from("/usr/lib64")])
            }
            None => {}
        }
        dirs.extend([PathBuf::from("/lib"), PathBuf::from("/usr/lib")]);
        let mut seen = BTreeSet::new();
        dirs.retain(|d| seen.insert(d.clone()));
        Search {
            root,
            kind,
            lib,
            platform,
            dirs,
        }
    }

    /// Expands `$ORIGIN`, `$LIB`, `$PLATFORM` (also `${…}`); other `$` are kept verbatim.
    fn expand(&self, s: &str, origin: &Path) -> String {
        let mut out = String::new();
        let mut rest = s;
        while let Some(i) = rest.find('$') {
            out.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            let (name, tail) = if let Some(b) = after.strip_prefix('{') {
                match b.find('}') {
                    Some(j) => (&b[..j], &b[j + 1..]),
                    None => ("", after),
                }
            } else {
                let j = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                (&after[..j], &after[j..])
            };
            match name {
                "ORIGIN" => out.push_str(&origin.to_string_lossy()),
                "LIB" => out.push_str(&self.lib),
                "PLATFORM" => out.push_str(self.platform),
                _ => {
                    out.push('$');
                    rest = after;
                    continue;
                }
            }
            rest = tail;
        }
        out.push_str(rest);
        out
    }

    /// The candidate at image path `p`, if it exists as an ELF file of the right kind.
    fn try_candidate(&self, p: &Path) -> Option<Resolved> {
        let r = resolve(self.root, p).ok()?;
        let host = host_path(self.root, &r.real);
        if !fs::metadata(&host).is_ok_and(|m| m.is_file()) {
            return None;
        }
        match peek_kind(&host) {
            Some(k) if k == self.kind => Some(r),
            _ => {
                tracing::debug!(candidate = %p.display(), "skipping library of another ELF kind");
                None
            }
        }
    }
}

/// Reads ld.so.conf-style `file` (an image path) into `out`: one directory per line, `#`
/// comments, `include GLOB…` (relative globs are relative to the file's directory; matches in
/// sorted order), `hwcap` lines ignored, old-style `=TYPE` suffixes dropped.
fn read_ld_so_conf(root: &Path, file: &Path, depth: u32, out: &mut Vec<PathBuf>) {
    if depth > 16 {
        return;
    }
    let Ok(r) = resolve(root, file) else { return };
    let Ok(text) = fs::read_to_string(host_path(root, &r.real)) else {
        return;
    };
    let base = file.parent().unwrap_or(Path::new("/"));
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut words = line.split_whitespace();
        match words.next() {
            Some("include") => {
                for pattern in words {
                    let pattern = base.join(pattern);
                    for f in glob_in_root(root, &pattern) {
                        read_ld_so_conf(root, &f, depth + 1, out);
                    }
                }
            }
            Some("hwcap") => {}
            _ => {
                let dir = line
                    .split('=')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .trim_end_matches('/');
                if dir.starts_with('/') {
                    out.push(PathBuf::from(dir));
                }
            }
        }
    }
}

/// Expands a glob (image path) inside `root`, component by component, sorted.
fn glob_in_root(root: &Path, pattern: &Path) -> Vec<PathBuf> {
    let mut current = vec![PathBuf::from("/")];
    for comp in pattern.components() {
        let Component::Normal(c) = comp else { continue };
        let c = c.to_string_lossy();
        let mut next = Vec::new();
        if !c.contains(['*', '?', '[']) {
            next = current.iter().map(|p| p.join(c.as_ref())).collect();
        } else {
            let Ok(pat) = glob::Pattern::new(&c) else {
                return Vec::new();
            };
            for dir in &current {
                let Ok(r) = resolve(root, dir) else { continue };
                let Ok(rd) = fs::read_dir(host_path(root, &r.real)) else {
                    continue;
                };
                let mut names: Vec<String> = rd
                    .flatten()
                    .filter_map(|e| e.file_name().to_str().map(str::to_string))
                    .collect();
                names.sort();
                for n in names {
                    if !n.starts_with('.') && pat.matches(&n) {
                        next.push(dir.join(n));
                    }
                }
            }
        }
        current = next;
    }
    current
}

/// Computes the shared-library closure of `binaries` (host paths; for a foreign `root` the
/// libraries are searched inside `root`). Static binaries contribute nothing.
pub fn closure(root: &Path, binaries: &[PathBuf], opts: &Options) -> Result<Closure, ElfError> {
    let mut out = Closure::default();
    let root_canon = fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    for bin in binaries {
        closure_of(root, &root_canon, bin, opts, &mut out)?;
    }
    Ok(out)
}

fn record(out: &mut Closure, r: &Resolved) {
    for (at, target) in &r.links {
        out.symlinks.insert(at.clone(), target.clone());
    }
    out.files.insert(r.real.clone());
}

fn closure_of(
    root: &Path,
    root_canon: &Path,
    bin: &Path,
    opts: &Options,
    out: &mut Closure,
) -> Result<(), ElfError> {
    let bytes = read_file(bin)?;
    let exe = parse(bin, &bytes)?;
    drop(bytes);
    if exe.interp.is_none() && exe.needed.is_empty() {
        return Ok(());
    }
    let search = Search::new(root, exe.kind, opts);
    // $ORIGIN of the executable: its real directory, as an image path when inside the root.
    let canon = fs::canonicalize(bin).map_err(|source| ElfError::Read {
        path: bin.to_path_buf(),
        source,
    })?;
    let exe_image = match canon.strip_prefix(root_canon) {
        Ok(rel) => Path::new("/").join(rel),
        Err(_) => canon.clone(),
    };
    let origin = exe_image.parent().unwrap_or(Path::new("/")).to_path_buf();
    let mut loaded: HashMap<String, usize> = HashMap::new();
    let mut objs = vec![Obj {
        path: exe_image.clone(),
        origin,
        needed: exe.needed,
        rpath: exe.rpath,
        runpath: exe.runpath,
        loader: None,
    }];
    if let Some(interp) = &exe.interp {
        let ipath = PathBuf::from(interp);
        let problem = |p: &str| ElfError::Interpreter {
            interp: ipath.clone(),
            binary: bin.to_path_buf(),
            problem: p.into(),
        };
        let r = resolve(root, &ipath).map_err(|e| problem(&format!("cannot be opened ({e})")))?;
        let host = host_path(root, &r.real);
        if peek_kind(&host) != Some(exe.kind) {
            return Err(problem("is not an ELF file of the same architecture"));
        }
        let parsed = parse(&host, &read_file(&host)?)?;
        record(out, &r);
        out.interpreters.insert(ipath.clone());
        // ld.so is already loaded: libc's DT_NEEDED on it matches by soname.
        for name in parsed.soname.iter().chain(std::iter::once(interp)) {
            loaded.insert(name.clone(), usize::MAX);
        }
    }
    let mut i = 0;
    while i < objs.len() {
        let needed = objs[i].needed.clone();
        for name in needed {
            if loaded.contains_key(&name) {
                continue;
            }
            let (found, r) =
                find(&search, &objs, i, &name).ok_or_else(|| ElfError::MissingLibrary {
                    name: name.clone(),
                    needed_by: objs[i].path.clone(),
                    root: if root == Path::new("/") {
                        String::new()
                    } else {
                        format!(" under {}", root.display())
                    },
                })?;
            let host = host_path(root, &r.real);
            let parsed = parse(&host, &read_file(&host)?)?;
            record(out, &r);
            out.libraries
                .entry(found.clone())
                .or_insert_with(|| Library {
                    name: name.clone(),
                    needed_by: objs[i].path.clone(),
                    real: r.real.clone(),
                });
            let idx = objs.len();
            loaded.insert(name.clone(), idx);
            loaded.insert(found.to_string_lossy().into_owned(), idx);
            if let Some(s) = &parsed.soname {
                loaded.entry(s.clone()).or_insert(idx);
            }
            objs.push(Obj {
                origin: found.parent().unwrap_or(Path::new("/")).to_path_buf(),
                path: found,
                needed: parsed.needed,
                rpath: parsed.rpath,
                runpath: parsed.runpath,
                loader: Some(i),
            });
        }
        i += 1;
    }
    Ok(())
}

/// Searches `name` for object `loader`; returns the path as found and its resolution.
fn find(
    search: &Search<'_>,
    objs: &[Obj],
    loader: usize,
    name: &str,
) -> Option<(PathBuf, Resolved)> {
    let obj = &objs[loader];
    if name.contains('/') {
        let p = PathBuf::from(search.expand(name, &obj.origin));
        let p = if p.is_absolute() {
            p
        } else {
            Path::new("/").join(p)
        };
        return search.try_candidate(&p).map(|r| (p, r));
    }
    let mut dirs: Vec<PathBuf> = Vec::new();
    if obj.runpath.is_none() {
        let mut l = Some(loader);
        while let Some(k) = l {
            dirs.extend(
                objs[k]
                    .rpath
                    .iter()
                    .map(|d| PathBuf::from(search.expand(d, &objs[k].origin))),
            );
            l = objs[k].loader;
        }
    }
    if let Some(rp) = &obj.runpath {
        dirs.extend(
            rp.iter()
                .map(|d| PathBuf::from(search.expand(d, &obj.origin))),
        );
    }
    dirs.iter()
        .chain(search.dirs.iter())
        .filter(|d| d.is_absolute())
        .find_map(|d| {
            let p = d.join(name);
            search.try_candidate(&p).map(|r| (p, r))
        })
}

/// The resolved dependencies of `binaries` on this host (interpreter and libraries as found,
/// sorted, unique): what `minke elf deps BINARY…` prints, one per line.
pub fn deps(binaries: &[PathBuf]) -> Result<Vec<PathBuf>, ElfError> {
    Ok(closure(Path::new("/"), binaries, &Options::default())?.paths())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// What the system loader says, via `ldd`, canonicalized.
    fn ldd(bin: &Path) -> Option<BTreeSet<PathBuf>> {
        let out = Command::new("ldd").arg(bin).output().ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut set = BTreeSet::new();
        for line in text.lines() {
            let line = line.trim();
            let p = match line.split_once("=>") {
                Some((_, right)) => right.trim(),
                None => line,
            };
            assert!(!p.starts_with("not found"), "ldd: {line}");
            if p.starts_with('/') {
                let p = p.split(" (").next().unwrap();
                set.insert(fs::canonicalize(p).unwrap());
            }
        }
        Some(set)
    }

    fn ours(bin: &Path) -> BTreeSet<PathBuf> {
        deps(&[bin.to_path_buf()])
            .unwrap()
            .iter()
            .map(|p| fs::canonicalize(p).unwrap())
            .collect()
    }

    #[test]
    fn host_binaries_agree_with_ldd() {
        let mut checked = 0;
        for bin in [
            "/usr/bin/qemu-system-x86_64",
            "/usr/bin/bsdtar",
            "/usr/bin/python3",
            "/usr/bin/git",
            "/usr/bin/ssh",
        ] {
            let bin = Path::new(bin);
            if !bin.exists() {
                eprintln!("skipped {}: not installed", bin.display());
                continue;
            }
            let Some(expected) = ldd(bin) else {
                eprintln!("skipped: ldd missing");
                return;
            };
            assert_eq!(ours(bin), expected, "{}", bin.display());
            checked += 1;
        }
        eprintln!("{checked} binaries agree with ldd");
    }

    #[test]
    fn host_closure_keeps_symlinks_and_fills_a_tree() {
        let bin = PathBuf::from("/usr/bin/bsdtar");
        if !bin.exists() {
            return;
        }
        let c = closure(Path::new("/"), &[bin], &Options::default()).unwrap();
        // Every found path resolves, through the recorded symlinks, to a recorded file.
        for (found, lib) in &c.libraries {
            assert!(c.files.contains(&lib.real), "{}", found.display());
            assert_eq!(
                fs::canonicalize(found).unwrap(),
                fs::canonicalize(&lib.real).unwrap()
            );
        }
        let mut tree = Tree::new();
        c.add_to_tree(Path::new("/"), &mut tree).unwrap();
        c.add_to_tree(Path::new("/"), &mut tree).unwrap(); // idempotent
        for (at, target) in &c.symlinks {
            let p = at.to_string_lossy();
            assert_eq!(
                tree.get(&p).unwrap().kind,
                NodeKind::Symlink(target.clone())
            );
        }
        // No entry lies below a symlink of the tree.
        for (p, _) in tree.iter() {
            let mut anc = Path::new(p.as_str()).parent();
            while let Some(a) = anc.filter(|a| !a.as_os_str().is_empty()) {
                assert!(
                    !matches!(
                        tree.get(&a.to_string_lossy()).unwrap().kind,
                        NodeKind::Symlink(_)
                    ),
                    "{p}"
                );
                anc = a.parent();
            }
        }
    }

    #[test]
    fn static_binary_has_no_deps() {
        let bb = Path::new("/bin/busybox");
        if !bb.exists() {
            return;
        }
        assert!(deps(&[bb.to_path_buf()]).unwrap().is_empty());
    }

    #[test]
    fn bad_elf_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut samples: Vec<Vec<u8>> = vec![
            b"#!/bin/sh\necho hi\n".to_vec(),
            b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\x03\0\x3e\0\x01\0\0\0".to_vec(),
            [&b"\x7fELF\x02\x01\x01"[..], &[0xff; 200]].concat(),
        ];
        if let Ok(real) = fs::read("/usr/bin/bsdtar") {
            for cut in [64, 100, 1000, 4096] {
                samples.push(real[..cut.min(real.len())].to_vec());
            }
        }
        for (i, s) in samples.iter().enumerate() {
            let p = dir.path().join(format!("bad{i}"));
            fs::write(&p, s).unwrap();
            assert!(deps(&[p]).is_err(), "sample {i} accepted");
        }
    }

    fn have_cc() -> bool {
        Command::new("cc")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    }

    fn cc(dir: &Path, args: &[&str]) {
        let out = Command::new("cc")
            .current_dir(dir)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cc {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// exe → liba → libb; liba and libb live in exe's `$ORIGIN/lib`, only exe has a search
    /// path. Returns the exe.
    fn build_chain(dir: &Path, dtags: &str) -> PathBuf {
        fs::create_dir_all(dir.join("lib")).unwrap();
        fs::write(dir.join("b.c"), "int b(void){return 2;}\n").unwrap();
        fs::write(dir.join("a.c"), "int b(void); int a(void){return b();}\n").unwrap();
        fs::write(
            dir.join("m.c"),
            "int a(void); int main(void){return a() - 2;}\n",
        )
        .unwrap();
        cc(
            dir,
            &[
                "-shared",
                "-fPIC",
                "-o",
                "lib/libb.so",
                "b.c",
                "-Wl,-soname,libb.so",
            ],
        );
        cc(
            dir,
            &[
                "-shared",
                "-fPIC",
                "-o",
                "lib/liba.so",
                "a.c",
                "-Wl,-soname,liba.so",
                "-Llib",
                "-lb",
            ],
        );
        let flags = format!("-Wl,{dtags},-rpath,$ORIGIN/lib,-rpath-link,lib");
        cc(dir, &["-o", "exe", "m.c", "-Llib", "-la", &flags]);
        dir.join("exe")
    }

    #[test]
    fn rpath_is_inherited_runpath_is_not() {
        if !have_cc() {
            eprintln!("skipped: no cc");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let rpath_dir = dir.path().join("rpath");
        let exe = build_chain(&rpath_dir, "--disable-new-dtags");
        let got = deps(std::slice::from_ref(&exe)).unwrap();
        let canon = fs::canonicalize(&rpath_dir).unwrap();
        assert!(got.contains(&canon.join("lib/liba.so")), "{got:?}");
        assert!(got.contains(&canon.join("lib/libb.so")), "{got:?}");
        assert_eq!(ours(&exe), ldd(&exe).unwrap());
        assert!(Command::new(&exe).status().unwrap().success());

        let runpath_dir = dir.path().join("runpath");
        let exe = build_chain(&runpath_dir, "--enable-new-dtags");
        match deps(std::slice::from_ref(&exe)) {
            Err(ElfError::MissingLibrary {
                name, needed_by, ..
            }) => {
                assert_eq!(name, "libb.so");
                assert!(
                    needed_by.ends_with("lib/liba.so"),
                    "{}",
                    needed_by.display()
                );
            }
            other => panic!("expected libb.so to be missing: {other:?}"),
        }
        // The real loader agrees: it cannot start the program.
        assert!(!Command::new(&exe)
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap()
            .success());
    }

    #[test]
    fn foreign_root_follows_conf_includes_and_symlinks() {
        if !have_cc() || !Path::new("/lib64/ld-linux-x86-64.so.2").exists() {
            eprintln!("skipped: no cc or not an x86_64 glibc host");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let build = dir.path().join("build");
        let exe = build_chain(&build, "--disable-new-dtags");
        // A root without any RPATH help: the libs are found via ld.so.conf include.
        let root = dir.path().join("root");
        let w = |p: &str, s: &str| {
            let p = root.join(p);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, s).unwrap();
        };
        w(
            "etc/ld.so.conf",
            "# comment\ninclude /etc/ld.so.conf.d/*.conf\n",
        );
        w("etc/ld.so.conf.d/b.conf", "/opt/app/lib\n");
        w("etc/ld.so.conf.d/a.conf", "/nonexistent\n");
        fs::create_dir_all(root.join("usr/opt/app/lib")).unwrap();
        fs::create_dir_all(root.join("usr/lib/x86_64-linux-gnu")).unwrap();
        fs::create_dir_all(root.join("usr/lib64")).unwrap();
        std::os::unix::fs::symlink("/usr/opt", root.join("opt")).unwrap();
        std::os::unix::fs::symlink("usr/lib", root.join("lib")).unwrap();
        std::os::unix::fs::symlink("usr/lib64", root.join("lib64")).unwrap();
        fs::copy(
            build.join("lib/liba.so"),
            root.join("usr/opt/app/lib/liba.so.1.0"),
        )
        .unwrap();
        std::os::unix::fs::symlink("liba.so.1.0", root.join("usr/opt/app/lib/liba.so")).unwrap();
        fs::copy(
            build.join("lib/libb.so"),
            root.join("usr/opt/app/lib/libb.so"),
        )
        .unwrap();
        let host_libc = fs::canonicalize("/lib/x86_64-linux-gnu/libc.so.6").unwrap();
        fs::copy(host_libc, root.join("usr/lib/x86_64-linux-gnu/libc.so.6")).unwrap();
        let host_ld = fs::canonicalize("/lib64/ld-linux-x86-64.so.2").unwrap();
        fs::copy(
            host_ld,
            root.join("usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"),
        )
        .unwrap();
        std::os::unix::fs::symlink(
            "../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
            root.join("usr/lib64/ld-linux-x86-64.so.2"),
        )
        .unwrap();
        // A wrong-class libb earlier in the search must be skipped.
        fs::create_dir_all(root.join("nonexistent")).unwrap();
        let elf32 = [
            &b"\x7fELF\x01\x01\x01\0\0\0\0\0\0\0\0\0\x03\0\x03\0"[..],
            &[0u8; 40],
        ]
        .concat();
        fs::write(root.join("nonexistent/libb.so"), elf32).unwrap();
        let dest = root.join("usr/bin/exe");
        fs::create_dir_all(dest.parent().unwrap()).unwrap();
        // Strip the RPATH dependence by placing the exe where $ORIGIN/lib does not exist.
        fs::copy(&exe, &dest).unwrap();

        let c = closure(&root, &[dest], &Options::default()).unwrap();
        let paths: Vec<String> = c
            .paths()
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            paths,
            [
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2",
                "/opt/app/lib/liba.so",
                "/opt/app/lib/libb.so",
            ]
        );
        let links: Vec<(String, String)> = c
            .symlinks
            .iter()
            .map(|(a, t)| (a.to_string_lossy().into_owned(), t.clone()))
            .collect();
        assert_eq!(
            links,
            [
                ("/lib".to_string(), "usr/lib".to_string()),
                ("/lib64".to_string(), "usr/lib64".to_string()),
                ("/opt".to_string(), "/usr/opt".to_string()),
                (
                    "/usr/lib64/ld-linux-x86-64.so.2".to_string(),
                    "../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2".to_string()
                ),
                (
                    "/usr/opt/app/lib/liba.so".to_string(),
                    "liba.so.1.0".to_string()
                ),
            ]
        );
        let mut tree = Tree::new();
        c.add_to_tree(&root, &mut tree).unwrap();
        let listing: Vec<(String, &str)> = tree
            .iter()
            .map(|(p, n)| {
                let k = match n.kind {
                    NodeKind::Dir => "d",
                    NodeKind::File(_) => "f",
                    NodeKind::Symlink(_) => "l",
                    NodeKind::Hardlink(_) => "h",
                };
                (p.clone(), k)
            })
            .collect();
        let expect = [
            ("lib", "l"),
            ("lib64", "l"),
            ("opt", "l"),
            ("usr", "d"),
            ("usr/lib", "d"),
            ("usr/lib/x86_64-linux-gnu", "d"),
            ("usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", "f"),
            ("usr/lib/x86_64-linux-gnu/libc.so.6", "f"),
            ("usr/lib64", "d"),
            ("usr/lib64/ld-linux-x86-64.so.2", "l"),
            ("usr/opt", "d"),
            ("usr/opt/app", "d"),
            ("usr/opt/app/lib", "d"),
            ("usr/opt/app/lib/liba.so", "l"),
            ("usr/opt/app/lib/liba.so.1.0", "f"),
            ("usr/opt/app/lib/libb.so", "f"),
        ];
        let expect: Vec<(String, &str)> = expect.iter().map(|(p, k)| (p.to_string(), *k)).collect();
        assert_eq!(listing, expect);
        // A tree with a real directory where the closure needs a symlink is a conflict.
        let mut t2 = Tree::new();
        t2.insert("lib", Node::dir(0o755)).unwrap();
        assert!(matches!(
            c.add_to_tree(&root, &mut t2),
            Err(ElfError::Conflict { .. })
        ));
    }

    #[test]
    fn dst_expansion() {
        let root = Path::new("/");
        let s = Search {
            root,
            kind: Kind {
                is_64: true,
                little: true,
                machine: header::EM_X86_64,
            },
            lib: "lib/x86_64-linux-gnu".into(),
            platform: "x86_64",
            dirs: vec![],
        };
        let o = Path::new("/opt/x/bin");
        assert_eq!(s.expand("$ORIGIN/../lib", o), "/opt/x/bin/../lib");
        assert_eq!(
            s.expand("${ORIGIN}/$LIB/$PLATFORM", o),
            "/opt/x/bin/lib/x86_64-linux-gnu/x86_64"
        );
        assert_eq!(s.expand("/a/$FOO/b$", o), "/a/$FOO/b$");
        assert_eq!(s.expand("${ORIGIN", o), "${ORIGIN");
    }
}
