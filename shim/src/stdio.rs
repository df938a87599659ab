//! A process's stdio, from containerd's fifos.
//!
//! Without a terminal, rt (and so the process) gets:
//! - stdin: the read end of a pipe the shim fills from the stdin fifo (a
//!   thread opens the fifo, blocking until containerd's writer comes, and
//!   copies to EOF); `CloseIO` closes the pipe, the process sees EOF. A
//!   fifo handed over directly would read EOF before any writer came.
//! - stdout, stderr: the fifos themselves, opened for writing. The shim
//!   also keeps each open for reading (as the runc shim does): while
//!   containerd is away (restarting) the process's writes wait in the
//!   fifo instead of failing with EPIPE, and containerd reads them when it
//!   reopens the fifo.
//!
//! A `file://` log URI (`ctr run --log-uri`) is opened for appending and
//! handed over the same way; other schemes (a logging binary) are refused
//! by name.
//!
//! With a terminal, rt gets a console socket; the shim takes the pty
//! master from it and copies master → stdout fifo and stdin fifo → master,
//! and `ResizePty` sets the master's window size.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("opening {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("making a pipe for stdin")]
    Pipe(#[source] nix::errno::Errno),
    #[error("the console socket {path}")]
    Console {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("receiving the pty master")]
    Master(#[source] rt_sys::Error),
    #[error("rt sent no pty master on the console socket")]
    NoMaster,
    #[error("resizing the terminal")]
    Resize(#[source] rt_sys::Error),
    #[error("log URI {0}: only file:// is supported (not a logging binary)")]
    LogUri(String),
}

/// containerd's fifo paths for one process (empty: none).
#[derive(Debug, Clone, Default)]
pub struct Paths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// What the shim holds of a running process's stdio.
#[derive(Default)]
pub struct Io {
    /// Where stdin goes (the pipe, or the pty master); `None` once closed.
    stdin: Arc<Mutex<Option<File>>>,
    /// The pty master, for resizes.
    master: Option<Arc<File>>,
    /// Read ends of the stdout/stderr fifos, held open.
    _held: Vec<File>,
}

/// The stdio handed to rt, with what the shim keeps, and for a terminal
/// the console socket rt sends the master to.
pub struct Prepared {
    pub io: Io,
    stdio: Option<(Stdio, Stdio, Stdio)>,
    console: Option<(PathBuf, UnixListener)>,
    paths: Paths,
}

fn open(path: &str, write: bool) -> Result<File, Error> {
    let mut o = OpenOptions::new();
    if write {
        o.write(true);
    } else {
        o.read(true).custom_flags(libc::O_NONBLOCK);
    }
    o.open(path).map_err(|source| Error::Open {
        path: path.into(),
        source,
    })
}

/// Where a process's output goes: containerd's fifo (and, held open, its
/// read end), or the file of a `file://` log URI (`ctr run --log-uri`).
fn output(path: &str) -> Result<(File, Option<File>), Error> {
    if let Some(file) = path.strip_prefix("file://") {
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(file)
            .map_err(|source| Error::Open {
                path: file.into(),
                source,
            })?;
        return Ok((f, None));
    }
    if path.contains("://") {
        return Err(Error::LogUri(path.into()));
    }
    let held = open(path, false)?;
    Ok((open(path, true)?, Some(held)))
}

/// A console socket path that fits `sun_path` whatever the bundle's.
fn console_path() -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    std::env::temp_dir().join(format!(
        "rt-shim-{}-{}.sock",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Copies `from` into the writer in `to` until EOF (or the writer is
/// taken away), then drops the writer.
fn pump(mut from: impl Read + Send + 'static, to: Arc<Mutex<Option<File>>>) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 32 * 1024];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let mut w = to.lock().unwrap_or_else(|e| e.into_inner());
            let written = w.as_mut().is_some_and(|f| f.write_all(&buf[..n]).is_ok());
            if !written {
                break;
            }
        }
        to.lock().unwrap_or_else(|e| e.into_inner()).take();
    });
}

/// Opens (blocking) the stdin fifo in a thread and pumps it into `to`.
fn pump_fifo(path: String, to: Arc<Mutex<Option<File>>>) {
    std::thread::spawn(move || match File::open(&path) {
        Ok(f) => pump(f, to),
        Err(e) => tracing::warn!("opening stdin {path}: {e}"),
    });
}

impl Prepared {
    pub fn new(paths: &Paths) -> Result<Prepared, Error> {
        let mut io = Io::default();
        if paths.terminal {
            let path = console_path();
            let listener = UnixListener::bind(&path).map_err(|source| Error::Console {
                path: path.clone(),
                source,
            })?;
            return Ok(Prepared {
                io,
                stdio: Some((Stdio::null(), Stdio::null(), Stdio::null())),
                console: Some((path, listener)),
                paths: paths.clone(),
            });
        }
        let stdin = if paths.stdin.is_empty() {
            Stdio::null()
        } else {
            let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(Error::Pipe)?;
            *io.stdin.lock().unwrap_or_else(|e| e.into_inner()) = Some(File::from(w));
            pump_fifo(paths.stdin.clone(), io.stdin.clone());
            Stdio::from(r)
        };
        let mut out = |path: &str| -> Result<Stdio, Error> {
            if path.is_empty() {
                return Ok(Stdio::null());
            }
            let (w, held) = output(path)?;
            io._held.extend(held);
            Ok(Stdio::from(w))
        };
        let stdout = out(&paths.stdout)?;
        let stderr = out(&paths.stderr)?;
        Ok(Prepared {
            io,
            stdio: Some((stdin, stdout, stderr)),
            console: None,
            paths: paths.clone(),
        })
    }

    /// Sets rt's stdio (and `--console-socket`) on `cmd`.
    pub fn apply(&mut self, cmd: &mut Command) {
        if let Some((i, o, e)) = self.stdio.take() {
            cmd.stdin(i).stdout(o).stderr(e);
        }
    }

    /// The `--console-socket` argument, for a terminal.
    pub fn console_socket(&self) -> Option<&Path> {
        self.console.as_ref().map(|(p, _)| p.as_path())
    }

    /// After rt succeeded: for a terminal, takes the master rt sent and
    /// starts the copies. The shim's I/O for the process.
    pub fn finish(mut self) -> Result<Io, Error> {
        let Some((path, listener)) = self.console.take() else {
            return Ok(std::mem::take(&mut self.io));
        };
        let _ = std::fs::remove_file(&path);
        listener
            .set_nonblocking(true)
            .map_err(|source| Error::Console {
                path: path.clone(),
                source,
            })?;
        // rt sent the master before it exited: the connection is queued.
        let mut conn = None;
        for _ in 0..100 {
            match listener.accept() {
                Ok((c, _)) => {
                    conn = Some(c);
                    break;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        let conn = conn.ok_or(Error::NoMaster)?;
        let _ = conn.set_nonblocking(false);
        let master: OwnedFd = rt_sys::recv_fd(conn.as_fd())
            .map_err(Error::Master)?
            .ok_or(Error::NoMaster)?;
        let master = File::from(master);
        let reader = master.try_clone().map_err(|source| Error::Console {
            path: path.clone(),
            source,
        })?;
        if !self.paths.stdout.is_empty() {
            let (w, held) = output(&self.paths.stdout)?;
            self.io._held.extend(held);
            pump(reader, Arc::new(Mutex::new(Some(w))));
        }
        if !self.paths.stdin.is_empty() {
            let w = master.try_clone().map_err(|source| Error::Console {
                path: path.clone(),
                source,
            })?;
            *self.io.stdin.lock().unwrap_or_else(|e| e.into_inner()) = Some(w);
            pump_fifo(self.paths.stdin.clone(), self.io.stdin.clone());
        }
        self.io.master = Some(Arc::new(master));
        Ok(std::mem::take(&mut self.io))
    }
}

impl Drop for Prepared {
    fn drop(&mut self) {
        if let Some((path, _)) = &self.console {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Io {
    /// `CloseIO`: the process's stdin ends (for a terminal, the master
    /// stays: only the copy stops).
    pub fn close_stdin(&self) {
        self.stdin.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    pub fn resize(&self, cols: u32, rows: u32) -> Result<(), Error> {
        match &self.master {
            Some(m) => {
                rt_sys::set_window_size(m.as_fd(), rows as u16, cols as u16).map_err(Error::Resize)
            }
            None => Ok(()),
        }
    }
}

/// Unmounts whatever is mounted on (and under) `bundle/rootfs`.
pub fn unmount_rootfs(bundle: &Path) {
    let rootfs = bundle.join("rootfs");
    if let Some(p) = rootfs.to_str() {
        if let Err(e) = containerd_shim::mount::umount_recursive(Some(p), libc::MNT_DETACH) {
            tracing::warn!("unmounting {p}: {e}");
        }
    }
}
