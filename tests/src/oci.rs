//! Test images built from scratch: layers as tar streams (including hostile
//! entries a normal tar writer refuses to produce) and OCI image layouts.

use std::path::Path;

use serde_json::{json, Value};
use sha2::Digest as _;

fn sha(bytes: &[u8]) -> String {
    format!("sha256:{:x}", sha2::Sha256::digest(bytes))
}

/// One layer under construction.
#[derive(Default)]
pub struct Layer {
    b: Option<tar::Builder<Vec<u8>>>,
}

impl std::fmt::Debug for Layer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Layer")
    }
}

impl Layer {
    pub fn new() -> Layer {
        Layer {
            b: Some(tar::Builder::new(Vec::new())),
        }
    }

    fn b(&mut self) -> &mut tar::Builder<Vec<u8>> {
        self.b.as_mut().expect("layer not finished")
    }

    /// An entry whose name is written verbatim (no validation), so that
    /// hostile names such as `../x` or `/etc/x` can be made.
    pub fn raw(
        &mut self,
        kind: tar::EntryType,
        name: &str,
        link: Option<&str>,
        data: &[u8],
        mode: u32,
    ) -> &mut Self {
        let mut h = tar::Header::new_gnu();
        {
            let old = h.as_old_mut();
            old.name = [0; 100];
            old.name[..name.len()].copy_from_slice(name.as_bytes());
            if let Some(l) = link {
                old.linkname = [0; 100];
                old.linkname[..l.len()].copy_from_slice(l.as_bytes());
            }
        }
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_600_000_000);
        h.set_cksum();
        self.b().append(&h, data).unwrap();
        self
    }

    pub fn dir(&mut self, name: &str, mode: u32) -> &mut Self {
        self.raw(tar::EntryType::Directory, name, None, b"", mode)
    }

    pub fn file(&mut self, name: &str, data: &[u8], mode: u32) -> &mut Self {
        self.raw(tar::EntryType::Regular, name, None, data, mode)
    }

    /// A file with owner uid:gid.
    pub fn owned_file(
        &mut self,
        name: &str,
        data: &[u8],
        mode: u32,
        uid: u64,
        gid: u64,
    ) -> &mut Self {
        let mut h = tar::Header::new_gnu();
        h.set_path(name).unwrap();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_mtime(1_600_000_000);
        h.set_cksum();
        self.b().append(&h, data).unwrap();
        self
    }

    /// A regular file with an extended attribute (a PAX `SCHILY.xattr.` record).
    pub fn xattr_file(
        &mut self,
        name: &str,
        data: &[u8],
        mode: u32,
        key: &str,
        value: &[u8],
    ) -> &mut Self {
        let record = format!("SCHILY.xattr.{key}");
        self.b()
            .append_pax_extensions([(record.as_str(), value)])
            .unwrap();
        self.file(name, data, mode)
    }

    /// A character device node.
    pub fn char_device(&mut self, name: &str, major: u32, minor: u32, mode: u32) -> &mut Self {
        let mut h = tar::Header::new_gnu();
        h.set_path(name).unwrap();
        h.set_entry_type(tar::EntryType::Char);
        h.set_mode(mode);
        h.set_size(0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_600_000_000);
        h.set_cksum();
        self.b().append(&h, &b""[..]).unwrap();
        self
    }

    pub fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw(tar::EntryType::Symlink, name, Some(target), b"", 0o777)
    }

    pub fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw(tar::EntryType::Link, name, Some(target), b"", 0o644)
    }

    /// Copies a host file in (e.g. busybox).
    pub fn host_file(&mut self, name: &str, host: &Path, mode: u32) -> &mut Self {
        let data = std::fs::read(host).unwrap();
        self.file(name, &data, mode)
    }

    pub fn finish(&mut self) -> Vec<u8> {
        self.b
            .take()
            .expect("layer not finished")
            .into_inner()
            .unwrap()
    }
}

/// gzip-compresses a layer.
pub fn gzip(tar: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(tar).unwrap();
    e.finish().unwrap()
}

/// Writes an OCI image layout at `dir` holding one image named `tag` with
/// the given layers (uncompressed tars, gzipped when `compress`) and run
/// config (`config` of the image config). Returns the manifest digest.
pub fn write_layout(
    dir: &Path,
    tag: &str,
    layers: &[Vec<u8>],
    compress: bool,
    run_config: Value,
) -> String {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| -> String {
        let d = sha(bytes);
        std::fs::write(blobs.join(d.trim_start_matches("sha256:")), bytes).unwrap();
        d
    };
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for l in layers {
        diff_ids.push(sha(l));
        let (bytes, mt) = if compress {
            (gzip(l), "application/vnd.oci.image.layer.v1.tar+gzip")
        } else {
            (l.clone(), "application/vnd.oci.image.layer.v1.tar")
        };
        descs.push(json!({"mediaType": mt, "digest": put(&bytes), "size": bytes.len()}));
    }
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "config": run_config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": put(&config), "size": config.len()},
        "layers": descs,
    }))
    .unwrap();
    let md = put(&manifest);
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let index = json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": manifest.len(),
        "annotations": {"org.opencontainers.image.ref.name": tag}}]});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    md
}

/// Turns the single-image layout at `dir` into a multi-platform one: its
/// index.json then names an image index holding the original (amd64)
/// manifest and an arm64 manifest with the same layers.
pub fn make_multi_platform(dir: &Path) {
    let blobs = dir.join("blobs/sha256");
    let read = |d: &str| -> Vec<u8> {
        std::fs::read(blobs.join(d.trim_start_matches("sha256:"))).unwrap()
    };
    let put = |bytes: &[u8]| -> String {
        let d = sha(bytes);
        std::fs::write(blobs.join(d.trim_start_matches("sha256:")), bytes).unwrap();
        d
    };
    let mut index: Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let desc = index["manifests"][0].clone();
    let manifest: Value = serde_json::from_slice(&read(desc["digest"].as_str().unwrap())).unwrap();
    let mut config: Value =
        serde_json::from_slice(&read(manifest["config"]["digest"].as_str().unwrap())).unwrap();
    config["architecture"] = json!("arm64");
    let config = serde_json::to_vec(&config).unwrap();
    let mut arm = manifest.clone();
    arm["config"]["digest"] = json!(put(&config));
    arm["config"]["size"] = json!(config.len());
    let arm = serde_json::to_vec(&arm).unwrap();
    let mt = "application/vnd.oci.image.manifest.v1+json";
    let image_index = serde_json::to_vec(&json!({"schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": mt, "digest": put(&arm), "size": arm.len(), "platform": {"architecture": "arm64", "os": "linux"}},
            {"mediaType": mt, "digest": desc["digest"], "size": desc["size"], "platform": {"architecture": "amd64", "os": "linux"}},
        ]})).unwrap();
    index["manifests"][0] = json!({"mediaType": "application/vnd.oci.image.index.v1+json",
        "digest": put(&image_index), "size": image_index.len(), "annotations": desc["annotations"]});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}
