//! `rt image …`: the image store (`--store`, default /var/lib/rt): import,
//! pull, ls, inspect, rm, prune, unpack. See docs/images.md.

use std::path::{Path, PathBuf};

use anyhow::Context;
use rt_images::store::Store;
use rt_images::unpack::Options;
use serde_json::json;

use crate::Global;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Import an OCI image layout directory, an oci-archive or a docker-archive.
    Import {
        path: PathBuf,
        /// Name for the image (required when the archive names none).
        #[arg(long)]
        name: Option<String>,
    },
    /// Pull an image from a registry (OCI distribution API).
    Pull(super::pull::Args),
    /// List images.
    #[command(alias = "list")]
    Ls {
        /// Only names.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Print an image's manifest and configuration as JSON.
    Inspect { reference: String },
    /// Remove image names (blobs go with `prune`).
    Rm {
        #[arg(required = true)]
        references: Vec<String>,
    },
    /// Remove blobs and unpacked layers no image references.
    Prune,
    /// Write BUNDLE/rootfs and BUNDLE/config.json from an image.
    Unpack {
        reference: String,
        bundle: PathBuf,
        /// Share unpacked layers from the store through an overlayfs rootfs.
        #[arg(long)]
        overlay: bool,
    },
}

pub fn store(g: &Global) -> anyhow::Result<Store> {
    Ok(Store::open(&g.store)?)
}

pub fn run(g: &Global, c: Command) -> anyhow::Result<()> {
    let store = store(g)?;
    match c {
        Command::Import { path, name } => {
            for n in rt_images::import::import(&store, &path, name.as_deref())? {
                println!("{n}");
            }
        }
        Command::Pull(a) => super::pull::run(&store, a)?,
        Command::Ls { quiet } => list(&store, quiet)?,
        Command::Inspect { reference } => {
            let image = store.image(&reference)?;
            let v = json!({
                "name": image.name,
                "digest": image.manifest_desc.digest,
                "manifest": image.manifest,
                "config": image.config,
            });
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Command::Rm { references } => {
            for r in references {
                let (name, _) = store.resolve(&r)?;
                store.untag(&name)?;
                println!("{name}");
            }
        }
        Command::Prune => {
            let (n, bytes) = store.prune()?;
            println!("removed {n} blobs, {bytes} bytes");
        }
        Command::Unpack {
            reference,
            bundle,
            overlay,
        } => {
            let notes = unpack_bundle(&store, &reference, &bundle, overlay, g.rootless)?;
            for n in notes {
                eprintln!("note: {n}");
            }
        }
    }
    Ok(())
}

fn list(store: &Store, quiet: bool) -> anyhow::Result<()> {
    let list = store.list()?;
    if quiet {
        for (n, _) in list {
            println!("{n}");
        }
        return Ok(());
    }
    println!("{:<50} {:<19} {:>12}", "NAME", "DIGEST", "SIZE");
    for (n, d) in list {
        let size = store
            .image(&n)
            .map(|i| i.manifest.layers.iter().map(|l| l.size).sum::<u64>())
            .unwrap_or(0);
        let short = d
            .digest
            .trim_start_matches("sha256:")
            .get(..12)
            .unwrap_or_default()
            .to_string();
        println!("{n:<50} sha256:{short} {size:>12}");
    }
    Ok(())
}

/// Unpacks `reference` into `bundle` (rootfs + config.json); on failure
/// removes what it made.
pub fn unpack_bundle(
    store: &Store,
    reference: &str,
    bundle: &Path,
    overlay: bool,
    rootless: bool,
) -> anyhow::Result<Vec<String>> {
    let image = store.image(reference)?;
    let made = !bundle.exists();
    std::fs::create_dir_all(bundle).with_context(|| format!("creating {}", bundle.display()))?;
    let result = (|| -> anyhow::Result<Vec<String>> {
        let config_path = bundle.join("config.json");
        anyhow::ensure!(
            !config_path.exists(),
            "{} exists: remove it first",
            config_path.display()
        );
        let opts = Options {
            overlay: false,
            rootless,
        };
        let rootfs = bundle.join("rootfs");
        let notes = if overlay {
            rt_images::overlay::mount(store, &image, bundle, opts)?
        } else {
            rt_images::unpack::unpack(store, &image, &rootfs, opts)?
        };
        let config = rt_images::bundle::config(&image.config, &rootfs, &image.name, rootless)?;
        std::fs::write(&config_path, serde_json::to_vec_pretty(&config)?)
            .with_context(|| format!("writing {}", config_path.display()))?;
        Ok(notes)
    })();
    if result.is_err() {
        let _ = rt_images::overlay::unmount(bundle);
        if made {
            let _ = std::fs::remove_dir_all(bundle);
        } else {
            let _ = std::fs::remove_dir_all(bundle.join("rootfs"));
        }
    }
    result
}
