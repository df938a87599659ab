//! The content-addressed store: an OCI image layout (`oci-layout`,
//! `index.json`, `blobs/sha256/…`) under `--store` (default /var/lib/rt),
//! plus `layers/` (unpacked layers for `--overlay`) and `tmp/`.
//!
//! Every blob is hashed as it is written into `tmp/` and renamed into place
//! only if digest and size match, so a reader never sees a partial or wrong
//! blob and two writers of the same blob both succeed. Writers hold the gc
//! lock shared; `prune` holds it exclusively. index.json is rewritten
//! (write + rename) under its own exclusive lock.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::de::DeserializeOwned;

use crate::digest::{self, Digest, Verifier};
use crate::reference::Reference;
use crate::types::{Descriptor, ImageConfig, Index, Manifest, REF_NAME};

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("blob {0}")]
    Digest(String, #[source] digest::Error),
    #[error("parsing {what} {digest}")]
    Json {
        what: &'static str,
        digest: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("image {0:?} does not exist in the store")]
    NotFound(String),
    #[error("image {name:?} has no manifest for {platform}")]
    NoPlatform { name: String, platform: String },
    #[error("locking {path}")]
    Lock {
        path: PathBuf,
        #[source]
        source: nix::errno::Errno,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// The default store of root; rootless users get one in their data dir.
pub fn default_root() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/rt");
    }
    let data = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    data.join("rt")
}

/// An image in the store: its manifest and configuration.
#[derive(Debug, Clone)]
pub struct Image {
    /// The stored name the reference resolved to.
    pub name: String,
    pub manifest_desc: Descriptor,
    pub manifest: Manifest,
    pub config: ImageConfig,
}

/// The store.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// The platform rt runs images for, in OCI terms.
pub fn host_platform() -> (&'static str, &'static str) {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    ("linux", arch)
}

impl Store {
    /// Opens (creating if needed) the store at `root`.
    pub fn open(root: &Path) -> Result<Store> {
        for dir in ["blobs/sha256", "tmp", "layers"] {
            let p = root.join(dir);
            std::fs::create_dir_all(&p).map_err(io("creating", &p))?;
        }
        let layout = root.join("oci-layout");
        if !layout.exists() {
            std::fs::write(&layout, r#"{"imageLayoutVersion":"1.0.0"}"#)
                .map_err(io("writing", &layout))?;
        }
        let store = Store {
            root: root.to_path_buf(),
        };
        if !root.join("index.json").exists() {
            store.write_index(&Index::default())?;
        }
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        d.path_in(&self.root.join("blobs"))
    }

    pub fn has(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }

    /// The directory for store-internal temporary files.
    pub fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Where `--overlay` keeps the unpacked layer with this digest.
    pub fn layer_dir(&self, d: &Digest) -> PathBuf {
        self.root.join("layers").join(d.hex())
    }

    fn lock(&self, name: &str, arg: FlockArg) -> Result<Flock<File>> {
        let path = self.root.join(name);
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io("opening", &path))?;
        Flock::lock(f, arg).map_err(|(_, source)| Error::Lock { path, source })
    }

    /// Held (shared) by anything that adds blobs and tags them; `prune`
    /// takes it exclusively.
    pub fn writer_lock(&self) -> Result<Flock<File>> {
        self.lock("gc.lock", FlockArg::LockShared)
    }

    /// Writes the blob read from `r`; with `expected`, refuses content whose
    /// digest (or size, when given) differs. Returns the digest and size.
    pub fn put(
        &self,
        r: impl Read,
        expected: Option<(&Digest, Option<u64>)>,
    ) -> Result<(Digest, u64)> {
        let tmp_dir = self.tmp();
        let mut tmp = tempfile::NamedTempFile::new_in(&tmp_dir)
            .map_err(io("creating a file in", &tmp_dir))?;
        let mut v = Verifier::new(r);
        std::io::copy(&mut v, tmp.as_file_mut()).map_err(io("writing", tmp.path()))?;
        let got = v.finish().map_err(io("reading blob for", tmp.path()))?;
        if let Some((d, size)) = expected {
            digest::check(d, size, got.clone()).map_err(|e| Error::Digest(d.to_string(), e))?;
        }
        let dest = self.blob_path(&got.0);
        tmp.persist(&dest).map_err(|e| Error::Io {
            op: "renaming into",
            path: dest.clone(),
            source: e.error,
        })?;
        Ok(got)
    }

    pub fn put_bytes(&self, bytes: &[u8]) -> Result<(Digest, u64)> {
        self.put(bytes, None)
    }

    pub fn open_blob(&self, d: &Digest) -> Result<File> {
        let p = self.blob_path(d);
        File::open(&p).map_err(io("opening blob", &p))
    }

    /// Reads and parses a JSON blob, checking its digest and size.
    pub fn read_json<T: DeserializeOwned>(
        &self,
        desc: &Descriptor,
        what: &'static str,
    ) -> Result<T> {
        let d = parse_digest(&desc.digest)?;
        let p = self.blob_path(&d);
        let bytes = std::fs::read(&p).map_err(io("reading blob", &p))?;
        digest::check(
            &d,
            Some(desc.size),
            (Digest::of(&bytes), bytes.len() as u64),
        )
        .map_err(|e| Error::Digest(desc.digest.clone(), e))?;
        serde_json::from_slice(&bytes).map_err(|source| Error::Json {
            what,
            digest: desc.digest.clone(),
            source,
        })
    }

    pub fn index(&self) -> Result<Index> {
        let p = self.root.join("index.json");
        let bytes = std::fs::read(&p).map_err(io("reading", &p))?;
        serde_json::from_slice(&bytes).map_err(|source| Error::Json {
            what: "index",
            digest: p.display().to_string(),
            source,
        })
    }

    fn write_index(&self, index: &Index) -> Result<()> {
        let p = self.root.join("index.json");
        let tmp_dir = self.tmp();
        let mut tmp = tempfile::NamedTempFile::new_in(&tmp_dir)
            .map_err(io("creating a file in", &tmp_dir))?;
        serde_json::to_writer_pretty(tmp.as_file_mut(), index).map_err(|e| Error::Io {
            op: "writing",
            path: p.clone(),
            source: e.into(),
        })?;
        tmp.persist(&p).map_err(|e| Error::Io {
            op: "renaming into",
            path: p.clone(),
            source: e.error,
        })?;
        Ok(())
    }

    /// Names `desc` (a manifest in the store) `name`, replacing an older
    /// image of that name.
    pub fn tag(&self, name: &str, mut desc: Descriptor) -> Result<()> {
        let _lock = self.lock("index.lock", FlockArg::LockExclusive)?;
        let mut index = self.index()?;
        index
            .manifests
            .retain(|m| m.annotations.get(REF_NAME).map(String::as_str) != Some(name));
        desc.annotations
            .insert(REF_NAME.to_string(), name.to_string());
        index.manifests.push(desc);
        self.write_index(&index)
    }

    /// Removes the name; Ok(false) if there was none.
    pub fn untag(&self, name: &str) -> Result<bool> {
        let _lock = self.lock("index.lock", FlockArg::LockExclusive)?;
        let mut index = self.index()?;
        let before = index.manifests.len();
        index
            .manifests
            .retain(|m| m.annotations.get(REF_NAME).map(String::as_str) != Some(name));
        if index.manifests.len() == before {
            return Ok(false);
        }
        self.write_index(&index)?;
        Ok(true)
    }

    /// (name, manifest descriptor) of every named image.
    pub fn list(&self) -> Result<Vec<(String, Descriptor)>> {
        Ok(self
            .index()?
            .manifests
            .into_iter()
            .filter_map(|m| Some((m.annotations.get(REF_NAME)?.clone(), m)))
            .collect())
    }

    /// The stored name `r` refers to: as given, normalised (`busybox` is
    /// docker.io/library/busybox:latest), or a manifest digest (or a prefix
    /// of its hex of at least 12 digits).
    pub fn resolve(&self, r: &str) -> Result<(String, Descriptor)> {
        let list = self.list()?;
        let normal = Reference::parse(r).map(|p| p.to_string()).ok();
        let hex = r.strip_prefix("sha256:").unwrap_or(r);
        list.iter()
            .find(|(n, _)| n == r || Some(n) == normal.as_ref())
            .or_else(|| {
                list.iter().find(|(_, d)| {
                    hex.len() >= 12
                        && d.digest
                            .strip_prefix("sha256:")
                            .is_some_and(|h| h.starts_with(hex))
                })
            })
            .cloned()
            .ok_or_else(|| Error::NotFound(r.to_string()))
    }

    /// Loads the image `r` names, choosing the host's platform in an index.
    pub fn image(&self, r: &str) -> Result<Image> {
        let (name, desc) = self.resolve(r)?;
        let desc = self.platform_manifest(&name, desc)?;
        let manifest: Manifest = self.read_json(&desc, "manifest")?;
        let config: ImageConfig = self.read_json(&manifest.config, "image config")?;
        Ok(Image {
            name,
            manifest_desc: desc,
            manifest,
            config,
        })
    }

    /// `desc` itself if it is a manifest, or the host platform's entry of
    /// the index it points to.
    pub fn platform_manifest(&self, name: &str, desc: Descriptor) -> Result<Descriptor> {
        if !desc.is_index() {
            return Ok(desc);
        }
        let index: Index = self.read_json(&desc, "index")?;
        select_platform(&index.manifests).cloned().ok_or_else(|| {
            let (os, arch) = host_platform();
            Error::NoPlatform {
                name: name.to_string(),
                platform: format!("{os}/{arch}"),
            }
        })
    }

    /// Removes every blob and unpacked layer no named image references.
    /// Returns how many blobs and bytes were freed.
    pub fn prune(&self) -> Result<(usize, u64)> {
        let _gc = self.lock("gc.lock", FlockArg::LockExclusive)?;
        let mut keep = std::collections::BTreeSet::new();
        for (_, desc) in self.list()? {
            self.mark(&desc, &mut keep)?;
        }
        let mut freed = (0, 0);
        let blobs = self.root.join("blobs/sha256");
        for e in std::fs::read_dir(&blobs)
            .map_err(io("listing", &blobs))?
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if !keep.contains(&name) {
                freed.0 += 1;
                freed.1 += e.metadata().map_or(0, |m| m.len());
                std::fs::remove_file(e.path()).map_err(io("removing", &e.path()))?;
            }
        }
        let layers = self.root.join("layers");
        for e in std::fs::read_dir(&layers)
            .map_err(io("listing", &layers))?
            .flatten()
        {
            if !keep.contains(&e.file_name().to_string_lossy().into_owned()) {
                crate::unpack::remove_tree(&e.path()).map_err(io("removing", &e.path()))?;
            }
        }
        let tmp = self.tmp();
        for e in std::fs::read_dir(&tmp)
            .map_err(io("listing", &tmp))?
            .flatten()
        {
            let _ = crate::unpack::remove_tree(&e.path());
        }
        Ok(freed)
    }

    fn mark(&self, desc: &Descriptor, keep: &mut std::collections::BTreeSet<String>) -> Result<()> {
        let d = parse_digest(&desc.digest)?;
        keep.insert(d.hex().to_string());
        if !self.has(&d) {
            return Ok(());
        }
        if desc.is_index() {
            let index: Index = self.read_json(desc, "index")?;
            for m in &index.manifests {
                self.mark(m, keep)?;
            }
        } else if desc.media_type.ends_with("manifest.v1+json")
            || desc.media_type.ends_with("manifest.v2+json")
        {
            let m: Manifest = self.read_json(desc, "manifest")?;
            keep.insert(parse_digest(&m.config.digest)?.hex().to_string());
            for l in &m.layers {
                keep.insert(parse_digest(&l.digest)?.hex().to_string());
            }
        }
        Ok(())
    }
}

/// The linux/<host arch> entry of an index's manifests.
pub fn select_platform(manifests: &[Descriptor]) -> Option<&Descriptor> {
    let (os, arch) = host_platform();
    manifests.iter().find(|m| {
        m.platform
            .as_ref()
            .is_some_and(|p| p.os == os && p.architecture == arch)
    })
}

pub fn parse_digest(s: &str) -> Result<Digest> {
    s.parse().map_err(|e| Error::Digest(s.to_string(), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::OCI_MANIFEST;

    #[test]
    fn blobs_are_verified_and_names_resolve() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let (d, n) = s.put_bytes(b"layer").unwrap();
        assert_eq!(n, 5);
        assert!(s.has(&d));
        let wrong = Digest::of(b"other");
        let e = s.put(&b"layer"[..], Some((&wrong, None))).unwrap_err();
        assert!(e.to_string().contains(&wrong.to_string()), "{e}");
        assert!(!s.has(&wrong));
        assert_eq!(
            std::fs::read_dir(s.tmp()).unwrap().count(),
            0,
            "no partial blob left"
        );
        let e = s.put(&b"layer"[..], Some((&d, Some(6)))).unwrap_err();
        assert!(
            matches!(e, Error::Digest(_, digest::Error::Size { .. })),
            "{e}"
        );

        let desc = Descriptor::new(OCI_MANIFEST, &d, n);
        s.tag("docker.io/library/busybox:latest", desc.clone())
            .unwrap();
        assert_eq!(
            s.resolve("busybox").unwrap().0,
            "docker.io/library/busybox:latest"
        );
        assert_eq!(s.resolve(&d.hex()[..12]).unwrap().1.digest, d.to_string());
        assert!(matches!(s.resolve("nothing"), Err(Error::NotFound(_))));
        s.tag("docker.io/library/busybox:latest", desc).unwrap();
        assert_eq!(s.list().unwrap().len(), 1, "retagging replaces");
        assert!(s.untag("docker.io/library/busybox:latest").unwrap());
        assert!(!s.untag("docker.io/library/busybox:latest").unwrap());
        let (count, _) = s.prune().unwrap();
        assert_eq!(count, 1);
        assert!(!s.has(&d));
    }

    #[test]
    fn concurrent_writers_of_one_blob() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let data = vec![7u8; 1 << 20];
        let d = Digest::of(&data);
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| {
                    s.put(&data[..], Some((&d, Some(data.len() as u64))))
                        .unwrap()
                });
            }
        });
        assert_eq!(std::fs::read(s.blob_path(&d)).unwrap(), data);
    }
}
