//! `cargo xtask bench build`: times minke's archive stage (host directory → initrd bytes on
//! disk) against GNU cpio piped into gzip or zstd, and against 3cpio, in one run.
//!
//! The input is a generated ~120 MB tree of ~1300 files (text-like and less compressible data,
//! nested directories, symlinks, hard links), made once under `target/bench-build-tree` and
//! reused, or the directory named by `MINKE_BENCH_TREE`. Every tool runs `MINKE_BENCH_RUNS`
//! times (default 3; the tools take turns) after one untimed pass that warms the page cache;
//! the table shows the median. This is a benchmark, not a test: it never fails on a number.
//!
//! The dev profile `cargo xtask` uses is fine for this: the hot code (zlib-rs, zstd, the
//! kernel's file copies) is in dependencies, built at opt-level 2 by the `"*"` override; a
//! `--release` build (opt-level "s", LTO) measured no faster. Besides wall time the table shows
//! CPU seconds, which stay meaningful when other work shares the cores.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use minke::archive::compress::{self, ArchiveOptions, Compression};
use xshell::{cmd, Shell};

/// Target size of the generated tree.
const TREE_BYTES: u64 = 120 << 20;
/// Number of regular files in the generated tree.
const TREE_FILES: usize = 1300;
/// Bumped whenever the generator changes, so an old tree is regenerated.
const TREE_VERSION: &str = "6";

/// A tool to time: name, output file, index of the peer row, and the run itself.
type Job = (String, PathBuf, Vec<usize>, Box<dyn Fn() -> Result<()>>);

/// One measured tool.
struct Row {
    tool: String,
    secs: f64,
    /// CPU seconds (user + system, this process and its children).
    cpu: f64,
    bytes: u64,
    /// Indexes of the rows this one is compared with.
    peers: Vec<usize>,
}

/// Runs the benchmark and prints the table.
pub fn run(sh: &Shell) -> Result<()> {
    let root = crate::workspace_root();
    let tree = match std::env::var_os("MINKE_BENCH_TREE") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let dir = root.join("target/bench-build-tree");
            ensure_tree(&dir)?;
            dir
        }
    };
    let runs: usize = std::env::var("MINKE_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3)
        .max(1);
    let out = tempfile::tempdir().context("cannot create a temporary directory")?;
    let o = out.path();
    let have = |tool: &str| {
        let script = format!("command -v {tool}");
        cmd!(sh, "sh -c {script}")
            .quiet()
            .ignore_stdout()
            .run()
            .is_ok()
    };
    for tool in ["cpio", "gzip", "pigz", "zstd", "find", "sort"] {
        if !have(tool) {
            bail!("{tool} not found: run `cargo xtask setup` (or apt-get install cpio gzip pigz zstd)");
        }
    }
    let _cd = sh.push_dir(&tree);
    let _c = sh.push_env("LC_ALL", "C");

    // Warm the page cache (and check the tree reads).
    let t = minke::sources::hostdir::tree_from_dir(&tree)?;
    let opts = |compression| ArchiveOptions {
        mtime: 0,
        compression,
        ..ArchiveOptions::default()
    };
    compress::archive(&t, &opts(Compression::None))?;

    let shell = |script: String| {
        let sh = sh.clone();
        move || -> Result<()> { Ok(cmd!(sh, "sh -c {script}").quiet().run()?) }
    };
    let minke = |compression: Compression, file: PathBuf| {
        let tree = tree.clone();
        move || -> Result<()> {
            let t = minke::sources::hostdir::tree_from_dir(&tree)?;
            compress::archive_to_path(&t, &opts(compression), &file)?;
            Ok(())
        }
    };
    let gnu = "find . | sort | cpio -o -H newc --reproducible --quiet";
    let mut jobs: Vec<Job> = vec![
        (
            "cpio | gzip -6 -n".into(),
            o.join("gnu.cpio.gz"),
            vec![],
            Box::new(shell(format!(
                "{gnu} | gzip -6 -n > {}",
                o.join("gnu.cpio.gz").display()
            ))),
        ),
        // The parallel gzip a user would pick.
        (
            "cpio | pigz -6 -n".into(),
            o.join("pigz.cpio.gz"),
            vec![],
            Box::new(shell(format!(
                "{gnu} | pigz -6 -n > {}",
                o.join("pigz.cpio.gz").display()
            ))),
        ),
        (
            "minke gzip".into(),
            o.join("minke.cpio.gz"),
            vec![0, 1],
            Box::new(minke(Compression::Gzip, o.join("minke.cpio.gz"))),
        ),
        (
            "cpio | zstd -3 -T2".into(),
            o.join("gnu.cpio.zst"),
            vec![],
            Box::new(shell(format!(
                "{gnu} | zstd -q -3 -T2 > {}",
                o.join("gnu.cpio.zst").display()
            ))),
        ),
        (
            "minke zstd".into(),
            o.join("minke.cpio.zst"),
            vec![3],
            Box::new(minke(Compression::Zstd, o.join("minke.cpio.zst"))),
        ),
    ];
    if have("3cpio") {
        let f = o.join("3cpio.cpio");
        jobs.push((
            "3cpio --create".into(),
            f.clone(),
            vec![],
            Box::new(shell(format!(
                "find . | sort | sed '1d; s|^\\./||' | 3cpio --create {}",
                f.display()
            ))),
        ));
        jobs.push((
            "minke none".into(),
            o.join("minke.cpio"),
            vec![5],
            Box::new(minke(Compression::None, o.join("minke.cpio"))),
        ));
    } else {
        eprintln!("note: 3cpio not found (cargo install --locked threecpio); the uncompressed comparison is skipped");
        jobs.push((
            "minke none".into(),
            o.join("minke.cpio"),
            vec![],
            Box::new(minke(Compression::None, o.join("minke.cpio"))),
        ));
    }

    // Runs alternate between tools (one round runs every tool once), so a change in the
    // machine's load or the page cache's state during the benchmark hits every tool alike.
    let mut times: Vec<Vec<std::time::Duration>> = vec![Vec::with_capacity(runs); jobs.len()];
    let mut cpu = vec![0.0; jobs.len()];
    for _ in 0..runs {
        for (k, (tool, _, _, job)) in jobs.iter().enumerate() {
            let cpu_start = cpu_seconds();
            let start = Instant::now();
            job().with_context(|| format!("{tool} failed"))?;
            times[k].push(start.elapsed());
            cpu[k] += cpu_seconds() - cpu_start;
        }
    }
    let mut rows = Vec::new();
    for (k, (tool, file, peer, _)) in jobs.iter().enumerate() {
        let t = &mut times[k];
        t.sort();
        let secs = t[t.len() / 2].as_secs_f64();
        let bytes = std::fs::metadata(file)
            .with_context(|| format!("{tool} wrote no {}", file.display()))?
            .len();
        rows.push(Row {
            tool: tool.clone(),
            secs,
            cpu: cpu[k] / runs as f64,
            bytes,
            peers: peer.clone(),
        });
    }

    check_outputs(sh, o)?;
    print_table(&tree, &t, &rows, runs);
    Ok(())
}

/// minke's compressed outputs must decompress to its uncompressed archive.
fn check_outputs(sh: &Shell, o: &Path) -> Result<()> {
    let plain = std::fs::read(o.join("minke.cpio"))?;
    for (tool, file) in [("gzip", "minke.cpio.gz"), ("zstd", "minke.cpio.zst")] {
        let f = o.join(file);
        let out = cmd!(sh, "{tool} -dc {f}").quiet().output()?;
        if out.stdout != plain {
            bail!("{tool} -dc {file} differs from minke's uncompressed archive");
        }
    }
    Ok(())
}

fn print_table(dir: &Path, t: &minke::archive::tree::Tree, rows: &[Row], runs: usize) {
    let files = t
        .iter()
        .filter(|(_, n)| matches!(n.kind, minke::archive::tree::NodeKind::File(_)))
        .count();
    let bytes: u64 = t
        .iter()
        .map(|(_, n)| match &n.kind {
            minke::archive::tree::NodeKind::File(d) => d.size(),
            _ => 0,
        })
        .sum();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "bench build: {} ({} entries, {files} files, {:.1} MB), {cores} cores, median of {runs}",
        dir.display(),
        t.len(),
        bytes as f64 / 1e6
    );
    println!(
        "{:<20} {:>8} {:>8} {:>12}  vs peer: time, size",
        "tool", "seconds", "cpu s", "bytes"
    );
    for r in rows {
        let vs: Vec<String> = r
            .peers
            .iter()
            .filter_map(|&p| rows.get(p))
            .map(|p| {
                format!(
                    "{:.2}x faster, {:+.2} % than {}",
                    p.secs / r.secs,
                    (r.bytes as f64 / p.bytes as f64 - 1.0) * 100.0,
                    p.tool
                )
            })
            .collect();
        println!(
            "{:<20} {:>8.3} {:>8.2} {:>12}  {}",
            r.tool,
            r.secs,
            r.cpu,
            r.bytes,
            if vs.is_empty() {
                "-".into()
            } else {
                vs.join("; ")
            }
        );
    }
}

/// CPU time used so far by this process and its waited-for children, from /proc/self/stat
/// (utime, stime, cutime, cstime in clock ticks of 1/100 s); 0 where unavailable.
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the parenthesized command name; utime is field 14 of the whole line.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields
        .get(11..15)
        .map_or(0, |f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum());
    ticks as f64 / 100.0
}

/// Below `n`, small values more likely.
fn skewed(rng: &mut fastrand::Rng, n: u64) -> u64 {
    let bound = 1 + rng.u64(..n.max(1));
    rng.u64(..bound)
}

/// Makes the benchmark tree in `dir` unless a complete one of this version is there.
fn ensure_tree(dir: &Path) -> Result<()> {
    let stamp = dir.join(".minke-bench-tree");
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == TREE_VERSION) {
        return Ok(());
    }
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("cannot remove {}", dir.display()))?;
    }
    let start = Instant::now();
    generate_tree(dir)?;
    std::fs::write(&stamp, TREE_VERSION)?;
    eprintln!(
        "generated {} in {:.1} s",
        dir.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// ~120 MB in ~1300 files: most small, some large; 2/3 text-like, 1/3 binary-like.
fn generate_tree(dir: &Path) -> Result<()> {
    const SYLLABLES: &[&str] = &[
        "ker", "nel", "mod", "ule", "in", "it", "sta", "tic", "con", "st", "re", "turn", "str",
        "uct", "vo", "id", "er", "ror", "dev", "ice", "vir", "tio", "buf", "fer", "mem", "ory",
        "pa", "ge", "lo", "ck", "que", "ue",
    ];
    let mut rng = fastrand::Rng::with_seed(0x6D69_6E6B_6521_0001);
    // A 4096-word vocabulary, drawn with a skew towards the first words (like real text).
    let words: Vec<String> = (0..4096)
        .map(|_| {
            (0..1 + rng.u64(..3))
                .map(|_| SYLLABLES[rng.u64(..SYLLABLES.len() as u64) as usize])
                .collect()
        })
        .collect();
    // Sizes: a long-tailed distribution scaled to the target total.
    let raw: Vec<u64> = (0..TREE_FILES)
        .map(|i| match i % 100 {
            0 => 4_000_000 + rng.u64(..4_000_000),
            1..=9 => 300_000 + rng.u64(..700_000),
            _ => 1_000 + rng.u64(..60_000),
        })
        .collect();
    let total: u64 = raw.iter().sum();
    let dirs = [
        "bin",
        "etc",
        "lib/modules/6.1/kernel/drivers",
        "lib/modules/6.1/kernel/fs",
        "usr/lib/x86_64",
        "usr/share/doc",
        "opt/app/data",
    ];
    let lines: Vec<String> = (0..600)
        .map(|_| {
            let n = 2 + rng.u64(..10);
            let mut line: Vec<&str> = (0..n)
                .map(|_| words[skewed(&mut rng, words.len() as u64) as usize].as_str())
                .collect();
            line.push("\n");
            line.join(" ")
        })
        .collect();
    let funcs: Vec<Vec<u8>> = (0..300)
        .map(|_| (0..16 + rng.u64(..80)).map(|_| rng.u8(..)).collect())
        .collect();
    let mut paths = Vec::new();
    let mut buf = Vec::new();
    for (i, r) in raw.iter().enumerate() {
        let size = (*r as u128 * TREE_BYTES as u128 / total as u128) as usize;
        let sub = dirs[i % dirs.len()];
        let path = dir
            .join(sub)
            .join(format!("d{}", i % 13))
            .join(format!("file{i:04}.dat"));
        buf.clear();
        if i % 3 == 2 {
            // Binary-like: recurring "functions" with patched operands, and some random data.
            while buf.len() < size {
                let v = rng.u64(..);
                let kind = v % 4;
                if kind == 0 {
                    buf.extend((0..16).map(|_| rng.u8(..)));
                } else {
                    let start = buf.len();
                    buf.extend_from_slice(&funcs[skewed(&mut rng, funcs.len() as u64) as usize]);
                    for _ in 0..2 {
                        let at = start + rng.u64(..(buf.len() - start) as u64) as usize;
                        buf[at] = rng.u8(..);
                    }
                }
            }
        } else {
            // Text-like: recurring lines, and some fresh ones.
            while buf.len() < size {
                let v = rng.u64(..);
                let kind = v % 5;
                if kind == 0 {
                    for _ in 0..3 + v % 8 {
                        let w = skewed(&mut rng, words.len() as u64) as usize;
                        buf.extend_from_slice(words[w].as_bytes());
                        buf.push(b' ');
                    }
                    buf.push(b'\n');
                } else {
                    buf.extend_from_slice(
                        lines[skewed(&mut rng, lines.len() as u64) as usize].as_bytes(),
                    );
                }
            }
        }
        buf.truncate(size);
        let parent = path.parent().context("generated path has a parent")?;
        std::fs::create_dir_all(parent)?;
        std::fs::write(&path, &buf).with_context(|| format!("cannot write {}", path.display()))?;
        paths.push(path);
    }
    // A few hard links and symlinks.
    for k in 0..10 {
        let target = &paths[k * 97 % paths.len()];
        std::fs::hard_link(target, dir.join(format!("bin/hardlink{k}")))?;
        std::os::unix::fs::symlink(
            Path::new("..").join(target.strip_prefix(dir)?),
            dir.join(format!("bin/symlink{k}")),
        )?;
    }
    Ok(())
}
