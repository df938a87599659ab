//! `rt migrate ID --to ROOT|tcp://HOST:PORT`: live migration of a running
//! VM container to another state root, or to an `rt receive` (see
//! docs/migration.md); prints the figures as JSON.

use rt_container::{container::Destination, Runtime};

use crate::Global;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The destination: a state root of this host, or
    /// tcp://HOST:PORT where `rt receive` listens.
    #[arg(long)]
    pub to: String,
    /// The container's id at the destination (default: the same).
    #[arg(long)]
    pub new_id: Option<String>,
    pub id: String,
}

pub fn run(g: &Global, a: Args) -> anyhow::Result<()> {
    let report = Runtime::new(&g.root).with_cgroups(g.cgroups).migrate(
        &a.id,
        &Destination::parse(&a.to),
        a.new_id.as_deref(),
    )?;
    println!(
        "{}",
        serde_json::json!({
            "downtime_ms": report.qemu["downtime_ms"],
            "qemu_total_ms": report.qemu["total_ms"],
            "transferred": report.qemu["transferred"],
            "total_ms": report.total.as_millis() as u64,
        })
    );
    Ok(())
}
