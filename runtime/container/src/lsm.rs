//! Linux security modules: AppArmor profiles on exec, SELinux detection.

use std::path::PathBuf;

/// Errors applying an LSM label.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("apparmor profile {0:?} requested but AppArmor is not enabled on this host")]
    AppArmorDisabled(String),
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
