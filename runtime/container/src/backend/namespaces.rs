//! Linux namespaces on the host kernel (runc's model): the container's
//! process is its init, limits are the host cgroup's, exec joins the init's
//! namespaces. See `process` for the processes of create and exec.

use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use oci_spec::runtime::{LinuxResources, Process};

use super::Isolation;
use crate::error::{Error, Result};
use crate::process::{exec, parent};
use crate::sandbox::{Created, ExecHow, HeadStart, Options, Sandbox};
use crate::state::{ContainerDir, State, Status};

/// The namespaces backend.
#[derive(Debug)]
pub struct Namespaces;

impl Isolation for Namespaces {
    fn name(&self) -> &'static str {
        "container"
    }

    /// The container's new network namespace, when its init would make it
    /// itself (see [`parent::net_in_init`]): a helper makes it meanwhile.
    fn head_start(&self, skim: &crate::spec::Skim) -> HeadStart {
        let netns = parent::net_in_init(skim.namespaces(), skim.annotations.as_ref(), None)
            .then(|| match rt_sys::netns_helper::NetnsHelper::spawn() {
                Ok(helper) => {
                    tracing::debug!(
                        pid = helper.pid().as_raw(),
                        early = helper.early(),
                        "network namespace helper"
                    );
                    Some(helper)
                }
                Err(e) => {
                    tracing::debug!("no network namespace helper ({e}); the init makes its own");
                    None
                }
            })
            .flatten();
        HeadStart { netns }
    }

    fn create(&self, sandbox: Sandbox<'_>, state: &mut State) -> Result<Created> {
        Ok(parent::create(sandbox, state)?)
    }

    fn status(&self, dir: &ContainerDir, st: &State) -> Status {
        dir.status(st, || cgroup_of(st).is_ok_and(|c| c.frozen()))
    }

    /// CRIU's `check` decides: where it fails (Debian 12's CRIU 3.17 on
    /// this kernel) the refusal carries CRIU's reason; where it passes,
    /// rt has no CRIU dump of its own containers yet and says so. VM
    /// containers checkpoint without CRIU.
    fn checkpoint(&self, _st: &State, _opts: &super::CheckpointOptions) -> Result<()> {
        match criu_check() {
            Err(reason) => Err(Error::CriuUnavailable(reason)),
            Ok(()) => Err(self.refuse(
                "checkpoint (a CRIU dump; run the container with --isolation vm to checkpoint it)",
            )),
        }
    }

    /// Writes the exec fifo the init waits on, and waits until the init has
    /// exec'd the user's process.
    fn start(&self, dir: &ContainerDir, _st: &State) -> Result<()> {
        let fifo = dir.fifo();
        let io = |what| {
            let path = fifo.clone();
            move |source| Error::Io { what, path, source }
        };
        let open = |read: bool| {
            // Non-blocking: if the init is gone there is no reader and
            // opening for writing fails at once instead of hanging.
            std::fs::OpenOptions::new()
                .read(read)
                .write(!read)
                .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
                .open(&fifo)
        };
        let mut w = open(false).map_err(io("opening exec fifo"))?;
        let r = open(true).map_err(io("opening exec fifo"))?;
        std::io::Write::write_all(&mut w, b"0").map_err(io("writing exec fifo"))?;
        drop(w);
        std::fs::remove_file(&fifo).map_err(io("removing exec fifo"))?;
        // The init holds the fifo (close-on-exec) until it execs the user's
        // process: the hang-up on our read end says it has, so poststart hooks
        // run after the process started, as the runtime-spec orders.
        wait_hangup(&r);
        Ok(())
    }

    fn kill(&self, st: &State, signal: i32, all: bool) -> Result<()> {
        if all {
            for pid in cgroup_of(st)?.pids()? {
                let _ = rt_sys::kill(pid, signal);
            }
            return Ok(());
        }
        signal_init(st, signal)
    }

    fn exec(
        &self,
        st: &State,
        status: Status,
        process: &Process,
        opts: &Options,
        how: &ExecHow,
    ) -> Result<Created> {
        let linux = st.config.linux().clone().unwrap_or_default();
        let cgroup = cgroup_of(st)?;
        let init = Pid::from_raw(st.pid);
        let launch = exec::ExecLaunch {
            process,
            linux: &linux,
            plan: exec::plan_for(init, &linux),
            chroot: exec::chroot_for(init, &linux),
            placement: cgroup.placement(&how.cgroup)?,
            defer_freezer: status == Status::Paused,
            container_state: serde_json::to_value(st.oci(status)).unwrap_or_default(),
            preserve_fds: opts.preserve_fds,
        };
        Ok(exec::exec(&launch, opts)?)
    }

    fn pause(&self, st: &State) -> Result<()> {
        Ok(cgroup_of(st)?.freeze(true)?)
    }

    fn resume(&self, st: &State) -> Result<()> {
        Ok(cgroup_of(st)?.freeze(false)?)
    }

    fn update(&self, st: &State, resources: &LinuxResources) -> Result<()> {
        Ok(cgroup_of(st)?.set(resources)?)
    }

    fn pids(&self, st: &State) -> Result<Vec<Pid>> {
        Ok(cgroup_of(st)?.pids()?)
    }

    fn cgroup(&self, st: &State) -> Result<Box<dyn rt_cgroups::Manager>> {
        cgroup_of(st)
    }

    fn destroy(&self, st: &State, layout: &rt_cgroups::Layout) -> Vec<String> {
        match kill_and_remove_cgroup(st, layout) {
            Ok(()) => Vec::new(),
            Err(e) => vec![crate::process::chain(&e)],
        }
    }
}

/// The cgroup manager of a container, on the host's layout.
pub(super) fn cgroup_of(st: &State) -> Result<Box<dyn rt_cgroups::Manager>> {
    Ok(match &st.cgroup {
        Some(rec) => rt_cgroups::open(&rt_cgroups::Layout::detect()?, rec.clone()),
        None => rt_cgroups::disabled(),
    })
}

/// Kills what is left of a container (its init, then everything in its
/// cgroup) and removes its cgroups.
pub(super) fn kill_and_remove_cgroup(st: &State, layout: &rt_cgroups::Layout) -> Result<()> {
    kill_own_and_remove_cgroup(st, layout, |_| true)
}

/// Kills the init and the processes of the container's cgroup that `own`
/// says are the container's, then removes the cgroup, unless processes
/// that are not its own are still in it (then it is shared, and left).
pub(super) fn kill_own_and_remove_cgroup(
    st: &State,
    layout: &rt_cgroups::Layout,
    own: impl Fn(Pid) -> bool,
) -> Result<()> {
    if st.init_alive()
        && !st
            .cgroup
            .as_ref()
            .is_some_and(|r| rt_cgroups::open(layout, r.clone()).frozen())
    {
        let _ = signal_init(st, Signal::SIGKILL as i32);
        wait_exit(Pid::from_raw(st.pid));
    }
    let Some(rec) = &st.cgroup else { return Ok(()) };
    let cgroup = rt_cgroups::open(layout, rec.clone());
    // Without a pid namespace, the init's children outlive it: kill them too.
    let (pids, others): (Vec<Pid>, Vec<Pid>) = cgroup
        .pids()
        .unwrap_or_default()
        .into_iter()
        .partition(|p| own(*p));
    for pid in &pids {
        let _ = nix::sys::signal::kill(*pid, Signal::SIGKILL);
    }
    // A frozen process dies only once thawed (an empty cgroup is removed
    // frozen or not).
    if !(pids.is_empty() && others.is_empty()) && cgroup.frozen() {
        let _ = cgroup.freeze(false);
    }
    for pid in pids {
        wait_exit(pid);
    }
    // (One that has exited since, or is a zombie, holds nothing.)
    if others
        .iter()
        .any(|p| crate::state::proc_stat(*p).is_some_and(|(s, _)| s != 'Z'))
    {
        tracing::info!(path = %rec.path, "the cgroup holds another container's processes: left in place");
        return Ok(());
    }
    cgroup.destroy()?;
    Ok(())
}

fn signal_init(st: &State, signal: i32) -> Result<()> {
    let pid = Pid::from_raw(st.pid);
    let fd = rt_sys::pidfd_open(pid).map_err(Error::Signal)?;
    // The pidfd names the process we opened; make sure it is still ours.
    if !st.init_alive() {
        return Err(Error::NotRunning);
    }
    rt_sys::pidfd_send_signal(fd.as_fd(), signal).map_err(Error::Signal)
}

/// Waits (at most 10 s) for the last writer of the fifo behind `r` to go.
fn wait_hangup(r: &std::fs::File) {
    let mut fds = [nix::poll::PollFd::new(
        r.as_fd(),
        nix::poll::PollFlags::empty(),
    )];
    let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(10_000u16));
}

/// Waits (at most 10 s) until `pid` has exited: its pidfd becomes readable.
fn wait_exit(pid: Pid) {
    let Ok(fd) = rt_sys::pidfd_open(pid) else {
        return;
    };
    let mut fds = [nix::poll::PollFd::new(
        fd.as_fd(),
        nix::poll::PollFlags::POLLIN,
    )];
    let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(10_000u16));
}

/// `criu check`: Ok when CRIU can dump on this host, else CRIU's reason
/// (its last error lines).
pub fn criu_check() -> std::result::Result<(), String> {
    let out = match std::process::Command::new("criu").arg("check").output() {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err("no criu binary is installed".into())
        }
        Err(e) => return Err(format!("running criu check: {e}")),
    };
    if out.status.success() {
        return Ok(());
    }
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let errors: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.contains("Error") || l.contains("error"))
        .collect();
    let pick = if errors.is_empty() { &lines } else { &errors };
    let tail = &pick[pick.len().saturating_sub(3)..];
    Err(format!(
        "criu check failed ({}): {}",
        out.status,
        tail.join("; ")
    ))
}
