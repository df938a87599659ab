//! `--overlay`: each layer unpacked once into the store (`layers/<digest>`,
//! whiteouts kept as overlayfs whiteouts), and the bundle's rootfs an
//! overlayfs of those layers with the bundle's own upper and work
//! directories.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;

use crate::store::{self, Image, Store};
use crate::unpack::{self, Applier, Error, Options};

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// The store directory holding layer `i` of `image`, unpacking it first if
/// no earlier run did.
fn layer_dir(
    store: &Store,
    image: &Image,
    i: usize,
    opts: Options,
) -> Result<(PathBuf, Vec<String>), Error> {
    let layer = &image.manifest.layers[i];
    let d = store::parse_digest(&layer.digest)?;
    let dir = store.layer_dir(&d);
    if dir.is_dir() {
        return Ok((dir, Vec::new()));
    }
    let tmp =
        tempfile::tempdir_in(store.tmp()).map_err(io("creating a directory in", &store.tmp()))?;
    let root_path = tmp.path().join("root");
    std::fs::create_dir(&root_path).map_err(io("creating", &root_path))?;
    let root = std::fs::File::open(&root_path).map_err(io("opening", &root_path))?;
    let mut applier = Applier::new(
        root.as_fd(),
        Options {
            overlay: true,
            ..opts
        },
    );
    let diff_id = image.config.rootfs.diff_ids.get(i).map(String::as_str);
    unpack::apply_layer(store, layer, diff_id, &mut applier)?;
    // Another unpack of the same layer may have won the race: keep theirs.
    match std::fs::rename(&root_path, &dir) {
        Ok(()) => {}
        Err(_) if dir.is_dir() => {}
        Err(e) => return Err(io("renaming into", &dir)(e)),
    }
    Ok((dir, applier.notes))
}

/// Mounts `bundle/rootfs` as an overlay of the image's layers.
pub fn mount(
    store: &Store,
    image: &Image,
    bundle: &Path,
    opts: Options,
) -> Result<Vec<String>, Error> {
    if opts.rootless {
        return Err(Error::Unsafe {
            entry: "--overlay".into(),
            reason: "shared-layer mode needs root (overlay whiteouts are device nodes)".into(),
        });
    }
    let mut lower = Vec::new();
    let mut notes = Vec::new();
    for i in 0..image.manifest.layers.len() {
        let (dir, n) = layer_dir(store, image, i, opts)?;
        lower.push(dir);
        notes.extend(n);
    }
    // overlayfs lists the top layer first.
    lower.reverse();
    let upper = bundle.join("upper");
    let work = bundle.join("work");
    let rootfs = bundle.join("rootfs");
    for d in [&upper, &work, &rootfs] {
        std::fs::create_dir(d).map_err(io("creating", d))?;
    }
    let lowers: Vec<String> = lower.iter().map(|p| p.display().to_string()).collect();
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lowers.join(":"),
        upper.display(),
        work.display()
    );
    nix::mount::mount(
        Some("overlay"),
        &rootfs,
        Some("overlay"),
        MsFlags::empty(),
        Some(data.as_str()),
    )
    .map_err(|e| Error::Io {
        op: "mounting overlayfs on",
        path: rootfs.clone(),
        source: e.into(),
    })?;
    Ok(notes)
}

/// Unmounts `bundle/rootfs` if it is a mount; Ok if it is not.
pub fn unmount(bundle: &Path) -> Result<(), Error> {
    let rootfs = bundle.join("rootfs");
    rt_container::rootfs::detach_if_mounted(&rootfs).map_err(|e| Error::Io {
        op: "unmounting",
        path: rootfs,
        source: e.into(),
    })
}
