//! A bzImage's kernel as an ELF that QEMU can enter directly (the PVH boot protocol).
//!
//! A bzImage starts in real mode, and its decompressor then inflates the kernel: under TCG that
//! is about 0.4 s of every boot of Debian's cloud kernel on `microvm`, before the kernel runs
//! one instruction. The compressed payload inside the bzImage is the kernel's own ELF
//! (`vmlinux`, stripped); when that ELF carries the PVH entry note (`CONFIG_PVH`, which
//! Debian's x86_64 kernels have), QEMU loads its segments and jumps to that entry itself.
//! [`cached`] unpacks it once per kernel (by content) into the cache, for the shim to boot on
//! `microvm`; the image on disk keeps its bzImage, which UEFI firmware and the release formats
//! need. (Images of kernels built from kernel-config/ already hold the vmlinux itself.)

use std::io::Read;
use std::path::{Path, PathBuf};

use goblin::elf::program_header::PT_LOAD;
use goblin::elf::Elf;

use crate::kernel::kconfig;
use crate::layer::{sha256_hex, write_atomic, Cache};

/// `XEN_ELFNOTE_PHYS32_ENTRY`: the 32-bit physical entry point of the PVH boot protocol.
const PVH_ENTRY_NOTE: u32 = 18;
/// Names the cache entries; a new unpacker that could decide differently gets a new one.
const CACHE_KEY_VERSION: &str = "pvh-v1";

/// Whether `image` starts like a bzImage (the setup header's `HdrS` magic).
pub fn is_bzimage(image: &[u8]) -> bool {
    image.get(0x202..0x206) == Some(b"HdrS")
}

/// The ELF kernel inside `image` when it is a bzImage whose kernel has a PVH entry point;
/// `Ok(None)` for any other kernel: not a bzImage (a vmlinux already, an arm64 Image), a payload
/// compression this reader lacks, a kernel without PVH. An error is a bzImage that is broken:
/// a payload outside the file, or one that does not decompress into a whole ELF.
pub fn elf_of_bzimage(image: &[u8]) -> Result<Option<Vec<u8>>, String> {
    if !is_bzimage(image) {
        return Ok(None);
    }
    let payload = kconfig::bzimage_payload(image)?;
    if !kconfig::known_payload_compression(payload) {
        return Ok(None);
    }
    let elf = kconfig::decompress_payload(payload)?;
    if !has_pvh_entry(&elf) {
        return Ok(None);
    }
    if !segments_within(&elf) {
        return Err("its decompressed kernel is cut short (a segment lies past its end)".into());
    }
    Ok(Some(elf))
}

/// Whether `elf` is an x86_64 ELF whose notes name a PVH entry point.
pub fn has_pvh_entry(elf: &[u8]) -> bool {
    let Ok(header) = Elf::parse_header(elf) else {
        return false;
    };
    if header.e_machine != goblin::elf::header::EM_X86_64 {
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

/// Whether every loadable segment of `elf` lies within its bytes: a truncated decompression
/// is never booted.
fn segments_within(elf: &[u8]) -> bool {
    let Ok(e) = Elf::parse(elf) else {
        return false;
    };
    e.program_headers
        .iter()
        .filter(|ph| ph.p_type == PT_LOAD)
        .all(|ph| {
            ph.p_offset
                .checked_add(ph.p_filesz)
                .is_some_and(|end| end <= elf.len() as u64)
        })
}

/// The PVH ELF of the bzImage at `kernel`, unpacked once into `cache` (`pvh/KEY`, KEY derived
/// from the bzImage's digest) and reused; `Ok(None)` when the kernel has none (see
/// [`elf_of_bzimage`]), which is remembered too (`pvh/KEY.none`). With `sha256`, the digest an
/// image's manifest records for the file, a boot that finds its entry reads no more than the
/// file's first bytes; an unpack checks the file against it. The kernel is read once: the
/// digest and the unpacked ELF are of the same bytes.
pub fn cached(
    kernel: &Path,
    sha256: Option<&str>,
    cache: &Cache,
) -> Result<Option<PathBuf>, String> {
    let at = |e: std::io::Error| format!("{}: {e}", kernel.display());
    let mut head = [0u8; 0x206];
    let mut f = std::fs::File::open(kernel).map_err(at)?;
    if f.read_exact(&mut head).is_err() || !is_bzimage(&head) {
        return Ok(None);
    }
    let found = |sha: &str| {
        let out = entry(sha, cache);
        if out.is_file() {
            Some(Some(out))
        } else if out.with_extension("none").is_file() {
            Some(None)
        } else {
            None
        }
    };
    if let Some(known) = sha256.and_then(found) {
        return Ok(known);
    }
    let image = std::fs::read(kernel).map_err(at)?;
    let sha = sha256_hex(&image);
    if let Some(want) = sha256.filter(|w| *w != sha) {
        return Err(format!(
            "{} is not the kernel its image names (sha256 {sha}, the manifest says {want}): \
             rebuild the image",
            kernel.display()
        ));
    }
    if let Some(known) = found(&sha) {
        return Ok(known);
    }
    let out = entry(&sha, cache);
    let (path, bytes) = match elf_of_bzimage(&image) {
        Ok(Some(elf)) => (out.clone(), elf),
        // Remembered, so that the next boot does not decompress the kernel again to find out.
        Ok(None) => (out.with_extension("none"), Vec::new()),
        Err(why) => return Err(format!("{}: {why}", kernel.display())),
    };
    write_atomic(&path, &bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((path == out).then_some(out))
}

/// The cache entry of the bzImage whose sha256 is `sha`.
fn entry(sha: &str, cache: &Cache) -> PathBuf {
    cache
        .dir("pvh")
        .join(sha256_hex(format!("{CACHE_KEY_VERSION} {sha}").as_bytes()))
}

/// Where [`cached`] keeps the ELF of the bzImage whose bytes are `image` (for tests).
pub fn cache_path(image: &[u8], cache: &Cache) -> PathBuf {
    entry(&sha256_hex(image), cache)
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
    fn a_broken_bzimage_is_an_error_and_a_remembered_verdict_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::at(dir.path().join("cache"));
        let k = dir.path().join("bzImage");
        let mut broken = vec![0u8; 0x300];
        broken[0x202..0x206].copy_from_slice(b"HdrS");
        broken[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        std::fs::write(&k, &broken).unwrap();
        assert!(
            cached(&k, None, &cache).is_err(),
            "a broken bzImage is not booted"
        );
        // A verdict already in the cache is what the next boot goes by.
        let none = cache_path(&broken, &cache).with_extension("none");
        write_atomic(&none, b"").unwrap();
        assert_eq!(cached(&k, None, &cache), Ok(None));
        // Not a bzImage at all: nothing to unpack, nothing written.
        let v = dir.path().join("vmlinux");
        std::fs::write(&v, elf_with_note(b"Xen\0", PVH_ENTRY_NOTE)).unwrap();
        assert_eq!(cached(&v, None, &cache), Ok(None));
        assert_eq!(std::fs::read_dir(cache.dir("pvh")).unwrap().count(), 1);
        // A file that is not the one the manifest names is not unpacked under its name.
        let other = "0".repeat(64);
        let e = cached(&k, Some(&other), &cache).unwrap_err();
        assert!(e.contains("rebuild the image"), "{e}");
        let sha = sha256_hex(&broken);
        assert_eq!(
            cached(&k, Some(&sha), &cache),
            Ok(None),
            "found by the manifest's digest"
        );
    }

    #[test]
    fn a_truncated_kernel_is_refused() {
        let whole = elf_with_note(b"Xen\0", PVH_ENTRY_NOTE);
        assert!(segments_within(&whole));
        let mut elf = whole.clone();
        // A loadable segment reaching past the end of the file.
        let ph = 64;
        elf[ph..ph + 4].copy_from_slice(&PT_LOAD.to_le_bytes());
        elf[ph + 32..ph + 40].copy_from_slice(&(1u64 << 20).to_le_bytes());
        assert!(!segments_within(&elf));
    }
}
