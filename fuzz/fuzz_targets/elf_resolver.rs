//! Fuzz target: the ELF dependency resolver on a mutated binary inside an empty root.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(root) = tempfile::tempdir() else { return };
    let bin = root.path().join("bin");
    if std::fs::write(&bin, data).is_err() {
        return;
    }
    let _ = minke::elf::closure(root.path(), &[bin], &minke::elf::Options::default());
});
