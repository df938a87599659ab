//! Parsing OCI mount options into mount(2) flags, propagation, recursive
//! attributes (mount_setattr) and filesystem data.

use nix::mount::MsFlags;

/// Errors of option parsing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("mount option {0:?} is not supported")]
    Unsupported(String),
}

/// A mount's options, sorted by how they are applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Flags for mount(2).
    pub flags: MsFlags,
    /// Propagation changes, applied one by one after the mount.
    pub propagation: Vec<MsFlags>,
    /// Recursive attributes set and cleared with mount_setattr.
    pub rec_set: u64,
    pub rec_clear: u64,
    /// Filesystem-specific data (`mode=755,size=65536k`).
    pub data: String,
}

impl Options {
    pub fn is_bind(&self) -> bool {
        self.flags.contains(MsFlags::MS_BIND)
    }
}

/// Parses `options` as runc does: known flags become mount flags, unknown ones
/// are passed to the filesystem as data.
pub fn parse(options: &[String]) -> Result<Options, Error> {
    use rt_sys::{MOUNT_ATTR_NOATIME, MOUNT_ATTR_STRICTATIME};
    let mut o = Options {
        flags: MsFlags::empty(),
        propagation: Vec::new(),
        rec_set: 0,
        rec_clear: 0,
        data: String::new(),
    };
    let mut data = Vec::new();
    for opt in options {
        let (set, clear) = match opt.as_str() {
            "defaults" => (MsFlags::empty(), MsFlags::empty()),
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty()),
            "remount" => (MsFlags::MS_REMOUNT, MsFlags::empty()),
            "mand" => (MsFlags::MS_MANDLOCK, MsFlags::empty()),
            "nomand" => (MsFlags::empty(), MsFlags::MS_MANDLOCK),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "nostrictatime" => (MsFlags::empty(), MsFlags::MS_STRICTATIME),
            "silent" => (MsFlags::MS_SILENT, MsFlags::empty()),
            "loud" => (MsFlags::empty(), MsFlags::MS_SILENT),
            "bind" => (MsFlags::MS_BIND, MsFlags::empty()),
            "rbind" => (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty()),
            "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" | "unbindable"
            | "runbindable" => {
                o.propagation.push(propagation(opt));
                continue;
            }
            "idmap" | "ridmap" => return Err(Error::Unsupported(opt.clone())),
            _ => {
                if let Some((set, clear)) = recursive(opt) {
                    o.rec_set |= set;
                    o.rec_clear |= clear;
                    o.rec_set &= !clear;
                    if set == MOUNT_ATTR_STRICTATIME || set == MOUNT_ATTR_NOATIME {
                        o.rec_clear |= 0x70; // MOUNT_ATTR__ATIME: the atime mode is one field
                    }
                } else {
                    data.push(opt.clone());
                }
                continue;
            }
        };
        o.flags.insert(set);
        o.flags.remove(clear);
    }
    o.data = data.join(",");
    Ok(o)
}

fn propagation(opt: &str) -> MsFlags {
    let base = match opt.trim_start_matches('r') {
        "private" => MsFlags::MS_PRIVATE,
        "shared" => MsFlags::MS_SHARED,
        "slave" => MsFlags::MS_SLAVE,
        _ => MsFlags::MS_UNBINDABLE,
    };
    if opt.starts_with('r') {
        base | MsFlags::MS_REC
    } else {
        base
    }
}

/// Parses a propagation word (`rootfsPropagation`).
pub fn propagation_of(word: &str) -> Result<MsFlags, Error> {
    match word {
        "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" | "unbindable"
        | "runbindable" => Ok(propagation(word)),
        other => Err(Error::Unsupported(other.to_string())),
    }
}

fn recursive(opt: &str) -> Option<(u64, u64)> {
    use rt_sys::{
        MOUNT_ATTR_NOATIME, MOUNT_ATTR_NODEV, MOUNT_ATTR_NODIRATIME, MOUNT_ATTR_NOEXEC,
        MOUNT_ATTR_NOSUID, MOUNT_ATTR_NOSYMFOLLOW, MOUNT_ATTR_RDONLY, MOUNT_ATTR_STRICTATIME,
    };
    Some(match opt {
        "rro" => (MOUNT_ATTR_RDONLY, 0),
        "rrw" => (0, MOUNT_ATTR_RDONLY),
        "rnosuid" => (MOUNT_ATTR_NOSUID, 0),
        "rsuid" => (0, MOUNT_ATTR_NOSUID),
        "rnodev" => (MOUNT_ATTR_NODEV, 0),
        "rdev" => (0, MOUNT_ATTR_NODEV),
        "rnoexec" => (MOUNT_ATTR_NOEXEC, 0),
        "rexec" => (0, MOUNT_ATTR_NOEXEC),
        "rnodiratime" => (MOUNT_ATTR_NODIRATIME, 0),
        "rdiratime" => (0, MOUNT_ATTR_NODIRATIME),
        "rnoatime" => (MOUNT_ATTR_NOATIME, 0),
        "rstrictatime" => (MOUNT_ATTR_STRICTATIME, 0),
        "rrelatime" | "ratime" => (0, 0x70),
        "rnosymfollow" => (MOUNT_ATTR_NOSYMFOLLOW, 0),
        "rsymfollow" => (0, MOUNT_ATTR_NOSYMFOLLOW),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(opts: &[&str]) -> Options {
        parse(&opts.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn flags_and_data() {
        let o = p(&["nosuid", "strictatime", "mode=755", "size=65536k"]);
        assert_eq!(o.flags, MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME);
        assert_eq!(o.data, "mode=755,size=65536k");
        let o = p(&["rbind", "ro", "rw"]);
        assert!(
            o.is_bind()
                && o.flags.contains(MsFlags::MS_REC)
                && !o.flags.contains(MsFlags::MS_RDONLY)
        );
    }

    #[test]
    fn propagation_and_recursive() {
        let o = p(&["rbind", "rslave", "private", "rro", "rnosuid"]);
        assert_eq!(
            o.propagation,
            vec![MsFlags::MS_SLAVE | MsFlags::MS_REC, MsFlags::MS_PRIVATE]
        );
        assert_eq!(
            o.rec_set,
            rt_sys::MOUNT_ATTR_RDONLY | rt_sys::MOUNT_ATTR_NOSUID
        );
        assert!(parse(&["idmap".to_string()]).is_err());
    }
}
