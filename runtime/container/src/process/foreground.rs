//! The `rt run` process while it waits in the foreground: it forwards the
//! signals it receives to the container's init, relays the container's pty to
//! its own stdio, reaps the init and reports its status.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::termios::{self, SetArg, Termios};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::sandbox::Created;

/// Errors of the foreground wait.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Sys(&'static str, #[source] Errno),
}

pub type Result<T> = std::result::Result<T, Error>;

/// Owns the signal mask and terminal mode while `run` waits.
#[derive(Debug)]
pub struct Waiter {
    pid: Pid,
    sigfd: SignalFd,
    old_mask: SigSet,
    terminal: Option<OwnedFd>,
    saved_termios: Option<Termios>,
}

impl Waiter {
    /// Takes every catchable signal into a signalfd and, with a terminal, puts
    /// our stdin in raw mode.
    pub fn new(created: Created) -> Result<Waiter> {
        let all = SigSet::all();
        let mut old_mask = SigSet::empty();
        nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&all), Some(&mut old_mask))
            .map_err(|e| Error::Sys("blocking signals", e))?;
        let sigfd = SignalFd::with_flags(&all, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
            .map_err(|e| Error::Sys("signalfd", e))?;
        let mut saved_termios = None;
        if let Some(master) = &created.terminal {
            let stdin = std::io::stdin();
            if let Ok(t) = termios::tcgetattr(stdin.as_fd()) {
                let mut raw = t.clone();
                termios::cfmakeraw(&mut raw);
                let _ = termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw);
                saved_termios = Some(t);
                if let Ok((rows, cols)) = rt_sys::window_size(stdin.as_fd()) {
                    let _ = rt_sys::set_window_size(master.as_fd(), rows, cols);
                }
            }
        }
        Ok(Waiter {
            pid: created.pid,
            sigfd,
            old_mask,
            terminal: created.terminal,
            saved_termios,
        })
    }

    /// Waits for the init to exit; its exit code, or 128+N for signal N.
    pub fn wait(mut self) -> Result<i32> {
        let terminal = self.terminal.take();
        let master = terminal.as_ref().map(|m| m.as_fd());
        let mut stdin_open = master.is_some();
        let mut master_open = master.is_some();
        loop {
            if let Some(code) = self.reap()? {
                if let (true, Some(m)) = (master_open, master) {
                    drain(m);
                }
                return Ok(code);
            }
            let stdin = std::io::stdin();
            let mut fds = vec![PollFd::new(self.sigfd.as_fd(), PollFlags::POLLIN)];
            if let (true, Some(_)) = (stdin_open, master) {
                fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLIN));
            }
            let master_idx = fds.len();
            if let (true, Some(m)) = (master_open, master) {
                fds.push(PollFd::new(m, PollFlags::POLLIN));
            }
            match poll(&mut fds, PollTimeout::NONE) {
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(Error::Sys("poll", e)),
                Ok(_) => {}
            }
            let ready = |fd: &PollFd<'_>| fd.revents().is_some_and(|r| !r.is_empty());
            let sig_ready = ready(&fds[0]);
            let stdin_ready = stdin_open && master.is_some() && ready(&fds[1]);
            let master_ready = master_open && fds.len() > master_idx && ready(&fds[master_idx]);
            drop(fds);
            if sig_ready {
                self.on_signal(master);
            }
            if stdin_ready {
                if let Some(m) = master {
                    stdin_open = copy(stdin.as_fd(), m);
                }
            }
            if master_ready {
                if let Some(m) = master {
                    master_open = copy(m, std::io::stdout().as_fd());
                }
            }
        }
    }

    fn on_signal(&mut self, master: Option<BorrowedFd<'_>>) {
        while let Ok(Some(info)) = self.sigfd.read_signal() {
            let signo = info.ssi_signo as i32;
            match Signal::try_from(signo) {
                Ok(Signal::SIGCHLD) => {}
                Ok(Signal::SIGWINCH) => {
                    if let Some(m) = master {
                        if let Ok((rows, cols)) = rt_sys::window_size(std::io::stdin().as_fd()) {
                            let _ = rt_sys::set_window_size(m.as_fd(), rows, cols);
                        }
                    }
                }
                Ok(sig) => {
                    let _ = kill(self.pid, sig);
                }
                Err(_) => {}
            }
        }
    }

    /// Reaps every exited child (orphans adopted as subreaper too); the init's
    /// status once it has exited.
    fn reap(&self) -> Result<Option<i32>> {
        loop {
            match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) if pid == self.pid => return Ok(Some(code)),
                Ok(WaitStatus::Signaled(pid, sig, _)) if pid == self.pid => {
                    return Ok(Some(128 + sig as i32))
                }
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return Ok(None),
                Ok(_) => continue,
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(Error::Sys("waitpid", e)),
            }
        }
    }
}

/// Copies what the pty still holds after the init exited.
fn drain(m: BorrowedFd<'_>) {
    let mut fds = [PollFd::new(m, PollFlags::POLLIN)];
    while matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0) {
        if !copy(m, std::io::stdout().as_fd()) {
            break;
        }
    }
}

/// Copies what is readable from `from` to `to`; false at end of file or error.
fn copy(from: BorrowedFd<'_>, to: BorrowedFd<'_>) -> bool {
    let mut buf = [0u8; 8192];
    match nix::unistd::read(from.as_raw_fd(), &mut buf) {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            let mut off = 0;
            while off < n {
                match nix::unistd::write(to, &buf[off..n]) {
                    Ok(w) => off += w,
                    Err(Errno::EINTR) => {}
                    Err(_) => return false,
                }
            }
            true
        }
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        if let Some(t) = &self.saved_termios {
            let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, t);
        }
        let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&self.old_mask), None);
    }
}
