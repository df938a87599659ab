//! Terminal ioctls: the controlling terminal and the window size.

use std::os::fd::{AsRawFd, BorrowedFd};

use nix::errno::Errno;

use crate::{Error, Result};

/// Makes `tty` the controlling terminal of the calling session (TIOCSCTTY).
pub fn set_controlling_terminal(tty: BorrowedFd<'_>) -> Result<()> {
    // SAFETY: TIOCSCTTY takes an integer argument (0: do not steal), no pointer.
    let rc = unsafe { libc::ioctl(tty.as_raw_fd(), libc::TIOCSCTTY, 0) };
    Errno::result(rc)
        .map(drop)
        .map_err(|e| Error::Syscall("ioctl(TIOCSCTTY)", e))
}

/// Sets a terminal's window size (TIOCSWINSZ).
pub fn set_window_size(tty: BorrowedFd<'_>, rows: u16, cols: u16) -> Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a `winsize` through the pointer, which points to a
    // live, initialised value on our stack for the whole call.
    let rc = unsafe { libc::ioctl(tty.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    Errno::result(rc)
        .map(drop)
        .map_err(|e| Error::Syscall("ioctl(TIOCSWINSZ)", e))
}

/// Reads a terminal's window size (TIOCGWINSZ).
pub fn window_size(tty: BorrowedFd<'_>) -> Result<(u16, u16)> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes a `winsize` through the pointer, which points to a
    // live value on our stack for the whole call.
    let rc = unsafe { libc::ioctl(tty.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
    Errno::result(rc).map_err(|e| Error::Syscall("ioctl(TIOCGWINSZ)", e))?;
    Ok((ws.ws_row, ws.ws_col))
}
