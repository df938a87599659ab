//! The processes of `create`, one file per role:
//!
//! - [`parent`]: the `rt` process the caller ran. It forks the stage, places
//!   it in its cgroups, writes user-namespace maps, runs the runtime hooks and
//!   records the state. It is the only one that survives `create`.
//! - [`stage`]: joins and unshares namespaces, then forks the init (so the init
//!   is pid 1 of a new pid namespace) and exits.
//! - [`init`]: builds the rootfs and the process's identity inside the
//!   namespaces, reports `Ready`, waits on the exec fifo for `start`, execs.
//! - [`exec`]: `rt exec`'s parent, stage and process.
//! - [`foreground`]: `rt run` (and attached `rt exec`) waiting for the process.
//!
//! Shared by the roles: [`supervise`] (the parents' message loop, checks and
//! cleanup) and [`user_process`] (becoming the user's process, up to execve).
//!
//! The children get their configuration by inheriting the parent's memory at
//! fork; they talk to the parent only through typed messages
//! ([`crate::channel`]). Every process here is single-threaded, so forking is
//! sound ([`rt_sys::fork`] checks it).

pub mod exec;
pub mod foreground;
pub mod init;
pub mod parent;
pub mod stage;
pub mod supervise;
pub mod user_process;

use std::path::PathBuf;

use crate::namespaces::Plan;
use crate::spec::Bundle;

/// What the stage and init need, shared with them through fork.
#[derive(Debug)]
pub struct Launch<'a> {
    pub id: &'a str,
    pub bundle: &'a Bundle,
    pub plan: Plan,
    pub no_pivot: bool,
    pub fifo: PathBuf,
    pub preserve_fds: u32,
    /// Host directories of the container's cgroup, named for the cgroup mount.
    pub cgroup_dirs: Vec<(String, PathBuf)>,
    pub cgroup_unified: bool,
    /// The container's cgroups, already created (the stage enters them) or,
    /// with `cgroups_pending`, being made.
    pub cgroup: &'a dyn rt_cgroups::Manager,
    /// The init was cloned before its cgroup was complete: the parent makes
    /// and limits it while the init mounts what needs no cgroup, and sends
    /// `CgroupsReady`, after which the init enters it.
    pub cgroups_pending: bool,
    /// With `cgroups_pending`, on a host of several CPUs: the init runs off
    /// the parent's CPU until `CgroupsReady`, so that the two overlap, then
    /// takes back this inherited affinity.
    pub spread: Option<rt_sys::spread::Spread>,
    /// With a direct clone: the init unshares its new network namespace
    /// itself, first thing, instead of being cloned into it. Making a
    /// network namespace is the dearest part of the clone (0.4–0.7 ms
    /// here), and in the init it overlaps the parent's cgroup work. Only
    /// when nothing of the parent's enters that namespace before the init
    /// reports (no rt network to attach).
    pub net_in_init: bool,
    /// With `net_in_init`: the namespace a helper made meanwhile
    /// ([`crate::sandbox::HeadStart`]), which the init joins instead of
    /// making one.
    pub netns: Option<std::os::fd::BorrowedFd<'a>>,
    /// The parent was single-threaded when it forked the stage.
    pub one_thread: rt_sys::SingleThreaded,
    /// The process's seccomp profile, compiled by the parent while it
    /// waited for the network namespace helper (the init takes it instead
    /// of compiling it cold); None: the init compiles it, or receives it.
    pub seccomp: std::cell::RefCell<Option<crate::seccomp::Filters>>,
    /// With `cgroups_pending`, no rt network and a profile not compiled
    /// before the clone: the parent compiles it once it has sent
    /// `CgroupsReady` (it waits for the init's report then) and sends it
    /// (`ToChild::Profile`); the init, whose steps up to `CgroupsReady`
    /// are the longer of the two, takes it before its hooks or its
    /// `prepare`, instead of compiling it cold on that path (0.3 ms here).
    pub profile_from_parent: bool,
}

/// Formats an error with its sources, once, as `a: b: c`.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
