//! The parent role of `create`: the `rt` process itself.

use std::os::fd::AsFd;
use std::path::PathBuf;

use nix::sched::CloneFlags;
use nix::sys::stat::Mode;
use nix::sys::wait::waitpid;
use nix::unistd::{ForkResult, Pid};

use super::supervise::{self, Event, Supervisor};
use super::{stage, Launch};
use crate::channel::{self, ParentEnd, ToChild};
use crate::hooks::{self, Kind};
use crate::namespaces;
use crate::network::Plan;
use crate::sandbox::{Created, Options, Sandbox};
use crate::spec::Bundle;
use crate::state::{self, ContainerDir, State, Status};

/// Errors of the parent side of create.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("talking to the container init")]
    Channel(#[from] channel::Error),
    #[error(transparent)]
    Supervise(#[from] supervise::Error),
    #[error(transparent)]
    State(#[from] state::Error),
    #[error(transparent)]
    Cgroups(#[from] rt_cgroups::Error),
    #[error(transparent)]
    Namespaces(#[from] namespaces::Error),
    #[error(transparent)]
    IdMap(#[from] crate::idmap::Error),
    #[error(transparent)]
    Hooks(#[from] hooks::Error),
    #[error(transparent)]
    Network(#[from] rt_netns::Error),
    #[error("forking")]
    Fork(#[source] rt_sys::Error),
    #[error("creating exec fifo {path}")]
    Fifo {
        path: PathBuf,
        #[source]
        source: nix::errno::Errno,
    },
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

/// Creates the container whose state directory `dir` was just made and whose
/// initial state is `state`. On error, whatever was made is undone by the
/// caller (the container module's teardown).
pub fn create(sandbox: Sandbox<'_>, state: &mut State) -> Result<Created> {
    let Sandbox {
        dir,
        bundle,
        opts,
        cgroup,
        layout,
        network,
        head_start,
    } = sandbox;
    let spec = &bundle.spec;
    let process = spec.process().as_ref().expect("validated: process");
    supervise::prepare(process, opts)?;
    let linux = spec.linux().as_ref().expect("validated: linux");
    let fifo = dir.fifo();
    nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o622)).map_err(|source| Error::Fifo {
        path: fifo.clone(),
        source,
    })?;

    let plan = namespaces::Plan::from_spec(linux);
    // With a direct clone (below), the parent makes the cgroup while the
    // init mounts its rootfs: only the cgroup2 directory the init is born in
    // is made before it. The stage instead enters a finished cgroup.
    let direct = plan.direct_clone();
    let net_in_init = net_in_init(
        linux.namespaces().as_deref().unwrap_or_default(),
        spec.annotations().as_ref(),
        network,
    );
    // The helper's namespace is the init's only when the init would have
    // made its own; otherwise it goes (reaped) here.
    let helper = head_start.netns.filter(|_| net_in_init);
    // Directories first, recorded before anything else can fail.
    let created = if direct.is_some() {
        cgroup.create_first()
    } else {
        cgroup.create()
    };
    let before = state.cgroup.clone();
    record_cgroup(state, &*cgroup);
    if state.cgroup != before {
        dir.save(state)?;
    }
    created?;
    if direct.is_none() {
        limit(&*cgroup, linux)?;
    }
    let (netns, seccomp) = await_helper(helper, direct.is_some(), state, &mut *cgroup, linux)?;
    let record = cgroup.record();
    let (cgroup_dirs, cgroup_unified) = cgroup_mount_dirs(layout, &record.path);
    let one_thread = rt_sys::single_threaded().map_err(Error::Fork)?;
    let profile_from_parent =
        direct.is_some() && seccomp.is_none() && network.is_none() && linux.seccomp().is_some();
    let id = state.id.clone();
    let launch = Launch {
        id: &id,
        bundle,
        plan,
        no_pivot: opts.no_pivot,
        fifo,
        preserve_fds: opts.preserve_fds,
        cgroup_dirs,
        cgroup_unified,
        cgroup: &*cgroup,
        cgroups_pending: direct.is_some(),
        spread: direct.and_then(|_| rt_sys::spread::Spread::of_this_process()),
        net_in_init,
        netns: netns.as_ref().map(|fd| fd.as_fd()),
        one_thread,
        seccomp: std::cell::RefCell::new(seccomp),
        profile_from_parent,
    };
    let (chan, child_end) = channel::pair()?;
    let first = match direct {
        // One process fewer: the init is cloned into its namespaces (and its
        // cgroup2 directory) here, and does the stage's part itself.
        Some(mut flags) => {
            if net_in_init {
                flags.remove(CloneFlags::CLONE_NEWNET);
            }
            let birth = launch.cgroup.birth_dir()?;
            let forked = rt_sys::fork_into(
                one_thread,
                flags.bits() as u64,
                birth.as_ref().map(|fd| fd.as_fd()),
            );
            match forked.map_err(Error::Fork)? {
                ForkResult::Child => {
                    drop(chan);
                    drop(birth);
                    stage::run_as_init(&launch, child_end)
                }
                ForkResult::Parent { child } => {
                    if let Some(spread) = &launch.spread {
                        spread.away(child);
                    }
                    First::Init(child)
                }
            }
        }
        None => match rt_sys::fork(one_thread).map_err(Error::Fork)? {
            ForkResult::Child => {
                drop(chan);
                stage::run(&launch, child_end)
            }
            ForkResult::Parent { child } => First::Stage(child),
        },
    };
    drop(child_end);
    let spread = launch.spread;
    let result = match first {
        First::Init(pid) => finish_cgroup(state, &mut *cgroup, linux, &chan)
            .inspect(|_| {
                // About to block on the init's messages: it may use our
                // CPU again.
                if let Some(spread) = &spread {
                    spread.release(pid);
                }
            })
            .and_then(|tasks| {
                // First: the init needs it in about 1 ms, and record_init
                // writes the state file.
                if profile_from_parent {
                    send_profile(linux, &chan);
                }
                record_init(dir, state, bundle, network, pid)?;
                let created = drive(dir, state, bundle, opts, network, &chan, None);
                // Ours were the last references to the tasks files until
                // now: the init's closes only dropped one each, and their
                // release (kernfs) comes here, while the init loads its
                // profile, rather than in the init's path to its exec.
                drop(tasks);
                created
            }),
        First::Stage(stage) => drive(dir, state, bundle, opts, network, &chan, Some(stage)),
    };
    if result.is_err() {
        // Do not leave the stage or the init behind.
        let init = (state.pid > 0).then(|| Pid::from_raw(state.pid));
        match first {
            First::Stage(stage) => supervise::abort(stage, init),
            First::Init(pid) => supervise::abort(pid, None),
        }
    }
    result.map(|created| Created { netns, ..created })
}

/// The network namespace helper's namespace, and the work done while it
/// was made: while it still works (with a direct clone), the cgroup
/// directories the parent would make after the clone, and then the seccomp
/// profile, which the init would compile after the clone (cold there: its
/// first touches of the compiler's code and a copy-on-write heap; a profile
/// that does not compile is left to the init, which reports it as before).
/// The helper is reaped before the fork, so that the process is alone in
/// its memory again.
fn await_helper(
    helper: Option<rt_sys::netns_helper::NetnsHelper>,
    direct: bool,
    state: &mut State,
    cgroup: &mut dyn rt_cgroups::Manager,
    linux: &oci_spec::runtime::Linux,
) -> Result<(
    Option<std::os::fd::OwnedFd>,
    Option<crate::seccomp::Filters>,
)> {
    let Some(helper) = helper else {
        return Ok((None, None));
    };
    let mut seccomp = None;
    if direct {
        let stepped = fill_wait(&helper, cgroup);
        record_cgroup(state, cgroup);
        stepped?;
        if !helper.done() {
            seccomp = super::user_process::compile_seccomp(linux).ok();
        }
    }
    let netns = helper.finish().unwrap_or_else(|e| {
        tracing::debug!("network namespace helper: {e}; the init makes its own");
        None
    });
    Ok((netns, seccomp))
}

/// Makes cgroup directories one at a time while `helper` has not finished
/// (traced: the parent reached the helper's reaping 0.14 ms early).
fn fill_wait(
    helper: &rt_sys::netns_helper::NetnsHelper,
    cgroup: &mut dyn rt_cgroups::Manager,
) -> Result<()> {
    while !helper.done() && cgroup.create_step()? {}
    Ok(())
}

/// Whether the init makes its own network namespace, after a direct clone
/// without CLONE_NEWNET ([`super::Launch::net_in_init`]): the spec asks
/// for a new one, the init is cloned straight into its namespaces, and no
/// rt network (`network`, or in the annotations when there is no plan yet)
/// is attached to it before the init reports.
pub fn net_in_init(
    namespaces: &[oci_spec::runtime::LinuxNamespace],
    annotations: Option<&std::collections::HashMap<String, String>>,
    network: Option<&Plan>,
) -> bool {
    let no_network = match network {
        Some(_) => false,
        None => matches!(
            rt_netns::Config::from_annotations(annotations.unwrap_or(&Default::default())),
            Ok(None)
        ),
    };
    no_network
        && namespaces::Plan::from_namespaces(namespaces)
            .direct_clone()
            .is_some_and(|flags| flags.contains(CloneFlags::CLONE_NEWNET))
}

/// Keeps in the state what the cgroup made, for teardown (the record only
/// when the state has one: none for a container rt places in no cgroup).
fn record_cgroup(state: &mut State, cgroup: &dyn rt_cgroups::Manager) {
    if state.cgroup.is_some() {
        state.cgroup = Some(cgroup.record());
    }
}

/// The container's limits and device rules.
fn limit(cgroup: &dyn rt_cgroups::Manager, linux: &oci_spec::runtime::Linux) -> Result<()> {
    if let Some(r) = linux.resources() {
        cgroup.set(r)?;
    }
    let spec_rules = linux
        .resources()
        .as_ref()
        .and_then(|r| r.devices().clone())
        .unwrap_or_default();
    let nodes = linux.devices().clone().unwrap_or_default();
    cgroup.set_devices(&rt_cgroups::devices::rules(&spec_rules, &nodes))?;
    Ok(())
}

/// Compiles the process's profile and sends it to the init
/// ([`super::Launch::profile_from_parent`]); one that does not compile goes
/// as None, for the init to compile and report as before.
fn send_profile(linux: &oci_spec::runtime::Linux, chan: &ParentEnd) {
    let wire = super::user_process::compile_seccomp(linux)
        .ok()
        .map(|f| crate::seccomp::Wire::from(&f));
    // An init that failed meanwhile is gone: its report, queued on the
    // channel, is what `drive` returns.
    let _ = chan.send(&ToChild::Profile(wire));
}

/// The cgroup's part after a direct clone, while the init mounts what needs
/// no cgroup: the rest of its directories (recorded in the state that
/// `record_init` saves next), its limits, then `CgroupsReady` with the v1
/// `tasks` files the init enters through, which it returns for the caller
/// to keep open until the init is ready.
fn finish_cgroup(
    state: &mut State,
    cgroup: &mut dyn rt_cgroups::Manager,
    linux: &oci_spec::runtime::Linux,
    chan: &ParentEnd,
) -> Result<Vec<std::fs::File>> {
    let made = cgroup.create_rest();
    record_cgroup(state, cgroup);
    made?;
    limit(cgroup, linux)?;
    // The init writes to them: it moves itself, which takes no global lock
    // (a pid written here would), and opening them is our work, not its.
    let tasks = cgroup.open_v1_tasks()?;
    let fds: Vec<_> = tasks.iter().map(|f| f.as_fd()).collect();
    let fds = if fds.len() <= channel::MAX_FDS {
        &fds[..]
    } else {
        &[]
    };
    // An init that failed meanwhile is gone: its report, queued on the
    // channel, is what `drive` returns.
    let _ = chan.send_with_fds(&ToChild::CgroupsReady, fds);
    Ok(tasks)
}

/// The parent's first child.
#[derive(Clone, Copy)]
enum First {
    /// The stage, which makes the init and reports its pid.
    Stage(Pid),
    /// The init itself, cloned into its namespaces.
    Init(Pid),
}

/// Records the init's pid (the stage's report, or the direct clone), sets
/// its OOM score and attaches its network namespace.
fn record_init(
    dir: &ContainerDir,
    state: &mut State,
    bundle: &Bundle,
    network: Option<&Plan>,
    pid: Pid,
) -> Result<()> {
    state.pid = pid.as_raw();
    state.start_time = state::proc_stat(pid).map_or(0, |(_, t)| t);
    dir.save(state)?;
    if let Some(adj) = bundle
        .spec
        .process()
        .as_ref()
        .and_then(|p| p.oom_score_adj())
    {
        let path = PathBuf::from(format!("/proc/{pid}/oom_score_adj"));
        std::fs::write(&path, adj.to_string()).map_err(|source| Error::Write { path, source })?;
    }
    // The init's namespaces exist now; its process starts only after
    // `start`, by which time its network is up.
    if let Some(plan) = network {
        state.network = Some(plan.attach(&state.id, pid.as_raw())?);
        dir.save(state)?;
    }
    Ok(())
}

fn drive(
    dir: &ContainerDir,
    state: &mut State,
    bundle: &Bundle,
    opts: &Options,
    network: Option<&Plan>,
    chan: &ParentEnd,
    stage_pid: Option<Pid>,
) -> Result<Created> {
    let spec = &bundle.spec;
    let linux = spec.linux().as_ref().expect("validated: linux");
    let mut children = Supervisor::new(chan, opts);
    // The stage's InitPid and the init's messages share the channel and may
    // arrive in either order: finish only once both the pid and Ready came.
    let mut ready = false;
    while !(ready && state.pid != 0) {
        match children.next_event()? {
            Event::UserNamespaceReady => {
                let stage = stage_pid.ok_or(supervise::Error::Unexpected(
                    crate::channel::ToParent::UserNamespaceReady,
                ))?;
                let uid = linux.uid_mappings().as_deref().unwrap_or_default();
                let gid = linux.gid_mappings().as_deref().unwrap_or_default();
                crate::idmap::write(stage, uid, gid)?;
                chan.send(&ToChild::MapsWritten)?;
            }
            Event::InitPid(pid) => {
                let stage = stage_pid.ok_or(supervise::Error::Unexpected(
                    crate::channel::ToParent::InitPid(pid.as_raw()),
                ))?;
                let _ = waitpid(stage, None);
                record_init(dir, state, bundle, network, pid)?;
            }
            Event::RuntimeHooks => {
                let json = serde_json::to_vec(&state.oci(Status::Creating)).unwrap_or_default();
                hooks::run(spec.hooks().as_ref(), Kind::Prestart, &json)?;
                hooks::run(spec.hooks().as_ref(), Kind::CreateRuntime, &json)?;
                chan.send(&ToChild::HooksDone)?;
            }
            Event::Ready => ready = true,
        }
    }
    // Before create returns (the init still waits for `start`), as runc.
    children.hand_over_seccomp(
        linux.seccomp().as_ref(),
        Pid::from_raw(state.pid),
        serde_json::to_value(state.oci(Status::Creating)).unwrap_or_default(),
    )?;
    state.stored_status = Status::Created;
    if !opts.starts_at_once {
        dir.save(state)?;
    }
    Ok(Created {
        unsaved: opts.starts_at_once,
        pid: Pid::from_raw(state.pid),
        terminal: children.into_terminal(),
        netns: None,
    })
}

/// The host directories of the container's cgroup that its `cgroup` mount
/// shows, named as under /sys/fs/cgroup.
fn cgroup_mount_dirs(layout: &rt_cgroups::Layout, inner: &str) -> (Vec<(String, PathBuf)>, bool) {
    let rel = inner.trim_start_matches('/');
    match layout {
        rt_cgroups::Layout::Unified(root) => (vec![("".into(), root.join(rel))], true),
        rt_cgroups::Layout::V1 { hierarchies, .. } => (
            hierarchies
                .iter()
                .map(|h| {
                    let name = h
                        .mount
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_else(|| h.controllers.join(","));
                    (name, h.mount.join(rel))
                })
                .collect(),
            false,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxNamespace, LinuxNamespaceBuilder, LinuxNamespaceType as T};
    use std::collections::HashMap;

    fn ns(list: &[(T, Option<&str>)]) -> Vec<LinuxNamespace> {
        list.iter()
            .map(|(t, p)| {
                let b = LinuxNamespaceBuilder::default().typ(*t);
                match p {
                    Some(p) => b.path(*p).build().unwrap(),
                    None => b.build().unwrap(),
                }
            })
            .collect()
    }

    #[test]
    fn the_init_makes_its_network_namespace_only_when_nothing_else_must() {
        let plain = ns(&[(T::Pid, None), (T::Mount, None), (T::Network, None)]);
        assert!(net_in_init(&plain, None, None));
        // No new network namespace.
        assert!(!net_in_init(&plain[..2], None, None));
        // A stage process (a user namespace; a namespace to join).
        let user = ns(&[(T::User, None), (T::Network, None)]);
        assert!(!net_in_init(&user, None, None));
        let join = ns(&[(T::Ipc, Some("/proc/1/ns/ipc")), (T::Network, None)]);
        assert!(!net_in_init(&join, None, None));
        // An rt network to attach, in the annotations or planned.
        let nat: HashMap<String, String> =
            [("run.rt.network".to_string(), "nat".to_string())].into();
        assert!(!net_in_init(&plain, Some(&nat), None));
        let unknown: HashMap<String, String> =
            [("run.rt.network.bogus".to_string(), "x".to_string())].into();
        assert!(!net_in_init(&plain, Some(&unknown), None));
        let other: HashMap<String, String> = [("a".to_string(), "b".to_string())].into();
        assert!(net_in_init(&plain, Some(&other), None));
    }
}
