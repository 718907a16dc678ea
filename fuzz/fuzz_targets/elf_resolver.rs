//! Fuzz target: the ELF dependency resolver on a mutated binary inside an empty root.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| minke::fuzzing::elf_resolver(data));
