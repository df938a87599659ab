//! The processes of `exec`: the parent (`rt exec`), a stage that enters the
//! container's cgroups and joins its namespaces (taken from its init), and the
//! exec'd process, forked inside them so that it is in the container's pid
//! namespace.

use std::os::fd::AsFd;
use std::path::PathBuf;

use nix::sched::CloneFlags;
use nix::sys::wait::waitpid;
use nix::unistd::{ForkResult, Pid};
use oci_spec::runtime::{Linux, Process};

use super::supervise::{self, Event, Supervisor};
use super::{chain, user_process};
use crate::channel::{self, ChildEnd, ParentEnd, ToParent};
use crate::namespaces::{self, Plan};
use crate::sandbox::{Created, Options};
use crate::terminal;

/// Errors of exec.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("talking to the exec'd process")]
    Channel(#[from] channel::Error),
    #[error(transparent)]
    Supervise(#[from] supervise::Error),
    #[error(transparent)]
    Namespaces(#[from] namespaces::Error),
    #[error("entering the container's cgroups")]
    Cgroups(#[from] rt_cgroups::Error),
    #[error(transparent)]
    Terminal(#[from] terminal::Error),
    #[error(transparent)]
    User(#[from] user_process::Error),
    #[error("forking")]
    Fork(#[source] rt_sys::Error),
    #[error("{0}")]
    Sys(&'static str, #[source] nix::errno::Errno),
}

pub type Result<T> = std::result::Result<T, Error>;

/// What the exec stage and process need, shared through fork.
#[derive(Debug)]
pub struct ExecLaunch<'a> {
    pub process: &'a Process,
    pub linux: &'a Linux,
    /// The init's namespaces to join (user first, mount last).
    pub plan: Plan,
    /// The container's cgroup directories (or `exec --cgroup`'s sub-cgroup).
    pub placement: rt_cgroups::Placement,
    /// The container is paused: enter its freezing cgroup last, right
    /// before the exec, so that setup finishes and the process starts frozen.
    pub defer_freezer: bool,
    pub preserve_fds: u32,
    /// The container's state document, for a seccomp listener.
    pub container_state: serde_json::Value,
    /// The init's root (`/proc/<pid>/root`) to chroot into, for a container
    /// without a mount namespace: there is no namespace whose root to join.
    pub chroot: Option<PathBuf>,
}

/// The init's root, when the container has no mount namespace of its own.
pub fn chroot_for(init: Pid, linux: &Linux) -> Option<PathBuf> {
    let namespaces = linux.namespaces().as_deref().unwrap_or_default();
    let mount = namespaces
        .iter()
        .any(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::Mount);
    (!mount).then(|| PathBuf::from(format!("/proc/{init}/root")))
}

/// The namespaces of the container's init that differ from ours, by type, as
/// `/proc/<pid>/ns` paths.
pub fn plan_for(init: Pid, linux: &Linux) -> Plan {
    let mut plan = Plan {
        create: CloneFlags::empty(),
        new_user: false,
        join: Vec::new(),
    };
    for ns in linux.namespaces().as_deref().unwrap_or_default() {
        let flag = namespaces::flag(ns.typ());
        let name = ns_name(flag);
        let theirs = PathBuf::from(format!("/proc/{init}/ns/{name}"));
        let ours = PathBuf::from(format!("/proc/self/ns/{name}"));
        // setns into the namespace we are already in fails for user namespaces.
        if same_file(&theirs, &ours) {
            continue;
        }
        plan.join.push((flag, theirs));
    }
    plan.join.sort_by_key(|(f, _)| match *f {
        CloneFlags::CLONE_NEWUSER => 0,
        CloneFlags::CLONE_NEWNS => 2,
        _ => 1,
    });
    plan
}

fn ns_name(flag: CloneFlags) -> &'static str {
    match flag {
        CloneFlags::CLONE_NEWNS => "mnt",
        CloneFlags::CLONE_NEWCGROUP => "cgroup",
        CloneFlags::CLONE_NEWUTS => "uts",
        CloneFlags::CLONE_NEWIPC => "ipc",
        CloneFlags::CLONE_NEWUSER => "user",
        CloneFlags::CLONE_NEWPID => "pid",
        CloneFlags::CLONE_NEWNET => "net",
        _ => "time",
    }
}

fn same_file(a: &std::path::Path, b: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// Runs `launch.process` in the container; returns once it has been exec'd.
pub fn exec(launch: &ExecLaunch<'_>, opts: &Options) -> Result<Created> {
    supervise::prepare(launch.process, opts)?;
    let (chan, child_end) = channel::pair()?;
    let one_thread = rt_sys::single_threaded().map_err(Error::Fork)?;
    let stage_pid = match rt_sys::fork(one_thread).map_err(Error::Fork)? {
        ForkResult::Child => {
            drop(chan);
            stage(launch, child_end, one_thread)
        }
        ForkResult::Parent { child } => child,
    };
    drop(child_end);
    let mut pid = None;
    let listener = launch
        .linux
        .seccomp()
        .as_ref()
        .map(|s| (s, &launch.container_state));
    let result = drive(&chan, opts, listener, stage_pid, &mut pid);
    if result.is_err() {
        supervise::abort(stage_pid, pid);
    }
    result
}

/// Where the exec'd process's seccomp listener descriptor goes: the
/// container's profile, and its state for the listener.
type Listener<'a> = Option<(&'a oci_spec::runtime::LinuxSeccomp, &'a serde_json::Value)>;

fn drive(
    chan: &ParentEnd,
    opts: &Options,
    listener: Listener<'_>,
    stage_pid: Pid,
    pid: &mut Option<Pid>,
) -> Result<Created> {
    let mut children = Supervisor::new(chan, opts);
    // The stage reports the pid and the exec'd child reports Ready on the
    // same channel; they race, so either may come first.
    let mut ready = false;
    loop {
        match children.next_event()? {
            Event::InitPid(p) => {
                let _ = waitpid(stage_pid, None);
                *pid = Some(p);
            }
            Event::Ready => ready = true,
            other => {
                return Err(
                    supervise::Error::Child(format!("unexpected {other:?} during exec")).into(),
                )
            }
        }
        if let (true, Some(pid)) = (ready, *pid) {
            if let Some((seccomp, state)) = listener {
                children.hand_over_seccomp(Some(seccomp), pid, state.clone())?;
            }
            return Ok(Created {
                unsaved: false,
                pid,
                terminal: children.into_terminal(),
                netns: None,
            });
        }
    }
}

fn stage(launch: &ExecLaunch<'_>, chan: ChildEnd, one_thread: rt_sys::SingleThreaded) -> ! {
    let code = match stage_inner(launch, &chan, one_thread) {
        Ok(()) => 0,
        Err(e) => {
            let _ = chan.send(&ToParent::Failed(chain(&e)));
            1
        }
    };
    rt_sys::exit_now(code)
}

fn stage_inner(
    launch: &ExecLaunch<'_>,
    chan: &ChildEnd,
    one_thread: rt_sys::SingleThreaded,
) -> Result<()> {
    rt_sys::close_fds_except(3 + launch.preserve_fds, chan.as_fd()).map_err(Error::Fork)?;
    let entered = launch
        .placement
        .enter(launch.plan.in_user_ns(), launch.defer_freezer)?;
    let cgroup2 = entered.clone_into;
    // The cgroup namespace is joined by the child, once it is born in the
    // container's cgroup (see Plan::join_deferring).
    let deferred = launch.plan.join_deferring(CloneFlags::CLONE_NEWCGROUP)?;
    let forked = match &cgroup2 {
        Some(fd) => rt_sys::fork_into_cgroup(one_thread, fd.as_fd()),
        None => rt_sys::fork(one_thread),
    };
    match forked.map_err(Error::Fork)? {
        ForkResult::Child => {
            // The process must hold no host directory (CVE-2024-21626).
            drop(cgroup2);
            child(launch, chan, deferred, entered.last)
        }
        ForkResult::Parent { child } => {
            chan.send(&ToParent::InitPid(child.as_raw()))?;
            Ok(())
        }
    }
}

fn child(
    launch: &ExecLaunch<'_>,
    chan: &ChildEnd,
    deferred: Vec<namespaces::Opened>,
    freezer: Option<std::fs::File>,
) -> ! {
    let joined = namespaces::join_opened(deferred).map_err(Error::from);
    let e = match joined.and_then(|()| child_inner(launch, chan)) {
        Ok(prepared) => {
            // After Ready only the exec itself can fail; the parent may be gone.
            match chan.send(&ToParent::Ready) {
                Ok(()) => match enter_frozen(freezer) {
                    // Frozen here until `resume`; then the exec.
                    Ok(()) => Error::from(prepared.exec()),
                    Err(e) => e,
                },
                Err(e) => e.into(),
            }
        }
        Err(e) => e,
    };
    if chan.send(&ToParent::Failed(chain(&e))).is_err() {
        eprintln!("rt: {}", chain(&e));
    }
    let not_found = matches!(&e, Error::User(u) if user_process::Prepared::not_found(u));
    rt_sys::exit_now(if not_found { 127 } else { 1 })
}

/// Moves the process into the paused container's freezing cgroup (its
/// procs file opened on the host by the stage): the write returns once the
/// cgroup is thawed.
fn enter_frozen(procs: Option<std::fs::File>) -> Result<()> {
    use std::io::Write;
    match procs {
        Some(mut f) => f.write_all(b"0").map_err(|e| {
            Error::Sys(
                "entering the frozen cgroup",
                nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
            )
        }),
        None => Ok(()),
    }
}

fn child_inner(launch: &ExecLaunch<'_>, chan: &ChildEnd) -> Result<user_process::Prepared> {
    let p = launch.process;
    if let Some(root) = &launch.chroot {
        nix::unistd::chroot(root).map_err(|e| Error::Sys("chroot into the container's root", e))?;
        nix::unistd::chdir("/").map_err(|e| Error::Sys("chdir to /", e))?;
    }
    if p.terminal().unwrap_or(false) {
        nix::unistd::setsid().map_err(|e| Error::Sys("setsid", e))?;
        let size = p
            .console_size()
            .map(|b| (b.height() as u16, b.width() as u16));
        let master = terminal::setup_in_container(size, p.user().uid(), p.user().gid())?;
        chan.send_with_fd(&ToParent::Terminal, Some(master.as_fd()))?;
    }
    let filters = user_process::compile_seccomp(launch.linux)?;
    let mut prepared = user_process::prepare(
        p,
        launch.linux,
        launch.plan.in_user_ns(),
        launch.preserve_fds,
        filters,
        false,
    )?;
    if let Some(fd) = prepared.take_listener() {
        chan.send_with_fd(&ToParent::SeccompListener, Some(fd.as_fd()))?;
    }
    Ok(prepared)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exec'd child's Ready may overtake the stage's InitPid on the
    /// shared channel (seen under load); exec must accept both orders.
    #[test]
    fn ready_before_init_pid_is_accepted() {
        for first_ready in [true, false] {
            let (chan, child) = channel::pair().unwrap();
            let msgs = if first_ready {
                [ToParent::Ready, ToParent::InitPid(4242)]
            } else {
                [ToParent::InitPid(4242), ToParent::Ready]
            };
            for m in &msgs {
                child.send(m).unwrap();
            }
            let mut pid = None;
            // No such child to reap: waitpid's ECHILD is ignored.
            let created = drive(
                &chan,
                &Options::default(),
                None,
                Pid::from_raw(i32::MAX),
                &mut pid,
            )
            .unwrap();
            assert_eq!(created.pid, Pid::from_raw(4242));
        }
    }
}
