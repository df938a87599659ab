//! Which namespaces a container creates and which it joins, and the calls that
//! do it (run by the stage process, see `process::stage`).

use std::fs::File;
use std::path::{Path, PathBuf};

use nix::sched::{setns, unshare, CloneFlags};
use oci_spec::runtime::{Linux, LinuxNamespaceType};

/// Errors of namespace setup.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("opening namespace {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("joining namespace {path}")]
    Join {
        path: PathBuf,
        #[source]
        source: nix::errno::Errno,
    },
    #[error("unsharing namespaces {0:?}")]
    Unshare(CloneFlags, #[source] nix::errno::Errno),
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

pub fn flag(t: LinuxNamespaceType) -> CloneFlags {
    match t {
        LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
        LinuxNamespaceType::User => CloneFlags::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
        LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
        LinuxNamespaceType::Time => CloneFlags::from_bits_retain(libc::CLONE_NEWTIME),
    }
}

/// The namespaces of one container.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Namespaces created new (user excluded: see `new_user`).
    pub create: CloneFlags,
    /// Whether a new user namespace is created (first, before the others).
    pub new_user: bool,
    /// Namespaces joined by path, user first, mount last.
    pub join: Vec<(CloneFlags, PathBuf)>,
}

impl Plan {
    pub fn from_spec(linux: &Linux) -> Plan {
        Self::from_namespaces(linux.namespaces().as_deref().unwrap_or_default())
    }

    /// The plan of a spec's `linux.namespaces`.
    pub fn from_namespaces(namespaces: &[oci_spec::runtime::LinuxNamespace]) -> Plan {
        let mut plan = Plan {
            create: CloneFlags::empty(),
            new_user: false,
            join: Vec::new(),
        };
        for ns in namespaces {
            let f = flag(ns.typ());
            match ns.path() {
                Some(p) => plan.join.push((f, p.clone())),
                None if f == CloneFlags::CLONE_NEWUSER => plan.new_user = true,
                None => plan.create |= f,
            }
        }
        let rank = |f: &CloneFlags| match *f {
            CloneFlags::CLONE_NEWUSER => 0,
            CloneFlags::CLONE_NEWNS => 2,
            _ => 1,
        };
        plan.join.sort_by_key(|(f, _)| rank(f));
        plan
    }

    pub fn has(&self, f: CloneFlags) -> bool {
        self.create.contains(f)
            || self.join.iter().any(|(j, _)| *j == f)
            || (f == CloneFlags::CLONE_NEWUSER && self.new_user)
    }

    /// Whether the container runs in a user namespace (new or joined).
    pub fn in_user_ns(&self) -> bool {
        self.has(CloneFlags::CLONE_NEWUSER)
    }

    /// Opens every namespace to join first (paths resolve in the runtime's mount
    /// namespace), then joins them in order.
    pub fn join_all(&self) -> Result<()> {
        let deferred = self.join_deferring(CloneFlags::empty())?;
        join_opened(deferred)
    }

    /// Whether the plan joins an existing namespace of type `f`.
    pub fn joins(&self, f: CloneFlags) -> bool {
        self.join.iter().any(|(g, _)| *g == f)
    }

    /// Like [`Plan::join_all`], but the namespaces in `defer` are only
    /// opened, and returned for a child to join with [`join_opened`].
    ///
    /// The cgroup namespace is deferred by exec: clone3(CLONE_INTO_CGROUP)
    /// requires both the caller's cgroup and the target to lie inside the
    /// caller's cgroup namespace, so the process must be born into the
    /// container's cgroup before it joins that namespace.
    pub fn join_deferring(&self, defer: CloneFlags) -> Result<Vec<Opened>> {
        let mut files = Vec::with_capacity(self.join.len());
        for (f, path) in &self.join {
            let file = File::open(path).map_err(|source| Error::Open {
                path: path.clone(),
                source,
            })?;
            files.push(Opened {
                flag: *f,
                path: path.clone(),
                file,
            });
        }
        let (later, now): (Vec<Opened>, Vec<Opened>) =
            files.into_iter().partition(|o| defer.contains(o.flag));
        join_opened(now)?;
        Ok(later)
    }

    pub fn unshare_user(&self) -> Result<()> {
        unshare(CloneFlags::CLONE_NEWUSER).map_err(|e| Error::Unshare(CloneFlags::CLONE_NEWUSER, e))
    }

    /// Unshares the new namespaces but the cgroup one (see [`Plan::unshare_cgroup`]).
    pub fn unshare_rest(&self) -> Result<()> {
        let flags = self.create - CloneFlags::CLONE_NEWCGROUP;
        if flags.is_empty() {
            return Ok(());
        }
        unshare(flags).map_err(|e| Error::Unshare(flags, e))
    }

    /// The cgroup namespace is unshared by the init: the first process that is
    /// in the container's cgroup in every hierarchy (it was born into the
    /// cgroup2 one), so that namespace is rooted there.
    /// The flags to clone the init with straight from the parent, when
    /// nothing has to happen between making the namespaces and forking the
    /// init: no namespace to join, no user namespace (its maps are written
    /// in between) and no time namespace (its offsets must be written before
    /// any process is in it). None when the init needs a stage process.
    /// CLONE_NEWCGROUP is left out: the init unshares it once in its cgroups.
    pub fn direct_clone(&self) -> Option<CloneFlags> {
        let time = CloneFlags::from_bits_retain(libc::CLONE_NEWTIME);
        if !self.join.is_empty() || self.new_user || self.create.contains(time) {
            return None;
        }
        Some(self.create - CloneFlags::CLONE_NEWCGROUP)
    }

    pub fn unshare_cgroup(&self) -> Result<()> {
        if !self.create.contains(CloneFlags::CLONE_NEWCGROUP) {
            return Ok(());
        }
        unshare(CloneFlags::CLONE_NEWCGROUP)
            .map_err(|e| Error::Unshare(CloneFlags::CLONE_NEWCGROUP, e))
    }
}

/// A namespace file opened for joining.
#[derive(Debug)]
pub struct Opened {
    flag: CloneFlags,
    path: PathBuf,
    file: File,
}

/// Joins opened namespaces in order.
pub fn join_opened(opened: Vec<Opened>) -> Result<()> {
    for o in opened {
        setns(&o.file, o.flag).map_err(|source| Error::Join {
            path: o.path.clone(),
            source,
        })?;
    }
    Ok(())
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|source| Error::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes the time namespace offsets of the calling process's children
/// (after unshare(CLONE_NEWTIME), before the first fork into it). The caller
/// must hold CAP_SYS_TIME in the user namespace owning the time namespace:
/// in a new user namespace, after the id maps are written and it became root
/// there.
///
/// In a new user namespace the stage's setresuid changed its euid, which
/// makes it non-dumpable, and the /proc files of a non-dumpable process
/// belong to the host's root: opening timens_offsets then fails with EACCES
/// although the capability is there. The process is dumpable only for this
/// write, and as it was again before any child is forked (a dumpable init
/// could be ptraced from the container).
pub fn write_time_offsets(offsets: &[(String, i64, u32)]) -> Result<()> {
    use nix::sys::prctl;
    let text: String = offsets
        .iter()
        .map(|(clock, secs, nanos)| format!("{clock} {secs} {nanos}\n"))
        .collect();
    let was = prctl::get_dumpable().unwrap_or(false);
    let _ = prctl::set_dumpable(true);
    let written = write(Path::new("/proc/self/timens_offsets"), &text);
    let _ = prctl::set_dumpable(was);
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_orders_joins() {
        let linux: Linux = serde_json::from_str(
            r#"{"namespaces":[{"type":"mount","path":"/m"},{"type":"network","path":"/n"},
            {"type":"user","path":"/u"},{"type":"pid"},{"type":"uts"}]}"#,
        )
        .unwrap();
        let p = Plan::from_spec(&linux);
        assert_eq!(p.join[0].0, CloneFlags::CLONE_NEWUSER);
        assert_eq!(p.join[2].0, CloneFlags::CLONE_NEWNS);
        assert!(p
            .create
            .contains(CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWUTS));
        assert!(!p.new_user);
        assert!(p.in_user_ns());
        assert_eq!(p.direct_clone(), None, "joins need a stage");
    }

    #[test]
    fn only_new_namespaces_without_user_or_time_clone_the_init_directly() {
        let plan = |json: &str| {
            Plan::from_spec(
                &serde_json::from_str::<Linux>(&format!(r#"{{"namespaces":{json}}}"#)).unwrap(),
            )
        };
        let direct =
            plan(r#"[{"type":"pid"},{"type":"mount"},{"type":"cgroup"},{"type":"network"}]"#)
                .direct_clone()
                .unwrap();
        assert_eq!(
            direct,
            CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWNET
        );
        assert_eq!(
            plan(r#"[{"type":"pid"},{"type":"user"}]"#).direct_clone(),
            None
        );
        assert_eq!(
            plan(r#"[{"type":"pid"},{"type":"time"}]"#).direct_clone(),
            None
        );
        assert_eq!(plan("[]").direct_clone(), Some(CloneFlags::empty()));
    }
}
