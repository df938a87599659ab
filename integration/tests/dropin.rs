//! rt as a drop-in for runc: podman (through conmon) and containerd (through
//! its runc shim), both on this machine, as root, with throwaway state.

use std::path::{Path, PathBuf};
use std::process::Command;

use rt_integration::containerd::Containerd;
use rt_integration::podman::{text, Manager, Podman};
use rt_testsupport::{assert_guest_uname, eventually, output_via_files, root_or_skip, rt_bin};

/// A directory with `rt-vm`, a link to rt: rt under the name whose
/// containers default to the microVM backend.
fn rt_vm_link() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new().prefix("rt-vm-").tempdir().unwrap();
    let link = dir.path().join("rt-vm");
    std::os::unix::fs::symlink(rt_bin(), &link).unwrap();
    (dir, link)
}

#[test]
fn podman_runs_with_rt() {
    if !root_or_skip("podman_runs_with_rt") {
        return;
    }
    let p = Podman::with_busybox_on(rt_bin(), Manager::Cgroupfs);
    let out = p.run(&[
        "run",
        "--rm",
        "--network",
        "none",
        "localhost/rt-busybox:latest",
        "echo",
        "hi",
    ]);
    assert!(out.status.success(), "podman run: {}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");
    // The exit code and a missing command travel through conmon.
    let out = p.run(&[
        "run",
        "--rm",
        "--network",
        "none",
        "localhost/rt-busybox:latest",
        "sh",
        "-c",
        "exit 5",
    ]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    let out = p.run(&[
        "run",
        "--rm",
        "--network",
        "none",
        "localhost/rt-busybox:latest",
        "no-such-command",
    ]);
    assert_eq!(out.status.code(), Some(127), "{}", text(&out));
    // A detached container: stop (kill, then delete) and rm.
    let out = p.run(&[
        "run",
        "-d",
        "--name",
        "rt-bg",
        "--network",
        "none",
        "localhost/rt-busybox:latest",
        "sleep",
        "1000",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let out = p.run(&["inspect", "--format", "{{.State.Status}}", "rt-bg"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "running");
    let out = p.run(&["stop", "-t", "1", "rt-bg"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = p.run(&["rm", "rt-bg"]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn containerd_runc_shim_runs_rt() {
    if !root_or_skip("containerd_runc_shim_runs_rt") {
        return;
    }
    let c = Containerd::with_busybox();
    let id = format!("rt-ctr-{}", std::process::id());
    let out = c.run_busybox(
        "--rm",
        &id,
        &[
            "sh",
            "-c",
            "echo hi from containerd; cat /proc/self/cgroup | grep pids",
        ],
    );
    let t = text(&out);
    assert!(
        out.status.success(),
        "ctr run: {t}\n{}",
        std::fs::read_to_string(c.dir.path().join("containerd.log")).unwrap_or_default()
    );
    assert!(t.contains("hi from containerd"), "{t}");
    // The init was placed in the cgroup containerd asked for (ctr's default
    // spec has no cgroup namespace, so the path shows in full).
    assert!(t.contains(&format!("pids:/{}/{id}\n", c.ns)), "{t}");
    // A fresh id: containerd may still be running the shim's deferred
    // `delete --force` of the first container.
    let id2 = format!("{id}-2");
    let out = c.run_busybox("--rm", &id2, &["sh", "-c", "exit 3"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let ns = c.ns.clone();
    drop(c);
    assert!(
        eventually(5, || rt_testsupport::cgroup_dirs_named(&ns).is_empty()),
        "{ns} left"
    );
    for leaf in [format!("{ns}/{id}"), format!("{ns}/{id2}")] {
        assert!(
            eventually(5, || rt_testsupport::cgroup_dirs_named(&leaf).is_empty()),
            "{leaf} left"
        );
    }
}

/// The cgroup v1 memory directory of a host pid.
fn memory_cgroup_of(pid: &str) -> PathBuf {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let path = text
        .lines()
        .find_map(|l| l.split_once(":memory:").map(|(_, p)| p.to_string()))
        .unwrap_or_else(|| panic!("no memory cgroup in {text}"));
    PathBuf::from("/sys/fs/cgroup/memory").join(path.trim_start_matches('/'))
}

#[test]
fn podman_operates_running_containers() {
    if !root_or_skip("podman_operates_running_containers") {
        return;
    }
    let p = Podman::with_busybox_on(rt_bin(), Manager::Cgroupfs);
    let out = p.run(&[
        "run",
        "-d",
        "--name",
        "rt-op",
        "--network",
        "none",
        "localhost/rt-busybox:latest",
        "sleep",
        "1000",
    ]);
    assert!(out.status.success(), "{}", text(&out));

    // exec: output and exit status through conmon.
    let out = p.run(&["exec", "rt-op", "sh", "-c", "echo in-container; exit 4"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "in-container\n");
    // exec -it: a pty through conmon's console socket. `script` gives podman
    // a terminal of its own to relay.
    let podman_cmd = format!(
        "{:?}",
        p.cmd().args([
            "exec",
            "-it",
            "rt-op",
            "sh",
            "-c",
            "tty; echo rows=$(stty size)"
        ])
    );
    let shell_line = podman_cmd.replace('"', "'");
    let out = output_via_files(Command::new("script").args(["-qec", &shell_line, "/dev/null"]));
    let t = text(&out);
    assert!(out.status.success(), "{shell_line}: {t}");
    assert!(t.contains("/dev/pts/0"), "{t}");

    // pause and unpause.
    let out = p.run(&["pause", "rt-op"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = p.run(&["inspect", "--format", "{{.State.Status}}", "rt-op"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "paused");
    let out = p.run(&["unpause", "rt-op"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = p.run(&["inspect", "--format", "{{.State.Status}}", "rt-op"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "running");

    // update --memory reaches the container's cgroup.
    let out = p.run(&["update", "--memory", "256m", "rt-op"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = p.run(&["inspect", "--format", "{{.State.Pid}}", "rt-op"]);
    let pid = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let limit =
        std::fs::read_to_string(memory_cgroup_of(&pid).join("memory.limit_in_bytes")).unwrap();
    assert_eq!(limit.trim(), (256u64 << 20).to_string());

    // stop: kill, then delete.
    let out = p.run(&["stop", "-t", "1", "rt-op"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = p.run(&["inspect", "--format", "{{.State.Status}}", "rt-op"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "exited");
    let out = p.run(&["rm", "rt-op"]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn containerd_operates_tasks() {
    if !root_or_skip("containerd_operates_tasks") {
        return;
    }
    let c = Containerd::with_busybox();
    let id = format!("rt-task-{}", std::process::id());
    let out = c.run_busybox("-d", &id, &["sleep", "1000"]);
    assert!(out.status.success(), "ctr run -d: {}", text(&out));
    let status = || c.task_status(&id);
    assert!(eventually(10, || status() == "RUNNING"), "{}", status());

    // exec: output and exit status.
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

    // pause and resume.
    let out = c.ctr(&["task", "pause", &id]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(status(), "PAUSED");
    let out = c.ctr(&["task", "resume", &id]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(status(), "RUNNING");

    // ps lists the init's host pid.
    let out = c.ctr(&["task", "ps", &id]);
    assert!(out.status.success(), "{}", text(&out));
    let pids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    assert_eq!(pids.len(), 1, "{}", text(&out));
    let pid = &pids[0];
    assert!(Path::new(&format!("/proc/{pid}")).exists());

    // metrics: the shim reads the cgroup rt placed the init in.
    let out = c.ctr(&["task", "metrics", "--format", "json", &id]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    let v: serde_json::Value = serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim())
        .unwrap_or_else(|e| panic!("{e}: {t}"));
    let s = v.to_string();
    assert!(s.contains("\"pids\"") && s.contains("\"current\":1"), "{s}");
    let memory_cg = memory_cgroup_of(pid);
    assert!(
        memory_cg.ends_with(format!("{}/{id}", c.ns)),
        "{}",
        memory_cg.display()
    );

    let out = c.ctr(&["task", "kill", "-s", "KILL", &id]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(eventually(10, || status() == "STOPPED"), "{}", status());
    let out = c.ctr(&["task", "delete", &id]);
    assert!(out.status.success(), "{}", text(&out));
    let out = c.ctr(&["container", "delete", &id]);
    assert!(out.status.success(), "{}", text(&out));
    let ns = c.ns.clone();
    drop(c);
    assert!(
        eventually(5, || rt_testsupport::cgroup_dirs_named(&ns).is_empty()),
        "{ns} left"
    );
}

#[test]
fn podman_runs_vm_containers_with_rt_vm() {
    if !root_or_skip("podman_runs_vm_containers_with_rt_vm") {
        return;
    }
    let (_links, rt_vm) = rt_vm_link();
    let p = Podman::with_busybox_on(rt_vm, Manager::Cgroupfs);
    let image = "localhost/rt-busybox:latest";
    let out = p.run(&[
        "run",
        "--rm",
        "--network",
        "none",
        image,
        "sh",
        "-c",
        "uname -r; exit 5",
    ]);
    assert_guest_uname(&out, 5);
    // -it: podman's terminal through the console socket (under script(1),
    // which gives podman a terminal of its own).
    let out = output_via_files(
        Command::new("script")
            .args(["-qec"])
            .arg(format!(
                "{} run --rm -it --network none {image} sh -c 'tty; stty size'",
                shell_words(&p.cmd())
            ))
            .arg("/dev/null"),
    );
    let t = text(&out);
    assert!(out.status.success() && t.contains("/dev/pts/0"), "{t}");
    // Detached: exec inside the VM, stop (TERM reaches the workload), rm.
    let out = p.run(&[
        "run",
        "-d",
        "--name",
        "rt-vm-bg",
        "--network",
        "none",
        image,
        "sh",
        "-c",
        "trap 'exit 0' TERM; while true; do sleep 0.1; done",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let out = p.run(&["exec", "rt-vm-bg", "sh", "-c", "uname -r; exit 4"]);
    assert_guest_uname(&out, 4);
    let out = p.run(&["stop", "-t", "20", "rt-vm-bg"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = p.run(&["inspect", "--format", "{{.State.ExitCode}}", "rt-vm-bg"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "0",
        "stopped by TERM, not killed"
    );
    let out = p.run(&["rm", "rt-vm-bg"]);
    assert!(out.status.success(), "{}", text(&out));
}

/// A command line for sh -c.
fn shell_words(c: &Command) -> String {
    let mut words = vec![c.get_program().to_string_lossy().into_owned()];
    words.extend(c.get_args().map(|a| a.to_string_lossy().into_owned()));
    let env: Vec<String> = c
        .get_envs()
        .filter_map(|(k, v)| Some(format!("{}={}", k.to_string_lossy(), v?.to_string_lossy())))
        .collect();
    format!("env {} {}", env.join(" "), words.join(" "))
}

#[test]
fn containerd_runs_vm_tasks_with_rt_vm() {
    if !root_or_skip("containerd_runs_vm_tasks_with_rt_vm") {
        return;
    }
    let (_links, rt_vm) = rt_vm_link();
    let c = Containerd::with_busybox();
    let id = format!("rt-ctr-vm-{}", std::process::id());
    let out = c.run_busybox_on(&rt_vm, "--rm", &id, &["sh", "-c", "uname -r; exit 6"]);
    assert_guest_uname(&out, 6);
    let id = format!("rt-ctr-vm-bg-{}", std::process::id());
    let out = c.run_busybox_on(&rt_vm, "-d", &id, &["sleep", "600"]);
    assert!(out.status.success(), "ctr run -d: {}", text(&out));
    let out = c.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        &id,
        "sh",
        "-c",
        "uname -r; exit 3",
    ]);
    assert_guest_uname(&out, 3);
    let out = c.ctr(&["task", "kill", "-s", "KILL", &id]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(eventually(30, || {
        let out = c.ctr(&["task", "ls"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.starts_with(&id) && l.contains("STOPPED"))
    }));
    let out = c.ctr(&["task", "delete", &id]);
    assert!(out.status.success(), "{}", text(&out));
    let out = c.ctr(&["container", "delete", &id]);
    assert!(out.status.success(), "{}", text(&out));
}

/// What podman's default CNI network leaves on the host after its last
/// container: the `cni-podman0` bridge, the CNI chains (in the iptables-nft
/// tables `ip nat`, `ip filter`, `ip6 nat`) and the /run/netns bind mount.
/// Recorded before the test; whatever was not there is removed after it,
/// and `net.ipv4.ip_forward` (which CNI's bridge plugin turns on) is put
/// back.
struct CniLeftovers {
    bridge: bool,
    tables: String,
    netns_mount: bool,
    forward: String,
}

impl CniLeftovers {
    fn now() -> CniLeftovers {
        let tables = Command::new("nft").args(["list", "tables"]).output();
        CniLeftovers {
            bridge: Path::new("/sys/class/net/cni-podman0").exists(),
            tables: tables
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default(),
            netns_mount: std::fs::read_to_string("/proc/self/mounts")
                .unwrap_or_default()
                .lines()
                .any(|l| l.split(' ').nth(1) == Some("/run/netns")),
            forward: std::fs::read_to_string(FORWARD).unwrap_or_default(),
        }
    }
}

const FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

impl Drop for CniLeftovers {
    fn drop(&mut self) {
        if !self.forward.is_empty() {
            let _ = std::fs::write(FORWARD, &self.forward);
        }
        if !self.bridge {
            let _ = Command::new("ip")
                .args(["link", "del", "cni-podman0"])
                .status();
        }
        for table in ["ip nat", "ip filter", "ip6 nat", "ip6 filter"] {
            if !self
                .tables
                .lines()
                .any(|l| l.trim() == format!("table {table}"))
            {
                let mut args = vec!["delete", "table"];
                args.extend(table.split(' '));
                let _ = Command::new("nft")
                    .args(&args)
                    .stderr(std::process::Stdio::null())
                    .status();
            }
        }
        if !self.netns_mount {
            let _ = nix::mount::umount2("/run/netns", nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// curl `url` until its answer holds `want` (60 s); whether it did, and
/// the last answer.
fn curl_until(url: &str, want: &str) -> (bool, String) {
    let mut last = String::new();
    let reached = eventually(60, || {
        let out = Command::new("curl")
            .args(["-s", "--max-time", "2", url])
            .output();
        last = out.map(|o| text(&o)).unwrap_or_default();
        last.contains(want)
    });
    (reached, last)
}

#[test]
fn podman_default_network_reaches_a_vm_through_its_tap() {
    if !root_or_skip("podman_default_network_reaches_a_vm_through_its_tap") {
        return;
    }
    let before = CniLeftovers::now();
    let bridge_before = before.bridge;
    let (_links, rt_vm) = rt_vm_link();
    let p = Podman::with_busybox_on(rt_vm, Manager::Cgroupfs);
    let port = 18000 + (std::process::id() % 1000) as u16;
    let publish = format!("127.0.0.1:{port}:80");
    let out = p.run(&[
        "run",
        "-d",
        "--name",
        "rt-vm-web",
        "-p",
        &publish,
        // The block rootfs, so that it can be checkpointed below.
        "--annotation",
        "run.rt.vm.rootfs=block",
        "localhost/rt-busybox:latest",
        "sh",
        "-c",
        "mkdir -p /tmp/www && echo hello-from-the-vm > /tmp/www/index.html && \
         ip addr show eth0 | grep -q inet && exec httpd -f -p 80 -h /tmp/www",
    ]);
    assert!(out.status.success(), "podman run: {}", text(&out));
    let url = format!("http://127.0.0.1:{port}/");
    let (reached, last) = curl_until(&url, "hello-from-the-vm");
    let logs = p.run(&["logs", "rt-vm-web"]);
    assert!(reached, "curl {url}: {last}\nlogs: {}", text(&logs));
    // The guest's eth0 carries the address podman gave the container.
    let ip = p.run(&[
        "inspect",
        "--format",
        "{{.NetworkSettings.IPAddress}}",
        "rt-vm-web",
    ]);
    let ip = String::from_utf8_lossy(&ip.stdout).trim().to_string();
    let out = p.run(&["exec", "rt-vm-web", "ip", "-4", "addr", "show", "eth0"]);
    assert!(text(&out).contains(&ip), "{ip}: {}", text(&out));
    // Checkpoint and restore: podman tears the network down and makes it
    // again; the restored VM answers on the published port at the same
    // address, its tap joined to the new namespace's interface.
    let out = p.run(&["container", "checkpoint", "rt-vm-web"]);
    assert!(out.status.success(), "podman checkpoint: {}", text(&out));
    let out = p.run(&["container", "restore", "rt-vm-web"]);
    assert!(out.status.success(), "podman restore: {}", text(&out));
    let (reached, last) = curl_until(&url, "hello-from-the-vm");
    assert!(reached, "after restore, curl {url}: {last}");
    let out = p.run(&["exec", "rt-vm-web", "ip", "-4", "addr", "show", "eth0"]);
    assert!(text(&out).contains(&ip), "{ip}: {}", text(&out));
    let out = p.run(&["rm", "--force", "rt-vm-web"]);
    assert!(out.status.success(), "{}", text(&out));
    // rt's part is gone (the tap went with QEMU); podman's CNI leftovers
    // are removed by `before` when it drops.
    assert!(!Path::new("/sys/class/net/tap0_rt").exists());
    drop(p);
    drop(before);
    assert_eq!(
        CniLeftovers::now().bridge,
        bridge_before,
        "cni-podman0 left behind"
    );
}
