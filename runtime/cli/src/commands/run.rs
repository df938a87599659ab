//! `rt run`: create and start; in the foreground (the default) wait for the
//! container, forward signals to it, relay its terminal, delete it afterwards
//! (unless --keep), and exit with its status (128+N when killed by signal N).

use rt_container::process::foreground;
use rt_container::Runtime;

use super::create::CreateFlags;
use crate::Global;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Return once the container runs.
    #[arg(short, long)]
    pub detach: bool,
    /// Keep the container's state after it exits.
    #[arg(long)]
    pub keep: bool,
    /// Accepted for runc compatibility (rt never makes itself a subreaper for
    /// the caller's sake beyond create).
    #[arg(long)]
    pub no_subreaper: bool,
    #[command(flatten)]
    pub flags: CreateFlags,
}

pub fn run(g: &Global, mut a: Args) -> anyhow::Result<i32> {
    let rt = Runtime::new(&g.root)
        .with_cgroups(g.cgroups)
        .systemd_cgroup(g.systemd_cgroup)
        .rootless(g.rootless);
    let id = a.flags.id.clone();
    a.flags.prepare_image(g)?;
    // Created here and started at once: start and delete reuse what create
    // read (the state, the host's cgroup layout).
    let mut req = a.flags.request(!a.detach);
    req.options.starts_at_once = true;
    let fresh = match rt.create_fresh(&req) {
        Ok(f) => f,
        Err(e) => {
            a.flags.discard_image(g);
            return Err(e.into());
        }
    };
    let (mut created, fresh) = fresh.split();
    // Held to the end: the namespace's teardown then starts once the
    // container is deleted, not while this process wakes and cleans up.
    let _netns = created.netns.take();
    if a.detach {
        if let Err(e) = rt.start_fresh(fresh) {
            let _ = rt.delete(&id, true);
            return Err(e.into());
        }
        return Ok(0);
    }
    // Signals are taken over before start so that none meant for the
    // container is lost; the init already has its own (default) mask.
    let waiter = match foreground::Waiter::new(created) {
        Ok(w) => w,
        Err(e) => {
            drop(fresh);
            let _ = rt.delete(&id, true);
            return Err(e.into());
        }
    };
    let started = match rt.start_fresh(fresh) {
        Ok(started) => started,
        Err(e) => {
            drop(waiter);
            let _ = rt.delete(&id, true);
            return Err(e.into());
        }
    };
    let status = waiter.wait();
    if !a.keep {
        rt.delete_started(started)?;
    }
    Ok(status?)
}
