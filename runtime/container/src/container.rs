//! The engine: every container operation behind the CLI (and the shim).
//! Shared here: spec loading and validation, the state store and the status
//! each operation needs, networks, hooks, pid files. Each operation's
//! mechanism goes to the container's backend ([`crate::backend`]), the one
//! recorded in its state at create.

use std::path::{Path, PathBuf};

use nix::unistd::Pid;
use oci_spec::runtime::Process;

use crate::backend::{self, Isolation};
pub use crate::error::{Error, Result};
use crate::hooks::{self, Kind};
use crate::network;
use crate::sandbox::{Created, ExecHow, Options, Sandbox};
use crate::spec::{self, Bundle};
use crate::state::{self, ContainerDir, State, Status, Store};

mod checkpoint;
mod migrate;
mod receive;
pub use checkpoint::RestoreRequest;
pub use migrate::{Destination, MigrationReport};
pub use receive::Received;

/// The runtime: a state root on this host's cgroup layout.
#[derive(Debug)]
pub struct Runtime {
    store: Store,
    cgroups: bool,
    rootless: bool,
    systemd: bool,
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
    /// The isolation the binary's name implies (`rt-vm`: "vm").
    pub isolation_by_name: Option<String>,
    /// Annotations set over the bundle's (the CLI's `--network` and friends).
    pub annotations: Vec<(String, String)>,
}

/// A container opened for an operation: its locked directory, its state,
/// the backend that made it and its live status.
/// A container [`Runtime::create_fresh`] made: its process, and (still
/// locked) what starting it needs.
#[derive(Debug)]
pub struct Fresh {
    pub created: Created,
    state: FreshState,
}

/// What delete needs of a container this process created: its state and
/// the host's cgroup layout, as create had them.
#[derive(Debug)]
pub struct Started {
    st: State,
    backend: Box<dyn Isolation>,
    layout: rt_cgroups::Layout,
}

/// The part of [`Fresh`] that [`Runtime::start_fresh`] takes: the locked
/// directory, and what becomes [`Started`].
#[derive(Debug)]
pub struct FreshState {
    dir: ContainerDir,
    started: Started,
    /// Create left the `created` status for start to save
    /// ([`Options::starts_at_once`]).
    unsaved: bool,
}

impl Fresh {
    /// The process, and the rest for [`Runtime::start_fresh`].
    pub fn split(self) -> (Created, FreshState) {
        (self.created, self.state)
    }
}

/// Releases the container's process, then runs the poststart hooks.
fn start_opened(backend: &dyn Isolation, dir: &ContainerDir, st: &State) -> Result<()> {
    backend.start(dir, st)?;
    let json = serde_json::to_vec(&st.oci(Status::Running)).unwrap_or_default();
    if let Err(e) = hooks::run(st.config.hooks().as_ref(), Kind::Poststart, &json) {
        // The runtime-spec: a failing poststart hook is logged, the
        // container keeps running.
        tracing::warn!("{}", crate::process::chain(&e));
    }
    Ok(())
}

struct Opened {
    dir: ContainerDir,
    st: State,
    backend: Box<dyn Isolation>,
    status: Status,
}

impl Runtime {
    pub fn new(root: impl Into<PathBuf>) -> Runtime {
        Runtime {
            store: Store::new(root),
            cgroups: true,
            rootless: false,
            systemd: false,
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

    /// With `true` (`--systemd-cgroup`), systemd owns the container's
    /// cgroup as a transient unit (see `rt_cgroups::systemd`): the user's
    /// instance in rootless mode, the system's otherwise.
    pub fn systemd_cgroup(mut self, systemd: bool) -> Runtime {
        self.systemd = systemd;
        self
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Creates a container; on any failure nothing is left behind.
    pub fn create(&self, req: &CreateRequest) -> Result<Created> {
        self.create_fresh(req).map(|f| f.created)
    }

    /// Creates a container and keeps it locked, with what create knew, for
    /// [`Runtime::start_fresh`] (`run`): starting it then reads neither its
    /// state nor the host's cgroup layout again.
    pub fn create_fresh(&self, req: &CreateRequest) -> Result<Fresh> {
        spec::validate_id(&req.id)?;
        let (bundle_dir, text) = Bundle::read(&req.bundle)?;
        // Dropped on any error before create hands it on (a helper is
        // reaped with it).
        let head_start = self.head_start(&text, req);
        let mut bundle = Bundle::parse(bundle_dir, &text)?;
        if !req.annotations.is_empty() {
            let mut all = bundle.spec.annotations().clone().unwrap_or_default();
            all.extend(req.annotations.iter().cloned());
            bundle.spec.set_annotations(Some(all));
        }
        let backend = backend::select(
            bundle.spec.annotations().as_ref(),
            req.isolation.as_deref(),
            req.isolation_by_name.as_deref(),
        )?;
        let layout = rt_cgroups::Layout::detect()?;
        let (dir, mut state) = self.new_state(&req.id, &bundle, backend.as_ref(), &layout)?;
        let result = self.create_in(
            &dir,
            &mut state,
            &mut bundle,
            (backend.as_ref(), head_start),
            &layout,
            req,
        );
        match result {
            Ok(created) => Ok(Fresh {
                state: FreshState {
                    dir,
                    started: Started {
                        st: state,
                        backend,
                        layout,
                    },
                    unsaved: created.unsaved,
                },
                created,
            }),
            Err(e) => {
                let _ = self.teardown(backend.as_ref(), &state, &layout);
                let _ = dir.remove();
                Err(e)
            }
        }
    }

    /// What the backend the config selects starts before the config's full
    /// parse (a fifth of `create`'s time before it forks, here), from a
    /// skim of its text with the request's annotations added. Nothing when
    /// the skim fails: the parse will refuse the text.
    fn head_start(&self, text: &[u8], req: &CreateRequest) -> crate::sandbox::HeadStart {
        // What a backend starts ahead today is a network namespace, which a
        // rootless rt cannot make, and a text that never names one needs
        // no skim (about 50 µs of serde here).
        if self.rootless || memchr::memmem::find(text, b"\"network\"").is_none() {
            return Default::default();
        }
        let Some(mut skim) = spec::Skim::of(text) else {
            return Default::default();
        };
        if !req.annotations.is_empty() {
            let all = skim.annotations.get_or_insert_with(Default::default);
            all.extend(req.annotations.iter().cloned());
        }
        match backend::select(
            skim.annotations.as_ref(),
            req.isolation.as_deref(),
            req.isolation_by_name.as_deref(),
        ) {
            Ok(backend) => backend.head_start(&skim),
            _ => Default::default(),
        }
    }

    /// The state directory and first state of a new container `id`
    /// (create's and restore's): its cgroup record from the spec's
    /// cgroupsPath (or systemd unit).
    fn new_state(
        &self,
        id: &str,
        bundle: &Bundle,
        backend: &dyn Isolation,
        layout: &rt_cgroups::Layout,
    ) -> Result<(ContainerDir, State)> {
        let cgroups_path = bundle
            .spec
            .linux()
            .as_ref()
            .and_then(|l| l.cgroups_path().as_deref());
        let (cg_path, unit) = if self.systemd && self.cgroups {
            let raw = cgroups_path.map(|p| p.to_string_lossy());
            let mut unit = rt_cgroups::systemd::Unit::parse(raw.as_deref(), id, self.rootless)?;
            if let Some(a) = bundle.spec.annotations() {
                unit.properties = rt_cgroups::systemd::annotations::properties(a)?;
            }
            (unit.cgroup_path()?, Some(unit))
        } else {
            (rt_cgroups::container_path(cgroups_path, id)?, None)
        };
        let dir = self.store.create(id)?;
        let state = State {
            version: state::STATE_VERSION,
            id: id.to_string(),
            pid: 0,
            start_time: 0,
            stored_status: Status::Creating,
            bundle: bundle.dir.clone(),
            rootfs: bundle.rootfs.clone(),
            created: state::now_rfc3339(),
            owner: owner(),
            annotations: bundle.spec.annotations().clone().unwrap_or_default(),
            backend: backend.name().to_string(),
            cgroup: (unit.is_some() || self.use_cgroup(layout, &cg_path)).then_some(
                rt_cgroups::Record {
                    path: cg_path,
                    created: Vec::new(),
                    systemd: unit,
                },
            ),
            config: bundle.spec.clone(),
            network: None,
            vm_dir: None,
        };
        Ok((dir, state))
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
        (backend, head_start): (&dyn Isolation, crate::sandbox::HeadStart),
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
        // Only a network changes the spec (`new_state` copied it): a
        // second copy of a spec with a seccomp profile is some hundreds of
        // allocations on the start path.
        if network.is_some() {
            state.config = bundle.spec.clone();
        }
        let mut cgroup = match &state.cgroup {
            Some(rec) => rt_cgroups::open(layout, rec.clone()),
            None => rt_cgroups::disabled(),
        };
        let sandbox = Sandbox {
            dir,
            bundle,
            opts: &req.options,
            cgroup: cgroup.as_mut(),
            layout,
            network: network.as_ref(),
            head_start,
        };
        let created = backend.create(sandbox, state)?;
        if let Some(path) = &req.pid_file {
            write_pid_file(path, created.pid)?;
        }
        Ok(created)
    }

    fn open(&self, id: &str) -> Result<Opened> {
        let dir = self.store.open(id)?;
        let st = dir.load()?;
        let backend = backend::of(&st)?;
        let status = backend.status(&dir, &st);
        Ok(Opened {
            dir,
            st,
            backend,
            status,
        })
    }

    /// Loads a container's state and its live status.
    pub fn state(&self, id: &str) -> Result<(State, Status)> {
        let c = self.open(id)?;
        Ok((c.st, c.status))
    }

    /// Releases a created container's process, then runs the poststart hooks.
    pub fn start(&self, id: &str) -> Result<()> {
        let c = self.open(id)?;
        match c.status {
            Status::Created => {}
            Status::Stopped => return Err(Error::StartStopped),
            other => return Err(Error::StartNotCreated(other)),
        }
        start_opened(c.backend.as_ref(), &c.dir, &c.st)
    }

    /// [`Runtime::start`] of the container [`Runtime::create_fresh`] made,
    /// still locked since: created, unless its init died meanwhile (which
    /// the start reports). Unlocks it; gives back what
    /// [`Runtime::delete_started`] needs.
    pub fn start_fresh(&self, fresh: FreshState) -> Result<Started> {
        let FreshState {
            dir,
            started,
            unsaved,
        } = fresh;
        start_opened(started.backend.as_ref(), &dir, &started.st)?;
        // `created` with the fifo gone reads as `running`. Nobody saw the
        // state in between: the directory is locked until `dir` drops.
        if unsaved {
            dir.save(&started.st)?;
        }
        Ok(started)
    }

    /// `delete --force` of a container this process created and started
    /// ([`Runtime::start_fresh`]), from the state it kept: nothing of a
    /// container's state that delete uses changes after create. One that
    /// is gone already (deleted meanwhile) is no error.
    pub fn delete_started(&self, started: Started) -> Result<()> {
        let Started {
            st,
            backend,
            layout,
        } = started;
        let dir = match self.store.open(&st.id) {
            Ok(d) => d,
            Err(state::Error::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        self.remove_opened(dir, &st, backend.as_ref(), &layout)
    }

    /// Sends signal number `signal` to the container's process, or with `all`
    /// to every process of the container. Signal 0 only checks that the
    /// container runs.
    pub fn kill(&self, id: &str, signal: i32, all: bool) -> Result<()> {
        let c = self.open(id)?;
        if !matches!(c.status, Status::Created | Status::Running | Status::Paused) {
            return Err(Error::NotRunning);
        }
        c.backend.kill(&c.st, signal, all)
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
        let backend = backend::of(&st)?;
        let status = backend.status(&dir, &st);
        if matches!(status, Status::Running | Status::Paused | Status::Creating) && !force {
            return Err(Error::NotStopped(id.to_string(), status));
        }
        let layout = rt_cgroups::Layout::detect()?;
        self.remove_opened(dir, &st, backend.as_ref(), &layout)
    }

    /// The end of a delete, the container's directory locked: its processes,
    /// cgroup and network, the poststop hooks, its state.
    fn remove_opened(
        &self,
        dir: ContainerDir,
        st: &State,
        backend: &dyn Isolation,
        layout: &rt_cgroups::Layout,
    ) -> Result<()> {
        let id = &st.id;
        let mut errors = self.teardown(backend, st, layout);
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
        let c = self.open(id)?;
        match c.status {
            Status::Created | Status::Running => {}
            Status::Paused if how.ignore_paused => {}
            Status::Paused => return Err(Error::ExecPaused),
            _ => return Err(Error::ExecStopped),
        }
        let created = c.backend.exec(&c.st, c.status, process, opts, how)?;
        if let Some(path) = pid_file {
            write_pid_file(path, created.pid)?;
        }
        Ok(created)
    }

    /// Changes the limits of a live container.
    pub fn update(&self, id: &str, resources: &oci_spec::runtime::LinuxResources) -> Result<()> {
        let c = self.open(id)?;
        if matches!(c.status, Status::Stopped | Status::Creating) {
            return Err(Error::NotRunning);
        }
        c.backend.update(&c.st, resources)
    }

    /// Freezes a running container.
    pub fn pause(&self, id: &str) -> Result<()> {
        let c = self.open(id)?;
        if c.status != Status::Running {
            return Err(Error::NotRunning);
        }
        c.backend.pause(&c.st)
    }

    /// Thaws a paused container.
    pub fn resume(&self, id: &str) -> Result<()> {
        let c = self.open(id)?;
        if c.status != Status::Paused {
            return Err(Error::NotPaused);
        }
        c.backend.resume(&c.st)
    }

    /// Host pids of every process of the container.
    pub fn pids(&self, id: &str) -> Result<Vec<Pid>> {
        let c = self.open(id)?;
        if c.status == Status::Stopped {
            return Ok(Vec::new());
        }
        c.backend.pids(&c.st)
    }

    /// `ps` output of the backend's own (a VM's guest processes), or None
    /// for the host's `ps` filtered to [`Runtime::pids`].
    pub fn ps(&self, id: &str, json: bool, ps_args: &[String]) -> Result<Option<String>> {
        let c = self.open(id)?;
        if c.status == Status::Stopped {
            return Ok(None);
        }
        c.backend.ps(&c.st, json, ps_args)
    }

    /// `events` by the backend itself (a VM's guest), or None for the
    /// engine's own from [`Runtime::live_cgroup`].
    pub fn backend_events(&self, id: &str, args: &[String]) -> Result<Option<i32>> {
        let Opened {
            dir,
            st,
            backend,
            status,
        } = self.open(id)?;
        if matches!(status, Status::Stopped | Status::Creating) {
            return Err(Error::NotRunning);
        }
        // A stream lasts as long as the container: it must not hold the
        // container's lock, or `start`, `kill`, `delete` … wait behind it.
        drop(dir);
        backend.events(&st, args)
    }

    /// The cgroup of a live (running or paused) container, for `events`.
    pub fn live_cgroup(&self, id: &str) -> Result<Box<dyn rt_cgroups::Manager>> {
        let c = self.open(id)?;
        if matches!(c.status, Status::Stopped | Status::Creating) {
            return Err(Error::NotRunning);
        }
        c.backend.cgroup(&c.st)
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

    /// What the backend made, then the network: keeps going past errors and
    /// returns them all.
    fn teardown(
        &self,
        backend: &dyn Isolation,
        st: &State,
        layout: &rt_cgroups::Layout,
    ) -> Vec<String> {
        let mut errors = backend.destroy(st, layout);
        // The annotations were checked at create; a spec that never passed
        // has no network to undo.
        if let Ok(Some(config)) = rt_netns::Config::from_annotations(&st.annotations) {
            let networking = network::networking(self.store.root());
            if let Err(e) = networking.detach(&st.id, &config) {
                errors.push(e.to_string());
            }
        }
        errors
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
