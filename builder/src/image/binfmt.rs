//! The binfmt_misc table: which QEMU user emulator runs which foreign ELF binaries.
//!
//! An entry matches the first 20 bytes of an ELF header: `\x7fELF`, class (1 = 32-bit,
//! 2 = 64-bit), data (1 = little, 2 = big endian), version 1, OS ABI (ignored, or partly
//! ignored), padding, `e_type` (the mask's `\xfe` lets ET_EXEC = 2 and ET_DYN = 3 both match)
//! and `e_machine`. The builder turns each `binfmt:` name of a spec into a resolved
//! [`Binfmt`] registration for the guest's binfmt agent, after checking with goblin that the
//! emulator in the image is a static executable for the guest's own architecture. The table
//! is the same for every guest; what runs natively depends on the guest ([`native`]).

use goblin::elf::header::{EM_X86_64, ET_DYN, ET_EXEC};
use minke_protocol::arch::Arch as Guest;
use minke_protocol::config::Binfmt;

use crate::archive::tree::{NodeKind, Tree};

/// One row of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arch {
    /// Name used in specs and by QEMU (`aarch64`).
    pub name: &'static str,
    /// ELF class: 1 (32-bit) or 2 (64-bit).
    pub class: u8,
    /// ELF data: 1 (little endian) or 2 (big endian).
    pub data: u8,
    /// `e_machine`.
    pub machine: u16,
    /// Mask applied to the OS ABI byte (0x00 = any).
    pub osabi_mask: u8,
    /// Mask of the two `e_machine` bytes, in file order (QEMU's ppc64le entry ignores the
    /// high byte).
    pub machine_mask: [u8; 2],
}

/// Architectures a guest can run through QEMU user emulation when they are not its own.
pub const TABLE: &[Arch] = &[
    Arch {
        name: "x86_64",
        class: 2,
        data: 1,
        machine: EM_X86_64,
        osabi_mask: 0x00,
        machine_mask: [0xff, 0xff],
    },
    Arch {
        name: "aarch64",
        class: 2,
        data: 1,
        machine: 183,
        osabi_mask: 0x00,
        machine_mask: [0xff, 0xff],
    },
    Arch {
        name: "aarch64_be",
        class: 2,
        data: 2,
        machine: 183,
        osabi_mask: 0x00,
        machine_mask: [0xff, 0xff],
    },
    Arch {
        name: "arm",
        class: 1,
        data: 1,
        machine: 40,
        osabi_mask: 0x00,
        machine_mask: [0xff, 0xff],
    },
    Arch {
        name: "armeb",
        class: 1,
        data: 2,
        machine: 40,
        osabi_mask: 0x00,
        machine_mask: [0xff, 0xff],
    },
    Arch {
        name: "ppc",
        class: 1,
        data: 2,
        machine: 20,
        osabi_mask: 0xfc,
        machine_mask: [0xff, 0xff],
    },
    Arch {
        name: "ppc64",
        class: 2,
        data: 2,
        machine: 21,
        osabi_mask: 0xfc,
        machine_mask: [0xff, 0xff],
    },
    Arch {
        name: "ppc64le",
        class: 2,
        data: 1,
        machine: 21,
        osabi_mask: 0xfc,
        machine_mask: [0xff, 0x00],
    },
    Arch {
        name: "riscv32",
        class: 1,
        data: 1,
        machine: 243,
        osabi_mask: 0x00,
        machine_mask: [0xff, 0xff],
    },
    Arch {
        name: "riscv64",
        class: 2,
        data: 1,
        machine: 243,
        osabi_mask: 0x00,
        machine_mask: [0xff, 0xff],
    },
    Arch {
        name: "s390x",
        class: 2,
        data: 2,
        machine: 22,
        osabi_mask: 0xfc,
        machine_mask: [0xff, 0xff],
    },
    Arch {
        name: "m68k",
        class: 1,
        data: 2,
        machine: 4,
        osabi_mask: 0x00,
        machine_mask: [0xff, 0xff],
    },
    Arch {
        name: "sparc64",
        class: 2,
        data: 2,
        machine: 43,
        osabi_mask: 0xfc,
        machine_mask: [0xff, 0xff],
    },
];

/// Architectures a guest of `guest` runs natively: never registered.
pub fn native(guest: Guest) -> &'static [&'static str] {
    match guest {
        Guest::X86_64 => &["x86_64", "i386", "i486", "i586", "i686"],
        Guest::Aarch64 => &["aarch64"],
    }
}

/// Looks an architecture up by name.
pub fn arch(name: &str) -> Option<&'static Arch> {
    TABLE.iter().find(|a| a.name == name)
}

/// Magic and mask for a row.
pub fn magic_mask(a: &Arch) -> (Vec<u8>, Vec<u8>) {
    let mut magic = vec![0x7f, b'E', b'L', b'F', a.class, a.data, 1, 0];
    magic.extend_from_slice(&[0; 8]);
    let mut mask = vec![0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, a.osabi_mask];
    if a.machine == EM_X86_64 {
        // QEMU's (and Debian's) x86_64 entry leaves the low bit of data and version free.
        mask[5] = 0xfe;
        mask[6] = 0xfe;
    }
    mask.extend_from_slice(&[0xff; 8]);
    let (etype, emask, mach) = if a.data == 1 {
        (ET_EXEC.to_le_bytes(), [0xfe, 0xff], a.machine.to_le_bytes())
    } else {
        (ET_EXEC.to_be_bytes(), [0xff, 0xfe], a.machine.to_be_bytes())
    };
    debug_assert_eq!(ET_EXEC | 1, ET_DYN);
    magic.extend_from_slice(&etype);
    mask.extend_from_slice(&emask);
    magic.extend_from_slice(&mach);
    mask.extend_from_slice(&a.machine_mask);
    (magic, mask)
}

/// Path of the emulator for `arch` in the image.
pub fn interpreter(arch: &str) -> String {
    format!("/usr/bin/qemu-{arch}-static")
}

/// The registration for `name` in a guest of `guest`, or `None` for an unknown or native
/// architecture.
pub fn entry(name: &str, guest: Guest) -> Option<Binfmt> {
    if native(guest).contains(&name) {
        return None;
    }
    let a = arch(name)?;
    let (magic, mask) = magic_mask(a);
    Some(Binfmt {
        name: format!("qemu-{name}"),
        interpreter: interpreter(name),
        magic,
        mask,
        flags: "F".into(),
    })
}

/// Checks a spec's `binfmt:` name against the table and the image's files, for a guest of
/// `guest`.
pub fn check(name: &str, tree: &Tree, guest: Guest) -> Result<(), String> {
    if native(guest).contains(&name) {
        return Err(format!("binfmt: {name} is the guest's own architecture and runs natively; remove it from the spec"));
    }
    if arch(name).is_none() {
        let known: Vec<&str> = TABLE.iter().map(|a| a.name).collect();
        return Err(format!(
            "binfmt: unknown architecture {name:?}; known: {}",
            known.join(", ")
        ));
    }
    let interp = interpreter(name);
    let node = tree.get(&interp).ok_or_else(|| {
        format!("binfmt: {name} needs {interp} in the image: add the qemu-user-static package (with that emulator in its include list)")
    })?;
    let NodeKind::File(data) = &node.kind else {
        return Err(format!("binfmt: {interp} must be a regular file (binfmt_misc's F flag opens it at registration)"));
    };
    let bytes = data
        .read()
        .map_err(|e| format!("binfmt: reading {interp}: {e}"))?;
    let elf = goblin::elf::Elf::parse(&bytes)
        .map_err(|e| format!("binfmt: {interp} is not an ELF file: {e}"))?;
    if elf.header.e_machine != guest.elf_machine() {
        return Err(format!(
            "binfmt: {interp} is built for e_machine {}, not the guest's {guest}: use the \
             {} build of Debian's qemu-user-static",
            elf.header.e_machine,
            guest.debian()
        ));
    }
    if elf.interpreter.is_some() || !elf.libraries.is_empty() {
        return Err(format!("binfmt: {interp} is dynamically linked; use Debian's qemu-user-static (static) emulators"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unescape(s: &str) -> Vec<u8> {
        s.split("\\x")
            .filter(|p| !p.is_empty())
            .map(|h| u8::from_str_radix(h, 16).unwrap())
            .collect()
    }

    /// Debian's qemu-user-static ships the reference strings in /usr/share/binfmts.
    #[test]
    fn table_agrees_with_debian_binfmts() {
        let mut checked = 0;
        for a in TABLE {
            let Ok(text) = std::fs::read_to_string(format!("/usr/share/binfmts/qemu-{}", a.name))
            else {
                continue;
            };
            let field = |k: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(k))
                    .map(|v| unescape(v.trim()))
            };
            let (magic, mask) = magic_mask(a);
            assert_eq!(Some(magic), field("magic "), "magic of {}", a.name);
            assert_eq!(Some(mask), field("mask "), "mask of {}", a.name);
            checked += 1;
        }
        if checked == 0 {
            eprintln!("skipped: /usr/share/binfmts/qemu-* not installed (apt-get install qemu-user-static)");
        }
    }

    #[test]
    fn native_and_unknown_are_refused() {
        assert!(entry("x86_64", Guest::X86_64).is_none());
        assert!(check("x86_64", &Tree::new(), Guest::X86_64)
            .unwrap_err()
            .contains("natively"));
        assert!(check("vax", &Tree::new(), Guest::X86_64)
            .unwrap_err()
            .contains("unknown"));
        assert!(check("aarch64", &Tree::new(), Guest::X86_64)
            .unwrap_err()
            .contains("qemu-user-static"));
        // Seen from an arm64 guest, the natives swap.
        assert!(entry("aarch64", Guest::Aarch64).is_none());
        let x86 = entry("x86_64", Guest::Aarch64).unwrap();
        assert_eq!(x86.interpreter, "/usr/bin/qemu-x86_64-static");
        assert_eq!(&x86.magic[18..20], &[62, 0]);
        assert!(check("aarch64", &Tree::new(), Guest::Aarch64)
            .unwrap_err()
            .contains("natively"));
    }

    #[test]
    fn dynamic_interpreter_is_refused() {
        let mut t = Tree::new();
        let sh = std::fs::read("/bin/sh").unwrap();
        t.insert(
            &interpreter("aarch64"),
            crate::archive::tree::Node::file(0o755, sh),
        )
        .unwrap();
        assert!(check("aarch64", &t, Guest::X86_64)
            .unwrap_err()
            .contains("dynamically linked"));
        // The host's static busybox is no emulator an arm64 guest can run.
        let mut t = Tree::new();
        let bb = std::fs::read("/bin/busybox").unwrap();
        t.insert(
            &interpreter("x86_64"),
            crate::archive::tree::Node::file(0o755, bb),
        )
        .unwrap();
        assert!(check("x86_64", &t, Guest::Aarch64)
            .unwrap_err()
            .contains("not the guest's aarch64"));
    }
}
