//! Processes: forking (only a single-threaded process), pidfds, signals,
//! and the ways out of a process.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::unistd::{ForkResult, Pid};

use crate::{Error, Result};

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
    let stat = crate::read_proc("/proc/self/stat").map_err(Error::ProcStat)?;
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
/// first ([`crate::netns_helper::discard_early`]): it shares our memory, and the
/// token is what every fork asks for.
pub fn single_threaded() -> Result<SingleThreaded> {
    crate::netns_helper::discard_early();
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

/// Sets the process's personality (personality(2)).
pub fn set_personality(persona: libc::c_ulong) -> Result<()> {
    // SAFETY: personality takes an integer and touches no memory of ours.
    let rc = unsafe { libc::personality(persona) };
    Errno::result(rc)
        .map(drop)
        .map_err(|e| Error::Syscall("personality", e))
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
}
