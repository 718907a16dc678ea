//! File transfer conversations: put a file (atomically), put a tree (tar stream unpacked
//! beneath the destination with openat2), get a file, get a tree (tar stream).
//!
//! Guarantees: `PutFile` writes a temporary file in the destination directory, sets the
//! requested mode explicitly (the umask does not apply), fsyncs and renames it over the path,
//! so readers see the old file or the whole new one.
//!
//! `PutTree` parses the stream with the `tar` crate but writes itself: every directory under
//! the destination is opened with openat2(2) and `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//! RESOLVE_NO_MAGICLINKS`, one component at a time from a descriptor of the destination
//! (missing parents are created on the way, mode 0755), and every change is made with a `*at`
//! call relative to such a descriptor. No symlink under the destination is ever followed, so
//! even a guest process that swaps directories for symlinks during the upload cannot make it
//! write outside: the entry is refused instead. Files, symlinks and hard links are created
//! under a temporary name and renamed over the final name, so an existing symlink there is
//! replaced, not written through. Entries whose path is absolute or contains `..` are refused;
//! hard links must name an existing entry inside the destination; devices, fifos and sparse
//! files are refused. Symlinks are created as they are (their targets may point anywhere).
//! Modes and mtimes are kept, those of directory entries applied after the last entry;
//! ownership is not (files belong to the agent's user). The guest kernel needs openat2
//! (Linux 5.6+): without it `PutTree` fails. On a refusal the rest of the upload is still read
//! up to `End`, then `Error` is sent.
//!
//! Whatever modes the host gives, a `PutFile` or `PutTree` whose target is (as given or once
//! resolved) at or under the runtime config directory (`RUNTIME_CONFIG_DIR`) creates
//! directories 0700 and files 0600, that directory itself included when the put creates it.
//!
//! `GetFile` and `GetTree` open nothing before its type is known (first `O_PATH |
//! O_NOFOLLOW`, then only regular files and directories, as the very inode checked), never
//! send a regular file with other hard links from a directory a guest user may write to
//! (unless it is that user's own file), and `GetTree` refuses entries more than 256 levels
//! deep.

use std::collections::{BTreeMap, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use minke_protocol::wire::{read_frame, write_frame, FrameError};
use minke_protocol::{GuestMsg, HostMsg, RUNTIME_CONFIG_DIR};
use rustix::fs::{self as rfs, AtFlags, Mode, OFlags, ResolveFlags, Timespec, Timestamps};
use rustix::io::Errno;

use super::{check_path, send_reader, ControlError, DataOut};
use crate::os_msg;

fn refused(what: impl std::fmt::Display, e: &io::Error) -> ControlError {
    ControlError::Refused(format!("{what}: {}", os_msg(e)))
}

/// Reads the host's `Data`… `End` stream as bytes.
struct DataIn<'a, R: Read> {
    r: &'a mut R,
    buf: Vec<u8>,
    pos: usize,
    done: bool,
    /// Set when the stream broke (transport failure or a message other than Data/End).
    broken: Option<ControlError>,
}

impl<'a, R: Read> DataIn<'a, R> {
    fn new(r: &'a mut R) -> Self {
        DataIn {
            r,
            buf: Vec::new(),
            pos: 0,
            done: false,
            broken: None,
        }
    }

    /// Reads and drops whatever is left up to `End`.
    fn drain(&mut self) -> Result<(), ControlError> {
        let mut sink = [0u8; 8192];
        while !self.done {
            if self.read(&mut sink).is_err() {
                break;
            }
        }
        match self.broken.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl<R: Read> Read for DataIn<'_, R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.buf.len() {
            if self.done {
                return Ok(0);
            }
            if self.broken.is_some() {
                return Err(io::Error::other("upload stream broken"));
            }
            match read_frame::<_, HostMsg>(self.r) {
                Ok(HostMsg::Data(d)) => {
                    self.buf = d;
                    self.pos = 0;
                }
                Ok(HostMsg::End) => self.done = true,
                Ok(other) => {
                    let msg = format!(
                        "expected Data or End during an upload, got {}",
                        super::msg_name(&other)
                    );
                    self.broken = Some(ControlError::Refused(msg.clone()));
                    return Err(io::Error::new(io::ErrorKind::InvalidData, msg));
                }
                Err(e) => {
                    let ioe = io::Error::other(e.to_string());
                    self.broken = Some(ControlError::Frame(e));
                    return Err(ioe);
                }
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// A number not handed out before in this process, for temporary names.
fn unique() -> u64 {
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Most symlinks one path resolution follows, as the kernel's own limit.
const MAX_HOPS: u32 = 40;

/// Where a host-supplied guest path led: an `O_PATH` descriptor of the directory holding its
/// last component, and that component (`None` when the path names that directory itself:
/// `/`, or a followed symlink whose target ends in `..`).
struct Resolved {
    dir: OwnedFd,
    name: Option<OsString>,
    /// The directory as resolved (symlinks followed), for messages.
    shown: PathBuf,
}

impl Resolved {
    /// The resolved path of the result, for messages.
    fn full(&self) -> PathBuf {
        match &self.name {
            Some(n) => self.shown.join(n),
            None => self.shown.clone(),
        }
    }
}

/// Resolves the absolute `path` (already through [`check_path`]) one component at a time from
/// a descriptor of `/`, each component opened with `O_PATH | O_NOFOLLOW` beneath the previous
/// one. A symlink on the way is followed only when it belongs to root (uid 0) and sits in a
/// directory that belongs to root and that only root may write to: any other symlink could
/// have been planted (or hard-linked there) by a guest user to send a root-run transfer
/// elsewhere, so it is refused. Its target
/// is read from the link itself (the inode whose owner was checked) and walked by the same
/// rule; absolute targets restart from `/`, `..` in a target steps back to the directory the
/// walk came from; at most [`MAX_HOPS`] symlinks are followed.
///
/// Missing directories on the way are created when `create` is given: mode 0700 when the
/// directory created is (resolved) at or under the private directory `create` names, 0755
/// elsewhere. The last component is not opened unless `follow_last` is set, in which case a
/// root-owned symlink there is followed too (a missing last component is not an error: the
/// caller decides).
fn resolve(
    path: &Path,
    create: Option<&Path>,
    follow_last: bool,
) -> Result<Resolved, ControlError> {
    let whole = path.display();
    let opath = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let root = rfs::openat(rfs::CWD, "/", opath | OFlags::DIRECTORY, Mode::empty())
        .map_err(|e| refused("cannot open /", &e.into()))?;
    // The directories walked below `/`, with their names: `..` pops one.
    let mut stack: Walked = Vec::new();
    let mut todo: VecDeque<OsString> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            _ => None,
        })
        .collect();
    let mut hops = 0;
    let mut creations = 0;
    loop {
        let Some(comp) = todo.pop_front() else {
            return Ok(landed(stack, root, None));
        };
        if comp == "." {
            continue;
        }
        if comp == ".." {
            stack.pop();
            continue;
        }
        let last = todo.is_empty();
        if last && !follow_last {
            return Ok(landed(stack, root, Some(comp)));
        }
        let cur = stack.last().map_or(root.as_fd(), |(fd, _)| fd.as_fd());
        let here = || shown_of(&stack).join(&comp);
        let fd = match rfs::openat(cur, &*comp, opath, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::NOENT) if last => {
                return Ok(landed(stack, root, Some(comp)));
            }
            Err(Errno::NOENT) if create.is_some() && creations < 16 => {
                creations += 1;
                let mode = match create {
                    Some(private) if here().starts_with(private) => 0o700,
                    _ => 0o755,
                };
                match rfs::mkdirat(cur, &*comp, Mode::from_raw_mode(mode)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => {
                        return Err(refused(
                            format_args!("{whole}: cannot create {}", here().display()),
                            &e.into(),
                        ))
                    }
                }
                todo.push_front(comp);
                continue;
            }
            Err(e) => {
                return Err(refused(
                    format_args!("{whole}: cannot open {}", here().display()),
                    &e.into(),
                ))
            }
        };
        let st = rfs::fstat(&fd).map_err(|e| {
            refused(
                format_args!("{whole}: cannot stat {}", here().display()),
                &e.into(),
            )
        })?;
        let kind = rfs::FileType::from_raw_mode(st.st_mode);
        if last && kind != rfs::FileType::Symlink {
            return Ok(landed(stack, root, Some(comp)));
        }
        match kind {
            rfs::FileType::Directory => stack.push((fd, comp)),
            rfs::FileType::Symlink => {
                if st.st_uid != 0 {
                    return Err(ControlError::Refused(format!(
                        "{whole}: {} is a symlink owned by uid {}, not by root; transfers \
                         follow only root's symlinks, so that no guest user can redirect them: \
                         give the path it points to instead",
                        here().display(),
                        st.st_uid
                    )));
                }
                // Root's link, but put here by someone else? Without protected hardlinks any
                // user can hard-link a root-owned symlink into a directory of theirs.
                let dir_st = rfs::fstat(cur).map_err(|e| {
                    refused(
                        format_args!("{whole}: cannot stat {}", shown_of(&stack).display()),
                        &e.into(),
                    )
                })?;
                if dir_st.st_uid != 0 || dir_st.st_mode & 0o022 != 0 {
                    return Err(ControlError::Refused(format!(
                        "{whole}: {} is a symlink in {}, a directory {}; transfers follow only                          symlinks that only root could have put in place: give the path it                          points to instead",
                        here().display(),
                        shown_of(&stack).display(),
                        if dir_st.st_uid != 0 {
                            format!("owned by uid {}", dir_st.st_uid)
                        } else {
                            "that others than root may write to".to_string()
                        }
                    )));
                }
                hops += 1;
                if hops > MAX_HOPS {
                    return Err(refused(
                        format_args!(
                            "{whole}: more than {MAX_HOPS} symlinks to follow at {}",
                            here().display()
                        ),
                        &Errno::LOOP.into(),
                    ));
                }
                // The link itself, not a name that could be swapped since the owner check.
                let target = rfs::readlinkat(&fd, "", Vec::new()).map_err(|e| {
                    refused(
                        format_args!("{whole}: cannot read the symlink {}", here().display()),
                        &e.into(),
                    )
                })?;
                let target = PathBuf::from(OsString::from_vec(target.into_bytes()));
                if target.as_os_str().is_empty() {
                    return Err(refused(
                        format_args!("{whole}: {} is an empty symlink", here().display()),
                        &Errno::NOENT.into(),
                    ));
                }
                if target.is_absolute() {
                    stack.clear();
                }
                for c in target.components().rev() {
                    match c {
                        Component::Normal(n) => todo.push_front(n.to_os_string()),
                        Component::ParentDir => todo.push_front("..".into()),
                        Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
                    }
                }
            }
            _ => {
                return Err(refused(
                    format_args!("{whole}: {} is not a directory", here().display()),
                    &Errno::NOTDIR.into(),
                ))
            }
        }
    }
}

/// The directories walked below `/` by [`resolve`], with their names.
type Walked = Vec<(OwnedFd, OsString)>;

fn shown_of(stack: &Walked) -> PathBuf {
    let mut p = PathBuf::from("/");
    p.extend(stack.iter().map(|(_, n)| n));
    p
}

/// The end of a walk: the innermost directory and the name in it.
fn landed(mut stack: Walked, root: OwnedFd, name: Option<OsString>) -> Resolved {
    let shown = shown_of(&stack);
    let dir = match stack.pop() {
        Some((fd, _)) => fd,
        None => root,
    };
    Resolved { dir, name, shown }
}

/// A non-`O_PATH` descriptor of the directory `name` in `at` (or of `at` itself), opened
/// without following a symlink there.
fn open_dir_in(at: BorrowedFd<'_>, name: Option<&OsStr>) -> Result<OwnedFd, Errno> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    match name {
        Some(n) => rfs::openat(at, n, flags | OFlags::NOFOLLOW, Mode::empty()),
        None => rfs::openat(at, ".", flags, Mode::empty()),
    }
}

/// `PutFile`: receives the file and puts it in place atomically.
pub fn put_file<C: Read + Write>(conn: &mut C, path: &str, mode: u32) -> Result<(), ControlError> {
    put_file_with(conn, path, mode, Path::new(RUNTIME_CONFIG_DIR))
}

/// Whether `target`, as requested (`asked`, already through [`check_path`]) or as resolved
/// (`resolved`), is the private directory `private` or lies under it.
fn is_private(asked: &Path, resolved: &Path, private: &Path) -> bool {
    asked.starts_with(private) || resolved.starts_with(private)
}

/// [`put_file`], with `private` the directory kept private: a file put at or under it is made
/// 0600, and the directories created for it 0700, whatever mode the host asked for.
fn put_file_with<C: Read + Write>(
    conn: &mut C,
    path: &str,
    mode: u32,
    private: &Path,
) -> Result<(), ControlError> {
    let checked = check_path(path);
    let mut input = DataIn::new(conn);
    let result = checked.and_then(|p| write_atomically(&p, mode, private, &mut input));
    // A broken stream wins: the host can no longer be answered in order.
    input.drain()?;
    result?;
    write_frame(conn, &GuestMsg::Ok)?;
    Ok(())
}

/// Writes the upload under an exclusive temporary name in the resolved parent directory, then
/// renames it over the last component (a symlink there is replaced, never written through).
fn write_atomically<R: Read>(
    path: &Path,
    mode: u32,
    private: &Path,
    input: &mut DataIn<'_, R>,
) -> Result<(), ControlError> {
    let not_a_file = || ControlError::Refused(format!("`{}` is not a file path", path.display()));
    if path.file_name().is_none() {
        return Err(not_a_file());
    }
    let r = resolve(path, Some(private), false)?;
    let Some(name) = r.name.as_deref() else {
        return Err(not_a_file());
    };
    let target = r.full();
    let mode = if is_private(path, &target, private) {
        0o600
    } else {
        mode & 0o7777
    };
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let (tmp, fd) = create_temp(|t| rfs::openat(&r.dir, t, flags, Mode::from_raw_mode(0o600)))
        .map_err(|e| {
            refused(
                format_args!("cannot create a file in {}", r.shown.display()),
                &e.into(),
            )
        })?;
    let mut file = File::from(fd);
    let res = (|| -> Result<(), ControlError> {
        io::copy(input, &mut file)
            .map_err(|e| refused(format_args!("cannot write {}", target.display()), &e))?;
        rfs::fchmod(&file, Mode::from_raw_mode(mode))
            .map_err(|e| refused(format_args!("cannot chmod {}", target.display()), &e.into()))?;
        file.sync_all()
            .map_err(|e| refused(format_args!("cannot fsync {}", target.display()), &e))?;
        rfs::renameat(&r.dir, &*tmp, &r.dir, name).map_err(|e| {
            refused(
                format_args!("cannot rename into {}", target.display()),
                &e.into(),
            )
        })?;
        if let Ok(dir) = open_dir_in(r.dir.as_fd(), None) {
            let _ = rfs::fsync(&dir);
        }
        Ok(())
    })();
    if res.is_err() {
        let _ = rfs::unlinkat(&r.dir, &*tmp, AtFlags::empty());
    }
    res
}

/// `PutTree`: unpacks the tar stream under `dest` (created if missing).
pub fn put_tree<C: Read + Write>(conn: &mut C, dest: &str) -> Result<(), ControlError> {
    put_tree_with(conn, dest, Path::new(RUNTIME_CONFIG_DIR))
}

/// [`put_tree`], with `private` the directory kept private: when `dest` is it or lies under it
/// (as given or once resolved), `dest` is made 0700 and owned by the agent, and the
/// directories created for it or unpacked in it 0700 and files 0600, whatever the tar headers
/// say.
fn put_tree_with<C: Read + Write>(
    conn: &mut C,
    dest: &str,
    private: &Path,
) -> Result<(), ControlError> {
    let checked = check_path(dest);
    let mut input = DataIn::new(conn);
    let result = checked.and_then(|d| unpack(&d, private, &mut input));
    // A broken stream wins: the host can no longer be answered in order.
    input.drain()?;
    result?;
    write_frame(conn, &GuestMsg::Ok)?;
    Ok(())
}

fn unpack<R: Read>(
    dest: &Path,
    private: &Path,
    input: &mut DataIn<'_, R>,
) -> Result<(), ControlError> {
    let mut unpacker = Unpacker::open(dest, private)?;
    let mut archive = tar::Archive::new(&mut *input);
    let tar_err = |e: io::Error| ControlError::Refused(format!("bad tar stream: {e}"));
    let entries = archive.entries().map_err(tar_err)?;
    for entry in entries {
        let mut entry = entry.map_err(tar_err)?;
        unpacker.entry(&mut entry)?;
    }
    unpacker.finish_dirs()
}

/// How every path under the destination is resolved: beneath the starting directory, and
/// without following any symlink (magic links included), not even as the last component.
const BENEATH: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS);

/// Opens the directory `path` beneath `at` with [`BENEATH`] resolution. A symlink as the last
/// component fails with `ELOOP` too (no `O_NOFOLLOW`: with it the kernel answers `ENOTDIR`).
fn open_dir_beneath<P: rustix::path::Arg + Copy>(
    at: BorrowedFd<'_>,
    path: P,
) -> Result<OwnedFd, Errno> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let mut tries = 0;
    loop {
        // EAGAIN: a concurrent rename or mount raced the lookup; it is safe to retry.
        match rfs::openat2(at, path, flags, Mode::empty(), BENEATH) {
            Err(Errno::AGAIN) if tries < 8 => tries += 1,
            r => return r,
        }
    }
}

/// Runs `create` with fresh temporary names until one does not exist yet; returns the name
/// and what `create` returned.
fn create_temp<T>(mut create: impl FnMut(&str) -> Result<T, Errno>) -> Result<(String, T), Errno> {
    let mut tries = 0;
    loop {
        let name = format!(".minke-{}-{}", std::process::id(), unique());
        match create(&name) {
            Ok(v) => return Ok((name, v)),
            Err(Errno::EXIST) if tries < 16 => tries += 1,
            Err(e) => return Err(e),
        }
    }
}

fn refuse(raw: &Path, why: impl std::fmt::Display) -> ControlError {
    ControlError::Refused(format!("refusing tar entry `{}`: {why}", raw.display()))
}

fn refuse_os(raw: &Path, what: impl std::fmt::Display, e: Errno) -> ControlError {
    refused(
        format_args!("refusing tar entry `{}`: {what}", raw.display()),
        &io::Error::from(e),
    )
}

/// What a tar entry holds, as far as unpacking goes.
enum Kind {
    File,
    Dir,
    Symlink,
    HardLink,
    /// Metadata headers the `tar` crate hands out as entries (pax global headers, and pax or
    /// GNU long-name headers of unrecognised formats): skipped, as tar's own unpacking does.
    Skip,
    Unsupported(String),
}

fn kind_of<R: Read>(entry: &tar::Entry<'_, R>) -> Kind {
    use tar::EntryType as T;
    let header = entry.header();
    match header.entry_type() {
        // Old (pre-ustar) archives mark directories with a trailing slash only.
        T::Regular if header.as_ustar().is_none() && entry.path_bytes().ends_with(b"/") => {
            Kind::Dir
        }
        T::Regular | T::Continuous => Kind::File,
        T::Directory => Kind::Dir,
        T::Symlink => Kind::Symlink,
        T::Link => Kind::HardLink,
        T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink => Kind::Skip,
        T::Char => Kind::Unsupported("character device".into()),
        T::Block => Kind::Unsupported("block device".into()),
        T::Fifo => Kind::Unsupported("fifo".into()),
        T::GNUSparse => Kind::Unsupported("GNU sparse file".into()),
        other => Kind::Unsupported(format!(
            "type `{}`",
            char::from(other.as_byte()).escape_default()
        )),
    }
}

/// Unpacks entries under one destination; every path is resolved with openat2(2) and
/// [`BENEATH`] from a descriptor of the destination, and every change is made with `*at`
/// calls relative to a directory descriptor so resolved, never through a path again.
struct Unpacker<'d> {
    dest: &'d Path,
    root: OwnedFd,
    /// Unpacking into the private directory: modes clamped to 0700 (directories) and 0600.
    private: bool,
    /// Directory entries (relative path → raw name, mode, mtime), applied at the end: their
    /// mode could forbid writing the children, and writing the children changes the mtime.
    dirs: BTreeMap<PathBuf, (PathBuf, u32, i64)>,
}

impl<'d> Unpacker<'d> {
    /// Reaches the destination with [`resolve`] (creating it and missing parents), then
    /// opens it with openat2; the unpacking is private when the destination is at or under
    /// the directory `private`.
    fn open(dest: &'d Path, private_dir: &Path) -> Result<Self, ControlError> {
        let r = resolve(dest, Some(private_dir), true)?;
        let shown = r.full();
        let private = is_private(dest, &shown, private_dir);
        let fd = match r.name.as_deref() {
            Some(name) => {
                let mode = if private { 0o700 } else { 0o755 };
                match rfs::mkdirat(&r.dir, name, Mode::from_raw_mode(mode)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => {
                        return Err(refused(
                            format_args!("cannot create {}", shown.display()),
                            &e.into(),
                        ))
                    }
                }
                // Also checks that the kernel has openat2 before anything is written.
                open_dir_beneath(r.dir.as_fd(), name)
            }
            None => open_dir_beneath(r.dir.as_fd(), "."),
        };
        let root = fd.map_err(|e| match e {
            Errno::NOSYS => ControlError::Refused(
                "cannot unpack a tree: the guest kernel lacks openat2(2), which safe unpacking \
                 needs (Linux 5.6 or newer)"
                    .into(),
            ),
            Errno::LOOP => ControlError::Refused(format!(
                "cannot unpack into {}: it was replaced by a symlink",
                shown.display()
            )),
            e => refused(format_args!("cannot open {}", shown.display()), &e.into()),
        })?;
        if private {
            let (uid, gid) = (rustix::process::geteuid(), rustix::process::getegid());
            rfs::fchown(&root, Some(uid), Some(gid))
                .and_then(|()| rfs::fchmod(&root, Mode::from_raw_mode(0o700)))
                .map_err(|e| {
                    refused(
                        format_args!("cannot make {} private", shown.display()),
                        &e.into(),
                    )
                })?;
        }
        Ok(Unpacker {
            dest,
            root,
            private,
            dirs: BTreeMap::new(),
        })
    }

    /// The refusal for an openat2 failure while resolving `rel` for entry `raw`.
    fn resolve_err(&self, raw: &Path, rel: &Path, e: Errno) -> ControlError {
        match e {
            Errno::LOOP | Errno::XDEV => refuse(
                raw,
                "a path component is a symlink or leaves the destination",
            ),
            Errno::NOTDIR => refuse(
                raw,
                format_args!("{} is not a directory", self.dest.join(rel).display()),
            ),
            e => refuse_os(
                raw,
                format_args!("cannot open {}", self.dest.join(rel).display()),
                e,
            ),
        }
    }

    /// Opens the directory `rel` one component at a time, each beneath the previous one,
    /// creating missing components (mode 0755) when `create` is set.
    fn dir(&self, raw: &Path, rel: &Path, create: bool) -> Result<OwnedFd, ControlError> {
        let mut cur: Option<OwnedFd> = None;
        let mut sofar = PathBuf::new();
        for comp in rel.iter() {
            sofar.push(comp);
            let at = cur.as_ref().map_or(self.root.as_fd(), |f| f.as_fd());
            let fd = match open_dir_beneath(at, comp) {
                Err(Errno::NOENT) if create => {
                    let mode = if self.private { 0o700 } else { 0o755 };
                    match rfs::mkdirat(at, comp, Mode::from_raw_mode(mode)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => {
                            return Err(refuse_os(
                                raw,
                                format_args!("cannot create {}", self.dest.join(&sofar).display()),
                                e,
                            ))
                        }
                    }
                    open_dir_beneath(at, comp)
                }
                r => r,
            }
            .map_err(|e| self.resolve_err(raw, &sofar, e))?;
            cur = Some(fd);
        }
        match cur {
            Some(fd) => Ok(fd),
            None => open_dir_beneath(self.root.as_fd(), ".")
                .map_err(|e| self.resolve_err(raw, Path::new("."), e)),
        }
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), ControlError> {
        let kind = kind_of(entry);
        if let Kind::Skip = kind {
            return Ok(());
        }
        let tar_err = |e: io::Error| ControlError::Refused(format!("bad tar stream: {e}"));
        let raw = entry.path().map_err(tar_err)?.into_owned();
        let rel = safe_relative(&raw).ok_or_else(|| {
            refuse(
                &raw,
                format_args!("its path escapes {}", self.dest.display()),
            )
        })?;
        let (Some(name), Some(parent)) = (rel.file_name(), rel.parent()) else {
            // `.` (the destination itself) is left as it is.
            return Ok(());
        };
        let header = entry.header();
        let mut mode = header
            .mode()
            .map_err(|e| refuse(&raw, format_args!("bad mode field: {e}")))?
            & 0o7777;
        if self.private {
            mode = if matches!(kind, Kind::Dir) {
                0o700
            } else {
                0o600
            };
        }
        // Like tar: a zero mtime becomes 1, which some tools handle better.
        let mtime = header
            .mtime()
            .map_err(|e| refuse(&raw, format_args!("bad mtime field: {e}")))?
            .clamp(1, i64::MAX as u64) as i64;
        let times = Timestamps {
            last_access: Timespec {
                tv_sec: mtime,
                tv_nsec: 0,
            },
            last_modification: Timespec {
                tv_sec: mtime,
                tv_nsec: 0,
            },
        };
        let target = self.dest.join(&rel);
        match kind {
            Kind::Skip => Ok(()),
            Kind::Unsupported(what) => Err(refuse(
                &raw,
                format_args!("{what} entries are not supported"),
            )),
            Kind::Dir => {
                let pfd = self.dir(&raw, parent, true)?;
                match rfs::mkdirat(&pfd, name, Mode::from_raw_mode(0o700)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => {
                        return Err(refuse_os(
                            &raw,
                            format_args!("cannot create {}", target.display()),
                            e,
                        ))
                    }
                }
                match open_dir_beneath(pfd.as_fd(), name) {
                    Ok(_) => {}
                    Err(Errno::LOOP) => {
                        return Err(refuse(
                            &raw,
                            format_args!("{} is a symlink", target.display()),
                        ))
                    }
                    Err(Errno::NOTDIR) => {
                        return Err(refuse(
                            &raw,
                            format_args!("{} exists and is not a directory", target.display()),
                        ))
                    }
                    Err(e) => return Err(self.resolve_err(&raw, &rel, e)),
                }
                self.dirs.insert(rel.clone(), (raw, mode, mtime));
                Ok(())
            }
            Kind::File => {
                let pfd = self.dir(&raw, parent, true)?;
                let flags = OFlags::WRONLY
                    | OFlags::CREATE
                    | OFlags::EXCL
                    | OFlags::NOFOLLOW
                    | OFlags::CLOEXEC;
                let (tmp, fd) =
                    create_temp(|t| rfs::openat(&pfd, t, flags, Mode::from_raw_mode(0o600)))
                        .map_err(|e| {
                            refuse_os(
                                &raw,
                                format_args!("cannot create a file in {}", target.display()),
                                e,
                            )
                        })?;
                let mut file = File::from(fd);
                let res = (|| {
                    let size = entry.size();
                    let copied = io::copy(entry, &mut file).map_err(|e| {
                        refused(
                            format_args!(
                                "refusing tar entry `{}`: cannot write {}",
                                raw.display(),
                                target.display()
                            ),
                            &e,
                        )
                    })?;
                    if copied != size {
                        return Err(refuse(&raw, "the tar stream ends inside the entry"));
                    }
                    rfs::fchmod(&file, Mode::from_raw_mode(mode)).map_err(|e| {
                        refuse_os(&raw, format_args!("cannot chmod {}", target.display()), e)
                    })?;
                    rfs::futimens(&file, &times).map_err(|e| {
                        refuse_os(
                            &raw,
                            format_args!("cannot set the mtime of {}", target.display()),
                            e,
                        )
                    })?;
                    self.rename_into(&raw, &pfd, &tmp, name, &target)
                })();
                if res.is_err() {
                    let _ = rfs::unlinkat(&pfd, &*tmp, AtFlags::empty());
                }
                res
            }
            Kind::Symlink => {
                let link = match entry.link_name().map_err(tar_err)? {
                    Some(l) if !l.as_os_str().is_empty() => l.into_owned(),
                    _ => return Err(refuse(&raw, "the symlink has no target")),
                };
                let pfd = self.dir(&raw, parent, true)?;
                let (tmp, ()) = create_temp(|t| rfs::symlinkat(&link, &pfd, t)).map_err(|e| {
                    refuse_os(
                        &raw,
                        format_args!("cannot create a symlink in {}", target.display()),
                        e,
                    )
                })?;
                let res = rfs::utimensat(&pfd, &*tmp, &times, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| {
                        refuse_os(
                            &raw,
                            format_args!("cannot set the mtime of {}", target.display()),
                            e,
                        )
                    })
                    .and_then(|()| self.rename_into(&raw, &pfd, &tmp, name, &target));
                if res.is_err() {
                    let _ = rfs::unlinkat(&pfd, &*tmp, AtFlags::empty());
                }
                res
            }
            Kind::HardLink => {
                let link = match entry.link_name().map_err(tar_err)? {
                    Some(l) => l.into_owned(),
                    None => return Err(refuse(&raw, "the hard link has no target")),
                };
                let src = safe_relative(&link)
                    .filter(|s| !s.as_os_str().is_empty())
                    .ok_or_else(|| {
                        refuse(
                            &raw,
                            format_args!(
                                "its link target `{}` is not inside {}",
                                link.display(),
                                self.dest.display()
                            ),
                        )
                    })?;
                let (Some(src_name), Some(src_parent)) = (src.file_name(), src.parent()) else {
                    return Err(refuse(&raw, "bad hard link target"));
                };
                let src_fd = self.dir(&raw, src_parent, false)?;
                let pfd = self.dir(&raw, parent, true)?;
                let (tmp, ()) =
                    create_temp(|t| rfs::linkat(&src_fd, src_name, &pfd, t, AtFlags::empty()))
                        .map_err(|e| {
                            refuse_os(
                                &raw,
                                format_args!("cannot link to {}", self.dest.join(&src).display()),
                                e,
                            )
                        })?;
                let res = self.rename_into(&raw, &pfd, &tmp, name, &target);
                if res.is_err() {
                    let _ = rfs::unlinkat(&pfd, &*tmp, AtFlags::empty());
                }
                res
            }
        }
    }

    /// Renames `tmp` over `name` in `pfd` (an existing symlink there is replaced, not followed).
    fn rename_into(
        &self,
        raw: &Path,
        pfd: &OwnedFd,
        tmp: &str,
        name: &OsStr,
        target: &Path,
    ) -> Result<(), ControlError> {
        rfs::renameat(pfd, tmp, pfd, name).map_err(|e| {
            refuse_os(
                raw,
                format_args!("cannot rename into {}", target.display()),
                e,
            )
        })
    }

    /// Applies the directory entries' modes and mtimes, children before their parents.
    fn finish_dirs(self) -> Result<(), ControlError> {
        for (rel, (raw, mode, mtime)) in self.dirs.iter().rev() {
            let target = self.dest.join(rel);
            let fd = open_dir_beneath(self.root.as_fd(), rel.as_path()).map_err(|e| match e {
                Errno::LOOP | Errno::XDEV | Errno::NOTDIR => self.resolve_err(raw, rel, e),
                e => refuse_os(raw, format_args!("cannot open {}", target.display()), e),
            })?;
            rfs::fchmod(&fd, Mode::from_raw_mode(*mode)).map_err(|e| {
                refuse_os(raw, format_args!("cannot chmod {}", target.display()), e)
            })?;
            let t = Timespec {
                tv_sec: *mtime,
                tv_nsec: 0,
            };
            let times = Timestamps {
                last_access: t,
                last_modification: t,
            };
            rfs::futimens(&fd, &times).map_err(|e| {
                refuse_os(
                    raw,
                    format_args!("cannot set the mtime of {}", target.display()),
                    e,
                )
            })?;
        }
        Ok(())
    }
}

/// `raw` as a relative path of normal components, or `None` when it is absolute or has `..`.
pub fn safe_relative(raw: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) | Component::ParentDir => return None,
        }
    }
    Some(out)
}

/// Why the regular file with status `st`, found in the directory with status `dir`, is not
/// sent (`None`: it may be): it has more than one hard link and sits in a directory that
/// someone other than root may write to, where a guest user could have hard-linked a file they
/// cannot read (the kernel lets anyone do so without `fs.protected_hardlinks`) for a transfer
/// run as root to send. A directory's owner hard-linking their own files (in a directory no one
/// else may write to) is harmless, and allowed.
fn foreign_link(st: &rfs::Stat, dir: &rfs::Stat) -> Option<String> {
    if st.st_nlink <= 1 {
        return None;
    }
    let exclusive = dir.st_mode & 0o022 == 0;
    if exclusive && (dir.st_uid == 0 || dir.st_uid == st.st_uid) {
        return None;
    }
    let dir_is = if exclusive {
        format!("owned by uid {}", dir.st_uid)
    } else {
        "that group or others may write to".to_string()
    };
    Some(format!(
        "it is a file of uid {} with {} hard links, in a directory {dir_is}: any guest user \
         could have linked a file they may not read there, so transfers send such files only \
         from directories that only root (or the file's owner) may write to",
        st.st_uid, st.st_nlink
    ))
}

/// Opens for reading the very inode the `O_PATH` descriptor `fd` (whose status is `st`)
/// refers to, through its `/proc/self/fd` entry, and checks it is that inode: no name is
/// looked up again, so a name swapped meanwhile for a device, fifo or socket is never opened.
fn reopen(fd: &OwnedFd, st: &rfs::Stat) -> io::Result<File> {
    let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
    let proc_path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let file = match rfs::open(&proc_path, flags, Mode::empty()) {
        Ok(f) => f,
        // The descriptor is ours: only a missing /proc makes its entry missing.
        Err(Errno::NOENT) => {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("cannot reopen it through {proc_path}: is /proc mounted?"),
            ))
        }
        Err(e) => return Err(e.into()),
    };
    let now = rfs::fstat(&file)?;
    if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino) {
        return Err(io::Error::other(format!(
            "{proc_path} reopened another file than the one checked"
        )));
    }
    Ok(File::from(file))
}

/// `GetFile`: sends the file as `Data` chunks then `End`. The path is reached with
/// [`resolve`]; the last component is first opened with `O_PATH | O_NOFOLLOW` (which opens
/// nothing: a root-owned symlink there was followed by the walk already), checked to be a
/// regular file that is not a [`foreign_link`], and only then that same inode opened for
/// reading, so a device, fifo or socket swapped in under the name is never opened.
pub fn get_file<C: Write>(conn: &mut C, path: &str) -> Result<(), ControlError> {
    let p = check_path(path)?;
    let r = resolve(&p, None, true)?;
    let not_regular = || ControlError::Refused(format!("{path} is not a regular file"));
    let Some(name) = r.name.as_deref() else {
        return Err(not_regular());
    };
    let opath = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let pfd = rfs::openat(&r.dir, name, opath, Mode::empty())
        .map_err(|e| refused(format_args!("cannot open {path}"), &e.into()))?;
    let st =
        rfs::fstat(&pfd).map_err(|e| refused(format_args!("cannot stat {path}"), &e.into()))?;
    match rfs::FileType::from_raw_mode(st.st_mode) {
        rfs::FileType::RegularFile => {}
        rfs::FileType::Symlink => {
            return Err(ControlError::Refused(format!(
                "cannot open {path}: {} was replaced by a symlink while being opened",
                r.full().display()
            )))
        }
        _ => return Err(not_regular()),
    }
    let dir_st = rfs::fstat(&r.dir)
        .map_err(|e| refused(format_args!("cannot stat {}", r.shown.display()), &e.into()))?;
    if let Some(why) = foreign_link(&st, &dir_st) {
        return Err(ControlError::Refused(format!(
            "refusing {path} ({}): {why}",
            r.full().display()
        )));
    }
    let file = reopen(&pfd, &st).map_err(|e| refused(format_args!("cannot open {path}"), &e))?;
    send_reader(conn, file)?;
    write_frame(conn, &GuestMsg::End)?;
    Ok(())
}

/// Deepest level of the entries of a `GetTree` archive (1: the entries of the directory
/// itself); deeper entries are refused. The walk keeps one directory open per level.
const MAX_DEPTH: usize = 256;

/// `GetTree`: sends the directory as a tar stream (relative entries in sorted order, symlinks
/// kept as symlinks, modes and mtimes kept) in `Data` chunks, then `End`. The directory is
/// reached with [`resolve`]; everything under it is walked by descriptor (each entry first
/// opened with `O_PATH | O_NOFOLLOW` relative to its directory's descriptor, which opens
/// nothing, and described by `fstat` on that), so entries swapped for symlinks meanwhile are
/// sent as the symlinks they have become, never followed. Only directories and regular files
/// are then opened, as the very inode checked; devices and fifos are sent as headers, never
/// opened; sockets and entries removed meanwhile are left out. Regular files that are
/// [`foreign_link`]s, and entries more than [`MAX_DEPTH`] levels deep, are refused: the
/// archive ends there with an error naming the entry.
pub fn get_tree<C: Write>(conn: &mut C, path: &str) -> Result<(), ControlError> {
    let p = check_path(path)?;
    let r = resolve(&p, None, true)?;
    let dir = open_dir_in(r.dir.as_fd(), r.name.as_deref()).map_err(|e| match e {
        Errno::NOTDIR => ControlError::Refused(format!("{path} is not a directory")),
        Errno::LOOP => ControlError::Refused(format!(
            "cannot open {path}: {} was replaced by a symlink while being opened",
            r.full().display()
        )),
        e => refused(format_args!("cannot open {path}"), &e.into()),
    })?;
    let mut out = DataOut::new(conn);
    let res = (|| -> io::Result<()> {
        let mut builder = tar::Builder::new(&mut out);
        append_tree(&mut builder, dir)?;
        builder.finish()?;
        Ok(())
    })();
    let res = res.and_then(|()| out.finish());
    match res {
        Ok(()) => {
            write_frame(conn, &GuestMsg::End)?;
            Ok(())
        }
        Err(e) => match e.get_ref().and_then(|i| i.downcast_ref::<FrameError>()) {
            Some(_) => Err(ControlError::Frame(FrameError::Io(e))),
            None if e.kind() == io::ErrorKind::BrokenPipe
                || e.kind() == io::ErrorKind::ConnectionReset =>
            {
                Err(ControlError::Frame(FrameError::Io(e)))
            }
            None => Err(ControlError::Refused(format!("cannot archive {path}: {e}"))),
        },
    }
}

/// A tar header describing the open file `fd` (mode, owner, mtime, type kept).
fn header_of(fd: OwnedFd) -> io::Result<(tar::Header, File)> {
    let file = File::from(fd);
    let md = file.metadata()?;
    let mut h = tar::Header::new_gnu();
    h.set_metadata_in_mode(&md, tar::HeaderMode::Complete);
    Ok((h, file))
}

/// The error that ends a `GetTree` archive at the entry `rel`.
fn refuse_entry(rel: &Path, why: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!("refusing `{}`: {why}", rel.display()),
    )
}

/// One directory of the walk of [`append_tree`]: its descriptor and status, its archive path,
/// and its entries not appended yet.
struct Level {
    dir: OwnedFd,
    st: rfs::Stat,
    rel: PathBuf,
    names: std::vec::IntoIter<OsString>,
}

impl Level {
    /// Lists the directory `dir` (a readable descriptor), names sorted.
    fn read(dir: OwnedFd, rel: PathBuf) -> io::Result<Level> {
        let st = rfs::fstat(&dir)?;
        let mut names: Vec<OsString> = Vec::new();
        for e in rfs::Dir::read_from(&dir)? {
            let name = e?.file_name().to_bytes().to_vec();
            if name != b"." && name != b".." {
                names.push(OsString::from_vec(name));
            }
        }
        names.sort();
        Ok(Level {
            dir,
            st,
            rel,
            names: names.into_iter(),
        })
    }
}

/// Appends everything under the directory `top`, depth first, each directory's entries sorted
/// by name. The walk keeps its own stack (no recursion), at most [`MAX_DEPTH`] levels.
fn append_tree<W: Write>(b: &mut tar::Builder<W>, top: OwnedFd) -> io::Result<()> {
    let mut stack = vec![Level::read(top, PathBuf::new())?];
    while let Some(level) = stack.last_mut() {
        let Some(name) = level.names.next() else {
            stack.pop();
            continue;
        };
        let rel = level.rel.join(&name);
        let Some(sub) = append_entry(b, level, &name, &rel)? else {
            continue;
        };
        let sub = Level::read(sub, rel)?;
        if stack.len() >= MAX_DEPTH {
            if let Some(first) = sub.names.as_slice().first() {
                return Err(refuse_entry(
                    &sub.rel.join(first),
                    format_args!("it is more than {MAX_DEPTH} directory levels deep"),
                ));
            }
            continue;
        }
        stack.push(sub);
    }
    Ok(())
}

/// Appends the entry `name` of the directory `level` as `rel`; returns a readable descriptor
/// of it when it is a directory, whose entries are to follow.
fn append_entry<W: Write>(
    b: &mut tar::Builder<W>,
    level: &Level,
    name: &OsStr,
    rel: &Path,
) -> io::Result<Option<OwnedFd>> {
    // First a descriptor that opens nothing: what the entry is decides what is opened.
    let opath = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let pfd = match rfs::openat(&level.dir, name, opath, Mode::empty()) {
        Ok(fd) => fd,
        // Removed since the listing: it is simply not part of the archive.
        Err(Errno::NOENT) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let st = rfs::fstat(&pfd)?;
    match rfs::FileType::from_raw_mode(st.st_mode) {
        rfs::FileType::Directory => {
            // The directory itself (`.` is never a symlink), not the name again.
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
            let dir = match rfs::openat(&pfd, ".", flags, Mode::empty()) {
                Ok(fd) => fd,
                // Removed since the listing.
                Err(Errno::NOENT) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            let (mut h, _) = header_of(pfd)?;
            h.set_size(0);
            b.append_data(&mut h, rel, io::empty())?;
            Ok(Some(dir))
        }
        rfs::FileType::RegularFile => {
            if let Some(why) = foreign_link(&st, &level.st) {
                return Err(refuse_entry(rel, why));
            }
            let file = match reopen(&pfd, &st) {
                Ok(f) => f,
                // A socket cannot be opened (ENXIO): not part of the archive either.
                Err(e) if e.raw_os_error() == Some(Errno::NXIO.raw_os_error()) => return Ok(None),
                Err(e) => return Err(e),
            };
            let md = file.metadata()?;
            let mut h = tar::Header::new_gnu();
            h.set_metadata_in_mode(&md, tar::HeaderMode::Complete);
            let size = h.entry_size()?;
            b.append_data(&mut h, rel, Exactly::new(file, size))?;
            Ok(None)
        }
        rfs::FileType::Symlink => {
            let target = rfs::readlinkat(&pfd, "", Vec::new())?;
            let target = PathBuf::from(OsString::from_vec(target.into_bytes()));
            let (mut h, _) = header_of(pfd)?;
            h.set_size(0);
            b.append_link(&mut h, rel, &target)?;
            Ok(None)
        }
        rfs::FileType::Fifo | rfs::FileType::CharacterDevice | rfs::FileType::BlockDevice => {
            let (mut h, _) = header_of(pfd)?;
            h.set_size(0);
            h.set_device_major(rfs::major(st.st_rdev))?;
            h.set_device_minor(rfs::minor(st.st_rdev))?;
            b.append_data(&mut h, rel, io::empty())?;
            Ok(None)
        }
        // Sockets (and anything unknown) cannot be carried by a tar stream.
        _ => Ok(None),
    }
}

/// Yields exactly `left` bytes of `inner`: cut short if the file grew since its size was
/// taken, padded with zeros if it shrank, so the tar entry matches its header.
struct Exactly<R: Read> {
    inner: R,
    left: u64,
    ended: bool,
}

impl<R: Read> Exactly<R> {
    fn new(inner: R, size: u64) -> Self {
        Exactly {
            inner,
            left: size,
            ended: false,
        }
    }
}

impl<R: Read> Read for Exactly<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let want = out
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        let n = if self.ended {
            0
        } else {
            self.inner.read(&mut out[..want])?
        };
        let n = if n == 0 {
            self.ended = true;
            out[..want].fill(0);
            want
        } else {
            n
        };
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::tests::{connect, read_data, test_ctx, tmpdir};
    use std::fs;
    use std::os::unix::fs::MetadataExt;
    use std::sync::Arc;

    fn put(dir: &Path, first: HostMsg, data: &[u8]) -> GuestMsg {
        let mut host = connect(Arc::new(test_ctx(dir, Arc::default())));
        write_frame(&mut host, &first).unwrap();
        for c in data.chunks(minke_protocol::wire::MAX_CHUNK) {
            write_frame(&mut host, &HostMsg::Data(c.to_vec())).unwrap();
        }
        write_frame(&mut host, &HostMsg::End).unwrap();
        read_frame(&mut host).unwrap()
    }

    #[test]
    fn put_file_then_get_file() {
        let dir = tmpdir("putfile");
        let target = dir.join("sub/dir/f.bin");
        let data: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let r = put(
            &dir,
            HostMsg::PutFile {
                path: target.display().to_string(),
                mode: 0o751,
            },
            &data,
        );
        assert_eq!(r, GuestMsg::Ok);
        assert_eq!(fs::read(&target).unwrap(), data);
        assert_eq!(fs::metadata(&target).unwrap().mode() & 0o7777, 0o751);
        // No temporary file left behind.
        assert_eq!(fs::read_dir(dir.join("sub/dir")).unwrap().count(), 1);

        let mut host = connect(Arc::new(test_ctx(&dir, Arc::default())));
        write_frame(
            &mut host,
            &HostMsg::GetFile {
                path: target.display().to_string(),
            },
        )
        .unwrap();
        assert_eq!(read_data(&mut host).unwrap(), data);
    }

    #[test]
    fn relative_and_dotdot_paths_are_refused() {
        let dir = tmpdir("relpath");
        for p in ["rel/path", "/tmp/../etc/passwd", ""] {
            match put(
                &dir,
                HostMsg::PutFile {
                    path: p.into(),
                    mode: 0o644,
                },
                b"x",
            ) {
                GuestMsg::Error(e) => assert!(e.contains("absolute") || e.contains(".."), "{e}"),
                other => panic!("{p}: {other:?}"),
            }
        }
        let mut host = connect(Arc::new(test_ctx(&dir, Arc::default())));
        write_frame(
            &mut host,
            &HostMsg::GetFile {
                path: "etc/passwd".into(),
            },
        )
        .unwrap();
        assert!(read_data(&mut host).unwrap_err().contains("absolute"));
        let mut host = connect(Arc::new(test_ctx(&dir, Arc::default())));
        write_frame(
            &mut host,
            &HostMsg::GetFile {
                path: dir.display().to_string(),
            },
        )
        .unwrap();
        assert!(read_data(&mut host)
            .unwrap_err()
            .contains("not a regular file"));
    }

    /// (name, type, contents, mode, link target)
    type TarEntry<'a> = (&'a str, tar::EntryType, &'a [u8], u32, Option<&'a str>);

    fn tar_of(entries: &[TarEntry<'_>]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, kind, data, mode, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(*mode);
            h.set_size(data.len() as u64);
            h.set_mtime(1_000_000);
            if let Some(l) = link {
                h.set_link_name(l).unwrap();
            }
            // Write the raw name so hostile paths survive the builder's own checks.
            let nb = name.as_bytes();
            h.as_old_mut().name[..nb.len()].copy_from_slice(nb);
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn put_tree_then_get_tree_round_trips_with_modes() {
        let dir = tmpdir("tree");
        let dest = dir.join("dest");
        let t = tar_of(&[
            ("bin/", tar::EntryType::Directory, b"", 0o755, None),
            (
                "bin/tool",
                tar::EntryType::Regular,
                b"#!/bin/sh\n",
                0o755,
                None,
            ),
            ("etc/conf", tar::EntryType::Regular, b"k=v\n", 0o600, None),
            (
                "link",
                tar::EntryType::Symlink,
                b"",
                0o777,
                Some("etc/conf"),
            ),
        ]);
        assert_eq!(
            put(
                &dir,
                HostMsg::PutTree {
                    dest: dest.display().to_string()
                },
                &t
            ),
            GuestMsg::Ok
        );
        assert_eq!(fs::read(dest.join("bin/tool")).unwrap(), b"#!/bin/sh\n");
        assert_eq!(
            fs::metadata(dest.join("bin/tool")).unwrap().mode() & 0o777,
            0o755
        );
        assert_eq!(
            fs::metadata(dest.join("etc/conf")).unwrap().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::read_link(dest.join("link")).unwrap(),
            Path::new("etc/conf")
        );

        let mut host = connect(Arc::new(test_ctx(&dir, Arc::default())));
        write_frame(
            &mut host,
            &HostMsg::GetTree {
                path: dest.display().to_string(),
            },
        )
        .unwrap();
        let bytes = read_data(&mut host).unwrap();
        let mut a = tar::Archive::new(&bytes[..]);
        let mut seen = Vec::new();
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let name = e.path().unwrap().display().to_string();
            let mode = e.header().mode().unwrap() & 0o777;
            let mut body = Vec::new();
            e.read_to_end(&mut body).unwrap();
            seen.push((name, mode, body));
        }
        let names: Vec<_> = seen.iter().map(|s| (s.0.as_str(), s.1)).collect();
        assert_eq!(
            names,
            vec![
                ("bin", 0o755),
                ("bin/tool", 0o755),
                ("etc", 0o755),
                ("etc/conf", 0o600),
                ("link", 0o777)
            ]
        );
        assert_eq!(seen[3].2, b"k=v\n");
    }

    #[test]
    fn put_tree_sets_directory_modes_and_mtimes_after_the_children() {
        let dir = tmpdir("dirmodes");
        let dest = dir.join("dest");
        let t = tar_of(&[
            ("ro/", tar::EntryType::Directory, b"", 0o555, None),
            ("ro/f", tar::EntryType::Regular, b"x", 0o444, None),
            ("ro/sub/", tar::EntryType::Directory, b"", 0o2750, None),
            (
                "ro/sub/l",
                tar::EntryType::Symlink,
                b"",
                0o777,
                Some("../f"),
            ),
        ]);
        assert_eq!(
            put(
                &dir,
                HostMsg::PutTree {
                    dest: dest.display().to_string()
                },
                &t
            ),
            GuestMsg::Ok
        );
        for (p, mode) in [("ro", 0o555), ("ro/f", 0o444), ("ro/sub", 0o2750)] {
            let md = fs::symlink_metadata(dest.join(p)).unwrap();
            assert_eq!(md.mode() & 0o7777, mode, "{p}");
            assert_eq!(md.mtime(), 1_000_000, "{p}");
        }
        let l = fs::symlink_metadata(dest.join("ro/sub/l")).unwrap();
        assert_eq!(l.mtime(), 1_000_000);
        assert_eq!(fs::read(dest.join("ro/sub/l")).unwrap(), b"x");
        // No temporary names left behind.
        assert_eq!(fs::read_dir(dest.join("ro")).unwrap().count(), 2);
        assert_eq!(fs::read_dir(dest.join("ro/sub")).unwrap().count(), 1);
    }

    #[test]
    fn put_tree_refuses_escapes() {
        let dir = tmpdir("escape");
        let outside = dir.join("outside");
        fs::create_dir(&outside).unwrap();
        let dest = dir.join("dest");
        let d = dest.display().to_string();
        let cases: Vec<Vec<u8>> = vec![
            tar_of(&[("../evil", tar::EntryType::Regular, b"x", 0o644, None)]),
            tar_of(&[("/abs/evil", tar::EntryType::Regular, b"x", 0o644, None)]),
            tar_of(&[
                (
                    "esc",
                    tar::EntryType::Symlink,
                    b"",
                    0o777,
                    Some(outside.to_str().unwrap()),
                ),
                ("esc/evil", tar::EntryType::Regular, b"x", 0o644, None),
            ]),
            tar_of(&[
                (
                    "esc2",
                    tar::EntryType::Symlink,
                    b"",
                    0o777,
                    Some(outside.to_str().unwrap()),
                ),
                ("esc2/", tar::EntryType::Directory, b"", 0o777, None),
            ]),
            tar_of(&[("hl", tar::EntryType::Link, b"", 0o644, Some("../outside/x"))]),
        ];
        for (i, t) in cases.iter().enumerate() {
            match put(&dir, HostMsg::PutTree { dest: d.clone() }, t) {
                GuestMsg::Error(e) => assert!(e.contains("refusing"), "case {i}: {e}"),
                other => panic!("case {i}: {other:?}"),
            }
        }
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
        assert_eq!(fs::metadata(&outside).unwrap().mode() & 0o777, 0o755);
        assert!(!dir.join("evil").exists());
        // A file entry over an existing symlink replaces the link, not its target.
        let target = outside.join("victim");
        fs::write(&target, "keep").unwrap();
        let t = tar_of(&[
            (
                "v",
                tar::EntryType::Symlink,
                b"",
                0o777,
                Some(target.to_str().unwrap()),
            ),
            ("v", tar::EntryType::Regular, b"new", 0o644, None),
        ]);
        assert_eq!(put(&dir, HostMsg::PutTree { dest: d }, &t), GuestMsg::Ok);
        assert_eq!(fs::read_to_string(&target).unwrap(), "keep");
        assert_eq!(fs::read_to_string(dest.join("v")).unwrap(), "new");
    }

    #[test]
    fn put_tree_refuses_special_files() {
        let dir = tmpdir("special");
        let dest = dir.join("dest");
        let d = dest.display().to_string();
        for (kind, word) in [
            (tar::EntryType::Fifo, "fifo"),
            (tar::EntryType::Char, "character device"),
            (tar::EntryType::Block, "block device"),
        ] {
            let t = tar_of(&[("dev", kind, b"", 0o644, None)]);
            match put(&dir, HostMsg::PutTree { dest: d.clone() }, &t) {
                GuestMsg::Error(e) => {
                    assert!(e.contains("refusing tar entry `dev`"), "{e}");
                    assert!(e.contains(word), "{e}");
                }
                other => panic!("{kind:?}: {other:?}"),
            }
            assert!(fs::symlink_metadata(dest.join("dev")).is_err());
        }
    }

    #[test]
    fn put_tree_hard_links_stay_inside() {
        let dir = tmpdir("hardlink");
        let outside = dir.join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("secret"), "s").unwrap();
        let dest = dir.join("dest");
        let d = dest.display().to_string();
        let t = tar_of(&[
            ("a/f", tar::EntryType::Regular, b"data", 0o640, None),
            ("b/h", tar::EntryType::Link, b"", 0o640, Some("a/f")),
        ]);
        assert_eq!(
            put(&dir, HostMsg::PutTree { dest: d.clone() }, &t),
            GuestMsg::Ok
        );
        assert_eq!(fs::read(dest.join("b/h")).unwrap(), b"data");
        let (f, h) = (
            fs::metadata(dest.join("a/f")).unwrap(),
            fs::metadata(dest.join("b/h")).unwrap(),
        );
        assert_eq!((f.dev(), f.ino()), (h.dev(), h.ino()));
        assert_eq!(h.mode() & 0o7777, 0o640);
        // Sources that are missing, escape, or go through a symlink are refused.
        let cases: Vec<Vec<u8>> = vec![
            tar_of(&[("h1", tar::EntryType::Link, b"", 0o644, Some("nope"))]),
            tar_of(&[(
                "h2",
                tar::EntryType::Link,
                b"",
                0o644,
                Some(outside.join("secret").to_str().unwrap()),
            )]),
            tar_of(&[
                (
                    "s",
                    tar::EntryType::Symlink,
                    b"",
                    0o777,
                    Some(outside.to_str().unwrap()),
                ),
                ("h3", tar::EntryType::Link, b"", 0o644, Some("s/secret")),
            ]),
        ];
        for (i, t) in cases.iter().enumerate() {
            match put(&dir, HostMsg::PutTree { dest: d.clone() }, t) {
                GuestMsg::Error(e) => assert!(e.contains("refusing"), "case {i}: {e}"),
                other => panic!("case {i}: {other:?}"),
            }
        }
        for h in ["h1", "h2", "h3"] {
            assert!(fs::symlink_metadata(dest.join(h)).is_err(), "{h}");
        }
        assert_eq!(fs::metadata(outside.join("secret")).unwrap().nlink(), 1);
    }

    /// A guest process swaps `dest/d` between a directory and a symlink to `outside` while a
    /// tree is unpacked into `d`: entries may be refused, but nothing may land in `outside`.
    #[test]
    fn put_tree_survives_a_symlink_swap_race() {
        use rustix::fs::{renameat_with, RenameFlags, CWD};
        use std::sync::atomic::AtomicBool;

        let dir = tmpdir("race");
        let outside = dir.join("outside");
        fs::create_dir(&outside).unwrap();
        let dest = dir.join("dest");
        fs::create_dir_all(dest.join("d")).unwrap();
        std::os::unix::fs::symlink(&outside, dest.join("d.link")).unwrap();
        let names: Vec<String> = (0..2000).map(|i| format!("d/f{i}")).collect();
        let entries: Vec<TarEntry<'_>> = names
            .iter()
            .map(|n| (n.as_str(), tar::EntryType::Regular, &b"x"[..], 0o644, None))
            .collect();
        let t = tar_of(&entries);

        let stop = Arc::new(AtomicBool::new(false));
        let swapper = {
            let (stop, dest) = (stop.clone(), dest.clone());
            std::thread::spawn(move || {
                let (d, l) = (dest.join("d"), dest.join("d.link"));
                let mut swaps = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    // `d` is a symlink only briefly: a check that sees the directory is then
                    // likely to be followed by a write that meets the symlink.
                    renameat_with(CWD, &d, CWD, &l, RenameFlags::EXCHANGE).unwrap();
                    renameat_with(CWD, &d, CWD, &l, RenameFlags::EXCHANGE).unwrap();
                    swaps += 2;
                    let t = std::time::Instant::now();
                    while t.elapsed() < std::time::Duration::from_micros(20) {
                        std::hint::spin_loop();
                    }
                }
                swaps
            })
        };
        let mut outcomes = Vec::new();
        let start = std::time::Instant::now();
        while start.elapsed() < std::time::Duration::from_millis(1500) {
            let r = put(
                &dir,
                HostMsg::PutTree {
                    dest: dest.display().to_string(),
                },
                &t,
            );
            if let GuestMsg::Error(e) = &r {
                assert!(e.contains("refusing"), "{e}");
            }
            outcomes.push(r);
        }
        stop.store(true, Ordering::Relaxed);
        let swaps = swapper.join().unwrap();
        assert!(swaps > 0);
        let leaked: Vec<_> = fs::read_dir(&outside)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            leaked.is_empty(),
            "written outside: {leaked:?} ({outcomes:?})"
        );
    }

    /// Sends a request and reads the reply of a get (`Data`… `End`, or the error).
    fn get(dir: &Path, req: HostMsg) -> Result<Vec<u8>, String> {
        let mut host = connect(Arc::new(test_ctx(dir, Arc::default())));
        write_frame(&mut host, &req).unwrap();
        read_data(&mut host)
    }

    /// A symlink `at -> target` as an unprivileged user (uid 1000) would plant it.
    fn plant(target: &Path, at: &Path) {
        std::os::unix::fs::symlink(target, at).unwrap();
        std::os::unix::fs::lchown(at, Some(1000), Some(1000)).unwrap();
        assert_eq!(fs::symlink_metadata(at).unwrap().uid(), 1000);
    }

    fn s(p: &Path) -> String {
        p.display().to_string()
    }

    #[test]
    fn symlinks_planted_by_a_user_are_not_followed() {
        let dir = tmpdir("planted");
        let etc = dir.join("etc");
        fs::create_dir(&etc).unwrap();
        fs::write(etc.join("shadow"), "root:secret").unwrap();
        let home = dir.join("home/u");
        fs::create_dir_all(&home).unwrap();
        plant(&etc, &home.join("up"));
        plant(Path::new("../../etc"), &home.join("rel"));
        plant(&etc.join("shadow"), &home.join("link"));
        // Root's own links, but in places a user could have put them (a hard link of a
        // root-owned symlink into the user's directory, or a world-writable one).
        let theirs = dir.join("home/theirs");
        fs::create_dir(&theirs).unwrap();
        std::os::unix::fs::symlink(&etc, theirs.join("hard")).unwrap();
        std::os::unix::fs::chown(&theirs, Some(1000), Some(1000)).unwrap();
        let shared = dir.join("shared");
        fs::create_dir(&shared).unwrap();
        std::os::unix::fs::symlink(&etc, shared.join("hard")).unwrap();
        fs::set_permissions(
            &shared,
            std::os::unix::fs::PermissionsExt::from_mode(0o1777),
        )
        .unwrap();
        for (at, why) in [
            (theirs.join("hard"), "owned by uid 1000"),
            (shared.join("hard"), "others than root may write to"),
        ] {
            let path = s(&at.join("x"));
            match put(&dir, HostMsg::PutFile { path, mode: 0o644 }, b"x") {
                GuestMsg::Error(e) => assert!(e.contains(why), "{e}"),
                other => panic!("{other:?}"),
            }
            let e = get(
                &dir,
                HostMsg::GetFile {
                    path: s(&at.join("shadow")),
                },
            )
            .unwrap_err();
            assert!(e.contains(why), "{e}");
        }
        let refused_for_uid = |r: GuestMsg| match r {
            GuestMsg::Error(e) => assert!(e.contains("owned by uid 1000"), "{e}"),
            other => panic!("{other:?}"),
        };

        for via in ["up", "rel"] {
            let path = s(&home.join(via).join("x"));
            refused_for_uid(put(&dir, HostMsg::PutFile { path, mode: 0o644 }, b"x"));
            let path = s(&home.join(via).join("new/x"));
            refused_for_uid(put(&dir, HostMsg::PutFile { path, mode: 0o644 }, b"x"));
            let path = s(&home.join(via).join("shadow"));
            let e = get(&dir, HostMsg::GetFile { path }).unwrap_err();
            assert!(e.contains("owned by uid 1000"), "{e}");
            let t = tar_of(&[("f", tar::EntryType::Regular, b"x", 0o644, None)]);
            for dest in [home.join(via), home.join(via).join("sub")] {
                refused_for_uid(put(&dir, HostMsg::PutTree { dest: s(&dest) }, &t));
            }
            for path in [home.join(via), home.join(via).join(".")] {
                let e = get(&dir, HostMsg::GetTree { path: s(&path) }).unwrap_err();
                assert!(e.contains("owned by uid 1000"), "{e}");
            }
        }
        // The user's link as the last component: a get refuses it, a put replaces the link.
        let e = get(
            &dir,
            HostMsg::GetFile {
                path: s(&home.join("link")),
            },
        )
        .unwrap_err();
        assert!(e.contains("owned by uid 1000"), "{e}");
        let path = s(&home.join("link"));
        assert_eq!(
            put(&dir, HostMsg::PutFile { path, mode: 0o644 }, b"mine"),
            GuestMsg::Ok
        );
        assert_eq!(fs::read_to_string(home.join("link")).unwrap(), "mine");
        assert!(!fs::symlink_metadata(home.join("link"))
            .unwrap()
            .is_symlink());

        // Nothing was written into, or created under, the target directory.
        let mut names: Vec<_> = fs::read_dir(&etc)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, vec![OsString::from("shadow")]);
        assert_eq!(
            fs::read_to_string(etc.join("shadow")).unwrap(),
            "root:secret"
        );
    }

    #[test]
    fn root_owned_symlinks_are_followed() {
        let dir = tmpdir("rootlinks");
        let lib = dir.join("usr/lib");
        fs::create_dir_all(&lib).unwrap();
        fs::write(lib.join("f"), "lib").unwrap();
        let link = |target: &str, at: &str| {
            std::os::unix::fs::symlink(target, dir.join(at)).unwrap();
        };
        // A merged-/usr layout, absolute targets, chains, `..` in targets, a final link.
        link("usr/lib", "lib");
        link(&s(&dir.join("usr")), "abs");
        link("c2", "c1");
        link("lib", "c2");
        link("..", "usr/up");
        link("usr/lib/f", "flink");
        link("loop2", "loop1");
        link("loop1", "loop2");

        for p in [
            "lib/f",
            "abs/lib/f",
            "c1/f",
            "usr/up/usr/lib/f",
            "flink",
            "usr/up/flink",
        ] {
            let got = get(
                &dir,
                HostMsg::GetFile {
                    path: s(&dir.join(p)),
                },
            );
            assert_eq!(got.as_deref(), Ok(&b"lib"[..]), "{p}");
        }
        let path = s(&dir.join("lib/new"));
        assert_eq!(
            put(&dir, HostMsg::PutFile { path, mode: 0o640 }, b"new"),
            GuestMsg::Ok
        );
        assert_eq!(fs::read(lib.join("new")).unwrap(), b"new");
        let path = s(&dir.join("c1/made/deep"));
        assert_eq!(
            put(&dir, HostMsg::PutFile { path, mode: 0o640 }, b"deep"),
            GuestMsg::Ok
        );
        assert_eq!(fs::read(lib.join("made/deep")).unwrap(), b"deep");

        let t = tar_of(&[("t", tar::EntryType::Regular, b"tree", 0o644, None)]);
        for dest in ["lib/tree", "c1"] {
            assert_eq!(
                put(
                    &dir,
                    HostMsg::PutTree {
                        dest: s(&dir.join(dest))
                    },
                    &t
                ),
                GuestMsg::Ok,
                "{dest}"
            );
        }
        assert_eq!(fs::read(lib.join("tree/t")).unwrap(), b"tree");
        assert_eq!(fs::read(lib.join("t")).unwrap(), b"tree");
        let bytes = get(
            &dir,
            HostMsg::GetTree {
                path: s(&dir.join("abs/up/c1")),
            },
        )
        .unwrap();
        let mut a = tar::Archive::new(&bytes[..]);
        let names: Vec<String> = a
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(
            names,
            ["f", "made", "made/deep", "new", "t", "tree", "tree/t"]
        );

        let e = get(
            &dir,
            HostMsg::GetFile {
                path: s(&dir.join("loop1/x")),
            },
        )
        .unwrap_err();
        assert!(e.contains("more than 40 symlinks"), "{e}");
        // A regular file on the way is not a directory.
        let e = get(
            &dir,
            HostMsg::GetFile {
                path: s(&dir.join("flink/x")),
            },
        )
        .unwrap_err();
        assert!(e.contains("not a directory"), "{e}");
    }

    #[test]
    fn get_tree_sends_symlinks_and_specials_without_following_or_opening_them() {
        let dir = tmpdir("gettree");
        let etc = dir.join("etc");
        fs::create_dir(&etc).unwrap();
        fs::write(etc.join("shadow"), "root:secret").unwrap();
        let t = dir.join("t");
        fs::create_dir_all(t.join("d")).unwrap();
        fs::write(t.join("d/f"), "file").unwrap();
        plant(&etc, &t.join("up"));
        plant(&etc.join("shadow"), &t.join("d/sh"));
        // A fifo: opening it for reading would block (or wake a writer); it must not be.
        rfs::mknodat(
            rfs::CWD,
            t.join("fifo"),
            rfs::FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let _sock = std::os::unix::net::UnixListener::bind(t.join("sock")).unwrap();
        let bytes = get(&dir, HostMsg::GetTree { path: s(&t) }).unwrap();
        let mut a = tar::Archive::new(&bytes[..]);
        let mut seen = Vec::new();
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let name = e.path().unwrap().display().to_string();
            let kind = e.header().entry_type();
            let link = e.link_name().unwrap().map(|l| l.display().to_string());
            let mut body = String::new();
            e.read_to_string(&mut body).unwrap();
            seen.push((name, kind, link, body));
        }
        let want = vec![
            (
                "d".to_string(),
                tar::EntryType::Directory,
                None,
                String::new(),
            ),
            ("d/f".into(), tar::EntryType::Regular, None, "file".into()),
            (
                "d/sh".into(),
                tar::EntryType::Symlink,
                Some(s(&etc.join("shadow"))),
                String::new(),
            ),
            ("fifo".into(), tar::EntryType::Fifo, None, String::new()),
            (
                "up".into(),
                tar::EntryType::Symlink,
                Some(s(&etc)),
                String::new(),
            ),
        ];
        assert_eq!(seen, want);
    }

    #[test]
    fn the_private_directory_gets_private_modes_whatever_the_headers_say() {
        let dir = tmpdir("private");
        let private = dir.join("run/config");
        fs::create_dir_all(&private).unwrap();
        fs::set_permissions(
            &private,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let t = tar_of(&[
            ("a", tar::EntryType::Regular, b"secret", 0o644, None),
            ("sub/", tar::EntryType::Directory, b"", 0o755, None),
            ("sub/b", tar::EntryType::Regular, b"x", 0o4777, None),
            ("implied/c", tar::EntryType::Regular, b"y", 0o666, None),
        ]);
        let upload = |dest: &Path| {
            let (mut host, mut guest) = std::os::unix::net::UnixStream::pair().unwrap();
            let (dest, private) = (s(dest), private.clone());
            let agent =
                std::thread::spawn(move || put_tree_with(&mut guest, &dest, &private).is_ok());
            for c in t.chunks(minke_protocol::wire::MAX_CHUNK) {
                write_frame(&mut host, &HostMsg::Data(c.to_vec())).unwrap();
            }
            write_frame(&mut host, &HostMsg::End).unwrap();
            let reply: GuestMsg = read_frame(&mut host).unwrap();
            assert!(agent.join().unwrap());
            reply
        };
        // Spelled differently, still the private directory.
        assert_eq!(upload(&dir.join("run/./config/")), GuestMsg::Ok);
        let mode = |p: &str| fs::metadata(private.join(p)).unwrap().mode() & 0o7777;
        assert_eq!(mode(""), 0o700);
        for d in ["sub", "implied"] {
            assert_eq!(mode(d), 0o700, "{d}");
        }
        for f in ["a", "sub/b", "implied/c"] {
            assert_eq!(mode(f), 0o600, "{f}");
        }
        assert_eq!(fs::read(private.join("a")).unwrap(), b"secret");
        // A new private directory is created 0700; elsewhere the headers' modes are kept.
        fs::remove_dir_all(&private).unwrap();
        assert_eq!(upload(&private), GuestMsg::Ok);
        assert_eq!(mode(""), 0o700);
        assert_eq!(mode("a"), 0o600);
        let other = dir.join("run/other");
        assert_eq!(upload(&other), GuestMsg::Ok);
        assert_eq!(
            fs::metadata(other.join("a")).unwrap().mode() & 0o7777,
            0o644
        );
        assert_eq!(
            fs::metadata(other.join("sub/b")).unwrap().mode() & 0o7777,
            0o4777
        );
    }

    #[test]
    fn garbage_tar_is_an_error() {
        let dir = tmpdir("badtar");
        let r = put(
            &dir,
            HostMsg::PutTree {
                dest: dir.join("d").display().to_string(),
            },
            &[0x55; 1500],
        );
        assert!(matches!(r, GuestMsg::Error(_)), "{r:?}");
    }

    /// Runs `put_file_with` or `put_tree_with` (by `first`) with `private` as the private
    /// directory; returns the reply.
    fn put_with_private(first: HostMsg, data: &[u8], private: &Path) -> GuestMsg {
        let (mut host, mut guest) = std::os::unix::net::UnixStream::pair().unwrap();
        let private = private.to_path_buf();
        let agent = std::thread::spawn(move || {
            let _ = match first {
                HostMsg::PutFile { path, mode } => put_file_with(&mut guest, &path, mode, &private),
                HostMsg::PutTree { dest } => put_tree_with(&mut guest, &dest, &private),
                other => panic!("{other:?}"),
            };
        });
        for c in data.chunks(minke_protocol::wire::MAX_CHUNK) {
            write_frame(&mut host, &HostMsg::Data(c.to_vec())).unwrap();
        }
        write_frame(&mut host, &HostMsg::End).unwrap();
        let reply: GuestMsg = read_frame(&mut host).unwrap();
        agent.join().unwrap();
        reply
    }

    fn mode_of(p: &Path) -> u32 {
        fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    #[test]
    fn everything_put_at_or_under_the_private_directory_is_private() {
        let dir = tmpdir("private-all");
        let private = dir.join("run/config");
        let put_file = |p: &Path, mode: u32| {
            let first = HostMsg::PutFile { path: s(p), mode };
            put_with_private(first, b"secret", &private)
        };
        // The private directory is created as a missing parent of a file: 0700, its own
        // missing parent not.
        assert_eq!(put_file(&private.join("a"), 0o644), GuestMsg::Ok);
        assert_eq!(mode_of(&dir.join("run")), 0o755);
        assert_eq!(mode_of(&private), 0o700);
        assert_eq!(mode_of(&private.join("a")), 0o600);
        assert_eq!(fs::read(private.join("a")).unwrap(), b"secret");
        assert_eq!(put_file(&private.join("sub/deep/b"), 0o4755), GuestMsg::Ok);
        for d in ["sub", "sub/deep"] {
            assert_eq!(mode_of(&private.join(d)), 0o700, "{d}");
        }
        assert_eq!(mode_of(&private.join("sub/deep/b")), 0o600);
        // Reached through a root-owned symlink: the resolved target decides.
        std::os::unix::fs::symlink(&private, dir.join("cfg")).unwrap();
        assert_eq!(put_file(&dir.join("cfg/new/c"), 0o666), GuestMsg::Ok);
        assert_eq!(mode_of(&private.join("new")), 0o700);
        assert_eq!(mode_of(&private.join("new/c")), 0o600);
        // Elsewhere the host's modes are kept.
        assert_eq!(put_file(&dir.join("run/other/d"), 0o644), GuestMsg::Ok);
        assert_eq!(mode_of(&dir.join("run/other")), 0o755);
        assert_eq!(mode_of(&dir.join("run/other/d")), 0o644);
        assert_eq!(put_file(&dir.join("run/configx"), 0o644), GuestMsg::Ok);
        assert_eq!(mode_of(&dir.join("run/configx")), 0o644);

        // Trees: below the private directory, and creating it as a missing parent.
        let t = tar_of(&[
            ("f", tar::EntryType::Regular, b"x", 0o644, None),
            ("d/", tar::EntryType::Directory, b"", 0o755, None),
            ("d/g", tar::EntryType::Regular, b"y", 0o755, None),
        ]);
        let put_tree = |dest: &Path| {
            let first = HostMsg::PutTree { dest: s(dest) };
            put_with_private(first, &t, &private)
        };
        fs::remove_dir_all(&private).unwrap();
        assert_eq!(put_tree(&private.join("x/y")), GuestMsg::Ok);
        for d in ["", "x", "x/y", "x/y/d"] {
            assert_eq!(mode_of(&private.join(d)), 0o700, "{d}");
        }
        for f in ["x/y/f", "x/y/d/g"] {
            assert_eq!(mode_of(&private.join(f)), 0o600, "{f}");
        }
        // An existing destination under it is made private too.
        fs::create_dir(private.join("open")).unwrap();
        fs::set_permissions(
            private.join("open"),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        assert_eq!(put_tree(&dir.join("cfg/open")), GuestMsg::Ok);
        assert_eq!(mode_of(&private.join("open")), 0o700);
        assert_eq!(mode_of(&private.join("open/f")), 0o600);
        assert_eq!(put_tree(&dir.join("run/tree")), GuestMsg::Ok);
        assert_eq!(mode_of(&dir.join("run/tree/d/g")), 0o755);
    }

    #[test]
    fn hard_links_a_user_could_have_made_are_not_sent() {
        let dir = tmpdir("hardlinks-get");
        let etc = dir.join("etc");
        fs::create_dir(&etc).unwrap();
        fs::write(etc.join("shadow"), "root:secret").unwrap();
        fs::set_permissions(
            etc.join("shadow"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        // A user's directory with a hard link to the root-only file, and one to their own.
        let home = dir.join("home");
        fs::create_dir(&home).unwrap();
        fs::hard_link(etc.join("shadow"), home.join("sh")).unwrap();
        fs::write(home.join("mine"), "mine").unwrap();
        std::os::unix::fs::chown(home.join("mine"), Some(1000), Some(1000)).unwrap();
        fs::hard_link(home.join("mine"), home.join("mine2")).unwrap();
        std::os::unix::fs::chown(&home, Some(1000), Some(1000)).unwrap();
        // A world-writable sticky directory with a hard link to the same file.
        let shared = dir.join("shared");
        fs::create_dir(&shared).unwrap();
        fs::hard_link(etc.join("shadow"), shared.join("sh")).unwrap();
        fs::set_permissions(
            &shared,
            std::os::unix::fs::PermissionsExt::from_mode(0o1777),
        )
        .unwrap();
        assert_eq!(fs::metadata(etc.join("shadow")).unwrap().nlink(), 3);

        for (at, why) in [
            (home.join("sh"), "in a directory owned by uid 1000"),
            (shared.join("sh"), "that group or others may write to"),
        ] {
            let e = get(&dir, HostMsg::GetFile { path: s(&at) }).unwrap_err();
            assert!(e.contains(&format!("refusing {}", at.display())), "{e}");
            assert!(e.contains("3 hard links"), "{e}");
            assert!(e.contains(why), "{e}");
        }
        for at in [&home, &shared] {
            let e = get(&dir, HostMsg::GetTree { path: s(at) }).unwrap_err();
            assert!(
                e.contains(&format!("cannot archive {}", at.display())),
                "{e}"
            );
            assert!(e.contains("refusing `sh`"), "{e}");
        }
        // Root's own links in root's directory, and the user's links to their own file.
        for (p, want) in [
            (etc.join("shadow"), "root:secret"),
            (home.join("mine2"), "mine"),
        ] {
            let got = get(&dir, HostMsg::GetFile { path: s(&p) }).unwrap();
            assert_eq!(got, want.as_bytes());
        }
        fs::remove_file(home.join("sh")).unwrap();
        let bytes = get(&dir, HostMsg::GetTree { path: s(&home) }).unwrap();
        let mut a = tar::Archive::new(&bytes[..]);
        let names: Vec<String> = a
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(names, ["mine", "mine2"]);
        let bytes = get(&dir, HostMsg::GetTree { path: s(&etc) }).unwrap();
        assert_eq!(tar::Archive::new(&bytes[..]).entries().unwrap().count(), 1);
    }

    /// `depth` nested directories `d` under `base` (made with mkdirat, one descriptor at a
    /// time), with a file `f` in the last one.
    fn nest(base: &Path, depth: usize) {
        let dirflags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let mut fd = rfs::openat(rfs::CWD, base, dirflags, Mode::empty()).unwrap();
        for _ in 0..depth {
            rfs::mkdirat(&fd, "d", Mode::from_raw_mode(0o755)).unwrap();
            fd = rfs::openat(&fd, "d", dirflags, Mode::empty()).unwrap();
        }
        let f = rfs::openat(
            &fd,
            "f",
            OFlags::WRONLY | OFlags::CREATE | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        )
        .unwrap();
        rustix::io::write(&f, b"deep").unwrap();
    }

    #[test]
    fn get_tree_refuses_entries_deeper_than_the_limit() {
        let dir = tmpdir("deep");
        let (ok, deep) = (dir.join("ok"), dir.join("deep"));
        fs::create_dir(&ok).unwrap();
        fs::create_dir(&deep).unwrap();
        // The file is the 256th level: sent.
        nest(&ok, MAX_DEPTH - 1);
        let bytes = get(&dir, HostMsg::GetTree { path: s(&ok) }).unwrap();
        let mut a = tar::Archive::new(&bytes[..]);
        let entries: Vec<(PathBuf, Vec<u8>)> = a
            .entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let mut body = Vec::new();
                e.read_to_end(&mut body).unwrap();
                (e.path().unwrap().into_owned(), body)
            })
            .collect();
        assert_eq!(entries.len(), MAX_DEPTH);
        let (last, body) = entries.last().unwrap();
        assert_eq!(last.components().count(), MAX_DEPTH);
        assert!(last.ends_with("d/f"));
        assert_eq!(body, b"deep");

        // 300 levels: refused at the first entry below level 256, without a crash.
        nest(&deep, 300);
        for _ in 0..2 {
            let e = get(&dir, HostMsg::GetTree { path: s(&deep) }).unwrap_err();
            assert!(e.contains("more than 256 directory levels deep"), "{e}");
            let refused = format!("refusing `{}d`", "d/".repeat(MAX_DEPTH));
            assert!(e.contains(&refused), "{e}");
        }
    }

    #[test]
    fn get_file_opens_only_what_it_checked() {
        let dir = tmpdir("getfile-kind");
        let fifo = dir.join("fifo");
        rfs::mknodat(
            rfs::CWD,
            &fifo,
            rfs::FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        // A copy of /dev/null's device: opening it would succeed, it must not happen.
        rfs::mknodat(
            rfs::CWD,
            dir.join("null"),
            rfs::FileType::CharacterDevice,
            Mode::from_raw_mode(0o600),
            rfs::makedev(1, 3),
        )
        .unwrap();
        let _sock = std::os::unix::net::UnixListener::bind(dir.join("sock")).unwrap();
        for name in ["fifo", "null", "sock"] {
            let e = get(
                &dir,
                HostMsg::GetFile {
                    path: s(&dir.join(name)),
                },
            )
            .unwrap_err();
            assert!(e.contains("not a regular file"), "{name}: {e}");
        }
        // A regular file checked, then its name swapped for a fifo: the reopen reads the file
        // checked, and nobody opened the fifo (a writer finds no reader).
        let f = dir.join("f");
        fs::write(&f, "checked").unwrap();
        let opath = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let pfd = rfs::openat(rfs::CWD, &f, opath, Mode::empty()).unwrap();
        let st = rfs::fstat(&pfd).unwrap();
        fs::rename(&fifo, &f).unwrap();
        let mut got = String::new();
        reopen(&pfd, &st).unwrap().read_to_string(&mut got).unwrap();
        assert_eq!(got, "checked");
        let w = rfs::open(&f, OFlags::WRONLY | OFlags::NONBLOCK, Mode::empty());
        assert_eq!(w.err(), Some(Errno::NXIO));
    }

    #[test]
    fn get_tree_skips_entries_that_vanish_or_become_sockets() {
        let dir = tmpdir("gettree-skip");
        for n in ["a", "gone", "sock"] {
            fs::write(dir.join(n), n).unwrap();
        }
        let top = open_dir_in(rfs::CWD, Some(dir.as_os_str())).unwrap();
        let level = Level::read(top, PathBuf::new()).unwrap();
        // Changed after the listing, before the walk reaches them.
        fs::remove_file(dir.join("gone")).unwrap();
        fs::remove_file(dir.join("sock")).unwrap();
        let _sock = std::os::unix::net::UnixListener::bind(dir.join("sock")).unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let names: Vec<OsString> = level.names.clone().collect();
        for name in &names {
            let sub = append_entry(&mut b, &level, name, Path::new(name)).unwrap();
            assert!(sub.is_none());
        }
        let bytes = b.into_inner().unwrap();
        let mut a = tar::Archive::new(&bytes[..]);
        let names: Vec<String> = a
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(names, ["a"]);
    }
}
