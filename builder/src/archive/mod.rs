//! From files to initrd bytes: the in-memory [`tree`] every source fills, the newc [`cpio`]
//! format, and the parallel, deterministic [`compress`]ion of the archive.

pub mod compress;
pub mod cpio;
pub mod tree;
