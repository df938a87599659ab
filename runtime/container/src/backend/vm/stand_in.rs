//! Spawning a stand-in (`rt vm-supervisor` or `rt vm-exec`) and reading
//! its answer on the sync socket; for rt's own networks, the attach step
//! in between. Also the host pty a terminal process's stand-in gets.

use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::unistd::Pid;

use super::{supervisor, VmError};
use crate::error::{Error, Result};
use crate::sandbox::Options;

/// A host pty for a terminal process: the master goes to the console
/// socket (or back to `rt run`), the slave becomes the stand-in's stdio.
pub(super) fn host_pty(opts: &Options) -> std::result::Result<(Option<OwnedFd>, OwnedFd), VmError> {
    let pty = nix::pty::openpty(None, None).map_err(|e| VmError::Sys("openpty", e))?;
    match &opts.console_socket {
        Some(path) => {
            crate::terminal::send_to_socket(path, pty.master.as_fd())
                .map_err(|e| VmError::Helper(crate::process::chain(&e)))?;
            Ok((None, pty.slave))
        }
        None if opts.keep_terminal => Ok((Some(pty.master), pty.slave)),
        None => Err(VmError::Helper(
            "process.terminal needs --console-socket".into(),
        )),
    }
}

/// Spawns `rt SUBCOMMAND ARGS` (the supervisor or an exec relay) with
/// the sync socket as fd 3, and reads its answer.
pub(super) fn spawn_stand_in(
    args: &[&std::ffi::OsStr],
    slave: Option<&OwnedFd>,
    log: &Path,
    pid_out: &mut dyn FnMut(Pid) -> Result<()>,
    attach: Option<&mut dyn FnMut(Pid) -> Result<Vec<u8>>>,
    timeout: Duration,
    tied: bool,
) -> Result<(Pid, supervisor::Answer)> {
    let (mine, theirs) = UnixStream::pair().map_err(|e| Error::Vm(VmError::Socket(e)))?;
    let mut cmd = Command::new("/proc/self/exe");
    if tied {
        rt_sys::spawn::die_with_parent(&mut cmd);
    }
    cmd.arg("--log")
        .arg(log)
        .arg("--log-format")
        .arg("json")
        .args(args);
    if let Some(s) = slave {
        let dup = |f: &OwnedFd| f.try_clone().map(Stdio::from);
        let io = |e| Error::Vm(VmError::Socket(e));
        cmd.stdin(dup(s).map_err(io)?)
            .stdout(dup(s).map_err(io)?)
            .stderr(dup(s).map_err(io)?);
    }
    rt_sys::spawn::inherit_fd(&mut cmd, OwnedFd::from(theirs), supervisor::SYNC_FD);
    let child = cmd.spawn().map_err(|source| {
        Error::Vm(VmError::Spawn {
            program: "/proc/self/exe".into(),
            source,
        })
    })?;
    drop(cmd);
    let pid = Pid::from_raw(child.id() as i32);
    pid_out(pid)?;
    let mut mine = mine;
    if let Some(attach) = attach {
        attach_network(&mut mine, pid, attach)?;
    }
    mine.set_read_timeout(Some(timeout))
        .map_err(|e| Error::Vm(VmError::Socket(e)))?;
    let mut text = Vec::new();
    let _ = mine.read_to_end(&mut text);
    let answer: supervisor::Answer = serde_json::from_slice(&text).unwrap_or_default();
    Ok((pid, answer))
}

/// Waits for the supervisor's new network namespace
/// ([`supervisor::NETNS_READY`]), has `attach` build the network in it and
/// sends the supervisor what was built. An error drops the socket: the
/// supervisor sees it close and gives up.
fn attach_network(
    sync: &mut UnixStream,
    pid: Pid,
    attach: &mut dyn FnMut(Pid) -> Result<Vec<u8>>,
) -> Result<()> {
    let sock = |e| Error::Vm(VmError::Socket(e));
    sync.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(sock)?;
    let mut ready = [0u8; 2];
    if sync.read_exact(&mut ready).is_err() || ready != supervisor::NETNS_READY {
        return Err(Error::Vm(VmError::NoAnswer(format!("pid {pid}"))));
    }
    let mut line = attach(pid)?;
    line.push(b'\n');
    std::io::Write::write_all(sync, &line).map_err(sock)
}
