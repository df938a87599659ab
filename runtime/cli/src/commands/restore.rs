//! `rt restore`: runc's flags (conmon's `--detach --pid-file`, go-runc's
//! `-no-subreaper`), plus `--incoming` for a live migration's receiving
//! side. In the foreground (no --detach) it waits for the container, as
//! `rt run` does, and deletes it afterwards.

use std::path::PathBuf;

use rt_container::process::foreground;
use rt_container::{Options, RestoreRequest, Runtime};

use super::checkpoint::absolute;
use crate::Global;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The checkpoint image (runc's default: ./checkpoint).
    #[arg(long, default_value = "checkpoint")]
    pub image_path: PathBuf,
    /// Accepted (rt writes no work files).
    #[arg(long)]
    pub work_path: Option<PathBuf>,
    /// The bundle whose config.json (network namespace, cgroupsPath,
    /// hooks) the restored container runs under.
    #[arg(short, long, default_value = ".")]
    pub bundle: PathBuf,
    /// Return once the container runs.
    #[arg(short, long)]
    pub detach: bool,
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    /// Accepted for runc compatibility.
    #[arg(long)]
    pub no_subreaper: bool,
    /// Refused for VM containers, as at create.
    #[arg(long)]
    pub no_pivot: bool,
    /// CRIU's restore options: accepted (the VM's memory holds them).
    #[arg(long)]
    pub tcp_established: bool,
    #[arg(long)]
    pub ext_unix_sk: bool,
    #[arg(long)]
    pub shell_job: bool,
    #[arg(long)]
    pub file_locks: bool,
    #[arg(long)]
    pub manage_cgroups_mode: Option<String>,
    #[arg(long)]
    pub empty_ns: Vec<String>,
    #[arg(long)]
    pub auto_dedup: bool,
    /// CRIU's lazy pages (refused by name).
    #[arg(long)]
    pub lazy_pages: bool,
    #[arg(long)]
    pub lsm_profile: Option<String>,
    #[arg(long)]
    pub lsm_mount_context: Option<String>,
    /// Receive a live migration at this QEMU URI (`unix:PATH`,
    /// `tcp:HOST:PORT`) instead of loading the image's saved state; the
    /// image directory holds the sender's description (`rt migrate`).
    #[arg(long)]
    pub incoming: Option<String>,
    pub id: String,
}

pub fn run(g: &Global, a: Args) -> anyhow::Result<i32> {
    anyhow::ensure!(
        !a.lazy_pages,
        "restore --lazy-pages is not supported (a VM loads its memory whole)"
    );
    anyhow::ensure!(
        a.lsm_profile.is_none() && a.lsm_mount_context.is_none(),
        "restore --lsm-profile and --lsm-mount-context are not supported (a VM keeps its guest's)"
    );
    let rt = Runtime::new(&g.root)
        .with_cgroups(g.cgroups)
        .systemd_cgroup(g.systemd_cgroup)
        .rootless(g.rootless);
    let req = RestoreRequest {
        id: a.id.clone(),
        bundle: a.bundle,
        image_path: absolute(a.image_path)?,
        pid_file: a.pid_file,
        options: Options {
            console_socket: a.console_socket,
            no_pivot: a.no_pivot,
            preserve_fds: 0,
            keep_terminal: !a.detach,
            ..Options::default()
        },
        incoming: a.incoming,
    };
    let created = rt.restore(&req)?;
    if a.detach {
        return Ok(0);
    }
    let waiter = match foreground::Waiter::new(created) {
        Ok(w) => w,
        Err(e) => {
            let _ = rt.delete(&a.id, true);
            return Err(e.into());
        }
    };
    let status = waiter.wait();
    rt.delete(&a.id, true)?;
    Ok(status?)
}
