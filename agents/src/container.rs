//! Containers: the image's extra root filesystems (`ImageConfig.containers`) an exec can be
//! confined to. This module checks the rootfs and prepares, before any fork, everything the
//! child needs to enter it (see `sys::enter_container` for the namespace and mount steps).
//!
//! A container exec runs in new mount, pid, uts and ipc namespaces with the rootfs as `/`, a
//! fresh `/proc`, a small tmpfs `/dev` holding bind mounts of the agent's null, zero, full,
//! random, urandom and tty nodes plus the usual `/dev/fd` links, and the container's name as
//! hostname. Network, user and cgroup namespaces are shared with the guest.

use std::ffi::CString;
use std::path::Path;

use minke_protocol::config::Container;

use crate::sys::ContainerPlan;

/// Device nodes bind-mounted into a container's `/dev`.
pub const DEV_NODES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

/// Symlinks created in a container's `/dev`: (name, target).
pub const DEV_LINKS: &[(&str, &str)] = &[
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
];

/// Why a container cannot be entered.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// The rootfs is missing or not a directory.
    #[error("rootfs {path} is not a directory: {reason}")]
    Rootfs {
        /// The configured rootfs.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A directory the set-up needs could not be created.
    #[error("cannot create {path}: {source}")]
    Mkdir {
        /// The directory.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A path or name contains a NUL byte.
    #[error("`{0}` contains a NUL byte")]
    Nul(String),
}

fn cstring(s: String) -> Result<CString, ContainerError> {
    CString::new(s.clone()).map_err(|_| ContainerError::Nul(s))
}

/// Prepares entering container `c` with working directory `cwd` (inside the container) and
/// the given ids.
pub(crate) fn plan(
    c: &Container,
    cwd: &str,
    uid: u32,
    gid: u32,
) -> Result<ContainerPlan, ContainerError> {
    let root = Path::new(&c.rootfs)
        .canonicalize()
        .map_err(|e| ContainerError::Rootfs {
            path: c.rootfs.clone(),
            reason: crate::os_msg(&e),
        })?;
    if !root.is_dir() {
        return Err(ContainerError::Rootfs {
            path: c.rootfs.clone(),
            reason: "not a directory".into(),
        });
    }
    for d in ["dev", "proc"] {
        let p = root.join(d);
        if !p.is_dir() {
            std::fs::create_dir(&p).map_err(|source| ContainerError::Mkdir {
                path: p.display().to_string(),
                source,
            })?;
        }
    }
    let root_s = root.to_string_lossy().into_owned();
    let dev = format!("{root_s}/dev");
    let mut dev_nodes = Vec::new();
    for n in DEV_NODES {
        dev_nodes.push((
            cstring(format!("/dev/{n}"))?,
            cstring(format!("{dev}/{n}"))?,
        ));
    }
    let mut dev_links = Vec::new();
    for (n, target) in DEV_LINKS {
        dev_links.push((
            cstring((*target).to_string())?,
            cstring(format!("{dev}/{n}"))?,
        ));
    }
    let mut hostname = c.name.as_bytes().to_vec();
    hostname.truncate(64);
    Ok(ContainerPlan {
        rootfs: cstring(root_s)?,
        dev: cstring(dev)?,
        dev_nodes,
        dev_links,
        hostname,
        cwd: cstring(cwd.to_string())?,
        uid,
        gid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::tests::{connect, test_ctx, tmpdir};
    use minke_protocol::msg::ExecRequest;
    use minke_protocol::wire::{read_frame, write_frame};
    use minke_protocol::{GuestMsg, HostMsg};
    use std::sync::Arc;

    /// A static busybox to build a rootfs from, when this machine has one.
    fn static_busybox() -> Option<std::path::PathBuf> {
        ["/bin/busybox", "/usr/bin/busybox"]
            .iter()
            .map(std::path::PathBuf::from)
            .find(|p| {
                std::process::Command::new("file")
                    .arg("-L")
                    .arg(p)
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).contains("statically linked"))
                    .unwrap_or(false)
            })
    }

    #[test]
    fn missing_rootfs_is_a_clear_error() {
        let c = Container {
            name: "x".into(),
            rootfs: "/no/such/rootfs".into(),
        };
        let e = plan(&c, "/", 0, 0).unwrap_err().to_string();
        assert!(
            e.contains("/no/such/rootfs") && e.contains("no such file"),
            "{e}"
        );
    }

    /// Runs busybox in a container: pid namespace, hostname, /proc and /dev as promised.
    /// Needs root and a static busybox; skipped otherwise.
    #[test]
    fn exec_in_a_busybox_container() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let Some(bb) = static_busybox() else {
            eprintln!("skipped: no static busybox");
            return;
        };
        let dir = tmpdir("ctr");
        let root = dir.join("rootfs");
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::copy(&bb, root.join("bin/busybox")).unwrap();
        for a in ["sh", "hostname", "cat", "ls", "echo", "sleep"] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(a)).unwrap();
        }
        let mut ctx = test_ctx(&dir, Arc::default());
        ctx.containers = vec![Container {
            name: "box".into(),
            rootfs: root.display().to_string(),
        }];
        let ctx = Arc::new(ctx);
        let mut host = connect(Arc::clone(&ctx));
        let script = "echo pid=$$; hostname; ls /proc/1/exe >/dev/null && echo proc; echo hi > /dev/null && echo dev; ls /";
        write_frame(
            &mut host,
            &HostMsg::Exec(ExecRequest {
                argv: vec!["sh".into(), "-c".into(), script.into()],
                container: Some("box".into()),
                ..Default::default()
            }),
        )
        .unwrap();
        let mut out = Vec::new();
        let mut code = None;
        loop {
            match read_frame::<_, GuestMsg>(&mut host) {
                Ok(GuestMsg::Stdout(d)) | Ok(GuestMsg::Stderr(d)) => out.extend(d),
                Ok(GuestMsg::Exit { code: c }) => code = Some(c),
                Ok(GuestMsg::Started { .. }) => {}
                Ok(other) => panic!("{other:?}"),
                Err(_) => break,
            }
        }
        let out = String::from_utf8_lossy(&out);
        assert_eq!(code, Some(0), "{out}");
        assert!(out.starts_with("pid=2\nbox\nproc\ndev\n"), "{out}");
        assert!(out.contains("bin") && !out.contains("tmp"), "{out}");

        // Exit codes and signals through the two waiters.
        let mut host = connect(Arc::clone(&ctx));
        write_frame(
            &mut host,
            &HostMsg::Exec(ExecRequest {
                argv: vec!["sh".into(), "-c".into(), "kill -9 $$".into()],
                container: Some("box".into()),
                ..Default::default()
            }),
        )
        .unwrap();
        let mut code = None;
        while let Ok(m) = read_frame::<_, GuestMsg>(&mut host) {
            if let GuestMsg::Exit { code: c } = m {
                code = Some(c);
            }
        }
        assert_eq!(code, Some(137));

        let mut host = connect(Arc::clone(&ctx));
        write_frame(
            &mut host,
            &HostMsg::Exec(ExecRequest {
                argv: vec!["sleep".into(), "30".into()],
                container: Some("box".into()),
                ..Default::default()
            }),
        )
        .unwrap();
        assert!(matches!(
            read_frame::<_, GuestMsg>(&mut host).unwrap(),
            GuestMsg::Started { .. }
        ));
        std::thread::sleep(std::time::Duration::from_millis(200));
        write_frame(&mut host, &HostMsg::Signal(15)).unwrap();
        let mut code = None;
        while let Ok(m) = read_frame::<_, GuestMsg>(&mut host) {
            if let GuestMsg::Exit { code: c } = m {
                code = Some(c);
            }
        }
        assert_eq!(code, Some(143));

        let mut host = connect(ctx);
        write_frame(
            &mut host,
            &HostMsg::Exec(ExecRequest {
                argv: vec!["nonexistent".into()],
                container: Some("box".into()),
                ..Default::default()
            }),
        )
        .unwrap();
        match read_frame::<_, GuestMsg>(&mut host).unwrap() {
            GuestMsg::Error(e) => assert!(e.contains("no such file or directory"), "{e}"),
            other => panic!("{other:?}"),
        }
    }
}
