//! Fuzz target: the serial transport's multiplexer decoder, on input split at varying points:
//! it never panics, holds at most one frame, and every frame it accepts round-trips.
#![no_main]

use libfuzzer_sys::fuzz_target;
use minke_protocol::mux::{encode, MuxDecoder, MuxFrame, MAGIC, MAX_MUX_FRAME};

/// A decoder already inside a session (the marker without its padding is enough).
fn in_session() -> MuxDecoder {
    let mut d = MuxDecoder::new();
    d.push(&MAGIC);
    d.push(&encode(&MuxFrame::Hello { version: 0, nonce: 0 }).expect("small frame"));
    assert!(matches!(d.next_frame(), Ok(Some(MuxFrame::Hello { .. }))));
    d
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks the piece size, so the splits vary with the input.
    let Some((piece, data)) = data.split_first() else {
        return;
    };
    let piece = usize::from(*piece % 64) + 1;
    let mut d = MuxDecoder::new();
    for chunk in data.chunks(piece) {
        d.push(chunk);
        loop {
            match d.next_frame() {
                Ok(Some(f)) => {
                    let bytes = encode(&f).expect("a decoded frame encodes");
                    let mut again = in_session();
                    again.push(&bytes);
                    assert_eq!(again.next_frame().ok().flatten(), Some(f));
                }
                Ok(None) => break,
                Err(_) => {}
            }
        }
        assert!(d.buffered() <= 4 + MAX_MUX_FRAME);
    }
});
