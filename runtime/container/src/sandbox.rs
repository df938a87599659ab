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
    /// `run`: the container is started as soon as it is created, under the
    /// same lock, so the `created` status is saved after the init is
    /// released (off the path to the user's process) rather than before.
    pub starts_at_once: bool,
}

/// What create and exec hand back: the process that stands for the
/// container (or the exec'd process) on the host, and the pty master when
/// the caller relays it itself.
#[derive(Debug)]
pub struct Created {
    pub pid: Pid,
    pub terminal: Option<OwnedFd>,
    /// The `created` status is not saved yet: create left it to start
    /// ([`Options::starts_at_once`]).
    pub unsaved: bool,
    /// The container's network namespace, made ahead by a helper, while
    /// the caller holds it. A caller that waits for the container (`run`)
    /// keeps it until its own cleanup is done: the namespace then outlives
    /// the init's exit, and the kernel's teardown of it (`cleanup_net`, on
    /// a worker, 0.3 ms and more here) does not take a CPU from the
    /// caller's wake-up and cleanup. Dropping it is all it takes.
    pub netns: Option<OwnedFd>,
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
    /// What the backend started as soon as the bundle was read.
    pub head_start: HeadStart,
}

/// Work a backend starts as soon as the bundle is read
/// ([`crate::backend::Isolation::head_start`]), so that it overlaps the
/// engine's own set-up (the state directory, the cgroup layout, the first
/// state save) on another CPU.
#[derive(Debug, Default)]
pub struct HeadStart {
    /// The container's new network namespace, being made by a helper (the
    /// namespaces backend, when its init would otherwise make it).
    pub netns: Option<rt_sys::netns_helper::NetnsHelper>,
}

/// How `exec` places its process (runc's `--ignore-paused`, `--cgroup`).
#[derive(Debug, Default)]
pub struct ExecHow {
    pub ignore_paused: bool,
    pub cgroup: rt_cgroups::Sub,
}
