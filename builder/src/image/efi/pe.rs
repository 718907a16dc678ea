//! Adding sections to an EFI PE32+ executable, the way a Unified Kernel Image is made from
//! systemd's EFI stub: goblin reads the stub's headers, and each new section gets a header in
//! the table, its data at the end of the file (file-aligned), and an address after the stub's
//! last section (section-aligned). The image size, the initialized-data size and the checksum
//! are brought up to date; nothing else of the stub changes, so the same stub and the same
//! sections give the same bytes.

use goblin::pe::PE;

/// A PE file that cannot take the sections.
#[derive(Debug, thiserror::Error)]
pub enum PeError {
    /// goblin could not read it.
    #[error("not a PE executable: {0}")]
    Parse(String),
    /// It is not what an EFI stub must be.
    #[error("{0}")]
    Unsuitable(String),
}

const SECTION_HEADER: usize = 40;
/// `IMAGE_SCN_CNT_INITIALIZED_DATA | IMAGE_SCN_MEM_READ`.
const DATA_READ_ONLY: u32 = 0x0000_0040 | 0x4000_0000;

/// Offsets inside the PE32+ optional header.
mod opt {
    pub const MAGIC: usize = 0;
    pub const SIZE_OF_INITIALIZED_DATA: usize = 8;
    pub const SECTION_ALIGNMENT: usize = 32;
    pub const FILE_ALIGNMENT: usize = 36;
    pub const SIZE_OF_IMAGE: usize = 56;
    pub const SIZE_OF_HEADERS: usize = 60;
    pub const CHECKSUM: usize = 64;
    /// The certificate table's entry among the data directories (index 4, 8 bytes each).
    pub const CERTIFICATE_TABLE: usize = 112 + 4 * 8;
    pub const PE32_PLUS: u16 = 0x20b;
}

/// `stub` with `sections` (name, data) added in order.
pub fn add_sections(
    stub: &[u8],
    sections: &[(&str, &[u8])],
    machine: u16,
) -> Result<Vec<u8>, PeError> {
    let pe = PE::parse(stub).map_err(|e| PeError::Parse(e.to_string()))?;
    if !pe.is_64 {
        return Err(PeError::Unsuitable(
            "the EFI stub is not PE32+ (a 64-bit EFI application)".into(),
        ));
    }
    if pe.header.coff_header.machine != machine {
        return Err(PeError::Unsuitable(format!(
            "the EFI stub is for COFF machine {:#x}, not the image's ({machine:#x})",
            pe.header.coff_header.machine
        )));
    }
    if let Some(s) = pe
        .sections
        .iter()
        .find(|s| (s.pointer_to_raw_data as u64 + s.size_of_raw_data as u64) > stub.len() as u64)
    {
        return Err(PeError::Unsuitable(format!(
            "the EFI stub's section {} lies past the end of the file",
            String::from_utf8_lossy(&s.name).trim_end_matches('\0')
        )));
    }
    let pe_off = pe.header.dos_header.pe_pointer as usize;
    let coff = pe_off + 4;
    let opt_off = coff + 20;
    let opt_size = pe.header.coff_header.size_of_optional_header as usize;
    let table = opt_off + opt_size;
    let count = pe.sections.len();
    let mut out = stub.to_vec();
    if u16_at(&out, opt_off + opt::MAGIC)? != opt::PE32_PLUS {
        return Err(PeError::Unsuitable(
            "the optional header is not PE32+".into(),
        ));
    }
    if opt_size >= opt::CERTIFICATE_TABLE + 8
        && u32_at(&out, opt_off + opt::CERTIFICATE_TABLE + 4)? != 0
    {
        return Err(PeError::Unsuitable(
            "the EFI stub is signed; a signature would not cover the added sections: use the \
             unsigned stub (systemd-boot-efi's linuxx64.efi.stub or linuxaa64.efi.stub) and \
             sign the result"
                .into(),
        ));
    }
    let section_align = u32_at(&out, opt_off + opt::SECTION_ALIGNMENT)? as u64;
    let file_align = u32_at(&out, opt_off + opt::FILE_ALIGNMENT)? as u64;
    if !section_align.is_power_of_two() || !file_align.is_power_of_two() {
        return Err(PeError::Unsuitable(
            "the EFI stub's alignments are not powers of two".into(),
        ));
    }
    let size_of_headers = u32_at(&out, opt_off + opt::SIZE_OF_HEADERS)? as usize;
    let first_raw = pe
        .sections
        .iter()
        .filter(|s| s.size_of_raw_data > 0)
        .map(|s| s.pointer_to_raw_data as usize)
        .min()
        .unwrap_or(size_of_headers);
    let room = size_of_headers.min(first_raw);
    let table_end = table + (count + sections.len()) * SECTION_HEADER;
    if table_end > room || table_end > stub.len() {
        return Err(PeError::Unsuitable(format!(
            "the EFI stub has room for {} more section headers, {} are needed",
            room.saturating_sub(table + count * SECTION_HEADER) / SECTION_HEADER,
            sections.len()
        )));
    }
    let mut next_va = pe
        .sections
        .iter()
        .map(|s| s.virtual_address as u64 + (s.virtual_size.max(s.size_of_raw_data)) as u64)
        .max()
        .unwrap_or(0);
    let mut next_raw = pe
        .sections
        .iter()
        .map(|s| s.pointer_to_raw_data as u64 + s.size_of_raw_data as u64)
        .max()
        .unwrap_or(0)
        .max(out.len() as u64);
    let mut initialized = u32_at(&out, opt_off + opt::SIZE_OF_INITIALIZED_DATA)? as u64;
    for (i, (name, data)) in sections.iter().enumerate() {
        if name.len() > 8 || name.is_empty() {
            return Err(PeError::Unsuitable(format!(
                "section name {name:?} must be 1 to 8 bytes"
            )));
        }
        let va = align(next_va, section_align);
        let raw = align(next_raw, file_align);
        let raw_size = align(data.len() as u64, file_align);
        let fits = |v: u64| u32::try_from(v).is_ok();
        if !fits(va + raw_size) || !fits(raw + raw_size) {
            return Err(PeError::Unsuitable(format!(
                "section {name} makes the image larger than 4 GiB"
            )));
        }
        out.resize(raw as usize, 0);
        out.extend_from_slice(data);
        out.resize((raw + raw_size) as usize, 0);
        let mut h = [0u8; SECTION_HEADER];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[8..12].copy_from_slice(&(data.len() as u32).to_le_bytes());
        h[12..16].copy_from_slice(&(va as u32).to_le_bytes());
        h[16..20].copy_from_slice(&(raw_size as u32).to_le_bytes());
        h[20..24].copy_from_slice(&(raw as u32).to_le_bytes());
        h[36..40].copy_from_slice(&DATA_READ_ONLY.to_le_bytes());
        let at = table + (count + i) * SECTION_HEADER;
        out[at..at + SECTION_HEADER].copy_from_slice(&h);
        next_va = va + data.len() as u64;
        next_raw = raw + raw_size;
        initialized += raw_size;
    }
    let n = u16::try_from(count + sections.len())
        .map_err(|_| PeError::Unsuitable("too many sections".into()))?;
    out[coff + 2..coff + 4].copy_from_slice(&n.to_le_bytes());
    let image_size = align(next_va, section_align);
    put_u32(&mut out, opt_off + opt::SIZE_OF_IMAGE, image_size as u32);
    put_u32(
        &mut out,
        opt_off + opt::SIZE_OF_INITIALIZED_DATA,
        initialized.min(u32::MAX as u64) as u32,
    );
    put_u32(&mut out, opt_off + opt::CHECKSUM, 0);
    let sum = checksum(&out, opt_off + opt::CHECKSUM);
    put_u32(&mut out, opt_off + opt::CHECKSUM, sum);
    Ok(out)
}

/// The sections of a PE file by name, with their data (what a test or `minke inspect` reads
/// back).
pub fn sections(file: &[u8]) -> Result<Vec<(String, Vec<u8>)>, PeError> {
    let pe = PE::parse(file).map_err(|e| PeError::Parse(e.to_string()))?;
    let mut out = Vec::new();
    for s in &pe.sections {
        let name = String::from_utf8_lossy(&s.name)
            .trim_end_matches('\0')
            .to_string();
        let start = s.pointer_to_raw_data as usize;
        let len = (s.virtual_size as usize).min(s.size_of_raw_data as usize);
        let data = file
            .get(start..start.saturating_add(len))
            .ok_or_else(|| PeError::Unsuitable(format!("section {name} lies past the end")))?;
        out.push((name, data.to_vec()));
    }
    Ok(out)
}

/// The PE checksum: 16-bit one's-complement-style sum of the file with the checksum field
/// taken as zero, folded, plus the file's length.
fn checksum(file: &[u8], checksum_at: usize) -> u32 {
    let mut sum: u64 = 0;
    for (i, chunk) in file.chunks(2).enumerate() {
        let off = i * 2;
        if off == checksum_at || off == checksum_at + 2 {
            continue;
        }
        let word = chunk[0] as u64 | (chunk.get(1).copied().unwrap_or(0) as u64) << 8;
        sum += word;
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum = (sum & 0xffff) + (sum >> 16);
    (sum as u32).wrapping_add(file.len() as u32)
}

fn align(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

fn u16_at(b: &[u8], at: usize) -> Result<u16, PeError> {
    b.get(at..at + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .ok_or_else(|| PeError::Unsuitable("truncated PE header".into()))
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, PeError> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or_else(|| PeError::Unsuitable("truncated PE header".into()))
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    const X64: u16 = 0x8664;

    /// A minimal PE32+ image: DOS header, COFF, optional header with 16 data directories, one
    /// `.text` section of 0x200 bytes, room for more section headers.
    pub(crate) fn tiny_pe() -> Vec<u8> {
        let mut f = vec![0u8; 0x400];
        f[0] = b'M';
        f[1] = b'Z';
        f[0x3c..0x40].copy_from_slice(&0x80u32.to_le_bytes());
        f[0x80..0x84].copy_from_slice(b"PE\0\0");
        let coff = 0x84;
        f[coff..coff + 2].copy_from_slice(&0x8664u16.to_le_bytes());
        f[coff + 2..coff + 4].copy_from_slice(&1u16.to_le_bytes());
        f[coff + 16..coff + 18].copy_from_slice(&240u16.to_le_bytes());
        f[coff + 18..coff + 20].copy_from_slice(&0x0206u16.to_le_bytes());
        let o = coff + 20;
        f[o..o + 2].copy_from_slice(&0x20bu16.to_le_bytes());
        put_u32(&mut f, o + 16, 0x1000); // entry point
        put_u32(&mut f, o + 32, 0x1000);
        put_u32(&mut f, o + 36, 0x200);
        put_u32(&mut f, o + 56, 0x2000);
        put_u32(&mut f, o + 60, 0x200);
        f[o + 68..o + 70].copy_from_slice(&10u16.to_le_bytes()); // EFI application
        put_u32(&mut f, o + 108, 16);
        let t = o + 240;
        f[t..t + 5].copy_from_slice(b".text");
        put_u32(&mut f, t + 8, 0x10);
        put_u32(&mut f, t + 12, 0x1000);
        put_u32(&mut f, t + 16, 0x200);
        put_u32(&mut f, t + 20, 0x200);
        put_u32(&mut f, t + 36, 0x6000_0020);
        f[0x200] = 0xc3;
        f
    }

    #[test]
    fn sections_are_added_aligned_and_read_back() {
        let stub = tiny_pe();
        let out = add_sections(
            &stub,
            &[(".osrel", b"ID=minke\n"), (".linux", &[7u8; 0x1234])],
            X64,
        )
        .unwrap();
        let s = sections(&out).unwrap();
        let names: Vec<_> = s.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, [".text", ".osrel", ".linux"]);
        assert_eq!(s[1].1, b"ID=minke\n");
        assert_eq!(s[2].1, vec![7u8; 0x1234]);
        let pe = PE::parse(&out).unwrap();
        assert_eq!(pe.sections[1].virtual_address, 0x2000);
        assert_eq!(pe.sections[2].virtual_address, 0x3000);
        assert_eq!(pe.sections[2].pointer_to_raw_data % 0x200, 0);
        let opt = pe.header.optional_header.unwrap();
        assert_eq!(opt.windows_fields.size_of_image, 0x5000);
        assert_eq!(out.len() % 0x200, 0);
        // The checksum is the one the PE rules give, and the stub itself is untouched.
        let at = 0x84 + 20 + opt::CHECKSUM;
        assert_eq!(u32_at(&out, at).unwrap(), checksum(&out, at));
        assert_eq!(&out[..0x80], &stub[..0x80]);
        assert_eq!(
            add_sections(
                &stub,
                &[(".osrel", b"ID=minke\n"), (".linux", &[7u8; 0x1234])],
                X64
            )
            .unwrap(),
            out
        );
    }

    #[test]
    fn unsuitable_stubs_are_refused_with_the_reason() {
        assert!(matches!(
            add_sections(b"not a pe", &[], X64),
            Err(PeError::Parse(_))
        ));
        let stub = tiny_pe();
        let many: Vec<(&str, &[u8])> = (0..40).map(|_| (".x", &b"x"[..])).collect();
        let e = add_sections(&stub, &many, X64).unwrap_err().to_string();
        assert!(e.contains("room for"), "{e}");
        let e = add_sections(&stub, &[(".toolongname", b"")], X64)
            .unwrap_err()
            .to_string();
        assert!(e.contains("1 to 8 bytes"), "{e}");
        // An x86_64 stub for an aarch64 image.
        let e = add_sections(&stub, &[], 0xaa64).unwrap_err().to_string();
        assert!(e.contains("0x8664") && e.contains("0xaa64"), "{e}");
        // A certificate table entry after the sections: WIN_CERTIFICATE of 16 bytes.
        let mut signed = stub.clone();
        let cert_at = signed.len() as u32;
        signed.extend_from_slice(&16u32.to_le_bytes());
        signed.extend_from_slice(&0x0200u16.to_le_bytes());
        signed.extend_from_slice(&0x0002u16.to_le_bytes());
        signed.extend_from_slice(&[0u8; 8]);
        put_u32(&mut signed, 0x84 + 20 + opt::CERTIFICATE_TABLE, cert_at);
        put_u32(&mut signed, 0x84 + 20 + opt::CERTIFICATE_TABLE + 4, 16);
        let e = add_sections(&signed, &[], X64).unwrap_err().to_string();
        assert!(e.contains("signed"), "{e}");
    }
}
