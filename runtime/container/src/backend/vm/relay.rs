//! The exec relay (`rt vm-exec DIR OP.json [--tty]`): the host process
//! that stands for a process exec'd in a VM container (OP is an
//! [`Op::Exec`]; an [`Op::Stream`] relays the guest rt's `events`). `rt exec` returns
//! (or, attached, waits for) it: its pid is the exec'd process's in
//! `--pid-file`, its stdio is the process's, signals sent to it reach the
//! process in the guest, and it ends as the process ended. It talks to the
//! supervisor's control socket; the supervisor routes to the agent.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rt_vm::channel::{self, Frame, Kind, Op, ToGuest, ToHost};

use super::stdio::{self, Received};
use super::supervisor::{self, Answer, ToAgent};
use super::{files, VmError};

/// Our end of the control socket, writable from several threads.
struct Conn {
    w: Mutex<UnixStream>,
    next: AtomicU64,
}

impl ToAgent for Conn {
    fn send_frame(&self, f: &Frame) -> Result<(), VmError> {
        let mut w = self.w.lock().unwrap_or_else(|e| e.into_inner());
        f.write_to(&mut *w).map_err(VmError::Channel)
    }
}

impl Conn {
    fn request(&self, op: Op) {
        let req = self.next.fetch_add(1, Ordering::Relaxed);
        let _ = self.send_frame(&Frame::message(&ToGuest::Request { req, op }));
    }
}

pub fn main(dir: &Path, op: &Path, terminal: bool) -> ! {
    let _ = nix::sys::prctl::set_name(c"rt-vm-exec");
    let sync = match rt_sys::spawn::take_inherited_fd(supervisor::SYNC_FD) {
        Ok(fd) => UnixStream::from(fd),
        Err(e) => {
            eprintln!("rt vm-exec: no sync socket: {e}");
            std::process::exit(1);
        }
    };
    match start(dir, op, terminal) {
        Ok((conn, reader, started)) => {
            let _ = supervisor::answer_on(
                sync,
                &Answer {
                    guest_pid: Some(started.pid),
                    ..Answer::default()
                },
            );
            if let Some(status) = started.exited {
                // Its output came before its exit, and has been written.
                stdio::exit_as(status)
            }
            relay(conn, reader, terminal)
        }
        Err(e) => {
            let _ = supervisor::answer_on(
                sync,
                &Answer {
                    error: Some(crate::process::chain(&e)),
                    ..Answer::default()
                },
            );
            std::process::exit(1)
        }
    }
}

/// The agent's answer to the exec request.
#[derive(Debug, PartialEq, Eq)]
struct Started {
    /// The process's pid in the guest.
    pid: i32,
    /// Its wait status, when it ended before the reply came: the agent
    /// sends the exit from the thread that watches the process, which can
    /// overtake the reply of the thread that started it.
    exited: Option<i32>,
}

fn start(
    dir: &Path,
    op: &Path,
    terminal: bool,
) -> Result<(Arc<Conn>, UnixStream, Started), VmError> {
    let text = std::fs::read(op).map_err(|source| VmError::Io {
        what: "reading",
        path: op.to_path_buf(),
        source,
    })?;
    let _ = std::fs::remove_file(op);
    let op: Op = serde_json::from_slice(&text).map_err(VmError::Config)?;
    if terminal {
        stdio::own_terminal()?;
    }
    stdio::block_signals()?;
    let sock = super::socket_path(dir, files::CONTROL_SOCKET)?;
    let mut reader = UnixStream::connect(&sock.path).map_err(VmError::Socket)?;
    let conn = Arc::new(Conn {
        w: Mutex::new(reader.try_clone().map_err(VmError::Socket)?),
        next: AtomicU64::new(2),
    });
    conn.send_frame(&Frame::message(&ToGuest::Request { req: 1, op }))?;
    let started = await_reply(&mut reader)?;
    Ok((conn, reader, started))
}

/// Reads until the reply to request 1, writing out the process's output
/// meanwhile and keeping its exit should that come first.
fn await_reply(reader: &mut UnixStream) -> Result<Started, VmError> {
    let mut exited = None;
    loop {
        let f = Frame::read_from(reader)?;
        match f.kind {
            Kind::Message => match f.parse() {
                Ok(ToHost::Reply { req: 1, reply }) => {
                    if let Some(e) = reply.error {
                        return Err(VmError::Guest(e));
                    }
                    let pid = reply.pid.unwrap_or(0);
                    return Ok(Started { pid, exited });
                }
                Ok(ToHost::Exited { proc: 1, status }) => exited = Some(status),
                _ => {}
            },
            Kind::Data => stdio::write_out(channel::split(f.stream).1, &f.payload),
            Kind::Eof => {}
        }
    }
}

fn relay(conn: Arc<Conn>, mut reader: UnixStream, terminal: bool) -> ! {
    let c = conn.clone();
    std::thread::spawn(move || supervisor::pump_stdin(c.as_ref(), 1));
    let resize = |c: &Conn| {
        if let Some((rows, cols)) = stdio::terminal_size() {
            let _ = c.send_frame(&Frame::message(&ToGuest::Resize {
                proc: 1,
                rows,
                cols,
            }));
        }
    };
    if terminal {
        resize(&conn);
    }
    let c = conn.clone();
    std::thread::spawn(move || loop {
        match stdio::next_signal() {
            Received::Forward(signal) => c.request(Op::Signal { proc: 1, signal }),
            Received::Resize if terminal => resize(&c),
            _ => {}
        }
    });
    loop {
        match Frame::read_from(&mut reader) {
            Ok(f) => match f.kind {
                Kind::Data => stdio::write_out(channel::split(f.stream).1, &f.payload),
                Kind::Message => {
                    if let Ok(ToHost::Exited { proc: 1, status }) = f.parse() {
                        stdio::exit_as(status)
                    }
                }
                Kind::Eof => {}
            },
            // The supervisor (the VM) is gone: the process died with it.
            Err(_) => rt_sys::die_of(libc::SIGKILL),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rt_vm::channel::Reply;

    /// The agent's reply to request 1: process 42 started.
    fn reply_with_pid_42() -> Frame {
        Frame::message(&ToHost::Reply {
            req: 1,
            reply: Reply {
                pid: Some(42),
                ..Reply::default()
            },
        })
    }

    /// The agent's exit report for a quick process can overtake its reply
    /// to the exec request (they come from two threads); the relay then
    /// waited for an exit that had already gone by, and `rt exec` (and
    /// `podman exec`) hung for good once in a full test run.
    #[test]
    fn an_exit_before_the_reply_is_kept() {
        let (mut ours, mut agent) = UnixStream::pair().unwrap();
        let exited = Frame::message(&ToHost::Exited {
            proc: 1,
            status: 7 << 8,
        });
        exited.write_to(&mut agent).unwrap();
        reply_with_pid_42().write_to(&mut agent).unwrap();
        assert_eq!(
            await_reply(&mut ours).unwrap(),
            Started {
                pid: 42,
                exited: Some(7 << 8)
            }
        );
    }

    #[test]
    fn a_reply_alone_leaves_the_process_running() {
        let (mut ours, mut agent) = UnixStream::pair().unwrap();
        reply_with_pid_42().write_to(&mut agent).unwrap();
        assert_eq!(
            await_reply(&mut ours).unwrap(),
            Started {
                pid: 42,
                exited: None
            }
        );
    }
}
