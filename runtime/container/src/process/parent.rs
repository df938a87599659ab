//! The parent role of `create`: the `rt` process itself.

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;

use nix::sys::signal::{kill, Signal};
use nix::sys::stat::Mode;
use nix::sys::wait::waitpid;
use nix::unistd::{ForkResult, Pid};

use super::{stage, Launch};
use crate::channel::{self, ParentEnd, ToChild, ToParent};
use crate::hooks::{self, Kind};
use crate::namespaces::{self, Plan};
use crate::spec::Bundle;
use crate::state::{self, ContainerDir, State, Status};
use crate::terminal;

/// Errors of the parent side of create.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("talking to the container init")]
    Channel(#[from] channel::Error),
    #[error("{0}")]
    Child(String),
    #[error("container init exited before it was ready")]
    ChildDied,
    #[error("unexpected message {0:?} from the container init")]
    Unexpected(ToParent),
    #[error(transparent)]
    State(#[from] state::Error),
    #[error(transparent)]
    Cgroups(#[from] rt_cgroups::Error),
    #[error(transparent)]
    Namespaces(#[from] namespaces::Error),
    #[error(transparent)]
    Hooks(#[from] hooks::Error),
    #[error(transparent)]
    Terminal(#[from] terminal::Error),
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
    #[error("cannot allocate tty if rt will detach without setting console socket")]
    TerminalWithoutSocket,
    #[error("becoming a child subreaper")]
    Subreaper(#[source] nix::errno::Errno),
}

pub type Result<T> = std::result::Result<T, Error>;

/// How to create.
#[derive(Debug, Default)]
pub struct Options {
    pub console_socket: Option<PathBuf>,
    pub no_pivot: bool,
    pub preserve_fds: u32,
    /// `run` in the foreground keeps the pty master to relay it itself.
    pub keep_terminal: bool,
}

/// What create hands back.
#[derive(Debug)]
pub struct Created {
    pub pid: Pid,
    pub terminal: Option<OwnedFd>,
}

/// Creates the container whose state directory `dir` was just made and whose
/// initial state is `state`. On error, whatever was made is undone by the
/// caller through [`crate::container::cleanup`].
pub fn create(
    dir: &ContainerDir,
    state: &mut State,
    bundle: &Bundle,
    opts: &Options,
    cgroup: &mut dyn rt_cgroups::Manager,
    layout: &rt_cgroups::Layout,
) -> Result<Created> {
    let spec = &bundle.spec;
    let process = spec.process().as_ref().expect("validated: process");
    if process.terminal().unwrap_or(false) && opts.console_socket.is_none() && !opts.keep_terminal {
        return Err(Error::TerminalWithoutSocket);
    }
    let linux = spec.linux().as_ref().expect("validated: linux");
    let fifo = dir.fifo();
    nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o622)).map_err(|source| Error::Fifo {
        path: fifo.clone(),
        source,
    })?;
    // The init is a grandchild: becoming a subreaper makes it our child when the
    // stage exits, so `run` can wait for it (and a caller that is a subreaper
    // itself adopts it after we exit, as with runc).
    nix::sys::prctl::set_child_subreaper(true).map_err(Error::Subreaper)?;

    // Directories and limits first, recorded before anything else can fail;
    // the stage then moves itself in (see rt_cgroups::Manager::enter).
    let created = cgroup.create();
    if state.cgroup.is_some() {
        state.cgroup = Some(cgroup.record());
    }
    dir.save(state)?;
    created?;
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
    let record = cgroup.record();
    let (cgroup_dirs, cgroup_unified) = cgroup_mount_dirs(layout, &record.path);
    let one_thread = rt_sys::single_threaded().map_err(Error::Fork)?;
    let id = state.id.clone();
    let launch = Launch {
        id: &id,
        bundle,
        plan: Plan::from_spec(linux),
        no_pivot: opts.no_pivot,
        fifo,
        preserve_fds: opts.preserve_fds,
        cgroup_dirs,
        cgroup_unified,
        cgroup: &*cgroup,
        one_thread,
    };
    let (chan, child_end) = channel::pair()?;
    let stage_pid = match rt_sys::fork(one_thread).map_err(Error::Fork)? {
        ForkResult::Child => {
            drop(chan);
            stage::run(&launch, child_end)
        }
        ForkResult::Parent { child } => child,
    };
    drop(child_end);
    let result = drive(dir, state, bundle, opts, &chan, stage_pid);
    if result.is_err() {
        // Do not leave the stage or the init behind.
        let _ = kill(stage_pid, Signal::SIGKILL);
        if state.pid > 0 {
            let _ = kill(Pid::from_raw(state.pid), Signal::SIGKILL);
            let _ = waitpid(Pid::from_raw(state.pid), None);
        }
        let _ = waitpid(stage_pid, None);
    }
    result
}

fn drive(
    dir: &ContainerDir,
    state: &mut State,
    bundle: &Bundle,
    opts: &Options,
    chan: &ParentEnd,
    stage_pid: Pid,
) -> Result<Created> {
    let spec = &bundle.spec;
    let linux = spec.linux().as_ref().expect("validated: linux");
    let mut terminal = None;
    loop {
        let (msg, fd) = match chan.recv_with_fd() {
            Ok(m) => m,
            Err(channel::Error::Closed) => return Err(Error::ChildDied),
            Err(e) => return Err(e.into()),
        };
        match msg {
            ToParent::UserNamespaceReady => {
                let uid = linux.uid_mappings().as_deref().unwrap_or_default();
                let gid = linux.gid_mappings().as_deref().unwrap_or_default();
                namespaces::write_id_maps(stage_pid, uid, gid)?;
                chan.send(&ToChild::MapsWritten)?;
            }
            ToParent::InitPid(pid) => {
                let _ = waitpid(stage_pid, None);
                state.pid = pid;
                state.start_time = state::proc_stat(Pid::from_raw(pid)).map_or(0, |(_, t)| t);
                dir.save(state)?;
                if let Some(adj) = spec.process().as_ref().and_then(|p| p.oom_score_adj()) {
                    let path = PathBuf::from(format!("/proc/{pid}/oom_score_adj"));
                    std::fs::write(&path, adj.to_string())
                        .map_err(|source| Error::Write { path, source })?;
                }
            }
            ToParent::RuntimeHooks => {
                let json = serde_json::to_vec(&state.oci(Status::Creating)).unwrap_or_default();
                hooks::run(spec.hooks().as_ref(), Kind::Prestart, &json)?;
                hooks::run(spec.hooks().as_ref(), Kind::CreateRuntime, &json)?;
                chan.send(&ToChild::HooksDone)?;
            }
            ToParent::Terminal => {
                let master = fd.ok_or(Error::Unexpected(ToParent::Terminal))?;
                match &opts.console_socket {
                    Some(path) => terminal::send_to_socket(path, master.as_fd())?,
                    None => terminal = Some(master),
                }
            }
            ToParent::Ready => break,
            ToParent::Failed(msg) => return Err(Error::Child(msg)),
        }
    }
    state.stored_status = Status::Created;
    dir.save(state)?;
    Ok(Created {
        pid: Pid::from_raw(state.pid),
        terminal,
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
