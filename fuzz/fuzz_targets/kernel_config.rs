//! Fuzz target: reading a kernel's configuration — IKCONFIG found in a bzImage (setup header,
//! payload decompression) or a vmlinux, `.config` text, and requirement fragments.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| minke::fuzzing::kernel_config(data));
