//! `rt state`: the runtime-spec state JSON.

use rt_container::Runtime;

use crate::Global;

#[derive(Debug, clap::Args)]
pub struct Args {
    pub id: String,
}

pub fn run(g: &Global, a: Args) -> anyhow::Result<()> {
    let (st, status) = Runtime::new(&g.root).state(&a.id)?;
    println!("{}", serde_json::to_string_pretty(&st.oci(status))?);
    Ok(())
}
