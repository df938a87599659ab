//! `rt image pull REF`: a progress bar per layer on a terminal, one line per
//! blob otherwise.

use std::collections::HashMap;
use std::io::IsTerminal;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use rt_images::pull::{Options, Progress};
use rt_images::store::Store;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Image reference: [registry/]repository[:tag][@digest].
    pub reference: String,
    /// Use HTTP instead of HTTPS (always used for 127.0.0.1 and localhost).
    #[arg(long)]
    pub plain_http: bool,
    /// Registry user (basic or token auth).
    #[arg(long)]
    pub username: Option<String>,
    /// Registry password (or the RT_REGISTRY_PASSWORD environment variable).
    #[arg(long, env = "RT_REGISTRY_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
}

fn short(digest: &str) -> &str {
    digest
        .trim_start_matches("sha256:")
        .get(..12)
        .unwrap_or(digest)
}

/// Bars on a terminal.
struct Bars {
    multi: MultiProgress,
    bars: HashMap<String, ProgressBar>,
}

impl Progress for Bars {
    fn start(&mut self, digest: &str, size: u64) {
        let style = ProgressStyle::with_template(
            "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
        )
        .expect("a valid template")
        .progress_chars("=> ");
        let bar = self.multi.add(
            ProgressBar::new(size)
                .with_style(style)
                .with_prefix(short(digest).to_string()),
        );
        if let Some(old) = self.bars.insert(digest.to_string(), bar) {
            old.finish_and_clear();
        }
    }
    fn advance(&mut self, digest: &str, bytes: u64) {
        if let Some(b) = self.bars.get(digest) {
            b.inc(bytes);
        }
    }
    fn done(&mut self, digest: &str, skipped: bool) {
        match self.bars.get(digest) {
            Some(b) => b.finish(),
            None if skipped => {
                let _ = self
                    .multi
                    .println(format!("{} already present", short(digest)));
            }
            None => {}
        }
    }
}

/// Quiet lines otherwise.
struct Lines;

impl Progress for Lines {
    fn start(&mut self, digest: &str, size: u64) {
        println!("pulling {} ({size} bytes)", short(digest));
    }
    fn advance(&mut self, _: &str, _: u64) {}
    fn done(&mut self, digest: &str, skipped: bool) {
        if skipped {
            println!("{} already present", short(digest));
        } else {
            println!("{} done", short(digest));
        }
    }
}

pub fn run(store: &Store, a: Args) -> anyhow::Result<()> {
    let opts = Options {
        plain_http: a.plain_http,
        username: a.username,
        password: a.password,
    };
    let name = if std::io::stdout().is_terminal() {
        let mut bars = Bars {
            multi: MultiProgress::new(),
            bars: HashMap::new(),
        };
        rt_images::pull::pull(store, &a.reference, opts, &mut bars)?
    } else {
        rt_images::pull::pull(store, &a.reference, opts, &mut Lines)?
    };
    println!("{name}");
    Ok(())
}
