//! The engine's live migration, the receiving side (`rt receive --listen
//! tcp://HOST:PORT`): one sender's offer is checked, the destination
//! started with `rt restore --incoming` on a socket of this state root,
//! the VM's stream relayed to it from the connection, and the sender told
//! once the destination runs (or why it did not). See [`super::migrate`]
//! for the exchange.
//!
//! The connection is neither authenticated nor encrypted, like QEMU's own
//! `tcp:` migration: listen on loopback or a trusted management network.

use std::io::BufReader;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::migrate::{
    boot_id, clone, incoming_socket, read_line, spawn_destination, wait_for_listener, write_line,
    Answer, Offer, WIRE,
};
use super::Runtime;
use crate::backend::vm::checkpoint;
use crate::error::{Error, Result};
use crate::spec;

/// A migration received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The container's id here.
    pub id: String,
    /// The sender.
    pub peer: SocketAddr,
}

impl Runtime {
    /// Accepts one migration on `listener` and returns once its container
    /// runs here (run from `bundle`, or the sender's bundle path). The
    /// sender hears every refusal; nothing is left of a refused or failed
    /// one.
    pub fn receive(&self, listener: &TcpListener, bundle: Option<&Path>) -> Result<Received> {
        let (conn, peer) = listener.accept().map_err(|source| Error::MigrationIo {
            what: "accepting on",
            peer: listener
                .local_addr()
                .map_or_else(|_| "the listener".into(), |a| a.to_string()),
            source,
        })?;
        let name = peer.to_string();
        let mut reader = BufReader::new(clone(&conn, &name)?);
        let offer: Offer = read_line(&mut reader, &name, Duration::from_secs(60))?;
        let image = self.store.root().join(format!(".migrate-{}", offer.id));
        let result = self.arrive(&conn, &mut reader, &name, &offer, &image, bundle);
        let _ = std::fs::remove_dir_all(&image);
        let end = match &result {
            Ok(()) => Answer {
                ok: true,
                boot_id: boot_id(),
                cgroup: self
                    .state(&offer.id)
                    .ok()
                    .and_then(|(s, _)| s.cgroup)
                    .map(|r| r.path),
                ..Answer::default()
            },
            Err(e) => Answer {
                error: Some(crate::process::chain(e)),
                ..Answer::default()
            },
        };
        // A sender that is gone learns nothing; our result stands.
        let _ = write_line(&conn, &name, &end);
        result.map(|()| Received { id: offer.id, peer })
    }

    /// The offer's checks, the destination, the stream.
    fn arrive(
        &self,
        conn: &TcpStream,
        reader: &mut BufReader<TcpStream>,
        peer: &str,
        offer: &Offer,
        image: &Path,
        bundle: Option<&Path>,
    ) -> Result<()> {
        if offer.version != WIRE {
            return Err(Error::Migration(format!(
                "the sender speaks migration exchange {}, this rt {WIRE}",
                offer.version
            )));
        }
        spec::validate_id(&offer.id)?;
        if self.store.dir(&offer.id).exists() {
            return Err(crate::state::Error::AlreadyExists(offer.id.clone()).into());
        }
        let _ = std::fs::remove_dir_all(image);
        checkpoint::write_incoming_image(image, &offer.description)?;
        checkpoint::read_image(image)?;
        let bundle: PathBuf = bundle.map_or_else(|| offer.bundle.clone(), Path::to_path_buf);
        let socket = incoming_socket(image);
        let uri = format!("unix:{}", socket.display());
        let mut dest = spawn_destination(self.store.root(), image, &uri, &bundle, &offer.id)?;
        let relayed = wait_for_listener(&socket, &mut dest).and_then(|()| {
            write_line(
                conn,
                peer,
                &Answer {
                    ok: true,
                    ..Answer::default()
                },
            )?;
            let mut q = connect_listening(&socket)?;
            // The stream has no deadline: the sender's QEMU paces it.
            reader
                .get_ref()
                .set_read_timeout(None)
                .map_err(|source| Error::MigrationIo {
                    what: "reading from",
                    peer: peer.to_string(),
                    source,
                })?;
            std::io::copy(reader, &mut q).map_err(|source| Error::MigrationIo {
                what: "relaying the VM from",
                peer: peer.to_string(),
                source,
            })?;
            let _ = q.shutdown(std::net::Shutdown::Write);
            Ok(())
        });
        // The destination's restore cleans up after itself when it fails.
        let restored = dest.wait().map(|s| s.success()).unwrap_or(false);
        let _ = std::fs::remove_file(&socket);
        relayed?;
        if !restored {
            return Err(Error::Migration(format!(
                "the destination's restore of {} failed (its error is on the receiver's stderr)",
                offer.id
            )));
        }
        Ok(())
    }
}

/// Connects to the destination QEMU's socket. Its file appears at bind(),
/// a moment before QEMU listens: a refused connection is tried again (a
/// failure here would leave the destination waiting for a stream until its
/// timeout).
fn connect_listening(socket: &Path) -> Result<UnixStream> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match UnixStream::connect(socket) {
            Err(e)
                if e.kind() == std::io::ErrorKind::ConnectionRefused
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            r => {
                return r.map_err(|source| Error::Io {
                    what: "connecting to",
                    path: socket.to_path_buf(),
                    source,
                })
            }
        }
    }
}
