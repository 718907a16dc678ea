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
//! plus optional `symlinks:` (path → target) added on top. Parsing turns the option bag into
//! one [`Source`]; each kind lives in its own file here and implements [`TreeSource`]: first a
//! key from everything its output depends on, then (on a cache miss only) the tree.
//! [`produce`] runs that once for every kind. A new kind of source is a new file beside
//! these, a field in [`RawPackage`] and a variant in [`Source`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::archive::tree::{Node, NodeKind, Tree, TreeError};
use crate::fsutil::walk_sorted;
use crate::layer::{sha256_file, sha256_hex, Cache, CacheError, Layer};

mod cargo;
pub use cargo::{build_guest_binary, crate_components};
mod deb;
mod dir;
mod host;
mod oci;

pub use cargo::{check_static, CargoSource};
pub use deb::DebSource;
pub use dir::DirSource;
pub use host::HostSource;
pub use oci::OciSource;

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
    /// One-line description.
    pub description: Option<String>,
    /// Where its files come from.
    pub source: Source,
    /// Extra symlinks, image path → target.
    pub symlinks: BTreeMap<String, String>,
}

/// A package's one source of files, checked when the definition is parsed.
#[derive(Debug, Clone)]
pub enum Source {
    /// A workspace cargo binary, built statically.
    Cargo(CargoSource),
    /// Files from a Debian package.
    Deb(DebSource),
    /// Host files and binaries with their shared-library closure.
    Host(HostSource),
    /// A local directory.
    Dir(DirSource),
    /// An OCI image layout or `docker save` tarball.
    Oci(OciSource),
}

impl Source {
    /// The source kind, as the definition names it (`cargo`, `deb`, …).
    pub fn kind(&self) -> &'static str {
        match self {
            Source::Cargo(s) => s.kind(),
            Source::Deb(s) => s.kind(),
            Source::Host(s) => s.kind(),
            Source::Dir(s) => s.kind(),
            Source::Oci(s) => s.kind(),
        }
    }
}

/// One kind of source: what its tree depends on, and how to make the tree.
///
/// [`produce`] hashes the package's name and definition, adds [`TreeSource::hash_inputs`],
/// and calls [`TreeSource::build`] only when the cache has no layer under that key.
pub trait TreeSource {
    /// What computing the key found and building reuses (a downloaded file, a resolved
    /// closure, a directory already read).
    type Found;

    /// The key in package.yml that names this kind.
    fn kind(&self) -> &'static str;

    /// Feeds everything the tree depends on, beyond the package's name and definition, to
    /// the cache key. Cheap next to [`TreeSource::build`].
    fn hash_inputs(&self, cx: &SourceCx<'_>, key: &mut Sha256)
        -> Result<Self::Found, PackageError>;

    /// Adds the source's files to `tree` (empty on entry; the package's symlinks come after).
    fn build(
        &self,
        cx: &SourceCx<'_>,
        found: Self::Found,
        tree: &mut Tree,
    ) -> Result<(), PackageError>;

    /// What the files come from, for the SBOM (called before [`TreeSource::build`], only when
    /// the layer is built). None by default: the layer's own files are all it has.
    fn components(
        &self,
        _cx: &SourceCx<'_>,
        _found: &Self::Found,
    ) -> Result<Vec<crate::layer::Component>, PackageError> {
        Ok(Vec::new())
    }
}

/// What a [`TreeSource`] is given: the package it belongs to and the producers' [`Context`].
pub struct SourceCx<'a> {
    /// Package name (for errors).
    pub name: &'a str,
    /// The package's directory (relative source paths start here).
    pub dir: &'a Path,
    /// Cache, workspace, epoch and progress.
    pub outer: &'a Context<'a>,
}

impl SourceCx<'_> {
    /// A [`PackageError::Failed`] with `message`.
    pub fn fail(&self, message: String) -> PackageError {
        PackageError::Failed {
            name: self.name.to_string(),
            message,
        }
    }

    /// A [`PackageError::Tree`] for a path the image cannot hold.
    pub fn tree_err(&self, source: TreeError) -> PackageError {
        PackageError::Tree {
            name: self.name.to_string(),
            source,
        }
    }

    /// Turns a cause into a [`PackageError::Step`] saying `what` failed.
    pub fn step(
        &self,
        what: String,
    ) -> impl FnOnce(Box<dyn std::error::Error + Send + Sync>) -> PackageError {
        let name = self.name.to_string();
        move |source| PackageError::Step { name, what, source }
    }
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
    let RawPackage {
        description,
        cargo,
        deb,
        host,
        dir: dir_source,
        oci,
        symlinks,
    } = raw;
    let mut sources: Vec<Source> = [
        cargo.map(Source::Cargo),
        deb.map(Source::Deb),
        host.map(Source::Host),
        dir_source.map(Source::Dir),
        oci.map(Source::Oci),
    ]
    .into_iter()
    .flatten()
    .collect();
    let n = sources.len();
    let (Some(source), 1) = (sources.pop(), n) else {
        return Err(PackageError::Invalid {
            path,
            at: String::new(),
            message: format!(
                "a package needs exactly one of cargo, deb, host, dir or oci (found {n})"
            ),
        });
    };
    for (p, t) in &symlinks {
        if !p.starts_with('/') || crate::archive::tree::normalize(p).is_err() || t.is_empty() {
            return Err(PackageError::Invalid {
                path,
                at: String::new(),
                message: format!("invalid symlink {p:?} -> {t:?}"),
            });
        }
    }
    if let Source::Deb(d) = &source {
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
        description,
        source,
        symlinks,
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
    /// Registry images: pins (the spec's lock file) and fetches.
    pub registry: &'a crate::sources::oci::registry::Registry,
    /// A layer cache shared through a registry, asked before a layer is produced here.
    pub cache_from: Option<&'a crate::remote::RemoteCache>,
    /// The image's architecture: what `deb:` packages default to and `cargo:` builds for.
    pub arch: minke_protocol::arch::Arch,
}

/// Produces (or loads from the cache) the layer of `pkg`.
pub fn produce(pkg: &Package, cx: &Context<'_>) -> Result<Layer, PackageError> {
    match &pkg.source {
        Source::Cargo(s) => produce_from(pkg, s, cx),
        Source::Deb(s) => produce_from(pkg, s, cx),
        Source::Host(s) => produce_from(pkg, s, cx),
        Source::Dir(s) => produce_from(pkg, s, cx),
        Source::Oci(s) => produce_from(pkg, s, cx),
    }
}

/// The key, then the cached layer or a freshly built and stored one.
fn produce_from<S: TreeSource>(
    pkg: &Package,
    source: &S,
    cx: &Context<'_>,
) -> Result<Layer, PackageError> {
    let scx = SourceCx {
        name: &pkg.name,
        dir: &pkg.dir,
        outer: cx,
    };
    let mut h = Sha256::new();
    h.update(b"minke-layer-v2\n");
    h.update(pkg.name.as_bytes());
    h.update(b"\n");
    h.update(pkg.yaml.as_bytes());
    let found = source.hash_inputs(&scx, &mut h)?;
    let key = hex::encode(h.finalize());
    if let Some(l) = cx.cache.load(&key)? {
        return Ok(l);
    }
    if let Some(remote) = cx.cache_from {
        match remote.fetch(cx.registry, cx.cache, &key, cx.progress) {
            Ok(true) => {
                if let Some(l) = cx.cache.load(&key)? {
                    return Ok(l);
                }
            }
            Ok(false) => {}
            // A cache is an optimisation: without it the layer is made here.
            Err(e) => tracing::warn!(
                "layer {}: not taken from the shared cache ({}); building it here",
                pkg.name,
                minke_protocol::error_chain(&e)
            ),
        }
    }
    let components = source.components(&scx, &found)?;
    let mut tree = Tree::new();
    source.build(&scx, found, &mut tree)?;
    for (p, t) in &pkg.symlinks {
        tree.insert(p, Node::symlink(t.clone()))
            .map_err(|e| scx.tree_err(e))?;
    }
    (cx.progress)(&format!("caching layer {}", pkg.name));
    Ok(cx.cache.store(&pkg.name, &key, &tree, components)?)
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
    fn the_source_is_the_kind_the_definition_names() {
        let ws = crate::spec::workspace_dir();
        for e in std::fs::read_dir(ws.join("packages")).unwrap() {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            let pkg = load(&name, &[ws.join("packages")]).unwrap();
            let kind = pkg.source.kind();
            let raw: RawPackage = serde_yaml_ng::from_str(&pkg.yaml).unwrap();
            let named = [
                ("cargo", raw.cargo.is_some()),
                ("deb", raw.deb.is_some()),
                ("host", raw.host.is_some()),
                ("dir", raw.dir.is_some()),
                ("oci", raw.oci.is_some()),
            ];
            assert_eq!(named.iter().filter(|(_, on)| *on).count(), 1, "{name}");
            assert!(named.contains(&(kind, true)), "{name}: {kind}");
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
}
