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
    without_umask(|| {
        let mut parent = None;
        for (path, major, minor) in DEFAULTS {
            if spec_devices.iter().any(|d| d.path() == Path::new(path)) {
                continue;
            }
            let n = Node {
                path: Path::new(path),
                kind: SFlag::S_IFCHR,
                major,
                minor,
                mode: 0o666,
                uid: None,
                gid: None,
            };
            parent = Some(node(root, userns, &n, parent)?);
        }
        Ok::<_, Error>(())
    })?;
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
    if devices.is_empty() {
        return Ok(());
    }
    without_umask(|| {
        let mut parent = None;
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
            let n = Node {
                path: d.path(),
                kind,
                major: d.major() as u64,
                minor: d.minor() as u64,
                mode: d.file_mode().unwrap_or(0o666),
                uid: d.uid(),
                gid: d.gid(),
            };
            parent = Some(node(root, userns, &n, parent)?);
        }
        Ok(())
    })
}

/// One device node to make.
struct Node<'a> {
    path: &'a Path,
    kind: SFlag,
    major: u64,
    minor: u64,
    mode: u32,
    uid: Option<u32>,
    gid: Option<u32>,
}

/// The directory a node goes in, opened once for the nodes that share it
/// (all of the defaults are in /dev).
struct Parent<'a> {
    path: &'a Path,
    fd: std::os::fd::OwnedFd,
}

impl<'a> Parent<'a> {
    fn of(root: BorrowedFd<'_>, path: &'a Path, cached: Option<Parent<'a>>) -> Result<Parent<'a>> {
        let dir = path.parent().unwrap_or(Path::new("/"));
        match cached {
            Some(p) if p.path == dir => Ok(p),
            _ => Ok(Parent {
                path: dir,
                fd: paths::create(root, dir, false)?,
            }),
        }
    }
}

fn node<'a>(
    root: BorrowedFd<'_>,
    userns: bool,
    n: &Node<'a>,
    parent: Option<Parent<'a>>,
) -> Result<Parent<'a>> {
    let path = n.path;
    let fail = |source| Error::Node {
        path: path.to_path_buf(),
        source,
    };
    let parent = Parent::of(root, path, parent)?;
    let name = path.file_name().unwrap_or_default();
    if userns {
        // Bind the host's node over an empty file.
        let target = paths::create(root, path, true)?;
        mount(
            Some(path),
            &paths::proc_fd(target.as_fd()),
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(fail)?;
        return Ok(parent);
    }
    let dir = Some(parent.fd.as_raw_fd());
    // The caller cleared the umask: the mode is exactly the spec's.
    let perm = Mode::from_bits_truncate(n.mode & 0o7777);
    let make = || mknodat(dir, name, n.kind, perm, makedev(n.major, n.minor));
    match make() {
        // Whatever the rootfs has there is replaced.
        Err(Errno::EEXIST) => {
            nix::unistd::unlinkat(dir, name, nix::unistd::UnlinkatFlags::NoRemoveDir)
                .map_err(fail)?;
            make()
        }
        r => r,
    }
    .map_err(fail)?;
    if n.uid.is_some() || n.gid.is_some() {
        fchownat(
            dir,
            name,
            n.uid.map(Uid::from_raw),
            n.gid.map(Gid::from_raw),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(fail)?;
    }
    Ok(parent)
}

/// Runs `f` with the umask cleared, so that mknod gives nodes their exact
/// mode (instead of a chmod of each afterwards); the umask is restored.
fn without_umask<T>(f: impl FnOnce() -> T) -> T {
    let old = nix::sys::stat::umask(Mode::empty());
    let r = f();
    nix::sys::stat::umask(old);
    r
}
