//! An uncompressed EROFS image of a [`Tree`]: a read-only filesystem the Linux kernel mounts
//! straight from a block device (`mount -t erofs`, CONFIG_EROFS_FS), for a container's root
//! filesystem on a virtio-blk disk. It uses no feature flag, only what Linux 6.1 reads.
//!
//! # Format
//! Facts from the kernel's on-disk definition (`fs/erofs/erofs_fs.h`) and
//! `Documentation/filesystems/erofs.rst`; all integers are little-endian.
//!
//! - The image is a run of 4096-byte blocks. The 128-byte superblock sits at byte 1024:
//!   magic `0xE0F5E1E2`, `blkszbits` 12, `root_nid` (16 bits), `inos`, `build_time`, `blocks`,
//!   `meta_blkaddr`, `uuid`. No feature bits are set: no checksum, no compression, no xattrs.
//! - Inodes are 32-byte *compact* or 64-byte *extended* records, 32-byte aligned, named by
//!   their nid: byte offset `meta_blkaddr * 4096 + nid * 32`. A compact inode has 16-bit
//!   uid, gid and nlink, a 32-bit size and no mtime of its own (the kernel gives it the
//!   superblock's `build_time`); an extended one has 32-bit ids and nlink, a 64-bit size and
//!   its own mtime.
//! - Data layout `FLAT_PLAIN`: the bytes in consecutive whole blocks from `raw_blkaddr`, the
//!   last one zero-padded. `FLAT_INLINE`: the whole blocks likewise, and the tail (size mod
//!   4096, never 0) packed right after the inode; inode and tail must share one block.
//! - A directory's data is blocks of 12-byte dirents `{nid u64, nameoff u16, file_type u8,
//!   reserved u8}` followed by the names (no NULs between them; `nameoff` counts from the
//!   block's start, the first one tells how many dirents the block has). `.` and `..` are
//!   entries like any other. The size is that of the full blocks plus the used bytes of the
//!   last one.
//! - Lookups binary-search the blocks by their first name, then the dirents inside a block, by
//!   plain bytewise comparison: names must be sorted bytewise across the whole directory, `.`
//!   and `..` included (so `+x` comes before `.`). The last name of a block is read up to the
//!   block's end or the first NUL: the page the kernel reads a block into has zeros after the
//!   directory's size (an inline tail is copied into a zeroed page), and a data block's
//!   padding written here is zeros.
//!
//! # What [`write_erofs`] writes
//! - `meta_blkaddr` is 0: the metadata area starts right after the superblock, at byte 1152,
//!   and holds every inode. Inodes are placed in tree order (the root first, at nid 36, or 128
//!   when its tail needs a block of its own; then each entry in bytewise path order; a hard
//!   link is no inode of its own), each at the end of the fullest metadata block that has
//!   room for it and its inline tail (best fit, the lowest block on a tie), else in a new
//!   block. The file data follows the metadata in whole blocks, in tree order.
//! - Inodes are compact unless uid, gid or nlink exceed 16 bits or the size 32 bits. Every
//!   mtime is the one given, which is also the superblock's `build_time`.
//! - Data whose size is not a multiple of 4096 has its tail inlined whenever inode and tail fit
//!   in one block; otherwise (and for empty files, with no blocks) the data is `FLAT_PLAIN`.
//! - The root is a root-owned 0755 directory (a tree has no root entry). A directory's nlink
//!   is 2 + its subdirectories; a hard-linked file's is the number of its names, and the
//!   group takes its target file's mode and owner (the link node's own are not used, as in
//!   the cpio writer). The 32-bit `i_ino` is the inode's 1-based position.
//! - The UUID is the first 16 bytes of the SHA-256 of the image written with a zero UUID
//!   (data area, then metadata), marked as an RFC 4122 version-4 UUID, so the same tree and
//!   mtime always give the same bytes.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::archive::tree::{FileData, NodeKind, Tree};

/// Block size (the only one written; the kernel needs it to equal its page size on x86).
pub const BLOCK_SIZE: u64 = 4096;
/// Byte offset of the superblock.
pub const SUPER_OFFSET: usize = 1024;
/// The superblock's magic number.
pub const MAGIC: u32 = 0xE0F5_E1E2;
/// Longest file name (one path component) the format holds.
pub const NAME_MAX: usize = 255;
/// Longest symlink target the kernel can follow (PATH_MAX without the NUL).
pub const SYMLINK_MAX: usize = 4095;

const BLOCK_BITS: u8 = 12;
const SUPER_LEN: usize = 128;
/// Where the first inode (the root) goes: right after the superblock, 32-byte aligned.
const META_START: u64 = (SUPER_OFFSET + SUPER_LEN) as u64;
const SLOT: u64 = 32;
const COMPACT_LEN: u64 = 32;
const EXTENDED_LEN: u64 = 64;
const DIRENT_LEN: usize = 12;
const FLAT_PLAIN: u16 = 0;
const FLAT_INLINE: u16 = 2;
/// Directory entry types (the kernel's generic FT_* numbers).
const FT_REG: u8 = 1;
const FT_DIR: u8 = 2;
const FT_SYMLINK: u8 = 7;
const S_IFDIR: u16 = 0o040000;
const S_IFREG: u16 = 0o100000;
const S_IFLNK: u16 = 0o120000;
/// The data area is written in pieces of about this size.
const FLUSH_AT: usize = 1 << 20;

/// Why a tree could not be written as an EROFS image.
#[derive(Debug, thiserror::Error)]
pub enum ErofsError {
    /// A hard link names a path that is not in the tree.
    #[error("{path:?} is a hard link to {target:?}, which is not in the tree: add the target file or make {path:?} a regular file")]
    MissingLinkTarget {
        /// The link.
        path: String,
        /// What it names.
        target: String,
    },
    /// A hard link names something other than a regular file.
    #[error("{path:?} is a hard link to {target:?}, which is not a regular file: hard links may only point at regular files")]
    LinkTargetNotFile {
        /// The link.
        path: String,
        /// What it names.
        target: String,
    },
    /// An entry's parent is missing or not a directory.
    #[error("{path:?} is below {parent:?}, which is not a directory in the tree: fix the producer that added it")]
    BadParent {
        /// The entry.
        path: String,
        /// Its parent path.
        parent: String,
    },
    /// A path component is longer than a directory entry holds.
    #[error(
        "{path:?} has a name of {len} bytes; EROFS holds names of at most {max} bytes: shorten it"
    )]
    NameTooLong {
        /// The path.
        path: String,
        /// The name's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A path component that cannot be a directory entry.
    #[error("{path:?} has a name that is empty, `.`, `..` or contains NUL: fix the producer that added it")]
    BadName {
        /// The path.
        path: String,
    },
    /// A symlink target the kernel could not follow.
    #[error("symlink {path:?} has a target that is {reason}: give it a non-empty target without NUL of at most {max} bytes")]
    BadSymlink {
        /// The symlink.
        path: String,
        /// What is wrong.
        reason: &'static str,
        /// The length limit.
        max: usize,
    },
    /// Mode bits beyond the permission bits.
    #[error("{path:?} has mode {mode:#o}; only permission bits (0o7777) may be set, the type comes from the entry kind")]
    BadMode {
        /// The path.
        path: String,
        /// The mode.
        mode: u32,
    },
    /// The image would need more blocks than 32-bit block addresses reach.
    #[error("the image would be larger than EROFS's 16 TiB (2^32 blocks of 4 KiB) once {path:?} is added: leave large files out of the image")]
    TooLarge {
        /// The entry whose data crosses the limit.
        path: String,
    },
    /// A file's bytes could not be read.
    #[error("cannot read {file} (for {path:?}) while writing the EROFS image")]
    Read {
        /// Tree path.
        path: String,
        /// Host file.
        file: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A file's size differs from the one recorded when it was added.
    #[error("{file} (for {path:?}) was {expected} bytes when added to the tree but is {actual} bytes now: something changed it during the build; build again")]
    SizeChanged {
        /// Tree path.
        path: String,
        /// Host file.
        file: PathBuf,
        /// Size when added.
        expected: u64,
        /// Size when written.
        actual: u64,
    },
    /// The output could not be written.
    #[error("cannot write the EROFS image")]
    Write {
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

fn write_err(source: io::Error) -> ErofsError {
    ErofsError::Write { source }
}

/// What an inode's data is.
#[derive(Debug, Clone, Copy)]
enum Content<'t> {
    /// Directory number `n` of [`Plan::dirs`].
    Dir(usize),
    /// A regular file.
    File(&'t FileData),
    /// A symlink's target.
    Symlink(&'t [u8]),
}

#[derive(Debug)]
struct Inode<'t> {
    /// Tree path ("" for the root), for errors.
    path: &'t str,
    /// Type and permission bits.
    mode: u16,
    uid: u32,
    gid: u32,
    nlink: u32,
    size: u64,
    content: Content<'t>,
    /// Set by the metadata layout.
    nid: u64,
    /// Whether the tail is packed after the inode (`FLAT_INLINE`).
    inline: bool,
    /// First data block, set by the data layout (0 when there is none).
    blkaddr: u32,
}

impl Inode<'_> {
    fn extended(&self) -> bool {
        self.uid > 0xffff || self.gid > 0xffff || self.nlink > 0xffff || self.size > 0xffff_ffff
    }

    fn inode_len(&self) -> u64 {
        if self.extended() {
            EXTENDED_LEN
        } else {
            COMPACT_LEN
        }
    }

    /// Bytes that go into the data area (the rest, if any, is the inline tail).
    fn head_len(&self) -> u64 {
        if self.inline {
            self.size - self.size % BLOCK_SIZE
        } else {
            self.size
        }
    }

    fn head_blocks(&self) -> u64 {
        self.head_len().div_ceil(BLOCK_SIZE)
    }

    fn file_type(&self) -> u8 {
        match self.content {
            Content::Dir(_) => FT_DIR,
            Content::File(_) => FT_REG,
            Content::Symlink(_) => FT_SYMLINK,
        }
    }
}

#[derive(Debug)]
struct Dir<'t> {
    /// The directory's own inode and its parent's (the root is its own parent).
    ino: usize,
    parent: usize,
    /// (name, inode), bytewise sorted once complete, `.` and `..` included.
    entries: Vec<(&'t [u8], usize)>,
    /// Index of the first entry of each block.
    block_starts: Vec<usize>,
}

/// A tree laid out as an image: every inode placed, every block assigned.
#[derive(Debug)]
struct Plan<'t> {
    inodes: Vec<Inode<'t>>,
    dirs: Vec<Dir<'t>>,
    meta_blocks: u64,
    blocks: u64,
}

fn check_name(path: &str) -> Result<(), ErofsError> {
    let name = path.rsplit('/').next().unwrap_or(path);
    if name.is_empty() || name == "." || name == ".." || name.contains('\0') {
        return Err(ErofsError::BadName {
            path: path.to_string(),
        });
    }
    if name.len() > NAME_MAX {
        return Err(ErofsError::NameTooLong {
            path: path.to_string(),
            len: name.len(),
            max: NAME_MAX,
        });
    }
    Ok(())
}

fn check_symlink(path: &str, target: &str) -> Result<(), ErofsError> {
    let reason = if target.is_empty() {
        "empty"
    } else if target.contains('\0') {
        "containing NUL"
    } else if target.len() > SYMLINK_MAX {
        "too long"
    } else {
        return Ok(());
    };
    Err(ErofsError::BadSymlink {
        path: path.to_string(),
        reason,
        max: SYMLINK_MAX,
    })
}

impl<'t> Plan<'t> {
    fn new(tree: &'t Tree) -> Result<Plan<'t>, ErofsError> {
        let entries: Vec<(&'t str, &'t crate::archive::tree::Node)> =
            tree.iter().map(|(p, n)| (p.as_str(), n)).collect();
        let root = Inode {
            path: "",
            mode: S_IFDIR | 0o755,
            uid: 0,
            gid: 0,
            nlink: 2,
            size: 0,
            content: Content::Dir(0),
            nid: 0,
            inline: false,
            blkaddr: 0,
        };
        let mut inodes = vec![root];
        let mut dirs = vec![Dir {
            ino: 0,
            parent: 0,
            entries: Vec::new(),
            block_starts: Vec::new(),
        }];
        // One inode per entry that is not a hard link, in tree order.
        let mut by_path: HashMap<&'t str, usize> = HashMap::with_capacity(entries.len());
        for &(path, node) in &entries {
            check_name(path)?;
            if node.mode & !0o7777 != 0 {
                return Err(ErofsError::BadMode {
                    path: path.to_string(),
                    mode: node.mode,
                });
            }
            let (kind, nlink, size, content) = match &node.kind {
                NodeKind::Dir => {
                    dirs.push(Dir {
                        ino: inodes.len(),
                        parent: 0,
                        entries: Vec::new(),
                        block_starts: Vec::new(),
                    });
                    (S_IFDIR, 2, 0, Content::Dir(dirs.len() - 1))
                }
                NodeKind::File(data) => (S_IFREG, 1, data.size(), Content::File(data)),
                NodeKind::Symlink(target) => {
                    check_symlink(path, target)?;
                    let t = target.as_bytes();
                    (S_IFLNK, 1, t.len() as u64, Content::Symlink(t))
                }
                NodeKind::Hardlink(_) => continue,
            };
            by_path.insert(path, inodes.len());
            inodes.push(Inode {
                path,
                mode: kind | node.mode as u16,
                uid: node.uid,
                gid: node.gid,
                nlink,
                size,
                content,
                nid: 0,
                inline: false,
                blkaddr: 0,
            });
        }

        // Hard links join their target's inode; every entry joins its parent directory.
        for &(path, node) in &entries {
            let ino = match &node.kind {
                NodeKind::Hardlink(target) => {
                    let t = target.trim_matches('/');
                    match by_path.get(t) {
                        Some(&i) if matches!(inodes[i].content, Content::File(_)) => {
                            inodes[i].nlink += 1;
                            i
                        }
                        found => {
                            let (path, target) = (path.to_string(), target.clone());
                            return Err(if found.is_some() || tree.get(t).is_some() {
                                ErofsError::LinkTargetNotFile { path, target }
                            } else {
                                ErofsError::MissingLinkTarget { path, target }
                            });
                        }
                    }
                }
                _ => by_path[path],
            };
            let (parent, name) = match path.rsplit_once('/') {
                None => (0, path),
                Some((p, name)) => match by_path.get(p).map(|&i| (i, inodes[i].content)) {
                    Some((i, Content::Dir(_))) => (i, name),
                    _ => {
                        return Err(ErofsError::BadParent {
                            path: path.to_string(),
                            parent: p.to_string(),
                        })
                    }
                },
            };
            let Content::Dir(pd) = inodes[parent].content else {
                unreachable!("parents are checked to be directories");
            };
            dirs[pd].entries.push((name.as_bytes(), ino));
            if let (NodeKind::Dir, Content::Dir(d)) = (&node.kind, inodes[ino].content) {
                dirs[d].parent = parent;
                inodes[parent].nlink += 1;
            }
        }

        // Sort each directory and cut it into blocks; that fixes its size.
        for dir in &mut dirs {
            dir.entries.push((b".", dir.ino));
            dir.entries.push((b"..", dir.parent));
            dir.entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            let mut used = 0;
            for (i, (name, _)) in dir.entries.iter().enumerate() {
                let len = DIRENT_LEN + name.len();
                if i == 0 || used + len > BLOCK_SIZE as usize {
                    dir.block_starts.push(i);
                    used = 0;
                }
                used += len;
            }
            inodes[dir.ino].size = (dir.block_starts.len() as u64 - 1) * BLOCK_SIZE + used as u64;
        }

        // Metadata area: each inode, with its tail when that fits in a block, goes to the end
        // of the fullest block with room for it (best fit, the lowest such block on a tie),
        // or starts a new block. `open[n]`: blocks with n free slots at their end.
        const SLOTS: u64 = BLOCK_SIZE / SLOT;
        let mut open = vec![BTreeSet::new(); SLOTS as usize + 1];
        open[((BLOCK_SIZE - META_START) / SLOT) as usize].insert(0u64);
        let mut meta_blocks = 1;
        for ino in &mut inodes {
            let (len, tail) = (ino.inode_len(), ino.size % BLOCK_SIZE);
            ino.inline = tail > 0 && len + tail <= BLOCK_SIZE;
            let slots = (len + if ino.inline { tail } else { 0 }).div_ceil(SLOT);
            let fit = (slots as usize..open.len()).find_map(|n| Some((n, *open[n].first()?)));
            let (free, block) = match fit {
                Some((n, block)) => {
                    open[n].remove(&block);
                    (n as u64, block)
                }
                None => {
                    meta_blocks += 1;
                    (SLOTS, meta_blocks - 1)
                }
            };
            ino.nid = block * SLOTS + SLOTS - free;
            if free > slots {
                open[(free - slots) as usize].insert(block);
            }
        }

        // Data area: whole blocks after the metadata, in inode order.
        let mut next = meta_blocks;
        for ino in &mut inodes {
            let n = ino.head_blocks();
            if n > 0 {
                ino.blkaddr = u32::try_from(next)
                    .ok()
                    .filter(|_| next + n <= u64::from(u32::MAX))
                    .ok_or_else(|| ErofsError::TooLarge {
                        path: ino.path.to_string(),
                    })?;
                next += n;
            }
        }
        Ok(Plan {
            inodes,
            dirs,
            meta_blocks,
            blocks: next,
        })
    }

    /// A directory's bytes: its blocks, the last one cut at the directory's size.
    fn dir_bytes(&self, d: usize) -> Vec<u8> {
        let dir = &self.dirs[d];
        let mut out = Vec::with_capacity(self.inodes[dir.ino].size as usize);
        for (b, &start) in dir.block_starts.iter().enumerate() {
            let end = dir.block_starts.get(b + 1).copied();
            let entries = &dir.entries[start..end.unwrap_or(dir.entries.len())];
            let mut nameoff = DIRENT_LEN * entries.len();
            for &(name, ino) in entries {
                out.extend_from_slice(&self.inodes[ino].nid.to_le_bytes());
                // At most 4095: a block holds the dirents and the names (checked above).
                out.extend_from_slice(&(nameoff as u16).to_le_bytes());
                out.push(self.inodes[ino].file_type());
                out.push(0);
                nameoff += name.len();
            }
            for &(name, _) in entries {
                out.extend_from_slice(name);
            }
            if end.is_some() {
                // Zero padding: the NUL that ends the block's last name.
                out.resize((b + 1) * BLOCK_SIZE as usize, 0);
            }
        }
        debug_assert_eq!(out.len() as u64, self.inodes[dir.ino].size);
        out
    }

    /// Writes the inode records and the superblock (with a zero UUID) into `meta`.
    fn put_meta(&self, meta: &mut [u8], mtime: u64) {
        for (i, ino) in self.inodes.iter().enumerate() {
            let at = (ino.nid * SLOT) as usize;
            let layout = if ino.inline { FLAT_INLINE } else { FLAT_PLAIN };
            // Only for 32-bit stat() callers; the kernel's inode number is the nid.
            let seq = (i + 1) as u32;
            let mut r = Le(&mut meta[at..at + ino.inode_len() as usize]);
            r.u16(2, 0); // i_xattr_icount: no xattrs
            r.u16(4, ino.mode);
            r.u32(16, ino.blkaddr); // i_u.raw_blkaddr
            r.u32(20, seq);
            if ino.extended() {
                r.u16(0, 1 | layout << 1);
                r.u64(8, ino.size);
                r.u32(24, ino.uid);
                r.u32(28, ino.gid);
                r.u64(32, mtime);
                r.u32(40, 0); // i_mtime_nsec
                r.u32(44, ino.nlink);
            } else {
                r.u16(0, layout << 1);
                r.u16(6, ino.nlink as u16);
                r.u32(8, ino.size as u32);
                r.u16(24, ino.uid as u16);
                r.u16(26, ino.gid as u16);
            }
        }
        let mut sb = Le(&mut meta[SUPER_OFFSET..SUPER_OFFSET + SUPER_LEN]);
        sb.u32(0, MAGIC);
        sb.0[12] = BLOCK_BITS;
        sb.u16(14, self.inodes[0].nid as u16); // 36 or 128: placed first
        sb.u64(16, self.inodes.len() as u64);
        sb.u64(24, mtime); // build_time: every compact inode's mtime
        sb.u32(36, self.blocks as u32);
        // checksum, feature bits, meta_blkaddr, xattr_blkaddr, uuid, volume name: 0.
    }

    /// Where an inode's inline tail goes in the metadata area.
    fn tail_range(&self, ino: &Inode) -> std::ops::Range<usize> {
        let start = (ino.nid * SLOT + ino.inode_len()) as usize;
        start..start + (ino.size - ino.head_len()) as usize
    }
}

/// Little-endian fields of a record.
struct Le<'a>(&'a mut [u8]);

impl Le<'_> {
    fn u16(&mut self, at: usize, v: u16) {
        self.0[at..at + 2].copy_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, at: usize, v: u32) {
        self.0[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, at: usize, v: u64) {
        self.0[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }
}

/// The data area on its way out: staged into large writes and hashed for the UUID.
struct DataOut<'a, W> {
    out: &'a mut W,
    buf: Vec<u8>,
    /// Bytes written to `out` so far.
    flushed: u64,
    hash: Sha256,
}

impl<W: Write> DataOut<'_, W> {
    fn flush(&mut self) -> Result<(), ErofsError> {
        self.hash.update(&self.buf);
        self.out.write_all(&self.buf).map_err(write_err)?;
        self.flushed += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    fn flush_if_full(&mut self) -> Result<(), ErofsError> {
        if self.buf.len() >= FLUSH_AT {
            self.flush()?;
        }
        Ok(())
    }

    /// Appends `bytes` and zeros up to the next block boundary.
    fn put_blocks(&mut self, bytes: &[u8]) -> Result<(), ErofsError> {
        self.buf.extend_from_slice(bytes);
        self.pad()
    }

    /// Zeros up to the next block boundary of the data area.
    fn pad(&mut self) -> Result<(), ErofsError> {
        let gap = self.len().next_multiple_of(BLOCK_SIZE) - self.len();
        self.buf.resize(self.buf.len() + gap as usize, 0);
        self.flush_if_full()
    }

    /// Bytes of the data area so far.
    fn len(&self) -> u64 {
        self.flushed + self.buf.len() as u64
    }

    /// Streams the host file `host` (of `size` bytes, for tree path `path`): the whole
    /// blocks into the data area, the last `tail.len()` bytes into `tail`.
    fn put_host_file(
        &mut self,
        path: &str,
        host: &Path,
        size: u64,
        tail: &mut [u8],
    ) -> Result<(), ErofsError> {
        let read_err = |source| ErofsError::Read {
            path: path.to_string(),
            file: host.to_path_buf(),
            source,
        };
        let changed = |actual| ErofsError::SizeChanged {
            path: path.to_string(),
            file: host.to_path_buf(),
            expected: size,
            actual,
        };
        let mut f = File::open(host).map_err(read_err)?;
        let actual = f.metadata().map_err(read_err)?.len();
        if actual != size {
            return Err(changed(actual));
        }
        let head = size - tail.len() as u64;
        let mut done = 0;
        while done < head {
            let want = (head - done).min(FLUSH_AT as u64);
            let got = Read::take(&mut f, want)
                .read_to_end(&mut self.buf)
                .map_err(read_err)? as u64;
            done += got;
            if got < want {
                return Err(changed(done));
            }
            self.flush_if_full()?;
        }
        self.pad()?;
        f.read_exact(tail).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => changed(head),
            _ => read_err(e),
        })
    }
}

/// Writes `tree` as an EROFS image to `out`, starting at its current position, and returns
/// the image's size in bytes (a multiple of [`BLOCK_SIZE`]); every inode's mtime is `mtime`
/// (SOURCE_DATE_EPOCH). The same tree and mtime give the same bytes. Host files
/// ([`FileData::Path`]) are streamed, never held whole; the data area is written first, the
/// metadata (inodes, inline tails, superblock) last, which is why `out` must seek.
///
/// Everything the format cannot hold is refused before anything is written.
pub fn write_erofs(
    tree: &Tree,
    mtime: u64,
    out: &mut (impl Write + Seek),
) -> Result<u64, ErofsError> {
    let plan = Plan::new(tree)?;
    let base = out.stream_position().map_err(write_err)?;
    let mut meta = vec![0u8; (plan.meta_blocks * BLOCK_SIZE) as usize];
    plan.put_meta(&mut meta, mtime);

    out.seek(SeekFrom::Start(base + meta.len() as u64))
        .map_err(write_err)?;
    let mut data = DataOut {
        out,
        buf: Vec::with_capacity(2 * FLUSH_AT),
        flushed: 0,
        hash: Sha256::new(),
    };
    for ino in &plan.inodes {
        debug_assert!(
            ino.head_blocks() == 0
                || data.len() == (u64::from(ino.blkaddr) - plan.meta_blocks) * BLOCK_SIZE
        );
        let head = ino.head_len() as usize;
        let tail = &mut meta[plan.tail_range(ino)];
        let bytes: Cow<[u8]> = match ino.content {
            Content::Dir(d) => Cow::Owned(plan.dir_bytes(d)),
            Content::Symlink(bytes) => Cow::Borrowed(bytes),
            Content::File(FileData::Inline(bytes)) => Cow::Borrowed(bytes),
            Content::File(FileData::Path { path: host, size }) => {
                data.put_host_file(ino.path, host, *size, tail)?;
                continue;
            }
        };
        data.put_blocks(&bytes[..head])?;
        tail.copy_from_slice(&bytes[head..]);
    }
    data.flush()?;
    let mut hash = data.hash;

    // The UUID: from the whole image with a zero UUID, as an RFC 4122 version-4 UUID.
    hash.update(&meta);
    let digest = hash.finalize();
    let uuid = &mut meta[SUPER_OFFSET + 48..SUPER_OFFSET + 64];
    uuid.copy_from_slice(&digest[..16]);
    uuid[6] = (uuid[6] & 0x0f) | 0x40;
    uuid[8] = (uuid[8] & 0x3f) | 0x80;

    let len = plan.blocks * BLOCK_SIZE;
    out.seek(SeekFrom::Start(base)).map_err(write_err)?;
    out.write_all(&meta).map_err(write_err)?;
    out.seek(SeekFrom::Start(base + len)).map_err(write_err)?;
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::tree::Node;
    use std::collections::BTreeMap;
    use std::io::Cursor;
    use std::os::unix::fs::MetadataExt;
    use std::process::Command;

    const MTIME: u64 = 1_700_000_000;

    fn image(t: &Tree) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        let len = write_erofs(t, MTIME, &mut out).unwrap();
        let bytes = out.into_inner();
        assert_eq!(bytes.len() as u64, len);
        bytes
    }

    fn link(target: &str) -> Node {
        Node {
            mode: 0o600,
            uid: 9,
            gid: 9,
            kind: NodeKind::Hardlink(target.to_string()),
        }
    }

    fn owned(mut n: Node, uid: u32, gid: u32) -> Node {
        n.uid = uid;
        n.gid = gid;
        n
    }

    /// Names of 20 bytes, 128 of them: `.`, `..` and 127 fill the first block to 4091 bytes,
    /// so the second block is one dirent alone whose name ends an inline tail on a 32-byte
    /// boundary, where another inode may follow at once: the lookup must find the name's end
    /// from the directory's size, not from the bytes after it.
    fn edge_names() -> impl Iterator<Item = String> {
        (0..128).map(|i| format!("n{i:019}"))
    }

    /// Every case the format distinguishes; `host` is a file streamed from disk.
    fn sample_tree(host: &Path) -> Tree {
        let mut t = Tree::new();
        let big: Vec<u8> = (0..5 * 4096 + 777).map(|i| (i * 7 % 251) as u8).collect();
        let put = |t: &mut Tree, p: &str, n: Node| {
            t.insert(p, n).unwrap();
        };
        put(&mut t, "bin/busybox", Node::file(0o4755, big));
        put(&mut t, "bin/sh", Node::symlink("busybox"));
        put(&mut t, "etc/block", Node::file(0o644, vec![0xab; 4096]));
        put(&mut t, "etc/empty", Node::file(0o600, &b""[..]));
        put(&mut t, "etc/hostname", Node::file(0o644, &b"minke\n"[..]));
        put(
            &mut t,
            "etc/long-link",
            Node::symlink("../".repeat(60) + "t"),
        );
        put(
            &mut t,
            "etc/longest-link",
            Node::symlink("x/".repeat(2047) + "y"),
        );
        put(&mut t, "empty", Node::dir(0o755));
        put(&mut t, "tmp", Node::dir(0o1777));
        put(&mut t, "srv/shared", owned(Node::dir(0o2775), 0, 50));
        put(
            &mut t,
            "srv/big-ids",
            owned(Node::file(0o640, &b"x"[..]), 70000, 70000),
        );
        put(&mut t, "home/user", owned(Node::dir(0o700), 1000, 1000));
        let profile = Node::file(0o644, &b"PS1=$\n"[..]);
        put(&mut t, "home/user/.profile", owned(profile, 1000, 1000));
        put(
            &mut t,
            "m/file",
            owned(Node::file(0o640, &b"shared"[..]), 5, 6),
        );
        put(&mut t, "m/link", link("m/file"));
        put(&mut t, "a/early", link("/m/file"));
        put(&mut t, "+plus", Node::file(0o644, &b"+"[..]));
        put(&mut t, "-dash/x", Node::file(0o644, &b"-"[..]));
        put(&mut t, "d1/d2/d3/d4/leaf", Node::file(0o444, &b"leaf"[..]));
        put(
            &mut t,
            &format!("names/{}", "L".repeat(NAME_MAX)),
            Node::dir(0o755),
        );
        for i in 0..2000 {
            put(
                &mut t,
                &format!("many/entry-{i:04}"),
                Node::file(0o644, format!("{i}\n").into_bytes()),
            );
        }
        for name in edge_names() {
            put(
                &mut t,
                &format!("edge/{name}"),
                Node::file(0o644, name.clone().into_bytes()),
            );
        }
        let md = std::fs::metadata(host).unwrap();
        put(
            &mut t,
            "host/streamed",
            Node::host_file(host.to_path_buf(), &md),
        );
        t
    }

    fn host_file(dir: &Path) -> PathBuf {
        let p = dir.join("streamed");
        let data: Vec<u8> = (0..100_003u32).map(|i| (i % 253) as u8).collect();
        std::fs::write(&p, data).unwrap();
        p
    }

    /// What a reader should see for each path: (type and mode, uid, gid, nlink, content).
    type View = BTreeMap<String, (u32, u32, u32, u32, Vec<u8>)>;

    fn expected_view(t: &Tree) -> View {
        let mut links: HashMap<&str, u32> = HashMap::new();
        let mut subdirs: HashMap<&str, u32> = HashMap::new();
        for (p, n) in t.iter() {
            match &n.kind {
                NodeKind::Hardlink(tg) => *links.entry(tg.trim_matches('/')).or_default() += 1,
                NodeKind::Dir => {
                    *subdirs
                        .entry(p.rsplit_once('/').map_or("", |x| x.0))
                        .or_default() += 1
                }
                _ => {}
            }
        }
        let mut v: View = t
            .iter()
            .map(|(p, n)| {
                let (p, n) = match &n.kind {
                    NodeKind::Hardlink(tg) => (tg.trim_matches('/'), t.get(tg).unwrap()),
                    _ => (p.as_str(), n),
                };
                let (ty, nlink, data) = match &n.kind {
                    NodeKind::Dir => (0o040000, 2 + subdirs.get(p).copied().unwrap_or(0), vec![]),
                    NodeKind::Symlink(s) => (0o120000, 1, s.as_bytes().to_vec()),
                    NodeKind::File(d) => (
                        0o100000,
                        1 + links.get(p).copied().unwrap_or(0),
                        d.read().unwrap(),
                    ),
                    NodeKind::Hardlink(_) => unreachable!(),
                };
                (p.to_string(), (ty | n.mode, n.uid, n.gid, nlink, data))
            })
            .collect();
        // Keys are the entries' own paths, not their targets'.
        let keys: Vec<String> = t.iter().map(|(p, _)| p.clone()).collect();
        let vals: Vec<_> = t
            .iter()
            .map(|(p, n)| match &n.kind {
                NodeKind::Hardlink(tg) => v[tg.trim_matches('/')].clone(),
                _ => v[p.as_str()].clone(),
            })
            .collect();
        v = keys.into_iter().zip(vals).collect();
        v.insert(
            String::new(),
            (
                0o040755,
                0,
                0,
                2 + subdirs.get("").copied().unwrap_or(0),
                vec![],
            ),
        );
        v
    }

    // --- A reader that follows the kernel's rules, checking the writer's invariants ---------

    fn le(b: &[u8], at: usize, n: usize) -> u64 {
        b[at..at + n]
            .iter()
            .rev()
            .fold(0, |v, &x| v << 8 | u64::from(x))
    }

    #[derive(Debug, Clone)]
    struct Raw {
        nid: u64,
        mode: u32,
        nlink: u32,
        uid: u32,
        gid: u32,
        size: u64,
        inline: bool,
        blkaddr: u64,
        /// End of the inode record.
        end: usize,
    }

    fn inode(b: &[u8], nid: u64) -> Raw {
        let at = nid as usize * 32;
        let format = le(b, at, 2);
        assert!(
            format >> 4 == 0 && matches!(format >> 1, 0 | 2),
            "nid {nid}: format {format}"
        );
        assert_eq!(le(b, at + 2, 2), 0, "no xattrs");
        let mode = le(b, at + 4, 2) as u32;
        let blkaddr = le(b, at + 16, 4);
        let inline = format >> 1 == 2;
        if format & 1 == 1 {
            assert!(at % 4096 + 64 <= 4096, "nid {nid} crosses a block");
            assert_eq!(le(b, at + 32, 8), MTIME);
            let (uid, gid) = (le(b, at + 24, 4) as u32, le(b, at + 28, 4) as u32);
            let (size, nlink) = (le(b, at + 8, 8), le(b, at + 44, 4) as u32);
            assert!(uid > 0xffff || gid > 0xffff || nlink > 0xffff || size > 0xffff_ffff);
            Raw {
                nid,
                mode,
                nlink,
                uid,
                gid,
                size,
                inline,
                blkaddr,
                end: at + 64,
            }
        } else {
            let (uid, gid) = (le(b, at + 24, 2) as u32, le(b, at + 26, 2) as u32);
            let (size, nlink) = (le(b, at + 8, 4), le(b, at + 6, 2) as u32);
            Raw {
                nid,
                mode,
                nlink,
                uid,
                gid,
                size,
                inline,
                blkaddr,
                end: at + 32,
            }
        }
    }

    /// An inode's bytes, and each block as the kernel's page cache holds it (an inline tail
    /// is copied into a zeroed page).
    fn data(b: &[u8], r: &Raw) -> (Vec<u8>, Vec<Vec<u8>>) {
        let tail = if r.inline { r.size % 4096 } else { 0 };
        assert!(
            !r.inline || tail > 0,
            "nid {}: inline without a tail",
            r.nid
        );
        let head = (r.size - tail) as usize;
        let start = r.blkaddr as usize * 4096;
        let mut bytes = b[start..start + head].to_vec();
        let mut pages: Vec<Vec<u8>> = b[start..start + head.next_multiple_of(4096)]
            .chunks(4096)
            .map(<[u8]>::to_vec)
            .collect();
        if r.inline {
            let block_end = (r.end / 4096 + 1) * 4096;
            assert!(
                r.end + tail as usize <= block_end,
                "nid {}: tail crosses a block",
                r.nid
            );
            let mut page = b[r.end..r.end + tail as usize].to_vec();
            bytes.extend_from_slice(&page);
            page.resize(4096, 0);
            pages.push(page);
        }
        (bytes, pages)
    }

    /// A directory's entries, checked the way the kernel's lookup reads them.
    fn dirents(b: &[u8], r: &Raw) -> Vec<(Vec<u8>, u64, u8)> {
        let (bytes, pages) = data(b, r);
        let mut out: Vec<(Vec<u8>, u64, u8)> = Vec::new();
        for (k, block) in bytes.chunks(4096).enumerate() {
            let n = le(block, 8, 2) as usize / 12;
            assert!(n > 0);
            for i in 0..n {
                let off = le(block, i * 12 + 8, 2) as usize;
                let end = if i + 1 < n {
                    le(block, i * 12 + 20, 2) as usize
                } else {
                    let name_end = block[off..].iter().position(|&c| c == 0);
                    let end = off + name_end.unwrap_or(block.len() - off);
                    // The lookup reads the block's last name up to the block end or a NUL.
                    assert!(
                        end == 4096 || pages[k][end] == 0,
                        "nid {}: {:?} is not NUL-terminated",
                        r.nid,
                        &block[off..end]
                    );
                    end
                };
                let name = block[off..end].to_vec();
                if let Some(prev) = out.last() {
                    assert!(
                        prev.0 < name,
                        "nid {}: {:?} after {:?}",
                        r.nid,
                        name,
                        prev.0
                    );
                }
                out.push((name, le(block, i * 12, 8), block[i * 12 + 10]));
            }
        }
        out
    }

    /// Every path's view and nid, walking from the root.
    fn read_view(b: &[u8]) -> (View, BTreeMap<String, u64>) {
        assert_eq!(le(b, SUPER_OFFSET, 4), u64::from(MAGIC));
        assert_eq!(b[SUPER_OFFSET + 12], 12);
        assert_eq!(le(b, SUPER_OFFSET + 24, 8), MTIME);
        assert_eq!(le(b, SUPER_OFFSET + 36, 4) * 4096, b.len() as u64);
        let root = le(b, SUPER_OFFSET + 14, 2);
        let (mut view, mut nids) = (View::new(), BTreeMap::new());
        let mut todo = vec![(String::new(), root, root)];
        while let Some((path, nid, parent)) = todo.pop() {
            let r = inode(b, nid);
            let content = if r.mode & 0o170000 == 0o040000 {
                let entries = dirents(b, &r);
                assert!(
                    entries.iter().any(|e| e == &(b".".to_vec(), nid, FT_DIR)),
                    "{path}: ."
                );
                assert!(
                    entries
                        .iter()
                        .any(|e| e == &(b"..".to_vec(), parent, FT_DIR)),
                    "{path}: .."
                );
                for (name, child, ft) in entries {
                    if name != b"." && name != b".." {
                        let name = String::from_utf8(name).unwrap();
                        let cr = inode(b, child);
                        let want = match cr.mode & 0o170000 {
                            0o040000 => FT_DIR,
                            0o120000 => FT_SYMLINK,
                            _ => FT_REG,
                        };
                        assert_eq!(ft, want, "{path}/{name}");
                        let p = if path.is_empty() {
                            name
                        } else {
                            format!("{path}/{name}")
                        };
                        todo.push((p, child, nid));
                    }
                }
                vec![]
            } else {
                data(b, &r).0
            };
            nids.insert(path.clone(), nid);
            view.insert(path, (r.mode, r.uid, r.gid, r.nlink, content));
        }
        (view, nids)
    }

    #[test]
    fn same_tree_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let host = host_file(dir.path());
        let t = sample_tree(&host);
        let a = image(&t);
        assert_eq!(a, image(&t));
        assert_eq!(a.len() % 4096, 0);

        // Inserted in reverse order, and with the host file in memory: the same image.
        let mut rev = Tree::new();
        let all: Vec<_> = t.iter().collect();
        for (p, n) in all.iter().rev() {
            let mut n = (*n).clone();
            if let NodeKind::File(d @ FileData::Path { .. }) = &n.kind {
                n.kind = NodeKind::File(FileData::Inline(d.read().unwrap().into()));
            }
            rev.insert(p, n).unwrap();
        }
        assert_eq!(a, image(&rev));

        // Another mtime is another image (and another UUID).
        let mut out = Cursor::new(Vec::new());
        write_erofs(&t, MTIME + 1, &mut out).unwrap();
        let b = out.into_inner();
        assert_ne!(
            a[SUPER_OFFSET + 48..SUPER_OFFSET + 64],
            b[SUPER_OFFSET + 48..SUPER_OFFSET + 64]
        );

        // Written at an offset of a stream, the image is the same bytes there.
        let mut out = Cursor::new(vec![7u8; 512]);
        out.seek(SeekFrom::End(0)).unwrap();
        write_erofs(&t, MTIME, &mut out).unwrap();
        assert_eq!(out.position(), 512 + a.len() as u64);
        assert_eq!(&out.into_inner()[512..], &a[..]);
    }

    #[test]
    fn reader_sees_the_tree() {
        let dir = tempfile::tempdir().unwrap();
        let t = sample_tree(&host_file(dir.path()));
        let bytes = image(&t);
        let (view, nids) = read_view(&bytes);
        assert_eq!(view, expected_view(&t));
        assert_eq!(nids[""], 36);
        assert_eq!(nids["m/file"], nids["m/link"]);
        assert_eq!(nids["m/file"], nids["a/early"]);
        assert_eq!(
            le(&bytes, SUPER_OFFSET + 16, 8),
            t.len() as u64 + 1 - 2,
            "inos"
        );

        // The edge directory's lone last name ends a tail on a 32-byte boundary.
        let edge = inode(&bytes, nids["edge"]);
        assert!(edge.inline && edge.size > 4096 && (edge.end as u64 + edge.size % 4096) & 31 == 0);
        assert_eq!(dirents(&bytes, &edge).len(), 130);
        // The ids that need an extended inode got one.
        assert_eq!(inode(&bytes, nids["srv/big-ids"]).end % 32, 0);
        assert_eq!(le(&bytes, nids["srv/big-ids"] as usize * 32, 2) & 1, 1);
    }

    // --- Peer tools and the kernel as oracles -----------------------------------------------

    fn run(cmd: &mut Command) -> String {
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("{cmd:?}: {e}: install erofs-utils (cargo xtask setup)"));
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{cmd:?} failed: {text}");
        text
    }

    /// Compares a directory on disk with the tree: types, modes, owners, contents, symlink
    /// targets; with `linked`, link counts and shared inodes as well.
    fn check_on_disk(root: &Path, t: &Tree, who: &str, linked: bool) {
        let mut want = expected_view(t);
        if !linked {
            // erofs-utils 1.5 drops the setuid and setgid bits of files when it extracts (and
            // shows only 0o777 in dump.erofs), of mkfs.erofs's own images too: the kernel
            // mount and the reader above check those bits.
            for (mode, ..) in want.values_mut() {
                if *mode & 0o170000 == 0o100000 {
                    *mode &= !0o6000;
                }
            }
        }
        let mut seen = 0;
        let mut todo = vec![root.to_path_buf()];
        while let Some(d) = todo.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                seen += 1;
                if p.is_dir() && !p.is_symlink() {
                    todo.push(p);
                }
            }
        }
        assert_eq!(seen, t.len(), "{who}: entries found by readdir");
        for (path, (mode, uid, gid, nlink, data)) in &want {
            let p = root.join(path);
            let md = std::fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("{who}: {path}: {e}"));
            assert_eq!(
                (md.mode(), md.uid(), md.gid()),
                (*mode, *uid, *gid),
                "{who}: {path:?}"
            );
            match mode & 0o170000 {
                0o120000 => assert_eq!(
                    std::fs::read_link(&p)
                        .unwrap()
                        .as_os_str()
                        .as_encoded_bytes(),
                    &data[..],
                    "{who}: {path}"
                ),
                0o100000 => assert!(
                    std::fs::read(&p).unwrap() == *data,
                    "{who}: {path}: content"
                ),
                _ => {}
            }
            if linked {
                assert_eq!(md.nlink(), u64::from(*nlink), "{who}: {path:?} nlink");
                assert_eq!(md.mtime(), MTIME as i64, "{who}: {path:?} mtime");
            }
        }
        if linked {
            let ino = |p: &str| std::fs::metadata(root.join(p)).unwrap().ino();
            assert_eq!(ino("m/file"), ino("m/link"), "{who}");
            assert_eq!(ino("m/file"), ino("a/early"), "{who}");
            assert_ne!(ino("m/file"), ino("etc/hostname"), "{who}");
        }
    }

    #[test]
    fn fsck_and_dump_read_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let t = sample_tree(&host_file(dir.path()));
        let img = dir.path().join("a.erofs");
        std::fs::write(&img, image(&t)).unwrap();
        run(Command::new("fsck.erofs").arg(&img));
        let out = dir.path().join("out");
        run(Command::new("fsck.erofs")
            .arg(format!("--extract={}", out.display()))
            .arg(&img));
        check_on_disk(&out, &t, "fsck.erofs --extract", false);

        let sb = run(Command::new("dump.erofs").arg("-s").arg(&img));
        assert!(sb.contains("root nid:                          36"), "{sb}");
        assert!(
            sb.contains(&format!(
                "inode count:                       {}",
                t.len() - 1
            )),
            "{sb}"
        );
        let inode = |p: &str| {
            run(Command::new("dump.erofs")
                .arg(format!("--path=/{p}"))
                .arg(&img))
        };
        let nid = |text: &str| {
            text.split("NID: ")
                .nth(1)
                .and_then(|s| s.split_whitespace().next())
                .map(str::to_owned)
        };
        let file = inode("m/file");
        assert!(file.contains("Links: 3"), "{file}");
        assert_eq!(nid(&file), nid(&inode("m/link")));
        assert_eq!(nid(&file), nid(&inode("a/early")));
        let big = inode("srv/big-ids");
        assert!(
            big.contains("Inode size: 64") && big.contains("Uid: 70000   Gid: 70000"),
            "{big}"
        );

        // For comparison only: what mkfs.erofs makes of the extracted tree (without the
        // 255-byte name, which mkfs.erofs 1.5 fails on).
        std::fs::remove_dir_all(out.join("names")).unwrap();
        let theirs = dir.path().join("mkfs.erofs");
        run(Command::new("mkfs.erofs")
            .arg("--quiet")
            .arg(format!("-T{MTIME}"))
            .arg(&theirs)
            .arg(&out));
        eprintln!(
            "sample tree: {} bytes here, {} from mkfs.erofs of its extraction (hard links as copies)",
            std::fs::metadata(&img).unwrap().len(),
            std::fs::metadata(&theirs).unwrap().len()
        );
    }

    /// Unmounts when dropped, so a failed assertion leaves no mount behind.
    struct Mounted(PathBuf);

    impl Drop for Mounted {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }

    /// Needs root, loop devices and an EROFS kernel; fails (does not skip) without them.
    #[test]
    fn kernel_mounts_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let t = sample_tree(&host_file(dir.path()));
        let img = dir.path().join("a.erofs");
        std::fs::write(&img, image(&t)).unwrap();
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let _ = Command::new("modprobe").arg("erofs").status();
        let out = Command::new("mount")
            .args(["-t", "erofs", "-o", "loop,ro"])
            .arg(&img)
            .arg(&mnt)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount -t erofs -o loop,ro failed ({}); this test needs root, loop devices and a kernel with CONFIG_EROFS_FS",
            String::from_utf8_lossy(&out.stderr)
        );
        let _mounted = Mounted(mnt.clone());
        check_on_disk(&mnt, &t, "kernel", true);
        let root = std::fs::metadata(&mnt).unwrap();
        assert_eq!(
            (root.mode(), root.uid(), root.nlink() as u32),
            (0o040755, 0, expected_view(&t)[""].3)
        );
        assert_eq!(root.nlink(), 2 + 14);
        // Lookups of names sorting before `.` and of every name in a multi-block directory.
        for i in (0..2000).step_by(7) {
            assert!(mnt.join(format!("many/entry-{i:04}")).exists(), "{i}");
        }
        for name in edge_names() {
            assert_eq!(
                std::fs::read(mnt.join("edge").join(&name)).unwrap(),
                name.as_bytes()
            );
        }
        assert_eq!(std::fs::read(mnt.join("+plus")).unwrap(), b"+");
    }

    /// Random trees (seeded): whatever the mix of sizes and names, the reader sees the tree.
    #[test]
    fn random_trees_read_back() {
        let names = ["a", "b", "+", "-x", ".d", "bin", "zz", "é"];
        for seed in 0..40u64 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let mut t = Tree::new();
            let mut files: Vec<String> = Vec::new();
            for i in 0..rng.usize(1..120) {
                let depth = rng.usize(1..4);
                let mut parts: Vec<String> = (1..depth)
                    .map(|_| names[rng.usize(..names.len())].to_string())
                    .collect();
                parts.push(format!(
                    "{}{i}",
                    names[rng.usize(..names.len())].repeat(rng.usize(1..40))
                ));
                let path = parts.join("/");
                // Parents that are not directories would be an error; keep the tree valid.
                if (1..parts.len()).any(|k| {
                    t.get(&parts[..k].join("/"))
                        .is_some_and(|n| n.kind != NodeKind::Dir)
                }) {
                    continue;
                }
                let node = match rng.u8(..10) {
                    0 => Node::dir(0o700 | rng.u32(..0o10000)),
                    1 => Node::symlink("s".repeat(rng.usize(1..SYMLINK_MAX))),
                    2 if !files.is_empty() => link(&files[rng.usize(..files.len())]),
                    _ => {
                        let len = match rng.u8(..4) {
                            0 => rng.usize(..64),
                            1 => 4096 * rng.usize(..4),
                            _ => rng.usize(..20_000),
                        };
                        let data: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
                        files.push(path.clone());
                        owned(
                            Node::file(rng.u32(..0o10000), data),
                            rng.u32(..),
                            rng.u32(..3),
                        )
                    }
                };
                t.insert(&path, node).unwrap();
            }
            let bytes = image(&t);
            assert_eq!(read_view(&bytes).0, expected_view(&t), "seed {seed}");
        }
    }

    #[test]
    fn what_the_format_cannot_hold_is_refused_naming_the_path() {
        let err = |t: &Tree| write_erofs(t, MTIME, &mut Cursor::new(Vec::new())).unwrap_err();
        let one = |path: &str, node: Node| {
            let mut t = Tree::new();
            t.insert("ok", Node::file(0o644, &b"x"[..])).unwrap();
            t.insert(path, node).unwrap();
            err(&t)
        };
        let long = "n".repeat(NAME_MAX + 1);
        let e = one(&format!("d/{long}"), Node::dir(0o755));
        assert!(
            matches!(&e, ErofsError::NameTooLong { len: 256, .. }),
            "{e}"
        );
        assert!(e.to_string().contains(&format!("d/{long}")), "{e}");
        let e = one("bad\0name", Node::file(0o644, &b""[..]));
        assert!(matches!(e, ErofsError::BadName { .. }), "{e}");
        let e = one("l", Node::symlink("x".repeat(SYMLINK_MAX + 1)));
        assert!(
            matches!(&e, ErofsError::BadSymlink { path, reason: "too long", .. } if path == "l"),
            "{e}"
        );
        let e = one("l", Node::symlink(""));
        assert!(
            matches!(
                e,
                ErofsError::BadSymlink {
                    reason: "empty",
                    ..
                }
            ),
            "{e}"
        );
        let e = one("f", Node::file(0o100644, &b""[..]));
        assert!(
            matches!(e, ErofsError::BadMode { mode: 0o100644, .. }),
            "{e}"
        );
        let e = one("h", link("nowhere"));
        assert!(
            matches!(&e, ErofsError::MissingLinkTarget { path, .. } if path == "h"),
            "{e}"
        );
        let e = one("d/x", link("d"));
        assert!(
            matches!(&e, ErofsError::LinkTargetNotFile { path, .. } if path == "d/x"),
            "{e}"
        );
        let mut t = Tree::new();
        t.insert("f", Node::file(0o644, &b""[..])).unwrap();
        t.insert("h1", link("f")).unwrap();
        t.insert("h2", link("h1")).unwrap();
        assert!(matches!(err(&t), ErofsError::LinkTargetNotFile { path, .. } if path == "h2"));

        // A child below a file (a parent replaced after its children were added).
        let mut t = Tree::new();
        t.insert("p/c", Node::file(0o644, &b""[..])).unwrap();
        t.insert("p", Node::file(0o644, &b""[..])).unwrap();
        assert!(
            matches!(err(&t), ErofsError::BadParent { path, parent } if path == "p/c" && parent == "p")
        );

        // More than 2^32 blocks (nothing is read: the plan fails first).
        let mut t = Tree::new();
        let huge = FileData::Path {
            path: "/nonexistent".into(),
            size: u64::from(u32::MAX),
        };
        for i in 0..4100 {
            t.insert(
                &format!("big/{i:04}"),
                Node {
                    kind: NodeKind::File(huge.clone()),
                    ..Node::file(0o644, &b""[..])
                },
            )
            .unwrap();
        }
        let e = err(&t);
        assert!(
            matches!(&e, ErofsError::TooLarge { path } if path == "big/4095"),
            "{e}"
        );

        // Host files that went away or changed size since they were added.
        let dir = tempfile::tempdir().unwrap();
        let host = host_file(dir.path());
        let mut t = Tree::new();
        t.insert(
            "h",
            Node::host_file(host.clone(), &std::fs::metadata(&host).unwrap()),
        )
        .unwrap();
        std::fs::write(&host, b"shorter").unwrap();
        let e = err(&t);
        assert!(
            matches!(&e, ErofsError::SizeChanged { path, expected: 100_003, actual: 7, .. } if path == "h"),
            "{e}"
        );
        std::fs::remove_file(&host).unwrap();
        assert!(matches!(err(&t), ErofsError::Read { path, .. } if path == "h"));
    }
}
