//! File transfer conversations: put a file (atomically), put a tree (tar stream unpacked with
//! escape checks), get a file, get a tree (tar stream).
//!
//! Guarantees: `PutFile` writes a temporary file in the destination directory, sets the
//! requested mode explicitly (the umask does not apply), fsyncs and renames it over the path,
//! so readers see the old file or the whole new one. `PutTree` refuses any entry whose path is
//! absolute or contains `..`, any entry that would be written through a symlink, and hard
//! links that point outside the destination; symlinks themselves are created as they are.
//! Modes and mtimes are kept; ownership is not (files belong to the agent's user). On a
//! refusal the rest of the upload is still read up to `End`, then `Error` is sent.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use minke_protocol::wire::{read_frame, write_frame, FrameError};
use minke_protocol::{GuestMsg, HostMsg};

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

fn temp_name(path: &Path) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let name = path
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.minke-{}-{n}", std::process::id()))
}

/// `PutFile`: receives the file and puts it in place atomically.
pub fn put_file<C: Read + Write>(conn: &mut C, path: &str, mode: u32) -> Result<(), ControlError> {
    let checked = check_path(path);
    let mut input = DataIn::new(conn);
    let result = checked.and_then(|p| write_atomically(&p, mode, &mut input));
    // A broken stream wins: the host can no longer be answered in order.
    input.drain()?;
    result?;
    write_frame(conn, &GuestMsg::Ok)?;
    Ok(())
}

fn write_atomically<R: Read>(
    path: &Path,
    mode: u32,
    input: &mut DataIn<'_, R>,
) -> Result<(), ControlError> {
    let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) else {
        return Err(ControlError::Refused(format!(
            "`{}` is not a file path",
            path.display()
        )));
    };
    if path.file_name().is_none() {
        return Err(ControlError::Refused(format!(
            "`{}` is not a file path",
            path.display()
        )));
    }
    fs::create_dir_all(parent)
        .map_err(|e| refused(format_args!("cannot create {}", parent.display()), &e))?;
    let tmp = temp_name(path);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(&tmp)
        .map_err(|e| refused(format_args!("cannot create {}", tmp.display()), &e))?;
    let res = (|| -> Result<(), ControlError> {
        match io::copy(input, &mut file) {
            Ok(_) => {}
            Err(e) => return Err(refused(format_args!("cannot write {}", path.display()), &e)),
        }
        file.set_permissions(fs::Permissions::from_mode(mode & 0o7777))
            .map_err(|e| refused(format_args!("cannot chmod {}", path.display()), &e))?;
        file.sync_all()
            .map_err(|e| refused(format_args!("cannot fsync {}", path.display()), &e))?;
        fs::rename(&tmp, path)
            .map_err(|e| refused(format_args!("cannot rename into {}", path.display()), &e))?;
        if let Ok(dir) = File::open(parent) {
            let _ = dir.sync_all();
        }
        Ok(())
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

/// `PutTree`: unpacks the tar stream under `dest` (created if missing).
pub fn put_tree<C: Read + Write>(conn: &mut C, dest: &str) -> Result<(), ControlError> {
    let checked = check_path(dest);
    let mut input = DataIn::new(conn);
    let result = checked.and_then(|d| unpack(&d, &mut input));
    // A broken stream wins: the host can no longer be answered in order.
    input.drain()?;
    result?;
    write_frame(conn, &GuestMsg::Ok)?;
    Ok(())
}

fn unpack<R: Read>(dest: &Path, input: &mut DataIn<'_, R>) -> Result<(), ControlError> {
    fs::create_dir_all(dest)
        .map_err(|e| refused(format_args!("cannot create {}", dest.display()), &e))?;
    let mut archive = tar::Archive::new(&mut *input);
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(true);
    archive.set_unpack_xattrs(false);
    let tar_err = |e: io::Error| ControlError::Refused(format!("bad tar stream: {e}"));
    let entries = archive.entries().map_err(tar_err)?;
    for entry in entries {
        let mut entry = entry.map_err(tar_err)?;
        let raw = entry.path().map_err(tar_err)?.into_owned();
        let rel = safe_relative(&raw).ok_or_else(|| {
            ControlError::Refused(format!(
                "refusing tar entry `{}`: its path escapes {}",
                raw.display(),
                dest.display()
            ))
        })?;
        if rel.as_os_str().is_empty() {
            continue;
        }
        // Never write through an existing symlink (tar would chmod or fill its target).
        let target = dest.join(&rel);
        let is_link_entry = entry.header().entry_type().is_symlink();
        if !is_link_entry {
            if let Ok(md) = fs::symlink_metadata(&target) {
                if md.file_type().is_symlink() {
                    if entry.header().entry_type().is_dir() {
                        return Err(ControlError::Refused(format!(
                            "refusing tar entry `{}`: {} is a symlink",
                            raw.display(),
                            target.display()
                        )));
                    }
                    fs::remove_file(&target).map_err(|e| {
                        refused(format_args!("cannot replace {}", target.display()), &e)
                    })?;
                }
            }
        }
        match entry.unpack_in(dest) {
            Ok(true) => {}
            Ok(false) => {
                return Err(ControlError::Refused(format!(
                    "refusing tar entry `{}`: its path escapes {}",
                    raw.display(),
                    dest.display()
                )))
            }
            Err(e) => {
                return Err(ControlError::Refused(format!(
                    "refusing tar entry `{}`: {e}",
                    raw.display()
                )))
            }
        }
    }
    Ok(())
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

/// `GetFile`: sends the file as `Data` chunks then `End`.
pub fn get_file<C: Write>(conn: &mut C, path: &str) -> Result<(), ControlError> {
    let p = check_path(path)?;
    let file = File::open(&p).map_err(|e| refused(format_args!("cannot open {path}"), &e))?;
    let md = file
        .metadata()
        .map_err(|e| refused(format_args!("cannot stat {path}"), &e))?;
    if !md.is_file() {
        return Err(ControlError::Refused(format!(
            "{path} is not a regular file"
        )));
    }
    send_reader(conn, file)?;
    write_frame(conn, &GuestMsg::End)?;
    Ok(())
}

/// `GetTree`: sends the directory as a tar stream (relative entries in sorted order, symlinks
/// kept as symlinks, modes and mtimes kept) in `Data` chunks, then `End`.
pub fn get_tree<C: Write>(conn: &mut C, path: &str) -> Result<(), ControlError> {
    let p = check_path(path)?;
    let md = fs::metadata(&p).map_err(|e| refused(format_args!("cannot stat {path}"), &e))?;
    if !md.is_dir() {
        return Err(ControlError::Refused(format!("{path} is not a directory")));
    }
    let mut out = DataOut::new(conn);
    let res = (|| -> io::Result<()> {
        let mut builder = tar::Builder::new(&mut out);
        builder.follow_symlinks(false);
        builder.mode(tar::HeaderMode::Complete);
        append_sorted(&mut builder, &p, Path::new(""))?;
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

fn append_sorted<W: Write>(b: &mut tar::Builder<W>, dir: &Path, rel: &Path) -> io::Result<()> {
    let mut names: Vec<_> = fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<_>>()?;
    names.sort();
    for name in names {
        let full = dir.join(&name);
        let r = rel.join(&name);
        let md = fs::symlink_metadata(&full)?;
        if md.is_dir() {
            b.append_dir(&r, &full)?;
            append_sorted(b, &full, &r)?;
        } else {
            b.append_path_with_name(&full, &r)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::tests::{connect, read_data, test_ctx, tmpdir};
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
