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
//! 2. sets `lo` up in it ([`loopback_up`], as runc and crun do in a new
//!    network namespace; another 0.2 ms of kernel work, addresses and
//!    routes included), leaving it to the init if that fails;
//! 3. opens its /proc/self/ns/net, close-on-exec, into the shared table;
//! 4. stores the descriptor (or -errno) in a slot at the bottom of its
//!    stack mapping, and returns; glibc's clone trampoline makes the exit(2)
//!    call.
//!
//! Its exit signal is 0: no SIGCHLD, and only a `__WCLONE` wait reaps it,
//! so a caller's `waitpid(-1)` never does. [`NetnsHelper::finish`] reaps it
//! (usually long gone by then) before the caller forks, so the caller is
//! single-threaded and alone in its memory again when it does.
//!
//! [`spawn_early`] starts one before the C library has started (from rt's
//! entry point, on a guess from argv and config.json), 0.3 ms ahead of
//! where the engine knows it wants one; [`NetnsHelper::spawn`] then takes
//! it over, and whatever does not is reaped by [`discard_early`], which
//! [`crate::single_threaded`] calls before any fork.

use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};

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
    /// Started by [`spawn_early`].
    early: bool,
}

/// Where the helper leaves its result: a descriptor of the namespace, or
/// -errno. At the bottom of the stack mapping, which outlives the helper.
#[repr(C)]
struct Slot {
    result: AtomicI32,
}

/// The helper wrote nothing (it died first).
const UNSET: i32 = i32::MIN;

/// The helper [`spawn_early`] started, until taken: its pid (0: none) and
/// its stack mapping.
static EARLY_PID: AtomicI32 = AtomicI32::new(0);
static EARLY_STACK: AtomicUsize = AtomicUsize::new(0);

/// Starts a helper before the C library has started, for
/// [`NetnsHelper::spawn`] to take over (or [`discard_early`] to reap). Its
/// own mapping, the raw clone and the affinity are raw system calls; a
/// failure leaves nothing started.
///
/// # Safety
/// The process has a single task, and the C library may not have started
/// yet: nothing here uses it (no errno, no thread-local storage).
#[cfg(target_arch = "x86_64")]
pub unsafe fn spawn_early() {
    if EARLY_PID.load(Ordering::Relaxed) != 0 {
        return;
    }
    let base = raw(
        libc::SYS_mmap,
        [
            0,
            STACK_SIZE as i64,
            (libc::PROT_READ | libc::PROT_WRITE) as i64,
            (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK) as i64,
            -1,
            0,
        ],
    );
    if (-4095..0).contains(&base) {
        return;
    }
    let stack = Stack {
        base: base as usize,
        leaked: false,
    };
    stack.slot().result.store(UNSET, Ordering::Relaxed);
    // SAFETY: the top of our fresh mapping is the helper's stack, the slot
    // at its bottom; see `Stack::clone_helper`.
    let pid = unsafe { rt_netns_helper_clone(stack.base + STACK_SIZE, stack.base) };
    if pid <= 0 {
        raw(libc::SYS_munmap, [base, STACK_SIZE as i64, 0, 0, 0, 0]);
        std::mem::forget(stack);
        return;
    }
    away_raw(pid as i32);
    EARLY_STACK.store(stack.base, Ordering::Relaxed);
    std::mem::forget(stack);
    EARLY_PID.store(pid as i32, Ordering::Release);
}

/// Reaps the helper [`spawn_early`] started, if nothing took it, and closes
/// its descriptor.
pub fn discard_early() {
    drop(NetnsHelper::take_early());
}

/// [`crate::spread::Spread::away`] in raw system calls: `pid` may run on
/// any of our CPUs but the one we are on. Best effort.
#[cfg(target_arch = "x86_64")]
fn away_raw(pid: i32) {
    const WORDS: usize = 16;
    let mut cpu = 0u32;
    if raw(
        libc::SYS_getcpu,
        [&mut cpu as *mut u32 as i64, 0, 0, 0, 0, 0],
    ) != 0
    {
        return;
    }
    let mut mask = std::mem::MaybeUninit::<[u64; WORDS]>::uninit();
    let p = mask.as_mut_ptr() as *mut u64;
    let n = raw(
        libc::SYS_sched_getaffinity,
        [0, (WORDS * 8) as i64, p as i64, 0, 0, 0],
    );
    let words = if n > 0 { n as usize / 8 } else { 0 };
    let (w, bit) = (cpu as usize / 64, cpu % 64);
    if w >= words.min(WORDS) {
        return;
    }
    // SAFETY: the kernel filled the first `words` words; w < words.
    // Volatile, so that the compiler emits no memset or loop idiom of the
    // C library's (which may not have started).
    let any = unsafe {
        let ours = p.add(w);
        std::ptr::write_volatile(ours, std::ptr::read_volatile(ours) & !(1u64 << bit));
        (0..words).any(|i| std::ptr::read_volatile(p.add(i)) != 0)
    };
    if any {
        raw(
            libc::SYS_sched_setaffinity,
            [pid as i64, n, p as i64, 0, 0, 0],
        );
    }
}

impl NetnsHelper {
    /// Starts the helper, kept off the caller's CPU when there is another
    /// (see [`crate::spread`]): the point is that both work at once. The
    /// one [`spawn_early`] started, if it did.
    pub fn spawn() -> Result<NetnsHelper> {
        if let Some(early) = Self::take_early() {
            return Ok(early);
        }
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
            early: false,
        })
    }

    /// The helper's pid (for tests and logs).
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// The helper [`spawn_early`] started, taken once.
    fn take_early() -> Option<NetnsHelper> {
        let pid = EARLY_PID.swap(0, Ordering::Acquire);
        if pid <= 0 {
            return None;
        }
        Some(NetnsHelper {
            pid: Pid::from_raw(pid),
            stack: Stack {
                base: EARLY_STACK.swap(0, Ordering::Relaxed),
                leaked: false,
            },
            reaped: false,
            spread: crate::spread::Spread::of_this_process(),
            early: true,
        })
    }

    /// Whether [`spawn_early`] started it (for logs and tests).
    pub fn early(&self) -> bool {
        self.early
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
    #[cfg(target_arch = "x86_64")]
    fn clone_helper(&self) -> Result<Pid> {
        // SAFETY: as `spawn_early`'s: the top of our mapping (which outlives
        // the helper: unmapped once it is reaped, or leaked) is its stack,
        // the slot at its bottom. The trampoline's clone passes CLONE_VM and
        // CLONE_FILES, and no CLONE_THREAD, CLONE_SETTLS or CLONE_*TID: the
        // kernel writes nothing of ours, and the helper makes raw system
        // calls only, sharing no state of the C library's with us.
        let rc = unsafe { rt_netns_helper_clone(self.base + STACK_SIZE, self.base) };
        if rc < 0 {
            return Err(Error::Syscall("clone", Errno::from_raw(-rc as i32)));
        }
        Ok(Pid::from_raw(rc as i32))
    }

    /// Clones the helper onto this stack, the slot at its bottom.
    #[cfg(target_arch = "aarch64")]
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
    let mut result = raw(
        libc::SYS_unshare,
        [libc::CLONE_NEWNET as i64, 0, 0, 0, 0, 0],
    ) as i32;
    if result == 0 {
        // Best effort: the init sets it up if this did not.
        loopback_up_raw();
        const PATH: &[u8] = b"/proc/self/ns/net\0";
        result = raw(
            libc::SYS_openat,
            [
                libc::AT_FDCWD as i64,
                PATH.as_ptr() as i64,
                (libc::O_RDONLY | libc::O_CLOEXEC) as i64,
                0,
                0,
                0,
            ],
        ) as i32;
    }
    slot.result.store(result, Ordering::Release);
    0
}

/// Sets `lo` up in the caller's network namespace (SIOCGIFFLAGS, then
/// SIOCSIFFLAGS unless it is up already), with raw system calls only and
/// nothing the C library provides (the helper runs it, possibly before the
/// library has started): 0, or -errno.
fn loopback_up_raw() -> i64 {
    let sock = raw(
        libc::SYS_socket,
        [
            libc::AF_INET as i64,
            (libc::SOCK_DGRAM | libc::SOCK_CLOEXEC) as i64,
            0,
            0,
            0,
            0,
        ],
    );
    if sock < 0 {
        return sock;
    }
    // struct ifreq (40 bytes) as words, so that nothing calls memset or
    // memcpy: the name "lo" in the first 16 bytes, then ifr_flags (a
    // short) in the low bits of the third word.
    let mut ifr: [u64; 5] = [u64::from(u16::from_le_bytes(*b"lo")), 0, 0, 0, 0];
    let ioctl = |req: libc::Ioctl, ifr: &mut [u64; 5]| {
        raw(
            libc::SYS_ioctl,
            [sock, req as i64, ifr.as_mut_ptr() as i64, 0, 0, 0],
        )
    };
    let mut rc = ioctl(libc::SIOCGIFFLAGS, &mut ifr);
    if rc == 0 && ifr[2] & libc::IFF_UP as u64 == 0 {
        ifr[2] |= libc::IFF_UP as u64;
        rc = ioctl(libc::SIOCSIFFLAGS, &mut ifr);
    }
    raw(libc::SYS_close, [sock, 0, 0, 0, 0, 0]);
    rc
}

/// Sets `lo` up in the calling process's network namespace, unless it is
/// up already (a namespace the helper made): what runc and crun do in a
/// container's new network namespace.
pub fn loopback_up() -> Result<()> {
    match loopback_up_raw() {
        rc if rc < 0 => Err(Error::Syscall("setting lo up", Errno::from_raw(-rc as i32))),
        _ => Ok(()),
    }
}

// The helper's clone, without the C library's wrapper (which sets errno,
// a thread-local, on failure: before the library starts, there is none):
// `rt_netns_helper_clone(stack_top, slot)` returns the helper's pid or
// -errno. The helper starts on `stack_top` (16-byte aligned, so aligned for
// the call), runs `helper_main(slot)` and exits with its return value;
// r12, saved for the caller, carries `slot` across the clone.
#[cfg(target_arch = "x86_64")]
std::arch::global_asm!(
    ".globl rt_netns_helper_clone",
    ".type rt_netns_helper_clone,@function",
    "rt_netns_helper_clone:",
    "push r12",
    "mov r12, rsi",
    "mov rsi, rdi",
    "mov edi, {flags}",
    "xor edx, edx",
    "xor r10d, r10d",
    "xor r8d, r8d",
    "mov eax, {clone}",
    "syscall",
    "test rax, rax",
    "jz 2f",
    "pop r12",
    "ret",
    "2:",
    "xor ebp, ebp",
    "mov rdi, r12",
    "call {main}",
    "mov edi, eax",
    "mov eax, {exit}",
    "syscall",
    "ud2",
    flags = const libc::CLONE_VM | libc::CLONE_FILES,
    clone = const libc::SYS_clone,
    exit = const libc::SYS_exit,
    main = sym helper_main,
);

#[cfg(target_arch = "x86_64")]
extern "C" {
    fn rt_netns_helper_clone(stack_top: usize, slot: usize) -> isize;
}

/// [`crate::raw::syscall`] for the calls made here (unshare, openat, mmap
/// and munmap of our own mapping, the affinity calls with our own buffers,
/// and `lo`'s socket, ioctls and close with our own `ifreq`), which touch
/// no memory but what they are given.
#[inline(always)]
fn raw(nr: i64, a: [i64; 6]) -> i64 {
    // SAFETY: as above: every call site passes arguments valid for `nr`,
    // pointing only into its own buffers or mapping.
    unsafe { crate::raw::syscall(nr, a) }
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

        #[cfg(target_arch = "x86_64")]
        early(&ours, before);
    }

    #[cfg(target_arch = "x86_64")]
    fn early(ours: &std::path::Path, before: usize) {
        // Started at the entry point: taken over once, by the next spawn.
        // SAFETY: nothing here needs the process to be single-task; the
        // helper makes raw system calls only.
        unsafe { spawn_early() };
        let helper = NetnsHelper::spawn().unwrap();
        assert!(helper.early());
        assert!(!NetnsHelper::spawn().unwrap().early());
        let fd = helper.finish().unwrap().expect("a namespace");
        let fd_path = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
        assert_ne!(fd_path, ours);
        drop(fd);
        // Not taken: discarded, reaped, its descriptor closed.
        // SAFETY: as above.
        unsafe { spawn_early() };
        let pid = EARLY_PID.load(Ordering::Relaxed);
        assert!(pid > 0);
        std::thread::sleep(std::time::Duration::from_millis(50));
        // (Err in a multi-threaded test harness; it discards first either way.)
        let _ = crate::single_threaded();
        assert_eq!(EARLY_PID.load(Ordering::Relaxed), 0);
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
        assert_eq!(ns_descriptors(), before);
    }
}
