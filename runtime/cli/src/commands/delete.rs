//! `rt delete [--force] ID`.

use rt_container::Runtime;

use crate::Global;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Kill a running container first; an unknown id is not an error.
    #[arg(short, long)]
    pub force: bool,
    pub id: String,
}

pub fn run(g: &Global, a: Args) -> anyhow::Result<()> {
    Runtime::new(&g.root).delete(&a.id, a.force)?;
    Ok(())
}
