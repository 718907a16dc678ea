//! Finding the host programs the shim runs, with errors that say how to install them.

use std::path::{Path, PathBuf};

/// A required host program is missing.
#[derive(Debug, thiserror::Error)]
#[error("{name} not found in PATH{extra}: install it with `{install}`")]
pub struct NotFound {
    /// Program name.
    pub name: String,
    /// Install command.
    pub install: &'static str,
    extra: &'static str,
}

/// A host program the shim uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    /// `qemu-system-<host arch>`.
    QemuSystem,
    /// The QEMU system emulator of a guest architecture.
    QemuSystemFor(minke_protocol::arch::Arch),
    /// `qemu-img`.
    QemuImg,
    /// `vhost-device-vsock` (rust-vmm).
    VhostDeviceVsock,
    /// `mke2fs`.
    Mke2fs,
    /// `e2fsck`.
    E2fsck,
    /// `virtiofsd` (rust-vmm's virtio-fs daemon).
    Virtiofsd,
    /// `passt` (user-mode networking).
    Passt,
}

impl Tool {
    /// The executable name.
    pub fn name(self) -> &'static str {
        match self {
            Tool::QemuSystem => qemu_system_name(),
            Tool::QemuSystemFor(a) => a.qemu_system(),
            Tool::QemuImg => "qemu-img",
            Tool::VhostDeviceVsock => "vhost-device-vsock",
            Tool::Mke2fs => "mke2fs",
            Tool::E2fsck => "e2fsck",
            Tool::Virtiofsd => "virtiofsd",
            Tool::Passt => "passt",
        }
    }

    fn install(self) -> &'static str {
        match self {
            Tool::QemuSystem | Tool::QemuSystemFor(minke_protocol::arch::Arch::X86_64) => {
                "apt-get install qemu-system-x86"
            }
            Tool::QemuSystemFor(minke_protocol::arch::Arch::Aarch64) => {
                "apt-get install qemu-system-arm"
            }
            Tool::QemuImg => "apt-get install qemu-utils",
            Tool::VhostDeviceVsock => "cargo install --locked vhost-device-vsock",
            Tool::Mke2fs | Tool::E2fsck => "apt-get install e2fsprogs",
            Tool::Passt => "apt-get install passt",
            Tool::Virtiofsd => {
                "apt-get install libseccomp-dev libcap-ng-dev && cargo install --locked virtiofsd"
            }
        }
    }
}

/// `qemu-system-<arch>` for the host architecture.
pub fn qemu_system_name() -> &'static str {
    match std::env::consts::ARCH {
        "aarch64" => "qemu-system-aarch64",
        _ => "qemu-system-x86_64",
    }
}

/// Finds `tool` in `PATH` (then `~/.cargo/bin` for cargo-installed tools, and the sbin
/// directories for mke2fs and e2fsck, which are often not in a user's `PATH`).
pub fn find(tool: Tool) -> Result<PathBuf, NotFound> {
    let name = tool.name();
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    match tool {
        Tool::VhostDeviceVsock | Tool::Virtiofsd => {
            if let Some(home) = std::env::var_os("CARGO_HOME") {
                dirs.push(PathBuf::from(home).join("bin"));
            }
            if let Some(home) = std::env::var_os("HOME") {
                dirs.push(PathBuf::from(home).join(".cargo/bin"));
            }
        }
        Tool::Mke2fs | Tool::E2fsck => dirs.extend(["/usr/sbin", "/sbin"].map(PathBuf::from)),
        _ => {}
    }
    if tool == Tool::Virtiofsd {
        // Where distributions that package it put it.
        dirs.extend(["/usr/libexec", "/usr/lib/qemu"].map(PathBuf::from));
    }
    dirs.iter()
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
        .ok_or(NotFound {
            name: name.into(),
            install: tool.install(),
            extra: if matches!(tool, Tool::VhostDeviceVsock | Tool::Virtiofsd) {
                " or ~/.cargo/bin"
            } else {
                ""
            },
        })
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_tool_error_says_how_to_install() {
        let e = NotFound {
            name: "qemu-img".into(),
            install: Tool::QemuImg.install(),
            extra: "",
        };
        assert_eq!(
            e.to_string(),
            "qemu-img not found in PATH: install it with `apt-get install qemu-utils`"
        );
    }
}
