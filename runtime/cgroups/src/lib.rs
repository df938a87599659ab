//! cgroup placement and limits behind one [`Manager`] trait.
//!
//! The layout of the host (cgroup v1, hybrid, or unified v2) is read from
//! /proc/self/mountinfo once; [`open`] returns the manager for a container's
//! cgroup path on that layout. Both backends (namespaces and, later, the microVM's
//! guest agent) use this crate.

pub mod devices;
pub mod ebpf;
mod layout;
pub mod resources;
pub mod stats;
pub mod systemd;
mod v1;
mod v2;

use std::path::{Path, PathBuf};

use std::os::fd::OwnedFd;

use nix::unistd::Pid;
use oci_spec::runtime::LinuxResources;
use serde::{Deserialize, Serialize};

pub use layout::{Hierarchy, Layout};

/// Errors of cgroup management.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing {value:?} to {path}")]
    Write {
        path: PathBuf,
        value: String,
        #[source]
        source: std::io::Error,
    },
    #[error("creating cgroup {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("removing cgroup {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("timed out waiting for {0} to change")]
    Timeout(PathBuf),
    #[error("no cgroup hierarchy is mounted")]
    NoCgroups,
    #[error("cgroup path {0:?} escapes the hierarchy")]
    BadPath(String),
    #[error("resource {0} is not supported on this cgroup layout")]
    Unsupported(&'static str),
    #[error("{file} is not available in {dir} (not supported by this kernel or hierarchy)")]
    NoFile { file: String, dir: PathBuf },
    #[error("invalid resource: {0}")]
    Invalid(String),
    #[error("loading the eBPF device filter: {log}")]
    BpfLoad {
        log: String,
        #[source]
        source: nix::errno::Errno,
    },
    #[error("expected cgroupsPath to be of format \"slice:prefix:name\" for systemd cgroups, got {0:?} instead")]
    SystemdPath(String),
    #[error("invalid slice name: {0}")]
    Slice(String),
    #[error("annotation {key} name incorrect: {message}")]
    AnnotationName { key: String, message: String },
    #[error("annotation {key}={value} value parse error: {message}")]
    AnnotationValue {
        key: String,
        value: String,
        message: String,
    },
    #[error("systemd cgroup driver, {what}: {message}")]
    Systemd { what: &'static str, message: String },
    #[error("the systemd cgroup driver's helper process")]
    Helper(#[source] rt_sys::Error),
    #[error("attaching the eBPF device filter to {path}")]
    BpfAttach {
        path: PathBuf,
        #[source]
        source: rt_sys::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

/// What a container's state records of its cgroups: enough to reopen the manager
/// in a later `rt` command and to remove exactly the directories rt made.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    /// The container's path inside every hierarchy (absolute, like `/default/id`).
    pub path: String,
    /// Directories rt created, in creation order (parents first).
    #[serde(default)]
    pub created: Vec<PathBuf>,
    /// The systemd unit that owns the cgroup (the systemd driver), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub systemd: Option<systemd::Unit>,
}

/// One container's cgroup, on whatever layout the host has.
pub trait Manager: std::fmt::Debug {
    /// Creates the cgroup directories, recording each one it made.
    fn create(&mut self) -> Result<()>;
    /// For a parent that makes the cgroup while its child, cloned straight
    /// into it, sets up what needs no cgroup: the part of [`Manager::create`]
    /// needed before the clone (the cgroup2 directory [`Manager::birth_dir`]
    /// opens). [`Manager::create_rest`] then makes the rest. The default
    /// makes everything here.
    fn create_first(&mut self) -> Result<()> {
        self.create()
    }
    /// What [`Manager::create_first`] left: the v1 hierarchies.
    fn create_rest(&mut self) -> Result<()> {
        Ok(())
    }
    /// One piece of [`Manager::create_rest`] (a v1 hierarchy's directory),
    /// for a parent with time to fill before its clone; true while pieces
    /// are left. [`Manager::create_rest`] makes whatever is left. The
    /// default has no pieces.
    fn create_step(&mut self) -> Result<bool> {
        Ok(false)
    }
    /// Called by the (single-threaded) process to be placed: moves it into the
    /// cgroup v1 hierarchies itself, writing `0` to `tasks` (a thread moving
    /// itself needs no global lock), and returns the cgroup2 directory, if
    /// any, for its child to be born into (clone3 CLONE_INTO_CGROUP).
    ///
    /// With `whole`, it moves itself into the cgroup2 directory too (through
    /// cgroup.procs, which waits for the global lock) and returns None: for a
    /// child that will be forked inside a new user namespace, whose
    /// credentials may not write to the cgroup.
    fn enter(&self, whole: bool) -> Result<Option<OwnedFd>> {
        self.enter_v1()?;
        match self.v2_dir() {
            Some(dir) => enter_v2(&dir, whole),
            None => Ok(None),
        }
    }
    /// The v1 half of [`Manager::enter`]: the calling process writes `0` to
    /// `tasks` in every v1 hierarchy (nothing on a v2 host).
    fn enter_v1(&self) -> Result<()>;
    /// For a parent whose child enters the v1 hierarchies itself: every
    /// hierarchy's `tasks` file, opened for writing, in order (none on a
    /// v2 host). Opening is a path walk and a kernfs open per hierarchy,
    /// which the parent then does while the child works; the kernel checks
    /// a write against the opener's credentials, the parent's.
    fn open_v1_tasks(&self) -> Result<Vec<std::fs::File>> {
        Ok(Vec::new())
    }
    /// [`Manager::enter_v1`] through the files of
    /// [`Manager::open_v1_tasks`]: `0` written to each (the writer moves
    /// itself, so no global lock is taken); by path when they are not one
    /// per hierarchy.
    fn enter_v1_through(&self, tasks: Vec<std::fs::File>) -> Result<()> {
        drop(tasks);
        self.enter_v1()
    }
    /// The container's cgroup2 directory, if the host has one.
    fn v2_dir(&self) -> Option<PathBuf>;
    /// For a parent that clones the process to be placed straight into its
    /// namespaces and stays outside the cgroup itself: the cgroup2 directory
    /// opened for CLONE_INTO_CGROUP, if any. The child then calls
    /// [`Manager::enter_v1`].
    fn birth_dir(&self) -> Result<Option<OwnedFd>> {
        self.v2_dir().map(|dir| open_dir(&dir)).transpose()
    }
    /// Writes the limits of `resources` that this layout supports.
    fn set(&self, resources: &LinuxResources) -> Result<()>;
    /// Applies device access rules (see [`devices::rules`]).
    fn set_devices(&self, rules: &[devices::Rule]) -> Result<()>;
    /// Freezes (`true`) or thaws the cgroup, returning once the kernel reports
    /// the new state.
    fn freeze(&self, frozen: bool) -> Result<()>;
    /// Whether the cgroup is frozen.
    fn frozen(&self) -> bool;
    /// Host pids of every process in the cgroup.
    fn pids(&self) -> Result<Vec<Pid>>;
    /// Resource usage, in runc's `events` shape.
    fn stats(&self) -> Result<stats::Stats>;
    /// A descriptor that becomes readable when the cgroup's memory controller
    /// reports an event (an OOM on v1, any memory.events change on v2). Read
    /// it to clear it, then compare [`Manager::stats`]' `oom_kill` count.
    fn oom_watch(&self) -> Result<OwnedFd>;
    /// Removes the directories rt created (leaf first); parents still in use by
    /// other containers are left alone.
    fn destroy(&self) -> Result<()>;
    /// What the container state keeps.
    fn record(&self) -> Record;
    /// Where `exec` puts a process: this cgroup's directories, or with
    /// `sub` (`exec --cgroup`) a sub-cgroup of it, made if missing.
    fn placement(&self, sub: &Sub) -> Result<Placement>;
}

/// `exec --cgroup`: sub-cgroups of the container's, by controller (v1), as
/// runc 1.1 takes them: `PATH` for every hierarchy, or `ctrl[,ctrl]:PATH`
/// (repeatable) for the hierarchies of those controllers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sub {
    /// The path for every hierarchy not named below.
    pub all: Option<String>,
    /// (controllers, path) pairs.
    pub by_controller: Vec<(Vec<String>, String)>,
}

impl Sub {
    /// Parses `--cgroup` values.
    pub fn parse(values: &[String]) -> Result<Sub> {
        let mut sub = Sub::default();
        for v in values {
            let (ctrls, path) = match v.split_once(':') {
                Some((c, p)) => (Some(c), p),
                None => (None, v.as_str()),
            };
            let clean = path.trim_start_matches('/');
            if clean.is_empty() || clean.split('/').any(|p| p == ".." || p == ".") {
                return Err(Error::Invalid(format!(
                    "exec --cgroup {v:?}: a relative sub-cgroup path without . or .."
                )));
            }
            match ctrls {
                None if sub.all.is_some() => {
                    return Err(Error::Invalid(format!(
                        "exec --cgroup {v:?}: a second path for every controller"
                    )))
                }
                None => sub.all = Some(clean.to_string()),
                Some(c) => sub.by_controller.push((
                    c.split(',').map(str::to_string).collect(),
                    clean.to_string(),
                )),
            }
        }
        Ok(sub)
    }

    pub fn is_empty(&self) -> bool {
        self.all.is_none() && self.by_controller.is_empty()
    }

    /// The sub-path for a hierarchy with `controllers` (None: no sub-cgroup).
    fn for_controllers(&self, controllers: &[String]) -> Option<&str> {
        self.by_controller
            .iter()
            .find(|(cs, _)| cs.iter().any(|c| controllers.contains(c)))
            .map(|(_, p)| p.as_str())
            .or(self.all.as_deref())
    }
}

/// The directories a process joins, from [`Manager::placement`].
#[derive(Debug, Clone, Default)]
pub struct Placement {
    /// v1 directories (their `tasks` file), with whether it is the freezer's.
    pub v1: Vec<(PathBuf, bool)>,
    /// The cgroup2 directory.
    pub v2: Option<PathBuf>,
    /// Whether the cgroup2 directory is where freezing happens (v2 hosts).
    pub v2_freezes: bool,
}

impl Placement {
    /// As [`Manager::enter`], for the calling single-threaded process. With
    /// `defer_freezer`, the directory that freezes (v1 freezer, or cgroup2 on
    /// a v2 host) is not entered: its procs file is opened and returned, for
    /// the process to write `0` to as its last step (`exec
    /// --ignore-paused`: entering a frozen cgroup freezes the writer).
    pub fn enter(&self, whole: bool, defer_freezer: bool) -> Result<Entered> {
        let mut last = None;
        for (dir, freezer) in &self.v1 {
            let tasks = dir.join("tasks");
            if *freezer && defer_freezer {
                last = Some(open_write(&tasks)?);
            } else {
                write(&tasks, "0")?;
            }
        }
        let mut clone_into = None;
        if let Some(dir) = &self.v2 {
            if self.v2_freezes && defer_freezer {
                last = Some(open_write(&dir.join("cgroup.procs"))?);
            } else {
                clone_into = enter_v2(dir, whole)?;
            }
        }
        Ok(Entered { clone_into, last })
    }
}

/// What [`Placement::enter`] leaves to do.
#[derive(Debug)]
pub struct Entered {
    /// The cgroup2 directory to clone the child into.
    pub clone_into: Option<OwnedFd>,
    /// The procs file of a frozen cgroup to write `0` to last.
    pub last: Option<std::fs::File>,
}

pub(crate) fn open_write(path: &Path) -> Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|source| Error::Write {
            path: path.to_path_buf(),
            value: "0".into(),
            source,
        })
}

/// Makes the sub-cgroup `sub` of `dir` (if missing) and returns it, with
/// the directories it made (removed with the container's, see
/// `remove_dirs`).
pub(crate) fn sub_dir(dir: &Path, sub: Option<&str>) -> Result<(PathBuf, Vec<PathBuf>)> {
    let Some(sub) = sub else {
        return Ok((dir.to_path_buf(), Vec::new()));
    };
    let mut made = Vec::new();
    let leaf = create_dirs(dir, sub, &mut made)?;
    Ok((leaf, made))
}

/// The absolute path of a container's cgroup inside each hierarchy.
///
/// A relative `cgroupsPath` (and the default, the container id) is taken relative
/// to the hierarchy root, not to rt's own cgroup: the runtime-spec leaves the base
/// to the runtime, and nesting under the caller's cgroup would place containers
/// inside cgroups rt does not own.
pub fn container_path(cgroups_path: Option<&Path>, id: &str) -> Result<String> {
    let raw = match cgroups_path {
        Some(p) if !p.as_os_str().is_empty() => p.to_string_lossy().into_owned(),
        _ => id.to_string(),
    };
    if raw.contains(':') {
        // systemd's slice:prefix:name form.
        return Err(Error::BadPath(raw));
    }
    let mut out = String::new();
    for part in raw.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(Error::BadPath(raw)),
            p => {
                out.push('/');
                out.push_str(p);
            }
        }
    }
    if out.is_empty() {
        return Err(Error::BadPath(raw));
    }
    Ok(out)
}

/// Opens the manager for `record.path` on the host's layout: through
/// systemd if the record names a unit, by the cgroup files otherwise.
pub fn open(layout: &Layout, record: Record) -> Box<dyn Manager> {
    match record.systemd.clone() {
        Some(unit) => Box::new(systemd::Systemd::new(layout, record, unit)),
        None => open_fs(layout, record),
    }
}

/// The cgroupfs manager for `record.path`.
pub(crate) fn open_fs(layout: &Layout, record: Record) -> Box<dyn Manager> {
    match layout {
        Layout::Unified(root) => Box::new(v2::V2::new(root.clone(), record)),
        Layout::V1 {
            hierarchies,
            unified,
        } => Box::new(v1::V1::new(hierarchies.clone(), unified.clone(), record)),
    }
}

/// The manager of `--cgroup-manager disabled`: no cgroup at all. Limits
/// cannot be applied without one, so asking for them is an error.
pub fn disabled() -> Box<dyn Manager> {
    Box::new(Disabled)
}

#[derive(Debug)]
struct Disabled;

impl Manager for Disabled {
    fn create(&mut self) -> Result<()> {
        Ok(())
    }
    fn enter_v1(&self) -> Result<()> {
        Ok(())
    }
    fn v2_dir(&self) -> Option<PathBuf> {
        None
    }
    fn set(&self, r: &LinuxResources) -> Result<()> {
        if resources::sets_limits(r) {
            return Err(Error::Unsupported(
                "linux.resources without a cgroup (--cgroup-manager disabled, or rootless without a delegated cgroup)",
            ));
        }
        Ok(())
    }
    fn freeze(&self, _frozen: bool) -> Result<()> {
        Err(Error::Unsupported(
            "freezing without a cgroup (--cgroup-manager disabled, or rootless without a delegated cgroup)",
        ))
    }
    fn set_devices(&self, _rules: &[devices::Rule]) -> Result<()> {
        Ok(())
    }
    fn frozen(&self) -> bool {
        false
    }
    fn pids(&self) -> Result<Vec<Pid>> {
        Ok(Vec::new())
    }
    fn stats(&self) -> Result<stats::Stats> {
        Err(Error::Unsupported(
            "statistics without a cgroup (--cgroup-manager disabled, or rootless without a delegated cgroup)",
        ))
    }
    fn oom_watch(&self) -> Result<OwnedFd> {
        Err(Error::Unsupported(
            "OOM events without a cgroup (--cgroup-manager disabled, or rootless without a delegated cgroup)",
        ))
    }
    fn destroy(&self) -> Result<()> {
        Ok(())
    }
    fn record(&self) -> Record {
        Record::default()
    }
    fn placement(&self, sub: &Sub) -> Result<Placement> {
        if !sub.is_empty() {
            return Err(Error::Unsupported(
                "exec --cgroup without a cgroup (--cgroup-manager disabled, or rootless without a delegated cgroup)",
            ));
        }
        Ok(Placement::default())
    }
}

/// Applies one [`resources::Setting`] in `dir`, refusing a file the kernel
/// does not offer rather than letting the write fail obscurely.
pub(crate) fn apply(dir: &Path, s: &resources::Setting) -> Result<()> {
    let path = dir.join(&s.file);
    if !path.exists() {
        return Err(Error::NoFile {
            file: s.file.clone(),
            dir: dir.to_path_buf(),
        });
    }
    write(&path, &s.value)
}

/// Attaches the eBPF device filter built from `rules` to a cgroup2 directory.
pub(crate) fn attach_device_filter(dir: &Path, rules: &[devices::Rule]) -> Result<()> {
    let insns = ebpf::program(rules);
    let prog = rt_sys::bpf::load_device_program(&insns)
        .map_err(|(source, log)| Error::BpfLoad { log, source })?;
    let cgroup = open_dir(dir)?;
    use std::os::fd::AsFd;
    rt_sys::bpf::attach_device_program(cgroup.as_fd(), prog.as_fd()).map_err(|source| {
        Error::BpfAttach {
            path: dir.to_path_buf(),
            source,
        }
    })
}

/// Writes values to one control file, each with its own write(2), through
/// a descriptor opened at the first.
pub(crate) struct Writer {
    path: PathBuf,
    file: Option<std::fs::File>,
}

impl Writer {
    pub(crate) fn new(path: PathBuf) -> Writer {
        Writer { path, file: None }
    }

    pub(crate) fn write(&mut self, value: &str) -> Result<()> {
        let file = match &mut self.file {
            Some(f) => f,
            None => {
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&self.path)
                    .map_err(|source| Error::Write {
                        path: self.path.clone(),
                        value: value.to_string(),
                        source,
                    })?;
                self.file.insert(f)
            }
        };
        write_once(file, &self.path, value)
    }
}

/// Writes `value` to the open control file `file` (at `path`) in one
/// write: a control file takes a value whole, so a short write is an error.
pub(crate) fn write_once(file: &std::fs::File, path: &Path, value: &str) -> Result<()> {
    use std::io::Write;
    let err = |source| Error::Write {
        path: path.to_path_buf(),
        value: value.to_string(),
        source,
    };
    match (&*file).write(value.as_bytes()) {
        Ok(n) if n == value.len() => Ok(()),
        Ok(_) => Err(err(std::io::ErrorKind::WriteZero.into())),
        Err(e) => Err(err(e)),
    }
}

pub(crate) fn write(path: &Path, value: &str) -> Result<()> {
    std::fs::write(path, value).map_err(|source| Error::Write {
        path: path.to_path_buf(),
        value: value.to_string(),
        source,
    })
}

/// The cgroup2 part of [`Manager::enter`].
pub(crate) fn enter_v2(dir: &Path, whole: bool) -> Result<Option<OwnedFd>> {
    if whole {
        write(&dir.join("cgroup.procs"), "0")?;
        return Ok(None);
    }
    open_dir(dir).map(Some)
}

/// Opens a cgroup2 directory for CLONE_INTO_CGROUP.
pub(crate) fn open_dir(path: &Path) -> Result<OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(path)
        .map(OwnedFd::from)
        .map_err(|source| Error::Read {
            path: path.to_path_buf(),
            source,
        })
}

/// An inotify descriptor watching `file` for changes (v2's memory.events).
pub(crate) fn watch_file(file: &Path) -> Result<OwnedFd> {
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
    use std::os::fd::AsFd;
    let err = |e: nix::errno::Errno| Error::Read {
        path: file.to_path_buf(),
        source: e.into(),
    };
    let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK).map_err(err)?;
    inotify
        .add_watch(file, AddWatchFlags::IN_MODIFY)
        .map_err(err)?;
    // The watch belongs to the inotify instance, which the duplicate keeps.
    inotify
        .as_fd()
        .try_clone_to_owned()
        .map_err(|source| Error::Read {
            path: file.to_path_buf(),
            source,
        })
}

pub(crate) fn read(path: &Path) -> Result<String> {
    rt_sys::read_proc(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Creates `leaf` and any missing parents below `root`, appending what it made
/// to `created`.
pub(crate) fn create_dirs(root: &Path, inner: &str, created: &mut Vec<PathBuf>) -> Result<PathBuf> {
    let mut dir = root.to_path_buf();
    for part in inner.split('/').filter(|p| !p.is_empty()) {
        dir.push(part);
        match std::fs::create_dir(&dir) {
            Ok(()) => created.push(dir.clone()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(source) => return Err(Error::Create { path: dir, source }),
        }
    }
    Ok(dir)
}

/// Removes the directories in `created`, deepest first. A directory another
/// container still uses (EBUSY, ENOTEMPTY) is kept unless it is `leaf`.
pub(crate) fn remove_dirs(created: &[PathBuf], leaves: &[PathBuf]) -> Result<()> {
    let mut first_err = None;
    // The leaves first, even if not recorded as created (an rt killed between
    // mkdir and saving its state), then the parents rt made, deepest first.
    let order = leaves
        .iter()
        .chain(created.iter().rev().filter(|d| !leaves.contains(d)));
    for dir in order {
        let is_leaf = leaves.contains(dir);
        // Usually the directory is empty and one rmdir does it. Otherwise
        // (EBUSY: sub-cgroups of the container's own, from `exec --cgroup`
        // or made by the workload when delegated, or a task still leaving)
        // the sub-cgroups go first, deepest first, then rmdir is retried.
        let removed = match std::fs::remove_dir(dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(_) => {
                if is_leaf {
                    remove_descendants(dir);
                }
                remove_dir_retrying(dir, is_leaf)
            }
        };
        match removed {
            Ok(()) => {}
            Err(e) if is_leaf => {
                first_err.get_or_insert(Error::Remove {
                    path: dir.clone(),
                    source: e,
                });
            }
            Err(_) => {}
        }
    }
    first_err.map_or(Ok(()), Err)
}

/// Removes every directory below `dir`, deepest first; errors surface when
/// `dir` itself cannot be removed.
fn remove_descendants(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            let child = e.path();
            remove_descendants(&child);
            let _ = remove_dir_retrying(&child, true);
        }
    }
}

fn remove_dir_retrying(dir: &Path, retry: bool) -> std::io::Result<()> {
    // A killed task leaves the cgroup a moment after its exit is visible; rmdir
    // answers EBUSY meanwhile. Bounded: at most ~1 s.
    let mut delay = std::time::Duration::from_millis(1);
    for _ in 0..10 {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if retry && e.raw_os_error() == Some(libc::EBUSY) => {
                std::thread::sleep(delay);
                delay *= 2;
            }
            Err(e) => return Err(e),
        }
    }
    std::fs::remove_dir(dir)
}

/// Re-reads `file` until `done` says the state was reached: freezing is
/// asynchronous in the kernel. Bounded (about 2 s), then an error.
pub(crate) fn wait_state(file: &Path, done: impl Fn(&str) -> bool) -> Result<()> {
    let mut delay = std::time::Duration::from_micros(100);
    for _ in 0..20 {
        if done(&read(file)?) {
            return Ok(());
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(std::time::Duration::from_millis(200));
    }
    Err(Error::Timeout(file.to_path_buf()))
}

pub(crate) fn parse_pids(text: &str) -> Vec<Pid> {
    text.lines()
        .filter_map(|l| l.trim().parse().ok())
        .map(Pid::from_raw)
        .collect()
}

#[cfg(test)]
mod sub_tests {
    use super::*;

    #[test]
    fn exec_cgroup_forms() {
        let s = Sub::parse(&["a/b".into(), "memory,pids:m".into()]).unwrap();
        assert_eq!(s.all.as_deref(), Some("a/b"));
        assert_eq!(s.for_controllers(&["pids".into()]), Some("m"));
        assert_eq!(
            s.for_controllers(&["cpu".into(), "cpuacct".into()]),
            Some("a/b")
        );
        for bad in ["../x", "", "/", "a/../b", "cpu:.."] {
            assert!(Sub::parse(&[bad.into()]).is_err(), "{bad}");
        }
        assert!(Sub::parse(&["a".into(), "b".into()]).is_err());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_paths() {
        assert_eq!(container_path(None, "abc").unwrap(), "/abc");
        assert_eq!(
            container_path(Some(Path::new("/a/b")), "x").unwrap(),
            "/a/b"
        );
        assert_eq!(
            container_path(Some(Path::new("a//b/")), "x").unwrap(),
            "/a/b"
        );
        assert!(container_path(Some(Path::new("/a/../../etc")), "x").is_err());
        assert!(container_path(Some(Path::new("system.slice:rt:x")), "x").is_err());
        assert!(container_path(Some(Path::new("/")), "x").is_err());
    }
}
