//! /dev: the default device nodes and symlinks, and `linux.devices`.
//!
//! Outside a user namespace nodes are made with mknod; inside one (where mknod
//! is not allowed) the host's nodes are bind-mounted, as runc does.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};
use nix::sys::stat::{makedev, mknodat, Mode, SFlag};
use nix::unistd::{fchownat, Gid, Uid};
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType};

use super::paths;

/// Errors of device setup.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("creating device {path}")]
    Node {
        path: PathBuf,
        #[source]
        source: Errno,
    },
    #[error("device {path}: type {kind:?} is not supported")]
    Type {
        path: PathBuf,
        kind: LinuxDeviceType,
    },
    #[error(transparent)]
    Path(#[from] paths::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

const DEFAULTS: [(&str, u64, u64); 6] = [
    ("/dev/null", 1, 3),
    ("/dev/zero", 1, 5),
    ("/dev/full", 1, 7),
    ("/dev/random", 1, 8),
    ("/dev/urandom", 1, 9),
    ("/dev/tty", 5, 0),
];

/// The default character devices (0666) unless the spec lists the same path,
/// and the standard /dev symlinks.
pub fn create_defaults(
    root: BorrowedFd<'_>,
    userns: bool,
    spec_devices: &[LinuxDevice],
) -> Result<()> {
    for (path, major, minor) in DEFAULTS {
        if spec_devices.iter().any(|d| d.path() == Path::new(path)) {
            continue;
        }
        node(
            root,
            userns,
            Path::new(path),
            SFlag::S_IFCHR,
            major,
            minor,
            0o666,
            None,
            None,
        )?;
    }
    let links: [(&str, &str); 5] = [
        ("/proc/self/fd", "/dev/fd"),
        ("/proc/self/fd/0", "/dev/stdin"),
        ("/proc/self/fd/1", "/dev/stdout"),
        ("/proc/self/fd/2", "/dev/stderr"),
        ("pts/ptmx", "/dev/ptmx"),
    ];
    let dev = paths::create(root, Path::new("/dev"), false)?;
    for (target, link) in links {
        let name = Path::new(link).file_name().unwrap_or_default();
        if link == "/dev/ptmx" {
            let _ = nix::unistd::unlinkat(
                Some(dev.as_raw_fd()),
                name,
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            );
        }
        match nix::unistd::symlinkat(target, Some(dev.as_raw_fd()), name) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(source) => {
                return Err(Error::Node {
                    path: link.into(),
                    source,
                })
            }
        }
    }
    if Path::new("/proc/kcore").exists() {
        let _ = nix::unistd::symlinkat("/proc/kcore", Some(dev.as_raw_fd()), "core");
    }
    Ok(())
}

/// The devices listed in `linux.devices`.
pub fn create(root: BorrowedFd<'_>, userns: bool, devices: &[LinuxDevice]) -> Result<()> {
    for d in devices {
        let kind = match d.typ() {
            LinuxDeviceType::C | LinuxDeviceType::U => SFlag::S_IFCHR,
            LinuxDeviceType::B => SFlag::S_IFBLK,
            LinuxDeviceType::P => SFlag::S_IFIFO,
            other => {
                return Err(Error::Type {
                    path: d.path().clone(),
                    kind: other,
                })
            }
        };
        let mode = d.file_mode().unwrap_or(0o666);
        node(
            root,
            userns,
            d.path(),
            kind,
            d.major() as u64,
            d.minor() as u64,
            mode,
            d.uid(),
            d.gid(),
        )?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn node(
    root: BorrowedFd<'_>,
    userns: bool,
    path: &Path,
    kind: SFlag,
    major: u64,
    minor: u64,
    mode: u32,
    uid: Option<u32>,
    gid: Option<u32>,
) -> Result<()> {
    let fail = |source| Error::Node {
        path: path.to_path_buf(),
        source,
    };
    let parent = paths::create(root, path.parent().unwrap_or(Path::new("/")), false)?;
    let name = path.file_name().unwrap_or_default();
    if userns {
        // Bind the host's node over an empty file.
        let target = paths::create(root, path, true)?;
        return mount(
            Some(path),
            &paths::proc_fd(target.as_fd()),
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(fail);
    }
    let _ = nix::unistd::unlinkat(
        Some(parent.as_raw_fd()),
        name,
        nix::unistd::UnlinkatFlags::NoRemoveDir,
    );
    let perm = Mode::from_bits_truncate(mode & 0o7777);
    mknodat(
        Some(parent.as_raw_fd()),
        name,
        kind,
        perm,
        makedev(major, minor),
    )
    .map_err(fail)?;
    // mknod is subject to the umask: set the mode exactly.
    nix::sys::stat::fchmodat(
        Some(parent.as_raw_fd()),
        name,
        perm,
        nix::sys::stat::FchmodatFlags::NoFollowSymlink,
    )
    .or_else(|e| {
        if e == Errno::EOPNOTSUPP {
            Ok(())
        } else {
            Err(e)
        }
    })
    .map_err(fail)?;
    if uid.is_some() || gid.is_some() {
        fchownat(
            Some(parent.as_raw_fd()),
            name,
            uid.map(Uid::from_raw),
            gid.map(Gid::from_raw),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(fail)?;
    }
    Ok(())
}
