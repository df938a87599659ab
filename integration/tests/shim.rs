//! containerd-shim-rt-v2 under a containerd of the test's own, driven with
//! `ctr --runtime io.containerd.rt.v2`, for namespace containers and (with
//! a runtime config naming rt-vm) microVM containers: output and exit
//! codes, stdin and `CloseIO`, `-t` and `ResizePty`, `task exec` (attached, with a tty, exit codes), `task
//! kill` (TERM, KILL, `--all`), pause and resume, `task ps`, `task
//! metrics`, delete; then the shim SIGKILLed and containerd restarted:
//! no orphan, and `ctr task ls` tells the truth.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use containerd_shim_protos::api::CloseIORequest;
use containerd_shim_protos::ttrpc::{self, Client};
use containerd_shim_protos::TaskClient;

use rt_integration::containerd::{Containerd, BUSYBOX_CTR};
use rt_integration::net::processes_naming;
use rt_integration::podman::text;
use rt_testsupport::{eventually, output_via_files, root_or_skip, rt_bin, unique_id};

const RUNTIME: &str = "io.containerd.rt.v2";

/// The runtime flags: the shim, and for a VM a runtime config naming
/// `rt-vm` (a link to rt beside it).
struct Isolation {
    flags: Vec<String>,
    _dir: Option<tempfile::TempDir>,
}

impl Isolation {
    fn namespaces() -> Isolation {
        Isolation {
            flags: vec!["--runtime".into(), RUNTIME.into()],
            _dir: None,
        }
    }

    fn vm() -> Isolation {
        let dir = tempfile::Builder::new()
            .prefix("rt-shim-vm-")
            .tempdir()
            .unwrap();
        let link = dir.path().join("rt-vm");
        std::os::unix::fs::symlink(rt_bin(), &link).unwrap();
        let config = dir.path().join("rt-vm.json");
        std::fs::write(
            &config,
            serde_json::json!({"binary_name": link}).to_string(),
        )
        .unwrap();
        Isolation {
            flags: vec![
                "--runtime".into(),
                RUNTIME.into(),
                "--runtime-config-path".into(),
                config.display().to_string(),
            ],
            _dir: Some(dir),
        }
    }
}

fn run(
    c: &Containerd,
    iso: &Isolation,
    mode: &[&str],
    id: &str,
    cmd: &[&str],
) -> std::process::Output {
    let mut args = vec!["run", "--snapshotter", "native"];
    args.extend_from_slice(mode);
    args.extend(iso.flags.iter().map(String::as_str));
    args.extend([BUSYBOX_CTR, id]);
    args.extend_from_slice(cmd);
    c.ctr(&args)
}

/// The ctr command line, as `script` runs it (for a terminal).
fn ctr_line(c: &Containerd, args: &[&str]) -> String {
    let mut line = format!(
        "ctr --address {} --namespace {}",
        c.dir.path().join("containerd.sock").display(),
        c.ns
    );
    for a in args {
        line.push_str(&format!(" '{a}'"));
    }
    line
}

/// `ctr …` under `script`, which gives it a terminal.
fn with_tty(line: &str) -> std::process::Output {
    output_via_files(Command::new("script").args(["-qec", line, "/dev/null"]))
}

fn status(c: &Containerd, id: &str) -> String {
    c.task_status(id)
}

fn remove(c: &Containerd, id: &str) {
    let out = c.ctr(&["task", "delete", id]);
    assert!(out.status.success(), "task delete {id}: {}", text(&out));
    let out = c.ctr(&["container", "delete", id]);
    assert!(
        out.status.success(),
        "container delete {id}: {}",
        text(&out)
    );
}

/// The shim serving container `id`.
fn shim_pid(id: &str) -> Option<i32> {
    processes_naming(Path::new(&format!("-id {id} ")))
        .iter()
        .chain(processes_naming(Path::new(&format!("-id {id}"))).iter())
        .find(|p| p.contains("containerd-shim-rt-v2"))
        .and_then(|p| p.split(':').next()?.parse().ok())
}

/// The shim's task API (ttrpc) for task `id`, at the address it wrote
/// into the bundle: what containerd calls.
fn task_api(c: &Containerd, id: &str) -> TaskClient {
    let bundle = c
        .dir
        .path()
        .join("state/io.containerd.runtime.v2.task")
        .join(&c.ns)
        .join(id);
    let address = std::fs::read_to_string(bundle.join("address")).expect("the shim's address");
    TaskClient::new(Client::connect(address.trim()).expect("connecting to the shim"))
}

/// `ctr` on `c`'s socket and namespace, stdio left to the caller.
fn ctr_cmd(c: &Containerd) -> Command {
    let mut cmd = Command::new("ctr");
    cmd.arg("--address")
        .arg(c.dir.path().join("containerd.sock"))
        .args(["--namespace", &c.ns]);
    cmd
}

/// `child`'s exit status if it exits within `secs`; otherwise it is killed
/// (and reaped) and the answer is None.
fn exit_within(child: &mut std::process::Child, secs: u64) -> Option<std::process::ExitStatus> {
    let exited = eventually(secs, || matches!(child.try_wait(), Ok(Some(_))));
    if !exited {
        let _ = child.kill();
    }
    let status = child.wait().ok();
    status.filter(|_| exited)
}

/// stdin: data from ctr's stdin reaches the process, and `CloseIO` (sent
/// as containerd sends it for `docker run -i` or a CRI attach with
/// stdin_once at EOF) ends its stdin; `-t`: the window size ctr sends
/// with `ResizePty` is the container's terminal's.
fn stdio(c: &Containerd, iso: &Isolation) {
    let id = unique_id("shim-in");
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("out");
    let mut args = vec!["run", "--rm", "--snapshotter", "native"];
    args.extend(iso.flags.iter().map(String::as_str));
    args.extend([
        BUSYBOX_CTR,
        id.as_str(),
        "sh",
        "-c",
        "cat; echo stdin ended",
    ]);
    let (r, w) = nix::unistd::pipe().unwrap();
    let mut w = std::fs::File::from(w);
    let mut ctr = ctr_cmd(c)
        .args(&args)
        .stdin(r)
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(dir.path().join("err")).unwrap())
        .spawn()
        .unwrap();
    w.write_all(b"through the shim's stdin\n").unwrap();
    let output = || std::fs::read_to_string(&out_path).unwrap_or_default();
    assert!(
        eventually(60, || output().contains("through the shim's stdin")),
        "stdin never reached the process: {:?}\n{}",
        output(),
        c.log()
    );
    // ctr keeps its end open (it never sends CloseIO): only CloseIO ends
    // the process's stdin.
    let mut req = CloseIORequest::new();
    req.id = id.clone();
    req.stdin = true;
    task_api(c, &id)
        .close_io(ttrpc::context::with_timeout(10_000_000_000), &req)
        .expect("CloseIO");
    let status = exit_within(&mut ctr, 60);
    assert!(
        status.is_some(),
        "CloseIO did not end stdin: {:?}",
        output()
    );
    assert!(status.unwrap().success(), "{status:?}: {:?}", output());
    assert!(output().ends_with("stdin ended\n"), "{:?}", output());
    drop(w);

    // A short stdin that ctr has read to its end (and closed its side of
    // the fifo) before the process reads: the bytes are still delivered.
    let id = unique_id("shim-in2");
    let input = dir.path().join("in");
    std::fs::write(&input, "a short stdin\n").unwrap();
    let mut args = vec!["run", "--rm", "--snapshotter", "native"];
    args.extend(iso.flags.iter().map(String::as_str));
    args.extend([BUSYBOX_CTR, id.as_str(), "sh", "-c", "read x; echo got: $x"]);
    let out_path2 = dir.path().join("out2");
    let mut ctr2 = ctr_cmd(c)
        .args(&args)
        .stdin(std::fs::File::open(&input).unwrap())
        .stdout(std::fs::File::create(&out_path2).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let exited = exit_within(&mut ctr2, 60).is_some();
    let out2 = std::fs::read_to_string(&out_path2).unwrap_or_default();
    assert!(exited && out2.contains("got: a short stdin"), "{out2:?}");

    // ResizePty: ctr sends its terminal's size (script's pty, sized by
    // stty) once the task started.
    let id = unique_id("shim-sz");
    let wait_size = "for i in $(seq 150); do [ \"$(stty size)\" = \"45 123\" ] && break; sleep 0.2; done; echo size: $(stty size)";
    let mut args = vec!["run", "--rm", "-t", "--snapshotter", "native"];
    args.extend(iso.flags.iter().map(String::as_str));
    args.extend([BUSYBOX_CTR, id.as_str(), "sh", "-c", wait_size]);
    let line = format!("stty rows 45 cols 123; {}", ctr_line(c, &args));
    let out = with_tty(&line);
    assert!(text(&out).contains("size: 45 123"), "{}", text(&out));
}

fn lifecycle(iso: &Isolation, vm: bool) {
    let c = Containerd::with_busybox();
    stdio(&c, iso);
    // Output and exit code.
    let id = unique_id("shim");
    let out = run(
        &c,
        iso,
        &["--rm"],
        &id,
        &["sh", "-c", "echo hi from the shim; uname -r; exit 3"],
    );
    assert_eq!(out.status.code(), Some(3), "{}\n{}", text(&out), c.log());
    let t = text(&out);
    assert!(t.contains("hi from the shim"), "{t}");
    let host_kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_eq!(!t.contains(host_kernel.trim()), vm, "{t}");

    // -t: the shim's pty copy.
    let id = unique_id("shim-t");
    let mut args = vec!["run", "--rm", "-t", "--snapshotter", "native"];
    args.extend(iso.flags.iter().map(String::as_str));
    args.extend([BUSYBOX_CTR, id.as_str(), "sh", "-c", "tty; exit 5"]);
    let out = with_tty(&ctr_line(&c, &args));
    assert!(
        text(&out).contains("/dev/pts/"),
        "{}\n{}",
        text(&out),
        c.log()
    );
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));

    // A detached task that exits 143 on TERM.
    let id = unique_id("shim-d");
    let script = "trap 'exit 143' TERM; while true; do sleep 1; done";
    let out = run(&c, iso, &["-d"], &id, &["sh", "-c", script]);
    assert!(out.status.success(), "{}\n{}", text(&out), c.log());
    assert!(
        eventually(30, || status(&c, &id) == "RUNNING"),
        "{}",
        status(&c, &id)
    );
    let out = c.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        &id,
        "sh",
        "-c",
        "echo from-exec; exit 2",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("from-exec"), "{}", text(&out));
    let out = with_tty(&ctr_line(
        &c,
        &[
            "task",
            "exec",
            "-t",
            "--exec-id",
            "e2",
            &id,
            "sh",
            "-c",
            "tty; exit 4",
        ],
    ));
    assert!(text(&out).contains("/dev/pts/"), "{}", text(&out));
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    let out = c.ctr(&["task", "pause", &id]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(status(&c, &id), "PAUSED");
    let out = c.ctr(&["task", "resume", &id]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(status(&c, &id), "RUNNING");
    let out = c.ctr(&["task", "ps", &id]);
    assert!(out.status.success(), "{}", text(&out));
    let pids = String::from_utf8_lossy(&out.stdout).lines().skip(1).count();
    assert!(pids >= 1, "{}", text(&out));
    let out = c.ctr(&["task", "metrics", "--format", "json", &id]);
    assert!(out.status.success(), "{}", text(&out));
    let m = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(m.contains("pids") && m.contains("memory"), "{m}");
    let out = c.ctr(&["task", "kill", &id]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        eventually(30, || status(&c, &id) == "STOPPED"),
        "{}",
        status(&c, &id)
    );
    remove(&c, &id);

    // kill --all with KILL.
    let id = unique_id("shim-all");
    let out = run(
        &c,
        iso,
        &["-d"],
        &id,
        &["sh", "-c", "sleep 1000 & sleep 1000"],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(eventually(30, || status(&c, &id) == "RUNNING"));
    let out = c.ctr(&["task", "kill", "--all", "-s", "KILL", &id]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        eventually(30, || status(&c, &id) == "STOPPED"),
        "{}",
        status(&c, &id)
    );
    remove(&c, &id);
    let ns = c.ns.clone();
    drop(c);
    assert!(
        eventually(10, || processes_naming(Path::new("containerd-shim-rt-v2"))
            .iter()
            .all(|p| !p.contains(&ns))),
        "shims left"
    );
}

#[test]
fn ctr_runs_namespace_containers_through_the_shim() {
    if !root_or_skip("ctr_runs_namespace_containers_through_the_shim") {
        return;
    }
    lifecycle(&Isolation::namespaces(), false);
}

#[test]
fn ctr_runs_vm_containers_through_the_shim() {
    if !root_or_skip("ctr_runs_vm_containers_through_the_shim") {
        return;
    }
    lifecycle(&Isolation::vm(), true);
}

#[test]
fn a_killed_shim_and_a_restarted_containerd_leave_no_orphan() {
    if !root_or_skip("a_killed_shim_and_a_restarted_containerd_leave_no_orphan") {
        return;
    }
    let mut c = Containerd::with_busybox();
    let iso = Isolation::namespaces();
    // A task that ends while containerd is down: the shim keeps its exit,
    // and containerd, reconnecting, sees it stopped.
    let id = unique_id("shim-exit");
    let out = run(&c, &iso, &["-d"], &id, &["sh", "-c", "sleep 2; exit 7"]);
    assert!(out.status.success(), "{}", text(&out));
    c.restart_after(std::time::Duration::from_secs(4));
    assert!(
        eventually(30, || status(&c, &id) == "STOPPED"),
        "after the restart: {:?}",
        status(&c, &id)
    );
    remove(&c, &id);

    let id = unique_id("shim-crash");
    let out = run(&c, &iso, &["-d"], &id, &["sleep", "1000"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(eventually(30, || status(&c, &id) == "RUNNING"));
    let out = c.ctr(&["task", "ls"]);
    let init: i32 = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.starts_with(&id))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .expect("the task's pid");
    let shim = shim_pid(&id).expect("the shim's pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shim),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    c.restart();
    // containerd runs the shim's `delete` for the dead shim: rt deletes
    // the container, its init goes.
    let gone = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.contains(") Z "))
            .unwrap_or(true)
    };
    assert!(
        eventually(60, || gone(init)),
        "init {init} outlived its shim"
    );
    assert!(
        eventually(30, || matches!(status(&c, &id).as_str(), "" | "STOPPED")),
        "ctr task ls: {}",
        status(&c, &id)
    );
    let _ = c.ctr(&["task", "delete", &id]);
    let out = c.ctr(&["container", "delete", &id]);
    assert!(out.status.success(), "{}", text(&out));
    let root = PathBuf::from("/run/containerd/rt").join(&c.ns);
    let left: Vec<_> = std::fs::read_dir(&root)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "rt state left: {left:?}");
}

/// The isolation from the container's annotation, with the default rt:
/// `run.rt.isolation=vm` puts it in a VM.
#[test]
fn the_isolation_annotation_selects_a_vm_under_the_default_rt() {
    if !root_or_skip("the_isolation_annotation_selects_a_vm_under_the_default_rt") {
        return;
    }
    let c = Containerd::with_busybox();
    let iso = Isolation::namespaces();
    let id = unique_id("shim-ann");
    let out = run(
        &c,
        &iso,
        &["--rm", "--annotation", "run.rt.isolation=vm"],
        &id,
        &["sh", "-c", "uname -r; exit 6"],
    );
    rt_testsupport::assert_guest_uname(&out, 6);
}

/// An OOM kill in the container reaches containerd as a TaskOOM event
/// (the shim's `rt events` of the container reports it).
#[test]
fn an_oom_kill_is_published_as_task_oom() {
    if !root_or_skip("an_oom_kill_is_published_as_task_oom") {
        return;
    }
    let c = Containerd::with_busybox();
    let events_log = c.dir.path().join("events.log");
    let mut events = Command::new("ctr")
        .arg("--address")
        .arg(c.dir.path().join("containerd.sock"))
        .args(["events"])
        .stdout(std::fs::File::create(&events_log).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let iso = Isolation::namespaces();
    let id = unique_id("shim-oom");
    // tail buffers /dev/zero's one endless line until the limit is hit.
    let out = run(
        &c,
        &iso,
        &["--rm", "--memory-limit", "33554432"],
        &id,
        &["tail", "/dev/zero"],
    );
    assert_eq!(out.status.code(), Some(137), "{}", text(&out));
    let seen = eventually(10, || {
        std::fs::read_to_string(&events_log)
            .unwrap_or_default()
            .lines()
            .any(|l| l.contains("/tasks/oom") && l.contains(&id))
    });
    let _ = events.kill();
    let _ = events.wait();
    assert!(
        seen,
        "no /tasks/oom for {id}: {}",
        std::fs::read_to_string(&events_log).unwrap_or_default()
    );
}

/// A `file://` log URI (`ctr run --log-uri`) gets the output; another
/// scheme (a logging binary) is refused by name.
#[test]
fn a_file_log_uri_gets_the_output_and_other_schemes_are_refused() {
    if !root_or_skip("a_file_log_uri_gets_the_output_and_other_schemes_are_refused") {
        return;
    }
    let c = Containerd::with_busybox();
    let iso = Isolation::namespaces();
    let log = c.dir.path().join("task.log");
    let uri = format!("file://{}", log.display());
    let id = unique_id("shim-log");
    let out = run(
        &c,
        &iso,
        &["--rm", "--log-uri", &uri],
        &id,
        &["sh", "-c", "echo to the log; exit 4"],
    );
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "to the log\n");
    let id = unique_id("shim-bin");
    let out = run(
        &c,
        &iso,
        &["--rm", "--log-uri", "binary:///usr/bin/logger"],
        &id,
        &["true"],
    );
    assert!(!out.status.success());
    assert!(
        text(&out).contains("only file:// is supported"),
        "{}",
        text(&out)
    );
}
