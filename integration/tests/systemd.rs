//! The systemd cgroup driver (`--systemd-cgroup`). The tests that need
//! systemd run in a guest booted with it, where cgroup v2 is unified
//! (integration/vm/systemd-suite, which `./integration/test` runs); on a
//! host without systemd they skip with a message. The last tests run where
//! systemd is absent: the driver then fails clearly and leaves nothing.

use std::process::Command;

use rt_integration::podman::{text, Manager, Podman};
use rt_testsupport::*;
use serde_json::Value;

/// Whether systemd is this system's init (sd_booted's test) on cgroup v2
/// unified, as root.
fn systemd_or_skip(test: &str) -> bool {
    systemd_on_or_skip(test, true)
}

/// The same for systemd on cgroup v1 (its hybrid layout,
/// `systemd.unified_cgroup_hierarchy=0`).
fn systemd_v1_or_skip(test: &str) -> bool {
    systemd_on_or_skip(test, false)
}

fn systemd_on_or_skip(test: &str, unified: bool) -> bool {
    if !root_or_skip(test) {
        return false;
    }
    if !std::path::Path::new("/run/systemd/system").is_dir() {
        eprintln!("skipping {test}: systemd is not running here (integration/vm/systemd-suite runs it in a guest)");
        return false;
    }
    let is_unified = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    if is_unified != unified {
        let want = if unified { "v2 unified" } else { "v1" };
        eprintln!(
            "skipping {test}: not cgroup {want} here (the systemd suite boots a guest of each)"
        );
        return false;
    }
    true
}

/// `systemctl show -p NAME --value UNIT`
fn show(unit: &str, property: &str) -> String {
    show_all(unit, &[property])
        .remove(property)
        .unwrap_or_default()
}

/// `systemctl show -p A -p B ... UNIT`, in one call (each one takes a
/// while in a TCG guest). A list property (DeviceAllow) comes as one line
/// per entry: they are joined with newlines.
fn show_all(unit: &str, properties: &[&str]) -> std::collections::HashMap<String, String> {
    let mut cmd = Command::new("systemctl");
    cmd.arg("show");
    for p in properties {
        cmd.args(["-p", p]);
    }
    let out = cmd.arg(unit).output().unwrap();
    let mut map = std::collections::HashMap::<String, String>::new();
    for (k, v) in String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
    {
        let entry = map.entry(k.to_string()).or_default();
        if !entry.is_empty() {
            entry.push('\n');
        }
        entry.push_str(v.trim());
    }
    map
}

/// The `major:minor` of a disk of this system (the suite's guest has an
/// empty virtio disk for this), for the IO limits.
fn a_disk() -> String {
    let disk = std::fs::read_dir("/sys/block")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            !["loop", "ram", "zram", "sr", "fd"]
                .iter()
                .any(|p| n.starts_with(p))
        })
        .min()
        .expect("a block device for the IO limits (the systemd suite's guest has one)");
    std::fs::read_to_string(format!("/sys/block/{disk}/dev"))
        .unwrap()
        .trim()
        .to_string()
}

/// A spec's blockIO throttles for `dev` (`major:minor`).
fn throttles(dev: &str) -> Value {
    let (major, minor) = dev.split_once(':').unwrap();
    let (major, minor): (i64, i64) = (major.parse().unwrap(), minor.parse().unwrap());
    serde_json::json!({
        "throttleReadBpsDevice": [{"major": major, "minor": minor, "rate": 1048576}],
        "throttleWriteIOPSDevice": [{"major": major, "minor": minor, "rate": 100}],
    })
}

fn cgroup_of(pid: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap()
        .trim()
        .trim_start_matches("0::")
        .to_string()
}

fn state(root: &Root, id: &str) -> Value {
    serde_json::from_str(&root.ok(&["state", id])).unwrap()
}

/// A detached container running `sleep` with the systemd driver, and
/// `resources` if given.
fn start_sleeper_with(
    root: &Root,
    id: &str,
    cgroups_path: Option<&str>,
    resources: Option<Value>,
) -> Bundle {
    start_sleeper_edited(root, id, cgroups_path, |c| {
        if let Some(r) = resources {
            c["linux"]["resources"] = r;
        }
    })
}

/// The same, with `edit` applied to its config.json.
fn start_sleeper_edited(
    root: &Root,
    id: &str,
    cgroups_path: Option<&str>,
    edit: impl FnOnce(&mut Value),
) -> Bundle {
    let mut b = Bundle::new(&["sleep", "100000"]);
    b.edit(|c| {
        match cgroups_path {
            Some(p) => c["linux"]["cgroupsPath"] = p.into(),
            None => {
                c["linux"].as_object_mut().unwrap().remove("cgroupsPath");
            }
        }
        edit(c);
    });
    let bundle = b.path().to_str().unwrap().to_string();
    root.ok(&["--systemd-cgroup", "run", "-d", "-b", &bundle, id]);
    b
}

/// `systemctl list-units --all UNIT`: what systemd has loaded, without
/// loading it (`show` would load a slice, which systemd can make from its
/// name alone).
fn loaded(unit: &str) -> String {
    let out = Command::new("systemctl")
        .args(["list-units", "--all", "--plain", "--no-legend", unit])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The unit is gone (not failed, not loaded) and so is its cgroup.
fn assert_no_unit(unit: &str, cgroup: &str) {
    assert!(
        eventually(10, || loaded(unit).is_empty()),
        "{unit} is still loaded: {}",
        loaded(unit)
    );
    assert!(!std::path::Path::new(&format!("/sys/fs/cgroup{cgroup}")).exists());
}

#[test]
fn each_cgroups_path_form_gets_its_unit() {
    if !systemd_or_skip("each_cgroups_path_form_gets_its_unit") {
        return;
    }
    let root = Root::new();
    let id = unique_id("sd");
    // (cgroupsPath, unit, slice, cgroup)
    let forms = [
        (
            Some(format!("machine.slice:libpod:{id}")),
            format!("libpod-{id}.scope"),
            "machine.slice",
            format!("/machine.slice/libpod-{id}.scope"),
        ),
        (
            None,
            format!("rt-{id}.scope"),
            "system.slice",
            format!("/system.slice/rt-{id}.scope"),
        ),
        (
            Some(format!(":p:{id}")),
            format!("p-{id}.scope"),
            "system.slice",
            format!("/system.slice/p-{id}.scope"),
        ),
        (
            Some(format!("rttest-nested.slice:p:{id}")),
            format!("p-{id}.scope"),
            "rttest-nested.slice",
            format!("/rttest.slice/rttest-nested.slice/p-{id}.scope"),
        ),
    ];
    for (path, unit, slice, cgroup) in &forms {
        let _b = start_sleeper_with(&root, &id, path.as_deref(), None);
        let st = state(&root, &id);
        let pid = st["pid"].to_string();
        let p = show_all(unit, &["ActiveState", "Slice", "Delegate", "ControlGroup"]);
        assert_eq!(p["ActiveState"], "active", "{unit}");
        assert_eq!(p["Slice"], *slice, "{unit}");
        assert_eq!(p["Delegate"], "yes", "{unit}");
        assert_eq!(p["ControlGroup"], *cgroup, "{unit}");
        assert_eq!(cgroup_of(&pid), *cgroup);
        // Only the container's process is in it (the placeholder is gone).
        let procs =
            std::fs::read_to_string(format!("/sys/fs/cgroup{cgroup}/cgroup.procs")).unwrap();
        assert_eq!(procs.trim(), pid, "{cgroup}");
        root.ok(&["delete", "--force", &id]);
        assert_no_unit(unit, cgroup);
    }
    // A name ending in .slice is a slice of its own.
    let slice = "rttest-own.slice";
    let _b = start_sleeper_with(&root, &id, Some(&format!(":p:{slice}")), None);
    let pid = state(&root, &id)["pid"].to_string();
    assert_eq!(show(slice, "ActiveState"), "active");
    assert_eq!(cgroup_of(&pid), "/rttest.slice/rttest-own.slice");
    root.ok(&["delete", "--force", &id]);
    assert_no_unit(slice, "/rttest.slice/rttest-own.slice");
}

#[test]
fn bad_cgroups_paths_get_runcs_errors() {
    if !systemd_or_skip("bad_cgroups_paths_get_runcs_errors") {
        return;
    }
    let root = Root::new();
    for (path, msg) in [
        ("/plain/path", "expected cgroupsPath to be of format \"slice:prefix:name\" for systemd cgroups, got \"/plain/path\" instead"),
        ("bad--x.slice:p:n", "invalid slice name: bad--x.slice"),
        ("noslice:p:n", "invalid slice name: noslice"),
    ] {
        let id = unique_id("sdbad");
        let mut b = Bundle::new(&["true"]);
        b.edit(|c| c["linux"]["cgroupsPath"] = path.into());
        let out = root.rt(&["--systemd-cgroup", "run", "-b", b.path().to_str().unwrap(), &id]);
        assert!(!out.status.success());
        // The log line quotes the message (logfmt escapes its quotes).
        let err = String::from_utf8_lossy(&out.stderr).replace("\\\"", "\"");
        assert!(err.contains(msg), "{path}: {err}");
        assert!(!root.dir.path().join(&id).exists(), "state left for {path}");
    }
}

#[test]
fn limits_become_unit_properties_and_hold() {
    if !systemd_or_skip("limits_become_unit_properties_and_hold") {
        return;
    }
    let root = Root::new();
    let id = unique_id("sdlim");
    let unit = format!("rt-{id}.scope");
    let resources = serde_json::json!({
        "memory": {"limit": 33554432, "reservation": 16777216},
        "pids": {"limit": 20},
        "cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0"},
        "devices": [{"allow": false, "access": "rwm"}],
    });
    // runc's org.systemd.property.* annotations: more properties, in
    // GVariant text (a …Sec name in seconds).
    let disk = a_disk();
    let _b = start_sleeper_edited(&root, &id, None, |c| {
        c["linux"]["resources"] = resources;
        c["linux"]["resources"]["blockIO"] = throttles(&disk);
        c["annotations"] = serde_json::json!({
            "org.systemd.property.TimeoutStopSec": "17",
            "org.systemd.property.CollectMode": "'inactive-or-failed'",
        });
    });
    let p = show_all(
        &unit,
        &[
            "TimeoutStopUSec",
            "CollectMode",
            "IOReadBandwidthMax",
            "IOWriteIOPSMax",
        ],
    );
    assert_eq!(p["TimeoutStopUSec"], "17s", "{p:?}");
    assert_eq!(p["CollectMode"], "inactive-or-failed", "{p:?}");
    assert_eq!(
        p["IOReadBandwidthMax"],
        format!("/dev/block/{disk} 1048576")
    );
    assert_eq!(p["IOWriteIOPSMax"], format!("/dev/block/{disk} 100"));
    let p = show_all(
        &unit,
        &[
            "MemoryMax",
            "MemoryLow",
            "TasksMax",
            "CPUWeight",
            "CPUQuotaPerSecUSec",
            "AllowedCPUs",
            "DevicePolicy",
            "DeviceAllow",
        ],
    );
    assert_eq!(p["MemoryMax"], "33554432");
    assert_eq!(p["MemoryLow"], "16777216");
    assert_eq!(p["TasksMax"], "20");
    assert_eq!(p["CPUWeight"], "20");
    assert_eq!(p["CPUQuotaPerSecUSec"], "500ms");
    assert_eq!(p["AllowedCPUs"], "0");
    assert_eq!(p["DevicePolicy"], "strict");
    assert!(p["DeviceAllow"].contains("/dev/char/1:3 rwm"), "{p:?}");
    let dir = format!("/sys/fs/cgroup/system.slice/{unit}");
    let read = |f: &str| {
        std::fs::read_to_string(format!("{dir}/{f}"))
            .unwrap()
            .trim()
            .to_string()
    };
    assert_eq!(read("memory.max"), "33554432");
    assert_eq!(read("pids.max"), "20");
    assert_eq!(read("cpu.max"), "50000 100000");
    assert_eq!(
        read("io.max"),
        format!("{disk} rbps=1048576 wbps=max riops=max wiops=100")
    );
    // Over MemoryMax: the allocation is OOM-killed.
    let out = root.rt(&[
        "exec",
        &id,
        "sh",
        "-c",
        "head -c 100m /dev/zero | tail > /dev/null",
    ]);
    assert_eq!(out.status.code(), Some(137), "{}", text(&out));
    assert!(
        read("memory.events").contains("oom_kill 1"),
        "{}",
        read("memory.events")
    );
    // At TasksMax, fork fails.
    let out = root.rt(&[
        "exec",
        &id,
        "sh",
        "-c",
        "for i in $(seq 30); do sleep 5 & done 2>&1; wait",
    ]);
    assert!(text(&out).contains("can't fork"), "{}", text(&out));
    assert!(
        read("pids.events").contains("max "),
        "{}",
        read("pids.events")
    );
    root.ok(&["delete", "--force", &id]);
    assert_no_unit(&unit, &format!("/system.slice/{unit}"));
}

#[test]
fn update_pause_ps_events_and_delete_through_the_driver() {
    if !systemd_or_skip("update_pause_ps_events_and_delete_through_the_driver") {
        return;
    }
    let root = Root::new();
    let id = unique_id("sdops");
    let unit = format!("libpod-{id}.scope");
    let _b = start_sleeper_with(
        &root,
        &id,
        Some(&format!("machine.slice:libpod:{id}")),
        Some(serde_json::json!({"memory": {"limit": 67108864}})),
    );
    let dir = format!("/sys/fs/cgroup/machine.slice/{unit}");
    let read = |f: &str| {
        std::fs::read_to_string(format!("{dir}/{f}"))
            .unwrap()
            .trim()
            .to_string()
    };
    // update: the property and the file (no --systemd-cgroup: the state says).
    root.ok(&["update", "--memory", "134217728", "--pids-limit", "50", &id]);
    let p = show_all(&unit, &["MemoryMax", "TasksMax"]);
    assert_eq!(p["MemoryMax"], "134217728");
    assert_eq!(p["TasksMax"], "50");
    assert_eq!(read("memory.max"), "134217728");
    // A daemon-reload puts systemd's properties back: they are rt's.
    assert!(Command::new("systemctl")
        .arg("daemon-reload")
        .status()
        .unwrap()
        .success());
    assert_eq!(read("memory.max"), "134217728");
    root.ok(&["pause", &id]);
    assert_eq!(state(&root, &id)["status"], "paused");
    assert_eq!(read("cgroup.freeze"), "1");
    root.ok(&["resume", &id]);
    assert_eq!(state(&root, &id)["status"], "running");
    let ps = root.ok(&["ps", "--format", "json", &id]);
    let pid = state(&root, &id)["pid"].as_i64().unwrap();
    assert_eq!(serde_json::from_str::<Vec<i64>>(&ps).unwrap(), [pid]);
    let ev: Value = serde_json::from_str(&root.ok(&["events", "--stats", &id])).unwrap();
    assert_eq!(ev["type"], "stats");
    assert!(
        ev["data"]["memory"]["usage"]["limit"].as_u64() == Some(134217728),
        "{ev}"
    );
    root.ok(&["kill", &id, "KILL"]);
    assert!(eventually(10, || root.status(&id) == "stopped"));
    root.ok(&["delete", &id]);
    assert_no_unit(&unit, &format!("/machine.slice/{unit}"));
}

#[test]
fn podman_with_the_systemd_cgroup_manager() {
    if !systemd_or_skip("podman_with_the_systemd_cgroup_manager") {
        return;
    }
    let p = Podman::with_busybox_on(rt_bin(), Manager::Systemd);
    let out = p.run(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--memory",
        "64m",
        "localhost/rt-busybox",
        "sh",
        "-c",
        "cat /sys/fs/cgroup/memory.max; cat /proc/self/cgroup",
    ]);
    assert!(out.status.success(), "podman run: {}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("67108864\n"), "{stdout}");
    let out = p.run(&[
        "run",
        "-d",
        "--network",
        "none",
        "--name",
        "sdpod",
        "--memory",
        "64m",
        "localhost/rt-busybox",
        "sleep",
        "300",
    ]);
    assert!(out.status.success(), "podman run -d: {}", text(&out));
    let cid = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let unit = format!("libpod-{cid}.scope");
    let props = show_all(&unit, &["ActiveState", "MemoryMax"]);
    assert_eq!(props["ActiveState"], "active");
    assert_eq!(props["MemoryMax"], "67108864");
    let out = p.run(&["exec", "sdpod", "sh", "-c", "echo hi; exit 3"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");
    let out = p.run(&["stop", "-t", "1", "sdpod"]);
    assert!(out.status.success(), "podman stop: {}", text(&out));
    let out = p.run(&["rm", "sdpod"]);
    assert!(out.status.success(), "podman rm: {}", text(&out));
    assert!(
        eventually(10, || loaded(&unit).is_empty()),
        "{unit} left: {}",
        loaded(&unit)
    );
}

/// The user the rootless test runs rt as, made in the guest (whose /etc is
/// its own overlay). `spec --rootless` maps only the user's own id.
const USER: &str = "rt-sd-user";

/// As `USER`, with its systemd instance's bus and runtime directory.
fn as_user(cmd: &mut Command, uid: u32) -> &mut Command {
    use std::os::unix::process::CommandExt;
    let run = format!("/run/user/{uid}");
    cmd.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("XDG_RUNTIME_DIR", &run)
        .env("DBUS_SESSION_BUS_ADDRESS", format!("unix:path={run}/bus"))
        .uid(uid)
        .gid(uid)
}

#[test]
fn rootless_uses_the_users_systemd_instance() {
    if !systemd_or_skip("rootless_uses_the_users_systemd_instance") {
        return;
    }
    let sh = |c: &str| {
        let st = Command::new("sh").args(["-c", c]).status().unwrap();
        assert!(st.success(), "{c}");
    };
    sh(&format!(
        "id {USER} >/dev/null 2>&1 || useradd --user-group --no-create-home --shell /bin/sh {USER}"
    ));
    let out = Command::new("id").args(["-u", USER]).output().unwrap();
    let uid: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    // The user's systemd (and its D-Bus, from dbus-user-session).
    sh(&format!("systemctl start user@{uid}.service"));
    let bus = format!("/run/user/{uid}/bus");
    assert!(
        eventually(60, || std::path::Path::new(&bus).exists()),
        "no {bus}"
    );

    // rt, a rootfs and the bundle where the user can read them.
    let dir = tempfile::Builder::new()
        .prefix("rt-sd-rootless-")
        .tempdir()
        .unwrap();
    sh(&format!(
        "chmod 755 {d} && cp {rt} {d}/rt && cp -a {rootfs} {d}/rootfs && mkdir {d}/b && chown {uid}:{uid} {d}/b",
        d = dir.path().display(),
        rt = rt_bin().display(),
        rootfs = shared_rootfs().display()
    ));
    let rt = dir.path().join("rt");
    let b = dir.path().join("b");
    let user_rt = |args: &[&str]| output_via_files(as_user(Command::new(&rt).args(args), uid));
    let out = user_rt(&["spec", "--rootless", "--bundle", b.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let path = b.join("config.json");
    let mut c: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    c["process"]["terminal"] = false.into();
    c["process"]["args"] = serde_json::json!(["sleep", "100000"]);
    c["root"]["path"] = dir
        .path()
        .join("rootfs")
        .to_string_lossy()
        .into_owned()
        .into();
    c["linux"]["resources"] = serde_json::json!({"pids": {"limit": 30}});
    std::fs::write(&path, serde_json::to_vec(&c).unwrap()).unwrap();

    let id = unique_id("sdrl");
    let unit = format!("rt-{id}.scope");
    // From inside the user's own tree, as in a login session: the cgroup
    // v2 rules let a user move a process only below a cgroup it owns.
    let out = output_via_files(
        as_user(&mut Command::new("systemd-run"), uid)
            .args(["--user", "--scope", "--quiet"])
            .arg(&rt)
            .args([
                "--systemd-cgroup",
                "run",
                "-d",
                "-b",
                b.to_str().unwrap(),
                &id,
            ]),
    );
    assert!(out.status.success(), "rootless run: {}", text(&out));
    let st: Value = serde_json::from_slice(&user_rt(&["state", &id]).stdout).unwrap();
    let pid = st["pid"].to_string();
    let cgroup = cgroup_of(&pid);
    assert_eq!(
        cgroup,
        format!("/user.slice/user-{uid}.slice/user@{uid}.service/user.slice/{unit}")
    );
    let show = output_via_files(as_user(
        Command::new("systemctl").args([
            "--user",
            "show",
            "-p",
            "ActiveState",
            "-p",
            "TasksMax",
            &unit,
        ]),
        uid,
    ));
    let props = String::from_utf8_lossy(&show.stdout);
    assert!(
        props.contains("ActiveState=active") && props.contains("TasksMax=30"),
        "{props}"
    );
    let out = user_rt(&["delete", "--force", &id]);
    assert!(out.status.success(), "rootless delete: {}", text(&out));
    let list = || {
        let out = output_via_files(as_user(
            Command::new("systemctl").args([
                "--user",
                "list-units",
                "--all",
                "--plain",
                "--no-legend",
                &unit,
            ]),
            uid,
        ));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert!(
        eventually(10, || list().is_empty()),
        "{unit} left: {}",
        list()
    );
    assert!(!std::path::Path::new(&format!("/sys/fs/cgroup{cgroup}")).exists());
    sh(&format!("systemctl stop user@{uid}.service"));
}

/// systemd on cgroup v1 (hybrid, as Debian 10 or RHEL 7/8 boot it): the
/// v1 property names, every hierarchy's directory at the unit's path
/// (systemd's for the controllers it manages, rt's for cpuset and
/// freezer), the limits in the v1 files and holding, update, pause, and
/// delete leaving no unit and no directory in any hierarchy.
#[test]
fn systemd_on_cgroup_v1_runs_the_container_in_its_scope() {
    if !systemd_v1_or_skip("systemd_on_cgroup_v1_runs_the_container_in_its_scope") {
        return;
    }
    let root = Root::new();
    let id = unique_id("sdv1");
    let unit = format!("rt-{id}.scope");
    let path = format!("/system.slice/{unit}");
    let disk = a_disk();
    let resources = serde_json::json!({
        "memory": {"limit": 33554432},
        "pids": {"limit": 20},
        "cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0"},
        "blockIO": throttles(&disk),
    });
    let _b = start_sleeper_with(&root, &id, None, Some(resources));
    let pid = state(&root, &id)["pid"].to_string();
    let p = show_all(
        &unit,
        &[
            "ActiveState",
            "ControlGroup",
            "MemoryLimit",
            "TasksMax",
            "CPUShares",
            "CPUQuotaPerSecUSec",
            "BlockIOReadBandwidth",
        ],
    );
    assert_eq!(
        p["BlockIOReadBandwidth"],
        format!("/dev/block/{disk} 1048576")
    );
    assert_eq!(p["ActiveState"], "active", "{p:?}");
    assert_eq!(p["ControlGroup"], path, "{p:?}");
    assert_eq!(p["MemoryLimit"], "33554432", "{p:?}");
    assert_eq!(p["TasksMax"], "20", "{p:?}");
    assert_eq!(p["CPUShares"], "512", "{p:?}");
    assert_eq!(p["CPUQuotaPerSecUSec"], "500ms", "{p:?}");
    // The init is at the unit's path in every hierarchy.
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    for controller in [
        "memory",
        "pids",
        "cpu",
        "cpuset",
        "freezer",
        "blkio",
        "name=systemd",
    ] {
        let line = cgroups
            .lines()
            .find(|l| {
                l.split(':')
                    .nth(1)
                    .is_some_and(|c| c.split(',').any(|c| c == controller))
            })
            .unwrap_or_else(|| panic!("no {controller} line: {cgroups}"));
        assert!(
            line.ends_with(&format!(":{path}")),
            "{controller}: {cgroups}"
        );
    }
    let read = |hierarchy: &str, f: &str| {
        std::fs::read_to_string(format!("/sys/fs/cgroup/{hierarchy}{path}/{f}"))
            .unwrap_or_else(|e| panic!("{hierarchy}{path}/{f}: {e}"))
            .trim()
            .to_string()
    };
    assert_eq!(read("memory", "memory.limit_in_bytes"), "33554432");
    assert_eq!(read("pids", "pids.max"), "20");
    assert_eq!(read("cpu", "cpu.cfs_quota_us"), "50000");
    assert_eq!(read("cpu", "cpu.shares"), "512");
    assert_eq!(read("cpuset", "cpuset.cpus"), "0");
    assert_eq!(
        read("blkio", "blkio.throttle.read_bps_device"),
        format!("{disk} 1048576")
    );
    assert_eq!(
        read("blkio", "blkio.throttle.write_iops_device"),
        format!("{disk} 100")
    );
    // The memory limit holds: over it, the allocation is OOM-killed.
    let out = root.rt(&[
        "exec",
        &id,
        "sh",
        "-c",
        "head -c 100m /dev/zero | tail > /dev/null",
    ]);
    assert_eq!(out.status.code(), Some(137), "{}", text(&out));
    // update: the property and the file.
    root.ok(&["update", "--memory", "67108864", &id]);
    assert_eq!(show(&unit, "MemoryLimit"), "67108864");
    assert_eq!(read("memory", "memory.limit_in_bytes"), "67108864");
    root.ok(&["pause", &id]);
    assert_eq!(state(&root, &id)["status"], "paused");
    assert_eq!(read("freezer", "freezer.state"), "FROZEN");
    root.ok(&["resume", &id]);
    assert_eq!(state(&root, &id)["status"], "running");
    root.ok(&["delete", "--force", &id]);
    assert!(
        eventually(10, || loaded(&unit).is_empty()),
        "{unit} is still loaded: {}",
        loaded(&unit)
    );
    for h in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let dir = h.path().join(path.trim_start_matches('/'));
        assert!(!dir.exists(), "{} left", dir.display());
    }
}

/// A bad `org.systemd.property.*` annotation fails the create with runc's
/// words before systemd is asked (so this runs with or without it), and
/// leaves no state.
#[test]
fn bad_systemd_property_annotations_get_runcs_errors() {
    if !root_or_skip("bad_systemd_property_annotations_get_runcs_errors") {
        return;
    }
    let root = Root::new();
    for (key, value, msg) in [
        ("org.systemd.property.A1x", "1", "annotation org.systemd.property.A1x name incorrect: contains non-alphabetic character"),
        ("org.systemd.property.TimeoutStopSec", "'soon'", "annotation org.systemd.property.TimeoutStopSec='soon' value parse error: not a number of seconds"),
        ("org.systemd.property.CollectMode", "'open", "annotation org.systemd.property.CollectMode='open value parse error: unterminated string"),
    ] {
        let id = unique_id("sdann");
        let mut b = Bundle::new(&["true"]);
        b.edit(|c| c["annotations"] = serde_json::json!({ key: value }));
        let out = root.rt(&["--systemd-cgroup", "run", "-b", b.path().to_str().unwrap(), &id]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr).replace("\\\"", "\"");
        assert!(err.contains(msg), "{key}: {err}");
        assert!(!root.dir.path().join(&id).exists(), "state left for {key}");
        assert!(cgroup_dirs_named(&format!("rt-{id}.scope")).is_empty());
    }
}

#[test]
fn without_systemd_the_driver_fails_and_leaves_nothing() {
    if !root_or_skip("without_systemd_the_driver_fails_and_leaves_nothing") {
        return;
    }
    if std::path::Path::new("/run/dbus/system_bus_socket").exists() {
        eprintln!("skipping without_systemd_the_driver_fails_and_leaves_nothing: a system bus is running here");
        return;
    }
    let root = Root::new();
    let id = unique_id("nosd");
    let b = Bundle::new(&["true"]);
    let out = root.rt(&[
        "--systemd-cgroup",
        "run",
        "-b",
        b.path().to_str().unwrap(),
        &id,
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/run/dbus/system_bus_socket"), "{err}");
    assert!(err.contains("systemd"), "{err}");
    assert!(!root.dir.path().join(&id).exists(), "state directory left");
    assert!(cgroup_dirs_named(&format!("rt-{id}.scope")).is_empty());
    // Nothing of rt's is left running for this container (the scope's
    // placeholder is a fork of rt create, its command line names the id).
    // Other rt processes of this test binary's parallel tests may run.
    let left = rt_integration::net::processes_naming(std::path::Path::new(&id));
    assert!(left.is_empty(), "left: {left:?}");
    // `--cgroup-manager systemd` is the same driver.
    let out = root.rt(&[
        "--cgroup-manager",
        "systemd",
        "run",
        "-b",
        b.path().to_str().unwrap(),
        &id,
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("system_bus_socket"));
    let out = root.rt(&["--systemd-cgroup", "--cgroup-manager", "cgroupfs", "list"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("contradicts"));
}
