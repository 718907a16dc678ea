//! minke's image library: turns a spec into a bit-reproducible kernel + initramfs + manifest.
