//! `GetFile` and `GetTree`: a file or a directory walked by descriptor and sent as `Data`
//! chunks (a tree as a tar stream), opening nothing before its type is known.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use minke_protocol::wire::{write_frame, FrameError};
use minke_protocol::GuestMsg;
use rustix::fs::{self as rfs, Mode, OFlags};
use rustix::io::Errno;

use super::refused;
use super::resolve::{open_dir_in, resolve};
use crate::control::{check_path, send_reader, ControlError, DataOut};

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
    use crate::control::files::test_util::{get, plant, s};
    use crate::control::tests::tmpdir;
    use minke_protocol::HostMsg;
    use std::fs;
    use std::os::unix::fs::MetadataExt;

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
