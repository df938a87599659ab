//! The DHCP keeper: one small process per bridged DHCP container, which
//! renews its lease while the container runs.
//!
//! `rt create` takes the first lease itself (so the address is there when
//! `start` runs), writes it to `<root>/.networks/leases/<id>.json`, and
//! starts rt's `dhcp-keeper` on that file. The keeper joins the container's
//! network namespace (the whole process: it is single-threaded and does
//! nothing else), renews at T1 (rebinding after T2), rewrites the file after
//! each renewal, and when the container's init exits or it is told to stop
//! (SIGTERM, from `delete`) releases the lease and exits.

use std::ffi::OsString;
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::SignalFd;
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::config::{format_mac, parse_mac};
use crate::dhcp::{self, Client, Lease};
use crate::netlink::Netlink;
use crate::{Error, Result};

/// How long a keeper has to release its lease and exit.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// The keeper's file: the lease and what it needs to keep it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaseFile {
    pub lease: Lease,
    pub mac: String,
    pub ifname: String,
    /// The container's init: its namespace, and its exit ends the keeper.
    pub pid: i32,
    /// When the lease was last granted (seconds since the epoch).
    pub granted: u64,
    pub renewals: u32,
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn save(path: &Path, file: &LeaseFile) -> Result<()> {
    Ok(crate::lockfile::write_json(path, file)?)
}

/// Writes the lease file of container `id` and starts `cmd FILE`.
pub fn spawn(
    cmd: &[OsString],
    dir: &Path,
    id: &str,
    pid: i32,
    ifname: &str,
    mac: [u8; 6],
    lease: &Lease,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    let path = dir.join(format!("{id}.json"));
    let file = LeaseFile {
        lease: lease.clone(),
        mac: format_mac(&mac),
        ifname: ifname.into(),
        pid,
        granted: now(),
        renewals: 0,
    };
    save(&path, &file)?;
    let (program, args) = cmd.split_first().ok_or_else(|| Error::Keeper {
        path: PathBuf::new(),
        source: std::io::Error::other("no keeper command"),
    })?;
    let log_path = dir.join(format!("{id}.log"));
    let log = File::create(&log_path).map_err(io("creating", &log_path))?;
    let child = Command::new(program)
        .args(args)
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        // Not in the caller's process group: a terminal's ^C is not ours.
        .process_group(0)
        .spawn()
        .map_err(|source| Error::Keeper {
            path: PathBuf::from(program),
            source,
        })?;
    let pid_path = dir.join(format!("{id}.pid"));
    std::fs::write(&pid_path, child.id().to_string()).map_err(io("writing", &pid_path))
}

/// Stops the keeper of container `id` (it releases the lease) and removes
/// its files. No keeper is not an error.
pub fn stop(dir: &Path, id: &str) -> Result<()> {
    let pid_path = dir.join(format!("{id}.pid"));
    let lease_path = dir.join(format!("{id}.json"));
    if let Ok(text) = std::fs::read_to_string(&pid_path) {
        if let Ok(pid) = text.trim().parse::<i32>() {
            stop_pid(Pid::from_raw(pid), &lease_path);
        }
    }
    for ext in ["pid", "json", "log", "json.tmp"] {
        let p = dir.join(format!("{id}.{ext}"));
        match std::fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io("removing", &p)(e))
            }
            _ => {}
        }
    }
    Ok(())
}

/// SIGTERM to `pid` if it still is the keeper of `lease_path`, then waits.
fn stop_pid(pid: Pid, lease_path: &Path) {
    let Ok(fd) = rt_sys::pidfd_open(pid) else {
        return;
    };
    // The pid may have been reused since: only a process running on our
    // lease file is ours.
    let ours = std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
        c.split(|b| *b == 0)
            .any(|a| a == lease_path.as_os_str().as_encoded_bytes())
    });
    if !ours || rt_sys::pidfd_send_signal(fd.as_fd(), Signal::SIGTERM as i32).is_err() {
        return;
    }
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    let ms = u16::try_from(STOP_TIMEOUT.as_millis()).unwrap_or(u16::MAX);
    if !matches!(nix::poll::poll(&mut fds, PollTimeout::from(ms)), Ok(1)) {
        let _ = rt_sys::pidfd_send_signal(fd.as_fd(), Signal::SIGKILL as i32);
    }
}

/// The keeper's main loop (rt's `dhcp-keeper FILE`).
pub fn run(path: &Path) -> Result<()> {
    let data = std::fs::read(path).map_err(io("reading", path))?;
    let mut file: LeaseFile = serde_json::from_slice(&data).map_err(|e| Error::Io {
        what: "parsing",
        path: path.into(),
        source: e.into(),
    })?;
    let Ok(init) = rt_sys::pidfd_open(Pid::from_raw(file.pid)) else {
        return Ok(()); // the container is already gone
    };
    let ns_path = PathBuf::from(format!("/proc/{}/ns/net", file.pid));
    let ns = File::open(&ns_path).map_err(|source| Error::Netns {
        pid: file.pid,
        source,
    })?;
    nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| Error::Netns {
        pid: file.pid,
        source: e.into(),
    })?;
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGTERM);
    mask.add(Signal::SIGINT);
    mask.thread_block()
        .map_err(|e| io("blocking signals", path)(e.into()))?;
    let signals = SignalFd::new(&mask).map_err(|e| io("making a signalfd", path)(e.into()))?;
    let mac = parse_mac(&file.mac)?;
    let client = Client::here(&file.ifname, mac)?;
    let mut nl = Netlink::host()?;
    let mut granted = Instant::now();
    let mut retry: Option<Duration> = None;
    loop {
        let lease = file.lease.clone();
        let elapsed = granted.elapsed();
        let t1 = Duration::from_secs(lease.t1.into());
        let wait = retry.unwrap_or_else(|| t1.saturating_sub(elapsed));
        let mut fds = [
            PollFd::new(init.as_fd(), PollFlags::POLLIN),
            PollFd::new(signals.as_fd(), PollFlags::POLLIN),
        ];
        let ms = u16::try_from(wait.as_millis()).unwrap_or(u16::MAX);
        if matches!(nix::poll::poll(&mut fds, PollTimeout::from(ms)), Ok(n) if n > 0) {
            tracing::info!("container gone or keeper stopped: releasing {}", lease.ip);
            return Ok(client.release(&lease)?);
        }
        if granted.elapsed() < t1 && retry.is_none() {
            continue;
        }
        let elapsed = granted.elapsed();
        let rebind = elapsed >= Duration::from_secs(lease.t2.into());
        match client.renew(&lease, rebind, Duration::from_secs(5)) {
            Ok(new) => {
                if new.ip != lease.ip || new.prefix != lease.prefix {
                    readdress(&mut nl, &file.ifname, &file.mac, &lease, &new)?;
                }
                tracing::info!("renewed {} for {} s", new.ip, new.lease);
                file.lease = new;
                file.granted = now();
                file.renewals += 1;
                save(path, &file)?;
                granted = Instant::now();
                retry = None;
            }
            Err(e) => {
                let expired = elapsed >= Duration::from_secs(lease.lease.into());
                tracing::warn!("renewing {}: {}", lease.ip, crate::chain(&e));
                if matches!(e, dhcp::Error::Nak(_)) || expired {
                    // The address is no longer ours: drop it, start over.
                    let fresh = client.acquire(Duration::from_secs(30))?;
                    readdress(&mut nl, &file.ifname, &file.mac, &lease, &fresh)?;
                    file.lease = fresh;
                    file.granted = now();
                    save(path, &file)?;
                    granted = Instant::now();
                    retry = None;
                } else {
                    // RFC 2131: retry at half the time left to T2 (or to
                    // expiry, when rebinding), at least every 5 s.
                    let end = if rebind { lease.lease } else { lease.t2 };
                    let left = Duration::from_secs(end.into()).saturating_sub(elapsed);
                    retry = Some((left / 2).max(Duration::from_secs(5)));
                }
            }
        }
    }
}

/// Replaces the old lease's address (and default route) with the new one's.
fn readdress(nl: &mut Netlink, ifname: &str, mac: &str, old: &Lease, new: &Lease) -> Result<()> {
    let eth = nl.require(ifname)?;
    let _ = nl.delete_address(&eth, old.ip, old.prefix);
    let gw = new.router.filter(|g| *g != Ipv4Addr::UNSPECIFIED);
    crate::attach::configure(nl, &eth, new.ip, new.prefix, gw)?;
    let mac = parse_mac(mac)?;
    rt_sys::arp_announce(eth.index, mac, new.ip.octets()).map_err(|e| Error::Announce(new.ip, e))
}
