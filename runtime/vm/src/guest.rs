//! The microVM guest's assets: where they live on the host, the guest
//! kernel (fetched by the project's scripts, never at container start), and
//! the initramfs with rt's agent as PID 1, built on first use and cached.
//!
//! Layout of the assets directory (`$RT_VM_DIR`, default `/var/lib/rt/vm`):
//! `kernel/` holds one unpacked Debian cloud kernel package and, once built,
//! rt's own guest kernel (`rt-guest-<key>/`, preferred), `accel-*` the
//! accelerator probe's answer, `initrd/<key>.cpio` the initramfs for one
//! combination of agent, rt and kernel.

use std::hash::{Hash, Hasher};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::initramfs::Initramfs;
use crate::kernel::{Kernel, CLOUD};
use crate::{io, Error, Result};

/// The modules the guest loads (with their dependencies): the PCI
/// transport, the virtio-serial channel, virtiofs, overlayfs (rt in the
/// guest protects its binary with a read-only overlay), the network, and
/// virtio-blk with ext4 for the block rootfs (`run.rt.vm.rootfs=block`).
/// Those built into the kernel are skipped.
pub const MODULES: [&str; 7] = [
    "virtio_pci",
    "virtio_console",
    "virtiofs",
    "overlay",
    "virtio_net",
    "virtio_blk",
    "ext4",
];

/// Where the initramfs keeps rt. The agent mounts a read-only overlayfs of
/// this directory and runs rt from it, so rt in the guest finds itself
/// protected (CVE-2019-5736) as on the host, without copying itself into a
/// memfd per command (25 MB each for a debug build: a small guest's memory).
pub const RT_DIR: &str = "/usr/lib/rt";

/// Bumped whenever the initramfs layout changes, so old caches are not used.
const FORMAT: u32 = 5;

/// The assets directory.
pub fn dir() -> PathBuf {
    std::env::var_os("RT_VM_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/rt/vm"))
}

/// The prefix of rt's own guest kernel's directory in `kernel/`
/// (integration/vm/install-guest builds it from Debian's linux-source).
pub const OWN_KERNEL_PREFIX: &str = "rt-guest-";

/// The installed guest kernel: rt's own if it was built, else Debian's
/// cloud kernel; a clear error when there is none (it is never downloaded
/// or built at container start).
pub fn kernel(assets: &Path) -> Result<Kernel> {
    installed(assets, true)
        .or_else(|_| installed(assets, false))
        .map_err(|_| Error::NoGuestKernel(assets.join("kernel")))
}

/// Debian's cloud kernel, even where rt's own is installed (a guest that
/// boots the host's systemd needs a general kernel).
pub fn cloud_kernel(assets: &Path) -> Result<Kernel> {
    installed(assets, false)
}

/// The first kernel in `kernel/` that is (or is not) rt's own.
fn installed(assets: &Path, own: bool) -> Result<Kernel> {
    let dir = assets.join("kernel");
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(io("reading", &dir))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(OWN_KERNEL_PREFIX) == own)
        })
        .collect();
    entries.sort();
    for e in entries {
        if let Some(k) = Kernel::unpacked(&e)? {
            return Ok(k);
        }
    }
    Err(Error::NoGuestKernel(dir))
}

/// Fetches Debian's cloud kernel into the assets directory (the project's
/// install scripts call this; a second call reuses it).
pub fn install_kernel(assets: &Path) -> Result<Kernel> {
    Kernel::debian_package(&assets.join("kernel"), CLOUD)
}

/// How long an initramfs no container used stays in the cache, once a new
/// one is built. Each build of rt or the agent makes a new image (tens of
/// MB for a debug build: a day of development left 2.2 GB); an image
/// unused for an hour is of a build that is gone or idle, and rebuilt in a
/// second if it comes back. A create refreshes the image it chose before
/// QEMU opens it, so no image in use is that old.
const PRUNE_AFTER: std::time::Duration = std::time::Duration::from_secs(3600);

/// Removes the cached images (and unfinished ones) last used more than
/// `age` ago; best effort.
fn prune(cache: &Path, age: std::time::Duration) {
    let Ok(entries) = std::fs::read_dir(cache) else {
        return;
    };
    for e in entries.flatten() {
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|d| d > age);
        if old {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// The initramfs for `agent` (its /init), `rt` (/bin/rt) and `kernel`'s
/// modules, from the cache or built into it. The cache key covers the
/// binaries' identity (device, inode, size, modification time), the kernel
/// and the format.
pub fn initrd(assets: &Path, kernel: &Kernel, agent: &Path, rt: &Path) -> Result<PathBuf> {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    FORMAT.hash(&mut h);
    kernel.version.hash(&mut h);
    for bin in [agent, rt] {
        let m = std::fs::metadata(bin).map_err(io("reading", bin))?;
        (bin, m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec()).hash(&mut h);
    }
    let cache = assets.join("initrd");
    std::fs::create_dir_all(&cache).map_err(io("creating", &cache))?;
    let out = cache.join(format!("{:016x}.cpio", h.finish()));
    if out.exists() {
        // Its modification time says when it was last used (for pruning).
        let _ = std::fs::File::options()
            .write(true)
            .open(&out)
            .and_then(|f| f.set_modified(std::time::SystemTime::now()));
        return Ok(out);
    }
    prune(&cache, PRUNE_AFTER);
    let mut i = Initramfs::new();
    i.stripped_executable("/init", agent)?;
    // The agent shows rt through a read-only overlay (see RT_DIR).
    i.stripped_executable(&format!("{RT_DIR}/rt"), rt)?;
    // `rt ps` runs ps(1) where the processes are; the agent configures
    // eth0 with ip(8).
    for (name, candidates) in [
        ("/bin/ps", ["/usr/bin/ps", "/bin/ps"]),
        ("/bin/ip", ["/usr/sbin/ip", "/sbin/ip"]),
    ] {
        if let Some(p) = candidates.iter().map(Path::new).find(|p| p.exists()) {
            i.executable(name, p)?;
        }
    }
    i.modules(&kernel.modules_for(&MODULES)?)?;
    for d in ["/run/rt-share", "/sys/fs/cgroup", "/dev/pts", "/dev/shm"] {
        i.dir(d)?;
    }
    // Built beside the final name, then renamed: a concurrent create sees
    // either no image or a whole one.
    let tmp = cache.join(format!(
        ".{}.{}",
        std::process::id(),
        out.display().to_string().len()
    ));
    i.write(&tmp)?;
    std::fs::rename(&tmp, &out).map_err(io("renaming", &tmp))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prune_removes_only_images_unused_for_long() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("old.cpio");
        let new = dir.path().join("new.cpio");
        std::fs::write(&old, "x").unwrap();
        std::fs::write(&new, "x").unwrap();
        let long_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
        std::fs::File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(long_ago)
            .unwrap();
        prune(dir.path(), std::time::Duration::from_secs(3600));
        assert!(!old.exists());
        assert!(new.exists());
    }
}
