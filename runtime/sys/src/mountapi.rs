//! The new mount API (open_tree, mount_setattr, fsopen, fsconfig, fsmount):
//! detached mounts, attached nowhere in any mount namespace and alive as
//! long as a descriptor (or a process's executable) refers to them. rt uses
//! one to run itself from a read-only view of its own file (CVE-2019-5736,
//! without a copy).

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;

use crate::{Error, Result};

const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;

fn cstring(s: &[u8]) -> Result<CString> {
    CString::new(s).map_err(|_| Error::Syscall("fsconfig", Errno::EINVAL))
}

/// fsopen(2): a filesystem context for `fstype`.
fn fsopen(fstype: &str) -> Result<OwnedFd> {
    let name = cstring(fstype.as_bytes())?;
    // SAFETY: `name` is a NUL-terminated string that outlives the call.
    let rc = unsafe { libc::syscall(libc::SYS_fsopen, name.as_ptr(), FSOPEN_CLOEXEC) };
    let fd = Errno::result(rc).map_err(|e| Error::Syscall("fsopen", e))?;
    // SAFETY: fsopen returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// fsconfig(2) with a string value, or (`key` None) FSCONFIG_CMD_CREATE.
fn fsconfig(fs: BorrowedFd<'_>, key: Option<&str>, value: Option<&[u8]>) -> Result<()> {
    let key = key.map(|k| cstring(k.as_bytes())).transpose()?;
    let value = value.map(cstring).transpose()?;
    let cmd = if key.is_some() {
        FSCONFIG_SET_STRING
    } else {
        FSCONFIG_CMD_CREATE
    };
    let ptr = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: the pointers are null or NUL-terminated strings that outlive the
    // call; the kernel only reads them.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            cmd,
            ptr(&key),
            ptr(&value),
            0,
        )
    };
    Errno::result(rc)
        .map(drop)
        .map_err(|e| Error::Syscall("fsconfig", e))
}

/// fsmount(2): the created filesystem as a detached mount with `attrs`.
fn fsmount(fs: BorrowedFd<'_>, attrs: u64) -> Result<OwnedFd> {
    // SAFETY: fsmount takes integers only.
    let rc = unsafe { libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), FSMOUNT_CLOEXEC, attrs) };
    let fd = Errno::result(rc).map_err(|e| Error::Syscall("fsmount", e))?;
    // SAFETY: fsmount returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// A private, read-only, nosuid, nodev mount of the file `file` alone:
/// open_tree(OPEN_TREE_CLONE) of the mount it is on, rooted at the file,
/// then mount_setattr. Returns the mount's descriptor (O_PATH,
/// close-on-exec), which execveat can run. Needs CAP_SYS_ADMIN in the
/// user namespace of the caller's mount namespace, `file` on a mount of
/// that namespace, and Linux 5.12.
///
/// Closing the last descriptor dissolves the mount (unmounts it); a
/// process executing the file keeps it alive, unmounted. An unmounted
/// mount can be neither cloned (open_tree), nor changed (mount_setattr),
/// nor remounted: EINVAL even for root. While the descriptor is open,
/// root in the initial user namespace could clear its read-only flag, so
/// the caller closes it before anything untrusted can see the file: the
/// re-execution lets the exec close it.
pub fn readonly_bind_of(file: BorrowedFd<'_>) -> Result<OwnedFd> {
    let flags =
        libc::AT_EMPTY_PATH as libc::c_uint | libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC;
    // SAFETY: an empty C string with AT_EMPTY_PATH names `file`; the kernel
    // only reads it.
    let rc = unsafe { libc::syscall(libc::SYS_open_tree, file.as_raw_fd(), c"".as_ptr(), flags) };
    let fd = Errno::result(rc).map_err(|e| Error::Syscall("open_tree", e))?;
    // SAFETY: open_tree returned a new descriptor that nothing else owns.
    let mount = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    let ro = crate::MOUNT_ATTR_RDONLY | crate::MOUNT_ATTR_NOSUID | crate::MOUNT_ATTR_NODEV;
    crate::mount_setattr_recursive(mount.as_fd(), ro, 0)?;
    Ok(mount)
}

/// Where [`readonly_overlay_of`] finds an empty directory when the kernel
/// refuses a detached layer: created once (root-owned, mode 0555), and
/// never written to.
pub const EMPTY_DIR: &str = "/run/rt-empty";

/// A detached, read-only, nosuid, nodev overlayfs whose only content is
/// `dir` (overlayfs without an upper layer needs two lower ones, and the
/// same one twice is refused). Returns the mount's root directory. Needs
/// CAP_SYS_ADMIN in the mount's user namespace.
///
/// The second layer is an empty detached tmpfs, which leaves nothing
/// anywhere; kernels before 6.5 or so refuse a layer outside the caller's
/// mount namespace ("overlayfs: failed to clone lowerpath", EINVAL), and
/// there the empty directory [`EMPTY_DIR`] is the second layer instead.
pub fn readonly_overlay_of(dir: &Path) -> Result<OwnedFd> {
    let ro = libc::MOUNT_ATTR_RDONLY | libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV;
    let tmpfs = fsopen("tmpfs")?;
    fsconfig(tmpfs.as_fd(), None, None)?;
    let empty = fsmount(tmpfs.as_fd(), ro)?;
    let detached = format!("/proc/self/fd/{}", empty.as_raw_fd());
    match overlay_with(dir, detached.as_bytes(), ro) {
        Err(Error::Syscall("fsconfig", Errno::EINVAL)) => {}
        other => return other,
    }
    drop(empty);
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new().mode(0o555).create(EMPTY_DIR) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(Error::Syscall(
                "mkdir",
                Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
            ))
        }
    }
    overlay_with(dir, EMPTY_DIR.as_bytes(), ro)
}

/// The read-only overlay of `dir` over the empty layer `empty`.
fn overlay_with(dir: &Path, empty: &[u8], attrs: u64) -> Result<OwnedFd> {
    let overlay = fsopen("overlay")?;
    let mut lower = dir.as_os_str().as_bytes().to_vec();
    lower.push(b':');
    lower.extend_from_slice(empty);
    fsconfig(overlay.as_fd(), Some("lowerdir"), Some(&lower))?;
    fsconfig(overlay.as_fd(), None, None)?;
    // The overlay holds its layers itself: the tmpfs descriptor can go.
    fsmount(overlay.as_fd(), attrs)
}

/// `struct mount_attr` of mount_setattr(2).
#[repr(C)]
#[derive(Debug)]
pub struct MountAttr {
    pub attr_set: u64,
    pub attr_clr: u64,
    pub propagation: u64,
    pub userns_fd: u64,
}

pub const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub const MOUNT_ATTR_NODEV: u64 = 0x4;
pub const MOUNT_ATTR_NOEXEC: u64 = 0x8;
pub const MOUNT_ATTR_NOATIME: u64 = 0x10;
pub const MOUNT_ATTR_STRICTATIME: u64 = 0x20;
pub const MOUNT_ATTR_NODIRATIME: u64 = 0x80;
pub const MOUNT_ATTR_NOSYMFOLLOW: u64 = 0x200000;

/// Sets (and clears) mount attributes on the mount at `fd` and every mount below
/// it (mount_setattr with AT_RECURSIVE): the `rro`, `rnosuid`, ... options.
pub fn mount_setattr_recursive(fd: BorrowedFd<'_>, set: u64, clear: u64) -> Result<()> {
    let attr = MountAttr {
        attr_set: set,
        attr_clr: clear,
        propagation: 0,
        userns_fd: 0,
    };
    let empty = c"";
    // SAFETY: `empty` is a valid NUL-terminated string and `attr` a live,
    // initialised struct whose size we pass; the kernel only reads both.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    Errno::result(rc)
        .map(drop)
        .map_err(|e| Error::Syscall("mount_setattr", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The private mount of a file is read-only, and once its descriptor
    /// is closed (the mount dissolved) the file opened through it can be
    /// neither reopened for writing nor its mount cloned or changed.
    #[test]
    fn a_dissolved_read_only_bind_cannot_be_unwrapped() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"x").unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let mount = readonly_bind_of(file.as_fd()).unwrap();
        let through = |m: &OwnedFd, flags| {
            std::fs::OpenOptions::new()
                .custom_flags(flags)
                .read(flags & libc::O_WRONLY == 0)
                .write(flags & libc::O_WRONLY != 0)
                .open(format!("/proc/self/fd/{}", m.as_raw_fd()))
        };
        use std::os::unix::fs::OpenOptionsExt;
        let err = through(&mount, libc::O_WRONLY).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS));
        let held = through(&mount, libc::O_PATH).unwrap();
        drop(mount);
        let held = OwnedFd::from(held);
        let err = through(&held, libc::O_WRONLY).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS));
        assert!(matches!(
            crate::mount_setattr_recursive(held.as_fd(), 0, crate::MOUNT_ATTR_RDONLY),
            Err(Error::Syscall("mount_setattr", Errno::EINVAL))
        ));
        assert!(matches!(
            readonly_bind_of(held.as_fd()),
            Err(Error::Syscall("open_tree", Errno::EINVAL))
        ));
        assert_eq!(std::fs::read(&path).unwrap(), b"x");
    }

    #[test]
    fn the_empty_directory_layer_works_too() {
        // The layer used where the kernel refuses a detached one (6.1).
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let dir = std::env::temp_dir().join(format!("rt-sys-empty-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("f"), b"x").unwrap();
        let _ = std::fs::create_dir(EMPTY_DIR);
        let ro = libc::MOUNT_ATTR_RDONLY;
        let root = overlay_with(&dir, EMPTY_DIR.as_bytes(), ro).unwrap();
        let f = nix::fcntl::openat(
            Some(root.as_raw_fd()),
            "f",
            nix::fcntl::OFlag::O_RDWR,
            nix::sys::stat::Mode::empty(),
        );
        assert_eq!(f.unwrap_err(), Errno::EROFS);
        drop(root);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn overlay_is_read_only_and_shows_the_directory() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let dir = tempfile_dir();
        std::fs::write(dir.join("f"), b"x").unwrap();
        let root = readonly_overlay_of(&dir).unwrap();
        let f = nix::fcntl::openat(
            Some(root.as_raw_fd()),
            "f",
            nix::fcntl::OFlag::O_WRONLY,
            nix::sys::stat::Mode::empty(),
        );
        assert_eq!(f.unwrap_err(), Errno::EROFS);
        let r = nix::fcntl::openat(
            Some(root.as_raw_fd()),
            "f",
            nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .unwrap();
        // SAFETY: openat returned a new descriptor that nothing else owns.
        drop(unsafe { OwnedFd::from_raw_fd(r) });
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("rt-sys-ovl-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
