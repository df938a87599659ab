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
        Ok((conn, reader, pid)) => {
            let _ = supervisor::answer_on(
                sync,
                &Answer {
                    guest_pid: Some(pid),
                    ..Answer::default()
                },
            );
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

fn start(dir: &Path, op: &Path, terminal: bool) -> Result<(Arc<Conn>, UnixStream, i32), VmError> {
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
    loop {
        let f = Frame::read_from(&mut reader)?;
        match f.kind {
            Kind::Message => {
                if let Ok(ToHost::Reply { req: 1, reply }) = f.parse() {
                    if let Some(e) = reply.error {
                        return Err(VmError::Guest(e));
                    }
                    return Ok((conn, reader, reply.pid.unwrap_or(0)));
                }
            }
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
