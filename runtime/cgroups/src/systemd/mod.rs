//! The systemd cgroup driver (`--systemd-cgroup`, `--cgroup-manager
//! systemd`): systemd owns the container's cgroup as a transient unit, and
//! rt reaches its files through the cgroupfs manager of the same layout.
//!
//! - [`Unit`] turns a spec's `slice:prefix:name` cgroupsPath into a unit
//!   name (`prefix-name.scope`, or a `.slice` name as is) in a slice, as
//!   runc does.
//! - `create` asks systemd for the unit (StartTransientUnit) with a
//!   placeholder process in it: a scope needs a process to exist, and the
//!   container's own processes are born into it later the way they are
//!   under cgroupfs (clone3 into the cgroup on v2, `tasks` on v1).
//! - `set` and `set_devices` send what systemd has a property for
//!   (SetUnitProperties, see [`props`]) and write every file as the
//!   cgroupfs driver does.
//! - `destroy` stops the unit (and resets it if it failed).
//! - [`annotations`]: runc's `org.systemd.property.*` annotations, extra
//!   properties for the new unit.
//!
//! The D-Bus conversation happens in a helper process forked for it: zbus
//! starts threads, and rt forks the container afterwards (see
//! `rt_sys::fork`, which refuses a multi-threaded process).

pub mod annotations;
mod bus;
pub mod props;

use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::sys::wait::waitpid;
use nix::unistd::{ForkResult, Pid};
use oci_spec::runtime::LinuxResources;
use serde::{Deserialize, Serialize};

use crate::{devices, stats, Error, Layout, Manager, Placement, Record, Result, Sub};

/// How long a conversation with systemd may take before the helper is
/// killed and the operation fails.
const BUS_TIMEOUT: Duration = Duration::from_secs(60);

/// A container's systemd unit, as the state records it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Unit {
    /// `prefix-name.scope`, or a `.slice` name.
    pub name: String,
    /// The slice it lives in.
    pub slice: String,
    /// Whether it belongs to the user's systemd instance.
    #[serde(default)]
    pub user: bool,
    /// Extra properties for StartTransientUnit, from the spec's
    /// `org.systemd.property.*` annotations (create only: not recorded).
    #[serde(skip)]
    pub properties: Vec<props::Property>,
}

impl Unit {
    /// The unit for a spec's cgroupsPath (`[slice]:[prefix]:[name]`); an
    /// empty one means `:rt:<id>`, and an empty slice `system.slice`
    /// (`user.slice` for the user's instance).
    pub fn parse(cgroups_path: Option<&str>, id: &str, user: bool) -> Result<Unit> {
        let raw = cgroups_path.filter(|p| !p.is_empty());
        let (slice, prefix, name) = match raw {
            None => ("", "rt", id),
            Some(p) => {
                let parts: Vec<&str> = p.split(':').collect();
                let [slice, prefix, name] = parts[..] else {
                    return Err(Error::SystemdPath(p.to_string()));
                };
                (slice, prefix, name)
            }
        };
        if name.is_empty() || name.contains('/') || prefix.contains('/') {
            return Err(Error::SystemdPath(raw.unwrap_or(id).to_string()));
        }
        let slice = match slice {
            "" if user => "user.slice",
            "" => "system.slice",
            s => s,
        };
        expand_slice(slice)?;
        let name = if name.ends_with(".slice") {
            expand_slice(name)?;
            name.to_string()
        } else if prefix.is_empty() {
            format!("{name}.scope")
        } else {
            format!("{prefix}-{name}.scope")
        };
        Ok(Unit {
            name,
            slice: slice.to_string(),
            user,
            properties: Vec::new(),
        })
    }

    /// Where systemd puts the unit's cgroup in the system instance: the
    /// slice's path, then the unit. (The user instance nests it below its
    /// own cgroup; `create` asks systemd for the real path.)
    pub fn cgroup_path(&self) -> Result<String> {
        let parent = expand_slice(&self.slice)?;
        if self.name.ends_with(".slice") {
            return expand_slice(&self.name);
        }
        Ok(format!("{}/{}", parent.trim_end_matches('/'), self.name))
    }
}

/// A slice name as its cgroup path: `a-b.slice` is `/a.slice/a-b.slice`,
/// and `-.slice` the root. runc's rules and its error.
pub fn expand_slice(slice: &str) -> Result<String> {
    let bad = || Error::Slice(slice.to_string());
    let stem = slice.strip_suffix(".slice").ok_or_else(bad)?;
    if stem.is_empty() || slice.contains('/') {
        return Err(bad());
    }
    if stem == "-" {
        return Ok("/".into());
    }
    let mut path = String::new();
    let mut prefix = String::new();
    for part in stem.split('-') {
        if part.is_empty() {
            return Err(bad());
        }
        path.push_str(&format!("/{prefix}{part}.slice"));
        prefix.push_str(part);
        prefix.push('-');
    }
    Ok(path)
}

/// The systemd driver's manager: the unit, and the cgroupfs manager of its
/// directory on this host's layout.
#[derive(Debug)]
pub(crate) struct Systemd {
    unit: Unit,
    layout: Layout,
    inner: Box<dyn Manager>,
    /// The process that holds a new scope open until the container's first
    /// process is in it (killed when the manager that made it is dropped).
    placeholder: Option<Pid>,
}

impl Systemd {
    pub(crate) fn new(layout: &Layout, record: Record, unit: Unit) -> Systemd {
        let inner = crate::open_fs(layout, record);
        Systemd {
            unit,
            layout: layout.clone(),
            inner,
            placeholder: None,
        }
    }

    fn v2(&self) -> bool {
        matches!(self.layout, Layout::Unified(_))
    }

    fn send(&self, props: Vec<props::Property>) -> Result<()> {
        if props.is_empty() {
            return Ok(());
        }
        let (unit, user) = (self.unit.name.clone(), self.unit.user);
        in_helper("setting unit properties", move || {
            bus::set(&unit, &props, user).map(|()| String::new())
        })
        .map(drop)
    }
}

impl Drop for Systemd {
    fn drop(&mut self) {
        if let Some(pid) = self.placeholder.take() {
            let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
            let _ = waitpid(pid, None);
        }
    }
}

impl Manager for Systemd {
    fn create(&mut self) -> Result<()> {
        let scope = !self.unit.name.ends_with(".slice");
        let pids = if scope {
            let pid = placeholder()?;
            self.placeholder = Some(pid);
            vec![pid.as_raw() as u32]
        } else {
            Vec::new()
        };
        let description = format!("rt container {}", self.unit.name);
        let mut base = props::base(&self.unit.slice, &self.unit.name, &description, &pids);
        // After rt's own: systemd applies the last assignment of a name.
        base.extend(self.unit.properties.iter().cloned());
        let (unit, user) = (self.unit.clone(), self.unit.user);
        let path = in_helper("starting the container's unit", move || {
            bus::start(&unit.name, &base, user)?;
            bus::control_group(&unit.name, user)
        })?;
        let mut record = self.inner.record();
        if !path.is_empty() && path != record.path {
            record.path = path;
            self.inner = crate::open_fs(&self.layout, record);
        }
        // The user's instance delegates what the user may have; its
        // ancestors' subtree_control is not the user's to write (v2).
        if self.unit.user && self.v2() {
            return Ok(());
        }
        // Hierarchies systemd does not manage (v1 cpuset, freezer, ...),
        // and on v2 the controllers it does not enable (hugetlb, rdma, misc).
        self.inner.create()
    }

    fn enter_v1(&self) -> Result<()> {
        self.inner.enter_v1()
    }

    fn open_v1_tasks(&self) -> Result<Vec<std::fs::File>> {
        self.inner.open_v1_tasks()
    }

    fn enter_v1_through(&self, tasks: Vec<std::fs::File>) -> Result<()> {
        self.inner.enter_v1_through(tasks)
    }

    fn v2_dir(&self) -> Option<std::path::PathBuf> {
        self.inner.v2_dir()
    }

    fn set(&self, resources: &LinuxResources) -> Result<()> {
        let props = if self.v2() {
            let dir = self.placement(&Sub::default())?.v2;
            let has = |f: &str| dir.as_ref().is_some_and(|d| d.join(f).exists());
            props::from_v2(&crate::resources::v2(resources, &has)?)?
        } else {
            props::from_v1(&crate::resources::v1(resources)?)?
        };
        self.send(props)?;
        self.inner.set(resources)
    }

    fn set_devices(&self, rules: &[devices::Rule]) -> Result<()> {
        // The user's instance has no device control, and an unprivileged
        // rt cannot load a device filter (as runc and crun, rootless
        // containers get none: their user namespace cannot make device
        // nodes, and file permissions govern the nodes bound in).
        if self.unit.user {
            return Ok(());
        }
        let proc_devices = std::fs::read_to_string("/proc/devices").unwrap_or_default();
        self.send(props::devices(rules, &proc_devices))?;
        self.inner.set_devices(rules)
    }

    fn freeze(&self, frozen: bool) -> Result<()> {
        self.inner.freeze(frozen)
    }

    fn frozen(&self) -> bool {
        self.inner.frozen()
    }

    fn pids(&self) -> Result<Vec<Pid>> {
        self.inner.pids()
    }

    fn stats(&self) -> Result<stats::Stats> {
        self.inner.stats()
    }

    fn oom_watch(&self) -> Result<OwnedFd> {
        self.inner.oom_watch()
    }

    fn destroy(&self) -> Result<()> {
        let (unit, user) = (self.unit.name.clone(), self.unit.user);
        in_helper("stopping the container's unit", move || {
            bus::stop(&unit, user).map(|()| String::new())
        })?;
        self.inner.destroy()
    }

    fn record(&self) -> Record {
        Record {
            systemd: Some(self.unit.clone()),
            ..self.inner.record()
        }
    }

    fn placement(&self, sub: &Sub) -> Result<Placement> {
        self.inner.placement(sub)
    }
}

/// Forks the process that holds a new scope open: it waits, doing nothing,
/// until killed (by the manager's drop, by systemd stopping the unit, or
/// by the death of its parent).
fn placeholder() -> Result<Pid> {
    let proof = rt_sys::single_threaded().map_err(Error::Helper)?;
    let devnull = std::fs::File::open("/dev/null").map_err(|source| Error::Read {
        path: "/dev/null".into(),
        source,
    })?;
    let parent = nix::unistd::getpid();
    match rt_sys::fork(proof).map_err(Error::Helper)? {
        ForkResult::Child => {
            let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
            if nix::unistd::getppid() != parent {
                rt_sys::exit_now(0);
            }
            // Nothing of the parent's stays open in it: not its stdio (a
            // caller waiting for EOF), not its locks.
            for fd in 0..3 {
                let _ = nix::unistd::dup2(std::os::fd::AsRawFd::as_raw_fd(&devnull), fd);
            }
            let _ = rt_sys::close_fds_except(3, devnull.as_fd());
            loop {
                nix::unistd::pause();
            }
        }
        ForkResult::Parent { child } => Ok(child),
    }
}

/// Runs `talk` in a forked child and returns the string it answers, or its
/// error as [`Error::Systemd`]. The child is killed after [`BUS_TIMEOUT`].
fn in_helper(
    what: &'static str,
    talk: impl FnOnce() -> std::result::Result<String, String>,
) -> Result<String> {
    let proof = rt_sys::single_threaded().map_err(Error::Helper)?;
    let (rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| Error::Helper(rt_sys::Error::Syscall("pipe2", e)))?;
    match rt_sys::fork(proof).map_err(Error::Helper)? {
        ForkResult::Child => {
            drop(rd);
            // A panic must not unwind into the parent's frames copied here.
            let answer = std::panic::catch_unwind(std::panic::AssertUnwindSafe(talk))
                .unwrap_or_else(|_| Err("the D-Bus helper panicked".into()));
            let line = match answer {
                Ok(s) => format!("0{s}"),
                Err(e) => format!("1{e}"),
            };
            let _ = nix::unistd::write(&wr, line.as_bytes());
            rt_sys::exit_now(0)
        }
        ForkResult::Parent { child } => {
            drop(wr);
            let answer = read_answer(&rd, BUS_TIMEOUT);
            if answer.is_none() {
                let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
            }
            let _ = waitpid(child, None);
            let answer = answer.ok_or_else(|| Error::Systemd {
                what,
                message: format!("no answer within {} s", BUS_TIMEOUT.as_secs()),
            })?;
            match answer.split_at_checked(1) {
                Some(("0", rest)) => Ok(rest.to_string()),
                Some(("1", rest)) => Err(Error::Systemd {
                    what,
                    message: rest.to_string(),
                }),
                _ => Err(Error::Systemd {
                    what,
                    message: "the D-Bus helper died without an answer".into(),
                }),
            }
        }
    }
}

/// Everything written to `rd` until EOF, or None on timeout.
fn read_answer(rd: &OwnedFd, timeout: Duration) -> Option<String> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        let ms = PollTimeout::try_from(left.as_millis().min(60_000) as i32).ok()?;
        let mut fds = [PollFd::new(rd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, ms) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return None,
        }
        match nix::unistd::read(std::os::fd::AsRawFd::as_raw_fd(rd), &mut buf) {
            Ok(0) => return Some(String::from_utf8_lossy(&out).into_owned()),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return Some(String::from_utf8_lossy(&out).into_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroups_paths_become_units() {
        let u = Unit::parse(Some("machine.slice:libpod:abc"), "id", false).unwrap();
        assert_eq!(u.name, "libpod-abc.scope");
        assert_eq!(u.slice, "machine.slice");
        assert_eq!(u.cgroup_path().unwrap(), "/machine.slice/libpod-abc.scope");
        let u = Unit::parse(None, "id", false).unwrap();
        assert_eq!(
            (u.name.as_str(), u.slice.as_str()),
            ("rt-id.scope", "system.slice")
        );
        let u = Unit::parse(Some("::x"), "id", true).unwrap();
        assert_eq!(
            (u.name.as_str(), u.slice.as_str()),
            ("x.scope", "user.slice")
        );
        let u = Unit::parse(Some("a-b.slice:p:c-d.slice"), "id", false).unwrap();
        assert_eq!(u.name, "c-d.slice");
        assert_eq!(u.cgroup_path().unwrap(), "/c.slice/c-d.slice");
        let u = Unit::parse(Some("a-b.slice:p:n"), "id", false).unwrap();
        assert_eq!(u.cgroup_path().unwrap(), "/a.slice/a-b.slice/p-n.scope");
        let u = Unit::parse(Some("-.slice:p:n"), "id", false).unwrap();
        assert_eq!(u.cgroup_path().unwrap(), "/p-n.scope");
    }

    #[test]
    fn bad_paths_get_runcs_errors() {
        let e = Unit::parse(Some("/foo/bar"), "id", false).unwrap_err();
        assert_eq!(
            e.to_string(),
            "expected cgroupsPath to be of format \"slice:prefix:name\" for systemd cgroups, got \"/foo/bar\" instead"
        );
        assert!(Unit::parse(Some("a:b"), "id", false).is_err());
        assert!(Unit::parse(Some("a:b:c:d"), "id", false).is_err());
        assert!(Unit::parse(Some("x:p:n"), "id", false).is_err());
        assert!(Unit::parse(Some("system.slice:p:"), "id", false).is_err());
        for bad in ["a--b.slice", "-a.slice", ".slice", "a/b.slice", "a"] {
            assert_eq!(
                expand_slice(bad).unwrap_err().to_string(),
                format!("invalid slice name: {bad}")
            );
        }
        assert_eq!(
            expand_slice("a-b-c.slice").unwrap(),
            "/a.slice/a-b.slice/a-b-c.slice"
        );
    }

    #[test]
    fn the_helper_answers_and_reports_errors() {
        // Test threads make this process multi-threaded: the helper refuses
        // to fork then, which is the point of the check.
        if rt_sys::single_threaded().is_err() {
            let e = in_helper("x", || Ok(String::new())).unwrap_err();
            assert!(matches!(e, Error::Helper(_)), "{e}");
            return;
        }
        assert_eq!(in_helper("x", || Ok("hi".into())).unwrap(), "hi");
    }
}
