//! `rt kill [--all] ID [SIGNAL]`.

use rt_container::Runtime;

use crate::Global;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Signal every process in the container's cgroup.
    #[arg(short, long)]
    pub all: bool,
    pub id: String,
    /// Number (15), name (TERM) or full name (SIGTERM); default SIGTERM.
    #[arg(default_value = "SIGTERM")]
    pub signal: String,
}

pub fn run(g: &Global, a: Args) -> anyhow::Result<()> {
    let n = crate::signal::parse(&a.signal).map_err(anyhow::Error::msg)?;
    Runtime::new(&g.root).kill(&a.id, n, a.all)?;
    Ok(())
}
