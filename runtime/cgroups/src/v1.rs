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
    /// How many hierarchies' directories are made (`create_step`).
    made: usize,
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
            made: 0,
        }
    }

    /// Makes the next hierarchy's directories (and a cpuset's cpus and
    /// mems); false when none was left.
    fn make_next(&mut self) -> Result<bool> {
        let Some(h) = self.hierarchies.get(self.made) else {
            return Ok(false);
        };
        let before = self.record.created.len();
        create_dirs(&h.mount, &self.record.path, &mut self.record.created)?;
        if h.has("cpuset") {
            inherit_cpuset(&h.mount, &self.record.created[before..])?;
        }
        self.made += 1;
        Ok(true)
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

    fn apply(&self, s: &crate::resources::Setting) -> Result<()> {
        let dir = self
            .dir_of(s.controller)
            .ok_or(crate::Error::Unsupported(s.controller))?;
        crate::apply(&dir, s)
    }
}

pub(crate) fn join(root: &Path, inner: &str) -> PathBuf {
    root.join(inner.trim_start_matches('/'))
}

/// A new cpuset cgroup starts with empty cpus and mems (unless its parent
/// has cgroup.clone_children, which copies the parent's), and accepts no
/// task until both are set: copy them down from the parent, made first.
fn inherit_cpuset(root: &Path, created: &[PathBuf]) -> Result<()> {
    for dir in created.iter().filter(|d| d.starts_with(root)) {
        let parent = dir.parent().unwrap_or(root);
        for file in ["cpuset.cpus", "cpuset.mems"] {
            let value = read(&parent.join(file))?;
            write(&dir.join(file), value.trim())?;
        }
    }
    Ok(())
}

impl Manager for V1 {
    fn create(&mut self) -> Result<()> {
        self.create_first()?;
        self.create_rest()
    }

    /// The cgroup2 directory (hugetlb and the like on a hybrid host), which
    /// a child is cloned into.
    fn create_first(&mut self) -> Result<()> {
        if let Some(u) = &self.unified {
            create_dirs(u, &self.record.path, &mut self.record.created)?;
        }
        Ok(())
    }

    fn create_rest(&mut self) -> Result<()> {
        while self.make_next()? {}
        Ok(())
    }

    fn create_step(&mut self) -> Result<bool> {
        self.make_next()?;
        Ok(self.made < self.hierarchies.len())
    }

    fn enter_v1(&self) -> Result<()> {
        for h in &self.hierarchies {
            write(&join(&h.mount, &self.record.path).join("tasks"), "0")?;
        }
        Ok(())
    }

    fn open_v1_tasks(&self) -> Result<Vec<std::fs::File>> {
        self.hierarchies
            .iter()
            .map(|h| crate::open_write(&join(&h.mount, &self.record.path).join("tasks")))
            .collect()
    }

    fn enter_v1_through(&self, tasks: Vec<std::fs::File>) -> Result<()> {
        if tasks.len() != self.hierarchies.len() {
            return self.enter_v1();
        }
        for (h, file) in self.hierarchies.iter().zip(&tasks) {
            let path = join(&h.mount, &self.record.path).join("tasks");
            crate::write_once(file, &path, "0")?;
        }
        Ok(())
    }

    fn v2_dir(&self) -> Option<PathBuf> {
        self.unified.as_ref().map(|u| join(u, &self.record.path))
    }

    fn set(&self, r: &LinuxResources) -> Result<()> {
        let settings = crate::resources::v1(r)?;
        let mut i = 0;
        while i < settings.len() {
            let s = &settings[i];
            match self.apply(s) {
                // memory.limit_in_bytes may never exceed
                // memory.memsw.limit_in_bytes: when raising both, memsw must
                // be written first.
                Err(e)
                    if s.file == "memory.limit_in_bytes"
                        && settings
                            .get(i + 1)
                            .is_some_and(|n| n.file == "memory.memsw.limit_in_bytes") =>
                {
                    self.apply(&settings[i + 1])?;
                    self.apply(s).map_err(|_| e)?;
                    i += 2;
                }
                r => {
                    r?;
                    i += 1;
                }
            }
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
        // One rule per write(2), as the kernel parses them, through one
        // descriptor per file.
        let mut allow = crate::Writer::new(dir.join("devices.allow"));
        let mut deny = crate::Writer::new(dir.join("devices.deny"));
        for r in rules {
            let file = if r.allow { &mut allow } else { &mut deny };
            file.write(&r.line())?;
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

    fn stats(&self) -> Result<crate::stats::Stats> {
        Ok(crate::stats::v1(&|c| self.dir_of(c)))
    }

    /// An eventfd registered for OOM notifications through
    /// cgroup.event_control and memory.oom_control.
    fn oom_watch(&self) -> Result<OwnedFd> {
        use nix::sys::eventfd::{EfdFlags, EventFd};
        use std::os::fd::AsRawFd;
        let dir = self
            .dir_of("memory")
            .ok_or(crate::Error::Unsupported("memory"))?;
        let control = dir.join("memory.oom_control");
        let oom = std::fs::File::open(&control).map_err(|source| crate::Error::Read {
            path: control.clone(),
            source,
        })?;
        let efd = EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
            .map_err(|e| crate::Error::Read {
                path: control,
                source: e.into(),
            })?;
        let line = format!("{} {}", efd.as_raw_fd(), oom.as_raw_fd());
        write(&dir.join("cgroup.event_control"), &line)?;
        Ok(OwnedFd::from(efd))
    }

    fn destroy(&self) -> Result<()> {
        let leaves: Vec<PathBuf> = self.roots().map(|r| join(r, &self.record.path)).collect();
        remove_dirs(&self.record.created, &leaves)
    }

    fn record(&self) -> Record {
        self.record.clone()
    }

    fn placement(&self, sub: &crate::Sub) -> Result<crate::Placement> {
        let mut p = crate::Placement::default();
        for h in &self.hierarchies {
            let dir = join(&h.mount, &self.record.path);
            let (dir, made) = crate::sub_dir(&dir, sub.for_controllers(&h.controllers))?;
            if h.has("cpuset") {
                inherit_cpuset(&h.mount, &made)?;
            }
            p.v1.push((dir, h.has("freezer")));
        }
        if let Some(u) = &self.unified {
            let dir = join(u, &self.record.path);
            p.v2 = Some(crate::sub_dir(&dir, sub.for_controllers(&[]))?.0);
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v1_in(root: &Path) -> V1 {
        let h = |name: &str| {
            std::fs::create_dir(root.join(name)).unwrap();
            Hierarchy {
                mount: root.join(name),
                controllers: vec![name.to_string()],
            }
        };
        let record = Record {
            path: "/x/y".into(),
            created: Vec::new(),
            systemd: None,
        };
        V1::new(vec![h("memory"), h("pids"), h("freezer")], None, record)
    }

    /// `create_step` makes one hierarchy's directories at a time, and
    /// `create_rest` what the steps left, each recorded once.
    #[test]
    fn steps_then_the_rest_make_every_hierarchy_once() {
        let tmp = tempfile::tempdir().unwrap();
        let mut v1 = v1_in(tmp.path());
        assert!(v1.create_step().unwrap(), "two hierarchies left");
        assert!(tmp.path().join("memory/x/y").is_dir());
        assert!(!tmp.path().join("pids/x").exists());
        v1.create_rest().unwrap();
        for h in ["memory", "pids", "freezer"] {
            assert!(tmp.path().join(h).join("x/y").is_dir(), "{h}");
        }
        assert_eq!(v1.record.created.len(), 6);
        // Nothing is left for another step.
        assert!(!v1.create_step().unwrap());
        assert_eq!(v1.record.created.len(), 6);

        let tmp = tempfile::tempdir().unwrap();
        let mut v1 = v1_in(tmp.path());
        while v1.create_step().unwrap() {}
        v1.create_rest().unwrap();
        assert_eq!(v1.record.created.len(), 6);
    }

    /// The `tasks` files a parent opens are every hierarchy's, in order;
    /// the child writes `0` through them, or by path when they are not one
    /// per hierarchy.
    #[test]
    fn tasks_opened_for_the_child_are_written_through() {
        use std::os::fd::AsRawFd;
        let tmp = tempfile::tempdir().unwrap();
        let mut v1 = v1_in(tmp.path());
        v1.create().unwrap();
        let tasks = |h: &str| tmp.path().join(h).join("x/y/tasks");
        for h in ["memory", "pids", "freezer"] {
            std::fs::write(tasks(h), "").unwrap();
        }
        let files = v1.open_v1_tasks().unwrap();
        let named: Vec<PathBuf> = files
            .iter()
            .map(|f| std::fs::read_link(format!("/proc/self/fd/{}", f.as_raw_fd())).unwrap())
            .collect();
        let want: Vec<PathBuf> = ["memory", "pids", "freezer"].map(tasks).into();
        assert_eq!(named, want);
        v1.enter_v1_through(files).unwrap();
        for h in ["memory", "pids", "freezer"] {
            assert_eq!(std::fs::read_to_string(tasks(h)).unwrap(), "0", "{h}");
            std::fs::write(tasks(h), "").unwrap();
        }
        // One file short: by path.
        let mut files = v1.open_v1_tasks().unwrap();
        files.pop();
        v1.enter_v1_through(files).unwrap();
        for h in ["memory", "pids", "freezer"] {
            assert_eq!(std::fs::read_to_string(tasks(h)).unwrap(), "0", "{h}");
        }
        // A hierarchy without the file fails, naming it.
        std::fs::remove_file(tasks("pids")).unwrap();
        let err = v1.open_v1_tasks().unwrap_err().to_string();
        assert!(err.contains(&tasks("pids").display().to_string()), "{err}");
    }
}
