//! Unpacking test images built here: layer semantics (whiteouts, opaque
//! directories, hard links, replacement) and the hostile corpus, each refused
//! with an error naming the entry and nothing written outside the rootfs.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use rt_images::store::Store;
use rt_images::unpack::{self, Options};
use rt_testsupport::oci::{write_layout, Layer};
use serde_json::json;
use tar::EntryType;

/// Imports an image of `layers` into a fresh store and unpacks it into
/// `<tmp>/bundle/rootfs`; returns the temp dir and the result.
fn unpack_layers(
    layers: &[Vec<u8>],
    compress: bool,
) -> (tempfile::TempDir, Result<Vec<String>, String>) {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    write_layout(&layout, "t", layers, compress, json!({"Cmd": ["/bin/sh"]}));
    let store = Store::open(&tmp.path().join("store")).unwrap();
    rt_images::import::import(&store, &layout, Some("test:t")).unwrap();
    let image = store.image("test:t").unwrap();
    std::fs::create_dir(tmp.path().join("bundle")).unwrap();
    let rootfs = tmp.path().join("bundle/rootfs");
    let r = unpack::unpack(&store, &image, &rootfs, Options::default()).map_err(|e| {
        let mut s = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(c) = src {
            s.push_str(": ");
            s.push_str(&c.to_string());
            src = c.source();
        }
        s
    });
    (tmp, r)
}

fn base() -> Vec<u8> {
    Layer::new()
        .dir("etc/", 0o755)
        .file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n", 0o644)
        .dir("a/", 0o755)
        .file("a/keep", b"k", 0o644)
        .file("a/gone", b"g", 0o644)
        .dir("opq/", 0o755)
        .file("opq/old", b"o", 0o644)
        .file("replace", b"file", 0o600)
        .finish()
}

#[test]
fn layers_apply_in_order() {
    if !rt_testsupport::root_or_skip("layers_apply_in_order") {
        return;
    }
    let top = Layer::new()
        .file("a/.wh.gone", b"", 0o644)
        .file("opq/new", b"n", 0o644)
        .file("opq/.wh..wh..opq", b"", 0o644)
        .dir("replace/", 0o750)
        .hardlink("a/link", "a/keep")
        .symlink("a/sym", "/etc/passwd")
        .owned_file("owned", b"x", 0o4755, 1000, 1001)
        .finish();
    let (tmp, r) = unpack_layers(&[base(), top], true);
    let notes = r.unwrap();
    assert!(notes.is_empty(), "{notes:?}");
    let root = tmp.path().join("bundle/rootfs");
    assert!(root.join("a/keep").exists());
    assert!(
        !root.join("a/gone").exists(),
        "whiteout removes the lower file"
    );
    assert!(!root.join("a/.wh.gone").exists());
    assert!(
        !root.join("opq/old").exists(),
        "opaque dir hides lower entries"
    );
    assert!(root.join("opq/new").exists(), "but not its own layer's");
    assert!(root.join("replace").is_dir());
    assert_eq!(
        std::fs::metadata(root.join("replace")).unwrap().mode() & 0o7777,
        0o750
    );
    let keep = std::fs::metadata(root.join("a/keep")).unwrap();
    assert_eq!(
        std::fs::metadata(root.join("a/link")).unwrap().ino(),
        keep.ino()
    );
    assert_eq!(
        std::fs::read_link(root.join("a/sym")).unwrap(),
        Path::new("/etc/passwd")
    );
    let owned = std::fs::metadata(root.join("owned")).unwrap();
    assert_eq!(
        (owned.uid(), owned.gid(), owned.mode() & 0o7777),
        (1000, 1001, 0o4755)
    );
    assert_eq!(owned.mtime(), 1_600_000_000);
    assert_eq!(
        std::fs::metadata(root.join("etc")).unwrap().mtime(),
        1_600_000_000,
        "dir mtime set after its children"
    );
}

/// Each hostile layer (on top of `base`) must be refused with an error that
/// names the entry, leave nothing outside the rootfs, and remove the rootfs.
#[test]
fn hostile_layers_are_refused() {
    if !rt_testsupport::root_or_skip("hostile_layers_are_refused") {
        return;
    }
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "dotdot",
            Layer::new().file("../escape", b"x", 0o644).finish(),
            "../escape",
        ),
        (
            "dotdot-deep",
            Layer::new().file("a/../../escape", b"x", 0o644).finish(),
            "a/../../escape",
        ),
        (
            "absolute",
            Layer::new().file("/escape", b"x", 0o644).finish(),
            "/escape",
        ),
        (
            "symlink-dir-earlier-entry",
            Layer::new()
                .symlink("out", "../..")
                .file("out/escape", b"x", 0o644)
                .finish(),
            "out/escape",
        ),
        (
            "symlink-abs-earlier-entry",
            Layer::new()
                .symlink("out", "/tmp")
                .file("out/escape", b"x", 0o644)
                .finish(),
            "out/escape",
        ),
        (
            "hardlink-outside",
            Layer::new()
                .hardlink("pw", "../../../../etc/passwd")
                .finish(),
            "pw",
        ),
        (
            "hardlink-absolute",
            Layer::new().hardlink("pw", "/etc/passwd").finish(),
            "pw",
        ),
        (
            "hardlink-through-symlink",
            Layer::new()
                .symlink("hostetc", "/etc")
                .hardlink("pw", "hostetc/passwd")
                .finish(),
            "pw",
        ),
        (
            "whiteout-dotdot",
            Layer::new().file("a/.wh...", b"", 0o644).finish(),
            "a/.wh...",
        ),
        (
            "whiteout-outside",
            Layer::new().file("../.wh.escape", b"", 0o644).finish(),
            "../.wh.escape",
        ),
        (
            "whiteout-through-symlink",
            Layer::new()
                .symlink("up", "..")
                .file("up/.wh.escape", b"", 0o644)
                .finish(),
            "up/.wh.escape",
        ),
        (
            "opaque-through-symlink",
            Layer::new()
                .symlink("up", "/tmp")
                .file("up/.wh..wh..opq", b"", 0o644)
                .finish(),
            "up/.wh..wh..opq",
        ),
        (
            "dir-through-symlink",
            Layer::new()
                .symlink("up", "..")
                .dir("up/newdir/", 0o755)
                .finish(),
            "up/newdir",
        ),
    ];
    for (label, layer, entry) in cases {
        // A marker next to the rootfs: an escape would create or remove it.
        let (tmp, r) = unpack_layers(&[base(), layer], label.len() % 2 == 0);
        let err = r.expect_err(label);
        assert!(err.contains(entry.trim_end_matches('/')), "{label}: {err}");
        assert!(err.contains("refusing"), "{label}: {err}");
        let bundle = tmp.path().join("bundle");
        let left: Vec<_> = std::fs::read_dir(&bundle)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(
            left.is_empty(),
            "{label}: rootfs removed, nothing beside it: {left:?}"
        );
        for outside in ["escape", "newdir"] {
            assert!(!tmp.path().join(outside).exists(), "{label}");
            assert!(!Path::new("/tmp").join(outside).exists(), "{label}");
        }
        assert!(
            std::fs::metadata("/etc/passwd").unwrap().nlink() == 1,
            "{label}"
        );
    }
}

#[test]
fn digest_mismatch_is_refused() {
    if !rt_testsupport::root_or_skip("digest_mismatch_is_refused") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    let layer = Layer::new().file("f", b"content", 0o644).finish();
    write_layout(&layout, "t", &[layer], false, json!({"Cmd": ["/bin/sh"]}));
    // Corrupt the layer blob in the layout: import must refuse it.
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let md = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("blobs/sha256").join(&md)).unwrap())
            .unwrap();
    let ld = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    let blob = layout.join("blobs/sha256").join(&ld);
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[600] ^= 0xff;
    std::fs::write(&blob, &bytes).unwrap();
    let store = Store::open(&tmp.path().join("store")).unwrap();
    let err = rt_images::import::import(&store, &layout, Some("bad:t")).unwrap_err();
    let text = format!(
        "{err}: {}",
        std::error::Error::source(&err)
            .map(|s| s.to_string())
            .unwrap_or_default()
    );
    assert!(text.contains("does not match"), "{text}");
    assert!(store.list().unwrap().is_empty());
    // And a blob corrupted in the store after import is caught by unpack.
    let layer = Layer::new().file("f", b"content", 0o644).finish();
    write_layout(&layout, "t", &[layer], false, json!({"Cmd": ["/bin/sh"]}));
    rt_images::import::import(&store, &layout, Some("good:t")).unwrap();
    let image = store.image("good:t").unwrap();
    let d: rt_images::digest::Digest = image.manifest.layers[0].digest.parse().unwrap();
    let mut bytes = std::fs::read(store.blob_path(&d)).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(store.blob_path(&d), &bytes).unwrap();
    let rootfs = tmp.path().join("rootfs");
    let err = unpack::unpack(&store, &image, &rootfs, Options::default()).unwrap_err();
    assert!(format!("{err:?}").contains("Mismatch"), "{err:?}");
    assert!(!rootfs.exists(), "the rootfs is removed");
}

#[test]
fn unknown_entry_kinds_and_root_replacement_are_refused() {
    if !rt_testsupport::root_or_skip("unknown_entry_kinds") {
        return;
    }
    let layer = Layer::new()
        .raw(EntryType::Regular, "./", None, b"", 0o644)
        .finish();
    let (_tmp, r) = unpack_layers(&[layer], false);
    assert!(r.unwrap_err().contains("rootfs itself"));
}

/// A layer that stops right after its last entry's data (no padding, no
/// end-of-archive blocks, as umoci 0.4's insert writes) is accepted; one that
/// stops inside an entry's data is refused even when its diffID matches.
#[test]
fn missing_trailer_tolerated_truncation_refused() {
    if !rt_testsupport::root_or_skip("missing_trailer") {
        return;
    }
    let full = Layer::new()
        .file("a", b"first", 0o644)
        .file("b", &[7u8; 700], 0o644)
        .finish();
    // Headers 512 + data 512 (padded "first") + header 512 + 700 bytes.
    let no_trailer = full[..512 + 512 + 512 + 700].to_vec();
    let (tmp, r) = unpack_layers(&[no_trailer], false);
    r.unwrap();
    assert_eq!(
        std::fs::read(tmp.path().join("bundle/rootfs/b")).unwrap(),
        vec![7u8; 700]
    );
    let truncated = full[..512 + 512 + 512 + 300].to_vec();
    let (_tmp, r) = unpack_layers(&[truncated], false);
    assert!(r.unwrap_err().contains("ends inside"));
}
