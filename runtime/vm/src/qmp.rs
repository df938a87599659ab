//! A client of QEMU's machine protocol (QMP) on a UNIX socket: the
//! greeting, `qmp_capabilities`, then one command at a time, events
//! skipped. What rt's VM backend needs of it: stop, cont, migrate and its
//! progress, the run state.
//!
//! Written here rather than taken from the `qapi` crate: that crate carries
//! the generated schema of every QEMU command (a large build) for the
//! half-dozen commands rt sends, whose JSON is a line each.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Errors of a QMP conversation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connecting to QEMU's monitor {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("QEMU's monitor")]
    Io(#[source] std::io::Error),
    #[error("QEMU's monitor closed")]
    Closed,
    #[error("QEMU's monitor sent malformed JSON")]
    Json(#[source] serde_json::Error),
    /// QEMU's own error for `command`.
    #[error("QEMU refused {command}: {desc}")]
    Refused { command: String, desc: String },
    #[error("migration failed: {0}")]
    Migration(String),
    #[error("{what} did not finish within {secs} s")]
    Timeout { what: &'static str, secs: u64 },
}

pub type Result<T> = std::result::Result<T, Error>;

/// One QMP connection.
#[derive(Debug)]
pub struct Qmp {
    w: UnixStream,
    r: BufReader<UnixStream>,
}

/// What `query-migrate` reports once a migration ended.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Migrated {
    /// QEMU's measured downtime (ms), when it reports one.
    pub downtime_ms: Option<u64>,
    /// Total time (ms).
    pub total_ms: Option<u64>,
    /// RAM bytes transferred.
    pub transferred: Option<u64>,
}

impl Qmp {
    /// Connects to the monitor at `path`, retrying until `timeout` (QEMU
    /// creates the socket as it starts), and enters command mode.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Qmp> {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(source) if Instant::now() >= deadline => {
                    return Err(Error::Connect {
                        path: path.to_path_buf(),
                        source,
                    })
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(120)))
            .map_err(Error::Io)?;
        let r = BufReader::new(stream.try_clone().map_err(Error::Io)?);
        let mut q = Qmp { w: stream, r };
        // The greeting: {"QMP": {...}}.
        q.read()?;
        q.execute("qmp_capabilities", None)?;
        Ok(q)
    }

    fn read(&mut self) -> Result<Value> {
        let mut line = String::new();
        match self.r.read_line(&mut line) {
            Ok(0) => Err(Error::Closed),
            Ok(_) => serde_json::from_str(&line).map_err(Error::Json),
            Err(e) => Err(Error::Io(e)),
        }
    }

    /// Runs `command` with `arguments`; its `return` value.
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value> {
        let mut msg = json!({ "execute": command });
        if let Some(a) = arguments {
            msg["arguments"] = a;
        }
        let mut line = serde_json::to_vec(&msg).map_err(Error::Json)?;
        line.push(b'\n');
        self.w.write_all(&line).map_err(Error::Io)?;
        loop {
            let v = self.read()?;
            if v.get("event").is_some() {
                continue;
            }
            if let Some(e) = v.get("error") {
                return Err(Error::Refused {
                    command: command.to_string(),
                    desc: e["desc"].as_str().unwrap_or("(no description)").to_string(),
                });
            }
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
        }
    }

    /// The VM's run state (`running`, `paused`, `inmigrate`,
    /// `postmigrate`, …).
    pub fn status(&mut self) -> Result<String> {
        let r = self.execute("query-status", None)?;
        Ok(r["status"].as_str().unwrap_or("").to_string())
    }

    /// Sets migration capabilities (`("postcopy-ram", true)`, …).
    pub fn capabilities(&mut self, caps: &[(&str, bool)]) -> Result<()> {
        let list: Vec<Value> = caps
            .iter()
            .map(|(c, on)| json!({ "capability": c, "state": on }))
            .collect();
        self.execute(
            "migrate-set-capabilities",
            Some(json!({ "capabilities": list })),
        )?;
        Ok(())
    }

    /// Starts an outgoing migration to `uri` (`exec:…`, `unix:…`, `tcp:…`).
    pub fn migrate(&mut self, uri: &str) -> Result<()> {
        self.execute("migrate", Some(json!({ "uri": uri })))?;
        Ok(())
    }

    /// Waits for the outgoing migration to complete (or fail), polling
    /// `query-migrate`.
    pub fn wait_migrated(&mut self, timeout: Duration) -> Result<Migrated> {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.execute("query-migrate", None)?;
            match r["status"].as_str().unwrap_or("") {
                "completed" => {
                    return Ok(Migrated {
                        downtime_ms: r["downtime"].as_u64(),
                        total_ms: r["total-time"].as_u64(),
                        transferred: r["ram"]["transferred"].as_u64(),
                    })
                }
                "failed" | "cancelled" => {
                    return Err(Error::Migration(
                        r["error-desc"]
                            .as_str()
                            .unwrap_or("(QEMU gave no reason)")
                            .to_string(),
                    ))
                }
                _ => {}
            }
            if Instant::now() > deadline {
                return Err(Error::Timeout {
                    what: "the migration",
                    secs: timeout.as_secs(),
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits until the VM's run state is `want` (an incoming migration
    /// ending `paused` under `-S`); fails early on `failed` states.
    pub fn wait_status(&mut self, want: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.status()?;
            if s == want {
                return Ok(());
            }
            if s == "internal-error" || s == "shutdown" || s == "guest-panicked" {
                return Err(Error::Migration(format!("the VM is {s}")));
            }
            if Instant::now() > deadline {
                return Err(Error::Timeout {
                    what: "the incoming migration",
                    secs: timeout.as_secs(),
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A fake monitor: greeting, capabilities, an event before a reply,
    /// an error reply.
    #[test]
    fn commands_skip_events_and_report_qemus_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut w = s.try_clone().unwrap();
            let mut r = BufReader::new(s);
            let mut line = String::new();
            writeln!(w, r#"{{"QMP": {{"version": {{}}, "capabilities": []}}}}"#).unwrap();
            r.read_line(&mut line).unwrap();
            assert!(line.contains("qmp_capabilities"));
            writeln!(w, r#"{{"return": {{}}}}"#).unwrap();
            line.clear();
            r.read_line(&mut line).unwrap();
            assert!(line.contains("query-status"));
            writeln!(w, r#"{{"event": "STOP", "timestamp": {{}}}}"#).unwrap();
            writeln!(
                w,
                r#"{{"return": {{"status": "paused", "running": false}}}}"#
            )
            .unwrap();
            line.clear();
            r.read_line(&mut line).unwrap();
            writeln!(
                w,
                r#"{{"error": {{"class": "GenericError", "desc": "no such thing"}}}}"#
            )
            .unwrap();
        });
        let mut q = Qmp::connect(&path, Duration::from_secs(5)).unwrap();
        assert_eq!(q.status().unwrap(), "paused");
        let e = q.execute("bogus", None).unwrap_err().to_string();
        assert_eq!(e, "QEMU refused bogus: no such thing");
        server.join().unwrap();
    }
}
