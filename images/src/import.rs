//! `rt image import PATH`: an OCI image layout directory, an oci-archive tar
//! (a layout in a tar) or a docker-archive tar (`docker save`, `podman save`),
//! optionally gzip-compressed. Every blob is verified as it enters the store.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::digest::Digest;
use crate::reference::Reference;
use crate::store::{self, Store};
use crate::types::{
    Descriptor, ImageConfig, Index, Manifest, OCI_CONFIG, OCI_LAYER, OCI_LAYER_GZIP,
    OCI_LAYER_ZSTD, OCI_MANIFEST, REF_NAME,
};

/// Errors of import.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} is neither an OCI image layout, an oci-archive nor a docker-archive")]
    Unknown(PathBuf),
    #[error("parsing {path}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{0}: the image has no name; give one with --name")]
    NoName(PathBuf),
    #[error("{path}: blob {digest} is missing")]
    Missing { path: PathBuf, digest: String },
    #[error(transparent)]
    Reference(#[from] crate::reference::Error),
    #[error(transparent)]
    Store(#[from] store::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = std::fs::read(path).map_err(io("reading", path))?;
    serde_json::from_slice(&bytes).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// Imports everything at `path`; returns the names given.
pub fn import(store: &Store, path: &Path, name: Option<&str>) -> Result<Vec<String>> {
    let _lock = store.writer_lock()?;
    if path.is_dir() {
        return import_layout(store, path, name);
    }
    let tmp =
        tempfile::tempdir_in(store.tmp()).map_err(io("creating a directory in", &store.tmp()))?;
    let file = File::open(path).map_err(io("opening", path))?;
    let mut reader = BufReader::new(file);
    let gzip = {
        use std::io::BufRead;
        let head = reader.fill_buf().map_err(io("reading", path))?;
        head.starts_with(&[0x1f, 0x8b])
    };
    let stream: Box<dyn Read> = if gzip {
        Box::new(flate2::read::MultiGzDecoder::new(reader))
    } else {
        Box::new(reader)
    };
    // The tar crate's unpack refuses entries leading outside the directory.
    tar::Archive::new(stream)
        .unpack(tmp.path())
        .map_err(io("extracting", path))?;
    let label = path.file_stem().map(PathBuf::from).unwrap_or_default();
    if tmp.path().join("oci-layout").exists() {
        import_layout_named(store, tmp.path(), name, &label)
    } else if tmp.path().join("manifest.json").exists() {
        import_docker(store, tmp.path(), name, path)
    } else {
        Err(Error::Unknown(path.to_path_buf()))
    }
}

fn import_layout(store: &Store, dir: &Path, name: Option<&str>) -> Result<Vec<String>> {
    if !dir.join("oci-layout").exists() {
        return Err(Error::Unknown(dir.to_path_buf()));
    }
    let label = dir.file_name().map(PathBuf::from).unwrap_or_default();
    import_layout_named(store, dir, name, &label)
}

/// The name of a layout's manifest: `--name` for a single image, else the
/// ref.name annotation (a full reference, or a tag of the layout's name).
fn layout_name(
    desc: &Descriptor,
    count: usize,
    name: Option<&str>,
    label: &Path,
) -> Result<Option<String>> {
    if let (Some(n), 1) = (name, count) {
        return Ok(Some(Reference::parse(n)?.to_string()));
    }
    let Some(r) = desc.annotations.get(REF_NAME) else {
        return Ok(None);
    };
    let full = if r.contains('/') || r.contains(':') {
        r.clone()
    } else {
        let base = name
            .map(str::to_string)
            .unwrap_or_else(|| label.to_string_lossy().to_lowercase());
        let base = base.split(':').next().unwrap_or_default().to_string();
        format!("{base}:{r}")
    };
    Ok(Some(Reference::parse(&full)?.to_string()))
}

fn import_layout_named(
    store: &Store,
    dir: &Path,
    name: Option<&str>,
    label: &Path,
) -> Result<Vec<String>> {
    let index: Index = read_json(&dir.join("index.json"))?;
    let mut names = Vec::new();
    for m in &index.manifests {
        copy_tree(store, dir, m)?;
        let Some(n) = layout_name(m, index.manifests.len(), name, label)? else {
            continue;
        };
        let mut desc = m.clone();
        desc.annotations.clear();
        store.tag(&n, desc)?;
        names.push(n);
    }
    if names.is_empty() {
        return Err(Error::NoName(dir.to_path_buf()));
    }
    Ok(names)
}

/// Copies `desc` and what it references from the layout into the store.
/// Children of an index that the layout does not hold are skipped, except
/// the host platform's.
fn copy_tree(store: &Store, dir: &Path, desc: &Descriptor) -> Result<()> {
    let d = store::parse_digest(&desc.digest)?;
    copy_blob(store, dir, &d, desc.size)?;
    if desc.is_index() {
        let index: Index = store.read_json(desc, "index")?;
        let host = store::select_platform(&index.manifests).cloned();
        for m in &index.manifests {
            let md = store::parse_digest(&m.digest)?;
            if md.path_in(&dir.join("blobs")).exists() || Some(m) == host.as_ref() {
                copy_tree(store, dir, m)?;
            }
        }
    } else {
        let manifest: Manifest = store.read_json(desc, "manifest")?;
        let cd = store::parse_digest(&manifest.config.digest)?;
        copy_blob(store, dir, &cd, manifest.config.size)?;
        for l in &manifest.layers {
            copy_blob(store, dir, &store::parse_digest(&l.digest)?, l.size)?;
        }
    }
    Ok(())
}

fn copy_blob(store: &Store, dir: &Path, d: &Digest, size: u64) -> Result<()> {
    if store.has(d) {
        return Ok(());
    }
    let path = d.path_in(&dir.join("blobs"));
    let f = File::open(&path).map_err(|_| Error::Missing {
        path: dir.to_path_buf(),
        digest: d.to_string(),
    })?;
    store.put(f, Some((d, Some(size))))?;
    Ok(())
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// A file named inside the archive, refused if it would lead outside it.
fn inside(dir: &Path, name: &str) -> Result<PathBuf> {
    let rel = Path::new(name);
    if rel.is_absolute()
        || rel
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(Error::Unknown(dir.join(name)));
    }
    Ok(dir.join(rel))
}

fn layer_media_type(path: &Path) -> Result<&'static str> {
    let mut head = [0u8; 4];
    let n = File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .map_err(io("reading", path))?;
    Ok(match &head[..n] {
        [0x1f, 0x8b, ..] => OCI_LAYER_GZIP,
        [0x28, 0xb5, 0x2f, 0xfd] => OCI_LAYER_ZSTD,
        _ => OCI_LAYER,
    })
}

fn import_docker(
    store: &Store,
    dir: &Path,
    name: Option<&str>,
    archive: &Path,
) -> Result<Vec<String>> {
    let entries: Vec<DockerEntry> = read_json(&dir.join("manifest.json"))?;
    let mut names = Vec::new();
    for e in &entries {
        let config_path = inside(dir, &e.config)?;
        let config_bytes = std::fs::read(&config_path).map_err(io("reading", &config_path))?;
        let _: ImageConfig =
            serde_json::from_slice(&config_bytes).map_err(|source| Error::Json {
                path: config_path.clone(),
                source,
            })?;
        let (cd, cn) = store.put_bytes(&config_bytes)?;
        let mut layers = Vec::new();
        for l in &e.layers {
            let p = inside(dir, l)?;
            let mt = layer_media_type(&p)?;
            let f = File::open(&p).map_err(io("opening", &p))?;
            let (d, n) = store.put(f, None)?;
            layers.push(Descriptor::new(mt, &d, n));
        }
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(OCI_MANIFEST.to_string()),
            config: Descriptor::new(OCI_CONFIG, &cd, cn),
            layers,
            annotations: BTreeMap::new(),
        };
        let bytes = serde_json::to_vec(&manifest).expect("a manifest serialises");
        let (md, mn) = store.put_bytes(&bytes)?;
        let desc = Descriptor::new(OCI_MANIFEST, &md, mn);
        let tags: Vec<String> = match (name, &e.repo_tags) {
            (Some(n), _) if entries.len() == 1 => vec![n.to_string()],
            (_, Some(t)) if !t.is_empty() => t.clone(),
            _ => return Err(Error::NoName(archive.to_path_buf())),
        };
        for t in tags {
            let n = Reference::parse(&t)?.to_string();
            store.tag(&n, desc.clone())?;
            names.push(n);
        }
    }
    Ok(names)
}
