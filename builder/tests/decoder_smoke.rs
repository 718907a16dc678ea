//! Every decoder of untrusted input survives a few thousand seeded mutations of real inputs
//! (specs, package files, kernel modules, ELF binaries, an initrd, kernel configs) — the same
//! entry points the cargo-fuzz targets drive, run briefly on stable Rust in every CI run. The
//! seed is printed; `MINKE_SMOKE_SEED=N` replays a run. Coverage-guided fuzzing for as long as
//! you like: `cargo xtask fuzz --time N`.

use std::path::{Path, PathBuf};

use minke::fuzzing;

/// One mutation of `seed` (and sometimes a splice with `other`).
fn mutate(rng: &mut fastrand::Rng, seed: &[u8], other: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..1 + below(rng, 4) {
        let len = v.len();
        match below(rng, 7) {
            0 if len > 0 => {
                let i = below(rng, len);
                v[i] ^= 1 << below(rng, 8);
            }
            1 if len > 0 => {
                let i = below(rng, len);
                v[i] = [0, 0xff, 0x7f, 0x80, b'\n', b':', b'-'][below(rng, 7)];
            }
            2 => {
                let i = below(rng, len + 1);
                let n = 1 + below(rng, 16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.u8(..)).collect();
                v.splice(i..i, bytes);
            }
            3 if len > 0 => {
                let i = below(rng, len);
                let n = 1 + below(rng, (len - i).min(64));
                v.drain(i..i + n);
            }
            4 if len > 0 => {
                let i = below(rng, len);
                let n = 1 + below(rng, (len - i).min(64));
                let chunk = v[i..i + n].to_vec();
                let at = below(rng, len + 1);
                v.splice(at..at, chunk);
            }
            5 => v.truncate(below(rng, len + 1)),
            _ if !other.is_empty() => {
                let cut = below(rng, len + 1);
                let from = below(rng, other.len());
                v.truncate(cut);
                v.extend_from_slice(&other[from..]);
            }
            _ => {}
        }
    }
    v
}

/// A uniform index below `n` (0 when `n` is 0).
fn below(rng: &mut fastrand::Rng, n: usize) -> usize {
    if n == 0 {
        0
    } else {
        rng.usize(..n)
    }
}

fn seed() -> u64 {
    std::env::var("MINKE_SMOKE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
}

fn run(name: &str, seeds: &[Vec<u8>], iterations: usize, target: fn(&[u8])) {
    assert!(!seeds.is_empty(), "{name}: no seeds");
    let s = seed();
    eprintln!("{name}: {iterations} mutations, MINKE_SMOKE_SEED={s}");
    let mut rng = fastrand::Rng::with_seed(s);
    for seed in seeds {
        target(seed);
    }
    for _ in 0..iterations {
        let a = &seeds[below(&mut rng, seeds.len())];
        let b = &seeds[below(&mut rng, seeds.len())];
        let input = mutate(&mut rng, a, b);
        target(&input);
    }
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn files(dir: &Path, ext: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.to_string_lossy().ends_with(ext) {
                if let Ok(b) = std::fs::read(&p) {
                    out.push(b);
                }
            }
        }
    }
    out
}

#[test]
fn spec_parser() {
    let ws = workspace();
    let mut seeds = files(&ws.join("examples"), ".yml");
    seeds.extend(files(&ws.join("builder/tests/bad-specs"), ".yml"));
    seeds.extend(files(&ws.join("host-shim/tests/images"), ".yml"));
    run("spec_parser", &seeds, 4000, fuzzing::spec_parser);
}

#[test]
fn package_parser() {
    let ws = workspace();
    let mut seeds = files(&ws.join("packages"), "package.yml");
    seeds.extend(files(&ws.join("builder/tests/bad-specs/packages"), ".yml"));
    run("package_parser", &seeds, 4000, fuzzing::package_parser);
}

#[test]
fn modinfo_parser_and_cpio_reader() {
    // Real kernel modules from the cached Debian kernel when there is one, plus a synthetic
    // record list.
    let cache = minke::layer::Cache::default_location();
    let mut mods: Vec<Vec<u8>> = std::fs::read_dir(cache.dir("kernels"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|k| std::fs::read_dir(k.path().join("lib/modules")).ok())
        .flatten()
        .flatten()
        .flat_map(|v| files(&v.path().join("kernel/net/vmw_vsock"), ".ko"))
        .filter(|m| m.len() < 256 << 10)
        .take(4)
        .collect();
    eprintln!("modinfo_parser: {} real modules as seeds", mods.len());
    mods.push(b"license=GPL\0depends=a,b\0softdep=pre: c\0name=x\0".to_vec());
    run("modinfo_parser", &mods, 1500, fuzzing::modinfo_parser);

    let mut t = minke::archive::tree::Tree::new();
    t.insert("bin", minke::archive::tree::Node::dir(0o755))
        .unwrap();
    t.insert(
        "bin/sh",
        minke::archive::tree::Node::file(0o755, &b"#!/bin/true\n"[..]),
    )
    .unwrap();
    t.insert(
        "etc/motd",
        minke::archive::tree::Node::file(0o644, &b"hi\n"[..]),
    )
    .unwrap();
    let opts = minke::archive::compress::ArchiveOptions {
        compression: minke::archive::compress::Compression::None,
        ..Default::default()
    };
    let initrd = minke::archive::compress::archive(&t, &opts).unwrap();
    run("cpio_reader", &[initrd], 4000, fuzzing::cpio_reader);
}

#[test]
fn elf_resolver() {
    let seeds: Vec<Vec<u8>> = ["/bin/true", "/bin/busybox"]
        .iter()
        .filter_map(|p| std::fs::read(p).ok())
        .map(|b| b[..b.len().min(64 << 10)].to_vec())
        .collect();
    run("elf_resolver", &seeds, 300, fuzzing::elf_resolver);
}

#[test]
fn kernel_config() {
    let ws = workspace();
    let mut seeds = files(&ws.join("kernel-config"), ".config");
    seeds.extend(files(
        &ws.join("builder/tests/bad-specs/kernels"),
        "novsock",
    ));
    // A bzImage-like header: the setup header's magic and payload fields.
    let mut bz = vec![0u8; 0x400];
    bz[0x1f1] = 1;
    bz[0x202..0x206].copy_from_slice(b"HdrS");
    bz[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    bz[0x248..0x24c].copy_from_slice(&0u32.to_le_bytes());
    bz[0x24c..0x250].copy_from_slice(&0x100u32.to_le_bytes());
    seeds.push(bz);
    run("kernel_config", &seeds, 4000, fuzzing::kernel_config);
}

#[test]
fn image_config() {
    let json = r#"{"name":"t","hostname":"t","modules":[{"name":"vsock","path":"/m/vsock.ko"}],
      "sysctls":{"a.b":"1"},"rlimits":[{"resource":"nofile","soft":8,"hard":null}],
      "disks":[{"label":"var","mountpoint":"/var","fstype":"ext4"}],"onboot":[],
      "agents":[{"kind":"control","port":1024},{"kind":"timesync","after":["serial"]}],
      "services":[{"name":"s","command":{"argv":["/bin/s"],"env":{"K":"V"}},"restart":"always"}],
      "onshutdown":[],"binfmt":[],"containers":[{"name":"c","rootfs":"/c"}],
      "shutdown_grace_ms":1000}"#;
    let cfg: minke_protocol::ImageConfig = serde_json::from_str(json).expect("seed parses");
    run("image_config", &[cfg.encode()], 4000, fuzzing::image_config);
}
