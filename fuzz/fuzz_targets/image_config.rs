//! Fuzz target: the guest's image config decoder (`/etc/minke/image.cfg`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| minke::fuzzing::image_config(data));
