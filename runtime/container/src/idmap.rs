//! Writing a new user namespace's uid_map and gid_map, from the parent.
//!
//! Root writes the maps directly. An unprivileged user may write only a map
//! of its own id (and, for gid_map, only after writing "deny" to setgroups);
//! anything else goes through the setuid helpers newuidmap/newgidmap (Debian
//! package uidmap), which check the ranges against /etc/subuid and
//! /etc/subgid — as runc and podman do.

use std::path::{Path, PathBuf};
use std::process::Command;

use nix::unistd::{Gid, Pid, Uid};
use oci_spec::runtime::LinuxIdMapping;

/// Errors of id mapping.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("running {helper} (package uidmap) for a multi-range mapping")]
    Spawn {
        helper: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{helper} refused the mapping {mapping:?}: {stderr}")]
    Helper {
        helper: &'static str,
        mapping: String,
        stderr: String,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Uid,
    Gid,
}

impl Kind {
    fn file(self) -> &'static str {
        match self {
            Kind::Uid => "uid_map",
            Kind::Gid => "gid_map",
        }
    }

    fn helper(self) -> &'static str {
        match self {
            Kind::Uid => "newuidmap",
            Kind::Gid => "newgidmap",
        }
    }
}

/// How a map gets written by the calling process.
#[derive(Debug, PartialEq, Eq)]
enum Method {
    Direct,
    /// Unprivileged, own id only: setgroups must be denied first (gid_map).
    DirectDenySetgroups,
    Helper,
}

fn method(kind: Kind, maps: &[LinuxIdMapping], privileged: bool, own: u32) -> Method {
    if privileged {
        return Method::Direct;
    }
    let own_only = matches!(maps, [m] if m.host_id() == own && m.size() == 1);
    match (own_only, kind) {
        (true, Kind::Uid) => Method::Direct,
        (true, Kind::Gid) => Method::DirectDenySetgroups,
        (false, _) => Method::Helper,
    }
}

fn format(maps: &[LinuxIdMapping]) -> String {
    maps.iter()
        .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
        .collect()
}

/// Writes `pid`'s uid_map and gid_map. Empty maps are left unwritten.
pub fn write(pid: Pid, uid: &[LinuxIdMapping], gid: &[LinuxIdMapping]) -> Result<()> {
    let privileged = nix::unistd::geteuid().is_root();
    write_one(pid, Kind::Uid, uid, privileged, Uid::effective().as_raw())?;
    write_one(pid, Kind::Gid, gid, privileged, Gid::effective().as_raw())
}

fn write_one(
    pid: Pid,
    kind: Kind,
    maps: &[LinuxIdMapping],
    privileged: bool,
    own: u32,
) -> Result<()> {
    if maps.is_empty() {
        return Ok(());
    }
    let proc = Path::new("/proc").join(pid.to_string());
    match method(kind, maps, privileged, own) {
        Method::Direct => write_file(&proc.join(kind.file()), &format(maps)),
        Method::DirectDenySetgroups => {
            write_file(&proc.join("setgroups"), "deny")?;
            write_file(&proc.join(kind.file()), &format(maps))
        }
        Method::Helper => run_helper(pid, kind, maps),
    }
}

fn run_helper(pid: Pid, kind: Kind, maps: &[LinuxIdMapping]) -> Result<()> {
    let helper = kind.helper();
    let mut cmd = Command::new(helper);
    cmd.arg(pid.to_string());
    for m in maps {
        cmd.args([
            m.container_id().to_string(),
            m.host_id().to_string(),
            m.size().to_string(),
        ]);
    }
    let out = cmd
        .output()
        .map_err(|source| Error::Spawn { helper, source })?;
    if out.status.success() {
        return Ok(());
    }
    Err(Error::Helper {
        helper,
        mapping: format(maps).trim_end().replace('\n', ", "),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

fn write_file(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|source| Error::Write {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(c: u32, h: u32, n: u32) -> LinuxIdMapping {
        oci_spec::runtime::LinuxIdMappingBuilder::default()
            .container_id(c)
            .host_id(h)
            .size(n)
            .build()
            .unwrap()
    }

    #[test]
    fn chooses_how_to_write() {
        let own = [map(0, 1000, 1)];
        let wide = [map(0, 1000, 1), map(1, 100000, 65536)];
        assert_eq!(method(Kind::Uid, &wide, true, 0), Method::Direct);
        assert_eq!(method(Kind::Uid, &own, false, 1000), Method::Direct);
        assert_eq!(
            method(Kind::Gid, &own, false, 1000),
            Method::DirectDenySetgroups
        );
        assert_eq!(method(Kind::Uid, &own, false, 1001), Method::Helper);
        assert_eq!(method(Kind::Gid, &wide, false, 1000), Method::Helper);
        assert_eq!(format(&wide), "0 1000 1\n1 100000 65536\n");
    }
}
