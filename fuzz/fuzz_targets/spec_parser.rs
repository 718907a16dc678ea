//! Fuzz target: spec YAML parsing and validation.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = minke::spec::parse(text, "fuzz.yml", std::path::Path::new("/nonexistent"));
    }
});
