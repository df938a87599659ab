//! Lock files that go away with what they guard, and the records they guard
//! written whole ([`write_json`]).
//!
//! A network's lock (and the host's forwarding lock) is removed by the last
//! user of what it guards, while still held. A process that opened it
//! before and was waiting then holds a lock on an orphaned file: after each
//! `flock` the path is checked to still name the locked file, and the open
//! is retried if not.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

/// Errors of lock files.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("locking {path}")]
    Lock {
        path: PathBuf,
        #[source]
        source: nix::errno::Errno,
    },
}

/// An exclusive `flock` on a file, held until dropped.
#[derive(Debug)]
pub struct LockFile {
    _lock: Flock<File>,
    path: PathBuf,
}

impl LockFile {
    /// Creates (if need be) and locks `path`, waiting for other holders.
    pub fn acquire(path: &Path) -> Result<LockFile, Error> {
        let io = |what| {
            move |source| Error::Io {
                what,
                path: path.to_path_buf(),
                source,
            }
        };
        loop {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(io("creating the directory of"))?;
            }
            let file = match File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(path)
            {
                Ok(f) => f,
                // The directory went with the last lock file in it: again.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io("opening")(e)),
            };
            let lock =
                Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, source)| Error::Lock {
                    path: path.to_path_buf(),
                    source,
                })?;
            let held = lock.metadata().map_err(io("inspecting"))?;
            match std::fs::metadata(path) {
                Ok(now) if now.ino() == held.ino() && now.dev() == held.dev() => {
                    return Ok(LockFile {
                        _lock: lock,
                        path: path.to_path_buf(),
                    })
                }
                // Removed (or replaced) by the holder we waited for.
                _ => continue,
            }
        }
    }

    /// Removes the file; the lock stays held until drop.
    pub fn remove(&self) -> Result<(), Error> {
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::Io {
                what: "removing",
                path: self.path.clone(),
                source: e,
            }),
            _ => Ok(()),
        }
    }
}

/// Writes `value` as JSON to `path` through a temporary file renamed into
/// place: a reader (or a crash) never sees half a record.
pub fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<(), Error> {
    let tmp = path.with_extension("json.tmp");
    let io = |what| {
        let path = tmp.clone();
        move |source| Error::Io { what, path, source }
    };
    let data = serde_json::to_vec_pretty(value).expect("rt's records serialise");
    std::fs::write(&tmp, data).map_err(io("writing"))?;
    std::fs::rename(&tmp, path).map_err(io("renaming"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_waiter_on_a_removed_lock_file_locks_the_new_one() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("x.lock");
        let first = LockFile::acquire(&path).unwrap();
        let waiter = std::thread::spawn({
            let path = path.clone();
            move || {
                let l = LockFile::acquire(&path).unwrap();
                // The file it holds is the one at the path.
                assert!(path.exists());
                drop(l);
            }
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
        first.remove().unwrap();
        drop(first);
        waiter.join().unwrap();
    }
}
