//! `process.terminal`: the init makes a pty inside the container and sends the
//! master to the caller, which passes it to `--console-socket` or relays it.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};

/// Errors of terminal setup.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Pty(&'static str, #[source] Errno),
    #[error("opening pty slave {path}")]
    Slave {
        path: PathBuf,
        #[source]
        source: Errno,
    },
    #[error("connecting to console socket {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("sending pty master to console socket {path}")]
    Send {
        path: PathBuf,
        #[source]
        source: Errno,
    },
    #[error("setting up the terminal")]
    Sys(#[source] rt_sys::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

/// In the container: opens a pty, makes its slave the controlling terminal and
/// stdio of the calling process, and returns the master.
pub fn setup_in_container(size: Option<(u16, u16)>, uid: u32, gid: u32) -> Result<OwnedFd> {
    let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .map_err(|e| Error::Pty("opening /dev/ptmx", e))?;
    grantpt(&master).map_err(|e| Error::Pty("grantpt", e))?;
    unlockpt(&master).map_err(|e| Error::Pty("unlockpt", e))?;
    let name = ptsname_r(&master).map_err(|e| Error::Pty("ptsname", e))?;
    let slave = nix::fcntl::open(
        Path::new(&name),
        OFlag::O_RDWR | OFlag::O_NOCTTY,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|source| Error::Slave {
        path: name.clone().into(),
        source,
    })?;
    let slave = own(slave);
    let _ = nix::unistd::fchown(
        slave.as_raw_fd(),
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(gid)),
    );
    if let Some((rows, cols)) = size {
        rt_sys::set_window_size(master.as_fd(), rows, cols).map_err(Error::Sys)?;
    }
    // The init is already a session leader (it called setsid first).
    rt_sys::set_controlling_terminal(slave.as_fd()).map_err(Error::Sys)?;
    for target in 0..3 {
        nix::unistd::dup2(slave.as_raw_fd(), target)
            .map_err(|e| Error::Pty("dup2 onto stdio", e))?;
    }
    let raw = master.as_raw_fd();
    std::mem::forget(master);
    Ok(own(raw))
}

fn own(fd: std::os::fd::RawFd) -> OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: `fd` was just returned by open/posix_openpt and is owned by no
    // other value (the PtyMaster was forgotten above).
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Sends the pty master over the unix socket at `path` (SCM_RIGHTS), as
/// conmon and containerd's shim expect.
pub fn send_to_socket(path: &Path, master: BorrowedFd<'_>) -> Result<()> {
    use crate::channel::{send_over_unix_socket, SocketSend};
    let path_buf = path.to_path_buf();
    send_over_unix_socket(path, b"/dev/ptmx", master).map_err(|e| match e {
        SocketSend::Connect(source) => Error::Connect {
            path: path_buf,
            source,
        },
        SocketSend::Send(source) => Error::Send {
            path: path_buf,
            source,
        },
    })
}
