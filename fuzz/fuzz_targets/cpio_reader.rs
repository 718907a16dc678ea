//! Fuzz target: the newc reader used by `minke inspect`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| minke::fuzzing::cpio_reader(data));
