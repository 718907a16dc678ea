//! The kernel an image boots: its config checked against the `kernel-config/` fragments
//! ([`kconfig`]), a kernel built from those fragments ([`kbuild`]), and the closure of the
//! modules the image needs, in load order ([`kmod`]).

pub mod kbuild;
pub mod kconfig;
pub mod kmod;
