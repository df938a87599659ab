//! The VM backend's host processes, run by rt itself (hidden commands):
//! `vm-supervisor DIR` stands for a VM container's init, `vm-exec DIR FILE`
//! for a process exec'd in it. See rt_container::backend::vm.

use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct SupervisorArgs {
    /// The container's state directory.
    pub dir: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    /// The container's state directory.
    pub dir: PathBuf,
    /// The process (config.json's `process`), removed once read.
    pub process: PathBuf,
    /// The process has a terminal (this process's stdio is its pty slave).
    #[arg(long)]
    pub tty: bool,
}

pub fn supervisor(a: SupervisorArgs) -> ! {
    rt_container::backend::vm::supervisor::main(&a.dir)
}

pub fn exec(a: ExecArgs) -> ! {
    rt_container::backend::vm::relay::main(&a.dir, &a.process, a.tty)
}
