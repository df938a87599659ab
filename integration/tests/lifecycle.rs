//! The runc-compatible lifecycle of `rt`, end to end, as root.

use std::path::Path;
use std::process::{Command, Stdio};

use rt_testsupport::{cgroup_dirs_named, eventually, root_or_skip, unique_id, Bundle, Root};
use serde_json::{json, Value};

macro_rules! need_root {
    () => {
        if !root_or_skip(module_path!()) {
            return;
        }
    };
}

fn run_out(root: &Root, b: &Bundle, id: &str) -> (i32, String, String) {
    let out = root.rt(&["run", "--bundle", b.path().to_str().unwrap(), id]);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn sh(script: &str) -> Bundle {
    Bundle::new(&["sh", "-c", script])
}

#[test]
fn run_returns_exit_code_and_signal_status() {
    need_root!();
    let root = Root::new();
    let (code, out, _) = run_out(&root, &sh("echo hi; exit 7"), &unique_id("exit"));
    assert_eq!((code, out.as_str()), (7, "hi\n"));
    // Not as pid 1 of a pid namespace: the kernel ignores SIGKILL sent from
    // inside the namespace to its init.
    let mut b = sh("kill -9 $$");
    b.edit(|c| {
        c["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .retain(|n| n["type"] != "pid")
    });
    let (code, _, _) = run_out(&root, &b, &unique_id("sig"));
    assert_eq!(code, 137);
    assert_eq!(
        std::fs::read_dir(root.dir.path()).unwrap().count(),
        0,
        "run leaves no state"
    );
}

#[test]
fn create_start_state_kill_delete() {
    need_root!();
    let root = Root::new();
    let b = Bundle::new(&["sleep", "1000"]);
    let id = unique_id("life");
    let pidfile = b.path().join("pidfile");
    root.ok(&[
        "create",
        "--bundle",
        b.path().to_str().unwrap(),
        "--pid-file",
        pidfile.to_str().unwrap(),
        &id,
    ]);
    let pid_text = std::fs::read_to_string(&pidfile).unwrap();
    assert!(
        pid_text.chars().all(|c| c.is_ascii_digit()),
        "bare digits: {pid_text:?}"
    );
    let st: Value = serde_json::from_str(&root.ok(&["state", &id])).unwrap();
    assert_eq!(st["status"], "created");
    assert_eq!(st["pid"].as_i64().unwrap().to_string(), pid_text);
    assert_eq!(st["bundle"], b.path().to_str().unwrap());
    for key in ["ociVersion", "id", "rootfs", "created", "owner"] {
        assert!(st.get(key).is_some(), "state has {key}");
    }
    // The init is in the cgroup named by the default path (the id).
    let cg = std::fs::read_to_string(format!("/proc/{pid_text}/cgroup")).unwrap();
    assert!(cg.contains(&format!("pids:/{id}")), "{cg}");
    root.ok(&["start", &id]);
    assert_eq!(root.status(&id), "running");
    let e = root.rt(&["start", &id]);
    assert!(!e.status.success());
    let e = root.rt(&["delete", &id]);
    assert!(String::from_utf8_lossy(&e.stderr).contains("is not stopped"));
    let list = root.ok(&["list", "--format", "json"]);
    assert!(list.contains(&id));
    assert_eq!(root.ok(&["list", "-q"]).trim(), id);
    root.ok(&["kill", &id, "KILL"]);
    assert!(eventually(5, || root.status(&id) == "stopped"));
    let e = root.rt(&["kill", &id]);
    assert!(String::from_utf8_lossy(&e.stderr).contains("container not running"));
    root.ok(&["delete", &id]);
    assert!(!root.dir.path().join(&id).exists());
    assert!(
        cgroup_dirs_named(&id).is_empty(),
        "cgroups removed: {:?}",
        cgroup_dirs_named(&id)
    );
}

#[test]
fn delete_created_without_force_and_force_running() {
    need_root!();
    let root = Root::new();
    let b = Bundle::new(&["sleep", "1000"]);
    let id = unique_id("del");
    root.ok(&["create", "--bundle", b.path().to_str().unwrap(), &id]);
    root.ok(&["delete", &id]);
    let id2 = unique_id("delf");
    root.ok(&["run", "-d", "--bundle", b.path().to_str().unwrap(), &id2]);
    // `run` saves the created status only once the init is released
    // (`Options::starts_at_once`): saved it is, and reads as running.
    assert_eq!(root.status(&id2), "running");
    let pid: Value = serde_json::from_str(&root.ok(&["state", &id2])).unwrap();
    let pid = pid["pid"].as_i64().unwrap();
    root.ok(&["delete", "--force", &id2]);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .unwrap()
                .contains(") Z")
    );
    assert!(cgroup_dirs_named(&id2).is_empty());
    // Twice, as containerd's shim does: the second is quiet and succeeds.
    root.ok(&["delete", "--force", &id2]);
}

#[test]
fn unknown_ids() {
    need_root!();
    let root = Root::new();
    for args in [
        vec!["state", "nope"],
        vec!["start", "nope"],
        vec!["kill", "nope"],
        vec!["delete", "nope"],
    ] {
        let out = root.rt(&args);
        assert!(!out.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("does not exist"),
            "{args:?}"
        );
    }
    root.ok(&["delete", "--force", "nope"]);
}

#[test]
fn two_concurrent_creates_one_wins() {
    need_root!();
    let root = Root::new();
    let b = Bundle::new(&["sleep", "1000"]);
    let id = unique_id("race");
    let (a, c) = std::thread::scope(|s| {
        let spawn =
            || s.spawn(|| root.rt(&["create", "--bundle", b.path().to_str().unwrap(), &id]));
        let (a, c) = (spawn(), spawn());
        (a.join().unwrap(), c.join().unwrap())
    });
    assert_eq!(
        a.status.success() as u8 + c.status.success() as u8,
        1,
        "exactly one create wins"
    );
    let loser = if a.status.success() { &c } else { &a };
    assert!(String::from_utf8_lossy(&loser.stderr).contains("already exists"));
    assert_eq!(root.status(&id), "created");
    root.ok(&["delete", "--force", &id]);
}

#[test]
fn bad_input_leaves_nothing() {
    need_root!();
    let root = Root::new();
    // Malformed config.json.
    let b = Bundle::new(&["true"]);
    std::fs::write(b.path().join("config.json"), "{not json").unwrap();
    let id = unique_id("bad");
    let out = root.rt(&["create", "--bundle", b.path().to_str().unwrap(), &id]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("config.json"));
    // Missing rootfs.
    let mut b = Bundle::new(&["true"]);
    b.edit(|c| c["root"]["path"] = json!("/nonexistent-rootfs"));
    let out = root.rt(&["create", "--bundle", b.path().to_str().unwrap(), &id]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
    // A failing createRuntime hook, a bogus mount type, a missing binary.
    type Edit = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(Edit, &str)> = vec![
        (
            Box::new(|c: &mut Value| {
                c["hooks"] = json!({"createRuntime": [{"path": "/bin/false"}]})
            }),
            "createRuntime hook",
        ),
        (
            Box::new(|c: &mut Value| {
                c["mounts"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"destination": "/x", "type": "nosuchfs", "source": "none"}))
            }),
            "nosuchfs",
        ),
        (
            Box::new(|c: &mut Value| c["process"]["args"] = json!(["no-such-binary"])),
            "executable file not found",
        ),
        (
            Box::new(|c: &mut Value| c["process"]["args"] = json!(["/bin/true"])),
            "",
        ),
    ];
    for (i, (edit, want)) in cases.into_iter().enumerate() {
        let mut b = Bundle::new(&["true"]);
        b.edit(|c| edit(c));
        let id = unique_id(&format!("bad{i}"));
        let out = root.rt(&["create", "--bundle", b.path().to_str().unwrap(), &id]);
        if want.is_empty() {
            assert!(out.status.success());
            root.ok(&["delete", &id]);
            continue;
        }
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(want),
            "case {i}: {err}"
        );
        assert!(!root.dir.path().join(&id).exists(), "case {i}: state left");
        assert!(cgroup_dirs_named(&id).is_empty(), "case {i}: cgroup left");
    }
    assert_eq!(std::fs::read_dir(root.dir.path()).unwrap().count(), 0);
}

/// `run` holds the container's network namespace (the one made ahead, see
/// rt_sys::netns_helper) until it is done with the container: the
/// kernel's teardown of the namespace then starts after rt's cleanup rather
/// than taking a CPU from it when the container exits.
#[test]
fn run_holds_the_network_namespace_to_the_end() {
    need_root!();
    let root = Root::new();
    let b = sh("readlink /proc/self/ns/net; sleep 1");
    let mut child = Command::new(rt_testsupport::rt_bin())
        .arg("--root")
        .arg(root.dir.path())
        .args(["run", "--bundle", b.path().to_str().unwrap()])
        .arg(unique_id("hold"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    let ns = line.trim();
    let held: Vec<String> = std::fs::read_dir(format!("/proc/{}/fd", child.id()))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|l| l.to_string_lossy().into_owned())
        .collect();
    assert!(ns.starts_with("net:["), "{ns}");
    assert!(held.iter().any(|l| l == ns), "{ns} not among {held:?}");
    assert!(child.wait().unwrap().success());
}

/// The network namespace made ahead of a container's init (a helper task,
/// started once config.json is read, see rt_sys::netns_helper) is gone
/// with `rt` whether create succeeds or fails after it started: rt runs
/// under a child subreaper, which would inherit the helper if rt left it
/// running or unreaped.
#[test]
fn the_network_namespace_made_ahead_leaves_nothing() {
    need_root!();
    let root = Root::new();
    let tools = tempfile::tempdir().unwrap();
    let subreaper = rt_integration::helpers::build("subreaper", tools.path());
    let run = |b: &Bundle, id: &str| {
        rt_testsupport::output_via_files(
            Command::new(&subreaper)
                .arg(rt_testsupport::rt_bin())
                .arg("--root")
                .arg(root.dir.path())
                .args(["run", "--bundle", b.path().to_str().unwrap(), id]),
        )
    };
    // The default bundle has a network namespace of its own: the helper's.
    let b = Bundle::new(&["sh", "-c", "readlink /proc/self/ns/net"]);
    let out = run(&b, &unique_id("ahead"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let host = std::fs::read_link("/proc/self/ns/net").unwrap();
    assert!(
        text.starts_with("net:[") && text.trim() != host.to_string_lossy(),
        "{text}"
    );
    // The helper was the one the entry point started on its guess, taken
    // over by the engine; without a network namespace there is none.
    let log = root.dir.path().with_extension("ahead.log");
    for (net, want) in [(true, Some("early=true")), (false, None)] {
        let mut b = Bundle::new(&["true"]);
        if !net {
            b.edit(|c| {
                let ns = c["linux"]["namespaces"].as_array_mut().unwrap();
                ns.retain(|n| n["type"] != "network");
            });
        }
        let _ = std::fs::remove_file(&log);
        root.ok(&[
            "--debug",
            "--log",
            log.to_str().unwrap(),
            "run",
            "--bundle",
            b.path().to_str().unwrap(),
            &unique_id("ahead"),
        ]);
        let text = std::fs::read_to_string(&log).unwrap();
        let line = text
            .lines()
            .find(|l| l.contains("network namespace helper"));
        match want {
            Some(w) => assert!(line.is_some_and(|l| l.contains(w)), "{text}"),
            None => assert!(line.is_none(), "{text}"),
        }
    }
    let _ = std::fs::remove_file(&log);
    // Failures after the helper started: a config the skim reads but the
    // parse refuses, and a missing rootfs.
    type Edit = fn(&mut Value);
    let cases: [(Edit, &str); 2] = [
        (|c| c["process"]["args"] = json!(5), "config.json"),
        (
            |c| c["root"]["path"] = json!("/nonexistent-rootfs"),
            "does not exist",
        ),
    ];
    for (i, (edit, want)) in cases.into_iter().enumerate() {
        let mut b = Bundle::new(&["true"]);
        b.edit(edit);
        let out = run(&b, &unique_id("ahead"));
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "case {i}: {text}");
        assert!(text.contains(want), "case {i}: {text}");
    }
    // Failures before the engine looks at the config, when the entry point
    // started the helper on its own guess (see runtime/cli/src/early/netns.rs):
    // an id the engine refuses, and a flag clap refuses.
    let b = Bundle::new(&["true"]);
    let out = run(&b, "bad/id");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("container id"), "{text}");
    let out = rt_testsupport::output_via_files(
        Command::new(&subreaper)
            .arg(rt_testsupport::rt_bin())
            .arg("--root")
            .arg(root.dir.path())
            .args(["run", "--bundle", b.path().to_str().unwrap()])
            .args(["--no-such-flag", &unique_id("ahead")]),
    );
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("--no-such-flag"), "{text}");
    assert_eq!(std::fs::read_dir(root.dir.path()).unwrap().count(), 0);
}

#[test]
fn json_log_has_exactly_one_error_object() {
    need_root!();
    let root = Root::new();
    let log = root.dir.path().with_extension("log");
    let out = root
        .cmd()
        .args([
            "--log",
            log.to_str().unwrap(),
            "--log-format",
            "json",
            "state",
            "nope",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = std::fs::read_to_string(&log).unwrap();
    let v: Value = serde_json::from_str(text.trim()).expect("one JSON object");
    assert_eq!(v["level"], "error");
    assert!(v["msg"].as_str().unwrap().contains("does not exist"));
    assert!(v["time"].as_str().is_some());
    std::fs::remove_file(log).unwrap();
}

#[test]
fn sigkill_during_create_is_cleaned_by_delete_force() {
    need_root!();
    let root = Root::new();
    let mut b = Bundle::new(&["true"]);
    let marker = b.path().join("in-hook");
    let m = marker.to_str().unwrap().to_string();
    b.edit(|c| c["hooks"] = json!({"createRuntime": [{"path": "/bin/sh", "args": ["sh", "-c", format!("touch {m}; sleep 30")]}]}));
    let id = unique_id("killed");
    let mut child = root
        .cmd()
        .args(["create", "--bundle", b.path().to_str().unwrap(), &id])
        .spawn()
        .unwrap();
    assert!(eventually(10, || marker.exists()));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        root.dir.path().join(&id).exists(),
        "create left its state for delete to find"
    );
    root.ok(&["delete", "--force", &id]);
    assert!(!root.dir.path().join(&id).exists());
    assert!(
        eventually(5, || cgroup_dirs_named(&id).is_empty()),
        "{:?}",
        cgroup_dirs_named(&id)
    );
    let _ = Command::new("pkill").args(["-f", &m]).status();
}

#[test]
fn argv_quirks_of_real_callers() {
    need_root!();
    let root = Root::new();
    let b = Bundle::new(&["sleep", "1000"]);
    let id = unique_id("argv");
    // Flags after the id, single-dash long flags, --x=v.
    root.ok(&["create", &id, "-bundle", b.path().to_str().unwrap()]);
    root.ok(&["start", &id]);
    for sig in ["0", "SIGCONT", "cont", "18"] {
        root.ok(&["kill", &id, sig]);
    }
    root.ok(&["kill", &id, "sigkill"]);
    assert!(eventually(5, || root.status(&id) == "stopped"));
    root.ok(&["delete", "-force=true", &id]);
}

#[test]
fn signals_are_forwarded_by_run() {
    need_root!();
    let root = Root::new();
    let b = sh("trap 'exit 42' TERM; echo ready; while true; do sleep 0.05; done");
    let id = unique_id("fwd");
    let mut child = root
        .cmd()
        .args(["run", "--bundle", b.path().to_str().unwrap(), &id])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut buf = [0u8; 6];
    std::io::Read::read_exact(&mut out, &mut buf).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(42));
}

#[test]
fn spec_and_features() {
    need_root!();
    let dir = tempfile::tempdir().unwrap();
    let root = Root::new();
    root.ok(&["spec", "--bundle", dir.path().to_str().unwrap()]);
    let out = root.rt(&["spec", "--bundle", dir.path().to_str().unwrap()]);
    assert!(!out.status.success(), "refuses to overwrite");
    let f: Value = serde_json::from_str(&root.ok(&["features"])).unwrap();
    assert!(f["mountOptions"]
        .as_array()
        .unwrap()
        .contains(&json!("rro")));
    assert_eq!(f["linux"]["mountExtensions"]["idmap"]["enabled"], false);
    assert!(f["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .contains(&json!("user")));
    assert_eq!(f["linux"]["cgroup"]["systemd"], true);
}

/// rt started with a standard descriptor closed (here stdout) puts
/// /dev/null in its place before it opens anything, as Rust's start-up did
/// before rt's own `main` replaced it: the log file must not become
/// descriptor 1 and receive `list`'s table.
#[test]
fn closed_standard_descriptors_are_not_reused() {
    use std::os::unix::process::CommandExt;
    let root = Root::new();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("rt.log");
    let mut cmd = root.cmd();
    cmd.args(["--log", log.to_str().unwrap(), "list"]);
    // SAFETY: close(2) is async-signal-safe, as pre_exec requires.
    unsafe {
        cmd.pre_exec(|| {
            libc::close(1);
            Ok(())
        })
    };
    let status = cmd.status().unwrap();
    assert!(status.success(), "{status}");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        !text.contains("STATUS"),
        "the table went to the log: {text}"
    );
}

/// A caller that stops reading (`rt list | head -1`) ends rt's printing
/// commands by SIGPIPE, as it ends runc, instead of a panic's message and
/// backtrace (they panicked on the EPIPE before).
#[test]
fn printing_to_a_closed_pipe_ends_quietly_by_sigpipe() {
    use std::os::unix::process::ExitStatusExt;
    let root = Root::new();
    for args in [&["list"][..], &["features"][..]] {
        let (read, write) = nix::unistd::pipe().unwrap();
        drop(read);
        let out = root
            .cmd()
            .args(args)
            .stdin(Stdio::null())
            .stdout(std::fs::File::from(write))
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{args:?}");
        assert!(
            out.stderr.is_empty(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
