//! Unpacking a `PutTree` tar stream beneath its destination: every directory opened with
//! openat2(2) without following any symlink, every change made relative to such a descriptor,
//! files, symlinks and hard links created under a temporary name and renamed into place.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{self as rfs, AtFlags, Mode, OFlags, ResolveFlags, Timespec, Timestamps};
use rustix::io::Errno;

use super::data_in::DataIn;
use super::resolve::resolve;
use super::{create_temp, is_private, refused};
use crate::control::ControlError;

pub(super) fn unpack<R: Read>(
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
fn safe_relative(raw: &Path) -> Option<PathBuf> {
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

#[cfg(test)]
mod tests {
    use crate::control::files::test_util::{put, tar_of, TarEntry};
    use crate::control::tests::tmpdir;
    use minke_protocol::{GuestMsg, HostMsg};
    use std::fs;
    use std::os::unix::fs::MetadataExt;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

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
}
