//! Builds an OCI image archive (an image layout in a tar) holding a busybox
//! rootfs, for podman (`podman load`) and containerd (`ctr images import`).

use std::path::Path;

use serde_json::json;
use sha2::{Digest, Sha256};

fn digest(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

fn add(tar: &mut tar::Builder<std::fs::File>, path: &str, bytes: &[u8]) {
    let mut h = tar::Header::new_ustar();
    h.set_size(bytes.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_cksum();
    tar.append_data(&mut h, path, bytes).unwrap();
}

/// Writes the archive to `out`, naming the image `name` (e.g.
/// `docker.io/library/rt-busybox:latest`).
pub fn busybox_oci_archive(out: &Path, name: &str) {
    busybox_oci_archive_running(out, name, &["sh"]);
}

/// The same, with `cmd` as the image's command (a pod's sandbox image
/// runs it for the pod's life).
pub fn busybox_oci_archive_running(out: &Path, name: &str, cmd: &[&str]) {
    let rootfs = tempfile::tempdir().unwrap();
    rt_testsupport::make_rootfs(rootfs.path());
    let mut layer = tar::Builder::new(Vec::new());
    layer.follow_symlinks(false);
    layer.append_dir_all(".", rootfs.path()).unwrap();
    let layer = layer.into_inner().unwrap();
    let layer_digest = digest(&layer);
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": cmd
        },
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        "history": [{"created_by": "rt integration tests: busybox-static"}]
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer.len()}]
    }))
    .unwrap();
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest(&manifest),
            "size": manifest.len(),
            "annotations": {
                "io.containerd.image.name": name,
                "org.opencontainers.image.ref.name": name
            }
        }]
    }))
    .unwrap();
    let mut tar = tar::Builder::new(std::fs::File::create(out).unwrap());
    add(&mut tar, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    add(&mut tar, "index.json", &index);
    for blob in [&layer, &config, &manifest] {
        let d = digest(blob);
        add(
            &mut tar,
            &format!("blobs/sha256/{}", d.trim_start_matches("sha256:")),
            blob,
        );
    }
    tar.finish().unwrap();
}
