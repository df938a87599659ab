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

    fn enter(&self, whole: bool) -> Result<Option<OwnedFd>> {
        crate::enter_v2(&self.dir(), whole)
    }

    fn set(&self, r: &LinuxResources) -> Result<()> {
        let dir = self.dir();
        if let Some(m) = r.memory() {
            if let Some(limit) = m.limit() {
                write(&dir.join("memory.max"), &max_or(limit))?;
            }
            if let Some(res) = m.reservation() {
                write(&dir.join("memory.low"), &max_or(res))?;
            }
        }
        if let Some(c) = r.cpu() {
            if c.quota().is_some() || c.period().is_some() {
                let quota = c
                    .quota()
                    .filter(|q| *q > 0)
                    .map_or("max".into(), |q| q.to_string());
                let period = c.period().unwrap_or(100_000);
                write(&dir.join("cpu.max"), &format!("{quota} {period}"))?;
            }
            if let Some(shares) = c.shares() {
                write(
                    &dir.join("cpu.weight"),
                    &shares_to_weight(shares).to_string(),
                )?;
            }
            if let Some(cpus) = c.cpus() {
                write(&dir.join("cpuset.cpus"), cpus)?;
            }
            if let Some(mems) = c.mems() {
                write(&dir.join("cpuset.mems"), mems)?;
            }
        }
        if let Some(p) = r.pids() {
            write(&dir.join("pids.max"), &max_or(p.limit()))?;
        }
        Ok(())
    }

    fn freeze(&self, frozen: bool) -> Result<()> {
        let dir = self.dir();
        write(&dir.join("cgroup.freeze"), if frozen { "1" } else { "0" })?;
        let want = if frozen { "frozen 1" } else { "frozen 0" };
        crate::wait_state(&dir.join("cgroup.events"), |s| s.lines().any(|l| l == want))
    }

    fn set_devices(&self, _rules: &[crate::devices::Rule]) -> Result<()> {
        // cgroup v2 has no devices files: access control needs an eBPF
        // program attached to the cgroup, which rt does not build yet. Say so
        // on every create rather than pretend.
        tracing::warn!(
            "device access rules are not enforced on cgroup v2 yet (no eBPF device filter)"
        );
        Ok(())
    }

    fn frozen(&self) -> bool {
        std::fs::read_to_string(self.dir().join("cgroup.freeze")).is_ok_and(|s| s.trim() == "1")
    }

    fn pids(&self) -> Result<Vec<Pid>> {
        Ok(parse_pids(&read(&self.dir().join("cgroup.procs"))?))
    }

    fn destroy(&self) -> Result<()> {
        remove_dirs(&self.record.created, &[self.dir()])
    }

    fn record(&self) -> Record {
        self.record.clone()
    }
}

fn max_or(v: i64) -> String {
    if v < 0 {
        "max".into()
    } else {
        v.to_string()
    }
}

/// runc's conversion of cgroup v1 cpu.shares [2, 262144] to cgroup v2
/// cpu.weight [1, 10000].
pub(crate) fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 0;
    }
    1 + ((shares.saturating_sub(2)) * 9999) / 262142
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_conversion_matches_runc() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262144), 10000);
    }
}
