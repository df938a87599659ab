//! The binary's entry point: the re-execution of [`crate::sealed`], done
//! before the C library starts.
//!
//! `create`, `run` and `exec` re-execute rt from a read-only overlay of its
//! directory when it was not started from a read-only mount. Done from
//! `main`, that pays for the C library's start-up twice: static glibc's
//! start-up runs some sixty CPUID instructions (CPU features, cache sizes),
//! each a trap to the hypervisor on this host, about 0.7 ms in all, and all
//! of it thrown away by the exec. So the linker's entry point is
//! `rt_early_entry` (build.rs), which runs [`early`] on the kernel's initial
//! stack and then jumps to glibc's `_start` with the stack and registers as
//! the kernel (or the dynamic loader) left them.
//!
//! [`early`] handles the common case only: root (or CAP_SYS_ADMIN), a kernel
//! that mounts the overlay (over /dev, or over a detached tmpfs where /dev
//! would overlap the binary's directory), and no `RT_SELF_PROTECTION`.
//! Anything else (a failed syscall, an odd path, a full buffer) returns,
//! and `main` does what it always did: the same overlay, the
//! empty-directory layer, the sealed memfd, the errors. Returning is always
//! safe, since `main` checks again; a wrong re-exec costs only time.
//!
//! In the process that goes on (the re-executed one, or one already on a
//! read-only mount), a `run` or `create` may also start the network
//! namespace helper here ([`netns`]).
//!
//! Nothing here may touch what the C library has not set up yet: no thread
//! locals, no allocation, no panics, and no call to `memcpy`, `memset`,
//! `memcmp` or `strlen`, which a static glibc resolves (IFUNC) only in
//! `_start`. Bytes are therefore moved with volatile accesses, which the
//! compiler cannot turn into such calls, and every index is checked by hand.

mod netns;

use core::arch::global_asm;
use core::cell::UnsafeCell;
use core::ptr::{read_volatile, write_volatile};
use core::sync::atomic::{AtomicBool, Ordering};

// The entry point. At entry %rsp points at argc (16-byte aligned) and %rdx
// holds the dynamic loader's finaliser (zero for a static binary); both are
// kept in callee-saved registers across the call and handed on to _start.
global_asm!(
    ".globl rt_early_entry",
    ".type rt_early_entry,@function",
    "rt_early_entry:",
    "mov r12, rsp",
    "mov r13, rdx",
    "mov rdi, rsp",
    "and rsp, -16",
    "call {early}",
    "mov rsp, r12",
    "mov rdx, r13",
    "xor ebp, ebp",
    "jmp _start",
    early = sym early,
);

/// Set when [`early`] found the binary on a read-only mount (the overlay it
/// re-executed through, or a read-only install), for
/// [`crate::sealed::reexec_protected`]. A plain static in .bss: an atomic
/// store is a `mov`, fine before the C library starts.
pub static PROTECTED: AtomicBool = AtomicBool::new(false);

const PATH_MAX: usize = 4096;
/// The overlay's (and its tmpfs layer's) mount attributes.
const RO: usize =
    (libc::MOUNT_ATTR_RDONLY | libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV) as usize;
const MAX_ENV: usize = 2048;

/// A buffer in .bss: zeroed by the kernel, so nothing has to clear it.
struct Buf<T>(UnsafeCell<T>);
// SAFETY: only `early` touches these, and it runs before any other thread
// (or any other code) exists.
unsafe impl<T> Sync for Buf<T> {}

static PATH: Buf<[u8; PATH_MAX + 1]> = Buf(UnsafeCell::new([0; PATH_MAX + 1]));
static LOWER: Buf<[u8; PATH_MAX + 64]> = Buf(UnsafeCell::new([0; PATH_MAX + 64]));
static RT_EXE: Buf<[u8; PATH_MAX + 8]> = Buf(UnsafeCell::new([0; PATH_MAX + 8]));
static ENVP: Buf<[*const u8; MAX_ENV + 3]> = Buf(UnsafeCell::new([core::ptr::null(); MAX_ENV + 3]));
static OVERLAY_VAR: Buf<[u8; 48]> = Buf(UnsafeCell::new([0; 48]));

/// The variable that hands the overlay's mount descriptor to the
/// re-executed process ([`adopt_overlay`]).
const OVERLAY_FD: &[u8] = b"RT_OVERLAY_FD=";

/// A raw system call ([`rt_sys::raw::syscall`]); negative returns are
/// -errno.
///
/// # Safety
/// The arguments must be valid for system call `n`.
#[inline(always)]
unsafe fn syscall(n: i64, a: [usize; 5]) -> isize {
    let a = [
        a[0] as i64,
        a[1] as i64,
        a[2] as i64,
        a[3] as i64,
        a[4] as i64,
        0,
    ];
    // SAFETY: the caller passes arguments valid for `n`.
    unsafe { rt_sys::raw::syscall(n, a) as isize }
}

fn close(fd: isize) {
    // SAFETY: closing a descriptor this module opened.
    unsafe { syscall(libc::SYS_close, [fd as usize, 0, 0, 0, 0]) };
}

/// The byte at `p + i` of a NUL-terminated string the kernel gave us.
///
/// # Safety
/// `p + i` must lie within the string or on its NUL.
unsafe fn at(p: *const u8, i: usize) -> u8 {
    // SAFETY: as the caller guarantees.
    unsafe { read_volatile(p.wrapping_add(i)) }
}

/// Whether the C string `s` starts with `prefix` (or equals it, with `whole`).
///
/// # Safety
/// `s` must be a NUL-terminated string.
unsafe fn starts_with(s: *const u8, prefix: &[u8], whole: bool) -> bool {
    let mut i = 0;
    while i < prefix.len() {
        // SAFETY: every byte before i matched a non-NUL byte of `prefix`.
        if unsafe { at(s, i) } != prefix[i] {
            return false;
        }
        i += 1;
    }
    // SAFETY: s[..i] are non-NUL, so s[i] is within the string.
    !whole || unsafe { at(s, i) } == 0
}

/// Appends `bytes` to `buf` at `*len`; false when it does not fit.
fn push(buf: *mut u8, cap: usize, len: &mut usize, bytes: &[u8]) -> bool {
    let mut i = 0;
    while i < bytes.len() {
        if *len >= cap {
            return false;
        }
        // SAFETY: *len < cap, the buffer's size.
        unsafe { write_volatile(buf.wrapping_add(*len), bytes[i]) };
        *len += 1;
        i += 1;
    }
    true
}

/// Appends the decimal digits of `n`.
fn push_decimal(buf: *mut u8, cap: usize, len: &mut usize, mut n: usize) -> bool {
    let mut digits = [0u8; 20];
    let mut k = digits.len();
    loop {
        k -= 1;
        digits[k] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 || k == 0 {
            break;
        }
    }
    push(buf, cap, len, &digits[k..])
}

/// Re-executes rt from a read-only overlay of its directory, if this is a
/// command that needs it and rt does not already run from a read-only
/// mount. Returns whenever it does not (or cannot) do so.
///
/// # Safety
/// `sp` must be the process's initial stack pointer: argc, argv, NULL,
/// envp, NULL, as the kernel lays them out.
unsafe extern "C" fn early(sp: *const usize) {
    // SAFETY: the layout of the initial stack, as the caller guarantees.
    let (argc, argv) = unsafe { (*sp, sp.add(1) as *const *const u8) };
    // SAFETY: argv holds argc pointers and a NULL; envp follows.
    let envp = unsafe { argv.add(argc + 1) };
    // Any argument that names one of the commands: over-counting costs an
    // exec, under-counting nothing (main checks after its parse).
    let mut wanted = false;
    for i in 1..argc {
        // SAFETY: i < argc, and each argument is a C string.
        let a = unsafe { *argv.add(i) };
        // SAFETY: as above.
        wanted |= unsafe {
            starts_with(a, b"create", true)
                || starts_with(a, b"run", true)
                || starts_with(a, b"exec", true)
        };
    }
    if !wanted {
        return;
    }
    // The environment: forced protection is main's, RT_EXE kept if set.
    let mut nenv = 0;
    let mut has_rt_exe = false;
    let mut overlay_fd = None;
    loop {
        // SAFETY: envp is NULL-terminated; nenv has not passed the NULL.
        let e = unsafe { *envp.add(nenv) };
        if e.is_null() {
            break;
        }
        // SAFETY: each entry is a C string.
        if unsafe { starts_with(e, b"RT_SELF_PROTECTION=", false) } {
            return;
        }
        // SAFETY: as above.
        has_rt_exe |= unsafe { starts_with(e, b"RT_EXE=", false) };
        // SAFETY: as above.
        if unsafe { starts_with(e, OVERLAY_FD, false) } {
            // SAFETY: a C string that starts with the prefix just matched.
            overlay_fd = unsafe { decimal(e, OVERLAY_FD.len()) };
        }
        nenv += 1;
        if nenv > MAX_ENV {
            return;
        }
    }
    // SAFETY: the arguments are valid for each call; the buffers are ours.
    // True: this process does not re-execute here. The network namespace
    // helper starts only from a binary on a read-only mount (the overlay,
    // or a read-only install): a sealed copy is main's to check, and main
    // may still re-execute, which would leave the helper behind.
    if unsafe { reexec(argv, envp, nenv, has_rt_exe, overlay_fd) }
        && PROTECTED.load(Ordering::Relaxed)
    {
        // SAFETY: argv holds argc C strings; we are the only task.
        unsafe { netns::start_if_wanted(argc, argv) };
    }
}

/// The part of [`early`] that opens, mounts and execs. Returns true when
/// the binary is protected already (this process will not re-execute),
/// false when it could not re-execute (main will, its slower way).
/// `overlay_fd` is RT_OVERLAY_FD's value, if set.
///
/// # Safety
/// `argv` and `envp` are the process's; `nenv` counts `envp`'s entries.
unsafe fn reexec(
    argv: *const *const u8,
    envp: *const *const u8,
    nenv: usize,
    has_rt_exe: bool,
    overlay_fd: Option<usize>,
) -> bool {
    let cloexec = (libc::O_RDONLY | libc::O_CLOEXEC) as usize;
    let exe = c"/proc/self/exe".as_ptr() as usize;
    // 1. Already protected? A sealed memfd or a read-only mount is main's
    //    business (it returns at once).
    // SAFETY: a valid path and flags.
    let fd = unsafe { syscall(libc::SYS_open, [exe, cloexec, 0, 0, 0]) };
    if fd < 0 {
        return false;
    }
    // SAFETY: F_GET_SEALS takes no argument.
    let seals = unsafe {
        syscall(
            libc::SYS_fcntl,
            [fd as usize, libc::F_GET_SEALS as usize, 0, 0, 0],
        )
    };
    // struct statfs on x86_64: fifteen 8-byte words, f_flags the eleventh
    // (libc keeps the field private).
    let mut st = core::mem::MaybeUninit::<[i64; 15]>::uninit();
    // SAFETY: st is a statfs-sized buffer for the kernel to fill.
    let rc = unsafe {
        syscall(
            libc::SYS_fstatfs,
            [fd as usize, st.as_mut_ptr() as usize, 0, 0, 0],
        )
    };
    // SAFETY: fstatfs succeeded (rc == 0), so the kernel filled it.
    let rdonly = rc == 0 && unsafe { st.assume_init_ref() }[10] & libc::ST_RDONLY as i64 != 0;
    if let (true, true, Some(overlay)) = (rdonly, seals < 0, overlay_fd) {
        // SAFETY: fd is our open descriptor of the binary.
        unsafe { adopt_overlay(fd as usize, overlay) };
    }
    close(fd);
    if rc != 0 {
        return false;
    }
    if seals >= 0 || rdonly {
        // Any seal means a memfd, which main checks for F_SEAL_WRITE; a
        // read-only mount holds as it is: main need not look again.
        if seals < 0 {
            PROTECTED.store(true, Ordering::Relaxed);
        }
        return true;
    }
    // 2. The binary's path, split at its last slash.
    let path = PATH.0.get() as *mut u8;
    // SAFETY: PATH has PATH_MAX + 1 bytes; readlink writes at most PATH_MAX.
    let n = unsafe { syscall(libc::SYS_readlink, [exe, path as usize, PATH_MAX, 0, 0]) };
    if n <= 0 || n as usize >= PATH_MAX {
        return false;
    }
    let n = n as usize;
    let mut slash = n;
    for i in 0..n {
        // SAFETY: i < n, the length readlink wrote.
        match unsafe { read_volatile(path.add(i)) } {
            b'/' => slash = i,
            // lowerdir's separator and escape: main's slower path copes.
            b':' | b'\\' | b',' => return false,
            _ => {}
        }
    }
    // SAFETY: PATH is zeroed past n (bss, written once), so path[n] is NUL.
    if slash == n || slash + 1 == n || unsafe { read_volatile(path) } != b'/' {
        return false;
    }
    // 3. The overlay. Its second layer is /dev when that cannot overlap
    //    the binary's directory; else (or if that fails) a detached tmpfs.
    // SAFETY: PATH holds the path, `slash` its last slash.
    let mut root = if unsafe { dev_apart(path, slash) } {
        // SAFETY: the buffers are valid; the layer is a C string.
        unsafe { overlay(path, slash, Layer::Dev) }
    } else {
        -1
    };
    if root < 0 {
        // SAFETY: the buffers are valid; every descriptor is closed here.
        root = unsafe { overlay_on_tmpfs(path, slash) };
    }
    if root < 0 {
        return false;
    }
    // 4. The binary in the overlay, and the exec.
    // SAFETY: path + slash + 1 is the NUL-terminated file name.
    let file = unsafe {
        syscall(
            libc::SYS_openat,
            [root as usize, path.add(slash + 1) as usize, cloexec, 0, 0],
        )
    };
    // The overlay's descriptor goes along, open, for the new process to
    // close where it waits anyway ([`adopt_overlay`]).
    // SAFETY: F_SETFD with flags 0 takes no pointer.
    let pass = file >= 0
        && unsafe {
            syscall(
                libc::SYS_fcntl,
                [root as usize, libc::F_SETFD as usize, 0, 0, 0],
            )
        } == 0;
    if !pass {
        close(root);
    }
    if file < 0 {
        return false;
    }
    // SAFETY: envp has nenv entries; the buffers are ours.
    let env = unsafe {
        environment(
            envp,
            nenv,
            has_rt_exe,
            (path, n),
            pass.then_some(root as usize),
        )
    };
    if let Some(env) = env {
        let empty_path = c"".as_ptr() as usize;
        let flags = libc::AT_EMPTY_PATH as usize;
        // SAFETY: argv and env are NULL-terminated arrays of C strings.
        unsafe {
            syscall(
                libc::SYS_execveat,
                [
                    file as usize,
                    empty_path,
                    argv as usize,
                    env as usize,
                    flags,
                ],
            )
        };
    }
    close(file);
    if pass {
        close(root);
    }
    false
}

/// The decimal number after `skip` bytes of the C string `s` (at most nine
/// digits, nothing else).
///
/// # Safety
/// `s` must be a NUL-terminated string at least `skip` bytes long.
unsafe fn decimal(s: *const u8, skip: usize) -> Option<usize> {
    let mut n = 0usize;
    let mut i = skip;
    loop {
        // SAFETY: every byte before i was a digit (non-NUL), so s[i] is
        // within the string or its NUL.
        match unsafe { at(s, i) } {
            0 if i > skip => return Some(n),
            b @ b'0'..=b'9' if i - skip < 9 => n = n * 10 + usize::from(b - b'0'),
            _ => return None,
        }
        i += 1;
    }
}

/// Takes over the overlay's mount descriptor that the re-executing process
/// passed in RT_OVERLAY_FD, if `overlay` is on the very mount `exe` (our
/// binary) is on: made close-on-exec and handed to
/// [`rt_sys::deferred`], which closes it where the process waits anyway.
/// Its close dissolves the detached mount, which waits out an expedited
/// RCU grace period (0.04–0.07 ms here): done before the exec, that was on
/// every container's start path. Anything else by that number is left
/// alone.
///
/// # Safety
/// `exe` must be an open descriptor.
unsafe fn adopt_overlay(exe: usize, overlay: usize) {
    let mount_id = |fd: usize| -> Option<u64> {
        let mut st = core::mem::MaybeUninit::<libc::statx>::uninit();
        // SAFETY: an empty path with AT_EMPTY_PATH names `fd`; st is a
        // statx-sized buffer, which the kernel fills whole on success.
        let rc = unsafe {
            syscall(
                libc::SYS_statx,
                [
                    fd,
                    c"".as_ptr() as usize,
                    libc::AT_EMPTY_PATH as usize,
                    libc::STATX_MNT_ID as usize,
                    st.as_mut_ptr() as usize,
                ],
            )
        };
        // SAFETY: filled, as above.
        let st = (rc == 0).then(|| unsafe { st.assume_init() })?;
        (st.stx_mask & libc::STATX_MNT_ID != 0).then_some(st.stx_mnt_id)
    };
    if !matches!((mount_id(exe), mount_id(overlay)), (Some(a), Some(b)) if a == b) {
        return;
    }
    let cloexec = [
        overlay,
        libc::F_SETFD as usize,
        libc::FD_CLOEXEC as usize,
        0,
        0,
    ];
    // SAFETY: F_SETFD takes an integer.
    if unsafe { syscall(libc::SYS_fcntl, cloexec) } != 0 {
        return;
    }
    use std::os::fd::FromRawFd;
    // SAFETY: the descriptor is open (statx succeeded on it), and nothing
    // else in this process knows its number: the new OwnedFd owns it.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(overlay as i32) };
    rt_sys::deferred::defer_close(fd);
}

/// The overlay's second (lower, never seen) layer: overlayfs mounts
/// read-only only with two layers, and the binary's directory is the top
/// one, so the other's content is masked wherever it matters (the
/// binary's name) and is reachable from nothing else (only
/// `/proc/<pid>/exe` names a file in the overlay).
#[derive(Clone, Copy)]
enum Layer {
    /// /dev, which is there already: no tmpfs to make, and none to
    /// dissolve (an expedited RCU grace period each, when its descriptor
    /// closes and when rt exits).
    Dev,
    /// A detached, empty, read-only tmpfs, by its descriptor.
    Tmpfs(usize),
}

/// Whether /dev and the binary's directory `path[..slash]` are apart: the
/// directory is not `/`, /dev or under it, so neither layer can be an
/// ancestor of the other on a host whose /dev is not a mount of its own
/// (overlayfs refuses overlapping layers, and says so in the kernel log).
///
/// # Safety
/// `path` is PATH, `slash` the index of its last slash.
unsafe fn dev_apart(path: *const u8, slash: usize) -> bool {
    // SAFETY: PATH is NUL-terminated; byte 4 is read only after "/dev"
    // matched bytes 0..4, so it is within the string or its NUL.
    let under_dev = unsafe { starts_with(path, b"/dev", false) }
        && (slash == 4 || unsafe { at(path, 4) } == b'/');
    slash != 0 && !under_dev
}

/// [`overlay`] over a detached tmpfs made for it (closed here, once the
/// overlay holds its own reference).
///
/// # Safety
/// As [`overlay`].
unsafe fn overlay_on_tmpfs(path: *const u8, slash: usize) -> isize {
    // SAFETY: a valid file system name and flags.
    let fs = unsafe { syscall(libc::SYS_fsopen, [c"tmpfs".as_ptr() as usize, 1, 0, 0, 0]) };
    if fs < 0 {
        return fs;
    }
    // SAFETY: FSCONFIG_CMD_CREATE takes no key or value.
    let rc = unsafe { syscall(libc::SYS_fsconfig, [fs as usize, 6, 0, 0, 0]) };
    let empty = if rc == 0 {
        // SAFETY: fsmount takes integers only.
        unsafe { syscall(libc::SYS_fsmount, [fs as usize, 1, RO, 0, 0]) }
    } else {
        rc
    };
    close(fs);
    if empty < 0 {
        return empty;
    }
    // SAFETY: as the caller guarantees; `empty` is our descriptor.
    let root = unsafe { overlay(path, slash, Layer::Tmpfs(empty as usize)) };
    close(empty);
    root
}

/// The read-only overlay of `path[..slash]` over `layer`; its root's
/// descriptor, or a negative errno.
///
/// # Safety
/// `path` is PATH, `slash` the index of its last slash.
unsafe fn overlay(path: *const u8, slash: usize, layer: Layer) -> isize {
    let lower = LOWER.0.get() as *mut u8;
    let cap = PATH_MAX + 63; // one byte left for the NUL (bss is zeroed)
    let mut len = 0;
    let dir_len = if slash == 0 { 1 } else { slash };
    for i in 0..dir_len {
        // SAFETY: i < dir_len <= the path's length.
        let b = unsafe { read_volatile(path.add(i)) };
        if !push(lower, cap, &mut len, &[b]) {
            return -1;
        }
    }
    let pushed = match layer {
        Layer::Dev => push(lower, cap, &mut len, b":/dev"),
        Layer::Tmpfs(fd) => {
            push(lower, cap, &mut len, b":/proc/self/fd/") && push_decimal(lower, cap, &mut len, fd)
        }
    };
    if !pushed {
        return -1;
    }
    // SAFETY: len <= cap < the buffer's size.
    unsafe { write_volatile(lower.add(len), 0) };
    // SAFETY: a valid file system name and flags.
    let ov = unsafe { syscall(libc::SYS_fsopen, [c"overlay".as_ptr() as usize, 1, 0, 0, 0]) };
    if ov < 0 {
        return ov;
    }
    let key = c"lowerdir".as_ptr() as usize;
    // SAFETY: FSCONFIG_SET_STRING (1) with a C-string key and value.
    let mut rc = unsafe { syscall(libc::SYS_fsconfig, [ov as usize, 1, key, lower as usize, 0]) };
    if rc == 0 {
        // SAFETY: FSCONFIG_CMD_CREATE takes no key or value.
        rc = unsafe { syscall(libc::SYS_fsconfig, [ov as usize, 6, 0, 0, 0]) };
    }
    if rc == 0 {
        // SAFETY: fsmount takes integers only.
        rc = unsafe { syscall(libc::SYS_fsmount, [ov as usize, 1, RO, 0, 0]) };
    }
    close(ov);
    rc
}

/// `envp` with `RT_EXE=<path>` added unless it has one, and
/// `RT_OVERLAY_FD=<overlay>` when given (an inherited one left out).
///
/// # Safety
/// `envp` has `nenv` (at most MAX_ENV) entries; `path` has `n` bytes.
unsafe fn environment(
    envp: *const *const u8,
    nenv: usize,
    has_rt_exe: bool,
    (path, n): (*const u8, usize),
    overlay: Option<usize>,
) -> Option<*const *const u8> {
    let out = ENVP.0.get() as *mut *const u8;
    let mut k = 0;
    for i in 0..nenv {
        // SAFETY: i < nenv <= MAX_ENV, within envp; each entry is a C string.
        let e = unsafe { read_volatile(envp.add(i)) };
        // SAFETY: as above.
        if unsafe { starts_with(e, OVERLAY_FD, false) } {
            continue;
        }
        // SAFETY: k <= i < MAX_ENV, within ENVP.
        unsafe { write_volatile(out.add(k), e) };
        k += 1;
    }
    if !has_rt_exe {
        let var = RT_EXE.0.get() as *mut u8;
        let mut len = 0;
        if !push(var, PATH_MAX + 7, &mut len, b"RT_EXE=") {
            return None;
        }
        for i in 0..n {
            // SAFETY: i < n, the path's length.
            let b = unsafe { read_volatile(path.add(i)) };
            if !push(var, PATH_MAX + 7, &mut len, &[b]) {
                return None;
            }
        }
        // SAFETY: k <= MAX_ENV; RT_EXE's NUL is the zeroed bss (len < its
        // size, written once).
        unsafe { write_volatile(out.add(k), var as *const u8) };
        k += 1;
    }
    if let Some(fd) = overlay {
        let var = OVERLAY_VAR.0.get() as *mut u8;
        let mut len = 0;
        if !(push(var, 47, &mut len, OVERLAY_FD) && push_decimal(var, 47, &mut len, fd)) {
            return None;
        }
        // SAFETY: k <= MAX_ENV + 1; the variable's NUL is the zeroed bss.
        unsafe { write_volatile(out.add(k), var as *const u8) };
        k += 1;
    }
    // SAFETY: k <= MAX_ENV + 2, within ENVP.
    unsafe { write_volatile(out.add(k), core::ptr::null()) };
    Some(out as *const *const u8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsRawFd, OwnedFd};

    #[test]
    fn the_overlay_variable_holds_a_plain_number() {
        let parse = |v: &str| {
            let c = std::ffi::CString::new(v).unwrap();
            // SAFETY: a C string that starts with the prefix.
            unsafe { decimal(c.as_ptr().cast(), OVERLAY_FD.len()) }
        };
        assert_eq!(parse("RT_OVERLAY_FD=4"), Some(4));
        assert_eq!(parse("RT_OVERLAY_FD=123456789"), Some(123_456_789));
        for bad in [
            "RT_OVERLAY_FD=",
            "RT_OVERLAY_FD=4x",
            "RT_OVERLAY_FD=-4",
            "RT_OVERLAY_FD=1234567890",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    /// A pipe's non-blocking read end says whether its write end is still
    /// open anywhere (EAGAIN) or closed (end of file).
    fn writer_open(r: &OwnedFd) -> bool {
        match nix::unistd::read(r.as_raw_fd(), &mut [0u8; 1]) {
            Err(nix::errno::Errno::EAGAIN) => true,
            Ok(0) => false,
            other => panic!("{other:?}"),
        }
    }

    /// Only a descriptor on the binary's own mount is taken over (and
    /// closed at `close_deferred`): an RT_OVERLAY_FD from the caller's
    /// environment names anything else.
    #[test]
    fn only_a_descriptor_on_the_binarys_mount_is_adopted() {
        let pipe = || nix::unistd::pipe2(nix::fcntl::OFlag::O_NONBLOCK).unwrap();
        let exe = std::fs::File::open("/proc/self/exe").unwrap();
        let (r, w) = pipe();
        // SAFETY: both descriptors are open.
        unsafe { adopt_overlay(exe.as_raw_fd() as usize, w.as_raw_fd() as usize) };
        rt_sys::deferred::close_deferred();
        assert!(writer_open(&r), "a pipe is not on the binary's mount");
        // Two pipes share pipefs's one mount: taken over, then closed.
        let (other, _) = pipe();
        let w = std::mem::ManuallyDrop::new(w);
        // SAFETY: both descriptors are open; `w` is not closed by its owner.
        unsafe { adopt_overlay(other.as_raw_fd() as usize, w.as_raw_fd() as usize) };
        assert!(writer_open(&r));
        rt_sys::deferred::close_deferred();
        assert!(!writer_open(&r));
    }

    /// /dev is the overlay's second layer only where it cannot overlap the
    /// binary's directory (overlayfs would refuse, and log it).
    #[test]
    fn dev_is_a_layer_only_apart_from_the_binary() {
        let apart = |exe: &str| {
            let slash = exe.rfind('/').unwrap();
            let c = std::ffi::CString::new(exe).unwrap();
            // SAFETY: a NUL-terminated path; `slash` is its last slash.
            unsafe { dev_apart(c.as_ptr().cast(), slash) }
        };
        for exe in [
            "/usr/bin/rt",
            "/a/rt",
            "/ab/rt",
            "/tmp/x/rt",
            "/devices/rt",
            "/de/rt",
        ] {
            assert!(apart(exe), "{exe}");
        }
        for exe in ["/rt", "/dev/rt", "/dev/shm/rt", "/dev/shm/a/rt"] {
            assert!(!apart(exe), "{exe}");
        }
    }
}
