//! Bringing the guest up, as its PID 1.
//!
//! Stage 1 makes a tmpfs the root, the initramfs's files bind-mounted into
//! it (pivot_root, which rt's containers need, is refused on the initramfs
//! itself), then re-executes the agent. Stage 2 mounts the API filesystems
//! and cgroup2 (every controller: the guest's limits are v2), loads the
//! virtio modules, mounts the host's share and opens the channel.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::mount::{mount, MsFlags};

/// Where the host's virtiofs share (the container's rootfs and bind-mount
/// sources) is mounted.
pub const SHARE: &str = "/run/rt-share";

/// Makes a tmpfs the root, with the initramfs's files bind-mounted into it,
/// and re-executes.
///
/// pivot_root (which rt's containers need) refuses a process whose root is
/// the initramfs itself, but not one whose root is a tmpfs holding bind
/// mounts of the initramfs's directories. Binding them instead of copying
/// them saves a copy of every byte (about 20 MB, some 0.5 s under TCG) and
/// the guest memory the copy took.
pub fn stage1() -> Result<()> {
    let new = Path::new("/newroot");
    std::fs::create_dir_all(new).context("creating /newroot")?;
    mount(
        Some("tmpfs"),
        new,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("mode=0755"),
    )
    .context("mounting a tmpfs on /newroot")?;
    for entry in std::fs::read_dir("/").context("reading /")?.flatten() {
        let name = entry.file_name();
        if name == "newroot" {
            continue;
        }
        let target = new.join(&name);
        let ft = entry.file_type().context("reading /")?;
        if ["proc", "sys", "dev"].iter().any(|n| name == *n) {
            std::fs::create_dir_all(&target).context("creating a mount point")?;
            continue;
        }
        if ft.is_symlink() {
            let link = std::fs::read_link(entry.path())?;
            std::os::unix::fs::symlink(link, &target)
                .with_context(|| format!("linking {}", target.display()))?;
            continue;
        }
        if ft.is_dir() {
            std::fs::create_dir(&target)
        } else {
            File::create(&target).map(drop)
        }
        .with_context(|| format!("creating {}", target.display()))?;
        mount(
            Some(&entry.path()),
            &target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .with_context(|| format!("binding {} into the new root", entry.path().display()))?;
    }
    nix::unistd::chdir(new).context("chdir /newroot")?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .context("moving the tmpfs onto /")?;
    nix::unistd::chroot(".").context("chroot")?;
    nix::unistd::chdir("/").context("chdir /")?;
    let err = nix::unistd::execv(c"/init", &[c"/init", c"stage2"]).unwrap_err();
    Err(err).context("re-executing /init")
}

/// Mounts, modules, the share; returns the channel's port.
pub fn stage2() -> Result<File> {
    let m = |src: &str, target: &str, fs: &str, data: Option<&str>| {
        std::fs::create_dir_all(target).with_context(|| format!("creating {target}"))?;
        mount(Some(src), target, Some(fs), MsFlags::empty(), data)
            .with_context(|| format!("mounting {fs} on {target}"))
    };
    m("proc", "/proc", "proc", None)?;
    m("sysfs", "/sys", "sysfs", None)?;
    m("devtmpfs", "/dev", "devtmpfs", None)?;
    console_stdio();
    m(
        "devpts",
        "/dev/pts",
        "devpts",
        Some("newinstance,ptmxmode=0666"),
    )?;
    m("shm", "/dev/shm", "tmpfs", None)?;
    m("tmpfs", "/tmp", "tmpfs", None)?;
    m("tmpfs", "/run", "tmpfs", Some("mode=0755"))?;
    m("cgroup2", "/sys/fs/cgroup", "cgroup2", Some("nsdelegate"))?;
    enable_controllers();
    load_modules()?;
    protect_rt()?;
    crate::trace("mounted; opening the channel");
    let port = open_port(Duration::from_secs(20))?;
    crate::trace("channel open");
    if std::env::var("rt_rootfs").as_deref() == Ok("block") {
        mount_disk()?;
    } else {
        m("share", SHARE, "virtiofs", None)?;
    }
    crate::trace("share mounted");
    std::env::set_var("PATH", "/bin:/usr/bin:/sbin:/usr/sbin");
    Ok(port)
}

/// The block transport (`rt_rootfs=block`): the share's layout (rootfs,
/// bind sources) on an ext4 image, the VM's first virtio-blk disk.
fn mount_disk() -> Result<()> {
    let dev = Path::new("/dev/vda");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !dev.exists() {
        if Instant::now() > deadline {
            bail!("no virtio-blk disk /dev/vda appeared for the block rootfs");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    std::fs::create_dir_all(SHARE).with_context(|| format!("creating {SHARE}"))?;
    mount(
        Some(dev),
        SHARE,
        Some("ext4"),
        MsFlags::MS_NOATIME,
        None::<&str>,
    )
    .context("mounting the block rootfs /dev/vda (ext4)")
}

/// The kernel found no /dev/console in the initramfs, so PID 1 starts with
/// descriptors 0–2 closed: the first files opened would take those numbers
/// and anything written to "stderr" would land in them (the channel).
/// Opening the console until 0–2 are taken fills them first.
fn console_stdio() {
    for _ in 0..3 {
        match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/console")
        {
            Ok(f) => {
                let fd = std::os::fd::IntoRawFd::into_raw_fd(f);
                if fd > 2 {
                    // 0–2 were open after all: give this one back.
                    let _ = nix::unistd::close(fd);
                    return;
                }
                // Kept open (without close-on-exec? std opened it with
                // O_CLOEXEC; children get their own stdio from Command).
                let _ = nix::fcntl::fcntl(
                    fd,
                    nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
                );
            }
            Err(_) => return,
        }
    }
}

/// Where the agent runs rt from: the tools disk mounted read-only, or a
/// read-only overlayfs of the initramfs's rt directory (lower layers
/// only). Either way no one in the guest can open the binary for writing
/// through /proc/PID/exe and rt needs no sealed copy. (`rt` in
/// [`rt_vm::guest::TOOLS_MOUNT`].)
pub const RT_BIN: &str = "/run/rt-bin/rt";

fn protect_rt() -> Result<()> {
    let bin = rt_vm::guest::TOOLS_MOUNT;
    std::fs::create_dir_all(bin).with_context(|| format!("creating {bin}"))?;
    if std::env::var("rt_tools").as_deref() == Ok("disk") {
        return mount_tools();
    }
    std::fs::create_dir_all("/run/rt-empty").context("creating /run/rt-empty")?;
    let opts = format!("lowerdir={}:/run/rt-empty", rt_vm::guest::RT_DIR);
    mount(
        Some("overlay"),
        bin,
        Some("overlay"),
        MsFlags::MS_RDONLY,
        Some(opts.as_str()),
    )
    .context("mounting rt's read-only overlay")
}

/// The tools disk (`rt_tools=disk`): the virtio-blk disk whose serial is
/// [`rt_vm::guest::TOOLS_SERIAL`], ext4, mounted read-only on
/// [`rt_vm::guest::TOOLS_MOUNT`].
fn mount_tools() -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let dev = loop {
        if let Some(dev) = disk_with_serial(rt_vm::guest::TOOLS_SERIAL) {
            break dev;
        }
        if Instant::now() > deadline {
            bail!(
                "no virtio-blk disk with serial {} (rt's tools disk) appeared",
                rt_vm::guest::TOOLS_SERIAL
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    mount(
        Some(dev.as_path()),
        rt_vm::guest::TOOLS_MOUNT,
        Some("ext4"),
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOATIME,
        None::<&str>,
    )
    .with_context(|| format!("mounting rt's tools disk {} (ext4)", dev.display()))?;
    crate::trace("rt from the tools disk");
    Ok(())
}

/// The /dev node of the block device whose serial (sysfs) is `serial`.
fn disk_with_serial(serial: &str) -> Option<std::path::PathBuf> {
    std::fs::read_dir("/sys/block")
        .ok()?
        .flatten()
        .find_map(|e| {
            let s = std::fs::read_to_string(e.path().join("serial")).ok()?;
            let dev = Path::new("/dev").join(e.file_name());
            (s.trim() == serial && dev.exists()).then_some(dev)
        })
}

/// Every controller for the containers' cgroups below the root.
fn enable_controllers() {
    let all = std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers").unwrap_or_default();
    let want: Vec<String> = all.split_whitespace().map(|c| format!("+{c}")).collect();
    let _ = std::fs::write("/sys/fs/cgroup/cgroup.subtree_control", want.join(" "));
}

/// Loads /etc/modules-load's modules in order (finit_module).
fn load_modules() -> Result<()> {
    let list = std::fs::read_to_string("/etc/modules-load").unwrap_or_default();
    for path in list.lines().filter(|l| !l.is_empty()) {
        let f = File::open(path).with_context(|| format!("opening {path}"))?;
        match nix::kmod::finit_module(f.as_fd(), c"", nix::kmod::ModuleInitFlags::empty()) {
            Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
            Err(e) => return Err(e).with_context(|| format!("loading {path}")),
        }
    }
    Ok(())
}

/// The virtio-serial port named `rt.agent`, once udev-less sysfs shows it.
fn open_port(timeout: Duration) -> Result<File> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(entries) = std::fs::read_dir("/sys/class/virtio-ports") {
            for e in entries.flatten() {
                let name = std::fs::read_to_string(e.path().join("name")).unwrap_or_default();
                if name.trim() == "rt.agent" {
                    let dev = Path::new("/dev").join(e.file_name());
                    return std::fs::OpenOptions::new()
                        .read(true)
                        .write(true)
                        .open(&dev)
                        .with_context(|| format!("opening {}", dev.display()));
                }
            }
        }
        if Instant::now() > deadline {
            bail!("no virtio-serial port named rt.agent appeared");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Syncs and powers the guest off (QEMU then exits).
pub fn power_off() -> ! {
    nix::unistd::sync();
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}
