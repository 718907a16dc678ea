//! Packages: `packages/NAME/package.yml` definitions and the producers that turn each into a
//! cached [`Layer`].
//!
//! A definition names exactly one source of files:
//!
//! ```yaml
//! cargo: {package: minke-init, binary: minke-init, dest: /init, inputs: [init, agents]}
//! deb:   {name: busybox-static, arch: amd64, include: [bin/busybox]}
//! host:  {binaries: [/usr/bin/qemu-img], files: [/etc/services]}
//! dir:   {path: rootfs, dest: /}
//! oci:   {path: image.tar, dest: /containers/arm64}
//! ```
//!
//! plus optional `symlinks:` (path → target) added on top. Each producer first computes a key
//! from everything its output depends on; a cache hit skips the work.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::archive::tree::{Node, NodeKind, Tree, TreeError};
use crate::fsutil::walk_sorted;
use crate::layer::{sha256_file, sha256_hex, Cache, CacheError, Layer};

/// A package definition as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPackage {
    /// One-line description.
    #[serde(default)]
    pub description: Option<String>,
    /// A workspace cargo binary, built statically.
    #[serde(default)]
    pub cargo: Option<CargoSource>,
    /// Files from a Debian package.
    #[serde(default)]
    pub deb: Option<DebSource>,
    /// Host files and binaries with their shared-library closure.
    #[serde(default)]
    pub host: Option<HostSource>,
    /// A local directory.
    #[serde(default)]
    pub dir: Option<DirSource>,
    /// An OCI image layout or `docker save` tarball.
    #[serde(default)]
    pub oci: Option<OciSource>,
    /// Extra symlinks, image path → target.
    #[serde(default)]
    pub symlinks: BTreeMap<String, String>,
}

/// `cargo:` source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CargoSource {
    /// Cargo package.
    pub package: String,
    /// Binary target.
    pub binary: String,
    /// Where it goes in the image.
    pub dest: String,
    /// Workspace paths whose contents determine the binary (hashed for the cache key).
    #[serde(default = "default_inputs")]
    pub inputs: Vec<String>,
}

fn default_inputs() -> Vec<String> {
    vec!["init".into(), "agents".into()]
}

/// `deb:` source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DebSource {
    /// Debian package name.
    pub name: String,
    /// Debian architecture (default: the image's, `amd64`).
    #[serde(default)]
    pub arch: Option<String>,
    /// Paths (or directory prefixes) to keep; everything when empty.
    #[serde(default)]
    pub include: Vec<String>,
    /// Prefix in the image under which the package's files land (default `/`).
    #[serde(default)]
    pub dest: Option<String>,
}

/// `host:` source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostSource {
    /// ELF binaries, copied with their shared-library closure.
    #[serde(default)]
    pub binaries: Vec<PathBuf>,
    /// Plain files copied as they are.
    #[serde(default)]
    pub files: Vec<PathBuf>,
}

/// `dir:` source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirSource {
    /// Directory (relative to the package directory).
    pub path: PathBuf,
    /// Where it lands in the image (default `/`).
    #[serde(default)]
    pub dest: Option<String>,
}

/// `oci:` source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OciSource {
    /// OCI layout directory or tarball, or `docker save` tarball (relative to the package
    /// directory, or absolute; `$MINKE_CACHE` is expanded).
    pub path: String,
    /// Where the root filesystem lands in the image.
    pub dest: String,
    /// Platform to pick from a multi-platform index (`linux/arm64`).
    #[serde(default)]
    pub platform: Option<String>,
}

/// Why a package could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    /// No such package.
    #[error("package {name:?} not found: expected {path}")]
    NotFound {
        /// Package name.
        name: String,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// The definition is invalid.
    #[error("{path}{at}: {message}")]
    Invalid {
        /// package.yml path.
        path: PathBuf,
        /// `:line:col` when known.
        at: String,
        /// What is wrong.
        message: String,
    },
    /// Producing the files failed.
    #[error("package {name}: {message}")]
    Failed {
        /// Package name.
        name: String,
        /// What went wrong.
        message: String,
    },
    /// A step of producing the files failed; the cause says why.
    #[error("package {name}: {what}")]
    Step {
        /// Package name.
        name: String,
        /// The step.
        what: String,
        /// Why it failed.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A path problem inside the package.
    #[error("package {name} holds a path an image cannot hold")]
    Tree {
        /// Package name.
        name: String,
        /// The path error.
        source: TreeError,
    },
    /// Cache failure.
    #[error(transparent)]
    Cache(#[from] CacheError),
}

/// A loaded definition.
#[derive(Debug, Clone)]
pub struct Package {
    /// Name (the directory name).
    pub name: String,
    /// Its directory.
    pub dir: PathBuf,
    /// The definition's bytes (part of every cache key).
    pub yaml: String,
    /// The parsed definition.
    pub raw: RawPackage,
}

/// Directories searched for packages: the spec's own `packages/`, then the workspace's.
pub fn search_path(spec_dir: &Path, workspace: &Path) -> Vec<PathBuf> {
    let mut v = vec![
        spec_dir.join("packages"),
        spec_dir.join("../packages"),
        workspace.join("packages"),
    ];
    v.dedup();
    v
}

/// Finds and parses `NAME/package.yml` in the search path.
pub fn load(name: &str, search: &[PathBuf]) -> Result<Package, PackageError> {
    let Some(dir) = search
        .iter()
        .map(|d| d.join(name))
        .find(|d| d.join("package.yml").is_file())
    else {
        let path = search
            .last()
            .cloned()
            .unwrap_or_default()
            .join(name)
            .join("package.yml");
        return Err(PackageError::NotFound {
            name: name.to_string(),
            path,
        });
    };
    let path = dir.join("package.yml");
    let yaml = std::fs::read_to_string(&path).map_err(|e| PackageError::Invalid {
        path: path.clone(),
        at: String::new(),
        message: e.to_string(),
    })?;
    parse(name, &dir, &yaml)
}

/// Parses a package definition's text.
pub fn parse(name: &str, dir: &Path, yaml: &str) -> Result<Package, PackageError> {
    let path = dir.join("package.yml");
    let raw: RawPackage = serde_yaml_ng::from_str(yaml).map_err(|e| {
        let (line, column, message) = crate::spec::yaml_error(&e);
        PackageError::Invalid {
            path: path.clone(),
            at: position(line, column),
            message,
        }
    })?;
    let kinds = [
        raw.cargo.is_some(),
        raw.deb.is_some(),
        raw.host.is_some(),
        raw.dir.is_some(),
        raw.oci.is_some(),
    ];
    let n = kinds.iter().filter(|k| **k).count();
    if n != 1 {
        return Err(PackageError::Invalid {
            path,
            at: String::new(),
            message: format!(
                "a package needs exactly one of cargo, deb, host, dir or oci (found {n})"
            ),
        });
    }
    for (p, t) in &raw.symlinks {
        if !p.starts_with('/') || crate::archive::tree::normalize(p).is_err() || t.is_empty() {
            return Err(PackageError::Invalid {
                path,
                at: String::new(),
                message: format!("invalid symlink {p:?} -> {t:?}"),
            });
        }
    }
    if let Some(d) = &raw.deb {
        let problem = crate::sources::deb::check_package_name(&d.name)
            .err()
            .map(|p| ("name", &d.name, p));
        let problem = problem.or_else(|| {
            let a = d.arch.as_ref()?;
            crate::sources::deb::check_arch(a)
                .err()
                .map(|p| ("arch", a, p))
        });
        if let Some((key, value, problem)) = problem {
            let line = locate(yaml, key, value);
            return Err(PackageError::Invalid {
                path,
                at: position(line, 0),
                message: format!("deb.{key}: {problem}"),
            });
        }
    }
    Ok(Package {
        name: name.to_string(),
        dir: dir.to_path_buf(),
        yaml: yaml.to_string(),
        raw,
    })
}

/// `:LINE:COLUMN`, `:LINE` or nothing, for [`PackageError::Invalid`].
fn position(line: usize, column: usize) -> String {
    match (line, column) {
        (0, _) => String::new(),
        (l, 0) => format!(":{l}"),
        (l, c) => format!(":{l}:{c}"),
    }
}

/// The 1-based line of the first `key: value` in `yaml` (0 when not found).
fn locate(yaml: &str, key: &str, value: &str) -> usize {
    yaml.lines()
        .position(|l| {
            l.trim_start()
                .strip_prefix(key)
                .and_then(|r| r.trim_start().strip_prefix(':'))
                .is_some_and(|r| r.trim().trim_matches(|c| c == '"' || c == '\'') == value)
        })
        .or_else(|| {
            yaml.lines()
                .position(|l| l.contains(&format!("{key}:")) && l.contains(value))
        })
        .map_or(0, |i| i + 1)
}

/// What producers need from the outside.
pub struct Context<'a> {
    /// The cache.
    pub cache: &'a Cache,
    /// The workspace (for cargo sources).
    pub workspace: &'a Path,
    /// SOURCE_DATE_EPOCH.
    pub epoch: u64,
    /// Progress reporting.
    pub progress: &'a dyn Fn(&str),
}

/// Produces (or loads from the cache) the layer of `pkg`.
pub fn produce(pkg: &Package, cx: &Context<'_>) -> Result<Layer, PackageError> {
    let fail = |m: String| PackageError::Failed {
        name: pkg.name.clone(),
        message: m,
    };
    let tree_err = |e: TreeError| PackageError::Tree {
        name: pkg.name.clone(),
        source: e,
    };
    let step = |what: String| {
        let name = pkg.name.clone();
        move |e: Box<dyn std::error::Error + Send + Sync>| PackageError::Step {
            name,
            what,
            source: e,
        }
    };
    let mut h = Sha256::new();
    h.update(b"minke-layer-v1\n");
    h.update(pkg.name.as_bytes());
    h.update(b"\n");
    h.update(pkg.yaml.as_bytes());

    // Stage 1: the key (cheap), and a closure that produces the tree (expensive).
    let mut tree = Tree::new();
    let key;
    if let Some(c) = &pkg.raw.cargo {
        hash_cargo_inputs(&mut h, cx.workspace, &c.inputs)
            .map_err(|e| step("cannot hash the cargo inputs".into())(e.into()))?;
        key = hex::encode(h.finalize());
        if let Some(l) = cx.cache.load(&key)? {
            return Ok(l);
        }
        (cx.progress)(&format!("building {} (cargo, static)", c.binary));
        let bin = build_cargo(cx, c).map_err(fail)?;
        let size = std::fs::metadata(&bin)
            .map_err(|e| step(format!("cannot read {}", bin.display()))(e.into()))?
            .len();
        tree.insert(
            &c.dest,
            Node {
                mode: 0o755,
                uid: 0,
                gid: 0,
                kind: NodeKind::File(crate::archive::tree::FileData::Path { path: bin, size }),
            },
        )
        .map_err(tree_err)?;
    } else if let Some(d) = &pkg.raw.deb {
        let arch = d.arch.clone().unwrap_or_else(|| "amd64".into());
        (cx.progress)(&format!("fetching {}:{arch}", d.name));
        let fetched = crate::sources::pins::fetch(cx.cache, &d.name, &arch).map_err(|e| {
            step(format!("cannot fetch Debian package {}:{arch}", d.name))(e.into())
        })?;
        let (deb, sha) = (fetched.path, fetched.sha256);
        h.update(b"deb ");
        h.update(sha.as_bytes());
        key = hex::encode(h.finalize());
        if let Some(l) = cx.cache.load(&key)? {
            return Ok(l);
        }
        (cx.progress)(&format!("unpacking {}", d.name));
        let full = crate::sources::deb::unpack(&deb)
            .map_err(|e| step(format!("cannot unpack {}", deb.display()))(e.into()))?;
        let dest = d.dest.clone().unwrap_or_default();
        for (path, node) in full.iter() {
            let keep = d.include.is_empty()
                || d.include.iter().any(|i| {
                    let i = i.trim_matches('/');
                    path == i || path.starts_with(&format!("{i}/"))
                });
            let dir_of_subset = matches!(node.kind, NodeKind::Dir) && !d.include.is_empty();
            if keep && !dir_of_subset {
                tree.insert(&format!("{dest}/{path}"), node.clone())
                    .map_err(tree_err)?;
            }
        }
        for i in &d.include {
            if full.get(i.trim_matches('/')).is_none() {
                return Err(fail(format!(
                    "{i} is not in Debian package {}; check the include list in {}",
                    d.name,
                    pkg.dir.join("package.yml").display()
                )));
            }
        }
    } else if let Some(hs) = &pkg.raw.host {
        for b in hs.binaries.iter().chain(&hs.files) {
            let sha = sha256_file(b)
                .map_err(|e| step(format!("cannot read {}", b.display()))(e.into()))?;
            h.update(format!("{} {sha}\n", b.display()).as_bytes());
        }
        // The closure depends on the host's libraries too: resolve first (cheap), hash it.
        let closure = crate::sources::elf::closure(
            Path::new("/"),
            &hs.binaries,
            &crate::sources::elf::Options::default(),
        )
        .map_err(|e| step("cannot resolve the binaries' shared libraries".into())(e.into()))?;
        for p in &closure.files {
            let sha = sha256_file(p)
                .map_err(|e| step(format!("cannot read {}", p.display()))(e.into()))?;
            h.update(format!("{} {sha}\n", p.display()).as_bytes());
        }
        key = hex::encode(h.finalize());
        if let Some(l) = cx.cache.load(&key)? {
            return Ok(l);
        }
        closure
            .add_to_tree(Path::new("/"), &mut tree)
            .map_err(|e| step("cannot add the binaries and their libraries".into())(e.into()))?;
        for f in &hs.files {
            let md = std::fs::metadata(f)
                .map_err(|e| step(format!("cannot read {}", f.display()))(e.into()))?;
            let node = Node {
                mode: perm(&md),
                uid: 0,
                gid: 0,
                kind: NodeKind::File(crate::archive::tree::FileData::Path {
                    path: f.clone(),
                    size: md.len(),
                }),
            };
            tree.insert(&f.to_string_lossy(), node).map_err(tree_err)?;
        }
    } else if let Some(d) = &pkg.raw.dir {
        let src = pkg.dir.join(&d.path);
        let sub = crate::sources::hostdir::tree_from_dir(&src)
            .map_err(|e| step(format!("cannot read directory {}", src.display()))(e.into()))?;
        let records = crate::layer::records_of(&sub)
            .map_err(|e| step(format!("cannot hash directory {}", src.display()))(e.into()))?;
        for r in records {
            h.update(serde_json::to_vec(&r).unwrap_or_default());
        }
        key = hex::encode(h.finalize());
        if let Some(l) = cx.cache.load(&key)? {
            return Ok(l);
        }
        graft(&mut tree, &sub, d.dest.as_deref().unwrap_or("/")).map_err(tree_err)?;
    } else if let Some(o) = &pkg.raw.oci {
        let p = expand(&o.path, cx.cache);
        let src = if p.is_absolute() { p } else { pkg.dir.join(p) };
        let sha = hash_path(&src).map_err(|e| {
            step(format!(
                "cannot read OCI image {}: build it first (cargo xtask setup makes the demo's)",
                src.display()
            ))(e.into())
        })?;
        h.update(format!("oci {sha}\n").as_bytes());
        key = hex::encode(h.finalize());
        if let Some(l) = cx.cache.load(&key)? {
            return Ok(l);
        }
        (cx.progress)(&format!("unpacking OCI image {}", src.display()));
        let platform = o.platform.as_deref().and_then(|p| p.split_once('/'));
        let img = crate::sources::oci::unpack_oci(&src, platform)
            .map_err(|e| step(format!("cannot unpack OCI image {}", src.display()))(e.into()))?;
        graft(&mut tree, &img.tree, &o.dest).map_err(tree_err)?;
    } else {
        return Err(fail("no source".into()));
    }
    for (p, t) in &pkg.raw.symlinks {
        tree.insert(p, Node::symlink(t.clone())).map_err(tree_err)?;
    }
    (cx.progress)(&format!("caching layer {}", pkg.name));
    Ok(cx.cache.store(&pkg.name, &key, &tree)?)
}

fn expand(p: &str, cache: &Cache) -> PathBuf {
    PathBuf::from(p.replace("$MINKE_CACHE", &cache.root().to_string_lossy()))
}

/// Copies `sub` into `tree` under `dest`.
pub fn graft(tree: &mut Tree, sub: &Tree, dest: &str) -> Result<(), TreeError> {
    let dest = dest.trim_matches('/');
    for (path, node) in sub.iter() {
        let full = if dest.is_empty() {
            path.clone()
        } else {
            format!("{dest}/{path}")
        };
        let node = match &node.kind {
            NodeKind::Hardlink(t) if !dest.is_empty() => Node {
                kind: NodeKind::Hardlink(format!("{dest}/{t}")),
                ..node.clone()
            },
            _ => node.clone(),
        };
        tree.insert(&full, node)?;
    }
    Ok(())
}

fn perm(md: &std::fs::Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    md.permissions().mode() & 0o7777
}

/// sha256 of a file, or of a directory's sorted (relative path, content hash) list.
fn hash_path(p: &Path) -> std::io::Result<String> {
    let md = std::fs::metadata(p)?;
    if md.is_file() {
        return sha256_file(p);
    }
    let mut h = Sha256::new();
    hash_dir(&mut h, p)?;
    Ok(hex::encode(h.finalize()))
}

/// Feeds `root`'s tree to `h`: a line per entry in sorted order (`target`, `.git` and `fuzz`
/// left out), with a file's content hash or a symlink's target.
fn hash_dir(h: &mut Sha256, root: &Path) -> std::io::Result<()> {
    for e in walk_sorted(root, |name| {
        name == "target" || name == ".git" || name == "fuzz"
    })? {
        let rel = e.rel.to_string_lossy();
        let full = root.join(&e.rel);
        if e.file_type.is_dir() {
            h.update(format!("d {rel}\n").as_bytes());
        } else if e.file_type.is_symlink() {
            h.update(format!("l {rel} {}\n", std::fs::read_link(&full)?.display()).as_bytes());
        } else {
            h.update(format!("f {rel} {}\n", sha256_file(&full)?).as_bytes());
        }
    }
    Ok(())
}

/// Flags that make the in-guest binary static and free of build paths.
///
/// Not position-independent (`relocation-model=static`): every process of the binary then
/// maps its code at the same address, so an emulating hypervisor (QEMU's TCG) reuses the code
/// it already translated instead of translating it again for each randomised load address,
/// and there is no self-relocation at start. Under TCG that is the difference between about
/// 28 ms and 9 ms per start of an agent. Heap, stack and mmap addresses stay randomised.
fn cargo_rustflags(workspace: &Path) -> String {
    let cargo_home = std::env::var("CARGO_HOME")
        .ok()
        .or_else(|| std::env::var("HOME").ok().map(|h| format!("{h}/.cargo")))
        .unwrap_or_default();
    format!(
        "-C target-feature=+crt-static -C relocation-model=static --remap-path-prefix={}=/minke --remap-path-prefix={cargo_home}=/cargo",
        workspace.display()
    )
}

const CARGO_TARGET: &str = "x86_64-unknown-linux-gnu";

fn hash_cargo_inputs(h: &mut Sha256, ws: &Path, inputs: &[String]) -> std::io::Result<()> {
    // The toolchain is an input: `rustc -vV` names version, commit and host.
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = Command::new(&rustc).arg("-vV").output()?;
    h.update(&out.stdout);
    h.update(cargo_rustflags(Path::new("/ws")).as_bytes());
    for f in ["Cargo.toml", "Cargo.lock"] {
        h.update(format!("f {f} {}\n", sha256_file(&ws.join(f))?).as_bytes());
    }
    // The contracts crate is a dependency of every in-guest crate.
    let mut all: Vec<&str> = inputs.iter().map(String::as_str).collect();
    all.sort_unstable();
    all.dedup();
    for i in all {
        h.update(format!("input {i}\n").as_bytes());
        hash_dir(h, &ws.join(i))?;
    }
    Ok(())
}

fn build_cargo(cx: &Context<'_>, c: &CargoSource) -> Result<PathBuf, String> {
    // Shared between caches when set (tests build from several cache roots).
    let target_dir = std::env::var_os("MINKE_CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| cx.cache.dir("cargo-target"));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(&cargo)
        .current_dir(cx.workspace)
        .args([
            "build",
            "--profile",
            "guest",
            "--locked",
            "--package",
            &c.package,
            "--bin",
            &c.binary,
            "--target",
            CARGO_TARGET,
        ])
        .env("CARGO_TARGET_DIR", &target_dir)
        .env("RUSTFLAGS", cargo_rustflags(cx.workspace))
        .env("SOURCE_DATE_EPOCH", cx.epoch.to_string())
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .output()
        .map_err(|e| format!("cannot run {cargo}: {e}; install Rust with rustup"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(30).collect();
        return Err(format!(
            "cargo build of {} failed:\n{}",
            c.binary,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ));
    }
    let bin = target_dir.join(CARGO_TARGET).join("guest").join(&c.binary);
    let bytes = std::fs::read(&bin).map_err(|e| format!("{}: {e}", bin.display()))?;
    check_static(&bytes).map_err(|m| format!("{}: {m}", bin.display()))?;
    Ok(bin)
}

/// Checks that an ELF binary needs no dynamic loader and no shared libraries.
pub fn check_static(bytes: &[u8]) -> Result<(), String> {
    let elf = goblin::elf::Elf::parse(bytes).map_err(|e| format!("not an ELF file: {e}"))?;
    if let Some(i) = elf.interpreter {
        return Err(format!(
            "dynamically linked (interpreter {i}); the in-guest binary must be static"
        ));
    }
    if !elf.libraries.is_empty() {
        return Err(format!(
            "needs shared libraries {:?}; the in-guest binary must be static",
            elf.libraries
        ));
    }
    Ok(())
}

/// Digest helper for other stages.
pub fn digest_str(s: &str) -> String {
    sha256_hex(s.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_err(yaml: &str, needle: &str) {
        let err = parse("p", Path::new("/pk/p"), yaml).expect_err("should fail");
        let msg = err.to_string();
        assert!(msg.starts_with("/pk/p/package.yml"), "{msg}");
        assert!(msg.contains(needle), "{msg:?} lacks {needle:?}");
    }

    #[test]
    fn bad_definitions_name_the_file() {
        check_err("description: x\n", "exactly one of");
        check_err(
            "deb: {name: a}\ncargo: {package: a, binary: a, dest: /a}\n",
            "exactly one of",
        );
        check_err("deb: {name: a, colour: red}\n", "unknown field");
        check_err(
            "deb: {name: a}\nsymlinks: {bin/sh: busybox}\n",
            "invalid symlink",
        );
        check_err("deb: [\n", ":");
    }

    #[test]
    fn deb_names_are_debian_names_located_by_line() {
        for (yaml, line, needle) in [
            (
                "deb:\n  name: \"-o\"\n",
                2,
                "deb.name: \"-o\" is not a package name",
            ),
            (
                "description: x\ndeb: {name: a b}\n",
                2,
                "deb.name: \"a b\" is not a package name",
            ),
            ("deb:\n  name: libc6\n  arch: \"../x\"\n", 3, "deb.arch"),
        ] {
            check_err(yaml, &format!("package.yml:{line}: {needle}"));
        }
        for ok in [
            "deb: {name: busybox-static, arch: arm64}",
            "deb: {name: g++}",
        ] {
            parse("p", Path::new("/pk/p"), ok).unwrap();
        }
    }

    #[test]
    fn yaml_errors_state_their_position_once() {
        let err = parse("p", Path::new("/pk/p"), "deb: {name: ab}\ncolour: red\n").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("/pk/p/package.yml:2:1: unknown field `colour`"),
            "{msg}"
        );
        assert!(!msg.contains("at line"), "{msg}");
    }

    #[test]
    fn shipped_packages_parse() {
        let ws = crate::spec::workspace_dir();
        for e in std::fs::read_dir(ws.join("packages")).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            load(&name, &[ws.join("packages")]).unwrap();
        }
    }

    #[test]
    fn missing_package_names_the_path() {
        let err = load("nope", &[PathBuf::from("/x/packages")]).unwrap_err();
        assert!(
            err.to_string().contains("/x/packages/nope/package.yml"),
            "{err}"
        );
    }

    #[test]
    fn static_check_rejects_dynamic_binaries() {
        let sh = std::fs::read("/bin/sh").unwrap();
        assert!(check_static(&sh).is_err());
        assert!(check_static(b"not elf").is_err());
    }
}
