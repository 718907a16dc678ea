//! The `minke` command line: parses arguments, calls the image library and the host shim, prints.
fn main() {}
