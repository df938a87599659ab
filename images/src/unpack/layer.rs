//! Applies one layer's tar entries to a rootfs: files, directories, symlinks,
//! hard links, device nodes and fifos with owners, modes, mtimes and xattrs;
//! whiteouts (`.wh.NAME`) and opaque directories (`.wh..wh..opq`) either
//! applied to the lower layers already there or, for `--overlay`, written as
//! overlayfs whiteouts. Every entry goes through `safe`.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FchmodatFlags, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags};
use tar::EntryType;

use super::safe::{self, RESOLVE};
use super::Error;

const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

/// How layers are applied.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Write overlayfs whiteouts (0:0 character devices, the opaque xattr)
    /// instead of removing from lower layers: for a layer unpacked alone.
    pub overlay: bool,
    /// Ownership and device nodes the user cannot create are skipped with a
    /// note instead of failing.
    pub rootless: bool,
}

/// Applies layers, one after another, to one rootfs.
#[derive(Debug)]
pub struct Applier<'a> {
    root: BorrowedFd<'a>,
    opts: Options,
    /// Paths the current layer wrote: its own whiteouts do not remove them.
    created: HashSet<PathBuf>,
    /// Directory mtimes, set once the layer is done (children change them).
    dir_times: Vec<(PathBuf, u64)>,
    /// The last parent directory opened, until something is removed.
    cache: Option<(PathBuf, Rc<OwnedFd>)>,
    pub notes: Vec<String>,
    /// Where the last entry's data ends in the layer stream.
    pub data_end: u64,
}

fn name_of(entry: &Path) -> String {
    entry.display().to_string()
}

/// Maps a syscall error on `entry` during `op`.
fn fail(entry: &Path, op: &'static str) -> impl FnOnce(Errno) -> Error {
    let entry = name_of(entry);
    move |source| Error::Entry { entry, op, source }
}

impl<'a> Applier<'a> {
    pub fn new(root: BorrowedFd<'a>, opts: Options) -> Self {
        Applier {
            root,
            opts,
            created: HashSet::new(),
            dir_times: Vec::new(),
            cache: None,
            notes: Vec::new(),
            data_end: 0,
        }
    }

    /// Applies every entry of one layer.
    pub fn apply<R: Read>(&mut self, archive: &mut tar::Archive<R>) -> Result<(), Error> {
        self.created.clear();
        self.dir_times.clear();
        self.data_end = 0;
        let entries = archive.entries().map_err(Error::Tar)?;
        for entry in entries {
            let mut e = entry.map_err(Error::Tar)?;
            self.data_end = e.raw_file_position() + e.size();
            self.entry(&mut e)?;
        }
        self.finish_dirs();
        Ok(())
    }

    /// The directory `rel` (created if missing), shared with the cache so
    /// that consecutive entries of one directory open it once.
    fn parent(&mut self, entry: &Path, rel: &Path) -> Result<Rc<OwnedFd>, Error> {
        if let Some((p, fd)) = &self.cache {
            if p == rel {
                return Ok(Rc::clone(fd));
            }
        }
        let fd = safe::open_dir(self.root, rel, true).map_err(|e| Error::Unsafe {
            entry: name_of(entry),
            reason: safe::explain(e).to_string(),
        })?;
        let fd = Rc::new(fd);
        self.cache = Some((rel.to_path_buf(), Rc::clone(&fd)));
        Ok(fd)
    }

    fn entry<R: Read>(&mut self, e: &mut tar::Entry<'_, R>) -> Result<(), Error> {
        let raw = e.path().map_err(Error::Tar)?.into_owned();
        let rel = safe::clean(&raw).map_err(|r| Error::Unsafe {
            entry: name_of(&raw),
            reason: r.to_string(),
        })?;
        let kind = e.header().entry_type();
        let Some(name) = rel.file_name().map(Path::new) else {
            // "./": the root itself keeps its own metadata.
            return match kind {
                EntryType::Directory => Ok(()),
                _ => Err(Error::Unsafe {
                    entry: name_of(&raw),
                    reason: "it replaces the rootfs itself".into(),
                }),
            };
        };
        let parent = rel.parent().unwrap_or(Path::new("")).to_path_buf();
        if let Some(target) = name
            .as_os_str()
            .as_bytes()
            .strip_prefix(WHITEOUT.as_bytes())
        {
            return self.whiteout(&raw, &parent, name, target);
        }
        self.created.insert(rel.clone());
        let h = e.header().clone();
        let mode = Mode::from_bits_truncate(h.mode().map_err(Error::Tar)? & 0o7777);
        let uid = h.uid().map_err(Error::Tar)? as u32;
        let gid = h.gid().map_err(Error::Tar)? as u32;
        let mtime = h.mtime().unwrap_or(0);
        let xattrs = xattrs(e)?;
        let fail = |op| fail(&raw, op);
        match kind {
            EntryType::Directory => {
                let dir = self.parent(&raw, &parent)?;
                if !is_dir(dir.as_fd(), name) {
                    self.remove(dir.as_fd(), name)
                        .map_err(fail("removing what is at"))?;
                    nix::sys::stat::mkdirat(
                        Some(dir.as_raw_fd()),
                        name,
                        Mode::from_bits_truncate(0o700),
                    )
                    .map_err(fail("mkdir"))?;
                }
                self.owner(dir.as_fd(), name, uid, gid)
                    .map_err(fail("chown"))?;
                // A directory (checked or made just now): chmod cannot follow a link.
                nix::sys::stat::fchmodat(
                    Some(dir.as_raw_fd()),
                    name,
                    mode,
                    FchmodatFlags::FollowSymlink,
                )
                .map_err(fail("chmod"))?;
                if !xattrs.is_empty() {
                    let fd = rt_sys::openat2(
                        dir.as_fd(),
                        name,
                        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW,
                        RESOLVE,
                    )
                    .map_err(fail("open"))?;
                    self.set_xattrs(&raw, fd.as_fd(), &xattrs)?;
                }
                self.dir_times.push((rel, mtime));
            }
            EntryType::Regular | EntryType::Continuous => {
                let dir = self.parent(&raw, &parent)?;
                self.remove(dir.as_fd(), name)
                    .map_err(fail("removing what is at"))?;
                let fd = rt_sys::openat2_mode(
                    dir.as_fd(),
                    name,
                    OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW,
                    Mode::from_bits_truncate(0o600),
                    RESOLVE,
                )
                .map_err(fail("create"))?;
                let mut file = std::fs::File::from(fd);
                std::io::copy(e, &mut file).map_err(|source| Error::Write {
                    entry: name_of(&raw),
                    source,
                })?;
                let fd = file.as_fd();
                self.owner(fd, Path::new(""), uid, gid)
                    .map_err(fail("chown"))?;
                nix::sys::stat::fchmod(fd.as_raw_fd(), mode).map_err(fail("chmod"))?;
                self.set_xattrs(&raw, fd, &xattrs)?;
                let t = TimeSpec::new(mtime as i64, 0);
                nix::sys::stat::futimens(fd.as_raw_fd(), &t, &t).map_err(fail("set mtime of"))?;
            }
            EntryType::Symlink => {
                let target = e
                    .link_name()
                    .map_err(Error::Tar)?
                    .ok_or_else(|| Error::Unsafe {
                        entry: name_of(&raw),
                        reason: "a symlink without a target".into(),
                    })?;
                let dir = self.parent(&raw, &parent)?;
                self.remove(dir.as_fd(), name)
                    .map_err(fail("removing what is at"))?;
                nix::unistd::symlinkat(target.as_ref(), Some(dir.as_raw_fd()), name)
                    .map_err(fail("symlink"))?;
                self.owner(dir.as_fd(), name, uid, gid)
                    .map_err(fail("chown"))?;
                set_mtime(dir.as_fd(), name, mtime).map_err(fail("set mtime of"))?;
            }
            EntryType::Link => {
                let target_raw =
                    e.link_name()
                        .map_err(Error::Tar)?
                        .ok_or_else(|| Error::Unsafe {
                            entry: name_of(&raw),
                            reason: "a hard link without a target".into(),
                        })?;
                let target = safe::clean(&target_raw).map_err(|r| Error::Unsafe {
                    entry: name_of(&raw),
                    reason: format!("its link target {}: {r}", target_raw.display()),
                })?;
                if target == rel {
                    return Ok(());
                }
                let (Some(tname), tparent) =
                    (target.file_name(), target.parent().unwrap_or(Path::new("")))
                else {
                    return Err(Error::Unsafe {
                        entry: name_of(&raw),
                        reason: "it links to the rootfs itself".into(),
                    });
                };
                let tdir =
                    safe::open_dir(self.root, tparent, false).map_err(|e| Error::Unsafe {
                        entry: name_of(&raw),
                        reason: format!(
                            "its link target {}: {}",
                            target.display(),
                            safe::explain(e)
                        ),
                    })?;
                let dir = self.parent(&raw, &parent)?;
                self.remove(dir.as_fd(), name)
                    .map_err(fail("removing what is at"))?;
                nix::unistd::linkat(
                    Some(tdir.as_raw_fd()),
                    Path::new(tname),
                    Some(dir.as_raw_fd()),
                    name,
                    AtFlags::empty(),
                )
                .map_err(fail("hard link"))?;
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let dev = nix::sys::stat::makedev(
                    u64::from(h.device_major().ok().flatten().unwrap_or(0)),
                    u64::from(h.device_minor().ok().flatten().unwrap_or(0)),
                );
                let sflag = match kind {
                    EntryType::Char => SFlag::S_IFCHR,
                    EntryType::Block => SFlag::S_IFBLK,
                    _ => SFlag::S_IFIFO,
                };
                let dir = self.parent(&raw, &parent)?;
                self.remove(dir.as_fd(), name)
                    .map_err(fail("removing what is at"))?;
                match nix::sys::stat::mknodat(Some(dir.as_raw_fd()), name, sflag, mode, dev) {
                    Ok(()) => {}
                    Err(Errno::EPERM) if self.opts.rootless && sflag != SFlag::S_IFIFO => {
                        self.notes
                            .push(format!("skipped device node {} (rootless)", raw.display()));
                        return Ok(());
                    }
                    Err(e) => return Err(fail("mknod")(e)),
                }
                self.owner(dir.as_fd(), name, uid, gid)
                    .map_err(fail("chown"))?;
                nix::sys::stat::fchmodat(
                    Some(dir.as_raw_fd()),
                    name,
                    mode,
                    FchmodatFlags::FollowSymlink,
                )
                .map_err(fail("chmod"))?;
                set_mtime(dir.as_fd(), name, mtime).map_err(fail("set mtime of"))?;
            }
            EntryType::XGlobalHeader
            | EntryType::XHeader
            | EntryType::GNULongName
            | EntryType::GNULongLink => {}
            other => {
                return Err(Error::Unsafe {
                    entry: name_of(&raw),
                    reason: format!("entry type {other:?} is not supported"),
                })
            }
        }
        Ok(())
    }

    /// `.wh.NAME` and `.wh..wh..opq`.
    fn whiteout(
        &mut self,
        raw: &Path,
        parent: &Path,
        name: &Path,
        target: &[u8],
    ) -> Result<(), Error> {
        let fail = |op| fail(raw, op);
        let dir = self.parent(raw, parent)?;
        if name.as_os_str() == OPAQUE {
            if self.opts.overlay {
                let fd = rt_sys::openat2(
                    dir.as_fd(),
                    Path::new("."),
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY,
                    RESOLVE,
                )
                .map_err(fail("open"))?;
                return rt_sys::fsetxattr(fd.as_fd(), "trusted.overlay.opaque", b"y")
                    .map_err(fail("mark opaque"));
            }
            let listing = safe::proc_path(dir.as_fd(), Path::new("."));
            let children: Vec<_> = std::fs::read_dir(&listing)
                .map_err(|source| Error::Write {
                    entry: name_of(raw),
                    source,
                })?
                .flatten()
                .map(|c| c.file_name())
                .collect();
            for child in children {
                if !self.created.contains(&parent.join(&child)) {
                    self.remove(dir.as_fd(), Path::new(&child))
                        .map_err(fail("removing under opaque"))?;
                }
            }
            return Ok(());
        }
        let target = Path::new(OsStr::from_bytes(target));
        if target.as_os_str().is_empty()
            || target == Path::new(".")
            || target == Path::new("..")
            || target.as_os_str().as_bytes().contains(&b'/')
        {
            return Err(Error::Unsafe {
                entry: name_of(raw),
                reason: "a whiteout that names no file in its directory".into(),
            });
        }
        if self.opts.overlay {
            self.remove(dir.as_fd(), target)
                .map_err(fail("removing what is at"))?;
            return nix::sys::stat::mknodat(
                Some(dir.as_raw_fd()),
                target,
                SFlag::S_IFCHR,
                Mode::empty(),
                0,
            )
            .map_err(fail("write a whiteout for"));
        }
        if self.created.contains(&parent.join(target)) {
            return Ok(());
        }
        self.remove(dir.as_fd(), target).map_err(fail("whiteout"))
    }

    /// Removes whatever is at `name` (a directory with its contents),
    /// without following a symlink there.
    fn remove(&mut self, dir: BorrowedFd<'_>, name: &Path) -> Result<(), Errno> {
        let st = match nix::sys::stat::fstatat(
            Some(dir.as_raw_fd()),
            name,
            AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(st) => st,
            Err(Errno::ENOENT) => return Ok(()),
            Err(e) => return Err(e),
        };
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            self.cache = None;
            // std's remove_dir_all walks with openat and never follows links.
            remove_tree(&safe::proc_path(dir, name))
                .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
        } else {
            nix::unistd::unlinkat(Some(dir.as_raw_fd()), name, UnlinkatFlags::NoRemoveDir)
        }
    }

    fn owner(&mut self, dir: BorrowedFd<'_>, name: &Path, uid: u32, gid: u32) -> Result<(), Errno> {
        let flags = if name.as_os_str().is_empty() {
            AtFlags::AT_EMPTY_PATH | AtFlags::AT_SYMLINK_NOFOLLOW
        } else {
            AtFlags::AT_SYMLINK_NOFOLLOW
        };
        match nix::unistd::fchownat(
            Some(dir.as_raw_fd()),
            name,
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
            flags,
        ) {
            Err(Errno::EPERM | Errno::EINVAL) if self.opts.rootless => {
                if self.notes.iter().all(|n| !n.starts_with("ownership")) {
                    self.notes.push(
                        "ownership not applied where the user cannot chown (rootless)".into(),
                    );
                }
                Ok(())
            }
            other => other,
        }
    }

    fn set_xattrs(
        &mut self,
        raw: &Path,
        fd: BorrowedFd<'_>,
        xattrs: &[(String, Vec<u8>)],
    ) -> Result<(), Error> {
        for (k, v) in xattrs {
            match rt_sys::fsetxattr(fd, k, v) {
                Ok(()) => {}
                Err(Errno::EPERM | Errno::EOPNOTSUPP) => {
                    self.notes
                        .push(format!("xattr {k} of {} not supported here", raw.display()));
                }
                Err(source) => {
                    return Err(Error::Entry {
                        entry: name_of(raw),
                        op: "set xattr on",
                        source,
                    })
                }
            }
        }
        Ok(())
    }

    fn finish_dirs(&mut self) {
        let dirs = std::mem::take(&mut self.dir_times);
        for (rel, mtime) in dirs.into_iter().rev() {
            let parent = rel.parent().unwrap_or(Path::new(""));
            let Some(name) = rel.file_name() else {
                continue;
            };
            if let Ok(dir) = safe::open_dir(self.root, parent, false) {
                let _ = set_mtime(dir.as_fd(), Path::new(name), mtime);
            }
        }
    }
}

fn is_dir(dir: BorrowedFd<'_>, name: &Path) -> bool {
    nix::sys::stat::fstatat(Some(dir.as_raw_fd()), name, AtFlags::AT_SYMLINK_NOFOLLOW)
        .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR)
}

fn set_mtime(dir: BorrowedFd<'_>, name: &Path, mtime: u64) -> Result<(), Errno> {
    let t = TimeSpec::new(mtime as i64, 0);
    nix::sys::stat::utimensat(
        Some(dir.as_raw_fd()),
        name,
        &t,
        &t,
        UtimensatFlags::NoFollowSymlink,
    )
}

/// The `SCHILY.xattr.*` PAX records of an entry.
fn xattrs<R: Read>(e: &mut tar::Entry<'_, R>) -> Result<Vec<(String, Vec<u8>)>, Error> {
    let mut out = Vec::new();
    if let Some(exts) = e.pax_extensions().map_err(Error::Tar)? {
        for ext in exts {
            let ext = ext.map_err(Error::Tar)?;
            if let Some(name) = ext.key().ok().and_then(|k| k.strip_prefix("SCHILY.xattr.")) {
                out.push((name.to_string(), ext.value_bytes().to_vec()));
            }
        }
    }
    Ok(out)
}

/// Removes a directory tree without following symlinks.
pub fn remove_tree(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}
