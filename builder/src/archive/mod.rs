//! From files to image bytes: the in-memory [`tree`] every source fills, the newc [`cpio`]
//! format, the parallel, deterministic [`compress`]ion of the archive, and the [`erofs`]
//! filesystem image of a tree for a read-only disk.

pub mod compress;
pub mod cpio;
pub mod erofs;
pub mod tree;
