//! Container state under `--root`: one directory per container holding
//! `state.json`, the `exec.fifo` that `start` writes to, and a lock.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use nix::unistd::Pid;
use oci_spec::runtime::Spec;
use serde::{Deserialize, Serialize};

/// Errors of the state store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("container {0} does not exist")]
    NotFound(String),
    #[error("container with given ID already exists: {0}")]
    AlreadyExists(String),
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("locking {path}")]
    Lock {
        path: PathBuf,
        #[source]
        source: nix::errno::Errno,
    },
    #[error("{path} has state format {version}, newer than this rt's ({STATE_VERSION}): use the rt that created the container")]
    Version { path: PathBuf, version: u32 },
    #[error("parsing {path}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// The runtime-spec's status values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Creating,
    Created,
    Running,
    Paused,
    Stopped,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        };
        f.write_str(s)
    }
}

/// The format of state.json this rt writes. 0 (absent) is the format rt
/// wrote before the field existed, which this one reads as 1; a newer one
/// is refused rather than misread.
pub const STATE_VERSION: u32 = 1;

/// What rt keeps of a container between commands.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    /// [`STATE_VERSION`] when written.
    #[serde(default)]
    pub version: u32,
    pub id: String,
    /// The init's host pid; 0 until it is known.
    pub pid: i32,
    /// The init's start time (clock ticks since boot), so that a recycled pid is
    /// not mistaken for the container.
    #[serde(default)]
    pub start_time: u64,
    /// `creating` until create finished, then `created`; the live status is
    /// derived by [`ContainerDir::status`].
    pub stored_status: Status,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub created: String,
    pub owner: String,
    #[serde(default)]
    pub annotations: HashMap<String, String>,
    /// The isolation backend that runs the container.
    pub backend: String,
    #[serde(default)]
    pub cgroup: Option<rt_cgroups::Record>,
    /// The spec as it was at create (hooks at delete, cgroup paths, namespaces
    /// for exec), so config.json is never read again.
    pub config: Spec,
    /// What rt built of the container's network (`run.rt.network`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<rt_netns::Attached>,
    /// The directory of a VM container's supervisor sockets (its state
    /// directory), for the backend's requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_dir: Option<PathBuf>,
}

/// The runtime-spec state document (`rt state`, hooks' stdin).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OciState<'a> {
    pub oci_version: &'static str,
    pub id: &'a str,
    pub pid: i32,
    pub status: Status,
    pub bundle: &'a Path,
    pub rootfs: &'a Path,
    pub created: &'a str,
    pub owner: &'a str,
    #[serde(skip_serializing_if = "HashMap::is_empty")]
    pub annotations: &'a HashMap<String, String>,
}

pub const OCI_VERSION: &str = "1.2.0";

impl State {
    pub fn oci(&self, status: Status) -> OciState<'_> {
        let pid = if status == Status::Stopped {
            0
        } else {
            self.pid
        };
        OciState {
            oci_version: OCI_VERSION,
            id: &self.id,
            pid,
            status,
            bundle: &self.bundle,
            rootfs: &self.rootfs,
            created: &self.created,
            owner: &self.owner,
            annotations: &self.annotations,
        }
    }

    /// Whether the recorded init is alive (not a zombie, not a recycled pid).
    pub fn init_alive(&self) -> bool {
        self.pid > 0
            && proc_stat(Pid::from_raw(self.pid)).is_some_and(|(state, start)| {
                state != 'Z' && state != 'X' && (self.start_time == 0 || start == self.start_time)
            })
    }
}

/// The state letter and start time of `pid`, from `/proc/<pid>/stat`.
pub fn proc_stat(pid: Pid) -> Option<(char, u64)> {
    let text = rt_sys::read_proc(format!("/proc/{pid}/stat")).ok()?;
    let after = text.rsplit_once(')')?.1;
    let mut fields = after.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // After the state (field 3), start time is field 22: 19 more fields on.
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

/// The state root (`--root`).
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// One container's directory, locked for the lifetime of this value.
#[derive(Debug)]
pub struct ContainerDir {
    pub dir: PathBuf,
    _lock: Flock<File>,
}

impl Store {
    pub fn new(root: impl Into<PathBuf>) -> Store {
        Store { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// Makes the container's directory; exactly one of two concurrent creates of
    /// one id succeeds (mkdir is atomic), the other gets `AlreadyExists`.
    pub fn create(&self, id: &str) -> Result<ContainerDir> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(&self.root)
            .map_err(io("creating state root", &self.root))?;
        let dir = self.dir(id);
        match fs::DirBuilder::new().mode(0o711).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(Error::AlreadyExists(id.to_string()))
            }
            Err(e) => return Err(io("creating", &dir)(e)),
        }
        lock(dir)
    }

    /// Locks an existing container's directory.
    pub fn open(&self, id: &str) -> Result<ContainerDir> {
        let dir = self.dir(id);
        if !dir.is_dir() {
            return Err(Error::NotFound(id.to_string()));
        }
        let locked = lock(dir)?;
        // It may have been deleted while we waited for the lock.
        if !locked.dir.is_dir() {
            return Err(Error::NotFound(id.to_string()));
        }
        Ok(locked)
    }

    /// Ids of every container under the root.
    pub fn ids(&self) -> Result<Vec<String>> {
        let entries = match fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io("reading", &self.root)(e)),
        };
        let mut ids: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join(STATE_FILE).exists())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        ids.sort();
        Ok(ids)
    }
}

fn lock(dir: PathBuf) -> Result<ContainerDir> {
    let file = File::open(&dir).map_err(io("opening", &dir))?;
    let lock = Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, source)| Error::Lock {
        path: dir.clone(),
        source,
    })?;
    Ok(ContainerDir { dir, _lock: lock })
}

pub const STATE_FILE: &str = "state.json";
pub const EXEC_FIFO: &str = "exec.fifo";

impl ContainerDir {
    pub fn path(&self) -> &Path {
        &self.dir
    }

    pub fn fifo(&self) -> PathBuf {
        self.dir.join(EXEC_FIFO)
    }

    pub fn load(&self) -> Result<State> {
        let path = self.dir.join(STATE_FILE);
        let text = fs::read(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                let id = self.dir.file_name().unwrap_or_default().to_string_lossy();
                Error::NotFound(id.into_owned())
            } else {
                io("reading", &path)(e)
            }
        })?;
        let st: State = serde_json::from_slice(&text).map_err(|source| Error::Parse {
            path: path.clone(),
            source,
        })?;
        if st.version > STATE_VERSION {
            return Err(Error::Version {
                path,
                version: st.version,
            });
        }
        Ok(st)
    }

    /// Writes state.json atomically: a temporary file, then exchanged with
    /// state.json (renameat2 RENAME_EXCHANGE) and the old one unlinked, or
    /// renamed into place when there is none yet.
    ///
    /// Not a plain rename over the old file: ext4 (auto_da_alloc) starts
    /// writing a file back when it replaces another by rename, which cost
    /// 0.2 ms per save here, three times per `create`; an exchange does not.
    /// The protection that writeback gives — a state file that survives a
    /// power cut — is worth nothing for state whose processes die with the
    /// host (and /run is normally a tmpfs).
    pub fn save(&self, state: &State) -> Result<()> {
        let tmp = self.dir.join(".state.json.tmp");
        let path = self.dir.join(STATE_FILE);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io("writing", &tmp))?;
        let text = serde_json::to_vec(state).map_err(|source| Error::Parse {
            path: path.clone(),
            source,
        })?;
        f.write_all(&text).map_err(io("writing", &tmp))?;
        drop(f);
        use nix::fcntl::{renameat2, RenameFlags};
        match renameat2(None, &tmp, None, &path, RenameFlags::RENAME_EXCHANGE) {
            Ok(()) => fs::remove_file(&tmp).map_err(io("removing", &tmp)),
            // No state.json yet, or a filesystem without exchange.
            Err(nix::errno::Errno::ENOENT | nix::errno::Errno::EINVAL) => {
                fs::rename(&tmp, &path).map_err(io("renaming", &path))
            }
            Err(e) => Err(io("renaming", &path)(e.into())),
        }
    }

    /// The live status of the container described by `state`.
    pub fn status(&self, state: &State, frozen: impl FnOnce() -> bool) -> Status {
        if !state.init_alive() {
            return if state.pid == 0 && state.stored_status == Status::Creating {
                Status::Creating
            } else {
                Status::Stopped
            };
        }
        if state.stored_status == Status::Creating {
            return Status::Creating;
        }
        if self.fifo().exists() {
            return Status::Created;
        }
        if frozen() {
            return Status::Paused;
        }
        Status::Running
    }

    pub fn remove(self) -> Result<()> {
        fs::remove_dir_all(&self.dir).map_err(io("removing", &self.dir))
    }
}

/// RFC 3339 time with nanoseconds, as runc writes `created`.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_twice_gives_already_exists() {
        let tmp = std::env::temp_dir().join(format!("rt-state-{}", std::process::id()));
        let store = Store::new(&tmp);
        let first = store.create("a").unwrap();
        drop(first);
        let e = store.create("a").unwrap_err();
        assert!(e.to_string().contains("already exists"), "{e}");
        let e = store.open("nope").unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
        fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn state_format_version() {
        let tmp = std::env::temp_dir().join(format!("rt-state-v-{}", std::process::id()));
        let store = Store::new(&tmp);
        let dir = store.create("v").unwrap();
        let mut st: State = serde_json::from_value(serde_json::json!({
            "id": "v", "pid": 0, "stored_status": "created", "bundle": "/b", "rootfs": "/b/r",
            "created": "now", "owner": "root", "backend": "container",
            "config": {"ociVersion": "1.0.0"}
        }))
        .unwrap();
        // Written before the field existed: read as it is.
        assert_eq!(st.version, 0);
        dir.save(&st).unwrap();
        dir.load().unwrap();
        st.version = STATE_VERSION + 1;
        dir.save(&st).unwrap();
        let e = dir.load().unwrap_err().to_string();
        assert!(e.contains("newer than this rt's"), "{e}");
        drop(dir);
        fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn saving_again_replaces_the_state_and_leaves_no_temporary_file() {
        let tmp = std::env::temp_dir().join(format!("rt-state-s-{}", std::process::id()));
        let store = Store::new(&tmp);
        let dir = store.create("s").unwrap();
        let mut st: State = serde_json::from_value(serde_json::json!({
            "id": "s", "pid": 0, "stored_status": "creating", "bundle": "/b", "rootfs": "/b/r",
            "created": "now", "owner": "root", "backend": "container",
            "config": {"ociVersion": "1.0.0"}
        }))
        .unwrap();
        for pid in [0, 41, 42] {
            st.pid = pid;
            dir.save(&st).unwrap();
            assert_eq!(dir.load().unwrap().pid, pid);
        }
        let names: Vec<String> = fs::read_dir(tmp.join("s"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, [STATE_FILE], "{names:?}");
        drop(dir);
        fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn reads_own_proc_stat() {
        let (state, start) = proc_stat(nix::unistd::getpid()).unwrap();
        assert!(state == 'R' || state == 'S');
        assert!(start > 0);
    }
}
