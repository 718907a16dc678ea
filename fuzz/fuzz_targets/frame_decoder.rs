//! Fuzz target: the host↔guest frame decoder, both directions, whole and split input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use minke_protocol::wire::{read_frame, FrameDecoder};
use minke_protocol::{GuestMsg, HostMsg};

fuzz_target!(|data: &[u8]| {
    let mut r = data;
    while read_frame::<_, HostMsg>(&mut r).is_ok() {}
    let mut r = data;
    while read_frame::<_, GuestMsg>(&mut r).is_ok() {}
    let mut d = FrameDecoder::default();
    for piece in data.chunks(7) {
        d.push(piece);
        loop {
            match d.next_msg::<GuestMsg>() {
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
    }
});
