//! Fuzz target: reading a kernel's configuration — IKCONFIG found in a bzImage (setup header,
//! payload decompression) or a vmlinux, `.config` text, and requirement fragments.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = minke::kconfig::ikconfig(data);
    let text = String::from_utf8_lossy(data);
    let _ = minke::kconfig::KernelConfig::parse(&text);
    let _ = minke::kconfig::parse_fragment(std::path::Path::new("fuzz.config"), &text);
});
