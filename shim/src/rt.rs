//! Running rt, as containerd's runc shim runs runc: one process per
//! operation, with `--root`, `--log <bundle>/log.json --log-format json`
//! and the cgroup driver in front; the container's stdio handed to
//! `create` and `exec`. rt's exit status comes from the shim's reaper
//! ([`Exits`]), never from `wait` (the reaper would take it first). A
//! failure is reported with rt's own error line from the log.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::exits::Exits;
use crate::options::{Options, DEFAULT_ROOT};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("running {program}")]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// rt's own message (its last error line), as runc's shim passes
    /// runc's on.
    #[error("rt {op}: {message}")]
    Failed { op: String, message: String },
}

/// Runs rt for one container's bundle.
#[derive(Debug, Clone)]
pub struct Runner {
    binary: PathBuf,
    root: PathBuf,
    systemd_cgroup: bool,
    log: PathBuf,
    exits: Option<Exits>,
}

impl Runner {
    /// A runner for `bundle`'s container; rt's exits come through
    /// `exits` (when the reaper could be subscribed to).
    pub fn new(opts: &Options, namespace: &str, bundle: &Path, exits: Option<&Exits>) -> Runner {
        let root = opts
            .root
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT))
            .join(namespace);
        Runner {
            binary: opts.binary.clone(),
            root,
            systemd_cgroup: opts.systemd_cgroup,
            log: bundle.join("log.json"),
            exits: exits.cloned(),
        }
    }

    /// `rt --root … --log … ARGS`, stdio not set yet.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--root")
            .arg(&self.root)
            .arg("--log")
            .arg(&self.log)
            .args(["--log-format", "json"]);
        if self.systemd_cgroup {
            cmd.arg("--systemd-cgroup");
        }
        cmd.args(args);
        cmd
    }

    /// Runs `rt ARGS` with `input` on its stdin; its stdout.
    pub fn run(&self, args: &[&str], input: Option<&[u8]>) -> Result<String, Error> {
        let mut cmd = self.command(args);
        cmd.stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let (out, err) = self.finish(args, cmd, input)?;
        match err {
            None => Ok(out),
            Some(e) => Err(e),
        }
    }

    /// Runs a command made by [`Runner::command`] whose stdio the caller
    /// set (a container's): Ok when rt succeeded.
    pub fn run_with(&self, args: &[&str], cmd: Command) -> Result<(), Error> {
        match self.finish(args, cmd, None)?.1 {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }

    /// Spawns, feeds, collects and waits; (stdout, the failure if any).
    fn finish(
        &self,
        args: &[&str],
        mut cmd: Command,
        input: Option<&[u8]>,
    ) -> Result<(String, Option<Error>), Error> {
        let log_start = std::fs::metadata(&self.log).map_or(0, |m| m.len());
        let mut child = cmd.spawn().map_err(|source| Error::Spawn {
            program: self.binary.clone(),
            source,
        })?;
        let pid = child.id() as i32;
        let exited = self.exits.as_ref().map(|e| e.expect(pid));
        if let (Some(mut w), Some(bytes)) = (child.stdin.take(), input) {
            let _ = std::io::Write::write_all(&mut w, bytes);
        }
        let err_reader = child.stderr.take().map(|mut e| {
            std::thread::spawn(move || {
                let mut s = String::new();
                let _ = e.read_to_string(&mut s);
                s
            })
        });
        let mut out = String::new();
        if let Some(mut o) = child.stdout.take() {
            let _ = o.read_to_string(&mut out);
        }
        let stderr = err_reader.and_then(|t| t.join().ok()).unwrap_or_default();
        let code = match exited {
            Some(rx) => rx.recv().unwrap_or(-1),
            // No reaper (it could not subscribe): wait ourselves.
            None => child.wait().ok().and_then(|s| s.code()).unwrap_or(-1),
        };
        if code == 0 {
            return Ok((out, None));
        }
        let message = last_error(&self.log, log_start)
            .or_else(|| stderr.lines().last().map(str::to_string))
            .unwrap_or_else(|| format!("exit status {code}"));
        Ok((
            out,
            Some(Error::Failed {
                op: args.first().copied().unwrap_or_default().to_string(),
                message,
            }),
        ))
    }
}

/// The last `"level":"error"` message rt logged after byte `from`.
fn last_error(log: &Path, from: u64) -> Option<String> {
    let text = std::fs::read(log).ok()?;
    let tail = text.get(from as usize..)?;
    String::from_utf8_lossy(tail)
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["level"] == "error")
        .and_then(|v| v["msg"].as_str().map(str::to_string))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_is_rts_last_error_line_since_the_command_began() {
        let dir = std::env::temp_dir().join(format!("rt-shim-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("log.json");
        let old = "{\"level\":\"error\",\"msg\":\"old\"}\n";
        std::fs::write(
            &log,
            format!("{old}{{\"level\":\"info\",\"msg\":\"x\"}}\n{{\"level\":\"error\",\"msg\":\"container \\\"a\\\" does not exist\"}}\n"),
        )
        .unwrap();
        assert_eq!(
            last_error(&log, old.len() as u64).as_deref(),
            Some("container \"a\" does not exist")
        );
        assert_eq!(last_error(&log, 10_000), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
