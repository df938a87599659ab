//! Loading seccomp filters (seccomp(2), which glibc does not wrap).

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;

use crate::{Error, Result};

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
