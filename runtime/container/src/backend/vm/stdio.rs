//! What the VM's host processes (the supervisor for the init, the exec
//! relay for an exec'd process) share: they stand for a process in the
//! guest, so their stdio is its stdio, signals sent to them are forwarded
//! to it, a terminal's size follows, and they end as it ended.

use std::os::fd::{AsFd, BorrowedFd};

use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::termios;

use super::VmError;

/// Blocks every signal in the calling (still single) thread, so that the
/// threads spawned later inherit the mask and one of them takes signals
/// with [`next_signal`]. Children spawned with `Command` start with an
/// empty mask.
pub fn block_signals() -> Result<(), VmError> {
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&SigSet::all()), None)
        .map_err(|e| VmError::Sys("blocking signals", e))
}

/// What to do with a signal the stand-in received.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    /// Forward it to the guest process.
    Forward(i32),
    /// The terminal's size changed.
    Resize,
    /// Ours alone (a child of ours ended, a closed pipe).
    Ignore,
}

/// Waits for the next signal (all blocked by [`block_signals`]).
pub fn next_signal() -> Received {
    let Ok(sig) = SigSet::all().wait() else {
        return Received::Ignore;
    };
    match sig {
        Signal::SIGWINCH => Received::Resize,
        Signal::SIGCHLD | Signal::SIGPIPE | Signal::SIGURG => Received::Ignore,
        s => Received::Forward(s as i32),
    }
}

/// Takes the stand-in's stdin (a pty slave) as its controlling terminal in
/// a session of its own, so SIGWINCH reports resizes, and passes bytes
/// through unchanged (the guest's pty does the line discipline).
pub fn own_terminal() -> Result<(), VmError> {
    let _ = nix::unistd::setsid();
    let stdin = std::io::stdin();
    rt_sys::set_controlling_terminal(stdin.as_fd()).map_err(VmError::Terminal)?;
    let mut t = termios::tcgetattr(stdin.as_fd()).map_err(|e| VmError::Sys("tcgetattr", e))?;
    termios::cfmakeraw(&mut t);
    termios::tcsetattr(stdin.as_fd(), termios::SetArg::TCSANOW, &t)
        .map_err(|e| VmError::Sys("tcsetattr", e))
}

/// The stand-in's terminal size, if its stdin is one.
pub fn terminal_size() -> Option<(u16, u16)> {
    rt_sys::window_size(std::io::stdin().as_fd()).ok()
}

/// Writes all of `bytes` to our descriptor `fd` (1 or 2), unbuffered; a
/// reader that went away is not an error of ours.
pub fn write_out(fd: u32, bytes: &[u8]) {
    let out = std::io::stdout();
    let err = std::io::stderr();
    let target: BorrowedFd<'_> = if fd == 2 { err.as_fd() } else { out.as_fd() };
    let mut rest = bytes;
    while !rest.is_empty() {
        match nix::unistd::write(target, rest) {
            Ok(n) => rest = &rest[n..],
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return,
        }
    }
}

/// Ends the process as the guest process ended (raw wait status): with
/// its exit code, or by its signal.
pub fn exit_as(status: i32) -> ! {
    if status & 0x7f == 0 {
        std::process::exit((status >> 8) & 0xff);
    }
    rt_sys::die_of(status & 0x7f)
}
