//! Host directories shared with a guest: checked before QEMU starts, served by one virtiofsd
//! per share (virtio-fs) or by QEMU itself (9p), and listed for the guest's PID1 in a firmware
//! config file ([`minke_protocol::shares`]), which mounts them before anything runs.
//!
//! What the guest may do through a share is decided on the host: a read-only share is
//! refused writes by virtiofsd (`--readonly`) or QEMU (`readonly=on`), whatever the guest
//! mounts; every guest uid and gid is squashed to the host user's, so whatever the guest
//! creates belongs to the user who runs the VM; virtiofsd drops `CAP_MKNOD`, so a guest
//! cannot leave device nodes on the host; and it runs in its own namespaces, so no path
//! leads out of the shared directory.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use minke_protocol::shares::{self as contract, Share, ShareKind, MAX_SHARES};

use crate::binaries::{self, NotFound, Tool};
use crate::config::{ShareBackend, ShareSpec};
use crate::process::Guarded;
pub use crate::state::Planned;
use crate::state::{self, files, StateError};

/// How long virtiofsd may take to listen.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

/// Why shares could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    /// The host directory cannot be used.
    #[error("cannot share {}", host.display())]
    Host {
        /// As given.
        host: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The host path is not a directory.
    #[error("cannot share {}: it is not a directory (share its directory instead)", host.display())]
    NotDir {
        /// As given.
        host: PathBuf,
    },
    /// The guest path cannot be used.
    #[error("cannot share {}: {why}", host.display())]
    Guest {
        /// As given.
        host: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// Too many shares.
    #[error("{0} shares asked for; a VM can have at most {MAX_SHARES}")]
    TooMany(usize),
    /// Two shares at one guest path.
    #[error("{guest} is the guest path of two shares")]
    Twice {
        /// The guest path.
        guest: String,
    },
    /// virtio-fs was asked for and virtiofsd is missing.
    #[error(transparent)]
    Tool(#[from] NotFound),
    /// The guest cannot mount this kind of share.
    #[error("{0}")]
    Unsupported(String),
    /// The guest did not mount a share.
    #[error("the guest did not mount {} at {guest}; console log tail:\n{console}", host.display())]
    NotMounted {
        /// The guest path.
        guest: String,
        /// The host directory.
        host: PathBuf,
        /// The end of the console log, which says why.
        console: String,
    },
    /// A state file could not be written.
    #[error(transparent)]
    State(#[from] StateError),
    /// virtiofsd could not be started.
    #[error("cannot start {bin}")]
    Spawn {
        /// The program.
        bin: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// virtiofsd did not listen in time, or exited.
    #[error("virtiofsd for {} did not come up within {timeout:?}; it said:\n{log}", host.display())]
    Startup {
        /// The shared directory.
        host: PathBuf,
        /// The limit.
        timeout: Duration,
        /// The end of its log.
        log: String,
    },
}

/// Checks `specs` (host directories exist, guest paths absolute and distinct) and picks how
/// they travel; nothing is started. Every error names the offending path.
pub fn plan(
    specs: &[ShareSpec],
    backend: ShareBackend,
    guest_kinds: Option<&[ShareKind]>,
) -> Result<Vec<Planned>, ShareError> {
    if specs.is_empty() {
        return Ok(Vec::new());
    }
    if specs.len() > MAX_SHARES {
        return Err(ShareError::TooMany(specs.len()));
    }
    let kind = kind_for(backend, guest_kinds)?;
    let mut out: Vec<Planned> = Vec::with_capacity(specs.len());
    for (i, s) in specs.iter().enumerate() {
        let host = std::fs::canonicalize(&s.host).map_err(|source| ShareError::Host {
            host: s.host.clone(),
            source,
        })?;
        if !host.is_dir() {
            return Err(ShareError::NotDir {
                host: s.host.clone(),
            });
        }
        let guest = match &s.guest {
            Some(g) => g.clone(),
            None => host
                .to_str()
                .map(str::to_owned)
                .ok_or_else(|| ShareError::Guest {
                    host: s.host.clone(),
                    why: "its path is not UTF-8: give a guest path".into(),
                })?,
        };
        contract::check_guest_path(&guest).map_err(|why| ShareError::Guest {
            host: s.host.clone(),
            why,
        })?;
        if out.iter().any(|p| p.share.path == guest) {
            return Err(ShareError::Twice { guest });
        }
        out.push(Planned {
            host,
            share: Share {
                tag: contract::tag(i),
                path: guest,
                readonly: s.readonly,
                kind,
            },
        });
    }
    Ok(out)
}

/// virtio-fs when virtiofsd is there (or asked for) and the guest can mount it, else 9p
/// where the guest can mount that.
fn kind_for(
    backend: ShareBackend,
    guest_kinds: Option<&[ShareKind]>,
) -> Result<ShareKind, ShareError> {
    let guest_can = |k: ShareKind| guest_kinds.is_none_or(|g| g.contains(&k));
    let cannot = |k: ShareKind| {
        ShareError::Unsupported(match guest_kinds {
            Some([]) => "the image cannot mount shares (its spec says `allow_shares: false`, or \
                         its kernel has neither virtio-fs nor 9p)"
                .to_owned(),
            _ => format!(
                "the image's kernel cannot mount {} shares{}",
                k.name(),
                if k == ShareKind::NineP {
                    " (Debian's cloud kernel has no 9p): install virtiofsd, or boot a kernel \
                     with 9p"
                } else {
                    ""
                }
            ),
        })
    };
    match backend {
        ShareBackend::Virtiofs => {
            if !guest_can(ShareKind::Virtiofs) {
                return Err(cannot(ShareKind::Virtiofs));
            }
            binaries::find(Tool::Virtiofsd)?;
            Ok(ShareKind::Virtiofs)
        }
        ShareBackend::NineP if guest_can(ShareKind::NineP) => Ok(ShareKind::NineP),
        ShareBackend::NineP => Err(cannot(ShareKind::NineP)),
        ShareBackend::Auto => {
            let missing = if guest_can(ShareKind::Virtiofs) {
                match binaries::find(Tool::Virtiofsd) {
                    Ok(_) => return Ok(ShareKind::Virtiofs),
                    Err(e) => Some(e),
                }
            } else {
                None
            };
            if !guest_can(ShareKind::NineP) {
                return Err(match missing {
                    Some(e) => ShareError::Tool(e),
                    None => cannot(ShareKind::Virtiofs),
                });
            }
            if let Some(e) = missing {
                tracing::warn!("{e}; sharing over 9p instead");
            }
            Ok(ShareKind::NineP)
        }
    }
}

/// Writes the list the guest's PID1 reads (mode 0600, handed to QEMU by file).
pub(crate) fn write_list(state: &Path, planned: &[Planned]) -> Result<(), ShareError> {
    let list: Vec<Share> = planned.iter().map(|p| p.share.clone()).collect();
    state::write_private(&state.join(files::SHARES), &contract::encode(&list))?;
    Ok(())
}

/// The vhost-user socket of share `index`.
pub fn socket(state: &Path, index: usize) -> PathBuf {
    state.join(format!("{}{index}.sock", files::FS_PREFIX))
}

/// This process's uid and gid, which every guest id is squashed to.
fn host_ids() -> (u32, u32) {
    (
        rustix::process::getuid().as_raw(),
        rustix::process::getgid().as_raw(),
    )
}

/// virtiofsd's arguments for share `index`.
pub(crate) fn virtiofsd_args(state: &Path, index: usize, p: &Planned) -> Vec<String> {
    let (uid, gid) = host_ids();
    let mut a = vec![
        format!("--socket-path={}", socket(state, index).display()),
        format!("--shared-dir={}", p.host.display()),
        "--cache=auto".to_owned(),
        // No device nodes on the host, whoever the guest is.
        "--modcaps=-mknod".to_owned(),
    ];
    // Inside virtiofsd's namespaces it is uid 0; without root on the host that namespace maps
    // 0 to the user, so guest ids are squashed to 0 there and to the user's ids on disk.
    let (ns_uid, ns_gid) = if uid == 0 {
        (0, gid)
    } else {
        a.push(format!("--uid-map=:0:{uid}:1:"));
        a.push(format!("--gid-map=:0:{gid}:1:"));
        (0, 0)
    };
    a.push(format!(
        "--translate-uid=squash-guest:0:{ns_uid}:4294967295"
    ));
    a.push(format!(
        "--translate-gid=squash-guest:0:{ns_gid}:4294967295"
    ));
    a.push(format!("--translate-uid=host:{ns_uid}:0:1"));
    a.push(format!("--translate-gid=host:{ns_gid}:0:1"));
    if p.share.readonly {
        a.push("--readonly".to_owned());
    }
    a
}

/// Starts virtiofsd for every virtio-fs share and waits until each listens.
pub(crate) fn start_daemons(state: &Path, planned: &[Planned]) -> Result<Vec<Guarded>, ShareError> {
    let mut out = Vec::new();
    for (i, p) in planned.iter().enumerate() {
        if p.share.kind != ShareKind::Virtiofs {
            continue;
        }
        out.push(start_virtiofsd(state, i, p)?);
    }
    Ok(out)
}

fn start_virtiofsd(state: &Path, index: usize, p: &Planned) -> Result<Guarded, ShareError> {
    let bin = binaries::find(Tool::Virtiofsd)?;
    let sock = socket(state, index);
    state::check_socket_path(state, &format!("{}{index}.sock", files::FS_PREFIX))?;
    let _ = std::fs::remove_file(&sock);
    let log_path = state.join(format!("{}{index}.log", files::FS_PREFIX));
    let log = state::create_private(&log_path)?;
    let log2 = log.try_clone().map_err(|source| ShareError::Spawn {
        bin: bin.clone(),
        source,
    })?;
    let mut cmd = Command::new(&bin);
    cmd.args(virtiofsd_args(state, index, p))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    let mut child = Guarded::spawn(cmd).map_err(|source| ShareError::Spawn {
        bin: bin.clone(),
        source,
    })?;
    let end = Instant::now() + STARTUP_TIMEOUT;
    let mut step = Duration::from_millis(1);
    while !sock.exists() {
        if child.try_wait().is_some() || Instant::now() > end {
            return Err(ShareError::Startup {
                host: p.host.clone(),
                timeout: STARTUP_TIMEOUT,
                log: state::tail(&log_path, 10),
            });
        }
        std::thread::sleep(step);
        step = (step * 2).min(Duration::from_millis(10));
    }
    Ok(child)
}

/// QEMU's arguments for the shares: a vhost-user-fs device per virtio-fs share, a 9p device
/// per 9p share, and the list for the guest as a firmware config file.
pub(crate) fn qemu_args(
    state: &Path,
    machine: crate::state::UsedMachine,
    planned: &[Planned],
) -> Vec<String> {
    let mut a = Vec::new();
    if planned.is_empty() {
        return a;
    }
    let comma = |p: &Path| p.display().to_string().replace(',', ",,");
    for (i, p) in planned.iter().enumerate() {
        match p.share.kind {
            ShareKind::Virtiofs => {
                a.push("-chardev".into());
                a.push(format!("socket,id=fs{i},path={}", comma(&socket(state, i))));
                a.push("-device".into());
                a.push(format!(
                    "{},chardev=fs{i},tag={}",
                    machine.virtio("vhost-user-fs"),
                    p.share.tag
                ));
            }
            ShareKind::NineP => {
                a.push("-fsdev".into());
                a.push(format!(
                    "local,id=fs{i},path={},security_model=mapped-xattr{}",
                    comma(&p.host),
                    if p.share.readonly { ",readonly=on" } else { "" }
                ));
                a.push("-device".into());
                a.push(format!(
                    "{},fsdev=fs{i},mount_tag={}",
                    machine.virtio("virtio-9p"),
                    p.share.tag
                ));
            }
        }
    }
    a.push("-fw_cfg".into());
    a.push(format!(
        "name={},file={}",
        contract::FW_CFG_NAME,
        comma(&state.join(files::SHARES))
    ));
    a
}

/// Whether QEMU's memory must be shareable with another process (virtio-fs needs it).
pub(crate) fn needs_shared_memory(planned: &[Planned]) -> bool {
    planned.iter().any(|p| p.share.kind == ShareKind::Virtiofs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(host: &Path, guest: Option<&str>, ro: bool) -> ShareSpec {
        ShareSpec {
            host: host.to_path_buf(),
            guest: guest.map(str::to_owned),
            readonly: ro,
        }
    }

    #[test]
    fn plans_check_every_path_before_anything_starts() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        let missing = d.path().join("missing");
        let e = plan(&[spec(&missing, None, false)], ShareBackend::NineP, None).unwrap_err();
        assert!(e.to_string().contains(&*missing.to_string_lossy()), "{e}");
        let e = plan(&[spec(&file, None, false)], ShareBackend::NineP, None).unwrap_err();
        assert!(e.to_string().contains("not a directory"), "{e}");
        let e = plan(
            &[spec(d.path(), Some("rel"), false)],
            ShareBackend::NineP,
            None,
        )
        .unwrap_err();
        assert!(e.to_string().contains("not absolute"), "{e}");
        let e = plan(
            &[
                spec(d.path(), Some("/x"), false),
                spec(d.path(), Some("/x"), true),
            ],
            ShareBackend::NineP,
            None,
        )
        .unwrap_err();
        assert!(e.to_string().contains("two shares"), "{e}");
        let ok = plan(
            &[
                spec(d.path(), None, false),
                spec(d.path(), Some("/in"), true),
            ],
            ShareBackend::NineP,
            None,
        )
        .unwrap();
        let e = plan(
            &[spec(d.path(), None, false)],
            ShareBackend::NineP,
            Some(&[ShareKind::Virtiofs]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("cannot mount 9p"), "{e}");
        let e = plan(
            &[spec(d.path(), None, false)],
            ShareBackend::Auto,
            Some(&[]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("allow_shares"), "{e}");
        let canon = std::fs::canonicalize(d.path()).unwrap();
        assert_eq!(ok[0].share.path, canon.to_str().unwrap());
        assert_eq!(ok[1].share.tag, "minke1");
        assert!(ok[1].share.readonly);
    }

    #[test]
    fn share_arguments_parse() {
        let s = ShareSpec::parse("/a:/b:ro").unwrap();
        assert_eq!(
            (s.host.to_str(), s.guest.as_deref(), s.readonly),
            (Some("/a"), Some("/b"), true)
        );
        let s = ShareSpec::parse("/a").unwrap();
        assert_eq!((s.guest, s.readonly), (None, false));
        let s = ShareSpec::parse("/a:rw").unwrap();
        assert_eq!((s.guest, s.readonly), (None, false));
        assert!(ShareSpec::parse("/a:/b:/c").is_err());
        assert!(ShareSpec::parse(":/b").is_err());
    }

    #[test]
    fn qemu_lines_for_each_kind() {
        let st = Path::new("/st");
        let p = |kind, ro| Planned {
            host: PathBuf::from("/h,1"),
            share: Share {
                tag: contract::tag(0),
                path: "/g".into(),
                readonly: ro,
                kind,
            },
        };
        let v = qemu_args(
            st,
            crate::state::UsedMachine::Q35,
            &[p(ShareKind::Virtiofs, false)],
        )
        .join(" ");
        assert!(v.contains("-chardev socket,id=fs0,path=/st/fs0.sock -device vhost-user-fs-pci,chardev=fs0,tag=minke0"), "{v}");
        assert!(
            v.contains("-fw_cfg name=opt/minke/shares,file=/st/shares"),
            "{v}"
        );
        let m = qemu_args(
            st,
            crate::state::UsedMachine::Microvm,
            &[p(ShareKind::Virtiofs, false)],
        )
        .join(" ");
        assert!(
            m.contains("-device vhost-user-fs-device,chardev=fs0,tag=minke0"),
            "{m}"
        );
        let n = qemu_args(
            st,
            crate::state::UsedMachine::Q35,
            &[p(ShareKind::NineP, true)],
        )
        .join(" ");
        assert!(n.contains("-fsdev local,id=fs0,path=/h,,1,security_model=mapped-xattr,readonly=on -device virtio-9p-pci,fsdev=fs0,mount_tag=minke0"), "{n}");
        let a = virtiofsd_args(st, 0, &p(ShareKind::Virtiofs, true));
        assert!(a.contains(&"--readonly".to_owned()), "{a:?}");
        assert!(a.contains(&"--modcaps=-mknod".to_owned()), "{a:?}");
        assert!(
            a.iter()
                .any(|x| x.starts_with("--translate-uid=squash-guest:0:")),
            "{a:?}"
        );
    }
}
