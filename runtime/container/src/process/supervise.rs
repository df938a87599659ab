//! What the two parent roles — create's and exec's — share: the checks before
//! forking, the loop over their children's messages (forwarding the pty
//! master, turning a child's failure or death into an error), and the cleanup
//! when a step fails.

use std::os::fd::{AsFd, OwnedFd};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::waitpid;
use nix::unistd::Pid;
use oci_spec::runtime::Process;

use crate::channel::{self, ParentEnd, ToParent};
use crate::sandbox::Options;
use crate::terminal;

/// Errors of supervising the child processes.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("talking to the container's processes")]
    Channel(#[from] channel::Error),
    #[error("{0}")]
    Child(String),
    #[error("the container's process exited before it was ready")]
    ChildDied,
    #[error("unexpected message {0:?} from the container's processes")]
    Unexpected(ToParent),
    #[error(transparent)]
    Terminal(#[from] terminal::Error),
    #[error("cannot allocate tty if rt will detach without setting console socket")]
    TerminalWithoutSocket,
    #[error(transparent)]
    Listener(#[from] crate::seccomp::listener::Error),
    #[error("becoming a child subreaper")]
    Subreaper(#[source] nix::errno::Errno),
}

pub type Result<T> = std::result::Result<T, Error>;

/// Checks made before forking: a pty needs somewhere to go, and the parent
/// becomes a subreaper so that the grandchild it is about to make becomes its
/// child when the stage exits (a caller that is a subreaper itself adopts it
/// after we exit, as with runc).
pub fn prepare(process: &Process, opts: &Options) -> Result<()> {
    if process.terminal().unwrap_or(false) && opts.console_socket.is_none() && !opts.keep_terminal {
        return Err(Error::TerminalWithoutSocket);
    }
    nix::sys::prctl::set_child_subreaper(true).map_err(Error::Subreaper)
}

/// The messages a parent acts on itself.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    UserNamespaceReady,
    InitPid(Pid),
    RuntimeHooks,
    Ready,
}

/// Reads the children's messages, handling those both parents handle alike.
#[derive(Debug)]
pub struct Supervisor<'a> {
    chan: &'a ParentEnd,
    opts: &'a Options,
    terminal: Option<OwnedFd>,
    seccomp: Option<OwnedFd>,
}

impl<'a> Supervisor<'a> {
    pub fn new(chan: &'a ParentEnd, opts: &'a Options) -> Self {
        Supervisor {
            chan,
            opts,
            terminal: None,
            seccomp: None,
        }
    }

    /// The next message the caller must act on. The pty master is sent to the
    /// console socket (or kept for the caller to relay); a child's failure or
    /// death is an error.
    pub fn next_event(&mut self) -> Result<Event> {
        loop {
            let (msg, fd) = match self.chan.recv_with_fd() {
                Ok(m) => m,
                Err(channel::Error::Closed) => return Err(Error::ChildDied),
                Err(e) => return Err(e.into()),
            };
            return Ok(match msg {
                ToParent::UserNamespaceReady => Event::UserNamespaceReady,
                ToParent::InitPid(pid) => Event::InitPid(Pid::from_raw(pid)),
                ToParent::RuntimeHooks => Event::RuntimeHooks,
                ToParent::Ready => Event::Ready,
                ToParent::Failed(msg) => return Err(Error::Child(msg)),
                ToParent::SeccompListener => {
                    let fd = fd.ok_or(Error::Unexpected(ToParent::SeccompListener))?;
                    self.seccomp = Some(fd);
                    continue;
                }
                ToParent::Terminal => {
                    let master = fd.ok_or(Error::Unexpected(ToParent::Terminal))?;
                    match &self.opts.console_socket {
                        Some(path) => terminal::send_to_socket(path, master.as_fd())?,
                        None => self.terminal = Some(master),
                    }
                    continue;
                }
            });
        }
    }

    /// Hands the seccomp listener descriptor, if the process sent one, to
    /// `listenerPath` with the state of process `pid`.
    pub fn hand_over_seccomp(
        &mut self,
        seccomp: Option<&oci_spec::runtime::LinuxSeccomp>,
        pid: Pid,
        state: serde_json::Value,
    ) -> Result<()> {
        let (Some(fd), Some(s)) = (self.seccomp.take(), seccomp) else {
            return Ok(());
        };
        let Some(path) = s.listener_path() else {
            return Ok(());
        };
        let msg = crate::seccomp::listener::process_state(
            pid.as_raw(),
            s.listener_metadata().as_deref(),
            state,
        );
        crate::seccomp::listener::send(path, &msg, fd.as_fd())?;
        Ok(())
    }

    /// The pty master kept for the caller (no console socket).
    pub fn into_terminal(self) -> Option<OwnedFd> {
        self.terminal
    }
}

/// After a failed step: kill the stage and the process it made, and reap both.
pub fn abort(stage: Pid, child: Option<Pid>) {
    let _ = kill(stage, Signal::SIGKILL);
    if let Some(pid) = child {
        let _ = kill(pid, Signal::SIGKILL);
        let _ = waitpid(pid, None);
    }
    let _ = waitpid(stage, None);
}
