//! `cargo:` — a workspace binary, built static for the guest; in an installed minke, whose
//! data directory is no source checkout, the prebuilt binary it ships (`DATA/guest/NAME`).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{hash_dir, PackageError, SourceCx, TreeSource};
use crate::archive::tree::{FileData, Node, NodeKind, Tree};
use crate::layer::{sha256_file, Component};
use minke_protocol::arch::Arch;

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

/// The binary to use instead of building, when the data directory is an install: the
/// x86_64 one in `DATA/guest/`, another architecture's in `DATA/guest/ARCH/`.
fn prebuilt(workspace: &Path, binary: &str, arch: Arch) -> Option<PathBuf> {
    if workspace.join("Cargo.toml").is_file() {
        return None;
    }
    let dir = workspace.join(crate::spec::PREBUILT_GUEST_DIR);
    Some(match arch {
        Arch::X86_64 => dir.join(binary),
        other => dir.join(other.name()).join(binary),
    })
}

impl TreeSource for CargoSource {
    /// The prebuilt binary, when there is no checkout to build it from.
    type Found = Option<PathBuf>;

    fn kind(&self) -> &'static str {
        "cargo"
    }

    fn hash_inputs(
        &self,
        cx: &SourceCx<'_>,
        key: &mut Sha256,
    ) -> Result<Option<PathBuf>, PackageError> {
        if let Some(bin) = prebuilt(cx.outer.workspace, &self.binary, cx.outer.arch) {
            let sha = sha256_file(&bin).map_err(|e| {
                cx.step(format!(
                    "{} is no source checkout and has no prebuilt {} ({}): reinstall minke",
                    cx.outer.workspace.display(),
                    self.binary,
                    bin.display()
                ))(e.into())
            })?;
            key.update(format!("prebuilt {sha}\n").as_bytes());
            return Ok(Some(bin));
        }
        hash_cargo_inputs(key, cx.outer.workspace, &self.inputs, cx.outer.arch)
            .map_err(|e| cx.step("cannot hash the cargo inputs".into())(e.into()))?;
        Ok(None)
    }

    fn components(
        &self,
        cx: &SourceCx<'_>,
        prebuilt: &Option<PathBuf>,
    ) -> Result<Vec<Component>, PackageError> {
        match prebuilt {
            // An install ships the list the dist computed beside the binary.
            Some(bin) => {
                let list = bin.with_extension("components.json");
                let bytes = std::fs::read(&list)
                    .map_err(|e| cx.step(format!("cannot read {}", list.display()))(e.into()))?;
                serde_json::from_slice(&bytes)
                    .map_err(|e| cx.fail(format!("{}: {e}; reinstall minke", list.display())))
            }
            None => crate_components(cx.outer.workspace, &self.package, cx.outer.arch)
                .map_err(|m| cx.fail(m)),
        }
    }

    fn build(
        &self,
        cx: &SourceCx<'_>,
        prebuilt: Option<PathBuf>,
        tree: &mut Tree,
    ) -> Result<(), PackageError> {
        let bin = match prebuilt {
            Some(bin) => {
                let bytes = std::fs::read(&bin)
                    .map_err(|e| cx.step(format!("cannot read {}", bin.display()))(e.into()))?;
                check_static(&bytes, cx.outer.arch)
                    .map_err(|m| cx.fail(format!("{}: {m}", bin.display())))?;
                bin
            }
            None => {
                (cx.outer.progress)(&format!("building {} (cargo, static)", self.binary));
                build_cargo(cx.outer, self).map_err(|m| cx.fail(m))?
            }
        };
        let size = std::fs::metadata(&bin)
            .map_err(|e| cx.step(format!("cannot read {}", bin.display()))(e.into()))?
            .len();
        tree.insert(
            &self.dest,
            Node {
                mode: 0o755,
                uid: 0,
                gid: 0,
                kind: NodeKind::File(FileData::Path { path: bin, size }),
            },
        )
        .map_err(|e| cx.tree_err(e))?;
        Ok(())
    }
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

/// How the in-guest binary is compiled for an architecture: the host's own toolchain for
/// x86_64; for another, Debian's rustc (`rustc-web`, which carries LLVM for every target) with
/// that target's standard library from Debian's `libstd-rust-web-dev:ARCH` — downloaded
/// through a private apt root and unpacked into the cache, unless installed — and the cross
/// linker `gcc-TRIPLE`.
struct Toolchain {
    rustc: Option<PathBuf>,
    /// Extra rustc flags (sysroot, linker).
    flags: String,
}

/// Debian's rustc, the one whose standard libraries Debian ships for other architectures.
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";

/// The rustc that builds for `arch` when it is not the host's: `$MINKE_RUSTC_ARCH`, else
/// Debian's.
fn cross_rustc(arch: Arch) -> PathBuf {
    std::env::var_os(format!("MINKE_RUSTC_{}", arch.name().to_uppercase()))
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEBIAN_RUSTC))
}

/// The cross linker for `arch` (Debian's `gcc-TRIPLE`).
fn cross_linker(arch: Arch) -> String {
    format!("{}-linux-gnu-gcc", arch.name())
}

fn toolchain(arch: Arch, cache: Option<&Path>) -> Result<Toolchain, String> {
    if Some(arch) == Arch::host() {
        return Ok(Toolchain {
            rustc: None,
            flags: String::new(),
        });
    }
    let rustc = cross_rustc(arch);
    if !rustc.is_file() {
        return Err(format!(
            "building the in-guest binary for {arch} needs Debian's rustc ({}): install rustc-web \
             and gcc-{}-linux-gnu (`cargo xtask setup` does)",
            rustc.display(),
            arch.name()
        ));
    }
    let linker = cross_linker(arch);
    let installed = Path::new("/usr/lib/rustlib").join(arch.rust_target());
    let mut flags = format!("-C linker={linker}");
    if !installed.is_dir() {
        let Some(cache) = cache else {
            return Err(format!(
                "no standard library for {} is installed",
                arch.rust_target()
            ));
        };
        let sysroot = debian_std(arch, cache)?;
        flags.push_str(&format!(
            " --sysroot={s} --remap-path-prefix={s}=/rust-std",
            s = sysroot.display()
        ));
    }
    Ok(Toolchain {
        rustc: Some(rustc),
        flags,
    })
}

/// Debian's standard library for `arch`, of the version of the installed `rustc-web`,
/// unpacked once under `CACHE/rust-std/VERSION-ARCH/`; returns the sysroot (its `usr`).
fn debian_std(arch: Arch, cache: &Path) -> Result<PathBuf, String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f", "${Version}", "rustc-web"])
        .output()
        .map_err(|e| format!("dpkg-query: {e}"))?;
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || version.is_empty() {
        return Err("Debian's rustc-web is not installed: `cargo xtask setup` installs it".into());
    }
    let dir =
        cache
            .join("rust-std")
            .join(format!("{}-{}", version.replace(':', "%3a"), arch.debian()));
    let sysroot = dir.join("usr");
    if sysroot
        .join("lib/rustlib")
        .join(arch.rust_target())
        .is_dir()
    {
        return Ok(sysroot);
    }
    let deb = crate::sources::deb::fetch(
        "libstd-rust-web-dev",
        Some(arch.debian()),
        &cache.join("debs"),
    )
    .map_err(|e| format!("cannot fetch the {arch} standard library: {e}"))?;
    if deb.version != version {
        return Err(format!(
            "Debian offers libstd-rust-web-dev:{} {} but rustc-web {version} is installed: run \
             `apt-get update && apt-get install rustc-web` so the two match",
            arch.debian(),
            deb.version
        ));
    }
    std::fs::create_dir_all(dir.parent().unwrap_or(cache)).map_err(|e| e.to_string())?;
    let tmp = tempfile::Builder::new()
        .prefix(".rust-std-")
        .tempdir_in(dir.parent().unwrap_or(cache))
        .map_err(|e| format!("{}: {e}", cache.display()))?;
    crate::sources::deb::unpack_to_dir(&deb.path, tmp.path()).map_err(|e| e.to_string())?;
    let staged = tmp.keep();
    if let Err(e) = std::fs::rename(&staged, &dir) {
        let _ = std::fs::remove_dir_all(&staged);
        // Another build unpacked it meanwhile.
        if !sysroot
            .join("lib/rustlib")
            .join(arch.rust_target())
            .is_dir()
        {
            return Err(format!("{}: {e}", dir.display()));
        }
    }
    Ok(sysroot)
}

fn hash_cargo_inputs(
    h: &mut Sha256,
    ws: &Path,
    inputs: &[String],
    arch: Arch,
) -> std::io::Result<()> {
    // The toolchain is an input: `rustc -vV` names version, commit and host; a cross build
    // adds the Debian package version its standard library is taken at and the linker's.
    if Some(arch) == Arch::host() {
        let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
        h.update(&Command::new(&rustc).arg("-vV").output()?.stdout);
    } else {
        h.update(&Command::new(cross_rustc(arch)).arg("-vV").output()?.stdout);
        let std_version = Command::new("dpkg-query")
            .args(["-W", "-f", "${Version}", "rustc-web"])
            .output()?;
        h.update(b"rustc-web ");
        h.update(&std_version.stdout);
        h.update(
            &Command::new(cross_linker(arch))
                .arg("--version")
                .output()?
                .stdout,
        );
    }
    h.update(cargo_rustflags(Path::new("/ws")).as_bytes());
    h.update(format!("target {}\n", arch.rust_target()).as_bytes());
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

fn build_cargo(cx: &super::Context<'_>, c: &CargoSource) -> Result<PathBuf, String> {
    build_guest_binary(
        cx.workspace,
        &cx.cache.dir("cargo-target"),
        cx.epoch,
        &c.package,
        &c.binary,
        cx.arch,
    )
}

/// Builds `binary` of `package` in the checkout `workspace` as the guest needs it (the
/// `guest` profile, static, no build paths), in `target_dir` unless `MINKE_CARGO_TARGET_DIR`
/// says where; returns the binary's path.
pub fn build_guest_binary(
    workspace: &Path,
    target_dir: &Path,
    epoch: u64,
    package: &str,
    binary: &str,
    arch: Arch,
) -> Result<PathBuf, String> {
    let tc = toolchain(arch, target_dir.parent())?;
    // Shared between caches when set (tests build from several cache roots).
    let target_dir = std::env::var_os("MINKE_CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir.to_path_buf());
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(&cargo);
    if let Some(rustc) = &tc.rustc {
        cmd.env("RUSTC", rustc);
    }
    let out = cmd
        .current_dir(workspace)
        .args([
            "build",
            "--profile",
            "guest",
            "--locked",
            "--package",
            package,
            "--bin",
            binary,
            "--target",
            arch.rust_target(),
        ])
        .env("CARGO_TARGET_DIR", &target_dir)
        .env(
            "RUSTFLAGS",
            format!("{} {}", cargo_rustflags(workspace), tc.flags).trim(),
        )
        .env("SOURCE_DATE_EPOCH", epoch.to_string())
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .output()
        .map_err(|e| format!("cannot run {cargo}: {e}; install Rust with rustup"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(30).collect();
        return Err(format!(
            "cargo build of {} failed:\n{}",
            binary,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ));
    }
    let bin = target_dir
        .join(arch.rust_target())
        .join("guest")
        .join(binary);
    let bytes = std::fs::read(&bin).map_err(|e| format!("{}: {e}", bin.display()))?;
    check_static(&bytes, arch).map_err(|m| format!("{}: {m}", bin.display()))?;
    Ok(bin)
}

/// The crates compiled into `package`'s binaries for the guest target: its normal
/// dependencies, transitively (build scripts and dev-dependencies left out), sorted, from
/// `cargo metadata` over the locked, already fetched dependency graph.
pub fn crate_components(
    workspace: &Path,
    package: &str,
    arch: Arch,
) -> Result<Vec<Component>, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(&cargo)
        .current_dir(workspace)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--locked",
            "--offline",
            "--filter-platform",
            arch.rust_target(),
        ])
        .output()
        .map_err(|e| format!("cannot run {cargo} metadata: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("cargo metadata printed no JSON: {e}"))?;
    let packages = meta["packages"].as_array().cloned().unwrap_or_default();
    let by_id: std::collections::HashMap<&str, &serde_json::Value> = packages
        .iter()
        .filter_map(|p| Some((p["id"].as_str()?, p)))
        .collect();
    let nodes: std::collections::HashMap<&str, &serde_json::Value> = meta["resolve"]["nodes"]
        .as_array()
        .map(|n| {
            n.iter()
                .filter_map(|n| Some((n["id"].as_str()?, n)))
                .collect()
        })
        .unwrap_or_default();
    let root = packages
        .iter()
        .find(|p| p["name"] == package && p["source"].is_null())
        .and_then(|p| p["id"].as_str())
        .ok_or_else(|| format!("no workspace package {package} in cargo metadata"))?;
    let mut seen = std::collections::BTreeSet::new();
    let mut todo = vec![root];
    while let Some(id) = todo.pop() {
        if !seen.insert(id) {
            continue;
        }
        for d in nodes
            .get(id)
            .and_then(|n| n["deps"].as_array())
            .into_iter()
            .flatten()
        {
            let normal = d["dep_kinds"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k["kind"].is_null()));
            if let (true, Some(pkg)) = (normal, d["pkg"].as_str()) {
                todo.push(pkg);
            }
        }
    }
    let mut list: Vec<Component> = seen
        .into_iter()
        .filter_map(|id| by_id.get(id))
        .map(|p| {
            let name = p["name"].as_str().unwrap_or_default().to_string();
            let version = p["version"].as_str().unwrap_or_default().to_string();
            let registry = p["source"]
                .as_str()
                .is_some_and(|s| s.starts_with("registry+"));
            Component {
                kind: "crate".into(),
                purl: registry.then(|| format!("pkg:cargo/{name}@{version}")),
                name,
                version,
                sha256: None,
            }
        })
        .collect();
    list.sort();
    Ok(list)
}

/// Checks that an ELF binary needs no dynamic loader and no shared libraries.
pub fn check_static(bytes: &[u8], arch: Arch) -> Result<(), String> {
    let elf = goblin::elf::Elf::parse(bytes).map_err(|e| format!("not an ELF file: {e}"))?;
    if elf.header.e_machine != arch.elf_machine() {
        return Err(format!(
            "built for ELF machine {}, not the guest's {arch}",
            elf.header.e_machine
        ));
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_check_rejects_dynamic_binaries() {
        let sh = std::fs::read("/bin/sh").unwrap();
        assert!(check_static(&sh, Arch::X86_64).is_err());
        assert!(check_static(b"not elf", Arch::X86_64).is_err());
    }
}
