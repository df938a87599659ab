//! The supervisor's side of checkpoint, restore and live migration: it owns
//! QEMU, so it saves the VM, sends it, and loads it.
//!
//! The channel is made quiet first: the agent is asked to quiesce (it
//! replies, then holds every frame) and the supervisor stops writing
//! (`Writer::frozen`), so when the VM stops no frame is half-way between
//! the guest and a supervisor: the restored guest's agent and the new
//! supervisor start at a frame boundary. A thaw (with the clock, which
//! stood still while the VM was stopped, and the new network) releases
//! both sides.
//!
//! Save: stop, `migrate exec:cat > DIR/vm.state`, copy the disk image,
//! then `cont` (--leave-running) or SIGKILL QEMU. Restore: QEMU with
//! `-S -incoming`, wait for `paused`, connect the channel, `cont`, thaw.
//! Live migration: the same stream to a waiting destination QEMU, the disk
//! with it (QEMU's block migration), while the VM runs; the source stays
//! stopped until [`Op::Finish`].

use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rt_vm::channel::{Frame, GuestNet, Kind, Op, Reply, ToGuest, ToHost};
use rt_vm::qmp::Qmp;

use super::supervisor::{lock, Answer, Config, Incoming, Router};
use super::{files, VmError};

/// The files of a saved VM in its image directory.
pub const STATE_FILE: &str = "vm.state";

/// How long a save or a migration may take (a 512 MiB guest under TCG
/// takes seconds).
const SAVE_TIMEOUT: Duration = Duration::from_secs(300);

/// A supervisor request; the reply, and whether the VM must end once the
/// reply is sent.
pub(super) fn handle(r: &Router, op: Op) -> (Reply, bool) {
    let mut output = None;
    let result = match op {
        Op::Save { dir, leave_running } => save(r, &dir, leave_running).map(|()| !leave_running),
        Op::Migrate { uri } => migrate(r, &uri).map(|m| {
            output = Some(
                serde_json::json!({
                    "downtime_ms": m.downtime_ms,
                    "total_ms": m.total_ms,
                    "transferred": m.transferred,
                })
                .to_string(),
            );
            false
        }),
        Op::Finish { resume } => finish(r, resume).map(|()| !resume),
        _ => Ok(false),
    };
    match result {
        Ok(end) => (
            Reply {
                output,
                ..Reply::default()
            },
            end,
        ),
        Err(e) => (Reply::failed(crate::process::chain(&e)), false),
    }
}

fn qmp(r: &Router) -> Result<Qmp, VmError> {
    let path = super::socket_path(&r.dir, files::QMP_SOCKET)?;
    Ok(Qmp::connect(&path.path, Duration::from_secs(5))?)
}

/// Asks the agent to quiesce and stops our own writing; fails (and
/// undoes nothing, there being nothing done) if a save or migration is
/// already under way.
fn freeze(r: &Router) -> Result<(), VmError> {
    let (req, rx) = r.expect_reply();
    {
        let mut w = lock(&r.agent);
        if w.frozen {
            return Err(VmError::Helper(
                "a checkpoint or migration of this VM is already in progress".into(),
            ));
        }
        Frame::message(&ToGuest::Request {
            req,
            op: Op::Quiesce,
        })
        .write_to(&mut w.stream)?;
        w.frozen = true;
    }
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(reply) if reply.error.is_none() => Ok(()),
        Ok(reply) => {
            unfreeze(r);
            Err(VmError::Guest(reply.error.unwrap_or_default()))
        }
        Err(_) => {
            unfreeze(r);
            Err(VmError::Guest("the guest's agent did not quiesce".into()))
        }
    }
}

fn unfreeze(r: &Router) {
    lock(&r.agent).frozen = false;
    r.thawed.notify_all();
}

/// Now on the real-time clock, for the guest's.
fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Thaws the agent (clock, network) and our writing.
fn thaw(r: &Router, network: Option<GuestNet>) -> Result<(), VmError> {
    let (req, rx) = r.expect_reply();
    {
        let mut w = lock(&r.agent);
        Frame::message(&ToGuest::Request {
            req,
            op: Op::Thaw {
                unix_ns: now_ns(),
                network,
            },
        })
        .write_to(&mut w.stream)?;
        w.frozen = false;
    }
    r.thawed.notify_all();
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(reply) => match reply.error {
            None => Ok(()),
            Some(e) => Err(VmError::Guest(e)),
        },
        Err(_) => Err(VmError::Guest("the guest's agent did not thaw".into())),
    }
}

/// Saves the VM into `target`: its migration stream and its disk.
fn save(r: &Router, target: &Path, leave_running: bool) -> Result<(), VmError> {
    let mut q = qmp(r)?;
    freeze(r)?;
    let saved = (|| -> Result<(), VmError> {
        q.execute("stop", None)?;
        let file = target.join(STATE_FILE);
        q.migrate(&format!("exec:cat > {}", shell_quote(&file)))?;
        q.wait_migrated(SAVE_TIMEOUT)?;
        copy_sparse(&r.dir.join(files::DISK), &target.join(files::DISK))
    })();
    if leave_running || saved.is_err() {
        let resumed = q
            .execute("cont", None)
            .map_err(VmError::from)
            .and_then(|_| thaw(r, None));
        saved?;
        resumed?;
    }
    Ok(())
}

/// Sends the VM to a destination QEMU waiting at `uri`, its disk with it,
/// while it runs; QEMU stops it for the last copy and leaves it stopped.
fn migrate(r: &Router, uri: &str) -> Result<rt_vm::qmp::Migrated, VmError> {
    let mut q = qmp(r)?;
    freeze(r)?;
    let sent = (|| -> Result<rt_vm::qmp::Migrated, VmError> {
        q.capabilities(&[("block", true)])?;
        if !tracks_every_write(&mut q)? {
            // Stop and copy: nothing is written while the memory is sent.
            tracing::warn!(
                qemu = %rt_vm::qemu::program().display(),
                "this QEMU loses guest writes in a live migration under TCG: the VM is stopped for the whole copy"
            );
            q.execute("stop", None)?;
        }
        // A local or LAN link: no bandwidth cap (QEMU's default is 128
        // MiB/s), and the downtime rt aims for.
        q.execute(
            "migrate-set-parameters",
            Some(serde_json::json!({"max-bandwidth": 8u64 << 30, "downtime-limit": 100})),
        )?;
        q.migrate(uri)?;
        Ok(q.wait_migrated(SAVE_TIMEOUT)?)
    })();
    match sent {
        Ok(m) => {
            tracing::info!(
                downtime_ms = m.downtime_ms,
                total_ms = m.total_ms,
                "migrated"
            );
            Ok(m)
        }
        Err(e) => {
            let _ = q.execute("cont", None);
            let _ = thaw(r, None);
            Err(e)
        }
    }
}

/// Whether the running QEMU's live migration carries every guest write:
/// under KVM always, under TCG with rt's own build or QEMU 9.0 and later
/// ([`rt_vm::qemu::tcg_migration_carries_every_write`]).
fn tracks_every_write(q: &mut Qmp) -> Result<bool, VmError> {
    let kvm = q.execute("query-kvm", None)?;
    if kvm["enabled"].as_bool() == Some(true) {
        return Ok(true);
    }
    let v = q.execute("query-version", None)?;
    let part = |k: &str| v["qemu"][k].as_u64().unwrap_or(0);
    Ok(rt_vm::qemu::tcg_migration_carries_every_write(
        &rt_vm::qemu::program(),
        (part("major"), part("minor")),
    ))
}

/// After a migration: resume the source (the destination failed), or let
/// the caller end it.
fn finish(r: &Router, resume: bool) -> Result<(), VmError> {
    if !resume {
        return Ok(());
    }
    let mut q = qmp(r)?;
    q.execute("cont", None)?;
    thaw(r, None)
}

/// Copies a sparse image, keeping its holes (and sharing extents where
/// the filesystem can).
pub(super) fn copy_sparse(from: &Path, to: &Path) -> Result<(), VmError> {
    let out = std::process::Command::new("cp")
        .args(["--sparse=always", "--reflink=auto"])
        .arg(from)
        .arg(to)
        .output()
        .map_err(|source| VmError::Spawn {
            program: "cp".into(),
            source,
        })?;
    if !out.status.success() {
        return Err(VmError::Helper(format!(
            "copying the disk image {} to {}: {}",
            from.display(),
            to.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// `p` quoted for the shell QEMU's `exec:` migration URIs run.
pub(super) fn shell_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
}

type Arrived = (UnixStream, Arc<Router>, Answer, UnixListener);

/// The caller's namespace, its interface and our tap: the interface's
/// traffic comes to us once the loaded VM runs.
pub(super) type HandOver = (std::path::PathBuf, String, String);

/// A loaded VM's start: wait for QEMU to have the whole state, connect the
/// channel, run the VM, thaw the agent with the clock and our network.
pub(super) fn arrive(
    dir: &Path,
    cfg: &Config,
    inc: &Incoming,
    (network, hand_over): (Option<GuestNet>, Option<HandOver>),
    qemu: &mut Child,
) -> Result<Arrived, VmError> {
    let console = dir.join(files::CONSOLE);
    let failed = |why: String| VmError::Boot {
        why,
        console: super::console::tail(&console),
    };
    let qmp_path = super::socket_path(dir, files::QMP_SOCKET)?;
    let loaded = Qmp::connect(&qmp_path.path, Duration::from_secs(10)).and_then(|mut q| {
        q.wait_status("paused", Duration::from_secs(inc.timeout_secs))
            .map(|()| q)
    });
    let mut q = match loaded {
        Ok(q) => q,
        Err(e) => {
            // QEMU refusing the stream exits: its status and console say
            // why better than the monitor's closing does.
            let deadline = Instant::now() + Duration::from_secs(3);
            let why = loop {
                match qemu.try_wait() {
                    Ok(Some(st)) => break format!("QEMU exited ({st}) while loading the VM"),
                    _ if Instant::now() > deadline => break crate::process::chain(&e),
                    _ => std::thread::sleep(Duration::from_millis(20)),
                }
            };
            return Err(failed(why));
        }
    };
    let agent = super::socket_path(dir, files::AGENT_SOCKET)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let conn = loop {
        match UnixStream::connect(&agent.path) {
            Ok(c) => break c,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(VmError::Socket(e)),
        }
    };
    let router = Arc::new(Router::new(conn.try_clone().map_err(VmError::Socket)?, dir));
    if let Some((netns, ifname, tap)) = &hand_over {
        super::net::hand_over(netns, ifname, tap)?;
    }
    q.execute("cont", None)?;
    // The thaw's reply comes before any frame the agent held.
    let mut reader = conn;
    reader
        .set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(VmError::Socket)?;
    Frame::message(&ToGuest::Request {
        req: 0,
        op: Op::Thaw {
            unix_ns: now_ns(),
            network,
        },
    })
    .write_to(&mut lock(&router.agent).stream)?;
    loop {
        let f = Frame::read_from(&mut reader)
            .map_err(|e| failed(format!("the restored agent did not answer: {e}")))?;
        if f.kind != Kind::Message {
            continue;
        }
        if let Ok(ToHost::Reply { req: 0, reply }) = f.parse() {
            if let Some(e) = reply.error {
                tracing::warn!("thawing the restored guest: {e}");
            }
            break;
        }
    }
    reader.set_read_timeout(None).map_err(VmError::Socket)?;
    let listener = super::supervisor::bind_control(dir)?;
    tracing::info!(id = cfg.id, "VM loaded and running");
    Ok((
        reader,
        router,
        Answer {
            error: None,
            guest_pid: Some(inc.guest_pid),
            kernel: None,
        },
        listener,
    ))
}
