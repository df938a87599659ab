//! `rt events`: a container's resource statistics and OOM notifications as
//! JSON lines, in runc's shape. `--stats` prints one statistics event and
//! exits; otherwise a first statistics event comes as soon as the OOM watch
//! is in place, then one every `--interval`, and an
//! `{"type":"oom","id":..}` line each time the OOM killer acts, until the
//! container stops.

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};
use rt_container::Runtime;
use serde::Serialize;

use crate::Global;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print statistics once and exit.
    #[arg(long)]
    pub stats: bool,
    /// Time between statistics (a Go duration: 5s, 100ms, 1m30s).
    #[arg(long, default_value = "5s", value_parser = go_duration)]
    pub interval: Duration,
    pub id: String,
}

#[derive(Serialize)]
struct Event<'a, T: Serialize> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<T>,
}

fn emit<T: Serialize>(kind: &'static str, id: &str, data: Option<T>) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, &Event { kind, id, data })?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(())
}

/// Parses a Go `time.Duration` string: a sequence of decimal numbers, each
/// with a unit (ns, us, µs, ms, s, m, h).
pub fn go_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {s:?}");
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = s;
    let mut total = 0f64;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let value: f64 = rest[..n].parse().map_err(|_| bad())?;
        rest = &rest[n..];
        let u = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let secs = match &rest[..u] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += value * secs;
        rest = &rest[u..];
    }
    Ok(Duration::from_secs_f64(total))
}

/// Empties a notification descriptor (an eventfd or inotify, non-blocking).
fn drain(fd: &OwnedFd) {
    let mut buf = [0u8; 4096];
    while nix::unistd::read(fd.as_raw_fd(), &mut buf).is_ok_and(|n| n > 0) {}
}

pub fn run(g: &Global, a: Args) -> anyhow::Result<i32> {
    let rt = Runtime::new(&g.root);
    let mut args = vec![format!("--interval={}ms", a.interval.as_millis())];
    if a.stats {
        args.push("--stats".into());
    }
    if let Some(code) = rt.backend_events(&a.id, &args)? {
        return Ok(code);
    }
    run_on_cgroup(&rt, a).map(|()| 0)
}

fn run_on_cgroup(rt: &Runtime, a: Args) -> anyhow::Result<()> {
    let cgroup = rt.live_cgroup(&a.id)?;
    if a.stats {
        return emit("stats", &a.id, Some(cgroup.stats()?));
    }
    if a.interval.is_zero() {
        anyhow::bail!("duration interval must be greater than 0");
    }
    // OOM notification is best effort: without a memory controller there is
    // nothing to watch, and statistics still follow.
    let watch = match cgroup.oom_watch() {
        Ok(fd) => Some(fd),
        Err(e) => {
            tracing::warn!("no OOM notifications: {e}");
            None
        }
    };
    let mut seen = oom_kills(cgroup.as_ref());
    // A first statistics line at once: it tells a reader (containerd-shim-
    // rt-v2, before it starts the container) that the OOM watch is in place.
    match cgroup.stats() {
        Ok(s) => emit("stats", &a.id, Some(s))?,
        Err(e) => tracing::warn!("reading statistics: {e}"),
    }
    let mut next = Instant::now() + a.interval;
    // The memory controller signals when the cgroup goes out of memory,
    // which is a moment before the OOM killer has counted its kill: after a
    // signal, look again every 2 ms for 100 ms (the victim may be the init,
    // and its cgroup removed soon after it dies), then every 50 ms for two
    // seconds.
    let mut recheck_until = Instant::now();
    let mut fast_until = Instant::now();
    loop {
        let mut wait = next
            .saturating_duration_since(Instant::now())
            .min(Duration::from_secs(1));
        if Instant::now() < fast_until {
            wait = wait.min(Duration::from_millis(2));
        } else if Instant::now() < recheck_until {
            wait = wait.min(Duration::from_millis(50));
        }
        let timeout = PollTimeout::try_from(wait).unwrap_or(PollTimeout::MAX);
        let ready = match &watch {
            Some(fd) => {
                let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
                nix::poll::poll(&mut fds, timeout)? > 0
            }
            None => {
                std::thread::sleep(wait);
                false
            }
        };
        if ready {
            if let Some(fd) = &watch {
                drain(fd);
            }
            recheck_until = Instant::now() + Duration::from_secs(2);
            fast_until = Instant::now() + Duration::from_millis(100);
        }
        if ready || Instant::now() < recheck_until {
            report_kills(cgroup.as_ref(), &mut seen, &a.id)?;
        }
        // The container is gone: nothing more will happen, but a kill
        // counted since the last look (its init was the victim) is still
        // reported while the cgroup can be read.
        if rt.live_cgroup(&a.id).is_err() {
            return report_kills(cgroup.as_ref(), &mut seen, &a.id);
        }
        if Instant::now() >= next {
            match cgroup.stats() {
                Ok(s) => emit("stats", &a.id, Some(s))?,
                Err(e) => tracing::warn!("reading statistics: {e}"),
            }
            next += a.interval;
        }
    }
}

/// The OOM killer's count of kills in the cgroup (0 when unreadable).
fn oom_kills(c: &dyn rt_cgroups::Manager) -> u64 {
    c.stats()
        .map(|s| s.memory.raw.get("oom_kill").copied().unwrap_or(0))
        .unwrap_or(0)
}

/// An `oom` line for each kill counted since `seen`.
fn report_kills(c: &dyn rt_cgroups::Manager, seen: &mut u64, id: &str) -> anyhow::Result<()> {
    let now = oom_kills(c);
    for _ in *seen..now {
        emit::<()>("oom", id, None)?;
    }
    *seen = (*seen).max(now);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(go_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(go_duration("100ms").unwrap(), Duration::from_millis(100));
        assert_eq!(go_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(go_duration("1.5h").unwrap(), Duration::from_secs(5400));
        assert_eq!(go_duration("0").unwrap(), Duration::ZERO);
        assert!(go_duration("5").is_err());
        assert!(go_duration("").is_err());
        assert!(go_duration("s").is_err());
        assert!(go_duration("5 s").is_err());
    }
}
