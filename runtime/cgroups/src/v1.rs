//! cgroup v1 (and hybrid) hosts: one directory per hierarchy.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::unistd::Pid;
use oci_spec::runtime::LinuxResources;

use crate::{
    create_dirs, parse_pids, read, remove_dirs, write, Hierarchy, Manager, Record, Result,
};

#[derive(Debug)]
pub(crate) struct V1 {
    hierarchies: Vec<Hierarchy>,
    unified: Option<PathBuf>,
    record: Record,
}

impl V1 {
    pub(crate) fn new(
        hierarchies: Vec<Hierarchy>,
        unified: Option<PathBuf>,
        record: Record,
    ) -> Self {
        V1 {
            hierarchies,
            unified,
            record,
        }
    }

    fn roots(&self) -> impl Iterator<Item = &Path> {
        self.hierarchies
            .iter()
            .map(|h| h.mount.as_path())
            .chain(self.unified.as_deref())
    }

    fn dir_of(&self, controller: &str) -> Option<PathBuf> {
        self.hierarchies
            .iter()
            .find(|h| h.has(controller))
            .map(|h| join(&h.mount, &self.record.path))
    }

    fn set_file(&self, controller: &str, file: &str, value: String) -> Result<()> {
        match self.dir_of(controller) {
            Some(dir) => write(&dir.join(file), &value),
            None => Err(crate::Error::Unsupported(controller_name(controller))),
        }
    }
}

fn controller_name(c: &str) -> &'static str {
    match c {
        "memory" => "memory",
        "cpu" => "cpu",
        "cpuset" => "cpuset",
        "pids" => "pids",
        _ => "cgroup controller",
    }
}

pub(crate) fn join(root: &Path, inner: &str) -> PathBuf {
    root.join(inner.trim_start_matches('/'))
}

/// A new cpuset cgroup starts with empty cpus and mems, and accepts no task until
/// both are set: copy them down from the nearest parent that has them.
fn inherit_cpuset(root: &Path, created: &[PathBuf]) -> Result<()> {
    for dir in created.iter().filter(|d| d.starts_with(root)) {
        let parent = dir.parent().unwrap_or(root);
        for file in ["cpuset.cpus", "cpuset.mems"] {
            let current = read(&dir.join(file))?;
            if current.trim().is_empty() {
                let value = read(&parent.join(file))?;
                write(&dir.join(file), value.trim())?;
            }
        }
    }
    Ok(())
}

impl Manager for V1 {
    fn create(&mut self) -> Result<()> {
        let roots: Vec<(PathBuf, bool)> = self
            .hierarchies
            .iter()
            .map(|h| (h.mount.clone(), h.has("cpuset")))
            .chain(self.unified.clone().map(|u| (u, false)))
            .collect();
        for (root, is_cpuset) in roots {
            let before = self.record.created.len();
            create_dirs(&root, &self.record.path, &mut self.record.created)?;
            if is_cpuset {
                inherit_cpuset(&root, &self.record.created[before..])?;
            }
        }
        Ok(())
    }

    fn enter(&self, whole: bool) -> Result<Option<OwnedFd>> {
        for h in &self.hierarchies {
            write(&join(&h.mount, &self.record.path).join("tasks"), "0")?;
        }
        match &self.unified {
            Some(u) => crate::enter_v2(&join(u, &self.record.path), whole),
            None => Ok(None),
        }
    }

    fn set(&self, r: &LinuxResources) -> Result<()> {
        if let Some(m) = r.memory() {
            // memory.limit_in_bytes may never exceed memory.memsw.limit_in_bytes:
            // when raising both, memsw must go first; when lowering, last.
            let limit = m.limit().map(|v| ("memory.limit_in_bytes", v.to_string()));
            let swap = m
                .swap()
                .map(|v| ("memory.memsw.limit_in_bytes", v.to_string()));
            let set = |f: &Option<(&str, String)>| match f {
                Some((file, v)) => self.set_file("memory", file, v.clone()),
                None => Ok(()),
            };
            if set(&limit).is_err() {
                set(&swap)?;
                set(&limit)?;
            } else {
                set(&swap)?;
            }
            if let Some(res) = m.reservation() {
                self.set_file("memory", "memory.soft_limit_in_bytes", res.to_string())?;
            }
            if let Some(sw) = m.swappiness() {
                self.set_file("memory", "memory.swappiness", sw.to_string())?;
            }
            if let Some(disable) = m.disable_oom_killer() {
                self.set_file(
                    "memory",
                    "memory.oom_control",
                    u8::from(disable).to_string(),
                )?;
            }
        }
        if let Some(c) = r.cpu() {
            if let Some(shares) = c.shares() {
                self.set_file("cpu", "cpu.shares", shares.to_string())?;
            }
            if let Some(period) = c.period() {
                self.set_file("cpu", "cpu.cfs_period_us", period.to_string())?;
            }
            if let Some(quota) = c.quota() {
                self.set_file("cpu", "cpu.cfs_quota_us", quota.to_string())?;
            }
            if let Some(cpus) = c.cpus() {
                self.set_file("cpuset", "cpuset.cpus", cpus.clone())?;
            }
            if let Some(mems) = c.mems() {
                self.set_file("cpuset", "cpuset.mems", mems.clone())?;
            }
        }
        if let Some(p) = r.pids() {
            let v = if p.limit() > 0 {
                p.limit().to_string()
            } else {
                "max".into()
            };
            self.set_file("pids", "pids.max", v)?;
        }
        Ok(())
    }

    fn freeze(&self, frozen: bool) -> Result<()> {
        let dir = self
            .dir_of("freezer")
            .ok_or(crate::Error::Unsupported("freezer"))?;
        let file = dir.join("freezer.state");
        let want = if frozen { "FROZEN" } else { "THAWED" };
        write(&file, want)?;
        crate::wait_state(&file, |s| s.trim() == want)
    }

    fn set_devices(&self, rules: &[crate::devices::Rule]) -> Result<()> {
        let dir = self
            .dir_of("devices")
            .ok_or(crate::Error::Unsupported("devices"))?;
        for r in rules {
            let file = if r.allow {
                "devices.allow"
            } else {
                "devices.deny"
            };
            write(&dir.join(file), &r.line())?;
        }
        Ok(())
    }

    fn frozen(&self) -> bool {
        self.dir_of("freezer")
            .and_then(|d| std::fs::read_to_string(d.join("freezer.state")).ok())
            .is_some_and(|s| s.trim() != "THAWED")
    }

    fn pids(&self) -> Result<Vec<Pid>> {
        let dir = self
            .dir_of("pids")
            .or_else(|| self.dir_of("freezer"))
            .or_else(|| self.roots().next().map(|r| join(r, &self.record.path)))
            .ok_or(crate::Error::NoCgroups)?;
        Ok(parse_pids(&read(&dir.join("cgroup.procs"))?))
    }

    fn destroy(&self) -> Result<()> {
        let leaves: Vec<PathBuf> = self.roots().map(|r| join(r, &self.record.path)).collect();
        remove_dirs(&self.record.created, &leaves)
    }

    fn record(&self) -> Record {
        self.record.clone()
    }
}
