//! Helpers shared by the file transfer tests: a put or a get through a whole control
//! conversation, tar streams with raw (even hostile) entry names, symlinks as a guest user
//! would plant them.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

use minke_protocol::wire::{read_frame, write_frame};
use minke_protocol::{GuestMsg, HostMsg};

use crate::control::tests::{connect, read_data, test_ctx};

/// Sends `first` then `data` as `Data`… `End` on a fresh connection; returns the reply.
pub(super) fn put(dir: &Path, first: HostMsg, data: &[u8]) -> GuestMsg {
    let mut host = connect(Arc::new(test_ctx(dir, Arc::default())));
    write_frame(&mut host, &first).unwrap();
    for c in data.chunks(minke_protocol::wire::MAX_CHUNK) {
        write_frame(&mut host, &HostMsg::Data(c.to_vec())).unwrap();
    }
    write_frame(&mut host, &HostMsg::End).unwrap();
    read_frame(&mut host).unwrap()
}

/// (name, type, contents, mode, link target)
pub(super) type TarEntry<'a> = (&'a str, tar::EntryType, &'a [u8], u32, Option<&'a str>);

/// A tar stream of `entries`, their names written raw into the headers.
pub(super) fn tar_of(entries: &[TarEntry<'_>]) -> Vec<u8> {
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

/// Sends a request and reads the reply of a get (`Data`… `End`, or the error).
pub(super) fn get(dir: &Path, req: HostMsg) -> Result<Vec<u8>, String> {
    let mut host = connect(Arc::new(test_ctx(dir, Arc::default())));
    write_frame(&mut host, &req).unwrap();
    read_data(&mut host)
}

/// A symlink `at -> target` as an unprivileged user (uid 1000) would plant it.
pub(super) fn plant(target: &Path, at: &Path) {
    std::os::unix::fs::symlink(target, at).unwrap();
    std::os::unix::fs::lchown(at, Some(1000), Some(1000)).unwrap();
    assert_eq!(fs::symlink_metadata(at).unwrap().uid(), 1000);
}

/// `p` as the string a request carries.
pub(super) fn s(p: &Path) -> String {
    p.display().to_string()
}
