//! `rt checkpoint`: runc's flags, as podman, conmon and containerd pass
//! them (see docs/migration.md for what a VM checkpoint holds).

use std::path::PathBuf;

use rt_container::backend::CheckpointOptions;
use rt_container::Runtime;

use crate::Global;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where the image is written (runc's default: ./checkpoint).
    #[arg(long, default_value = "checkpoint")]
    pub image_path: PathBuf,
    /// Where logs and work files go (accepted; rt writes none there).
    #[arg(long)]
    pub work_path: Option<PathBuf>,
    /// A previous pre-dump's image (refused: rt has no pre-dump).
    #[arg(long)]
    pub parent_path: Option<PathBuf>,
    /// Keep the container running after the checkpoint.
    #[arg(long)]
    pub leave_running: bool,
    /// CRIU's ways of saving what a VM's memory holds anyway: accepted.
    #[arg(long)]
    pub tcp_established: bool,
    #[arg(long)]
    pub ext_unix_sk: bool,
    #[arg(long)]
    pub shell_job: bool,
    #[arg(long)]
    pub file_locks: bool,
    /// A memory pre-dump (refused by name).
    #[arg(long)]
    pub pre_dump: bool,
    /// CRIU's page server (refused by name).
    #[arg(long)]
    pub page_server: Option<String>,
    /// CRIU's lazy pages (refused by name).
    #[arg(long)]
    pub lazy_pages: bool,
    /// soft, full, strict or ignore: accepted (a VM's cgroups are inside it).
    #[arg(long)]
    pub manage_cgroups_mode: Option<String>,
    /// Namespaces CRIU should not save: accepted (a VM saves them all).
    #[arg(long)]
    pub empty_ns: Vec<String>,
    /// Accepted for runc compatibility (CRIU's image deduplication).
    #[arg(long)]
    pub auto_dedup: bool,
    pub id: String,
}

pub fn run(g: &Global, a: Args) -> anyhow::Result<()> {
    if let Some(m) = &a.manage_cgroups_mode {
        anyhow::ensure!(
            ["soft", "full", "strict", "ignore"].contains(&m.as_str()),
            "invalid --manage-cgroups-mode value {m:?}: use soft, full, strict or ignore"
        );
    }
    let opts = CheckpointOptions {
        image_path: absolute(a.image_path)?,
        work_path: a.work_path,
        leave_running: a.leave_running,
        tcp_established: a.tcp_established,
        file_locks: a.file_locks,
        ext_unix_sk: a.ext_unix_sk,
        shell_job: a.shell_job,
        pre_dump: a.pre_dump,
        parent_path: a.parent_path,
        page_server: a.page_server,
        lazy_pages: a.lazy_pages,
        manage_cgroups_mode: a.manage_cgroups_mode,
        empty_ns: a.empty_ns,
    };
    Runtime::new(&g.root).checkpoint(&a.id, &opts)?;
    Ok(())
}

/// `path` made absolute against the working directory (the supervisor
/// writes there from its own).
pub fn absolute(path: PathBuf) -> anyhow::Result<PathBuf> {
    if path.is_absolute() {
        return Ok(path);
    }
    Ok(std::env::current_dir()?.join(path))
}
