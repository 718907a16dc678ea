//! `minke run --image REF`: a container image from a registry run in a guest without
//! rebuilding it. The image is pinned to its platform's manifest digest, its blobs fetched
//! into the cache, its layers merged into one tree and written as a reproducible EROFS image
//! (cached by that digest, so a second run neither pulls nor converts), which the shim
//! attaches read-only; the guest runs the command in it as the container `image`, with the
//! image config's entrypoint, command, environment, working directory and user.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use minke::archive::tree::{NodeKind, Tree};
use minke::layer::Cache;
use minke::sources::oci::RunConfig;
use serde::{Deserialize, Serialize};

/// What a run needs to know of the image besides its disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Prepared {
    /// The EROFS image.
    #[serde(skip)]
    pub disk: PathBuf,
    /// The image manifest's digest.
    pub digest: String,
    /// OCI architecture of the image.
    pub arch: String,
    /// How it asks to be run.
    pub run: RunConfig,
    /// `User` resolved against the image's own /etc/passwd and /etc/group.
    pub uid: u32,
    /// Group of the user.
    pub gid: u32,
}

impl Prepared {
    /// The program and arguments: the entrypoint, then `cmd` when given, else the image's.
    pub fn argv(&self, cmd: &[String]) -> Result<Vec<String>> {
        let mut argv = self.run.entrypoint.clone();
        argv.extend(if cmd.is_empty() {
            self.run.cmd.clone()
        } else {
            cmd.to_vec()
        });
        if argv.is_empty() {
            bail!("the image names no command (no Entrypoint or Cmd): give one after `--`");
        }
        Ok(argv)
    }

    /// The image's `Env` as pairs.
    pub fn env(&self) -> Vec<(String, String)> {
        self.run
            .env
            .iter()
            .filter_map(|e| e.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
}

/// A registry session over the default cache, with no lock file (what `push`, `pull` and
/// `run` use; builds pin through their spec's lock).
pub fn registry(insecure: Vec<String>) -> Result<minke::sources::oci::registry::Registry> {
    Ok(minke::sources::oci::registry::Registry::new(
        minke::layer::Cache::default_location(),
        minke::sources::oci::registry::RegistryOptions {
            insecure,
            ..Default::default()
        },
        None,
    )?)
}

/// Pins, pulls (cached) and converts `reference` for `platform`.
pub fn prepare(
    reference: &str,
    platform: Option<&str>,
    insecure: Vec<String>,
    progress: &dyn Fn(&str),
) -> Result<Prepared> {
    let cache = Cache::default_location();
    let registry = registry(insecure)?;
    progress(&format!("resolving {reference}"));
    let pinned = registry.pin(reference, platform)?;
    let hex = pinned.digest.trim_start_matches("sha256:").to_string();
    let dir = cache.dir("run-images");
    let disk = dir.join(format!("{hex}.erofs"));
    let meta = dir.join(format!("{hex}.json"));
    if let (true, Ok(bytes)) = (disk.is_file(), std::fs::read(&meta)) {
        if let Ok(mut p) = serde_json::from_slice::<Prepared>(&bytes) {
            p.disk = disk;
            return Ok(p);
        }
    }
    let img = registry.fetch(&pinned, progress)?;
    let (uid, gid) = resolve_user(&img.tree, &img.run.user)
        .with_context(|| format!("{reference}: its config's User {:?}", img.run.user))?;
    progress(&format!("writing {reference} as a disk image"));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut tmp = tempfile::NamedTempFile::new_in(&dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    minke::archive::erofs::write_erofs(&img.tree, minke::epoch_from_env(), tmp.as_file_mut())
        .with_context(|| format!("cannot write {reference}'s root filesystem"))?;
    tmp.persist(&disk)
        .with_context(|| format!("cannot write {}", disk.display()))?;
    let p = Prepared {
        disk,
        digest: pinned.digest,
        arch: img.architecture,
        run: img.run,
        uid,
        gid,
    };
    minke::layer::write_atomic(&meta, &serde_json::to_vec(&p)?)
        .with_context(|| format!("cannot write {}", meta.display()))?;
    Ok(p)
}

/// The lines of the tree's text file `path` split on `:`.
fn table(tree: &Tree, path: &str) -> Vec<Vec<String>> {
    let Some(NodeKind::File(data)) = tree.get(path).map(|n| &n.kind) else {
        return Vec::new();
    };
    String::from_utf8_lossy(&data.read().unwrap_or_default())
        .lines()
        .map(|l| l.split(':').map(str::to_string).collect())
        .collect()
}

/// `""`, `NAME`, `UID`, `UID:GID`, `NAME:GROUP` → ids, names looked up in the image.
fn resolve_user(tree: &Tree, user: &str) -> Result<(u32, u32)> {
    if user.is_empty() {
        return Ok((0, 0));
    }
    let passwd = table(tree, "etc/passwd");
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let (uid, primary) = match u.parse::<u32>() {
        Ok(n) => (
            n,
            passwd
                .iter()
                .find(|f| f.get(2).is_some_and(|x| x == u))
                .and_then(|f| f.get(3)?.parse().ok())
                .unwrap_or(n),
        ),
        Err(_) => {
            let f = passwd
                .iter()
                .find(|f| f.first().is_some_and(|x| x == u))
                .with_context(|| format!("no user {u:?} in the image's /etc/passwd"))?;
            let id = |i: usize| f.get(i).and_then(|x| x.parse::<u32>().ok());
            (
                id(2).context("malformed /etc/passwd")?,
                id(3).context("malformed /etc/passwd")?,
            )
        }
    };
    let gid = match g {
        None => primary,
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => table(tree, "etc/group")
                .iter()
                .find(|f| f.first().is_some_and(|x| x == g))
                .and_then(|f| f.get(2)?.parse().ok())
                .with_context(|| format!("no group {g:?} in the image's /etc/group"))?,
        },
    };
    Ok((uid, gid))
}

#[cfg(test)]
mod tests {
    use super::*;
    use minke::archive::tree::Node;

    #[test]
    fn users_resolve_against_the_image() {
        let mut t = Tree::new();
        t.insert(
            "etc/passwd",
            Node::file(
                0o644,
                &b"root:x:0:0::/root:/bin/sh\nweb:x:33:34::/:/bin/false\n"[..],
            ),
        )
        .unwrap();
        t.insert(
            "etc/group",
            Node::file(0o644, &b"root:x:0:\nstaff:x:50:\n"[..]),
        )
        .unwrap();
        assert_eq!(resolve_user(&t, "").unwrap(), (0, 0));
        assert_eq!(resolve_user(&t, "web").unwrap(), (33, 34));
        assert_eq!(resolve_user(&t, "33").unwrap(), (33, 34));
        assert_eq!(resolve_user(&t, "1000").unwrap(), (1000, 1000));
        assert_eq!(resolve_user(&t, "web:staff").unwrap(), (33, 50));
        assert_eq!(resolve_user(&t, "1000:7").unwrap(), (1000, 7));
        assert!(resolve_user(&t, "nobody").is_err());
        assert!(resolve_user(&t, "web:nogroup").is_err());
    }
}
