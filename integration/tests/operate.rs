//! Operating running containers: exec, pause/resume, ps, kill --all.

use std::time::Duration;

use rt_testsupport::{eventually, root_or_skip, unique_id, Bundle, Root};
use serde_json::{json, Value};

macro_rules! need_root {
    () => {
        if !root_or_skip(module_path!()) {
            return;
        }
    };
}

/// A detached `sleep` container with `edit` applied; returns its id and pid.
fn running(root: &Root, edit: impl FnOnce(&mut Value)) -> (Bundle, String, i64) {
    let mut b = Bundle::new(&["sleep", "1000"]);
    b.edit(edit);
    let id = unique_id("op");
    root.ok(&["run", "-d", "--bundle", b.path().to_str().unwrap(), &id]);
    let st: Value = serde_json::from_str(&root.ok(&["state", &id])).unwrap();
    let pid = st["pid"].as_i64().unwrap();
    (b, id, pid)
}

fn exec(root: &Root, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["exec"];
    all.extend_from_slice(args);
    let out = root.rt(&all);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn exec_joins_every_namespace_and_the_cgroup() {
    need_root!();
    let root = Root::new();
    let (_b, id, pid) = running(&root, |_| {});
    let script = "for n in mnt uts ipc net pid cgroup; do [ \"$(readlink /proc/self/ns/$n)\" = \"$(readlink /proc/1/ns/$n)\" ] || echo differs $n; done; \
                  echo $$; hostname; ls /proc | grep -c '^[0-9]'";
    let (code, out, err) = exec(&root, &[&id, "sh", "-c", script]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0], "2",
        "second process of the container's pid namespace: {out}"
    );
    assert_eq!(lines[1], "rt");
    // From the host: a detached exec is in the init's cgroups.
    let pidfile = root.dir.path().with_extension("pid");
    let (code, _, err) = exec(
        &root,
        &[
            "-d",
            "--pid-file",
            pidfile.to_str().unwrap(),
            &id,
            "sleep",
            "100",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let epid = std::fs::read_to_string(&pidfile).unwrap();
    let cg = |p: &str| std::fs::read_to_string(format!("/proc/{p}/cgroup")).unwrap();
    assert_eq!(cg(&epid), cg(&pid.to_string()));
    let ps: Vec<i64> = serde_json::from_str(&root.ok(&["ps", "--format", "json", &id])).unwrap();
    assert!(
        ps.contains(&pid) && ps.contains(&epid.parse().unwrap()),
        "{ps:?}"
    );
    let table = root.ok(&["ps", &id]);
    assert!(
        table.starts_with("UID") && table.matches("sleep").count() == 2,
        "{table}"
    );
    std::fs::remove_file(pidfile).unwrap();
    root.ok(&["delete", "--force", &id]);
}

#[test]
fn exec_flags_and_exit_status() {
    need_root!();
    let root = Root::new();
    let (_b, id, _) = running(&root, |c| {
        c["process"]["capabilities"] = json!({"bounding": ["CAP_KILL", "CAP_CHOWN"], "effective": ["CAP_KILL"], "permitted": ["CAP_KILL"]});
    });
    let (code, out, err) = exec(
        &root,
        &[
            "--env",
            "A=1",
            "-e",
            "B=2",
            "--cwd",
            "/etc",
            "--user",
            "1000:1001",
            "--additional-gids",
            "5",
            "--no-new-privs",
            &id,
            "sh",
            "-c",
            "echo $A$B; pwd; id; grep NoNewPrivs /proc/self/status; exit 9",
        ],
    );
    assert_eq!(code, 9, "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "12");
    assert_eq!(lines[1], "/etc");
    assert!(lines[2].starts_with("uid=1000 gid=1001 groups=5"), "{out}");
    assert_eq!(lines[3], "NoNewPrivs:\t1");
    // --cap adds to every set (root keeps it across exec).
    let (_, out, _) = exec(
        &root,
        &[
            "--cap",
            "CAP_NET_RAW",
            &id,
            "grep",
            "CapEff",
            "/proc/self/status",
        ],
    );
    assert_eq!(
        out.trim(),
        "CapEff:\t0000000000002020",
        "CAP_KILL and CAP_NET_RAW"
    );
    let (code, _, err) = exec(&root, &[&id, "no-such-binary"]);
    assert_ne!(code, 0);
    assert!(err.contains("executable file not found in $PATH"), "{err}");
    root.ok(&["delete", "--force", &id]);
}

#[test]
fn exec_process_file_and_console_socket() {
    need_root!();
    let root = Root::new();
    let (b, id, _) = running(&root, |_| {});
    let proc_file = b.path().join("process.json");
    std::fs::write(
        &proc_file,
        serde_json::to_vec(&json!({"user": {"uid": 0, "gid": 0}, "args": ["sh", "-c", "echo from-file $X"], "env": ["X=y", "PATH=/bin"], "cwd": "/"})).unwrap(),
    )
    .unwrap();
    let (code, out, err) = exec(&root, &["--process", proc_file.to_str().unwrap(), &id]);
    assert_eq!((code, out.as_str()), (0, "from-file y\n"), "{err}");
    // --tty --detach without a console socket is refused, as runc does.
    let (code, _, err) = exec(&root, &["--tty", "--detach", &id, "true"]);
    assert_ne!(code, 0);
    assert!(err.contains("console socket"), "{err}");
    root.ok(&["delete", "--force", &id]);
}

#[test]
fn exec_into_paused_or_stopped_fails() {
    need_root!();
    let root = Root::new();
    let (_b, id, _) = running(&root, |_| {});
    root.ok(&["pause", &id]);
    let (code, _, err) = exec(&root, &[&id, "true"]);
    assert!(code != 0 && err.contains("paused"), "{err}");
    root.ok(&["resume", &id]);
    root.ok(&["kill", &id, "KILL"]);
    assert!(eventually(5, || root.status(&id) == "stopped"));
    let (code, _, err) = exec(&root, &[&id, "true"]);
    assert!(code != 0 && err.contains("stopped"), "{err}");
    root.ok(&["delete", &id]);
}

#[test]
fn exec_in_a_user_namespace_container() {
    need_root!();
    let root = Root::new();
    let (_b, id, _) = running(&root, rt_testsupport::in_user_namespace);
    let (code, out, err) = exec(
        &root,
        &[&id, "sh", "-c", "id -u; head -1 /proc/self/uid_map"],
    );
    assert_eq!(code, 0, "{err}");
    let words: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(words, ["0", "0", "300000", "65536"]);
    root.ok(&["delete", "--force", &id]);
}

#[test]
fn pause_freezes_and_resume_thaws() {
    need_root!();
    let root = Root::new();
    let mut b = Bundle::new(&[
        "sh",
        "-c",
        "i=0; while true; do i=$((i+1)); echo $i > /tmp/count; done",
    ]);
    b.edit(|c| {
        c["mounts"]
            .as_array_mut()
            .unwrap()
            .push(json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"}));
    });
    let id = unique_id("frz");
    root.ok(&["run", "-d", "--bundle", b.path().to_str().unwrap(), &id]);
    let st: Value = serde_json::from_str(&root.ok(&["state", &id])).unwrap();
    let count = || -> u64 {
        let p = format!("/proc/{}/root/tmp/count", st["pid"]);
        std::fs::read_to_string(p)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    };
    assert!(eventually(5, || count() > 0));
    root.ok(&["pause", &id]);
    assert_eq!(root.status(&id), "paused");
    let frozen = count();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(count(), frozen, "a frozen loop makes no progress");
    let e = root.rt(&["pause", &id]);
    assert!(!e.status.success());
    root.ok(&["resume", &id]);
    assert_eq!(root.status(&id), "running");
    assert!(eventually(5, || count() > frozen), "progress after resume");
    let e = root.rt(&["resume", &id]);
    assert!(String::from_utf8_lossy(&e.stderr).contains("not paused"));
    // Deleting a paused container works too.
    root.ok(&["pause", &id]);
    root.ok(&["delete", "--force", &id]);
    assert!(rt_testsupport::cgroup_dirs_named(&id).is_empty());
}

#[test]
fn kill_all_reaches_exec_processes() {
    need_root!();
    let root = Root::new();
    // No pid namespace: an exec'd process does not die with the init.
    let (_b, id, _) = running(&root, |c| {
        c["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .retain(|n| n["type"] != "pid");
    });
    let pidfile = root.dir.path().with_extension("epid");
    exec(
        &root,
        &[
            "-d",
            "--pid-file",
            pidfile.to_str().unwrap(),
            &id,
            "sleep",
            "100",
        ],
    );
    let epid: i32 = std::fs::read_to_string(&pidfile).unwrap().parse().unwrap();
    root.ok(&["kill", "--all", &id, "KILL"]);
    assert!(eventually(5, || std::fs::read_to_string(format!(
        "/proc/{epid}/stat"
    ))
    .map_or(true, |s| s.contains(") Z"))));
    std::fs::remove_file(pidfile).unwrap();
    root.ok(&["delete", "--force", &id]);
}

#[test]
fn update_changes_limits_of_a_running_container() {
    need_root!();
    let root = Root::new();
    let (_b, id, _) = running(&root, |c| {
        c["linux"]["resources"] = json!({"memory": {"limit": 67108864}, "pids": {"limit": 50}});
    });
    let read = |ctl: &str, file: &str| {
        std::fs::read_to_string(format!("/sys/fs/cgroup/{ctl}/{id}/{file}"))
            .unwrap()
            .trim()
            .to_string()
    };
    root.ok(&[
        "update",
        "--memory",
        "128m",
        "--pids-limit",
        "30",
        "--cpu-share",
        "256",
        &id,
    ]);
    assert_eq!(
        read("memory", "memory.limit_in_bytes"),
        (128u64 << 20).to_string()
    );
    assert_eq!(read("pids", "pids.max"), "30");
    assert_eq!(read("cpu", "cpu.shares"), "256");
    // Raising the limit above the current memory+swap limit works in either order.
    root.ok(&["update", "--memory", "512m", "--memory-swap", "1g", &id]);
    assert_eq!(
        read("memory", "memory.limit_in_bytes"),
        (512u64 << 20).to_string()
    );
    assert_eq!(
        read("memory", "memory.memsw.limit_in_bytes"),
        (1u64 << 30).to_string()
    );
    // --resources - reads LinuxResources JSON from stdin.
    let mut child = root
        .cmd()
        .args(["update", "--resources", "-", &id])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        child.stdin.as_mut().unwrap(),
        br#"{"pids": {"limit": 12}, "cpu": {"quota": 50000, "period": 100000}}"#,
    )
    .unwrap();
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
    assert_eq!(read("pids", "pids.max"), "12");
    assert_eq!(read("cpu", "cpu.cfs_quota_us"), "50000");
    // This host's blkio hierarchy has no weight file (no BFQ/CFQ): the
    // refusal names the file instead of failing obscurely.
    if !std::path::Path::new("/sys/fs/cgroup/blkio/blkio.weight").exists() {
        let e = root.rt(&["update", "--blkio-weight", "300", &id]);
        let err = String::from_utf8_lossy(&e.stderr);
        assert!(err.contains("blkio.weight is not available"), "{err}");
    }
    let e = root.rt(&["update", "--kernel-memory", "1m", &id]);
    assert!(String::from_utf8_lossy(&e.stderr).contains("--kernel-memory is not supported"));
    root.ok(&["kill", &id, "KILL"]);
    assert!(eventually(5, || root.status(&id) == "stopped"));
    let e = root.rt(&["update", "--memory", "1g", &id]);
    assert!(String::from_utf8_lossy(&e.stderr).contains("not running"));
    root.ok(&["delete", &id]);
}
