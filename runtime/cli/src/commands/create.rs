//! `rt create`.

use std::path::PathBuf;

use rt_container::process::parent::Options;
use rt_container::{CreateRequest, Runtime};

use crate::Global;

/// Flags shared by `create` and `run`.
#[derive(Debug, clap::Args)]
pub struct CreateFlags {
    /// Bundle directory (holds config.json).
    #[arg(short, long, default_value = ".")]
    pub bundle: PathBuf,
    /// Unix socket to send the pty master to (process.terminal).
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    /// Write the init's pid here.
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// Use MS_MOVE and chroot instead of pivot_root.
    #[arg(long)]
    pub no_pivot: bool,
    /// Accepted for runc compatibility: rt never creates a session keyring.
    #[arg(long)]
    pub no_new_keyring: bool,
    /// Pass fds 3 .. 3+N-1 into the container.
    #[arg(long, default_value_t = 0)]
    pub preserve_fds: u32,
    /// Isolation backend (overrides the run.rt.isolation annotation).
    #[arg(long)]
    pub isolation: Option<String>,
    /// Container id.
    pub id: String,
}

impl CreateFlags {
    pub fn request(&self, keep_terminal: bool) -> CreateRequest {
        CreateRequest {
            id: self.id.clone(),
            bundle: self.bundle.clone(),
            pid_file: self.pid_file.clone(),
            options: Options {
                console_socket: self.console_socket.clone(),
                no_pivot: self.no_pivot,
                preserve_fds: self.preserve_fds,
                keep_terminal,
            },
            isolation: self.isolation.clone(),
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub flags: CreateFlags,
}

pub fn run(g: &Global, a: Args) -> anyhow::Result<()> {
    let rt = Runtime::new(&g.root)
        .with_cgroups(g.cgroups)
        .rootless(g.rootless);
    rt.create(&a.flags.request(false))?;
    Ok(())
}
