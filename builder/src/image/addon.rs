//! Host files brought into one boot of an image without rebuilding it (`minke run --add`): an
//! uncompressed newc archive the shim appends to the image's initrd (the kernel unpacks
//! concatenated archives in order, so these files land over the image's). An ELF program
//! brings its shared libraries and loader, resolved as the `host` source resolves them and
//! put as real files at the paths the loader looks for them; a directory comes whole. The archive is cached by the digest of its records, so the same
//! files cost one build.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::archive::compress::{self, ArchiveOptions, Compression};
use crate::archive::tree::{Node, NodeKind, Tree, TreeError};
use crate::error::io_err;
use crate::layer::{records_digest, records_of, write_atomic, Cache};
use crate::sources::elf;
use crate::sources::hostdir;

/// Why an addition could not be made.
#[derive(Debug, thiserror::Error)]
pub enum AddError {
    /// The host path cannot be read.
    #[error("cannot add {}", path.display())]
    Host {
        /// The host path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The guest path cannot hold it.
    #[error("cannot add {} at {guest}", path.display())]
    Guest {
        /// The host path.
        path: PathBuf,
        /// The guest path.
        guest: String,
        /// Why.
        source: TreeError,
    },
    /// The guest path is under a directory the guest mounts over at boot.
    #[error("cannot add {} at {guest}: the guest mounts a filesystem over {mount} at boot, which would hide it; give a guest path elsewhere (HOST_PATH:/opt/…)", path.display())]
    Hidden {
        /// The host path.
        path: PathBuf,
        /// The guest path.
        guest: String,
        /// The directory mounted over.
        mount: &'static str,
    },
    /// A program's shared libraries cannot be resolved.
    #[error("cannot resolve the shared libraries of {}", path.display())]
    Elf {
        /// The program.
        path: PathBuf,
        /// Why.
        source: elf::ElfError,
    },
    /// A directory cannot be read.
    #[error("cannot add the directory {}", path.display())]
    Dir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: hostdir::HostDirError,
    },
    /// The archive could not be made.
    #[error("cannot archive the added files")]
    Archive(#[source] compress::ArchiveError),
    /// The cache could not be written.
    #[error("cannot access {}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

crate::error::into_io_variant!(AddError);

/// One host path to add, and where it goes in the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addition {
    /// The host file or directory.
    pub host: PathBuf,
    /// Absolute guest path; `None`: the host path made absolute.
    pub guest: Option<String>,
    /// Only a program's shared libraries and loader, not the program (which the guest sees
    /// some other way, such as a share).
    pub only_libraries: bool,
}

impl Addition {
    /// Parses `HOST_PATH[:GUEST_PATH]`.
    pub fn parse(s: &str) -> Result<Addition, String> {
        let (host, guest) = match s.split_once(':') {
            Some((h, g)) => (h, Some(g.to_owned())),
            None => (s, None),
        };
        if host.is_empty() {
            return Err(format!(
                "{s:?} names no host path: use HOST_PATH[:GUEST_PATH]"
            ));
        }
        if let Some(g) = &guest {
            if !g.starts_with('/') {
                return Err(format!("{s:?}: the guest path {g:?} must be absolute"));
            }
        }
        Ok(Addition {
            host: PathBuf::from(host),
            guest,
            only_libraries: false,
        })
    }
}

/// The tree of `adds`: each file at its guest path (an ELF with its libraries and loader at
/// their host paths), each directory with everything below it, owned by root. A library or
/// loader at a path in `image_files` (the image's own, `/`-rooted) is left out: the image's
/// programs keep the copy they were built with, and the added program uses it too.
pub fn tree_of(adds: &[Addition], image_files: &BTreeSet<String>) -> Result<Tree, AddError> {
    let mut tree = Tree::new();
    for a in adds {
        let host_err = |source| AddError::Host {
            path: a.host.clone(),
            source,
        };
        let abs = std::path::absolute(&a.host).map_err(host_err)?;
        let guest = match &a.guest {
            Some(g) => g.clone(),
            None => abs.to_string_lossy().into_owned(),
        };
        if let Some(mount) = hidden_by(&guest).filter(|_| !a.only_libraries) {
            return Err(AddError::Hidden {
                path: a.host.clone(),
                guest,
                mount,
            });
        }
        let guest_err = |source| AddError::Guest {
            path: a.host.clone(),
            guest: guest.clone(),
            source,
        };
        let md = std::fs::metadata(&abs).map_err(host_err)?;
        if md.is_dir() {
            let sub = hostdir::tree_from_dir(&abs).map_err(|source| AddError::Dir {
                path: a.host.clone(),
                source,
            })?;
            tree.insert(&guest, Node::dir(md.permissions().mode() & 0o7777))
                .map_err(guest_err)?;
            let base = guest.trim_end_matches('/');
            for (p, node) in sub.iter() {
                let mut node = node.clone();
                if let NodeKind::Hardlink(to) = &node.kind {
                    node.kind = NodeKind::Hardlink(format!("{base}/{to}"));
                }
                tree.insert(&format!("{base}/{p}"), node)
                    .map_err(guest_err)?;
            }
            continue;
        }
        if is_elf(&abs) {
            let closure = elf::closure(
                Path::new("/"),
                std::slice::from_ref(&abs),
                &elf::Options::default(),
            )
            .map_err(|source| AddError::Elf {
                path: a.host.clone(),
                source,
            })?;
            // Real files at the paths the loader and the kernel use (the interpreter as the
            // program names it, each library where the host's loader found it), not the
            // host's symlinks: the image's /lib may be a directory where the host's is a link.
            let wanted = closure.interpreters.iter().chain(closure.libraries.keys());
            for at in wanted.filter(|at| !image_files.contains(&*at.to_string_lossy())) {
                let real = std::fs::canonicalize(at).map_err(|source| AddError::Host {
                    path: at.clone(),
                    source,
                })?;
                let md = std::fs::metadata(&real).map_err(|source| AddError::Host {
                    path: real.clone(),
                    source,
                })?;
                tree.insert(&at.to_string_lossy(), Node::host_file(real, &md))
                    .map_err(|source| AddError::Guest {
                        path: a.host.clone(),
                        guest: at.display().to_string(),
                        source,
                    })?;
            }
        }
        if a.only_libraries {
            continue;
        }
        tree.insert(&guest, Node::host_file(abs.clone(), &md))
            .map_err(guest_err)?;
    }
    Ok(tree)
}

/// The boot mount that hides `guest`, if one does.
fn hidden_by(guest: &str) -> Option<&'static str> {
    let g = guest.trim_end_matches('/');
    minke_protocol::BOOT_MOUNTS
        .iter()
        .copied()
        .find(|m| g == *m || g.starts_with(&format!("{m}/")))
}

fn is_elf(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && magic == *b"\x7fELF"
}

/// Builds (or finds in the cache) the archive of `adds` with every mtime `epoch`, leaving
/// out the libraries `image_files` already has (see [`tree_of`]); returns its path in the
/// cache.
pub fn archive(
    adds: &[Addition],
    image_files: &BTreeSet<String>,
    cache: &Cache,
    epoch: u64,
) -> Result<PathBuf, AddError> {
    let tree = tree_of(adds, image_files)?;
    let records = records_of(&tree).map_err(|source| AddError::Host {
        path: adds.first().map(|a| a.host.clone()).unwrap_or_default(),
        source,
    })?;
    let key = crate::layer::sha256_hex(
        format!("addon-v1 {} {epoch}", records_digest(&records)).as_bytes(),
    );
    let path = cache.dir("addons").join(format!("{key}.cpio"));
    if path.is_file() {
        return Ok(path);
    }
    let opts = ArchiveOptions {
        mtime: epoch as u32,
        compression: Compression::None,
        ..ArchiveOptions::default()
    };
    let bytes = compress::archive(&tree, &opts).map_err(AddError::Archive)?;
    write_atomic(&path, &bytes).map_err(io_err(&path))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_program_brings_its_libraries_and_a_directory_comes_whole() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("data/sub")).unwrap();
        std::fs::write(d.path().join("data/sub/x"), b"x").unwrap();
        let adds = vec![
            Addition::parse("/bin/ls:/opt/ls").unwrap(),
            Addition::parse(&format!("{}:/srv/data", d.path().join("data").display())).unwrap(),
        ];
        let t = tree_of(&adds, &BTreeSet::new()).unwrap();
        assert!(matches!(t.get("opt/ls").unwrap().kind, NodeKind::File(_)));
        assert!(t.get("srv/data/sub/x").is_some());
        let libc = t.iter().any(|(p, _)| p.contains("libc.so"));
        assert!(libc, "ls brings libc along");
        let cache = Cache::at(d.path().join("cache"));
        let none = BTreeSet::new();
        let a = archive(&adds, &none, &cache, 0).unwrap();
        assert_eq!(
            archive(&adds, &none, &cache, 0).unwrap(),
            a,
            "cached by content"
        );
        // A library the image has stays the image's.
        let libc = t
            .iter()
            .find(|(p, _)| p.contains("libc.so"))
            .unwrap()
            .0
            .clone();
        let has = BTreeSet::from([format!("/{libc}")]);
        assert!(tree_of(&adds, &has).unwrap().get(&libc).is_none());
        let bytes = std::fs::read(&a).unwrap();
        let entries = crate::archive::cpio::read(&bytes).unwrap();
        assert!(entries.iter().any(|e| e.name == b"opt/ls"));
    }

    #[test]
    fn bad_additions_name_the_path() {
        let e = tree_of(
            &[Addition::parse("/no/such/file").unwrap()],
            &BTreeSet::new(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("/no/such/file"), "{e}");
        assert!(Addition::parse("/bin/ls:rel").is_err());
        assert!(Addition::parse(":/x").is_err());
        let e = tree_of(
            &[Addition::parse("/bin/ls:/tmp/ls").unwrap()],
            &BTreeSet::new(),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("mounts a filesystem over /tmp"),
            "{e}"
        );
        assert!(hidden_by("/tmpx/y").is_none() && hidden_by("/run").is_some());
    }
}
