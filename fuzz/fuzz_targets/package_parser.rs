//! Fuzz target: package.yml parsing.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = minke::package::parse("fuzz", std::path::Path::new("/nonexistent"), text);
    }
});
