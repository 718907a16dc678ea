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
//!
//! The parts: `resolve` walks a host-supplied path from `/` (the symlink rules above),
//! `upload` reads the host's stream and puts a file in place, `unpack` unpacks a tree
//! beneath its destination, `download` sends a file or a tree.

mod data_in;
mod download;
mod resolve;
#[cfg(test)]
mod test_util;
mod unpack;
mod upload;

pub use download::{get_file, get_tree};
pub use upload::{put_file, put_tree};

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::io::Errno;

use super::ControlError;
use crate::os_msg;

fn refused(what: impl std::fmt::Display, e: &io::Error) -> ControlError {
    ControlError::Refused(format!("{what}: {}", os_msg(e)))
}

/// A number not handed out before in this process, for temporary names.
fn unique() -> u64 {
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Whether `target`, as requested (`asked`, already through [`check_path`]) or as resolved
/// (`resolved`), is the private directory `private` or lies under it.
///
/// [`check_path`]: super::check_path
fn is_private(asked: &Path, resolved: &Path, private: &Path) -> bool {
    asked.starts_with(private) || resolved.starts_with(private)
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

#[cfg(test)]
mod tests {
    use super::test_util::{put, tar_of};
    use crate::control::tests::{connect, read_data, test_ctx, tmpdir};
    use minke_protocol::wire::write_frame;
    use minke_protocol::{GuestMsg, HostMsg};
    use std::fs;
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    use std::path::Path;
    use std::sync::Arc;

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
}
