//! Helpers for children started with `std::process::Command` (which forks
//! and execs safely from a multi-threaded process): dying with the parent,
//! and handing a descriptor over at a fixed number.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

use nix::errno::Errno;

use crate::{Error, Result};

/// The child gets SIGKILL when the thread that spawned it exits
/// (PR_SET_PDEATHSIG): spawn from a thread that lives as long as the
/// process. A helper (QEMU, virtiofsd) then never outlives rt's process that
/// stands for it, even when that process is SIGKILLed.
pub fn die_with_parent(cmd: &mut Command) {
    // SAFETY: the closure runs in the child between fork and exec; it only
    // calls prctl(2), which is async-signal-safe, and touches no memory
    // shared with the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The child finds `fd` open at number `target` (without close-on-exec).
/// `fd` must stay open in the parent until the child is spawned: it is moved
/// into the closure that `cmd` keeps.
pub fn inherit_fd(cmd: &mut Command, fd: OwnedFd, target: RawFd) {
    // SAFETY: the closure runs in the child between fork and exec; dup2(2)
    // and fcntl(2) are async-signal-safe, and `fd` is a descriptor the
    // closure owns (it is only read).
    unsafe {
        cmd.pre_exec(move || {
            let raw = fd.as_raw_fd();
            if raw == target {
                // dup2 onto itself keeps close-on-exec: clear it instead.
                let flags = libc::fcntl(raw, libc::F_GETFD);
                if flags < 0 || libc::fcntl(raw, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(raw, target) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Takes ownership of descriptor `fd`, inherited from the parent (see
/// [`inherit_fd`]), and marks it close-on-exec. Refuses a number that is not
/// open.
pub fn take_inherited_fd(fd: RawFd) -> Result<OwnedFd> {
    // SAFETY: F_GETFD takes and returns integers; it only checks that `fd`
    // is open.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    Errno::result(flags).map_err(|e| Error::Syscall("fcntl(F_GETFD)", e))?;
    // SAFETY: as above, integers only.
    let rc = unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) };
    Errno::result(rc).map_err(|e| Error::Syscall("fcntl(F_SETFD)", e))?;
    // SAFETY: the descriptor is open (checked above) and was handed to this
    // process for it to own: nothing else in the process refers to it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn the_child_finds_the_descriptor_at_its_number() {
        let (r, w) = nix::unistd::pipe().unwrap();
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo through-fd-7 >&7"]);
        inherit_fd(&mut cmd, w, 7);
        die_with_parent(&mut cmd);
        let status = cmd.status().unwrap();
        drop(cmd);
        assert!(status.success());
        let mut out = String::new();
        std::fs::File::from(r).read_to_string(&mut out).unwrap();
        assert_eq!(out, "through-fd-7\n");
        assert!(take_inherited_fd(987).is_err());
    }
}
