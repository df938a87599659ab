//! `rt dhcp-keeper FILE` (hidden): renews a bridged container's DHCP lease
//! while it runs. `create` starts it; `delete` stops it (see
//! rt_netns::keeper).

use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The lease file create wrote.
    pub lease: PathBuf,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    Ok(rt_netns::keeper::run(&a.lease)?)
}
