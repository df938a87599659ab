//! The user's process identity: rlimits, user and groups, capabilities,
//! no_new_privs, and PATH lookup inside the container.

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use caps::{CapSet, Capability as Cap};
use nix::errno::Errno;
use nix::sys::resource::{setrlimit, Resource};
use nix::unistd::{setgroups, setresgid, setresuid, Gid, Uid};
use oci_spec::runtime::{LinuxCapabilities, PosixRlimit, PosixRlimitType, Process};

/// Errors of identity setup.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("error setting rlimit type {0}")]
    Rlimit(String, #[source] Errno),
    #[error("{0}")]
    Ids(&'static str, #[source] Errno),
    #[error("capability {cap} in the {set} set")]
    Caps {
        cap: String,
        set: &'static str,
        #[source]
        source: caps::errors::CapsError,
    },
    #[error("setting no_new_privs")]
    NoNewPrivs(#[source] Errno),
    #[error("exec: {0:?}: executable file not found in $PATH")]
    NotFound(String),
    #[error("exec: {0:?}: permission denied")]
    NotExecutable(String),
    #[error("cwd {0:?} is outside of the container's root")]
    CwdOutside(PathBuf),
    #[error("chdir to cwd ({0:?}) set in config.json failed")]
    Cwd(PathBuf, #[source] Errno),
}

pub type Result<T> = std::result::Result<T, Error>;

fn resource(t: PosixRlimitType) -> Resource {
    match t {
        PosixRlimitType::RlimitCpu => Resource::RLIMIT_CPU,
        PosixRlimitType::RlimitFsize => Resource::RLIMIT_FSIZE,
        PosixRlimitType::RlimitData => Resource::RLIMIT_DATA,
        PosixRlimitType::RlimitStack => Resource::RLIMIT_STACK,
        PosixRlimitType::RlimitCore => Resource::RLIMIT_CORE,
        PosixRlimitType::RlimitRss => Resource::RLIMIT_RSS,
        PosixRlimitType::RlimitNproc => Resource::RLIMIT_NPROC,
        PosixRlimitType::RlimitNofile => Resource::RLIMIT_NOFILE,
        PosixRlimitType::RlimitMemlock => Resource::RLIMIT_MEMLOCK,
        PosixRlimitType::RlimitAs => Resource::RLIMIT_AS,
        PosixRlimitType::RlimitLocks => Resource::RLIMIT_LOCKS,
        PosixRlimitType::RlimitSigpending => Resource::RLIMIT_SIGPENDING,
        PosixRlimitType::RlimitMsgqueue => Resource::RLIMIT_MSGQUEUE,
        PosixRlimitType::RlimitNice => Resource::RLIMIT_NICE,
        PosixRlimitType::RlimitRtprio => Resource::RLIMIT_RTPRIO,
        PosixRlimitType::RlimitRttime => Resource::RLIMIT_RTTIME,
    }
}

/// The spec's name of a limit (`RLIMIT_NOFILE`).
fn rlimit_name(t: PosixRlimitType) -> String {
    serde_json::to_string(&t)
        .unwrap_or_default()
        .trim_matches('"')
        .to_string()
}

pub fn set_rlimits(limits: &[PosixRlimit]) -> Result<()> {
    for l in limits {
        setrlimit(resource(l.typ()), l.soft(), l.hard())
            .map_err(|e| Error::Rlimit(rlimit_name(l.typ()), e))?;
    }
    Ok(())
}

fn to_caps(set: &Option<oci_spec::runtime::Capabilities>) -> HashSet<Cap> {
    set.iter()
        .flatten()
        .filter_map(|c| serde_json::to_string(c).ok())
        .filter_map(|name| name.trim_matches('"').parse::<Cap>().ok())
        .collect()
}

/// Drops from the bounding set every capability not listed (before the uid
/// switch, while CAP_SETPCAP is still held).
pub fn drop_bounding(c: &LinuxCapabilities) -> Result<()> {
    let keep = to_caps(c.bounding());
    // One prctl per capability: no need to read the set first, dropping one
    // that is already gone succeeds.
    for cap in caps::all().difference(&keep) {
        match caps::drop(None, CapSet::Bounding, *cap) {
            Ok(()) => {}
            // A capability this kernel does not know is not in its bounding set.
            Err(_) if !caps::runtime::procfs_all_supported(None).is_ok_and(|s| s.contains(cap)) => {
            }
            Err(source) => {
                return Err(Error::Caps {
                    cap: cap.to_string(),
                    set: "bounding",
                    source,
                })
            }
        }
    }
    Ok(())
}

/// Switches to the process's user: groups, gid, uid. Capabilities survive the
/// switch (PR_SET_KEEPCAPS) so that [`apply_caps`] can set them exactly.
pub fn switch_user(p: &Process, allow_setgroups: bool) -> Result<()> {
    let user = p.user();
    nix::sys::prctl::set_keepcaps(true).map_err(|e| Error::Ids("prctl(PR_SET_KEEPCAPS)", e))?;
    if allow_setgroups {
        let groups: Vec<Gid> = user
            .additional_gids()
            .iter()
            .flatten()
            .map(|g| Gid::from_raw(*g))
            .collect();
        setgroups(&groups).map_err(|e| Error::Ids("setgroups", e))?;
    }
    let gid = Gid::from_raw(user.gid());
    setresgid(gid, gid, gid).map_err(|e| Error::Ids("setresgid", e))?;
    let uid = Uid::from_raw(user.uid());
    setresuid(uid, uid, uid).map_err(|e| Error::Ids("setresuid", e))?;
    nix::sys::prctl::set_keepcaps(false).map_err(|e| Error::Ids("prctl(PR_SET_KEEPCAPS)", e))?;
    if let Some(mask) = user.umask() {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(mask));
    }
    Ok(())
}

/// Sets the effective, permitted, inheritable and ambient sets as listed.
pub fn apply_caps(c: &LinuxCapabilities) -> Result<()> {
    let sets = [
        (CapSet::Effective, "effective", to_caps(c.effective())),
        (CapSet::Permitted, "permitted", to_caps(c.permitted())),
        (CapSet::Inheritable, "inheritable", to_caps(c.inheritable())),
    ];
    // Raise permitted first only where it grows; lower it last: effective must
    // stay a subset of permitted at every step.
    for (set, name, value) in &sets {
        caps::set(None, *set, value).map_err(|source| Error::Caps {
            cap: format!("{value:?}"),
            set: name,
            source,
        })?;
    }
    // The kernel raises an ambient capability only if it is both permitted and
    // inheritable; runc skips the others, and so does rt (with a debug log line).
    let permitted = &sets[1].2;
    let inheritable = &sets[2].2;
    caps::clear(None, CapSet::Ambient).ok();
    for cap in to_caps(c.ambient()) {
        if !(permitted.contains(&cap) && inheritable.contains(&cap)) {
            tracing::debug!("ambient capability {cap} is not permitted and inheritable: skipped");
            continue;
        }
        caps::raise(None, CapSet::Ambient, cap).map_err(|source| Error::Caps {
            cap: cap.to_string(),
            set: "ambient",
            source,
        })?;
    }
    Ok(())
}

pub fn set_no_new_privs() -> Result<()> {
    nix::sys::prctl::set_no_new_privs().map_err(Error::NoNewPrivs)
}

pub fn chdir(cwd: &Path) -> Result<()> {
    nix::unistd::chdir(cwd).map_err(|e| Error::Cwd(cwd.to_path_buf(), e))?;
    // CVE-2024-21626: a cwd reached through a leaked descriptor
    // (/proc/self/fd/N) lies outside the container's root, where getcwd
    // fails (ENOENT) or answers "(unreachable)/...". Refuse it.
    match nix::unistd::getcwd() {
        Ok(p) if p.is_absolute() => Ok(()),
        _ => Err(Error::CwdOutside(cwd.to_path_buf())),
    }
}

/// The PATH of the process's environment (or the default).
pub fn env_path(env: &[String]) -> &str {
    env.iter()
        .rev()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
}

/// Finds `cmd` as exec.LookPath does, inside the current root.
pub fn lookup(cmd: &str, path: &str) -> Result<PathBuf> {
    let check = |p: &Path| -> Option<bool> {
        let md = std::fs::metadata(p).ok()?;
        Some(md.is_file() && md.permissions().mode() & 0o111 != 0)
    };
    if cmd.contains('/') {
        return match check(Path::new(cmd)) {
            Some(true) => Ok(PathBuf::from(cmd)),
            Some(false) => Err(Error::NotExecutable(cmd.into())),
            None => Err(Error::NotFound(cmd.into())),
        };
    }
    for dir in path.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let candidate = Path::new(dir).join(cmd);
        if check(&candidate) == Some(true) {
            return Ok(candidate);
        }
    }
    Err(Error::NotFound(cmd.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups() {
        assert_eq!(
            lookup("sh", "/nonexistent:/bin").unwrap(),
            PathBuf::from("/bin/sh")
        );
        let e = lookup("no-such-binary-x", "/bin").unwrap_err().to_string();
        assert_eq!(
            e,
            "exec: \"no-such-binary-x\": executable file not found in $PATH"
        );
        let f = std::env::temp_dir().join(format!("rt-lookup-{}", std::process::id()));
        std::fs::write(&f, "x").unwrap();
        let e = lookup(f.to_str().unwrap(), "").unwrap_err().to_string();
        assert!(e.contains("permission denied"), "{e}");
        std::fs::remove_file(&f).unwrap();
        assert_eq!(env_path(&["A=1".into(), "PATH=/x".into()]), "/x");
    }

    #[test]
    fn caps_names_parse() {
        let c: LinuxCapabilities =
            serde_json::from_str(r#"{"bounding":["CAP_CHOWN","CAP_NET_RAW"]}"#).unwrap();
        let s = to_caps(c.bounding());
        assert!(s.contains(&Cap::CAP_CHOWN) && s.contains(&Cap::CAP_NET_RAW));
    }
}
