//! Builds rt's own QEMU (`integration/vm/install-guest`): Debian's `qemu`
//! source package, the very version of the installed qemu-system-x86 with
//! Debian's patches (`apt-get source`, which checks it against the signed
//! index), configured for one target and only what rt's guests use:
//! the microvm machine, TCG and KVM, vhost-user, and the virtio devices in
//! runtime/vm/qemu/devices.mak. No capstone, TLS, audio, display, USB
//! devices, block formats beyond raw, or other machines. Built without PIE,
//! its read-only data needs no relocation, so it is not copied into each
//! QEMU's private memory at start.
//!
//! Kata Containers ships a QEMU configured the same way for the same
//! reason. Measured here (docs/microvm.md): an idle container's QEMU 14 MB
//! smaller than with Debian's full build, and its boot no slower.
//!
//! The result goes into `$RT_VM_DIR/qemu/rt-qemu-<key>/qemu-system-x86_64`,
//! which `rt_vm::qemu::program` finds. The key hashes the source version,
//! the options, the device list and the patches, so a change builds anew
//! and a second run reuses the build. Without a deb-src entry for Debian's
//! archive (integration/install-deps adds one) nothing is built and rt runs
//! Debian's QEMU.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

use crate::guest_kernel::{apply_patches, run};

/// The source package and the binary package whose version it must match.
const SOURCE: &str = "qemu";
const INSTALLED: &str = "qemu-system-x86";

/// Replaces configs/devices/i386-softmmu/default.mak.
pub const DEVICES: &str = include_str!("../../runtime/vm/qemu/devices.mak");

/// Patches applied after Debian's (`patch -p1`), each explained in its
/// own header.
pub const PATCHES: &[(&str, &str)] = &[
    (
        "microvm-only-madt.patch",
        include_str!("../../runtime/vm/qemu/patches/microvm-only-madt.patch"),
    ),
    (
        "tcg-migration-dirty-tracking.patch",
        include_str!("../../runtime/vm/qemu/patches/tcg-migration-dirty-tracking.patch"),
    ),
];

/// `configure`'s options. `--firmwarepath` is Debian's, so the microvm
/// machine finds its qboot firmware in qemu-system-data.
pub const CONFIGURE: &[&str] = &[
    "--target-list=x86_64-softmmu",
    "--without-default-features",
    "--without-default-devices",
    "--enable-tcg",
    "--enable-kvm",
    "--enable-vhost-user",
    "--enable-fdt=system",
    // QEMU's RCU thread hands freed heap back to the host (Debian's build
    // has it on too): without it an idle container's heap kept 10 MB
    // instead of 4 MB, what the boot allocated and freed.
    "--enable-malloc-trim",
    // `rt migrate` sends the block rootfs's disk with the VM (QEMU's
    // "block" capability).
    "--enable-live-block-migration",
    "--disable-pie",
    "--extra-cflags=-fno-pie",
    "--extra-ldflags=-no-pie",
    "--disable-debug-info",
    "--disable-docs",
    "--disable-install-blobs",
    "--firmwarepath=/usr/share/qemu:/usr/share/seabios:/usr/lib/ipxe/qemu",
];

fn target(assets: &Path, version: &str) -> PathBuf {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (version, CONFIGURE, DEVICES, PATCHES).hash(&mut h);
    assets.join("qemu").join(format!(
        "{}{:08x}",
        rt_vm::qemu::OWN_QEMU_PREFIX,
        h.finish() as u32
    ))
}

/// Whether apt has a source index for Debian's archive.
fn has_deb_src() -> bool {
    run(Command::new("apt-get").args(["indextargets", "--format", "$(CREATED_BY)"]))
        .is_ok_and(|out| out.lines().any(|l| l.trim() == "Sources"))
}

/// Builds (or finds, already built) rt's QEMU; `None` when apt has no
/// source index (Debian's QEMU serves then).
pub fn install(assets: &Path) -> anyhow::Result<Option<PathBuf>> {
    let version = run(Command::new("dpkg-query").args(["-W", "-f=${source:Version}", INSTALLED]))
        .with_context(|| format!("{INSTALLED} is not installed"))?;
    let version = version.trim().to_string();
    let dir = target(assets, &version);
    let binary = dir.join(rt_vm::qemu::QEMU);
    if binary.is_file() {
        return Ok(Some(binary));
    }
    if !has_deb_src() {
        eprintln!("install-guest: apt has no deb-src index (integration/install-deps adds one): no QEMU of rt's own, Debian's is used");
        return Ok(None);
    }
    let build = assets.join("build").join("qemu");
    let _ = std::fs::remove_dir_all(&build);
    std::fs::create_dir_all(&build).with_context(|| format!("creating {}", build.display()))?;
    let started = std::time::Instant::now();
    eprintln!(
        "install-guest: building rt's QEMU from {SOURCE} {version} in {} (a few minutes, once)",
        build.display()
    );
    run(Command::new("apt-get")
        .current_dir(&build)
        .args(["source", "-qq", "--download-only"])
        .arg(format!("{SOURCE}={version}")))
    .with_context(|| format!("fetching the source of {SOURCE} {version}"))?;
    let dsc = std::fs::read_dir(&build)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "dsc"))
        .context("apt-get source left no .dsc")?;
    let src = build.join("src");
    // Unpacks and applies Debian's patches.
    run(Command::new("dpkg-source").arg("-x").arg(&dsc).arg(&src))?;
    apply_patches(&src, &build, PATCHES, &format!("{SOURCE} {version}"))?;
    let devices = src.join("configs/devices/i386-softmmu/default.mak");
    std::fs::write(&devices, DEVICES).with_context(|| format!("writing {}", devices.display()))?;
    let out = src.join("build");
    std::fs::create_dir_all(&out)?;
    run(Command::new(src.join("configure"))
        .current_dir(&out)
        .args(CONFIGURE))?;
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
    run(Command::new("ninja")
        .current_dir(&out)
        .arg(format!("-j{jobs}"))
        .arg(rt_vm::qemu::QEMU))?;
    // Every device rt asks for must be in the build.
    let help = run(Command::new(out.join(rt_vm::qemu::QEMU)).args(["-device", "help"]))?;
    for device in [
        "vhost-user-fs-pci",
        "virtio-serial-pci",
        "virtio-net-pci",
        "virtio-blk-pci",
        "virtio-balloon-pci",
    ] {
        if !help.contains(&format!("\"{device}\"")) {
            bail!("rt's QEMU build lacks {device}: fix runtime/vm/qemu/devices.mak");
        }
    }
    let partial = dir.with_extension("partial");
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial)?;
    run(Command::new("strip")
        .arg("-o")
        .arg(partial.join(rt_vm::qemu::QEMU))
        .arg(out.join(rt_vm::qemu::QEMU)))?;
    std::fs::rename(&partial, &dir)?;
    let _ = std::fs::remove_dir_all(&build);
    // Builds of older sources or options are of no further use.
    for e in std::fs::read_dir(assets.join("qemu"))?.flatten() {
        if e.path() != dir {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    eprintln!(
        "install-guest: built rt's QEMU in {} s",
        started.elapsed().as_secs()
    );
    Ok(Some(binary))
}
