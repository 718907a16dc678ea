//! Files and directory trees into and out of the guest, and the runtime config sent once the
//! agents are ready.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

use minke_protocol::{HostMsg, RUNTIME_CONFIG_DIR};

use super::{Vm, VmError};
use crate::client;
use crate::getfiles::{self, GetOptions};

impl Vm {
    /// Sends `(name, contents)` files to [`RUNTIME_CONFIG_DIR`] as one tar stream (the
    /// directory is created by the agent).
    pub(super) fn put_runtime_config(&self, files: &[(String, Vec<u8>)]) -> Result<(), VmError> {
        let io = |source| VmError::Io {
            what: "cannot pack the runtime config".into(),
            source,
        };
        let mut b = tar::Builder::new(Vec::new());
        for (name, body) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(body.len() as u64);
            // Secrets may be among them: readable by the guest's root only.
            h.set_mode(0o600);
            h.set_mtime(0);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, name, &body[..]).map_err(io)?;
        }
        let tarball = b.into_inner().map_err(io)?;
        let mut s = self.agent("minke-config")?;
        client::put(
            s.as_mut(),
            HostMsg::PutTree {
                dest: RUNTIME_CONFIG_DIR.into(),
            },
            &mut &tarball[..],
        )?;
        Ok(())
    }

    /// Writes `bytes` to the guest file `guest` (atomically) with permission bits `mode`.
    pub fn put_bytes(&self, bytes: &[u8], guest: &str, mode: u32) -> Result<(), VmError> {
        let mut s = self.agent("minke-cp")?;
        client::put(
            s.as_mut(),
            HostMsg::PutFile {
                path: guest.into(),
                mode,
            },
            &mut &bytes[..],
        )?;
        Ok(())
    }

    /// Copies the host file `local` to the guest path `guest`, keeping its permission bits
    /// (not setuid, setgid or sticky).
    pub fn put_file(&self, local: &Path, guest: &str) -> Result<(), VmError> {
        use std::os::unix::fs::PermissionsExt;
        let io = |source| VmError::Io {
            what: format!("cannot read {}", local.display()),
            source,
        };
        let mut f = File::open(local).map_err(io)?;
        // Permission bits only: a host file setuid to its owner must not become a setuid-root
        // file in the guest.
        let mode = f.metadata().map_err(io)?.permissions().mode() & 0o777;
        let mut s = self.agent("minke-cp")?;
        client::put(
            s.as_mut(),
            HostMsg::PutFile {
                path: guest.into(),
                mode,
            },
            &mut f,
        )?;
        Ok(())
    }

    /// Reads the guest file `guest` into memory; fails beyond
    /// [`getfiles::MEMORY_LIMIT`] (use [`Vm::get_file`] for large files).
    pub fn read_file(&self, guest: &str) -> Result<Vec<u8>, VmError> {
        let mut s = self.agent("minke-cp")?;
        getfiles::read_capped(
            s.as_mut(),
            &HostMsg::GetFile { path: guest.into() },
            getfiles::MEMORY_LIMIT,
            &format!("guest file {guest}"),
        )
        .map_err(VmError::from)
    }

    /// Copies the guest file `guest` to the host path `local`. Nothing is created until the
    /// guest answers; the data goes to a fresh temporary file in `local`'s directory, renamed
    /// into place at the end and removed on failure.
    pub fn get_file(&self, guest: &str, local: &Path) -> Result<u64, VmError> {
        let mut s = self.agent("minke-cp")?;
        getfiles::file_to(s.as_mut(), guest, local).map_err(VmError::from)
    }

    /// Copies the host directory `local` into the guest directory `guest` (as a tar stream).
    pub fn put_tree(&self, local: &Path, guest: &str) -> Result<(), VmError> {
        let (r, w) = rustix::pipe::pipe().map_err(|e| VmError::Io {
            what: "cannot create a pipe".into(),
            source: e.into(),
        })?;
        let (r, w) = (File::from(r), File::from(w));
        let src = local.to_path_buf();
        let packer = std::thread::spawn(move || -> io::Result<()> {
            let mut b = tar::Builder::new(w);
            b.follow_symlinks(false);
            b.mode(tar::HeaderMode::Deterministic);
            b.append_dir_all(".", &src)?;
            b.into_inner()?.flush()
        });
        let mut s = self.agent("minke-cp")?;
        let mut r = r;
        let res = client::put(s.as_mut(), HostMsg::PutTree { dest: guest.into() }, &mut r);
        drop(r);
        let packed = packer
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("tar thread panicked")));
        res?;
        packed.map_err(|source| VmError::Io {
            what: format!("cannot pack {}", local.display()),
            source,
        })
    }

    /// Copies the guest directory `guest` into the host directory `local` (created once the
    /// guest answers, removed again if the copy fails), with [`GetOptions::default`]: setuid,
    /// setgid and sticky bits dropped, the umask applied.
    pub fn get_tree(&self, guest: &str, local: &Path) -> Result<(), VmError> {
        self.get_tree_with(guest, local, GetOptions::default())
    }

    /// [`Vm::get_tree`] with options. Whatever the options, nothing is written outside `local`
    /// and device nodes and fifos are skipped (see [`crate::getfiles`]).
    pub fn get_tree_with(
        &self,
        guest: &str,
        local: &Path,
        opts: GetOptions,
    ) -> Result<(), VmError> {
        let mut s = self.agent("minke-cp")?;
        getfiles::tree_to(s.as_mut(), guest, local, opts).map_err(VmError::from)
    }
}
