//! A descriptor whose last close is slow and that nothing needs any more,
//! kept open until a point where the process waits anyway.
//!
//! The one user: the read-only overlay rt re-executes through (rt-cli's
//! early start). Closing its mount descriptor dissolves the detached mount,
//! which waits out an expedited RCU grace period (0.04–0.07 ms here). The
//! container's parent closes it while its init sets up ([`close_deferred`]);
//! a process that never reaches such a point closes it when it exits, where
//! it would have paid the same at its start.

use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};

static DEFERRED: AtomicI32 = AtomicI32::new(-1);

/// Keeps `fd` open until [`close_deferred`] (or the process's exit); one
/// handed over earlier is closed now. No allocation and no lock: callable
/// before the C library has started.
pub fn defer_close(fd: OwnedFd) {
    close_raw(DEFERRED.swap(fd.into_raw_fd(), Ordering::Relaxed));
}

/// Closes the descriptor [`defer_close`] kept, if any.
pub fn close_deferred() {
    close_raw(DEFERRED.swap(-1, Ordering::Relaxed));
}

fn close_raw(fd: RawFd) {
    if fd >= 0 {
        // SAFETY: DEFERRED owned `fd` (given as an OwnedFd), and the swap
        // took it out: nothing else closes it.
        drop(unsafe { OwnedFd::from_raw_fd(fd) });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::errno::Errno;
    use nix::fcntl::OFlag;

    /// A pipe's non-blocking read end, and its write end: the read says
    /// whether the write end is still open anywhere (EAGAIN) or closed
    /// (end of file), whatever other tests reuse descriptor numbers for.
    fn pipe() -> (OwnedFd, OwnedFd) {
        nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC).unwrap()
    }

    fn writer_open(r: &OwnedFd) -> bool {
        match nix::unistd::read(std::os::fd::AsRawFd::as_raw_fd(r), &mut [0u8; 1]) {
            Err(Errno::EAGAIN) => true,
            Ok(0) => false,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_deferred_descriptor_stays_open_until_closed_once() {
        let (ra, wa) = pipe();
        let (rb, wb) = pipe();
        defer_close(wa);
        assert!(writer_open(&ra));
        // A second one closes the first.
        defer_close(wb);
        assert!(!writer_open(&ra));
        assert!(writer_open(&rb));
        close_deferred();
        assert!(!writer_open(&rb));
        // Nothing left: a second call closes nothing.
        close_deferred();
    }
}
