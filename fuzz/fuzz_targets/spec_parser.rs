//! Fuzz target: spec YAML parsing and validation.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| minke::fuzzing::spec_parser(data));
