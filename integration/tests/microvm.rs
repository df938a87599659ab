//! The microVM backend, for real under TCG (or KVM where a probe boot
//! works): each test boots QEMU guests through `rt`, so timeouts are sized
//! for a loaded 2-core TCG host (a boot takes about 5 s there). The guest
//! kernel comes from integration/vm/install-guest (the test command runs it
//! first).

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use rt_integration::net::processes_naming;
use rt_testsupport::{
    eventually, guest_kernel, need_root, output_via_files, recv_with_fd, rt_bin, unique_id, Bundle,
    Root,
};
use serde_json::{json, Value};

fn assert_nothing_left(root: &Root, ids: &[&str]) {
    rt_integration::net::assert_root_clean(root, ids);
}

fn vm_bundle(script: &str) -> Bundle {
    Bundle::new(&["sh", "-c", script])
}

/// `rt create --isolation vm` of an idle workload, the guest's kernel
/// given `kernel_args` as well ($RT_VM_KERNEL_ARGS); its console log is
/// then in the container's state directory.
fn create_idle_vm(root: &Root, id: &str, kernel_args: &str) {
    let b = vm_bundle("exec sleep 1000");
    let out = output_via_files(
        root.cmd()
            .env("RT_VM_KERNEL_ARGS", kernel_args)
            .args(["create", "--isolation", "vm", "--bundle"])
            .arg(b.path())
            .arg(id),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The pid of the one QEMU below `root`'s containers.
fn qemu_pid(root: &Root) -> u32 {
    processes_naming(root.dir.path())
        .iter()
        .find(|p| p.contains("qemu-system"))
        .and_then(|p| p.split(':').next()?.parse().ok())
        .expect("no QEMU")
}

fn run_vm(root: &Root, b: &Bundle, id: &str) -> (i32, String, String) {
    let out = root.rt(&[
        "run",
        "--isolation",
        "vm",
        "--bundle",
        b.path().to_str().unwrap(),
        id,
    ]);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn run_prints_exits_and_sees_the_guest_kernel_and_volumes() {
    need_root!();
    let root = Root::new();
    let volume = tempfile::tempdir().unwrap();
    std::fs::write(volume.path().join("from-host"), "host data\n").unwrap();
    let ro = tempfile::tempdir().unwrap();
    std::fs::write(ro.path().join("f"), "ro data\n").unwrap();
    let mut b = vm_bundle(
        "uname -r; hostname; cat /data/from-host; echo guest data > /data/from-guest; \
         cat /ro/f; touch /ro/x 2>/dev/null && echo ro-writable; touch /root-file 2>/dev/null && echo root-writable; \
         echo err >&2; exit 3",
    );
    b.edit(|c| {
        c["hostname"] = json!("vmbox");
        c["root"]["readonly"] = json!(true);
        let mounts = c["mounts"].as_array_mut().unwrap();
        mounts.push(json!({"destination": "/data", "type": "bind",
            "source": volume.path(), "options": ["rbind", "rw"]}));
        mounts.push(json!({"destination": "/ro", "type": "bind",
            "source": ro.path(), "options": ["rbind", "ro"]}));
    });
    let id = unique_id("vmrun");
    let (code, out, err) = run_vm(&root, &b, &id);
    assert_eq!(code, 3, "{out}{err}");
    let kernel = guest_kernel();
    let host = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_ne!(kernel, host.trim());
    assert_eq!(
        out,
        format!("{kernel}\nvmbox\nhost data\nro data\n"),
        "{err}"
    );
    assert!(err.contains("err"), "{err}");
    assert_eq!(
        std::fs::read_to_string(volume.path().join("from-guest")).unwrap(),
        "guest data\n"
    );
    assert!(!ro.path().join("x").exists());
    assert_nothing_left(&root, &[&id]);
}

#[test]
fn lifecycle_exec_ps_pause_update_and_signals() {
    need_root!();
    let root = Root::new();
    let mut b = vm_bundle(
        "trap 'echo got TERM; exit 0' TERM; echo started; while true; do sleep 0.1; done",
    );
    b.edit(|c| c["process"]["env"] = json!(["PATH=/bin", "FROM_SPEC=1"]));
    let id = unique_id("vmlife");
    let files = tempfile::tempdir().unwrap();
    let pid_file = files.path().join("init.pid");
    let log = tempfile::NamedTempFile::new().unwrap();
    // rt create's stdio is the workload's: keep it in a file.
    let create = root
        .cmd()
        .args(["create", "--isolation", "vm", "--pid-file"])
        .arg(&pid_file)
        .args(["--bundle", b.path().to_str().unwrap(), &id])
        .stdin(Stdio::null())
        .stdout(log.reopen().unwrap())
        .stderr(log.reopen().unwrap())
        .status()
        .unwrap();
    assert!(
        create.success(),
        "{}",
        std::fs::read_to_string(log.path()).unwrap()
    );
    let state: Value = serde_json::from_str(&root.ok(&["state", &id])).unwrap();
    assert_eq!(state["status"], "created");
    let pid = state["pid"].as_i64().unwrap();
    assert_eq!(std::fs::read_to_string(&pid_file).unwrap(), pid.to_string());
    // The pid is rt's supervisor on the host, not QEMU.
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    assert!(comm.starts_with("rt"), "{comm}");
    // A streaming `rt events` (the shim keeps one per container, for OOM
    // events) holds no lock: start and every later operation go on beside
    // it. (It held the container's lock, and start waited for ever.)
    let mut events = root
        .cmd()
        .args(["events", "--interval", "3600s", &id])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let mut start = root
        .cmd()
        .args(["start", &id])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let started = loop {
        match start.try_wait().unwrap() {
            Some(st) => break st.success(),
            None if std::time::Instant::now() > deadline => {
                let _ = start.kill();
                let _ = start.wait();
                break false;
            }
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    let _ = events.kill();
    let _ = events.wait();
    assert!(
        started,
        "rt start behind a streaming rt events did not succeed"
    );
    assert_eq!(root.status(&id), "running");
    assert!(eventually(60, || std::fs::read_to_string(log.path())
        .unwrap()
        .contains("started")));

    // exec: attached, with env, cwd and user, its exit status.
    let out = root.rt(&[
        "exec",
        "--env",
        "X=y",
        "--cwd",
        "/tmp",
        "--user",
        "1000:1000",
        &id,
        "sh",
        "-c",
        "echo $X $FROM_SPEC $(pwd) $(id -u):$(id -g); exit 7",
    ]);
    assert_eq!(
        out.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "y 1 /tmp 1000:1000\n");
    // A missing executable fails exec with rt's (runc's) message.
    let out = root.rt(&["exec", &id, "/nonexistent"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("executable file not found"));
    // Detached, with a pid file: a host process stands for it.
    let exec_pid = files.path().join("exec.pid");
    root.ok(&[
        "exec",
        "-d",
        "--pid-file",
        exec_pid.to_str().unwrap(),
        &id,
        "sleep",
        "30",
    ]);
    let relay: i32 = std::fs::read_to_string(&exec_pid).unwrap().parse().unwrap();
    assert!(Path::new(&format!("/proc/{relay}")).exists());

    // ps lists the guest's processes.
    let ps: Vec<i64> = serde_json::from_str(&root.ok(&["ps", "--format", "json", &id])).unwrap();
    assert!(ps.len() >= 2, "{ps:?}");
    let table = root.ok(&["ps", &id]);
    assert!(table.contains("sleep 30"), "{table}");

    root.ok(&["pause", &id]);
    assert_eq!(root.status(&id), "paused");
    root.ok(&["resume", &id]);
    assert_eq!(root.status(&id), "running");

    // update reaches the guest's cgroup v2.
    root.ok(&["update", "--memory", "50m", &id]);
    let out = root.ok(&["exec", &id, "sh", "-c", "cat /sys/fs/cgroup/memory.max"]);
    assert_eq!(out.trim(), (50 << 20).to_string());

    // events --stats: the guest's cgroup v2 statistics.
    let ev: Value = serde_json::from_str(root.ok(&["events", "--stats", &id]).trim()).unwrap();
    assert_eq!(ev["type"], "stats", "{ev}");
    assert!(ev["data"]["pids"]["current"].as_u64().unwrap() >= 2, "{ev}");

    // kill --all reaches the exec'd sleep too; its relay ends.
    root.ok(&["kill", "--all", &id, "TERM"]);
    assert!(eventually(30, || root.status(&id) == "stopped"));
    assert!(eventually(10, || !Path::new(&format!("/proc/{relay}"))
        .exists()
        || std::fs::read_to_string(format!("/proc/{relay}/stat"))
            .is_ok_and(|s| s.contains(") Z"))));
    assert!(std::fs::read_to_string(log.path())
        .unwrap()
        .contains("got TERM"));
    root.ok(&["delete", &id]);
    assert_nothing_left(&root, &[&id]);
}

#[test]
fn exit_statuses_match_the_namespaces_backend() {
    need_root!();
    let root = Root::new();
    // TERM with no handler: 143; KILL: 137 (rt run's 128+N, as runc).
    // Without a pid namespace, so that the workload is no namespace's init
    // (which ignores signals it has no handler for).
    for (sig, want) in [("TERM", 143), ("KILL", 137)] {
        let mut b = vm_bundle("echo up; exec sleep 60");
        b.edit(|c| {
            c["linux"]["namespaces"]
                .as_array_mut()
                .unwrap()
                .retain(|n| n["type"] != "pid")
        });
        let id = unique_id("vmsig");
        let mut run = root
            .cmd()
            .args([
                "run",
                "--isolation",
                "vm",
                "--bundle",
                b.path().to_str().unwrap(),
                &id,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut first = [0u8; 3];
        run.stdout.as_mut().unwrap().read_exact(&mut first).unwrap();
        assert_eq!(&first, b"up\n");
        root.ok(&["kill", &id, sig]);
        let status = run.wait().unwrap();
        assert_eq!(status.code(), Some(want), "{sig}");
        assert_nothing_left(&root, &[&id]);
    }
}

#[test]
fn terminal_through_the_console_socket_follows_resizes() {
    need_root!();
    let root = Root::new();
    let mut b = vm_bundle("tty; stty size; read line; echo got $line; stty size");
    b.edit(|c| c["process"]["terminal"] = json!(true));
    let id = unique_id("vmtty");
    let sockets = tempfile::tempdir().unwrap();
    let sock_path = sockets.path().join("console.sock");
    let listener = UnixListener::bind(&sock_path).unwrap();
    let accept = std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        recv_with_fd(&conn).1
    });
    root.ok(&[
        "create",
        "--isolation",
        "vm",
        "--console-socket",
        sock_path.to_str().unwrap(),
        "--bundle",
        b.path().to_str().unwrap(),
        &id,
    ]);
    let master = accept.join().unwrap();
    rt_sys::set_window_size(std::os::fd::AsFd::as_fd(&master), 30, 90).unwrap();
    root.ok(&["start", &id]);
    let mut m = std::fs::File::from(master);
    let mut seen = String::new();
    let mut buf = [0u8; 256];
    let mut read_until = |m: &mut std::fs::File, seen: &mut String, what: &str| {
        while !seen.contains(what) {
            let n = m.read(&mut buf).unwrap();
            assert!(n > 0, "terminal closed before {what:?}: {seen:?}");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    };
    read_until(&mut m, &mut seen, "30 90");
    assert!(seen.contains("/dev/pts/0"), "{seen:?}");
    rt_sys::set_window_size(std::os::fd::AsFd::as_fd(&m), 40, 120).unwrap();
    // The resize travels host pty → supervisor (SIGWINCH) → guest pty.
    std::thread::sleep(Duration::from_secs(2));
    m.write_all(b"hello\r").unwrap();
    read_until(&mut m, &mut seen, "got hello");
    read_until(&mut m, &mut seen, "40 120");
    assert!(eventually(30, || root.status(&id) == "stopped"));
    root.ok(&["delete", &id]);
    assert_nothing_left(&root, &[&id]);
}

/// A change to a test's config.json.
type Edit = Box<dyn Fn(&mut Value)>;

#[test]
fn the_same_config_gives_the_same_output_on_both_backends() {
    need_root!();
    let root = Root::new();
    let cases: Vec<(&str, Edit)> = vec![
        ("echo $$ $HOME; id -u; cat /proc/self/status | grep -E '^(CapEff|NoNewPrivs|Seccomp):'; ls /sys/class/net",
            Box::new(|_c: &mut Value| {})),
        ("id -u -g; pwd; echo $GREETING; ulimit -n; test -w / || echo ro",
            Box::new(|c: &mut Value| {
                c["process"]["user"] = json!({"uid": 1000, "gid": 1000});
                c["process"]["cwd"] = json!("/tmp");
                c["process"]["env"] = json!(["PATH=/bin", "GREETING=hi"]);
                c["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "hard": 512, "soft": 256}]);
            })),
    ];
    for (script, edit) in cases {
        let mut b = vm_bundle(script);
        b.edit(|c| edit(c));
        let ns = root.rt(&[
            "run",
            "--bundle",
            b.path().to_str().unwrap(),
            &unique_id("same-ns"),
        ]);
        let id = unique_id("same-vm");
        let (code, vm_out, vm_err) = run_vm(&root, &b, &id);
        assert_eq!(ns.status.code(), Some(code), "{vm_err}");
        assert_eq!(
            String::from_utf8_lossy(&ns.stdout),
            vm_out,
            "{script}: {vm_err}"
        );
    }
    assert_nothing_left(&root, &[]);
}

#[test]
fn refusals_name_their_cause_and_leave_nothing() {
    need_root!();
    let root = Root::new();
    let b = vm_bundle("true");
    let bundle = b.path().to_str().unwrap();
    // Host networking (no network namespace).
    let mut host_net = vm_bundle("true");
    host_net.edit(|c| {
        c["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .retain(|n| n["type"] != "network")
    });
    let out = root.rt(&[
        "run",
        "--isolation",
        "vm",
        "--bundle",
        host_net.path().to_str().unwrap(),
        "hostnet",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("host networking"));
    // Unknown isolation.
    let out = root.rt(&["run", "--isolation", "krun", "--bundle", bundle, "krun"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("krun") && err.contains("not supported"),
        "{err}"
    );
    // rt-vm with an annotation that says otherwise.
    let links = tempfile::tempdir().unwrap();
    let rt_vm = links.path().join("rt-vm");
    std::os::unix::fs::symlink(rt_bin(), &rt_vm).unwrap();
    let mut annotated = vm_bundle("true");
    annotated.edit(|c| c["annotations"] = json!({"run.rt.isolation": "container"}));
    let out = Command::new(&rt_vm)
        .arg("--root")
        .arg(root.dir.path())
        .args([
            "run",
            "--bundle",
            annotated.path().to_str().unwrap(),
            "contra",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("contradicts") && err.contains("rt-vm"),
        "{err}"
    );
    // Options that cannot cross the VM boundary.
    for (flag, id) in [("--preserve-fds=1", "pfds"), ("--no-pivot", "nopivot")] {
        let out = root.rt(&["create", "--isolation", "vm", flag, "--bundle", bundle, id]);
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(flag.trim_end_matches("=1")) && err.contains("vm backend"),
            "{err}"
        );
    }
    // No guest kernel installed.
    let empty = tempfile::tempdir().unwrap();
    let out = root
        .cmd()
        .env("RT_VM_DIR", empty.path())
        .args(["run", "--isolation", "vm", "--bundle", bundle, "nokernel"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no guest kernel") && err.contains("install-guest"),
        "{err}"
    );
    assert_nothing_left(
        &root,
        &["hostnet", "krun", "contra", "pfds", "nopivot", "nokernel"],
    );
}

/// An assets directory whose "kernel" is not one (its modules are
/// stand-ins too): the image builds, QEMU refuses to boot it.
fn broken_assets() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let pkg = d.path().join("kernel/linux-image-0-broken");
    std::fs::create_dir_all(pkg.join("boot")).unwrap();
    std::fs::write(pkg.join("boot/vmlinuz-0.0.0-broken"), b"not a kernel").unwrap();
    let modules = pkg.join("lib/modules/0.0.0-broken/kernel");
    std::fs::create_dir_all(&modules).unwrap();
    for m in rt_vm::guest::MODULES {
        std::fs::write(
            modules.join(format!("{m}.ko")),
            format!("\0depends=\0name={m}\0"),
        )
        .unwrap();
    }
    d
}

#[test]
fn failed_boots_and_killed_processes_leave_nothing() {
    need_root!();
    let root = Root::new();
    let b = vm_bundle("echo up; sleep 60");
    let bundle = b.path().to_str().unwrap();

    // A kernel that does not boot (the modules it lacks fail the image).
    let broken = broken_assets();
    let out = root
        .cmd()
        .env("RT_VM_DIR", broken.path())
        .args(["run", "--isolation", "vm", "--bundle", bundle, "broken"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("did not boot") && err.contains("QEMU exited"),
        "{err}"
    );

    // An agent that does not answer in time. The timeout is 0 s: rt's
    // kernel now boots to its agent in under a second even under TCG, so a
    // 1 s timeout was met on a quiet host (the test then ran the workload
    // and failed).
    let out = root
        .cmd()
        .env("RT_VM_BOOT_TIMEOUT", "0")
        .args(["run", "--isolation", "vm", "--bundle", bundle, "slow"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("did not boot")
            && (err.contains("did not answer within 0 s")
                || err.contains("opened no agent socket")),
        "{err}"
    );
    assert_nothing_left(&root, &["broken", "slow"]);

    // SIGKILL of rt create while the VM boots, then delete --force.
    let mut create = root
        .cmd()
        .args([
            "create",
            "--isolation",
            "vm",
            "--bundle",
            bundle,
            "killed-create",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(eventually(30, || processes_naming(root.dir.path())
        .iter()
        .any(|p| p.contains("qemu-system"))));
    create.kill().unwrap();
    create.wait().unwrap();
    root.ok(&["delete", "--force", "killed-create"]);
    assert_nothing_left(&root, &["killed-create"]);

    // SIGKILL of the supervisor of a running VM: QEMU goes with it.
    let id = "killed-supervisor";
    root.ok(&["run", "-d", "--isolation", "vm", "--bundle", bundle, id]);
    let state: Value = serde_json::from_str(&root.ok(&["state", id])).unwrap();
    let pid = state["pid"].as_i64().unwrap() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(eventually(30, || root.status(id) == "stopped"));
    assert!(eventually(10, || !processes_naming(root.dir.path())
        .iter()
        .any(|p| p.contains("qemu-system"))));
    root.ok(&["delete", id]);
    assert_nothing_left(&root, &[id]);
}

/// An OOM kill inside the guest reaches a streaming `rt events` on the
/// host as an `oom` event (the shim's TaskOOM for VM containers comes
/// from it), and `events --stats` counts it.
#[test]
fn an_oom_kill_in_the_guest_reaches_a_streaming_rt_events() {
    need_root!();
    let root = Root::new();
    let mut b = vm_bundle("echo started; while true; do sleep 0.2; done");
    b.edit(|c| c["linux"]["resources"] = json!({"memory": {"limit": 33554432}}));
    let id = unique_id("vmoom");
    let log = tempfile::NamedTempFile::new().unwrap();
    let created = root
        .cmd()
        .args(["run", "-d", "--isolation", "vm", "--bundle"])
        .arg(b.path())
        .arg(&id)
        .stdin(Stdio::null())
        .stdout(log.reopen().unwrap())
        .stderr(log.reopen().unwrap())
        .status()
        .unwrap();
    assert!(
        created.success(),
        "{}",
        std::fs::read_to_string(log.path()).unwrap()
    );
    let events_log = tempfile::NamedTempFile::new().unwrap();
    let mut events = root
        .cmd()
        .args(["events", "--interval", "3600s", &id])
        .stdout(events_log.reopen().unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = || std::fs::read_to_string(events_log.path()).unwrap_or_default();
    // Its first line (statistics) says the OOM watch is in place.
    assert!(eventually(60, || !lines().is_empty()), "no first line");
    let out = root.rt(&["exec", &id, "sh", "-c", "tail /dev/zero"]);
    assert_eq!(
        out.status.code(),
        Some(137),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen = eventually(30, || lines().contains("\"type\":\"oom\""));
    let _ = events.kill();
    let _ = events.wait();
    assert!(seen, "no oom event: {}", lines());
    let stats: Value = serde_json::from_str(&root.ok(&["events", "--stats", &id])).unwrap();
    assert!(
        stats["data"]["memory"]["raw"]["oom_kill"].as_u64() >= Some(1),
        "{stats}"
    );
    root.ok(&["delete", "--force", &id]);
    assert_nothing_left(&root, &[&id]);
}

/// rt's own guest kernel under TCG is told the local APIC timer's
/// frequency (`lapic_timer_khz`, a patch of rt's) and skips the timer's
/// calibration, and one vCPU keeps its `lock` prefixes (`noreplace-smp`):
/// together about 0.18 s of every boot here (docs/microvm.md).
#[test]
fn rt_s_kernel_under_tcg_boots_without_calibrating_the_apic_timer() {
    need_root!();
    let assets = rt_vm::guest::dir();
    let kernel = rt_vm::guest::kernel(&assets).expect("no guest kernel");
    if !rt_vm::qemu::is_own_kernel(&kernel.vmlinuz)
        || rt_vm::qemu::cached_accel(&kernel, &assets) == Some(rt_vm::qemu::Accel::Kvm)
    {
        eprintln!("skipped: the APIC timer is calibrated only by rt's own kernel under TCG");
        return;
    }
    let root = Root::new();
    let id = unique_id("vmapic");
    create_idle_vm(&root, &id, "loglevel=7 apic=verbose");
    let console = std::fs::read_to_string(root.dir.path().join(&id).join("console.log")).unwrap();
    root.ok(&["delete", "--force", &id]);
    // The timer's period is counted per jiffy.
    let config = kernel
        .vmlinuz
        .with_file_name(format!("config-{}", kernel.version));
    let hz: u32 = std::fs::read_to_string(&config)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("CONFIG_HZ="))
        .expect("CONFIG_HZ")
        .parse()
        .unwrap();
    let period = rt_vm::qemu::TCG_APIC_KHZ * (1000 / hz);
    assert!(
        console.contains(&format!("lapic timer already calibrated {period}")),
        "{console}"
    );
    assert!(!console.contains("calibrating APIC timer"), "{console}");
    assert!(console.contains("noreplace-smp"), "{console}");
    assert_nothing_left(&root, &[&id]);
}

/// Guest memory the guest frees goes back to the host: 48 MB written to
/// a tmpfs in the guest and removed leave QEMU's shared memory (the guest
/// RAM memfd) within seconds, through the virtio-balloon's free page
/// reporting (docs/microvm.md). Without it the pages stayed with QEMU.
#[test]
fn pages_the_guest_frees_go_back_to_the_host() {
    need_root!();
    let root = Root::new();
    let mut b = vm_bundle("echo up; exec sleep 1000");
    b.edit(|c| c["annotations"] = json!({"run.rt.vm.memory": "256"}));
    let id = unique_id("vmfree");
    root.ok(&[
        "run",
        "-d",
        "--isolation",
        "vm",
        "--bundle",
        b.path().to_str().unwrap(),
        &id,
    ]);
    let qemu = qemu_pid(&root);
    let shmem_kib = || -> u64 {
        std::fs::read_to_string(format!("/proc/{qemu}/status"))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("RssShmem:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    };
    let sh = |script: &str| {
        let out = root.rt(&["exec", &id, "sh", "-c", script]);
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // Measured while the file holds its pages, then freed.
    sh("dd if=/dev/zero of=/dev/shm/f bs=1M count=48 2>/dev/null");
    let peak = shmem_kib();
    sh("rm /dev/shm/f");
    let returned = eventually(30, || shmem_kib() + 32 * 1024 < peak);
    let now = shmem_kib();
    root.ok(&["delete", "--force", &id]);
    assert!(
        returned,
        "QEMU's guest memory: {peak} KiB after the write, {now} KiB 30 s later"
    );
    assert_nothing_left(&root, &[&id]);
}

/// A VM with the shared rootfs runs rt from the read-only tools disk
/// (found by its serial), not from its initramfs: only the pages rt runs
/// are read into guest memory and QEMU maps no copy of it
/// (docs/microvm.md).
#[test]
fn a_shared_rootfs_vm_runs_rt_from_the_read_only_tools_disk() {
    need_root!();
    let root = Root::new();
    let id = unique_id("vmtools");
    create_idle_vm(&root, &id, "rt_agent_trace=1");
    let qemu = processes_naming(root.dir.path())
        .into_iter()
        .find(|p| p.contains("qemu-system"))
        .expect("no QEMU");
    let console = std::fs::read_to_string(root.dir.path().join(&id).join("console.log")).unwrap();
    // The guest's rt works from there.
    let ps = root.rt(&["ps", &id]);
    root.ok(&["delete", "--force", &id]);
    assert!(
        qemu.contains("readonly=on") && qemu.contains("serial=rt-tools"),
        "{qemu}"
    );
    assert!(console.contains("rt from the tools disk"), "{console}");
    assert!(
        ps.status.success(),
        "{}",
        String::from_utf8_lossy(&ps.stderr)
    );
    assert_nothing_left(&root, &[&id]);
}

/// runc makes `--root` absolute; rt handed a relative one to virtiofsd and
/// QEMU, which resolved it from another directory ("Failed to connect to
/// 'st/ID/fs.sock'") and the VM never booted.
#[test]
fn a_relative_state_root_serves_a_vm_container() {
    need_root!();
    let root = Root::new();
    let b = vm_bundle("echo from the guest");
    let id = unique_id("vmrel");
    let (parent, name) = (
        root.dir.path().parent().unwrap(),
        root.dir.path().file_name().unwrap(),
    );
    let out = output_via_files(
        Command::new(rt_bin())
            .current_dir(parent)
            .arg("--root")
            .arg(name)
            .args(["run", "--isolation", "vm", "--bundle"])
            .arg(b.path())
            .arg(&id),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from the guest\n");
    assert_nothing_left(&root, &[&id]);
}

/// QEMU keeps the kernel image and initramfs it booted mapped, for a reset
/// that `-no-reboot` rules out; the supervisor has the kernel reclaim those
/// pages once the agent answers (13.7 MB and 1.7 MB of every VM's RSS
/// before). Pages another VM maps at the same moment stay (the kernel
/// reclaims only pages one process maps), so the test counts the pages
/// this QEMU holds alone.
#[test]
fn qemu_holds_no_resident_copy_of_the_kernel_it_booted() {
    need_root!();
    let root = Root::new();
    let id = unique_id("vmimg");
    create_idle_vm(&root, &id, "");
    let qemu = qemu_pid(&root);
    let smaps = std::fs::read_to_string(format!("/proc/{qemu}/smaps")).unwrap();
    let mut image = false;
    let mut private_kib = 0;
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or("");
        if !first.ends_with(':') {
            // A mapping's header: range perms offset dev inode path.
            let path = words.nth(4).unwrap_or("");
            image = path.contains("/boot/vmlinu") || path.ends_with(".cpio");
        } else if image && first.starts_with("Private_") {
            private_kib += words.next().and_then(|k| k.parse::<u64>().ok()).unwrap();
        }
    }
    let echo = root.rt(&["exec", &id, "echo", "still running"]);
    root.ok(&["delete", "--force", &id]);
    assert!(
        smaps.contains("/boot/vmlinu"),
        "QEMU maps no kernel image:\n{smaps}"
    );
    assert!(
        private_kib < 1024,
        "QEMU's boot images: {private_kib} KiB resident in QEMU alone"
    );
    assert_eq!(String::from_utf8_lossy(&echo.stdout), "still running\n");
    assert_nothing_left(&root, &[&id]);
}

/// rt runs the QEMU install-guest built (when it could: it needs a deb-src
/// index), and under TCG gives it a bounded translation buffer: QEMU's
/// default of 1 GiB kept every block the boot translated, 51 MB of an idle
/// container's memory (docs/microvm.md).
#[test]
fn vm_containers_run_rt_s_own_qemu_with_a_bounded_translation_buffer() {
    need_root!();
    let root = Root::new();
    let id = unique_id("vmqemu");
    create_idle_vm(&root, &id, "");
    let qemu = qemu_pid(&root);
    let exe = std::fs::read_link(format!("/proc/{qemu}/exe")).unwrap();
    let cmdline = std::fs::read(format!("/proc/{qemu}/cmdline")).unwrap();
    let smaps = std::fs::read_to_string(format!("/proc/{qemu}/smaps")).unwrap();
    root.ok(&["delete", "--force", &id]);
    match rt_vm::qemu::own_qemu(&rt_vm::guest::dir()) {
        Some(own) => assert_eq!(exe, own, "VM containers run another QEMU"),
        None => eprintln!("skipped: rt's own QEMU is not installed (integration/vm/install-guest needs a deb-src index)"),
    }
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    if !args.iter().any(|a| a.starts_with("tcg")) {
        eprintln!("skipped: the guest runs under KVM, which translates nothing");
        return;
    }
    // The buffer is QEMU's one anonymous mapping that is writable and
    // executable.
    let buffer_kib: Vec<u64> = smaps
        .lines()
        .filter(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            w.len() == 5 && w[1] == "rwxp" && w[4] == "0"
        })
        .filter_map(|l| {
            let (from, to) = l.split_whitespace().next()?.split_once('-')?;
            let span = u64::from_str_radix(to, 16).ok()? - u64::from_str_radix(from, 16).ok()?;
            Some(span / 1024)
        })
        .collect();
    assert_eq!(buffer_kib.len(), 1, "QEMU's rwx mappings: {buffer_kib:?}");
    assert!(
        buffer_kib[0] <= u64::from(rt_vm::qemu::CONTAINER_TB_MIB) * 1024,
        "QEMU's translation buffer spans {} KiB",
        buffer_kib[0]
    );
    assert_nothing_left(&root, &[&id]);
}
