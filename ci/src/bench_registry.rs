//! `cargo xtask bench registry`: a ~50 MB multi-layer image in a local registry (Debian's
//! `docker-registry` on 127.0.0.1, filled by `skopeo`), in one run:
//! - pulling it: minke's registry client into an empty cache vs `skopeo copy` to an OCI
//!   layout (goal ≥ 1× skopeo);
//! - converting its layers to the guest's disk: minke's unpack + EROFS writer vs `mkfs.erofs`
//!   of the tree already unpacked (the peer is spared the unpacking);
//! - `minke run --image REF -- true` vs `minke run -- true` on the default image (goal ≤ 1.2×).
//!
//! The tools take turns within each round, medians of the rounds are printed. A benchmark,
//! not a test: it never fails on a number.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use minke::layer::Cache;
use minke::sources::oci::registry::{Registry, RegistryOptions};
use xshell::{cmd, Shell};

#[path = "../../cli/tests/support/registry.rs"]
mod registry;

pub(crate) use registry::LocalRegistry;
use registry::{layer, write_layout, Comp, Img, E};

use crate::bench_vm::median;

const ROUNDS: usize = 3;

/// Layers of generated files on top of Debian's busybox: `LAYERS` × `FILES` files of
/// `FILE_KIB` KiB each, three in four random bytes, the rest text: ≈ 60 MiB unpacked, ≈ 48 MB
/// of gzip blobs.
const LAYERS: usize = 3;
const FILES: usize = 80;
const FILE_KIB: usize = 256;

fn image(dir: &Path) -> Result<()> {
    let cache = Cache::default_location();
    let deb = minke::sources::deb::pins::fetch(&cache, "busybox-static", "amd64")?;
    let tree = minke::sources::deb::unpack(&deb.path)?;
    let busybox = match &tree.get("bin/busybox").context("no bin/busybox")?.kind {
        minke::archive::tree::NodeKind::File(d) => d.read()?,
        _ => bail!("bin/busybox is not a file"),
    };
    let mut layers = vec![(
        layer(&[
            E::D("bin"),
            E::F("bin/busybox", &busybox),
            E::L("bin/true", "busybox"),
            E::L("bin/sh", "busybox"),
        ]),
        Comp::Gzip,
    )];
    let mut rng = fastrand::Rng::with_seed(16);
    for l in 0..LAYERS {
        let files: Vec<(String, Vec<u8>)> = (0..FILES)
            .map(|f| {
                let mut data = vec![0u8; FILE_KIB << 10];
                if f % 4 != 0 {
                    rng.fill(&mut data);
                } else {
                    for (i, b) in data.iter_mut().enumerate() {
                        *b = b"minke bench registry text "[i % 26];
                    }
                }
                (format!("data/l{l}/f{f:03}"), data)
            })
            .collect();
        let dir = format!("data/l{l}");
        let mut entries = vec![E::D("data"), E::D(&dir)];
        entries.extend(files.iter().map(|(p, d)| E::F(p, d)));
        layers.push((layer(&entries), Comp::Gzip));
    }
    write_layout(
        dir,
        &[Img {
            arch: "amd64",
            variant: None,
            layers,
            run: serde_json::json!({"Env": ["PATH=/bin"]}),
        }],
    );
    Ok(())
}

fn time(f: impl FnOnce() -> Result<()>) -> Result<Duration> {
    let t = Instant::now();
    f()?;
    Ok(t.elapsed())
}

fn status(c: &mut Command) -> Result<()> {
    let o = c.output().with_context(|| format!("{c:?}"))?;
    if !o.status.success() {
        bail!("{c:?}: {}", String::from_utf8_lossy(&o.stderr));
    }
    Ok(())
}

pub fn run(sh: &Shell) -> Result<()> {
    cmd!(sh, "cargo build --quiet --release -p minke-cli").run()?;
    let minke = crate::workspace_root().join("target/release/minke");
    let tmp = tempfile::tempdir_in(crate::workspace_root().join("target"))?;
    let layout = tmp.path().join("layout");
    image(&layout)?;
    let reg = LocalRegistry::start(None);
    reg.push(&layout, "bench/big:1", false);
    let reference = format!("{}/bench/big:1", reg.addr);
    let size: u64 = std::fs::read_dir(layout.join("blobs/sha256"))?
        .flatten()
        .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .sum();
    println!(
        "image: {reference}, {:.1} MB of blobs, {} layers",
        size as f64 / 1e6,
        LAYERS + 1
    );

    // Pull.
    let (mut ours, mut skopeo) = (Vec::new(), Vec::new());
    for i in 0..ROUNDS {
        let cache = tmp.path().join(format!("pull-cache-{i}"));
        ours.push(time(|| {
            let r = Registry::new(Cache::at(&cache), RegistryOptions::default(), None)?;
            let pinned = r.pin(&reference, None)?;
            r.download(&pinned, &|_| {})?;
            Ok(())
        })?);
        let dest = tmp.path().join(format!("skopeo-{i}"));
        skopeo.push(time(|| {
            status(
                Command::new("skopeo")
                    .args([
                        "--insecure-policy",
                        "copy",
                        "--quiet",
                        "--src-tls-verify=false",
                    ])
                    .arg(format!("docker://{reference}"))
                    .arg(format!("oci:{}:1", dest.display())),
            )
        })?);
        std::fs::remove_dir_all(&cache)?;
        std::fs::remove_dir_all(&dest)?;
    }
    let (p_ours, p_skopeo) = (median(ours), median(skopeo));

    // Conversion to the guest's disk.
    let cache = tmp.path().join("conv-cache");
    let r = Registry::new(Cache::at(&cache), RegistryOptions::default(), None)?;
    let pinned = r.pin(&reference, None)?;
    r.download(&pinned, &|_| {})?;
    let unpacked = tmp.path().join("unpacked");
    std::fs::create_dir_all(&unpacked)?;
    for blob in layer_blobs(&cache, &pinned.digest)? {
        status(
            Command::new("tar")
                .arg("-xzf")
                .arg(&blob)
                .arg("-C")
                .arg(&unpacked),
        )?;
    }
    let (mut ours, mut mkfs) = (Vec::new(), Vec::new());
    for i in 0..ROUNDS {
        let out = tmp.path().join(format!("ours-{i}.erofs"));
        ours.push(time(|| {
            let img = minke::sources::oci::unpack_manifest(&cache, &pinned.digest)?;
            let mut f = std::fs::File::create(&out)?;
            minke::archive::erofs::write_erofs(&img.tree, 0, &mut f)?;
            f.sync_all()?;
            Ok(())
        })?);
        let theirs = tmp.path().join(format!("mkfs-{i}.erofs"));
        mkfs.push(time(|| {
            status(
                Command::new("mkfs.erofs")
                    .args(["--quiet", "-T0", "--all-root"])
                    .arg(&theirs)
                    .arg(&unpacked),
            )?;
            std::fs::File::open(&theirs)?.sync_all()?;
            Ok(())
        })?);
    }
    let (c_ours, c_mkfs) = (median(ours), median(mkfs));

    // run --image vs plain run, on the default image (the first --image run converts).
    status(Command::new(&minke).args([
        "run",
        "--name",
        "bench-img-warm",
        "--image",
        &reference,
        "--",
        "true",
    ]))?;
    let (mut plain, mut with_image) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        plain.push(time(|| {
            status(Command::new(&minke).args(["run", "--name", "bench-plain", "--", "true"]))
        })?);
        with_image.push(time(|| {
            status(Command::new(&minke).args([
                "run",
                "--name",
                "bench-img",
                "--image",
                &reference,
                "--",
                "true",
            ]))
        })?);
    }
    let (r_plain, r_image) = (median(plain), median(with_image));

    let s = |d: Duration| d.as_secs_f64();
    println!("\nmedian of {ROUNDS} rounds, tools alternating:");
    println!(
        "pull            minke {:.3} s   skopeo copy {:.3} s   {:.2}× skopeo (goal ≥ 1×)",
        s(p_ours),
        s(p_skopeo),
        s(p_skopeo) / s(p_ours)
    );
    println!(
        "to guest disk   minke unpack+erofs {:.3} s   mkfs.erofs of the unpacked tree {:.3} s   {:.2}×",
        s(c_ours),
        s(c_mkfs),
        s(c_mkfs) / s(c_ours)
    );
    println!(
        "run -- true     with --image {:.3} s   plain {:.3} s   {:.2}× plain (goal ≤ 1.2×)",
        s(r_image),
        s(r_plain),
        s(r_image) / s(r_plain)
    );
    Ok(())
}

/// The layer blobs of the manifest `digest` in the cache, bottom first.
fn layer_blobs(cache: &Path, digest: &str) -> Result<Vec<std::path::PathBuf>> {
    let blobs = cache.join("blobs/sha256");
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blobs.join(&digest["sha256:".len()..]))?)?;
    m["layers"]
        .as_array()
        .context("no layers")?
        .iter()
        .map(|l| {
            let d = l["digest"].as_str().context("layer without digest")?;
            Ok(blobs.join(&d["sha256:".len()..]))
        })
        .collect()
}
