//! `cargo xtask`: the project's only script language (setup, test, demo, bench, fuzz).
fn main() {}
