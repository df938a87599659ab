//! The few raw system calls rt needs that `nix` does not wrap safely.
//!
//! Every `unsafe` block of the runtime lives here, each with a `SAFETY:` comment
//! stating why it holds. Callers get safe functions with typed errors.

pub mod bpf;
mod fds;
pub mod mountapi;
mod net;
pub mod netns_helper;
mod process;
pub mod raw;
mod seccomp;
pub mod spawn;
pub mod spread;
mod tty;

use std::fs;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::errno::Errno;

pub use fds::{cloexec_from, close_fds_except, keep_in_children, recv_fd};
pub use mountapi::{
    mount_setattr_recursive, MountAttr, MOUNT_ATTR_NOATIME, MOUNT_ATTR_NODEV,
    MOUNT_ATTR_NODIRATIME, MOUNT_ATTR_NOEXEC, MOUNT_ATTR_NOSUID, MOUNT_ATTR_NOSYMFOLLOW,
    MOUNT_ATTR_RDONLY, MOUNT_ATTR_STRICTATIME,
};
pub use net::{arp_announce, open_tap, persist_tap};
pub use process::{
    default_sigpipe, die_of, exit_now, fork, fork_into, fork_into_cgroup, kill, pidfd_open,
    pidfd_send_signal, process_madvise, set_personality, single_threaded, thread_count,
    SingleThreaded,
};
pub use seccomp::{seccomp_set_mode_filter, seccomp_set_mode_filter_listener};
pub use tty::{set_controlling_terminal, set_window_size, window_size};

/// Errors of the raw syscall layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("refusing to fork: process has {0} threads")]
    MultiThreaded(usize),
    #[error("reading /proc/self/stat")]
    ProcStat(#[source] std::io::Error),
    #[error("{0} failed")]
    Syscall(&'static str, #[source] Errno),
}

pub type Result<T> = std::result::Result<T, Error>;

/// Reads a file of /proc or /sys whole, in as few reads as its size allows.
///
/// `fs::read_to_string` sizes its buffer from the file's size, which such
/// files report as 0, and so starts with a 32-byte read and doubles: eight
/// reads for /proc/self/mountinfo. This starts at 4 KiB, and skips the stat.
pub fn read_proc(path: impl AsRef<std::path::Path>) -> std::io::Result<String> {
    use std::io::Read;
    let mut f = fs::File::open(path)?;
    let mut buf = Vec::with_capacity(4096);
    loop {
        if buf.len() == buf.capacity() {
            buf.reserve(buf.capacity());
        }
        let len = buf.len();
        let cap = buf.capacity();
        buf.resize(cap, 0);
        match f.read(&mut buf[len..]) {
            Ok(0) => {
                buf.truncate(len);
                break;
            }
            Ok(n) => buf.truncate(len + n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => buf.truncate(len),
            Err(e) => return Err(e),
        }
    }
    String::from_utf8(buf).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// The kernel's highest capability number, found by asking prctl(2)
/// (PR_CAPBSET_READ, which refuses a number the kernel does not know with
/// EINVAL) in a binary search: six system calls where reading
/// /proc/sys/kernel/cap_last_cap takes an open, two reads and a close
/// (25 µs against about 5 here). None if even capability 0 is refused.
pub fn last_cap() -> Option<u8> {
    let known = |cap: u8| {
        // SAFETY: PR_CAPBSET_READ takes a capability number and reads
        // nothing of our memory.
        unsafe { libc::prctl(libc::PR_CAPBSET_READ, libc::c_ulong::from(cap), 0, 0, 0) >= 0 }
    };
    if !known(0) {
        return None;
    }
    // Invariant: `lo` is known, `hi` is not (64: past any capability set).
    let (mut lo, mut hi) = (0u8, 64u8);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if known(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Some(lo)
}

/// setdomainname(2).
pub fn set_domainname(name: &str) -> Result<()> {
    // SAFETY: the pointer and length describe `name`'s bytes, which outlive the call;
    // the kernel copies them and does not require NUL termination.
    let rc = unsafe { libc::setdomainname(name.as_ptr().cast(), name.len()) };
    Errno::result(rc)
        .map(drop)
        .map_err(|e| Error::Syscall("setdomainname", e))
}

/// openat2(2) relative to `dir` with the given flags and resolve flags, as an
/// owned descriptor. Used with RESOLVE_IN_ROOT so that no path inside a
/// container's rootfs can lead outside it.
pub fn openat2(
    dir: BorrowedFd<'_>,
    path: &std::path::Path,
    flags: nix::fcntl::OFlag,
    resolve: nix::fcntl::ResolveFlag,
) -> std::result::Result<OwnedFd, Errno> {
    openat2_mode(dir, path, flags, nix::sys::stat::Mode::empty(), resolve)
}

/// openat2(2) with a creation mode (for O_CREAT and O_TMPFILE).
pub fn openat2_mode(
    dir: BorrowedFd<'_>,
    path: &std::path::Path,
    flags: nix::fcntl::OFlag,
    mode: nix::sys::stat::Mode,
    resolve: nix::fcntl::ResolveFlag,
) -> std::result::Result<OwnedFd, Errno> {
    use nix::fcntl::ResolveFlag;
    // Scoped, a walk through ".." fails with EAGAIN when any rename or
    // mount happened anywhere on the system meanwhile (the kernel cannot
    // then tell that it stayed inside), and the kernel asks the caller to
    // retry; a busy host (parallel containers mounting) meets it.
    let scoped = resolve.intersects(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_BENEATH);
    let mut retries = 0;
    let fd = loop {
        let how = nix::fcntl::OpenHow::new()
            .flags(flags | nix::fcntl::OFlag::O_CLOEXEC)
            .mode(mode)
            .resolve(resolve);
        match nix::fcntl::openat2(dir.as_raw_fd(), path, how) {
            Err(Errno::EAGAIN) if scoped && retries < OPENAT2_RETRIES => retries += 1,
            other => break other?,
        }
    };
    // SAFETY: openat2 returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// How often [`openat2_mode`] retries a scoped walk the kernel could not
/// vouch for (EAGAIN), as libpathrs and filepath-securejoin do.
const OPENAT2_RETRIES: u32 = 128;

/// fsetxattr(2): sets extended attribute `name` on the open file `fd`.
pub fn fsetxattr(fd: BorrowedFd<'_>, name: &str, value: &[u8]) -> std::result::Result<(), Errno> {
    let name = std::ffi::CString::new(name).map_err(|_| Errno::EINVAL)?;
    // SAFETY: `name` is NUL-terminated and `value` valid for its length; the
    // kernel only reads both.
    let rc = unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    Errno::result(rc).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_cap_is_the_kernels() {
        let text = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap").unwrap();
        assert_eq!(last_cap(), Some(text.trim().parse().unwrap()));
    }

    /// A scoped walk through ".." while renames happen elsewhere on the
    /// system: the kernel's EAGAIN is retried, never returned (it was,
    /// and failed a container's mount whose target went through "..").
    #[test]
    fn scoped_walks_survive_renames_elsewhere() {
        use nix::fcntl::{OFlag, ResolveFlag};
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("a/b")).unwrap();
        std::os::unix::fs::symlink("../..", root.path().join("a/b/up")).unwrap();
        let dir = std::fs::File::open(root.path()).unwrap();
        let churn = tempfile::tempdir().unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let renamer = {
            let stop = stop.clone();
            let (x, y) = (churn.path().join("x"), churn.path().join("y"));
            std::fs::create_dir(&x).unwrap();
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::fs::rename(&x, &y).unwrap();
                    std::fs::rename(&y, &x).unwrap();
                }
            })
        };
        let mut failed = Vec::new();
        for _ in 0..5000 {
            let r = openat2(
                std::os::fd::AsFd::as_fd(&dir),
                std::path::Path::new("a/b/up/a/../a/b"),
                OFlag::O_PATH,
                ResolveFlag::RESOLVE_IN_ROOT,
            );
            if let Err(e) = r {
                failed.push(e);
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        renamer.join().unwrap();
        assert!(
            failed.is_empty(),
            "{} walks failed: {:?}",
            failed.len(),
            failed[0]
        );
    }

    #[test]
    fn read_proc_reads_whole_files_of_any_size() {
        // A file reporting size 0, and regular files across the 4 KiB start.
        assert_eq!(
            read_proc("/proc/self/cmdline").unwrap().as_bytes(),
            std::fs::read("/proc/self/cmdline").unwrap()
        );
        let dir = std::env::temp_dir().join(format!("rt-read-proc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for len in [0, 1, 4095, 4096, 4097, 20_000] {
            let text: String = (0..len).map(|i| (b'a' + (i % 26) as u8) as char).collect();
            let file = dir.join(len.to_string());
            std::fs::write(&file, &text).unwrap();
            assert_eq!(read_proc(&file).unwrap(), text, "{len} bytes");
        }
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(read_proc(dir.join("missing")).is_err());
    }
}
