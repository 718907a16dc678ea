//! A crate whose tests run inside a minke guest through cargo's runner setting (see
//! `.cargo/config.toml`): they read a fixture from the crate's directory, which minke shares
//! with the guest, and check that they really run in a guest.

/// Counts the words of `text`.
pub fn words(text: &str) -> usize {
    text.split_whitespace().count()
}
