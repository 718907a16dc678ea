//! `PutFile` and `PutTree`: the host's `Data`… `End` stream read as bytes, a file put in place
//! atomically, and a tree handed to [`super::unpack`].

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::path::Path;

use minke_protocol::wire::write_frame;
use minke_protocol::{GuestMsg, RUNTIME_CONFIG_DIR};
use rustix::fs::{self as rfs, AtFlags, Mode, OFlags};

use super::data_in::DataIn;
use super::resolve::{open_dir_in, resolve};
use super::unpack::unpack;
use super::{create_temp, is_private, refused};
use crate::control::{check_path, ControlError};

/// `PutFile`: receives the file and puts it in place atomically.
pub fn put_file<C: Read + Write>(conn: &mut C, path: &str, mode: u32) -> Result<(), ControlError> {
    put_file_with(conn, path, mode, Path::new(RUNTIME_CONFIG_DIR))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::files::test_util::{s, tar_of};
    use crate::control::tests::tmpdir;
    use minke_protocol::wire::read_frame;
    use minke_protocol::HostMsg;
    use std::fs;
    use std::os::unix::fs::MetadataExt;

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
}
