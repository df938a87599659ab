//! The few raw system calls rt needs that `nix` does not wrap safely.
//!
//! Every `unsafe` block of the runtime lives here, each with a `SAFETY:` comment
//! stating why it holds. Callers get safe functions with typed errors.

pub mod bpf;
pub mod mountapi;
pub mod netns_helper;
pub mod raw;
pub mod spawn;
pub mod spread;

use std::fs;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::unistd::{ForkResult, Pid};

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

/// Number of threads of the calling process: the link count of
/// /proc/self/task, which procfs gives as two plus the threads (one
/// `statx`, against an open, read and close of /proc/self/stat, 0.04 ms
/// of every `create` here); /proc/self/stat's field where that count is
/// not there.
pub fn thread_count() -> Result<usize> {
    if let Ok(st) = nix::sys::stat::stat("/proc/self/task") {
        if st.st_nlink > 2 {
            return Ok(st.st_nlink as usize - 2);
        }
    }
    threads_in_stat()
}

/// The thread count in /proc/self/stat (field 20, num_threads).
fn threads_in_stat() -> Result<usize> {
    let stat = read_proc("/proc/self/stat").map_err(Error::ProcStat)?;
    // Field 20 (num_threads); the comm field (2) may contain spaces, so count after ')'.
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    Ok(after
        .split_whitespace()
        .nth(17)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0))
}

/// Proof that the process was single-threaded when it was made. Not `Send`:
/// it cannot reach another thread, and rt's processes start none.
///
/// Taken before a process joins another mount namespace, where /proc/self may
/// not resolve; a child forked from a single-threaded process is
/// single-threaded too, so it may use its parent's token.
#[derive(Debug, Clone, Copy)]
pub struct SingleThreaded(std::marker::PhantomData<*const ()>);

/// Checks that the process has exactly one thread. A network namespace
/// helper started at the entry point and not taken over by now is reaped
/// first ([`netns_helper::discard_early`]): it shares our memory, and the
/// token is what every fork asks for.
pub fn single_threaded() -> Result<SingleThreaded> {
    netns_helper::discard_early();
    let threads = thread_count()?;
    if threads != 1 {
        return Err(Error::MultiThreaded(threads));
    }
    Ok(SingleThreaded(std::marker::PhantomData))
}

/// fork(2), only for a process proven single-threaded.
///
/// Forking a multi-threaded process leaves the child with locks held by threads
/// that do not exist in it; rt's processes are single-threaded by design, and the
/// token turns a violation of that design into an error instead of a deadlock.
pub fn fork(_proof: SingleThreaded) -> Result<ForkResult> {
    // SAFETY: the process has exactly one thread (the token says so), so the child
    // inherits no lock held by another thread and may run arbitrary Rust code.
    unsafe { nix::unistd::fork() }.map_err(|e| Error::Syscall("fork", e))
}

/// `struct clone_args` of clone3(2), up to `cgroup` (CLONE_ARGS_SIZE_VER2).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Forks (clone3 without a new stack) with the child born in the cgroup2
/// directory `cgroup`: no migration afterwards, so no wait for the global
/// cgroup lock that a write to cgroup.procs takes.
///
/// Like [`fork`] it needs proof that the process is single-threaded. The child runs on a
/// copy of the parent's memory, as after fork(2), but glibc's fork handlers do
/// not run in it: callers only use async-signal-safe operations, fresh
/// descriptors, and finally exec or `exit_now`.
pub fn fork_into_cgroup(proof: SingleThreaded, cgroup: BorrowedFd<'_>) -> Result<ForkResult> {
    fork_into(proof, 0, Some(cgroup))
}

/// Forks with the child born in new namespaces (`namespaces`: `CLONE_NEW*`
/// flags, as unshare(2) takes them, without CLONE_NEWUSER or CLONE_NEWTIME)
/// and, given `cgroup`, in that cgroup2 directory: one process where
/// unshare-then-fork needs two. The same rules as [`fork_into_cgroup`] hold
/// for the child.
pub fn fork_into(
    _proof: SingleThreaded,
    namespaces: u64,
    cgroup: Option<BorrowedFd<'_>>,
) -> Result<ForkResult> {
    let rc = match cgroup {
        Some(cgroup) => {
            let args = CloneArgs {
                flags: namespaces | CLONE_INTO_CGROUP,
                exit_signal: libc::SIGCHLD as u64,
                cgroup: cgroup.as_raw_fd() as u64,
                ..CloneArgs::default()
            };
            // SAFETY: `args` is a live, initialised clone_args whose size we
            // pass; with stack 0 the child continues on a copy-on-write copy of
            // our stack, as after fork, and the process is single-threaded
            // (the token says so).
            unsafe {
                libc::syscall(
                    libc::SYS_clone3,
                    &args as *const CloneArgs,
                    std::mem::size_of::<CloneArgs>(),
                )
            }
        }
        // The classic clone(2), which every kernel has: flags, no new stack
        // (the child continues on a copy of ours), no tid or tls pointers.
        // SAFETY: as above; the null pointers ask for nothing to be written.
        None => unsafe {
            libc::syscall(
                libc::SYS_clone,
                namespaces | libc::SIGCHLD as u64,
                std::ptr::null_mut::<libc::c_void>(),
                std::ptr::null_mut::<libc::c_int>(),
                std::ptr::null_mut::<libc::c_int>(),
                0u64,
            )
        },
    };
    match Errno::result(rc).map_err(|e| Error::Syscall("clone", e))? {
        0 => Ok(ForkResult::Child),
        pid => Ok(ForkResult::Parent {
            child: Pid::from_raw(pid as i32),
        }),
    }
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

/// Marks every descriptor from `first` upward close-on-exec, so nothing of the
/// runtime's reaches the container: close_range with CLOSE_RANGE_CLOEXEC, or,
/// where the kernel lacks it (ENOSYS, or EINVAL before 5.11) or a seccomp
/// filter refuses it (EPERM), one fcntl per descriptor listed in
/// /proc/self/fd. Call it before loading the user's seccomp filter: then no
/// profile can make it fail.
pub fn cloexec_from(first: u32) -> Result<()> {
    // SAFETY: close_range only changes descriptor flags; it dereferences no memory.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    match Errno::result(rc) {
        Ok(_) => Ok(()),
        Err(Errno::ENOSYS | Errno::EINVAL | Errno::EPERM) => cloexec_by_listing(first),
        Err(e) => Err(Error::Syscall("close_range", e)),
    }
}

/// The fallback of [`cloexec_from`]: FD_CLOEXEC on every descriptor in
/// /proc/self/fd from `first` up.
fn cloexec_by_listing(first: u32) -> Result<()> {
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map_err(|e| Error::Syscall("listing /proc/self/fd", io_errno(&e)))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd: &i32| *fd >= 0 && *fd as u32 >= first)
        .collect();
    for fd in fds {
        // SAFETY: F_SETFD takes an integer argument and changes only the
        // descriptor's flags; a number that is no longer open (the listing's
        // own descriptor, closed by now) gives EBADF, which is ignored.
        let rc = unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        match Errno::result(rc) {
            Ok(_) | Err(Errno::EBADF) => {}
            Err(e) => return Err(Error::Syscall("fcntl(F_SETFD)", e)),
        }
    }
    Ok(())
}

fn io_errno(e: &std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

/// A descriptor of a process-global object (the logger's file) that every
/// child of rt keeps until it execs: set once, before any fork, by the one
/// owner of that object, which never closes it (it lives as long as the
/// process). Children's log lines then land in the same file instead of in
/// whatever later reuses a closed number.
static KEPT_IN_CHILDREN: std::sync::OnceLock<BorrowedFd<'static>> = std::sync::OnceLock::new();

/// Registers `fd` as kept by [`close_fds_except`]. The descriptor should be
/// close-on-exec: it survives into the children, never into the container.
/// Returns false if one was registered already.
pub fn keep_in_children(fd: BorrowedFd<'static>) -> bool {
    KEPT_IN_CHILDREN.set(fd).is_ok()
}

/// The ranges from `first` up that leave out every number in `keep`.
fn ranges_without(first: u32, mut keep: Vec<u32>) -> Vec<(u32, u32)> {
    keep.sort_unstable();
    keep.dedup();
    let mut ranges = Vec::new();
    let mut lo = first;
    for k in keep.into_iter().filter(|k| *k >= first) {
        if k > lo {
            ranges.push((lo, k - 1));
        }
        lo = k + 1;
    }
    ranges.push((lo, u32::MAX));
    ranges
}

/// Closes every descriptor from `first` upward except `keep` and the one
/// registered with [`keep_in_children`] (close_range).
///
/// Run right after fork in a child that will never return into the parent's
/// code: descriptors the parent holds (a state-directory lock, a listening
/// socket) must not stay open in the container's processes. The objects that
/// owned them in the parent's copy of memory are never dropped in the child
/// (it ends with `exit_now` or exec), so nothing closes them twice. An object
/// that is *used* in the child after this (the logger, global to the
/// process) must not be closed here, or a later open reuses its number and
/// the child writes into the wrong file: such a descriptor is registered
/// with [`keep_in_children`] and left open.
pub fn close_fds_except(first: u32, keep: BorrowedFd<'_>) -> Result<()> {
    let mut kept = vec![keep.as_raw_fd() as u32];
    if let Some(fd) = KEPT_IN_CHILDREN.get() {
        kept.push(fd.as_raw_fd() as u32);
    }
    for (lo, hi) in ranges_without(first, kept) {
        // SAFETY: close_range takes integers only; see the function docs for
        // why closing descriptors owned by other values is sound here.
        let rc = unsafe { libc::syscall(libc::SYS_close_range, lo, hi, 0) };
        Errno::result(rc).map_err(|e| Error::Syscall("close_range", e))?;
    }
    Ok(())
}

/// Makes `tty` the controlling terminal of the calling session (TIOCSCTTY).
pub fn set_controlling_terminal(tty: BorrowedFd<'_>) -> Result<()> {
    // SAFETY: TIOCSCTTY takes an integer argument (0: do not steal), no pointer.
    let rc = unsafe { libc::ioctl(tty.as_raw_fd(), libc::TIOCSCTTY, 0) };
    Errno::result(rc)
        .map(drop)
        .map_err(|e| Error::Syscall("ioctl(TIOCSCTTY)", e))
}

/// Sets a terminal's window size (TIOCSWINSZ).
pub fn set_window_size(tty: BorrowedFd<'_>, rows: u16, cols: u16) -> Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a `winsize` through the pointer, which points to a
    // live, initialised value on our stack for the whole call.
    let rc = unsafe { libc::ioctl(tty.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    Errno::result(rc)
        .map(drop)
        .map_err(|e| Error::Syscall("ioctl(TIOCSWINSZ)", e))
}

/// Reads a terminal's window size (TIOCGWINSZ).
pub fn window_size(tty: BorrowedFd<'_>) -> Result<(u16, u16)> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes a `winsize` through the pointer, which points to a
    // live value on our stack for the whole call.
    let rc = unsafe { libc::ioctl(tty.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
    Errno::result(rc).map_err(|e| Error::Syscall("ioctl(TIOCGWINSZ)", e))?;
    Ok((ws.ws_row, ws.ws_col))
}

/// pidfd_open(2): a descriptor that names `pid` and cannot be confused with a
/// later process that reuses the number.
pub fn pidfd_open(pid: Pid) -> Result<OwnedFd> {
    // SAFETY: pidfd_open takes integers only.
    let rc = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    let fd = Errno::result(rc).map_err(|e| Error::Syscall("pidfd_open", e))?;
    // SAFETY: on success the syscall returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// process_madvise(2): gives `advice` (`libc::MADV_PAGEOUT`, `MADV_COLD`)
/// for `ranges` (start, length) of the address space of the process
/// `pidfd` names. Returns the bytes the kernel advised, which is less than
/// asked when it stopped at a range that is not mapped.
pub fn process_madvise(
    pidfd: BorrowedFd<'_>,
    ranges: &[(usize, usize)],
    advice: i32,
) -> Result<usize> {
    let mut done = 0;
    // The kernel takes at most IOV_MAX (1024) ranges per call.
    for chunk in ranges.chunks(1024) {
        let iov: Vec<libc::iovec> = chunk
            .iter()
            .map(|&(start, len)| libc::iovec {
                iov_base: start as *mut libc::c_void,
                iov_len: len,
            })
            .collect();
        // SAFETY: the kernel reads `iov.len()` iovecs from the live vector;
        // their addresses belong to the other process and are never
        // dereferenced here.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_process_madvise,
                pidfd.as_raw_fd(),
                iov.as_ptr(),
                iov.len(),
                advice,
                0,
            )
        };
        done += Errno::result(rc).map_err(|e| Error::Syscall("process_madvise", e))? as usize;
    }
    Ok(done)
}

/// pidfd_send_signal(2).
pub fn pidfd_send_signal(pidfd: BorrowedFd<'_>, signal: i32) -> Result<()> {
    // SAFETY: a null siginfo pointer is allowed (the kernel fills in SI_USER); the
    // other arguments are integers.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    Errno::result(rc)
        .map(drop)
        .map_err(|e| Error::Syscall("pidfd_send_signal", e))
}

/// kill(2) with a raw signal number (0 and real-time signals included, which
/// nix's `Signal` cannot name).
pub fn kill(pid: Pid, signal: i32) -> Result<()> {
    // SAFETY: kill takes integers only.
    let rc = unsafe { libc::kill(pid.as_raw(), signal) };
    Errno::result(rc)
        .map(drop)
        .map_err(|e| Error::Syscall("kill", e))
}

/// Sends one gratuitous ARP request (an RFC 5227 announcement: sender and
/// target address both `ip`) with hardware address `mac`, broadcast out of
/// interface `ifindex` of the calling thread's network namespace, so that
/// the segment's neighbour caches take the address's (new) owner at once.
pub fn arp_announce(ifindex: u32, mac: [u8; 6], ip: [u8; 4]) -> Result<()> {
    let fd = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Packet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| Error::Syscall("socket(AF_PACKET)", e))?;
    let mut arp = [0u8; 28];
    arp[0..2].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    arp[2..4].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    arp[4] = 6;
    arp[5] = 4;
    arp[6..8].copy_from_slice(&1u16.to_be_bytes()); // request
    arp[8..14].copy_from_slice(&mac);
    arp[14..18].copy_from_slice(&ip);
    arp[24..28].copy_from_slice(&ip);
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    to.sll_family = libc::AF_PACKET as u16;
    to.sll_protocol = (libc::ETH_P_ARP as u16).to_be();
    to.sll_ifindex = ifindex as i32;
    to.sll_halen = 6;
    to.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    // SAFETY: `arp` and `to` are live, initialised values for the whole call,
    // and the lengths passed are theirs.
    let rc = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            arp.as_ptr().cast(),
            arp.len(),
            0,
            (&to as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    Errno::result(rc)
        .map(drop)
        .map_err(|e| Error::Syscall("sendto(ARP announcement)", e))
}

/// Sets the process's personality (personality(2)).
pub fn set_personality(persona: libc::c_ulong) -> Result<()> {
    // SAFETY: personality takes an integer and touches no memory of ours.
    let rc = unsafe { libc::personality(persona) };
    Errno::result(rc)
        .map(drop)
        .map_err(|e| Error::Syscall("personality", e))
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

/// seccomp(SECCOMP_SET_MODE_FILTER, flags, prog): installs one classic-BPF
/// filter on the calling thread (or, with SECCOMP_FILTER_FLAG_TSYNC, on every
/// thread). Needs no_new_privs or CAP_SYS_ADMIN.
pub fn seccomp_set_mode_filter(filter: &[libc::sock_filter], flags: u32) -> Result<()> {
    seccomp_filter(filter, flags).map(drop)
}

/// As [`seccomp_set_mode_filter`], with SECCOMP_FILTER_FLAG_NEW_LISTENER:
/// returns the user-notification descriptor of the new filter (the kernel
/// allows one per process; TSYNC is dropped from `flags`, which it refuses
/// together with a listener, and is moot in a single-threaded process).
pub fn seccomp_set_mode_filter_listener(
    filter: &[libc::sock_filter],
    flags: u32,
) -> Result<OwnedFd> {
    let flags = (flags & !(libc::SECCOMP_FILTER_FLAG_TSYNC as u32))
        | libc::SECCOMP_FILTER_FLAG_NEW_LISTENER as u32;
    let fd = seccomp_filter(filter, flags)?;
    // SAFETY: with NEW_LISTENER the syscall returned a new descriptor that
    // nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// seccomp(SECCOMP_SET_MODE_FILTER, flags, prog); its return value.
fn seccomp_filter(filter: &[libc::sock_filter], flags: u32) -> Result<libc::c_long> {
    let len = u16::try_from(filter.len()).map_err(|_| Error::Syscall("seccomp", Errno::E2BIG))?;
    let prog = libc::sock_fprog {
        len,
        filter: filter.as_ptr().cast_mut(),
    };
    // SAFETY: `prog` points at `len` initialised instructions that outlive the
    // call; the kernel copies the program and never writes through the pointer.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            flags,
            &prog as *const libc::sock_fprog,
        )
    };
    Errno::result(rc).map_err(|e| Error::Syscall("seccomp", e))
}

/// Receives one message on a UNIX socket and the first descriptor riding
/// along with it (SCM_RIGHTS): the receiving side of the console-socket
/// protocol. `None` when the message carried none.
pub fn recv_fd(sock: BorrowedFd<'_>) -> Result<Option<OwnedFd>> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut buf = [0u8; 4096];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(|e| Error::Syscall("recvmsg", e))?;
    let mut first = None;
    for c in msg.cmsgs().map_err(|e| Error::Syscall("recvmsg", e))? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            for raw in fds {
                // SAFETY: the kernel installed this descriptor in our table
                // for this message; nothing else owns it (extra ones are
                // owned here too, and closed when dropped).
                let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                first.get_or_insert(owned);
            }
        }
    }
    Ok(first)
}

/// Lets a write to a pipe nobody reads end the process by SIGPIPE, as it
/// ends C programs and Go's (runc's) writes to stdout: Rust starts with
/// SIGPIPE ignored, so `rt list | head -1` panicked on the EPIPE instead.
/// For commands whose only output goes to their caller.
pub fn default_sigpipe() {
    // SAFETY: SIG_DFL installs no handler (no code of ours runs in signal
    // context); the disposition is process-wide state nothing else relies on
    // in these commands.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Ends the process as if killed by `signal` (its parent's wait status
/// says so), without a core file: the process that stands for a workload
/// killed by signal N dies of signal N.
pub fn die_of(signal: i32) -> ! {
    let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0);
    // SAFETY: SIG_DFL installs no handler (no code of ours runs in signal
    // context); sigset operations and raise(3) only touch the local set.
    unsafe {
        libc::signal(signal, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, signal);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::raise(signal);
    }
    // A signal whose default is to be ignored (or that could not be raised).
    exit_now(128 + signal)
}

/// Creates tap device `name` in the calling thread's network namespace
/// (TUNSETIFF, IFF_TAP | IFF_NO_PI) and returns its queue's descriptor,
/// close-on-exec. The device lives as long as the descriptor (unless
/// [`persist_tap`] is called): when the VM that holds it ends, the device
/// goes.
pub fn open_tap(name: &str) -> Result<OwnedFd> {
    // _IOW('T', 202, int)
    const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
    let tun = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(|e| {
            Error::Syscall(
                "open(/dev/net/tun)",
                Errno::from_raw(e.raw_os_error().unwrap_or(0)),
            )
        })?;
    let fd = OwnedFd::from(tun);
    if name.len() >= libc::IFNAMSIZ {
        return Err(Error::Syscall("TUNSETIFF", Errno::ENAMETOOLONG));
    }
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads (and updates) the ifreq through the pointer,
    // which points to a live, initialised value on our stack for the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, &mut ifr) };
    Errno::result(rc).map_err(|e| Error::Syscall("ioctl(TUNSETIFF)", e))?;
    Ok(fd)
}

/// Makes the tap of `fd` outlive its descriptors: closing the last one no
/// longer unregisters the device (a synchronous, RCU-waiting step on the
/// closing process's exit path); it goes with its network namespace, in
/// the kernel's batched clean-up of that namespace.
pub fn persist_tap(fd: BorrowedFd<'_>) -> Result<()> {
    // _IOW('T', 203, int)
    const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
    // SAFETY: TUNSETPERSIST takes its flag by value (no pointer); `fd` is
    // an open descriptor for the call's duration.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETPERSIST, 1 as libc::c_ulong) };
    Errno::result(rc).map_err(|e| Error::Syscall("ioctl(TUNSETPERSIST)", e))?;
    Ok(())
}

/// _exit(2): ends the process at once, without running atexit handlers or
/// flushing stdio buffers copied from the parent at fork.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit takes an integer and does not return; skipping destructors
    // is the point (they belong to the parent's copy of the state).
    unsafe { libc::_exit(code) }
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
    fn ranges_skip_kept_descriptors() {
        assert_eq!(ranges_without(3, vec![2]), [(3, u32::MAX)]);
        assert_eq!(ranges_without(3, vec![3]), [(4, u32::MAX)]);
        assert_eq!(
            ranges_without(3, vec![9, 5]),
            [(3, 4), (6, 8), (10, u32::MAX)]
        );
        assert_eq!(ranges_without(3, vec![5, 6]), [(3, 4), (7, u32::MAX)]);
    }

    #[test]
    fn cloexec_fallback_marks_descriptors() {
        let f = std::fs::File::open("/proc/self/status").unwrap();
        let fd = f.as_raw_fd();
        // SAFETY: F_SETFD/F_GETFD on a descriptor this test owns.
        unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
        cloexec_by_listing(fd as u32).unwrap();
        // SAFETY: as above.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
    }

    #[test]
    fn counts_threads() {
        let n = thread_count().unwrap();
        assert!(n >= 1);
        let h = std::thread::spawn(|| std::thread::sleep(std::time::Duration::from_millis(200)));
        assert!(thread_count().unwrap() > n - 1);
        h.join().unwrap();
    }

    #[test]
    fn task_link_count_agrees_with_stat() {
        // Other tests start and end threads meanwhile: a reading between
        // two equal ones from /proc/self/stat must equal them.
        let h = std::thread::spawn(|| std::thread::sleep(std::time::Duration::from_millis(300)));
        let agreed = (0..1000).any(|_| {
            let before = threads_in_stat().unwrap();
            let linked = thread_count().unwrap();
            let after = threads_in_stat().unwrap();
            assert!(linked >= 2, "a spawned thread runs: {linked}");
            before == after && linked == before
        });
        h.join().unwrap();
        assert!(agreed);
    }

    #[test]
    fn fork_refused_with_threads() {
        // The test harness runs tests on threads, so this process has several.
        let h = std::thread::spawn(|| std::thread::sleep(std::time::Duration::from_millis(300)));
        assert!(matches!(single_threaded(), Err(Error::MultiThreaded(_))));
        h.join().unwrap();
    }

    #[test]
    fn pidfd_signal_zero_to_self() {
        let fd = pidfd_open(nix::unistd::getpid()).unwrap();
        use std::os::fd::AsFd;
        pidfd_send_signal(fd.as_fd(), 0).unwrap();
    }

    #[test]
    fn process_madvise_advises_mapped_ranges_and_refuses_holes() {
        use std::os::fd::AsFd;
        let fd = pidfd_open(nix::unistd::getpid()).unwrap();
        // Two pages of this test's own heap, page-aligned.
        let buf = vec![1u8; 3 * 4096];
        let start = (buf.as_ptr() as usize + 4095) & !4095;
        let advised = process_madvise(fd.as_fd(), &[(start, 8192)], libc::MADV_COLD).unwrap();
        assert_eq!(advised, 8192);
        assert_eq!(buf[4096], 1);
        // Page zero is never mapped.
        let hole = process_madvise(fd.as_fd(), &[(0, 4096)], libc::MADV_COLD);
        assert!(
            matches!(hole, Err(Error::Syscall("process_madvise", Errno::ENOMEM))),
            "{hole:?}"
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
