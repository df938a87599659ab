//! System calls without the C library, for code that runs where the
//! library may not have started (rt's entry point) or must not be touched
//! (a task sharing our memory but not our thread-local storage: errno).
//! Always inlined: before the C library starts, not even a copy of the
//! arguments may become a call to its `memcpy`.

/// A system call of up to six arguments: the result, or -errno.
///
/// # Safety
/// The arguments must be valid for system call `nr` (pointers into memory
/// the call may read or write, descriptors the caller owns).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub unsafe fn syscall(nr: i64, a: [i64; 6]) -> i64 {
    let ret: i64;
    // SAFETY: the `syscall` instruction with the kernel's x86-64 calling
    // convention; it clobbers rcx and r11 only; the arguments are the
    // caller's to vouch for.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") nr => ret,
            in("rdi") a[0],
            in("rsi") a[1],
            in("rdx") a[2],
            in("r10") a[3],
            in("r8") a[4],
            in("r9") a[5],
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

/// A system call of up to six arguments: the result, or -errno.
///
/// # Safety
/// As the x86-64 twin's.
#[cfg(target_arch = "aarch64")]
#[inline(always)]
pub unsafe fn syscall(nr: i64, a: [i64; 6]) -> i64 {
    let ret: i64;
    // SAFETY: `svc 0` with the kernel's arm64 calling convention (number in
    // x8, arguments in x0..x5, result in x0); see the x86-64 twin.
    unsafe {
        std::arch::asm!(
            "svc 0",
            in("x8") nr,
            inlateout("x0") a[0] => ret,
            in("x1") a[1],
            in("x2") a[2],
            in("x3") a[3],
            in("x4") a[4],
            in("x5") a[5],
            options(nostack),
        );
    }
    ret
}
