//! The path resolver of the file transfers: a host-supplied guest path is walked one component
//! at a time from a descriptor of `/`, following only symlinks that root alone could have put
//! in place, and creating missing directories when asked.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{self as rfs, Mode, OFlags};
use rustix::io::Errno;

use super::refused;
use crate::control::ControlError;

/// Most symlinks one path resolution follows, as the kernel's own limit.
const MAX_HOPS: u32 = 40;

/// Where a host-supplied guest path led: an `O_PATH` descriptor of the directory holding its
/// last component, and that component (`None` when the path names that directory itself:
/// `/`, or a followed symlink whose target ends in `..`).
pub(super) struct Resolved {
    pub(super) dir: OwnedFd,
    pub(super) name: Option<OsString>,
    /// The directory as resolved (symlinks followed), for messages.
    pub(super) shown: PathBuf,
}

impl Resolved {
    /// The resolved path of the result, for messages.
    pub(super) fn full(&self) -> PathBuf {
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
///
/// [`check_path`]: crate::control::check_path
pub(super) fn resolve(
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
                        "{whole}: {} is a symlink in {}, a directory {}; transfers follow only symlinks that only root could have put in place: give the path it points to instead",
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
pub(super) fn open_dir_in(at: BorrowedFd<'_>, name: Option<&OsStr>) -> Result<OwnedFd, Errno> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    match name {
        Some(n) => rfs::openat(at, n, flags | OFlags::NOFOLLOW, Mode::empty()),
        None => rfs::openat(at, ".", flags, Mode::empty()),
    }
}

#[cfg(test)]
mod tests {
    use crate::control::files::test_util::{get, plant, put, s, tar_of};
    use crate::control::tests::tmpdir;
    use minke_protocol::{GuestMsg, HostMsg};
    use std::ffi::OsString;
    use std::fs;
    use std::path::Path;

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
}
