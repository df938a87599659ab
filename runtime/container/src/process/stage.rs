//! The stage process: namespaces, then the fork of the init — or, when the
//! parent clones the init straight into new namespaces, the stage's part the
//! init then does for itself ([`run_as_init`]).

use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;

use nix::sched::CloneFlags;
use nix::unistd::{ForkResult, Gid, Uid};

use super::{chain, init, Launch};
use crate::channel::{self, ChildEnd, ToChild, ToParent};
use crate::namespaces;

/// Errors of the stage process.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("talking to the parent")]
    Channel(#[from] channel::Error),
    #[error("unexpected message {0:?}")]
    Unexpected(ToChild),
    #[error(transparent)]
    Namespaces(#[from] namespaces::Error),
    #[error("entering the container's cgroups")]
    Cgroups(#[from] rt_cgroups::Error),
    #[error("forking the container init")]
    Fork(#[source] rt_sys::Error),
    #[error("joining the network namespace made for the container")]
    JoinNet(#[source] nix::errno::Errno),
    #[error("opening exec fifo {path}")]
    Fifo {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Runs the stage; never returns.
pub fn run(launch: &Launch<'_>, chan: ChildEnd) -> ! {
    let code = match stage(launch, &chan) {
        Ok(()) => 0,
        Err(e) => {
            let _ = chan.send(&ToParent::Failed(chain(&e)));
            1
        }
    };
    // _exit, not exit: no atexit handler or stdio flush of the parent's copied
    // state runs twice.
    rt_sys::exit_now(code)
}

/// The init cloned by the parent straight into its new namespaces (see
/// [`crate::namespaces::Plan::direct_clone`]): it does the stage's part for
/// itself (closing what the parent holds and opening the exec fifo), then
/// becomes the init, which enters the v1 hierarchies once the parent made
/// them (the parent cloned it into the cgroup2 directory). Never returns.
pub fn run_as_init(launch: &Launch<'_>, chan: ChildEnd) -> ! {
    // The network namespace first, while the descriptor of one made ahead
    // is still open (the parent's, inherited; closed next).
    let fifo = new_net(launch)
        .and_then(|()| {
            rt_sys::close_fds_except(3 + launch.preserve_fds, chan.as_fd()).map_err(Error::Fork)
        })
        .and_then(|()| open_fifo(launch));
    match fifo {
        Ok(fifo) => init::run(launch, &chan, fifo),
        Err(e) => {
            let _ = chan.send(&ToParent::Failed(chain(&e)));
            rt_sys::exit_now(1)
        }
    }
}

/// The network namespace the parent left out of the clone
/// ([`Launch::net_in_init`]), before anything else: the sysfs mount and the
/// sysctls to come belong to it. The one made ahead, if there is one; else
/// a new one of our own.
fn new_net(launch: &Launch<'_>) -> Result<(), Error> {
    if !launch.net_in_init {
        return Ok(());
    }
    if let Some(ns) = launch.netns {
        return nix::sched::setns(ns, CloneFlags::CLONE_NEWNET).map_err(Error::JoinNet);
    }
    nix::sched::unshare(CloneFlags::CLONE_NEWNET)
        .map_err(|e| namespaces::Error::Unshare(CloneFlags::CLONE_NEWNET, e).into())
}

/// The exec fifo, opened read-write so that opening never blocks (`start`
/// writes one byte to it), while the process still holds the host's
/// privileges: in a user namespace the init could not open the runtime's
/// file. Close-on-exec: it never reaches the user's process.
fn open_fifo(launch: &Launch<'_>) -> Result<std::fs::File, Error> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(&launch.fifo)
        .map_err(|source| Error::Fifo {
            path: launch.fifo.clone(),
            source,
        })
}

fn expect(chan: &ChildEnd, want: ToChild) -> Result<(), Error> {
    match chan.recv()? {
        m if m == want => Ok(()),
        other => Err(Error::Unexpected(other)),
    }
}

fn stage(launch: &Launch<'_>, chan: &ChildEnd) -> Result<(), Error> {
    // Nothing the parent holds (the state lock above all) stays open here.
    rt_sys::close_fds_except(3 + launch.preserve_fds, chan.as_fd()).map_err(Error::Fork)?;
    // Into the container's cgroups before anything else, so that the init and
    // everything it forks are born there.
    // A process may be cloned into a cgroup only from inside its cgroup
    // namespace's tree: when joining an existing cgroup namespace, move the
    // stage itself first instead.
    let whole = launch.plan.in_user_ns() || launch.plan.joins(CloneFlags::CLONE_NEWCGROUP);
    let cgroup2 = launch.cgroup.enter(whole)?;
    let fifo = open_fifo(launch)?;
    let plan = &launch.plan;
    plan.join_all()?;
    if plan.new_user {
        plan.unshare_user()?;
        chan.send(&ToParent::UserNamespaceReady)?;
        expect(chan, ToChild::MapsWritten)?;
        // Become root of the new namespace when root is mapped; a mapping
        // without root is valid and leaves us as the overflow id.
        let _ = nix::unistd::setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0));
        let _ = nix::unistd::setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0));
    }
    plan.unshare_rest()?;
    let time_ns = CloneFlags::from_bits_retain(libc::CLONE_NEWTIME);
    if plan.create.contains(time_ns) && !launch.bundle.time_offsets.is_empty() {
        namespaces::write_time_offsets(&launch.bundle.time_offsets)?;
    }
    let forked = match &cgroup2 {
        Some(fd) => rt_sys::fork_into_cgroup(launch.one_thread, fd.as_fd()),
        None => rt_sys::fork(launch.one_thread),
    };
    match forked.map_err(Error::Fork)? {
        ForkResult::Child => {
            // The init must hold no host directory (CVE-2024-21626).
            drop(cgroup2);
            init::run(launch, chan, fifo)
        }
        ForkResult::Parent { child } => {
            // Our pid namespace is the parent's, so `child` is the host pid.
            chan.send(&ToParent::InitPid(child.as_raw()))?;
            Ok(())
        }
    }
}
