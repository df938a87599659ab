//! CVE-2019-5736: a container that can open `/proc/<pid>/exe` of an rt
//! process (the init before it execs the user's program, an exec stage) gets
//! the host's rt binary, and could rewrite it once rt exits. The commands
//! whose processes enter a container (`create`, `run`, `exec`) therefore
//! re-execute themselves from a file no one can write first:
//!
//! - a private read-only mount of the binary alone, cloned from the one it
//!   is on and attached nowhere (`rt_sys::mountapi::readonly_bind_of`), and
//!   dissolved by the exec itself, so that nothing can make it writable
//!   again: nothing is copied, and `/proc/<pid>/exe` opened for writing
//!   gives EROFS;
//! - where that cannot be made (a kernel before 5.12), a read-only overlayfs
//!   of the binary's directory, mounted nowhere
//!   (`rt_sys::mountapi::readonly_overlay_of`, as runc 1.2 does);
//! - where neither can (rootless without CAP_SYS_ADMIN, a kernel without
//!   the new mount API), a sealed memfd copy (F_SEAL_WRITE and friends),
//!   which costs a copy of the whole binary.
//!
//! A binary that is already on a read-only mount (installed so, as on
//! distributions with a read-only `/usr`, or rt's recommended bind mount; a
//! sealed memfd; rt's own mount after the re-exec) is protected as it is and
//! does not re-execute: `/proc/<pid>/exe` opened for writing gives EROFS,
//! and no process in a container can remount a mount of another mount
//! namespace. That saves an exec and glibc's start-up (about 0.7 ms here,
//! most of it CPUID trapping to the hypervisor) on every command.
//!
//! `RT_SELF_PROTECTION=bind|overlay|memfd` forces one of the three (the
//! escape tests attack each, and the read-only install); `bind` and
//! `overlay` then fail instead of falling back.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::Path;

use anyhow::Context;
use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MemFdCreateFlag};

/// Whether `file` is a memfd sealed against writing.
fn is_sealed(file: &File) -> bool {
    fcntl(file.as_raw_fd(), FcntlArg::F_GET_SEALS)
        .is_ok_and(|s| SealFlag::from_bits_truncate(s).contains(SealFlag::F_SEAL_WRITE))
}

/// Whether `file` lives on a read-only mount (or a read-only file system):
/// the mount rt re-executes through, or a read-only install. `fstatvfs`
/// reports the flags of the mount the file was opened through, which for
/// `/proc/self/exe` is the one the binary was executed from.
fn on_readonly_mount(file: &File) -> bool {
    use nix::sys::statvfs;
    statvfs::fstatvfs(file.as_fd()).is_ok_and(|s| s.flags().contains(statvfs::FsFlags::ST_RDONLY))
}

/// Re-executes the running binary from a protected file, unless it already
/// runs from one. Returns only if that is already the case.
pub fn reexec_protected() -> anyhow::Result<()> {
    use std::sync::atomic::Ordering;
    // Known already: the entry point or an earlier call looked.
    if crate::early::PROTECTED.load(Ordering::Relaxed) {
        return Ok(());
    }
    let exe = File::open("/proc/self/exe").context("opening /proc/self/exe")?;
    if is_sealed(&exe) || on_readonly_mount(&exe) {
        crate::early::PROTECTED.store(true, Ordering::Relaxed);
        return Ok(());
    }
    // The binary's own path, for what needs the file itself (the VM
    // backend packs it into the guest's initramfs).
    if std::env::var_os("RT_EXE").is_none() {
        if let Ok(path) = std::fs::read_link("/proc/self/exe") {
            std::env::set_var("RT_EXE", path);
        }
    }
    let forced = std::env::var("RT_SELF_PROTECTION").unwrap_or_default();
    let protected = match forced.as_str() {
        "memfd" => sealed_copy(exe)?,
        "overlay" => overlay_view()?,
        "bind" => bind_view(&exe)?,
        "" => match bind_view(&exe).or_else(|_| overlay_view()) {
            Ok(fd) => fd,
            Err(_) => sealed_copy(exe)?,
        },
        other => anyhow::bail!("RT_SELF_PROTECTION={other:?}: use bind, overlay or memfd"),
    };
    // The descriptor is close-on-exec: for `bind`, the exec's closing it
    // dissolves the mount before the new program runs.
    let err = nix::unistd::fexecve(protected.as_raw_fd(), &args()?, &env()?).unwrap_err();
    Err(err).context("re-executing from the protected binary")
}

/// The binary's private read-only mount (its descriptor, which execs).
fn bind_view(exe: &File) -> anyhow::Result<OwnedFd> {
    rt_sys::mountapi::readonly_bind_of(exe.as_fd()).context("a read-only mount of /proc/self/exe")
}

/// The binary, opened through a read-only overlay of its directory.
fn overlay_view() -> anyhow::Result<OwnedFd> {
    let path = std::fs::read_link("/proc/self/exe").context("reading /proc/self/exe")?;
    let (dir, name) = match (path.parent(), path.file_name()) {
        (Some(d), Some(n)) => (d, n),
        _ => anyhow::bail!("{} has no directory", path.display()),
    };
    let root = rt_sys::mountapi::readonly_overlay_of(dir)
        .with_context(|| format!("a read-only overlay of {}", dir.display()))?;
    let fd = nix::fcntl::openat(
        Some(root.as_raw_fd()),
        Path::new(name),
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .with_context(|| format!("opening {} in its overlay", path.display()))?;
    // The mount lives on through the open file (and then the executable).
    Ok(own(fd))
}

fn own(fd: std::os::fd::RawFd) -> OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: `fd` was just returned by openat and is owned by nothing else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// A sealed memfd copy of the binary.
fn sealed_copy(mut exe: File) -> anyhow::Result<OwnedFd> {
    let memfd = memfd_create(
        c"rt",
        MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::MFD_ALLOW_SEALING,
    )
    .context("memfd_create")?;
    let mut copy = File::from(memfd);
    std::io::copy(&mut exe, &mut copy).context("copying /proc/self/exe to a memfd")?;
    seal(copy.as_fd()).context("sealing the memfd")?;
    Ok(OwnedFd::from(copy))
}

/// Adds the seals that make the copy unwritable. F_SEAL_WRITE fails with
/// EBUSY while anything holds an extra reference to one of the file's
/// pages (the kernel waits some 70 ms for such references to go first): it
/// happened once in some thousand sealed copies during a benchmark here,
/// with the host's page scanner (DAMON) running. A few more tries, before
/// failing as before.
fn seal(fd: std::os::fd::BorrowedFd<'_>) -> nix::Result<()> {
    let seals = SealFlag::F_SEAL_SEAL
        | SealFlag::F_SEAL_SHRINK
        | SealFlag::F_SEAL_GROW
        | SealFlag::F_SEAL_WRITE;
    let mut tries = 0;
    loop {
        match fcntl(fd.as_raw_fd(), FcntlArg::F_ADD_SEALS(seals)) {
            Err(nix::errno::Errno::EBUSY) if tries < 4 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(10 * tries));
            }
            r => return r.map(|_| ()),
        }
    }
}

fn cstrings(v: Vec<Vec<u8>>) -> anyhow::Result<Vec<CString>> {
    v.into_iter()
        .map(|b| CString::new(b).context("NUL in an argument"))
        .collect()
}

fn args() -> anyhow::Result<Vec<CString>> {
    cstrings(std::env::args_os().map(|a| a.into_vec()).collect())
}

fn env() -> anyhow::Result<Vec<CString>> {
    cstrings(
        std::env::vars_os()
            .map(|(k, v)| {
                let mut kv = k.into_vec();
                kv.push(b'=');
                kv.extend(v.into_vec());
                kv
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_file_is_not_sealed() {
        let f = File::open("/proc/self/exe").unwrap();
        assert!(!is_sealed(&f));
        let memfd = memfd_create(c"t", MemFdCreateFlag::MFD_ALLOW_SEALING).unwrap();
        let m = File::from(memfd);
        assert!(!is_sealed(&m));
        fcntl(m.as_raw_fd(), FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_WRITE)).unwrap();
        assert!(is_sealed(&m));
    }

    #[test]
    fn sealing_waits_out_a_passing_writable_mapping() {
        let shared = |fd: &OwnedFd| {
            // SAFETY: a fresh shared mapping of our own 4 KiB memfd, only
            // ever unmapped, never dereferenced.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    fd.as_raw_fd(),
                    0,
                )
            };
            assert_ne!(p, libc::MAP_FAILED);
            p as usize
        };
        let memfd = memfd_create(c"t", MemFdCreateFlag::MFD_ALLOW_SEALING).unwrap();
        nix::unistd::ftruncate(&memfd, 4096).unwrap();
        // A writable shared mapping makes F_SEAL_WRITE fail with EBUSY: one
        // that goes within the retries does not fail the seal.
        let addr = shared(&memfd);
        let unmapper = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(15));
            // SAFETY: the mapping made above, which nothing uses.
            assert_eq!(unsafe { libc::munmap(addr as *mut libc::c_void, 4096) }, 0);
        });
        seal(memfd.as_fd()).unwrap();
        unmapper.join().unwrap();
        assert!(is_sealed(&File::from(memfd)));
        // One that stays: EBUSY in the end.
        let memfd = memfd_create(c"t", MemFdCreateFlag::MFD_ALLOW_SEALING).unwrap();
        nix::unistd::ftruncate(&memfd, 4096).unwrap();
        let kept = shared(&memfd);
        assert_eq!(seal(memfd.as_fd()), Err(nix::errno::Errno::EBUSY));
        // SAFETY: as above.
        assert_eq!(unsafe { libc::munmap(kept as *mut libc::c_void, 4096) }, 0);
    }

    #[test]
    fn a_file_on_its_read_only_mount_is_protected() {
        let exe = File::open("/proc/self/exe").unwrap();
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: mounting needs root");
            return;
        }
        let mount = bind_view(&exe).unwrap();
        let file = File::open(format!("/proc/self/fd/{}", mount.as_raw_fd())).unwrap();
        assert!(on_readonly_mount(&file));
    }

    #[test]
    fn a_file_on_a_read_only_mount_is_protected() {
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        assert!(!on_readonly_mount(&File::open(&exe).unwrap()));
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: mounting a read-only overlay needs root");
            return;
        }
        let root = rt_sys::mountapi::readonly_overlay_of(exe.parent().unwrap()).unwrap();
        let fd = nix::fcntl::openat(
            Some(root.as_raw_fd()),
            exe.file_name().unwrap(),
            nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .unwrap();
        assert!(on_readonly_mount(&File::from(own(fd))));
    }
}
