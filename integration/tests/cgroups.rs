//! Resource limits with real effects, on whatever cgroup layout the machine
//! has: cgroup v1 (hybrid) on the CI host, and cgroup v2 with every
//! controller inside the QEMU guest of `integration/vm/run-suite`, which runs
//! this same test binary.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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

/// Whether the machine has the unified (v2-only) layout.
fn v2() -> bool {
    Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

/// A container's cgroup file: `v1` is (controller, file), `v2` the file name.
fn file(cg: &str, v1: (&str, &str), v2_file: &str) -> PathBuf {
    let cg = cg.trim_start_matches('/');
    if v2() {
        Path::new("/sys/fs/cgroup").join(cg).join(v2_file)
    } else {
        Path::new("/sys/fs/cgroup").join(v1.0).join(cg).join(v1.1)
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .trim()
        .to_string()
}

fn running(root: &Root, args: &[&str], resources: Value) -> (Bundle, String) {
    let mut b = Bundle::new(args);
    b.edit(|c| c["linux"]["resources"] = resources);
    let id = unique_id("cg");
    root.ok(&["run", "-d", "--bundle", b.path().to_str().unwrap(), &id]);
    (b, id)
}

fn exec(root: &Root, id: &str, script: &str) -> (bool, String) {
    let out = root.rt(&["exec", id, "sh", "-c", script]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn stats(root: &Root, id: &str) -> Value {
    let out = root.ok(&["events", "--stats", id]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["type"], "stats");
    assert_eq!(v["id"], id);
    v["data"].clone()
}

/// 32 MiB of memory and no swap.
fn small_memory() -> Value {
    json!({"memory": {"limit": 33554432, "swap": 33554432}})
}

/// `rt events` in the background, its output in a file.
struct Events {
    child: Child,
    out: tempfile::NamedTempFile,
}

impl Events {
    fn start(root: &Root, id: &str, interval: &str) -> Events {
        let out = tempfile::NamedTempFile::new().unwrap();
        let child = root
            .cmd()
            .args(["events", "--interval", interval, id])
            .stdout(out.reopen().unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Events { child, out }
    }

    fn lines(&self) -> Vec<Value> {
        std::fs::read_to_string(self.out.path())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn memory_limit_oom_kills_and_events_report_it() {
    need_root!();
    let root = Root::new();
    let (_b, id) = running(&root, &["sleep", "1000"], small_memory());
    let events = Events::start(&root, &id, "100ms");
    // The first statistics line shows the OOM watch is registered.
    assert!(eventually(10, || events
        .lines()
        .iter()
        .any(|e| e["type"] == "stats")));
    let (ok, out) = exec(&root, &id, "dd if=/dev/zero of=/dev/null bs=64M count=1");
    assert!(!ok, "dd of 64 MiB under a 32 MiB limit succeeded: {out}");
    assert!(
        eventually(10, || events.lines().iter().any(|e| e["type"] == "oom")),
        "no oom event in {} lines",
        events.lines().len()
    );
    let oom = events
        .lines()
        .into_iter()
        .find(|e| e["type"] == "oom")
        .unwrap();
    assert_eq!(oom, json!({"type": "oom", "id": id}));
    let data = stats(&root, &id);
    assert!(
        data["memory"]["raw"]["oom_kill"].as_u64().unwrap() >= 1,
        "{data}"
    );
    assert_eq!(data["memory"]["usage"]["limit"], 33554432);
    // The container's init survived: only dd was killed.
    assert_eq!(root.status(&id), "running");
    // events ends by itself when the container stops.
    root.ok(&["kill", &id, "KILL"]);
    let mut events = events;
    assert!(eventually(10, || events
        .child
        .try_wait()
        .unwrap()
        .is_some()));
    root.ok(&["delete", &id]);
}

/// The init itself the OOM killer's victim (containerd's TaskOOM test,
/// where the container is deleted moments after): `rt events` reports the
/// kill it counted as the container died, then ends. It once returned on
/// seeing the container gone before it had looked at the count again.
#[test]
fn an_oom_kill_of_the_init_is_reported_before_events_ends() {
    need_root!();
    let root = Root::new();
    for round in 0..5 {
        let mut b = Bundle::new(&["tail", "/dev/zero"]);
        b.edit(|c| c["linux"]["resources"] = small_memory());
        let id = unique_id("cgoom");
        root.ok(&["create", "--bundle", b.path().to_str().unwrap(), &id]);
        let mut events = Events::start(&root, &id, "1h");
        assert!(eventually(10, || events
            .lines()
            .iter()
            .any(|e| e["type"] == "stats")));
        root.ok(&["start", &id]);
        // Deleted (its cgroup removed) as soon as it is stopped, as
        // containerd's --rm does.
        assert!(
            eventually(20, || root.status(&id) == "stopped"),
            "the init survived"
        );
        root.ok(&["delete", &id]);
        assert!(
            eventually(20, || events.child.try_wait().unwrap().is_some()),
            "events did not end with the container"
        );
        let lines = events.lines();
        assert!(
            lines.iter().any(|e| e["type"] == "oom"),
            "round {round}: no oom event in {lines:?}"
        );
    }
}

#[test]
fn update_raises_the_memory_limit_of_a_running_container() {
    need_root!();
    let root = Root::new();
    let (_b, id) = running(&root, &["sleep", "1000"], small_memory());
    let dd = "dd if=/dev/zero of=/dev/null bs=48M count=1";
    assert!(!exec(&root, &id, dd).0, "48 MiB fit under 32 MiB");
    root.ok(&["update", "--memory", "128m", "--memory-swap", "128m", &id]);
    let limit = file(&id, ("memory", "memory.limit_in_bytes"), "memory.max");
    assert_eq!(read(&limit), (128u64 << 20).to_string());
    let (ok, out) = exec(&root, &id, dd);
    assert!(ok, "48 MiB under 128 MiB failed: {out}");
    root.ok(&["delete", "--force", &id]);
}

#[test]
fn pids_limit_stops_forks() {
    need_root!();
    let root = Root::new();
    let (_b, id) = running(&root, &["sleep", "1000"], json!({"pids": {"limit": 4}}));
    let (_, out) = exec(
        &root,
        &id,
        "for i in 1 2 3 4 5 6; do sleep 5 & done 2>&1; echo done",
    );
    // The init, the exec'd sh and two sleeps make four: the fifth fork fails.
    assert!(
        out.contains("can't fork: Resource temporarily unavailable"),
        "{out}"
    );
    root.ok(&["delete", "--force", &id]);
}

/// hugetlb limits: on cgroup v2 written to hugetlb.<size>.max; a host with
/// no hugetlb hierarchy (this CI host keeps hugetlb on its cgroup2 mount,
/// which rt does not reconfigure) refuses them by name.
#[test]
fn hugetlb_limits() {
    need_root!();
    let root = Root::new();
    let mut b = Bundle::new(&["sleep", "1000"]);
    b.edit(|c| {
        c["linux"]["resources"] = json!({"hugepageLimits": [{"pageSize": "2MB", "limit": 4194304}]})
    });
    let id = unique_id("huge");
    let out = root.rt(&["run", "-d", "--bundle", b.path().to_str().unwrap(), &id]);
    let v1_hugetlb = Path::new("/sys/fs/cgroup/hugetlb").exists();
    if v2() || v1_hugetlb {
        assert!(out.status.success(), "{out:?}");
        let f = file(
            &id,
            ("hugetlb", "hugetlb.2MB.limit_in_bytes"),
            "hugetlb.2MB.max",
        );
        assert_eq!(read(&f), "4194304");
        let data = stats(&root, &id);
        assert!(data["hugetlb"]["2MB"].is_object(), "{data}");
        root.ok(&["delete", "--force", &id]);
    } else {
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("hugetlb"), "{err}");
        assert!(rt_testsupport::cgroup_dirs_named(&id).is_empty());
    }
}

#[test]
fn cpu_quota_throttles() {
    need_root!();
    let root = Root::new();
    let (_b, id) = running(
        &root,
        &["sh", "-c", "while :; do :; done"],
        json!({"cpu": {"quota": 10000, "period": 100000}}),
    );
    let throttled = || {
        stats(&root, &id)["cpu"]["throttling"]["throttledPeriods"]
            .as_u64()
            .unwrap_or(0)
    };
    assert!(eventually(10, || throttled() >= 3), "{}", stats(&root, &id));
    let cpu_max = file(&id, ("cpu", "cpu.cfs_quota_us"), "cpu.max");
    let want = if v2() { "10000 100000" } else { "10000" };
    assert_eq!(read(&cpu_max), want);
    root.ok(&["delete", "--force", &id]);
}

#[test]
fn freeze_stops_a_busy_loop() {
    need_root!();
    let root = Root::new();
    let (_b, id) = running(&root, &["sh", "-c", "while :; do :; done"], json!({}));
    let usage = || {
        stats(&root, &id)["cpu"]["usage"]["total"]
            .as_u64()
            .unwrap_or(0)
    };
    assert!(eventually(5, || usage() > 0));
    root.ok(&["pause", &id]);
    assert_eq!(root.status(&id), "paused");
    let before = usage();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(usage(), before, "a frozen loop used CPU");
    root.ok(&["resume", &id]);
    assert!(eventually(5, || usage() > before));
    root.ok(&["delete", "--force", &id]);
}

#[test]
fn device_rules_decide_what_opens() {
    need_root!();
    let root = Root::new();
    // /dev/kmsg (c 1:11) is not in the default allow-list; writing to it
    // needs no capability, so only the device rules decide.
    let kmsg = |allow: bool| {
        let mut b = Bundle::new(&["sh", "-c", "echo rt-device-test > /dev/kmsg && echo wrote"]);
        b.edit(|c| {
            c["mounts"].as_array_mut().unwrap().push(json!({
                "destination": "/dev/kmsg", "type": "bind", "source": "/dev/kmsg",
                "options": ["bind"]
            }));
            if allow {
                c["linux"]["resources"]["devices"] =
                    json!([{"allow": true, "type": "c", "major": 1, "minor": 11, "access": "w"}]);
            }
        });
        let id = unique_id("dev");
        let out = root.rt(&["run", "--bundle", b.path().to_str().unwrap(), &id]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let denied = kmsg(false);
    assert!(denied.contains("Operation not permitted"), "{denied}");
    let allowed = kmsg(true);
    assert!(allowed.contains("wrote"), "{allowed}");
}

#[test]
fn cpuset_pins_the_container() {
    need_root!();
    let root = Root::new();
    let b = Bundle::new(&["grep", "Cpus_allowed_list", "/proc/self/status"]);
    let mut b = b;
    b.edit(|c| c["linux"]["resources"] = json!({"cpu": {"cpus": "0", "mems": "0"}}));
    let id = unique_id("cpuset");
    let out = root.ok(&["run", "--bundle", b.path().to_str().unwrap(), &id]);
    assert!(out.split_whitespace().last() == Some("0"), "{out}");
}

#[test]
fn nested_cgroups_path_and_cgroup_namespace() {
    need_root!();
    let root = Root::new();
    let parent = unique_id("rt-parent");
    let id = unique_id("nested");
    let mut b = Bundle::new(&["sleep", "1000"]);
    b.edit(|c| {
        c["linux"]["cgroupsPath"] = format!("/{parent}/{id}").into();
        c["linux"]["resources"] = json!({"pids": {"limit": 10}});
        // `rt spec` lists a cgroup namespace already.
        assert!(c["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .contains(&json!({"type": "cgroup"})));
    });
    root.ok(&["run", "-d", "--bundle", b.path().to_str().unwrap(), &id]);
    let cg = format!("{parent}/{id}");
    assert_eq!(read(&file(&cg, ("pids", "pids.max"), "pids.max")), "10");
    // The container sees its own cgroup as the root.
    let (_, out) = exec(&root, &id, "cat /proc/self/cgroup");
    for line in out.lines() {
        assert!(line.ends_with(":/"), "{out}");
    }
    root.ok(&["delete", "--force", &id]);
    assert!(
        rt_testsupport::cgroup_dirs_named(&parent).is_empty(),
        "the parent rt created is left"
    );
}

/// cgroup v2 only: `unified` keys are written as they are, and hybrid and v1
/// hosts refuse them by name.
#[test]
fn unified_keys() {
    need_root!();
    let root = Root::new();
    let mut b = Bundle::new(&["sleep", "1000"]);
    b.edit(|c| c["linux"]["resources"] = json!({"unified": {"memory.high": "50000000"}}));
    let id = unique_id("unified");
    let out = root.rt(&["run", "-d", "--bundle", b.path().to_str().unwrap(), &id]);
    if v2() {
        assert!(out.status.success(), "{out:?}");
        assert_eq!(read(&file(&id, ("", ""), "memory.high")), "49999872");
        root.ok(&["delete", "--force", &id]);
    } else {
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("unified"), "{err}");
        assert!(rt_testsupport::cgroup_dirs_named(&id).is_empty());
    }
}

/// `io.max` and the BFQ/io weight need a block device; the guest may have
/// none (then the test says so and checks nothing).
#[test]
fn block_io_throttle() {
    need_root!();
    let Some(dev) = std::fs::read_dir("/sys/block")
        .into_iter()
        .flatten()
        .flatten()
        .find_map(|e| std::fs::read_to_string(e.path().join("dev")).ok())
    else {
        eprintln!("skipping block_io_throttle: no block device");
        return;
    };
    let (major, minor) = dev.trim().split_once(':').unwrap();
    let (major, minor): (u64, u64) = (major.parse().unwrap(), minor.parse().unwrap());
    let root = Root::new();
    let (_b, id) = running(
        &root,
        &["sleep", "1000"],
        json!({"blockIO": {"throttleReadBpsDevice": [{"major": major, "minor": minor, "rate": 1048576}],
                           "throttleWriteIOPSDevice": [{"major": major, "minor": minor, "rate": 100}]}}),
    );
    if v2() {
        let io = read(&file(&id, ("", ""), "io.max"));
        assert!(
            io.contains(&format!("{major}:{minor} rbps=1048576")),
            "{io}"
        );
        assert!(io.contains("wiops=100"), "{io}");
    } else {
        let bps = read(&file(&id, ("blkio", "blkio.throttle.read_bps_device"), ""));
        assert_eq!(bps, format!("{major}:{minor} 1048576"));
        let iops = read(&file(
            &id,
            ("blkio", "blkio.throttle.write_iops_device"),
            "",
        ));
        assert_eq!(iops, format!("{major}:{minor} 100"));
    }
    root.ok(&["delete", "--force", &id]);
}

#[test]
fn events_of_an_unknown_container_fail() {
    need_root!();
    let root = Root::new();
    let out = root.rt(&["events", "--stats", "no-such-container"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
    let _ = Command::new("true").status();
}
