//! The binary's entry point: the re-execution of [`crate::sealed`], done
//! before the C library starts.
//!
//! `create`, `run` and `exec` re-execute rt from a private read-only mount
//! of its own file when it was not started from a read-only mount. Done from
//! `main`, that pays for the C library's start-up twice: static glibc's
//! start-up runs some sixty CPUID instructions (CPU features, cache sizes),
//! each a trap to the hypervisor on this host, about 0.7 ms in all, and all
//! of it thrown away by the exec. So the linker's entry point is
//! `rt_early_entry` (build.rs), which runs [`early`] on the kernel's initial
//! stack and then jumps to glibc's `_start` with the stack and registers as
//! the kernel (or the dynamic loader) left them.
//!
//! [`early`] handles the common case only: root (or CAP_SYS_ADMIN), a kernel
//! with open_tree and mount_setattr (5.12), and no `RT_SELF_PROTECTION`.
//! Anything else (a failed syscall, a full buffer) returns, and `main` does
//! what it always did: the same mount, else the overlay of the directory,
//! else the sealed memfd, and the errors. Returning is always safe, since
//! `main` checks again; a wrong re-exec costs only time.
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

/// Set when [`early`] found the binary on a read-only mount (the one it
/// re-executed through, or a read-only install), for
/// [`crate::sealed::reexec_protected`]. A plain static in .bss: an atomic
/// store is a `mov`, fine before the C library starts.
pub static PROTECTED: AtomicBool = AtomicBool::new(false);

const PATH_MAX: usize = 4096;
/// The private mount's attributes.
const RO: u64 = libc::MOUNT_ATTR_RDONLY | libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV;
const MAX_ENV: usize = 2048;

/// A buffer in .bss: zeroed by the kernel, so nothing has to clear it.
struct Buf<T>(UnsafeCell<T>);
// SAFETY: only `early` touches these, and it runs before any other thread
// (or any other code) exists.
unsafe impl<T> Sync for Buf<T> {}

static PATH: Buf<[u8; PATH_MAX + 1]> = Buf(UnsafeCell::new([0; PATH_MAX + 1]));
static RT_EXE: Buf<[u8; PATH_MAX + 8]> = Buf(UnsafeCell::new([0; PATH_MAX + 8]));
static ENVP: Buf<[*const u8; MAX_ENV + 3]> = Buf(UnsafeCell::new([core::ptr::null(); MAX_ENV + 3]));

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

/// Re-executes rt from a private read-only mount of its file, if this is a
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
        nenv += 1;
        if nenv > MAX_ENV {
            return;
        }
    }
    // SAFETY: the arguments are valid for each call; the buffers are ours.
    // True: this process does not re-execute here. The network namespace
    // helper starts only from a binary on a read-only mount (rt's own,
    // or a read-only install): a sealed copy is main's to check, and main
    // may still re-execute, which would leave the helper behind.
    if unsafe { reexec(argv, envp, nenv, has_rt_exe) } && PROTECTED.load(Ordering::Relaxed) {
        // SAFETY: argv holds argc C strings; we are the only task.
        unsafe { netns::start_if_wanted(argc, argv) };
    }
}

/// The part of [`early`] that mounts and execs. Returns true when
/// the binary is protected already (this process will not re-execute),
/// false when it could not re-execute (main will, its slower way).
///
/// # Safety
/// `argv` and `envp` are the process's; `nenv` counts `envp`'s entries.
unsafe fn reexec(
    argv: *const *const u8,
    envp: *const *const u8,
    nenv: usize,
    has_rt_exe: bool,
) -> bool {
    let cloexec = (libc::O_RDONLY | libc::O_CLOEXEC) as usize;
    let exe = c"/proc/self/exe".as_ptr() as usize;
    let empty_path = c"".as_ptr() as usize;
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
    if rc != 0 || seals >= 0 || rdonly {
        close(fd);
        // Any seal means a memfd, which main checks for F_SEAL_WRITE; a
        // read-only mount holds as it is: main need not look again.
        if rc == 0 && seals < 0 {
            PROTECTED.store(true, Ordering::Relaxed);
        }
        return rc == 0;
    }
    // 2. The binary's path, for RT_EXE (what needs the file itself, such
    //    as the VM backend, finds it there).
    let path = PATH.0.get() as *mut u8;
    let n = if has_rt_exe {
        0
    } else {
        // SAFETY: PATH has PATH_MAX + 1 bytes; readlink writes at most
        // PATH_MAX.
        let n = unsafe { syscall(libc::SYS_readlink, [exe, path as usize, PATH_MAX, 0, 0]) };
        if n <= 0 || n as usize >= PATH_MAX {
            close(fd);
            return false;
        }
        n as usize
    };
    // 3. A private mount of the binary alone, cloned from the one it is
    //    on (attached nowhere), and made read-only.
    let flags =
        libc::AT_EMPTY_PATH as usize | (libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC) as usize;
    // SAFETY: an empty path with AT_EMPTY_PATH names `fd`.
    let bind = unsafe { syscall(libc::SYS_open_tree, [fd as usize, empty_path, flags, 0, 0]) };
    close(fd);
    if bind < 0 {
        return false;
    }
    let attr = rt_sys::MountAttr {
        attr_set: RO,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let size = core::mem::size_of::<rt_sys::MountAttr>();
    let at = libc::AT_EMPTY_PATH as usize;
    let attr_ptr = &attr as *const rt_sys::MountAttr as usize;
    // SAFETY: an empty path with AT_EMPTY_PATH names `bind`; `attr` is a
    // live mount_attr of the size passed, which the kernel only reads.
    let rc = unsafe {
        syscall(
            libc::SYS_mount_setattr,
            [bind as usize, empty_path, at, attr_ptr, size],
        )
    };
    // 4. The exec, from the read-only mount. Its descriptor is
    //    close-on-exec: the exec closes it once it holds the file, which
    //    dissolves the detached mount before the new program runs. The
    //    mount lives on, unmounted, only as the executable; nothing can
    //    make an unmounted mount writable again (see docs/security.md).
    let env = if has_rt_exe {
        Some(envp)
    } else {
        // SAFETY: envp has nenv entries; PATH holds n bytes.
        unsafe { with_rt_exe(envp, nenv, (path, n)) }
    };
    if let (0, Some(env)) = (rc, env) {
        // SAFETY: argv and env are NULL-terminated arrays of C strings.
        unsafe {
            syscall(
                libc::SYS_execveat,
                [bind as usize, empty_path, argv as usize, env as usize, at],
            )
        };
    }
    close(bind);
    false
}

/// `envp` with `RT_EXE=<path>` added.
///
/// # Safety
/// `envp` has `nenv` (at most MAX_ENV) entries; `path` has `n` bytes.
unsafe fn with_rt_exe(
    envp: *const *const u8,
    nenv: usize,
    (path, n): (*const u8, usize),
) -> Option<*const *const u8> {
    let out = ENVP.0.get() as *mut *const u8;
    for i in 0..nenv {
        // SAFETY: i < nenv <= MAX_ENV, within envp and ENVP.
        unsafe { write_volatile(out.add(i), read_volatile(envp.add(i))) };
    }
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
    // SAFETY: nenv + 1 <= MAX_ENV + 1, within ENVP; RT_EXE's NUL is the
    // zeroed bss (len < its size, and each call writes the same bytes).
    unsafe {
        write_volatile(out.add(nenv), var as *const u8);
        write_volatile(out.add(nenv + 1), core::ptr::null());
    }
    Some(out as *const *const u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The environment handed on is the caller's, plus RT_EXE.
    #[test]
    fn rt_exe_is_added_to_the_environment() {
        let vars = [c"A=1", c"B=2"];
        let envp = [
            vars[0].as_ptr().cast::<u8>(),
            vars[1].as_ptr().cast(),
            std::ptr::null(),
        ];
        let path = b"/usr/bin/rt";
        // SAFETY: envp has two C strings; path has path.len() bytes.
        let out = unsafe { with_rt_exe(envp.as_ptr(), 2, (path.as_ptr(), path.len())) }.unwrap();
        let got: Vec<String> = (0..)
            // SAFETY: `out` is NULL-terminated; we stop at the NULL.
            .map(|i| unsafe { *out.add(i) })
            .take_while(|p| !p.is_null())
            .map(|p| {
                // SAFETY: each entry is a C string.
                unsafe { std::ffi::CStr::from_ptr(p.cast()) }
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        assert_eq!(got, ["A=1", "B=2", "RT_EXE=/usr/bin/rt"]);
    }
}
