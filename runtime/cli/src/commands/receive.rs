//! `rt receive --listen tcp://HOST:PORT`: the receiving side of `rt
//! migrate --to tcp://…` (see docs/migration.md). It prints
//! `{"listening":"HOST:PORT"}` once bound (port 0 picks one), accepts one
//! migration, and exits once its container runs here; the container's
//! supervisor keeps this command's stdio.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use rt_container::Runtime;

use crate::Global;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where to listen: tcp://HOST:PORT.
    #[arg(long)]
    pub listen: String,
    /// The bundle to run the container from (default: the sender's
    /// bundle path).
    #[arg(short, long)]
    pub bundle: Option<PathBuf>,
}

pub fn run(g: &Global, a: Args) -> anyhow::Result<()> {
    let addr = a
        .listen
        .strip_prefix("tcp://")
        .with_context(|| format!("--listen {}: expected tcp://HOST:PORT", a.listen))?;
    let listener =
        std::net::TcpListener::bind(addr).with_context(|| format!("listening on {addr}"))?;
    let bound = listener.local_addr().context("the listener's address")?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{}",
        serde_json::json!({ "listening": bound.to_string() })
    )?;
    out.flush()?;
    drop(out);
    let rt = Runtime::new(&g.root)
        .with_cgroups(g.cgroups)
        .systemd_cgroup(g.systemd_cgroup)
        .rootless(g.rootless);
    let got = rt.receive(&listener, a.bundle.as_deref())?;
    println!(
        "{}",
        serde_json::json!({ "received": got.id, "from": got.peer.to_string() })
    );
    Ok(())
}
