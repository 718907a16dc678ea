//! The initrd's compression: the archive's chunks become gzip members or zstd frames, made in
//! parallel and concatenated in order.
//!
//! # Entry point
//! [`archive`]`(tree, &ArchiveOptions { mtime, compression, chunk_target, threads })` returns the
//! finished initrd bytes; [`archive_to_path`] writes the same bytes to a file (faster when
//! uncompressed: file data is copied by the kernel); [`compress_plan`] does the work for an
//! already planned [`cpio::Plan`].
//!
//! # Output
//! The [`cpio::Plan`] cuts one newc archive (one `TRAILER!!!`, at the very end) into chunks at
//! entry boundaries. Each chunk becomes, independently:
//! - [`Compression::Gzip`]: one gzip member, level [`GZIP_LEVEL`], header mtime 0, no name, OS
//!   byte [`GZIP_OS`];
//! - [`Compression::Zstd`]: one zstd frame, level [`ZSTD_LEVEL`], with content size and checksum;
//! - [`Compression::None`]: the chunk's bytes.
//!
//! The results are concatenated in chunk order. The kernel decompresses concatenated members or
//! frames one after another into one continuous cpio stream, and so do `gzip -dc` and
//! `zstd -dc`, so `zcat initrd | cpio -t` lists the whole archive.
//!
//! # Determinism
//! Chunk boundaries depend only on the tree and `chunk_target`; each chunk is compressed alone
//! by a pinned backend at a pinned level (libdeflate, zstd; versions pinned by Cargo.lock,
//! and neither's output depends on the CPU's features: they only speed up checksums and
//! table set-up), so the bytes are the same
//! for any thread count.
//! Threads (at most `available_parallelism`) take chunks largest first, each reading its
//! chunk's files itself; the uncompressed case writes every chunk straight into its place in
//! one output buffer.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::archive::cpio::{self, CpioError, FileSink, Plan, SliceSink, WriteSink};
use crate::archive::tree::Tree;

/// gzip (deflate) level; the same as `gzip`'s default.
pub const GZIP_LEVEL: u32 = 6;
/// zstd level; the same as `zstd`'s default.
pub const ZSTD_LEVEL: i32 = 3;
/// OS byte of every gzip header (3 = Unix, as GNU gzip writes).
pub const GZIP_OS: u8 = 3;

/// How the initrd is compressed.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Compression {
    /// gzip members (every kernel can read them).
    #[default]
    Gzip,
    /// zstd frames (needs `CONFIG_RD_ZSTD`; faster to build and to boot).
    Zstd,
    /// No compression.
    None,
}

/// How [`archive`] builds the initrd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveOptions {
    /// The one timestamp of every entry (SOURCE_DATE_EPOCH).
    pub mtime: u32,
    /// Compression of the chunks.
    pub compression: Compression,
    /// Uncompressed bytes per chunk (cuts fall at the first entry boundary past it). Part of the
    /// output's identity: a different target gives different compressed bytes.
    pub chunk_target: u64,
    /// Upper bound on worker threads (`None`: `available_parallelism`). Never changes the bytes.
    pub threads: Option<NonZeroUsize>,
}

impl Default for ArchiveOptions {
    fn default() -> Self {
        ArchiveOptions {
            mtime: 0,
            compression: Compression::default(),
            chunk_target: cpio::DEFAULT_CHUNK_TARGET,
            threads: None,
        }
    }
}

/// Why the initrd could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The tree could not be archived (bad entry, unreadable or changed file).
    #[error(transparent)]
    Cpio(#[from] CpioError),
    /// The compressor failed.
    #[error("cannot compress chunk {chunk} of the initrd")]
    Compress {
        /// Chunk number.
        chunk: usize,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The output file could not be written.
    #[error("cannot write the initrd to {path}")]
    Output {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The archive does not fit in memory on this platform.
    #[error("the archive is {0} bytes, more than this platform can hold in memory")]
    TooLarge(u64),
}

/// Builds the initrd for `tree`: one newc archive, chunked and compressed as `opts` says.
pub fn archive(tree: &Tree, opts: &ArchiveOptions) -> Result<Vec<u8>, ArchiveError> {
    let plan = Plan::new(tree, opts.mtime, opts.chunk_target)?;
    compress_plan(&plan, opts.compression, opts.threads)
}

/// Builds the initrd for `tree` into the file at `path` (created or truncated) and returns its
/// size. The same bytes as [`archive`]; uncompressed, every worker writes its chunks straight
/// into place and file data is copied by the kernel.
pub fn archive_to_path(
    tree: &Tree,
    opts: &ArchiveOptions,
    path: &Path,
) -> Result<u64, ArchiveError> {
    let plan = Plan::new(tree, opts.mtime, opts.chunk_target)?;
    let out_err = |source| ArchiveError::Output {
        path: path.to_path_buf(),
        source,
    };
    let file = File::create(path).map_err(out_err)?;
    if opts.compression != Compression::None {
        let bytes = compress_plan(&plan, opts.compression, opts.threads)?;
        (&file).write_all(&bytes).map_err(out_err)?;
        return Ok(bytes.len() as u64);
    }
    file.set_len(plan.len()).map_err(out_err)?;
    let mut offsets = Vec::with_capacity(plan.chunk_count());
    let mut at = 0;
    for i in 0..plan.chunk_count() {
        offsets.push(at);
        at += plan.chunk_len(i);
    }
    let order = schedule(&plan);
    let threads = thread_count(&plan, opts.threads);
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let errors: Mutex<Vec<(usize, ArchiveError)>> = Mutex::new(Vec::new());
    let record = |i: usize, e: ArchiveError| {
        failed.store(true, Ordering::Relaxed);
        if let Ok(mut errs) = errors.lock() {
            errs.push((i, e));
        }
    };
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                // Each worker has its own file description, so its own position.
                let mut sink = match OpenOptions::new().write(true).open(path) {
                    Ok(f) => FileSink(f),
                    Err(e) => return record(usize::MAX, out_err(e)),
                };
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    if k >= order.len() || failed.load(Ordering::Relaxed) {
                        return;
                    }
                    let i = order[k];
                    if let Err(e) = write_chunk_at(&plan, i, offsets[i], &mut sink, path) {
                        return record(i, e);
                    }
                }
            });
        }
    });
    let mut errors = errors.into_inner().unwrap_or_else(|e| e.into_inner());
    errors.sort_by_key(|(i, _)| *i);
    match errors.into_iter().next() {
        Some((_, e)) => Err(e),
        None => Ok(plan.len()),
    }
}

/// Writes chunk `i` at `offset` of the output file and checks its size against the plan.
fn write_chunk_at(
    plan: &Plan<'_>,
    i: usize,
    offset: u64,
    sink: &mut FileSink,
    path: &Path,
) -> Result<(), ArchiveError> {
    let out_err = |source| ArchiveError::Output {
        path: path.to_path_buf(),
        source,
    };
    sink.0.seek(SeekFrom::Start(offset)).map_err(out_err)?;
    plan.write_chunk(i, sink)?;
    let end = sink.0.stream_position().map_err(out_err)?;
    if end != offset + plan.chunk_len(i) {
        let source = io::Error::other("chunk size differs from the plan");
        return Err(ArchiveError::Compress { chunk: i, source });
    }
    Ok(())
}

/// One chunk's result, once a worker has made it.
type Slot = Option<Result<Vec<u8>, ArchiveError>>;

/// Chunk numbers, largest first, so one big chunk doesn't start last.
fn schedule(plan: &Plan<'_>) -> Vec<usize> {
    let mut order: Vec<usize> = (0..plan.chunk_count()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(plan.chunk_len(i)));
    order
}

/// Worker threads: at most `available_parallelism`, the caller's bound and the chunk count.
fn thread_count(plan: &Plan<'_>, threads: Option<NonZeroUsize>) -> usize {
    let available = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
    threads
        .map_or(available, |t| t.get().min(available))
        .min(plan.chunk_count())
        .max(1)
}

/// Compresses (or just writes) every chunk of `plan` in parallel and concatenates the results.
pub fn compress_plan(
    plan: &Plan<'_>,
    compression: Compression,
    threads: Option<NonZeroUsize>,
) -> Result<Vec<u8>, ArchiveError> {
    let n = plan.chunk_count();
    let threads = thread_count(plan, threads);
    let order = schedule(plan);

    if compression == Compression::None {
        return write_uncompressed(plan, &order, threads);
    }

    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let results: Mutex<Vec<Slot>> = Mutex::new((0..n).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= n || failed.load(Ordering::Relaxed) {
                    break;
                }
                let i = order[k];
                let r = compress_chunk(plan, i, compression);
                if r.is_err() {
                    failed.store(true, Ordering::Relaxed);
                }
                if let Ok(mut slots) = results.lock() {
                    slots[i] = Some(r);
                }
            });
        }
    });
    let slots = results.into_inner().unwrap_or_else(|e| e.into_inner());
    // The first error in chunk order, so errors are as deterministic as output.
    let mut parts = Vec::with_capacity(n);
    for slot in slots {
        match slot {
            Some(Ok(part)) => parts.push(part),
            Some(Err(e)) => return Err(e),
            None => {}
        }
    }
    if parts.len() != n {
        // A worker stopped after another chunk failed; that error was returned above.
        return Err(ArchiveError::Compress {
            chunk: parts.len(),
            source: io::Error::other("worker stopped"),
        });
    }
    let mut out = Vec::with_capacity(parts.iter().map(Vec::len).sum());
    for p in parts {
        out.extend_from_slice(&p);
    }
    Ok(out)
}

fn compress_chunk(
    plan: &Plan<'_>,
    i: usize,
    compression: Compression,
) -> Result<Vec<u8>, ArchiveError> {
    let len = plan.chunk_len(i);
    let cap = usize::try_from(len / 3).unwrap_or(0);
    let err = |source| ArchiveError::Compress { chunk: i, source };
    match compression {
        Compression::Gzip => {
            // libdeflate compresses a whole buffer at once, which a chunk is.
            let mut raw = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
            plan.write_chunk(i, &mut raw)?;
            let level = libdeflater::CompressionLvl::new(GZIP_LEVEL as i32)
                .map_err(|e| err(io::Error::other(format!("{e:?}"))))?;
            let mut enc = libdeflater::Compressor::new(level);
            let mut out = vec![0u8; enc.gzip_compress_bound(raw.len())];
            let n = enc
                .gzip_compress(&raw, &mut out)
                .map_err(|e| err(io::Error::other(e.to_string())))?;
            out.truncate(n);
            // The header's OS byte (libdeflate writes 255, "unknown").
            if let Some(os) = out.get_mut(9) {
                *os = GZIP_OS;
            }
            Ok(out)
        }
        Compression::Zstd => {
            let mut enc = zstd::stream::write::Encoder::new(Vec::with_capacity(cap), ZSTD_LEVEL)
                .map_err(err)?;
            enc.include_checksum(true).map_err(err)?;
            enc.include_contentsize(true).map_err(err)?;
            enc.set_pledged_src_size(Some(len)).map_err(err)?;
            let mut sink = WriteSink(enc);
            plan.write_chunk(i, &mut sink)?;
            sink.0.finish().map_err(err)
        }
        Compression::None => {
            let mut out = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
            plan.write_chunk(i, &mut out)?;
            Ok(out)
        }
    }
}

/// Every chunk written by the workers directly into its own part of one buffer.
fn write_uncompressed(
    plan: &Plan<'_>,
    order: &[usize],
    threads: usize,
) -> Result<Vec<u8>, ArchiveError> {
    let total = usize::try_from(plan.len()).map_err(|_| ArchiveError::TooLarge(plan.len()))?;
    let mut out = vec![0u8; total];
    let mut slices: Vec<Option<&mut [u8]>> = Vec::with_capacity(order.len());
    let mut rest: &mut [u8] = &mut out;
    for i in 0..order.len() {
        let (head, tail) = rest.split_at_mut(plan.chunk_len(i) as usize);
        slices.push(Some(head));
        rest = tail;
    }
    // Work queue in scheduling order.
    let queue: Mutex<Vec<(usize, &mut [u8])>> = Mutex::new(
        order
            .iter()
            .rev()
            .filter_map(|&i| slices[i].take().map(|s| (i, s)))
            .collect(),
    );
    let failed = AtomicBool::new(false);
    let errors: Mutex<Vec<(usize, ArchiveError)>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                if failed.load(Ordering::Relaxed) {
                    break;
                }
                let job = queue.lock().ok().and_then(|mut q| q.pop());
                let Some((i, buf)) = job else { break };
                let mut sink = SliceSink::new(buf);
                let r = plan
                    .write_chunk(i, &mut sink)
                    .map_err(ArchiveError::from)
                    .and_then(|()| {
                        if sink.filled() as u64 == plan.chunk_len(i) {
                            Ok(())
                        } else {
                            Err(ArchiveError::Compress {
                                chunk: i,
                                source: io::Error::other("chunk is shorter than planned"),
                            })
                        }
                    });
                if let Err(e) = r {
                    failed.store(true, Ordering::Relaxed);
                    if let Ok(mut errs) = errors.lock() {
                        errs.push((i, e));
                    }
                }
            });
        }
    });
    let mut errors = errors.into_inner().unwrap_or_else(|e| e.into_inner());
    errors.sort_by_key(|(i, _)| *i);
    match errors.into_iter().next() {
        Some((_, e)) => Err(e),
        None => Ok(out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::tree::Node;
    use std::io::Write;
    use std::process::{Command, Stdio};

    fn sample_tree() -> Tree {
        let mut t = Tree::new();
        let mut x: u32 = 1;
        for i in 0..300 {
            let len = 500 + (i * 997) % 20_000;
            let data: Vec<u8> = (0..len)
                .map(|j| {
                    if i % 3 == 0 {
                        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                        (x >> 16) as u8
                    } else {
                        b"lorem ipsum dolor sit amet "[j % 27]
                    }
                })
                .collect();
            t.insert(&format!("d{}/f{i}", i % 7), Node::file(0o644, data))
                .unwrap();
        }
        t.insert(
            "d0/link",
            Node {
                mode: 0o644,
                uid: 0,
                gid: 0,
                kind: crate::archive::tree::NodeKind::Hardlink("d6/f97".into()),
            },
        )
        .unwrap();
        t.insert("sh", Node::symlink("d1/f1")).unwrap();
        t
    }

    fn opts(compression: Compression, threads: usize) -> ArchiveOptions {
        ArchiveOptions {
            mtime: 1_700_000_000,
            compression,
            chunk_target: 64 << 10,
            threads: NonZeroUsize::new(threads),
        }
    }

    fn decompress_with(tool: &str, input: &[u8]) -> Vec<u8> {
        let mut child = Command::new(tool)
            .args(["-d", "-c"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let input = input.to_vec();
        let writer = std::thread::spawn(move || stdin.write_all(&input));
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap().unwrap();
        assert!(
            out.status.success(),
            "{tool}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    #[test]
    fn peers_decompress_to_exactly_the_archive() {
        let t = sample_tree();
        let plain = archive(&t, &opts(Compression::None, 2)).unwrap();
        assert_eq!(
            plain,
            Plan::new(&t, 1_700_000_000, u64::MAX)
                .unwrap()
                .to_vec()
                .unwrap()
        );
        let gz = archive(&t, &opts(Compression::Gzip, 2)).unwrap();
        let zst = archive(&t, &opts(Compression::Zstd, 2)).unwrap();
        assert!(gz.len() < plain.len() && zst.len() < plain.len());
        // Several members/frames.
        assert!(Plan::new(&t, 0, 64 << 10).unwrap().chunk_count() > 10);
        assert_eq!(&gz[..10], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, GZIP_OS]);
        assert_eq!(&zst[..4], &[0x28, 0xb5, 0x2f, 0xfd]);
        assert_eq!(decompress_with("gzip", &gz), plain);
        assert_eq!(decompress_with("zstd", &zst), plain);
        // Each member ends on an entry boundary: decompressing member by member gives whole
        // entries (checked through flate2's single-member decoder).
        let mut rest = &gz[..];
        let mut joined = Vec::new();
        while !rest.is_empty() {
            let mut d = flate2::bufread::GzDecoder::new(rest);
            let mut member = Vec::new();
            io::Read::read_to_end(&mut d, &mut member).unwrap();
            assert_eq!(&member[..6], cpio::MAGIC);
            assert_eq!(member.len() % 4, 0);
            joined.extend(member);
            rest = d.into_inner();
        }
        assert_eq!(joined, plain);
    }

    #[test]
    fn files_hold_the_same_bytes_as_memory() {
        let dir = tempfile::tempdir().unwrap();
        // Files on disk, so the kernel-copy path is exercised.
        let mut t = Tree::new();
        for i in 0..50u32 {
            let p = dir.path().join(format!("in{i}"));
            std::fs::write(&p, vec![i as u8; (i as usize) * 5000 + 3]).unwrap();
            let data = crate::archive::tree::FileData::Path {
                size: std::fs::metadata(&p).unwrap().len(),
                path: p,
            };
            t.insert(
                &format!("f/{i}"),
                Node {
                    mode: 0o644,
                    uid: 0,
                    gid: 0,
                    kind: crate::archive::tree::NodeKind::File(data),
                },
            )
            .unwrap();
        }
        for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
            let out = dir.path().join("initrd");
            let n = archive_to_path(&t, &opts(c, 2), &out).unwrap();
            let bytes = std::fs::read(&out).unwrap();
            assert_eq!(n, bytes.len() as u64);
            assert_eq!(bytes, archive(&t, &opts(c, 1)).unwrap(), "{c:?}");
        }
        let e = archive_to_path(
            &t,
            &opts(Compression::None, 2),
            &dir.path().join("no/such/dir"),
        )
        .unwrap_err();
        assert!(matches!(e, ArchiveError::Output { .. }), "{e}");
    }

    #[test]
    fn output_does_not_depend_on_thread_count() {
        let t = sample_tree();
        for c in [Compression::Gzip, Compression::Zstd, Compression::None] {
            let one = archive(&t, &opts(c, 1)).unwrap();
            for n in [2, 3, 8] {
                assert_eq!(
                    archive(&t, &opts(c, n)).unwrap(),
                    one,
                    "{c:?} with {n} threads"
                );
            }
        }
    }

    #[test]
    fn errors_name_the_first_bad_chunk() {
        let mut t = sample_tree();
        let missing = crate::archive::tree::FileData::Path {
            path: "/nonexistent/minke-test".into(),
            size: 3,
        };
        t.insert(
            "zz/missing",
            Node {
                mode: 0o644,
                uid: 0,
                gid: 0,
                kind: crate::archive::tree::NodeKind::File(missing),
            },
        )
        .unwrap();
        for c in [Compression::Gzip, Compression::None] {
            let e = archive(&t, &opts(c, 2)).unwrap_err();
            assert!(e.to_string().contains("zz/missing"), "{e}");
        }
    }

    #[test]
    fn compression_names_are_kebab_case() {
        assert_eq!(
            serde_json::to_string(&Compression::Zstd).unwrap(),
            "\"zstd\""
        );
        assert_eq!(
            serde_json::from_str::<Compression>("\"none\"").unwrap(),
            Compression::None
        );
        assert_eq!(Compression::default(), Compression::Gzip);
    }
}
