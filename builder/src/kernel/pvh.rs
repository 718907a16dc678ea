//! A bzImage's kernel as an ELF that QEMU can enter directly (the PVH boot protocol).
//!
//! A bzImage starts in real mode, and its decompressor then inflates the kernel: under TCG that
//! is about a third of a second of every boot of Debian's cloud kernel on `microvm`, before the
//! kernel runs one instruction. The compressed payload inside the bzImage is the kernel's own
//! ELF (`vmlinux`, stripped); when that ELF carries the PVH entry note (`CONFIG_PVH`, which
//! Debian's x86_64 kernels and the kernels built from kernel-config/ have), QEMU loads its
//! segments and jumps to that entry itself. [`cached`] unpacks it once per kernel (by content)
//! into the cache, for the shim to boot on `microvm`; the image on disk keeps its bzImage,
//! which UEFI firmware and the release formats need.

use std::path::{Path, PathBuf};

use goblin::elf::Elf;

use crate::kernel::kconfig;
use crate::layer::{sha256_file, write_atomic, Cache};

/// `XEN_ELFNOTE_PHYS32_ENTRY`: the 32-bit physical entry point of the PVH boot protocol.
const PVH_ENTRY_NOTE: u32 = 18;

/// The ELF kernel inside `image` when it is a bzImage whose kernel has a PVH entry point;
/// `Ok(None)` for any other kernel (a vmlinux already, an arm64 Image, a kernel without PVH).
pub fn elf_of_bzimage(image: &[u8]) -> Result<Option<Vec<u8>>, String> {
    if image.get(0x202..0x206) != Some(b"HdrS") {
        return Ok(None);
    }
    let payload = kconfig::bzimage_payload(image)?;
    let elf = kconfig::decompress_payload(payload)?;
    Ok(has_pvh_entry(&elf).then_some(elf))
}

/// Whether `elf` is an ELF whose notes name a PVH entry point.
pub fn has_pvh_entry(elf: &[u8]) -> bool {
    let Ok(parsed) = Elf::parse_header(elf) else {
        return false;
    };
    if parsed.e_machine != goblin::elf::header::EM_X86_64 {
        return false;
    }
    let Ok(e) = Elf::parse(elf) else {
        return false;
    };
    let Some(notes) = e.iter_note_headers(elf) else {
        return false;
    };
    notes
        .flatten()
        .any(|n| n.name == "Xen" && n.n_type == PVH_ENTRY_NOTE)
}

/// The PVH ELF of the bzImage at `kernel`, unpacked once into `cache` (`pvh/SHA256`, named by
/// the bzImage's digest) and reused; `Ok(None)` when the kernel has none (see
/// [`elf_of_bzimage`]).
pub fn cached(kernel: &Path, cache: &Cache) -> Result<Option<PathBuf>, String> {
    let sha = sha256_file(kernel).map_err(|e| format!("{}: {e}", kernel.display()))?;
    let dir = cache.dir("pvh");
    let out = dir.join(&sha);
    let none = dir.join(format!("{sha}.none"));
    if out.is_file() {
        return Ok(Some(out));
    }
    if none.is_file() {
        return Ok(None);
    }
    let image = std::fs::read(kernel).map_err(|e| format!("{}: {e}", kernel.display()))?;
    let (path, bytes) = match elf_of_bzimage(&image)? {
        Some(elf) => (out.clone(), elf),
        // Remembered, so that the next boot does not decompress the kernel again to find out.
        None => (none, Vec::new()),
    };
    write_atomic(&path, &bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((path == out).then_some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal x86_64 ELF with one PT_NOTE segment holding `note_name`/`note_type`.
    fn elf_with_note(note_name: &[u8], note_type: u32) -> Vec<u8> {
        let mut note = Vec::new();
        note.extend_from_slice(&(note_name.len() as u32).to_le_bytes());
        note.extend_from_slice(&4u32.to_le_bytes());
        note.extend_from_slice(&note_type.to_le_bytes());
        note.extend_from_slice(note_name);
        while note.len() % 4 != 0 {
            note.push(0);
        }
        note.extend_from_slice(&0x0100_0000u32.to_le_bytes());
        let phoff = 64u64;
        let note_off = phoff + 56;
        let mut e = vec![0u8; 64];
        e[..4].copy_from_slice(b"\x7fELF");
        e[4] = 2; // 64-bit
        e[5] = 1; // little-endian
        e[6] = 1;
        e[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        e[18..20].copy_from_slice(&goblin::elf::header::EM_X86_64.to_le_bytes());
        e[20..24].copy_from_slice(&1u32.to_le_bytes());
        e[32..40].copy_from_slice(&phoff.to_le_bytes());
        e[52..54].copy_from_slice(&64u16.to_le_bytes());
        e[54..56].copy_from_slice(&56u16.to_le_bytes());
        e[56..58].copy_from_slice(&1u16.to_le_bytes());
        let mut ph = vec![0u8; 56];
        ph[..4].copy_from_slice(&4u32.to_le_bytes()); // PT_NOTE
        ph[8..16].copy_from_slice(&note_off.to_le_bytes());
        ph[32..40].copy_from_slice(&(note.len() as u64).to_le_bytes());
        ph[40..48].copy_from_slice(&(note.len() as u64).to_le_bytes());
        ph[48..56].copy_from_slice(&4u64.to_le_bytes());
        e.extend(ph);
        e.extend(note);
        e
    }

    #[test]
    fn the_pvh_entry_note_is_recognised_and_nothing_else() {
        assert!(has_pvh_entry(&elf_with_note(b"Xen\0", PVH_ENTRY_NOTE)));
        assert!(!has_pvh_entry(&elf_with_note(b"Xen\0", 5)));
        assert!(!has_pvh_entry(&elf_with_note(b"GNU\0", PVH_ENTRY_NOTE)));
        assert!(!has_pvh_entry(b"not an elf"));
        assert!(!has_pvh_entry(&[]));
    }

    #[test]
    fn only_a_bzimage_is_unpacked() {
        assert_eq!(
            elf_of_bzimage(&elf_with_note(b"Xen\0", PVH_ENTRY_NOTE)),
            Ok(None)
        );
        assert_eq!(elf_of_bzimage(b"MZ arm64 Image"), Ok(None));
        let mut truncated = vec![0u8; 0x300];
        truncated[0x202..0x206].copy_from_slice(b"HdrS");
        truncated[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        assert!(
            elf_of_bzimage(&truncated).is_err(),
            "a broken bzImage is an error"
        );
    }

    #[test]
    fn a_kernel_without_pvh_is_remembered_as_such() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::at(dir.path().join("cache"));
        let k = dir.path().join("vmlinux");
        std::fs::write(&k, elf_with_note(b"Xen\0", PVH_ENTRY_NOTE)).unwrap();
        assert_eq!(cached(&k, &cache), Ok(None), "a vmlinux is booted as it is");
        assert_eq!(cached(&k, &cache), Ok(None));
        let marks: Vec<_> = std::fs::read_dir(cache.dir("pvh")).unwrap().collect();
        assert_eq!(marks.len(), 1);
    }
}
