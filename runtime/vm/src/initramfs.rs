//! An initramfs (a newc cpio archive, uncompressed: the kernel takes it as
//! is) assembled from host files: binaries with the shared libraries `ldd`
//! names, busybox with its applet links, kernel modules, and files written
//! from memory (the guest's `/init`).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{io, Error, Result};

#[derive(Debug, Clone)]
enum Entry {
    Dir,
    File { src: PathBuf, mode: u32 },
    Data { bytes: Vec<u8>, mode: u32 },
    Symlink(String),
}

/// The archive's contents, by absolute guest path.
#[derive(Debug, Default, Clone)]
pub struct Initramfs {
    entries: BTreeMap<String, Entry>,
}

/// `/a/b/` → `a/b`; refuses relative paths and `..`.
fn key(path: &str) -> Result<String> {
    let bad = || Error::BadPath(path.to_string());
    let rel = path
        .strip_prefix('/')
        .ok_or_else(bad)?
        .trim_end_matches('/');
    if rel.is_empty()
        || rel
            .split('/')
            .any(|p| p.is_empty() || p == "." || p == "..")
    {
        return Err(bad());
    }
    Ok(rel.to_string())
}

impl Initramfs {
    /// An archive with the directories every guest needs.
    pub fn new() -> Initramfs {
        let mut i = Initramfs::default();
        for d in [
            "/bin", "/sbin", "/dev", "/proc", "/sys", "/tmp", "/run", "/etc", "/root",
        ] {
            i.dir(d).expect("static path");
        }
        i
    }

    fn insert(&mut self, path: &str, entry: Entry) -> Result<()> {
        let k = key(path)?;
        // Parents first: every prefix becomes a directory.
        let mut parent = String::new();
        for part in k.split('/').take(k.split('/').count() - 1) {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(part);
            self.entries.entry(parent.clone()).or_insert(Entry::Dir);
        }
        self.entries.insert(k, entry);
        Ok(())
    }

    /// Whether the image already holds `path`.
    pub fn has(&self, path: &str) -> bool {
        key(path).is_ok_and(|k| self.entries.contains_key(&k))
    }

    pub fn dir(&mut self, path: &str) -> Result<&mut Self> {
        self.insert(path, Entry::Dir)?;
        Ok(self)
    }

    /// A copy of the host file `src` (symlinks followed).
    pub fn file(&mut self, path: &str, src: &Path, mode: u32) -> Result<&mut Self> {
        self.insert(
            path,
            Entry::File {
                src: src.to_path_buf(),
                mode,
            },
        )?;
        Ok(self)
    }

    pub fn data(&mut self, path: &str, bytes: impl Into<Vec<u8>>, mode: u32) -> Result<&mut Self> {
        self.insert(
            path,
            Entry::Data {
                bytes: bytes.into(),
                mode,
            },
        )?;
        Ok(self)
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> Result<&mut Self> {
        self.insert(path, Entry::Symlink(target.to_string()))?;
        Ok(self)
    }

    /// An executable at `path` and, at their host paths, the shared
    /// libraries and loader it needs (none for a static binary).
    pub fn executable(&mut self, path: &str, src: &Path) -> Result<&mut Self> {
        self.file(path, src, 0o755)?;
        for lib in shared_libraries(src)? {
            let guest = lib.to_string_lossy().into_owned();
            self.file(&guest, &lib, 0o755)?;
        }
        Ok(self)
    }

    /// Like [`Initramfs::executable`], with the binary's symbols and debug
    /// information stripped (`strip --strip-all`; a debug build of rt
    /// shrinks from 136 MB to 26 MB): the guest unpacks every byte into
    /// its memory. Without `strip` on the host, the binary goes in as is.
    pub fn stripped_executable(&mut self, path: &str, src: &Path) -> Result<&mut Self> {
        let tmp = std::env::temp_dir().join(format!(
            "rt-initramfs-{}-{}",
            std::process::id(),
            self.entries.len()
        ));
        if !strip(src, &tmp) {
            return self.executable(path, src);
        }
        let bytes = std::fs::read(&tmp).map_err(io("reading", &tmp));
        let _ = std::fs::remove_file(&tmp);
        self.data(path, bytes?, 0o755)?;
        for lib in shared_libraries(src)? {
            let guest = lib.to_string_lossy().into_owned();
            self.file(&guest, &lib, 0o755)?;
        }
        Ok(self)
    }

    /// Busybox at /bin/busybox, with a link in /bin for each applet.
    pub fn busybox(&mut self, src: &Path) -> Result<&mut Self> {
        self.executable("/bin/busybox", src)?;
        let list = crate::run(Command::new(src).arg("--list"))?;
        for applet in list.lines().filter(|a| !a.is_empty() && *a != "busybox") {
            let path = format!("/bin/{applet}");
            if !self.entries.contains_key(&path[1..]) {
                self.symlink(&path, "busybox")?;
            }
        }
        Ok(self)
    }

    /// Kernel modules (from [`crate::kernel::Kernel::modules_for`]) under
    /// /lib/modules, and /etc/modules-load listing them in load order.
    pub fn modules(&mut self, files: &[PathBuf]) -> Result<&mut Self> {
        let mut order = String::new();
        for f in files {
            let name = f
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .ok_or_else(|| Error::BadPath(f.display().to_string()))?;
            self.file(&format!("/lib/modules/{name}"), f, 0o644)?;
            order.push_str(&format!("/lib/modules/{name}\n"));
        }
        self.data("/etc/modules-load", order, 0o644)
    }

    /// Writes the archive to `out`.
    pub fn write(&self, out: &Path) -> Result<()> {
        let file = std::fs::File::create(out).map_err(io("creating", out))?;
        let mut w = std::io::BufWriter::new(file);
        for (ino, (path, entry)) in self.entries.iter().enumerate() {
            let (mode, data): (u32, Vec<u8>) = match entry {
                Entry::Dir => (0o040755, Vec::new()),
                Entry::File { src, mode } => {
                    let bytes = std::fs::read(src).map_err(io("reading", src))?;
                    (0o100000 | mode, bytes)
                }
                Entry::Data { bytes, mode } => (0o100000 | mode, bytes.clone()),
                Entry::Symlink(target) => (0o120777, target.clone().into_bytes()),
            };
            let size = u32::try_from(data.len()).map_err(|_| Error::TooLarge {
                path: PathBuf::from(path),
            })?;
            let mut writer = cpio::newc::Builder::new(path)
                .ino(ino as u32 + 1)
                .mode(mode)
                .nlink(if matches!(entry, Entry::Dir) { 2 } else { 1 })
                .write(&mut w, size);
            writer.write_all(&data).map_err(io("writing", out))?;
            writer.finish().map_err(io("writing", out))?;
        }
        cpio::newc::trailer(&mut w).map_err(io("writing", out))?;
        w.flush().map_err(io("writing", out))?;
        Ok(())
    }

    /// Guest paths in the archive, for tests and diagnostics.
    pub fn paths(&self) -> impl Iterator<Item = String> + '_ {
        self.entries.keys().map(|k| format!("/{k}"))
    }
}

/// The absolute paths `ldd` prints for a dynamic executable.
pub(crate) fn shared_libraries(bin: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(bin)
        .output()
        .map_err(|source| Error::Spawn {
            program: "ldd".into(),
            source,
        })?;
    // A static binary: ldd says so and exits non-zero.
    if !out.status.success() {
        return Ok(Vec::new());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

/// `strip --strip-all -o dst src`; false (and no `dst`) when it failed or
/// there is no `strip` on the host.
pub(crate) fn strip(src: &Path, dst: &Path) -> bool {
    let stripped = Command::new("strip")
        .arg("--strip-all")
        .arg("-o")
        .arg(dst)
        .arg(src)
        .status()
        .is_ok_and(|s| s.success());
    if !stripped {
        let _ = std::fs::remove_file(dst);
    }
    stripped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_checked_and_parents_added() {
        let mut i = Initramfs::default();
        i.data("/a/b/c", "x", 0o644).unwrap();
        assert_eq!(i.paths().collect::<Vec<_>>(), ["/a", "/a/b", "/a/b/c"]);
        assert!(i.data("rel", "x", 0o644).is_err());
        assert!(i.data("/a/../etc", "x", 0o644).is_err());
    }

    #[test]
    fn archive_round_trips_through_cpio() {
        let dir = tempfile::tempdir().unwrap();
        let mut i = Initramfs::new();
        i.data("/init", "#!/bin/sh\n", 0o755).unwrap();
        i.symlink("/bin/sh", "busybox").unwrap();
        i.executable("/bin/ls", Path::new("/bin/ls")).unwrap();
        let out = dir.path().join("initrd");
        i.write(&out).unwrap();
        // Debian's cpio lists it.
        let list = Command::new("cpio")
            .args(["-t", "--quiet"])
            .stdin(std::fs::File::open(&out).unwrap())
            .output();
        let Ok(list) = list else {
            eprintln!("skipping the cpio listing: no cpio(1)");
            return;
        };
        let names = String::from_utf8_lossy(&list.stdout);
        assert!(names.lines().any(|l| l == "init"), "{names}");
        assert!(names.lines().any(|l| l == "bin/sh"));
        // ls is dynamic: its libc came along.
        assert!(names.lines().any(|l| l.contains("libc.so")), "{names}");
    }
}
