//! Fuzz target: the ELF dependency resolver on a mutated binary inside an empty root.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

/// One root for the whole fuzzing process. Statics are never dropped, so this one directory
/// (holding a single file) stays in the temporary directory after the run.
static ROOT: OnceLock<tempfile::TempDir> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let root = ROOT.get_or_init(|| tempfile::tempdir().expect("a temporary directory"));
    minke::fuzzing::elf_resolver_in(root.path(), data)
});
