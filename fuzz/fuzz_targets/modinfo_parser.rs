//! Fuzz target: .modinfo extraction from (mutated) kernel modules and its parser.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = minke::kmod::parse_modinfo(data);
    if let Ok(Some(section)) = minke::kmod::modinfo_section(data) {
        let _ = minke::kmod::parse_modinfo(section);
    }
});
