//! `rt exec`: run a process in a container, from `--process FILE` or from the
//! container's own process spec with the command line and flags applied.

use std::path::PathBuf;

use oci_spec::runtime::{Capability, Process};
use rt_container::process::foreground;
use rt_container::{ExecHow, Options, Runtime};

use crate::Global;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Unix socket to send the pty master to (with --tty).
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    /// Working directory in the container.
    #[arg(long)]
    pub cwd: Option<PathBuf>,
    /// Extra environment, KEY=VALUE (repeatable).
    #[arg(short, long)]
    pub env: Vec<String>,
    /// Allocate a pty.
    #[arg(short, long)]
    pub tty: bool,
    /// UID[:GID] to run as.
    #[arg(short, long)]
    pub user: Option<String>,
    /// Additional group ids (repeatable).
    #[arg(short = 'g', long)]
    pub additional_gids: Vec<u32>,
    /// A process.json (runtime-spec Process) instead of the command line.
    #[arg(short, long)]
    pub process: Option<PathBuf>,
    /// SELinux label (refused: SELinux is not supported on this host).
    #[arg(long)]
    pub process_label: Option<String>,
    /// AppArmor profile.
    #[arg(long)]
    pub apparmor: Option<String>,
    /// Set no_new_privs.
    #[arg(long)]
    pub no_new_privs: bool,
    /// Add a capability (repeatable).
    #[arg(short, long)]
    pub cap: Vec<String>,
    /// Pass fds 3 .. 3+N-1.
    #[arg(long, default_value_t = 0)]
    pub preserve_fds: u32,
    /// Return once the process runs.
    #[arg(short, long)]
    pub detach: bool,
    /// Write the process's pid here.
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// Exec even into a paused container: the process starts frozen and
    /// runs at `resume`.
    #[arg(long)]
    pub ignore_paused: bool,
    /// Run in a sub-cgroup of the container's, made if missing: PATH, or on
    /// cgroup v1 CONTROLLER[,CONTROLLER]:PATH (repeatable).
    #[arg(long)]
    pub cgroup: Vec<String>,
    pub id: String,
    /// The command and its arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

fn process(rt: &Runtime, a: &Args) -> anyhow::Result<Process> {
    if let Some(path) = &a.process {
        let text =
            std::fs::read(path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        let parse = |e: serde_json::Error| anyhow::anyhow!("parsing {}: {e}", path.display());
        let mut raw: serde_json::Value = serde_json::from_slice(&text).map_err(parse)?;
        rt_container::spec::drop_unknown_capabilities(&mut raw);
        let p: Process = serde_json::from_value(raw).map_err(parse)?;
        if p.args().as_ref().is_none_or(|a| a.is_empty()) {
            anyhow::bail!("{}: process.args is empty", path.display());
        }
        return Ok(p);
    }
    if a.command.is_empty() {
        anyhow::bail!("exec needs a command (or --process FILE)");
    }
    let (st, _) = rt.state(&a.id)?;
    let mut p = st.config.process().clone().unwrap_or_default();
    p.set_args(Some(a.command.clone()));
    p.set_terminal(Some(a.tty));
    p.set_console_size(None);
    if let Some(cwd) = &a.cwd {
        p.set_cwd(cwd.clone());
    }
    p.set_env(Some(override_env(
        p.env().clone().unwrap_or_default(),
        &a.env,
    )));
    if let Some(u) = &a.user {
        let (uid, gid) = u
            .split_once(':')
            .map_or((u.as_str(), None), |(u, g)| (u, Some(g)));
        let uid: u32 = uid
            .parse()
            .map_err(|_| anyhow::anyhow!("invalid --user {u:?}: use UID[:GID]"))?;
        p.user_mut().set_uid(uid);
        if let Some(g) = gid {
            let gid: u32 = g
                .parse()
                .map_err(|_| anyhow::anyhow!("invalid --user {u:?}: use UID[:GID]"))?;
            p.user_mut().set_gid(gid);
        }
    }
    if !a.additional_gids.is_empty() {
        p.user_mut()
            .set_additional_gids(Some(a.additional_gids.clone()));
    }
    if a.no_new_privs {
        p.set_no_new_privileges(Some(true));
    }
    if let Some(profile) = &a.apparmor {
        p.set_apparmor_profile(Some(profile.clone()));
    }
    if !a.cap.is_empty() {
        let mut caps = p.capabilities().clone().unwrap_or_default();
        for name in &a.cap {
            let cap: Capability = serde_json::from_value(serde_json::Value::String(name.clone()))
                .map_err(|_| anyhow::anyhow!("unknown capability {name:?}"))?;
            // (An explicit --cap is refused when unknown: the caller asked
            // for it by name; a spec's unknown names are skipped instead.)
            // As runc: the capability joins the bounding, effective and
            // permitted sets (not inheritable or ambient: it must not pass
            // on to the process's own children through execve).
            let add = |set: &Option<oci_spec::runtime::Capabilities>| {
                let mut set = set.clone().unwrap_or_default();
                set.insert(cap);
                Some(set)
            };
            let (b, e, pe) = (
                add(caps.bounding()),
                add(caps.effective()),
                add(caps.permitted()),
            );
            caps.set_bounding(b);
            caps.set_effective(e);
            caps.set_permitted(pe);
        }
        p.set_capabilities(Some(caps));
    }
    Ok(p)
}

/// `--env K=V` replaces the variable K of the process's environment (or
/// adds it), as runc does; a bare `K` is passed as it is.
fn override_env(mut env: Vec<String>, extra: &[String]) -> Vec<String> {
    for kv in extra {
        let key = kv.split_once('=').map_or(kv.as_str(), |(k, _)| k);
        env.retain(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) != key);
        env.push(kv.clone());
    }
    env
}

pub fn run(g: &Global, a: Args) -> anyhow::Result<i32> {
    if a.process_label.is_some() {
        anyhow::bail!("--process-label is not supported: SELinux is not enabled on this host");
    }
    let rt = Runtime::new(&g.root);
    let p = process(&rt, &a)?;
    let opts = Options {
        console_socket: a.console_socket.clone(),
        no_pivot: false,
        preserve_fds: a.preserve_fds,
        keep_terminal: !a.detach,
        ..Options::default()
    };
    let how = ExecHow {
        ignore_paused: a.ignore_paused,
        cgroup: rt_cgroups::Sub::parse(&a.cgroup)?,
    };
    let created = rt.exec(&a.id, &p, &opts, a.pid_file.as_deref(), &how)?;
    if a.detach {
        return Ok(0);
    }
    Ok(foreground::Waiter::new(created)?.wait()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_overrides_the_spec() {
        let env = vec!["PATH=/bin".to_string(), "K=spec".into(), "A=1".into()];
        let got = override_env(env, &["K=cli".into(), "NEW=x".into()]);
        assert_eq!(got, ["PATH=/bin", "A=1", "K=cli", "NEW=x"]);
    }
}
