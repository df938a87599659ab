//! A network namespace made ahead of the process that will live in it.
//!
//! Making a network namespace is the dearest single step of starting a
//! container on this kind of host (0.5–0.7 ms of kernel work: every
//! network subsystem sets itself up in it). Made by the container's init,
//! it delays everything the init does after it. [`NetnsHelper::spawn`]
//! starts it as soon as the caller knows it will be needed, in a helper
//! task on another CPU, while the caller goes on with its own set-up;
//! [`NetnsHelper::finish`] then hands the caller a descriptor of it, which
//! the init, forked afterwards, inherits and joins.
//!
//! The helper is cloned with CLONE_VM and CLONE_FILES: it shares the
//! caller's memory (the clone copies no page tables; a fork would copy
//! them, about 0.15 ms here) and descriptor table, and runs on a small
//! stack of its own. It is not a thread of the caller's (no CLONE_THREAD),
//! and it never touches the C library's state: it makes raw system calls
//! only (no `errno`, no lock, no thread-local storage, no allocation):
//!
//! 1. unshare(CLONE_NEWNET);
//! 2. opens its /proc/self/ns/net, close-on-exec, into the shared table;
//! 3. stores the descriptor (or -errno) in a slot at the bottom of its
//!    stack mapping, and returns; glibc's clone trampoline makes the exit(2)
//!    call.
//!
//! Its exit signal is 0: no SIGCHLD, and only a `__WCLONE` wait reaps it,
//! so a caller's `waitpid(-1)` never does. [`NetnsHelper::finish`] reaps it
//! (usually long gone by then) before the caller forks, so the caller is
//! single-threaded and alone in its memory again when it does.

use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;

use crate::{Error, Result};

/// The helper's stack: its one frame and the clone trampoline's need far
/// less.
const STACK_SIZE: usize = 64 * 1024;

/// A network namespace being made by a helper task; see the module.
#[derive(Debug)]
pub struct NetnsHelper {
    pid: Pid,
    stack: Stack,
    reaped: bool,
    /// The affinity the helper was kept within, off our CPU.
    spread: Option<crate::spread::Spread>,
}

/// Where the helper leaves its result: a descriptor of the namespace, or
/// -errno. At the bottom of the stack mapping, which outlives the helper.
#[repr(C)]
struct Slot {
    result: AtomicI32,
}

/// The helper wrote nothing (it died first).
const UNSET: i32 = i32::MIN;

impl NetnsHelper {
    /// Starts the helper, kept off the caller's CPU when there is another
    /// (see [`crate::spread`]): the point is that both work at once.
    pub fn spawn() -> Result<NetnsHelper> {
        let stack = Stack::new()?;
        let pid = stack.clone_helper()?;
        // Left to the scheduler, the helper is queued on our CPU and waits
        // for us to block (A/B here: 4.48 against 3.98 ms per `run`).
        let spread = crate::spread::Spread::of_this_process();
        if let Some(spread) = &spread {
            spread.away(pid);
        }
        Ok(NetnsHelper {
            pid,
            stack,
            reaped: false,
            spread,
        })
    }

    /// The helper's pid (for tests and logs).
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// Whether the helper has left its result (it is done, or about to
    /// exit): [`NetnsHelper::finish`] would not wait long.
    pub fn done(&self) -> bool {
        self.stack.slot().result.load(Ordering::Acquire) != UNSET
    }

    /// Waits for the helper to finish (it usually has) and reaps it: the
    /// namespace it made, as a close-on-exec descriptor of ours, or None
    /// when it made none (its unshare or open failed, or it died): the
    /// caller then makes its own, and meets the kernel's error itself.
    pub fn finish(mut self) -> Result<Option<OwnedFd>> {
        self.reap()?;
        Ok(self.take_fd())
    }

    /// The descriptor the reaped helper left, taken once.
    fn take_fd(&mut self) -> Option<OwnedFd> {
        let result = self.stack.slot().result.swap(UNSET, Ordering::Acquire);
        // SAFETY: the helper opened this descriptor in the table we share
        // and is gone (reaped before this is called); nothing else of ours
        // knows its number, and the swap takes it out of the slot, so it
        // is ours alone to own.
        (result >= 0).then(|| unsafe { OwnedFd::from_raw_fd(result) })
    }

    fn reap(&mut self) -> Result<()> {
        if self.reaped {
            return Ok(());
        }
        // Still at work: we are about to block, so it may have our CPU
        // too (on a host whose other CPUs are busy it would otherwise wait
        // while ours idles).
        if !self.done() {
            if let Some(spread) = &self.spread {
                spread.release(self.pid);
            }
        }
        loop {
            match waitpid(self.pid, Some(WaitPidFlag::__WCLONE)) {
                Err(Errno::EINTR) => continue,
                Ok(_) => break,
                Err(e) => {
                    // Not ours to reap: it may still run on its stack.
                    self.stack.leak();
                    return Err(Error::Syscall("waitpid", e));
                }
            }
        }
        self.reaped = true;
        Ok(())
    }
}

impl Drop for NetnsHelper {
    /// Reaps the helper if `finish` did not, and closes what it opened
    /// and nobody took.
    fn drop(&mut self) {
        if self.reap().is_ok() {
            drop(self.take_fd());
        }
    }
}

/// The helper's stack, an anonymous mapping unmapped on drop.
#[derive(Debug)]
struct Stack {
    /// The mapping's address (an integer, so that the helper's handle may
    /// move between threads, as the tests do).
    base: usize,
    leaked: bool,
}

impl Stack {
    fn new() -> Result<Stack> {
        // SAFETY: an anonymous private mapping at an address of the
        // kernel's choosing touches no existing memory.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                STACK_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(Error::Syscall("mmap", Errno::last()));
        }
        let stack = Stack {
            base: base as usize,
            leaked: false,
        };
        stack.slot().result.store(UNSET, Ordering::Relaxed);
        Ok(stack)
    }

    fn slot(&self) -> &Slot {
        // SAFETY: `base` is our live, page-aligned, writable mapping (freed
        // only on drop), zero-filled by the kernel: a valid Slot (an
        // AtomicI32 may be shared with the helper).
        unsafe { &*(self.base as *const Slot) }
    }

    /// Clones the helper onto this stack, the slot at its bottom.
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    fn clone_helper(&self) -> Result<Pid> {
        // SAFETY: the top of the mapping, 16-byte aligned (page-aligned
        // size), is the helper's initial stack; the mapping outlives the
        // helper (it is unmapped only once the helper is reaped, or leaked).
        // With CLONE_VM and CLONE_FILES, and no CLONE_THREAD, CLONE_SETTLS
        // or CLONE_*TID, the kernel writes nothing of ours and gives the
        // helper no rseq area (cleared for CLONE_VM) and no signal stack;
        // the helper writes only its slot and otherwise makes raw system
        // calls, so it shares no state of the C library's with us.
        let rc = unsafe {
            libc::clone(
                helper_main,
                (self.base as *mut u8).add(STACK_SIZE).cast(),
                libc::CLONE_VM | libc::CLONE_FILES,
                self.base as *mut libc::c_void,
            )
        };
        if rc < 0 {
            return Err(Error::Syscall("clone", Errno::last()));
        }
        Ok(Pid::from_raw(rc))
    }

    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    fn clone_helper(&self) -> Result<Pid> {
        Err(Error::Syscall("clone", Errno::ENOSYS))
    }

    fn leak(&mut self) {
        self.leaked = true;
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if !self.leaked {
            // SAFETY: `base` is our mapping of STACK_SIZE bytes, and its one
            // other user, the helper, has been reaped.
            unsafe { libc::munmap(self.base as *mut libc::c_void, STACK_SIZE) };
        }
    }
}

/// The helper; see the module's steps. Runs on its own stack in our
/// memory: nothing here may touch the C library (errno included, hence
/// [`raw`]), allocate or panic.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
extern "C" fn helper_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the stack mapping's base, a valid Slot that outlives
    // this task.
    let slot = unsafe { &*(arg as *const Slot) };
    let mut result = raw(libc::SYS_unshare, libc::CLONE_NEWNET as i64, 0, 0) as i32;
    if result == 0 {
        const PATH: &[u8] = b"/proc/self/ns/net\0";
        result = raw(
            libc::SYS_openat,
            libc::AT_FDCWD as i64,
            PATH.as_ptr() as i64,
            (libc::O_RDONLY | libc::O_CLOEXEC) as i64,
        ) as i32;
    }
    slot.result.store(result, Ordering::Release);
    0
}

/// A system call of up to three arguments, without the C library: the
/// result, or -errno.
#[cfg(target_arch = "x86_64")]
fn raw(nr: i64, a: i64, b: i64, c: i64) -> i64 {
    let ret: i64;
    // SAFETY: the `syscall` instruction with the kernel's x86-64 calling
    // convention; it clobbers rcx and r11 only. The calls made with it
    // (close, unshare, write and read of our own buffers) touch no memory
    // but the buffers passed.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") nr => ret,
            in("rdi") a,
            in("rsi") b,
            in("rdx") c,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

#[cfg(target_arch = "aarch64")]
fn raw(nr: i64, a: i64, b: i64, c: i64) -> i64 {
    let ret: i64;
    // SAFETY: `svc 0` with the kernel's arm64 calling convention (number in
    // x8, arguments and result in x0..x2); see the x86-64 twin.
    unsafe {
        std::arch::asm!(
            "svc 0",
            in("x8") nr,
            inlateout("x0") a => ret,
            in("x1") b,
            in("x2") c,
            options(nostack),
        );
    }
    ret
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsFd, AsRawFd};

    fn net_ns_of(pid: &str) -> std::path::PathBuf {
        std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap()
    }

    fn ns_descriptors() -> usize {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.unwrap().path()).ok())
            .filter(|l| l.to_string_lossy().starts_with("net:["))
            .count()
    }

    /// Root: the helper makes a new namespace and is gone; a joiner (a
    /// thread here, the forked init in rt) enters it by the descriptor; a
    /// helper dropped unfinished is reaped and leaves no descriptor. One
    /// test, so that no other test's helper is about while descriptors are
    /// counted.
    #[test]
    fn the_helper_hands_over_a_new_namespace_or_leaves_nothing() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: needs root (unshare(CLONE_NEWNET))");
            return;
        }
        let ours = net_ns_of("self");
        let before = ns_descriptors();
        let helper = NetnsHelper::spawn().unwrap();
        let pid = helper.pid();
        let fd = helper.finish().unwrap().expect("a namespace");
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
        let theirs = std::thread::scope(|s| {
            s.spawn(|| {
                nix::sched::setns(fd.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                net_ns_of("thread-self")
            })
            .join()
            .unwrap()
        });
        assert_ne!(theirs, ours, "the joiner is in a new namespace");
        assert_eq!(net_ns_of("self"), ours, "the caller's is unchanged");
        let fd_path = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
        assert_eq!(fd_path, theirs);
        drop(fd);
        assert_eq!(ns_descriptors(), before);

        let helper = NetnsHelper::spawn().unwrap();
        let pid = helper.pid();
        // Let it finish its work, so that there is a descriptor to close.
        std::thread::sleep(std::time::Duration::from_millis(50));
        drop(helper);
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
        assert_eq!(ns_descriptors(), before);
    }
}
