//! End-to-end suites for rt live in `tests/`; benchmarks in `bench/`.
//! This library holds what several suites share beyond `rt-testsupport`:
//! building an OCI image archive from busybox-static.

pub mod containerd;
pub mod guest_kernel;
pub mod guest_qemu;
pub mod helpers;
pub mod image;
pub mod net;
pub mod podman;
pub mod suite;
