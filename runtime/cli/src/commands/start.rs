//! `rt start`.

use rt_container::Runtime;

use crate::Global;

#[derive(Debug, clap::Args)]
pub struct Args {
    pub id: String,
}

pub fn run(g: &Global, a: Args) -> anyhow::Result<()> {
    Runtime::new(&g.root).start(&a.id)?;
    Ok(())
}
