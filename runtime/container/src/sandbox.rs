//! The data every backend's lifecycle takes and gives back: how a container
//! is created ([`Options`], [`Sandbox`]), how `exec` places its process
//! ([`ExecHow`]), and what create and exec hand back ([`Created`]). Kept
//! apart from the backends and the processes so that neither imports the
//! other for its types.

use std::os::fd::OwnedFd;
use std::path::PathBuf;

use nix::unistd::Pid;

use crate::spec::Bundle;
use crate::state::ContainerDir;

/// How to create (and, for the pty and preserved fds, how to exec).
#[derive(Debug, Default)]
pub struct Options {
    pub console_socket: Option<PathBuf>,
    pub no_pivot: bool,
    pub preserve_fds: u32,
    /// `run` in the foreground keeps the pty master to relay it itself.
    pub keep_terminal: bool,
}

/// What create and exec hand back: the process that stands for the
/// container (or the exec'd process) on the host, and the pty master when
/// the caller relays it itself.
#[derive(Debug)]
pub struct Created {
    pub pid: Pid,
    pub terminal: Option<OwnedFd>,
}

/// What a backend builds a container from.
#[derive(Debug)]
pub struct Sandbox<'a> {
    pub dir: &'a ContainerDir,
    pub bundle: &'a Bundle,
    pub opts: &'a Options,
    pub cgroup: &'a mut dyn rt_cgroups::Manager,
    pub layout: &'a rt_cgroups::Layout,
    /// The network to build once the sandbox's namespace exists.
    pub network: Option<&'a crate::network::Plan>,
}

/// How `exec` places its process (runc's `--ignore-paused`, `--cgroup`).
#[derive(Debug, Default)]
pub struct ExecHow {
    pub ignore_paused: bool,
    pub cgroup: rt_cgroups::Sub,
}
