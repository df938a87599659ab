//! Linux security modules: the AppArmor profile and the SELinux process label
//! applied on exec, the SELinux mount label given to the filesystems rt
//! mounts. Requests for a module the host has not enabled are refused at
//! validation (spec.rs) and again here.

use std::path::PathBuf;

/// Errors applying an LSM label.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("apparmor profile {0:?} requested but AppArmor is not enabled on this host")]
    AppArmorDisabled(String),
    #[error("selinux label {0:?} requested but SELinux is not enabled on this host")]
    SelinuxDisabled(String),
    #[error("setting selinux label {label:?} through {path}")]
    Selinux {
        label: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("setting apparmor profile {profile:?} through {path}")]
    AppArmor {
        profile: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub fn apparmor_enabled() -> bool {
    std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
        .is_ok_and(|s| s.trim() == "Y")
}

pub fn selinux_enabled() -> bool {
    std::path::Path::new("/sys/fs/selinux/enforce").exists()
}

/// Arranges for the next execve to switch to `profile`.
pub fn apply_apparmor(profile: &str) -> Result<(), Error> {
    if !apparmor_enabled() {
        return Err(Error::AppArmorDisabled(profile.into()));
    }
    let mut path = PathBuf::from("/proc/self/attr/apparmor/exec");
    if !path.exists() {
        path = PathBuf::from("/proc/self/attr/exec");
    }
    std::fs::write(&path, format!("exec {profile}")).map_err(|source| Error::AppArmor {
        profile: profile.into(),
        path,
        source,
    })
}

/// Arranges for the next execve to run with SELinux `label` (setexeccon).
pub fn apply_selinux(label: &str) -> Result<(), Error> {
    if !selinux_enabled() {
        return Err(Error::SelinuxDisabled(label.into()));
    }
    let path = PathBuf::from("/proc/thread-self/attr/exec");
    std::fs::write(&path, label).map_err(|source| Error::Selinux {
        label: label.into(),
        path,
        source,
    })
}

/// The filesystems that take a `context=` mount option for `linux.mountLabel`
/// (those rt creates; binds keep the label of their source).
pub fn takes_mount_label(fstype: &str) -> bool {
    matches!(fstype, "tmpfs" | "devpts" | "mqueue" | "ramfs")
}

/// Mount data with the SELinux context option added, as runc's
/// label.FormatMountLabel does.
pub fn with_mount_label(data: &str, label: &str) -> String {
    if label.is_empty() {
        return data.to_string();
    }
    let ctx = format!("context=\"{label}\"");
    if data.is_empty() {
        ctx
    } else {
        format!("{data},{ctx}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_label_is_a_context_option() {
        assert_eq!(
            with_mount_label("mode=755", "system_u:object_r:container_file_t:s0"),
            "mode=755,context=\"system_u:object_r:container_file_t:s0\""
        );
        assert_eq!(with_mount_label("", "l"), "context=\"l\"");
        assert_eq!(with_mount_label("size=1k", ""), "size=1k");
        assert!(takes_mount_label("tmpfs") && !takes_mount_label("proc"));
    }

    #[test]
    fn refused_when_the_module_is_off() {
        if !selinux_enabled() {
            assert!(matches!(apply_selinux("x"), Err(Error::SelinuxDisabled(_))));
        }
        if !apparmor_enabled() {
            assert!(matches!(
                apply_apparmor("x"),
                Err(Error::AppArmorDisabled(_))
            ));
        }
    }
}
