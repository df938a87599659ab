//! Guest tooling shared by rt's QEMU test guest and, later, its microVM
//! backend: fetching a Debian kernel ([`kernel`]), building an initramfs
//! ([`initramfs`]), and launching QEMU's `microvm` machine with the right
//! accelerator ([`qemu`]).
//!
//! Everything here drives external programs (apt-get, dpkg-deb, ldd,
//! qemu-system-x86_64) through `std::process::Command`; nothing forks by
//! hand, so a multi-threaded caller is fine.

pub mod channel;
pub mod guest;
pub mod initramfs;
pub mod kernel;
pub mod qemu;
pub mod qmp;

use std::path::PathBuf;

/// Errors of the guest tooling.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("running {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} failed ({status}): {stderr}")]
    Command {
        program: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("no Debian kernel package found: {0}")]
    NoKernel(String),
    #[error("kernel module {0} not found in modules.dep")]
    NoModule(String),
    #[error("initramfs path {0:?} must be absolute and plain")]
    BadPath(String),
    #[error("file {path} is too large for a cpio archive")]
    TooLarge { path: PathBuf },
    #[error(
        "no guest kernel is installed in {0}: run integration/vm/install-guest (or set RT_VM_DIR)"
    )]
    NoGuestKernel(PathBuf),
    #[error("the guest did not print {marker:?} within {secs} s")]
    Timeout { marker: String, secs: u64 },
}

pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn io(
    what: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { what, path, source }
}

/// Runs a command to completion, returning its stdout; a non-zero exit is an
/// error carrying stderr.
pub(crate) fn run(cmd: &mut std::process::Command) -> Result<String> {
    let program = format!("{:?}", cmd.get_program());
    let out = cmd.output().map_err(|source| Error::Spawn {
        program: program.clone(),
        source,
    })?;
    if !out.status.success() {
        return Err(Error::Command {
            program,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
