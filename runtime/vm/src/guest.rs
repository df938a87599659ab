//! The microVM guest's assets: where they live on the host, the guest
//! kernel (fetched by the project's scripts, never at container start), and
//! the initramfs with rt's agent as PID 1, built on first use and cached.
//!
//! Layout of the assets directory (`$RT_VM_DIR`, default `/var/lib/rt/vm`):
//! `kernel/` holds one unpacked Debian cloud kernel package and, once built,
//! rt's own guest kernel (`rt-guest-<key>/`, preferred), `accel-*` the
//! accelerator probe's answer, `initrd/<key>.cpio` the initramfs for one
//! combination of agent, rt and kernel, and `initrd/<key>.img` the
//! read-only disk that carries rt into guests that read it from there
//! ([`RtFrom::Disk`]).

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

/// Where a guest's rt comes from.
///
/// From the initramfs, rt (13 MB in a release build) is unpacked into
/// guest RAM at every boot, and QEMU keeps the image mapped: memory a
/// checkpointed or migrated VM needs, since its RAM then holds everything
/// the guest runs. From a read-only ext4 disk, only the pages rt runs are
/// read into the guest's page cache, the boot skips unpacking it, and QEMU
/// maps nothing of it (measured in docs/microvm.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RtFrom {
    Initramfs,
    Disk,
}

/// Where the agent mounts the tools disk (and, without one, the read-only
/// overlay of the initramfs's rt): it runs `{TOOLS_MOUNT}/rt`.
pub const TOOLS_MOUNT: &str = "/run/rt-bin";

/// The tools disk's virtio-blk serial, by which the agent finds it.
pub const TOOLS_SERIAL: &str = "rt-tools";
/// The kernel argument (handed to the agent as an environment variable)
/// that says rt is on the tools disk.
pub const TOOLS_ARG: &str = "rt_tools=disk";

/// Bumped whenever the initramfs layout changes, so old caches are not used.
const FORMAT: u32 = 6;

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

/// Hashes the identity of rt and of the helpers that go with it (into the
/// initramfs or onto the tools disk).
fn tools_identity(rt: &Path, h: &mut impl Hasher) -> Result<()> {
    identity(rt, h)?;
    for (_, p) in helpers() {
        identity(&p, h)?;
    }
    Ok(())
}

/// Hashes a binary's identity (path, device, inode, size, modification
/// time) into a cache key.
fn identity(bin: &Path, h: &mut impl Hasher) -> Result<()> {
    let m = std::fs::metadata(bin).map_err(io("reading", bin))?;
    (bin, m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec()).hash(h);
    Ok(())
}

/// The cache directory and the path of `name` in it; an existing entry is
/// marked used (its modification time says when, for [`prune`]).
fn cached(assets: &Path, name: String) -> Result<(PathBuf, PathBuf, bool)> {
    let cache = assets.join("initrd");
    std::fs::create_dir_all(&cache).map_err(io("creating", &cache))?;
    let out = cache.join(name);
    let exists = out.exists();
    if exists {
        let _ = std::fs::File::options()
            .write(true)
            .open(&out)
            .and_then(|f| f.set_modified(std::time::SystemTime::now()));
    } else {
        prune(&cache, PRUNE_AFTER);
    }
    Ok((cache, out, exists))
}

/// The initramfs for `agent` (its /init), `rt` with ps(1) and ip(8) (or,
/// when `from` is the tools disk, links into it) and `kernel`'s modules,
/// from the cache or built into it. The cache key covers the binaries'
/// identity (device, inode, size, modification time), where rt comes from,
/// the kernel and the format.
pub fn initrd(
    assets: &Path,
    kernel: &Kernel,
    agent: &Path,
    rt: &Path,
    from: RtFrom,
) -> Result<PathBuf> {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (FORMAT, from).hash(&mut h);
    kernel.version.hash(&mut h);
    identity(agent, &mut h)?;
    tools_identity(rt, &mut h)?;
    let (cache, out, exists) = cached(assets, format!("{:016x}.cpio", h.finish()))?;
    if exists {
        return Ok(out);
    }
    let mut i = Initramfs::new();
    i.stripped_executable("/init", agent)?;
    match from {
        RtFrom::Initramfs => {
            // The agent shows rt through a read-only overlay (see RT_DIR).
            i.stripped_executable(&format!("{RT_DIR}/rt"), rt)?;
            for (name, p) in helpers() {
                i.executable(name, &p)?;
            }
        }
        // rt, the helpers and every library they link are on the tools
        // disk; links here lead there (the loader follows them), except
        // for the libraries the agent (a dynamic debug build) needs before
        // the disk is mounted, which are here already.
        RtFrom::Disk => {
            for (name, _) in helpers() {
                i.symlink(name, &format!("{TOOLS_MOUNT}{name}"))?;
            }
            for lib in tool_libraries(rt)? {
                let lib = lib.to_string_lossy();
                if !i.has(&lib) {
                    i.symlink(&lib, &format!("{TOOLS_MOUNT}{lib}"))?;
                }
            }
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

/// The helpers the guest runs besides rt, where the host has them: ps(1)
/// (`rt ps` runs it where the processes are) and ip(8) (the agent
/// configures eth0 with it).
fn helpers() -> Vec<(&'static str, PathBuf)> {
    [
        ("/bin/ps", ["/usr/bin/ps", "/bin/ps"]),
        ("/bin/ip", ["/usr/sbin/ip", "/sbin/ip"]),
    ]
    .into_iter()
    .filter_map(|(name, candidates)| {
        let p = candidates.iter().map(PathBuf::from).find(|p| p.exists())?;
        Some((name, p))
    })
    .collect()
}

/// The shared libraries (and loader) of rt and the helpers, once each.
fn tool_libraries(rt: &Path) -> Result<Vec<PathBuf>> {
    let mut libs = crate::initramfs::shared_libraries(rt)?;
    for (_, p) in helpers() {
        libs.extend(crate::initramfs::shared_libraries(&p)?);
    }
    libs.sort();
    libs.dedup();
    Ok(libs)
}

/// The tools disk for `rt` ([`RtFrom::Disk`]): a read-only ext4 image with
/// the stripped rt at its root and the helpers (`bin/ps`, `bin/ip`) and
/// every library the three link at their host paths, from the cache or
/// built into it (keyed by the binaries' identity and the format). The
/// guest finds it by its serial ([`TOOLS_SERIAL`]) and mounts it read-only
/// on [`TOOLS_MOUNT`], so the guest's rt finds itself on a read-only mount
/// (CVE-2019-5736) and needs no overlay, and only what runs is read into
/// guest memory.
pub fn tools_disk(assets: &Path, rt: &Path) -> Result<PathBuf> {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (FORMAT, TOOLS_SERIAL).hash(&mut h);
    tools_identity(rt, &mut h)?;
    let (cache, out, exists) = cached(assets, format!("{:016x}.img", h.finish()))?;
    if exists {
        return Ok(out);
    }
    // Staged and built beside the final name, then renamed (see initrd).
    let stage = cache.join(format!(".{}.tools", std::process::id()));
    let tmp = cache.join(format!(".{}.img", std::process::id()));
    let _ = std::fs::remove_dir_all(&stage);
    std::fs::create_dir_all(&stage).map_err(io("creating", &stage))?;
    let built = build_tools_disk(&stage, &tmp, rt);
    let _ = std::fs::remove_dir_all(&stage);
    if let Err(e) = built {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, &out).map_err(io("renaming", &tmp))?;
    Ok(out)
}

fn build_tools_disk(stage: &Path, image: &Path, rt: &Path) -> Result<()> {
    let bin = stage.join("rt");
    if !crate::initramfs::strip(rt, &bin) {
        std::fs::copy(rt, &bin).map_err(io("copying", rt))?;
    }
    let mut size = std::fs::metadata(&bin).map_err(io("reading", &bin))?.len();
    let others = helpers()
        .into_iter()
        .map(|(name, p)| (PathBuf::from(name), p))
        .chain(tool_libraries(rt)?.into_iter().map(|l| (l.clone(), l)));
    for (at, src) in others {
        let dst = stage.join(at.strip_prefix("/").unwrap_or(&at));
        if let Some(dir) = dst.parent() {
            std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
        }
        // A copy of what the path leads to (symlinks followed).
        size += std::fs::copy(&src, &dst).map_err(io("copying", &src))?;
    }
    // The files, ext4's metadata and some slack, in KiB.
    let kib = (size >> 10) + 4096;
    crate::run(
        std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F", "-b", "4096", "-m", "0", "-O", "^has_journal"])
            .args(["-E", "root_owner=0:0", "-L", TOOLS_SERIAL, "-d"])
            .arg(stage)
            .arg(image)
            .arg(format!("{kib}K")),
    )
    .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tools_disk_is_an_ext4_image_with_rt_built_once() {
        if std::process::Command::new("mkfs.ext4")
            .arg("-V")
            .output()
            .is_err()
        {
            eprintln!("skipped: no mkfs.ext4 (e2fsprogs)");
            return;
        }
        let assets = tempfile::tempdir().unwrap();
        let rt = Path::new("/bin/true");
        let img = tools_disk(assets.path(), rt).unwrap();
        let bytes = std::fs::read(&img).unwrap();
        // ext4's superblock magic, 0xEF53 at byte 1080.
        assert_eq!(&bytes[1080..1082], &[0x53, 0xef]);
        let listing = std::process::Command::new("debugfs")
            .args(["-R", "ls -l /"])
            .arg(&img)
            .output()
            .unwrap();
        let listing = String::from_utf8_lossy(&listing.stdout);
        assert!(listing.contains(" rt"), "{listing}");
        let ino = std::fs::metadata(&img).unwrap().ino();
        assert_eq!(tools_disk(assets.path(), rt).unwrap(), img);
        assert_eq!(std::fs::metadata(&img).unwrap().ino(), ino, "rebuilt");
        // Nothing half-made is left beside it.
        let names: Vec<_> = std::fs::read_dir(assets.path().join("initrd"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

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
