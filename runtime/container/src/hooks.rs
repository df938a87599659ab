//! OCI hooks: run with the state JSON on stdin, an optional timeout; a
//! failing hook fails the operation. A hook's environment is its `env`; a
//! hook without one gets, as in runc, the environment of the process that
//! runs it: rt's for the runtime's hooks, the container process's
//! (`process.env`) for createContainer and startContainer, which run in the
//! container's init.

use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use oci_spec::runtime::{Hook, Hooks};

/// Errors of running hooks.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("running {kind} hook #{index} ({path})")]
    Spawn {
        kind: &'static str,
        index: usize,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{kind} hook #{index} ({path}) failed: {status}{output}")]
    Failed {
        kind: &'static str,
        index: usize,
        path: String,
        status: String,
        output: String,
    },
    #[error("{kind} hook #{index} ({path}) timed out after {secs}s")]
    Timeout {
        kind: &'static str,
        index: usize,
        path: String,
        secs: i64,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

/// The hook points of the runtime-spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Prestart,
    CreateRuntime,
    CreateContainer,
    StartContainer,
    Poststart,
    Poststop,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Prestart => "prestart",
            Kind::CreateRuntime => "createRuntime",
            Kind::CreateContainer => "createContainer",
            Kind::StartContainer => "startContainer",
            Kind::Poststart => "poststart",
            Kind::Poststop => "poststop",
        }
    }

    pub fn of(self, hooks: &Hooks) -> &[Hook] {
        let list = match self {
            Kind::Prestart => hooks.prestart(),
            Kind::CreateRuntime => hooks.create_runtime(),
            Kind::CreateContainer => hooks.create_container(),
            Kind::StartContainer => hooks.start_container(),
            Kind::Poststart => hooks.poststart(),
            Kind::Poststop => hooks.poststop(),
        };
        list.as_deref().unwrap_or_default()
    }
}

const ALL: [Kind; 6] = [
    Kind::Prestart,
    Kind::CreateRuntime,
    Kind::CreateContainer,
    Kind::StartContainer,
    Kind::Poststart,
    Kind::Poststop,
];

/// Every hook of every kind.
pub fn all(hooks: &Hooks) -> impl Iterator<Item = &Hook> {
    ALL.iter().flat_map(move |k| k.of(hooks))
}

/// Whether any hook of `kind` is configured.
pub fn any(hooks: Option<&Hooks>, kind: Kind) -> bool {
    hooks.is_some_and(|h| !kind.of(h).is_empty())
}

/// Runs the hooks of `kind` in order, stopping at the first failure; a hook
/// without `env` inherits rt's environment.
pub fn run(hooks: Option<&Hooks>, kind: Kind, state_json: &[u8]) -> Result<()> {
    run_with_env(hooks, kind, state_json, None)
}

/// As [`run`], from the container's init: a hook without `env` gets
/// `process_env` (the container process's environment).
pub fn run_in_container(
    hooks: Option<&Hooks>,
    kind: Kind,
    state_json: &[u8],
    process_env: &[String],
) -> Result<()> {
    run_with_env(hooks, kind, state_json, Some(process_env))
}

fn run_with_env(
    hooks: Option<&Hooks>,
    kind: Kind,
    state_json: &[u8],
    default_env: Option<&[String]>,
) -> Result<()> {
    let Some(hooks) = hooks else { return Ok(()) };
    for (index, hook) in kind.of(hooks).iter().enumerate() {
        run_one(hook, kind.name(), index, state_json, default_env)?;
    }
    Ok(())
}

fn run_one(
    hook: &Hook,
    kind: &'static str,
    index: usize,
    state: &[u8],
    default_env: Option<&[String]>,
) -> Result<()> {
    let path = hook.path().display().to_string();
    let spawn_err = |source| Error::Spawn {
        kind,
        index,
        path: path.clone(),
        source,
    };
    let mut cmd = Command::new(hook.path());
    let args = hook.args().as_deref().unwrap_or_default();
    if let Some((argv0, rest)) = args.split_first() {
        cmd.arg0(argv0).args(rest);
    }
    if let Some(env) = hook.env().as_deref().or(default_env) {
        cmd.env_clear();
        for kv in env {
            if let Some((k, v)) = kv.split_once('=') {
                cmd.env(k, v);
            }
        }
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(spawn_err)?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its stdin is fine (EPIPE ignored).
        let _ = stdin.write_all(state);
    }
    if let Some(secs) = hook.timeout().filter(|t| *t > 0) {
        if !wait_timeout(&child, Duration::from_secs(secs as u64)) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::Timeout {
                kind,
                index,
                path,
                secs,
            });
        }
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    if out.status.success() {
        return Ok(());
    }
    let mut output = String::new();
    for (name, bytes) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
        let text = String::from_utf8_lossy(bytes);
        if !text.trim().is_empty() {
            output.push_str(&format!(", {name}: {}", text.trim()));
        }
    }
    Err(Error::Failed {
        kind,
        index,
        path,
        status: out.status.to_string(),
        output,
    })
}

/// Waits for the child to exit, at most `limit`; true if it exited. Uses a
/// pidfd, which becomes readable when the process ends.
fn wait_timeout(child: &std::process::Child, limit: Duration) -> bool {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let Ok(fd) = rt_sys::pidfd_open(pid) else {
        return true;
    };
    let mut fds = [nix::poll::PollFd::new(
        fd.as_fd(),
        nix::poll::PollFlags::POLLIN,
    )];
    let ms = limit.as_millis().min(i32::MAX as u128) as i32;
    loop {
        match nix::poll::poll(
            &mut fds,
            nix::poll::PollTimeout::try_from(ms).unwrap_or(nix::poll::PollTimeout::MAX),
        ) {
            Err(nix::errno::Errno::EINTR) => continue,
            Ok(n) => return n > 0,
            Err(_) => return true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hooks(json: &str) -> Hooks {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn runs_with_state_and_env() {
        let h = hooks(
            r#"{"prestart":[{"path":"/bin/sh","args":["sh","-c","read s; [ \"$s\" = '{\"id\":1}' ] && [ \"$FOO\" = bar ]"],"env":["FOO=bar"]}]}"#,
        );
        run(Some(&h), Kind::Prestart, b"{\"id\":1}\n").unwrap();
    }

    #[test]
    fn env_defaults_to_the_running_process_or_the_container() {
        let h = hooks(
            r#"{"startContainer":[{"path":"/bin/sh","args":["sh","-c","[ \"$K\" = v ] && [ -z \"$HOME_SET\" ]"]}]}"#,
        );
        run_in_container(Some(&h), Kind::StartContainer, b"{}", &["K=v".into()]).unwrap();
        assert!(run_in_container(Some(&h), Kind::StartContainer, b"{}", &["K=w".into()]).is_err());
        // Without env and outside the container: rt's own environment.
        let h = hooks(r#"{"prestart":[{"path":"/bin/sh","args":["sh","-c","[ -n \"$PATH\" ]"]}]}"#);
        run(Some(&h), Kind::Prestart, b"{}").unwrap();
    }

    #[test]
    fn failure_and_timeout() {
        let h = hooks(
            r#"{"poststart":[{"path":"/bin/sh","args":["sh","-c","echo oops >&2; exit 3"]}]}"#,
        );
        let e = run(Some(&h), Kind::Poststart, b"{}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("poststart hook #0") && e.contains("oops"), "{e}");
        let h =
            hooks(r#"{"createRuntime":[{"path":"/bin/sleep","args":["sleep","5"],"timeout":1}]}"#);
        let e = run(Some(&h), Kind::CreateRuntime, b"{}").unwrap_err();
        assert!(matches!(e, Error::Timeout { .. }), "{e}");
    }
}
