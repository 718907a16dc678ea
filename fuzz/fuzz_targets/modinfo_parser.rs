//! Fuzz target: .modinfo extraction from (mutated) kernel modules and its parser.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| minke::fuzzing::modinfo_parser(data));
