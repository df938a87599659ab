//! The isolation backend of a container: its whole lifecycle, chosen per
//! container at create and recorded in its state (`State.backend`), so that
//! every later operation goes to the backend that made it.
//!
//! Everything around the backend is shared by the engine
//! ([`crate::container::Runtime`]): spec validation, the state store and its
//! status rules, networks, hooks, pid files, the CLI. A backend supplies the
//! mechanism of each operation; an operation a backend does not support is
//! refused by name ([`Error::NotSupported`], the trait's default). The
//! host-kernel namespaces backend is [`namespaces::Namespaces`]; the microVM
//! backend (QEMU with a guest agent that reuses this crate inside the guest)
//! plugs in here.

pub mod namespaces;
pub mod vm;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use nix::unistd::Pid;
use oci_spec::runtime::{LinuxResources, Process};

use crate::error::{Error, Result};
use crate::sandbox::{Created, ExecHow, HeadStart, Options, Sandbox};
use crate::state::{ContainerDir, State, Status};

/// runc's `checkpoint` flags, as podman, conmon and containerd pass them.
#[derive(Debug, Clone, Default)]
pub struct CheckpointOptions {
    pub image_path: PathBuf,
    pub work_path: Option<PathBuf>,
    pub leave_running: bool,
    pub tcp_established: bool,
    pub file_locks: bool,
    pub ext_unix_sk: bool,
    pub shell_job: bool,
    pub pre_dump: bool,
    pub parent_path: Option<PathBuf>,
    pub page_server: Option<String>,
    pub lazy_pages: bool,
    pub manage_cgroups_mode: Option<String>,
    pub empty_ns: Vec<String>,
}

/// How a live migration's source ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MigrationEnd {
    /// The destination failed: the source runs on.
    Resume,
    /// The destination runs: the source ends. With `same_host` the
    /// destination took the caller's interface over on this host, so the
    /// source's delete must leave its redirects alone.
    Moved { same_host: bool },
}

/// Where a restore's container comes from.
#[derive(Debug, Clone)]
pub enum RestoreFrom<'a> {
    /// A checkpoint image directory.
    Image(&'a Path),
    /// A live migration arriving at a QEMU URI, described by the image
    /// directory the sender wrote.
    Incoming { image: &'a Path, uri: &'a str },
}

/// The annotation that selects the backend.
pub const ANNOTATION: &str = "run.rt.isolation";

/// A container's lifecycle on one kind of isolation. The engine has already
/// checked the container's status for every call (a `kill` reaches only a
/// live container, `exec` a created or running one, …).
pub trait Isolation: std::fmt::Debug {
    /// The name recorded in the state (`container`, `vm`).
    fn name(&self) -> &'static str;

    /// Starts, as soon as config.json is read, work of `create` that can
    /// run while the engine parses it, makes the state directory and reads
    /// the cgroup layout. It sees only a skim of the config (annotations,
    /// namespaces); `create` decides on the parsed spec whether to use it.
    /// Best effort: whatever fails here is done in `create` as before.
    fn head_start(&self, _skim: &crate::spec::Skim) -> HeadStart {
        HeadStart::default()
    }

    /// Builds the sandbox, and its network when `sandbox.network` is set;
    /// returns once the container's process waits for `start`.
    fn create(&self, sandbox: Sandbox<'_>, state: &mut State) -> Result<Created>;

    /// The live status (from `creating` to `stopped`).
    fn status(&self, dir: &ContainerDir, st: &State) -> Status;

    /// Releases a created container's process; returns once it runs.
    fn start(&self, _dir: &ContainerDir, _st: &State) -> Result<()> {
        Err(self.refuse("start"))
    }

    /// Sends `signal` to the container's process, or with `all` to every
    /// process of the container.
    fn kill(&self, _st: &State, _signal: i32, _all: bool) -> Result<()> {
        Err(self.refuse("kill"))
    }

    /// Runs `process` in the container; returns once it has been exec'd.
    /// `status` is the container's (`paused` only with `how.ignore_paused`).
    fn exec(
        &self,
        _st: &State,
        _status: Status,
        _process: &Process,
        _opts: &Options,
        _how: &ExecHow,
    ) -> Result<Created> {
        Err(self.refuse("exec"))
    }

    fn pause(&self, _st: &State) -> Result<()> {
        Err(self.refuse("pause"))
    }

    fn resume(&self, _st: &State) -> Result<()> {
        Err(self.refuse("resume"))
    }

    /// Changes the limits of a live container.
    fn update(&self, _st: &State, _resources: &LinuxResources) -> Result<()> {
        Err(self.refuse("update"))
    }

    /// Host pids of every process of the container.
    fn pids(&self, _st: &State) -> Result<Vec<Pid>> {
        Err(self.refuse("ps"))
    }

    /// `ps` output made where the processes are (the guest's, for a VM);
    /// `None` when the host's `ps` filtered to [`Isolation::pids`] is right.
    fn ps(&self, _st: &State, _json: bool, _ps_args: &[String]) -> Result<Option<String>> {
        Ok(None)
    }

    /// `events` run where the cgroup is (a VM's guest), its output on our
    /// stdout, with `args` (`--stats`, `--interval D`); its exit code.
    /// `None`: the engine reads [`Isolation::cgroup`] itself.
    fn events(&self, _st: &State, _args: &[String]) -> Result<Option<i32>> {
        Ok(None)
    }

    /// The cgroup whose statistics and OOM events are the container's
    /// (`events`).
    fn cgroup(&self, _st: &State) -> Result<Box<dyn rt_cgroups::Manager>> {
        Err(self.refuse("events"))
    }

    /// Saves the live container into `opts.image_path` (runc's
    /// `checkpoint`); without `leave_running` it ends.
    fn checkpoint(&self, _st: &State, _opts: &CheckpointOptions) -> Result<()> {
        Err(self.refuse("checkpoint"))
    }

    /// Brings a checkpointed (or migrating) container back as the
    /// sandbox's; returns once it runs.
    fn restore(
        &self,
        _sandbox: Sandbox<'_>,
        _state: &mut State,
        _from: &RestoreFrom<'_>,
    ) -> Result<Created> {
        Err(self.refuse("restore"))
    }

    /// Writes what a migration's destination restores from into `image`.
    fn describe_migration(&self, _st: &State) -> Result<serde_json::Value> {
        Err(self.refuse("migrate"))
    }

    /// Live-migrates the running container to a destination waiting at
    /// `uri`; returns the transfer's figures, the source left stopped.
    fn migrate(&self, _st: &State, _uri: &str) -> Result<serde_json::Value> {
        Err(self.refuse("migrate"))
    }

    /// After [`Isolation::migrate`]: resume the source, or end it.
    fn finish_migration(&self, _st: &State, _end: MigrationEnd) -> Result<()> {
        Err(self.refuse("migrate"))
    }

    /// Kills whatever is left of the container and removes what the backend
    /// made for it (cgroups, helpers). Keeps going past failures and returns
    /// every error's text; safe to call again.
    fn destroy(&self, st: &State, layout: &rt_cgroups::Layout) -> Vec<String>;

    /// The refusal of an operation this backend does not support.
    fn refuse(&self, op: &'static str) -> Error {
        Error::NotSupported {
            backend: self.name(),
            op,
        }
    }
}

/// The backend asked for at create: the CLI's `--isolation` (`over`),
/// else the annotation, else the binary name's default (`rt-vm`: "vm"),
/// else "container". An annotation that contradicts the binary's name is
/// refused (as crun does for its krun handler).
pub fn select(
    annotations: Option<&HashMap<String, String>>,
    over: Option<&str>,
    by_name: Option<&str>,
) -> Result<Box<dyn Isolation>> {
    let annotated = annotations
        .and_then(|a| a.get(ANNOTATION))
        .map(String::as_str);
    if over.is_none() {
        if let (Some(a), Some(name)) = (annotated, by_name) {
            if canonical(a) != canonical(name) {
                return Err(Error::IsolationContradiction {
                    annotation: a.to_string(),
                    binary: name.to_string(),
                });
            }
        }
    }
    let wanted = over.or(annotated).or(by_name).unwrap_or("container");
    match canonical(wanted) {
        "container" => Ok(Box::new(namespaces::Namespaces)),
        "vm" => Ok(Box::new(vm::Vm)),
        _ => Err(Error::UnsupportedIsolation(wanted.to_string())),
    }
}

fn canonical(name: &str) -> &str {
    match name {
        "container" | "namespaces" => "container",
        "vm" | "microvm" => "vm",
        other => other,
    }
}

/// The backend that made the container of `st`.
pub fn of(st: &State) -> Result<Box<dyn Isolation>> {
    match st.backend.as_str() {
        "container" => Ok(Box::new(namespaces::Namespaces)),
        "vm" => Ok(Box::new(vm::Vm)),
        other => Err(Error::UnknownBackend {
            id: st.id.clone(),
            backend: other.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_and_dispatch() {
        assert_eq!(select(None, None, None).unwrap().name(), "container");
        let a: HashMap<String, String> = [(ANNOTATION.to_string(), "vm".to_string())].into();
        assert_eq!(select(Some(&a), None, None).unwrap().name(), "vm");
        assert_eq!(select(None, None, Some("vm")).unwrap().name(), "vm");
        assert_eq!(select(Some(&a), None, Some("vm")).unwrap().name(), "vm");
        assert_eq!(
            select(Some(&a), Some("container"), None).unwrap().name(),
            "container"
        );
        let c: HashMap<String, String> = [(ANNOTATION.to_string(), "container".to_string())].into();
        let e = select(Some(&c), None, Some("vm")).unwrap_err().to_string();
        assert!(e.contains("contradicts") && e.contains("rt-vm"), "{e}");
        let k: HashMap<String, String> = [(ANNOTATION.to_string(), "krun".to_string())].into();
        let e = select(Some(&k), None, None).unwrap_err().to_string();
        assert!(
            e.contains("\"krun\"") && e.contains("run.rt.isolation"),
            "{e}"
        );
    }

    /// A backend that implements only what it must refuses the rest by name.
    #[derive(Debug)]
    struct Bare;

    impl Isolation for Bare {
        fn name(&self) -> &'static str {
            "bare"
        }
        fn create(&self, _: Sandbox<'_>, _: &mut State) -> Result<Created> {
            Err(self.refuse("create"))
        }
        fn status(&self, _: &ContainerDir, _: &State) -> Status {
            Status::Stopped
        }
        fn destroy(&self, _: &State, _: &rt_cgroups::Layout) -> Vec<String> {
            Vec::new()
        }
    }

    #[test]
    fn unsupported_operations_are_refused_by_name() {
        let e = Bare.pause_for_test().unwrap_err().to_string();
        assert_eq!(e, "pause is not supported by the bare backend");
    }

    impl Bare {
        fn pause_for_test(&self) -> Result<()> {
            let st: State = serde_json::from_value(serde_json::json!({
                "id": "x", "pid": 0, "stored_status": "created", "bundle": "/b", "rootfs": "/b/r",
                "created": "now", "owner": "root", "backend": "bare",
                "config": {"ociVersion": "1.0.0"}
            }))
            .unwrap();
            let e = of(&st).unwrap_err().to_string();
            assert!(e.contains("backend \"bare\""), "{e}");
            self.pause(&st)
        }
    }
}
