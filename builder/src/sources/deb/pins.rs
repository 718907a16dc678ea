//! Remembered resolutions of Debian package names, so a no-change rebuild asks apt nothing.
//!
//! `apt-cache` takes a second or more per call on a typical machine; a rebuild of an unchanged
//! image must not pay that. The first build resolves each name through apt and records the
//! exact file in `debs/pins.json` in the cache; later builds reuse it for a day, or until
//! `MINKE_REFRESH=1` (`minke build --refresh`) asks apt again. Outputs never depend on when a
//! pin was made: only on the pinned file's contents, which are content-hashed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::layer::{write_atomic, Cache};
use crate::sources::deb::{self, DebError, FetchedDeb};

/// How long a pin is trusted before apt is asked again.
pub const PIN_TTL: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Default, Serialize, Deserialize)]
struct Pins {
    /// `name:arch` → pinned file.
    debs: BTreeMap<String, Pin>,
    /// Kernel meta package → versioned package name.
    kernels: BTreeMap<String, (String, u64)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Pin {
    file: String,
    name: String,
    version: String,
    arch: String,
    sha256: String,
    size: u64,
    at: u64,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn refresh_requested() -> bool {
    std::env::var_os("MINKE_REFRESH").is_some_and(|v| v != "0" && !v.is_empty())
}

fn fresh(at: u64) -> bool {
    !refresh_requested() && now().saturating_sub(at) < PIN_TTL.as_secs()
}

fn path(cache: &Cache) -> PathBuf {
    cache.dir("debs").join("pins.json")
}

fn load(cache: &Cache) -> Pins {
    std::fs::read(path(cache))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn save(cache: &Cache, pins: &Pins) {
    // A pin is an optimisation: failing to record one only costs time next build.
    if let Ok(json) = serde_json::to_vec_pretty(pins) {
        let _ = write_atomic(&path(cache), &json);
    }
}

/// `deb::fetch`, answered from the pins when a fresh pin's file is still in the cache.
pub fn fetch(cache: &Cache, name: &str, arch: &str) -> Result<FetchedDeb, DebError> {
    deb::check_package(name, Some(arch))?;
    let dir = cache.dir("debs");
    let key = format!("{name}:{arch}");
    let mut pins = load(cache);
    if let Some(p) = pins.debs.get(&key) {
        let file = dir.join(&p.file);
        if fresh(p.at) && std::fs::metadata(&file).is_ok_and(|m| m.len() == p.size) {
            return Ok(FetchedDeb {
                path: file,
                name: p.name.clone(),
                version: p.version.clone(),
                arch: p.arch.clone(),
                sha256: p.sha256.clone(),
            });
        }
    }
    let f = deb::fetch(name, Some(arch), &dir)?;
    let size = std::fs::metadata(&f.path).map_or(0, |m| m.len());
    let file = f
        .path
        .strip_prefix(&dir)
        .unwrap_or(Path::new(""))
        .to_string_lossy()
        .into_owned();
    if !file.is_empty() {
        pins.debs.insert(
            key,
            Pin {
                file,
                name: f.name.clone(),
                version: f.version.clone(),
                arch: f.arch.clone(),
                sha256: f.sha256.clone(),
                size,
                at: now(),
            },
        );
        save(cache, &pins);
    }
    Ok(f)
}

/// `deb::resolve_kernel_package`, answered from the pins when fresh.
pub fn resolve_kernel(cache: &Cache, name: &str) -> Result<String, DebError> {
    deb::check_package(name, None)?;
    let mut pins = load(cache);
    if let Some((real, at)) = pins.kernels.get(name) {
        if fresh(*at) {
            return Ok(real.clone());
        }
    }
    let real = deb::resolve_kernel_package(name)?;
    pins.kernels.insert(name.to_string(), (real.clone(), now()));
    save(cache, &pins);
    Ok(real)
}
