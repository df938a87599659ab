//! `net.ipv4.ip_forward`: turned on while a NAT network exists, and put back
//! as it was after the last one goes.
//!
//! The switch is the host's, shared by every state root, so the record is
//! too: `/run/rt-net/forwarding.json` lists the NAT networks holding it
//! (by the path of their record) and the value found before the first. A
//! holder whose record is gone (its root was wiped) no longer counts.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::lockfile::LockFile;

const SYSCTL: &str = "/proc/sys/net/ipv4/ip_forward";

/// Errors of the forwarding switch.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Lock(#[from] crate::lockfile::Error),
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Record {
    /// The value before rt turned forwarding on.
    previous: String,
    holders: Vec<PathBuf>,
}

/// The host's forwarding switch and rt's record of it.
#[derive(Debug, Clone)]
pub struct Forwarding {
    dir: PathBuf,
    sysctl: PathBuf,
}

impl Default for Forwarding {
    fn default() -> Self {
        Forwarding {
            dir: PathBuf::from("/run/rt-net"),
            sysctl: PathBuf::from(SYSCTL),
        }
    }
}

impl Forwarding {
    #[cfg(test)]
    fn at(dir: &Path, sysctl: &Path) -> Forwarding {
        Forwarding {
            dir: dir.into(),
            sysctl: sysctl.into(),
        }
    }

    /// Turns forwarding on for `holder` (a network record's path).
    pub fn hold(&self, holder: &Path) -> Result<(), Error> {
        let _lock = self.lock()?;
        let mut rec = self.load()?;
        let now = read(&self.sysctl)?;
        rec.holders.retain(|h| h.exists());
        // Holders that vanished without a release still leave the value
        // found before the first of them to restore.
        if rec.previous.is_empty() {
            rec.previous = now.clone();
        }
        if !rec.holders.iter().any(|h| h == holder) {
            rec.holders.push(holder.to_path_buf());
        }
        if now != "1" {
            write(&self.sysctl, "1")?;
        }
        self.save(&rec)
    }

    /// Drops `holder`; the last one out restores the previous value.
    pub fn release(&self, holder: &Path) -> Result<(), Error> {
        let lock = self.lock()?;
        let mut rec = self.load()?;
        rec.holders.retain(|h| h != holder && h.exists());
        if !rec.holders.is_empty() {
            return self.save(&rec);
        }
        if !rec.previous.is_empty() && read(&self.sysctl)? != rec.previous {
            write(&self.sysctl, &rec.previous)?;
        }
        let path = self.dir.join("forwarding.json");
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(Error::Io {
                    what: "removing",
                    path,
                    source: e,
                })
            }
            _ => {}
        }
        lock.remove()?;
        // The directory too, unless another lock appeared in it meanwhile.
        let _ = std::fs::remove_dir(&self.dir);
        Ok(())
    }

    fn lock(&self) -> Result<LockFile, Error> {
        Ok(LockFile::acquire(&self.dir.join("forwarding.lock"))?)
    }

    fn load(&self) -> Result<Record, Error> {
        let path = self.dir.join("forwarding.json");
        match std::fs::read(&path) {
            // A record that does not parse is treated as absent: the value
            // found now becomes the one to restore.
            Ok(data) => Ok(serde_json::from_slice(&data).unwrap_or_default()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Record::default()),
            Err(source) => Err(Error::Io {
                what: "reading",
                path,
                source,
            }),
        }
    }

    fn save(&self, rec: &Record) -> Result<(), Error> {
        Ok(crate::lockfile::write_json(
            &self.dir.join("forwarding.json"),
            rec,
        )?)
    }
}

fn read(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|source| Error::Io {
            what: "reading",
            path: path.into(),
            source,
        })
}

fn write(path: &Path, value: &str) -> Result<(), Error> {
    std::fs::write(path, value).map_err(|source| Error::Io {
        what: "writing",
        path: path.into(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_holder_restores_and_stale_holders_do_not_count() {
        let d = tempfile::tempdir().unwrap();
        let sysctl = d.path().join("ip_forward");
        std::fs::write(&sysctl, "0\n").unwrap();
        let f = Forwarding::at(&d.path().join("rec"), &sysctl);
        let (a, b) = (d.path().join("a.json"), d.path().join("b.json"));
        std::fs::write(&a, "").unwrap();
        std::fs::write(&b, "").unwrap();
        f.hold(&a).unwrap();
        f.hold(&b).unwrap();
        assert_eq!(read(&sysctl).unwrap(), "1");
        f.release(&a).unwrap();
        assert_eq!(read(&sysctl).unwrap(), "1");
        // b's record vanished without a release: a new holder's release is
        // the last one.
        std::fs::remove_file(&b).unwrap();
        std::fs::write(&a, "").unwrap();
        f.hold(&a).unwrap();
        f.release(&a).unwrap();
        assert_eq!(read(&sysctl).unwrap(), "0");
        assert!(!d.path().join("rec").exists(), "record and lock removed");
    }

    #[test]
    fn forwarding_already_on_is_left_on() {
        let d = tempfile::tempdir().unwrap();
        let sysctl = d.path().join("ip_forward");
        std::fs::write(&sysctl, "1\n").unwrap();
        let f = Forwarding::at(&d.path().join("rec"), &sysctl);
        let a = d.path().join("a.json");
        f.hold(&a).unwrap();
        f.release(&a).unwrap();
        assert_eq!(read(&sysctl).unwrap(), "1");
    }
}
