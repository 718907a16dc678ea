//! Where an image's files come from: package definitions and the producers that turn each
//! into a tree ([`package`], one file per kind of source), Debian packages ([`deb`], with apt resolutions remembered by
//! [`pins`]), host binaries with their shared-library closure ([`elf`]), host directories
//! ([`hostdir`]) and container images ([`oci`]).

pub mod deb;
pub mod elf;
pub mod hostdir;
pub mod oci;
pub mod package;
