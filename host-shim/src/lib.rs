//! minke's host shim: boots an image under QEMU, connects to its agents over vsock (or
//! virtio-serial), and exposes one `Vm` API used by `minke run` and by tests.
