//! Handing a seccomp user-notification descriptor to the listener named by
//! `linux.seccomp.listenerPath`, as the runtime-spec describes: connect to
//! the unix socket, send the container process state (`ociVersion`, `fds`,
//! `pid`, `metadata`, `state`) as JSON in one message, with the descriptor
//! riding along by SCM_RIGHTS.

use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};

/// Errors of the hand-off.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connecting to the seccomp listener {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
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
    use crate::channel::{send_over_unix_socket, SocketSend};
    let bytes = message.to_string().into_bytes();
    send_over_unix_socket(path, &bytes, fd).map_err(|e| match e {
        SocketSend::Connect(source) => Error::Connect {
            path: path.to_path_buf(),
            source,
        },
        SocketSend::Send(source) => Error::Send {
            path: path.to_path_buf(),
            source,
        },
    })
}
