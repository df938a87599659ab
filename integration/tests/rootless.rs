//! Rootless containers: rt run by a real unprivileged user (created by the
//! tests, with /etc/subuid and /etc/subgid ranges), state under
//! $XDG_RUNTIME_DIR/rt, a user namespace mapped directly (own id) or through
//! newuidmap/newgidmap (ranges), no cgroup where none is delegated.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use rt_testsupport::{eventually, output_via_files, root_or_skip, shared_rootfs, unique_id};
use serde_json::{json, Value};

macro_rules! need_root {
    () => {
        if !root_or_skip(module_path!()) {
            return;
        }
    };
}

const USER: &str = "rt-rootless";

/// The test user: uid, gid and the first subordinate id of its range.
#[derive(Debug, Clone, Copy)]
struct User {
    uid: u32,
    gid: u32,
    sub_start: u32,
}

fn id_of(flag: &str) -> u32 {
    let out = Command::new("id").args([flag, USER]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

fn sub_start(file: &str) -> Option<u32> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next() == Some(USER)).then(|| f.next()?.parse().ok())?
    })
}

/// Creates the user once (useradd gives it subordinate ranges from
/// login.defs; usermod adds them if an older user lacks them).
fn user() -> User {
    static USER_ONCE: OnceLock<User> = OnceLock::new();
    *USER_ONCE.get_or_init(|| {
        if !Command::new("id")
            .arg(USER)
            .output()
            .unwrap()
            .status
            .success()
        {
            let st = Command::new("useradd")
                .args(["--no-create-home", "--shell", "/usr/sbin/nologin", USER])
                .status()
                .unwrap();
            assert!(st.success(), "useradd {USER}");
        }
        if sub_start("/etc/subuid").is_none() || sub_start("/etc/subgid").is_none() {
            let st = Command::new("usermod")
                .args([
                    "--add-subuids",
                    "300000-365535",
                    "--add-subgids",
                    "300000-365535",
                    USER,
                ])
                .status()
                .unwrap();
            assert!(st.success(), "usermod --add-subuids");
        }
        let (u, g) = (
            sub_start("/etc/subuid").unwrap(),
            sub_start("/etc/subgid").unwrap(),
        );
        assert_eq!(u, g, "the tests use one range for uids and gids");
        User {
            uid: id_of("-u"),
            gid: id_of("-g"),
            sub_start: u,
        }
    })
}

/// A world-readable directory with the rt binary, a rootfs copy and an
/// XDG_RUNTIME_DIR owned by the user: the checkout may sit where the user
/// cannot read (e.g. under /root).
struct Env {
    dir: tempfile::TempDir,
    user: User,
}

impl Env {
    fn new() -> Env {
        let user = user();
        let dir = tempfile::Builder::new()
            .prefix("rt-rootless-")
            .tempdir()
            .unwrap();
        chmod(dir.path(), 0o755);
        std::fs::copy(rt_testsupport::rt_bin(), dir.path().join("rt")).unwrap();
        let st = Command::new("cp")
            .arg("-a")
            .arg(shared_rootfs())
            .arg(dir.path().join("rootfs"))
            .status()
            .unwrap();
        assert!(st.success());
        let xdg = dir.path().join("xdg");
        std::fs::create_dir(&xdg).unwrap();
        chmod(&xdg, 0o700);
        nix::unistd::chown(&xdg, Some(user.uid.into()), Some(user.gid.into())).unwrap();
        let bundle = dir.path().join("bundle");
        std::fs::create_dir(&bundle).unwrap();
        nix::unistd::chown(&bundle, Some(user.uid.into()), Some(user.gid.into())).unwrap();
        Env { dir, user }
    }

    fn xdg(&self) -> PathBuf {
        self.dir.path().join("xdg")
    }

    fn bundle(&self) -> PathBuf {
        self.dir.path().join("bundle")
    }

    /// rt as the user, with its own XDG_RUNTIME_DIR and no --root.
    fn rt(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(self.dir.path().join("rt"));
        cmd.args(args)
            .current_dir(self.dir.path())
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("XDG_RUNTIME_DIR", self.xdg())
            .uid(self.user.uid)
            .gid(self.user.gid);
        output_via_files(&mut cmd)
    }

    fn ok(&self, args: &[&str]) -> String {
        rt_testsupport::expect_ok(args, self.rt(args))
    }

    /// `rt spec --rootless` as the user, then `edit`.
    fn spec(&self, args: &[&str], edit: impl FnOnce(&mut Value)) {
        let b = self.bundle();
        self.ok(&["spec", "--rootless", "--bundle", b.to_str().unwrap()]);
        let path = b.join("config.json");
        let mut c: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        c["process"]["terminal"] = json!(false);
        c["process"]["args"] = json!(args);
        c["root"]["path"] = json!(self.dir.path().join("rootfs"));
        edit(&mut c);
        std::fs::write(&path, serde_json::to_vec(&c).unwrap()).unwrap();
    }

    fn status(&self, id: &str) -> String {
        let out = self.rt(&["state", id]);
        if !out.status.success() {
            return "gone".into();
        }
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v["status"].as_str().unwrap().to_string()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // Leave no container of a failed test running.
        if let Ok(entries) = std::fs::read_dir(self.xdg().join("rt")) {
            for e in entries.flatten() {
                let id = e.file_name().to_string_lossy().into_owned();
                let _ = self.rt(&["delete", "--force", &id]);
            }
        }
    }
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn host_uid_of(pid: &str) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The whole life of a rootless container: create, start, exec, kill,
/// delete, with its state under $XDG_RUNTIME_DIR/rt and its processes owned
/// by the user on the host while root inside.
#[test]
fn rootless_create_start_exec_kill_delete() {
    need_root!();
    let env = Env::new();
    env.spec(&["sleep", "1000"], |_| {});
    let id = unique_id("rl");
    let b = env.bundle();
    env.ok(&["create", "--bundle", b.to_str().unwrap(), &id]);
    assert!(
        env.xdg().join("rt").join(&id).is_dir(),
        "state under $XDG_RUNTIME_DIR/rt"
    );
    assert_eq!(env.status(&id), "created");
    env.ok(&["start", &id]);
    assert_eq!(env.status(&id), "running");
    let state: Value = serde_json::from_str(&env.ok(&["state", &id])).unwrap();
    let pid = state["pid"].as_i64().unwrap().to_string();
    assert_eq!(
        host_uid_of(&pid),
        env.user.uid,
        "the init runs as the user on the host"
    );
    let out = env.ok(&[
        "exec",
        &id,
        "sh",
        "-c",
        "id -u; cat /proc/self/uid_map; echo x > /dev/null && head -c 3 /dev/zero | wc -c",
    ]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "0", "{out}");
    let map: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(map, ["0", &env.user.uid.to_string(), "1"], "{out}");
    assert_eq!(
        lines[2], "3",
        "bind-mounted /dev/null and /dev/zero work: {out}"
    );
    env.ok(&["kill", &id, "KILL"]);
    assert!(eventually(10, || env.status(&id) == "stopped"));
    env.ok(&["delete", &id]);
    assert_eq!(env.status(&id), "gone");
    assert!(!env.xdg().join("rt").join(&id).exists());
}

/// Ranges beyond the user's own id go through newuidmap/newgidmap: ids
/// 1..65536 in the container are the user's subordinate ids on the host.
#[test]
fn rootless_multi_range_mapping_uses_newuidmap() {
    need_root!();
    let env = Env::new();
    let u = env.user;
    env.spec(
        &["sh", "-c", "cat /proc/self/gid_map; touch /tmp/f && chown 1000:1000 /tmp/f && stat -c '%u:%g' /tmp/f; sleep 1000"],
        |c| {
            let maps = |own: u32| json!([{"containerID": 0, "hostID": own, "size": 1},
                {"containerID": 1, "hostID": u.sub_start, "size": 65536}]);
            c["linux"]["uidMappings"] = maps(u.uid);
            c["linux"]["gidMappings"] = maps(u.gid);
            c["mounts"].as_array_mut().unwrap().push(json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"}));
            for set in ["bounding", "effective", "permitted"] {
                c["process"]["capabilities"][set].as_array_mut().unwrap().push("CAP_CHOWN".into());
            }
        },
    );
    let id = unique_id("rlm");
    let b = env.bundle();
    env.ok(&["run", "--detach", "--bundle", b.to_str().unwrap(), &id]);
    let state: Value = serde_json::from_str(&env.ok(&["state", &id])).unwrap();
    let pid = state["pid"].as_i64().unwrap();
    let gid_map = std::fs::read_to_string(format!("/proc/{pid}/gid_map")).unwrap();
    let rows: Vec<Vec<String>> = gid_map
        .lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect();
    assert_eq!(rows.len(), 2, "{gid_map}");
    assert_eq!(
        rows[1],
        ["1", &u.sub_start.to_string(), "65536"],
        "{gid_map}"
    );
    // The file chowned inside belongs to subordinate id sub_start + 999.
    let tmp_f = format!("/proc/{pid}/root/tmp/f");
    assert!(eventually(10, || Path::new(&tmp_f).exists()));
    assert!(eventually(10, || {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&tmp_f).is_ok_and(|m| m.uid() == u.sub_start + 999)
    }));
    env.ok(&["delete", "--force", &id]);
    assert_eq!(env.status(&id), "gone");
}

/// This host delegates no cgroup to the user: a spec without limits runs
/// without a cgroup, one with limits is refused with a clear error and
/// leaves nothing behind.
#[test]
fn rootless_without_delegation_refuses_limits() {
    need_root!();
    let env = Env::new();
    env.spec(&["true"], |c| {
        c["linux"]["resources"] = json!({"memory": {"limit": 67108864}});
    });
    let id = unique_id("rll");
    let b = env.bundle();
    let out = env.rt(&["run", "--bundle", b.to_str().unwrap(), &id]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("delegated cgroup"), "{err}");
    assert_eq!(env.status(&id), "gone");
    assert!(!env.xdg().join("rt").join(&id).exists());
    // Without limits it runs, and its exit status comes back.
    std::fs::remove_file(b.join("config.json")).unwrap();
    env.spec(&["sh", "-c", "exit 7"], |_| {});
    let out = env.rt(&["run", "--bundle", b.to_str().unwrap(), &id]);
    assert_eq!(
        out.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn rootless_network_none_brings_lo_up_and_bridges_need_root() {
    need_root!();
    let env = Env::new();
    // (Netlink, not /sys/class/net: a rootless /sys is the host's, bound.)
    env.spec(&["ip", "-o", "link"], |_| {});
    let b = env.bundle();
    let id = unique_id("rln");
    let out = env.rt(&[
        "run",
        "--network",
        "none",
        "--bundle",
        b.to_str().unwrap(),
        &id,
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.starts_with("1: lo: <LOOPBACK,UP,LOWER_UP>"), "{text}");
    let out = env.rt(&[
        "run",
        "--network",
        "nat",
        "--bundle",
        b.to_str().unwrap(),
        &id,
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("network mode nat needs root"),
        "{err}"
    );
    assert!(!env.xdg().join("rt").join(&id).exists());
}
