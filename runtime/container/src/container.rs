//! The container operations behind the CLI (and, later, the shim): create,
//! start, state, kill, delete, list.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use oci_spec::runtime::Process;

use crate::backend::{self, Isolation};
use crate::hooks::{self, Kind};
use crate::network;
use crate::process::exec;
use crate::process::parent::{self, Created, Options};
use crate::spec::{self, Bundle};
use crate::state::{self, ContainerDir, State, Status, Store};

/// Errors of container operations.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Spec(#[from] spec::Error),
    #[error(transparent)]
    State(#[from] state::Error),
    #[error(transparent)]
    Backend(#[from] backend::Error),
    #[error(transparent)]
    Create(#[from] parent::Error),
    #[error(transparent)]
    Cgroups(#[from] rt_cgroups::Error),
    #[error(transparent)]
    Hooks(#[from] hooks::Error),
    #[error(transparent)]
    Network(#[from] network::Error),
    #[error("cannot start a container that has stopped")]
    StartStopped,
    #[error("cannot start a container in the {0} state")]
    StartNotCreated(Status),
    #[error("container not running")]
    NotRunning,
    #[error("container not paused")]
    NotPaused,
    #[error("cannot exec in a paused container (use --ignore-paused to override)")]
    ExecPaused,
    #[error("cannot exec in a stopped container")]
    ExecStopped,
    #[error(transparent)]
    Exec(#[from] exec::Error),
    #[error("cannot delete container {0} that is not stopped: {1}")]
    NotStopped(String, Status),
    #[error("signalling the container init")]
    Signal(#[source] rt_sys::Error),
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cleaning up container {id}: {}", .errors.join("; "))]
    Cleanup { id: String, errors: Vec<String> },
}

pub type Result<T> = std::result::Result<T, Error>;

/// The runtime: a state root on this host's cgroup layout.
#[derive(Debug)]
pub struct Runtime {
    store: Store,
    cgroups: bool,
    rootless: bool,
}

/// How `exec` places its process (runc's `--ignore-paused`, `--cgroup`).
#[derive(Debug, Default)]
pub struct ExecHow {
    pub ignore_paused: bool,
    pub cgroup: rt_cgroups::Sub,
}

/// How `create` is asked for by the CLI.
#[derive(Debug, Default)]
pub struct CreateRequest {
    pub id: String,
    pub bundle: PathBuf,
    pub pid_file: Option<PathBuf>,
    pub options: Options,
    /// Overrides the `run.rt.isolation` annotation.
    pub isolation: Option<String>,
    /// Annotations set over the bundle's (the CLI's `--network` and friends).
    pub annotations: Vec<(String, String)>,
}

impl Runtime {
    pub fn new(root: impl Into<PathBuf>) -> Runtime {
        Runtime {
            store: Store::new(root),
            cgroups: true,
            rootless: false,
        }
    }

    /// Rootless mode: a cgroup that is not delegated to the user (writable
    /// by it) is skipped instead of failing the create; a spec that sets
    /// resource limits is then refused.
    pub fn rootless(mut self, rootless: bool) -> Runtime {
        self.rootless = rootless;
        self
    }

    /// With `false` (`--cgroup-manager disabled`) rt creates no cgroup and
    /// refuses specs that set resource limits.
    pub fn with_cgroups(mut self, cgroups: bool) -> Runtime {
        self.cgroups = cgroups;
        self
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Creates a container; on any failure nothing is left behind.
    pub fn create(&self, req: &CreateRequest) -> Result<Created> {
        spec::validate_id(&req.id)?;
        let mut bundle = Bundle::load(&req.bundle)?;
        if !req.annotations.is_empty() {
            let mut all = bundle.spec.annotations().clone().unwrap_or_default();
            all.extend(req.annotations.iter().cloned());
            bundle.spec.set_annotations(Some(all));
        }
        let backend =
            backend::select(bundle.spec.annotations().as_ref(), req.isolation.as_deref())?;
        let layout = rt_cgroups::Layout::detect()?;
        let cg_path = rt_cgroups::container_path(
            bundle
                .spec
                .linux()
                .as_ref()
                .and_then(|l| l.cgroups_path().as_deref()),
            &req.id,
        )?;
        let dir = self.store.create(&req.id)?;
        let mut state = State {
            id: req.id.clone(),
            pid: 0,
            start_time: 0,
            stored_status: Status::Creating,
            bundle: bundle.dir.clone(),
            rootfs: bundle.rootfs.clone(),
            created: state::now_rfc3339(),
            owner: owner(),
            annotations: bundle.spec.annotations().clone().unwrap_or_default(),
            backend: backend.name().to_string(),
            cgroup: self
                .use_cgroup(&layout, &cg_path)
                .then_some(rt_cgroups::Record {
                    path: cg_path,
                    created: Vec::new(),
                }),
            config: bundle.spec.clone(),
            network: None,
        };
        let result = self.create_in(
            &dir,
            &mut state,
            &mut bundle,
            backend.as_ref(),
            &layout,
            req,
        );
        if let Err(e) = result {
            let _ = self.teardown(&state, &layout);
            let _ = dir.remove();
            return Err(e);
        }
        result
    }

    fn use_cgroup(&self, layout: &rt_cgroups::Layout, path: &str) -> bool {
        if !self.cgroups {
            return false;
        }
        if self.rootless && !layout.delegated(path) {
            tracing::info!("cgroup {path} is not delegated to this user: running without a cgroup");
            return false;
        }
        true
    }

    fn create_in(
        &self,
        dir: &ContainerDir,
        state: &mut State,
        bundle: &mut Bundle,
        backend: &dyn Isolation,
        layout: &rt_cgroups::Layout,
        req: &CreateRequest,
    ) -> Result<Created> {
        // The state (its annotations) is saved before any part of the
        // network is made: a delete after a killed create finds it.
        dir.save(state)?;
        let network = network::prepare(&mut bundle.spec, &self.store.dir(&req.id))?.map(|config| {
            network::Plan {
                config,
                networking: network::networking(self.store.root()),
            }
        });
        state.config = bundle.spec.clone();
        let mut cgroup = match &state.cgroup {
            Some(rec) => rt_cgroups::open(layout, rec.clone()),
            None => rt_cgroups::disabled(),
        };
        let sandbox = backend::Sandbox {
            dir,
            bundle,
            opts: &req.options,
            cgroup: cgroup.as_mut(),
            layout,
            network: network.as_ref(),
        };
        let created = backend.create(sandbox, state)?;
        if let Some(path) = &req.pid_file {
            write_pid_file(path, created.pid)?;
        }
        Ok(created)
    }

    /// Loads a container's state and its live status.
    pub fn state(&self, id: &str) -> Result<(State, Status)> {
        let dir = self.store.open(id)?;
        let st = dir.load()?;
        let status = status_of(&dir, &st);
        Ok((st, status))
    }

    /// Releases a created container's init to exec the user's process.
    pub fn start(&self, id: &str) -> Result<()> {
        let dir = self.store.open(id)?;
        let st = dir.load()?;
        match status_of(&dir, &st) {
            Status::Created => {}
            Status::Stopped => return Err(Error::StartStopped),
            other => return Err(Error::StartNotCreated(other)),
        }
        let fifo = dir.fifo();
        let io = |what| {
            let path = fifo.clone();
            move |source| Error::Io { what, path, source }
        };
        // Non-blocking: if the init is gone there is no reader and this fails
        // at once instead of hanging.
        let mut w = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags_nonblock()
            .open(&fifo)
            .map_err(io("opening exec fifo"))?;
        let r = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags_nonblock()
            .open(&fifo)
            .map_err(io("opening exec fifo"))?;
        std::io::Write::write_all(&mut w, b"0").map_err(io("writing exec fifo"))?;
        drop(w);
        std::fs::remove_file(&fifo).map_err(io("removing exec fifo"))?;
        // The init holds the fifo (close-on-exec) until it execs the user's
        // process: the hang-up on our read end says it has, so poststart hooks
        // run after the process started, as the runtime-spec orders.
        wait_hangup(&r);
        let json = serde_json::to_vec(&st.oci(Status::Running)).unwrap_or_default();
        if let Err(e) = hooks::run(st.config.hooks().as_ref(), Kind::Poststart, &json) {
            // The runtime-spec: a failing poststart hook is logged, the
            // container keeps running.
            tracing::warn!("{}", crate::process::chain(&e));
        }
        Ok(())
    }

    /// Sends signal number `signal` to the init, or with `all` to every
    /// process of the container's cgroup. Signal 0 only checks that the
    /// container runs.
    pub fn kill(&self, id: &str, signal: i32, all: bool) -> Result<()> {
        let dir = self.store.open(id)?;
        let st = dir.load()?;
        let status = status_of(&dir, &st);
        if !matches!(status, Status::Created | Status::Running | Status::Paused) {
            return Err(Error::NotRunning);
        }
        if all {
            for pid in cgroup_of(&st)?.pids()? {
                let _ = rt_sys::kill(pid, signal);
            }
            return Ok(());
        }
        signal_init(&st, signal)
    }

    /// Deletes a container: a stopped or created one always, a running one only
    /// with `force` (killed first). An unknown id with `force` is not an error.
    pub fn delete(&self, id: &str, force: bool) -> Result<()> {
        let dir = match self.store.open(id) {
            Ok(d) => d,
            Err(state::Error::NotFound(_)) if force => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let st = match dir.load() {
            Ok(s) => s,
            // A create killed before it wrote any state.
            Err(_) if force => return Ok(dir.remove()?),
            Err(e) => return Err(e.into()),
        };
        let status = status_of(&dir, &st);
        if matches!(status, Status::Running | Status::Paused | Status::Creating) && !force {
            return Err(Error::NotStopped(id.to_string(), status));
        }
        let layout = rt_cgroups::Layout::detect()?;
        let mut errors = Vec::new();
        match self.teardown(&st, &layout) {
            Err(Error::Cleanup { errors: e, .. }) => errors.extend(e),
            Err(e) => errors.push(crate::process::chain(&e)),
            Ok(()) => {}
        }
        let json = serde_json::to_vec(&st.oci(Status::Stopped)).unwrap_or_default();
        if let Err(e) = hooks::run(st.config.hooks().as_ref(), Kind::Poststop, &json) {
            tracing::warn!("{}", crate::process::chain(&e));
        }
        if let Err(e) = dir.remove() {
            errors.push(crate::process::chain(&e));
        }
        let image_bundle = image_bundle_dir(self.store.root(), id);
        if st.bundle == image_bundle && image_bundle.exists() {
            if let Err(e) = remove_image_bundle(&image_bundle) {
                errors.push(e);
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(Error::Cleanup {
                id: id.to_string(),
                errors,
            })
        }
    }

    /// Runs `process` in a running (or created) container, returning once it
    /// has been exec'd. With `how.ignore_paused`, a paused container is no
    /// obstacle: the process starts frozen and runs at `resume`.
    pub fn exec(
        &self,
        id: &str,
        process: &Process,
        opts: &Options,
        pid_file: Option<&Path>,
        how: &ExecHow,
    ) -> Result<Created> {
        let dir = self.store.open(id)?;
        let st = dir.load()?;
        let paused = match status_of(&dir, &st) {
            Status::Created | Status::Running => false,
            Status::Paused if how.ignore_paused => true,
            Status::Paused => return Err(Error::ExecPaused),
            _ => return Err(Error::ExecStopped),
        };
        let linux = st.config.linux().clone().unwrap_or_default();
        let cgroup = cgroup_of(&st)?;
        let launch = exec::ExecLaunch {
            process,
            linux: &linux,
            plan: exec::plan_for(Pid::from_raw(st.pid), &linux),
            chroot: exec::chroot_for(Pid::from_raw(st.pid), &linux),
            placement: cgroup.placement(&how.cgroup)?,
            defer_freezer: paused,
            container_state: serde_json::to_value(st.oci(if paused {
                Status::Paused
            } else {
                Status::Running
            }))
            .unwrap_or_default(),
            preserve_fds: opts.preserve_fds,
        };
        let created = exec::exec(&launch, opts)?;
        if let Some(path) = pid_file {
            write_pid_file(path, created.pid)?;
        }
        Ok(created)
    }

    /// Changes the limits of a live container.
    pub fn update(&self, id: &str, resources: &oci_spec::runtime::LinuxResources) -> Result<()> {
        let dir = self.store.open(id)?;
        let st = dir.load()?;
        if matches!(status_of(&dir, &st), Status::Stopped | Status::Creating) {
            return Err(Error::NotRunning);
        }
        Ok(cgroup_of(&st)?.set(resources)?)
    }

    /// Freezes a running container.
    pub fn pause(&self, id: &str) -> Result<()> {
        let dir = self.store.open(id)?;
        let st = dir.load()?;
        if status_of(&dir, &st) != Status::Running {
            return Err(Error::NotRunning);
        }
        Ok(cgroup_of(&st)?.freeze(true)?)
    }

    /// Thaws a paused container.
    pub fn resume(&self, id: &str) -> Result<()> {
        let dir = self.store.open(id)?;
        let st = dir.load()?;
        if status_of(&dir, &st) != Status::Paused {
            return Err(Error::NotPaused);
        }
        Ok(cgroup_of(&st)?.freeze(false)?)
    }

    /// Host pids of every process of the container.
    pub fn pids(&self, id: &str) -> Result<Vec<Pid>> {
        let dir = self.store.open(id)?;
        let st = dir.load()?;
        if status_of(&dir, &st) == Status::Stopped {
            return Ok(Vec::new());
        }
        Ok(cgroup_of(&st)?.pids()?)
    }

    /// The cgroup of a live (running or paused) container, for `events`.
    pub fn live_cgroup(&self, id: &str) -> Result<Box<dyn rt_cgroups::Manager>> {
        let dir = self.store.open(id)?;
        let st = dir.load()?;
        if matches!(status_of(&dir, &st), Status::Stopped | Status::Creating) {
            return Err(Error::NotRunning);
        }
        cgroup_of(&st)
    }

    /// Every container with its status.
    pub fn list(&self) -> Result<Vec<(State, Status)>> {
        let mut out = Vec::new();
        for id in self.store.ids()? {
            match self.state(&id) {
                Ok(s) => out.push(s),
                Err(Error::State(state::Error::NotFound(_))) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }
}

/// Where `run --image` / `create --image` unpack a container's bundle: under
/// the state root, in a directory `list` does not take for a container.
pub fn image_bundle_dir(root: &Path, id: &str) -> PathBuf {
    root.join(".bundles").join(id)
}

/// Removes a bundle `--image` made (its rootfs unmounted first when it is
/// an overlay).
pub fn remove_image_bundle(dir: &Path) -> std::result::Result<(), String> {
    let rootfs = dir.join("rootfs");
    crate::rootfs::detach_if_mounted(&rootfs)
        .map_err(|e| format!("unmounting {}: {e}", rootfs.display()))?;
    std::fs::remove_dir_all(dir).map_err(|e| format!("removing {}: {e}", dir.display()))
}

/// The cgroup manager of a container, on the host's layout.
fn cgroup_of(st: &State) -> Result<Box<dyn rt_cgroups::Manager>> {
    Ok(match &st.cgroup {
        Some(rec) => rt_cgroups::open(&rt_cgroups::Layout::detect()?, rec.clone()),
        None => rt_cgroups::disabled(),
    })
}

/// The live status, `paused` included.
fn status_of(dir: &ContainerDir, st: &State) -> Status {
    dir.status(st, || cgroup_of(st).is_ok_and(|c| c.frozen()))
}

impl Runtime {
    /// Kills what is left of a container (its init, then everything in its
    /// cgroup), removes its cgroups and tears down its network. Keeps going
    /// past errors and reports them all.
    fn teardown(&self, st: &State, layout: &rt_cgroups::Layout) -> Result<()> {
        let mut errors = Vec::new();
        if let Err(e) = kill_and_remove_cgroup(st, layout) {
            errors.push(crate::process::chain(&e));
        }
        // The annotations were checked at create; a spec that never passed
        // has no network to undo.
        if let Ok(Some(config)) = rt_netns::Config::from_annotations(&st.annotations) {
            let networking = network::networking(self.store.root());
            if let Err(e) = networking.detach(&st.id, &config) {
                errors.push(e.to_string());
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(Error::Cleanup {
                id: st.id.clone(),
                errors,
            })
        }
    }
}

/// Kills what is left of a container (its init, then everything in its
/// cgroup) and removes its cgroups.
fn kill_and_remove_cgroup(st: &State, layout: &rt_cgroups::Layout) -> Result<()> {
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
    if let Ok(pids) = cgroup.pids() {
        for pid in &pids {
            let _ = nix::sys::signal::kill(*pid, Signal::SIGKILL);
        }
        // A frozen process dies only once thawed.
        if cgroup.frozen() {
            let _ = cgroup.freeze(false);
        }
        for pid in pids {
            wait_exit(pid);
        }
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

/// The user name of our uid from /etc/passwd (as Go's os/user does, without
/// NSS: no library is loaded on the create path), or the uid itself.
fn owner() -> String {
    let uid = nix::unistd::getuid().as_raw();
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|text| {
            text.lines().find_map(|l| {
                let mut f = l.split(':');
                let name = f.next()?;
                (f.nth(1)?.parse::<u32>().ok()? == uid).then(|| name.to_string())
            })
        })
        .unwrap_or_else(|| uid.to_string())
}

/// The pid file: the bare decimal pid, no newline, written atomically.
fn write_pid_file(path: &Path, pid: Pid) -> Result<()> {
    let tmp = path.with_extension("rt-tmp");
    let io = |what| {
        let path = path.to_path_buf();
        move |source| Error::Io { what, path, source }
    };
    std::fs::write(&tmp, pid.to_string()).map_err(io("writing pid file"))?;
    std::fs::rename(&tmp, path).map_err(io("writing pid file"))
}

trait NonBlock {
    fn custom_flags_nonblock(&mut self) -> &mut Self;
}

impl NonBlock for std::fs::OpenOptions {
    fn custom_flags_nonblock(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
    }
}
