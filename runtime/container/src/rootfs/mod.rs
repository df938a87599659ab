//! The container's root filesystem, set up by the init inside its mount
//! namespace: propagation, the rootfs bind, every spec mount in order, /dev,
//! pivot_root, then readonly and masked paths.

pub mod devices;
pub mod options;
pub mod paths;

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{mkdirat, Mode};
use oci_spec::runtime::{Mount, Spec};

/// Errors of rootfs setup.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("mounting {source_path:?} on {dest} (type {fstype:?})")]
    Mount {
        source_path: Option<PathBuf>,
        dest: PathBuf,
        fstype: Option<String>,
        #[source]
        source: Errno,
    },
    #[error("mount {dest}")]
    Options {
        dest: PathBuf,
        #[source]
        source: options::Error,
    },
    #[error(
        "{0} in the rootfs is a symlink: proc and sysfs must be mounted on ordinary directory"
    )]
    SymlinkDestination(PathBuf),
    #[error("rootfs propagation")]
    Propagation(#[source] options::Error),
    #[error(transparent)]
    Path(#[from] paths::Error),
    #[error(transparent)]
    Device(#[from] devices::Error),
    #[error("opening {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{step}")]
    Step {
        step: &'static str,
        #[source]
        source: Errno,
    },
    #[error("mount destination {0:?} is not absolute")]
    Relative(PathBuf),
    #[error("statfs {path}")]
    Statfs {
        path: PathBuf,
        #[source]
        source: Errno,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

fn step(step: &'static str) -> impl FnOnce(Errno) -> Error {
    move |source| Error::Step { step, source }
}

/// What the rootfs setup needs to know beyond the spec.
#[derive(Debug)]
pub struct Context<'a> {
    pub spec: &'a Spec,
    pub rootfs: &'a Path,
    pub bundle: &'a Path,
    pub in_user_ns: bool,
    pub has_cgroup_ns: bool,
    /// Host directories of the container's cgroup, one per hierarchy, with the
    /// name to give each under the cgroup mount (`memory`, `unified`, ...).
    pub cgroup_dirs: Vec<(String, PathBuf)>,
    /// cgroup2 only (unified host).
    pub cgroup_unified: bool,
}

/// Lazily unmounts `path` if something is mounted there; Ok when nothing is.
pub fn detach_if_mounted(path: &Path) -> nix::Result<()> {
    match nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(e),
    }
}

/// The first part of `spec` that needs a mount namespace of the container's
/// own, if any. Without one (a spec that shares the caller's), every mount
/// would land in the caller's tree, so rt makes none (as runc, it only
/// chroots into the rootfs) and refuses, by name, whatever would need one.
pub fn needs_mount_namespace(spec: &Spec) -> Option<&'static str> {
    let linux = spec.linux().as_ref();
    let non_empty = |v: Option<&Vec<String>>| v.is_some_and(|v| !v.is_empty());
    if spec.mounts().as_ref().is_some_and(|m| !m.is_empty()) {
        Some("mounts")
    } else if non_empty(linux.and_then(|l| l.masked_paths().as_ref())) {
        Some("linux.maskedPaths")
    } else if non_empty(linux.and_then(|l| l.readonly_paths().as_ref())) {
        Some("linux.readonlyPaths")
    } else if linux
        .and_then(|l| l.devices().as_ref())
        .is_some_and(|d| !d.is_empty())
    {
        Some("linux.devices")
    } else if linux
        .and_then(|l| l.rootfs_propagation().as_deref())
        .is_some_and(|p| !p.is_empty())
    {
        Some("linux.rootfsPropagation")
    } else if spec.root().as_ref().and_then(|r| r.readonly()) == Some(true) {
        Some("root.readonly")
    } else {
        None
    }
}

/// The rootfs setup that [`prepare`] began and [`finish_prepare`] ends.
#[derive(Debug)]
pub struct Prepared {
    root: File,
    /// The index in the spec's mounts of the first one not made yet.
    next: usize,
}

/// The first half of everything before pivot_root: propagation, the rootfs
/// bind, and the spec's mounts up to the first `cgroup` one, which shows the
/// container's own cgroup and so waits until that is made (the parent makes
/// it meanwhile).
pub fn prepare(ctx: &Context<'_>) -> Result<Prepared> {
    // Nothing we mount propagates back to the host.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(step("making / rslave"))?;
    // pivot_root needs the new root to be a mount point.
    mount(
        Some(ctx.rootfs),
        ctx.rootfs,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(step("binding the rootfs onto itself"))?;
    let root = File::open(ctx.rootfs).map_err(|source| Error::Open {
        path: ctx.rootfs.to_path_buf(),
        source,
    })?;
    let mounts = ctx.spec.mounts().as_deref().unwrap_or_default();
    let next = mounts.iter().position(is_cgroup).unwrap_or(mounts.len());
    for m in &mounts[..next] {
        mount_one(ctx, root.as_fd(), m)?;
    }
    Ok(Prepared { root, next })
}

/// The rest of [`prepare`], once the container's cgroup exists and the
/// process is in it: the remaining mounts and the devices (whose cgroup
/// rules are set by then).
pub fn finish_prepare(ctx: &Context<'_>, prepared: Prepared) -> Result<()> {
    let Prepared { root, next } = prepared;
    let mounts = ctx.spec.mounts().as_deref().unwrap_or_default();
    for m in &mounts[next..] {
        mount_one(ctx, root.as_fd(), m)?;
    }
    let dev_bound = mounts.iter().any(|m| {
        m.destination() == Path::new("/dev")
            && m.options()
                .as_deref()
                .unwrap_or_default()
                .iter()
                .any(|o| o == "bind" || o == "rbind")
    });
    let devices = ctx
        .spec
        .linux()
        .as_ref()
        .and_then(|l| l.devices().clone())
        .unwrap_or_default();
    if !dev_bound {
        devices::create_defaults(root.as_fd(), ctx.in_user_ns, &devices)?;
    }
    devices::create(root.as_fd(), ctx.in_user_ns, &devices)?;
    Ok(())
}

fn is_cgroup(m: &Mount) -> bool {
    matches!(m.typ().as_deref(), Some("cgroup" | "cgroup2"))
}

fn mount_one(ctx: &Context<'_>, root: std::os::fd::BorrowedFd<'_>, m: &Mount) -> Result<()> {
    let dest = m.destination();
    if !dest.is_absolute() {
        return Err(Error::Relative(dest.clone()));
    }
    let opts = options::parse(m.options().as_deref().unwrap_or_default()).map_err(|source| {
        Error::Options {
            dest: dest.clone(),
            source,
        }
    })?;
    let fstype = m.typ().as_deref();
    if is_cgroup(m) {
        return mount_cgroup(ctx, root, m, &opts);
    }
    if matches!(fstype, Some("proc" | "sysfs")) {
        refuse_symlink(root, dest)?;
    }
    let bind = opts.is_bind() || fstype == Some("bind");
    let source = m.source().as_ref().map(|s| {
        if bind && s.is_relative() {
            ctx.bundle.join(s)
        } else {
            s.clone()
        }
    });
    let is_file = bind
        && source
            .as_ref()
            .is_some_and(|s| s.metadata().is_ok_and(|md| !md.is_dir()));
    let target_fd = paths::create(root, dest, is_file)?;
    let target = paths::proc_fd(target_fd.as_fd());
    let mut flags = opts.flags;
    if bind {
        flags.insert(MsFlags::MS_BIND);
    }
    let fail = |source| Error::Mount {
        source_path: m.source().clone(),
        dest: dest.clone(),
        fstype: m.typ().clone(),
        source,
    };
    let label = ctx
        .spec
        .linux()
        .as_ref()
        .and_then(|l| l.mount_label().as_deref())
        .filter(|_| !bind && fstype.is_some_and(crate::lsm::takes_mount_label));
    let data = match label {
        Some(l) => crate::lsm::with_mount_label(&opts.data, l),
        None => opts.data.clone(),
    };
    let data = (!data.is_empty()).then_some(data.as_str());
    let first_flags = if bind {
        flags & (MsFlags::MS_BIND | MsFlags::MS_REC)
    } else {
        flags
    };
    let mounted = mount(
        source.as_deref(),
        &target,
        fstype.filter(|_| !bind),
        first_flags,
        data,
    );
    match mounted {
        Err(Errno::EPERM) if fstype == Some("sysfs") && ctx.in_user_ns => {
            // A user namespace without its own network namespace may not mount
            // sysfs: bind the host's, as runc does.
            mount(
                Some("/sys"),
                &target,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(fail)?;
        }
        other => other.map_err(fail)?,
    }
    drop(target_fd);
    // From here on, act on the new mount, not the directory it covers.
    let mounted_fd = paths::open(root, dest)?;
    let target = paths::proc_fd(mounted_fd.as_fd());
    let extra = flags & !(MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_REMOUNT);
    if bind && !extra.is_empty() {
        remount(&target, extra).map_err(|source| Error::Mount {
            source_path: None,
            dest: dest.clone(),
            fstype: Some("remount".into()),
            source,
        })?;
    }
    for p in &opts.propagation {
        mount(None::<&str>, &target, None::<&str>, *p, None::<&str>).map_err(|source| {
            Error::Mount {
                source_path: None,
                dest: dest.clone(),
                fstype: Some("propagation".into()),
                source,
            }
        })?;
    }
    if opts.rec_set != 0 || opts.rec_clear != 0 {
        rt_sys::mount_setattr_recursive(mounted_fd.as_fd(), opts.rec_set, opts.rec_clear).map_err(
            |e| Error::Mount {
                source_path: None,
                dest: dest.clone(),
                fstype: Some(format!("recursive attributes: {e}")),
                source: Errno::EINVAL,
            },
        )?;
    }
    Ok(())
}

/// CVE-2019-16884 / CVE-2023-27561: proc and sysfs go onto real
/// directories only. A rootfs whose /proc is a symlink would move the proc
/// mount (and the masked paths and LSM attribute writes that rely on it)
/// wherever the image points it, so it is refused as runc refuses it.
fn refuse_symlink(root: std::os::fd::BorrowedFd<'_>, dest: &Path) -> Result<()> {
    use nix::sys::stat::{fstatat, SFlag};
    let rel = dest.strip_prefix("/").unwrap_or(dest);
    use std::os::fd::AsRawFd;
    match fstatat(
        Some(root.as_raw_fd()),
        rel,
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    ) {
        Ok(st) if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFLNK => {
            Err(Error::SymlinkDestination(dest.to_path_buf()))
        }
        _ => Ok(()),
    }
}

/// Remounts a bind mount with `flags`, keeping the flags the kernel locks
/// (nosuid, nodev, noexec, atime) as they are, which a user namespace requires.
fn remount(target: &Path, flags: MsFlags) -> std::result::Result<(), Errno> {
    let current = nix::sys::statvfs::statvfs(target)?;
    let mut keep = MsFlags::empty();
    use nix::sys::statvfs::FsFlags;
    let f = current.flags();
    for (fs, ms) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if f.contains(fs) {
            keep |= ms;
        }
    }
    mount(
        None::<&str>,
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags | keep,
        None::<&str>,
    )
}

/// The `cgroup` mount: cgroup2 on a unified host; on a v1 host a tmpfs with one
/// directory per hierarchy, each a bind of the container's own cgroup there.
fn mount_cgroup(
    ctx: &Context<'_>,
    root: std::os::fd::BorrowedFd<'_>,
    m: &Mount,
    opts: &options::Options,
) -> Result<()> {
    let dest = m.destination();
    let fail = |fstype: &str, source| Error::Mount {
        source_path: None,
        dest: dest.clone(),
        fstype: Some(fstype.to_string()),
        source,
    };
    let ro = opts.flags.contains(MsFlags::MS_RDONLY);
    let base = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let fd = paths::create(root, dest, false)?;
    let target = paths::proc_fd(fd.as_fd());
    if ctx.cgroup_unified {
        if ctx.has_cgroup_ns {
            let flags = base | (opts.flags & MsFlags::MS_RDONLY);
            mount(
                Some("cgroup2"),
                &target,
                Some("cgroup2"),
                flags,
                None::<&str>,
            )
            .map_err(|e| fail("cgroup2", e))?;
        } else if let Some((_, dir)) = ctx.cgroup_dirs.first() {
            mount(
                Some(dir.as_path()),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| fail("cgroup2 bind", e))?;
            let again = paths::open(root, dest)?;
            remount(
                &paths::proc_fd(again.as_fd()),
                base | (opts.flags & MsFlags::MS_RDONLY),
            )
            .map_err(|e| fail("cgroup2 bind", e))?;
        }
        return Ok(());
    }
    mount(
        Some("tmpfs"),
        &target,
        Some("tmpfs"),
        base,
        Some("mode=755"),
    )
    .map_err(|e| fail("tmpfs", e))?;
    drop(fd);
    // The tmpfs just mounted is empty and nothing but this process sees it
    // yet: its directories are made and named relative to its root, with no
    // in-root resolution of each (two system calls per hierarchy, not nine).
    let top = paths::open(root, dest)?;
    let top_path = paths::proc_fd(top.as_fd());
    for (name, dir) in &ctx.cgroup_dirs {
        let made = mkdirat(
            Some(top.as_raw_fd()),
            name.as_str(),
            Mode::from_bits_truncate(0o755),
        );
        match made {
            Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
            Err(source) => {
                return Err(paths::Error::Create {
                    path: dest.join(name),
                    source,
                }
                .into())
            }
        }
        mount(
            Some(dir.as_path()),
            &top_path.join(name),
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| fail("cgroup bind", e))?;
    }
    // nosuid, nodev, noexec (and ro) on the tmpfs and every bind below it in
    // one mount_setattr, instead of a lookup and a remount per hierarchy
    // (about 20 system calls fewer on every v1 start); a remount of each
    // where the kernel predates mount_setattr (5.12).
    let mut attrs =
        rt_sys::MOUNT_ATTR_NOSUID | rt_sys::MOUNT_ATTR_NODEV | rt_sys::MOUNT_ATTR_NOEXEC;
    if ro {
        attrs |= rt_sys::MOUNT_ATTR_RDONLY;
    }
    match rt_sys::mount_setattr_recursive(top.as_fd(), attrs, 0) {
        Ok(()) => return Ok(()),
        Err(rt_sys::Error::Syscall(_, nix::errno::Errno::ENOSYS)) => {}
        Err(rt_sys::Error::Syscall(_, e)) => return Err(fail("cgroup bind", e)),
        Err(_) => return Err(fail("cgroup bind", nix::errno::Errno::EINVAL)),
    }
    for (name, _) in &ctx.cgroup_dirs {
        let sub: PathBuf = dest.join(name);
        let again = paths::open(root, &sub)?;
        let flags = base
            | if ro {
                MsFlags::MS_RDONLY
            } else {
                MsFlags::empty()
            };
        remount(&paths::proc_fd(again.as_fd()), flags).map_err(|e| fail("cgroup bind", e))?;
    }
    if ro {
        let again = paths::open(root, dest)?;
        remount(&paths::proc_fd(again.as_fd()), base | MsFlags::MS_RDONLY)
            .map_err(|e| fail("tmpfs", e))?;
    }
    Ok(())
}

/// Makes the rootfs the process's root: pivot_root, or with `no_pivot` a
/// MS_MOVE and chroot (for ramfs roots, where pivot_root is impossible).
pub fn enter(rootfs: &Path, no_pivot: bool, mount_ns: bool) -> Result<()> {
    nix::unistd::chdir(rootfs).map_err(step("chdir to rootfs"))?;
    if !mount_ns {
        // No mount namespace of the container's own: nothing may be mounted
        // or moved, since every mount would land in the caller's tree. As
        // runc does, the process is only chrooted into the rootfs.
        nix::unistd::chroot(".").map_err(step("chroot"))?;
    } else if no_pivot {
        mount(
            Some(rootfs),
            "/",
            None::<&str>,
            MsFlags::MS_MOVE,
            None::<&str>,
        )
        .map_err(step("moving rootfs to /"))?;
        nix::unistd::chroot(".").map_err(step("chroot"))?;
    } else {
        // pivot_root(".", "."): the old root ends up stacked under the new one;
        // make it rslave so the detach below does not reach the host, then drop it.
        nix::unistd::pivot_root(".", ".").map_err(step("pivot_root"))?;
        mount(
            None::<&str>,
            ".",
            None::<&str>,
            MsFlags::MS_SLAVE | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(step("making the old root rslave"))?;
        umount2(".", MntFlags::MNT_DETACH).map_err(step("detaching the old root"))?;
    }
    nix::unistd::chdir("/").map_err(step("chdir to /"))?;
    Ok(())
}

/// After pivot_root: rootfs propagation, readonly paths, masked paths, and a
/// read-only root.
pub fn finish(spec: &Spec) -> Result<()> {
    let linux = spec.linux().as_ref();
    if let Some(p) = linux
        .and_then(|l| l.rootfs_propagation().as_deref())
        .filter(|p| !p.is_empty())
    {
        let flags = options::propagation_of(p).map_err(Error::Propagation)?;
        mount(None::<&str>, "/", None::<&str>, flags, None::<&str>)
            .map_err(step("setting rootfs propagation"))?;
    }
    for p in linux
        .and_then(|l| l.readonly_paths().as_deref())
        .unwrap_or_default()
    {
        readonly(Path::new(p))?;
    }
    for p in linux
        .and_then(|l| l.masked_paths().as_deref())
        .unwrap_or_default()
    {
        mask(Path::new(p))?;
    }
    if spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false)
    {
        remount(Path::new("/"), MsFlags::MS_RDONLY).map_err(step("remounting / read-only"))?;
    }
    Ok(())
}

fn readonly(path: &Path) -> Result<()> {
    match mount(
        Some(path),
        path,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    ) {
        Err(Errno::ENOENT) => return Ok(()),
        r => r.map_err(|source| Error::Mount {
            source_path: Some(path.into()),
            dest: path.into(),
            fstype: Some("readonly bind".into()),
            source,
        })?,
    }
    remount(path, MsFlags::MS_RDONLY | MsFlags::MS_REC).map_err(|source| Error::Mount {
        source_path: None,
        dest: path.into(),
        fstype: Some("readonly remount".into()),
        source,
    })
}

fn mask(path: &Path) -> Result<()> {
    let md = match std::fs::symlink_metadata(path) {
        Ok(md) => md,
        Err(_) => return Ok(()),
    };
    let r = if md.is_dir() {
        mount(
            Some("tmpfs"),
            path,
            Some("tmpfs"),
            MsFlags::MS_RDONLY,
            None::<&str>,
        )
    } else {
        mount(
            Some("/dev/null"),
            path,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
    };
    match r {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(source) => Err(Error::Mount {
            source_path: None,
            dest: path.into(),
            fstype: Some("mask".into()),
            source,
        }),
    }
}
