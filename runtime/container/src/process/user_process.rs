//! Becoming the user's process, shared by the container's init and by exec:
//! rlimits, personality, AppArmor, cwd, PATH lookup, seccomp, capabilities,
//! user, no_new_privs — in runc's order — and finally execve.

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd};

use oci_spec::runtime::{Linux, LinuxPersonalityDomain, Process};

use crate::{identity, lsm, seccomp};

/// Errors of preparing or executing the user's process.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Identity(#[from] identity::Error),
    #[error(transparent)]
    Seccomp(#[from] seccomp::Error),
    #[error(transparent)]
    Lsm(#[from] lsm::Error),
    #[error(transparent)]
    Sys(#[from] rt_sys::Error),
    #[error("exec {0:?}")]
    Exec(String, #[source] nix::errno::Errno),
    #[error("argument or environment string contains a NUL byte")]
    Nul,
}

/// Everything decided before the last step: what to exec, and the seccomp
/// filters still to load (with no_new_privs, as late as possible).
#[derive(Debug)]
pub struct Prepared {
    exe: CString,
    args: Vec<CString>,
    env: Vec<CString>,
    late_filters: seccomp::Filters,
    /// The seccomp user-notification descriptor, for the parent to hand to
    /// `listenerPath`.
    listener: Option<std::os::fd::OwnedFd>,
}

impl Prepared {
    /// Whether the executable is the missing-binary case (exit 127 callers map).
    pub fn not_found(e: &Error) -> bool {
        matches!(e, Error::Identity(identity::Error::NotFound(_)))
    }
}

/// The process's seccomp profile compiled, for [`prepare`]: apart, so that
/// the init compiles it while it waits for its cgroup (the compile is cold
/// in a fresh child: 0.1–0.2 ms of first touches here).
pub fn compile_seccomp(linux: &Linux) -> Result<seccomp::Filters, Error> {
    Ok(match linux.seccomp() {
        Some(s) => seccomp::compile(s)?,
        None => seccomp::Filters::default(),
    })
}

/// Drops the capabilities `process` leaves out of its bounding set, ahead
/// of [`prepare`] (which then skips it: `bounding_dropped`). The set only
/// limits what later execs gain, so the caller keeps its own capabilities;
/// whatever it execs between here and the user's process gets the
/// container's set. Returns whether there was a set to drop to.
pub fn drop_bounding(process: &Process) -> Result<bool, Error> {
    match process.capabilities() {
        Some(c) => identity::drop_bounding(c)
            .map(|()| true)
            .map_err(Into::into),
        None => Ok(false),
    }
}

/// Sets up the calling process as `process` describes, up to (not including)
/// the exec. `in_user_ns` tells whether setgroups may be refused;
/// `bounding_dropped`, whether [`drop_bounding`] already ran. Every
/// descriptor but stdio and the `preserve_fds` after them is made
/// close-on-exec here, before any seccomp filter is loaded: no profile may
/// make a syscall of rt's fail (close_range is missing from many).
pub fn prepare(
    process: &Process,
    linux: &Linux,
    in_user_ns: bool,
    preserve_fds: u32,
    mut filters: seccomp::Filters,
    bounding_dropped: bool,
) -> Result<Prepared, Error> {
    rt_sys::cloexec_from(3 + preserve_fds)?;
    identity::set_rlimits(process.rlimits().as_deref().unwrap_or_default())?;
    if let Some(p) = linux.personality() {
        let persona = match p.domain() {
            LinuxPersonalityDomain::PerLinux32 => 0x0008,
            _ => 0,
        };
        rt_sys::set_personality(persona)?;
    }
    if let Some(profile) = process
        .apparmor_profile()
        .as_deref()
        .filter(|p| !p.is_empty())
    {
        lsm::apply_apparmor(profile)?;
    }
    if let Some(label) = process.selinux_label().as_deref().filter(|l| !l.is_empty()) {
        lsm::apply_selinux(label)?;
    }
    identity::chdir(process.cwd())?;
    let args = process.args().as_deref().unwrap_or_default();
    let env = process.env().as_deref().unwrap_or_default();
    let first = args.first().map(String::as_str).unwrap_or_default();
    let exe = identity::lookup(first, identity::env_path(env))?;
    let nnp = process.no_new_privileges().unwrap_or(false);
    let mut listener = None;
    if !nnp {
        // Without no_new_privs, loading a filter needs CAP_SYS_ADMIN: do it
        // while we still have it.
        listener = filters.load()?;
    }
    if !bounding_dropped {
        drop_bounding(process)?;
    }
    identity::switch_user(process, !in_user_ns || setgroups_allowed())?;
    identity::chdir(process.cwd())?;
    if let Some(c) = process.capabilities() {
        identity::apply_caps(c)?;
    }
    if nnp {
        identity::set_no_new_privs()?;
        // The notify filter now rather than at exec: its listener must
        // reach the parent (and the listener) before the process runs.
        listener = filters.split_notify().load()?;
    }
    Ok(Prepared {
        listener,
        exe: CString::new(exe.as_os_str().as_encoded_bytes()).map_err(|_| Error::Nul)?,
        args: to_cstrings(args)?,
        env: to_cstrings(env)?,
        late_filters: if nnp {
            filters
        } else {
            seccomp::Filters::default()
        },
    })
}

impl Prepared {
    /// The seccomp listener descriptor, if the profile has notify rules.
    pub fn take_listener(&mut self) -> Option<std::os::fd::OwnedFd> {
        self.listener.take()
    }

    /// Loads the late seccomp filters now rather than at exec, if they let
    /// through every syscall rt makes from here to the exec: `sendmsg` on
    /// `chan` (Ready, or a failure), `read` of the exec fifo `fifo`, `write`
    /// to stderr, `close`, memory for the exec's argument arrays, `execve`
    /// and `exit_group`. Returns whether it did.
    pub fn load_early(
        &mut self,
        chan: BorrowedFd<'_>,
        fifo: BorrowedFd<'_>,
    ) -> Result<bool, Error> {
        let fd = |fd: BorrowedFd<'_>| Some(fd.as_raw_fd() as u64);
        let calls = [
            ("sendmsg", fd(chan)),
            ("read", fd(fifo)),
            ("write", Some(2)),
            ("close", None),
            ("brk", None),
            ("mmap", None),
            ("munmap", None),
            ("execve", None),
            ("exit_group", None),
        ];
        if self.late_filters.is_empty() || !self.late_filters.allows(&calls) {
            return Ok(false);
        }
        std::mem::take(&mut self.late_filters).load()?;
        Ok(true)
    }

    /// Loads the late seccomp filters and execs. Returns only on error.
    pub fn exec(self) -> Error {
        if let Err(e) = self.late_filters.load() {
            return e.into();
        }
        drop(self.listener);
        let e = nix::unistd::execve(&self.exe, &self.args, &self.env).unwrap_err();
        Error::Exec(self.exe.to_string_lossy().into_owned(), e)
    }
}

fn setgroups_allowed() -> bool {
    std::fs::read_to_string("/proc/self/setgroups").map_or(true, |s| s.trim() == "allow")
}

fn to_cstrings(v: &[String]) -> Result<Vec<CString>, Error> {
    v.iter()
        .map(|s| CString::new(s.as_bytes()).map_err(|_| Error::Nul))
        .collect()
}
