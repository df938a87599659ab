//! What the container sees: namespaces, rootfs and mounts, devices, process
//! identity, hooks, terminal, preserved descriptors, cgroups and seccomp.

use std::os::fd::AsRawFd;
use std::path::Path;

use rt_testsupport::{cgroup_dirs_named, output_via_files, root_or_skip, unique_id, Bundle, Root};
use serde_json::{json, Value};

macro_rules! need_root {
    () => {
        if !root_or_skip(module_path!()) {
            return;
        }
    };
}

/// Runs `script` in a container built from the default spec after `edit`;
/// returns (exit code, stdout, stderr).
fn run_with(script: &str, edit: impl FnOnce(&mut Value)) -> (i32, String, String) {
    let root = Root::new();
    let mut b = Bundle::new(&["sh", "-c", script]);
    b.edit(edit);
    let out = root.rt(&[
        "run",
        "--bundle",
        b.path().to_str().unwrap(),
        &unique_id("iso"),
    ]);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn run_ok(script: &str, edit: impl FnOnce(&mut Value)) -> String {
    let (code, out, err) = run_with(script, edit);
    assert_eq!(code, 0, "script {script:?} failed: {out}{err}");
    out
}

fn ns_link(pid: &str, ns: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/{ns}"))
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

#[test]
fn pid_uts_ipc_net_namespaces() {
    need_root!();
    let out = run_ok("echo $$; hostname; ls /sys/class/net | tr '\\n' ' '", |c| {
        c["hostname"] = json!("box1")
    });
    assert_eq!(out, "1\nbox1\nlo ");
    // A network entry: a namespace of its own (made ahead by a helper and
    // joined by the init, see `Launch::net_in_init`), the one its sysfs
    // shows.
    let host_net = ns_link("self", "net");
    let out = run_ok("readlink /proc/self/ns/net", |_| {});
    assert_ne!(out.trim(), host_net);
    // No network entry: the host's network namespace (cloned-host).
    let out = run_ok("readlink /proc/self/ns/net", |c| {
        c["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .retain(|n| n["type"] != "network")
    });
    assert_eq!(out.trim(), host_net);
}

/// A new network namespace gets `lo` up, as runc and crun give it: made
/// ahead by the helper (the default spec), or by the init itself (in a user
/// namespace). One joined by path is left as it is. The host-scope route to
/// 127.0.0.1 (in /proc/net/fib_trie) exists only while `lo` is up.
#[test]
fn a_new_network_namespace_has_loopback_up() {
    need_root!();
    let lo_up = "grep -c '127.0.0.1' /proc/net/fib_trie || true";
    let up = |out: String| out.trim().parse::<u32>().unwrap() > 0;
    assert!(up(run_ok(lo_up, |_| {})), "helper's namespace");
    assert!(up(run_ok(lo_up, in_user_ns)), "the init's namespace");
    // A namespace of the test's own, `lo` down, joined by path: a process's
    // (`ip netns add` would leave its /run/netns mount behind).
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let holder = Kill(
        std::process::Command::new("unshare")
            .args(["-n", "sleep", "1000"])
            .spawn()
            .unwrap(),
    );
    let pid = holder.0.id().to_string();
    let host_net = ns_link("self", "net");
    assert!(rt_testsupport::eventually(5, || {
        std::fs::read_link(format!("/proc/{pid}/ns/net"))
            .is_ok_and(|l| l.to_string_lossy() != host_net)
    }));
    let joined = run_ok(lo_up, |c| {
        for n in c["linux"]["namespaces"].as_array_mut().unwrap() {
            if n["type"] == "network" {
                n["path"] = json!(format!("/proc/{pid}/ns/net"));
            }
        }
    });
    assert!(!up(joined), "a joined namespace's lo was set up");
}

/// A user namespace with the host's 200000.. as its 0..
fn in_user_ns(c: &mut Value) {
    c["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "user"}));
    c["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 200000, "size": 65536}]);
    c["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": 200000, "size": 65536}]);
}

#[test]
fn join_namespace_by_path() {
    need_root!();
    let root = Root::new();
    let a = Bundle::new(&["sleep", "1000"]);
    let ida = unique_id("nsa");
    root.ok(&["run", "-d", "--bundle", a.path().to_str().unwrap(), &ida]);
    let st: Value = serde_json::from_str(&root.ok(&["state", &ida])).unwrap();
    let pid = st["pid"].to_string();
    let want = ns_link(&pid, "net");
    let out = run_ok("readlink /proc/self/ns/net", |c| {
        for n in c["linux"]["namespaces"].as_array_mut().unwrap() {
            if n["type"] == "network" {
                n["path"] = json!(format!("/proc/{pid}/ns/net"));
            }
        }
    });
    assert_eq!(out.trim(), want);
    root.ok(&["delete", "--force", &ida]);
}

#[test]
fn user_namespace_mappings() {
    need_root!();
    // A user namespace may not mount sysfs of the host's network...
    // rt binds /sys then; cgroup bind mounts and devices work via binds.
    let out = run_ok(
        "cat /proc/self/uid_map /proc/self/gid_map; id -u",
        in_user_ns,
    );
    let words: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(
        words,
        ["0", "200000", "65536", "0", "200000", "65536", "0"],
        "{out}"
    );
}

#[test]
fn time_namespace_offsets() {
    need_root!();
    let out = run_ok("cut -d. -f1 /proc/uptime", |c| {
        c["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": "time"}));
        c["linux"]["timeOffsets"] =
            json!({"boottime": {"secs": 86400000, "nanosecs": 0}, "monotonic": {"secs": 1}});
    });
    let up: u64 = out.trim().parse().unwrap();
    assert!(up >= 86_400_000, "uptime {up}");
}

#[test]
fn rootfs_readonly_masked_and_readonly_paths() {
    need_root!();
    let script = "touch /x 2>/dev/null && echo rootw; \
                  wc -c < /proc/keys; ls /sys/firmware | wc -l; \
                  echo 1 > /proc/sys/kernel/domainname 2>/dev/null && echo sysw; \
                  touch /sys/x 2>/dev/null && echo sysfsw; \
                  touch /tmp/ok 2>/dev/null || echo tmpro; echo done";
    let out = run_ok(script, |_| {});
    assert_eq!(out, "0\n0\ntmpro\ndone\n");
}

#[test]
fn mounts_in_order_with_options() {
    need_root!();
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("file"), "from host").unwrap();
    std::fs::create_dir(host.path().join("sub")).unwrap();
    let hp = host.path().to_str().unwrap().to_string();
    let out = run_ok(
        "cat /data/file; echo; touch /data/new 2>/dev/null || echo ro; \
         grep ' /scratch ' /proc/mounts | grep -o 'size=[0-9]*k'; \
         touch /rw/y && echo rw; cat /single; echo; \
         touch /rro/sub/z 2>/dev/null || echo rro",
        |c| {
            let m = c["mounts"].as_array_mut().unwrap();
            m.push(json!({"destination": "/data", "type": "bind", "source": hp, "options": ["rbind", "ro", "nosuid", "rprivate"]}));
            m.push(json!({"destination": "/scratch", "type": "tmpfs", "source": "tmpfs", "options": ["size=1024k", "mode=1777"]}));
            m.push(json!({"destination": "/rw", "type": "tmpfs", "source": "tmpfs"}));
            m.push(json!({"destination": "/single", "type": "bind", "source": format!("{hp}/file"), "options": ["bind"]}));
            m.push(json!({"destination": "/rro", "type": "bind", "source": hp, "options": ["rbind", "rro"]}));
        },
    );
    assert_eq!(out, "from host\nro\nsize=1024k\nrw\nfrom host\nrro\n");
    assert!(!host.path().join("new").exists());
}

#[test]
fn mount_destination_symlink_cannot_escape_rootfs() {
    need_root!();
    // A private rootfs with planted symlinks pointing out of it.
    let rootfs = tempfile::tempdir().unwrap();
    rt_testsupport::make_rootfs(rootfs.path());
    let outside = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path(), rootfs.path().join("abs")).unwrap();
    std::os::unix::fs::symlink("../../../../../../..", rootfs.path().join("up")).unwrap();
    let out = run_ok("ls /abs /up >/dev/null && echo in", |c| {
        c["root"]["path"] = json!(rootfs.path());
        let m = c["mounts"].as_array_mut().unwrap();
        m.push(json!({"destination": "/abs/evil", "type": "tmpfs", "source": "tmpfs"}));
        m.push(json!({"destination": "/up/tmp/evil2", "type": "tmpfs", "source": "tmpfs"}));
    });
    assert_eq!(out, "in\n");
    assert_eq!(
        std::fs::read_dir(outside.path()).unwrap().count(),
        0,
        "nothing made outside the rootfs"
    );
    assert!(!Path::new("/tmp/evil2").exists());
}

#[test]
fn devices_and_dev_symlinks() {
    need_root!();
    let out = run_ok(
        "stat -c '%t:%T %a' /dev/null /dev/mydev; readlink /dev/fd; readlink /dev/ptmx; echo x > /dev/null && echo nullw",
        |c| {
            c["linux"]["devices"] = json!([{"path": "/dev/mydev", "type": "c", "major": 1, "minor": 5, "fileMode": 0o640, "uid": 0, "gid": 0}]);
        },
    );
    assert_eq!(out, "1:3 666\n1:5 640\n/proc/self/fd\npts/ptmx\nnullw\n");
}

#[test]
fn process_identity() {
    need_root!();
    let out = run_ok(
        "id; pwd; echo $FOO; umask; ulimit -n; cat /proc/self/oom_score_adj; \
         grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status; cat /proc/sys/kernel/domainname",
        |c| {
            c["process"]["user"] =
                json!({"uid": 1000, "gid": 1000, "additionalGids": [5, 7], "umask": 63});
            c["process"]["cwd"] = json!("/tmp");
            c["process"]["env"]
                .as_array_mut()
                .unwrap()
                .push(json!("FOO=bar"));
            c["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "hard": 512, "soft": 256}]);
            c["process"]["oomScoreAdj"] = json!(123);
            // A non-root user keeps capabilities across exec only as ambient ones.
            c["process"]["capabilities"] = json!({"bounding": ["CAP_KILL", "CAP_CHOWN"], "effective": ["CAP_KILL"], "permitted": ["CAP_KILL"], "inheritable": ["CAP_KILL"], "ambient": ["CAP_KILL"]});
            c["domainname"] = json!("example.org");
            c["root"]["readonly"] = json!(false);
            c["mounts"].as_array_mut().unwrap().push(json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["mode=1777"]}));
        },
    );
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("uid=1000 gid=1000 groups=5(tty),7"),
        "{out}"
    );
    assert_eq!(&lines[1..6], ["/tmp", "bar", "0077", "256", "123"], "{out}");
    assert_eq!(lines[6], "CapEff:\t0000000000000020", "{out}");
    assert_eq!(lines[7], "CapBnd:\t0000000000000021", "{out}");
    assert_eq!(lines[8], "NoNewPrivs:\t1", "{out}");
    assert_eq!(lines[9], "example.org", "{out}");
}

#[test]
fn sysctl_and_rlimit_errors() {
    need_root!();
    let out = run_ok("cat /proc/sys/net/ipv4/ip_forward", |c| {
        c["linux"]["sysctl"] = json!({"net.ipv4.ip_forward": "1"});
    });
    assert_eq!(out, "1\n");
    // Raising a hard limit above ours needs CAP_SYS_RESOURCE in the bounding set.
    let (_, _, err) = run_with("true", |c| {
        c["process"]["rlimits"] =
            json!([{"type": "RLIMIT_NOFILE", "hard": 1 << 30, "soft": 1 << 30}]);
    });
    assert!(
        err.contains("error setting rlimit type RLIMIT_NOFILE: EPERM"),
        "{err}"
    );
}

#[test]
fn executable_lookup_errors() {
    need_root!();
    let root = Root::new();
    let b = Bundle::new(&["not-a-command"]);
    let out = root.rt(&[
        "run",
        "--bundle",
        b.path().to_str().unwrap(),
        &unique_id("look"),
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("executable file not found in $PATH"));
    assert_ne!(out.status.code(), Some(0));
}

#[test]
fn hooks_run_at_their_points() {
    need_root!();
    let logdir = tempfile::tempdir().unwrap();
    let log = logdir.path().join("log");
    let l = log.to_str().unwrap().to_string();
    let host_mnt = ns_link("self", "mnt");
    let host_hook = |name: &str| json!({"path": "/bin/sh", "args": ["sh", "-c", format!("read s; echo \"{name} $(readlink /proc/self/ns/mnt) $s\" >> {l}")], "env": ["X=1"]});
    let root = Root::new();
    let mut b = Bundle::new(&["true"]);
    b.edit(|c| {
        c["mounts"].as_array_mut().unwrap().push(json!({"destination": "/hooklog", "type": "bind", "source": logdir.path(), "options": ["bind"]}));
        c["hooks"] = json!({
            "prestart": [host_hook("prestart")],
            "createRuntime": [host_hook("createRuntime")],
            "createContainer": [host_hook("createContainer")],
            "startContainer": [{"path": "/bin/sh", "args": ["sh", "-c", "read s; echo \"startContainer $(readlink /proc/self/ns/mnt) $s\" >> /hooklog/log"]}],
            "poststart": [host_hook("poststart")],
            "poststop": [host_hook("poststop")],
        });
    });
    let id = unique_id("hooks");
    root.ok(&["run", "--bundle", b.path().to_str().unwrap(), &id]);
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let names: Vec<&str> = lines.iter().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(
        names,
        [
            "prestart",
            "createRuntime",
            "createContainer",
            "startContainer",
            "poststart",
            "poststop"
        ],
        "{text}"
    );
    for l in &lines {
        let mut parts = l.splitn(3, ' ');
        let (name, mnt, state) = (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
        );
        let in_container = matches!(name, "createContainer" | "startContainer");
        assert_eq!(mnt != host_mnt, in_container, "{name} namespace");
        let st: Value = serde_json::from_str(state).unwrap();
        assert_eq!(st["id"], id.as_str(), "{name}");
    }
}

/// A createContainer hook is exec'd with the runtime's bounding set, as
/// runc runs it (before it drops the set); a startContainer hook and the
/// container's process get the container's. Without such hooks the init
/// drops the set early, while its cgroup is still being made.
#[test]
fn create_container_hooks_keep_the_full_bounding_set() {
    need_root!();
    let logdir = tempfile::tempdir().unwrap();
    let log = logdir.path().join("log");
    let bnd = "grep CapBnd /proc/self/status | cut -f2";
    let ours = std::fs::read_to_string("/proc/self/status").unwrap();
    let ours = ours
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .unwrap()
        .trim()
        .to_string();
    let root = Root::new();
    let mut b = Bundle::new(&[
        "sh",
        "-c",
        &format!("echo process $({bnd}) >> /hooklog/log"),
    ]);
    b.edit(|c| {
        c["mounts"].as_array_mut().unwrap().push(json!({"destination": "/hooklog", "type": "bind", "source": logdir.path(), "options": ["bind"]}));
        c["process"]["capabilities"] = json!({"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"], "permitted": ["CAP_KILL"]});
        c["hooks"] = json!({
            "createContainer": [{"path": "/bin/sh", "args": ["sh", "-c", format!("echo createContainer $({bnd}) >> {}", log.display())]}],
            "startContainer": [{"path": "/bin/sh", "args": ["sh", "-c", format!("echo startContainer $({bnd}) >> /hooklog/log")]}],
        });
    });
    root.ok(&[
        "run",
        "--bundle",
        b.path().to_str().unwrap(),
        &unique_id("bnd"),
    ]);
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        text,
        format!(
            "createContainer {ours}\nstartContainer 0000000000000020\nprocess 0000000000000020\n"
        )
    );
}

#[test]
fn console_socket_gets_the_pty_master() {
    need_root!();
    let root = Root::new();
    let mut b = Bundle::new(&["sh", "-c", "tty; stty size"]);
    b.edit(|c| {
        c["process"]["terminal"] = json!(true);
        c["process"]["consoleSize"] = json!({"height": 33, "width": 101});
    });
    let sock = b.path().join("console.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let id = unique_id("tty");
    let handle = std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        rt_testsupport::recv_with_fd(&conn).1
    });
    root.ok(&[
        "create",
        "--bundle",
        b.path().to_str().unwrap(),
        "--console-socket",
        sock.to_str().unwrap(),
        &id,
    ]);
    let master = handle.join().unwrap();
    root.ok(&["start", &id]);
    let mut out = Vec::new();
    let mut f = std::fs::File::from(master);
    let _ = std::io::Read::read_to_end(&mut f, &mut out);
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("/dev/pts/0"), "{text}");
    assert!(text.contains("33 101"), "{text}");
    root.ok(&["delete", "--force", &id]);
}

#[test]
fn preserve_fds_and_no_other_fd_leaks() {
    need_root!();
    let root = Root::new();
    let b = Bundle::new(&["sh", "-c", "ls /proc/self/fd | tr '\\n' ' '; cat <&3"]);
    let (r, w) = nix::unistd::pipe().unwrap();
    nix::unistd::write(&w, b"via fd 3\n").unwrap();
    drop(w);
    let mut cmd = root.cmd();
    cmd.args([
        "run",
        "--preserve-fds",
        "1",
        "--bundle",
        b.path().to_str().unwrap(),
        &unique_id("fds"),
    ]);
    let raw = r.as_raw_fd();
    // SAFETY: dup2 in the child before exec; async-signal-safe.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            if libc::dup2(raw, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = output_via_files(&mut cmd);
    let text = String::from_utf8_lossy(&out.stdout);
    // 0 1 2, fd 3 preserved, and the one ls opens for /proc/self/fd.
    assert_eq!(
        text,
        "0 1 2 3 4 via fd 3\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn cgroups_path_and_limits_on_v1() {
    need_root!();
    let root = Root::new();
    let mut b = Bundle::new(&["sleep", "1000"]);
    let id = unique_id("cg");
    let parent = format!("rt-test-{id}");
    b.edit(|c| {
        c["linux"]["cgroupsPath"] = json!(format!("/{parent}/{id}"));
        c["linux"]["resources"] =
            json!({"memory": {"limit": 67108864}, "pids": {"limit": 20}, "cpu": {"shares": 512}});
    });
    root.ok(&["create", "--bundle", b.path().to_str().unwrap(), &id]);
    let st: Value = serde_json::from_str(&root.ok(&["state", &id])).unwrap();
    let cg = std::fs::read_to_string(format!("/proc/{}/cgroup", st["pid"])).unwrap();
    for c in ["pids", "memory", "cpu", "freezer", "devices"] {
        assert!(cg.contains(&format!(":{c}:/{parent}/{id}\n")), "{c}: {cg}");
    }
    let read = |p: &str| {
        std::fs::read_to_string(format!("/sys/fs/cgroup/{p}/{parent}/{id}/{}", p2(p))).unwrap()
    };
    fn p2(c: &str) -> &'static str {
        match c {
            "memory" => "memory.limit_in_bytes",
            "pids" => "pids.max",
            _ => "cpu.shares",
        }
    }
    assert_eq!(read("memory").trim(), "67108864");
    assert_eq!(read("pids").trim(), "20");
    assert_eq!(read("cpu").trim(), "512");
    root.ok(&["delete", "--force", &id]);
    assert!(
        cgroup_dirs_named(&parent).is_empty(),
        "parent made by rt is removed too"
    );
}

#[test]
fn seccomp_profile_is_enforced() {
    need_root!();
    let out = run_ok(
        "mkdir /tmp/d 2>&1 || true; touch /tmp/ok && echo touched; uname -m",
        |c| {
            c["mounts"]
                .as_array_mut()
                .unwrap()
                .push(json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"}));
            c["linux"]["seccomp"] = json!({
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [
                    {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
                    {"names": ["uname"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38, "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_NE"}]}
                ]
            });
        },
    );
    assert!(out.contains("Operation not permitted"), "{out}");
    assert!(out.contains("touched"), "{out}");
    assert!(
        !out.contains("x86_64"),
        "uname denied with a non-null buffer: {out}"
    );
}

#[test]
fn no_pivot_works() {
    need_root!();
    let root = Root::new();
    let b = Bundle::new(&["sh", "-c", "echo inside"]);
    let out = root.rt(&[
        "run",
        "--no-pivot",
        "--bundle",
        b.path().to_str().unwrap(),
        &unique_id("np"),
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "inside\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn run_relays_its_terminal() {
    need_root!();
    let root = Root::new();
    let mut b = Bundle::new(&["sh", "-c", "tty; read line; echo got:$line"]);
    b.edit(|c| c["process"]["terminal"] = json!(true));
    let pty = nix::pty::openpty(None, None).unwrap();
    let slave = std::fs::File::from(pty.slave);
    let mut child = root
        .cmd()
        .args([
            "run",
            "--bundle",
            b.path().to_str().unwrap(),
            &unique_id("relay"),
        ])
        .stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave)
        .spawn()
        .unwrap();
    let mut master = std::fs::File::from(pty.master);
    std::io::Write::write_all(&mut master, b"hello\n").unwrap();
    let status = child.wait().unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    // The slave side is closed now: read until EIO.
    while let Ok(n) = std::io::Read::read(&mut master, &mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&out);
    assert!(status.success(), "{text}");
    assert!(text.contains("/dev/pts/0"), "{text}");
    assert!(text.contains("got:hello"), "{text}");
}

#[test]
fn cgroup_mount_shows_the_containers_cgroup() {
    need_root!();
    let out = run_ok(
        "cat /proc/self/cgroup | grep -c ':/$'; cat /sys/fs/cgroup/pids/pids.max; \
         echo 5 > /sys/fs/cgroup/pids/pids.max 2>/dev/null || echo ro",
        |c| c["linux"]["resources"] = json!({"pids": {"limit": 77}}),
    );
    let lines: Vec<&str> = out.lines().collect();
    // Every hierarchy shows the container's cgroup as its root.
    let hierarchies = std::fs::read_to_string("/proc/self/cgroup")
        .unwrap()
        .lines()
        .count();
    assert_eq!(lines[0], hierarchies.to_string(), "{out}");
    assert_eq!(&lines[1..], ["77", "ro"], "{out}");
}

/// The cgroup mount and every hierarchy under it carry nosuid, nodev and
/// noexec, and ro unless the spec's mount is rw (set in one recursive
/// mount_setattr where the kernel has it).
#[test]
fn cgroup_mounts_take_the_spec_s_flags_on_every_hierarchy() {
    need_root!();
    let flags = "grep ' /sys/fs/cgroup' /proc/self/mountinfo | cut -d' ' -f5,6";
    for (ro, opts) in [
        (true, json!(["nosuid", "noexec", "nodev", "relatime", "ro"])),
        (
            false,
            json!(["nosuid", "noexec", "nodev", "relatime", "rw"]),
        ),
    ] {
        let out = run_ok(flags, |c| {
            for m in c["mounts"].as_array_mut().unwrap() {
                if m["type"] == "cgroup" {
                    m["options"] = opts.clone();
                }
            }
        });
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines.len() > 1, "{out}");
        let want = if ro { "ro," } else { "rw," };
        for line in lines {
            let (_, f) = line.split_once(' ').unwrap();
            assert!(f.starts_with(want), "{out}");
            for flag in ["nosuid", "nodev", "noexec"] {
                assert!(f.split(',').any(|x| x == flag), "{flag} missing: {out}");
            }
        }
    }
}

#[test]
fn cgroup_manager_disabled() {
    need_root!();
    let root = Root::new();
    let b = Bundle::new(&["sh", "-c", "grep pids /proc/self/cgroup"]);
    let id = unique_id("nocg");
    let out = root
        .cmd()
        .args([
            "--cgroup-manager",
            "disabled",
            "run",
            "--bundle",
            b.path().to_str().unwrap(),
            &id,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(cgroup_dirs_named(&id).is_empty());
    let mut b = Bundle::new(&["true"]);
    b.edit(|c| c["linux"]["resources"] = json!({"memory": {"limit": 1 << 26}}));
    let out = root
        .cmd()
        .args([
            "--cgroup-manager",
            "disabled",
            "run",
            "--bundle",
            b.path().to_str().unwrap(),
            &id,
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("--cgroup-manager disabled"));
    assert!(cgroup_dirs_named(&id).is_empty());
}

#[test]
fn rootfs_propagation_is_applied() {
    need_root!();
    // The root mount's line: field 5 is the mount point.
    let root_line = "awk '$5 == \"/\"' /proc/self/mountinfo";
    let out = run_ok(
        &format!("{root_line} | grep -o 'shared:[0-9]*' || echo private"),
        |c| {
            c["linux"]["rootfsPropagation"] = json!("rshared");
        },
    );
    assert!(out.starts_with("shared:"), "{out}");
    let out = run_ok(
        &format!("{root_line} | grep -o 'shared:[0-9]*\\|master:[0-9]*' || echo private"),
        |c| {
            c["linux"]["rootfsPropagation"] = json!("private");
        },
    );
    assert_eq!(out, "private\n");
}

#[test]
fn device_cgroup_denies_unlisted_devices() {
    need_root!();
    let out = run_ok(
        // /dev/fuse (10:229) opens for root without any capability: only the
        // devices cgroup can refuse it.
        "mknod /tmp/fuse c 10 229 && ( (exec 3</tmp/fuse) 2>/dev/null && echo opened || echo denied); \
         echo x > /dev/null && echo null-ok; head -c1 /dev/allowed >/dev/null && echo allowed-ok",
        |c| {
            c["mounts"].as_array_mut().unwrap().push(json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["dev"]}));
            // linux.devices entries are allowed automatically.
            c["linux"]["devices"] = json!([{"path": "/dev/allowed", "type": "c", "major": 1, "minor": 9}]);
            // Root with CAP_MKNOD may make the node; the cgroup still denies opening it.
            let caps = json!(["CAP_MKNOD"]);
            c["process"]["capabilities"] = json!({"bounding": caps, "effective": caps, "permitted": caps});
        },
    );
    assert_eq!(out, "denied\nnull-ok\nallowed-ok\n");
}

/// Unknown capability names in the spec are skipped with a warning, as runc
/// does, instead of failing the whole config.json.
#[test]
fn unknown_capabilities_warn_and_are_skipped() {
    need_root!();
    let (code, out, err) = run_with("grep CapBnd /proc/self/status", |c| {
        c["process"]["capabilities"] = json!({
            "bounding": ["CAP_KILL", "CAP_FROM_THE_FUTURE"],
            "effective": ["CAP_KILL"],
            "permitted": ["CAP_KILL", "CAP_FROM_THE_FUTURE"]
        });
    });
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.trim(), "CapBnd:\t0000000000000020");
    assert!(err.contains("CAP_FROM_THE_FUTURE"), "{err}");
}
