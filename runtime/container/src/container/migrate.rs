//! The engine's live migration, the sending side: into another state root
//! of this host (`rt migrate ID --to ROOT`), or to a receiver over TCP
//! (`rt migrate ID --to tcp://HOST:PORT`, the other end being `rt
//! receive`, see [`super::receive`]), which is how it crosses hosts. Both
//! start the destination with `rt restore --incoming` and end the same
//! way: the source is deleted only once the destination runs, and resumed
//! if the destination fails after the copy.
//!
//! Over TCP one connection carries everything: the sender's offer (a JSON
//! line: the destination id, the bundle path, the VM's description), the
//! receiver's answer (a line), QEMU's migration stream (each side's QEMU
//! talks to a unix socket of its rt, which relays it), and once the
//! destination runs, the receiver's last answer (a line).

use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use super::{Opened, Runtime};
use crate::backend::vm::checkpoint;
use crate::backend::MigrationEnd;
use crate::error::{Error, Result};
use crate::spec;
use crate::state::Status;

/// Where `rt migrate` sends a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// Another state root of this host.
    Root(PathBuf),
    /// An `rt receive` listening at `HOST:PORT`.
    Tcp(String),
}

impl Destination {
    /// `tcp://HOST:PORT`, or a state root's path.
    pub fn parse(s: &str) -> Destination {
        match s.strip_prefix("tcp://") {
            Some(addr) => Destination::Tcp(addr.to_string()),
            None => Destination::Root(PathBuf::from(s)),
        }
    }
}

/// What a live migration measured.
#[derive(Debug, Clone, PartialEq)]
pub struct MigrationReport {
    /// QEMU's figures: `downtime_ms`, `total_ms`, `transferred`.
    pub qemu: serde_json::Value,
    /// From the request to the destination running and the source gone.
    pub total: Duration,
}

/// The version of the TCP exchange; a receiver refuses any other.
pub(super) const WIRE: u32 = 1;

/// The sender's first line.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Offer {
    #[serde(rename = "rt-migrate")]
    pub version: u32,
    /// The container's id at the destination.
    pub id: String,
    /// The bundle the destination runs it from (the receiver's
    /// `--bundle` overrides it).
    pub bundle: PathBuf,
    /// The VM's description (a checkpoint image's `rt-checkpoint.json`).
    pub description: serde_json::Value,
}

/// The receiver's lines: ready for the stream, then the destination's end.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct Answer {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The receiving host's boot id: the same as the sender's means one
    /// host (the cgroup and the caller's interface are shared).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
}

/// The destination, once it runs.
struct Arrived {
    same_host: bool,
    cgroup: Option<String>,
}

/// The VM was copied (QEMU's figures), and the destination runs or did not
/// start (why).
type Delivered = (serde_json::Value, std::result::Result<Arrived, String>);

impl Runtime {
    /// Live-migrates a running container to `to` (under `new_id`, or its
    /// own id). A local destination's supervisor has this command's stdio;
    /// a remote one has its receiver's.
    pub fn migrate(
        &self,
        id: &str,
        to: &Destination,
        new_id: Option<&str>,
    ) -> Result<MigrationReport> {
        let started = Instant::now();
        let mut c = self.open(id)?;
        if c.status != Status::Running {
            return Err(Error::NotRunning);
        }
        let dest_id = new_id.unwrap_or(id);
        spec::validate_id(dest_id)?;
        let (qemu, arrived) = match to {
            Destination::Root(root) => self.to_root(&c, root, dest_id)?,
            Destination::Tcp(addr) => self.to_peer(&c, addr, dest_id)?,
        };
        let arrived = match arrived {
            Ok(a) => a,
            Err(why) => {
                c.backend.finish_migration(&c.st, MigrationEnd::Resume)?;
                return Err(Error::Migration(format!("{why}; the source resumed")));
            }
        };
        c.backend.finish_migration(
            &c.st,
            MigrationEnd::Moved {
                same_host: arrived.same_host,
            },
        )?;
        // On one host the destination may have the same cgroup (the same
        // id and cgroupsPath): it is the destination's now, and the
        // source's delete must not empty and remove it.
        if arrived.same_host
            && arrived.cgroup.is_some()
            && arrived.cgroup.as_ref() == c.st.cgroup.as_ref().map(|r| &r.path)
        {
            c.st.cgroup = None;
            c.dir.save(&c.st)?;
        }
        drop(c);
        self.delete(id, true)?;
        Ok(MigrationReport {
            qemu,
            total: started.elapsed(),
        })
    }

    /// Into the state root `to` of this host: the destination's QEMU
    /// listens on a socket in it.
    fn to_root(&self, c: &Opened, to: &Path, dest_id: &str) -> Result<Delivered> {
        if to.join(dest_id).exists() {
            return Err(crate::state::Error::AlreadyExists(dest_id.to_string()).into());
        }
        let image = to.join(format!(".migrate-{dest_id}"));
        let _ = std::fs::remove_dir_all(&image);
        let description = c.backend.describe_migration(&c.st)?;
        checkpoint::write_incoming_image(&image, &description)?;
        let socket = incoming_socket(&image);
        let uri = format!("unix:{}", socket.display());
        let mut dest = spawn_destination(to, &image, &uri, &c.st.bundle, dest_id)?;
        let outcome =
            wait_for_listener(&socket, &mut dest).and_then(|()| c.backend.migrate(&c.st, &uri));
        if outcome.is_err() {
            // The source's QEMU may never have connected: the destination's
            // QEMU would wait for the stream for ever, and its restore with
            // it. A connection that ends at once fails its load, and the
            // restore then undoes what it made.
            let _ = UnixStream::connect(&socket);
        }
        let restored = dest.wait().map(|s| s.success()).unwrap_or(false);
        let _ = std::fs::remove_file(&socket);
        let _ = std::fs::remove_dir_all(&image);
        let qemu = outcome?;
        if !restored {
            return Ok((
                qemu,
                Err("the destination did not start (see its error above)".into()),
            ));
        }
        let cgroup = Runtime::new(to)
            .state(dest_id)
            .ok()
            .and_then(|(s, _)| s.cgroup)
            .map(|r| r.path);
        Ok((
            qemu,
            Ok(Arrived {
                same_host: true,
                cgroup,
            }),
        ))
    }

    /// To an `rt receive` at `addr`: the offer, its answer, the VM's
    /// stream relayed from a socket of ours, the destination's end.
    fn to_peer(&self, c: &Opened, addr: &str, dest_id: &str) -> Result<Delivered> {
        let conn = connect(addr)?;
        let mut reader = BufReader::new(clone(&conn, addr)?);
        let offer = Offer {
            version: WIRE,
            id: dest_id.to_string(),
            bundle: c.st.bundle.clone(),
            description: c.backend.describe_migration(&c.st)?,
        };
        write_line(&conn, addr, &offer)?;
        let ready: Answer = read_line(&mut reader, addr, Duration::from_secs(180))?;
        if !ready.ok {
            return Err(Error::Migration(format!(
                "{addr} refused the migration: {}",
                ready.error.unwrap_or_default()
            )));
        }
        let socket = outgoing_socket(self.store.root(), &c.st.id);
        let _ = std::fs::remove_file(&socket);
        let listener = UnixListener::bind(&socket).map_err(|source| Error::Io {
            what: "listening on",
            path: socket.clone(),
            source,
        })?;
        let mut up = clone(&conn, addr)?;
        // The relay: QEMU's stream to the receiver, then the end of our
        // half of the connection (the receiver's QEMU sees the end).
        let relay = std::thread::spawn(move || -> std::io::Result<u64> {
            let (mut q, _) = listener.accept()?;
            let n = std::io::copy(&mut q, &mut up)?;
            up.shutdown(Shutdown::Write)?;
            Ok(n)
        });
        let outcome = c
            .backend
            .migrate(&c.st, &format!("unix:{}", socket.display()));
        if outcome.is_err() {
            // QEMU may never have connected: end the relay's wait.
            let _ = UnixStream::connect(&socket);
        }
        let relayed = relay
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the relay panicked")));
        let _ = std::fs::remove_file(&socket);
        let qemu = outcome?;
        if let Err(e) = relayed {
            return Ok((qemu, Err(format!("relaying the VM to {addr}: {e}"))));
        }
        let end: Answer = match read_line(&mut reader, addr, Duration::from_secs(660)) {
            Ok(a) => a,
            Err(e) => return Ok((qemu, Err(crate::process::chain(&e)))),
        };
        if !end.ok {
            return Ok((
                qemu,
                Err(format!(
                    "the destination at {addr} did not start: {}",
                    end.error.unwrap_or_default()
                )),
            ));
        }
        Ok((
            qemu,
            Ok(Arrived {
                same_host: end.boot_id.is_some() && end.boot_id == boot_id(),
                cgroup: end.cgroup,
            }),
        ))
    }
}

/// Starts `rt --root ROOT restore --detach --incoming URI` for `id`.
pub(super) fn spawn_destination(
    root: &Path,
    image: &Path,
    uri: &str,
    bundle: &Path,
    id: &str,
) -> Result<Child> {
    let exe = std::env::current_exe().map_err(|source| Error::Io {
        what: "finding rt's own binary",
        path: PathBuf::from("/proc/self/exe"),
        source,
    })?;
    Command::new(&exe)
        .arg("--root")
        .arg(root)
        .arg("restore")
        .arg("--detach")
        .arg("--incoming")
        .arg(uri)
        .arg("--image-path")
        .arg(image)
        .arg("--bundle")
        .arg(bundle)
        .arg(id)
        .stdin(Stdio::null())
        .spawn()
        .map_err(|source| Error::Io {
            what: "running",
            path: exe,
            source,
        })
}

/// This host's boot id (`/proc/sys/kernel/random/boot_id`).
pub(super) fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_string())
}

/// A socket path in `dir` when it fits `sun_path`, else in /run.
fn socket_in(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    if p.as_os_str().len() < 100 {
        p
    } else {
        PathBuf::from(format!("/run/rt-{}-{name}", std::process::id()))
    }
}

/// The destination QEMU's listening socket, in the image directory.
pub(super) fn incoming_socket(image: &Path) -> PathBuf {
    socket_in(image, "in.sock")
}

/// The socket the source QEMU sends a TCP migration's stream to.
fn outgoing_socket(root: &Path, id: &str) -> PathBuf {
    socket_in(root, &format!(".migrate-out-{id}.sock"))
}

/// Waits for the destination's QEMU to listen (or the destination to fail).
pub(super) fn wait_for_listener(socket: &Path, dest: &mut Child) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !socket.exists() {
        if let Ok(Some(st)) = dest.try_wait() {
            return Err(Error::Migration(format!(
                "the destination's restore ended ({st}) before it listened"
            )));
        }
        if Instant::now() > deadline {
            let _ = dest.kill();
            return Err(Error::Migration(
                "the destination did not listen within 120 s".into(),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

fn peer_io(what: &'static str, peer: &str) -> impl FnOnce(std::io::Error) -> Error {
    let peer = peer.to_string();
    move |source| Error::MigrationIo { what, peer, source }
}

/// Connects to `addr` (every address it resolves to, 10 s each).
fn connect(addr: &str) -> Result<TcpStream> {
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
    for a in addr.to_socket_addrs().map_err(peer_io("resolving", addr))? {
        match TcpStream::connect_timeout(&a, Duration::from_secs(10)) {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(peer_io("connecting to", addr)(last))
}

pub(super) fn clone(conn: &TcpStream, peer: &str) -> Result<TcpStream> {
    conn.try_clone()
        .map_err(peer_io("duplicating the connection to", peer))
}

/// Writes `v` as one JSON line.
pub(super) fn write_line(mut conn: &TcpStream, peer: &str, v: &impl Serialize) -> Result<()> {
    let mut line = serde_json::to_vec(v).map_err(|e| Error::Migration(format!("{e}")))?;
    line.push(b'\n');
    conn.write_all(&line).map_err(peer_io("writing to", peer))
}

/// Reads one JSON line, waiting at most `timeout`.
pub(super) fn read_line<T: DeserializeOwned>(
    r: &mut BufReader<TcpStream>,
    peer: &str,
    timeout: Duration,
) -> Result<T> {
    r.get_ref()
        .set_read_timeout(Some(timeout))
        .map_err(peer_io("reading from", peer))?;
    let mut line = String::new();
    let n = r
        .read_line(&mut line)
        .map_err(peer_io("reading from", peer))?;
    if n == 0 {
        return Err(Error::Migration(format!("{peer} closed the connection")));
    }
    serde_json::from_str(&line)
        .map_err(|e| Error::Migration(format!("{peer} sent {:?}: {e}", line.trim_end())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_are_roots_or_tcp_peers() {
        assert_eq!(
            Destination::parse("tcp://127.0.0.1:7000"),
            Destination::Tcp("127.0.0.1:7000".into())
        );
        assert_eq!(
            Destination::parse("/run/rt2"),
            Destination::Root("/run/rt2".into())
        );
    }

    #[test]
    fn lines_cross_a_connection_and_garbage_is_named() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let a = TcpStream::connect(&addr).unwrap();
        let (b, _) = l.accept().unwrap();
        let ans = Answer {
            ok: true,
            boot_id: Some("x".into()),
            ..Answer::default()
        };
        write_line(&a, &addr, &ans).unwrap();
        (&a).write_all(b"not json\n").unwrap();
        drop(a);
        let mut r = BufReader::new(b);
        let got: Answer = read_line(&mut r, &addr, Duration::from_secs(5)).unwrap();
        assert!(got.ok && got.boot_id.as_deref() == Some("x"));
        let e = read_line::<Answer>(&mut r, &addr, Duration::from_secs(5)).unwrap_err();
        assert!(e.to_string().contains("sent \"not json\""), "{e}");
        let e = read_line::<Answer>(&mut r, &addr, Duration::from_secs(5)).unwrap_err();
        assert!(e.to_string().contains("closed the connection"), "{e}");
    }
}
