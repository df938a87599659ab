//! Resolving paths inside a rootfs so that a symlink in it never leads outside
//! (openat2 with RESOLVE_IN_ROOT), creating what is missing on the way.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, ResolveFlag};
use nix::sys::stat::{mkdirat, Mode};

/// Errors of in-root path resolution.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("resolving {path} inside the rootfs")]
    Resolve {
        path: PathBuf,
        #[source]
        source: Errno,
    },
    #[error("creating {path} inside the rootfs")]
    Create {
        path: PathBuf,
        #[source]
        source: Errno,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

fn resolve_flags() -> ResolveFlag {
    ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS
}

/// The path relative to the root, with `.` and leading `/` removed.
fn relative(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| matches!(c, Component::Normal(_) | Component::ParentDir))
        .collect()
}

/// Opens `path` (interpreted inside `root`) as an O_PATH descriptor.
pub fn open(root: BorrowedFd<'_>, path: &Path) -> Result<OwnedFd> {
    let rel = relative(path);
    let rel = if rel.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        rel
    };
    rt_sys::openat2(root, &rel, OFlag::O_PATH, resolve_flags()).map_err(|source| Error::Resolve {
        path: path.to_path_buf(),
        source,
    })
}

/// Opens `path` inside `root`, creating missing directories (and, if `file`,
/// an empty regular file as the last component) safely on the way.
pub fn create(root: BorrowedFd<'_>, path: &Path, file: bool) -> Result<OwnedFd> {
    if let Ok(fd) = open(root, path) {
        return Ok(fd);
    }
    let rel = relative(path);
    let parts: Vec<&std::ffi::OsStr> = rel.iter().collect();
    let mut prefix = PathBuf::new();
    let mut parent: Option<OwnedFd> = None;
    for (i, part) in parts.iter().enumerate() {
        prefix.push(part);
        let last = i + 1 == parts.len();
        match rt_sys::openat2(root, &prefix, OFlag::O_PATH, resolve_flags()) {
            Ok(fd) => {
                parent = Some(fd);
                continue;
            }
            Err(Errno::ENOENT) => {}
            Err(source) => {
                return Err(Error::Resolve {
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
        let dir = parent.as_ref().map_or(root, |p| p.as_fd());
        let made = if last && file {
            nix::fcntl::openat(
                Some(dir.as_raw_fd()),
                *part,
                OFlag::O_CREAT | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o644),
            )
            .map(|fd| {
                let _ = nix::unistd::close(fd);
            })
        } else {
            mkdirat(Some(dir.as_raw_fd()), *part, Mode::from_bits_truncate(0o755))
        };
        match made {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(source) => {
                return Err(Error::Create {
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
        let fd = rt_sys::openat2(root, &prefix, OFlag::O_PATH, resolve_flags()).map_err(|source| {
            Error::Resolve {
                path: path.to_path_buf(),
                source,
            }
        })?;
        parent = Some(fd);
    }
    match parent {
        Some(fd) => Ok(fd),
        None => open(root, path),
    }
}

/// The /proc/self/fd path that names `fd`: mount(2) follows it to the very
/// dentry we resolved, not to whatever the path points to by then.
pub fn proc_fd(fd: BorrowedFd<'_>) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn symlinks_stay_inside_root() {
        let tmp = std::env::temp_dir().join(format!("rt-paths-{}", std::process::id()));
        let root = tmp.join("root");
        let outside = tmp.join("outside");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        // An absolute symlink and a ../ symlink pointing out of the root.
        symlink(&outside, root.join("abs")).unwrap();
        symlink("../../outside", root.join("rel")).unwrap();
        let rootfd = std::fs::File::open(&root).unwrap();
        create(rootfd.as_fd(), Path::new("/abs/made"), false).unwrap();
        create(rootfd.as_fd(), Path::new("/rel/x/y"), true).unwrap();
        create(rootfd.as_fd(), Path::new("/../../escape"), false).unwrap();
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
        assert!(root.join(outside.strip_prefix("/").unwrap()).join("made").is_dir());
        assert!(root.join("escape").is_dir());
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
