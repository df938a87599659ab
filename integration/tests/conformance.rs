//! The correctness sweep against runc's behaviour: each test here failed on
//! rt before its fix (see the comments for what went wrong).

use std::path::Path;
use std::time::Duration;

use rt_testsupport::{eventually, need_root, unique_id, Bundle, Root};
use serde_json::{json, Value};

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `rt run` of `args` in a fresh bundle with `edit` applied: (exit code,
/// stdout + stderr).
fn run(args: &[&str], edit: impl FnOnce(&mut Value)) -> (i32, String) {
    let root = Root::new();
    let mut b = Bundle::new(args);
    b.edit(edit);
    let out = root.rt(&[
        "run",
        "--bundle",
        b.path().to_str().unwrap(),
        &unique_id("conf"),
    ]);
    (out.status.code().unwrap_or(-1), text(&out))
}

/// A profile that allows everything but answers `close_range` with `errno`:
/// rt used close_range after loading the user's filter, so every container
/// under such a profile (written before 2020, or the runtime-spec's
/// generated default) died right after start with "close_range failed: EPERM".
#[test]
fn close_range_refused_by_the_profile() {
    need_root!();
    for (errno, nnp) in [(1, true), (38, true), (1, false), (38, false)] {
        let (code, out) = run(&["sh", "-c", "echo hello; ls /proc/self/fd"], |c| {
            c["process"]["noNewPrivileges"] = nnp.into();
            c["linux"]["seccomp"] = json!({
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["close_range"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno}]
            });
        });
        assert_eq!(code, 0, "errno {errno}, nnp {nnp}: {out}");
        let mut lines = out.lines();
        assert_eq!(lines.next(), Some("hello"), "{out}");
        // stdio and ls's own directory: nothing of rt's leaked.
        let fds: Vec<&str> = lines.collect();
        assert_eq!(fds, ["0", "1", "2", "3"], "errno {errno}, nnp {nnp}: {out}");
    }
}

/// With `--debug --log FILE` the stage closed the log file's descriptor by
/// number, exec.fifo took it, and the init's debug line (an ambient
/// capability skipped, in a user namespace) went into the fifo: the init read
/// it as `start`, the process ran during `create`, and `rt start` failed.
#[test]
fn debug_log_in_children_goes_to_the_log_file() {
    need_root!();
    let root = Root::new();
    let out_dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        out_dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let mut b = Bundle::new(&["sh", "-c", "echo ran > /tmp/marker"]);
    b.edit(|c| {
        rt_testsupport::in_user_namespace(c);
        c["process"]["capabilities"]["ambient"] = json!(["CAP_NET_BIND_SERVICE"]);
        c["process"]["capabilities"]["inheritable"] = json!([]);
        c["mounts"].as_array_mut().unwrap().push(json!({
            "destination": "/tmp", "type": "bind", "source": out_dir.path(), "options": ["rbind"]
        }));
    });
    let log = b.path().join("rt.log");
    let id = unique_id("log");
    let global = ["--debug", "--log", log.to_str().unwrap()];
    let create = [
        &global[..],
        &["create", "--bundle", b.path().to_str().unwrap(), &id],
    ]
    .concat();
    root.ok(&create);
    std::thread::sleep(Duration::from_millis(300));
    let marker = out_dir.path().join("marker");
    assert!(!marker.exists(), "the process ran before start");
    assert_eq!(root.status(&id), "created");
    root.ok(&[&global[..], &["start", &id]].concat());
    assert!(eventually(10, || marker.exists()));
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("ambient capability CAP_NET_BIND_SERVICE is not permitted"),
        "{logged}"
    );
    assert!(eventually(10, || root.status(&id) == "stopped"));
    root.ok(&["delete", &id]);
}

/// The resource fields Docker 20.10 sends in every spec, zero meaning "not
/// set". rt wrote `blkio.weight 0`, which does not exist on hosts without
/// the BFQ scheduler (this one), and refused the container.
fn docker_zeros() -> Value {
    json!({
        "devices": [{"allow": false, "access": "rwm"}],
        "memory": {"limit": 0, "reservation": 0, "swap": 0, "kernel": 0, "kernelTCP": 0,
                   "disableOOMKiller": false},
        "cpu": {"shares": 0, "quota": 0, "period": 0, "realtimeRuntime": 0, "realtimePeriod": 0,
                "cpus": "", "mems": ""},
        "pids": {"limit": 0},
        "blockIO": {"weight": 0}
    })
}

#[test]
fn docker_zero_resources_are_unset() {
    need_root!();
    let (code, out) = run(&["echo", "zeros"], |c| {
        c["linux"]["resources"] = docker_zeros();
    });
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("zeros"), "{out}");
    // And `update` with the same document changes nothing and succeeds.
    let root = Root::new();
    let b = Bundle::new(&["sleep", "100"]);
    let id = unique_id("zeros");
    root.ok(&["run", "-d", "--bundle", b.path().to_str().unwrap(), &id]);
    let file = b.path().join("resources.json");
    let mut zeros = docker_zeros();
    zeros.as_object_mut().unwrap().remove("devices");
    std::fs::write(&file, zeros.to_string()).unwrap();
    root.ok(&["update", "--resources", file.to_str().unwrap(), &id]);
    root.ok(&["delete", "--force", &id]);
}

/// A spec that shares every namespace of the caller (no `mount` entry):
/// rt refused it outright; runc runs it, chrooted into the rootfs. rt now
/// runs it with nothing mounted, and refuses by name what would need mounts.
#[test]
fn container_without_a_mount_namespace() {
    need_root!();
    let share_all = |c: &mut Value| {
        c["linux"]["namespaces"] = json!([]);
        c["mounts"] = json!([]);
        let linux = c["linux"].as_object_mut().unwrap();
        linux.remove("maskedPaths");
        linux.remove("readonlyPaths");
        linux.remove("sysctl");
        c["root"]["readonly"] = false.into();
        c.as_object_mut().unwrap().remove("hostname");
    };
    let (code, out) = run(&["sh", "-c", "cat /etc/passwd; echo ok"], share_all);
    assert_eq!(code, 0, "{out}");
    // The rootfs's passwd (two lines), not the host's.
    assert!(
        out.starts_with("root:x:0:0:root:/root:/bin/sh\nnobody:"),
        "{out}"
    );
    assert!(out.ends_with("ok\n"), "{out}");

    // exec lands in the container's root too.
    let root = Root::new();
    let mut b = Bundle::new(&["sleep", "100"]);
    b.edit(share_all);
    let id = unique_id("nomnt");
    root.ok(&["run", "-d", "--bundle", b.path().to_str().unwrap(), &id]);
    let out = root.ok(&["exec", &id, "cat", "/etc/passwd"]);
    assert_eq!(out.lines().count(), 2, "{out}");
    root.ok(&["delete", "--force", &id]);

    // With mounts and no mount namespace: refused by name, nothing left.
    let root = Root::new();
    let mut b = Bundle::new(&["true"]);
    b.edit(|c| c["linux"]["namespaces"] = json!([{"type": "pid"}]));
    let id = unique_id("nomnt");
    let out = root.rt(&["run", "--bundle", b.path().to_str().unwrap(), &id]);
    assert!(!out.status.success());
    let err = text(&out);
    assert!(err.contains("mounts without a mount namespace"), "{err}");
    assert!(!root.dir.path().join(&id).exists());
    assert!(rt_testsupport::cgroup_dirs_named(&id).is_empty());
    let rootfs = rt_testsupport::shared_rootfs()
        .to_str()
        .unwrap()
        .to_string();
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(
        !mounts.lines().any(|l| l.contains(&rootfs)),
        "a mount was left in the host's tree: {mounts}"
    );
}

/// A detached `sleep` with `edit` applied, in its own root.
fn sleeping(edit: impl FnOnce(&mut Value)) -> (Root, Bundle, String) {
    let root = Root::new();
    let mut b = Bundle::new(&["sleep", "1000"]);
    b.edit(edit);
    let id = unique_id("exec");
    root.ok(&["run", "-d", "--bundle", b.path().to_str().unwrap(), &id]);
    (root, b, id)
}

fn status_field(status: &str, key: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// runc's `exec --cap X` raises X in bounding, effective and permitted only;
/// rt also put it in inheritable and ambient.
#[test]
fn exec_cap_goes_to_bounding_effective_permitted() {
    need_root!();
    let (root, _b, id) = sleeping(|_| {});
    let out = root.ok(&[
        "exec",
        "--cap",
        "CAP_SYS_ADMIN",
        &id,
        "cat",
        "/proc/self/status",
    ]);
    let bit = 1u64 << 21;
    for key in ["CapBnd:", "CapEff:", "CapPrm:"] {
        let v = u64::from_str_radix(&status_field(&out, key), 16).unwrap();
        assert_eq!(v & bit, bit, "{key} {out}");
    }
    assert_eq!(status_field(&out, "CapInh:"), "0000000000000000", "{out}");
    assert_eq!(status_field(&out, "CapAmb:"), "0000000000000000", "{out}");
    root.ok(&["delete", "--force", &id]);
}

/// `exec --env K=V` replaces K of process.env; rt passed both values.
#[test]
fn exec_env_overrides_the_spec() {
    need_root!();
    let (root, _b, id) = sleeping(|c| {
        c["process"]["env"]
            .as_array_mut()
            .unwrap()
            .push(json!("K=from_spec"));
    });
    let out = root.ok(&[
        "exec",
        "--env",
        "K=from_cli",
        "-e",
        "NEW=1",
        &id,
        "cat",
        "/proc/self/environ",
    ]);
    let vars: Vec<&str> = out.split('\0').filter(|v| !v.is_empty()).collect();
    assert_eq!(
        vars.iter().filter(|v| v.starts_with("K=")).count(),
        1,
        "{vars:?}"
    );
    assert!(
        vars.contains(&"K=from_cli") && vars.contains(&"NEW=1"),
        "{vars:?}"
    );
    root.ok(&["delete", "--force", &id]);
}

/// `exec --ignore-paused` runs in a paused container: the process starts
/// frozen and runs at `resume` (rt refused the flag).
#[test]
fn exec_ignore_paused_runs_at_resume() {
    need_root!();
    let out_dir = tempfile::tempdir().unwrap();
    let (root, b, id) = sleeping(|c| {
        c["mounts"].as_array_mut().unwrap().push(json!({
            "destination": "/tmp", "type": "bind", "source": out_dir.path(), "options": ["rbind"]
        }));
    });
    root.ok(&["pause", &id]);
    let out = root.rt(&["exec", &id, "true"]);
    assert!(
        !out.status.success() && text(&out).contains("--ignore-paused"),
        "{}",
        text(&out)
    );
    let pid_file = b.path().join("exec.pid");
    root.ok(&[
        "exec",
        "-d",
        "--ignore-paused",
        "--pid-file",
        pid_file.to_str().unwrap(),
        &id,
        "sh",
        "-c",
        "echo ran > /tmp/marker",
    ]);
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let marker = out_dir.path().join("marker");
    assert!(!marker.exists(), "the process ran in a paused container");
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    assert!(!st.is_empty(), "the exec'd process {pid} is gone");
    root.ok(&["resume", &id]);
    assert!(eventually(10, || marker.exists()));
    root.ok(&["delete", "--force", &id]);
}

/// `exec --cgroup SUB` (and v1's `ctrl,ctrl:SUB`) runs the process in a
/// sub-cgroup of the container's, made if missing; delete removes it.
#[test]
fn exec_into_a_sub_cgroup() {
    need_root!();
    let (root, _b, id) = sleeping(|_| {});
    // The path of the hierarchy whose controllers include `ctrl`.
    let path_of = |out: &str, ctrl: &str| -> String {
        out.lines()
            .find_map(|l| {
                let mut f = l.splitn(3, ':');
                let (_, ctrls, path) = (f.next()?, f.next()?, f.next()?);
                ctrls
                    .split(',')
                    .any(|c| c == ctrl)
                    .then(|| path.to_string())
            })
            .unwrap_or_default()
    };
    let out = root.ok(&[
        "exec",
        "--cgroup",
        "sub/deeper",
        &id,
        "cat",
        "/proc/self/cgroup",
    ]);
    for ctrl in ["memory", "pids", "cpu"] {
        assert_eq!(path_of(&out, ctrl), "/sub/deeper", "{ctrl} {out}");
    }
    let out = root.ok(&[
        "exec",
        "--cgroup",
        "memory,pids:m",
        &id,
        "cat",
        "/proc/self/cgroup",
    ]);
    for (ctrl, want) in [("memory", "/m"), ("pids", "/m"), ("cpu", "/")] {
        assert_eq!(path_of(&out, ctrl), want, "{ctrl} {out}");
    }
    let out = root.rt(&["exec", "--cgroup", "../escape", &id, "true"]);
    assert!(!out.status.success(), "{}", text(&out));
    root.ok(&["delete", "--force", &id]);
    assert!(rt_testsupport::cgroup_dirs_named(&id).is_empty());
}

/// A startContainer hook without `env` sees the container process's
/// environment, as in runc (rt gave it an empty one).
#[test]
fn start_container_hook_sees_the_process_env() {
    need_root!();
    let out_dir = tempfile::tempdir().unwrap();
    let (code, out) = run(&["true"], |c| {
        c["process"]["env"]
            .as_array_mut()
            .unwrap()
            .push(json!("K=from_process"));
        c["mounts"].as_array_mut().unwrap().push(json!({
            "destination": "/tmp", "type": "bind", "source": out_dir.path(), "options": ["rbind"]
        }));
        c["hooks"] = json!({"startContainer": [
            {"path": "/bin/sh", "args": ["sh", "-c", "echo \"$K\" > /tmp/hookenv"]}
        ]});
    });
    assert_eq!(code, 0, "{out}");
    let got = std::fs::read_to_string(out_dir.path().join("hookenv")).unwrap();
    assert_eq!(got, "from_process\n");
}

/// A new time namespace with offsets inside a new user namespace: writing
/// /proc/self/timens_offsets failed with EACCES (the stage, its euid changed
/// by setresuid, was no longer dumpable, so its /proc files belonged to the
/// host's root).
#[test]
fn time_offsets_in_a_user_namespace() {
    need_root!();
    let (code, out) = run(&["cat", "/proc/uptime"], |c| {
        rt_testsupport::in_user_namespace(c);
        c["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": "time"}));
        c["linux"]["timeOffsets"] = json!({"boottime": {"secs": 864000, "nanosecs": 0}});
    });
    assert_eq!(code, 0, "{out}");
    let uptime: f64 = out.split_whitespace().next().unwrap().parse().unwrap();
    assert!(uptime >= 864000.0, "{out}");
}

/// runc's wording for capabilities a spec names that rt or the kernel lacks.
#[test]
fn unknown_capability_warning_is_runcs() {
    need_root!();
    let (code, out) = run(&["true"], |c| {
        c["process"]["capabilities"]["bounding"]
            .as_array_mut()
            .unwrap()
            .extend([json!("CAP_NOT_A_THING"), json!("CAP_ALSO_NOT")]);
    });
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(
            "ignoring unknown or unavailable capabilities: [CAP_ALSO_NOT CAP_NOT_A_THING]"
        ),
        "{out}"
    );
}

/// `delete` of a running (or paused) container fails and leaves it exactly
/// as it was: same state, same init, its cgroup and state directory intact.
#[test]
fn delete_of_a_live_container_changes_nothing() {
    need_root!();
    let (root, _b, id) = sleeping(|_| {});
    let before = root.ok(&["state", &id]);
    for paused in [false, true] {
        if paused {
            root.ok(&["pause", &id]);
        }
        let out = root.rt(&["delete", &id]);
        assert!(!out.status.success());
        assert!(
            text(&out).contains(&format!("cannot delete container {id} that is not stopped")),
            "{}",
            text(&out)
        );
        let st: Value = serde_json::from_str(&root.ok(&["state", &id])).unwrap();
        let was: Value = serde_json::from_str(&before).unwrap();
        assert_eq!(st["pid"], was["pid"]);
        assert_eq!(st["status"], if paused { "paused" } else { "running" });
        assert!(!rt_testsupport::cgroup_dirs_named(&id).is_empty());
        let pid = st["pid"].as_i64().unwrap();
        assert!(Path::new(&format!("/proc/{pid}")).exists());
    }
    root.ok(&["resume", &id]);
    root.ok(&["delete", "--force", &id]);
    assert!(rt_testsupport::cgroup_dirs_named(&id).is_empty());
}

/// What a seccomp listener received: the containerProcessState and the
/// notify descriptor.
struct Received {
    state: Value,
    fd: std::os::fd::OwnedFd,
}

/// A seccomp agent on a unix socket: every connection's message and
/// descriptor go to the returned channel.
fn seccomp_agent(path: &Path) -> std::sync::mpsc::Receiver<Received> {
    let listener = std::os::unix::net::UnixListener::bind(path).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let (bytes, fd) = rt_testsupport::recv_with_fd(&conn);
            let state = serde_json::from_slice(&bytes).unwrap();
            if tx.send(Received { state, fd }).is_err() {
                return;
            }
        }
    });
    rx
}

/// SCMP_ACT_NOTIFY with listenerPath, as the runtime-spec describes (rt
/// refused it): the listener gets the container process state and the
/// notify descriptor, for the init at create and for each exec'd process;
/// a notified syscall waits on the listener, and fails with ENOSYS once the
/// listener closes the descriptor.
#[test]
fn seccomp_notify_reaches_the_listener() {
    need_root!();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let agent = seccomp_agent(&sock);
    let out_dir = tempfile::tempdir().unwrap();
    let (root, b, id) = sleeping(|c| {
        c["mounts"].as_array_mut().unwrap().push(json!({
            "destination": "/tmp", "type": "bind", "source": out_dir.path(), "options": ["rbind"]
        }));
        c["linux"]["seccomp"] = json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "listenerPath": sock,
            "listenerMetadata": "meta-data",
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_NOTIFY"}]
        });
    });
    let st: Value = serde_json::from_str(&root.ok(&["state", &id])).unwrap();
    let init = agent
        .recv_timeout(Duration::from_secs(10))
        .expect("the init's listener fd");
    assert_eq!(init.state["fds"], json!(["seccompFd"]));
    assert_eq!(init.state["metadata"], "meta-data");
    assert_eq!(init.state["pid"], st["pid"]);
    assert_eq!(init.state["state"]["id"], json!(id));
    assert_eq!(init.state["state"]["status"], "creating");

    let pid_file = b.path().join("exec.pid");
    root.ok(&[
        "exec",
        "-d",
        "--pid-file",
        pid_file.to_str().unwrap(),
        &id,
        "sh",
        "-c",
        "mkdir /tmp/made; echo rc=$? > /tmp/result",
    ]);
    let exec = agent
        .recv_timeout(Duration::from_secs(10))
        .expect("the exec's listener fd");
    let exec_pid: i64 = std::fs::read_to_string(&pid_file).unwrap().parse().unwrap();
    assert_eq!(exec.state["pid"], json!(exec_pid));
    assert_eq!(exec.state["state"]["status"], "running");
    // mkdir waits on the listener...
    std::thread::sleep(Duration::from_millis(300));
    let result = out_dir.path().join("result");
    assert!(
        !result.exists(),
        "a notified mkdir did not wait for the listener"
    );
    // ...and fails with ENOSYS once it goes away.
    drop(exec.fd);
    drop(init.fd);
    assert!(eventually(10, || result.exists()));
    assert_eq!(std::fs::read_to_string(&result).unwrap(), "rc=1\n");
    assert!(!out_dir.path().join("made").exists());
    root.ok(&["delete", "--force", &id]);
}
