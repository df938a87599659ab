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
/// an empty regular file as the last component) safely on the way. A dangling
/// symlink on the way is followed inside the root, and its target created
/// there, as runc's securejoin does.
pub fn create(root: BorrowedFd<'_>, path: &Path, file: bool) -> Result<OwnedFd> {
    let mut want = relative(path);
    // Bounded like the kernel's symlink limit.
    for _ in 0..40 {
        match create_once(root, &want, file, path)? {
            Step::Done(fd) => return Ok(fd),
            Step::Restart(next) => want = next,
        }
    }
    Err(Error::Resolve {
        path: path.to_path_buf(),
        source: Errno::ELOOP,
    })
}

enum Step {
    Done(OwnedFd),
    Restart(PathBuf),
}

fn create_once(root: BorrowedFd<'_>, rel: &Path, file: bool, orig: &Path) -> Result<Step> {
    let mut missing = match open(root, rel) {
        Ok(fd) => return Ok(Step::Done(fd)),
        Err(Error::Resolve { source, .. }) => source,
        Err(e) => return Err(e),
    };
    let parts: Vec<&std::ffi::OsStr> = rel.iter().collect();
    let resolve_err = |source| Error::Resolve {
        path: orig.to_path_buf(),
        source,
    };
    // The deepest prefix that exists, looked for from the end: a mount point
    // mostly lacks only its last component (under a fresh /dev, say).
    // `missing` is what opening one component more gave.
    let mut start = parts.len().saturating_sub(1);
    let mut parent: Option<OwnedFd> = None;
    while start > 0 {
        let prefix: PathBuf = parts[..start].iter().collect();
        match rt_sys::openat2(root, &prefix, OFlag::O_PATH, resolve_flags()) {
            Ok(fd) => {
                parent = Some(fd);
                break;
            }
            Err(e) => {
                missing = e;
                start -= 1;
            }
        }
    }
    let mut prefix: PathBuf = parts[..start].iter().collect();
    for (i, part) in parts.iter().enumerate().skip(start) {
        let last = i + 1 == parts.len();
        let dir_prefix = prefix.clone();
        prefix.push(part);
        let opened = if i == start {
            Err(missing)
        } else {
            rt_sys::openat2(root, &prefix, OFlag::O_PATH, resolve_flags())
        };
        match opened {
            Ok(fd) => {
                parent = Some(fd);
                continue;
            }
            Err(Errno::ENOENT) => {}
            Err(source) => return Err(resolve_err(source)),
        }
        let dir = parent.as_ref().map_or(root, |p| p.as_fd());
        // A dangling symlink: continue from its target, inside the root.
        if let Ok(target) = nix::fcntl::readlinkat(Some(dir.as_raw_fd()), *part) {
            let target = PathBuf::from(target);
            let mut next = if target.is_absolute() {
                relative(&target)
            } else {
                dir_prefix.join(target)
            };
            for rest in &parts[i + 1..] {
                next.push(rest);
            }
            return Ok(Step::Restart(next));
        }
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
            mkdirat(
                Some(dir.as_raw_fd()),
                *part,
                Mode::from_bits_truncate(0o755),
            )
        };
        match made {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(source) => {
                return Err(Error::Create {
                    path: orig.to_path_buf(),
                    source,
                })
            }
        }
        let fd =
            rt_sys::openat2(root, &prefix, OFlag::O_PATH, resolve_flags()).map_err(resolve_err)?;
        parent = Some(fd);
    }
    match parent {
        Some(fd) => Ok(Step::Done(fd)),
        None => open(root, rel).map(Step::Done),
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
        assert!(root
            .join(outside.strip_prefix("/").unwrap())
            .join("made")
            .is_dir());
        assert!(root.join("escape").is_dir());
        std::fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn creates_whatever_part_of_a_path_is_missing() {
        let tmp = std::env::temp_dir().join(format!("rt-paths-missing-{}", std::process::id()));
        let root = tmp.join("root");
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        // A symlink to a missing directory, in the middle of the path.
        symlink("/a/later", root.join("a/b/link")).unwrap();
        let rootfd = std::fs::File::open(&root).unwrap();
        for (path, made) in [
            ("/a/b/c", "a/b/c"),
            ("/a/b/d/e/f", "a/b/d/e/f"),
            ("/x/y", "x/y"),
            ("/a/b/../g", "a/g"),
            ("/a/b/link/z", "a/later/z"),
        ] {
            create(rootfd.as_fd(), Path::new(path), false).unwrap();
            assert!(root.join(made).is_dir(), "{path}");
            // And again, now that it exists.
            create(rootfd.as_fd(), Path::new(path), false).unwrap();
        }
        std::fs::write(root.join("a/file"), "").unwrap();
        assert!(create(rootfd.as_fd(), Path::new("/a/file/under"), false).is_err());
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
