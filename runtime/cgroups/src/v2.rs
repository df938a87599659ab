//! cgroup v2 (unified) hosts.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::unistd::Pid;
use oci_spec::runtime::LinuxResources;

use crate::v1::join;
use crate::{create_dirs, parse_pids, read, remove_dirs, write, Manager, Record, Result};

#[derive(Debug)]
pub(crate) struct V2 {
    root: PathBuf,
    record: Record,
}

impl V2 {
    pub(crate) fn new(root: PathBuf, record: Record) -> Self {
        V2 { root, record }
    }

    fn dir(&self) -> PathBuf {
        join(&self.root, &self.record.path)
    }

    /// Enables every controller available at the root in the subtree_control of
    /// each ancestor of the container's cgroup, so that its files exist.
    fn enable_controllers(&self) -> Result<()> {
        let available = read(&self.root.join("cgroup.controllers"))?;
        let wanted: String = available
            .split_whitespace()
            .map(|c| format!("+{c} "))
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        let mut dir = self.root.clone();
        let parts: Vec<&str> = self
            .record
            .path
            .split('/')
            .filter(|p| !p.is_empty())
            .collect();
        for part in &parts[..parts.len().saturating_sub(1)] {
            enable_in(&dir, &wanted)?;
            dir.push(part);
        }
        enable_in(&dir, &wanted)
    }
}

fn enable_in(dir: &Path, wanted: &str) -> Result<()> {
    let current = read(&dir.join("cgroup.subtree_control"))?;
    let missing: String = wanted
        .split_whitespace()
        .filter(|w| !current.split_whitespace().any(|c| c == &w[1..]))
        .map(|w| format!("{w} "))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    write(&dir.join("cgroup.subtree_control"), missing.trim())
}

impl Manager for V2 {
    fn create(&mut self) -> Result<()> {
        let root = self.root.clone();
        create_dirs(&root, &self.record.path, &mut self.record.created)?;
        self.enable_controllers()
    }

    fn enter_v1(&self) -> Result<()> {
        Ok(())
    }

    fn v2_dir(&self) -> Option<PathBuf> {
        Some(self.dir())
    }

    fn set(&self, r: &LinuxResources) -> Result<()> {
        let dir = self.dir();
        for s in crate::resources::v2(r, &|f| dir.join(f).exists())? {
            crate::apply(&dir, &s)?;
        }
        Ok(())
    }

    fn freeze(&self, frozen: bool) -> Result<()> {
        let dir = self.dir();
        write(&dir.join("cgroup.freeze"), if frozen { "1" } else { "0" })?;
        let want = if frozen { "frozen 1" } else { "frozen 0" };
        crate::wait_state(&dir.join("cgroup.events"), |s| s.lines().any(|l| l == want))
    }

    fn set_devices(&self, rules: &[crate::devices::Rule]) -> Result<()> {
        crate::attach_device_filter(&self.dir(), rules)
    }

    fn frozen(&self) -> bool {
        std::fs::read_to_string(self.dir().join("cgroup.freeze")).is_ok_and(|s| s.trim() == "1")
    }

    fn pids(&self) -> Result<Vec<Pid>> {
        Ok(parse_pids(&read(&self.dir().join("cgroup.procs"))?))
    }

    fn stats(&self) -> Result<crate::stats::Stats> {
        Ok(crate::stats::v2(&self.dir()))
    }

    fn oom_watch(&self) -> Result<OwnedFd> {
        crate::watch_file(&self.dir().join("memory.events"))
    }

    fn destroy(&self) -> Result<()> {
        remove_dirs(&self.record.created, &[self.dir()])
    }

    fn record(&self) -> Record {
        self.record.clone()
    }

    fn placement(&self, sub: &crate::Sub) -> Result<crate::Placement> {
        if !sub.by_controller.is_empty() {
            return Err(crate::Error::Unsupported(
                "exec --cgroup CONTROLLER:PATH on cgroup v2 (one hierarchy: give only PATH)",
            ));
        }
        Ok(crate::Placement {
            v1: Vec::new(),
            v2: Some(crate::sub_dir(&self.dir(), sub.all.as_deref())?.0),
            v2_freezes: true,
        })
    }
}
