//! The errors of container operations: the engine's ([`crate::container`])
//! and every backend's lifecycle ([`crate::backend`]).

use std::path::PathBuf;

use crate::hooks;
use crate::network;
use crate::process::{exec, parent};
use crate::spec;
use crate::state::{self, Status};

/// Errors of container operations.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Spec(#[from] spec::Error),
    #[error(transparent)]
    State(#[from] state::Error),
    #[error("isolation {0:?} (annotation run.rt.isolation) is not supported: use \"container\" or \"vm\"")]
    UnsupportedIsolation(String),
    #[error(transparent)]
    Vm(#[from] crate::backend::vm::VmError),
    #[error("annotation run.rt.isolation={annotation:?} contradicts the binary's name: rt-vm runs containers with isolation {binary:?}; drop the annotation or run rt")]
    IsolationContradiction { annotation: String, binary: String },
    #[error("container {id} was created by backend {backend:?}, which this rt does not know")]
    UnknownBackend { id: String, backend: String },
    /// A namespace container's checkpoint needs CRIU, and CRIU says why
    /// it cannot work here.
    #[error("checkpoint of a namespace container needs CRIU, which cannot run here: {0}")]
    CriuUnavailable(String),
    #[error("migration: {0}")]
    Migration(String),
    #[error("migration: {what} {peer}")]
    MigrationIo {
        what: &'static str,
        peer: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{op} is not supported by the {backend} backend")]
    NotSupported {
        backend: &'static str,
        op: &'static str,
    },
    #[error(transparent)]
    Create(#[from] parent::Error),
    #[error(transparent)]
    Cgroups(#[from] rt_cgroups::Error),
    #[error(transparent)]
    Hooks(#[from] hooks::Error),
    #[error(transparent)]
    Network(#[from] network::Error),
    #[error("cannot start a container that has stopped")]
    StartStopped,
    #[error("cannot start a container in the {0} state")]
    StartNotCreated(Status),
    #[error("container not running")]
    NotRunning,
    #[error("container not paused")]
    NotPaused,
    #[error("cannot exec in a paused container (use --ignore-paused to override)")]
    ExecPaused,
    #[error("cannot exec in a stopped container")]
    ExecStopped,
    #[error(transparent)]
    Exec(#[from] exec::Error),
    #[error("cannot delete container {0} that is not stopped: {1}")]
    NotStopped(String, Status),
    #[error("signalling the container init")]
    Signal(#[source] rt_sys::Error),
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cleaning up container {id}: {}", .errors.join("; "))]
    Cleanup { id: String, errors: Vec<String> },
}

pub type Result<T> = std::result::Result<T, Error>;
