//! `rt pause` and `rt resume`: the cgroup freezer.

use rt_container::Runtime;

use crate::Global;

#[derive(Debug, clap::Args)]
pub struct Args {
    pub id: String,
}

pub fn pause(g: &Global, a: Args) -> anyhow::Result<()> {
    Runtime::new(&g.root).pause(&a.id)?;
    Ok(())
}

pub fn resume(g: &Global, a: Args) -> anyhow::Result<()> {
    Runtime::new(&g.root).resume(&a.id)?;
    Ok(())
}
