//! A guest kernel: Debian's current `linux-image-amd64`, fetched with
//! `apt-get download` into a cache directory and unpacked there, so a second
//! run (or an offline one) reuses it; or rt's own guest kernel, built by the
//! project's install script into the same layout (`boot/vmlinux-<version>`,
//! its built-in modules listed in `lib/modules/<version>/modules.builtin`).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{io, run, Error, Result};

/// An unpacked kernel package.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// `6.1.0-56-amd64`.
    pub version: String,
    pub vmlinuz: PathBuf,
    /// `lib/modules/<version>` of the package.
    pub modules: PathBuf,
    /// Modules built into the kernel (its `modules.builtin`): nothing to
    /// load for them.
    pub builtin: HashSet<String>,
}

/// Debian's generic kernel (the cgroup v2 test guest).
pub const GENERIC: &str = "linux-image-amd64";
/// Debian's cloud kernel: fewer drivers, a faster boot (the microVMs').
pub const CLOUD: &str = "linux-image-cloud-amd64";

/// The versioned package the meta-package `meta` depends on today.
fn current_package(meta: &str) -> Result<String> {
    let out = run(Command::new("apt-cache").args(["depends", meta]))?;
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-"))
        .map(str::to_string)
        .ok_or_else(|| Error::NoKernel("apt-cache lists no linux-image-* dependency".into()))
}

impl Kernel {
    /// Debian's amd64 kernel, from `cache` or downloaded into it. When apt
    /// cannot name the current package (no index, no network) but the cache
    /// holds a kernel, that one is used.
    pub fn debian(cache: &Path) -> Result<Kernel> {
        Self::debian_package(cache, GENERIC)
    }

    /// The kernel of the meta-package `meta` ([`GENERIC`], [`CLOUD`]), from
    /// `cache` or downloaded into it.
    pub fn debian_package(cache: &Path, meta: &str) -> Result<Kernel> {
        std::fs::create_dir_all(cache).map_err(io("creating", cache))?;
        let package = match current_package(meta) {
            Ok(p) => p,
            Err(e) => {
                return Self::cached_any(cache)?.ok_or(e);
            }
        };
        let dir = cache.join(&package);
        if let Some(k) = Self::unpacked(&dir)? {
            return Ok(k);
        }
        tracing::info!("downloading {package}");
        run(Command::new("apt-get")
            .args(["download", "-q", &package])
            .current_dir(cache))?;
        let deb = std::fs::read_dir(cache)
            .map_err(io("reading", cache))?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
            })
            .ok_or_else(|| Error::NoKernel(format!("apt-get download left no {package} .deb")))?;
        let tmp = cache.join(format!("{package}.partial"));
        let _ = std::fs::remove_dir_all(&tmp);
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tmp))?;
        std::fs::rename(&tmp, &dir).map_err(io("renaming", &tmp))?;
        let _ = std::fs::remove_file(&deb);
        Self::unpacked(&dir)?.ok_or_else(|| Error::NoKernel(format!("{package} holds no vmlinuz")))
    }

    /// Any kernel unpacked in `cache`, without asking apt.
    pub fn cached_any(cache: &Path) -> Result<Option<Kernel>> {
        for e in std::fs::read_dir(cache)
            .map_err(io("reading", cache))?
            .flatten()
        {
            if let Some(k) = Self::unpacked(&e.path())? {
                return Ok(Some(k));
            }
        }
        Ok(None)
    }

    /// The kernel unpacked in `dir`, if there is one.
    pub fn unpacked(dir: &Path) -> Result<Option<Kernel>> {
        let boot = dir.join("boot");
        let Ok(entries) = std::fs::read_dir(&boot) else {
            return Ok(None);
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            // A bzImage, or an ELF vmlinux booted directly (PVH).
            let version = name
                .strip_prefix("vmlinuz-")
                .or_else(|| name.strip_prefix("vmlinux-"));
            if let Some(version) = version {
                let modules = dir.join("lib/modules").join(version);
                let builtin = std::fs::read_to_string(modules.join("modules.builtin"))
                    .unwrap_or_default()
                    .lines()
                    .map(module_name)
                    .collect();
                return Ok(Some(Kernel {
                    version: version.to_string(),
                    vmlinuz: e.path(),
                    modules,
                    builtin,
                }));
            }
        }
        Ok(None)
    }

    /// The module files for `names` and everything they depend on, in load
    /// order (dependencies first). Dependencies are read from each module's
    /// own `.modinfo` (`depends=`), so no modules.dep (which the package
    /// leaves to depmod at install) is needed.
    /// Built-in modules are left out (with a kernel that has no loadable
    /// modules at all, the list is empty).
    pub fn modules_for(&self, names: &[&str]) -> Result<Vec<PathBuf>> {
        let mut index = HashMap::new();
        let wanted: Vec<String> = names.iter().map(|n| n.replace('-', "_")).collect();
        if wanted.iter().all(|n| self.builtin.contains(n)) {
            return Ok(Vec::new());
        }
        index_modules(&self.modules, &mut index)?;
        let mut order: Vec<PathBuf> = Vec::new();
        for name in &wanted {
            self.visit(name, &index, &mut order)?;
        }
        Ok(order)
    }

    fn visit(
        &self,
        name: &str,
        index: &HashMap<String, PathBuf>,
        order: &mut Vec<PathBuf>,
    ) -> Result<()> {
        if self.builtin.contains(name) {
            return Ok(());
        }
        let path = index
            .get(name)
            .ok_or_else(|| Error::NoModule(name.to_string()))?;
        if order.contains(path) {
            return Ok(());
        }
        let bytes = std::fs::read(path).map_err(io("reading", path))?;
        for dep in depends(&bytes) {
            self.visit(&dep, index, order)?;
        }
        order.push(path.clone());
        Ok(())
    }
}

/// Every `*.ko` below `dir`, by module name.
fn index_modules(dir: &Path, index: &mut HashMap<String, PathBuf>) -> Result<()> {
    for e in std::fs::read_dir(dir)
        .map_err(io("reading", dir))?
        .flatten()
    {
        let path = e.path();
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            index_modules(&path, index)?;
        } else if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
            if name.contains(".ko") {
                index.insert(module_name(name), path);
            }
        }
    }
    Ok(())
}

/// The `depends=a,b` entry of a module's .modinfo section.
fn depends(ko: &[u8]) -> Vec<String> {
    let key = b"\0depends=";
    let Some(at) = ko.windows(key.len()).position(|w| w == key) else {
        return Vec::new();
    };
    let rest = &ko[at + key.len()..];
    let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end])
        .split(',')
        .filter(|d| !d.is_empty())
        .map(|d| d.replace('-', "_"))
        .collect()
}

/// `virtio_mmio.ko` → `virtio_mmio`.
fn module_name(file: &str) -> String {
    let file = file.rsplit('/').next().unwrap_or(file);
    let base = file.split(".ko").next().unwrap_or(file);
    base.replace('-', "_")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_order_puts_dependencies_first() {
        let dir = tempfile::tempdir().unwrap();
        let modules = dir.path().join("lib/modules/6.1.0-1-amd64/kernel");
        let ko = |name: &str, deps: &str| {
            let path = modules.join(format!("drivers/{name}.ko"));
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(
                path,
                format!("\x7fELF...\0license=GPL\0depends={deps}\0name={name}\0"),
            )
            .unwrap();
        };
        ko("virtio", "");
        ko("virtio_ring", "virtio");
        ko("virtio_console", "virtio_ring,virtio");
        ko("brd", "");
        std::fs::create_dir_all(dir.path().join("boot")).unwrap();
        std::fs::write(dir.path().join("boot/vmlinuz-6.1.0-1-amd64"), "").unwrap();
        let k = Kernel::unpacked(dir.path()).unwrap().unwrap();
        assert_eq!(k.version, "6.1.0-1-amd64");
        let got: Vec<String> = k
            .modules_for(&["virtio-console", "brd"])
            .unwrap()
            .iter()
            .map(|p| module_name(p.to_str().unwrap()))
            .collect();
        assert_eq!(got, ["virtio", "virtio_ring", "virtio_console", "brd"]);
        assert!(k.modules_for(&["nope"]).is_err());
    }

    #[test]
    fn built_in_modules_are_not_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let version = "6.1.192-rt-1";
        let modules = dir.path().join("lib/modules").join(version);
        std::fs::create_dir_all(&modules).unwrap();
        std::fs::write(
            modules.join("modules.builtin"),
            "kernel/fs/overlayfs/overlay.ko\nkernel/drivers/virtio/virtio_pci.ko\n",
        )
        .unwrap();
        std::fs::create_dir_all(dir.path().join("boot")).unwrap();
        std::fs::write(dir.path().join(format!("boot/vmlinux-{version}")), "").unwrap();
        let k = Kernel::unpacked(dir.path()).unwrap().unwrap();
        assert_eq!(k.version, version);
        assert!(k
            .modules_for(&["overlay", "virtio-pci"])
            .unwrap()
            .is_empty());
        // One that is neither built in nor present is still an error.
        assert!(k.modules_for(&["overlay", "brd"]).is_err());
    }
}
