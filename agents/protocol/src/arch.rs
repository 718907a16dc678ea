//! The guest architectures minke builds and boots, and what each means to every side: its
//! names in Rust, Debian and QEMU, the ELF machine of its binaries, its console, the kernel
//! package and command line an image gets when its spec names none.

use serde::{Deserialize, Serialize};

/// A guest architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Arch {
    /// 64-bit x86 (`x86_64`, Debian's `amd64`).
    X86_64,
    /// 64-bit Arm (`aarch64`, Debian's `arm64`).
    Aarch64,
}

impl Arch {
    /// Every architecture, in the order messages list them.
    pub const ALL: [Arch; 2] = [Arch::X86_64, Arch::Aarch64];

    /// The architecture named `s` as the kernel and Rust name it (`x86_64`, `aarch64`), or as
    /// Debian does (`amd64`, `arm64`).
    pub fn parse(s: &str) -> Option<Arch> {
        match s {
            "x86_64" | "amd64" => Some(Arch::X86_64),
            "aarch64" | "arm64" => Some(Arch::Aarch64),
            _ => None,
        }
    }

    /// The host's own architecture, when minke knows it.
    pub fn host() -> Option<Arch> {
        Arch::parse(std::env::consts::ARCH)
    }

    /// Its kernel name (`uname -m`), which specs and manifests use.
    pub fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }

    /// Debian's name for it.
    pub fn debian(self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Aarch64 => "arm64",
        }
    }

    /// The Rust target the in-guest binary is built for.
    pub fn rust_target(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-unknown-linux-gnu",
            Arch::Aarch64 => "aarch64-unknown-linux-gnu",
        }
    }

    /// The QEMU system emulator that runs it.
    pub fn qemu_system(self) -> &'static str {
        match self {
            Arch::X86_64 => "qemu-system-x86_64",
            Arch::Aarch64 => "qemu-system-aarch64",
        }
    }

    /// The ELF `e_machine` of its binaries.
    pub fn elf_machine(self) -> u16 {
        match self {
            Arch::X86_64 => 62,
            Arch::Aarch64 => 183,
        }
    }

    /// The serial console device the kernel writes to.
    pub fn console(self) -> &'static str {
        match self {
            Arch::X86_64 => "ttyS0",
            Arch::Aarch64 => "ttyAMA0",
        }
    }

    /// The kernel command line an image gets when its spec gives none.
    pub fn default_cmdline(self) -> &'static str {
        match self {
            Arch::X86_64 => crate::DEFAULT_CMDLINE,
            Arch::Aarch64 => "console=ttyAMA0 quiet panic=-1 cryptomgr.notests",
        }
    }

    /// Debian's cloud kernel meta-package for it.
    pub fn default_kernel_package(self) -> &'static str {
        match self {
            Arch::X86_64 => "linux-image-cloud-amd64",
            Arch::Aarch64 => "linux-image-cloud-arm64",
        }
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for a in Arch::ALL {
            assert_eq!(Arch::parse(a.name()), Some(a));
            assert_eq!(Arch::parse(a.debian()), Some(a));
            assert!(a.default_cmdline().contains(a.console()));
        }
        assert_eq!(Arch::parse("s390x"), None);
    }
}
