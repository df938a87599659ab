//! Descriptors: what a child keeps across fork and exec, and one received
//! over a socket.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;

use crate::{Error, Result};

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

/// The errno of an I/O error (EIO for one that carries none).
pub(crate) fn io_errno(e: &std::io::Error) -> Errno {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
