//! Path handling that cannot leave the rootfs: entry names are cleaned
//! lexically (absolute paths and `..` refused) and every directory is opened
//! with openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS), so a symlink planted
//! by an earlier layer or entry makes the entry fail instead of redirecting it.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, ResolveFlag};
use nix::sys::stat::Mode;

pub const RESOLVE: ResolveFlag = ResolveFlag::RESOLVE_BENEATH
    .union(ResolveFlag::RESOLVE_NO_SYMLINKS)
    .union(ResolveFlag::RESOLVE_NO_MAGICLINKS);

/// The entry path as a relative path of normal components, or why not.
pub fn clean(p: &Path) -> Result<PathBuf, &'static str> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir => return Err("its path has a '..' component"),
            Component::RootDir | Component::Prefix(_) => return Err("its path is absolute"),
        }
    }
    Ok(out)
}

/// Why an openat2 walk failed, in words for the error naming the entry.
pub fn explain(e: Errno) -> &'static str {
    match e {
        Errno::ELOOP => "a component of its path is a symlink",
        Errno::EXDEV => "its path leads outside the rootfs",
        Errno::ENOTDIR => "a component of its path is not a directory",
        Errno::ENOENT => "a component of its path does not exist",
        _ => "its directory cannot be opened",
    }
}

/// Opens directory `rel` under `root` (O_PATH), creating missing components
/// as 0755 directories when `create` is set, as tar does.
pub fn open_dir(root: BorrowedFd<'_>, rel: &Path, create: bool) -> Result<OwnedFd, Errno> {
    let flags = OFlag::O_PATH | OFlag::O_DIRECTORY;
    match rt_sys::openat2(root, with_dot(rel), flags, RESOLVE) {
        Err(Errno::ENOENT) if create => {}
        other => return other,
    }
    let mut fd = rt_sys::openat2(root, Path::new("."), flags, RESOLVE)?;
    for c in rel.components() {
        let name = Path::new(c.as_os_str());
        match nix::sys::stat::mkdirat(Some(fd.as_raw_fd()), name, Mode::from_bits_truncate(0o755)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(e),
        }
        fd = rt_sys::openat2(fd.as_fd(), name, flags, RESOLVE)?;
    }
    Ok(fd)
}

fn with_dot(rel: &Path) -> &Path {
    if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    }
}

/// The path of `name` in the directory `dir` through /proc, for std calls
/// that take paths (the directory itself was reached safely).
pub fn proc_path(dir: BorrowedFd<'_>, name: &Path) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleaning() {
        assert_eq!(clean(Path::new("./a/./b/")).unwrap(), Path::new("a/b"));
        assert_eq!(clean(Path::new("./")).unwrap(), Path::new(""));
        assert!(clean(Path::new("/etc/passwd")).is_err());
        assert!(clean(Path::new("a/../../x")).is_err());
    }

    #[test]
    fn symlinks_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        std::os::unix::fs::symlink(dir.path(), root.join("out")).unwrap();
        let fd = std::fs::File::open(&root).unwrap();
        let e = open_dir(fd.as_fd(), Path::new("out/x"), true).unwrap_err();
        assert_eq!(e, Errno::ELOOP);
        assert!(!dir.path().join("x").exists());
        open_dir(fd.as_fd(), Path::new("a/b/c"), true).unwrap();
        assert!(root.join("a/b/c").is_dir());
    }
}
