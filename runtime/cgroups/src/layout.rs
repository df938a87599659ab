//! Which cgroup hierarchies the host has, read from /proc/self/mountinfo.

use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// One cgroup v1 hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    /// Where it is mounted, e.g. /sys/fs/cgroup/memory.
    pub mount: PathBuf,
    /// Its controllers (`memory`, `cpu`, ...) or `name=systemd`.
    pub controllers: Vec<String>,
}

impl Hierarchy {
    pub fn has(&self, controller: &str) -> bool {
        self.controllers.iter().any(|c| c == controller)
    }
}

/// The host's cgroup layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// cgroup v2 only, mounted here.
    Unified(PathBuf),
    /// cgroup v1 hierarchies, with the cgroup2 mount of a hybrid host if any.
    V1 {
        hierarchies: Vec<Hierarchy>,
        unified: Option<PathBuf>,
    },
}

impl Layout {
    /// Reads the layout of the calling process's mount namespace.
    pub fn detect() -> Result<Layout> {
        let path = PathBuf::from("/proc/self/mountinfo");
        let text =
            rt_sys::read_proc(&path).map_err(|source| crate::Error::Read { path, source })?;
        Self::parse(&text)
    }

    pub fn parse(mountinfo: &str) -> Result<Layout> {
        let mut hierarchies: Vec<Hierarchy> = Vec::new();
        let mut unified = None;
        for line in mountinfo.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let mount = match left.split(' ').nth(4) {
                Some(m) => PathBuf::from(unescape(m)),
                None => continue,
            };
            let mut fields = right.split(' ');
            let fstype = fields.next().unwrap_or("");
            let super_opts = fields.nth(1).unwrap_or("");
            match fstype {
                "cgroup2" => {
                    unified.get_or_insert(mount);
                }
                "cgroup" => {
                    let controllers: Vec<String> = super_opts
                        .split(',')
                        .filter(|o| !matches!(*o, "rw" | "ro") && !o.starts_with("release_agent"))
                        .filter(|o| *o != "clone_children" && *o != "noprefix" && *o != "xattr")
                        .map(str::to_string)
                        .collect();
                    if !hierarchies.iter().any(|h| h.controllers == controllers) {
                        hierarchies.push(Hierarchy { mount, controllers });
                    }
                }
                _ => {}
            }
        }
        match (hierarchies.is_empty(), unified) {
            (true, Some(root)) => Ok(Layout::Unified(root)),
            (true, None) => Err(Error::NoCgroups),
            (false, unified) => Ok(Layout::V1 {
                hierarchies,
                unified,
            }),
        }
    }

    pub fn is_unified(&self) -> bool {
        matches!(self, Layout::Unified(_))
    }

    /// Whether the calling user may create `path` (a container path such as
    /// "/a/b") in every hierarchy rt uses: the nearest existing ancestor is
    /// writable. Always true for root; for a rootless user it means the
    /// cgroup was delegated (chowned to the user, as systemd's Delegate=
    /// does).
    pub fn delegated(&self, path: &str) -> bool {
        let roots: Vec<&Path> = match self {
            Layout::Unified(root) => vec![root.as_path()],
            Layout::V1 { hierarchies, .. } => {
                hierarchies.iter().map(|h| h.mount.as_path()).collect()
            }
        };
        roots.into_iter().all(|root| {
            let mut dir = root.join(path.trim_start_matches('/'));
            while !dir.exists() {
                if !dir.pop() {
                    return false;
                }
            }
            nix::unistd::access(&dir, nix::unistd::AccessFlags::W_OK).is_ok()
        })
    }
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v as char);
                i += 4;
                continue;
            }
        }
        out.push(b[i] as char);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw";

    #[test]
    fn parses_hybrid() {
        let l = Layout::parse(HYBRID).unwrap();
        let Layout::V1 {
            hierarchies,
            unified,
        } = l
        else {
            panic!("not v1")
        };
        assert_eq!(hierarchies.len(), 3);
        assert!(hierarchies[1].has("memory"));
        assert_eq!(hierarchies[2].controllers, vec!["name=systemd"]);
        assert_eq!(unified, Some(PathBuf::from("/sys/fs/cgroup/unified")));
    }

    #[test]
    fn delegation_is_write_access_to_the_nearest_ancestor() {
        let dir = tempfile::tempdir().unwrap();
        let l = Layout::Unified(dir.path().to_path_buf());
        // The test runs as root or as the owner of the directory.
        assert!(l.delegated("/a/b/c"));
        let missing = Layout::Unified(PathBuf::from("/nonexistent-cgroup-root"));
        assert!(!missing.delegated("/x") || nix::unistd::geteuid().is_root());
    }

    #[test]
    fn parses_unified() {
        let l = Layout::parse("30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate")
            .unwrap();
        assert_eq!(l, Layout::Unified(PathBuf::from("/sys/fs/cgroup")));
        assert!(Layout::parse("").is_err());
    }

    #[test]
    fn unescapes_spaces() {
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert_eq!(unescape("/plain"), "/plain");
    }
}
