//! The container's init: rootfs, identity, `Ready`, wait for `start`, exec.

use std::convert::Infallible;
use std::fs::File;
use std::io::Read;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;

use super::{chain, user_process, Launch};
use crate::channel::{self, ChildEnd, ToChild, ToParent};
use crate::hooks::{self, Kind};
use crate::state::{Status, OCI_VERSION};
use crate::{rootfs, terminal};

/// Errors of the init process.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("talking to the parent")]
    Channel(#[from] channel::Error),
    #[error("unexpected message {0:?}")]
    Unexpected(ToChild),
    #[error(transparent)]
    Rootfs(#[from] rootfs::Error),
    #[error(transparent)]
    Namespaces(#[from] crate::namespaces::Error),
    #[error(transparent)]
    Hooks(#[from] hooks::Error),
    #[error(transparent)]
    User(#[from] user_process::Error),
    #[error(transparent)]
    Terminal(#[from] terminal::Error),
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Sys(&'static str, #[source] nix::errno::Errno),
    #[error(transparent)]
    RawSys(#[from] rt_sys::Error),
    #[error(transparent)]
    Network(#[from] rt_netns::Error),
    #[error("entering the container's cgroups")]
    Cgroups(#[from] rt_cgroups::Error),
    #[error("{0} without a mount namespace is not supported by rt")]
    NeedsMountNamespace(&'static str),
    #[error("setting hostname requires a new UTS namespace")]
    HostnameWithoutUts,
}

/// Runs the init; never returns.
pub fn run(launch: &Launch<'_>, chan: &ChildEnd, fifo: File) -> ! {
    let Err(e) = init(launch, chan, fifo);
    // Before Ready the parent reports this; after it, only our stderr can. A
    // parent that is gone (killed, or failed elsewhere) needs no report.
    let parent_gone = matches!(e, Error::Channel(channel::Error::Closed));
    if chan.send(&ToParent::Failed(chain(&e))).is_err() && !parent_gone {
        eprintln!("rt: {}", chain(&e));
    }
    let not_found = matches!(&e, Error::User(u) if user_process::Prepared::not_found(u));
    rt_sys::exit_now(if not_found { 127 } else { 1 })
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// The state document hooks of the container namespace get on stdin.
fn hook_state(launch: &Launch<'_>, pid: i32) -> Vec<u8> {
    let annotations = launch.bundle.spec.annotations().clone().unwrap_or_default();
    let st = serde_json::json!({
        "ociVersion": OCI_VERSION,
        "id": launch.id,
        "status": Status::Created,
        "pid": pid,
        "bundle": launch.bundle.dir,
        "annotations": annotations,
    });
    serde_json::to_vec(&st).unwrap_or_default()
}

/// The profile compiled before (`filters`), or the one the parent sends
/// ([`Launch::profile_from_parent`]; compiled here if it did not compile
/// there, for the error).
fn profile(
    filters: Option<crate::seccomp::Filters>,
    chan: &ChildEnd,
    linux: &oci_spec::runtime::Linux,
) -> Result<crate::seccomp::Filters, Error> {
    if let Some(f) = filters {
        return Ok(f);
    }
    match chan.recv()? {
        ToChild::Profile(Some(wire)) => Ok(wire.into()),
        ToChild::Profile(None) => Ok(user_process::compile_seccomp(linux)?),
        other => Err(Error::Unexpected(other)),
    }
}

fn init(launch: &Launch<'_>, chan: &ChildEnd, mut fifo: File) -> Result<Infallible, Error> {
    let spec = &launch.bundle.spec;
    let process = spec.process().as_ref().expect("validated: process");
    let linux = spec.linux().as_ref().expect("validated: linux");
    let hooks = spec.hooks().as_ref();
    // Before pivot_root, /proc is still the host's: this is our host pid.
    let host_pid: i32 = std::fs::read_link("/proc/self")
        .ok()
        .and_then(|p| p.to_str().and_then(|s| s.parse().ok()))
        .unwrap_or(0);
    nix::unistd::setsid().map_err(|e| Error::Sys("setsid", e))?;
    crate::network::init_side(spec)?;
    if crate::network::plain_new_netns(spec) {
        rt_sys::netns_helper::loopback_up()?;
    }

    let ctx = rootfs::Context {
        spec,
        rootfs: &launch.bundle.rootfs,
        bundle: &launch.bundle.dir,
        in_user_ns: launch.plan.in_user_ns(),
        has_cgroup_ns: launch.plan.has(CloneFlags::CLONE_NEWCGROUP),
        cgroup_dirs: launch.cgroup_dirs.clone(),
        cgroup_unified: launch.cgroup_unified,
    };
    let mount_ns = launch.plan.has(CloneFlags::CLONE_NEWNS);
    let prepared = if mount_ns {
        Some(rootfs::prepare(&ctx)?)
    } else if let Some(what) = rootfs::needs_mount_namespace(spec) {
        // Validated at create; the network's resolv.conf may add a mount.
        return Err(Error::NeedsMountNamespace(what));
    } else {
        None
    };
    // Compiled now, with a direct clone while the parent still makes the
    // cgroup, unless the parent had time to before the clone or compiles
    // it after (`profile_from_parent`: received below).
    let mut filters = match launch.seccomp.take() {
        Some(filters) => Some(filters),
        None if launch.profile_from_parent => None,
        None => Some(user_process::compile_seccomp(linux)?),
    };
    // The bounding set now, while the parent still makes the cgroup (the
    // wait below absorbs its 30-odd prctls, 0.1 ms here), unless
    // createContainer hooks are to run: runc execs them with the full set.
    // It limits only what execs gain; the hooks are all this process execs
    // before the user's process.
    let bounding_dropped = launch.cgroups_pending
        && !hooks::any(hooks, Kind::CreateContainer)
        && user_process::drop_bounding(process)?;
    // The mounts so far need no cgroup; the rest may show it (the cgroup
    // mount) or be checked by its device rules (the nodes).
    if launch.cgroups_pending {
        match chan.recv_with_fds()? {
            (ToChild::CgroupsReady, tasks) => launch
                .cgroup
                .enter_v1_through(tasks.into_iter().map(File::from).collect())?,
            (other, _) => return Err(Error::Unexpected(other)),
        }
        // The parent's work we ran beside is done (and the cpuset joined).
        if let Some(spread) = &launch.spread {
            spread.restore()?;
        }
    }
    // In the container's cgroup now: it becomes the namespace's root.
    launch.plan.unshare_cgroup()?;
    if let Some(prepared) = prepared {
        rootfs::finish_prepare(&ctx, prepared)?;
    }
    if hooks::any(hooks, Kind::Prestart) || hooks::any(hooks, Kind::CreateRuntime) {
        // The profile was sent ahead of the parent's answer to this.
        filters = Some(profile(filters, chan, linux)?);
        chan.send(&ToParent::RuntimeHooks)?;
        match chan.recv()? {
            ToChild::HooksDone => {}
            other => return Err(Error::Unexpected(other)),
        }
    }
    let state = hook_state(launch, host_pid);
    let env = process.env().as_deref().unwrap_or_default();
    hooks::run_in_container(hooks, Kind::CreateContainer, &state, env)?;
    rootfs::enter(&launch.bundle.rootfs, launch.no_pivot, mount_ns)?;

    if let Some(h) = spec.hostname().as_deref().filter(|h| !h.is_empty()) {
        if !launch.plan.has(CloneFlags::CLONE_NEWUTS) {
            return Err(Error::HostnameWithoutUts);
        }
        nix::unistd::sethostname(h).map_err(|e| Error::Sys("sethostname", e))?;
    }
    if let Some(d) = spec.domainname().as_deref().filter(|d| !d.is_empty()) {
        if !launch.plan.has(CloneFlags::CLONE_NEWUTS) {
            return Err(Error::HostnameWithoutUts);
        }
        rt_sys::set_domainname(d)?;
    }
    for (key, value) in linux.sysctl().iter().flatten() {
        let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
        std::fs::write(&path, value).map_err(io("writing sysctl", &path))?;
    }
    if mount_ns {
        rootfs::finish(spec)?;
    }

    let user = process.user();
    if process.terminal().unwrap_or(false) {
        let size = process
            .console_size()
            .map(|b| (b.height() as u16, b.width() as u16));
        let master = terminal::setup_in_container(size, user.uid(), user.gid())?;
        chan.send_with_fd(&ToParent::Terminal, Some(master.as_fd()))?;
    }
    let filters = profile(filters, chan, linux)?;
    let mut prepared = user_process::prepare(
        process,
        linux,
        launch.plan.in_user_ns(),
        launch.preserve_fds,
        filters,
        bounding_dropped,
    )?;
    if let Some(fd) = prepared.take_listener() {
        chan.send_with_fd(&ToParent::SeccompListener, Some(fd.as_fd()))?;
    }
    chan.send(&ToParent::Ready)?;
    // The profile now rather than just before the exec: its load (the
    // kernel checks, converts and JIT-compiles the program) then overlaps
    // the parent's last bookkeeping before `start`. Only when nothing but
    // rt runs until the exec (startContainer hooks must not run under the
    // container's filter) and the profile lets rt's last syscalls through.
    // A failure is reported as one at the exec would be: after Ready.
    if !hooks::any(hooks, Kind::StartContainer) {
        prepared.load_early(chan.as_fd(), fifo.as_fd())?;
    }
    let mut byte = [0u8; 1];
    fifo.read_exact(&mut byte)
        .map_err(io("waiting on exec fifo", &launch.fifo))?;
    // `fifo` stays open (close-on-exec) until the exec below: its hang-up
    // tells `start` that the user's process runs.
    hooks::run_in_container(hooks, Kind::StartContainer, &state, env)?;
    // Nothing of the runtime's reaches the user's process but stdio and the
    // preserved descriptors: `prepare` made the rest close-on-exec.
    Err(prepared.exec().into())
}
