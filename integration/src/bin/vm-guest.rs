//! Installs the microVM backend's guest assets (`integration/vm/install-guest`):
//! Debian's cloud kernel into `$RT_VM_DIR/kernel` (default /var/lib/rt/vm),
//! rt's own guest kernel built from Debian's linux-source beside it (see
//! `rt_integration::guest_kernel`; containers prefer it), rt's own QEMU
//! built from Debian's qemu source package (`rt_integration::guest_qemu`;
//! rt prefers it to Debian's), and the accelerator probe's answer for each on this host (KVM only if a test
//! boot under it works). A second run reuses all of it. Containers never
//! download, build or probe at create.

use std::time::Duration;

use anyhow::Context;

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let assets = rt_vm::guest::dir();
    let cloud = rt_vm::guest::install_kernel(&assets).context("installing the guest kernel")?;
    let own =
        rt_integration::guest_kernel::install(&assets).context("building rt's guest kernel")?;
    // Before the probe, which boots with the QEMU rt will run.
    match rt_integration::guest_qemu::install(&assets).context("building rt's QEMU")? {
        Some(qemu) => println!("QEMU {}", qemu.display()),
        None => println!("QEMU: Debian's"),
    }
    let busybox = rt_testsupport::busybox();
    for kernel in std::iter::once(cloud).chain(own) {
        let accel = rt_vm::qemu::probe_accel(&kernel, &busybox, &assets, Duration::from_secs(30))?;
        println!(
            "guest kernel {} in {}, accelerator {accel:?}",
            kernel.version,
            assets.display()
        );
    }
    Ok(())
}
