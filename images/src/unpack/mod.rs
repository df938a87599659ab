//! `rt image unpack`: an image's layers applied in order to a rootfs, each
//! layer streamed once (read the blob, decompress, apply) while both its
//! digest and its diffID are computed and checked. On any error the rootfs
//! rt created is removed again.

mod layer;
mod safe;

use std::io::{BufReader, Read};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;

pub use layer::{remove_tree, Applier, Options};

use crate::digest::{self, Digest, Verifier};
use crate::store::{self, Image, Store};
use crate::types::Descriptor;

/// Errors of unpacking.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("refusing layer entry {entry:?}: {reason}")]
    Unsafe { entry: String, reason: String },
    #[error("layer entry {entry:?}: {op}")]
    Entry {
        entry: String,
        op: &'static str,
        #[source]
        source: nix::errno::Errno,
    },
    #[error("layer entry {entry:?}: writing")]
    Write {
        entry: String,
        #[source]
        source: std::io::Error,
    },
    #[error("reading the layer")]
    Tar(#[source] std::io::Error),
    #[error("layer {layer}")]
    Layer {
        layer: String,
        #[source]
        source: Box<Error>,
    },
    #[error("layer {0}")]
    Digest(String, #[source] digest::Error),
    #[error("layer {0} has media type {1:?}, which rt cannot unpack")]
    MediaType(String, String),
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error("the image has {layers} layers but {diff_ids} diffIDs")]
    DiffIds { layers: usize, diff_ids: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    None,
    Gzip,
    Zstd,
}

fn compression(layer: &Descriptor) -> Result<Compression, Error> {
    let m = layer.media_type.as_str();
    if m.ends_with("tar+gzip") || m.ends_with("tar.gzip") {
        Ok(Compression::Gzip)
    } else if m.ends_with("tar+zstd") {
        Ok(Compression::Zstd)
    } else if m.ends_with(".tar") || m.ends_with("layer.v1.tar") {
        Ok(Compression::None)
    } else {
        Err(Error::MediaType(layer.digest.clone(), m.to_string()))
    }
}

/// Applies one layer blob through `applier`, checking the blob's digest and
/// size and, when known, the uncompressed content's diffID.
pub fn apply_layer(
    store: &Store,
    layer: &Descriptor,
    diff_id: Option<&str>,
    applier: &mut Applier<'_>,
) -> Result<(), Error> {
    let wrap = |e: Error| Error::Layer {
        layer: layer.digest.clone(),
        source: Box::new(e),
    };
    let d = store::parse_digest(&layer.digest)?;
    let blob = store.open_blob(&d)?;
    let outer = Verifier::new(BufReader::with_capacity(1 << 20, blob));
    let (diff, outer) = match compression(layer)? {
        Compression::None => apply_tar(outer, applier).map_err(wrap)?,
        Compression::Gzip => {
            let (diff, dec) =
                apply_tar(flate2::read::MultiGzDecoder::new(outer), applier).map_err(wrap)?;
            (diff, dec.into_inner())
        }
        Compression::Zstd => {
            let dec = zstd::stream::read::Decoder::new(outer)
                .map_err(Error::Tar)
                .map_err(wrap)?;
            let (diff, dec) = apply_tar(dec, applier).map_err(wrap)?;
            (diff, dec.finish().into_inner())
        }
    };
    let got = outer.finish().map_err(Error::Tar).map_err(wrap)?;
    digest::check(&d, Some(layer.size), got).map_err(|e| Error::Digest(layer.digest.clone(), e))?;
    if let Some(id) = diff_id {
        let want = store::parse_digest(id)?;
        digest::check(&want, None, diff)
            .map_err(|e| Error::Digest(format!("{} (diffID)", layer.digest), e))?;
    }
    Ok(())
}

fn apply_tar<R: Read>(r: R, applier: &mut Applier<'_>) -> Result<((Digest, u64), R), Error> {
    let mut archive = tar::Archive::new(ZeroTail::new(Verifier::new(r)));
    applier.apply(&mut archive)?;
    let tail = archive.into_inner();
    if tail.zeros > 0 && tail.real_len < applier.data_end {
        return Err(Error::Tar(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the layer ends inside an entry's data",
        )));
    }
    tail.inner.finish_into().map_err(Error::Tar)
}

/// Some writers (umoci 0.4's `insert`, for one) end a layer right after the
/// last entry's data, without the padding and the two zero blocks. Go's
/// reader accepts that; so does rt, by reading zeros after the end. This
/// cannot hide a truncated layer: the diffID is computed on the real bytes
/// underneath and checked.
struct ZeroTail<R> {
    inner: R,
    zeros: usize,
    /// Bytes the real stream gave.
    real_len: u64,
}

impl<R> ZeroTail<R> {
    fn new(inner: R) -> Self {
        ZeroTail {
            inner,
            zeros: 0,
            real_len: 0,
        }
    }
}

impl<R: Read> Read for ZeroTail<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        const MAX: usize = 511 + 1024;
        let n = self.inner.read(buf)?;
        if n > 0 || buf.is_empty() {
            self.real_len += n as u64;
            return Ok(n);
        }
        let n = buf.len().min(MAX - self.zeros);
        buf[..n].fill(0);
        self.zeros += n;
        Ok(n)
    }
}

/// Unpacks every layer of `image` into `rootfs`, which must not exist yet
/// (or be an empty directory). Returns the notes of skipped details.
pub fn unpack(
    store: &Store,
    image: &Image,
    rootfs: &Path,
    opts: Options,
) -> Result<Vec<String>, Error> {
    let layers = &image.manifest.layers;
    let diff_ids = &image.config.rootfs.diff_ids;
    if !diff_ids.is_empty() && diff_ids.len() != layers.len() {
        return Err(Error::DiffIds {
            layers: layers.len(),
            diff_ids: diff_ids.len(),
        });
    }
    match std::fs::create_dir(rootfs) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && is_empty_dir(rootfs) => {}
        Err(source) => {
            return Err(Error::Io {
                op: "creating (it must not exist, or be empty)",
                path: rootfs.to_path_buf(),
                source,
            })
        }
    }
    let result = unpack_into(store, layers, diff_ids, rootfs, opts);
    if result.is_err() {
        let _ = std::fs::remove_dir_all(rootfs);
    }
    result
}

fn unpack_into(
    store: &Store,
    layers: &[Descriptor],
    diff_ids: &[String],
    rootfs: &Path,
    opts: Options,
) -> Result<Vec<String>, Error> {
    let root = std::fs::File::options()
        .read(true)
        .custom_flags((OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW).bits())
        .open(rootfs)
        .map_err(|source| Error::Io {
            op: "opening",
            path: rootfs.to_path_buf(),
            source,
        })?;
    let mut applier = Applier::new(root.as_fd(), opts);
    for (i, layer) in layers.iter().enumerate() {
        apply_layer(
            store,
            layer,
            diff_ids.get(i).map(String::as_str),
            &mut applier,
        )?;
    }
    Ok(applier.notes)
}

fn is_empty_dir(p: &Path) -> bool {
    std::fs::read_dir(p).is_ok_and(|mut d| d.next().is_none())
}

use std::os::unix::fs::OpenOptionsExt;
