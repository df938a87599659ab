//! Handing a seccomp user-notification descriptor to the listener named by
//! `linux.seccomp.listenerPath`, as the runtime-spec describes: connect to
//! the unix socket, send the container process state (`ociVersion`, `fds`,
//! `pid`, `metadata`, `state`) as JSON in one message, with the descriptor
//! riding along by SCM_RIGHTS.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};

use nix::sys::socket::{
    connect, sendmsg, socket, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, UnixAddr,
};

/// Errors of the hand-off.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connecting to the seccomp listener {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: nix::errno::Errno,
    },
    #[error("sending the seccomp descriptor to the listener {path}")]
    Send {
        path: PathBuf,
        #[source]
        source: nix::errno::Errno,
    },
}

/// The runtime-spec's containerProcessState for `pid`, with `state` the
/// container's state document (status `creating`, or the container's
/// status for an exec'd process).
pub fn process_state(
    pid: i32,
    metadata: Option<&str>,
    state: serde_json::Value,
) -> serde_json::Value {
    serde_json::json!({
        "ociVersion": crate::state::OCI_VERSION,
        "fds": ["seccompFd"],
        "pid": pid,
        "metadata": metadata.unwrap_or_default(),
        "state": state,
    })
}

/// Sends `message` and `fd` to the listener at `path`.
pub fn send(path: &Path, message: &serde_json::Value, fd: BorrowedFd<'_>) -> Result<(), Error> {
    let connect_err = |source| Error::Connect {
        path: path.to_path_buf(),
        source,
    };
    let sock = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(connect_err)?;
    let addr = UnixAddr::new(path).map_err(connect_err)?;
    connect(sock.as_raw_fd(), &addr).map_err(connect_err)?;
    let bytes = message.to_string().into_bytes();
    let fds = [fd.as_raw_fd()];
    sendmsg::<()>(
        sock.as_raw_fd(),
        &[IoSlice::new(&bytes)],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map_err(|source| Error::Send {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(())
}
