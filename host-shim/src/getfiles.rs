//! The host end of copying out of a guest (`minke cp vm:/path local`, [`crate::Vm::get_file`],
//! [`crate::Vm::get_tree`], [`crate::Vm::read_file`], [`crate::Vm::logs`]).
//!
//! What the guest sends is not trusted:
//! - nothing is created on the host before the guest has answered the request with data (a
//!   refused request leaves no file or directory behind), and a failure removes what was made;
//! - a file is written under a fresh name created exclusively (`O_EXCL`, mode 0600) in the
//!   destination's directory and renamed into place, so no one can plant a file or symlink at
//!   a predictable temporary name;
//! - a tree is unpacked only inside the destination: `..` entries are skipped, a path through a
//!   symlink that leads outside is refused, files replace what is at their name rather than
//!   being written through it, device nodes and fifos are skipped, and setuid, setgid and
//!   sticky bits are dropped (and the umask applied) unless [`GetOptions::preserve`] asks for
//!   the guest's modes;
//! - what is read into memory is capped at [`MEMORY_LIMIT`].

use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use minke_protocol::wire::{read_frame, write_frame};
use minke_protocol::{GuestMsg, HostMsg};

use crate::client::AgentError;
use crate::state;
use crate::transport::Duplex;

/// Most bytes [`crate::Vm::read_file`] and [`crate::Vm::logs`] hold in memory.
pub const MEMORY_LIMIT: u64 = 64 << 20;

/// Trailing bytes read after the end of a tar archive while looking for the guest's `End`.
const TRAILER_LIMIT: u64 = 1 << 20;

/// How [`crate::Vm::get_tree_with`] treats what it unpacks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GetOptions {
    /// Keep the guest's permission bits as they are, setuid, setgid and sticky bits included,
    /// and ignore the umask. Off by default: those bits are dropped and the umask applies.
    pub preserve: bool,
}

/// Why a copy out of the guest failed; it becomes a [`crate::VmError`] with the same message.
#[derive(Debug, thiserror::Error)]
pub enum GetError {
    /// The agent conversation failed.
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// A host-side file operation failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// OS error.
        source: io::Error,
    },
}

/// A copy into memory went over [`MEMORY_LIMIT`].
#[derive(Debug, thiserror::Error)]
#[error("it is larger than {} MiB, the limit for reading into memory; copy it to a file with get_file", limit >> 20)]
pub struct TooLarge {
    /// The limit in bytes.
    pub limit: u64,
}

/// The `Data` frames of the guest's answer, once it has begun.
struct Frames<'a> {
    s: &'a mut dyn Duplex,
    buf: Vec<u8>,
    pos: usize,
    done: bool,
}

impl<'a> Frames<'a> {
    /// Sends `head` and waits for the first frame of the answer: `Data` or `End` begin the
    /// answer, anything else (the guest's `Error`) fails.
    fn begin(mut s: &'a mut dyn Duplex, head: &HostMsg) -> Result<Self, AgentError> {
        write_frame(&mut s, head)?;
        let mut f = Frames {
            s,
            buf: Vec::new(),
            pos: 0,
            done: false,
        };
        f.next_frame()?;
        Ok(f)
    }

    fn next_frame(&mut self) -> Result<(), AgentError> {
        match read_frame::<_, GuestMsg>(&mut self.s)? {
            GuestMsg::Data(b) => {
                self.buf = b;
                self.pos = 0;
            }
            GuestMsg::End => {
                self.buf.clear();
                self.pos = 0;
                self.done = true;
            }
            GuestMsg::Error(e) => return Err(AgentError::Guest(e)),
            m => {
                let got = format!("{m:?}");
                return Err(AgentError::Unexpected {
                    expected: "Data or End",
                    got: got.chars().take(80).collect(),
                });
            }
        }
        Ok(())
    }

    /// The next chunk of data, or `None` after `End`.
    fn chunk(&mut self) -> Result<Option<&[u8]>, AgentError> {
        while self.pos == self.buf.len() {
            if self.done {
                return Ok(None);
            }
            self.next_frame()?;
        }
        let c = &self.buf[self.pos..];
        self.pos = self.buf.len();
        Ok(Some(c))
    }
}

impl Read for Frames<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.buf.len() && !self.done {
            self.next_frame().map_err(io::Error::other)?;
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Sends `head` and collects the answer in memory, failing beyond `limit` bytes.
pub(crate) fn read_capped(
    s: &mut dyn Duplex,
    head: &HostMsg,
    limit: u64,
    what: &str,
) -> Result<Vec<u8>, GetError> {
    let mut frames = Frames::begin(s, head)?;
    let mut out = Vec::new();
    while let Some(c) = frames.chunk()? {
        if out.len() as u64 + c.len() as u64 > limit {
            return Err(GetError::Io {
                what: format!("cannot read {what} into memory"),
                source: io::Error::new(io::ErrorKind::FileTooLarge, TooLarge { limit }),
            });
        }
        out.extend_from_slice(c);
    }
    Ok(out)
}

/// This process's umask, read without changing it (`/proc/self/status`, Linux 4.7+); 022 when
/// it cannot be read.
pub(crate) fn current_umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        .unwrap_or(0o022)
}

/// Asks for the guest file `guest` and writes it to `local`: under an exclusive temporary name
/// in `local`'s directory, created only once the guest answered, renamed into place at the
/// end (mode 0666 less the umask, like a new file), removed on failure.
pub(crate) fn file_to(s: &mut dyn Duplex, guest: &str, local: &Path) -> Result<u64, GetError> {
    let name = local.file_name().ok_or_else(|| GetError::Io {
        what: format!("cannot write {}", local.display()),
        source: io::Error::new(io::ErrorKind::InvalidInput, "the path names no file"),
    })?;
    let dir = match local.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut frames = Frames::begin(s, &HostMsg::GetFile { path: guest.into() })?;
    let (mut f, tmp) =
        state::create_temp_in(dir, &name.to_string_lossy()).map_err(|source| GetError::Io {
            what: format!("cannot create a temporary file in {}", dir.display()),
            source,
        })?;
    let res = (|| {
        let mut total = 0u64;
        let local_err = |source| GetError::Io {
            what: format!("cannot write {}", tmp.display()),
            source,
        };
        while let Some(c) = frames.chunk()? {
            f.write_all(c).map_err(local_err)?;
            total += c.len() as u64;
        }
        f.set_permissions(std::fs::Permissions::from_mode(0o666 & !current_umask()))
            .map_err(local_err)?;
        std::fs::rename(&tmp, local).map_err(|source| GetError::Io {
            what: format!("cannot write {}", local.display()),
            source,
        })?;
        Ok(total)
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

/// The topmost directory of `p` that does not exist yet (what creating `p` would create).
fn first_missing(p: &Path) -> Option<PathBuf> {
    let mut missing = None;
    let mut cur = Some(p);
    while let Some(c) = cur.filter(|c| !c.as_os_str().is_empty()) {
        if c.symlink_metadata().is_ok() {
            break;
        }
        missing = Some(c.to_path_buf());
        cur = c.parent();
    }
    missing
}

/// Asks for the guest directory `guest` as a tar stream and unpacks it into `local`, created
/// once the guest answered. On failure, whatever this call created is removed when `local` did
/// not exist before; an existing `local` keeps what was unpacked up to the failure.
pub(crate) fn tree_to(
    s: &mut dyn Duplex,
    guest: &str,
    local: &Path,
    opts: GetOptions,
) -> Result<(), GetError> {
    let frames = Frames::begin(s, &HostMsg::GetTree { path: guest.into() })?;
    let created = first_missing(local);
    let res = (|| {
        std::fs::create_dir_all(local).map_err(|source| GetError::Io {
            what: format!("cannot create {}", local.display()),
            source,
        })?;
        unpack(frames, local, opts).map_err(|source| GetError::Io {
            what: format!("cannot unpack into {}", local.display()),
            source,
        })
    })();
    if res.is_err() {
        if let Some(top) = created {
            let _ = std::fs::remove_dir_all(top);
        }
    }
    res
}

fn unpack(mut frames: Frames<'_>, local: &Path, opts: GetOptions) -> io::Result<()> {
    let dst = local.canonicalize()?;
    {
        let mut ar = tar::Archive::new(&mut frames);
        ar.set_overwrite(true);
        ar.set_preserve_permissions(opts.preserve);
        ar.set_preserve_ownerships(false);
        ar.set_unpack_xattrs(false);
        if !opts.preserve {
            ar.set_mask(current_umask());
        }
        // Directories last (deepest first), so a read-only one does not stop its contents.
        let mut dirs = Vec::new();
        for entry in ar.entries()? {
            let mut e = entry?;
            match e.header().entry_type() {
                tar::EntryType::Directory => dirs.push(e),
                tar::EntryType::Regular
                | tar::EntryType::Continuous
                | tar::EntryType::Symlink
                | tar::EntryType::Link => {
                    e.unpack_in(&dst)?;
                }
                // Device nodes, fifos and unknown kinds (which the tar crate would write as
                // regular files) have no business on the host.
                other => tracing::warn!(
                    "skipped {} from the guest: entry type {other:?} is not copied",
                    String::from_utf8_lossy(&e.path_bytes())
                ),
            }
        }
        dirs.sort_by(|a, b| b.path_bytes().cmp(&a.path_bytes()));
        for mut d in dirs {
            d.unpack_in(&dst)?;
        }
    }
    // The guest ends its answer with `End`; an `Error` after the archive is a failure.
    let mut rest = (&mut frames).take(TRAILER_LIMIT);
    io::copy(&mut rest, &mut io::sink())?;
    if !frames.done {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the guest sent more than {TRAILER_LIMIT} bytes after the archive"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    use std::os::unix::net::UnixStream;

    /// A fake guest: answers one request with `frames` and checks the request kind.
    fn guest(frames: Vec<GuestMsg>) -> (UnixStream, std::thread::JoinHandle<HostMsg>) {
        let (h, mut g) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            let req: HostMsg = read_frame(&mut g).unwrap();
            for f in frames {
                if write_frame(&mut g, &f).is_err() {
                    break;
                }
            }
            req
        });
        (h, t)
    }

    fn data(bytes: &[u8]) -> Vec<GuestMsg> {
        let mut v: Vec<GuestMsg> = bytes
            .chunks(1000)
            .map(|c| GuestMsg::Data(c.to_vec()))
            .collect();
        v.push(GuestMsg::End);
        v
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_file_lands_under_its_name_and_nothing_else_is_left() {
        let d = tempfile::tempdir().unwrap();
        let body: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        let (mut h, t) = guest(data(&body));
        let local = d.path().join("out.bin");
        assert_eq!(file_to(&mut h, "/x", &local).unwrap(), 5000);
        assert!(matches!(t.join().unwrap(), HostMsg::GetFile { path } if path == "/x"));
        assert_eq!(std::fs::read(&local).unwrap(), body);
        assert_eq!(entries(d.path()), ["out.bin"]);
        let mode = std::fs::metadata(&local).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o666 & !current_umask());
    }

    #[test]
    fn a_refused_file_creates_nothing_and_a_cut_one_leaves_nothing() {
        let d = tempfile::tempdir().unwrap();
        let local = d.path().join("out");
        let (mut h, _t) = guest(vec![GuestMsg::Error("is a directory".into())]);
        let e = file_to(&mut h, "/etc", &local).unwrap_err();
        assert!(crate::error_chain(&e).contains("is a directory"), "{e:?}");
        assert!(entries(d.path()).is_empty());
        // The guest dies mid-file.
        let (mut h, t) = guest(vec![GuestMsg::Data(vec![1; 100])]);
        assert!(file_to(&mut h, "/x", &local).is_err());
        t.join().unwrap();
        assert!(entries(d.path()).is_empty(), "{:?}", entries(d.path()));
    }

    #[test]
    fn a_planted_symlink_at_the_old_temporary_name_is_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        std::os::unix::fs::symlink(&victim, d.path().join("out.minke-part")).unwrap();
        let (mut h, _t) = guest(data(b"new"));
        file_to(&mut h, "/x", &d.path().join("out")).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert_eq!(std::fs::read(d.path().join("out")).unwrap(), b"new");
    }

    #[test]
    fn memory_reads_are_capped() {
        let (mut h, _t) = guest(data(&[7; 5000]));
        let e =
            read_capped(&mut h, &HostMsg::GetFile { path: "/x".into() }, 4096, "x").unwrap_err();
        assert!(crate::error_chain(&e).contains("get_file"), "{e:?}");
        let (mut h, _t) = guest(data(&[7; 4096]));
        let v = read_capped(&mut h, &HostMsg::GetFile { path: "/x".into() }, 4096, "x").unwrap();
        assert_eq!(v.len(), 4096);
    }

    fn header(path: &str, kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_mtime(0);
        // Names are written raw: `append_data` would refuse `..` before the test could send it.
        h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_cksum();
        h
    }

    fn hostile_tar(outside: &Path) -> Vec<u8> {
        use tar::EntryType as T;
        let mut link = header("out", T::Symlink, 0o777, 0);
        link.set_link_name(outside).unwrap();
        link.set_cksum();
        let entries: [(tar::Header, &[u8]); 10] = [
            (header("./", T::Directory, 0o755, 0), b""),
            (header("ro", T::Directory, 0o555, 0), b""),
            (header("ro/f", T::Regular, 0o644, 18), b"in a read-only dir"),
            (header("suid", T::Regular, 0o4777, 1), b"x"),
            (header("sticky", T::Directory, 0o1777, 0), b""),
            (header("../escape", T::Regular, 0o644, 1), b"x"),
            (header("dev", T::Char, 0o666, 0), b""),
            (header("fifo", T::Fifo, 0o666, 0), b""),
            (link, b""),
            (header("out/pwned", T::Regular, 0o644, 1), b"x"),
        ];
        let mut b = tar::Builder::new(Vec::new());
        for (h, body) in entries {
            b.append(&h, body).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn a_hostile_tree_stays_inside_and_loses_special_bits() {
        let d = tempfile::tempdir().unwrap();
        let outside = d.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let local = d.path().join("a/b");
        let (mut h, _t) = guest(data(&hostile_tar(&outside)));
        let e = tree_to(&mut h, "/t", &local, GetOptions::default()).unwrap_err();
        assert!(crate::error_chain(&e).contains("outside"), "{e:?}");
        assert!(
            entries(&outside).is_empty(),
            "nothing written through the symlink"
        );
        assert!(!d.path().join("escape").exists());
        assert!(
            !d.path().join("a").exists(),
            "a failed get removes what it made"
        );

        // Without the escaping entry the rest unpacks, minus devices and special bits.
        let mut tar = hostile_tar(&outside);
        let cut = tar.len() - 1024 - 1024; // the last entry (header + 1 block) and the end
        tar.truncate(cut);
        tar.extend_from_slice(&[0; 1024]);
        let (mut h, _t) = guest(data(&tar));
        tree_to(&mut h, "/t", &local, GetOptions::default()).unwrap();
        assert_eq!(
            entries(&local),
            ["out", "ro", "sticky", "suid"],
            "no device, no fifo, no escape"
        );
        let mode = |p: &str| std::fs::symlink_metadata(local.join(p)).unwrap().mode() & 0o7777;
        let um = current_umask();
        assert_eq!(mode("suid"), 0o777 & !um);
        assert_eq!(mode("sticky"), 0o777 & !um);
        assert_eq!(mode("ro"), 0o555 & !um);
        assert_eq!(
            std::fs::read(local.join("ro/f")).unwrap(),
            b"in a read-only dir"
        );
        assert!(std::fs::symlink_metadata(local.join("out"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert!(!std::fs::symlink_metadata(local.join("suid"))
            .unwrap()
            .file_type()
            .is_fifo());

        // Asked for, the guest's modes are kept as they are.
        let kept = d.path().join("kept");
        let (mut h, _t) = guest(data(&tar));
        tree_to(&mut h, "/t", &kept, GetOptions { preserve: true }).unwrap();
        let mode = |p: &str| std::fs::symlink_metadata(kept.join(p)).unwrap().mode() & 0o7777;
        assert_eq!(mode("suid"), 0o4777);
        assert_eq!(mode("sticky"), 0o1777);
        for p in [&local, &kept] {
            std::fs::set_permissions(p.join("ro"), std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }

    #[test]
    fn a_refused_tree_creates_no_directory() {
        let d = tempfile::tempdir().unwrap();
        let local = d.path().join("new");
        let (mut h, _t) = guest(vec![GuestMsg::Error("not a directory".into())]);
        let e = tree_to(&mut h, "/etc/passwd", &local, GetOptions::default()).unwrap_err();
        assert!(crate::error_chain(&e).contains("not a directory"), "{e:?}");
        assert!(entries(d.path()).is_empty());
    }

    #[test]
    fn an_existing_file_is_replaced_not_written_through() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        let local = d.path().join("t");
        std::fs::create_dir(&local).unwrap();
        std::os::unix::fs::symlink(&victim, local.join("f")).unwrap();
        let mut b = tar::Builder::new(Vec::new());
        b.append(&header("f", tar::EntryType::Regular, 0o644, 3), &b"new"[..])
            .unwrap();
        let (mut h, _t) = guest(data(&b.into_inner().unwrap()));
        tree_to(&mut h, "/t", &local, GetOptions::default()).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert_eq!(std::fs::read(local.join("f")).unwrap(), b"new");
        assert!(!std::fs::symlink_metadata(local.join("f"))
            .unwrap()
            .file_type()
            .is_symlink());
    }
}
